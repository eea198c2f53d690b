//! Serving: bind in bao's port range, print the handshake line, then serve `pb.Wrapper`,
//! `plugin.GRPCController` and health over TLS until bao asks us to stop (Shutdown) or the
//! caller's shutdown future fires. TLS handshakes run in their own tasks so a client that
//! stalls cannot hold up bao's connection.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::handshake::{EnvError, PluginEnv, handshake_line};
use crate::proto::pb::wrapper_server::WrapperServer;
use crate::proto::plugin::Empty;
use crate::proto::plugin::grpc_controller_server::{GrpcController, GrpcControllerServer};
use crate::tls::{self, ServerIdentity, TlsError};
use crate::wrapper::WrapperService;

/// Longest a client may take to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// After a shutdown request, in-flight calls get this long before the process exits anyway.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);
/// The service name go-plugin's health check asks about.
const HEALTH_SERVICE: &str = "plugin";

/// Why the plugin could not start or serve.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The environment is not bao's.
    #[error(transparent)]
    Env(#[from] EnvError),
    /// TLS set-up failed.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// No port of the range could be bound, or stdout failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// `plugin.GRPCController`: Shutdown answers, then the server stops.
#[derive(Debug)]
struct Controller {
    stop: Arc<Notify>,
}

#[tonic::async_trait]
impl GrpcController for Controller {
    async fn shutdown(&self, _req: Request<Empty>) -> Result<Response<Empty>, Status> {
        tracing::info!("bao asked the plugin to shut down");
        self.stop.notify_one();
        Ok(Response::new(Empty {}))
    }
}

/// Runs the plugin: TLS identity, bind, handshake line on `stdout`, serve until Shutdown or
/// `shutdown` completes.
///
/// # Errors
/// [`RunError`] for a failed start; a running server only fails on transport errors.
pub async fn run(
    env: PluginEnv,
    stdout: &mut (impl Write + Send),
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), RunError> {
    let identity = ServerIdentity::generate()?;
    let client_cert = tls::client_cert_from_pem(&env.client_cert_pem)?;
    let acceptor = TlsAcceptor::from(Arc::new(tls::server_config(&identity, client_cert)?));
    let listener = bind(&env).await?;
    let addr = listener.local_addr()?;
    writeln!(stdout, "{}", handshake_line(addr, &identity.cert))?;
    stdout.flush()?;
    tracing::info!(%addr, "serving the OpenBao KMS plugin protocol");

    let (tx, rx) = mpsc::channel(16);
    let accept = tokio::spawn(accept_loop(listener, acceptor, tx));
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_service_status(HEALTH_SERVICE, tonic_health::ServingStatus::Serving)
        .await;
    let stop = Arc::new(Notify::new());
    let controller = Controller { stop: stop.clone() };
    let stopping = Arc::new(Notify::new());
    let signal = {
        let stopping = stopping.clone();
        async move {
            tokio::select! {
                () = stop.notified() => {}
                () = shutdown => tracing::info!("shutdown signal"),
            }
            stopping.notify_one();
        }
    };
    let server = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(GrpcControllerServer::new(controller))
        .add_service(WrapperServer::new(WrapperService::default()))
        .serve_with_incoming_shutdown(ReceiverStream::new(rx), signal);
    tokio::pin!(server);
    let result = tokio::select! {
        r = &mut server => r,
        () = async {
            stopping.notified().await;
            tokio::time::sleep(DRAIN_TIMEOUT).await;
        } => {
            tracing::warn!("calls still in flight after the drain timeout; exiting anyway");
            Ok(())
        }
    };
    accept.abort();
    Ok(result?)
}

/// Binds the first free port of the range (or an ephemeral port) on 127.0.0.1.
async fn bind(env: &PluginEnv) -> Result<TcpListener, std::io::Error> {
    let mut last = None;
    for addr in env.bind_candidates() {
        match TcpListener::bind(addr).await {
            Ok(listener) => return Ok(listener),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("empty port range")))
}

type Accepted = Result<TlsStream<TcpStream>, std::io::Error>;

async fn accept_loop(listener: TcpListener, acceptor: TlsAcceptor, tx: mpsc::Sender<Accepted>) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => {
                    let _closed = tx.send(Ok(tls)).await;
                }
                Ok(Err(e)) => tracing::warn!(%peer, error = %e, "TLS handshake refused"),
                Err(_) => tracing::warn!(%peer, "TLS handshake timed out"),
            }
        });
    }
}
