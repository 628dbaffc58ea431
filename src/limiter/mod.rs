//! From a matched request to a decision: which limits apply, counting, and what to report.
//!
//! [`Limiter::decide`] takes one rules snapshot and one validated [`Request`]; it finds each
//! descriptor's limits, drops those that another limit `replaces`, counts every remaining
//! window in one all-or-nothing call to the store, and says for each descriptor, and for the
//! request as a whole, which window binds. It knows nothing of gRPC: `service` maps the
//! [`Decision`] to Envoy's response.

mod key;
mod memory;
pub mod window;

use std::collections::HashSet;
use std::time::Duration;

pub use key::CounterKey;
pub use memory::{Count, Increment, MemoryStore, StoreError};

use crate::rules::{Entry, Limit, Policy, RuleSet, Unit, Window};

/// A validated `ShouldRateLimit` request (built by `service::request`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub domain: String,
    pub descriptors: Vec<Descriptor>,
}

/// One request descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    /// `(key, value)` pairs, in order; never empty.
    pub entries: Vec<(String, String)>,
    /// Envoy's per-descriptor `limit`: counted against it instead of the rules.
    pub limit_override: Option<LimitOverride>,
    /// Hits to add; 0 checks without counting.
    pub hits: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitOverride {
    pub requests_per_unit: u32,
    pub unit: Unit,
}

/// The answer for a whole request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Some descriptor is over a limit that is not in shadow mode.
    pub over_limit: bool,
    /// One per request descriptor, in request order.
    pub descriptors: Vec<DescriptorDecision>,
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

/// Decides requests against rules, counting in a store.
pub struct Limiter {
    store: MemoryStore,
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
    limit: &'l Limit,
    reset_in: Duration,
}

impl Limiter {
    pub fn new(store: MemoryStore) -> Limiter {
        Limiter { store }
    }

    pub fn store(&self) -> &MemoryStore {
        &self.store
    }

    /// Decides `request` at `now` (time since the Unix epoch).
    pub fn decide(
        &self,
        rules: &RuleSet,
        request: &Request,
        now: Duration,
    ) -> Result<Decision, StoreError> {
        let Some(domain) = rules.domain(&request.domain) else {
            return Ok(Decision::unlimited(request.descriptors.len()));
        };
        let applied: Vec<Applied<'_>> = request
            .descriptors
            .iter()
            .map(|descriptor| match descriptor.limit_override {
                Some(o) => Applied::Override(Limit {
                    requests_per_unit: o.requests_per_unit,
                    window: Window::of(o.unit),
                    name: None,
                    replaces: Vec::new(),
                    shadow_mode: false,
                }),
                None => {
                    let entries = descriptor
                        .entries
                        .iter()
                        .map(|(key, value)| Entry { key, value });
                    match domain.find(entries).and_then(|node| node.policy.as_ref()) {
                        Some(Policy::Limited(limits)) => Applied::Rules(limits),
                        Some(Policy::Unlimited) | None => Applied::None,
                    }
                }
            })
            .collect();

        // `replaces`: a limit named by another applied limit is dropped, uncounted.
        let replaced: HashSet<&str> = applied
            .iter()
            .flat_map(|a| a.limits())
            .flat_map(|limit| limit.replaces.iter().map(String::as_str))
            .collect();
        let mut planned = Vec::new();
        let mut keys = Vec::new();
        let mut increments = Vec::new();
        for (i, (descriptor, applied)) in request.descriptors.iter().zip(&applied).enumerate() {
            for limit in applied.limits() {
                if limit.name.as_deref().is_some_and(|n| replaced.contains(n)) {
                    continue;
                }
                let seconds = limit.window.seconds();
                let position = window::position(now, seconds);
                let entries = descriptor
                    .entries
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()));
                keys.push(CounterKey::new(&request.domain, entries, seconds));
                increments.push((seconds, position.index, limit, descriptor.hits));
                planned.push(Planned {
                    descriptor: i,
                    limit,
                    reset_in: position.reset_in,
                });
            }
        }
        let batch: Vec<Increment<'_>> = increments
            .iter()
            .zip(&keys)
            .map(|(&(seconds, index, limit, hits), key)| Increment {
                key,
                window_seconds: seconds,
                window_index: index,
                requests_per_unit: limit.requests_per_unit,
                hits,
                enforced: !limit.shadow_mode,
            })
            .collect();
        let (_, counts) = self.store.apply(&batch)?;
        Ok(Decision::from_counts(
            request.descriptors.len(),
            &planned,
            &counts,
        ))
    }
}

impl Decision {
    /// OK for every descriptor, nothing counted: the domain has no rules.
    fn unlimited(descriptors: usize) -> Decision {
        Decision {
            over_limit: false,
            descriptors: vec![
                DescriptorDecision {
                    over_limit: false,
                    report: None,
                };
                descriptors
            ],
            headline: None,
            retry_after: None,
        }
    }

    fn from_counts(descriptors: usize, planned: &[Planned<'_>], counts: &[Count]) -> Decision {
        let reports: Vec<(usize, WindowReport)> = planned
            .iter()
            .zip(counts)
            .map(|(plan, count)| {
                let limit = u64::from(plan.limit.requests_per_unit);
                let remaining = limit.saturating_sub(count.value) as u32;
                (
                    plan.descriptor,
                    WindowReport {
                        requests_per_unit: plan.limit.requests_per_unit,
                        window: plan.limit.window,
                        name: plan.limit.name.clone(),
                        remaining: if count.over_limit { 0 } else { remaining },
                        reset_in: plan.reset_in,
                        over_limit: count.over_limit,
                        shadow_mode: plan.limit.shadow_mode,
                    },
                )
            })
            .collect();
        let mut decision = Decision::unlimited(descriptors);
        for (i, out) in decision.descriptors.iter_mut().enumerate() {
            let mine = reports.iter().filter(|(d, _)| *d == i).map(|(_, r)| r);
            // Enforced windows speak for the descriptor; shadow ones only when there is no other.
            let enforced = most_restrictive(mine.clone().filter(|r| !r.shadow_mode));
            out.report = enforced.or_else(|| most_restrictive(mine)).cloned();
            out.over_limit = out
                .report
                .as_ref()
                .is_some_and(|r| r.over_limit && !r.shadow_mode);
        }
        let enforced = || reports.iter().map(|(_, r)| r).filter(|r| !r.shadow_mode);
        decision.over_limit = enforced().any(|r| r.over_limit);
        decision.headline = most_restrictive(enforced()).cloned();
        decision.retry_after = enforced()
            .filter(|r| r.over_limit)
            .map(|r| r.reset_in)
            .max();
        decision
    }
}

/// The exceeded window that resets last, else the one with the least remaining (the later
/// reset on a tie): the window a client has to wait for.
fn most_restrictive<'a>(
    reports: impl Iterator<Item = &'a WindowReport>,
) -> Option<&'a WindowReport> {
    reports.max_by(|a, b| {
        a.over_limit
            .cmp(&b.over_limit)
            .then(b.remaining.cmp(&a.remaining))
            .then(a.reset_in.cmp(&b.reset_in))
    })
}
