//! The rule tree, as the rest of ratelimitd sees it: immutable once built.
//!
//! Only `config` builds a [`RuleSet`]; everything here has been validated by then, so the
//! matcher and the limiter never meet an unknown unit, a zero-length window or a duplicate node.
//! This module knows nothing of YAML, gRPC or counters.

mod matcher;
mod redact;
mod wildcard;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use matcher::{Choice, Entry, Step, Walk};
pub use wildcard::Wildcard;

/// Hash maps of the rule tree. Their keys come from rule files, not from requests, so a fast
/// hasher is safe here (lookups with a request's strings cannot grow them).
type RuleMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// Every domain that the rule files define, by name.
#[derive(Debug, Default)]
pub struct RuleSet {
    domains: RuleMap<String, Domain>,
    /// Every rule, flattened in listing order; a [`Limit::id`] is a place in it.
    rules: Vec<RuleEntry>,
    /// Different for each rule set built (see [`RuleSet::generation`]).
    generation: u64,
}

/// One rule of the tree, flattened: for `/rlconfig` and for per-rule metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleEntry {
    pub domain: String,
    /// The descriptor path as envoyproxy/ratelimit names it in listings and statistics:
    /// `key_value` (or `key` for a key-only node) for each level, joined by `.`.
    pub path: Vec<String>,
    /// The file the domain came from.
    pub source: PathBuf,
    /// `None`: `unlimited`.
    pub limit: Option<Limit>,
    /// How this rule's metrics are named when they carry request values.
    pub naming: MetricNaming,
}

/// How a rule's metric series are named: from the rule path alone (the default), or with the
/// request's values where `detailed_metric` or `value_to_metric` asks for them, as
/// envoyproxy/ratelimit builds its stat keys (`GetLimit` in its `src/config/config_impl.go`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetricNaming {
    /// `detailed_metric: true` on the rule's node: every level carries the request's value.
    pub detailed: bool,
    /// One per level of the rule path.
    pub levels: Vec<MetricLevel>,
}

/// One level of a rule path, for naming metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricLevel {
    pub key: String,
    /// The level as the static path names it (`key_value`, `key_prefix*` or `key`).
    pub segment: String,
    /// `value_to_metric: true` on a wildcard or key-only node: the request's value replaces
    /// the pattern (or stands beside the bare key).
    pub value_to_metric: bool,
    /// `share_threshold: true`: the pattern stays, whatever the request's value.
    pub shared: bool,
}

impl MetricNaming {
    /// Whether some request value goes into this rule's metric names.
    pub fn uses_values(&self) -> bool {
        self.levels
            .iter()
            .any(|level| !level.shared && (self.detailed || level.value_to_metric))
    }

    /// The rule path with the request's values put in where the rule asks for them; `values`
    /// are the request descriptor's values, one per level.
    pub fn path<'v>(&self, values: impl IntoIterator<Item = &'v str>) -> Vec<String> {
        self.levels
            .iter()
            .zip(values)
            .map(|(level, value)| {
                if level.shared {
                    level.segment.clone()
                } else if self.detailed {
                    // envoyproxy/ratelimit writes `key_value` here even for an empty value.
                    format!("{}_{value}", level.key)
                } else if level.value_to_metric && !value.is_empty() {
                    format!("{}_{value}", level.key)
                } else if level.value_to_metric {
                    level.key.clone()
                } else {
                    level.segment.clone()
                }
            })
            .collect()
    }
}

impl RuleSet {
    /// Builds a rule set from domains whose names are unique (checked by `config`), and gives
    /// every limit its [`Limit::id`].
    pub fn new(mut domains: Vec<Domain>) -> RuleSet {
        domains.sort_by(|a, b| a.name.cmp(&b.name));
        let mut rules = Vec::new();
        for domain in &mut domains {
            let mut path = Vec::new();
            list_rules(
                &domain.name,
                &domain.source,
                &mut domain.root,
                &mut path,
                &mut rules,
            );
        }
        static BUILT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        RuleSet {
            domains: domains.into_iter().map(|d| (d.name.clone(), d)).collect(),
            rules,
            generation: BUILT.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        }
    }

    /// A number no other rule set built by this process has: what was learnt under one rule
    /// set (the local over-limit cache) is dropped when another takes its place.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Every rule, domain by domain, in the order of [`Children::nodes`].
    pub fn rules(&self) -> &[RuleEntry] {
        &self.rules
    }

    /// Shows each exact or wildcard value of the rule paths as a short hash from here on (in
    /// metric labels and `/rlconfig`); matching and counting are unchanged.
    pub fn redact_values(&mut self) {
        for rule in &mut self.rules {
            for level in &mut rule.naming.levels {
                level.segment = redact::segment(&level.key, &level.segment);
            }
            rule.path = rule
                .naming
                .levels
                .iter()
                .map(|level| level.segment.clone())
                .collect();
        }
    }

    pub fn domain(&self, name: &str) -> Option<&Domain> {
        self.domains.get(name)
    }

    /// The domains in name order, for listings.
    pub fn domains(&self) -> Vec<&Domain> {
        let mut domains: Vec<&Domain> = self.domains.values().collect();
        domains.sort_by(|a, b| a.name.cmp(&b.name));
        domains
    }

    /// Every domain's load-time warnings, domain by domain.
    pub fn warnings(&self) -> Vec<&str> {
        self.domains()
            .into_iter()
            .flat_map(|d| d.warnings.iter().map(String::as_str))
            .collect()
    }
}

/// Appends the rules at and below `level` to `out`, numbering their limits and telling each
/// which levels of its path share one counter (`share_threshold`).
fn list_rules(
    domain: &str,
    source: &Path,
    level: &mut Children,
    path: &mut Vec<MetricLevel>,
    out: &mut Vec<RuleEntry>,
) {
    for node in level.nodes_mut() {
        path.push(MetricLevel {
            key: node.key.clone(),
            segment: match &node.value {
                NodeValue::Any => node.key.clone(),
                value => format!("{}_{}", node.key, value.as_str()),
            },
            value_to_metric: node.value_to_metric && !matches!(node.value, NodeValue::Exact(_)),
            shared: node.share_threshold,
        });
        let shared_values: Option<Arc<[Option<String>]>> =
            path.iter().any(|level| level.shared).then(|| {
                path.iter()
                    .map(|level| {
                        let pattern = level.segment.strip_prefix(level.key.as_str());
                        let pattern = pattern.and_then(|p| p.strip_prefix('_'));
                        pattern.filter(|_| level.shared).map(str::to_string)
                    })
                    .collect()
            });
        let entry = |limit| RuleEntry {
            domain: domain.to_string(),
            path: path.iter().map(|level| level.segment.clone()).collect(),
            source: source.to_path_buf(),
            limit,
            naming: MetricNaming {
                detailed: node.detailed_metric,
                levels: path.clone(),
            },
        };
        match &mut node.policy {
            Some(Policy::Unlimited) => out.push(entry(None)),
            Some(Policy::Limited(limits)) => {
                for limit in limits.iter_mut() {
                    limit.id = Some(out.len());
                    limit.shared_values = shared_values.clone();
                    out.push(entry(Some(limit.clone())));
                }
            }
            None => {}
        }
        list_rules(domain, source, &mut node.children, path, out);
        path.pop();
    }
}

/// One rule file: a domain name and its descriptor tree.
#[derive(Debug)]
pub struct Domain {
    pub name: String,
    /// The file's top-level `name` (Envoy Gateway names its `RateLimitConfig` resources), for
    /// listings; it plays no part in matching.
    pub config_name: Option<String>,
    /// The file this domain was loaded from, for messages and listings.
    pub source: PathBuf,
    /// The top level of the descriptor tree.
    pub root: Children,
    /// What in the file loads but is very likely a mistake, as `file:line:column: message`.
    pub warnings: Vec<String>,
}

/// One node of the descriptor tree: a `key` (and maybe a `value`) with its limits and children.
#[derive(Debug)]
pub struct Node {
    pub key: String,
    pub value: NodeValue,
    /// The line of the descriptor in its file (1-based; 0 when it came from no file).
    pub line: u32,
    /// What applies when a descriptor's *last* entry stops at this node; `None` when the node
    /// only leads to deeper nodes.
    pub policy: Option<Policy>,
    pub children: Children,
    /// `detailed_metric`: this node's metrics carry the request's values at every level.
    pub detailed_metric: bool,
    /// `value_to_metric`: on a wildcard or key-only node, metrics carry the request's value
    /// at this level.
    pub value_to_metric: bool,
    /// `share_threshold` (wildcard nodes only): every value that matches the pattern counts
    /// on one counter, as envoyproxy/ratelimit puts the pattern in its cache key.
    pub share_threshold: bool,
}

/// How a node's `value` matches an entry's value.
#[derive(Debug)]
pub enum NodeValue {
    /// `value: exact`
    Exact(String),
    /// `value: "prefix_*"`: `*` matches any run of characters.
    Wildcard(Wildcard),
    /// No `value`: any value of the key.
    Any,
}

/// The nodes one level below a node (or at the top of a domain), indexed for matching.
///
/// Matching order is fixed by envoyproxy/ratelimit: exact value, then the first wildcard in
/// file order, then the key-only node. Keeping the three kinds apart makes each step one lookup.
#[derive(Debug, Default)]
pub struct Children {
    by_key: RuleMap<String, KeyNodes>,
}

/// All nodes of one level that share a key.
#[derive(Debug, Default)]
struct KeyNodes {
    exact: RuleMap<String, Node>,
    /// In file order: the first that matches wins.
    wildcards: Vec<Node>,
    any: Option<Box<Node>>,
}

/// Why a node could not be added to a level: the level already has one like it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DuplicateNode;

impl Children {
    /// Adds a node, refusing a second node with the same key and value.
    pub fn insert(&mut self, node: Node) -> Result<(), DuplicateNode> {
        let nodes = self.by_key.entry(node.key.clone()).or_default();
        match &node.value {
            NodeValue::Exact(value) => {
                if nodes.exact.contains_key(value) {
                    return Err(DuplicateNode);
                }
                nodes.exact.insert(value.clone(), node);
            }
            NodeValue::Wildcard(pattern) => {
                let duplicate = nodes.wildcards.iter().any(
                    |other| matches!(&other.value, NodeValue::Wildcard(p) if p.as_str() == pattern.as_str()),
                );
                if duplicate {
                    return Err(DuplicateNode);
                }
                nodes.wildcards.push(node);
            }
            NodeValue::Any => {
                if nodes.any.is_some() {
                    return Err(DuplicateNode);
                }
                nodes.any = Some(Box::new(node));
            }
        }
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// [`Children::nodes`], to change in place.
    fn nodes_mut(&mut self) -> Vec<&mut Node> {
        let mut levels: Vec<(&String, &mut KeyNodes)> = self.by_key.iter_mut().collect();
        levels.sort_by(|a, b| a.0.cmp(b.0));
        let mut out = Vec::new();
        for (_, nodes) in levels {
            let mut exact: Vec<&mut Node> = nodes.exact.values_mut().collect();
            exact.sort_by(|a, b| a.value.as_str().cmp(b.value.as_str()));
            out.extend(exact);
            out.extend(nodes.wildcards.iter_mut());
            out.extend(nodes.any.as_deref_mut());
        }
        out
    }

    /// Every node of this level, exact values first, for listings and tests.
    pub fn nodes(&self) -> Vec<&Node> {
        let mut keys: Vec<&String> = self.by_key.keys().collect();
        keys.sort();
        let mut out = Vec::new();
        for key in keys {
            let nodes = &self.by_key[key];
            let mut exact: Vec<&Node> = nodes.exact.values().collect();
            exact.sort_by(|a, b| a.value.as_str().cmp(b.value.as_str()));
            out.extend(exact);
            out.extend(nodes.wildcards.iter());
            out.extend(nodes.any.as_deref());
        }
        out
    }
}

impl NodeValue {
    pub fn as_str(&self) -> &str {
        match self {
            NodeValue::Exact(value) => value,
            NodeValue::Wildcard(pattern) => pattern.as_str(),
            NodeValue::Any => "",
        }
    }
}

/// What a node reached by a descriptor's last entry does with it.
#[derive(Debug)]
pub enum Policy {
    /// `rate_limit: {unlimited: true}`: never limited, never counted.
    Unlimited,
    /// One or more windows, all enforced, each with its own counter.
    Limited(Vec<Limit>),
}

/// One window of a rule: at most `requests_per_unit` hits per `window`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limit {
    /// 0 blocks every request.
    pub requests_per_unit: u32,
    pub window: Window,
    /// `name`, which `replaces` in other rules refers to.
    pub name: Option<String>,
    /// Names of limits that this one replaces in the same request.
    pub replaces: Vec<String>,
    /// Counted and reported, never enforced.
    pub shadow_mode: bool,
    /// `quota_mode`: over this limit, the request is refused only when every quota group of
    /// the request is over too (see `limiter`).
    pub quota_mode: bool,
    /// For each level of the rule path, the pattern that stands for the request's value in the
    /// counter key (`share_threshold`); `None` when no level shares. Set by [`RuleSet::new`].
    pub shared_values: Option<Arc<[Option<String>]>>,
    /// Its place in [`RuleSet::rules`], given by [`RuleSet::new`]; `None` for a limit that
    /// came with the request (Envoy's per-descriptor `limit`).
    pub id: Option<usize>,
    /// `algorithm`; `None`: the server's `--default-algorithm`.
    pub algorithm: Option<Algorithm>,
    /// `burst`: what a token bucket holds at most; `None`: `requests_per_unit`.
    pub burst: Option<u32>,
}

/// How a limit counts its window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, clap::ValueEnum)]
pub enum Algorithm {
    /// Windows aligned to the epoch, counted from 0 in each (envoyproxy/ratelimit's).
    #[default]
    #[value(name = "fixed_window")]
    FixedWindow,
    /// The current and previous windows' counts, the previous weighted by what is left of it.
    #[value(name = "sliding_window")]
    SlidingWindow,
    /// Refills `requests_per_unit` per window, holding `burst` at most.
    #[value(name = "token_bucket")]
    TokenBucket,
}

impl Algorithm {
    pub const NAMES: &'static str = "fixed_window|sliding_window|token_bucket";

    pub fn parse(name: &str) -> Option<Algorithm> {
        match name {
            "fixed_window" => Some(Algorithm::FixedWindow),
            "sliding_window" => Some(Algorithm::SlidingWindow),
            "token_bucket" => Some(Algorithm::TokenBucket),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Algorithm::FixedWindow => "fixed_window",
            Algorithm::SlidingWindow => "sliding_window",
            Algorithm::TokenBucket => "token_bucket",
        }
    }
}

/// A fixed window: `multiplier` × `unit`, aligned to the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Window {
    unit: Unit,
    multiplier: u32,
}

/// The longest window allowed (68 years): counters keep window indexes in 32 bits and lengths
/// in 31 (the memory store marks refill counters with the 32nd).
pub const MAX_WINDOW_SECONDS: u64 = (1 << 31) - 1;

/// Why a window could not be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvalidWindow {
    ZeroMultiplier,
    TooLong,
}

impl Window {
    /// A window of `multiplier` units; refuses 0 and windows longer than [`MAX_WINDOW_SECONDS`].
    pub fn try_new(unit: Unit, multiplier: u32) -> Result<Window, InvalidWindow> {
        if multiplier == 0 {
            return Err(InvalidWindow::ZeroMultiplier);
        }
        if unit.seconds() * u64::from(multiplier) > MAX_WINDOW_SECONDS {
            return Err(InvalidWindow::TooLong);
        }
        Ok(Window { unit, multiplier })
    }

    /// One plain unit: always valid.
    pub fn of(unit: Unit) -> Window {
        Window {
            unit,
            multiplier: 1,
        }
    }

    pub fn unit(self) -> Unit {
        self.unit
    }

    pub fn multiplier(self) -> u32 {
        self.multiplier
    }

    /// The window's length in whole seconds; never 0 and never above [`MAX_WINDOW_SECONDS`].
    pub fn seconds(self) -> u32 {
        // Both bounds are checked when the window is built.
        (self.unit.seconds() * u64::from(self.multiplier)) as u32
    }

    pub fn duration(self) -> Duration {
        Duration::from_secs(u64::from(self.seconds()))
    }
}

/// The units of envoyproxy/ratelimit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Unit {
    Second,
    Minute,
    Hour,
    Day,
    Week,
    /// 30 days, as envoyproxy/ratelimit counts it.
    Month,
    /// 365 days, as envoyproxy/ratelimit counts it.
    Year,
}

impl Unit {
    pub const NAMES: &'static str = "second|minute|hour|day|week|month|year";

    /// Case-insensitive, as envoyproxy/ratelimit reads units.
    pub fn parse(name: &str) -> Option<Unit> {
        let unit = match name.to_ascii_lowercase().as_str() {
            "second" => Unit::Second,
            "minute" => Unit::Minute,
            "hour" => Unit::Hour,
            "day" => Unit::Day,
            "week" => Unit::Week,
            "month" => Unit::Month,
            "year" => Unit::Year,
            _ => return None,
        };
        Some(unit)
    }

    pub fn name(self) -> &'static str {
        match self {
            Unit::Second => "second",
            Unit::Minute => "minute",
            Unit::Hour => "hour",
            Unit::Day => "day",
            Unit::Week => "week",
            Unit::Month => "month",
            Unit::Year => "year",
        }
    }

    pub fn seconds(self) -> u64 {
        const DAY: u64 = 24 * 60 * 60;
        match self {
            Unit::Second => 1,
            Unit::Minute => 60,
            Unit::Hour => 60 * 60,
            Unit::Day => DAY,
            Unit::Week => 7 * DAY,
            Unit::Month => 30 * DAY,
            Unit::Year => 365 * DAY,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{MetricLevel, MetricNaming};

    fn level(key: &str, segment: &str, value_to_metric: bool, shared: bool) -> MetricLevel {
        MetricLevel {
            key: key.to_string(),
            segment: segment.to_string(),
            value_to_metric,
            shared,
        }
    }

    #[test]
    fn metric_names_take_request_values_only_where_the_rule_asks() {
        let route = level("route", "route_r1", false, false);
        let any_user = level("user", "user", true, false);
        let files = level("path", "path_files/*", false, true);
        let docs = level("path", "path_docs/*", true, false);
        let naming = |detailed, levels: &[&MetricLevel]| MetricNaming {
            detailed,
            levels: levels.iter().map(|l| (*l).clone()).collect(),
        };
        let table: [(MetricNaming, [&str; 2], [&str; 2], bool); 6] = [
            // Nothing asked: the rule path.
            (
                naming(false, &[&route, &level("k", "k", false, false)]),
                ["r1", "v"],
                ["route_r1", "k"],
                false,
            ),
            // value_to_metric on a key-only and on a wildcard level.
            (
                naming(false, &[&route, &any_user]),
                ["r1", "alice"],
                ["route_r1", "user_alice"],
                true,
            ),
            (
                naming(false, &[&docs, &route]),
                ["docs/a", "r1"],
                ["path_docs/a", "route_r1"],
                true,
            ),
            (
                naming(false, &[&route, &any_user]),
                ["r1", ""],
                ["route_r1", "user"],
                true,
            ),
            // detailed_metric: every level carries the request's value, shared ones their pattern.
            (
                naming(true, &[&route, &any_user]),
                ["r1", ""],
                ["route_r1", "user_"],
                true,
            ),
            (
                naming(true, &[&files, &any_user]),
                ["files/a", "bob"],
                ["path_files/*", "user_bob"],
                true,
            ),
        ];
        for (naming, values, expected, uses_values) in table {
            assert_eq!(naming.path(values), expected, "{naming:?}");
            assert_eq!(naming.uses_values(), uses_values, "{naming:?}");
        }
        assert!(
            !naming(true, &[&files]).uses_values(),
            "a shared level keeps its pattern"
        );
    }
}
