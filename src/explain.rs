//! "Why was this request limited?": how each descriptor of a request walks the rule tree, level
//! by level, which node it took at each (with its file and line) and which others it passed
//! over, the limits that apply and what `replaces` removed, or why none applies. Counts nothing:
//! `ratelimitd explain` prints it from a rule file, and the admin port's `POST /explain` adds
//! the counters' state (`admin.rs`).
//!
//! The walk is the matcher's own ([`Domain::walk`], whose first candidate at each level is the
//! one [`Domain::find`] takes), so what is explained is what is decided.

use std::collections::HashSet;
use std::fmt::Write;
use std::path::Path;
use std::time::Duration;

use crate::limiter::{WindowOutcome, window};
use crate::rules::{
    Algorithm, Choice, Domain, Entry, Limit, Node, NodeValue, Policy, RuleSet, Step,
};

/// What applies to one descriptor, as explained.
#[derive(Debug)]
pub struct Explained<'r> {
    /// The text, one line per fact, without a trailing newline.
    pub text: String,
    /// The limits that are counted for this descriptor (after `replaces`), in rule order.
    pub limits: Vec<&'r Limit>,
}

/// The explanation of a request of `descriptors` (each its `(key, value)` entries) in `domain`,
/// one [`Explained`] per descriptor after a line naming the domain.
pub fn explain<'r>(
    rules: &'r RuleSet,
    domain: &str,
    descriptors: &[Vec<(String, String)>],
    default_algorithm: Algorithm,
) -> (String, Vec<Explained<'r>>) {
    let Some(rules_of) = rules.domain(domain) else {
        let head = format!(
            "domain {domain:?}: no rule file defines it; every descriptor is answered OK, uncounted"
        );
        return (head, Vec::new());
    };
    let head = format!("domain {domain:?} ({})", rules_of.source.display());
    let walked: Vec<(String, Option<&'r [Limit]>)> = descriptors
        .iter()
        .map(|entries| walk(rules_of, entries))
        .collect();
    // `replaces`: a limit named by another applied limit of the request is dropped.
    let mut replaced_by: Vec<(&str, &str, usize)> = Vec::new();
    for (i, (_, limits)) in walked.iter().enumerate() {
        for limit in limits.iter().flat_map(|l| l.iter()) {
            let by = limit.name.as_deref().unwrap_or("(unnamed)");
            for name in &limit.replaces {
                replaced_by.push((name.as_str(), by, i));
            }
        }
    }
    let replaced: HashSet<&str> = replaced_by.iter().map(|(name, _, _)| *name).collect();
    let explained = walked
        .into_iter()
        .enumerate()
        .map(|(i, (mut text, limits))| {
            let mut counted = Vec::new();
            let Some(limits) = limits else {
                return Explained {
                    text,
                    limits: counted,
                };
            };
            for limit in limits {
                let _ = write!(text, "\n  limit: {}", describe(limit, default_algorithm));
                let by = limit
                    .name
                    .as_deref()
                    .filter(|name| replaced.contains(name))
                    .and_then(|name| replaced_by.iter().find(|(n, _, _)| *n == name));
                match by {
                    Some((_, by, at)) => {
                        let _ = write!(
                            text,
                            "; replaced by {by:?} of descriptor {}: not counted",
                            at + 1
                        );
                    }
                    None => counted.push(limit),
                }
            }
            if counted.is_empty() {
                let _ = write!(text, "\n  no limit applies to descriptor {}", i + 1);
            }
            Explained {
                text,
                limits: counted,
            }
        })
        .collect();
    (head, explained)
}

/// The walk of one descriptor, as text, and the limits of the node it reached (if any).
fn walk<'r>(domain: &'r Domain, entries: &[(String, String)]) -> (String, Option<&'r [Limit]>) {
    let source = &domain.source;
    let mut text = format!(
        "descriptor: {}",
        entries
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let walk = domain.walk(entries.iter().map(|(key, value)| Entry { key, value }));
    for (level, step) in walk.steps.iter().enumerate() {
        let (key, value) = &entries[level];
        let _ = write!(
            text,
            "\n  level {}: {key}={value} takes {}, {}",
            level + 1,
            at(step.node, source),
            why(step)
        );
        for (node, choice) in &step.passed_over {
            let _ = write!(
                text,
                "\n    passed over: {} ({})",
                at(node, source),
                choice_name(*choice)
            );
        }
    }
    if let Some((level, known)) = walk.stopped {
        let (key, value) = &entries[level];
        let under = match walk.steps.last() {
            Some(step) => format!(" under {}", shown(step.node)),
            None => String::new(),
        };
        let reason = if known {
            format!("no value or pattern of key `{key}` matches {value:?}")
        } else {
            format!("no rule for key `{key}`")
        };
        let _ = write!(text, "\n  level {}: {reason}{under}", level + 1);
        let _ = write!(text, "\n  no limit applies: no rule matches every entry");
        return (text, None);
    }
    let Some(step) = walk.steps.last() else {
        let _ = write!(text, "\n  no limit applies: the descriptor has no entries");
        return (text, None);
    };
    match &step.node.policy {
        Some(Policy::Limited(limits)) => (text, Some(limits)),
        Some(Policy::Unlimited) => {
            let _ = write!(
                text,
                "\n  unlimited (`unlimited: true`): never limited, never counted"
            );
            (text, None)
        }
        None => {
            let _ = write!(
                text,
                "\n  no limit applies: {} has no limit of its own (it only leads to deeper rules, and only the node of the last entry applies)",
                shown(step.node)
            );
            (text, None)
        }
    }
}

/// Why a step took its node.
fn why(step: &Step<'_>) -> &'static str {
    match step.choice {
        Choice::Exact => "exact value (an exact value wins over patterns and the key-only rule)",
        Choice::Wildcard => {
            "the first pattern in file order that matches (no exact value of this key matches)"
        }
        Choice::KeyOnly => "the key-only rule (no exact value or pattern of this key matches)",
    }
}

fn choice_name(choice: Choice) -> &'static str {
    match choice {
        Choice::Exact => "exact value",
        Choice::Wildcard => "pattern",
        Choice::KeyOnly => "key-only",
    }
}

/// A node as its rule file writes it.
fn shown(node: &Node) -> String {
    match &node.value {
        NodeValue::Any => format!("`{}` (any value)", node.key),
        value => format!("`{}: {}`", node.key, value.as_str()),
    }
}

/// A node and where it is written.
fn at(node: &Node, source: &Path) -> String {
    format!("{} at {}:{}", shown(node), source.display(), node.line)
}

/// A limit's window: `minute`, or `10 seconds`.
fn per(limit: &Limit) -> String {
    let window = limit.window;
    match window.multiplier() {
        1 => window.unit().name().to_string(),
        n => format!("{n} {}s", window.unit().name()),
    }
}

/// One limit: its rate, window and how it counts.
pub fn describe(limit: &Limit, default_algorithm: Algorithm) -> String {
    let mut text = format!("{} per {}", limit.requests_per_unit, per(limit));
    let algorithm = limit.algorithm.unwrap_or(default_algorithm);
    let _ = write!(
        text,
        ", {}",
        match algorithm {
            Algorithm::FixedWindow => "fixed window".to_string(),
            Algorithm::SlidingWindow => "sliding window".to_string(),
            Algorithm::TokenBucket => format!(
                "token bucket of burst {}",
                limit.burst.unwrap_or(limit.requests_per_unit)
            ),
        }
    );
    if let Some(name) = &limit.name {
        let _ = write!(text, ", named {name:?}");
    }
    if limit.shadow_mode {
        text.push_str(", shadow mode (counted and reported, never refuses)");
    }
    if limit.quota_mode {
        text.push_str(", quota mode (refuses only when every quota group of the request is over)");
    }
    text
}

/// A counted window's state at `now`, from a check of 0 hits: `outcome.before` is its count
/// (for a refill counter, the requests it holds).
pub fn state(limit: &Limit, outcome: &WindowOutcome, now: Duration, default: Algorithm) -> String {
    let count = outcome.before;
    let remaining = u64::from(limit.requests_per_unit).saturating_sub(count);
    let of = format!("{} per {}", limit.requests_per_unit, per(limit));
    match limit.algorithm.unwrap_or(default) {
        Algorithm::FixedWindow => {
            let reset = window::position(now, limit.window.seconds()).reset_in;
            format!(
                "{count} counted of {of}, {remaining} remaining, the window resets in {}s",
                reset.as_secs_f64().ceil()
            )
        }
        Algorithm::SlidingWindow | Algorithm::TokenBucket => {
            format!("holds {count} of {of}, {remaining} remaining")
        }
    }
}

/// Everything [`explain`] says, as one text.
pub fn render(head: &str, explained: &[Explained<'_>]) -> String {
    let mut text = head.to_string();
    for (i, e) in explained.iter().enumerate() {
        let body = e
            .text
            .replacen("descriptor:", &format!("descriptor {}:", i + 1), 1);
        let _ = write!(text, "\n{body}");
    }
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const RULES: &str = r#"domain: d
descriptors:
  - key: api_key
    value: "internal_*"
    rate_limit: {unlimited: true}
  - key: api_key
    value: "int*"
    rate_limit: {unit: second, requests_per_unit: 1}
  - key: api_key
    value: acme
    descriptors:
      - key: bucket
        value: default
        rate_limits:
          - {name: acme, replaces: [{name: standard}], unit: minute, requests_per_unit: 600}
          - {unit: hour, requests_per_unit: 20000, algorithm: token_bucket, burst: 100}
  - key: api_key
    rate_limit: {name: standard, unit: day, requests_per_unit: 5}
    descriptors:
      - key: bucket
        value: default
        shadow_mode: true
        rate_limit: {unit: second, unit_multiplier: 10, requests_per_unit: 1}
"#;

    fn rules() -> RuleSet {
        let domain = crate::config::parse_domain(Path::new("d.yaml"), RULES).unwrap();
        RuleSet::new(vec![domain])
    }

    fn text(descriptors: &[&[(&str, &str)]]) -> String {
        let rules = rules();
        let owned: Vec<Vec<(String, String)>> = descriptors
            .iter()
            .map(|d| {
                d.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect()
            })
            .collect();
        let (head, explained) = explain(&rules, "d", &owned, Algorithm::FixedWindow);
        render(&head, &explained)
    }

    #[test]
    fn an_exact_value_wins_over_the_key_only_rule_and_its_limits_are_listed() {
        assert_eq!(
            text(&[&[("api_key", "acme"), ("bucket", "default")]]),
            "domain \"d\" (d.yaml)
descriptor 1: api_key=acme, bucket=default
  level 1: api_key=acme takes `api_key: acme` at d.yaml:9, exact value (an exact value wins over patterns and the key-only rule)
    passed over: `api_key` (any value) at d.yaml:17 (key-only)
  level 2: bucket=default takes `bucket: default` at d.yaml:12, exact value (an exact value wins over patterns and the key-only rule)
  limit: 600 per minute, fixed window, named \"acme\"
  limit: 20000 per hour, token bucket of burst 100
"
        );
    }

    #[test]
    fn the_first_pattern_in_file_order_wins() {
        assert_eq!(
            text(&[&[("api_key", "internal_billing")]]),
            "domain \"d\" (d.yaml)
descriptor 1: api_key=internal_billing
  level 1: api_key=internal_billing takes `api_key: internal_*` at d.yaml:3, the first pattern in file order that matches (no exact value of this key matches)
    passed over: `api_key: int*` at d.yaml:6 (pattern)
    passed over: `api_key` (any value) at d.yaml:17 (key-only)
  unlimited (`unlimited: true`): never limited, never counted
"
        );
    }

    #[test]
    fn a_key_only_rule_shadow_mode_and_replaces_across_descriptors() {
        assert_eq!(
            text(&[
                &[("api_key", "k-1")],
                &[("api_key", "k-1"), ("bucket", "default")],
                &[("api_key", "acme"), ("bucket", "default")],
            ]),
            "domain \"d\" (d.yaml)
descriptor 1: api_key=k-1
  level 1: api_key=k-1 takes `api_key` (any value) at d.yaml:17, the key-only rule (no exact value or pattern of this key matches)
  limit: 5 per day, fixed window, named \"standard\"; replaced by \"acme\" of descriptor 3: not counted
  no limit applies to descriptor 1
descriptor 2: api_key=k-1, bucket=default
  level 1: api_key=k-1 takes `api_key` (any value) at d.yaml:17, the key-only rule (no exact value or pattern of this key matches)
  level 2: bucket=default takes `bucket: default` at d.yaml:20, exact value (an exact value wins over patterns and the key-only rule)
  limit: 1 per 10 seconds, fixed window, shadow mode (counted and reported, never refuses)
descriptor 3: api_key=acme, bucket=default
  level 1: api_key=acme takes `api_key: acme` at d.yaml:9, exact value (an exact value wins over patterns and the key-only rule)
    passed over: `api_key` (any value) at d.yaml:17 (key-only)
  level 2: bucket=default takes `bucket: default` at d.yaml:12, exact value (an exact value wins over patterns and the key-only rule)
  limit: 600 per minute, fixed window, named \"acme\"
  limit: 20000 per hour, token bucket of burst 100
"
        );
    }

    #[test]
    fn what_matches_nothing_says_where_it_stopped() {
        assert_eq!(
            text(&[
                &[("api_key", "acme"), ("x", "1")],
                &[("user", "u")],
                &[("api_key", "acme"), ("bucket", "bulk")],
                &[("api_key", "acme")],
            ]),
            "domain \"d\" (d.yaml)
descriptor 1: api_key=acme, x=1
  level 1: api_key=acme takes `api_key: acme` at d.yaml:9, exact value (an exact value wins over patterns and the key-only rule)
    passed over: `api_key` (any value) at d.yaml:17 (key-only)
  level 2: no rule for key `x` under `api_key: acme`
  no limit applies: no rule matches every entry
descriptor 2: user=u
  level 1: no rule for key `user`
  no limit applies: no rule matches every entry
descriptor 3: api_key=acme, bucket=bulk
  level 1: api_key=acme takes `api_key: acme` at d.yaml:9, exact value (an exact value wins over patterns and the key-only rule)
    passed over: `api_key` (any value) at d.yaml:17 (key-only)
  level 2: no value or pattern of key `bucket` matches \"bulk\" under `api_key: acme`
  no limit applies: no rule matches every entry
descriptor 4: api_key=acme
  level 1: api_key=acme takes `api_key: acme` at d.yaml:9, exact value (an exact value wins over patterns and the key-only rule)
    passed over: `api_key` (any value) at d.yaml:17 (key-only)
  no limit applies: `api_key: acme` has no limit of its own (it only leads to deeper rules, and only the node of the last entry applies)
"
        );
    }

    #[test]
    fn an_unknown_domain_is_answered_ok() {
        let rules = rules();
        let (head, explained) = explain(&rules, "nope", &[], Algorithm::FixedWindow);
        assert!(explained.is_empty());
        assert_eq!(
            head,
            "domain \"nope\": no rule file defines it; every descriptor is answered OK, uncounted"
        );
    }
}
