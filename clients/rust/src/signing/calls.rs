//! `Signing` service calls on [`Client`], and creating SIGN keys. Every response is checked
//! for shape (algorithm known, key named as asked); whether a signature holds is for
//! [`super::format`] and [`super::bundle`].

use std::collections::BTreeMap;

use keybroker_proto::v1 as pb;
use keybroker_proto::v1::signing_client::SigningClient;
use tonic::transport::Channel;

use super::format::Algorithm;
use crate::{Client, ClientError, KeyInfo};

/// A signature over a digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedDigest {
    /// ECDSA: ASN.1 DER; Ed25519: 64 bytes.
    pub signature: Vec<u8>,
    /// The key.
    pub key: String,
    /// The version that signed.
    pub key_version: u32,
    /// Its algorithm.
    pub algorithm: Algorithm,
    /// Index of the audit record that logs the signature.
    pub audit_index: u64,
}

/// A DSSE envelope over an in-toto statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedStatement {
    /// The envelope JSON.
    pub envelope: Vec<u8>,
    /// The key.
    pub key: String,
    /// The version that signed.
    pub key_version: u32,
    /// Its algorithm.
    pub algorithm: Algorithm,
    /// The DSSE key id.
    pub keyid: String,
    /// Index of the audit record that logs the signature.
    pub audit_index: u64,
}

/// The public key of one version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKeyInfo {
    /// The key.
    pub key: String,
    /// The version.
    pub version: u32,
    /// Its algorithm.
    pub algorithm: Algorithm,
    /// PEM `PUBLIC KEY`.
    pub pem: String,
    /// Hex SHA-256 of the SubjectPublicKeyInfo DER.
    pub keyid: String,
}

fn algorithm(v: i32, rid: &str) -> Result<Algorithm, ClientError> {
    match pb::SignatureAlgorithm::try_from(v) {
        Ok(pb::SignatureAlgorithm::EcdsaP256) => Ok(Algorithm::EcdsaP256),
        Ok(pb::SignatureAlgorithm::Ed25519) => Ok(Algorithm::Ed25519),
        _ => Err(ClientError::MalformedResponse {
            problem: "unknown signature algorithm",
            request_id: rid.to_owned(),
        }),
    }
}

fn to_pb(alg: Algorithm) -> pb::SignatureAlgorithm {
    match alg {
        Algorithm::EcdsaP256 => pb::SignatureAlgorithm::EcdsaP256,
        Algorithm::Ed25519 => pb::SignatureAlgorithm::Ed25519,
    }
}

impl Client {
    fn signing(&self) -> SigningClient<Channel> {
        SigningClient::new(self.channel())
    }

    /// Creates a SIGN key of `alg` (its version 1 is a key pair generated in the HSM).
    ///
    /// # Errors
    /// `Status` (`ALREADY_EXISTS`, `PERMISSION_DENIED`, …), token-file errors.
    pub async fn create_signing_key(
        &self,
        name: &str,
        alg: Algorithm,
        labels: &BTreeMap<String, String>,
        hsm_id: Option<&str>,
    ) -> Result<KeyInfo, ClientError> {
        let msg = pb::CreateKeyRequest {
            name: name.to_owned(),
            purpose: pb::KeyPurpose::Sign as i32,
            labels: labels.clone().into_iter().collect(),
            hsm_id: hsm_id.unwrap_or_default().to_owned(),
            rotation_period: None,
            algorithm: to_pb(alg) as i32,
        };
        let (req, rid) = self.request(msg).await?;
        let key = self
            .key_admin()
            .create_key(req)
            .await
            .map_err(|s| ClientError::from_status(&s, &rid))?
            .into_inner();
        Ok(key.into())
    }

    /// Signs a SHA-256 `digest` of the artifact `artifact_name` with `key`'s newest version.
    ///
    /// # Errors
    /// `Status` (`INVALID_ARGUMENT` for a bad digest or name, `FAILED_PRECONDITION` for a
    /// disabled key or one that is not a SIGN key, `PERMISSION_DENIED`), token-file errors.
    pub async fn sign_digest(
        &self,
        key: &str,
        digest: &[u8; 32],
        artifact_name: &str,
        media_type: &str,
    ) -> Result<SignedDigest, ClientError> {
        let msg = pb::SignRequest {
            key: key.to_owned(),
            digest_algorithm: pb::DigestAlgorithm::Sha256 as i32,
            digest: digest.to_vec(),
            digest_hex: String::new(),
            artifact_name: artifact_name.to_owned(),
            media_type: media_type.to_owned(),
            subjects: Vec::new(),
        };
        self.sign_request(msg).await
    }

    /// Sends a `Sign` request as given (any digest form, subjects).
    ///
    /// # Errors
    /// As [`Client::sign_digest`].
    pub async fn sign_request(&self, msg: pb::SignRequest) -> Result<SignedDigest, ClientError> {
        let (req, rid) = self.request(msg).await?;
        let r = self
            .signing()
            .sign(req)
            .await
            .map_err(|s| ClientError::from_status(&s, &rid))?
            .into_inner();
        Ok(SignedDigest {
            algorithm: algorithm(r.algorithm, &rid)?,
            signature: r.signature,
            key: r.key,
            key_version: r.key_version,
            audit_index: r.audit_index,
        })
    }

    /// Signs an in-toto Statement v1 (JSON) as a DSSE envelope.
    ///
    /// # Errors
    /// `Status` (`INVALID_ARGUMENT` for a malformed or oversized statement, …).
    pub async fn sign_dsse(
        &self,
        key: &str,
        statement: &[u8],
    ) -> Result<SignedStatement, ClientError> {
        let (req, rid) = self
            .request(pb::SignDsseRequest {
                key: key.to_owned(),
                statement: statement.to_vec(),
            })
            .await?;
        let r = self
            .signing()
            .sign_dsse(req)
            .await
            .map_err(|s| ClientError::from_status(&s, &rid))?
            .into_inner();
        Ok(SignedStatement {
            algorithm: algorithm(r.algorithm, &rid)?,
            envelope: r.envelope,
            key: r.key,
            key_version: r.key_version,
            keyid: r.keyid,
            audit_index: r.audit_index,
        })
    }

    /// The public key of `version` of `key` (0: the newest enabled version).
    ///
    /// # Errors
    /// `Status` (`FAILED_PRECONDITION` for a key that is not a SIGN key), token-file errors.
    pub async fn public_key(&self, key: &str, version: u32) -> Result<PublicKeyInfo, ClientError> {
        let (req, rid) = self
            .request(pb::GetPublicKeyRequest {
                key: key.to_owned(),
                version,
            })
            .await?;
        let r = self
            .signing()
            .get_public_key(req)
            .await
            .map_err(|s| ClientError::from_status(&s, &rid))?
            .into_inner();
        Ok(PublicKeyInfo {
            algorithm: algorithm(r.algorithm, &rid)?,
            key: r.key,
            version: r.version,
            pem: r.pem,
            keyid: r.keyid,
        })
    }
}
