//! Envoy's `RateLimitService` over gRPC.
//!
//! Each call reads the clock once and takes one rules snapshot, validates the request
//! ([`request`]), asks the [`Limiter`] for a decision and builds the response ([`response`]).
//! Failures are gRPC errors, never an UNKNOWN code, so that Envoy's `failure_mode_deny`
//! decides what a failure means at the edge.

pub mod request;
pub mod response;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use tonic::{Request, Response, Status};

use crate::limiter::{Limiter, StoreError};
use crate::proto::rate_limit_response::Code;
use crate::proto::rate_limit_service_server::RateLimitService;
use crate::proto::{RateLimitRequest, RateLimitResponse};
use crate::rules::RuleSet;
pub use response::{DEFAULT_OVER_LIMIT_BODY, HeaderStyle, ResponseSettings};

/// The gRPC service: rules, limiter and response settings.
pub struct RlsService {
    rules: Arc<RuleSet>,
    limiter: Arc<Limiter>,
    settings: ResponseSettings,
}

impl RlsService {
    pub fn new(rules: Arc<RuleSet>, limiter: Arc<Limiter>, settings: ResponseSettings) -> Self {
        RlsService {
            rules,
            limiter,
            settings,
        }
    }

    /// Decides one request; shared by gRPC and (later) the HTTP `/json` endpoint.
    pub fn should_rate_limit(
        &self,
        request: RateLimitRequest,
    ) -> Result<RateLimitResponse, Status> {
        let request = request::validate(request)?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|_| Status::internal("the system clock is before 1970"))?;
        let decision = self
            .limiter
            .decide(&self.rules, &request, now)
            .map_err(status_of_store_error)?;
        Ok(response::build(&decision, &self.settings))
    }
}

/// A store that cannot count is a temporary condition for Envoy: UNAVAILABLE, not UNKNOWN.
fn status_of_store_error(error: StoreError) -> Status {
    Status::unavailable(error.to_string())
}

#[tonic::async_trait]
impl RateLimitService for RlsService {
    async fn should_rate_limit(
        &self,
        request: Request<RateLimitRequest>,
    ) -> Result<Response<RateLimitResponse>, Status> {
        let request = request.into_inner();
        let span = tracing::debug_span!(
            "decision",
            domain = %request.domain,
            descriptors = request.descriptors.len(),
            over_limit = tracing::field::Empty,
        );
        let response = span.in_scope(|| self.should_rate_limit(request));
        if let Ok(answer) = &response {
            span.record("over_limit", answer.overall_code == Code::OverLimit as i32);
        }
        response.map(Response::new)
    }
}
