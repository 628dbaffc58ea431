//! The load benchmark's baseline: a RateLimitService that answers OK without looking at the
//! request, served by ratelimitd's own `server::serve` (same tonic stack, health, reflection and
//! limits) as tonic's generated server for it (requests decoded into `RateLimitRequest`). What
//! ratelimitd costs is measured as a ratio to this.
//!
//!     cargo run --release --example noop_server -- 127.0.0.1:0 [empty|ok|over-limit]
//!
//! The second argument picks the canned answer: `empty` (the default: overall OK and nothing
//! else), or ratelimitd's own answer for the seed policy, `ok` (a status and three
//! `RateLimit-*` headers) or `over-limit` (also `Retry-After`, `content-type` and the JSON body).
//! The last two separate what ratelimitd's answers cost to carry from what deciding costs.
//! Prints `listening on ADDR` once ready; stops on SIGTERM or Ctrl-C.

use std::time::Duration;

use std::sync::Arc;

use ratelimitd::limiter::{Decision, DescriptorDecision, WindowReport};
use ratelimitd::proto::rate_limit_response::Code;
use ratelimitd::proto::rate_limit_service_server::{RateLimitService, RateLimitServiceServer};
use ratelimitd::proto::{RateLimitRequest, RateLimitResponse};
use ratelimitd::rules::{Unit, Window};
use ratelimitd::service::MAX_REQUEST_BYTES;
use ratelimitd::service::{Answer, ResponseSettings};
use tonic::{Request, Response, Status};

/// The same allocator, with the same settings, as ratelimitd (see `ratelimitd::allocator`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Noop(RateLimitResponse);

#[tonic::async_trait]
impl RateLimitService for Noop {
    async fn should_rate_limit(
        &self,
        _request: Request<RateLimitRequest>,
    ) -> Result<Response<RateLimitResponse>, Status> {
        Ok(Response::new(self.0.clone()))
    }
}

/// ratelimitd's answer for one seed-shaped descriptor, 42 requests into a 60/minute window.
fn seed_answer(over_limit: bool) -> Result<RateLimitResponse, prost::DecodeError> {
    let report = WindowReport {
        requests_per_unit: 60,
        window: Window::of(Unit::Minute),
        name: None,
        remaining: if over_limit { 0 } else { 18 },
        reset_in: Duration::from_secs(31),
        over_limit,
        shadow_mode: false,
    };
    let decision = Decision {
        domain_known: true,
        over_limit,
        descriptors: smallvec::smallvec![DescriptorDecision {
            over_limit,
            report: Some(report.clone()),
        }],
        headline: Some(report),
        retry_after: over_limit.then_some(Duration::from_secs(31)),
    };
    Answer::new(decision, Arc::new(ResponseSettings::default())).to_message()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    ratelimitd::allocator::configure();
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".to_string());
    let answer = match std::env::args().nth(2).as_deref() {
        None | Some("empty") => RateLimitResponse {
            overall_code: Code::Ok as i32,
            ..Default::default()
        },
        Some("ok") => seed_answer(false)?,
        Some("over-limit") => seed_answer(true)?,
        Some(other) => {
            return Err(format!("unknown answer {other:?}: empty, ok or over-limit").into());
        }
    };
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("listening on {}", listener.local_addr()?);
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                term.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    let stop = async {
        tokio::select! {
            () = shutdown => {}
            () = term => {}
        }
    };
    let rls =
        RateLimitServiceServer::new(Noop(answer)).max_decoding_message_size(MAX_REQUEST_BYTES);
    let connections = ratelimitd::server::connection_cap::Connections::new(
        ratelimitd::server::connection_cap::default_max_connections(),
    );
    ratelimitd::server::serve(listener, connections, None, rls, |_| {}, stop).await?;
    Ok(())
}
