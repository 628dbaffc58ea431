//! How big a rule file may be, checked the same way by `check`, at start and on reload.
//!
//! A rule file comes from an operator, but a careless or hostile one must not be able to crash
//! or exhaust the server with it: too deep a nesting overflows any recursive reader (the tree's
//! own drop included), and YAML aliases can expand a small file into an enormous tree. So the
//! file's YAML events are scanned once, before any tree is built: nesting depth and node count
//! (aliases counted as what they expand to) are bounded there, each refusal placed at
//! file:line:column. The descriptor tree's own depth and size are bounded while it is read
//! (`validate.rs`).

use std::path::Path;

use saphyr_parser::{Event, Parser};

use super::error::{ConfigError, ConfigErrorKind, Location};

/// The largest rule file read, in bytes.
pub const MAX_FILE_BYTES: u64 = 128 * 1024 * 1024;

/// The deepest nesting of YAML mappings and sequences. A descriptor level takes two (its
/// mapping and its `descriptors` list), so this leaves room for [`MAX_DESCRIPTOR_DEPTH`] levels
/// and their limits, and stays far inside any thread's stack.
pub const MAX_YAML_DEPTH: usize = 256;

/// The most YAML nodes in one file, aliases counted as the nodes they repeat.
pub const MAX_YAML_NODES: u64 = 20_000_000;

/// The deepest descriptor tree: Envoy's descriptors have at most 64 entries (ratelimitd refuses
/// longer ones), so a node deeper than this could never match.
pub const MAX_DESCRIPTOR_DEPTH: usize = 64;

/// The most descriptor nodes in one file.
pub const MAX_DESCRIPTORS: usize = 2_000_000;

/// Scans `text`'s YAML events and refuses it, at the first place that breaks a limit, when it
/// nests deeper than [`MAX_YAML_DEPTH`] or holds more than [`MAX_YAML_NODES`] nodes. Syntax
/// errors are left to the loader, which reports them.
pub fn scan(file: &Path, text: &str) -> Result<(), ConfigError> {
    let at = |line: usize, column: usize, kind| ConfigError {
        location: Location {
            file: file.to_path_buf(),
            line,
            column: column + 1,
        },
        kind,
    };
    let mut parser = Parser::new_from_str(text);
    // Per open collection: its anchor (0: none) and the nodes in it so far.
    let mut open: Vec<(usize, u64)> = Vec::new();
    // Per anchor id: the nodes it stands for.
    let mut anchored: Vec<u64> = Vec::new();
    let mut total: u64 = 0;
    while let Some(event) = parser.next_event() {
        let Ok((event, span)) = event else {
            return Ok(());
        };
        let (line, column) = (span.start.line(), span.start.col());
        let nodes = match event {
            Event::SequenceStart(anchor, _) | Event::MappingStart(anchor, _) => {
                if open.len() >= MAX_YAML_DEPTH {
                    return Err(at(line, column, ConfigErrorKind::TooDeep(MAX_YAML_DEPTH)));
                }
                open.push((anchor, 1));
                continue;
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let Some((anchor, nodes)) = open.pop() else {
                    continue;
                };
                remember(&mut anchored, anchor, nodes);
                nodes
            }
            Event::Scalar(_, _, anchor, _) => {
                remember(&mut anchored, anchor, 1);
                1
            }
            Event::Alias(anchor) => anchored.get(anchor).copied().unwrap_or(1),
            _ => continue,
        };
        match open.last_mut() {
            Some((_, inner)) => *inner = inner.saturating_add(nodes),
            None => total = total.saturating_add(nodes),
        }
        let open_nodes: u64 = open.iter().map(|(_, n)| *n).sum();
        if total.saturating_add(open_nodes) > MAX_YAML_NODES {
            return Err(at(
                line,
                column,
                ConfigErrorKind::TooManyNodes(MAX_YAML_NODES),
            ));
        }
    }
    Ok(())
}

fn remember(anchored: &mut Vec<u64>, anchor: usize, nodes: u64) {
    if anchor == 0 {
        return;
    }
    if anchored.len() <= anchor {
        anchored.resize(anchor + 1, 1);
    }
    anchored[anchor] = nodes;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_text(text: &str) -> Result<(), String> {
        scan(Path::new("f.yaml"), text).map_err(|e| e.to_string())
    }

    /// `depth` nested descriptor levels.
    fn nested(depth: usize) -> String {
        let mut text = String::from("domain: d\ndescriptors:\n");
        for level in 0..depth {
            let pad = "  ".repeat(2 * level);
            text.push_str(&format!("{pad}- key: k{level}\n{pad}  descriptors:\n"));
        }
        text
    }

    #[test]
    fn deep_nesting_is_refused_where_it_goes_too_deep() {
        assert_eq!(scan_text(&nested(100)), Ok(()));
        let error = scan_text(&nested(2_500)).unwrap_err();
        assert_eq!(
            error,
            "f.yaml:257:511: the YAML nests deeper than 256 mappings and lists"
        );
    }

    #[test]
    fn aliases_count_as_what_they_expand_to() {
        // Each level repeats the previous one ten times: 10^9 nodes from a few hundred bytes.
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..10 {
            let p = i - 1;
            text.push_str(&format!(
                "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            ));
        }
        let error = scan_text(&text).unwrap_err();
        assert!(
            error.ends_with("more than 20000000 YAML nodes (aliases counted as what they repeat)"),
            "{error}"
        );
        assert_eq!(scan_text("a: &x [1, 2]\nb: *x\n"), Ok(()));
    }
}
