//! Finding the rule node that a request descriptor reaches.
//!
//! The order is envoyproxy/ratelimit's: walk the descriptor's entries level by level; at each
//! level take the node with the same key and value, else the first wildcard node of that key
//! (file order) whose pattern matches, else the key-only node; stop when nothing matches. Only
//! the node reached by the *last* entry applies, so a descriptor that is shorter or longer than
//! the rule path is not limited by it. No counting and no metrics happen here.

use super::{Children, Domain, Node, NodeValue};

/// One `(key, value)` entry of a request descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry<'a> {
    pub key: &'a str,
    pub value: &'a str,
}

/// How a node was chosen for an entry, in the order that decides between them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    /// Its value is the entry's value.
    Exact,
    /// Its pattern matches the entry's value (the first in file order wins).
    Wildcard,
    /// It has no value: any value of its key.
    KeyOnly,
}

/// One level of a descriptor's walk: the node taken, and the others that matched too but lose
/// to it, in order.
#[derive(Debug)]
pub struct Step<'r> {
    pub node: &'r Node,
    pub choice: Choice,
    pub passed_over: Vec<(&'r Node, Choice)>,
}

/// A descriptor's walk through a domain's tree ([`Domain::walk`]).
#[derive(Debug)]
pub struct Walk<'r> {
    /// One per entry that found a node, in order.
    pub steps: Vec<Step<'r>>,
    /// The first entry that found no node (0-based), if one did not; then whether its level
    /// has nodes of its key at all.
    pub stopped: Option<(usize, bool)>,
}

impl Domain {
    /// The node reached by the last of `entries`, if every entry found a node.
    pub fn find<'r, 'e>(
        &'r self,
        entries: impl IntoIterator<Item = Entry<'e>>,
    ) -> Option<&'r Node> {
        let mut level = &self.root;
        let mut reached = None;
        for entry in entries {
            let (node, _) = level.candidates(entry).next()?;
            level = &node.children;
            reached = Some(node);
        }
        reached
    }

    /// [`Domain::find`] step by step, with what each step chose and passed over: for telling
    /// why a descriptor is (or is not) limited.
    pub fn walk<'r, 'e>(&'r self, entries: impl IntoIterator<Item = Entry<'e>>) -> Walk<'r> {
        let mut level = &self.root;
        let mut steps = Vec::new();
        for (i, entry) in entries.into_iter().enumerate() {
            let mut candidates = level.candidates(entry);
            let Some((node, choice)) = candidates.next() else {
                let known = level.by_key.contains_key(entry.key);
                return Walk {
                    steps,
                    stopped: Some((i, known)),
                };
            };
            steps.push(Step {
                node,
                choice,
                passed_over: candidates.collect(),
            });
            level = &node.children;
        }
        Walk {
            steps,
            stopped: None,
        }
    }
}

impl Children {
    /// Every node of this level that `entry` matches, best first: the exact value, then the
    /// wildcards whose pattern matches in file order, then the key-only node. The first is
    /// the one taken (envoyproxy/ratelimit's order); matching asks for no more than that.
    fn candidates<'c, 'q>(
        &'c self,
        entry: Entry<'q>,
    ) -> impl Iterator<Item = (&'c Node, Choice)> + use<'c, 'q> {
        let nodes = self.by_key.get(entry.key);
        let exact = nodes
            .and_then(|n| n.exact.get(entry.value))
            .map(|node| (node, Choice::Exact));
        let wildcards = nodes
            .into_iter()
            .flat_map(|n| n.wildcards.iter())
            .filter(move |node| match &node.value {
                NodeValue::Wildcard(pattern) => pattern.matches(entry.value),
                _ => false,
            })
            .map(|node| (node, Choice::Wildcard));
        let any = nodes
            .and_then(|n| n.any.as_deref())
            .map(|node| (node, Choice::KeyOnly));
        exact.into_iter().chain(wildcards).chain(any)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::Entry;
    use crate::rules::{Domain, Policy};

    const RULES: &str = r#"
domain: d
descriptors:
  - key: api_key
    value: "internal_*"
    rate_limit: {unlimited: true}
  - key: api_key
    value: "*_sandbox"
    rate_limit: {unit: second, requests_per_unit: 1}
  - key: api_key
    value: "internal_billing"
    rate_limit: {unit: second, requests_per_unit: 2}
  - key: api_key
    value: acme
    descriptors:
      - key: bucket
        value: default
        rate_limits:
          - {unit: minute, requests_per_unit: 600}
          - {unit: hour, requests_per_unit: 20000}
  - key: api_key
    rate_limit: {unit: day, requests_per_unit: 5}
    descriptors:
      - key: bucket
        value: default
        rate_limits:
          - {unit: minute, requests_per_unit: 60}
          - {unit: hour, requests_per_unit: 1000}
      - key: bucket
        value: bulk
        rate_limit: {unit: minute, requests_per_unit: 10}
      - key: bucket
        rate_limit: {unit: minute, requests_per_unit: 3, unit_multiplier: 5}
  - key: remote_address
    descriptors:
      - key: path
        value: /leads
"#;

    fn domain() -> Domain {
        match crate::config::parse_domain(Path::new("rules.yaml"), RULES) {
            Ok(domain) => domain,
            Err(errors) => panic!("rules do not load: {errors:?}"),
        }
    }

    /// The limits that apply to `entries`, as text: `60/minute+1000/hour`, `unlimited`, `none`.
    fn applied(domain: &Domain, entries: &[(&str, &str)]) -> String {
        let entries = entries.iter().map(|(key, value)| Entry { key, value });
        match domain.find(entries).and_then(|node| node.policy.as_ref()) {
            None => "none".to_string(),
            Some(Policy::Unlimited) => "unlimited".to_string(),
            Some(Policy::Limited(limits)) => limits
                .iter()
                .map(|l| {
                    let m = l.window.multiplier();
                    let unit = l.window.unit().name();
                    if m == 1 {
                        format!("{}/{unit}", l.requests_per_unit)
                    } else {
                        format!("{}/{m}{unit}", l.requests_per_unit)
                    }
                })
                .collect::<Vec<_>>()
                .join("+"),
        }
    }

    #[test]
    fn each_rule_is_reached_by_the_descriptors_it_is_for() {
        let d = domain();
        let table: &[(&[(&str, &str)], &str)] = &[
            // key-only node, then exact values below it
            (
                &[("api_key", "k1"), ("bucket", "default")],
                "60/minute+1000/hour",
            ),
            (&[("api_key", "k1"), ("bucket", "bulk")], "10/minute"),
            // key-only child when no value matches
            (&[("api_key", "k1"), ("bucket", "other")], "3/5minute"),
            // a node's own limit applies only to the descriptor that stops there
            (&[("api_key", "k1")], "5/day"),
            // exact value beats the key-only node
            (
                &[("api_key", "acme"), ("bucket", "default")],
                "600/minute+20000/hour",
            ),
            // exact value beats a matching wildcard
            (&[("api_key", "internal_billing")], "2/second"),
            // wildcard beats key-only; the first matching wildcard in file order wins
            (&[("api_key", "internal_tools")], "unlimited"),
            (&[("api_key", "internal_x_sandbox")], "unlimited"),
            (&[("api_key", "acme_sandbox")], "1/second"),
            // the wildcard node has no children: a longer descriptor stops there
            (
                &[("api_key", "internal_tools"), ("bucket", "default")],
                "none",
            ),
            // the exact node has no such child, and matching does not fall back to key-only
            (&[("api_key", "acme"), ("bucket", "bulk")], "none"),
            // longer than any rule path
            (&[("api_key", "k1"), ("bucket", "bulk"), ("x", "y")], "none"),
            // a path node without limits
            (
                &[("remote_address", "10.0.0.1"), ("path", "/leads")],
                "none",
            ),
            (&[("remote_address", "10.0.0.1")], "none"),
            // unknown key, and keys out of order
            (&[("user", "u")], "none"),
            (&[("bucket", "default"), ("api_key", "k1")], "none"),
        ];
        for (entries, expected) in table {
            assert_eq!(applied(&d, entries), *expected, "{entries:?}");
        }
    }
}
