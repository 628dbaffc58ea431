//! Finding the rule node that a request descriptor reaches.
//!
//! The order is envoyproxy/ratelimit's: walk the descriptor's entries level by level; at each
//! level take the node with the same key and value, else the first wildcard node of that key
//! (file order) whose pattern matches, else the key-only node; stop when nothing matches. Only
//! the node reached by the *last* entry applies, so a descriptor that is shorter or longer than
//! the rule path is not limited by it. No counting and no metrics happen here.

use super::{Children, Domain, Node};

/// One `(key, value)` entry of a request descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry<'a> {
    pub key: &'a str,
    pub value: &'a str,
}

impl Domain {
    /// The node reached by the last of `entries`, if every entry found a node.
    pub fn find<'r, 'e>(&'r self, entries: impl IntoIterator<Item = Entry<'e>>) -> Option<&'r Node> {
        let mut level = &self.root;
        let mut reached = None;
        for entry in entries {
            let node = level.find(&entry)?;
            level = &node.children;
            reached = Some(node);
        }
        reached
    }
}

impl Children {
    fn find(&self, entry: &Entry<'_>) -> Option<&Node> {
        let nodes = self.by_key.get(entry.key)?;
        if let Some(node) = nodes.exact.get(entry.value) {
            return Some(node);
        }
        let wildcard = nodes.wildcards.iter().find(|node| match &node.value {
            super::NodeValue::Wildcard(pattern) => pattern.matches(entry.value),
            _ => false,
        });
        wildcard.or(nodes.any.as_deref())
    }
}
