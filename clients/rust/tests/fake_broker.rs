//! The client library against an in-process fake broker over real TLS (rcgen CA): the bearer
//! token and request id reach the server, the token is re-read after rotation, responses and
//! gRPC errors (code, request id, retryability) convert as documented, list pages are followed.
//! End-to-end tests against the real broker live in `softhsm-tests/`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use keybroker_client::{Client, ClientConfig, ClientError};
use keybroker_proto::v1 as pb;
use keybroker_proto::v1::data_keys_server::{DataKeys, DataKeysServer};
use keybroker_proto::v1::key_admin_server::{KeyAdmin, KeyAdminServer};
use tonic::transport::{Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status};

/// (authorization header, x-request-id) of every request the fake saw.
type Seen = Arc<Mutex<Vec<(String, String)>>>;

#[derive(Clone)]
struct Fake {
    seen: Seen,
}

impl Fake {
    fn record<T>(&self, req: &Request<T>) -> Result<String, Status> {
        let get = |k| {
            req.metadata()
                .get(k)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let auth = get("authorization").ok_or_else(|| Status::unauthenticated("no token"))?;
        let rid = get("x-request-id").ok_or_else(|| Status::invalid_argument("no request id"))?;
        if uuid::Uuid::parse_str(&rid).is_err() {
            return Err(Status::invalid_argument("request id is not a uuid"));
        }
        self.seen
            .lock()
            .map_err(|_| Status::internal("poisoned"))?
            .push((auth, rid.clone()));
        Ok(rid)
    }
}

fn lease(id: &str) -> Option<pb::Lease> {
    Some(pb::Lease {
        lease_id: id.to_owned(),
        expires_at: Some(prost_types::Timestamp {
            seconds: 1_700_000_000,
            nanos: 0,
        }),
        ttl_seconds: 60,
    })
}

#[tonic::async_trait]
impl DataKeys for Fake {
    async fn generate_data_key(
        &self,
        req: Request<pb::GenerateDataKeyRequest>,
    ) -> Result<Response<pb::GenerateDataKeyResponse>, Status> {
        self.record(&req)?;
        let r = req.into_inner();
        if r.key != "datasets/demo" || r.context.get("dataset").map(String::as_str) != Some("d") {
            return Err(Status::invalid_argument("unexpected key or context"));
        }
        if r.ttl
            != Some(prost_types::Duration {
                seconds: 60,
                nanos: 0,
            })
        {
            return Err(Status::invalid_argument("unexpected ttl"));
        }
        Ok(Response::new(pb::GenerateDataKeyResponse {
            plaintext: vec![9; 32],
            ciphertext: vec![1, 2, 3],
            key_version: 4,
            lease: lease("lease-1"),
            ..Default::default()
        }))
    }

    async fn generate_data_key_without_plaintext(
        &self,
        _: Request<pb::GenerateDataKeyWithoutPlaintextRequest>,
    ) -> Result<Response<pb::GenerateDataKeyWithoutPlaintextResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn decrypt(
        &self,
        req: Request<pb::DecryptRequest>,
    ) -> Result<Response<pb::DecryptResponse>, Status> {
        let rid = self.record(&req)?;
        let mut status = Status::permission_denied("policy denies decrypt");
        let echo = format!("srv-{rid}")
            .parse()
            .map_err(|_| Status::internal("rid"))?;
        status.metadata_mut().insert("x-request-id", echo);
        Err(status)
    }

    async fn encrypt(
        &self,
        _: Request<pb::EncryptRequest>,
    ) -> Result<Response<pb::EncryptResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn re_encrypt(
        &self,
        req: Request<pb::ReEncryptRequest>,
    ) -> Result<Response<pb::ReEncryptResponse>, Status> {
        self.record(&req)?;
        Err(Status::unavailable("hsm is down"))
    }

    async fn get_attestation_nonce(
        &self,
        _: Request<pb::GetAttestationNonceRequest>,
    ) -> Result<Response<pb::GetAttestationNonceResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
}

#[tonic::async_trait]
impl KeyAdmin for Fake {
    async fn create_key(
        &self,
        _: Request<pb::CreateKeyRequest>,
    ) -> Result<Response<pb::Key>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn get_key(&self, _: Request<pb::GetKeyRequest>) -> Result<Response<pb::Key>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn list_keys(
        &self,
        req: Request<pb::ListKeysRequest>,
    ) -> Result<Response<pb::ListKeysResponse>, Status> {
        self.record(&req)?;
        let key = |name: &str| pb::Key {
            name: name.to_owned(),
            ..pb::Key::default()
        };
        let (keys, next) = match req.get_ref().page_token.as_str() {
            "" => (vec![key("datasets/a")], "p2"),
            "p2" => (vec![key("datasets/b")], ""),
            _ => return Err(Status::invalid_argument("bad page token")),
        };
        Ok(Response::new(pb::ListKeysResponse {
            keys,
            next_page_token: next.to_owned(),
        }))
    }

    async fn rotate_key(
        &self,
        _: Request<pb::RotateKeyRequest>,
    ) -> Result<Response<pb::Key>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn update_key(
        &self,
        _: Request<pb::UpdateKeyRequest>,
    ) -> Result<Response<pb::Key>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn disable_key(
        &self,
        _: Request<pb::DisableKeyRequest>,
    ) -> Result<Response<pb::Key>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn enable_key(
        &self,
        _: Request<pb::EnableKeyRequest>,
    ) -> Result<Response<pb::Key>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn schedule_key_destruction(
        &self,
        _: Request<pb::ScheduleKeyDestructionRequest>,
    ) -> Result<Response<pb::Key>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn cancel_key_destruction(
        &self,
        _: Request<pb::CancelKeyDestructionRequest>,
    ) -> Result<Response<pb::Key>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn revoke_leases(
        &self,
        _: Request<pb::RevokeLeasesRequest>,
    ) -> Result<Response<pb::RevokeLeasesResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
}

/// A TLS fake broker on 127.0.0.1:0 and a client config (CA, token file) for it.
struct Harness {
    dir: tempfile::TempDir,
    cfg: ClientConfig,
    seen: Seen,
}

async fn start() -> anyhow::Result<Harness> {
    let dir = tempfile::tempdir()?;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_key = rcgen::KeyPair::generate()?;
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
    let server_key = rcgen::KeyPair::generate()?;
    let server_params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])?;
    let server_cert = server_params.signed_by(&server_key, &issuer)?;

    let ca_path = dir.path().join("ca.pem");
    std::fs::write(&ca_path, ca_cert.pem())?;
    let token_path = dir.path().join("token");
    std::fs::write(&token_path, "tok-1\n")?;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let seen = Seen::default();
    let fake = Fake { seen: seen.clone() };
    let tls = ServerTlsConfig::new().identity(Identity::from_pem(
        server_cert.pem(),
        server_key.serialize_pem(),
    ));
    let router = Server::builder()
        .tls_config(tls)?
        .add_service(DataKeysServer::new(fake.clone()))
        .add_service(KeyAdminServer::new(fake));
    tokio::spawn(
        router.serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );

    let cfg = ClientConfig {
        ca: Some(ca_path),
        token_file: Some(token_path),
        ..ClientConfig::new(format!("https://{addr}"))
    };
    Ok(Harness { dir, cfg, seen })
}

fn context() -> BTreeMap<String, String> {
    BTreeMap::from([("dataset".to_owned(), "d".to_owned())])
}

#[tokio::test]
async fn generate_data_key_sends_token_and_request_id_over_tls() -> anyhow::Result<()> {
    let h = start().await?;
    let client = Client::connect(h.cfg.clone()).await?;
    let dk = client
        .generate_data_key("datasets/demo", &context(), Some(Duration::from_secs(60)))
        .await?;
    assert_eq!(dk.plaintext.as_slice(), &[9; 32]);
    assert_eq!(dk.ciphertext, vec![1, 2, 3]);
    assert_eq!(dk.key_version, 4);
    assert_eq!(dk.lease_id, "lease-1");
    assert_eq!(
        dk.expires_at.map(|t| t.unix_timestamp()),
        Some(1_700_000_000)
    );
    assert!(format!("{dk:?}").contains("[redacted]"));
    let seen = h
        .seen
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].0, "Bearer tok-1");
    Ok(())
}

#[tokio::test]
async fn rotated_token_file_is_picked_up() -> anyhow::Result<()> {
    let h = start().await?;
    let client = Client::connect(h.cfg.clone()).await?;
    client.list_keys("", 0, "").await?;
    let token = h.dir.path().join("token");
    std::fs::write(&token, "tok-2")?;
    let later = SystemTime::now() + Duration::from_secs(10);
    std::fs::File::options()
        .write(true)
        .open(&token)?
        .set_modified(later)?;
    client.list_keys("", 0, "").await?;
    let seen = h
        .seen
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .clone();
    let auths: Vec<&str> = seen.iter().map(|(a, _)| a.as_str()).collect();
    assert_eq!(auths, ["Bearer tok-1", "Bearer tok-2"]);
    assert_ne!(seen[0].1, seen[1].1, "each request gets its own id");
    Ok(())
}

#[tokio::test]
async fn status_errors_keep_code_and_request_id() -> anyhow::Result<()> {
    let h = start().await?;
    let client = Client::connect(h.cfg.clone()).await?;
    let err = client.decrypt(&[1, 2, 3], &context(), None).await.err();
    let Some(ClientError::Status {
        code,
        message,
        request_id,
    }) = err
    else {
        anyhow::bail!("expected a status error, got {err:?}");
    };
    assert_eq!(code, tonic::Code::PermissionDenied);
    assert_eq!(message, "policy denies decrypt");
    let sent = h.seen.lock().map_err(|_| anyhow::anyhow!("poisoned"))?[0]
        .1
        .clone();
    assert_eq!(
        request_id,
        format!("srv-{sent}"),
        "the broker's echoed id wins"
    );

    let err = client.re_encrypt(&[1], &context()).await.err();
    assert!(
        err.as_ref().is_some_and(ClientError::is_retryable),
        "{err:?}"
    );
    let sent = h.seen.lock().map_err(|_| anyhow::anyhow!("poisoned"))?[1]
        .1
        .clone();
    assert_eq!(
        err.as_ref().and_then(ClientError::request_id),
        Some(sent.as_str())
    );
    Ok(())
}

#[tokio::test]
async fn list_all_keys_follows_page_tokens() -> anyhow::Result<()> {
    let h = start().await?;
    let client = Client::connect(h.cfg.clone()).await?;
    let names: Vec<String> = client
        .list_all_keys("")
        .await?
        .into_iter()
        .map(|k| k.name)
        .collect();
    assert_eq!(names, ["datasets/a", "datasets/b"]);
    Ok(())
}

#[tokio::test]
async fn wrong_ca_fails_to_connect() -> anyhow::Result<()> {
    let h = start().await?;
    let other_ca = h.dir.path().join("other-ca.pem");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    std::fs::write(
        &other_ca,
        params.self_signed(&rcgen::KeyPair::generate()?)?.pem(),
    )?;
    let cfg = ClientConfig {
        ca: Some(other_ca),
        ..h.cfg.clone()
    };
    let err = Client::connect(cfg).await.err();
    assert!(matches!(err, Some(ClientError::Transport(_))), "{err:?}");
    Ok(())
}

#[tokio::test]
async fn missing_token_file_is_reported_at_connect() -> anyhow::Result<()> {
    let h = start().await?;
    let cfg = ClientConfig {
        token_file: Some(h.dir.path().join("nope")),
        ..h.cfg.clone()
    };
    let err = Client::connect(cfg)
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.starts_with("cannot read token file") && err.contains("nope"),
        "{err}"
    );
    Ok(())
}
