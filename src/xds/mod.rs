//! Rules over xDS, as Envoy Gateway delivers them to envoyproxy/ratelimit: an ADS
//! state-of-the-world client (`StreamAggregatedResources`) asking for `RateLimitConfig`
//! resources (`resource.rs`), one per domain, the full set in every response.
//!
//! Each response's resources are loaded by the same loader as rule files and swapped in
//! atomically (`LiveRules::install`, counted in the same metrics); counters live in the
//! limiter, so they survive. A response that loads is ACKed (its version and nonce echoed); one
//! that does not is NACKed with the reason in `error_detail`, and the running rules stay. A
//! broken stream is opened again after a jittered backoff (0.5 s doubling to 30 s), asking for
//! the version last applied. Over TLS with a client certificate, as Envoy Gateway requires
//! (`tls_client.rs`).

pub mod resource;

use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::google::protobuf::value::Kind;
use envoy_types::pb::google::protobuf::{Struct, Value};
use envoy_types::pb::google::rpc::Status;
use tokio::sync::mpsc;
use tonic::transport::Endpoint;

use crate::service::LiveRules;
use crate::tls_client::{ClientTls, tls_dial};

/// Where rules come from over xDS (`--xds-server`, envoyproxy/ratelimit's
/// `CONFIG_GRPC_XDS_SERVER_URL`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XdsSettings {
    /// The ADS server: `host:port`, `http://host:port` or `https://host:port`.
    pub server: String,
    /// TLS to the ADS server (`CONFIG_GRPC_XDS_SERVER_USE_TLS` and its files): its CA, and the
    /// client certificate ratelimitd presents.
    pub tls: Option<ClientTls>,
    /// The node id sent in every request (`CONFIG_GRPC_XDS_NODE_ID`).
    pub node_id: String,
    /// The node's metadata, string values by key (`CONFIG_GRPC_XDS_NODE_METADATA`).
    pub node_metadata: Vec<(String, String)>,
    /// Serve, and report ready, before the first rules arrive
    /// (`FORCE_START_WITHOUT_INITIAL_CONFIG`); else not ready until they do.
    pub force_start: bool,
}

/// Node metadata as envoyproxy/ratelimit reads `CONFIG_GRPC_XDS_NODE_METADATA`: `key=value`
/// pairs joined by commas; an entry without `=` is skipped.
pub fn node_metadata(text: &str) -> Vec<(String, String)> {
    text.split(',')
        .filter_map(|entry| entry.split_once('='))
        .map(|(key, value)| (key.to_string(), value.to_string()))
        .collect()
}

impl XdsSettings {
    /// The server's `host:port`.
    pub fn address(&self) -> &str {
        let server = self.server.as_str();
        let server = server
            .strip_prefix("https://")
            .or_else(|| server.strip_prefix("http://"))
            .unwrap_or(server);
        server.trim_end_matches('/')
    }
}

/// The longest pause between two attempts to reach the ADS server.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
const FIRST_BACKOFF: Duration = Duration::from_millis(500);

/// The xDS client task; stops when dropped.
pub struct XdsClient(tokio::task::JoinHandle<()>);

impl Drop for XdsClient {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Starts streaming rules from `settings.server` into `live`.
pub fn start(settings: XdsSettings, live: Arc<LiveRules>) -> XdsClient {
    XdsClient(tokio::spawn(run(settings, live)))
}

async fn run(settings: XdsSettings, live: Arc<LiveRules>) {
    let mut applied = String::new();
    let mut backoff = FIRST_BACKOFF;
    loop {
        match session(&settings, &live, &mut applied).await {
            Ok(true) => backoff = FIRST_BACKOFF,
            Ok(false) => {}
            Err(error) => {
                tracing::warn!(server = %settings.server, %error, "xDS stream failed; trying again")
            }
        }
        // Jitter: between half and all of the backoff, so that replicas do not reconnect at once.
        let jitter = 0.5 + f64::from(rand_u8()) / 510.0;
        tokio::time::sleep(backoff.mul_f64(jitter)).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// A byte of randomness for the jitter.
fn rand_u8() -> u8 {
    let mut byte = [0u8];
    let _ = getrandom::fill(&mut byte);
    byte[0]
}

/// One stream: asks for the rules, applies each response; `Ok(true)` if it received any.
async fn session(
    settings: &XdsSettings,
    live: &Arc<LiveRules>,
    applied: &mut String,
) -> Result<bool, Box<dyn std::error::Error + Send + Sync>> {
    let addr = settings.address();
    let endpoint =
        Endpoint::from_shared(format!("http://{addr}"))?.connect_timeout(Duration::from_secs(5));
    let channel = match &settings.tls {
        None => endpoint.connect().await?,
        Some(tls) => {
            let (connector, name) = tls.connector(addr)?;
            endpoint
                .connect_with_connector(tls_dial(connector, name, addr.to_string()))
                .await?
        }
    };
    let mut client = AggregatedDiscoveryServiceClient::new(channel);
    let (requests, mut queue) = mpsc::channel::<DiscoveryRequest>(4);
    requests
        .send(request(settings, applied, "", None))
        .await
        .map_err(|_| "the request queue closed")?;
    let outgoing = futures_util::stream::poll_fn(move |cx| queue.poll_recv(cx));
    let mut responses = client
        .stream_aggregated_resources(outgoing)
        .await?
        .into_inner();
    tracing::info!(server = %settings.server, "xDS stream open");
    let mut received = false;
    while let Some(response) = responses.message().await? {
        received = true;
        let reply = apply(settings, live, applied, response).await;
        requests
            .send(reply)
            .await
            .map_err(|_| "the request queue closed")?;
    }
    Ok(received)
}

/// Loads a response's rules and installs them; the ACK or NACK to send back.
async fn apply(
    settings: &XdsSettings,
    live: &Arc<LiveRules>,
    applied: &mut String,
    response: DiscoveryResponse,
) -> DiscoveryRequest {
    let version = response.version_info.clone();
    let nonce = response.nonce.clone();
    let loaded = tokio::task::spawn_blocking(move || {
        let resources = response
            .resources
            .iter()
            .map(|any| (any.type_url.as_str(), any.value.as_slice()));
        resource::rules_of(resources).map_err(|e| e.to_string())
    })
    .await
    .unwrap_or_else(|e| Err(format!("the rules could not be loaded: {e}")));
    match loaded {
        Ok(rules) => {
            let count = rules.rules().len();
            let source = format!("xds {} version {version}", settings.server);
            install(live, rules, source).await;
            tracing::info!(%version, rules = count, "rules from xDS applied");
            *applied = version;
            request(settings, applied, &nonce, None)
        }
        Err(reason) => {
            live.metrics().config_refused();
            tracing::warn!(%version, "rules from xDS refused, the running rules stay: {reason}");
            request(settings, applied, &nonce, Some(reason))
        }
    }
}

/// Installs `rules` off the runtime: the swap frees the old rules, which may be many.
async fn install(live: &Arc<LiveRules>, rules: crate::rules::RuleSet, source: String) {
    let live = Arc::clone(live);
    let _ = tokio::task::spawn_blocking(move || live.install(rules, source)).await;
}

/// A request for the rules: an ACK of `version` (the last applied) with the response's
/// `nonce`, or a NACK when there is an `error`.
fn request(
    settings: &XdsSettings,
    version: &str,
    nonce: &str,
    error: Option<String>,
) -> DiscoveryRequest {
    DiscoveryRequest {
        version_info: version.to_string(),
        node: Some(Node {
            id: settings.node_id.clone(),
            metadata: (!settings.node_metadata.is_empty()).then(|| Struct {
                fields: settings
                    .node_metadata
                    .iter()
                    .map(|(key, value)| {
                        let value = Value {
                            kind: Some(Kind::StringValue(value.clone())),
                        };
                        (key.clone(), value)
                    })
                    .collect(),
            }),
            ..Default::default()
        }),
        type_url: resource::TYPE_URL.to_string(),
        response_nonce: nonce.to_string(),
        error_detail: error.map(|message| Status {
            // INVALID_ARGUMENT, as Envoy NACKs a configuration it refuses.
            code: 3,
            message,
            details: Vec::new(),
        }),
        ..Default::default()
    }
}
