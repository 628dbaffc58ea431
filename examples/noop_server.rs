//! The load benchmark's baseline: a RateLimitService that answers OK without looking at the
//! request, served by ratelimitd's own `server::serve` (same tonic stack, health, reflection and
//! limits). What ratelimitd costs is measured as a ratio to this.
//!
//!     cargo run --release --example noop_server -- 127.0.0.1:0
//!
//! Prints `listening on ADDR` once ready; stops on SIGTERM or Ctrl-C.

use ratelimitd::proto::rate_limit_response::Code;
use ratelimitd::proto::rate_limit_service_server::RateLimitService;
use ratelimitd::proto::{RateLimitRequest, RateLimitResponse};
use tonic::{Request, Response, Status};

/// mimalloc: faster than glibc's malloc for the many small, short-lived allocations of a gRPC
/// call, and it returns freed memory to the system. The no-op baseline and the benchmarks use
/// the same allocator, so that ratios compare like with like.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Noop;

#[tonic::async_trait]
impl RateLimitService for Noop {
    async fn should_rate_limit(
        &self,
        _request: Request<RateLimitRequest>,
    ) -> Result<Response<RateLimitResponse>, Status> {
        Ok(Response::new(RateLimitResponse {
            overall_code: Code::Ok as i32,
            ..Default::default()
        }))
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:0".to_string());
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
    ratelimitd::server::serve(listener, Noop, |_| {}, stop).await?;
    Ok(())
}
