//! The OpenBao KMS plugin binary alone, started as bao would start it: it refuses to run
//! outside bao, and its gRPC port accepts only the client certificate bao passed in
//! `PLUGIN_CLIENT_CERT` (another certificate or none gets no answer).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a failure is the test failing"
)]

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use openbao_kms_keybroker::handshake::{MAGIC_COOKIE_KEY, MAGIC_COOKIE_VALUE};
use openbao_kms_keybroker::proto::pb::{self, wrapper_client::WrapperClient};
use openbao_kms_keybroker::proto::plugin::{self, grpc_controller_client::GrpcControllerClient};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

/// A built binary of this workspace (`target/<profile>/<name>`).
fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let path = exe.parent().and_then(Path::parent).unwrap().join(name);
    assert!(
        path.exists(),
        "{} not built (cargo build --workspace --bins)",
        path.display()
    );
    path
}

/// Polls `f` every 100 ms until it returns `Some`, failing after `limit`.
async fn poll<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A self-signed CA certificate as go-plugin makes (here P-256; bao's is P-521).
fn self_signed(cn: &str) -> (String, String) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// The plugin process, killed if the test ends before it exits.
struct Plugin(Child);

impl Drop for Plugin {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the plugin as bao would; returns the process, its address and server certificate PEM.
fn spawn_plugin(client_cert_pem: &str) -> (Plugin, String, String) {
    let mut child = Command::new(bin("openbao-kms-keybroker"))
        .env(MAGIC_COOKIE_KEY, MAGIC_COOKIE_VALUE)
        .env("PLUGIN_PROTOCOL_VERSIONS", "1")
        .env("PLUGIN_CLIENT_CERT", client_cert_pem)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let fields: Vec<&str> = line.trim_end().split('|').collect();
    assert_eq!(fields.len(), 6, "{line}");
    assert_eq!(&fields[..3], ["1", "1", "tcp"]);
    assert_eq!(fields[4], "grpc");
    let der = base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(fields[5])
        .unwrap();
    let pem = format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        base64::engine::general_purpose::STANDARD.encode(der)
    );
    (Plugin(child), fields[3].to_owned(), pem)
}

async fn channel(
    addr: &str,
    server_pem: &str,
    identity: Option<(&str, &str)>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(server_pem))
        .domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)?
        .connect()
        .await
}

async fn type_call(
    ch: Result<Channel, tonic::transport::Error>,
) -> Result<pb::TypeResponse, String> {
    let ch = ch.map_err(|e| format!("connect: {e}"))?;
    WrapperClient::new(ch)
        .r#type(pb::TypeRequest {
            wrapper_id: "nope".into(),
        })
        .await
        .map(tonic::Response::into_inner)
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
}

#[tokio::test]
async fn plugin_accepts_only_baos_client_certificate() {
    let (bao_cert, bao_key) = self_signed("bao");
    let (other_cert, other_key) = self_signed("intruder");
    let (mut child, addr, server_pem) = spawn_plugin(&bao_cert);

    // Another certificate, or none, never gets a gRPC answer.
    let other = type_call(channel(&addr, &server_pem, Some((&other_cert, &other_key))).await).await;
    assert!(
        other.is_err() && !other.as_ref().unwrap_err().contains("NotFound"),
        "{other:?}"
    );
    let none = type_call(channel(&addr, &server_pem, None).await).await;
    assert!(
        none.is_err() && !none.as_ref().unwrap_err().contains("NotFound"),
        "{none:?}"
    );

    // bao's certificate reaches the service: an unknown wrapper id is NOT_FOUND.
    let ch = channel(&addr, &server_pem, Some((&bao_cert, &bao_key)))
        .await
        .unwrap();
    let status = WrapperClient::new(ch.clone())
        .r#type(pb::TypeRequest {
            wrapper_id: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
    let health = tonic_health::pb::health_client::HealthClient::new(ch.clone())
        .check(tonic_health::pb::HealthCheckRequest {
            service: "plugin".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        health.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    // A SetConfig with a broken stanza is an application error bao can show.
    let bad = WrapperClient::new(ch.clone())
        .set_config(pb::SetConfigRequest {
            options: Some(openbao_kms_keybroker::proto::wrapping::RpcOptions {
                with_config_map: [("endpoint".to_owned(), "http://x".to_owned())].into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::Unknown);
    assert!(bad.message().contains("seal stanza"), "{bad:?}");

    // Shutdown answers, then the process exits.
    GrpcControllerClient::new(ch)
        .shutdown(plugin::Empty {})
        .await
        .unwrap();
    let status = poll("the plugin to exit", Duration::from_secs(10), || {
        child.0.try_wait().unwrap()
    })
    .await;
    assert!(status.success(), "{status}");
}

#[test]
fn plugin_refuses_to_run_outside_bao() {
    let out = Command::new(bin("openbao-kms-keybroker"))
        .env_remove(MAGIC_COOKIE_KEY)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty(), "no handshake line");
    assert!(String::from_utf8_lossy(&out.stderr).contains("OpenBao KMS plugin"));
}
