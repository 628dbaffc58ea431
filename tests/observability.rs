//! The dashboard and alerting rules of `examples/observability/` against a running ratelimitd
//! and Prometheus's own `promtool` (Debian package `prometheus`): the rules pass `promtool check
//! rules`; every alert fires in `promtool test rules` on series named and labelled exactly as a
//! scrape of ratelimitd shows them; and every metric the dashboard and the rules query is one a
//! running ratelimitd exposes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::process::{Ratelimitd, project};
use common::*;

const RULES: &str = "\
domain: obs
descriptors:
  - key: api_key
    rate_limit: {unit: minute, requests_per_unit: 2}
";

fn promtool() -> PathBuf {
    let found = Command::new("sh")
        .args(["-c", "command -v promtool"])
        .output()
        .expect("sh runs");
    let path = String::from_utf8_lossy(&found.stdout).trim().to_string();
    assert!(
        !path.is_empty(),
        "promtool is missing: apt-get install -y prometheus (scripts/test installs it)"
    );
    PathBuf::from(path)
}

fn alerts_file() -> PathBuf {
    project("examples/observability/alerts.yaml")
}

/// A ratelimitd on [`RULES`] that has refused a request over its limit and one without a
/// domain, and its scrape.
async fn scraped() -> (Ratelimitd, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("obs.yaml"), RULES).unwrap();
    let rl = Ratelimitd::start(dir.path(), 0);
    let mut client = Client::connect(format!("http://{}", rl.addr))
        .await
        .unwrap();
    let key = fresh_key("obs");
    for _ in 0..3 {
        call(
            &mut client,
            request("obs", vec![descriptor(&[("api_key", &key)])]),
        )
        .await;
    }
    // And one it refuses (no domain): the error series exist once an error has happened.
    let refused = client.should_rate_limit(request("", vec![])).await;
    assert!(refused.is_err());
    let scrape = http_get(&rl.http_addr, "/metrics").1;
    (rl, scrape, dir)
}

/// The series of a scrape: `name{labels}` as written, by name.
fn series(scrape: &str) -> Vec<(String, String)> {
    scrape
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.rsplit_once(' ').map(|(s, _)| s.to_string()))
        .map(|s| (s.split('{').next().unwrap_or_default().to_string(), s))
        .collect()
}

/// Every metric name an expression in `text` reads: words that start as ratelimitd's do.
fn queried(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("ratelimit") {
        let word: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[at + word.len()..];
        if word.starts_with("ratelimit_") || word.starts_with("ratelimitd_") {
            names.insert(word);
        }
    }
    names
}

#[test]
fn the_alerting_rules_pass_promtool_check() {
    let out = Command::new(promtool())
        .args(["check", "rules"])
        .arg(alerts_file())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("SUCCESS: 7 rules found"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_and_the_alerts_query_is_exposed() {
    let (rl, scrape, _dir) = scraped().await;
    let exposed: BTreeSet<String> = series(&scrape).into_iter().map(|(name, _)| name).collect();
    let dashboard =
        std::fs::read_to_string(project("examples/observability/grafana-dashboard.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&dashboard).unwrap();
    let exprs: Vec<String> = json["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().clone())
        .map(|t| t["expr"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(exprs.len(), 17, "the dashboard's queries");
    let alerts = std::fs::read_to_string(alerts_file()).unwrap();
    let mut names = queried(&exprs.join("\n"));
    names.extend(queried(&alerts));
    assert!(names.len() >= 15, "{names:?}");
    for name in &names {
        assert!(
            exposed.contains(name),
            "{name} is queried but a running ratelimitd does not expose it"
        );
    }
    rl.stop();
}

/// The `summary` and `description` of each alert in the rules file, in order.
fn annotations(rules: &str) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    let value = |line: &str, key: &str| {
        line.trim()
            .strip_prefix(key)
            .map(|v| v.trim().trim_matches('"').to_string())
    };
    let mut name = String::new();
    let mut summary = String::new();
    for line in rules.lines() {
        if let Some(v) = value(line, "- alert:") {
            name = v;
        } else if let Some(v) = value(line, "summary:") {
            summary = v;
        } else if let Some(v) = value(line, "description:") {
            out.push((name.clone(), summary.clone(), v));
        }
    }
    out
}

/// `series` (as scraped, `name` or `name{labels}`) with the labels Prometheus adds to a scrape.
fn with_target(series: &str, instance: &str) -> String {
    let target = format!("instance=\"{instance}\",job=\"ratelimitd\"");
    match series.strip_suffix('}') {
        Some(open) => format!("{open},{target}}}"),
        None => format!("{series}{{{target}}}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_alert_fires_on_series_as_ratelimitd_exports_them() {
    let (rl, scrape, dir) = scraped().await;
    let instance = rl.http_addr.clone();
    let all = series(&scrape);
    let one = |name: &str, needle: &str| -> String {
        all.iter()
            .find(|(n, s)| n == name && s.contains(needle))
            .map(|(_, s)| with_target(s, &instance))
            .unwrap_or_else(|| panic!("no {name} ({needle}) in the scrape:\n{scrape}"))
    };
    let rule = "domain=\"obs\"";
    let (hits, over) = (
        one("ratelimit_service_rate_limit_total_hits", rule),
        one("ratelimit_service_rate_limit_over_limit", rule),
    );
    // Per minute: 10 hits a second, 8 of them over the limit, for half an hour.
    let mut input = vec![
        (
            format!("up{{instance=\"{instance}\",job=\"ratelimitd\"}}"),
            "1 1 0x30".to_string(),
        ),
        (
            one("ratelimit_service_config_load_error", ""),
            "0+1x30".into(),
        ),
        (one("ratelimitd_backend_up", ""), "1 0x30".into()),
        (
            one("ratelimitd_backend_fallback_decisions_total", ""),
            "0+120x30".into(),
        ),
        (hits, "0+600x30".into()),
        (over, "0+480x30".into()),
        (one("ratelimitd_counter_memory_bytes", ""), "950x30".into()),
        (
            one("ratelimitd_counter_memory_budget_bytes", ""),
            "1000x30".into(),
        ),
    ];
    // Nine in ten decisions take longer than Envoy's 20 ms.
    let buckets: Vec<String> = all
        .iter()
        .filter(|(n, _)| n == "ratelimitd_decision_duration_seconds_bucket")
        .map(|(_, s)| s.clone())
        .collect();
    assert!(buckets.len() > 10, "{buckets:?}");
    for bucket in buckets {
        let le: f64 = bucket
            .split("le=\"")
            .nth(1)
            .and_then(|v| v.split('"').next())
            .map(|v| {
                if v == "+Inf" {
                    f64::INFINITY
                } else {
                    v.parse().unwrap()
                }
            })
            .unwrap();
        let per_minute = if le <= 0.02 { 60 } else { 600 };
        input.push((
            with_target(&bucket, &instance),
            format!("0+{per_minute}x30"),
        ));
    }
    let texts = std::fs::read_to_string(alerts_file()).unwrap();
    let rendered = |text: &str| {
        text.replace("{{ $labels.instance }}", &instance)
            .replace("{{ $labels.domain }}", "obs")
    };
    let target = format!("instance: \"{instance}\", job: ratelimitd");
    let labels_of = |alert: &str| -> String {
        match alert {
            "RatelimitdOverLimitSpike" => "domain: obs, severity: ticket".into(),
            "RatelimitdSlowDecisions" => format!("instance: \"{instance}\", severity: page"),
            "RatelimitdDown" | "RatelimitdRedisDown" => format!("{target}, severity: page"),
            _ => format!("{target}, severity: ticket"),
        }
    };
    let mut tests = String::new();
    let alerts = annotations(&texts);
    assert_eq!(alerts.len(), 7);
    for (alert, summary, description) in &alerts {
        tests.push_str(&format!(
            "      - eval_time: 25m\n        alertname: {alert}\n        exp_alerts:\n          - exp_labels: {{{}}}\n            exp_annotations:\n              summary: {:?}\n              description: {:?}\n",
            labels_of(alert),
            rendered(summary),
            rendered(description),
        ));
    }
    let series_yaml: String = input
        .iter()
        .map(|(s, v)| format!("      - series: '{s}'\n        values: '{v}'\n"))
        .collect();
    let file = dir.path().join("alerts_test.yaml");
    std::fs::write(
        &file,
        format!(
            "rule_files:\n  - {}\nevaluation_interval: 1m\ntests:\n  - interval: 1m\n    input_series:\n{series_yaml}    alert_rule_test:\n{tests}",
            alerts_file().display()
        ),
    )
    .unwrap();
    let out = Command::new(promtool())
        .args(["test", "rules"])
        .arg(&file)
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")))
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{text}\n{}",
        std::fs::read_to_string(&file).unwrap()
    );
    assert!(text.contains("SUCCESS"), "{text}");
    rl.stop();
}
