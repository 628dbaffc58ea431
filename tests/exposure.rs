//! What the admin port shows, and to whom: `--redact-rule-values` keeps the rules' exact values
//! (customers' API keys in per-customer overrides, the `internal_*` pattern) out of the
//! metrics, `/rlconfig` and the logs, while the rules decide as before; `/json` and
//! `/rlconfig` answer loopback peers (the only peers a test here can be: the choice for
//! others is the unit test `debug_endpoints_answer_loopback_peers_unless_opened` in
//! `src/admin.rs`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::process::Ratelimitd;
use common::*;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;

/// `n` calls for `key` in the default bucket; how many were OK.
async fn oks(client: &mut Client, key: &str, n: usize) -> usize {
    let mut ok = 0;
    for _ in 0..n {
        let answer = call(client, seed_request(key, "default")).await;
        ok += usize::from(answer.overall_code == Code::Ok as i32);
    }
    ok
}

#[tokio::test]
async fn redacted_rule_values_appear_nowhere_and_the_rules_still_decide() {
    let config = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/config"));
    let rl = Ratelimitd::start_with(config, 0, &["--redact-rule-values", "--log-level", "debug"]);
    let client = Client::connect(format!("http://{}", rl.addr))
        .await
        .unwrap();
    let (acme, other, internal) = within_one_window(60, |_| {
        let mut client = client.clone();
        async move {
            // The override (600 a minute), a default key (60) and an internal key (unlimited).
            let acme = oks(&mut client, "acme-live", 70).await;
            let other = oks(&mut client, &fresh_key("someone"), 70).await;
            let internal = oks(&mut client, "internal_billing", 70).await;
            (acme, other, internal)
        }
    })
    .await;
    assert_eq!(
        (acme, other, internal),
        (70, 60, 70),
        "the rules decide as before"
    );
    let metrics = http_get(&rl.http_addr, "/metrics").1;
    let rlconfig = http_get(&rl.http_addr, "/rlconfig").1;
    let log = rl.log.all(Duration::from_millis(200)).join("\n");
    for (what, text) in [
        ("/metrics", &metrics),
        ("/rlconfig", &rlconfig),
        ("the log", &log),
    ] {
        for value in ["acme-live", "internal_"] {
            assert!(!text.contains(value), "{what} shows {value}");
        }
    }
    assert!(
        metrics.contains("key1=\"api_key_#"),
        "the override's series are labelled by a hash"
    );
    assert!(rlconfig.contains("mega-api.api_key_#"), "{rlconfig}");
    rl.stop();
}

#[test]
fn without_redaction_the_values_show_and_debug_endpoints_answer_loopback() {
    let config = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/config"));
    let rl = Ratelimitd::start(config, 0);
    let (status, rlconfig) = http_get(&rl.http_addr, "/rlconfig");
    assert_eq!(status, 200, "a loopback peer reads /rlconfig");
    assert!(rlconfig.contains("api_key_acme-live"), "{rlconfig}");
    rl.stop();
}
