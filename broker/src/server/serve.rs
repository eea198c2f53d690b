//! Serving: the gRPC server over TLS, the side port and the XKS listener, the background tasks
//! (checkpoints, scheduler, health, JWKS and CA refresh), and a bounded drain on shutdown.

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tonic::transport::Server;

use super::{Broker, DRAIN_TIMEOUT, HEALTH_PROBE_EVERY, MAX_HEADER_LIST, StartError, XksPort};
use crate::api;
use crate::keys::Scheduler;

impl Broker {
    /// Serves on `listener` until `shutdown` resolves, then stops background tasks.
    ///
    /// # Errors
    /// The server failed.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), StartError> {
        let (reporter, health) = tonic_health::server::health_reporter();
        let readiness: crate::health::Readiness = Arc::default();
        let routes = api::services(self.state.clone(), health)?;
        let monitor = crate::health::Monitor::new(
            self.state.keys.clone(),
            self.state.audit.clone(),
            reporter,
            self.state.metrics.clone(),
            readiness.clone(),
        );
        self.tasks
            .spawn(monitor.run(self.cancel.clone(), HEALTH_PROBE_EVERY));
        let scheduler = Scheduler::new(
            self.state.keys.clone(),
            self.state.audit.clone(),
            self.state.replica_id.clone(),
        );
        self.tasks.spawn(scheduler.run(self.cancel.clone()));
        self.tasks.spawn(crate::http::sampler::run(
            self.state.clone(),
            self.cancel.clone(),
            HEALTH_PROBE_EVERY,
        ));
        if let (Some((signer, dir)), Some(pool)) = (self.checkpoints.clone(), &self.postgres) {
            // One publisher among the replicas: the holder of the advisory lock signs.
            let _ = dir;
            self.tasks.spawn(crate::audit::lead_pg_publisher(
                pool.clone(),
                self.state.replica_id.clone(),
                signer,
                self.state.audit.clone(),
                self.cancel.clone(),
            ));
        } else if let Some((signer, dir)) = self.checkpoints {
            self.tasks.spawn(crate::audit::checkpoint::run(
                signer,
                self.state.audit.clone(),
                crate::audit::checkpoint::Sink::Dir(dir),
                self.state.checkpoint.clone(),
                self.cancel.clone(),
            ));
        }
        if let Some(side) = self.side_port {
            let mut router = crate::http::ops_router(readiness, self.state.metrics.clone());
            if let Some(t) = side.transit {
                router = router.merge(crate::http::transit::router(self.state.clone(), t));
            }
            match side.xks {
                Some(XksPort {
                    stores,
                    own: Some((listener, tls)),
                }) => {
                    self.tasks.spawn(crate::http::serve(
                        listener,
                        Some(tls),
                        crate::http::xks::router(self.state.clone(), stores),
                        self.cancel.clone(),
                    ));
                }
                Some(XksPort { stores, own: None }) => {
                    router = router.merge(crate::http::xks::router(self.state.clone(), stores));
                }
                None => {}
            }
            self.tasks.spawn(crate::http::serve(
                side.listener,
                side.tls,
                router,
                self.cancel.clone(),
            ));
        }
        self.state
            .identity
            .jwt()
            .spawn_refresh(&self.tasks, &self.cancel);
        if let Some(a) = &self.state.attestation {
            a.spawn_refresh(&self.tasks, &self.cancel);
        }
        if let Some((ca, every)) = &self.client_ca {
            self.tasks
                .spawn(ca.clone().watch(*every, self.cancel.clone()));
        }
        let incoming = crate::tls::incoming(listener, self.tls, &self.tasks, self.cancel.clone());
        let (draining_tx, draining_rx) = tokio::sync::oneshot::channel::<()>();
        let server = Server::builder()
            // Attestation results travel in metadata and run to tens of KiB (hyper's default
            // header list limit is 16 KiB); each is still capped by its verifier's limit.
            .http2_max_header_list_size(MAX_HEADER_LIST)
            .layer(crate::api::request_span::RequestSpanLayer)
            .add_routes(routes)
            .serve_with_incoming_shutdown(incoming, async move {
                shutdown.await;
                let _ = draining_tx.send(());
            });
        tokio::pin!(server);
        // Graceful shutdown waits for every open stream (a health Watch never ends by itself),
        // so draining is bounded: after DRAIN_TIMEOUT the remaining connections are dropped.
        let result = tokio::select! {
            r = &mut server => r,
            () = async {
                if draining_rx.await.is_ok() {
                    tokio::time::sleep(DRAIN_TIMEOUT).await;
                } else {
                    std::future::pending::<()>().await;
                }
            } => {
                tracing::warn!(timeout = ?DRAIN_TIMEOUT, "drain timeout: closing remaining connections");
                Ok(())
            }
        };
        // Lease rows of the releases answered so far, before the process goes (a kill skips
        // this; the next start re-inserts them from the audit log).
        self.state.keys.leases().flush().await;
        self.cancel.cancel();
        self.tasks.close();
        self.tasks.wait().await;
        result.map_err(StartError::from)
    }
}
