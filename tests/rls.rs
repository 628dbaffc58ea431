//! ShouldRateLimit over real gRPC against a real ratelimitd: the seed policy, several windows,
//! the request-level knobs, and what a client sees on the wire.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::RateLimitOverride;
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitResponse;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{Code, rate_limit::Unit};
use envoy_types::pb::google::protobuf::UInt64Value;

const SEED_BODY: &str = r#"{ "error": { "type": "rate_limit_error", "code": 429, "message": "Rate limit exceeded. Please retry later." } }"#;

fn seed_rules() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/mega-api.yaml");
    std::fs::read_to_string(path).expect("config/mega-api.yaml exists")
}

fn code(response: &RateLimitResponse) -> Code {
    Code::try_from(response.overall_code).expect("a known code")
}

/// Sends `n` seed-shaped requests for `key` and returns every response.
async fn send(client: &mut Client, key: &str, bucket: &str, n: usize) -> Vec<RateLimitResponse> {
    let mut responses = Vec::with_capacity(n);
    for _ in 0..n {
        responses.push(call(client, seed_request(key, bucket)).await);
    }
    responses
}

#[tokio::test]
async fn the_default_bucket_admits_60_a_minute_then_answers_over_limit_with_headers_and_body() {
    let server = TestServer::start(&seed_rules()).await;
    let mut client = server.client().await;
    let responses = within_one_window(60, |attempt| {
        let mut client = client.clone();
        async move {
            send(
                &mut client,
                &fresh_key(&format!("k{attempt}")),
                "default",
                61,
            )
            .await
        }
    })
    .await;
    for (i, response) in responses[..60].iter().enumerate() {
        assert_eq!(code(response), Code::Ok, "request {}", i + 1);
        assert_eq!(header(response, "ratelimit-limit"), Some("60"));
        assert_eq!(header_u64(response, "ratelimit-remaining"), 59 - i as u64);
        let reset = header_u64(response, "ratelimit-reset");
        assert!((1..=60).contains(&reset), "reset {reset}");
        assert_eq!(header(response, "retry-after"), None);
        assert!(response.raw_body.is_empty());
        let status = &response.statuses[0];
        assert_eq!(status.limit_remaining, 59 - i as u32);
        let limit = status.current_limit.as_ref().expect("current_limit");
        assert_eq!(
            (limit.requests_per_unit, limit.unit),
            (60, Unit::Minute as i32)
        );
    }
    let over = &responses[60];
    assert_eq!(code(over), Code::OverLimit);
    assert_eq!(over.statuses.len(), 1);
    assert_eq!(over.statuses[0].code, Code::OverLimit as i32);
    assert_eq!(over.statuses[0].limit_remaining, 0);
    assert_eq!(header(over, "ratelimit-limit"), Some("60"));
    assert_eq!(header(over, "ratelimit-remaining"), Some("0"));
    let reset = header_u64(over, "ratelimit-reset");
    let retry_after = header_u64(over, "retry-after");
    assert!(
        (1..=reset).contains(&retry_after),
        "retry-after {retry_after}, reset {reset}"
    );
    assert_eq!(header(over, "content-type"), Some("application/json"));
    assert_eq!(String::from_utf8_lossy(&over.raw_body), SEED_BODY);
    let duration = over.statuses[0]
        .duration_until_reset
        .as_ref()
        .expect("duration");
    assert_eq!(duration.seconds as u64, reset);
    assert_eq!(
        call(&mut client, seed_request(&fresh_key("other"), "default"))
            .await
            .overall_code,
        Code::Ok as i32,
        "another key is untouched"
    );
}

#[tokio::test]
async fn bulk_has_its_own_counter_and_keys_are_isolated() {
    let server = TestServer::start(&seed_rules()).await;
    let client = server.client().await;
    let (bulk, default_after, other_bulk) = within_one_window(60, |attempt| {
        let mut client = client.clone();
        async move {
            let key = fresh_key(&format!("bulk{attempt}"));
            let bulk = send(&mut client, &key, "bulk", 11).await;
            let default_after = call(&mut client, seed_request(&key, "default")).await;
            let other = fresh_key(&format!("other{attempt}"));
            let other_bulk = call(&mut client, seed_request(&other, "bulk")).await;
            (bulk, default_after, other_bulk)
        }
    })
    .await;
    assert!(bulk[..10].iter().all(|r| code(r) == Code::Ok));
    assert_eq!(header(&bulk[0], "ratelimit-limit"), Some("10"));
    assert_eq!(code(&bulk[10]), Code::OverLimit);
    assert_eq!(
        code(&default_after),
        Code::Ok,
        "an exhausted bulk leaves default alone"
    );
    assert_eq!(header(&default_after, "ratelimit-remaining"), Some("59"));
    assert_eq!(code(&other_bulk), Code::Ok, "another key's bulk is its own");
    assert_eq!(header(&other_bulk, "ratelimit-remaining"), Some("9"));

    // And the other way: an exhausted default bucket leaves bulk alone.
    let (default, bulk_after) = within_one_window(60, |attempt| {
        let mut client = client.clone();
        async move {
            let key = fresh_key(&format!("default{attempt}"));
            let default = send(&mut client, &key, "default", 61).await;
            (default, call(&mut client, seed_request(&key, "bulk")).await)
        }
    })
    .await;
    assert_eq!(code(&default[60]), Code::OverLimit);
    assert_eq!(code(&bulk_after), Code::Ok);
    assert_eq!(header(&bulk_after, "ratelimit-remaining"), Some("9"));
}

#[tokio::test]
async fn the_override_key_gets_600_a_minute() {
    // acme-live is a fixed key, so each attempt gets a server of its own (fresh counters).
    let responses = within_one_window(60, |_| async {
        let server = TestServer::start(&seed_rules()).await;
        let mut client = server.client().await;
        send(&mut client, "acme-live", "default", 601).await
    })
    .await;
    assert!(responses[..600].iter().all(|r| code(r) == Code::Ok));
    assert_eq!(header(&responses[0], "ratelimit-limit"), Some("600"));
    assert_eq!(header(&responses[599], "ratelimit-remaining"), Some("0"));
    assert_eq!(code(&responses[600]), Code::OverLimit);
}

#[tokio::test]
async fn internal_keys_are_never_limited() {
    let server = TestServer::start(&seed_rules()).await;
    let mut client = server.client().await;
    for bucket in ["default", "bulk"] {
        let responses = send(&mut client, "internal_batch-jobs", bucket, 150).await;
        for response in &responses {
            assert_eq!(code(response), Code::Ok);
            assert!(response.response_headers_to_add.is_empty());
            assert_eq!(response.statuses.len(), 1);
            assert_eq!(response.statuses[0].current_limit, None);
        }
    }
}

const TWO_WINDOWS: &str = r#"
domain: windows
descriptors:
  - key: client
    rate_limits:
      - {unit: second, requests_per_unit: 5}
      - {unit: minute, requests_per_unit: 8}
"#;

#[tokio::test]
async fn several_windows_are_all_enforced_and_the_binding_one_is_reported() {
    let server = TestServer::start(TWO_WINDOWS).await;
    let client = server.client().await;
    let (first_second, second_second) = within_one_window(60, |attempt| {
        let mut client = client.clone();
        async move {
            // Leave room for two whole seconds before the minute turns.
            while window_index(1) % 60 >= 57 {
                next_second().await;
            }
            next_second().await;
            let key = fresh_key(&format!("c{attempt}"));
            let req = || request("windows", vec![descriptor(&[("client", &key)])]);
            let mut first = Vec::new();
            for _ in 0..8 {
                first.push(call(&mut client, req()).await);
            }
            next_second().await;
            let mut second = Vec::new();
            for _ in 0..4 {
                second.push(call(&mut client, req()).await);
            }
            (first, second)
        }
    })
    .await;

    // First second: 5 pass; the per-second window binds for the rest.
    for (i, r) in first_second[..5].iter().enumerate() {
        assert_eq!(code(r), Code::Ok, "call {}", i + 1);
    }
    assert_eq!(
        header(&first_second[0], "ratelimit-limit"),
        Some("5"),
        "least remaining: second"
    );
    assert_eq!(header(&first_second[0], "ratelimit-remaining"), Some("4"));
    for r in &first_second[5..] {
        assert_eq!(code(r), Code::OverLimit);
        assert_eq!(header(r, "ratelimit-limit"), Some("5"));
        assert_eq!(
            header(r, "retry-after"),
            Some("1"),
            "the second window blocks"
        );
        let limit = r.statuses[0].current_limit.as_ref().expect("limit");
        assert_eq!(limit.unit, Unit::Second as i32);
    }
    // Next second: the three refused calls consumed nothing, so the minute has 3 left.
    for (i, r) in second_second[..3].iter().enumerate() {
        assert_eq!(code(r), Code::Ok, "call {} of the second second", i + 1);
        assert_eq!(
            header(r, "ratelimit-limit"),
            Some("8"),
            "least remaining: minute"
        );
        assert_eq!(header_u64(r, "ratelimit-remaining"), 2 - i as u64);
    }
    let blocked = &second_second[3];
    assert_eq!(code(blocked), Code::OverLimit);
    assert_eq!(header(blocked, "ratelimit-limit"), Some("8"));
    let limit = blocked.statuses[0].current_limit.as_ref().expect("limit");
    assert_eq!(limit.unit, Unit::Minute as i32);
    let retry_after = header_u64(blocked, "retry-after");
    assert_eq!(retry_after, header_u64(blocked, "ratelimit-reset"));
    assert!(
        retry_after >= 2,
        "the minute window blocks: retry-after {retry_after}"
    );
}

#[tokio::test]
async fn hits_addend_counts_several_and_zero_checks_without_counting() {
    let server = TestServer::start(&seed_rules()).await;
    let client = server.client().await;
    let (five, check, after) = within_one_window(60, |attempt| {
        let mut client = client.clone();
        async move {
            let key = fresh_key(&format!("h{attempt}"));
            let mut five = seed_request(&key, "default");
            five.hits_addend = 5;
            let five = call(&mut client, five).await;
            let mut check = seed_request(&key, "default");
            check.descriptors[0].hits_addend = Some(UInt64Value { value: 0 });
            let check = call(&mut client, check).await;
            let after = call(&mut client, seed_request(&key, "default")).await;
            (five, check, after)
        }
    })
    .await;
    assert_eq!(header(&five, "ratelimit-remaining"), Some("55"));
    assert_eq!(
        header(&check, "ratelimit-remaining"),
        Some("55"),
        "a check counts nothing"
    );
    assert_eq!(header(&after, "ratelimit-remaining"), Some("54"));
}

#[tokio::test]
async fn unknown_domains_and_unmatched_descriptors_are_ok_and_bare() {
    let server = TestServer::start(&seed_rules()).await;
    let mut client = server.client().await;
    let unknown = call(
        &mut client,
        request(
            "no-such-domain",
            vec![descriptor(&[("api_key", "k")]), descriptor(&[("x", "y")])],
        ),
    )
    .await;
    assert_eq!(code(&unknown), Code::Ok);
    assert_eq!(unknown.statuses.len(), 2);
    assert!(
        unknown
            .statuses
            .iter()
            .all(|s| s.code == Code::Ok as i32 && s.current_limit.is_none())
    );
    assert!(unknown.response_headers_to_add.is_empty());

    let mixed = call(
        &mut client,
        request(
            "mega-api",
            vec![
                descriptor(&[("remote_address", "10.0.0.1")]),
                descriptor(&[("api_key", "k-mixed"), ("bucket", "bulk")]),
            ],
        ),
    )
    .await;
    assert_eq!(
        mixed.statuses.len(),
        2,
        "one status per descriptor, in order"
    );
    assert_eq!(mixed.statuses[0].current_limit, None);
    assert_eq!(mixed.statuses[1].limit_remaining, 9);

    // Only a descriptor a rule limits gets counters: a flood of made-up values under a key no
    // rule matches, or of made-up domains, adds none.
    let (_, before) = get_async(server.http_addr, "/metrics").await;
    for i in 0..200 {
        let value = format!("made-up-{i}");
        let flood = request(
            "mega-api",
            vec![descriptor(&[("remote_address", value.as_str())])],
        );
        call(&mut client, flood).await;
        call(
            &mut client,
            request(&value, vec![descriptor(&[("api_key", "k")])]),
        )
        .await;
    }
    let (_, after) = get_async(server.http_addr, "/metrics").await;
    assert_eq!(
        metric(&after, "ratelimitd_counters_in_memory"),
        metric(&before, "ratelimitd_counters_in_memory")
    );
}

#[tokio::test]
async fn a_limit_in_the_request_overrides_the_rules() {
    let server = TestServer::start(&seed_rules()).await;
    let client = server.client().await;
    let responses = within_one_window(60, |attempt| {
        let mut client = client.clone();
        async move {
            let key = fresh_key(&format!("o{attempt}"));
            let mut responses = Vec::new();
            for _ in 0..3 {
                let mut req = seed_request(&key, "default");
                req.descriptors[0].limit = Some(RateLimitOverride {
                    requests_per_unit: 2,
                    unit: envoy_types::pb::envoy::r#type::v3::RateLimitUnit::Minute as i32,
                });
                responses.push(call(&mut client, req).await);
            }
            responses
        }
    })
    .await;
    assert_eq!(header(&responses[0], "ratelimit-limit"), Some("2"));
    assert_eq!(code(&responses[1]), Code::Ok);
    assert_eq!(code(&responses[2]), Code::OverLimit);
}

const REPLACES_AND_SHADOW: &str = r#"
domain: replaces
descriptors:
  - key: tenant
    rate_limit: {unit: hour, requests_per_unit: 1, name: tenant_hourly}
  - key: premium
    rate_limit:
      unit: hour
      requests_per_unit: 3
      replaces: [{name: tenant_hourly}]
  - key: trial
    shadow_mode: true
    rate_limit: {unit: hour, requests_per_unit: 1}
"#;

#[tokio::test]
async fn replaces_drops_the_named_limit_and_shadow_mode_never_blocks() {
    let server = TestServer::start(REPLACES_AND_SHADOW).await;
    let client = server.client().await;
    let (replaced, shadow) = within_one_window(3600, |attempt| {
        let mut client = client.clone();
        async move {
            let tenant = fresh_key(&format!("t{attempt}"));
            let both = || {
                request(
                    "replaces",
                    vec![
                        descriptor(&[("tenant", &tenant)]),
                        descriptor(&[("premium", &tenant)]),
                    ],
                )
            };
            let mut replaced = Vec::new();
            for _ in 0..4 {
                replaced.push(call(&mut client, both()).await);
            }
            let trial = fresh_key(&format!("s{attempt}"));
            let mut shadow = Vec::new();
            for _ in 0..3 {
                shadow.push(
                    call(
                        &mut client,
                        request("replaces", vec![descriptor(&[("trial", &trial)])]),
                    )
                    .await,
                );
            }
            (replaced, shadow)
        }
    })
    .await;
    // tenant_hourly (1/hour) is replaced: the premium limit (3/hour) alone applies.
    for r in &replaced[..3] {
        assert_eq!(code(r), Code::Ok);
        assert_eq!(
            r.statuses[0].current_limit, None,
            "the replaced limit is not counted"
        );
    }
    assert_eq!(code(&replaced[3]), Code::OverLimit);
    // Shadow mode: over the limit after the first call, reported, never enforced.
    for r in &shadow {
        assert_eq!(code(r), Code::Ok);
        assert_eq!(r.statuses[0].code, Code::Ok as i32);
    }
    assert_eq!(shadow[1].statuses[0].limit_remaining, 0);
    assert!(shadow.iter().all(|r| header(r, "retry-after").is_none()));
}

#[tokio::test]
async fn sixteen_tasks_on_one_key_admit_exactly_the_limit() {
    const RULES: &str = r#"
domain: contention
descriptors:
  - key: hot
    rate_limit: {unit: hour, requests_per_unit: 100}
"#;
    let server = TestServer::start(RULES).await;
    let client = server.client().await;
    let admitted = within_one_window(3600, |attempt| {
        let client = client.clone();
        async move {
            let key = fresh_key(&format!("hot{attempt}"));
            let mut tasks = Vec::new();
            for _ in 0..16 {
                let mut client = client.clone();
                let key = key.clone();
                tasks.push(tokio::spawn(async move {
                    let mut ok = 0;
                    for _ in 0..25 {
                        let r = call(
                            &mut client,
                            request("contention", vec![descriptor(&[("hot", &key)])]),
                        )
                        .await;
                        if r.overall_code == Code::Ok as i32 {
                            ok += 1;
                        }
                    }
                    ok
                }));
            }
            let mut admitted = 0;
            for task in tasks {
                admitted += task.await.expect("task ends");
            }
            admitted
        }
    })
    .await;
    assert_eq!(admitted, 100, "16 × 25 calls on one key, 100 per hour");
}
