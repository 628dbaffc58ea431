//! A rule file's YAML as a small tree that keeps each node's place in the file, built from the
//! parser's events.
//!
//! saphyr's own marked tree keeps a span of two markers per node and a hash map per mapping,
//! one allocation per entry: a 100 MB rule file became a 4.7 GB tree, and freeing it at the
//! end of a reload held decisions up to tens of milliseconds. Here a node is its start (line
//! and column) and its data; a mapping is one vector of pairs, read in order. Scalars borrow the
//! file's text unless an escape made them new strings.
//!
//! As saphyr's loader does: aliases repeat what their anchor names (the file's size was bounded
//! before, aliases counted as what they repeat: `limits.rs`), a key given twice in one mapping
//! is an error, and tags are ignored.

use std::borrow::Cow;
use std::collections::HashSet;

use saphyr_parser::{Event, Parser, ScanError, Span};

/// Where a node starts: a line (from 1) and a column (from 0), as the parser counts them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Place {
    pub line: usize,
    pub col: usize,
}

impl Place {
    fn of(span: &Span) -> Place {
        Place {
            line: span.start.line(),
            col: span.start.col(),
        }
    }
}

/// One YAML node and where it starts.
#[derive(Debug, Clone)]
pub struct Node<'t> {
    pub span: Place,
    pub data: Data<'t>,
}

/// What a node holds.
#[derive(Debug, Clone)]
pub enum Data<'t> {
    /// A scalar as written (never read as a number or a boolean here), and whether it was
    /// plain (unquoted).
    Scalar(Cow<'t, str>, bool),
    Sequence(Vec<Node<'t>>),
    /// Pairs in file order.
    Mapping(Vec<(Node<'t>, Node<'t>)>),
}

/// Mappings with more keys than this look for a repeated key in a set instead of a scan.
const SCANNED_KEYS: usize = 16;

/// A collection being read.
struct Open<'t> {
    span: Place,
    anchor: usize,
    items: Items<'t>,
}

enum Items<'t> {
    Sequence(Vec<Node<'t>>),
    Mapping {
        pairs: Vec<(Node<'t>, Node<'t>)>,
        key: Option<Node<'t>>,
        /// The scalar keys so far, once there are many.
        seen: Option<HashSet<Cow<'t, str>>>,
    },
}

/// The documents of `text`, or the first syntax error.
pub fn documents(text: &str) -> Result<Vec<Node<'_>>, ScanError> {
    let mut parser = Parser::new_from_str(text);
    let mut open: Vec<Open<'_>> = Vec::new();
    let mut anchors: Vec<Option<Node<'_>>> = Vec::new();
    let mut documents = Vec::new();
    let mut started = 0;
    while let Some(event) = parser.next_event() {
        let (event, span) = event?;
        let (node, anchor) = match event {
            Event::DocumentStart(_) => {
                started += 1;
                continue;
            }
            Event::DocumentEnd if documents.len() < started => {
                // An empty document: a null.
                documents.push(Node {
                    span: Place::of(&span),
                    data: Data::Scalar(Cow::Borrowed(""), true),
                });
                continue;
            }
            Event::Scalar(text, style, anchor, _) => {
                let plain = style == saphyr_parser::ScalarStyle::Plain;
                let node = Node {
                    span: Place::of(&span),
                    data: Data::Scalar(text, plain),
                };
                (node, anchor)
            }
            Event::SequenceStart(anchor, _) | Event::MappingStart(anchor, _) => {
                let items = if matches!(event, Event::SequenceStart(..)) {
                    Items::Sequence(Vec::new())
                } else {
                    Items::Mapping {
                        pairs: Vec::new(),
                        key: None,
                        seen: None,
                    }
                };
                open.push(Open {
                    span: Place::of(&span),
                    anchor,
                    items,
                });
                continue;
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let Some(done) = open.pop() else { continue };
                let data = match done.items {
                    Items::Sequence(items) => Data::Sequence(items),
                    Items::Mapping { pairs, .. } => Data::Mapping(pairs),
                };
                let node = Node {
                    span: done.span,
                    data,
                };
                (node, done.anchor)
            }
            Event::Alias(id) => {
                let Some(Some(node)) = anchors.get(id) else {
                    return Err(ScanError::new_str(span.start, "unknown anchor"));
                };
                (node.clone(), 0)
            }
            _ => continue,
        };
        if anchor > 0 {
            if anchors.len() <= anchor {
                anchors.resize(anchor + 1, None);
            }
            anchors[anchor] = Some(node.clone());
        }
        match open.last_mut() {
            None => documents.push(node),
            Some(parent) => add(&mut parent.items, node).map_err(|key| {
                ScanError::new_str(key.span.start_marker(), "duplicated key in mapping")
            })?,
        }
    }
    Ok(documents)
}

/// Adds `node` to a collection being read; a key given twice is handed back.
fn add<'t>(items: &mut Items<'t>, node: Node<'t>) -> Result<(), Node<'t>> {
    match items {
        Items::Sequence(nodes) => nodes.push(node),
        Items::Mapping { pairs, key, seen } => match key.take() {
            None => *key = Some(node),
            Some(name) => {
                if let Data::Scalar(text, _) = &name.data {
                    let repeated = match seen {
                        Some(seen) => !seen.insert(text.clone()),
                        None => {
                            let repeated = pairs
                                .iter()
                                .any(|(k, _)| matches!(&k.data, Data::Scalar(t, _) if t == text));
                            if pairs.len() >= SCANNED_KEYS {
                                let mut all: HashSet<Cow<'t, str>> = pairs
                                    .iter()
                                    .filter_map(|(k, _)| match &k.data {
                                        Data::Scalar(t, _) => Some(t.clone()),
                                        _ => None,
                                    })
                                    .collect();
                                all.insert(text.clone());
                                *seen = Some(all);
                            }
                            repeated
                        }
                    };
                    if repeated {
                        return Err(name);
                    }
                }
                pairs.push((name, node));
            }
        },
    }
    Ok(())
}

impl Place {
    /// A parser marker at this place, for errors.
    fn start_marker(self) -> saphyr_parser::Marker {
        saphyr_parser::Marker::new(0, self.line, self.col)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> Node<'_> {
        let mut documents = documents(text).expect("valid YAML");
        assert_eq!(documents.len(), 1);
        documents.remove(0)
    }

    #[test]
    fn nodes_keep_their_place_and_scalars_their_style() {
        let root = one("domain: d\ndescriptors:\n  - key: k\n    value: \"007\"\n");
        let Data::Mapping(pairs) = &root.data else {
            panic!("a mapping")
        };
        assert_eq!(pairs.len(), 2);
        let Data::Sequence(items) = &pairs[1].1.data else {
            panic!("a list")
        };
        let Data::Mapping(fields) = &items[0].data else {
            panic!("a mapping")
        };
        let (name, value) = &fields[1];
        assert_eq!(name.span, Place { line: 4, col: 4 });
        assert!(matches!(&value.data, Data::Scalar(t, false) if t == "007"));
    }

    #[test]
    fn aliases_repeat_their_anchor_and_repeated_keys_are_refused() {
        let root = one("a: &x [1, 2]\nb: *x\n");
        let Data::Mapping(pairs) = &root.data else {
            panic!("a mapping")
        };
        assert!(matches!(&pairs[1].1.data, Data::Sequence(items) if items.len() == 2));
        let error = documents("a: 1\nb: 2\na: 3\n").expect_err("a repeated key");
        assert_eq!(error.info(), "duplicated key in mapping");
        assert_eq!(error.marker().line(), 3);
        let many: String = (0..40).map(|i| format!("k{i}: v\n")).collect();
        assert!(documents(&many).is_ok());
        let error = documents(&format!("{many}k33: again\n")).expect_err("a repeated key");
        assert_eq!(error.marker().line(), 41);
    }

    #[test]
    fn documents_are_counted_and_an_empty_one_is_null() {
        assert_eq!(documents("a: 1\n---\nb: 2\n").expect("valid").len(), 2);
        assert!(documents("").expect("valid").is_empty());
        let empty = documents("---\n").expect("valid");
        assert!(matches!(&empty[0].data, Data::Scalar(_, true)));
    }
}
