//! `pb.Wrapper`, the KMS plugin service bao calls. SetConfig makes a [`Seal`] and returns its
//! id; every later call names it (unknown id → NOT_FOUND). Seal errors go back as UNKNOWN
//! with their (safe) message, which bao prints.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tonic::{Request, Response, Status};
use zeroize::Zeroizing;

use crate::proto::pb::wrapper_server::Wrapper;
use crate::proto::{pb, wrapping};
use crate::seal::{Seal, SealError};

/// What `Type` answers; bao records it at init and it must never change.
pub const WRAPPER_TYPE: &str = "keybroker";
/// Most live instances (bao makes one per seal stanza; respawns replay SetConfig).
const MAX_INSTANCES: usize = 16;

/// The service: the live seal instances by id.
#[derive(Debug, Default)]
pub struct WrapperService {
    instances: Mutex<HashMap<String, Arc<Seal>>>,
}

impl WrapperService {
    fn get(&self, id: &str) -> Result<Arc<Seal>, Status> {
        self.instances
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
            .cloned()
            .ok_or_else(|| Status::not_found(format!("no wrapper instance {id:?}")))
    }
}

fn options(o: Option<wrapping::RpcOptions>) -> wrapping::RpcOptions {
    o.unwrap_or_default()
}

fn app_error(op: &'static str, e: &SealError) -> Status {
    tracing::warn!(op, error = %e, "seal operation failed");
    Status::unknown(e.to_string())
}

#[tonic::async_trait]
impl Wrapper for WrapperService {
    async fn set_config(
        &self,
        req: Request<pb::SetConfigRequest>,
    ) -> Result<Response<pb::SetConfigResponse>, Status> {
        let opts = options(req.into_inner().options);
        let seal = Seal::connect(&opts.with_config_map)
            .await
            .map_err(|e| app_error("SetConfig", &e))?;
        let id = uuid::Uuid::new_v4().to_string();
        let metadata = HashMap::from([
            ("key_name".to_owned(), seal.key_name().to_owned()),
            (
                "endpoint".to_owned(),
                opts.with_config_map
                    .get("endpoint")
                    .cloned()
                    .unwrap_or_default(),
            ),
        ]);
        {
            let mut instances = self
                .instances
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if instances.len() >= MAX_INSTANCES {
                return Err(Status::resource_exhausted(format!(
                    "at most {MAX_INSTANCES} seal instances per plugin process"
                )));
            }
            instances.insert(id.clone(), Arc::new(seal));
        }
        tracing::info!(wrapper_id = %id, "seal configured");
        Ok(Response::new(pb::SetConfigResponse {
            wrapper_id: id,
            wrapper_config: Some(wrapping::WrapperConfig { metadata }),
        }))
    }

    async fn r#type(
        &self,
        req: Request<pb::TypeRequest>,
    ) -> Result<Response<pb::TypeResponse>, Status> {
        self.get(&req.into_inner().wrapper_id)?;
        Ok(Response::new(pb::TypeResponse {
            r#type: WRAPPER_TYPE.to_owned(),
        }))
    }

    async fn key_id(
        &self,
        req: Request<pb::KeyIdRequest>,
    ) -> Result<Response<pb::KeyIdResponse>, Status> {
        let seal = self.get(&req.into_inner().wrapper_id)?;
        let key_id = seal.key_id().await.map_err(|e| app_error("KeyId", &e))?;
        Ok(Response::new(pb::KeyIdResponse { key_id }))
    }

    async fn encrypt(
        &self,
        req: Request<pb::EncryptRequest>,
    ) -> Result<Response<pb::EncryptResponse>, Status> {
        let r = req.into_inner();
        let seal = self.get(&r.wrapper_id)?;
        let plaintext = Zeroizing::new(r.plaintext);
        let aad = options(r.options).with_aad;
        let wrapped = seal
            .encrypt(plaintext, &aad)
            .await
            .map_err(|e| app_error("Encrypt", &e))?;
        Ok(Response::new(pb::EncryptResponse {
            ciphertext: Some(wrapping::BlobInfo {
                ciphertext: wrapped.ciphertext,
                iv: Vec::new(),
                key_info: Some(wrapping::KeyInfo {
                    mechanism: 0,
                    key_id: wrapped.key_id,
                    wrapped_key: Vec::new(),
                }),
            }),
        }))
    }

    async fn decrypt(
        &self,
        req: Request<pb::DecryptRequest>,
    ) -> Result<Response<pb::DecryptResponse>, Status> {
        let r = req.into_inner();
        let seal = self.get(&r.wrapper_id)?;
        let blob = r.ciphertext.unwrap_or_default();
        let aad = options(r.options).with_aad;
        let plaintext = seal
            .decrypt(&blob.ciphertext, &aad)
            .await
            .map_err(|e| app_error("Decrypt", &e))?;
        // prost owns the response buffer; the Zeroizing copy is wiped when it drops here.
        Ok(Response::new(pb::DecryptResponse {
            plaintext: plaintext.to_vec(),
        }))
    }

    async fn init(
        &self,
        req: Request<pb::InitRequest>,
    ) -> Result<Response<pb::InitResponse>, Status> {
        self.get(&req.into_inner().wrapper_id)?;
        Ok(Response::new(pb::InitResponse {}))
    }

    async fn finalize(
        &self,
        req: Request<pb::FinalizeRequest>,
    ) -> Result<Response<pb::FinalizeResponse>, Status> {
        let id = req.into_inner().wrapper_id;
        let removed = self
            .instances
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id);
        if removed.is_none() {
            return Err(Status::not_found(format!("no wrapper instance {id:?}")));
        }
        tracing::info!(wrapper_id = %id, "seal finalized");
        Ok(Response::new(pb::FinalizeResponse {}))
    }
}
