//! From a matched request to a decision: which limits apply, counting, and what to report.
//!
//! [`Limiter::decide`] takes one rules snapshot and one validated [`Request`]; it finds each
//! descriptor's limits, drops those that another limit `replaces`, counts every remaining
//! window in one all-or-nothing call to the store, and says for each descriptor, and for the
//! request as a whole, which window binds. Shadow-mode windows are counted but never refuse;
//! quota-mode ones refuse together, when every quota group of the request is exhausted
//! ([`QuotaGroups`]). A `share_threshold` level puts its pattern in the
//! counter key in place of the value. It knows nothing of gRPC: `service` maps the
//! [`Decision`] to Envoy's response.
//!
//! The store is the only part that differs between backends: [`MemoryStore`] in process, or
//! [`RedisStore`] wrapped in its failure policy ([`Shared`], see [`OnBackendError`]). Both keep
//! the store contract ([`store`]): the same [`Batch`] in, the same counts out, so the decision
//! around them does not change. A decision is one path, plan → count → conclude; in memory the
//! count is made at once ([`Limiter::decide_now`]), with Redis it is awaited (unless the local
//! over-limit cache refuses at once).

pub mod algorithm;
mod arrivals;
pub mod clock;
mod counter_table;
mod key;
mod memory;
mod over_limit_cache;
pub mod redis;
mod redis_batcher;
mod redis_script;
mod refill_cell;
mod shared;
pub mod store;
pub mod window;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use smallvec::SmallVec;

pub use key::CounterKey;
pub use memory::{Budget, MemoryStore, MemoryUsage};
pub use redis::{BackendError, RedisStore, RedisTls, Target};
pub use shared::{BackendSnapshot, Counted, OnBackendError, Shared};
pub use store::{Batch, Count, CounterStore, Counting, Counts, Increment, StoreError};

use crate::rules::{Algorithm, Entry, Limit, Policy, RuleSet, Unit, Window};

/// A validated `ShouldRateLimit` request (read by `service::request`), borrowing its strings
/// from the message; a request of up to two descriptors of up to two entries is not allocated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request<'m> {
    pub domain: &'m str,
    pub descriptors: SmallVec<[Descriptor<'m>; 2]>,
    /// Hits to add for a descriptor that does not say (the request's `hits_addend`, 0 read as 1).
    pub hits: u64,
}

impl Request<'_> {
    /// Hits to add for `descriptor`: its own `hits_addend` wins; 0 checks without counting.
    pub fn hits_of(&self, descriptor: &Descriptor<'_>) -> u64 {
        descriptor.hits.unwrap_or(self.hits)
    }
}

/// One request descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor<'m> {
    /// `(key, value)` pairs, in order; never empty.
    pub entries: SmallVec<[(&'m str, &'m str); 2]>,
    /// Envoy's per-descriptor `limit`: counted against it instead of the rules.
    pub limit_override: Option<LimitOverride>,
    /// Its own `hits_addend`, when set; see [`Request::hits_of`].
    pub hits: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitOverride {
    pub requests_per_unit: u32,
    pub unit: Unit,
}

/// The answer for a whole request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The domain has rules (an unknown domain is answered OK, uncounted).
    pub domain_known: bool,
    /// Some descriptor is over a limit that is not in shadow mode.
    pub over_limit: bool,
    /// One per request descriptor, in request order.
    pub descriptors: SmallVec<[DescriptorDecision; 2]>,
    /// The most restrictive enforced window across the request (for the `RateLimit-*` headers).
    pub headline: Option<WindowReport>,
    /// When over the limit: how long until a request like this one could pass.
    pub retry_after: Option<Duration>,
}

/// The answer for one descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DescriptorDecision {
    pub over_limit: bool,
    /// The reported window: the exceeded one, else the one with the least remaining; `None`
    /// when no limit applies (no rule matched, `unlimited`, or replaced).
    pub report: Option<WindowReport>,
}

/// One counted window, as reported to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowReport {
    pub requests_per_unit: u32,
    pub window: Window,
    pub name: Option<String>,
    pub remaining: u32,
    pub reset_in: Duration,
    pub over_limit: bool,
    pub shadow_mode: bool,
}

/// What one counted window saw, for statistics: the window's count was `before` when
/// `hits` more arrived (whether or not the request was admitted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowOutcome {
    pub before: u64,
    pub hits: u64,
    pub requests_per_unit: u32,
    /// These hits do not fit in this window (for a check-only descriptor: it is full).
    pub over_limit: bool,
    pub shadow_mode: bool,
    /// The request was refused by the local over-limit cache, without asking Redis.
    pub local_cache: bool,
}

/// Decides requests against rules, counting in a store: process memory, or Redis with its
/// failure policy.
pub struct Limiter {
    store: Store,
    /// The algorithm of limits that name none (`--default-algorithm`).
    default_algorithm: Algorithm,
}

/// Where a limiter counts.
enum Store {
    Memory(MemoryStore),
    Redis(Shared),
}

/// The limits that apply to one descriptor, before `replaces`.
enum Applied<'r> {
    None,
    Rules(&'r [Limit]),
    Override(Limit),
}

impl Applied<'_> {
    fn limits(&self) -> &[Limit] {
        match self {
            Applied::None => &[],
            Applied::Rules(limits) => limits,
            Applied::Override(limit) => std::slice::from_ref(limit),
        }
    }
}

/// One window to count for one descriptor.
struct Planned<'l> {
    descriptor: usize,
    hits: u64,
    limit: &'l Limit,
    reset_in: Duration,
}

impl Limiter {
    /// Counting in `store` (memory).
    pub fn new(store: MemoryStore) -> Limiter {
        Limiter {
            store: Store::Memory(store),
            default_algorithm: Algorithm::FixedWindow,
        }
    }

    /// Limits that name no algorithm count with `algorithm`.
    pub fn with_default_algorithm(mut self, algorithm: Algorithm) -> Limiter {
        self.default_algorithm = algorithm;
        self
    }

    /// Counting in Redis; with `OnBackendError::Local`, what Redis last said and the hits
    /// counted while it is away are kept in memory, each within `budget`, of which this replica
    /// takes one share in `replicas`. Refusals of counters Redis said are full are answered by
    /// a local cache of `local_cache_bytes` (0: off).
    pub fn shared(
        redis: Arc<RedisStore>,
        on_error: OnBackendError,
        budget: Budget,
        replicas: u32,
        local_cache_bytes: usize,
    ) -> Limiter {
        Limiter {
            store: Store::Redis(Shared::new(
                redis,
                on_error,
                budget,
                replicas,
                local_cache_bytes,
            )),
            default_algorithm: Algorithm::FixedWindow,
        }
    }

    /// How limits that name no algorithm count (`--default-algorithm`).
    pub fn default_algorithm(&self) -> Algorithm {
        self.default_algorithm
    }

    /// The in-process store (in Redis mode, the fallback of `--on-backend-error local`).
    pub fn store(&self) -> &MemoryStore {
        match &self.store {
            Store::Memory(store) => store,
            Store::Redis(shared) => shared.local(),
        }
    }

    /// Whether the counters are in Redis (and a decision may wait for it).
    pub fn counts_in_redis(&self) -> bool {
        matches!(self.store, Store::Redis(_))
    }

    /// Redis's state now, in Redis mode.
    pub fn backend(&self) -> Option<BackendSnapshot> {
        match &self.store {
            Store::Memory(_) => None,
            Store::Redis(shared) => Some(shared.snapshot()),
        }
    }

    /// Decides `request` at `now` (time since the Unix epoch).
    pub async fn decide(
        &self,
        rules: &RuleSet,
        request: &Request<'_>,
        now: Duration,
    ) -> Result<Decision, StoreError> {
        self.decide_observed(rules, request, now, |_, _, _| {})
            .await
    }

    /// [`Limiter::decide_observed`] at once, where nothing waits (no future is made): in memory
    /// mode always; in Redis mode when the local over-limit cache refuses the request, else
    /// `None` (ask Redis, with [`Limiter::decide_observed`]).
    pub fn decide_now(
        &self,
        rules: &RuleSet,
        request: &Request<'_>,
        now: Duration,
        observe: impl FnMut(&Limit, &[(&str, &str)], WindowOutcome),
    ) -> Option<Result<Decision, StoreError>> {
        let Some(applied) = applied(rules, request) else {
            return Some(Ok(Decision::unknown_domain(request.descriptors.len())));
        };
        let plan = Plan::new(&applied, request, now, self.default_algorithm);
        let counted = match &self.store {
            Store::Memory(store) => {
                let (admitted, counts) = store.apply(&plan.batch);
                Counted::Counts(admitted, counts)
            }
            Store::Redis(shared) => shared.cached_refusal(&plan.batch, rules.generation())?,
        };
        Some(Ok(plan.conclude(request, counted, observe)))
    }

    /// How many counters Redis's refusals are cached for here, at most (0: none, and in memory
    /// mode): in Redis mode, [`Limiter::decide_now`] may refuse at once from that cache.
    pub fn refusal_cache_capacity(&self) -> usize {
        match &self.store {
            Store::Memory(_) => 0,
            Store::Redis(shared) => shared.cache_capacity(),
        }
    }

    /// [`Limiter::decide`], telling `observe` what each counted window saw.
    pub async fn decide_observed(
        &self,
        rules: &RuleSet,
        request: &Request<'_>,
        now: Duration,
        observe: impl FnMut(&Limit, &[(&str, &str)], WindowOutcome),
    ) -> Result<Decision, StoreError> {
        let Some(applied) = applied(rules, request) else {
            return Ok(Decision::unknown_domain(request.descriptors.len()));
        };
        let plan = Plan::new(&applied, request, now, self.default_algorithm);
        let counted = match &self.store {
            Store::Memory(store) => {
                let (admitted, counts) = store.apply(&plan.batch);
                Ok(Counted::Counts(admitted, counts))
            }
            Store::Redis(shared) => shared.count(&plan.batch, rules.generation()).await,
        };
        Ok(plan.conclude(request, counted?, observe))
    }
}

/// Each descriptor's limits, before `replaces`; `None` if the domain has no rules.
fn applied<'r>(rules: &'r RuleSet, request: &Request<'_>) -> Option<SmallVec<[Applied<'r>; 2]>> {
    let domain = rules.domain(request.domain)?;
    let applied = request
        .descriptors
        .iter()
        .map(|descriptor| match descriptor.limit_override {
            Some(o) => Applied::Override(Limit {
                requests_per_unit: o.requests_per_unit,
                window: Window::of(o.unit),
                name: None,
                replaces: Vec::new(),
                shadow_mode: false,
                quota_mode: false,
                shared_values: None,
                id: None,
                algorithm: None,
                burst: None,
            }),
            None => {
                let entries = descriptor
                    .entries
                    .iter()
                    .map(|&(key, value)| Entry { key, value });
                match domain.find(entries).and_then(|node| node.policy.as_ref()) {
                    Some(Policy::Limited(limits)) => Applied::Rules(limits),
                    Some(Policy::Unlimited) | None => Applied::None,
                }
            }
        })
        .collect();
    Some(applied)
}

/// The windows a request counts, in order, and the batch that counts them in a store.
struct Plan<'l> {
    planned: SmallVec<[Planned<'l>; 4]>,
    batch: Batch,
}

impl<'l> Plan<'l> {
    fn new(
        applied: &'l [Applied<'_>],
        request: &Request<'_>,
        now: Duration,
        default_algorithm: Algorithm,
    ) -> Plan<'l> {
        // `replaces`: a limit named by another applied limit is dropped, uncounted. Most
        // requests have none, and then no set is built.
        let replaces = applied
            .iter()
            .flat_map(|a| a.limits())
            .any(|limit| !limit.replaces.is_empty());
        let replaced: HashSet<&str> = if replaces {
            applied
                .iter()
                .flat_map(|a| a.limits())
                .flat_map(|limit| limit.replaces.iter().map(String::as_str))
                .collect()
        } else {
            HashSet::new()
        };
        let is_replaced =
            |limit: &Limit| replaces && limit.name.as_deref().is_some_and(|n| replaced.contains(n));
        // Quota-mode windows refuse only together, across the request's quota groups (see
        // `QuotaGroups`), so in general the store must not refuse on them. With one group, its
        // windows refuse like any other: then the store refuses, and a refused request moves
        // nothing. Only a request of several groups, all exhausted, is refused after counting.
        let one_quota_group = {
            let mut groups = applied
                .iter()
                .zip(&request.descriptors)
                .filter(|(a, _)| a.limits().iter().any(|l| l.quota_mode && !is_replaced(l)))
                .map(|(_, descriptor)| quota_group_key(&descriptor.entries));
            groups
                .next()
                .is_some_and(|first| groups.all(|other| other == first))
        };
        let windows = applied.iter().map(|a| a.limits().len()).sum();
        let mut planned: SmallVec<[Planned<'l>; 4]> = SmallVec::with_capacity(windows);
        let mut batch = Batch {
            keys: SmallVec::with_capacity(request.descriptors.len()),
            increments: SmallVec::with_capacity(windows),
        };
        for (i, (descriptor, applied)) in request.descriptors.iter().zip(applied).enumerate() {
            // The descriptor's key (its fixed windows), and its refill counters' key.
            let (mut key, mut refill_key) = (None, None);
            let hits = request.hits_of(descriptor);
            for limit in applied.limits() {
                if is_replaced(limit) {
                    continue;
                }
                let seconds = limit.window.seconds();
                let counting = counting(limit, default_algorithm);
                let refills = counting.refills();
                let key =
                    *if refills { &mut refill_key } else { &mut key }.get_or_insert_with(|| {
                        // Refill counters count under a key of their own (`CounterKey::refill`).
                        let own = counter_key(request.domain, descriptor, limit);
                        batch.keys.push(if refills { own.refill() } else { own });
                        batch.keys.len() - 1
                    });
                let position = window::position(now, seconds);
                batch.increments.push(Increment {
                    key,
                    window_seconds: seconds,
                    window_index: position.index,
                    expires_in_ms: u64::try_from(position.reset_in.as_millis())
                        .unwrap_or(u64::MAX)
                        .max(1),
                    requests_per_unit: limit.requests_per_unit,
                    hits,
                    enforced: !limit.shadow_mode && (!limit.quota_mode || one_quota_group),
                    counting,
                    now_us: u64::try_from(now.as_micros()).unwrap_or(u64::MAX),
                });
                planned.push(Planned {
                    descriptor: i,
                    hits,
                    limit,
                    reset_in: position.reset_in,
                });
            }
        }
        Plan { planned, batch }
    }

    /// The decision from the store's counts, telling `observe` what each window saw (with the
    /// entries of the descriptor it counted).
    fn conclude(
        &self,
        request: &Request<'_>,
        counted: Counted,
        mut observe: impl FnMut(&Limit, &[(&str, &str)], WindowOutcome),
    ) -> Decision {
        let descriptors = request.descriptors.len();
        let (admitted, counts, local_cache) = match counted {
            Counted::Counts(admitted, counts) => (admitted, counts, false),
            Counted::Cached(counts) => (false, counts, true),
            Counted::Allowed => return Decision::unlimited(descriptors),
            Counted::Denied => return Decision::denied(descriptors, &self.planned),
        };
        for (plan, count) in self.planned.iter().zip(&counts) {
            let entries = request
                .descriptors
                .get(plan.descriptor)
                .map_or(&[][..], |d| &d.entries[..]);
            let outcome = WindowOutcome {
                local_cache,
                ..plan.outcome(admitted, count)
            };
            observe(plan.limit, entries, outcome);
        }
        Decision::from_counts(request, &self.planned, &counts)
    }
}

impl Planned<'_> {
    fn outcome(&self, admitted: bool, count: &Count) -> WindowOutcome {
        // An admitted request's count includes its hits; a refused one moved nothing.
        let before = if admitted {
            count.value.saturating_sub(self.hits)
        } else {
            count.value
        };
        WindowOutcome {
            before,
            hits: self.hits,
            requests_per_unit: self.limit.requests_per_unit,
            over_limit: store::is_over(
                before.saturating_add(self.hits),
                self.hits,
                self.limit.requests_per_unit,
            ),
            shadow_mode: self.limit.shadow_mode,
            local_cache: false,
        }
    }
}

impl Decision {
    /// OK for every descriptor, nothing counted: the domain is not in the rules.
    fn unknown_domain(descriptors: usize) -> Decision {
        let mut decision = Decision::unlimited(descriptors);
        decision.domain_known = false;
        decision
    }

    /// OK for every descriptor, nothing counted.
    fn unlimited(descriptors: usize) -> Decision {
        Decision {
            domain_known: true,
            over_limit: false,
            descriptors: SmallVec::from_elem(
                DescriptorDecision {
                    over_limit: false,
                    report: None,
                },
                descriptors,
            ),
            headline: None,
            retry_after: None,
        }
    }

    /// OVER_LIMIT for every descriptor with a limit, nothing counted: Redis failed and the
    /// operator chose to fail closed.
    fn denied(descriptors: usize, planned: &[Planned<'_>]) -> Decision {
        let mut decision = Decision::unlimited(descriptors);
        for plan in planned.iter().filter(|p| !p.limit.shadow_mode) {
            if let Some(out) = decision.descriptors.get_mut(plan.descriptor) {
                out.over_limit = true;
                decision.over_limit = true;
            }
        }
        decision
    }

    /// The decision from the counts, as envoyproxy/ratelimit's service concludes it
    /// (`shouldRateLimitWorker` in its `src/service/ratelimit.go`): OVER_LIMIT when a window
    /// that is neither in shadow nor in quota mode is exceeded, or when every quota group of the
    /// request is exhausted.
    fn from_counts(request: &Request<'_>, planned: &[Planned<'_>], counts: &[Count]) -> Decision {
        let mut decision = Decision::unlimited(request.descriptors.len());
        let quota = QuotaGroups::of(request, planned, counts);
        for (plan, count) in planned.iter().zip(counts) {
            let limit = u64::from(plan.limit.requests_per_unit);
            // A fixed window is fully available again, and a refused request passes, when it
            // ends; a refill counter says when (`algorithm.rs`).
            let (remaining, reset_in, retry_in) = match count.standing {
                None => (
                    limit.saturating_sub(count.value),
                    plan.reset_in,
                    plan.reset_in,
                ),
                Some(s) => (
                    s.remaining,
                    Duration::from_millis(s.reset_in_ms),
                    Duration::from_millis(s.retry_in_ms),
                ),
            };
            let report = WindowReport {
                requests_per_unit: plan.limit.requests_per_unit,
                window: plan.limit.window,
                name: plan.limit.name.clone(),
                remaining: if count.over_limit {
                    0
                } else {
                    u32::try_from(remaining).unwrap_or(u32::MAX)
                },
                reset_in,
                over_limit: count.over_limit,
                shadow_mode: plan.limit.shadow_mode,
            };
            let speaks_for_request = if plan.limit.quota_mode {
                quota.speaks_for_request(plan.descriptor)
            } else {
                !report.shadow_mode
            };
            if speaks_for_request {
                if !plan.limit.quota_mode {
                    decision.over_limit |= report.over_limit;
                    if report.over_limit {
                        decision.retry_after = decision.retry_after.max(Some(retry_in));
                    }
                }
                if binds_more(&report, decision.headline.as_ref()) {
                    decision.headline = Some(report.clone());
                }
            }
            let Some(out) = decision.descriptors.get_mut(plan.descriptor) else {
                continue;
            };
            // Enforced windows speak for the descriptor; shadow ones only when there is no other.
            let replace = match &out.report {
                None => true,
                Some(current) if current.shadow_mode != report.shadow_mode => current.shadow_mode,
                Some(current) => binds_more(&report, Some(current)),
            };
            if replace {
                out.over_limit = report.over_limit && !report.shadow_mode;
                out.report = Some(report);
            }
        }
        if let Some(wait) = quota.refusal() {
            decision.over_limit = true;
            decision.retry_after = decision.retry_after.max(Some(wait));
        }
        decision
    }
}

/// The quota groups of one request: quota-mode descriptors grouped by the model they are for
/// (the `backend_name` and `model_name_override` entries), or each by its own entries when it
/// names no model, as envoyproxy/ratelimit's `quotaGroupKey` groups them. A group is exhausted
/// when any of its windows is; the request is refused when every group is exhausted, so a
/// client can fail over to a model that still has quota.
struct QuotaGroups {
    /// Per group: exhausted, and when every exhausted window of it has reset.
    groups: SmallVec<[(String, bool, Duration); 2]>,
    /// `(descriptor, group)` for each quota-mode window; empty for most requests.
    group_of: SmallVec<[(usize, usize); 2]>,
}

impl QuotaGroups {
    fn of(request: &Request<'_>, planned: &[Planned<'_>], counts: &[Count]) -> QuotaGroups {
        let mut quota = QuotaGroups {
            groups: SmallVec::new(),
            group_of: SmallVec::new(),
        };
        for (plan, count) in planned.iter().zip(counts) {
            if !plan.limit.quota_mode {
                continue;
            }
            let Some(descriptor) = request.descriptors.get(plan.descriptor) else {
                continue;
            };
            let key = quota_group_key(&descriptor.entries);
            let group = match quota.groups.iter().position(|(k, _, _)| *k == key) {
                Some(group) => group,
                None => {
                    quota.groups.push((key, false, Duration::ZERO));
                    quota.groups.len() - 1
                }
            };
            quota.group_of.push((plan.descriptor, group));
            if count.over_limit
                && let Some((_, exhausted, reset)) = quota.groups.get_mut(group)
            {
                *exhausted = true;
                *reset = (*reset).max(plan.reset_in);
            }
        }
        quota
    }

    /// When every group is exhausted: how long until the first of them has room again.
    fn refusal(&self) -> Option<Duration> {
        let all_exhausted = !self.groups.is_empty() && self.groups.iter().all(|g| g.1);
        all_exhausted
            .then(|| self.groups.iter().map(|g| g.2).min())
            .flatten()
    }

    /// Whether a quota window of `descriptor` speaks for the request's headers: those of groups
    /// that still have room, or all of them once every group is exhausted.
    fn speaks_for_request(&self, descriptor: usize) -> bool {
        let exhausted = self
            .group_of
            .iter()
            .find(|(d, _)| *d == descriptor)
            .and_then(|(_, g)| self.groups.get(*g))
            .is_some_and(|g| g.1);
        !exhausted || self.refusal().is_some()
    }
}

/// The quota group a descriptor belongs to.
fn quota_group_key(entries: &[(&str, &str)]) -> String {
    let find = |key: &str| entries.iter().find(|(k, _)| *k == key).map(|(_, v)| *v);
    let backend = find("backend_name").unwrap_or_default();
    let model = find("model_name_override").unwrap_or_default();
    if !backend.is_empty() || !model.is_empty() {
        return format!("model\u{0}{backend}\u{0}{model}");
    }
    let mut key = String::from("entries");
    for (k, v) in entries {
        key.push('\u{0}');
        key.push_str(k);
        key.push('\u{0}');
        key.push_str(v);
    }
    key
}

/// The counter key of `descriptor` for `limit`'s rule: its entries, with the pattern in place
/// of the value at every level that shares one counter (`share_threshold`).
fn counter_key(domain: &str, descriptor: &Descriptor<'_>, limit: &Limit) -> CounterKey {
    let entries = descriptor.entries.iter().copied();
    match &limit.shared_values {
        None => CounterKey::new(domain, entries),
        Some(shared) => {
            let entries = entries.enumerate().map(|(i, (key, value))| {
                let pattern = shared.get(i).and_then(|p| p.as_deref());
                (key, pattern.unwrap_or(value))
            });
            CounterKey::new(domain, entries)
        }
    }
}

/// How `limit` counts, its algorithm resolved.
fn counting(limit: &Limit, default_algorithm: Algorithm) -> Counting {
    match limit.algorithm.unwrap_or(default_algorithm) {
        Algorithm::FixedWindow => Counting::Fixed,
        Algorithm::SlidingWindow => Counting::Sliding,
        Algorithm::TokenBucket => Counting::Bucket {
            burst: limit.burst.unwrap_or(limit.requests_per_unit),
        },
    }
}

/// Whether `report` binds more than `current`: exceeded beats not exceeded; then the least
/// remaining; then the later reset. That is the window a client has to wait for.
fn binds_more(report: &WindowReport, current: Option<&WindowReport>) -> bool {
    let Some(current) = current else {
        return true;
    };
    let key = |r: &WindowReport| (r.over_limit, std::cmp::Reverse(r.remaining), r.reset_in);
    key(report) > key(current)
}

#[cfg(test)]
mod tests {
    //! The decision core on its own: rules, a request, a fixed instant, the memory store; no
    //! socket, no clock.
    #![allow(clippy::unwrap_used)]

    use std::path::Path;
    use std::time::Duration;

    use smallvec::smallvec;

    use super::{Decision, Descriptor, Limiter, MemoryStore, Request};
    use crate::rules::{RuleSet, Unit};

    const RULES: &str = r#"
domain: d
descriptors:
  - key: user
    rate_limits:
      - {unit: minute, requests_per_unit: 3}
      - {unit: hour, requests_per_unit: 5}
  - key: plan
    value: free
    rate_limit: {unit: minute, requests_per_unit: 1, name: free}
  - key: plan
    value: paid
    rate_limit: {unit: minute, requests_per_unit: 10, replaces: [{name: free}]}
  - key: watch
    shadow_mode: true
    rate_limit: {unit: minute, requests_per_unit: 1}
  - key: open
    rate_limit: {unlimited: true}
"#;

    /// 12:00:30 on some day: 30 s left in the minute, 30 min in the hour.
    const NOW: Duration = Duration::from_secs(20_000 * 86_400 + 12 * 3_600 + 30);

    fn rules() -> RuleSet {
        RuleSet::new(vec![
            crate::config::parse_domain(Path::new("d.yaml"), RULES).unwrap(),
        ])
    }

    fn descriptor<'a>(entries: &[(&'a str, &'a str)], hits: Option<u64>) -> Descriptor<'a> {
        Descriptor {
            entries: entries.iter().copied().collect(),
            limit_override: None,
            hits,
        }
    }

    fn decide(limiter: &Limiter, rules: &RuleSet, descriptors: Vec<Descriptor<'_>>) -> Decision {
        let request = Request {
            domain: "d",
            descriptors: descriptors.into_iter().collect(),
            hits: 1,
        };
        limiter
            .decide_now(rules, &request, NOW, |_, _, _| {})
            .unwrap()
            .unwrap()
    }

    /// (over_limit, remaining, reset seconds) of each descriptor's reported window; `None`
    /// when nothing applies.
    fn reports(decision: &Decision) -> Vec<Option<(bool, u32, u64)>> {
        decision
            .descriptors
            .iter()
            .map(|d| {
                d.report
                    .as_ref()
                    .map(|r| (d.over_limit, r.remaining, r.reset_in.as_secs()))
            })
            .collect()
    }

    #[test]
    fn the_tightest_window_is_reported_and_a_refusal_moves_nothing() {
        let (limiter, rules) = (
            Limiter::new(MemoryStore::new(super::Budget::keys(100))),
            rules(),
        );
        let user = || vec![descriptor(&[("user", "u")], None)];
        let table = [
            // minute 3, hour 5: the minute binds until it is exhausted
            (false, Some((false, 2, 30))),
            (false, Some((false, 1, 30))),
            (false, Some((false, 0, 30))),
            // refused by the minute: the exceeded window is reported
            (true, Some((true, 0, 30))),
            (true, Some((true, 0, 30))),
        ];
        for (i, (over, report)) in table.into_iter().enumerate() {
            let decision = decide(&limiter, &rules, user());
            assert_eq!(decision.over_limit, over, "call {}", i + 1);
            assert_eq!(reports(&decision), [report], "call {}", i + 1);
        }
        // The refusals took nothing from the hour: 2 of 5 left, checked without counting.
        let decision = decide(
            &limiter,
            &rules,
            vec![descriptor(&[("user", "u")], Some(0))],
        );
        let headline = decision.headline.unwrap();
        assert_eq!(
            (headline.remaining, headline.window.unit()),
            (0, Unit::Minute)
        );
        assert_eq!(decision.retry_after, Some(Duration::from_secs(30)));
        let hour = Request {
            domain: "d",
            descriptors: smallvec![descriptor(&[("user", "u")], Some(0))],
            hits: 1,
        };
        let mut windows = Vec::new();
        limiter
            .decide_now(&rules, &hour, NOW, |limit, _, outcome| {
                windows.push((limit.window.unit(), outcome.before))
            })
            .unwrap()
            .unwrap();
        assert_eq!(windows, [(Unit::Minute, 3), (Unit::Hour, 3)]);
    }

    #[test]
    fn replaces_drops_the_named_limit_uncounted() {
        let (limiter, rules) = (
            Limiter::new(MemoryStore::new(super::Budget::keys(100))),
            rules(),
        );
        let both = || {
            vec![
                descriptor(&[("plan", "free")], None),
                descriptor(&[("plan", "paid")], None),
            ]
        };
        for _ in 0..3 {
            let decision = decide(&limiter, &rules, both());
            assert!(!decision.over_limit);
            assert_eq!(reports(&decision)[0], None, "replaced: no report");
        }
        let alone = decide(
            &limiter,
            &rules,
            vec![descriptor(&[("plan", "free")], None)],
        );
        assert_eq!(
            reports(&alone),
            [Some((false, 0, 30))],
            "free was never counted"
        );
    }

    #[test]
    fn shadow_mode_counts_and_never_refuses_and_unlimited_counts_nothing() {
        let (limiter, rules) = (
            Limiter::new(MemoryStore::new(super::Budget::keys(100))),
            rules(),
        );
        for call in 1..=3 {
            let decision = decide(
                &limiter,
                &rules,
                vec![
                    descriptor(&[("watch", "w")], None),
                    descriptor(&[("open", "o")], None),
                    descriptor(&[("nobody", "n")], None),
                ],
            );
            assert!(!decision.over_limit, "call {call}");
            assert_eq!(decision.retry_after, None);
            assert_eq!(
                decision.headline, None,
                "a shadow window is not the headline"
            );
            assert_eq!(
                reports(&decision),
                [Some((false, 0, 30)), None, None],
                "call {call}"
            );
        }
        assert_eq!(limiter.store().len(), 1, "only the shadow rule counted");
    }

    #[test]
    fn hits_addend_zero_checks_and_large_hits_are_refused_whole() {
        let (limiter, rules) = (
            Limiter::new(MemoryStore::new(super::Budget::keys(100))),
            rules(),
        );
        let check = decide(
            &limiter,
            &rules,
            vec![descriptor(&[("user", "c")], Some(0))],
        );
        assert_eq!(reports(&check), [Some((false, 3, 30))]);
        let big = decide(
            &limiter,
            &rules,
            vec![descriptor(&[("user", "c")], Some(4))],
        );
        assert!(big.over_limit);
        let after = decide(
            &limiter,
            &rules,
            vec![descriptor(&[("user", "c")], Some(3))],
        );
        assert_eq!(
            reports(&after),
            [Some((false, 0, 30))],
            "the 4 took nothing"
        );
    }
}
