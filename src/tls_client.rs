//! TLS for the gRPC servers ratelimitd calls: the health probe (`ratelimitd health`) and the
//! xDS client. rustls (ring), the server checked against a CA file, an optional client
//! certificate (mTLS), HTTP/2 by ALPN; tonic dials through it as a custom connector, so the
//! channel's URI stays `http://` while the bytes are TLS.

use std::path::PathBuf;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// How to speak TLS to a server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientTls {
    /// The CA that signed the server's certificate.
    pub ca: PathBuf,
    /// A client certificate and its key, for a server that asks for one (mTLS).
    pub client: Option<(PathBuf, PathBuf)>,
    /// The name the server's certificate must hold; default: the host of the address.
    pub server_name: Option<String>,
}

impl ClientTls {
    /// A TLS client trusting `ca`, presenting its client certificate if any, speaking h2; and
    /// the name to check the certificate of the server at `addr` (`host:port`) for. The files
    /// are read on each call, so a renewed certificate is used at the next connection.
    pub fn connector(
        &self,
        addr: &str,
    ) -> Result<(tokio_rustls::TlsConnector, ServerName<'static>), String> {
        let fail = |what: &str, e: &dyn std::fmt::Display| format!("{what}: {e}");
        let mut roots = rustls::RootCertStore::empty();
        let cas = CertificateDer::pem_file_iter(&self.ca).map_err(|e| fail("the CA file", &e))?;
        for ca in cas {
            let ca = ca.map_err(|e| fail("the CA file", &e))?;
            roots.add(ca).map_err(|e| fail("the CA file", &e))?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| fail("TLS settings", &e))?
            .with_root_certificates(roots);
        let mut config = match &self.client {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                let chain = CertificateDer::pem_file_iter(cert)
                    .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| fail("the client certificate", &e))?;
                let key =
                    PrivateKeyDer::from_pem_file(key).map_err(|e| fail("the client key", &e))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| fail("the client certificate", &e))?
            }
        };
        config.alpn_protocols = vec![b"h2".to_vec()];
        let host = self.server_name.clone().unwrap_or_else(|| host_of(addr));
        let name = ServerName::try_from(host.clone()).map_err(|e| fail(&host, &e))?;
        Ok((tokio_rustls::TlsConnector::from(Arc::new(config)), name))
    }
}

/// The connector tonic dials through: TCP to `addr`, then TLS as `name`.
pub fn tls_dial(
    connector: tokio_rustls::TlsConnector,
    name: ServerName<'static>,
    addr: String,
) -> impl tower::Service<
    tonic::codegen::http::Uri,
    Response = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
    Error = std::io::Error,
    Future = impl Send,
> + Clone {
    tower::service_fn(move |_| {
        let (connector, name, addr) = (connector.clone(), name.clone(), addr.clone());
        async move {
            let tcp = tokio::net::TcpStream::connect(addr).await?;
            let stream = connector.connect(name, tcp).await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
        }
    })
}

/// `127.0.0.1` of `127.0.0.1:8081`, `::1` of `[::1]:8081`, `rl` of `rl:8081`.
pub fn host_of(addr: &str) -> String {
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
