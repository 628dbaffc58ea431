//! The gRPC server: Envoy's rate-limit service, `grpc.health.v1.Health`, and server reflection
//! (v1, and v1alpha for grpcurl 1.8, which asks only v1alpha), on a listener already bound.

mod batched_io;

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_stream::StreamExt;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::proto::{
    self,
    rate_limit_service_server::{RateLimitService, RateLimitServiceServer},
};

/// The largest request accepted, in bytes: more than 256 descriptors of long values, and far
/// less than tonic's 4 MiB default, so a hostile peer can make us buffer only so much.
pub const MAX_REQUEST_BYTES: usize = 256 * 1024;

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

/// Serves `service` on `listener` until `shutdown` completes, then lets in-flight calls finish.
///
/// Generic over the service so that the load benchmark's no-op baseline runs on exactly this
/// stack; shared (`Arc`) so that the admin server's `/json` can call it too. `health_ready` receives the health handle once it exists, so the caller can report
/// NOT_SERVING before the server stops accepting.
pub async fn serve<S: RateLimitService>(
    listener: TcpListener,
    service: Arc<S>,
    health_ready: impl FnOnce(Health),
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
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
    let rls =
        RateLimitServiceServer::from_arc(service).max_decoding_message_size(MAX_REQUEST_BYTES);

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
