//! `--redact-rule-values`: where a rule's exact value would be shown (metric labels,
//! `/rlconfig`), a short stable hash of it is shown instead. Per-customer overrides name
//! customers' API keys, and patterns such as `internal_*` say which keys are never limited.
//!
//! The hash is BLAKE3, unkeyed so that every replica and every restart shows the same label
//! (dashboards and alerts keep working), cut to 8 hex digits: `api_key_acme-live` becomes
//! `api_key_#1b2c3d4e`. It hides a value from whoever reads the metrics; it does not stop
//! someone who guesses a value from checking the guess.

/// The label of one path level: `key_value` with its value hashed; a bare `key` as it is.
pub fn segment(key: &str, segment: &str) -> String {
    match segment
        .strip_prefix(key)
        .and_then(|rest| rest.strip_prefix('_'))
    {
        Some(value) => format!("{key}_#{}", short_hash(value)),
        None => segment.to_string(),
    }
}

/// The first 8 hex digits of the value's BLAKE3 hash.
pub fn short_hash(value: &str) -> String {
    let hash = blake3::hash(value.as_bytes());
    hash.to_hex()[..8].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_hashed_and_keys_stay() {
        let redacted = segment("api_key", "api_key_acme-live");
        assert!(redacted.starts_with("api_key_#"), "{redacted}");
        assert_eq!(redacted.len(), "api_key_#".len() + 8);
        assert!(!redacted.contains("acme"));
        assert_eq!(redacted, segment("api_key", "api_key_acme-live"), "stable");
        assert_ne!(redacted, segment("api_key", "api_key_acme-test"));
        assert_eq!(segment("api_key", "api_key"), "api_key", "a key-only level");
        assert!(!segment("api_key", "api_key_internal_*").contains("internal"));
    }
}
