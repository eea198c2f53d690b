//! What a bench run drives: a keybroker broker through the real client (mTLS and/or JWT exactly
//! as the other subcommands connect), the HSM token straight through cryptoki, or OpenBao's
//! transit engine over HTTP. Each answers one operation with `Ok` or an error code.

use std::collections::BTreeMap;

use keybroker_client::dev_attestation::{self, DevResult, Tee};
use keybroker_client::recipient::RecipientKey;
use keybroker_client::{Attested, Client, ClientError, code_name};

use super::measure::{OpKind, PAYLOAD};
use super::openbao::Transit;
use super::raw_hsm::RawHsm;

/// A bench target.
pub(crate) enum Target {
    /// A keybroker broker over gRPC.
    Broker(BrokerTarget),
    /// The PKCS#11 token alone.
    RawHsm(RawHsm),
    /// OpenBao transit over HTTP.
    OpenBao(Transit),
    /// The XKS proxy API, SigV4-signed.
    Xks(super::xks::XksTarget),
}

impl Target {
    /// Runs one `op` for `worker`; the error is a short code for the report.
    pub(crate) async fn call(&self, op: OpKind, worker: usize) -> Result<(), String> {
        match self {
            Self::Broker(b) => b.call(op, worker).await,
            Self::RawHsm(h) => h.call(op, worker).await,
            Self::OpenBao(t) => t.call(op, worker).await,
            Self::Xks(x) => x.call(op, worker).await,
        }
    }
}

/// A broker driven over `clients.len()` HTTP/2 connections.
pub(crate) struct BrokerTarget {
    /// One client (one HTTP/2 connection) per `--connections`.
    pub(crate) clients: Vec<Client>,
    /// Data key key (datakey, decrypt).
    pub(crate) key: String,
    /// SEAL key (encrypt).
    pub(crate) seal_key: String,
    /// Encryption context sent with every call.
    pub(crate) context: BTreeMap<String, String>,
    /// A ciphertext of `key` under `context`, opened by every decrypt.
    pub(crate) ciphertext: Vec<u8>,
    /// attested: the dev state dir whose attestation verifier mints results, and the enclave
    /// key data keys are sealed to.
    pub(crate) attestation: Option<(std::path::PathBuf, RecipientKey)>,
}

impl BrokerTarget {
    async fn call(&self, op: OpKind, worker: usize) -> Result<(), String> {
        let Some(c) = self.clients.get(worker % self.clients.len().max(1)) else {
            return Err("NO_CONNECTION".into());
        };
        let r = match op {
            OpKind::Datakey => c
                .generate_data_key(&self.key, &self.context, None)
                .await
                .map(drop),
            OpKind::Decrypt => c
                .decrypt(&self.ciphertext, &self.context, None)
                .await
                .map(drop),
            OpKind::Encrypt => c
                .encrypt(&self.seal_key, &PAYLOAD, &self.context)
                .await
                .map(drop),
            OpKind::Sign => c
                .sign_digest(&self.key, &PAYLOAD, "bench", "")
                .await
                .map(drop),
            OpKind::Nonce => c.attestation_nonce().await.map(drop),
            OpKind::Attested => return self.attested(c).await,
        };
        r.map_err(|e| error_code(&e))
    }

    /// One attested release, as a TEE workload does it (the verifier's round trip replaced by
    /// minting a dev result locally).
    async fn attested(&self, c: &Client) -> Result<(), String> {
        let Some((state_dir, recipient)) = &self.attestation else {
            return Err("NO_ATTESTATION_STATE_DIR".into());
        };
        let nonce = c.attestation_nonce().await.map_err(|e| error_code(&e))?;
        let public = recipient.public_key().map_err(|_| "RECIPIENT".to_owned())?;
        let token = dev_attestation::mint(
            state_dir,
            &DevResult {
                tee: Tee::SevSnp,
                omit_tee: false,
                measurement: "ab".repeat(48),
                debug: false,
                nonce: Some(nonce.nonce),
                recipient: Some(public),
                ttl: std::time::Duration::from_secs(300),
                iat_offset: 0,
            },
        )
        .map_err(|_| "MINT".to_owned())?;
        let attested = Attested {
            token,
            recipient: Some(recipient.clone()),
        };
        c.generate_data_key_attested(&self.key, &self.context, None, &attested)
            .await
            .map(drop)
            .map_err(|e| error_code(&e))
    }
}

/// The report code of a client error: the gRPC code name, or the kind of local failure.
pub(crate) fn error_code(e: &ClientError) -> String {
    match e {
        ClientError::Status { code, .. } => code_name(*code).to_owned(),
        ClientError::Transport(_) => "TRANSPORT".to_owned(),
        ClientError::MalformedResponse { .. } => "MALFORMED_RESPONSE".to_owned(),
        ClientError::TokenFile { .. } | ClientError::InvalidToken { .. } => "TOKEN_FILE".to_owned(),
        _ => "CLIENT".to_owned(),
    }
}
