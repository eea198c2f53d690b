//! TLS of the gRPC listener and of the HTTP side port, with a rustls `ServerConfig` of our own
//! (tonic's `ServerTlsConfig` cannot swap its client CA at runtime).
//!
//! Handshakes run in their own tasks, bounded in time, so a slow or hostile client cannot stall
//! the accept loop; finished connections go to tonic through a channel. tonic reads the peer
//! certificates of a `tokio_rustls` stream into each request's extensions
//! (`Request::peer_certs`). Session resumption is off: every connection presents its client
//! certificate to the bundle in force, so a rotated-out CA stops working at once.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::ServerConfig;
use rustls::server::NoServerSessionStorage;
use rustls::server::danger::ClientCertVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Longest a client may take to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Finished handshakes waiting for tonic to pick them up.
const QUEUE: usize = 64;

/// ALPN of the gRPC listener.
pub(crate) const ALPN_GRPC: &[&[u8]] = &[b"h2"];
/// ALPN of the HTTP side port.
pub(crate) const ALPN_HTTP: &[&[u8]] = &[b"h2", b"http/1.1"];

/// A server config (gRPC listener and HTTP side port alike): our certificate, the `alpn`
/// protocols, `client_auth` when client certificates are asked for, and no session
/// resumption.
///
/// # Errors
/// Unreadable or malformed certificate or key, or a key that does not match.
pub(crate) fn server_config(
    cert: &Path,
    key: &Path,
    client_auth: Option<Arc<dyn ClientCertVerifier>>,
    alpn: &[&[u8]],
) -> Result<Arc<ServerConfig>, std::io::Error> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| std::io::Error::other(format!("{}: {e}", cert.display())))?;
    // The pem error could quote key lines; say only what was expected.
    let key = PrivateKeyDer::from_pem_file(key).map_err(|_| {
        std::io::Error::other(format!("{}: no PEM private key found", key.display()))
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(std::io::Error::other)?;
    let builder = match client_auth {
        Some(v) => builder.with_client_cert_verifier(v),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(std::io::Error::other)?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// Accepts on `listener` until `cancel`, handshaking each connection in its own task.
pub(crate) fn incoming(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    tasks: &TaskTracker,
    cancel: CancellationToken,
) -> ReceiverStream<Result<TlsStream<TcpStream>, std::io::Error>> {
    let (tx, rx) = tokio::sync::mpsc::channel(QUEUE);
    let acceptor = TlsAcceptor::from(config);
    let handshakes = tasks.clone();
    tasks.spawn(async move {
        loop {
            let (tcp, peer) = tokio::select! {
                () = cancel.cancelled() => return,
                () = tx.closed() => return,
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            let cancel = cancel.clone();
            handshakes.spawn(async move {
                let done = tokio::select! {
                    () = cancel.cancelled() => return,
                    r = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)) => r,
                };
                match done {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok(tls)).await;
                    }
                    Ok(Err(e)) => {
                        tracing::info!(%peer, error = %e, "TLS handshake failed");
                    }
                    Err(_) => tracing::info!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}
