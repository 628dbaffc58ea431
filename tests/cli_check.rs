//! `ratelimitd check` as a user runs it: the built binary, its exit code, and every error with
//! file:line:column and what is wrong.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// Runs `ratelimitd check --config <path>` from the fixtures folder, so paths print short.
fn check(path: &Path) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_ratelimitd"))
        .current_dir(fixture(""))
        .args(["check", "--config"])
        .arg(path)
        .output()
        .expect("the ratelimitd binary runs");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn each_broken_file_is_refused_with_its_place_and_reason() {
    let table = [
        (
            "bad_unknown_field.yaml",
            "bad_unknown_field.yaml:7:7: unknown field `requests_per_hour` (expected one of: unit, requests_per_unit, unlimited, name, replaces, unit_multiplier, algorithm, burst)",
        ),
        (
            "bad_unit.yaml",
            r#"bad_unit.yaml:5:13: unknown unit "minutes" (expected second|minute|hour|day|week|month|year)"#,
        ),
        (
            "bad_duplicate_node.yaml",
            r#"bad_duplicate_node.yaml:6:5: duplicate descriptor: this level already has key "api_key" with value "acme""#,
        ),
        (
            "bad_syntax.yaml",
            "bad_syntax.yaml:5:8: YAML syntax error: while parsing a flow mapping, did not find expected ',' or '}'",
        ),
        (
            "bad_unlimited_with_unit.yaml",
            "bad_unlimited_with_unit.yaml:7:13: a limit with `unlimited: true` must not have a `unit`",
        ),
        (
            "bad_share_threshold.yaml",
            r#"bad_share_threshold.yaml:5:5: `share_threshold: true` needs a wildcard `value` (such as "files/*")"#,
        ),
        (
            "bad_types.yaml",
            "bad_types.yaml:5:18: `shadow_mode` must be true or false\n\
             bad_types.yaml:6:15: `metadata` must be a mapping\n\
             bad_types.yaml:9:18: `descriptors` must be a list\n\
             bad_types.yaml:8:5: missing field `key`",
        ),
        (
            "bad_several.yaml",
            "bad_several.yaml:5:43: `requests_per_unit` must be a whole number from 0 to 4294967295\n\
             bad_several.yaml:6:16: unknown unit \"fortnight\" (expected second|minute|hour|day|week|month|year)\n\
             bad_several.yaml:7:5: missing field `key`",
        ),
    ];
    for (file, expected) in table {
        let (code, stdout, stderr) = check(Path::new(file));
        assert_eq!(code, 1, "{file}: exit code");
        assert_eq!(stdout, "", "{file}: nothing on stdout");
        assert_eq!(stderr.trim_end(), expected, "{file}");
    }
}

#[test]
fn likely_mistakes_that_envoyproxy_ratelimit_loads_load_with_a_warning() {
    let (code, stdout, stderr) = check(Path::new("warn_mistakes.yaml"));
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout, "warn_mistakes.yaml: OK (1 domain: careless)\n");
    assert_eq!(
        stderr,
        "warning: warn_mistakes.yaml:4:17: no `requests_per_unit`: read as 0, which refuses every request\n\
         warning: warn_mistakes.yaml:6:17: `unlimited: true` ignores `requests_per_unit`: this limit never limits\n"
    );
}

#[test]
fn files_in_envoy_gateways_shape_load_without_a_word() {
    let (code, stdout, stderr) = check(Path::new("envoy-gateway-shape"));
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stderr, "");
    assert_eq!(
        stdout,
        "envoy-gateway-shape: OK (4 domains: default/eg/files, default/eg/http, default/eg/models, default/eg/shadow)\n"
    );
}

#[test]
fn the_shipped_rules_and_examples_pass() {
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let (code, stdout, stderr) = check(&config);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("OK (1 domain: mega-api)"), "{stdout}");
}

#[test]
fn a_directory_with_a_duplicate_domain_names_both_files() {
    let dir = tempfile::tempdir().expect("temp dir");
    let rule = "domain: shared\ndescriptors:\n  - key: k\n    rate_limit: {unit: second, requests_per_unit: 1}\n";
    std::fs::write(dir.path().join("a.yaml"), rule).expect("write");
    std::fs::write(dir.path().join("b.yml"), rule).expect("write");
    std::fs::write(dir.path().join(".hidden.yaml"), "not: [valid").expect("write");
    std::fs::write(dir.path().join("notes.txt"), "not a rule file").expect("write");
    let (code, _, stderr) = check(dir.path());
    assert_eq!(code, 1);
    let b = dir.path().join("b.yml");
    let a = dir.path().join("a.yaml");
    assert_eq!(
        stderr.trim_end(),
        format!(
            "{}:1:1: duplicate domain \"shared\": already defined in {}",
            b.display(),
            a.display()
        )
    );
}

#[test]
fn a_missing_path_is_an_error_not_a_panic() {
    let (code, _, stderr) = check(Path::new("no-such-dir/rules.yaml"));
    assert_eq!(code, 1);
    assert!(
        stderr.starts_with("no-such-dir/rules.yaml:1:1: cannot read:"),
        "{stderr}"
    );
}

/// `depth` nested descriptor levels, each with a limit at the bottom.
fn nested_rules(depth: usize) -> String {
    let mut text = String::from("domain: deep\ndescriptors:\n");
    for level in 0..depth {
        let pad = "  ".repeat(2 * level);
        text.push_str(&format!("{pad}- key: k{level}\n"));
        if level + 1 < depth {
            text.push_str(&format!("{pad}  descriptors:\n"));
        } else {
            text.push_str(&format!(
                "{pad}  rate_limit: {{unit: second, requests_per_unit: 1}}\n"
            ));
        }
    }
    text
}

#[test]
fn files_past_the_limits_are_refused_by_check_and_at_start_alike() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cases = [
        (
            "deep.yaml",
            nested_rules(2_500),
            "deep.yaml:257:511: the YAML nests deeper than 256 mappings and lists",
        ),
        (
            "levels.yaml",
            nested_rules(65),
            "levels.yaml:130:255: descriptors nest deeper than 64 levels: Envoy sends at most 64 entries in a descriptor, so this node could never match",
        ),
    ];
    for (name, text, expected) in cases {
        let file = dir.path().join(name);
        std::fs::write(&file, text).expect("write");
        let (code, stdout, stderr) = check(&file);
        let expected = format!("{}/{expected}", dir.path().display());
        assert_eq!((code, stdout.as_str()), (1, ""), "{name}");
        assert_eq!(stderr.trim_end(), expected, "{name}");
        // `serve` refuses the same file with the same message, before it listens.
        let serve = Command::new(env!("CARGO_BIN_EXE_ratelimitd"))
            .args([
                "serve",
                "--grpc-addr",
                "127.0.0.1:0",
                "--http-addr",
                "127.0.0.1:0",
            ])
            .arg("--config")
            .arg(&file)
            .output()
            .expect("the ratelimitd binary runs");
        assert_eq!(serve.status.code(), Some(1), "{name}");
        let stderr = String::from_utf8_lossy(&serve.stderr);
        assert!(stderr.contains(&expected), "{name}: {stderr}");
    }
    // 64 levels is the most a descriptor can have: it loads.
    let file = dir.path().join("ok.yaml");
    std::fs::write(&file, nested_rules(64)).expect("write");
    assert_eq!(check(&file).0, 0);
}

#[test]
fn a_dangling_symlink_or_a_loop_is_an_error_not_a_missing_domain() {
    let dir = tempfile::tempdir().expect("temp dir");
    let rule = "domain: kept\ndescriptors:\n  - key: k\n    rate_limit: {unit: second, requests_per_unit: 1}\n";
    std::fs::write(dir.path().join("kept.yaml"), rule).expect("write");
    let dangling = dir.path().join("gone.yaml");
    std::os::unix::fs::symlink(dir.path().join("nowhere.yaml"), &dangling).expect("symlink");
    let (code, _, stderr) = check(dir.path());
    assert_eq!(code, 1);
    assert!(
        stderr.starts_with(&format!(
            "{}:1:1: cannot read: No such file or directory",
            dangling.display()
        )),
        "{stderr}"
    );
    std::fs::remove_file(&dangling).expect("remove");
    let (a, b) = (dir.path().join("a.yaml"), dir.path().join("b.yaml"));
    std::os::unix::fs::symlink(&b, &a).expect("symlink");
    std::os::unix::fs::symlink(&a, &b).expect("symlink");
    let (code, _, stderr) = check(dir.path());
    assert_eq!(code, 1);
    assert!(
        stderr.contains("cannot read: Too many levels of symbolic links"),
        "{stderr}"
    );
}
