//! The gRPC server: Envoy's rate-limit service, `grpc.health.v1.Health`, and server reflection
//! (v1, and v1alpha for grpcurl 1.8, which asks only v1alpha), on a listener already bound.

mod batched_io;
mod rls;

use std::convert::Infallible;
use std::future::Future;

use tokio::net::TcpListener;
use tokio_stream::StreamExt;
use tonic::body::Body;
use tonic::codegen::{Service, http};
use tonic::server::NamedService;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::proto;
pub use rls::RlsRoute;

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

/// Serves the rate-limit service `rls` (ratelimitd's [`RlsRoute`]) on `listener` until
/// `shutdown` completes, then lets in-flight calls finish.
///
/// Generic over the route so that the load benchmark's no-op baseline (a generated
/// `RateLimitServiceServer`) runs on exactly this stack. `health_ready` receives the health
/// handle once it exists, so the caller can report NOT_SERVING before the server stops
/// accepting.
pub async fn serve<R>(
    listener: TcpListener,
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
        .add_service(rls)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        // TCP_NODELAY: an answer is one small write; Nagle's algorithm would hold it back until
        // the peer's delayed ACK (~40 ms), twice Envoy's default timeout.
        .serve_with_incoming_shutdown(
            TcpIncoming::from(listener)
                .with_nodelay(Some(true))
                .map(|stream| stream.map(batched_io::BatchedIo)),
            shutdown,
        )
        .await?;
    Ok(())
}
