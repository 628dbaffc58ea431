//! Prometheus metrics: what operators graph and alert on.
//!
//! Per-rule counters carry envoyproxy/ratelimit's names and labels
//! (`ratelimit_service_rate_limit_over_limit{domain, key1, key2}`, as its statsd mapping
//! exports them), so existing dashboards keep working; ratelimitd's own metrics start with
//! `ratelimitd_`. A label holds a value from a request only where a rule asks for it
//! (`detailed_metric`, `value_to_metric`): otherwise rules are named by their path in the rule
//! file (`api_key_acme-live`, `bucket_default`), which the operator wrote and bounds. Series
//! named by request values are bounded per rule window (`--max-metric-values`); the rest share
//! one series whose values read `_other_`.
//!
//! The hot path touches only pre-resolved counters ([`RuleCounters`], looked up once per rule
//! when rules are installed), so recording a decision is a handful of atomic additions.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::limiter::{BackendSnapshot, MemoryUsage, WindowOutcome};
use crate::rules::{MetricNaming, RuleEntry, RuleSet, Window};
use crate::server::connection_cap::ConnectionUsage;

/// Above this share of a limit, hits count as `near_limit` (envoyproxy/ratelimit's default).
pub const NEAR_LIMIT_RATIO: f32 = 0.8;

/// Every metric ratelimitd exports, registered in one registry.
pub struct Metrics {
    registry: Registry,
    rule: RuleFamilies,
    domain_not_found: IntCounter,
    answered_ok: IntCounter,
    /// envoyproxy/ratelimit's series, as its default statsd mapping (and Envoy Gateway's
    /// dashboards) name them: every ShouldRateLimit call, its time, and its errors by kind.
    total_requests: IntCounter,
    response_time: Histogram,
    redis_errors: IntCounter,
    service_errors: IntCounter,
    answered_over_limit: IntCounter,
    errors: IntCounterVec,
    decision_seconds: Histogram,
    config_load_success: IntCounter,
    config_load_error: IntCounter,
    config_info: IntGaugeVec,
    config_rules: IntGauge,
    config_loaded_at: IntGauge,
    counters_in_memory: IntGauge,
    counter_memory_bytes: IntGauge,
    counter_memory_budget_bytes: IntGauge,
    counter_evictions: IntCounter,
    grpc_connections: IntGauge,
    grpc_connections_closed_for_room: IntCounter,
    serving: IntGauge,
    backend_up: IntGauge,
    backend_errors: IntCounter,
    backend_late: IntCounter,
    backend_fallbacks: IntCounter,
    backend_outages: IntCounter,
    local_cache_refusals: IntCounter,
    local_cache_entries: IntGauge,
    global_shadow_mode: IntCounter,
    shadow_mode_on: IntGauge,
    /// The most series named by request values per rule window.
    max_metric_values: usize,
    /// The value-named series of every rule window seen so far, by rule identity, so that a
    /// rule that survives a reload keeps its series and its bound.
    value_series: Mutex<HashMap<String, Arc<ValueSeries>>>,
}

/// The default of `--max-metric-values`.
pub const DEFAULT_MAX_METRIC_VALUES: usize = 1000;

/// What a series named by request values reads once a rule window has its most series.
pub const OTHER_VALUES: &str = "_other_";

#[derive(Clone)]
struct RuleFamilies {
    total_hits: IntCounterVec,
    over_limit: IntCounterVec,
    near_limit: IntCounterVec,
    within_limit: IntCounterVec,
    shadow_mode: IntCounterVec,
    over_limit_with_local_cache: IntCounterVec,
}

/// The metric series of every rule window of one installed rule set, each registered at its
/// rule's first hit: a rule set of a million per-customer overrides, most of them idle, costs
/// neither memory for five series each nor five lines each in every `/metrics` scrape.
pub struct RuleSeries {
    metrics: Arc<Metrics>,
    /// Indexed by [`crate::rules::Limit::id`].
    series: Vec<OnceLock<Option<RuleMetrics>>>,
}

impl RuleSeries {
    /// No series registered yet, for `rules`.
    pub fn new(metrics: Arc<Metrics>, rules: &RuleSet) -> RuleSeries {
        RuleSeries {
            metrics,
            series: (0..rules.rules().len()).map(|_| OnceLock::new()).collect(),
        }
    }

    /// Records what one window of rule `id` of `rules` (the set these series are for) saw for a
    /// descriptor with these `(key, value)` entries.
    pub fn record(
        &self,
        rules: &RuleSet,
        id: usize,
        entries: &[(&str, &str)],
        outcome: WindowOutcome,
    ) {
        let (Some(slot), Some(entry)) = (self.series.get(id), rules.rules().get(id)) else {
            return;
        };
        if let Some(metrics) = slot.get_or_init(|| self.metrics.rule_metrics(entry)) {
            metrics.record(entries, outcome);
        }
    }
}

/// The metrics of one rule window, resolved at its first hit.
pub enum RuleMetrics {
    /// Named by the rule path.
    Fixed(RuleCounters),
    /// Named with the request's values (`detailed_metric`, `value_to_metric`).
    Values(Arc<ValueSeries>),
}

/// The series of one rule window that are named by request values: at most `max`, then one
/// more for all other values.
pub struct ValueSeries {
    families: RuleFamilies,
    domain: String,
    window: String,
    naming: MetricNaming,
    max: usize,
    /// Guarded by a std mutex: held for a map lookup only, never across an await.
    seen: Mutex<HashMap<Vec<String>, RuleCounters>>,
    other: RuleCounters,
}

/// The counters of one series of a rule window.
#[derive(Clone)]
pub struct RuleCounters {
    total_hits: IntCounter,
    over_limit: IntCounter,
    near_limit: IntCounter,
    within_limit: IntCounter,
    shadow_mode: IntCounter,
    over_limit_with_local_cache: IntCounter,
}

/// Why a metric could not be set up: a programming error (a duplicate name), reported at start.
pub type MetricsError = prometheus::Error;

/// Decision latency buckets, in seconds: a decision takes microseconds; Envoy gives up at 20 ms;
/// the last three tell a stall (a call held up to a second) from a slow decision.
const DECISION_BUCKETS: &[f64] = &[
    0.000_005, 0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005,
    0.01, 0.02, 0.05, 0.1, 0.25, 1.0,
];

impl Metrics {
    pub fn new() -> Result<Metrics, MetricsError> {
        let registry = Registry::new();
        let rule_family = |name: &str, help: &str| -> Result<IntCounterVec, MetricsError> {
            let family = IntCounterVec::new(
                Opts::new(format!("ratelimit_service_rate_limit_{name}"), help),
                &["domain", "key1", "key2", "window"],
            )?;
            registry.register(Box::new(family.clone()))?;
            Ok(family)
        };
        let rule = RuleFamilies {
            total_hits: rule_family("total_hits", "Hits counted against the rule's window.")?,
            over_limit: rule_family(
                "over_limit",
                "Hits past the rule's limit (in shadow mode too).",
            )?,
            near_limit: rule_family(
                "near_limit",
                "Hits between 80 % of the rule's limit and the limit.",
            )?,
            within_limit: rule_family("within_limit", "Hits of requests within the rule's limit.")?,
            shadow_mode: rule_family(
                "shadow_mode",
                "Hits past the limit of a shadow-mode rule, which were let through.",
            )?,
            over_limit_with_local_cache: rule_family(
                "over_limit_with_local_cache",
                "Hits past the rule's limit refused by the local over-limit cache, without a Redis call (also in over_limit).",
            )?,
        };
        let counter = |name: &str, help: &str| -> Result<IntCounter, MetricsError> {
            let counter = IntCounter::new(name, help)?;
            registry.register(Box::new(counter.clone()))?;
            Ok(counter)
        };
        let gauge = |name: &str, help: &str| -> Result<IntGauge, MetricsError> {
            let gauge = IntGauge::new(name, help)?;
            registry.register(Box::new(gauge.clone()))?;
            Ok(gauge)
        };
        let decisions = IntCounterVec::new(
            Opts::new(
                "ratelimitd_decisions_total",
                "Requests answered, by overall code.",
            ),
            &["code"],
        )?;
        registry.register(Box::new(decisions.clone()))?;
        let errors = IntCounterVec::new(
            Opts::new(
                "ratelimitd_request_errors_total",
                "Requests refused with an error, by gRPC code.",
            ),
            &["code"],
        )?;
        registry.register(Box::new(errors.clone()))?;
        let decision_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "ratelimitd_decision_duration_seconds",
                "Time to decide one request, from reading its bytes to the decision.",
            )
            .buckets(DECISION_BUCKETS.to_vec()),
        )?;
        registry.register(Box::new(decision_seconds.clone()))?;
        let total_requests = IntCounterVec::new(
            Opts::new(
                "ratelimit_service_total_requests",
                "ShouldRateLimit calls (envoyproxy/ratelimit's name).",
            ),
            &["grpc_method"],
        )?;
        registry.register(Box::new(total_requests.clone()))?;
        let response_time = prometheus::HistogramVec::new(
            HistogramOpts::new(
                "ratelimit_service_response_time_seconds",
                "Time to answer one ShouldRateLimit call (envoyproxy/ratelimit's name).",
            )
            .buckets(DECISION_BUCKETS.to_vec()),
            &["grpc_method"],
        )?;
        registry.register(Box::new(response_time.clone()))?;
        let call_errors = IntCounterVec::new(
            Opts::new(
                "ratelimit_service_should_rate_limit_error",
                "ShouldRateLimit calls that failed: redis_error (the store could not count), \
                 service_error (anything else) (envoyproxy/ratelimit's name).",
            ),
            &["err_type"],
        )?;
        registry.register(Box::new(call_errors.clone()))?;
        let config_info = IntGaugeVec::new(
            Opts::new(
                "ratelimitd_config_info",
                "1 for the rules in use, labelled with the hash of their files.",
            ),
            &["hash"],
        )?;
        registry.register(Box::new(config_info.clone()))?;
        #[cfg(target_os = "linux")]
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        Ok(Metrics {
            rule,
            domain_not_found: counter(
                "ratelimitd_domain_not_found_total",
                "Requests for a domain that no rule file defines (answered OK).",
            )?,
            answered_ok: decisions.with_label_values(&["OK"]),
            total_requests: total_requests.with_label_values(&["ShouldRateLimit"]),
            response_time: response_time.with_label_values(&["ShouldRateLimit"]),
            redis_errors: call_errors.with_label_values(&["redis_error"]),
            service_errors: call_errors.with_label_values(&["service_error"]),
            answered_over_limit: decisions.with_label_values(&["OVER_LIMIT"]),
            errors,
            decision_seconds,
            config_load_success: counter(
                "ratelimit_service_config_load_success",
                "Rule loads that succeeded (at start and on reload).",
            )?,
            config_load_error: counter(
                "ratelimit_service_config_load_error",
                "Rule loads refused; the running rules stayed.",
            )?,
            config_info,
            config_rules: gauge("ratelimitd_config_rules", "Rules in use.")?,
            config_loaded_at: gauge(
                "ratelimitd_config_last_load_success_timestamp_seconds",
                "When the rules in use were loaded (Unix time).",
            )?,
            counters_in_memory: gauge(
                "ratelimitd_counters_in_memory",
                "Keys with live counters in the in-memory store.",
            )?,
            counter_memory_bytes: gauge(
                "ratelimitd_counter_memory_bytes",
                "Bytes the in-memory counter table holds.",
            )?,
            counter_memory_budget_bytes: gauge(
                "ratelimitd_counter_memory_budget_bytes",
                "The most bytes the in-memory counter table may hold (--max-counter-memory).",
            )?,
            counter_evictions: counter(
                "ratelimitd_counter_evictions_total",
                "Keys evicted from a full counter table to make room for new ones.",
            )?,
            grpc_connections: gauge(
                "ratelimitd_grpc_connections",
                "gRPC connections open (at most --max-connections).",
            )?,
            grpc_connections_closed_for_room: counter(
                "ratelimitd_grpc_connections_closed_for_room_total",
                "Idle gRPC connections closed to make room for new ones (--max-connections).",
            )?,
            serving: gauge(
                "ratelimitd_serving",
                "1 while serving, 0 while draining before exit.",
            )?,
            backend_up: gauge(
                "ratelimitd_backend_up",
                "1 while the counter store answers (always, in memory), 0 while Redis is down.",
            )?,
            backend_errors: counter(
                "ratelimitd_backend_errors_total",
                "Requests Redis failed to count (error or timeout).",
            )?,
            backend_late: counter(
                "ratelimitd_backend_late_calls_total",
                "Redis calls slower than --backend-timeout-ms (each a failure in a row; still waited for while Redis is up).",
            )?,
            backend_fallbacks: counter(
                "ratelimitd_backend_fallback_decisions_total",
                "Requests answered by --on-backend-error because Redis failed or was down.",
            )?,
            backend_outages: counter(
                "ratelimitd_backend_outages_total",
                "Periods during which Redis was down.",
            )?,
            local_cache_refusals: counter(
                "ratelimitd_local_cache_refusals_total",
                "Requests refused by the local over-limit cache, without a Redis call.",
            )?,
            local_cache_entries: gauge(
                "ratelimitd_local_cache_entries",
                "Counters in the local over-limit cache (--local-cache-bytes).",
            )?,
            global_shadow_mode: counter(
                "ratelimit_service_global_shadow_mode",
                "Requests answered OK only because of --shadow-mode (they were over a limit).",
            )?,
            shadow_mode_on: gauge(
                "ratelimitd_shadow_mode",
                "1 when --shadow-mode answers every request OK, else 0.",
            )?,
            max_metric_values: DEFAULT_MAX_METRIC_VALUES,
            value_series: Mutex::new(HashMap::new()),
            registry,
        })
    }

    /// Bounds the series named by request values to `max` per rule window.
    pub fn with_max_metric_values(mut self, max: usize) -> Metrics {
        self.max_metric_values = max;
        self
    }

    /// Says whether `--shadow-mode` is on (the `ratelimitd_shadow_mode` gauge).
    pub fn set_global_shadow_mode(&self, on: bool) {
        self.shadow_mode_on.set(i64::from(on));
    }

    /// One request answered OK only because of `--shadow-mode`.
    pub fn global_shadow_mode_answer(&self) {
        self.global_shadow_mode.inc();
    }

    /// The metrics of every limit of `rules`, indexed by [`crate::rules::Limit::id`].
    /// Series of a rule that is still there after a reload are the same series.
    /// The metrics of one rule window; `None` for a rule without a limit.
    fn rule_metrics(&self, entry: &RuleEntry) -> Option<RuleMetrics> {
        let limit = entry.limit.as_ref()?;
        let window = window_label(limit.window);
        if !entry.naming.uses_values() {
            let counters = self.rule.counters(&entry.domain, &entry.path, &window);
            return Some(RuleMetrics::Fixed(counters));
        }
        let identity = format!(
            "{}\u{0}{}\u{0}{window}\u{0}{:?}",
            entry.domain,
            entry.path.join("."),
            entry.naming
        );
        let mut known = self
            .value_series
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let series = known.entry(identity).or_insert_with(|| {
            let others = entry.naming.levels.iter().map(|_| OTHER_VALUES);
            let other_path = entry.naming.path(others);
            Arc::new(ValueSeries {
                other: self.rule.counters(&entry.domain, &other_path, &window),
                families: self.rule.clone(),
                domain: entry.domain.clone(),
                window,
                naming: entry.naming.clone(),
                max: self.max_metric_values,
                seen: Mutex::new(HashMap::new()),
            })
        });
        Some(RuleMetrics::Values(Arc::clone(series)))
    }

    /// One answered request: its overall code and how long deciding took.
    pub fn answered(&self, over_limit: bool, domain_known: bool, took: Duration) {
        if over_limit {
            self.answered_over_limit.inc();
        } else {
            self.answered_ok.inc();
        }
        if !domain_known {
            self.domain_not_found.inc();
        }
        self.took(took);
    }

    /// Every call's time, in both histograms; counted in envoyproxy/ratelimit's total.
    fn took(&self, took: Duration) {
        let seconds = took.as_secs_f64();
        self.decision_seconds.observe(seconds);
        self.response_time.observe(seconds);
        self.total_requests.inc();
    }

    /// One request refused with an error (`code` is the gRPC code's name).
    pub fn refused(&self, code: &str, took: Duration) {
        self.errors.with_label_values(&[code]).inc();
        if code == "UNAVAILABLE" {
            self.redis_errors.inc();
        } else {
            self.service_errors.inc();
        }
        self.took(took);
    }

    /// A rule load that succeeded: `hash` names the files' contents.
    pub fn config_loaded(&self, hash: &str, rules: usize, at_unix_seconds: u64) {
        self.config_load_success.inc();
        self.config_info.reset();
        self.config_info.with_label_values(&[hash]).set(1);
        self.config_rules
            .set(i64::try_from(rules).unwrap_or(i64::MAX));
        self.config_loaded_at
            .set(i64::try_from(at_unix_seconds).unwrap_or(i64::MAX));
    }

    /// A rule load that was refused.
    pub fn config_refused(&self) {
        self.config_load_error.inc();
    }

    pub fn set_serving(&self, serving: bool) {
        self.serving.set(i64::from(serving));
    }

    /// The Prometheus text exposition of every metric, with what the counters in memory hold
    /// and, in Redis mode, the backend's state.
    pub fn render(
        &self,
        memory: MemoryUsage,
        connections: ConnectionUsage,
        backend: Option<BackendSnapshot>,
    ) -> String {
        let gauge = |gauge: &IntGauge, value: usize| {
            gauge.set(i64::try_from(value).unwrap_or(i64::MAX));
        };
        gauge(&self.counters_in_memory, memory.keys);
        gauge(&self.counter_memory_bytes, memory.bytes);
        gauge(&self.counter_memory_budget_bytes, memory.budget_bytes);
        gauge(&self.grpc_connections, connections.open);
        let closed = self.grpc_connections_closed_for_room.get();
        self.grpc_connections_closed_for_room
            .inc_by(connections.closed_for_room.saturating_sub(closed));
        let evicted = self.counter_evictions.get();
        self.counter_evictions
            .inc_by(memory.evictions.saturating_sub(evicted));
        if let Some(backend) = backend {
            self.backend_up.set(i64::from(backend.up));
            // The limiter keeps the totals; these counters follow them.
            let catch_up = |counter: &IntCounter, total: u64| {
                counter.inc_by(total.saturating_sub(counter.get()));
            };
            catch_up(&self.backend_errors, backend.errors);
            catch_up(&self.backend_late, backend.late);
            catch_up(&self.backend_fallbacks, backend.fallbacks);
            catch_up(&self.backend_outages, backend.outages);
            catch_up(&self.local_cache_refusals, backend.cached);
            self.local_cache_entries
                .set(i64::try_from(backend.cache_entries).unwrap_or(i64::MAX));
        } else {
            self.backend_up.set(1);
        }
        let mut text = String::new();
        if let Err(error) = TextEncoder::new().encode_utf8(&self.registry.gather(), &mut text) {
            tracing::warn!(%error, "cannot render the metrics");
        }
        text
    }
}

impl RuleFamilies {
    /// The counters of the series `path` (levels of the rule path, `key_value` or `key`) of a
    /// rule window: `key1` is the first level, `key2` the rest joined by `.`, as the statsd
    /// mapping of envoyproxy/ratelimit splits its stat keys.
    fn counters(&self, domain: &str, path: &[String], window: &str) -> RuleCounters {
        let key1 = path.first().map_or("", String::as_str);
        let key2 = path.get(1..).unwrap_or_default().join(".");
        let labels = [domain, key1, key2.as_str(), window];
        RuleCounters {
            total_hits: self.total_hits.with_label_values(&labels),
            over_limit: self.over_limit.with_label_values(&labels),
            near_limit: self.near_limit.with_label_values(&labels),
            within_limit: self.within_limit.with_label_values(&labels),
            shadow_mode: self.shadow_mode.with_label_values(&labels),
            over_limit_with_local_cache: self
                .over_limit_with_local_cache
                .with_label_values(&labels),
        }
    }
}

impl RuleMetrics {
    /// Records what one window saw for a descriptor with these `(key, value)` entries.
    pub fn record(&self, entries: &[(&str, &str)], outcome: WindowOutcome) {
        match self {
            RuleMetrics::Fixed(counters) => counters.record(outcome),
            RuleMetrics::Values(series) => series.counters(entries).record(outcome),
        }
    }
}

impl ValueSeries {
    /// The series for these entries' values: a known one, a new one while there is room, or
    /// the `_other_` one.
    fn counters(&self, entries: &[(&str, &str)]) -> RuleCounters {
        let path = self.naming.path(entries.iter().map(|(_, value)| *value));
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(counters) = seen.get(&path) {
            return counters.clone();
        }
        if seen.len() >= self.max {
            return self.other.clone();
        }
        let counters = self.families.counters(&self.domain, &path, &self.window);
        seen.insert(path, counters.clone());
        counters
    }
}

impl RuleCounters {
    /// Adds one window's hits, split as envoyproxy/ratelimit splits them: hits past the limit
    /// are `over_limit`, hits between 80 % and the limit `near_limit`, and a request within
    /// the limit adds all its hits to `within_limit`.
    pub fn record(&self, outcome: WindowOutcome) {
        let hits = outcome.hits;
        if hits == 0 {
            return;
        }
        let limit = u64::from(outcome.requests_per_unit);
        let near = (outcome.requests_per_unit as f32 * NEAR_LIMIT_RATIO).floor() as u64;
        let before = outcome.before;
        let after = before.saturating_add(hits);
        self.total_hits.inc_by(hits);
        if outcome.over_limit {
            if before >= limit {
                self.over_limit.inc_by(hits);
            } else {
                self.over_limit.inc_by(after - limit);
                self.near_limit.inc_by(limit - near.max(before));
            }
            if outcome.shadow_mode {
                self.shadow_mode.inc_by(hits);
            }
            if outcome.local_cache {
                self.over_limit_with_local_cache.inc_by(hits);
            }
        } else {
            if after > near {
                self.near_limit
                    .inc_by(if before >= near { hits } else { after - near });
            }
            self.within_limit.inc_by(hits);
        }
    }
}

/// A window as a Prometheus-style duration: `1m`, `1h`, `5m`, `30d`.
fn window_label(window: Window) -> String {
    let seconds = window.seconds();
    for (unit, length) in [("d", 86_400), ("h", 3_600), ("m", 60)] {
        if seconds.is_multiple_of(length) {
            return format!("{}{unit}", seconds / length);
        }
    }
    format!("{seconds}s")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::rules::Unit;

    fn counters() -> (Metrics, RuleCounters) {
        let metrics = Metrics::new().unwrap();
        let counters = metrics.rule.counters("d", &["k".to_string()], "1m");
        (metrics, counters)
    }

    fn outcome(before: u64, hits: u64, over_limit: bool) -> WindowOutcome {
        WindowOutcome {
            before,
            hits,
            requests_per_unit: 10,
            over_limit,
            shadow_mode: false,
            local_cache: false,
        }
    }

    fn read(c: &RuleCounters) -> [u64; 5] {
        [
            c.total_hits.get(),
            c.over_limit.get(),
            c.near_limit.get(),
            c.within_limit.get(),
            c.shadow_mode.get(),
        ]
    }

    #[test]
    fn hits_split_like_envoyproxy_ratelimit() {
        // Limit 10, near threshold 8. [total, over, near, within, shadow]
        let cases = [
            (outcome(0, 1, false), [1, 0, 0, 1, 0]),
            (outcome(7, 2, false), [2, 0, 1, 2, 0]),
            (outcome(8, 1, false), [1, 0, 1, 1, 0]),
            (outcome(9, 3, true), [3, 2, 1, 0, 0]),
            (outcome(5, 10, true), [10, 5, 2, 0, 0]),
            (outcome(10, 4, true), [4, 4, 0, 0, 0]),
            (outcome(10, 0, true), [0, 0, 0, 0, 0]),
        ];
        for (outcome, expected) in cases {
            let (_metrics, c) = counters();
            c.record(outcome);
            assert_eq!(read(&c), expected, "{outcome:?}");
        }
        let (_metrics, c) = counters();
        c.record(WindowOutcome {
            shadow_mode: true,
            ..outcome(10, 2, true)
        });
        assert_eq!(read(&c), [2, 2, 0, 0, 2]);
        let (_metrics, c) = counters();
        c.record(WindowOutcome {
            local_cache: true,
            ..outcome(10, 3, true)
        });
        assert_eq!(read(&c), [3, 3, 0, 0, 0]);
        assert_eq!(c.over_limit_with_local_cache.get(), 3);
    }

    #[test]
    fn window_labels_read_like_durations() {
        let label = |unit, n| window_label(Window::try_new(unit, n).unwrap());
        assert_eq!(label(Unit::Minute, 1), "1m");
        assert_eq!(label(Unit::Second, 90), "90s");
        assert_eq!(label(Unit::Hour, 1), "1h");
        assert_eq!(label(Unit::Minute, 120), "2h");
        assert_eq!(label(Unit::Month, 1), "30d");
    }
}
