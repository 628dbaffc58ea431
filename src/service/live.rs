//! The rules in use, swapped atomically on reload.
//!
//! A call takes one [`Snapshot`] and decides with it from start to end, so a reload never
//! splits a request between two rule sets. Counters live in the store, keyed by descriptor
//! and window, not by rule: a rule that survives a reload keeps its counts.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::{ArcSwap, Guard};

use crate::metrics::{Metrics, RuleSeries};
use crate::rules::RuleSet;

/// One installed rule set, with what goes with it.
pub struct Snapshot {
    pub rules: RuleSet,
    /// [`crate::config::Sources::hash`] of the files it came from.
    pub hash: String,
    /// Per-rule metrics, indexed by [`crate::rules::Limit::id`].
    pub counters: RuleSeries,
}

/// The current [`Snapshot`], and the metrics that reloads report to.
pub struct LiveRules {
    current: ArcSwap<Snapshot>,
    metrics: Arc<Metrics>,
    /// `--redact-rule-values`: every rule set installed shows its values hashed.
    redact: bool,
    /// The first rules are still to come (over xDS): not ready until they do.
    awaiting_first: AtomicBool,
}

impl LiveRules {
    /// Installs the first rules (counted as a successful load).
    pub fn new(rules: RuleSet, hash: String, metrics: Arc<Metrics>, redact: bool) -> LiveRules {
        let snapshot = snapshot(rules, hash, &metrics, redact);
        LiveRules {
            current: ArcSwap::from_pointee(snapshot),
            metrics,
            redact,
            awaiting_first: AtomicBool::new(false),
        }
    }

    /// Until rules are installed, [`LiveRules::awaiting_first`] says so (the rules `new` was
    /// given are a placeholder: none, before xDS delivers).
    pub fn awaiting_first_rules(self) -> LiveRules {
        self.awaiting_first.store(true, Ordering::Relaxed);
        self
    }

    /// Whether the first rules are still to come.
    pub fn awaiting_first(&self) -> bool {
        self.awaiting_first.load(Ordering::Relaxed)
    }

    /// The rules in use; hold the guard for one request, not longer.
    pub fn load(&self) -> Guard<Arc<Snapshot>> {
        self.current.load()
    }

    /// The rules in use, to keep.
    pub fn current(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Replaces the rules for every request that starts from now on, and frees the old ones
    /// on the calling thread (the reload thread), not on whichever request let go of them last:
    /// freeing a million rules takes tens of milliseconds, which that request would wait.
    pub fn install(&self, rules: RuleSet, hash: String) {
        let old = self
            .current
            .swap(Arc::new(snapshot(rules, hash, &self.metrics, self.redact)));
        self.awaiting_first.store(false, Ordering::Relaxed);
        drop_when_last(old);
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }
}

/// How long [`drop_when_last`] waits for the requests still deciding with old rules. Requests
/// hold them for one decision; a holder past this (an admin page being written) frees them.
const OLD_RULES_WAIT: Duration = Duration::from_secs(5);

/// Drops `old` here once no request holds it any more (or after [`OLD_RULES_WAIT`]).
fn drop_when_last(old: Arc<Snapshot>) {
    let deadline = Instant::now() + OLD_RULES_WAIT;
    while Arc::strong_count(&old) > 1 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    drop(old);
}

fn snapshot(mut rules: RuleSet, hash: String, metrics: &Arc<Metrics>, redact: bool) -> Snapshot {
    if redact {
        rules.redact_values();
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    metrics.config_loaded(&hash, rules.rules().len(), now);
    for warning in rules.warnings() {
        tracing::warn!("{warning}");
    }
    let counters = RuleSeries::new(Arc::clone(metrics), &rules);
    Snapshot {
        rules,
        hash,
        counters,
    }
}
