//! The HTTP(S) side port: `/healthz`, `/readyz`, `/metrics` and the Vault/OpenBao
//! transit-compatible seal endpoint ([`transit`]). TLS with the gRPC server's certificate
//! (`crate::tls`), HTTP/1.1 and HTTP/2, bounded TLS handshakes, graceful drain on shutdown.
//! When the transit endpoint authenticates by client certificate, the handshake asks for one
//! and each request carries it as a [`PeerCertificate`] extension.

mod ops;
pub(crate) mod sampler;
pub(crate) mod transit;
pub(crate) mod xks;

pub(crate) use ops::router as ops_router;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

/// A TLS handshake that takes longer than this is dropped (slowloris).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long shutdown waits for open HTTP connections.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a connection whose handshake failed is kept open for the client to read the alert.
const LINGER: Duration = Duration::from_secs(2);
/// Most concurrent connections on the side port.
const MAX_CONNECTIONS: usize = 1024;

/// The DER of the client certificate a TLS connection presented, verified by the handshake
/// against the client CA bundle and the X.509-SVID rules.
#[derive(Clone)]
pub(crate) struct PeerCertificate(pub(crate) Arc<Vec<u8>>);

/// Why the side port could not start.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The certificate or key could not be read or used.
    #[error("server.tls_cert / server.tls_key for the HTTPS side port: {0}")]
    Tls(String),
    /// The XKS proxy API could not be set up.
    #[error(transparent)]
    Xks(#[from] xks::XksSetupError),
    /// The listen address could not be bound.
    #[error("http.listen: cannot bind {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// Serves `router` on `listener` (over TLS when `tls` is given) until `cancel`, then drains
/// open connections (bounded by [`DRAIN_TIMEOUT`]).
pub(crate) async fn serve(
    listener: TcpListener,
    tls: Option<Arc<ServerConfig>>,
    router: axum::Router,
    cancel: CancellationToken,
) {
    let acceptor = tls.map(TlsAcceptor::from);
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (tcp, peer) = tokio::select! {
            () = cancel.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: do not spin; the next accept may succeed.
                    tracing::warn!(error = %e, "side port: accept failed");
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "side port: connection limit reached, dropping");
            continue;
        };
        let acceptor = acceptor.clone();
        let router = router.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _slot = slot;
            let builder = Builder::new(TokioExecutor::new());
            let Some(acceptor) = acceptor else {
                let service = TowerToHyperService::new(router);
                let conn = builder.serve_connection_with_upgrades(TokioIo::new(tcp), service);
                if let Err(e) = watcher.watch(conn.into_owned()).await {
                    tracing::debug!(%peer, error = %e, "side port: connection ended with an error");
                }
                return;
            };
            let accept = acceptor.accept(tcp).into_fallible();
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, accept).await {
                Ok(Ok(tls)) => tls,
                Ok(Err((e, tcp))) => {
                    tracing::debug!(%peer, error = %e, "side port: TLS handshake failed");
                    linger(tcp).await;
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "side port: TLS handshake timed out");
                    return;
                }
            };
            // The verified client certificate (if the client sent one) goes with every request
            // of this connection; routes that authenticate by it read it from there.
            let leaf = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| PeerCertificate(Arc::new(c.as_ref().to_vec())));
            let service = match leaf {
                Some(leaf) => TowerToHyperService::new(router.layer(axum::Extension(leaf))),
                None => TowerToHyperService::new(router),
            };
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), service);
            if let Err(e) = watcher.watch(conn.into_owned()).await {
                tracing::debug!(%peer, error = %e, "side port: connection ended with an error");
            }
        });
    }
    drain(graceful).await;
}

/// Closes a connection whose handshake failed so that the client reads our alert: a TLS 1.3
/// client sends its request right after its certificate, and closing a socket with that
/// request unread sends a reset that can overtake the alert (the client then sees a broken
/// pipe, not "handshake failure"). So: FIN after the alert, then read (and discard) what the
/// client still sends, for at most [`LINGER`].
async fn linger(mut tcp: tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let _ = tcp.shutdown().await;
    let mut sink = [0u8; 4096];
    let _ = tokio::time::timeout(LINGER, async {
        while matches!(tcp.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
}

async fn drain(graceful: GracefulShutdown) {
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(timeout = ?DRAIN_TIMEOUT, "side port: drain timeout");
    }
}
