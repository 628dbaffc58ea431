//! Envoy's `RateLimitService` over gRPC.
//!
//! Each call reads the clock once and takes one rules snapshot, validates the request
//! ([`request`]), asks the [`Limiter`] for a decision and builds the response ([`response`]).
//! Failures are gRPC errors, never an UNKNOWN code, so that Envoy's `failure_mode_deny`
//! decides what a failure means at the edge.

mod live;
pub mod request;
pub mod response;

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::limiter::{Decision, Limiter, StoreError, WindowOutcome};
use crate::proto::rate_limit_response::Code;
use crate::proto::rate_limit_service_server::RateLimitService;
use crate::proto::{RateLimitRequest, RateLimitResponse};
use crate::rules::Limit;
pub use live::{LiveRules, Snapshot};
pub use response::{DEFAULT_OVER_LIMIT_BODY, HeaderStyle, ResponseSettings};

/// The gRPC service: rules, limiter and response settings.
pub struct RlsService {
    rules: Arc<LiveRules>,
    limiter: Arc<Limiter>,
    settings: ResponseSettings,
    /// Record every decision in the metrics (`--decision-metrics`).
    record: bool,
}

impl RlsService {
    pub fn new(rules: Arc<LiveRules>, limiter: Arc<Limiter>, settings: ResponseSettings) -> Self {
        RlsService {
            rules,
            limiter,
            settings,
            record: true,
        }
    }

    /// Stops recording decisions in the metrics (the per-rule counters, the answer counts and
    /// the latency histogram); rule loads are still counted.
    pub fn without_decision_metrics(mut self) -> Self {
        self.record = false;
        self
    }

    pub fn rules(&self) -> &Arc<LiveRules> {
        &self.rules
    }

    pub fn limiter(&self) -> &Arc<Limiter> {
        &self.limiter
    }

    /// Decides one request; shared by gRPC and the HTTP `/json` endpoint.
    ///
    /// At debug level, each decision is a span with the domain and the outcome (never a
    /// descriptor value: API keys are secrets). In memory mode nothing waits, and the decision
    /// runs without an inner future.
    pub async fn should_rate_limit(
        &self,
        request: RateLimitRequest,
    ) -> Result<RateLimitResponse, Status> {
        let span = tracing::debug_span!(
            "decision",
            domain = %request.domain,
            descriptors = request.descriptors.len(),
            over_limit = tracing::field::Empty,
        );
        let started = self.record.then(Instant::now);
        if self.limiter.backend().is_none() {
            let _entered = span.enter();
            let answer = self.decide_in_memory(request);
            return self.finish(answer, started, &span);
        }
        let answer = self.decide_shared(request).instrument(span.clone()).await;
        let _entered = span.enter();
        self.finish(answer, started, &span)
    }

    /// Records the answer in the metrics and the debug log.
    fn finish(
        &self,
        answer: Result<(RateLimitResponse, bool), Status>,
        started: Option<Instant>,
        span: &tracing::Span,
    ) -> Result<RateLimitResponse, Status> {
        let metrics = self.rules.metrics();
        match &answer {
            Ok((answer, domain_known)) => {
                let over_limit = answer.overall_code == Code::OverLimit as i32;
                if let Some(started) = started {
                    metrics.answered(over_limit, *domain_known, started.elapsed());
                }
                span.record("over_limit", over_limit);
                tracing::debug!(over_limit, "decided");
            }
            Err(status) => {
                if let Some(started) = started {
                    metrics.refused(code_name(status.code()), started.elapsed());
                }
                tracing::debug!(code = code_name(status.code()), "refused");
            }
        }
        answer.map(|(answer, _)| answer)
    }

    /// The answer, and whether the domain is known, counting in memory.
    fn decide_in_memory(
        &self,
        request: RateLimitRequest,
    ) -> Result<(RateLimitResponse, bool), Status> {
        let (request, now) = validated(request)?;
        let snapshot = self.rules.load();
        let decision = self
            .limiter
            .decide_now(&snapshot.rules, &request, now, |limit, outcome| {
                self.record_window(&snapshot, limit, outcome)
            })
            .ok_or_else(|| Status::internal("a decision in memory had to wait"))?;
        self.answer(decision)
    }

    /// The answer, and whether the domain is known, counting in Redis.
    async fn decide_shared(
        &self,
        request: RateLimitRequest,
    ) -> Result<(RateLimitResponse, bool), Status> {
        let (request, now) = validated(request)?;
        let snapshot = self.rules.current();
        let decision = self
            .limiter
            .decide_observed(&snapshot.rules, &request, now, |limit, outcome| {
                self.record_window(&snapshot, limit, outcome)
            })
            .await;
        self.answer(decision)
    }

    /// The response for a decision, and whether the domain is known.
    fn answer(
        &self,
        decision: Result<Decision, StoreError>,
    ) -> Result<(RateLimitResponse, bool), Status> {
        let decision = decision.map_err(status_of_store_error)?;
        Ok((
            response::build(&decision, &self.settings),
            decision.domain_known,
        ))
    }

    fn record_window(&self, snapshot: &Snapshot, limit: &Limit, outcome: WindowOutcome) {
        if self.record
            && let Some(Some(counters)) = limit.id.and_then(|id| snapshot.counters.get(id))
        {
            counters.record(outcome);
        }
    }
}

/// The validated request, and the time it is decided at (since the Unix epoch).
fn validated(
    request: RateLimitRequest,
) -> Result<(crate::limiter::Request, std::time::Duration), Status> {
    let request = request::validate(request)?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|_| Status::internal("the system clock is before 1970"))?;
    Ok((request, now))
}

/// The gRPC code as its name in the protocol (`INVALID_ARGUMENT`), for metrics and logs.
fn code_name(code: tonic::Code) -> &'static str {
    match code {
        tonic::Code::InvalidArgument => "INVALID_ARGUMENT",
        tonic::Code::Unavailable => "UNAVAILABLE",
        tonic::Code::Internal => "INTERNAL",
        tonic::Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        _ => "OTHER",
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
        let response = self.should_rate_limit(request.into_inner()).await;
        response.map(Response::new)
    }
}
