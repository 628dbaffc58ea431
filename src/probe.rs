//! `ratelimitd health`: asks a running ratelimitd's `grpc.health.v1.Health/Check`, for container
//! health checks (Docker's `HEALTHCHECK`) where no gRPC client is installed; over TLS (and mTLS)
//! when the gRPC port speaks it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

/// How the probe speaks TLS.
#[derive(Debug, Clone)]
pub struct ProbeTls {
    /// The CA that signed the server's certificate.
    pub ca: PathBuf,
    /// A client certificate and its key, for a port that asks for one (mTLS).
    pub client: Option<(PathBuf, PathBuf)>,
    /// The name the server's certificate must hold; default: the host of the address.
    pub server_name: Option<String>,
}

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
            let (connector, name) = tls_connector(addr, tls)?;
            let addr = addr.to_string();
            let dial = tower::service_fn(move |_| {
                let (connector, name, addr) = (connector.clone(), name.clone(), addr.clone());
                async move {
                    let tcp = tokio::net::TcpStream::connect(addr).await?;
                    let stream = connector.connect(name, tcp).await?;
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
                }
            });
            endpoint.connect_with_connector(dial).await
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

/// A TLS client trusting `tls.ca`, presenting its client certificate if any, speaking h2; and
/// the name to check the server's certificate for.
fn tls_connector(
    addr: &str,
    tls: &ProbeTls,
) -> Result<(tokio_rustls::TlsConnector, ServerName<'static>), ProbeError> {
    let fail = |what: &str, e: &dyn std::fmt::Display| ProbeError::Tls(format!("{what}: {e}"));
    let mut roots = rustls::RootCertStore::empty();
    let cas = CertificateDer::pem_file_iter(&tls.ca).map_err(|e| fail("the CA file", &e))?;
    for ca in cas {
        let ca = ca.map_err(|e| fail("the CA file", &e))?;
        roots.add(ca).map_err(|e| fail("the CA file", &e))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| fail("TLS settings", &e))?
        .with_root_certificates(roots);
    let mut config = match &tls.client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| fail("the client certificate", &e))?;
            let key = PrivateKeyDer::from_pem_file(key).map_err(|e| fail("the client key", &e))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| fail("the client certificate", &e))?
        }
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    let host = tls.server_name.clone().unwrap_or_else(|| host_of(addr));
    let name = ServerName::try_from(host.clone()).map_err(|e| fail(&host, &e))?;
    Ok((tokio_rustls::TlsConnector::from(Arc::new(config)), name))
}

/// `127.0.0.1` of `127.0.0.1:8081`, `::1` of `[::1]:8081`, `rl` of `rl:8081`.
fn host_of(addr: &str) -> String {
    let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::host_of;

    #[test]
    fn the_host_of_an_address() {
        assert_eq!(host_of("127.0.0.1:8081"), "127.0.0.1");
        assert_eq!(host_of("[::1]:8081"), "::1");
        assert_eq!(host_of("ratelimitd:8081"), "ratelimitd");
    }
}
