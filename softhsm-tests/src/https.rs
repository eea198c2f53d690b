//! A minimal HTTPS/1.1 client for the side-port tests (hyper + tokio-rustls, trusting only
//! the test CA), so hostile requests can be sent exactly as written.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// One response: status and body parsed as JSON (`Null` when the body is not JSON).
#[derive(Debug)]
pub struct Reply {
    /// HTTP status code.
    pub status: u16,
    /// The body, as JSON.
    pub json: serde_json::Value,
    /// The `x-request-id` header, if any.
    pub request_id: Option<String>,
    /// The body as text.
    pub text: String,
}

/// Sends `method path` with `headers` and `body` to `addr` over TLS (server name `localhost`,
/// trusting only `ca`).
///
/// # Errors
/// TLS, connection or protocol failures.
pub async fn request(
    addr: SocketAddr,
    ca: &Path,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> anyhow::Result<Reply> {
    request_as(addr, ca, None, method, path, headers, body).await
}

/// [`request`], presenting the client certificate `client` (certificate PEM, key PEM) when
/// given.
///
/// # Errors
/// TLS (including a refused client certificate), connection or protocol failures.
pub async fn request_as(
    addr: SocketAddr,
    ca: &Path,
    client: Option<(&Path, &Path)>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> anyhow::Result<Reply> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca)? {
        roots.add(cert?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let config = match client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = CertificateDer::pem_file_iter(cert)?.collect::<Result<Vec<_>, _>>()?;
            builder.with_client_auth_cert(chain, PrivateKeyDer::from_pem_file(key)?)?
        }
    };
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost")?, tcp)
        .await
        .context("TLS handshake")?;
    send(TokioIo::new(tls), method, path, headers, body).await
}

/// Plain-HTTP `GET path` to `addr` (the dev side port).
///
/// # Errors
/// Connection or protocol failures.
pub async fn get_plain(addr: SocketAddr, path: &str) -> anyhow::Result<Reply> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    send(TokioIo::new(tcp), "GET", path, &[], "").await
}

async fn send<I>(
    io: I,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> anyhow::Result<Reply>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
    tokio::spawn(conn);
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = sender
        .send_request(req.body(Full::new(Bytes::from(body.to_owned())))?)
        .await?;
    let status = resp.status().as_u16();
    let request_id = resp
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let bytes = resp.into_body().collect().await?.to_bytes();
    let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    Ok(Reply {
        status,
        json,
        request_id,
        text: String::from_utf8_lossy(&bytes).into_owned(),
    })
}
