//! `keybroker.v1.Signing`: signatures with SIGN-purpose keys for release pipelines.
//!
//! Every call is audited like a data-key release (granted or refused, before the response
//! leaves); a granted `Sign` / `SignDsse` answers with the index of its record, whose inclusion
//! proof under a signed checkpoint is the signature's transparency receipt.

use std::collections::BTreeMap;
use std::sync::Arc;

use keybroker_proto::v1 as pb;
use keybroker_proto::v1::signing_server::Signing;
use sha2::{Digest as _, Sha256};
use tonic::{Request, Response, Status};

use super::audit::{Recorder, WORK_BUDGET};
use super::convert::algorithm_to_pb;
use super::status::{invalid, key_error};
use super::{ApiState, RequestId};
use crate::audit::{Op, SignedSubject};
use crate::hsm::SignAlgorithm;
use crate::keys::context::EncryptionContext;
use crate::keys::sign_input::{self, Digest, DigestAlgorithm, Subject};
use crate::policy::{Action, SignAction, SigningFacts};

/// The Signing service.
#[derive(Debug)]
pub(crate) struct SigningApi {
    state: Arc<ApiState>,
}

impl SigningApi {
    pub(crate) fn new(state: Arc<ApiState>) -> Self {
        Self { state }
    }
}

fn algorithm_name(alg: SignAlgorithm) -> &'static str {
    match alg {
        SignAlgorithm::EcdsaP256 => "ecdsa-p256",
        SignAlgorithm::Ed25519 => "ed25519",
    }
}

fn digest_algorithm(v: i32, rid: &RequestId) -> Result<DigestAlgorithm, Status> {
    match pb::DigestAlgorithm::try_from(v) {
        Ok(pb::DigestAlgorithm::Sha256) => Ok(DigestAlgorithm::Sha256),
        Ok(pb::DigestAlgorithm::Sha384) => Ok(DigestAlgorithm::Sha384),
        _ => Err(invalid(
            "digest_algorithm must be DIGEST_ALGORITHM_SHA256 or DIGEST_ALGORITHM_SHA384",
            rid,
        )),
    }
}

fn audit_subjects(subjects: &[Subject]) -> Vec<SignedSubject> {
    subjects
        .iter()
        .map(|s| SignedSubject {
            name: s.name.clone(),
            digests: s.digest_labels().collect(),
        })
        .collect()
}

fn policy_subjects(subjects: &[Subject], facts: &mut SigningFacts) {
    facts.subject_names = subjects.iter().map(|s| s.name.clone()).collect();
    facts.subject_digests = subjects.iter().flat_map(Subject::digest_labels).collect();
}

impl SigningApi {
    #[tracing::instrument(skip_all, name = "Sign")]
    pub(crate) async fn sign(
        &self,
        req: Request<pb::SignRequest>,
        rec: &mut Recorder,
    ) -> Result<Response<pb::SignResponse>, Status> {
        let call = rec.begin(&self.state, &req).await?;
        let rid = &call.rid;
        let r = req.into_inner();
        let name = rec.named_key(&r.key, rid)?;
        let alg = digest_algorithm(r.digest_algorithm, rid)?;
        let digest = Digest::parse(alg, r.digest, &r.digest_hex).map_err(|e| key_error(&e, rid))?;
        rec.signed().digest = digest.label();
        sign_input::artifact(&r.artifact_name, &r.media_type).map_err(|e| key_error(&e, rid))?;
        rec.signed().artifact_name = Some(r.artifact_name.clone());
        rec.signed().media_type = (!r.media_type.is_empty()).then(|| r.media_type.clone());
        sign_input::subject_count(r.subjects.len()).map_err(|e| key_error(&e, rid))?;
        let subjects = r
            .subjects
            .into_iter()
            .map(|s| sign_input::subject(&s.name, s.digest.into_iter().collect::<BTreeMap<_, _>>()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| key_error(&e, rid))?;
        rec.signed().subjects = audit_subjects(&subjects);
        let mut facts = SigningFacts {
            artifact_name: r.artifact_name,
            media_type: r.media_type,
            digests: vec![digest.label()],
            ..SigningFacts::default()
        };
        policy_subjects(&subjects, &mut facts);
        let key = (self.state)
            .authorize_signing(&call, SignAction::Sign, &name, &facts)
            .await?;
        rec.hsm(&self.state.keys, &key.hsm_id);
        let sig = self
            .state
            .keys
            .sign_digest(&call.caller(), (&name, &key), &digest)
            .await
            .map_err(|e| key_error(&e, rid))?;
        rec.version(sig.version);
        rec.signed().algorithm = Some(algorithm_name(sig.algorithm).to_owned());
        tracing::info!(request_id = %rid, key = name.as_str(), version = sig.version,
            subject = %call.principal.subject, digest = %digest.label(), "digest signed");
        Ok(rid.response(pb::SignResponse {
            signature: sig.bytes,
            key: name.as_str().to_owned(),
            key_version: sig.version,
            algorithm: algorithm_to_pb(sig.algorithm).into(),
            audit_index: 0,
        }))
    }

    #[tracing::instrument(skip_all, name = "SignDsse")]
    pub(crate) async fn sign_dsse(
        &self,
        req: Request<pb::SignDsseRequest>,
        rec: &mut Recorder,
    ) -> Result<Response<pb::SignDsseResponse>, Status> {
        let call = rec.begin(&self.state, &req).await?;
        let rid = &call.rid;
        let r = req.into_inner();
        let name = rec.named_key(&r.key, rid)?;
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(&r.statement)));
        rec.signed().digest.clone_from(&digest);
        let statement = sign_input::statement(&r.statement).map_err(|e| key_error(&e, rid))?;
        rec.signed().predicate_type = Some(statement.predicate_type.clone());
        rec.signed().subjects = audit_subjects(&statement.subjects);
        let mut facts = SigningFacts {
            digests: vec![digest.clone()],
            predicate_type: statement.predicate_type.clone(),
            ..SigningFacts::default()
        };
        policy_subjects(&statement.subjects, &mut facts);
        let key = (self.state)
            .authorize_signing(&call, SignAction::SignAttestation, &name, &facts)
            .await?;
        rec.hsm(&self.state.keys, &key.hsm_id);
        let sig = self
            .state
            .keys
            .sign_dsse(&call.caller(), (&name, &key), &r.statement)
            .await
            .map_err(|e| key_error(&e, rid))?;
        rec.version(sig.version);
        rec.signed().algorithm = Some(algorithm_name(sig.algorithm).to_owned());
        tracing::info!(request_id = %rid, key = name.as_str(), version = sig.version,
            subject = %call.principal.subject, digest = %digest,
            predicate_type = %statement.predicate_type, "statement signed");
        Ok(rid.response(pb::SignDsseResponse {
            envelope: sig.bytes,
            key: name.as_str().to_owned(),
            key_version: sig.version,
            algorithm: algorithm_to_pb(sig.algorithm).into(),
            keyid: sig.keyid.unwrap_or_default(),
            audit_index: 0,
        }))
    }

    #[tracing::instrument(skip_all, name = "GetPublicKey")]
    pub(crate) async fn get_public_key(
        &self,
        req: Request<pb::GetPublicKeyRequest>,
        rec: &mut Recorder,
    ) -> Result<Response<pb::PublicKey>, Status> {
        let call = rec.begin(&self.state, &req).await?;
        let rid = &call.rid;
        let r = req.into_inner();
        let name = rec.named_key(&r.key, rid)?;
        let key = (self.state)
            .authorize_key(&call, Action::GetKey, &name, &EncryptionContext::empty())
            .await?;
        rec.hsm(&self.state.keys, &key.hsm_id);
        let info = self
            .state
            .keys
            .public_key((&name, &key), r.version)
            .await
            .map_err(|e| key_error(&e, rid))?;
        rec.version(info.version);
        Ok(rid.response(pb::PublicKey {
            key: name.as_str().to_owned(),
            version: info.version,
            algorithm: algorithm_to_pb(info.algorithm).into(),
            pem: info.pem,
            keyid: info.keyid,
        }))
    }
}

/// Runs a handler within [`WORK_BUDGET`], then appends its record (see `wrap.rs`; by hand
/// here because a granted signature carries its record's index).
macro_rules! audited {
    ($self:ident, $req:ident, $op:ident, $method:ident, $index:expr) => {{
        let mut rec = $self.state.recorder(Op::$op);
        let result =
            match tokio::time::timeout(WORK_BUDGET, Self::$method($self, $req, &mut rec)).await {
                Ok(result) => result,
                Err(_) => Err(rec.over_budget()),
            };
        rec.finish_indexed(result, $index).await
    }};
}

#[tonic::async_trait]
impl Signing for SigningApi {
    async fn sign(
        &self,
        req: Request<pb::SignRequest>,
    ) -> Result<Response<pb::SignResponse>, Status> {
        audited!(self, req, Sign, sign, |r: &mut pb::SignResponse, i| r
            .audit_index =
            i)
    }

    async fn sign_dsse(
        &self,
        req: Request<pb::SignDsseRequest>,
    ) -> Result<Response<pb::SignDsseResponse>, Status> {
        audited!(
            self,
            req,
            SignDsse,
            sign_dsse,
            |r: &mut pb::SignDsseResponse, i| {
                r.audit_index = i;
            }
        )
    }

    async fn get_public_key(
        &self,
        req: Request<pb::GetPublicKeyRequest>,
    ) -> Result<Response<pb::PublicKey>, Status> {
        audited!(
            self,
            req,
            GetPublicKey,
            get_public_key,
            |_: &mut pb::PublicKey, _| {}
        )
    }
}
