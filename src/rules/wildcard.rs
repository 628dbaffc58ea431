//! `*` patterns in rule values, split once when the rules load.
//!
//! envoyproxy/ratelimit only understands a trailing `*` (a value prefix); here `*` may stand
//! anywhere and matches any run of characters, so `internal_*` keeps its meaning and
//! `*-sandbox` or `team-*-ci` work too.

/// A value pattern with at least one `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wildcard {
    pattern: String,
    /// The literal runs between the stars, in order; the first and last may be empty.
    parts: Vec<String>,
}

impl Wildcard {
    /// The pattern if `value` has a `*`, else `None` (an exact value).
    pub fn parse(value: &str) -> Option<Wildcard> {
        if !value.contains('*') {
            return None;
        }
        Some(Wildcard {
            pattern: value.to_string(),
            parts: value.split('*').map(str::to_string).collect(),
        })
    }

    pub fn as_str(&self) -> &str {
        &self.pattern
    }

    pub fn matches(&self, value: &str) -> bool {
        // `parse` guarantees a `*`, so there are at least two parts.
        let (first, rest) = match self.parts.split_first() {
            Some(split) => split,
            None => return false,
        };
        let (last, middle) = match rest.split_last() {
            Some(split) => split,
            None => return false,
        };
        if value.len() < first.len() + last.len()
            || !value.starts_with(first.as_str())
            || !value.ends_with(last.as_str())
        {
            return false;
        }
        let mut remaining = &value[first.len()..value.len() - last.len()];
        for part in middle {
            match remaining.find(part.as_str()) {
                Some(at) => remaining = &remaining[at + part.len()..],
                None => return false,
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::Wildcard;

    fn matches(pattern: &str, value: &str) -> bool {
        Wildcard::parse(pattern).map(|w| w.matches(value)) == Some(true)
    }

    #[test]
    fn plain_values_are_not_patterns() {
        assert!(Wildcard::parse("acme-live").is_none());
    }

    #[test]
    fn star_matches_any_run() {
        let table = [
            ("internal_*", "internal_billing", true),
            ("internal_*", "internal_", true),
            ("internal_*", "internals", false),
            ("internal_*", "xinternal_a", false),
            ("*-sandbox", "acme-sandbox", true),
            ("*-sandbox", "acme-sandbox2", false),
            ("team-*-ci", "team-core-ci", true),
            ("team-*-ci", "team-ci", false),
            ("a*b*c", "abc", true),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "acb", false),
            ("ab*ba", "aba", false),
            ("*", "", true),
            ("*", "anything", true),
        ];
        for (pattern, value, expected) in table {
            assert_eq!(matches(pattern, value), expected, "{pattern} ~ {value}");
        }
    }
}
