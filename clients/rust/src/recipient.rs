//! Recipient keys of attested release ([`crate::release`]) read from PEM files: an X25519
//! private key as `openssl genpkey -algorithm X25519` or PyCA's `PrivateFormat.PKCS8` write it
//! (`PRIVATE KEY`, PKCS#8 v1 or v2, RFC 8410), or a public key alone (`PUBLIC KEY`, SPKI).
//!
//! Parsing is strict and done by the RustCrypto DER crates: the algorithm must be X25519
//! (1.3.101.110) without parameters, the key exactly 32 bytes, and a PKCS#8 v2 public key must
//! match the private one. Private key files must be readable by their owner only, like every
//! other secret file of the broker.

use std::fmt;
use std::path::{Path, PathBuf};

use pkcs8::der::asn1::{BitStringRef, OctetStringRef};
use pkcs8::der::pem::LineEnding;
use pkcs8::der::{Decode as _, Document, Encode as _, SecretDocument};
use pkcs8::spki::{AlgorithmIdentifierRef, SubjectPublicKeyInfoRef};
use pkcs8::{ObjectIdentifier, PrivateKeyInfo};
use zeroize::Zeroizing;

use crate::release::{self, X25519_KEY_LEN};

/// id-X25519 (RFC 8410).
const X25519_OID: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.110");

/// Largest PEM file read (an X25519 key PEM is about 120 bytes).
const MAX_PEM_LEN: u64 = 16 * 1024;

/// The key a data key is released to: the private key (the client opens the sealed key) or the
/// public key alone (the sealed key is handed on to whoever holds the private key).
#[derive(Clone)]
pub enum RecipientKey {
    /// An X25519 private key. Zeroized on drop.
    Private(Zeroizing<[u8; X25519_KEY_LEN]>),
    /// An X25519 public key.
    Public([u8; X25519_KEY_LEN]),
}

impl fmt::Debug for RecipientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Private(_) => f.write_str("RecipientKey::Private([redacted])"),
            Self::Public(pk) => write!(f, "RecipientKey::Public({})", hex::encode(pk)),
        }
    }
}

/// Why a recipient key file was refused. Never holds key bytes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecipientKeyError {
    /// The file could not be read.
    #[error("cannot read recipient key {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A private key file that group or others may read.
    #[error("recipient key {}: mode {mode:04o} lets group or others read a private key; run chmod 600 {}", path.display(), path.display())]
    Permissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The text is not an X25519 key PEM as described in the module docs.
    #[error("recipient key{}: {problem}", path.as_ref().map(|p| format!(" {}", p.display())).unwrap_or_default())]
    Invalid {
        /// The file, when read from one.
        path: Option<PathBuf>,
        /// What is wrong.
        problem: &'static str,
    },
}

impl RecipientKey {
    /// A fresh private key.
    #[must_use]
    pub fn generate() -> Self {
        Self::Private(release::generate_keypair().0)
    }

    /// The public key (computed for a private key).
    ///
    /// # Errors
    /// [`release::ReleaseError::BadKey`] if the private key is unusable.
    pub fn public_key(&self) -> Result<[u8; X25519_KEY_LEN], release::ReleaseError> {
        match self {
            Self::Private(sk) => release::public_key(sk.as_ref()),
            Self::Public(pk) => Ok(*pk),
        }
    }

    /// Parses a `PRIVATE KEY` (PKCS#8) or `PUBLIC KEY` (SPKI) PEM holding an X25519 key.
    ///
    /// # Errors
    /// [`RecipientKeyError::Invalid`] for anything else (another label or algorithm, extra
    /// parameters, a key of the wrong length, a v2 public key that does not match).
    pub fn from_pem(pem: &str) -> Result<Self, RecipientKeyError> {
        let invalid = |problem| RecipientKeyError::Invalid {
            path: None,
            problem,
        };
        let (label, doc) = SecretDocument::from_pem(pem.trim())
            .map_err(|_| invalid("not a single PEM block of a DER key"))?;
        match label {
            "PRIVATE KEY" => {
                let info = doc
                    .decode_msg::<PrivateKeyInfo<'_>>()
                    .map_err(|_| invalid("PRIVATE KEY is not PKCS#8"))?;
                check_algorithm(
                    info.algorithm.oid,
                    info.algorithm.parameters.is_some(),
                    invalid,
                )?;
                // RFC 8410: privateKey holds CurvePrivateKey ::= OCTET STRING.
                let inner = OctetStringRef::from_der(info.private_key)
                    .map_err(|_| invalid("X25519 private key is not an OCTET STRING"))?;
                let mut sk = Zeroizing::new([0u8; X25519_KEY_LEN]);
                if inner.as_bytes().len() != X25519_KEY_LEN {
                    return Err(invalid("X25519 private key is not 32 bytes"));
                }
                sk.copy_from_slice(inner.as_bytes());
                let pk = release::public_key(sk.as_ref())
                    .map_err(|_| invalid("X25519 private key is unusable"))?;
                if let Some(given) = info.public_key
                    && given != pk.as_slice()
                {
                    return Err(invalid("PKCS#8 public key does not match the private key"));
                }
                Ok(Self::Private(sk))
            }
            "PUBLIC KEY" => {
                let spki = doc
                    .decode_msg::<SubjectPublicKeyInfoRef<'_>>()
                    .map_err(|_| invalid("PUBLIC KEY is not SPKI"))?;
                check_algorithm(
                    spki.algorithm.oid,
                    spki.algorithm.parameters.is_some(),
                    invalid,
                )?;
                let bytes = spki
                    .subject_public_key
                    .as_bytes()
                    .ok_or_else(|| invalid("public key is not a whole number of bytes"))?;
                let pk: [u8; X25519_KEY_LEN] = bytes
                    .try_into()
                    .map_err(|_| invalid("X25519 public key is not 32 bytes"))?;
                Ok(Self::Public(pk))
            }
            _ => Err(invalid(
                "want a PRIVATE KEY (PKCS#8) or PUBLIC KEY (SPKI) PEM",
            )),
        }
    }

    /// The PEM [`RecipientKey::from_pem`] reads: `PRIVATE KEY` (PKCS#8 v1, as OpenSSL writes)
    /// for a private key, `PUBLIC KEY` (SPKI) for a public one.
    ///
    /// # Errors
    /// `Invalid` if DER encoding fails (it does not for a 32-byte key).
    pub fn to_pem(&self) -> Result<Zeroizing<String>, RecipientKeyError> {
        let failed = |_| RecipientKeyError::Invalid {
            path: None,
            problem: "cannot encode the key",
        };
        let algorithm = AlgorithmIdentifierRef {
            oid: X25519_OID,
            parameters: None,
        };
        match self {
            Self::Private(sk) => {
                let inner = Zeroizing::new(
                    OctetStringRef::new(sk.as_ref())
                        .and_then(|o| o.to_der())
                        .map_err(failed)?,
                );
                SecretDocument::encode_msg(&PrivateKeyInfo::new(algorithm, &inner))
                    .and_then(|d| d.to_pem("PRIVATE KEY", LineEnding::LF))
                    .map_err(failed)
            }
            Self::Public(pk) => {
                let spki = SubjectPublicKeyInfoRef {
                    algorithm,
                    subject_public_key: BitStringRef::from_bytes(pk).map_err(failed)?,
                };
                Document::encode_msg(&spki)
                    .and_then(|d| d.to_pem("PUBLIC KEY", LineEnding::LF))
                    .map(Zeroizing::new)
                    .map_err(failed)
            }
        }
    }

    /// Reads [`RecipientKey::from_pem`] from `path`; a private key file must not be readable
    /// by group or others (Unix).
    ///
    /// # Errors
    /// `Read`, `Permissions`, or `Invalid` naming `path`.
    pub fn read_pem_file(path: &Path) -> Result<Self, RecipientKeyError> {
        use std::io::Read as _;
        let read_err = |source| RecipientKeyError::Read {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::open(path).map_err(read_err)?;
        let meta = file.metadata().map_err(read_err)?;
        let mut text = Zeroizing::new(String::new());
        file.take(MAX_PEM_LEN)
            .read_to_string(&mut text)
            .map_err(read_err)?;
        let key = Self::from_pem(&text).map_err(|e| match e {
            RecipientKeyError::Invalid { problem, .. } => RecipientKeyError::Invalid {
                path: Some(path.to_path_buf()),
                problem,
            },
            other => other,
        })?;
        #[cfg(unix)]
        if matches!(key, Self::Private(_)) {
            use std::os::unix::fs::PermissionsExt;
            let mode = meta.permissions().mode() & 0o7777;
            if mode & 0o077 != 0 {
                return Err(RecipientKeyError::Permissions {
                    path: path.to_path_buf(),
                    mode,
                });
            }
        }
        #[cfg(not(unix))]
        let _ = meta;
        Ok(key)
    }
}

fn check_algorithm(
    oid: ObjectIdentifier,
    has_parameters: bool,
    invalid: impl Fn(&'static str) -> RecipientKeyError,
) -> Result<(), RecipientKeyError> {
    if oid != X25519_OID {
        return Err(invalid("not an X25519 key (algorithm 1.3.101.110)"));
    }
    if has_parameters {
        return Err(invalid(
            "X25519 algorithm identifier must have no parameters",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;

    /// RFC 8410 §10.3's X25519 example private key, and the public key it implies.
    const RFC_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----\n\
        MC4CAQAwBQYDK2VuBCIEINTuctv5E1hK1bbY8fdp+K06/nwoy/HU++CXqI9EdVhC\n\
        -----END PRIVATE KEY-----\n";

    fn pem(label: &str, der: &[u8]) -> String {
        format!(
            "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
            STANDARD.encode(der)
        )
    }

    fn pkcs8_der(sk: &[u8]) -> Vec<u8> {
        let mut der = hex::decode("302e020100300506032b656e04220420").unwrap_or_default();
        der.extend_from_slice(sk);
        der
    }

    fn spki_der(pk: &[u8]) -> Vec<u8> {
        let mut der = hex::decode("302a300506032b656e032100").unwrap_or_default();
        der.extend_from_slice(pk);
        der
    }

    #[test]
    fn rfc8410_example_parses() -> anyhow::Result<()> {
        let key = RecipientKey::from_pem(RFC_PRIVATE)?;
        let RecipientKey::Private(sk) = &key else {
            anyhow::bail!("not private")
        };
        assert_eq!(
            hex::encode(sk.as_ref()),
            "d4ee72dbf913584ad5b6d8f1f769f8ad3afe7c28cbf1d4fbe097a88f44755842"
        );
        assert!(format!("{key:?}").contains("redacted"));
        Ok(())
    }

    #[test]
    fn private_and_public_pems_agree() -> anyhow::Result<()> {
        let (sk, pk) = release::generate_keypair();
        let private = RecipientKey::from_pem(&pem("PRIVATE KEY", &pkcs8_der(sk.as_ref())))?;
        assert_eq!(private.public_key()?, pk);
        let public = RecipientKey::from_pem(&pem("PUBLIC KEY", &spki_der(&pk)))?;
        assert!(matches!(public, RecipientKey::Public(p) if p == pk));
        Ok(())
    }

    #[test]
    fn pems_written_here_read_back_and_match_openssl_layout() -> anyhow::Result<()> {
        let key = RecipientKey::from_pem(RFC_PRIVATE)?;
        assert_eq!(key.to_pem()?.as_str(), RFC_PRIVATE);
        let public = RecipientKey::Public(key.public_key()?);
        let back = RecipientKey::from_pem(&public.to_pem()?)?;
        assert!(matches!(back, RecipientKey::Public(p) if p == key.public_key()?));
        let fresh = RecipientKey::generate();
        let again = RecipientKey::from_pem(&fresh.to_pem()?)?;
        assert_eq!(again.public_key()?, fresh.public_key()?);
        Ok(())
    }

    #[test]
    fn wrong_keys_are_refused() {
        let (sk, pk) = release::generate_keypair();
        // Ed25519 (1.3.101.112) in the same shape.
        let mut ed = pkcs8_der(sk.as_ref());
        ed[10] = 0x70;
        let mut short = spki_der(&pk);
        short.pop();
        for bad in [
            pem("PRIVATE KEY", &ed),
            pem("PUBLIC KEY", &short),
            pem("PUBLIC KEY", &pkcs8_der(sk.as_ref())),
            pem("EC PRIVATE KEY", &pkcs8_der(sk.as_ref())),
            pem("PRIVATE KEY", &[0x30, 0x00]),
            String::from("not a pem"),
            String::new(),
        ] {
            assert!(
                matches!(
                    RecipientKey::from_pem(&bad),
                    Err(RecipientKeyError::Invalid { .. })
                ),
                "{bad:?} accepted"
            );
        }
    }

    #[cfg(unix)]
    #[test]
    fn private_key_file_must_be_owner_only() -> anyhow::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("enclave.pem");
        std::fs::write(&path, RFC_PRIVATE)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))?;
        let err = RecipientKey::read_pem_file(&path).err();
        assert!(
            matches!(
                err,
                Some(RecipientKeyError::Permissions { mode: 0o644, .. })
            ),
            "{err:?}"
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        assert!(matches!(
            RecipientKey::read_pem_file(&path)?,
            RecipientKey::Private(_)
        ));
        // A public key may be world-readable.
        let (_, pk) = release::generate_keypair();
        std::fs::write(&path, pem("PUBLIC KEY", &spki_der(&pk)))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))?;
        assert!(matches!(
            RecipientKey::read_pem_file(&path)?,
            RecipientKey::Public(_)
        ));
        std::fs::write(&path, "junk")?;
        let msg = RecipientKey::read_pem_file(&path)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(msg.contains("enclave.pem"), "{msg}");
        Ok(())
    }
}
