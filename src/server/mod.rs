//! The gRPC server: Envoy's rate-limit service, `grpc.health.v1.Health`, and server reflection
//! (v1, and v1alpha for grpcurl 1.8, which asks only v1alpha), on a listener already bound.

mod batched_io;
pub mod conn;
pub mod connection_cap;
mod rls;
pub mod tls;

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tonic::body::Body;
use tonic::codegen::{Service, http};
use tonic::server::NamedService;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::proto;
use conn::Conn;
use connection_cap::Connections;
pub use rls::RlsRoute;
use tls::Tls;

/// Streams one connection may have open at once (HTTP/2 `SETTINGS_MAX_CONCURRENT_STREAMS`);
/// a peer past it has its streams refused. Envoy opens another connection when one is full, and
/// one Envoy worker's connection carries a few dozen calls in flight at 50,000 decisions/s.
/// Unbounded, 50,000 open streams on one connection held 622 MB.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 256;
/// Flow-control windows: what a peer may send that ratelimitd has not read yet, per stream (one
/// request of the largest size, 256 KiB, and its framing) and per connection.
const STREAM_WINDOW: u32 = 264 * 1024;
const CONNECTION_WINDOW: u32 = 2 * 1024 * 1024;
/// Largest header block of a call: Envoy's are a few hundred bytes.
const MAX_HEADER_LIST: u32 = 16 * 1024;
/// A connection whose peer answers no HTTP/2 ping within these is closed; TCP keepalive probes
/// start after the same idle time.
const KEEPALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// A connection is asked to go away (HTTP/2 GOAWAY; Envoy opens a new one at once) after this
/// long, and closed after the grace if calls still run on it: so no connection, idle or held by
/// anyone, lives for ever.
const MAX_CONNECTION_AGE: std::time::Duration = std::time::Duration::from_secs(3600);
const MAX_CONNECTION_AGE_GRACE: std::time::Duration = std::time::Duration::from_secs(60);

/// After a failed accept (no file descriptor left: `EMFILE`), wait this long before the next.
/// tonic tries again at once, which spun a core while the descriptors were gone.
const ACCEPT_BACKOFF: std::time::Duration = std::time::Duration::from_millis(100);

/// The accepted connections of `listener`: TCP_NODELAY (an answer is one small write; Nagle's
/// algorithm would hold it back until the peer's delayed ACK, ~40 ms, twice Envoy's default
/// timeout), TCP keepalive, batched writes, a pause after a failed accept, at most as many open
/// as `connections` allows, and with `tls`, each one's handshake done before it is served (on a
/// task of its own, so a slow client holds up no other).
fn incoming(
    listener: TcpListener,
    connections: Arc<Connections>,
    tls: Option<Arc<Tls>>,
) -> futures_util::stream::BoxStream<'static, std::io::Result<Conn>> {
    use futures_util::StreamExt;
    let accepted = TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(KEEPALIVE_INTERVAL));
    let admitted = accepted.then(move |accepted| {
        let connections = Arc::clone(&connections);
        async move {
            if let Err(error) = &accepted {
                tracing::warn!(%error, "cannot accept a gRPC connection; trying again in 100 ms");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
            accepted.map(|stream| connections.admit(batched_io::BatchedIo(stream)))
        }
    });
    let Some(tls) = tls else {
        return admitted
            .map(|admitted| admitted.map(conn::MaybeTls::Plain))
            .boxed();
    };
    let (ready, handshaken) = tokio::sync::mpsc::channel(MAX_PENDING_HANDSHAKES);
    tokio::spawn(async move {
        let mut admitted = std::pin::pin!(admitted);
        loop {
            let next = tokio::select! {
                next = admitted.next() => next,
                () = ready.closed() => break,
            };
            match next {
                None => break,
                Some(Err(error)) => {
                    if ready.send(Err(error)).await.is_err() {
                        break;
                    }
                }
                Some(Ok(stream)) => {
                    let (tls, ready) = (Arc::clone(&tls), ready.clone());
                    tokio::spawn(async move {
                        match tls.accept(stream).await {
                            Ok(stream) => {
                                let _ = ready.send(Ok(conn::MaybeTls::Tls(Box::new(stream)))).await;
                            }
                            Err(error) => tracing::debug!(%error, "TLS handshake failed"),
                        }
                    });
                }
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(handshaken).boxed()
}

/// Connections handshaken and not yet taken by the server.
const MAX_PENDING_HANDSHAKES: usize = 1024;

/// Why the server could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot build the reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("the gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Health status for the whole server ("") and for the rate-limit service by name.
#[derive(Clone)]
pub struct Health {
    reporter: HealthReporter,
}

impl Health {
    pub async fn set(&self, serving: bool) {
        let status = if serving {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        for name in ["", proto::RATE_LIMIT_SERVICE] {
            self.reporter.set_service_status(name, status).await;
        }
    }
}

/// Serves the rate-limit service `rls` (ratelimitd's [`RlsRoute`]) on `listener`, with at
/// most as many connections open as `connections` allows, until `shutdown` completes, then
/// lets in-flight calls finish.
///
/// Generic over the route so that the load benchmark's no-op baseline (a generated
/// `RateLimitServiceServer`) runs on exactly this stack. `health_ready` receives the health
/// handle once it exists, so the caller can report NOT_SERVING before the server stops
/// accepting.
pub async fn serve<R>(
    listener: TcpListener,
    connections: Arc<Connections>,
    tls: Option<Arc<Tls>>,
    rls: R,
    health_ready: impl FnOnce(Health),
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError>
where
    R: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + NamedService
        + Clone
        + Send
        + Sync
        + 'static,
    R::Future: Send + 'static,
{
    let (reporter, health_service) = tonic_health::server::health_reporter();
    let health = Health { reporter };
    health.set(true).await;
    health_ready(health);

    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;
    tonic::transport::Server::builder()
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .http2_max_header_list_size(MAX_HEADER_LIST)
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .max_connection_age(MAX_CONNECTION_AGE)
        .max_connection_age_grace(MAX_CONNECTION_AGE_GRACE)
        .add_service(rls)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .serve_with_incoming_shutdown(incoming(listener, connections, tls), shutdown)
        .await?;
    Ok(())
}
