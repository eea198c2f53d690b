//! One configured seal (a wrapper instance): the broker connection and key name from the seal
//! stanza, and the translation between bao's Encrypt/Decrypt and keybroker's `DataKeys`.
//!
//! Key id: `<key_name>:v<N>`, N the broker version that wrapped the value. bao compares the
//! BlobInfo's key id with `KeyId()` after unseal and re-wraps when they differ, so `KeyId()`
//! must follow rotations. The plugin learns the current version from the broker's answer to
//! the last Encrypt (bao encrypts a probe right after unseal, then asks KeyId); before any
//! Encrypt it encrypts a probe itself. GetKey is not used: it is a KeyAdmin call, and the seal's
//! identity should need only Encrypt and Decrypt on its one key.
//!
//! Connection: SetConfig validates the stanza and tries to connect. A configuration error (bad
//! stanza, unreadable CA, certificate or token file) fails SetConfig, so bao refuses to start
//! and says why. An unreachable broker does not: the seal connects on its next call instead,
//! so bao starts, stays sealed while keybroker is down, and unseals on its own once keybroker
//! answers (bao retries the unseal every few seconds).

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use keybroker_client::{Client, ClientError};
use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

use crate::settings::{SealSettings, SettingsError};

/// Encryption-context key that binds bao's AAD. The value is the SHA-256 of the AAD (hex):
/// the context is written in clear to the audit log, the AAD need not be public.
pub const AAD_CONTEXT_KEY: &str = "openbao_aad_sha256";
/// The plaintext of the plugin's own key-id probe (not a secret).
const KEY_ID_PROBE: &[u8] = b"openbao-kms-keybroker key id probe";
/// Longest wait for one broker call; bao's own retry loop takes over after that.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a seal operation failed. Messages are safe to show: no plaintext, token or key bytes.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// The seal stanza is invalid.
    #[error(transparent)]
    Settings(#[from] SettingsError),
    /// The broker refused the call or the configuration (the message carries the error chain).
    #[error("keybroker: {0}")]
    Broker(String),
    /// The broker could not be reached (connection refused, TLS handshake failed, …).
    #[error("keybroker: {0}")]
    Unreachable(String),
    /// The broker did not answer in time.
    #[error("keybroker did not answer within {}s", CALL_TIMEOUT.as_secs())]
    Timeout,
    /// bao sent something that cannot be right.
    #[error("{0}")]
    Invalid(&'static str),
}

/// A configured seal.
#[derive(Debug)]
pub struct Seal {
    settings: SealSettings,
    client: tokio::sync::OnceCell<Client>,
    /// Key id of the newest version the broker used for an Encrypt.
    current_key_id: Mutex<Option<String>>,
}

/// What Encrypt returns: the broker envelope and the key id it was made under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wrapped {
    /// The broker's self-describing envelope.
    pub ciphertext: Vec<u8>,
    /// `<key_name>:v<N>`.
    pub key_id: String,
}

impl Seal {
    /// Validates the seal stanza and tries to connect to the broker: configuration errors
    /// fail here, an unreachable broker is retried on the next call.
    ///
    /// # Errors
    /// `Settings` for the stanza, `Broker` for unreadable files or a refused endpoint.
    pub async fn connect(config_map: &HashMap<String, String>) -> Result<Self, SealError> {
        let settings = SealSettings::from_map(config_map)?;
        let seal = Self {
            settings,
            client: tokio::sync::OnceCell::new(),
            current_key_id: Mutex::new(None),
        };
        match seal.client().await {
            Ok(_) => {}
            Err(SealError::Timeout) => {
                tracing::warn!(endpoint = %seal.settings.endpoint,
                    "keybroker did not answer; will retry on the next seal call");
            }
            Err(SealError::Unreachable(e)) => {
                tracing::warn!(endpoint = %seal.settings.endpoint, error = %e,
                    "keybroker is unreachable; will retry on the next seal call");
            }
            Err(e) => return Err(e),
        }
        Ok(seal)
    }

    /// The connected client, connecting first when needed.
    async fn client(&self) -> Result<&Client, SealError> {
        self.client
            .get_or_try_init(|| async {
                let client = within(Client::connect(self.settings.client_config())).await?;
                tracing::info!(endpoint = %self.settings.endpoint, key = %self.settings.key_name,
                    "connected to keybroker");
                Ok(client)
            })
            .await
    }

    /// The configured key name.
    #[must_use]
    pub fn key_name(&self) -> &str {
        &self.settings.key_name
    }

    /// Encrypts `plaintext` under the key's newest version, binding `aad` when non-empty.
    ///
    /// # Errors
    /// `Invalid` for an empty plaintext, `Broker`/`Unreachable`/`Timeout` from the call.
    pub async fn encrypt(
        &self,
        plaintext: Zeroizing<Vec<u8>>,
        aad: &[u8],
    ) -> Result<Wrapped, SealError> {
        if plaintext.is_empty() {
            return Err(SealError::Invalid(
                "nothing to encrypt: the plaintext is empty",
            ));
        }
        let ctx = context(aad);
        let client = self.client().await?;
        let wrapped = within(client.encrypt(&self.settings.key_name, &plaintext, &ctx)).await?;
        let key_id = key_id(&self.settings.key_name, wrapped.key_version);
        self.learn(&key_id, wrapped.key_version);
        tracing::debug!(key_id = %key_id, "encrypted");
        Ok(Wrapped {
            ciphertext: wrapped.ciphertext,
            key_id,
        })
    }

    /// Opens a ciphertext made by [`Seal::encrypt`] with the same `aad`.
    ///
    /// # Errors
    /// `Invalid` for an empty ciphertext, `Broker`/`Unreachable`/`Timeout` from the call (a wrong AAD, a
    /// disabled key or version come back as the broker's refusal).
    pub async fn decrypt(
        &self,
        ciphertext: &[u8],
        aad: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, SealError> {
        if ciphertext.is_empty() {
            return Err(SealError::Invalid(
                "nothing to decrypt: the ciphertext is empty",
            ));
        }
        let ctx = context(aad);
        let opened = within(self.client().await?.decrypt(ciphertext, &ctx, None)).await?;
        tracing::debug!(key = %opened.key, version = opened.key_version, "decrypted");
        Ok(opened.plaintext)
    }

    /// The id of the key version new values are encrypted under.
    ///
    /// # Errors
    /// As [`Seal::encrypt`], when no Encrypt has told us yet and the probe fails.
    pub async fn key_id(&self) -> Result<String, SealError> {
        if let Some(id) = self.cached_key_id() {
            return Ok(id);
        }
        let probe = self
            .encrypt(Zeroizing::new(KEY_ID_PROBE.to_vec()), &[])
            .await?;
        Ok(probe.key_id)
    }

    fn cached_key_id(&self) -> Option<String> {
        self.current_key_id
            .lock()
            .map(|g| g.clone())
            .unwrap_or_else(|poisoned| poisoned.into_inner().clone())
    }

    /// Records `key_id` as current unless a newer version is already known (concurrent
    /// Encrypts across a rotation may answer out of order).
    fn learn(&self, key_id: &str, version: u32) {
        let mut guard = self
            .current_key_id
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let newer = guard
            .as_deref()
            .and_then(version_of)
            .is_none_or(|known| version >= known);
        if newer {
            *guard = Some(key_id.to_owned());
        }
    }
}

/// `<key_name>:v<N>`.
#[must_use]
pub fn key_id(key_name: &str, version: u32) -> String {
    format!("{key_name}:v{version}")
}

/// The version in a key id made by [`key_id`].
fn version_of(key_id: &str) -> Option<u32> {
    key_id.rsplit_once(":v")?.1.parse().ok()
}

/// The encryption context for `aad`: empty without AAD, else its SHA-256.
#[must_use]
pub fn context(aad: &[u8]) -> BTreeMap<String, String> {
    if aad.is_empty() {
        return BTreeMap::new();
    }
    BTreeMap::from([(AAD_CONTEXT_KEY.to_owned(), hex::encode(Sha256::digest(aad)))])
}

async fn within<T>(call: impl Future<Output = Result<T, ClientError>>) -> Result<T, SealError> {
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(result) => result.map_err(|e| match e {
            ClientError::Transport(_) => SealError::Unreachable(chain(&e)),
            other => SealError::Broker(chain(&other)),
        }),
        Err(_) => Err(SealError::Timeout),
    }
}

/// An error and its sources, `: `-separated (tonic's transport error alone says only
/// "transport error"; the cause, e.g. "Connection refused", is in its sources).
fn chain(e: &ClientError) -> String {
    let mut out = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_id_names_key_and_version_and_parses_back() {
        assert_eq!(key_id("seal/openbao-prod", 3), "seal/openbao-prod:v3");
        assert_eq!(version_of("seal/openbao-prod:v3"), Some(3));
        assert_eq!(version_of("seal/v:v12"), Some(12));
        assert_eq!(version_of("nonsense"), None);
    }

    #[test]
    fn aad_is_bound_by_hash_and_absent_without_aad() {
        assert!(context(&[]).is_empty());
        let c = context(b"bao");
        assert_eq!(c.len(), 1);
        let v = c.get(AAD_CONTEXT_KEY).cloned().unwrap_or_default();
        assert_eq!(v.len(), 64);
        assert_ne!(context(b"bao"), context(b"bao2"));
        assert!(!v.contains("bao"));
    }
}
