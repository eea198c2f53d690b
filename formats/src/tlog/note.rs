//! The C2SP `tlog-checkpoint` body and the C2SP `signed-note` around it, with an Ed25519 key
//! named by a C2SP `vkey`: the text the log signs ([`body`], [`note`], [`vkey`]) and its
//! verification ([`VerifierKey`], [`verify_checkpoint`]). Ed25519 comes from `ring`. Pure: the
//! signature itself is made by the log's key in the HSM.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use sha2::{Digest as _, Sha256};

use super::Hash;

/// Largest signed note accepted.
pub const MAX_NOTE_BYTES: usize = 64 * 1024;
/// Signature type byte of Ed25519 in signed notes.
const ED25519: u8 = 0x01;

/// Why a verifier key, note or checkpoint was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoteError {
    /// The verifier key is not `<name>+<hex key id>+<base64(0x01 || 32-byte key)>`.
    #[error("verifier key: {0}")]
    BadVkey(&'static str),
    /// The note is not a signed note.
    #[error("signed note: {0}")]
    Malformed(&'static str),
    /// No signature line by the verifier key's name and key id.
    #[error("checkpoint is not signed by {0}")]
    NotSignedBy(String),
    /// A signature line by that key is there, but it does not verify.
    #[error("checkpoint signature by {0} does not verify (wrong key or altered text)")]
    BadSignature(String),
    /// The checkpoint body is not `origin\nsize\nbase64(root)\n[extensions]`.
    #[error("checkpoint body: {0}")]
    BadCheckpoint(&'static str),
}

/// An Ed25519 verifier key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifierKey {
    /// Key name (for our logs, also the checkpoint origin).
    pub name: String,
    /// The 4-byte key id.
    pub id: [u8; 4],
    /// The Ed25519 public key.
    pub public: [u8; 32],
}

/// The signed-note key id: the first 4 bytes of `SHA-256(name || "\n" || 0x01 || public)`.
#[must_use]
pub fn key_id(name: &str, public: &[u8; 32]) -> [u8; 4] {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update(b"\n");
    h.update([ED25519]);
    h.update(public);
    let d = h.finalize();
    [d[0], d[1], d[2], d[3]]
}

/// The verifier key: `name+hex(key id)+base64(0x01 || public key)`.
#[must_use]
pub fn vkey(name: &str, public: &[u8; 32]) -> String {
    let mut typed = vec![ED25519];
    typed.extend_from_slice(public);
    format!(
        "{name}+{}+{}",
        hex::encode(key_id(name, public)),
        STANDARD.encode(&typed)
    )
}

/// The checkpoint body: `origin\nsize\nbase64(root)\n`.
#[must_use]
pub fn body(origin: &str, size: u64, root: &Hash) -> String {
    format!("{origin}\n{size}\n{}\n", STANDARD.encode(root))
}

/// A signed note: the body, an empty line, and one signature line by `name`.
#[must_use]
pub fn note(body: &str, name: &str, key_id: [u8; 4], signature: &[u8; 64]) -> String {
    let mut sig = key_id.to_vec();
    sig.extend_from_slice(signature);
    format!("{body}\n\u{2014} {name} {}\n", STANDARD.encode(&sig))
}

impl VerifierKey {
    /// Parses a C2SP vkey line (surrounding whitespace ignored).
    ///
    /// # Errors
    /// [`NoteError::BadVkey`] naming what is wrong, including a key id that does not match the
    /// name and key.
    pub fn parse(text: &str) -> Result<Self, NoteError> {
        let text = text.trim();
        let mut parts = text.splitn(3, '+');
        let (Some(name), Some(id_hex), Some(key_b64)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(NoteError::BadVkey("expected <name>+<key id>+<key>"));
        };
        if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c == '+') {
            return Err(NoteError::BadVkey("the name is empty or has spaces"));
        }
        let id: [u8; 4] = hex::decode(id_hex)
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or(NoteError::BadVkey("the key id is not 8 hex digits"))?;
        let typed = STANDARD
            .decode(key_b64)
            .map_err(|_| NoteError::BadVkey("the key is not base64"))?;
        let (&kind, public) = typed
            .split_first()
            .ok_or(NoteError::BadVkey("the key is empty"))?;
        if kind != ED25519 {
            return Err(NoteError::BadVkey("not an Ed25519 key (type 0x01)"));
        }
        let public: [u8; 32] = public
            .try_into()
            .map_err(|_| NoteError::BadVkey("an Ed25519 key has 32 bytes"))?;
        if key_id(name, &public) != id {
            return Err(NoteError::BadVkey(
                "the key id does not match the name and key",
            ));
        }
        Ok(Self {
            name: name.to_owned(),
            id,
            public,
        })
    }

    /// Verifies `note` and returns its text (everything before the signatures, with its final
    /// newline). Signatures by other keys are ignored, as C2SP allows.
    ///
    /// # Errors
    /// [`NoteError::Malformed`], [`NoteError::NotSignedBy`], [`NoteError::BadSignature`].
    pub fn verify<'a>(&self, note: &'a str) -> Result<&'a str, NoteError> {
        if note.len() > MAX_NOTE_BYTES {
            return Err(NoteError::Malformed("larger than 64 KiB"));
        }
        let split = note
            .rfind("\n\n")
            .ok_or(NoteError::Malformed("no blank line before the signatures"))?;
        let (text, sigs) = (&note[..=split], &note[split + 2..]);
        if !sigs.ends_with('\n') {
            return Err(NoteError::Malformed(
                "signature lines must end with a newline",
            ));
        }
        let mut seen = false;
        for line in sigs.lines() {
            let rest = line.strip_prefix("\u{2014} ").ok_or(NoteError::Malformed(
                "a signature line must start with an em dash",
            ))?;
            let (name, sig_b64) = rest.split_once(' ').ok_or(NoteError::Malformed(
                "a signature line needs a name and a signature",
            ))?;
            let sig = STANDARD
                .decode(sig_b64)
                .map_err(|_| NoteError::Malformed("a signature is not base64"))?;
            if name != self.name || sig.len() < 4 || sig[..4] != self.id {
                continue;
            }
            seen = true;
            let key =
                ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, self.public);
            if key.verify(text.as_bytes(), &sig[4..]).is_ok() {
                return Ok(text);
            }
        }
        if seen {
            Err(NoteError::BadSignature(self.name.clone()))
        } else {
            Err(NoteError::NotSignedBy(self.name.clone()))
        }
    }
}

/// A C2SP tlog-checkpoint body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The log's origin line.
    pub origin: String,
    /// Tree size.
    pub size: u64,
    /// RFC 6962 root hash.
    pub root: Hash,
}

impl Checkpoint {
    /// Parses a checkpoint body (the text of a verified note). Extension lines are allowed.
    ///
    /// # Errors
    /// [`NoteError::BadCheckpoint`].
    pub fn parse(text: &str) -> Result<Self, NoteError> {
        let mut lines = text.split('\n');
        let origin = lines.next().filter(|o| !o.is_empty());
        let size = lines.next();
        let root = lines.next();
        let (Some(origin), Some(size), Some(root)) = (origin, size, root) else {
            return Err(NoteError::BadCheckpoint(
                "needs origin, size and root lines",
            ));
        };
        if size.is_empty()
            || !size.bytes().all(|b| b.is_ascii_digit())
            || (size.len() > 1 && size.starts_with('0'))
        {
            return Err(NoteError::BadCheckpoint("the size is not a decimal number"));
        }
        let size: u64 = size
            .parse()
            .map_err(|_| NoteError::BadCheckpoint("the size is too large"))?;
        let root: Hash = STANDARD
            .decode(root)
            .ok()
            .and_then(|r| r.try_into().ok())
            .ok_or(NoteError::BadCheckpoint(
                "the root is not 32 bytes of base64",
            ))?;
        Ok(Self {
            origin: origin.to_owned(),
            size,
            root,
        })
    }
}

/// Verifies a signed checkpoint with `vkey` and parses it; the origin must be the key's name.
///
/// # Errors
/// Any [`NoteError`].
pub fn verify_checkpoint(vkey: &VerifierKey, note: &str) -> Result<Checkpoint, NoteError> {
    let cp = Checkpoint::parse(vkey.verify(note)?)?;
    if cp.origin != vkey.name {
        return Err(NoteError::BadCheckpoint(
            "the origin is not the verifier key's name",
        ));
    }
    Ok(cp)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]

    use ring::signature::{Ed25519KeyPair, KeyPair as _};

    use super::*;

    fn keypair(seed: u8) -> Ed25519KeyPair {
        Ed25519KeyPair::from_seed_unchecked(&[seed; 32]).unwrap()
    }

    fn public(kp: &Ed25519KeyPair) -> [u8; 32] {
        kp.public_key().as_ref().try_into().unwrap()
    }

    fn vkey_of(name: &str, kp: &Ed25519KeyPair) -> String {
        vkey(name, &public(kp))
    }

    fn sign(text: &str, name: &str, kp: &Ed25519KeyPair) -> String {
        let sig: [u8; 64] = kp.sign(text.as_bytes()).as_ref().try_into().unwrap();
        note(text, name, key_id(name, &public(kp)), &sig)
    }

    const NAME: &str = "example.com/log";

    fn body_of(size: u64) -> String {
        body(NAME, size, &[7u8; 32])
    }

    #[test]
    fn note_format_follows_c2sp() {
        let root = [0u8; 32];
        assert_eq!(
            body("example.com/log", 5, &root),
            "example.com/log\n5\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n"
        );
        let public = [7u8; 32];
        let v = vkey("example.com/log", &public);
        let parts: Vec<&str> = v.splitn(3, '+').collect();
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[1].len(), 8);
        let n = note("b\n", "example.com/log", [1, 2, 3, 4], &[9; 64]);
        assert!(n.starts_with("b\n\n\u{2014} example.com/log "));
        assert!(n.ends_with('\n'));
    }

    #[test]
    fn a_signed_checkpoint_verifies_and_parses() {
        let kp = keypair(1);
        let vkey = VerifierKey::parse(&vkey_of(NAME, &kp)).unwrap();
        let note = sign(&body_of(42), NAME, &kp);
        let cp = verify_checkpoint(&vkey, &note).unwrap();
        assert_eq!(
            (cp.origin.as_str(), cp.size, cp.root),
            (NAME, 42, [7u8; 32])
        );
        // A further signature by someone else is ignored.
        let cosigned = format!("{note}\u{2014} witness AAAAAAAAAAAAAAAAAAAAAAAAAAAA\n");
        assert!(verify_checkpoint(&vkey, &cosigned).is_ok());
    }

    #[test]
    fn another_key_an_altered_text_or_a_broken_note_is_refused() {
        let kp = keypair(1);
        let vkey = VerifierKey::parse(&vkey_of(NAME, &kp)).unwrap();
        let other = sign(&body_of(42), NAME, &keypair(2));
        assert_eq!(
            verify_checkpoint(&vkey, &other),
            Err(NoteError::NotSignedBy(NAME.into())),
            "another key has another key id"
        );
        let altered = sign(&body_of(42), NAME, &kp).replace("\n42\n", "\n43\n");
        assert_eq!(
            verify_checkpoint(&vkey, &altered),
            Err(NoteError::BadSignature(NAME.into()))
        );
        for broken in [
            "",
            "no blank line\n",
            "a\n\nnot a signature\n",
            "a\n\n\u{2014} x\n",
        ] {
            assert!(vkey.verify(broken).is_err(), "{broken:?}");
        }
        let huge = "x".repeat(MAX_NOTE_BYTES + 1);
        assert!(vkey.verify(&huge).is_err());
    }

    #[test]
    fn bad_vkeys_and_checkpoint_bodies_are_refused() {
        let good = vkey_of(NAME, &keypair(1));
        assert!(VerifierKey::parse(&format!("  {good}\n")).is_ok());
        let mut wrong_id = good.clone();
        wrong_id.replace_range(NAME.len() + 1..NAME.len() + 9, "00000000");
        for bad in ["", "a+b", "a+zz+AQ==", &wrong_id, "a b+01020304+AQ=="] {
            assert!(VerifierKey::parse(bad).is_err(), "{bad:?}");
        }
        let root = STANDARD.encode([0u8; 32]);
        assert!(Checkpoint::parse(&format!("o\n5\n{root}\n")).is_ok());
        assert!(Checkpoint::parse(&format!("o\n5\n{root}\next\n")).is_ok());
        for bad in [
            format!("o\n05\n{root}\n"),
            format!("o\n-5\n{root}\n"),
            format!("o\n\n{root}\n"),
            "o\n5\nAAAA\n".to_owned(),
            format!("\n5\n{root}\n"),
            "o\n5\n".to_owned(),
        ] {
            assert!(Checkpoint::parse(&bad).is_err(), "{bad:?}");
        }
    }
}
