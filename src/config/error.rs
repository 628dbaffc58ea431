//! Rule-file errors, each with the place in the file it is about.
//!
//! `Display` is `file:line:column: message`, the form editors and CI logs turn into links.
//! Lines and columns count from 1.

use std::fmt;
use std::path::{Path, PathBuf};

/// A place in a rule file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file.display(), self.line, self.column)
    }
}

/// One thing wrong with the rules, and where.
#[derive(Debug, thiserror::Error)]
#[error("{location}: {kind}")]
pub struct ConfigError {
    pub location: Location,
    #[source]
    pub kind: ConfigErrorKind,
}

/// What was wrong. Messages name the field and, where there is a closed set, what is allowed.
#[derive(Debug, thiserror::Error)]
pub enum ConfigErrorKind {
    #[error("cannot read: {0}")]
    Io(#[source] std::io::Error),
    #[error("no rule files (*.yaml, *.yml) in this directory")]
    NoRuleFiles,
    #[error("YAML syntax error: {0}")]
    Syntax(String),
    #[error("the file is empty: expected a mapping with `domain` and `descriptors`")]
    EmptyFile,
    #[error("the file holds {0} YAML documents: put one domain per file")]
    SeveralDocuments(usize),
    #[error("unknown field `{field}` (expected one of: {expected})")]
    UnknownField {
        field: String,
        expected: &'static str,
    },
    #[error("`{0}` is not supported yet")]
    NotSupported(String),
    #[error("missing field `{0}`")]
    MissingField(&'static str),
    #[error("`{field}` must be {expected}")]
    WrongType {
        field: String,
        expected: &'static str,
    },
    #[error("`{0}` must not be empty")]
    Empty(&'static str),
    #[error("unknown unit {0:?} (expected {units})", units = crate::rules::Unit::NAMES)]
    UnknownUnit(String),
    #[error("unknown algorithm {0:?} (expected {names})", names = crate::rules::Algorithm::NAMES)]
    UnknownAlgorithm(String),
    #[error("`burst` is for `algorithm: token_bucket` only")]
    BurstWithoutBucket,
    #[error(
        "this bucket takes longer than {} seconds to refill from empty (`burst` / `requests_per_unit` × the window)",
        crate::rules::MAX_WINDOW_SECONDS
    )]
    RefillTooLong,
    #[error(
        "a sliding window of `requests_per_unit` × its length in milliseconds above 2^50 cannot be counted exactly"
    )]
    SlidingTooLarge,
    #[error(
        "duplicate descriptor: this level already has key {key:?}{}",
        value_text(value)
    )]
    DuplicateNode { key: String, value: String },
    #[error("duplicate domain {domain:?}: already defined in {}", first.display())]
    DuplicateDomain { domain: String, first: PathBuf },
    #[error("a limit with `unlimited: true` must not have a `unit`")]
    UnlimitedWithUnit,
    #[error("`unlimited` cannot stand in `rate_limits`: use `rate_limit: {{unlimited: true}}`")]
    UnlimitedInList,
    #[error("use either `rate_limit` or `rate_limits` on one descriptor, not both")]
    BothRateLimitForms,
    #[error(
        "two limits of this descriptor have the same window ({0} seconds): each window has one counter"
    )]
    DuplicateWindow(u32),
    #[error("`unit_multiplier` must be at least 1")]
    ZeroMultiplier,
    #[error(
        "the window is longer than {} seconds",
        crate::rules::MAX_WINDOW_SECONDS
    )]
    WindowTooLong,
    #[error("a limit must not replace itself ({0:?})")]
    ReplacesItself(String),
    #[error("`share_threshold: true` needs a wildcard `value` (such as \"files/*\")")]
    ShareThresholdWithoutWildcard,
    #[error("the file is {0} bytes, more than the {max} allowed", max = super::limits::MAX_FILE_BYTES)]
    FileTooBig(u64),
    #[error("the YAML nests deeper than {0} mappings and lists")]
    TooDeep(usize),
    #[error("more than {0} YAML nodes (aliases counted as what they repeat)")]
    TooManyNodes(u64),
    #[error(
        "descriptors nest deeper than {0} levels: Envoy sends at most {0} entries in a descriptor, so this node could never match"
    )]
    DescriptorsTooDeep(usize),
    #[error("more than {0} descriptors in one file")]
    TooManyDescriptors(usize),
}

fn value_text(value: &str) -> String {
    if value.is_empty() {
        " and no value".to_string()
    } else {
        format!(" with value {value:?}")
    }
}

impl ConfigError {
    /// An error about a whole file, placed at its first character.
    pub fn in_file(file: &Path, kind: ConfigErrorKind) -> ConfigError {
        ConfigError {
            location: Location {
                file: file.to_path_buf(),
                line: 1,
                column: 1,
            },
            kind,
        }
    }
}

/// Every error found in one load, in file order.
#[derive(Debug, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}
