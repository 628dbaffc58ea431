//! Operating the `ratelimitd` binary: hot reload (edit, bad edit, SIGHUP, a ConfigMap-style
//! symlink swap), shutdown (health failing first, no accepted call lost under load), and logs
//! that never carry an API key.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::process::{Ratelimitd, grpcurl, project, wait_until};
use common::*;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;

/// Good edits must apply within this (the issue's promise).
const RELOAD_WITHIN: Duration = Duration::from_secs(2);

fn seed_rules() -> String {
    std::fs::read_to_string(project("config/mega-api.yaml")).expect("config/mega-api.yaml")
}

fn seed_json(api_key: &str, bucket: &str) -> String {
    format!(
        r#"{{"domain": "mega-api", "descriptors": [{{"entries": [{{"key": "api_key", "value": "{api_key}"}}, {{"key": "bucket", "value": "{bucket}"}}]}}]}}"#
    )
}

/// One decision over `/json`: (HTTP status, `ratelimit-limit`, `ratelimit-remaining`).
fn decide(rl: &Ratelimitd, api_key: &str, bucket: &str) -> (u16, String, String) {
    let (status, body) = post_json(&rl.http_addr, &seed_json(api_key, bucket));
    let answer: serde_json::Value = serde_json::from_str(&body).expect("a JSON answer");
    let header = |name: &str| {
        answer["responseHeadersToAdd"]
            .as_array()
            .and_then(|headers| headers.iter().find(|h| h["key"] == name))
            .and_then(|h| h["value"].as_str())
            .unwrap_or("")
            .to_string()
    };
    (
        status,
        header("ratelimit-limit"),
        header("ratelimit-remaining"),
    )
}

fn scrape(rl: &Ratelimitd) -> String {
    let (status, text) = http_get(&rl.http_addr, "/metrics");
    assert_eq!(status, 200);
    text
}

fn loads(rl: &Ratelimitd) -> (f64, f64) {
    let text = scrape(rl);
    (
        metric(&text, "ratelimit_service_config_load_success"),
        metric(&text, "ratelimit_service_config_load_error"),
    )
}

fn rlconfig(rl: &Ratelimitd) -> String {
    http_get(&rl.http_addr, "/rlconfig").1
}

/// Waits until `/rlconfig` contains `needle`, and fails past [`RELOAD_WITHIN`].
fn wait_for_rules(rl: &Ratelimitd, needle: &str, since: Instant) {
    wait_until(RELOAD_WITHIN, &format!("rules with {needle:?}"), || {
        rlconfig(rl).contains(needle).then_some(())
    });
    assert!(
        since.elapsed() <= RELOAD_WITHIN,
        "took {:?}",
        since.elapsed()
    );
}

#[test]
fn an_edit_applies_within_two_seconds_and_counters_survive_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mega-api.yaml");
    std::fs::write(&file, seed_rules()).unwrap();
    // Polling all but off: the file event alone must bring the edit in.
    let rl = Ratelimitd::start_with(dir.path(), 0, &["--reload-poll-ms", "600000"]);
    let mut edits = 0;
    within_one_window_blocking(60, || {
        edits += 1;
        let key = fresh_key("edit");
        for _ in 0..3 {
            assert_eq!(decide(&rl, &key, "bulk").0, 200);
        }
        let (ok_before, errors_before) = loads(&rl);
        // Raise the default bucket's minute limit, in place, as an editor saves.
        let limit = 60 + edits;
        let edited = seed_rules().replace(
            "requests_per_unit: 60\n",
            &format!("requests_per_unit: {limit}\n"),
        );
        assert_ne!(edited, seed_rules());
        let saved = Instant::now();
        std::fs::write(&file, edited).unwrap();
        wait_for_rules(&rl, &format!("requests_per_unit={limit},"), saved);

        // The new limit decides; the bulk counter kept its 3 hits across the reload.
        assert_eq!(
            decide(&rl, &key, "default"),
            (200, limit.to_string(), (limit - 1).to_string())
        );
        assert_eq!(decide(&rl, &key, "bulk"), (200, "10".into(), "6".into()));
        let (ok_after, errors_after) = loads(&rl);
        assert_eq!(
            (ok_after - ok_before, errors_after - errors_before),
            (1.0, 0.0)
        );
    });
    rl.stop();
}

#[test]
fn a_change_that_sends_no_file_event_is_found_by_polling() {
    // The rule file is reached through a symlink in another directory: an edit of the real
    // file sends no event where ratelimitd watches, as on filesystems without events.
    let real = tempfile::tempdir().unwrap();
    let linked = tempfile::tempdir().unwrap();
    let file = real.path().join("rules.yaml");
    std::fs::write(&file, seed_rules()).unwrap();
    let config = linked.path().join("mega-api.yaml");
    std::os::unix::fs::symlink(&file, &config).unwrap();
    let rl = Ratelimitd::start_with(&config, 0, &["--reload-poll-ms", "300"]);
    let edited = seed_rules().replace("requests_per_unit: 10\n", "requests_per_unit: 17\n");
    let saved = Instant::now();
    std::fs::write(&file, edited).unwrap();
    wait_for_rules(&rl, "bucket_bulk: unit=MINUTE requests_per_unit=17,", saved);
    rl.stop();
}

#[test]
fn a_broken_edit_keeps_the_running_rules_and_counts_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mega-api.yaml");
    std::fs::write(&file, seed_rules()).unwrap();
    let rl = Ratelimitd::start(dir.path(), 0);
    let before = rlconfig(&rl);
    let broken = seed_rules().replace("unit: minute\n", "unit: fortnight\n");
    std::fs::write(&file, broken).unwrap();
    let saved = Instant::now();
    wait_until(RELOAD_WITHIN, "a counted load error", || {
        (loads(&rl) == (1.0, 1.0)).then_some(())
    });
    assert!(saved.elapsed() <= RELOAD_WITHIN);
    let warning = rl
        .log
        .wait_for("rules not reloaded", Duration::from_secs(5));
    assert!(warning.contains("mega-api.yaml:"), "{warning}");
    assert!(
        warning.contains("unknown unit \\\"fortnight\\\""),
        "{warning}"
    );
    assert_eq!(rlconfig(&rl), before, "the running rules stay");
    let key = fresh_key("broken");
    assert_eq!(decide(&rl, &key, "default").1, "60");

    // Fixed again: loaded again.
    std::fs::write(&file, seed_rules()).unwrap();
    wait_until(RELOAD_WITHIN, "the fixed rules", || {
        (loads(&rl) == (2.0, 1.0)).then_some(())
    });
    rl.stop();
}

#[test]
fn sighup_reloads_even_when_nothing_changed() {
    let rl = Ratelimitd::start(&project("config"), 0);
    assert_eq!(loads(&rl), (1.0, 0.0));
    rl.signal("HUP");
    rl.log.wait_for("SIGHUP", Duration::from_secs(5));
    wait_until(RELOAD_WITHIN, "a second load", || {
        (loads(&rl) == (2.0, 0.0)).then_some(())
    });
    rl.stop();
}

/// Lays out `dir` as Kubernetes mounts a ConfigMap: the file is a symlink through `..data`,
/// itself a symlink to a timestamped directory that an update replaces with one rename.
fn configmap_version(dir: &Path, version: &str, rules: &str) {
    let target = dir.join(version);
    std::fs::create_dir(&target).unwrap();
    std::fs::write(target.join("mega-api.yaml"), rules).unwrap();
    let staged = dir.join("..data_tmp");
    std::os::unix::fs::symlink(version, &staged).unwrap();
    std::fs::rename(&staged, dir.join("..data")).unwrap();
    let visible = dir.join("mega-api.yaml");
    if std::fs::symlink_metadata(&visible).is_err() {
        std::os::unix::fs::symlink("..data/mega-api.yaml", &visible).unwrap();
    }
}

#[test]
fn a_configmap_symlink_swap_is_seen() {
    let dir = tempfile::tempdir().unwrap();
    configmap_version(dir.path(), "..2026_11_28_v1", &seed_rules());
    let rl = Ratelimitd::start(dir.path(), 0);
    let mut swaps = 0;
    within_one_window_blocking(60, || {
        swaps += 1;
        let key = fresh_key("swap");
        for _ in 0..4 {
            assert_eq!(decide(&rl, &key, "bulk").0, 200);
        }
        let limit = 10 + swaps;
        let rules = seed_rules().replace(
            "requests_per_unit: 10\n",
            &format!("requests_per_unit: {limit}\n"),
        );
        let swapped = Instant::now();
        configmap_version(dir.path(), &format!("..2026_11_28_v{}", swaps + 1), &rules);
        wait_for_rules(
            &rl,
            &format!("bucket_bulk: unit=MINUTE requests_per_unit={limit},"),
            swapped,
        );
        let remaining = limit - 5;
        assert_eq!(
            decide(&rl, &key, "bulk"),
            (200, limit.to_string(), remaining.to_string())
        );
    });
    rl.stop();
}

#[test]
fn on_sigterm_health_fails_first_and_calls_are_answered_until_the_listener_closes() {
    let mut rl = Ratelimitd::start_with(&project("config"), 0, &["--shutdown-delay", "2"]);
    assert_eq!(http_get(&rl.http_addr, "/healthcheck").0, 200);
    rl.signal("TERM");
    rl.log.wait_for("still serving", Duration::from_secs(5));
    let (status, body) = http_get(&rl.http_addr, "/healthcheck");
    assert_eq!((status, body.as_str()), (500, "draining\n"));
    let health = grpcurl(&[&rl.addr, "grpc.health.v1.Health/Check"]);
    assert!(health.contains("NOT_SERVING"), "{health}");
    assert!(metric(&scrape(&rl), "ratelimitd_serving") == 0.0);
    assert_eq!(
        decide(&rl, &fresh_key("late"), "default").0,
        200,
        "still answering"
    );
    assert_eq!(rl.process.wait_exit(Duration::from_secs(15)), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_fails_no_call_that_was_sent_before_it() {
    let mut rl = Ratelimitd::start(&project("config"), 0);
    let endpoint = format!("http://{}", rl.addr);
    let signalled: Arc<std::sync::OnceLock<Instant>> = Arc::default();
    let mut tasks = Vec::new();
    for task in 0..16 {
        let channel = tonic::transport::Endpoint::from_shared(endpoint.clone())
            .unwrap()
            .connect()
            .await
            .unwrap();
        let signalled = Arc::clone(&signalled);
        tasks.push(tokio::spawn(async move {
            let mut client = Client::new(channel);
            // (sent before the signal, answered) for every call.
            let mut calls = Vec::new();
            let give_up = Instant::now() + Duration::from_secs(20);
            for i in 0.. {
                let sent_before = signalled.get().is_none();
                let key = format!("load-{task}-{i}");
                let answered = client
                    .should_rate_limit(seed_request(&key, "default"))
                    .await
                    .map(|a| a.into_inner().overall_code == Code::Ok as i32);
                let failed = answered.is_err();
                calls.push((sent_before, answered.unwrap_or(false)));
                if failed || Instant::now() > give_up {
                    break;
                }
            }
            calls
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    signalled.set(Instant::now()).unwrap();
    rl.signal("TERM");
    let mut before = 0;
    for task in tasks {
        for (sent_before, answered) in task.await.unwrap() {
            if sent_before {
                assert!(answered, "a call sent before SIGTERM was not answered OK");
                before += 1;
            }
        }
    }
    assert!(
        before > 100,
        "too little load to mean anything: {before} calls"
    );
    let code = tokio::task::spawn_blocking(move || rl.process.wait_exit(Duration::from_secs(15)))
        .await
        .unwrap();
    assert_eq!(code, 0);
}

#[test]
fn logs_never_carry_an_api_key_at_info_and_name_the_outcome_at_debug() {
    for level in ["info", "debug"] {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("mega-api.yaml");
        std::fs::write(&file, seed_rules()).unwrap();
        let rl = Ratelimitd::start_with(dir.path(), 0, &["--log-level", level]);
        let secret = "sk_live_LEAKCHECK";
        for _ in 0..12 {
            decide(&rl, secret, "bulk");
        }
        let answer = grpcurl(&[
            "-d",
            &seed_json(secret, "default"),
            &rl.addr,
            "envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit",
        ]);
        assert!(answer.contains("OK"), "{answer}");
        post_json(
            &rl.http_addr,
            "{\"domain\": \"\", \"descriptors\": [{\"entries\": [{\"key\": \"api_key\", \"value\": \"sk_live_LEAKCHECK\"}]}]}",
        );
        std::fs::write(&file, "domain: [\n").unwrap();
        rl.log
            .wait_for("rules not reloaded", Duration::from_secs(5));
        rl.signal("TERM");
        let lines = rl.log.all(Duration::from_secs(10));
        let mut log = lines.join("\n");
        log.push('\n');
        assert!(
            !log.contains("LEAKCHECK"),
            "an API key in the {level} log:\n{log}"
        );
        for line in &lines {
            serde_json::from_str::<serde_json::Value>(line)
                .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        }
        if level == "debug" {
            let decided = lines.iter().filter(|l| l.contains("\"decided\"")).count();
            assert_eq!(decided, 13, "one line per decision:\n{log}");
            assert!(log.contains("\"domain\":\"mega-api\""), "{log}");
            assert!(log.contains("\"over_limit\":true"), "{log}");
        } else {
            assert!(!log.contains("\"decided\""), "{log}");
        }
    }
}

#[test]
fn a_file_past_the_limits_or_a_broken_link_is_refused_on_reload_and_the_rules_stay() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("mega-api.yaml"), seed_rules()).unwrap();
    let rl = Ratelimitd::start_with(dir.path(), 0, &["--reload-poll-ms", "200"]);
    let key = fresh_key("limits");
    let before = rlconfig(&rl);
    let mut errors = 0.0;
    let mut refused = |what: &str, needle: &str| {
        errors += 1.0;
        wait_until(Duration::from_secs(10), what, || {
            (loads(&rl).1 == errors).then_some(())
        });
        let warning = rl.log.wait_for(needle, Duration::from_secs(5));
        assert!(warning.contains("rules not reloaded"), "{what}: {warning}");
        assert_eq!(rlconfig(&rl), before, "{what}: the running rules stay");
    };
    // Descriptors nested 2,500 levels deep beside the rules: refused, and the server lives.
    let mut deep = String::from("domain: deep\ndescriptors:\n");
    for level in 0..2_500 {
        let pad = "  ".repeat(2 * level);
        deep.push_str(&format!("{pad}- key: k{level}\n{pad}  descriptors:\n"));
    }
    // Written beside under a hidden name and renamed in: the reloader must not see the 12 MB
    // file half written (a second bad state, counted once more).
    let deep_file = dir.path().join("deep.yaml");
    let partial = dir.path().join(".deep.yaml.partial");
    std::fs::write(&partial, deep).unwrap();
    std::fs::rename(&partial, &deep_file).unwrap();
    refused(
        "the deep file",
        "the YAML nests deeper than 256 mappings and lists",
    );
    assert_eq!(
        decide(&rl, &key, "bulk").1,
        "10",
        "serving, with the old rules"
    );
    std::fs::remove_file(&deep_file).unwrap();

    // A dangling link, then a symlink loop: errors, and mega-api keeps limiting.
    let dangling = dir.path().join("gone.yaml");
    std::os::unix::fs::symlink(dir.path().join("nowhere.yaml"), &dangling).unwrap();
    refused("a dangling link", "gone.yaml:1:1: cannot read");
    std::fs::remove_file(&dangling).unwrap();
    let (a, b) = (dir.path().join("a.yaml"), dir.path().join("b.yaml"));
    std::os::unix::fs::symlink(&b, &a).unwrap();
    std::os::unix::fs::symlink(&a, &b).unwrap();
    refused("a symlink loop", "Too many levels of symbolic links");
    within_one_window_blocking(60, || {
        let key = fresh_key("still-limited");
        for remaining in (0..10).rev() {
            let answer = decide(&rl, &key, "bulk");
            assert_eq!(answer, (200, "10".into(), remaining.to_string()));
        }
        assert_eq!(decide(&rl, &key, "bulk").0, 429, "still limited at 10");
    });
    rl.stop();
}

#[test]
fn decisions_go_on_while_a_big_rule_file_loads() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("mega-api.yaml"), seed_rules()).unwrap();
    let rl = Ratelimitd::start_with(dir.path(), 0, &["--reload-poll-ms", "200"]);
    // 100,000 per-customer overrides (about 10 MB): seconds of parsing.
    let mut big = String::from("domain: big\ndescriptors:\n");
    for i in 0..100_000 {
        big.push_str(&format!(
            "  - key: api_key\n    value: customer-{i:09}\n    rate_limit: {{unit: minute, requests_per_unit: {}}}\n",
            100 + i % 900
        ));
    }
    let staged = dir.path().join(".big.yaml.tmp");
    std::fs::write(&staged, big).unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let http = rl.http_addr.clone();
    let probe = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut slowest = Duration::ZERO;
            let mut calls = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && calls < 1_000_000 {
                let started = Instant::now();
                let (status, _) = post_json(&http, &seed_json("probe", "default"));
                assert!(status == 200 || status == 429, "answered: {status}");
                slowest = slowest.max(started.elapsed());
                calls += 1;
            }
            (slowest, calls)
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let renamed = Instant::now();
    std::fs::rename(&staged, dir.path().join("big.yaml")).unwrap();
    let loaded = rl.log.wait_for("rules reloaded", Duration::from_secs(120));
    assert!(loaded.contains("\"rules\":100007"), "{loaded}");
    let load = renamed.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (slowest, calls) = probe.join().unwrap();
    assert!(calls > 10, "decisions were made during the load: {calls}");
    // A decision that waited for the load would have taken about as long as the load.
    assert!(
        slowest < Duration::from_secs(1) && slowest * 2 < load,
        "slowest decision {slowest:?} during a load of {load:?}"
    );
    rl.stop();
}
