//! The HTTP server for operators (`--http-addr`), with envoyproxy/ratelimit's endpoints:
//!
//! - `GET /healthcheck`: 200 `OK` while serving, 500 while draining before exit;
//! - `GET /metrics`: the Prometheus text exposition;
//! - `GET /rlconfig`: the rules in use, one line per rule in envoyproxy/ratelimit's format,
//!   grouped by domain with the file each came from;
//! - `POST /json`: `ShouldRateLimit` with the request and answer in proto3 JSON, for clients
//!   that cannot speak gRPC: 200 when OK, 429 when over the limit, 400 for bad input;
//! - `POST /explain` (ratelimitd's own): why the request in `/json`'s body is or is not
//!   limited, with each counted window's state now, counting nothing.
//!
//! Nothing here decides anything: `/json` calls the same [`RlsService`] as gRPC, and
//! `/explain` its explanation. `/json`, `/explain` and `/rlconfig` answer loopback peers only,
//! unless `--admin-remote-debug`.

mod guarded;

use std::fmt::Write as _;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor};
use tokio::net::TcpListener;
use tonic::Code;

use crate::proto;
use crate::server::connection_cap::Connections;
use crate::service::{Answer, MAX_REQUEST_BYTES, RlsService};

/// Why the admin server could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("cannot read the protobuf descriptors for /json: {0}")]
    Descriptors(String),
    #[error("the HTTP server failed: {0}")]
    Io(#[from] std::io::Error),
}

/// What the endpoints read.
#[derive(Clone)]
pub struct Admin {
    service: Arc<RlsService>,
    connections: Arc<Connections>,
    /// False once shutdown began.
    serving: Arc<AtomicBool>,
    json: Arc<JsonCodec>,
    /// `--admin-remote-debug`: `/json` and `/rlconfig` answer any peer, not only loopback.
    remote_debug: bool,
}

impl Admin {
    pub fn new(
        service: Arc<RlsService>,
        serving: Arc<AtomicBool>,
        connections: Arc<Connections>,
    ) -> Result<Admin, AdminError> {
        Ok(Admin {
            service,
            connections,
            serving,
            json: Arc::new(JsonCodec::new()?),
            remote_debug: false,
        })
    }

    /// Lets `/json` and `/rlconfig` answer peers other than loopback.
    pub fn with_remote_debug(mut self, remote_debug: bool) -> Admin {
        self.remote_debug = remote_debug;
        self
    }

    fn debug_allowed(&self, peer: SocketAddr) -> bool {
        debug_allowed(self.remote_debug, peer)
    }

    /// The request in a `/json` or `/explain` body from `peer`, as protobuf bytes; or the
    /// refusal: a peer the debug endpoints do not answer, or a body that is no request.
    fn debug_request(&self, peer: SocketAddr, body: &[u8]) -> Result<Vec<u8>, Box<Response>> {
        if !self.debug_allowed(peer) {
            return Err(Box::new(loopback_only()));
        }
        self.json
            .request(body)
            .map_err(|message| Box::new(plain(StatusCode::BAD_REQUEST, &message)))
    }

    pub fn router(self) -> Router {
        Router::new()
            .route("/healthcheck", get(healthcheck))
            .route("/metrics", get(metrics))
            .route("/rlconfig", get(rlconfig))
            .route("/json", post(json))
            .route("/explain", post(explain))
            .layer(DefaultBodyLimit::max(MAX_REQUEST_BYTES))
            .with_state(self)
    }
}

/// Serves the admin endpoints on `listener` (over HTTPS with `https`) until `shutdown`
/// completes.
pub async fn serve(
    listener: TcpListener,
    https: Option<tokio_rustls::TlsAcceptor>,
    admin: Admin,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), AdminError> {
    let router = admin.router();
    let app = router.into_make_service_with_connect_info::<guarded::Peer>();
    axum::serve(guarded::GuardedListener::new(listener, https), app)
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}

/// Serves `/metrics` alone on `listener` until `shutdown` completes.
pub async fn serve_metrics(
    listener: TcpListener,
    admin: Admin,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), AdminError> {
    let router = Router::new()
        .route("/metrics", get(metrics))
        .with_state(admin);
    axum::serve(guarded::GuardedListener::new(listener, None), router)
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}

async fn healthcheck(State(admin): State<Admin>) -> Response {
    if !admin.serving.load(Ordering::Relaxed) {
        return (StatusCode::INTERNAL_SERVER_ERROR, "draining\n").into_response();
    }
    if admin.service.rules().awaiting_first() {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            "waiting for the first rules from xDS\n",
        )
            .into_response();
    }
    // Still serving while Redis is down, by the failure policy: say so. Not ready before
    // Redis was first reached, as envoyproxy/ratelimit is not.
    match admin.service.limiter().backend() {
        Some(backend) if !backend.connected => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "waiting for Redis: not reached yet\n",
        )
            .into_response(),
        Some(backend) if !backend.up => (
            StatusCode::OK,
            format!(
                "OK\nbackend: Redis down, answering by --on-backend-error {}\n",
                backend.policy.name()
            ),
        )
            .into_response(),
        _ => (StatusCode::OK, "OK\n").into_response(),
    }
}

async fn metrics(State(admin): State<Admin>) -> Response {
    let limiter = admin.service.limiter();
    let backend = limiter.backend();
    let text = admin.service.rules().metrics().render(
        limiter.store().usage(),
        admin.connections.usage(),
        backend,
    );
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// Whether `/json` and `/rlconfig` answer `peer`: a loopback peer always (IPv4, IPv6, or IPv4
/// mapped into IPv6); another only with `--admin-remote-debug`. `/json` spends real quota and
/// `/rlconfig` shows the rules, so by default only someone on the host itself reaches them.
fn debug_allowed(remote_debug: bool, peer: SocketAddr) -> bool {
    remote_debug || peer.ip().to_canonical().is_loopback()
}

/// The answer to a peer that may not use a debug endpoint.
fn loopback_only() -> Response {
    (
        StatusCode::FORBIDDEN,
        "this endpoint answers loopback clients only; start ratelimitd with --admin-remote-debug \
         to open it to others\n",
    )
        .into_response()
}

async fn rlconfig(
    State(admin): State<Admin>,
    ConnectInfo(guarded::Peer(peer)): ConnectInfo<guarded::Peer>,
) -> Response {
    if !admin.debug_allowed(peer) {
        return loopback_only();
    }
    let snapshot = admin.service.rules().current();
    let mut text = format!("# rules hash {}\n", snapshot.hash);
    let mut domain = "";
    for rule in snapshot.rules.rules() {
        if rule.domain != domain {
            domain = &rule.domain;
            let _ = write!(text, "# domain {domain}: {}", rule.source.display());
            let config_name = snapshot
                .rules
                .domain(domain)
                .and_then(|d| d.config_name.as_ref());
            if let Some(name) = config_name {
                let _ = write!(text, " (name {name})");
            }
            text.push('\n');
        }
        let _ = write!(text, "{}.{}: ", rule.domain, rule.path.join("."));
        match &rule.limit {
            None => text.push_str("unlimited\n"),
            Some(limit) => {
                let _ = write!(
                    text,
                    "unit={} requests_per_unit={}, shadow_mode: {}",
                    limit.window.unit().name().to_ascii_uppercase(),
                    limit.requests_per_unit,
                    limit.shadow_mode
                );
                if limit.window.multiplier() != 1 {
                    let _ = write!(text, ", unit_multiplier: {}", limit.window.multiplier());
                }
                if let Some(name) = &limit.name {
                    let _ = write!(text, ", name: {name}");
                }
                if limit.quota_mode {
                    text.push_str(", quota_mode: true");
                }
                text.push('\n');
            }
        }
    }
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response()
}

async fn json(
    State(admin): State<Admin>,
    ConnectInfo(guarded::Peer(peer)): ConnectInfo<guarded::Peer>,
    body: Bytes,
) -> Response {
    let request = match admin.debug_request(peer, &body) {
        Ok(request) => request,
        Err(refusal) => return *refusal,
    };
    let answer = match admin.service.decide(request.into()).answer().await {
        Ok(answer) => answer,
        Err(status) => return refused(&status),
    };
    let code = if answer.decision().over_limit {
        StatusCode::TOO_MANY_REQUESTS
    } else {
        StatusCode::OK
    };
    match admin.json.response(&answer) {
        Ok(body) => (code, [(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(message) => plain(StatusCode::INTERNAL_SERVER_ERROR, &message),
    }
}

/// Why the request in the body (`/json`'s proto3 JSON) is or is not limited, with each
/// counted window's state now; counts nothing.
async fn explain(
    State(admin): State<Admin>,
    ConnectInfo(guarded::Peer(peer)): ConnectInfo<guarded::Peer>,
    body: Bytes,
) -> Response {
    let request = match admin.debug_request(peer, &body) {
        Ok(request) => request,
        Err(refusal) => return *refusal,
    };
    match admin.service.explain(&request).await {
        Ok(text) => ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response(),
        Err(status) => refused(&status),
    }
}

/// A gRPC refusal as HTTP: a bad request, the store unavailable, or anything else.
fn refused(status: &tonic::Status) -> Response {
    let code = match status.code() {
        Code::InvalidArgument => StatusCode::BAD_REQUEST,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    plain(code, status.message())
}

fn plain(code: StatusCode, message: &str) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{message}\n"),
    )
        .into_response()
}

/// proto3 JSON for the RLS messages, from the same descriptors that reflection serves (public
/// for the fuzz target of `/json`).
pub struct JsonCodec {
    request: MessageDescriptor,
    response: MessageDescriptor,
}

impl JsonCodec {
    pub fn new() -> Result<JsonCodec, AdminError> {
        let pool = DescriptorPool::decode(proto::FILE_DESCRIPTOR_SET)
            .map_err(|e| AdminError::Descriptors(e.to_string()))?;
        let message = |name: &str| {
            pool.get_message_by_name(name)
                .ok_or_else(|| AdminError::Descriptors(format!("{name} is missing")))
        };
        Ok(JsonCodec {
            request: message("envoy.service.ratelimit.v3.RateLimitRequest")?,
            response: message("envoy.service.ratelimit.v3.RateLimitResponse")?,
        })
    }

    /// The request in JSON, as protobuf bytes (what gRPC would have carried).
    pub fn request(&self, body: &[u8]) -> Result<Vec<u8>, String> {
        let mut input = serde_json::Deserializer::from_slice(body);
        let message = DynamicMessage::deserialize(self.request.clone(), &mut input)
            .and_then(|message| input.end().map(|()| message))
            .map_err(|e| format!("not a RateLimitRequest in proto3 JSON: {e}"))?;
        Ok(message.encode_to_vec())
    }

    fn response(&self, answer: &Answer) -> Result<Vec<u8>, String> {
        let message =
            DynamicMessage::decode(self.response.clone(), answer.encode_to_vec().as_slice())
                .map_err(|e| format!("cannot encode the answer: {e}"))?;
        serde_json::to_vec(&message).map_err(|e| format!("cannot encode the answer: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::debug_allowed;

    #[test]
    fn debug_endpoints_answer_loopback_peers_unless_opened() {
        for peer in [
            "127.0.0.1:5",
            "127.3.2.1:5",
            "[::1]:5",
            "[::ffff:127.0.0.1]:5",
        ] {
            assert!(
                debug_allowed(false, peer.parse().expect("an address")),
                "{peer}"
            );
        }
        for peer in [
            "10.0.0.7:5",
            "[2001:db8::1]:5",
            "[::ffff:10.0.0.7]:5",
            "0.0.0.0:5",
        ] {
            assert!(
                !debug_allowed(false, peer.parse().expect("an address")),
                "{peer}"
            );
            assert!(
                debug_allowed(true, peer.parse().expect("an address")),
                "{peer}"
            );
        }
    }
}
