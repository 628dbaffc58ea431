//! Reading a YAML document node by node, keeping each node's place in the file.
//!
//! The rule format is small and its errors must point at the exact line and column, so the
//! file is parsed into a marked tree (every node keeps its place: `tree.rs`) and read by hand
//! rather than through serde. Scalars are kept as written: a descriptor value such
//! as `007` stays the string `007`, and each field decides how its scalar is read.

use std::path::Path;

use super::tree::{self, Data, Node, Place};

use super::error::{ConfigError, ConfigErrorKind, Location};

/// Parses `text` into one YAML document.
pub fn parse<'t>(file: &Path, text: &'t str) -> Result<Node<'t>, ConfigError> {
    super::limits::scan(file, text)?;
    let mut documents = tree::documents(text).map_err(|e| ConfigError {
        location: Location {
            file: file.to_path_buf(),
            line: e.marker().line(),
            column: e.marker().col() + 1,
        },
        kind: ConfigErrorKind::Syntax(e.info().to_string()),
    })?;
    match documents.len() {
        0 => Err(ConfigError::in_file(file, ConfigErrorKind::EmptyFile)),
        1 => Ok(documents.remove(0)),
        n => Err(ConfigError::in_file(
            file,
            ConfigErrorKind::SeveralDocuments(n),
        )),
    }
    .and_then(|document| {
        if is_null(&document) {
            Err(ConfigError::in_file(file, ConfigErrorKind::EmptyFile))
        } else {
            Ok(document)
        }
    })
}

/// Reads nodes of one file and collects every error found, so that one `check` shows them all.
pub struct Reader<'a> {
    pub file: &'a Path,
    pub errors: Vec<ConfigError>,
    /// Things that load, as in envoyproxy/ratelimit, but are very likely mistakes:
    /// `file:line:column: message`.
    pub warnings: Vec<String>,
    /// How deep the descriptor being read is, and how many have been read.
    pub depth: usize,
    pub descriptors: usize,
}

impl<'a> Reader<'a> {
    pub fn new(file: &'a Path) -> Reader<'a> {
        Reader {
            file,
            errors: Vec::new(),
            warnings: Vec::new(),
            depth: 0,
            descriptors: 0,
        }
    }

    pub fn location(&self, span: Place) -> Location {
        Location {
            file: self.file.to_path_buf(),
            line: span.line,
            column: span.col + 1,
        }
    }

    pub fn warn(&mut self, span: Place, message: &str) {
        let location = self.location(span);
        self.warnings.push(format!("{location}: {message}"));
    }

    pub fn error(&mut self, span: Place, kind: ConfigErrorKind) {
        let location = self.location(span);
        self.errors.push(ConfigError { location, kind });
    }

    /// The fields of a mapping, as `(name, name node, value node)` in file order; refuses any
    /// name not in `allowed` (joined with `, ` for the message).
    ///
    /// A field whose value is null (`~`, `null` or nothing) is left out, as if it were not
    /// written: envoyproxy/ratelimit reads YAML into Go structs, where a null leaves the zero
    /// value, and Envoy Gateway writes `rate_limit: null` on every node without a limit.
    pub fn fields<'n, 't>(
        &mut self,
        node: &'n Node<'t>,
        what: &str,
        allowed: &'static str,
    ) -> Option<Vec<Field<'n, 't>>> {
        let Data::Mapping(mapping) = &node.data else {
            self.error(
                node.span,
                ConfigErrorKind::WrongType {
                    field: what.to_string(),
                    expected: "a mapping",
                },
            );
            return None;
        };
        let mut fields = Vec::with_capacity(mapping.len());
        for (name_node, value) in mapping {
            let name = match scalar(name_node) {
                Some((name, _)) => name,
                None => {
                    self.error(
                        name_node.span,
                        ConfigErrorKind::WrongType {
                            field: format!("a key of {what}"),
                            expected: "a string",
                        },
                    );
                    continue;
                }
            };
            if !allowed.split(", ").any(|a| a == name) {
                self.error(
                    name_node.span,
                    ConfigErrorKind::UnknownField {
                        field: name.to_string(),
                        expected: allowed,
                    },
                );
                continue;
            }
            if is_null(value) {
                continue;
            }
            fields.push(Field {
                name: name_node_str(name_node),
                name_span: name_node.span,
                value,
            });
        }
        Some(fields)
    }

    /// A sequence's items, or an error naming the field.
    pub fn sequence<'n, 't>(&mut self, field: &Field<'n, 't>) -> Option<&'n Vec<Node<'t>>> {
        match &field.value.data {
            Data::Sequence(items) => Some(items),
            _ if is_null(field.value) => None,
            _ => {
                self.wrong_type(field, "a list");
                None
            }
        }
    }

    /// A string; `None` (and no error) for a null.
    pub fn string(&mut self, field: &Field<'_, '_>) -> Option<String> {
        if is_null(field.value) {
            return None;
        }
        match scalar(field.value) {
            Some((text, _)) => Some(text.to_string()),
            None => {
                self.wrong_type(field, "a string");
                None
            }
        }
    }

    /// `true` or `false` in any case, or the YAML 1.1 forms that envoyproxy/ratelimit's YAML
    /// library also reads as booleans (`yes`/`no`, `on`/`off`, `y`/`n`).
    pub fn boolean(&mut self, field: &Field<'_, '_>) -> Option<bool> {
        match plain_scalar(field.value)
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            Some("true" | "yes" | "on" | "y") => Some(true),
            Some("false" | "no" | "off" | "n") => Some(false),
            _ => {
                self.wrong_type(field, "true or false");
                None
            }
        }
    }

    /// A whole number from 0 to `u32::MAX`.
    pub fn u32(&mut self, field: &Field<'_, '_>) -> Option<u32> {
        let number = plain_scalar(field.value)
            .filter(|text| !text.starts_with('+'))
            .and_then(|text| text.parse::<u32>().ok());
        if number.is_none() {
            self.wrong_type(field, "a whole number from 0 to 4294967295");
        }
        number
    }

    fn wrong_type(&mut self, field: &Field<'_, '_>, expected: &'static str) {
        self.error(
            field.value.span,
            ConfigErrorKind::WrongType {
                field: field.name.clone(),
                expected,
            },
        );
    }
}

/// One `name: value` pair of a mapping.
pub struct Field<'n, 't> {
    pub name: String,
    pub name_span: Place,
    pub value: &'n Node<'t>,
}

fn name_node_str(node: &Node<'_>) -> String {
    scalar(node).map(|(s, _)| s.to_string()).unwrap_or_default()
}

/// A scalar's text as written, and whether it was plain (unquoted).
fn scalar<'n>(node: &'n Node<'_>) -> Option<(&'n str, bool)> {
    match &node.data {
        Data::Scalar(text, plain) => Some((text, *plain)),
        _ => None,
    }
}

/// A plain (unquoted) scalar's text: quoted `"true"` or `"60"` stay strings.
fn plain_scalar<'n>(node: &'n Node<'_>) -> Option<&'n str> {
    scalar(node)
        .filter(|(_, plain)| *plain)
        .map(|(text, _)| text)
}

/// `~`, `null` or nothing at all.
pub fn is_null(node: &Node<'_>) -> bool {
    matches!(
        plain_scalar(node),
        Some("" | "~" | "null" | "Null" | "NULL")
    )
}
