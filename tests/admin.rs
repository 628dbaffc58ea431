//! The admin HTTP server of a real ratelimitd: exact metrics after known traffic, `/json`
//! against the same scenarios as gRPC, `/rlconfig` and `/healthcheck`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use envoy_types::pb::google::protobuf::UInt64Value;

const OPS_RULES: &str = r#"
domain: ops
descriptors:
  - key: k
    value: plain
    rate_limit: {unit: minute, requests_per_unit: 5}
  - key: k
    value: weighted
    rate_limit: {unit: minute, requests_per_unit: 5}
  - key: k
    value: shadow
    shadow_mode: true
    rate_limit: {unit: minute, requests_per_unit: 2}
  - key: user
    descriptors:
      - key: plan
        value: free
        rate_limit: {unit: hour, requests_per_unit: 100}
  - key: k
    value: idle
    rate_limit: {unit: minute, requests_per_unit: 5}
"#;

fn ops(
    entries: &[(&str, &str)],
) -> envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest {
    request("ops", vec![descriptor(entries)])
}

fn series(name: &str, key1: &str, key2: &str, window: &str) -> String {
    format!(
        "ratelimit_service_rate_limit_{name}{{domain=\"ops\",key1=\"{key1}\",key2=\"{key2}\",window=\"{window}\"}}"
    )
}

/// [total_hits, over_limit, near_limit, within_limit, shadow_mode] of one rule.
fn rule_counts(scrape: &str, key1: &str, key2: &str, window: &str) -> [f64; 5] {
    [
        "total_hits",
        "over_limit",
        "near_limit",
        "within_limit",
        "shadow_mode",
    ]
    .map(|name| metric(scrape, &series(name, key1, key2, window)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_known_traffic_exactly() {
    let scrape = within_one_window(60, |_| async {
        let server = TestServer::start(OPS_RULES).await;
        let mut client = server.client().await;
        for _ in 0..7 {
            call(&mut client, ops(&[("k", "plain")])).await;
        }
        for _ in 0..2 {
            let mut weighted = ops(&[("k", "weighted")]);
            weighted.hits_addend = 3;
            call(&mut client, weighted).await;
        }
        for _ in 0..4 {
            let answer = call(&mut client, ops(&[("k", "shadow")])).await;
            assert_eq!(
                answer.overall_code,
                Code::Ok as i32,
                "shadow mode never refuses"
            );
        }
        for _ in 0..3 {
            let secret = ops(&[("user", "sk_live_SECRET123"), ("plan", "free")]);
            call(&mut client, secret).await;
        }
        let mut check_only = ops(&[("k", "plain")]);
        check_only.descriptors[0].hits_addend = Some(UInt64Value { value: 0 });
        call(&mut client, check_only).await;
        for _ in 0..2 {
            call(
                &mut client,
                request("nobody-configured-this", vec![descriptor(&[("a", "b")])]),
            )
            .await;
        }
        let refused = client
            .should_rate_limit(request("", vec![descriptor(&[("a", "b")])]))
            .await;
        assert_eq!(refused.unwrap_err().code(), tonic::Code::InvalidArgument);

        let (status, scrape) = get_async(server.http_addr, "/metrics").await;
        assert_eq!(status, 200);
        server.stop().await;
        scrape
    })
    .await;

    // Limit 5 (near from 4): 5 within, the 5th of them near, 2 over; a check adds nothing.
    assert_eq!(
        rule_counts(&scrape, "k_plain", "", "1m"),
        [7.0, 2.0, 1.0, 5.0, 0.0]
    );
    // Weighted by hits_addend: 3 within, then 3 more of which 1 is near and 1 over.
    assert_eq!(
        rule_counts(&scrape, "k_weighted", "", "1m"),
        [6.0, 1.0, 1.0, 3.0, 0.0]
    );
    // Shadow mode, limit 2: the hits past the limit are over_limit and shadow_mode.
    assert_eq!(
        rule_counts(&scrape, "k_shadow", "", "1m"),
        [4.0, 2.0, 1.0, 2.0, 2.0]
    );
    // A rule reached through a key-only node is named by the key, never by the value sent.
    assert_eq!(
        rule_counts(&scrape, "user", "plan_free", "1h"),
        [3.0, 0.0, 0.0, 3.0, 0.0]
    );
    assert!(
        !scrape.contains("SECRET123"),
        "a descriptor value leaked into the metrics"
    );
    // A rule's series appear at its first hit: an idle override costs no memory and no lines.
    assert!(!scrape.contains("k_idle"), "{scrape}");

    assert_eq!(
        metric(&scrape, "ratelimitd_decisions_total{code=\"OK\"}"),
        15.0
    );
    assert_eq!(
        metric(&scrape, "ratelimitd_decisions_total{code=\"OVER_LIMIT\"}"),
        4.0
    );
    assert_eq!(
        metric(
            &scrape,
            "ratelimitd_request_errors_total{code=\"INVALID_ARGUMENT\"}"
        ),
        1.0
    );
    assert_eq!(metric(&scrape, "ratelimitd_domain_not_found_total"), 2.0);
    assert_eq!(
        metric(&scrape, "ratelimitd_decision_duration_seconds_count"),
        20.0
    );
    assert_eq!(
        metric(&scrape, "ratelimit_service_config_load_success"),
        1.0
    );
    assert_eq!(metric(&scrape, "ratelimit_service_config_load_error"), 0.0);
    assert_eq!(
        metric(&scrape, "ratelimitd_config_info{hash=\"test\"}"),
        1.0
    );
    assert_eq!(metric(&scrape, "ratelimitd_config_rules"), 5.0);
    // plain, weighted, shadow and the user's key: one entry each.
    assert_eq!(metric(&scrape, "ratelimitd_counters_in_memory"), 4.0);
    assert_eq!(metric(&scrape, "ratelimitd_serving"), 1.0);
    assert!(scrape.contains("process_resident_memory_bytes"), "{scrape}");
}

fn seed_rules() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/mega-api.yaml");
    std::fs::read_to_string(path).expect("config/mega-api.yaml exists")
}

fn seed_json(api_key: &str, bucket: &str) -> String {
    format!(
        r#"{{"domain": "mega-api", "descriptors": [{{"entries": [{{"key": "api_key", "value": "{api_key}"}}, {{"key": "bucket", "value": "{bucket}"}}]}}]}}"#
    )
}

fn json_header<'v>(answer: &'v serde_json::Value, name: &str) -> Option<&'v str> {
    answer["responseHeadersToAdd"]
        .as_array()?
        .iter()
        .find(|h| h["key"].as_str() == Some(name))
        .and_then(|h| h["value"].as_str())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_endpoint_decides_like_grpc_on_the_same_counters() {
    let server = TestServer::start(&seed_rules()).await;
    let client = server.client().await;
    within_one_window(60, |attempt| {
        let key = fresh_key(&format!("json-{attempt}"));
        let (mut client, addr) = (client.clone(), server.http_addr);
        async move {
            // The bulk bucket allows 10 a minute: 5 over gRPC, then 5 over /json.
            for _ in 0..5 {
                let answer = call(&mut client, seed_request(&key, "bulk")).await;
                assert_eq!(answer.overall_code, Code::Ok as i32);
            }
            for expected_remaining in (0..5).rev() {
                let (status, body) = post_json_async(addr, &seed_json(&key, "bulk")).await;
                assert_eq!(status, 200, "{body}");
                let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
                assert_eq!(answer["overallCode"], "OK", "{body}");
                let remaining = json_header(&answer, "ratelimit-remaining").unwrap();
                assert_eq!(remaining, expected_remaining.to_string());
            }
            let (status, body) = post_json_async(addr, &seed_json(&key, "bulk")).await;
            assert_eq!(status, 429, "{body}");
            let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(answer["overallCode"], "OVER_LIMIT");
            assert_eq!(answer["statuses"][0]["code"], "OVER_LIMIT");
            assert_eq!(answer["statuses"][0]["currentLimit"]["requestsPerUnit"], 10);
            assert_eq!(answer["statuses"][0]["currentLimit"]["unit"], "MINUTE");
            assert!(json_header(&answer, "retry-after").is_some(), "{body}");
            assert!(
                answer["rawBody"].as_str().is_some_and(|b| !b.is_empty()),
                "{body}"
            );
            // And gRPC sees the same counter.
            let answer = call(&mut client, seed_request(&key, "bulk")).await;
            assert_eq!(answer.overall_code, Code::OverLimit as i32);
        }
    })
    .await;

    // Internal keys are unlimited: 200 with no headers.
    let (status, body) =
        post_json_async(server.http_addr, &seed_json("internal_batch", "default")).await;
    assert_eq!(status, 200, "{body}");
    assert!(!body.contains("ratelimit-limit"), "{body}");
    // An unknown domain is OK.
    let (status, body) = post_json_async(
        server.http_addr,
        r#"{"domain": "elsewhere", "descriptors": [{"entries": [{"key": "a", "value": "b"}]}]}"#,
    )
    .await;
    assert_eq!((status, body.contains("\"OK\"")), (200, true), "{body}");

    // Bad input: 400 with a reason, as envoyproxy/ratelimit answers.
    for (bad, reason) in [
        ("{\"domain\": ", "proto3 JSON"),
        ("{\"domain\": 7}", "proto3 JSON"),
        ("{\"domain\": \"mega-api\", \"nonsense\": 1}", "nonsense"),
        (
            "{\"domain\": \"\", \"descriptors\": [{\"entries\": [{\"key\": \"a\"}]}]}",
            "domain",
        ),
        ("{\"domain\": \"mega-api\"}", "descriptor"),
    ] {
        let (status, body) = post_json_async(server.http_addr, bad).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(body.contains(reason), "{bad}: {body}");
    }
    let huge = format!("{{\"domain\": \"{}\"}}", "x".repeat(300 * 1024));
    let (status, _) = post_json_async(server.http_addr, &huge).await;
    assert_eq!(status, 413, "a body over 256 KiB is refused unread");
    let (status, _) = get_async(server.http_addr, "/json").await;
    assert_eq!(status, 405);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthcheck_and_rlconfig_describe_the_running_server() {
    let server = TestServer::start(OPS_RULES).await;
    assert_eq!(
        get_async(server.http_addr, "/healthcheck").await,
        (200, "OK\n".to_string())
    );
    let (status, config) = get_async(server.http_addr, "/rlconfig").await;
    assert_eq!(status, 200);
    let expected = "\
# rules hash test
# domain ops: test.yaml
ops.k_idle: unit=MINUTE requests_per_unit=5, shadow_mode: false
ops.k_plain: unit=MINUTE requests_per_unit=5, shadow_mode: false
ops.k_shadow: unit=MINUTE requests_per_unit=2, shadow_mode: true
ops.k_weighted: unit=MINUTE requests_per_unit=5, shadow_mode: false
ops.user.plan_free: unit=HOUR requests_per_unit=100, shadow_mode: false
";
    assert_eq!(config, expected);
    let (status, _) = get_async(server.http_addr, "/nothing-here").await;
    assert_eq!(status, 404);
    server.stop().await;
}
