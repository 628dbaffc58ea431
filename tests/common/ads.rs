//! A test ADS server (tonic, in the test's process) serving `RateLimitConfig` resources shaped
//! like Envoy Gateway's, over plaintext or mutual TLS; it reports every request it receives.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::protobuf::Any;
use futures_util::Stream;
use prost::Message;
use ratelimitd::xds::resource::{
    RateLimitConfig, RateLimitDescriptor, RateLimitPolicy, RateLimitUnit, TYPE_URL,
};
use tokio::sync::{mpsc, watch};

type Responses = Pin<Box<dyn Stream<Item = Result<DiscoveryResponse, tonic::Status>> + Send>>;
type DeltaResponses =
    Pin<Box<dyn Stream<Item = Result<DeltaDiscoveryResponse, tonic::Status>> + Send>>;

/// Sends the current response on every stream when it changes, and reports every request.
struct Ads {
    current: watch::Receiver<Option<DiscoveryResponse>>,
    requests: mpsc::UnboundedSender<DiscoveryRequest>,
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for Ads {
    type StreamAggregatedResourcesStream = Responses;
    type DeltaAggregatedResourcesStream = DeltaResponses;

    async fn stream_aggregated_resources(
        &self,
        request: tonic::Request<tonic::Streaming<DiscoveryRequest>>,
    ) -> Result<tonic::Response<Responses>, tonic::Status> {
        let mut incoming = request.into_inner();
        let requests = self.requests.clone();
        tokio::spawn(async move {
            while let Ok(Some(request)) = incoming.message().await {
                let _ = requests.send(request);
            }
        });
        let mut current = self.current.clone();
        current.mark_changed();
        let responses = futures_util::stream::unfold(current, |mut current| async move {
            loop {
                current.changed().await.ok()?;
                let response = current.borrow_and_update().clone();
                if let Some(response) = response {
                    return Some((Ok(response), current));
                }
            }
        });
        Ok(tonic::Response::new(Box::pin(responses)))
    }

    async fn delta_aggregated_resources(
        &self,
        _request: tonic::Request<tonic::Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<tonic::Response<DeltaResponses>, tonic::Status> {
        Err(tonic::Status::unimplemented("state of the world only"))
    }
}

/// The ADS server on a free loopback port: its address, what to serve, and what it was asked.
pub struct AdsServer {
    pub url: String,
    serve: watch::Sender<Option<DiscoveryResponse>>,
    requests: mpsc::UnboundedReceiver<DiscoveryRequest>,
    task: tokio::task::JoinHandle<()>,
}

impl AdsServer {
    pub async fn start() -> AdsServer {
        AdsServer::start_with(None).await
    }

    /// With `tls`, the server speaks TLS only, and accepts only clients it verifies.
    pub async fn start_with(tls: Option<Arc<rustls::ServerConfig>>) -> AdsServer {
        AdsServer::start_at("127.0.0.1:0", tls).await
    }

    /// On `addr` (`host:port`: a restart on the same port).
    pub async fn start_at(addr: &str, tls: Option<Arc<rustls::ServerConfig>>) -> AdsServer {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (serve, current) = watch::channel(None);
        let (sender, requests) = mpsc::unbounded_channel();
        let ads = Ads {
            current,
            requests: sender,
        };
        let task = tokio::spawn(async move {
            let service = AggregatedDiscoveryServiceServer::new(ads);
            let server = tonic::transport::Server::builder().add_service(service);
            match tls {
                None => {
                    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
                    let _ = server.serve_with_incoming(incoming).await;
                }
                Some(config) => {
                    let acceptor = tokio_rustls::TlsAcceptor::from(config);
                    let incoming = futures_util::stream::unfold(listener, move |listener| {
                        let acceptor = acceptor.clone();
                        async move {
                            loop {
                                let (tcp, _) = listener.accept().await.ok()?;
                                // A client that fails the handshake is dropped; the next one tried.
                                if let Ok(stream) = acceptor.accept(tcp).await {
                                    return Some((Ok::<_, std::io::Error>(Tls(stream)), listener));
                                }
                            }
                        }
                    });
                    let _ = server.serve_with_incoming(incoming).await;
                }
            }
        });
        AdsServer {
            url,
            serve,
            requests,
            task,
        }
    }

    /// Serves `resources` as `version`.
    pub fn publish(&self, version: &str, resources: &[RateLimitConfig]) {
        let response = DiscoveryResponse {
            version_info: version.to_string(),
            nonce: format!("nonce-{version}"),
            type_url: TYPE_URL.to_string(),
            resources: resources
                .iter()
                .map(|r| Any {
                    type_url: TYPE_URL.to_string(),
                    value: r.encode_to_vec(),
                })
                .collect(),
            ..Default::default()
        };
        self.serve.send_replace(Some(response));
    }

    /// Stops listening and ends every open stream, as a stopped server does; its `host:port`.
    pub fn stop(self) -> String {
        self.task.abort();
        // Dropping what is served ends the streams of the connections still open.
        self.url.trim_start_matches("http://").to_string()
    }

    /// The next request received, within 10 s.
    pub async fn next_request(&mut self) -> DiscoveryRequest {
        tokio::time::timeout(Duration::from_secs(10), self.requests.recv())
            .await
            .expect("a request within 10 s")
            .expect("the stream is open")
    }

    /// The next request that answers `nonce` (an ACK or a NACK), within 10 s.
    pub async fn answer_to(&mut self, nonce: &str) -> DiscoveryRequest {
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let request = self.requests.recv().await.expect("the stream is open");
                if request.response_nonce == nonce {
                    return request;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no answer to {nonce} within 10 s"))
    }
}

/// A TLS connection accepted by the test server, as tonic serves it.
struct Tls(tokio_rustls::server::TlsStream<tokio::net::TcpStream>);

impl tonic::transport::server::Connected for Tls {
    type ConnectInfo = ();
    fn connect_info(&self) {}
}

impl tokio::io::AsyncRead for Tls {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Tls {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

/// A resource as Envoy Gateway writes one: a domain named after a listener, a route-name level
/// with equal key and value, a `value: ""` leaf, an upper-case unit.
pub fn gateway_resource(requests_per_unit: u32, unit: RateLimitUnit) -> RateLimitConfig {
    let route = "httproute/default/backend/rule/0/match/0";
    RateLimitConfig {
        name: "default/eg/http".into(),
        domain: "default/eg/http".into(),
        descriptors: vec![RateLimitDescriptor {
            key: route.into(),
            value: route.into(),
            descriptors: vec![RateLimitDescriptor {
                key: "rule-0-match-0".into(),
                value: String::new(),
                rate_limit: Some(RateLimitPolicy {
                    unit: unit as i32,
                    requests_per_unit,
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// Mutual TLS as Envoy Gateway runs its xDS server: the server's certificate (for
/// `envoy-gateway`) from one CA, the client's (ratelimitd's) from another, which the server
/// requires. The server's config, and the files of the client's side, in `dir`.
pub struct XdsMtls {
    pub server: Arc<rustls::ServerConfig>,
    pub ca: std::path::PathBuf,
    pub client_cert: std::path::PathBuf,
    pub client_key: std::path::PathBuf,
}

pub fn xds_mtls(dir: &std::path::Path) -> XdsMtls {
    use super::tls::{ca, leaf, write};
    use rcgen::ExtendedKeyUsagePurpose::{ClientAuth, ServerAuth};
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};

    let (servers, clients) = (ca("xDS CA"), ca("ratelimitd client CA"));
    let (server_cert, server_key) = leaf(&servers, &["envoy-gateway"], ServerAuth);
    let (client_cert, client_key) = leaf(&clients, &["envoy-ratelimit"], ClientAuth);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut client_roots = rustls::RootCertStore::empty();
    client_roots
        .add(CertificateDer::from_pem_slice(clients.pem.as_bytes()).unwrap())
        .unwrap();
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(client_roots),
        provider.clone(),
    )
    .build()
    .unwrap();
    let chain = CertificateDer::pem_slice_iter(server_cert.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(server_key.as_bytes()).unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    XdsMtls {
        server: Arc::new(config),
        ca: write(dir, "xds-ca.pem", &servers.pem),
        client_cert: write(dir, "xds-client.pem", &client_cert),
        client_key: write(dir, "xds-client-key.pem", &client_key),
    }
}
