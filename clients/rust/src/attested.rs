//! Attested key release (docs/attestation.md): a one-shot nonce from the broker, and
//! `GenerateDataKey`/`Decrypt` calls that carry an attestation result (metadata
//! [`ATTESTATION_HEADER`]) and, optionally, a recipient key the data key is sealed to by HPKE
//! ([`crate::release`]) instead of travelling in clear.
//!
//! An attested call is sent exactly once, never retried: its nonce is accepted once, so a
//! repeat would only be refused as replayed (and a `GenerateDataKey` would mint another key).

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use keybroker_proto::v1 as pb;
use time::OffsetDateTime;
use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use zeroize::Zeroizing;

use crate::client::{lease, to_map, to_pb_duration};
use crate::recipient::RecipientKey;
use crate::release::{self, ReleaseOp, SEALED_DATA_KEY_LEN, SUITE_X25519_SHA256_AES256GCM};
use crate::types::timestamp;
use crate::{Client, ClientError, DataKey, DecryptedKey};

/// Metadata key of the attestation result sent with a key call.
pub const ATTESTATION_HEADER: &str = "x-keybroker-attestation";

/// A nonce from `GetAttestationNonce`: put it verbatim in the TEE's runtime data (`nonce`),
/// then send the verifier's result with one key call before `expires_at`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttestationNonce {
    /// The nonce (base64url).
    pub nonce: String,
    /// When the broker stops accepting it.
    pub expires_at: Option<OffsetDateTime>,
}

/// What an attested call sends besides the workload token.
#[derive(Clone)]
pub struct Attested {
    /// The attestation result (the verifier's signed token) whose nonce came from
    /// [`Client::attestation_nonce`]. Good for one call.
    pub token: Zeroizing<String>,
    /// Release the data key sealed to this key (which the token must bind) instead of in
    /// clear. With a private key the client opens it; with a public key alone it is returned
    /// sealed.
    pub recipient: Option<RecipientKey>,
}

impl fmt::Debug for Attested {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Attested")
            .field("token", &"[redacted]")
            .field("recipient", &self.recipient)
            .finish()
    }
}

/// A data key released by an attested call.
#[derive(Debug)]
pub struct Release<K> {
    /// The key and its lease. Its `plaintext` is the key in clear without a recipient, the
    /// opened key with a private recipient key, and empty with a public recipient key alone.
    pub key: K,
    /// With a recipient: the sealed key as the broker sent it (`enc ‖ ct`,
    /// [`release::SEALED_DATA_KEY_LEN`] bytes).
    pub ciphertext_for_recipient: Option<Vec<u8>>,
}

impl Client {
    /// A fresh attestation nonce, bound to this client's identity.
    ///
    /// # Errors
    /// `Status` with the broker's code (`RESOURCE_EXHAUSTED` when too many are outstanding),
    /// token-file errors.
    pub async fn attestation_nonce(&self) -> Result<AttestationNonce, ClientError> {
        let msg = pb::GetAttestationNonceRequest {};
        // Idempotent in effect: an unused nonce costs the broker nothing.
        let (resp, _rid) = self
            .call(true, &msg, |req| async {
                self.data_keys().get_attestation_nonce(req).await
            })
            .await?;
        Ok(AttestationNonce {
            nonce: resp.nonce,
            expires_at: resp.expires_at.and_then(timestamp),
        })
    }

    /// [`Client::generate_data_key`] with an attestation result and, optionally, a recipient.
    ///
    /// # Errors
    /// As [`Client::generate_data_key`] (`PERMISSION_DENIED` "attestation refused" for a
    /// refused result), `Config` for a token that is not a header value, `MalformedResponse`
    /// for a response that does not match the request (plaintext in clear despite a
    /// recipient, a sealed key of another suite or size), `Release` when the sealed key does
    /// not open.
    pub async fn generate_data_key_attested(
        &self,
        key: &str,
        context: &BTreeMap<String, String>,
        ttl: Option<Duration>,
        attested: &Attested,
    ) -> Result<Release<DataKey>, ClientError> {
        let recipient = recipient(attested)?;
        let msg = pb::GenerateDataKeyRequest {
            key: key.to_owned(),
            context: to_map(context),
            ttl: ttl.map(to_pb_duration).transpose()?,
            recipient: recipient.clone(),
        };
        let (req, rid) = self.attested_request(msg, attested).await?;
        let resp = self
            .data_keys()
            .generate_data_key(req)
            .await
            .map_err(|s| ClientError::from_status(&s, &rid))?
            .into_inner();
        let (lease_id, expires_at, lease_ttl) = lease(resp.lease, &rid)?;
        let released = Sealed {
            plaintext: Zeroizing::new(resp.plaintext),
            sealed: resp.ciphertext_for_recipient,
            suite: resp.recipient_suite,
        };
        let (plaintext, sealed) = released.open(
            attested,
            (ReleaseOp::GenerateDataKey, key, resp.key_version, &lease_id),
            &rid,
        )?;
        Ok(Release {
            key: DataKey {
                plaintext,
                ciphertext: resp.ciphertext,
                key_version: resp.key_version,
                lease_id,
                expires_at,
                lease_ttl,
            },
            ciphertext_for_recipient: sealed,
        })
    }

    /// [`Client::decrypt`] with an attestation result and, optionally, a recipient.
    ///
    /// # Errors
    /// As [`Client::decrypt`] and [`Client::generate_data_key_attested`].
    pub async fn decrypt_attested(
        &self,
        ciphertext: &[u8],
        context: &BTreeMap<String, String>,
        ttl: Option<Duration>,
        attested: &Attested,
    ) -> Result<Release<DecryptedKey>, ClientError> {
        let msg = pb::DecryptRequest {
            ciphertext: ciphertext.to_vec(),
            context: to_map(context),
            ttl: ttl.map(to_pb_duration).transpose()?,
            recipient: recipient(attested)?,
        };
        let (req, rid) = self.attested_request(msg, attested).await?;
        let resp = self
            .data_keys()
            .decrypt(req)
            .await
            .map_err(|s| ClientError::from_status(&s, &rid))?
            .into_inner();
        let (lease_id, expires_at, lease_ttl) = lease(resp.lease, &rid)?;
        let released = Sealed {
            plaintext: Zeroizing::new(resp.plaintext),
            sealed: resp.ciphertext_for_recipient,
            suite: resp.recipient_suite,
        };
        let (plaintext, sealed) = released.open(
            attested,
            (ReleaseOp::Decrypt, &resp.key, resp.key_version, &lease_id),
            &rid,
        )?;
        Ok(Release {
            key: DecryptedKey {
                plaintext,
                key: resp.key,
                key_version: resp.key_version,
                lease_id,
                expires_at,
                lease_ttl,
            },
            ciphertext_for_recipient: sealed,
        })
    }

    /// A request with the usual metadata plus the attestation result (marked sensitive).
    async fn attested_request<T>(
        &self,
        msg: T,
        attested: &Attested,
    ) -> Result<(tonic::Request<T>, String), ClientError> {
        let mut value: AsciiMetadataValue = MetadataValue::try_from(attested.token.trim())
            .map_err(|_| {
                ClientError::Config("attestation token is not a valid header value".into())
            })?;
        if attested.token.trim().is_empty() {
            return Err(ClientError::Config("attestation token is empty".into()));
        }
        value.set_sensitive(true);
        let (mut req, rid) = self.request(msg).await?;
        req.metadata_mut().insert(ATTESTATION_HEADER, value);
        Ok((req, rid))
    }
}

/// The `recipient` field for `attested`.
fn recipient(attested: &Attested) -> Result<Option<pb::Recipient>, ClientError> {
    attested
        .recipient
        .as_ref()
        .map(|r| {
            let pk = r
                .public_key()
                .map_err(|_| ClientError::Config("recipient key is not an X25519 key".into()))?;
            Ok(pb::Recipient {
                suite: pb::HpkeSuite::X25519Sha256Aes256gcm.into(),
                public_key: pk.to_vec(),
            })
        })
        .transpose()
}

/// The plaintext of a response (opened, in clear, or empty) and the sealed key as received.
type Opened = (Zeroizing<Vec<u8>>, Option<Vec<u8>>);

/// The key-bearing part of a response.
struct Sealed {
    plaintext: Zeroizing<Vec<u8>>,
    sealed: Vec<u8>,
    suite: i32,
}

impl Sealed {
    /// Checks the response against the request and opens a sealed key with a private
    /// recipient: (plaintext, sealed key as received). `call` is what the sealed key is bound
    /// to: the op, key, key version and lease id.
    fn open(
        self,
        attested: &Attested,
        call: (ReleaseOp, &str, u32, &str),
        rid: &str,
    ) -> Result<Opened, ClientError> {
        let (op, key, version, lease_id) = call;
        let info = release::info(op, key, version, lease_id, SUITE_X25519_SHA256_AES256GCM);
        let info = info.as_slice();
        let malformed = |problem| ClientError::MalformedResponse {
            problem,
            request_id: rid.to_owned(),
        };
        let Some(recipient) = &attested.recipient else {
            if !self.sealed.is_empty() {
                return Err(malformed("a sealed key without a recipient"));
            }
            return Ok((self.plaintext, None));
        };
        if !self.plaintext.is_empty() {
            return Err(malformed("the key in clear despite a recipient"));
        }
        if self.suite != i32::from(pb::HpkeSuite::X25519Sha256Aes256gcm) {
            return Err(malformed("the sealed key is of another HPKE suite"));
        }
        if self.sealed.len() != SEALED_DATA_KEY_LEN {
            return Err(malformed("the sealed key is not 80 bytes"));
        }
        let plaintext =
            match recipient {
                RecipientKey::Private(sk) => release::open(sk.as_ref(), info, &self.sealed)
                    .map_err(|source| ClientError::Release {
                        source,
                        request_id: rid.to_owned(),
                    })?,
                RecipientKey::Public(_) => Zeroizing::new(Vec::new()),
            };
        Ok((plaintext, Some(self.sealed)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attested(recipient: Option<RecipientKey>) -> Attested {
        Attested {
            token: Zeroizing::new("eyJ.x.y".into()),
            recipient,
        }
    }

    #[test]
    fn debug_never_shows_the_token_or_the_private_key() {
        let a = attested(Some(RecipientKey::generate()));
        let text = format!("{a:?}");
        assert!(
            !text.contains("eyJ") && text.contains("[redacted]"),
            "{text}"
        );
    }

    #[test]
    fn sealed_key_opens_with_the_private_recipient_and_the_same_info() -> anyhow::Result<()> {
        let (sk, pk) = release::generate_keypair();
        let info = release::info(ReleaseOp::GenerateDataKey, "models/m", 1, "l-1", 1);
        let dek = [9u8; 32];
        let sealed = release::seal(&pk, &info, &dek)?;
        let resp = || Sealed {
            plaintext: Zeroizing::new(Vec::new()),
            sealed: sealed.clone(),
            suite: 1,
        };
        let a = attested(Some(RecipientKey::Private(sk)));
        let call = (ReleaseOp::GenerateDataKey, "models/m", 1, "l-1");
        let (plain, got) = resp().open(&a, call, "r")?;
        assert_eq!(plain.as_slice(), &dek);
        assert_eq!(got.as_deref(), Some(sealed.as_slice()));

        let other = (ReleaseOp::Decrypt, "models/m", 1, "l-1");
        assert!(matches!(
            resp().open(&a, other, "r"),
            Err(ClientError::Release { .. })
        ));
        let public = attested(Some(RecipientKey::Public(pk)));
        let (plain, got) = resp().open(&public, call, "r")?;
        assert!(plain.is_empty() && got.is_some());
        Ok(())
    }

    #[test]
    fn responses_that_do_not_match_the_request_are_malformed() {
        let with = attested(Some(RecipientKey::generate()));
        let without = attested(None);
        let cases = [
            (&with, vec![1u8; 32], vec![0u8; 80], 1, "clear"),
            (&with, vec![], vec![0u8; 80], 2, "suite"),
            (&with, vec![], vec![0u8; 79], 1, "80 bytes"),
            (
                &without,
                vec![1u8; 32],
                vec![0u8; 80],
                1,
                "without a recipient",
            ),
        ];
        for (a, plaintext, sealed, suite, want) in cases {
            let r = Sealed {
                plaintext: Zeroizing::new(plaintext),
                sealed,
                suite,
            }
            .open(a, (ReleaseOp::Decrypt, "k", 1, "l"), "r");
            let msg = r.err().map(|e| e.to_string()).unwrap_or_default();
            assert!(msg.contains(want) && msg.contains("request id: r"), "{msg}");
        }
    }
}
