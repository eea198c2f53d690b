//! The one key that signs a log's checkpoints, for the log's whole life (DESIGN §6, §10).
//!
//! The key is an Ed25519 pair in the HSM labelled [`KEY_LABEL`]. A label alone does not name
//! it: replicas that started at the same instant once each created a pair with that label, and
//! after a takeover the log was signed by another key. So the pair is chosen once and then named
//! by its `CKA_ID`:
//!
//! - **Replicas (PostgreSQL):** the choice is made under a cluster-wide advisory lock and
//!   recorded (id + public key) in `audit_signing_key`; every replica then uses the recorded id
//!   and refuses to start when the token holds no such pair, several, or one with another public
//!   key.
//! - **Single node:** the pair on the token, checked against the `checkpoint.vkey` the log's
//!   directory already holds, so a new token behind an old log is refused instead of silently
//!   changing the log's key.
//!
//! Every signature is verified with the recorded public key before it is published, so a
//! checkpoint that no key verifies is never served.

use std::path::Path;

use sqlx::PgPool;

use crate::hsm::{Ed25519Pair, HsmError, HsmPool};
use keybroker_formats::tlog::Hash;
use keybroker_formats::tlog::note::{body, key_id, note, vkey};

/// HSM label of the checkpoint signing key.
pub const KEY_LABEL: &str = "kb:audit:checkpoint";
/// The advisory lock key under which replicas choose the signing key ("kbsignk" in ASCII).
const KEY_LOCK: i64 = 0x006b_6273_6967_6e6b;

/// Why the checkpoint key cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The HSM failed.
    #[error("hsm: {0}")]
    Hsm(#[from] HsmError),
    /// The database failed.
    #[error("audit_signing_key: {0}")]
    Database(String),
    /// Several pairs carry the label and nothing says which one is the log's.
    #[error(
        "{count} Ed25519 key pairs labelled {KEY_LABEL} are on the token and none is recorded as \
         this log's checkpoint key, so which one signs the log cannot be told. Their verifier \
         keys: {vkeys}. Keep the one whose verifier key auditors pinned (the `checkpoint.vkey` \
         you saved), delete the others from the token (pkcs11-tool --delete-object --id <hex>), \
         and restart"
    )]
    Ambiguous {
        /// How many pairs.
        count: usize,
        /// Their ids and verifier keys, for the operator.
        vkeys: String,
    },
    /// The recorded key is not (or not once) on the token.
    #[error(
        "the recorded checkpoint key (CKA_ID {id}) is {problem} on this replica's token: this \
         replica would sign with another key than the log's, so it refuses to start. Give it \
         the token that holds the recorded key"
    )]
    NotOnToken {
        /// Hex id.
        id: String,
        /// "missing" or "present several times".
        problem: &'static str,
    },
    /// The token's pair has another public key than the one recorded.
    #[error(
        "the token's checkpoint key (CKA_ID {id}) has another public key than the one recorded \
         for this log ({recorded}): refusing to sign"
    )]
    Mismatch {
        /// Hex id.
        id: String,
        /// The recorded verifier key.
        recorded: String,
    },
    /// The log's directory names another verifier key than the HSM's.
    #[error(
        "{path} says this log is verified with {pinned}, but the HSM's checkpoint key is {ours}: \
         the token is not the one this log was signed with. Restore that token, or start a new \
         log in an empty audit.dir"
    )]
    VkeyMismatch {
        /// The vkey file.
        path: String,
        /// What it holds.
        pinned: String,
        /// What the HSM key gives.
        ours: String,
    },
    /// A signature from the HSM did not verify with the log's public key.
    #[error(
        "the HSM's checkpoint signature does not verify with the log's public key; not published"
    )]
    BadSignature,
}

/// Signs checkpoints of one log with its one HSM key.
#[derive(Debug, Clone)]
pub struct Signer {
    pool: HsmPool,
    origin: String,
    id: Vec<u8>,
    public: [u8; 32],
}

impl Signer {
    /// The signer of a single-node log whose tiles directory is `dir`: the pair labelled
    /// [`KEY_LABEL`] (created on first start), which must match `dir/checkpoint.vkey` when the
    /// directory has one.
    ///
    /// # Errors
    /// HSM failures; several candidate pairs with no vkey to choose by; a vkey mismatch.
    pub async fn open_local(pool: HsmPool, origin: String, dir: &Path) -> Result<Self, KeyError> {
        let pinned = read_vkey(dir);
        let pairs = pool.ed25519_pairs(KEY_LABEL).await?;
        let pair = match choose(&origin, pairs, pinned.as_deref())? {
            Some(p) => p,
            None => create(&pool).await?,
        };
        let signer = Self::with(pool, origin, pair)?;
        signer.check_pinned(dir, pinned)?;
        Ok(signer)
    }

    /// The signer of a log shared by replicas through `db`: the recorded pair, or — on the
    /// first start of the log — one chosen (or created) under a cluster-wide lock and recorded.
    ///
    /// # Errors
    /// HSM or database failures; the recorded pair missing, doubled or different on this
    /// token; several candidate pairs and none recorded; a vkey mismatch with `dir`.
    pub async fn open_shared(
        pool: HsmPool,
        origin: String,
        db: &PgPool,
        dir: &Path,
        replica_id: &str,
    ) -> Result<Self, KeyError> {
        let pinned = read_vkey(dir);
        let mut tx = db.begin().await.map_err(database)?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(KEY_LOCK)
            .execute(&mut *tx)
            .await
            .map_err(database)?;
        let recorded: Option<(Vec<u8>, Vec<u8>)> =
            sqlx::query_as("SELECT hsm_object_id, public_key FROM audit_signing_key WHERE id = 1")
                .fetch_optional(&mut *tx)
                .await
                .map_err(database)?;
        let pairs = pool.ed25519_pairs(KEY_LABEL).await?;
        let signer = if let Some((id, public)) = recorded {
            let same: Vec<&Ed25519Pair> = pairs.iter().filter(|p| p.id == id).collect();
            let pair = match same.as_slice() {
                [one] => (*one).clone(),
                [] => return Err(not_on_token(&id, "missing")),
                _ => return Err(not_on_token(&id, "present several times")),
            };
            if pair.public.map(Vec::from) != Some(public.clone()) {
                let recorded = <[u8; 32]>::try_from(public.as_slice())
                    .map(|p| vkey(&origin, &p))
                    .unwrap_or_else(|_| "a damaged row".to_owned());
                return Err(KeyError::Mismatch {
                    id: hex::encode(&id),
                    recorded,
                });
            }
            tx.commit().await.map_err(database)?;
            Self::with(pool, origin, pair)?
        } else {
            let pair = match choose(&origin, pairs, pinned.as_deref())? {
                Some(p) => p,
                None => create(&pool).await?,
            };
            let public = pair.public.map(Vec::from).unwrap_or_default();
            sqlx::query(
                "INSERT INTO audit_signing_key (id, hsm_object_id, public_key, created_by) \
                 VALUES (1, $1, $2, $3)",
            )
            .bind(&pair.id)
            .bind(&public)
            .bind(replica_id)
            .execute(&mut *tx)
            .await
            .map_err(database)?;
            tx.commit().await.map_err(database)?;
            let signer = Self::with(pool, origin, pair)?;
            tracing::info!(
                replica_id,
                key_id = hex::encode(&signer.id).as_str(),
                vkey = signer.vkey().as_str(),
                "recorded the audit checkpoint key for this log"
            );
            signer
        };
        signer.check_pinned(dir, pinned)?;
        Ok(signer)
    }

    fn with(pool: HsmPool, origin: String, pair: Ed25519Pair) -> Result<Self, KeyError> {
        let Some(public) = pair.public else {
            return Err(not_on_token(&pair.id, "missing its public half"));
        };
        Ok(Self {
            pool,
            origin,
            id: pair.id,
            public,
        })
    }

    fn check_pinned(&self, dir: &Path, pinned: Option<String>) -> Result<(), KeyError> {
        match pinned {
            Some(p) if p != self.vkey() => Err(KeyError::VkeyMismatch {
                path: dir.join("checkpoint.vkey").display().to_string(),
                pinned: p,
                ours: self.vkey(),
            }),
            _ => Ok(()),
        }
    }

    /// The C2SP verifier key of this signer.
    #[must_use]
    pub fn vkey(&self) -> String {
        vkey(&self.origin, &self.public)
    }

    /// The log's origin line.
    #[must_use]
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// True when `sig` is this key's signature of `msg`.
    #[must_use]
    pub fn verifies(&self, msg: &[u8], sig: &[u8]) -> bool {
        ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, &self.public)
            .verify(msg, sig)
            .is_ok()
    }

    /// The signed checkpoint of a tree of `size` leaves with root `root`, verified with the
    /// log's public key before it is returned.
    ///
    /// # Errors
    /// HSM failures; [`KeyError::BadSignature`].
    pub async fn sign(&self, size: u64, root: &Hash) -> Result<String, KeyError> {
        let text = body(&self.origin, size, root);
        let sig = self
            .pool
            .sign_eddsa(KEY_LABEL, self.id.clone(), text.clone().into_bytes())
            .await?;
        if !self.verifies(text.as_bytes(), &sig) {
            return Err(KeyError::BadSignature);
        }
        Ok(note(
            &text,
            &self.origin,
            key_id(&self.origin, &self.public),
            &sig,
        ))
    }
}

/// The pair to use among `pairs`: the only one, or the one `pinned` names; `None` when there
/// is none (create one).
fn choose(
    origin: &str,
    pairs: Vec<Ed25519Pair>,
    pinned: Option<&str>,
) -> Result<Option<Ed25519Pair>, KeyError> {
    let usable = |p: &Ed25519Pair| p.public.map(|k| vkey(origin, &k));
    if pairs.len() > 1 {
        if let Some(pinned) = pinned {
            let matching: Vec<&Ed25519Pair> = pairs
                .iter()
                .filter(|p| usable(p).as_deref() == Some(pinned))
                .collect();
            if let [one] = matching.as_slice() {
                tracing::warn!(
                    count = pairs.len(),
                    key_id = hex::encode(&one.id).as_str(),
                    "several audit checkpoint key pairs on the token; using the one the log's \
                     checkpoint.vkey names (delete the others)"
                );
                return Ok(Some((*one).clone()));
            }
        }
        let vkeys = pairs
            .iter()
            .map(|p| {
                format!(
                    "id {} → {}",
                    hex::encode(&p.id),
                    usable(p).unwrap_or_else(|| "no public half".to_owned())
                )
            })
            .collect::<Vec<_>>()
            .join("; ");
        return Err(KeyError::Ambiguous {
            count: pairs.len(),
            vkeys,
        });
    }
    Ok(pairs.into_iter().next())
}

async fn create(pool: &HsmPool) -> Result<Ed25519Pair, KeyError> {
    let pair = pool.generate_ed25519_pair(KEY_LABEL).await?;
    tracing::info!(
        hsm = pool.id(),
        label = KEY_LABEL,
        key_id = hex::encode(&pair.id).as_str(),
        "created the audit checkpoint key"
    );
    Ok(pair)
}

/// The verifier key a log's directory already holds, if any (trimmed).
fn read_vkey(dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(dir.join("checkpoint.vkey")).ok()?;
    let line = text.trim();
    (!line.is_empty() && line.len() < 1024).then(|| line.to_owned())
}

fn not_on_token(id: &[u8], problem: &'static str) -> KeyError {
    KeyError::NotOnToken {
        id: hex::encode(id),
        problem,
    }
}

#[allow(clippy::needless_pass_by_value, reason = "used as a map_err adapter")]
fn database(e: sqlx::Error) -> KeyError {
    KeyError::Database(e.to_string())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]

    use super::*;

    fn pair(id: u8, key: u8) -> Ed25519Pair {
        Ed25519Pair {
            id: vec![id],
            public: Some([key; 32]),
        }
    }

    #[test]
    fn one_pair_is_used_and_none_means_create() {
        assert_eq!(choose("o", vec![], None).unwrap(), None);
        assert_eq!(
            choose("o", vec![pair(1, 1)], None).unwrap(),
            Some(pair(1, 1))
        );
    }

    #[test]
    fn several_pairs_are_refused_unless_the_pinned_vkey_names_one() {
        let both = vec![pair(1, 1), pair(2, 2)];
        let err = choose("o", both.clone(), None).unwrap_err();
        assert!(matches!(err, KeyError::Ambiguous { count: 2, .. }));
        assert!(err.to_string().contains(&vkey("o", &[2; 32])));
        let pinned = vkey("o", &[2; 32]);
        assert_eq!(
            choose("o", both.clone(), Some(&pinned)).unwrap(),
            Some(pair(2, 2))
        );
        let other = vkey("o", &[3; 32]);
        assert!(choose("o", both, Some(&other)).is_err());
    }
}
