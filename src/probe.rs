//! `ratelimitd health`: asks a running ratelimitd's `grpc.health.v1.Health/Check`, for container
//! health checks (Docker's `HEALTHCHECK`) where no gRPC client is installed; over TLS (and mTLS)
//! when the gRPC port speaks it.

use std::time::Duration;

use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use crate::tls_client::{ClientTls, tls_dial};

/// How the probe speaks TLS (see [`ClientTls`]).
pub type ProbeTls = ClientTls;

/// Why the probe got no answer.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("invalid address {0}: {1}")]
    Address(String, #[source] tonic::transport::Error),
    #[error("cannot connect to {0}: {1}")]
    Connect(String, #[source] tonic::transport::Error),
    #[error("health check failed: {0}")]
    Call(#[from] tonic::Status),
    #[error("TLS: {0}")]
    Tls(String),
}

/// The serving status that `addr` reports for `service` (`""`: the whole server), e.g. `SERVING`.
pub async fn check(
    addr: &str,
    service: &str,
    timeout: Duration,
    tls: Option<&ProbeTls>,
) -> Result<String, ProbeError> {
    let uri = format!("http://{addr}");
    let endpoint = tonic::transport::Endpoint::from_shared(uri)
        .map_err(|e| ProbeError::Address(addr.to_string(), e))?
        .connect_timeout(timeout)
        .timeout(timeout);
    let connected = match tls {
        None => endpoint.connect().await,
        Some(tls) => {
            let (connector, name) = tls.connector(addr).map_err(ProbeError::Tls)?;
            endpoint
                .connect_with_connector(tls_dial(connector, name, addr.to_string()))
                .await
        }
    };
    let channel = connected.map_err(|e| ProbeError::Connect(addr.to_string(), e))?;
    let response = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.to_string(),
        })
        .await?;
    let status = response.into_inner().status();
    Ok(status.as_str_name().to_string())
}
