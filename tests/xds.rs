//! Rules over xDS: a test ADS server (tonic, in this process) serves `RateLimitConfig`
//! resources shaped like Envoy Gateway's, and a real ratelimitd decides by them over gRPC.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use common::{TestServer, call, descriptor, request};
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use envoy_types::pb::google::protobuf::Any;
use futures_util::Stream;
use prost::Message;
use ratelimitd::app::Settings;
use ratelimitd::xds::XdsSettings;
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
struct AdsServer {
    url: String,
    serve: watch::Sender<Option<DiscoveryResponse>>,
    requests: mpsc::UnboundedReceiver<DiscoveryRequest>,
    task: tokio::task::JoinHandle<()>,
}

impl AdsServer {
    async fn start() -> AdsServer {
        AdsServer::start_with(None).await
    }

    /// With `tls`, the server speaks TLS only, and accepts only clients it verifies.
    async fn start_with(tls: Option<Arc<rustls::ServerConfig>>) -> AdsServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
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
    fn publish(&self, version: &str, resources: &[RateLimitConfig]) {
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

    /// The next request that answers `nonce` (an ACK or a NACK), within 10 s.
    async fn answer_to(&mut self, nonce: &str) -> DiscoveryRequest {
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
fn gateway_resource(requests_per_unit: u32, unit: RateLimitUnit) -> RateLimitConfig {
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

/// How many of `n` requests of the gateway's shape pass, for a client `value`.
async fn admitted(client: &mut common::Client, value: &str, n: usize) -> usize {
    let route = "httproute/default/backend/rule/0/match/0";
    let mut ok = 0;
    for _ in 0..n {
        let answer = call(
            client,
            request(
                "default/eg/http",
                vec![descriptor(&[(route, route), ("rule-0-match-0", value)])],
            ),
        )
        .await;
        ok += usize::from(answer.overall_code == Code::Ok as i32);
    }
    ok
}

async fn healthcheck(server: &TestServer) -> (u16, String) {
    common::get_async(server.http_addr, "/healthcheck").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_arrive_over_ads_are_acked_replaced_and_a_broken_set_is_nacked() {
    let mut ads = AdsServer::start().await;
    let settings = Settings {
        xds: Some(XdsSettings {
            server: ads.url.clone(),
            tls: None,
            node_id: "envoy-ratelimit".into(),
            force_start: false,
        }),
        ..Settings::default()
    };
    let server =
        TestServer::start_rules(ratelimitd::rules::RuleSet::new(Vec::new()), settings).await;
    let mut client = server.client().await;

    // Before the first response: not ready.
    let (status, body) = healthcheck(&server).await;
    assert_eq!(status, 500, "{body}");
    assert!(body.contains("xDS"), "{body}");

    ads.publish("1", &[gateway_resource(3, RateLimitUnit::Minute)]);
    let ack = ads.answer_to("nonce-1").await;
    assert_eq!(ack.version_info, "1");
    assert!(ack.error_detail.is_none(), "an ACK: {ack:?}");
    assert_eq!(
        ack.node.as_ref().map(|n| n.id.as_str()),
        Some("envoy-ratelimit")
    );
    assert_eq!(ack.type_url, TYPE_URL);
    assert_eq!(healthcheck(&server).await.0, 200);
    assert_eq!(admitted(&mut client, "a", 5).await, 3, "3 a minute");

    // A new version replaces the set; counters survive the swap.
    ads.publish("2", &[gateway_resource(5, RateLimitUnit::Minute)]);
    assert!(ads.answer_to("nonce-2").await.error_detail.is_none());
    assert_eq!(
        admitted(&mut client, "a", 5).await,
        2,
        "3 counted already, of 5"
    );

    // A broken set (a unit of 0, UNKNOWN) is NACKed with its reason; the rules stay.
    ads.publish("3", &[gateway_resource(1, RateLimitUnit::Unknown)]);
    let nack = ads.answer_to("nonce-3").await;
    assert_eq!(nack.version_info, "2", "the version still applied");
    let reason = nack.error_detail.expect("a NACK").message;
    assert!(reason.contains("xds:default/eg/http"), "{reason}");
    assert_eq!(
        admitted(&mut client, "b", 6).await,
        5,
        "version 2 still decides"
    );

    // The ADS server goes away: ratelimitd keeps serving by the last rules.
    ads.task.abort();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(admitted(&mut client, "c", 6).await, 5);
    assert_eq!(healthcheck(&server).await.0, 200);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forced_start_is_ready_at_once_and_answers_ok_until_the_first_rules() {
    let mut ads = AdsServer::start().await;
    let settings = Settings {
        xds: Some(XdsSettings {
            server: ads.url.clone(),
            tls: None,
            node_id: "n".into(),
            force_start: true,
        }),
        ..Settings::default()
    };
    let server =
        TestServer::start_rules(ratelimitd::rules::RuleSet::new(Vec::new()), settings).await;
    let mut client = server.client().await;
    assert_eq!(healthcheck(&server).await.0, 200);
    assert_eq!(
        admitted(&mut client, "x", 5).await,
        5,
        "no rules yet: every domain is OK"
    );
    ads.publish("1", &[gateway_resource(1, RateLimitUnit::Week)]);
    ads.answer_to("nonce-1").await;
    assert_eq!(admitted(&mut client, "x", 3).await, 1);
    server.stop().await;
}

/// The ADS server's TLS, as Envoy Gateway's: its certificate from one CA, ratelimitd's client
/// certificate from another, which the server requires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_arrive_over_mutual_tls_and_a_client_without_a_certificate_gets_none() {
    use common::tls::{ca, leaf, write};
    use rcgen::ExtendedKeyUsagePurpose::{ClientAuth, ServerAuth};
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};

    let dir = tempfile::tempdir().unwrap();
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
    let mut ads = AdsServer::start_with(Some(Arc::new(config))).await;
    ads.publish("1", &[gateway_resource(2, RateLimitUnit::Hour)]);

    let tls = |client: bool| ratelimitd::tls_client::ClientTls {
        ca: write(dir.path(), "xds-ca.pem", &servers.pem),
        client: client.then(|| {
            (
                write(dir.path(), "client.pem", &client_cert),
                write(dir.path(), "client-key.pem", &client_key),
            )
        }),
        server_name: Some("envoy-gateway".into()),
    };
    let settings = |tls| Settings {
        xds: Some(XdsSettings {
            server: ads.url.replace("http://", "https://"),
            tls: Some(tls),
            node_id: "envoy-ratelimit".into(),
            force_start: false,
        }),
        ..Settings::default()
    };
    // Without a client certificate the server refuses it: no rules, not ready.
    let refused = TestServer::start_rules(
        ratelimitd::rules::RuleSet::new(Vec::new()),
        settings(tls(false)),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(healthcheck(&refused).await.0, 500);
    refused.stop().await;

    let server = TestServer::start_rules(
        ratelimitd::rules::RuleSet::new(Vec::new()),
        settings(tls(true)),
    )
    .await;
    let ack = ads.answer_to("nonce-1").await;
    assert!(ack.error_detail.is_none(), "{ack:?}");
    let mut client = server.client().await;
    assert_eq!(
        admitted(&mut client, "t", 4).await,
        2,
        "2 an hour, from xDS over mTLS"
    );
    assert_eq!(healthcheck(&server).await.0, 200);
    server.stop().await;
}
