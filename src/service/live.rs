//! The rules in use, swapped atomically on reload.
//!
//! A call takes one [`Snapshot`] and decides with it from start to end, so a reload never
//! splits a request between two rule sets. Counters live in the store, keyed by descriptor
//! and window, not by rule: a rule that survives a reload keeps its counts.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::{ArcSwap, Guard};

use crate::metrics::{Metrics, RuleMetrics};
use crate::rules::RuleSet;

/// One installed rule set, with what goes with it.
pub struct Snapshot {
    pub rules: RuleSet,
    /// [`crate::config::Sources::hash`] of the files it came from.
    pub hash: String,
    /// Per-rule metrics, indexed by [`crate::rules::Limit::id`].
    pub counters: Vec<Option<RuleMetrics>>,
}

/// The current [`Snapshot`], and the metrics that reloads report to.
pub struct LiveRules {
    current: ArcSwap<Snapshot>,
    metrics: Arc<Metrics>,
}

impl LiveRules {
    /// Installs the first rules (counted as a successful load).
    pub fn new(rules: RuleSet, hash: String, metrics: Arc<Metrics>) -> LiveRules {
        let snapshot = snapshot(rules, hash, &metrics);
        LiveRules {
            current: ArcSwap::from_pointee(snapshot),
            metrics,
        }
    }

    /// The rules in use; hold the guard for one request, not longer.
    pub fn load(&self) -> Guard<Arc<Snapshot>> {
        self.current.load()
    }

    /// The rules in use, to keep.
    pub fn current(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Replaces the rules for every request that starts from now on.
    pub fn install(&self, rules: RuleSet, hash: String) {
        self.current
            .store(Arc::new(snapshot(rules, hash, &self.metrics)));
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }
}

fn snapshot(rules: RuleSet, hash: String, metrics: &Metrics) -> Snapshot {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    metrics.config_loaded(&hash, rules.rules().len(), now);
    for warning in rules.warnings() {
        tracing::warn!("{warning}");
    }
    let counters = metrics.rule_metrics(&rules);
    Snapshot {
        rules,
        hash,
        counters,
    }
}
