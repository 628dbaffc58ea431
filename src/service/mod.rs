//! Deciding Envoy's `ShouldRateLimit` calls: from the request's bytes to the answer.
//!
//! Each call reads the request in place ([`request`]), reads the clock once, takes one rules
//! snapshot, asks the [`Limiter`] for a decision and returns it as an [`Answer`] that encodes
//! itself ([`response`]). `server::rls` carries it over gRPC and `admin` over HTTP `/json`.
//! Failures are gRPC errors, never an UNKNOWN code, so that Envoy's `failure_mode_deny`
//! decides what a failure means at the edge.

mod live;
mod recent_refusals;
pub mod request;
pub mod response;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use tonic::Status;
use tracing::Instrument;

use crate::explain;
use crate::limiter::{Decision, Limiter, Request, StoreError, WindowOutcome, clock};
use crate::rules::Limit;
pub use live::{LiveRules, Snapshot};
use recent_refusals::RecentRefusals;
pub use response::{Answer, DEFAULT_OVER_LIMIT_BODY, HeaderStyle, ResponseSettings};

/// The largest request accepted, in bytes, over gRPC and `/json` alike: more than 256
/// descriptors of long values, and far less than tonic's 4 MiB default, so a hostile peer can
/// make us buffer only so much.
pub const MAX_REQUEST_BYTES: usize = 256 * 1024;

/// The decision service: rules, limiter and response settings.
pub struct RlsService {
    rules: Arc<LiveRules>,
    limiter: Arc<Limiter>,
    settings: Arc<ResponseSettings>,
    /// Record every decision in the metrics (`--decision-metrics`).
    record: bool,
    /// `--shadow-mode`: every answer is OK; limits are counted and reported as if enforced.
    shadow_mode: bool,
    /// In Redis mode: the requests refused lately, which the local cache may refuse at once.
    recent_refusals: RecentRefusals,
}

impl RlsService {
    pub fn new(rules: Arc<LiveRules>, limiter: Arc<Limiter>, settings: ResponseSettings) -> Self {
        let recent_refusals = RecentRefusals::for_cache(limiter.refusal_cache_capacity());
        RlsService {
            rules,
            limiter,
            settings: Arc::new(settings),
            record: true,
            shadow_mode: false,
            recent_refusals,
        }
    }

    /// Global shadow mode (envoyproxy/ratelimit's `SHADOW_MODE`): every limit is counted and
    /// reported exactly as if enforced, and every answer is OK; the metrics count what would
    /// have been refused (`shadow_mode`, `ratelimit_service_global_shadow_mode`).
    pub fn in_shadow_mode(mut self, on: bool) -> Self {
        self.shadow_mode = on;
        self.rules.metrics().set_global_shadow_mode(on);
        self
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

    /// Decides one encoded `RateLimitRequest`, counting wherever the limiter counts: the one
    /// entry point, for gRPC and `/json` alike. In memory the answer is made at once, with no
    /// future; with Redis it comes later, from a future that waits for Redis, unless the same
    /// bytes were refused lately and the local over-limit cache refuses them again.
    ///
    /// At debug level, each decision is a span with the domain and the outcome (never a
    /// descriptor value: API keys are secrets).
    pub fn decide(self: &Arc<Self>, message: Bytes) -> Decided {
        self.decide_since(message, Instant::now())
    }

    /// [`RlsService::decide`] for a call that arrived at `arrived`: the latency histogram
    /// measures from then, so time the call waited before it was read (behind a busy worker,
    /// or for its body) shows.
    pub fn decide_since(self: &Arc<Self>, message: Bytes, arrived: Instant) -> Decided {
        match self.decide_now(&message, arrived) {
            Some(answer) => Decided::Now(answer),
            None => {
                let service = Arc::clone(self);
                Decided::Later(Box::pin(async move {
                    service.decide_later(&message, arrived).await
                }))
            }
        }
    }

    /// What [`crate::explain`] says of an encoded `RateLimitRequest` under the rules in use,
    /// with each counted window's state now: its count, what remains and when it resets. The
    /// counters are read as a check of 0 hits, which counts nothing (in Redis too); no metric
    /// records it.
    pub async fn explain(&self, message: &[u8]) -> Result<String, Status> {
        let (request, now) = read(message)?;
        let snapshot = self.rules.current();
        let descriptors: Vec<Vec<(String, String)>> = request
            .descriptors
            .iter()
            .map(|d| {
                d.entries
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect()
            })
            .collect();
        let algorithm = self.limiter.default_algorithm();
        let (head, mut explained) =
            explain::explain(&snapshot.rules, request.domain, &descriptors, algorithm);
        // Read, not counted: every descriptor checks 0 hits.
        let mut check = request.clone();
        check.hits = 0;
        for descriptor in &mut check.descriptors {
            descriptor.hits = Some(0);
        }
        let mut seen: Vec<(Limit, WindowOutcome)> = Vec::new();
        self.limiter
            .decide_observed(&snapshot.rules, &check, now, |limit, _, outcome| {
                seen.push((limit.clone(), outcome));
            })
            .await
            .map_err(status_of_store_error)?;
        // The windows come in request order, descriptor by descriptor, as explained (or one,
        // Envoy's own `limit`, for a descriptor that carries it).
        let mut windows = seen.into_iter();
        for (e, descriptor) in explained.iter_mut().zip(&request.descriptors) {
            let counted = if let Some(o) = descriptor.limit_override {
                e.text.push_str(&format!(
                    "
  Envoy's own `limit` for this descriptor applies instead of the rules': {} per {}",
                    o.requests_per_unit,
                    o.unit.name()
                ));
                1
            } else {
                e.limits.len()
            };
            for (limit, outcome) in windows.by_ref().take(counted) {
                e.text.push_str(&format!(
                    "
  now: {}",
                    explain::state(&limit, &outcome, now, algorithm)
                ));
            }
        }
        Ok(explain::render(&head, &explained))
    }

    /// The decision when it must wait for the store (Redis).
    async fn decide_later(&self, message: &[u8], arrived: Instant) -> Result<Answer, Status> {
        let started = self.record.then_some(arrived);
        let (request, now) = match read(message) {
            Ok(read) => read,
            Err(status) => return self.refused(status, started),
        };
        let span = decision_span(&request);
        let snapshot = self.rules.current();
        let decision = self
            .limiter
            .decide_observed(&snapshot.rules, &request, now, |limit, entries, outcome| {
                self.record_window(&snapshot, limit, entries, outcome)
            })
            .instrument(span.clone())
            .await;
        let _entered = span.enter();
        let answer = self.finish(decision, started, &span);
        if matches!(&answer, Ok(a) if a.decision().over_limit) {
            self.recent_refusals.remember(message);
        }
        answer
    }

    /// The decision at once, where nothing waits: counting in memory, or a request refused
    /// lately that the local over-limit cache refuses again; `None`: ask Redis.
    fn decide_now(&self, message: &[u8], arrived: Instant) -> Option<Result<Answer, Status>> {
        if self.limiter.counts_in_redis() && !self.recent_refusals.contains(message) {
            return None;
        }
        let started = self.record.then_some(arrived);
        let (request, now) = match read(message) {
            Ok(read) => read,
            Err(status) => return Some(self.refused(status, started)),
        };
        let span = decision_span(&request);
        let _entered = span.enter();
        let snapshot = self.rules.load();
        let Some(decision) =
            self.limiter
                .decide_now(&snapshot.rules, &request, now, |limit, entries, outcome| {
                    self.record_window(&snapshot, limit, entries, outcome)
                })
        else {
            // Redis mode, and the cache does not refuse it (any more).
            self.recent_refusals.forget(message);
            return None;
        };
        Some(self.finish(decision, started, &span))
    }

    /// The answer for a decision, recorded in the metrics and the debug log.
    fn finish(
        &self,
        decision: Result<Decision, StoreError>,
        started: Option<Instant>,
        span: &tracing::Span,
    ) -> Result<Answer, Status> {
        let mut decision = match decision {
            Ok(decision) => decision,
            Err(error) => return self.refused(status_of_store_error(error), started),
        };
        if self.shadow_mode && decision.over_limit {
            // As envoyproxy/ratelimit does: the statuses still say which descriptor is over
            // and the headers what is left; only the overall answer lets the request through.
            decision.over_limit = false;
            decision.retry_after = None;
            if started.is_some() {
                self.rules.metrics().global_shadow_mode_answer();
            }
        }
        let over_limit = decision.over_limit;
        if let Some(started) = started {
            let metrics = self.rules.metrics();
            metrics.answered(over_limit, decision.domain_known, started.elapsed());
        }
        span.record("over_limit", over_limit);
        tracing::debug!(over_limit, "decided");
        Ok(Answer::new(decision, Arc::clone(&self.settings)))
    }

    /// A refusal, recorded in the metrics and the debug log.
    fn refused(&self, status: Status, started: Option<Instant>) -> Result<Answer, Status> {
        if let Some(started) = started {
            let metrics = self.rules.metrics();
            metrics.refused(code_name(status.code()), started.elapsed());
        }
        tracing::debug!(code = code_name(status.code()), "refused");
        Err(status)
    }

    fn record_window(
        &self,
        snapshot: &Snapshot,
        limit: &Limit,
        entries: &[(&str, &str)],
        mut outcome: WindowOutcome,
    ) {
        if self.record
            && let Some(id) = limit.id
        {
            outcome.shadow_mode |= self.shadow_mode;
            snapshot
                .counters
                .record(&snapshot.rules, id, entries, outcome);
        }
    }
}

/// An answer, at once or to wait for.
// `Now` is the hot path in memory: boxing its answer would allocate on every decision.
#[allow(clippy::large_enum_variant)]
pub enum Decided {
    Now(Result<Answer, Status>),
    Later(BoxFuture<'static, Result<Answer, Status>>),
}

impl Decided {
    /// The answer, waiting for it if it comes later.
    pub async fn answer(self) -> Result<Answer, Status> {
        match self {
            Decided::Now(answer) => answer,
            Decided::Later(answer) => answer.await,
        }
    }
}

/// The debug span of one decision.
fn decision_span(request: &Request<'_>) -> tracing::Span {
    tracing::debug_span!(
        "decision",
        domain = request.domain,
        descriptors = request.descriptors.len(),
        over_limit = tracing::field::Empty,
    )
}

/// The request read from `message`, and the time it is decided at (since the Unix epoch).
fn read(message: &[u8]) -> Result<(Request<'_>, Duration), Status> {
    let request = request::parse(message)?;
    Ok((request, clock::now()))
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
