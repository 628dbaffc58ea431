//! `ratelimitd explain` as a user runs it, over the seed policy (`config/`): the built binary,
//! its exact output (the documentation's example), and its refusals.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

/// Runs `ratelimitd explain --config config …` from the project's folder.
fn explain(args: &[&str]) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_ratelimitd"))
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")))
        .args(["explain", "--config", "config", "--domain", "mega-api"])
        .args(args)
        .output()
        .expect("the ratelimitd binary runs");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn the_seed_policy_explained_for_an_override_an_internal_key_and_an_unknown_bucket() {
    let (code, out, err) = explain(&[
        "api_key=acme-live",
        "bucket=default",
        "--descriptor",
        "api_key=internal_x,bucket=bulk",
        "--descriptor",
        "api_key=k1,bucket=nope",
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        "domain \"mega-api\" (config/mega-api.yaml)
descriptor 1: api_key=acme-live, bucket=default
  level 1: api_key=acme-live takes `api_key: acme-live` at config/mega-api.yaml:16, exact value (an exact value wins over patterns and the key-only rule)
    passed over: `api_key` (any value) at config/mega-api.yaml:33 (key-only)
  level 2: bucket=default takes `bucket: default` at config/mega-api.yaml:19, exact value (an exact value wins over patterns and the key-only rule)
  limit: 600 per minute, fixed window
  limit: 20000 per hour, fixed window
descriptor 2: api_key=internal_x, bucket=bulk
  level 1: api_key=internal_x takes `api_key: internal_*` at config/mega-api.yaml:8, the first pattern in file order that matches (no exact value of this key matches)
    passed over: `api_key` (any value) at config/mega-api.yaml:33 (key-only)
  level 2: bucket=bulk takes `bucket` (any value) at config/mega-api.yaml:11, the key-only rule (no exact value or pattern of this key matches)
  unlimited (`unlimited: true`): never limited, never counted
descriptor 3: api_key=k1, bucket=nope
  level 1: api_key=k1 takes `api_key` (any value) at config/mega-api.yaml:33, the key-only rule (no exact value or pattern of this key matches)
  level 2: no value or pattern of key `bucket` matches \"nope\" under `api_key` (any value)
  no limit applies: no rule matches every entry
"
    );
}

#[test]
fn the_default_bucket_of_any_key_and_the_algorithm_of_limits_that_name_none() {
    let (code, out, _) = explain(&[
        "api_key=k1",
        "bucket=default",
        "--default-algorithm",
        "token_bucket",
    ]);
    assert_eq!(code, 0);
    assert!(
        out.ends_with(
            "  limit: 60 per minute, token bucket of burst 60\n  limit: 1000 per hour, token bucket of burst 1000\n"
        ),
        "{out}"
    );
}

#[test]
fn a_request_without_a_descriptor_or_with_a_broken_entry_is_refused() {
    let (code, _, err) = explain(&[]);
    assert_eq!(code, 2);
    assert!(err.contains("name at least one descriptor"), "{err}");
    let (code, _, err) = explain(&["api_key"]);
    assert_eq!(code, 2);
    assert!(err.contains("\"api_key\": an entry is key=value"), "{err}");
}
