//! The refill algorithms through real gRPC: a token bucket and a sliding window, what their
//! answers say (`Retry-After`, `RateLimit-Reset`), and where they differ from a fixed window.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{TestServer, call, descriptor, header_u64, request};
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitResponse;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use ratelimitd::app::{Backend, InitialRules, Listeners, Settings};
use ratelimitd::limiter::{OnBackendError, Target};
use ratelimitd::rules::Algorithm;

const RULES: &str = "
domain: algo
descriptors:
  - key: bucket
    rate_limit: {unit: minute, requests_per_unit: 10, algorithm: token_bucket}
  - key: sliding
    rate_limit: {unit: second, unit_multiplier: 10, requests_per_unit: 10, algorithm: sliding_window}
  - key: fixed
    rate_limit: {unit: second, unit_multiplier: 10, requests_per_unit: 10}
  - key: plain
    rate_limit: {unit: minute, requests_per_unit: 10}
";

/// One request for `(key, value)` in domain `algo`.
async fn ask(client: &mut common::Client, key: &str, value: &str) -> RateLimitResponse {
    call(client, request("algo", vec![descriptor(&[(key, value)])])).await
}

/// Sends `n` requests for `(key, value)`; how many were admitted.
async fn admitted(client: &mut common::Client, key: &str, value: &str, n: usize) -> usize {
    let mut ok = 0;
    for _ in 0..n {
        let answer = ask(client, key, value).await;
        ok += usize::from(answer.overall_code == Code::Ok as i32);
    }
    ok
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_bucket_refuses_the_eleventh_and_admits_one_after_retry_after() {
    let server = TestServer::start(RULES).await;
    let mut client = server.client().await;
    let key = common::fresh_key("tb");
    assert_eq!(admitted(&mut client, "bucket", &key, 10).await, 10);
    let refused = ask(&mut client, "bucket", &key).await;
    assert_eq!(refused.overall_code, Code::OverLimit as i32);
    let retry_after = header_u64(&refused, "retry-after");
    let reset = header_u64(&refused, "ratelimit-reset");
    assert!((1..=6).contains(&retry_after), "Retry-After {retry_after}");
    assert!((50..=60).contains(&reset), "RateLimit-Reset {reset}");
    assert_eq!(header_u64(&refused, "ratelimit-remaining"), 0);
    let status = &refused.statuses[0];
    let until_reset = status.duration_until_reset.expect("duration_until_reset");
    assert!((50..=60).contains(&until_reset.seconds), "{until_reset:?}");

    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    assert_eq!(
        admitted(&mut client, "bucket", &key, 3).await,
        1,
        "after Retry-After exactly one more passes"
    );
    server.stop().await;
}

/// Seconds past the last 10-second edge, by the wall clock.
fn into_ten_seconds() -> f64 {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    (now.as_millis() % 10_000) as f64 / 1000.0
}

/// Sleeps until `at` seconds past a 10-second edge (the next such moment).
async fn sleep_until_into_ten_seconds(at: f64) {
    let now = into_ten_seconds();
    let wait = if now < at { at - now } else { 10.0 - now + at };
    tokio::time::sleep(Duration::from_secs_f64(wait)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sliding_window_spent_before_an_edge_admits_little_after_it_where_a_fixed_one_admits_all()
{
    let server = TestServer::start(RULES).await;
    let mut client = server.client().await;
    // Bounded: three tries for a run that stays clear of the edge on a busy machine.
    for _ in 0..3 {
        let sliding = common::fresh_key("sw");
        let fixed = common::fresh_key("fw");
        sleep_until_into_ten_seconds(8.0).await;
        let spent_sliding = admitted(&mut client, "sliding", &sliding, 10).await;
        let spent_fixed = admitted(&mut client, "fixed", &fixed, 10).await;
        if into_ten_seconds() > 9.5 {
            continue;
        }
        assert_eq!((spent_sliding, spent_fixed), (10, 10));
        sleep_until_into_ten_seconds(0.3).await;
        let after_sliding = admitted(&mut client, "sliding", &sliding, 10).await;
        let after_fixed = admitted(&mut client, "fixed", &fixed, 10).await;
        if into_ten_seconds() > 1.5 {
            continue;
        }
        // At 0.3–1.5 s of the new window, 85–97 % of the ten still weighs: at most 1 fits.
        assert!(after_sliding <= 2, "sliding admitted {after_sliding}");
        assert_eq!(after_fixed, 10, "the fixed window starts again from 0");
        server.stop().await;
        return;
    }
    panic!("no run stayed clear of the window edges in three tries");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_algorithm_applies_to_limits_that_name_none() {
    let settings = Settings {
        default_algorithm: Algorithm::TokenBucket,
        ..Settings::default()
    };
    let server = TestServer::start_with(RULES, settings).await;
    let mut client = server.client().await;
    let key = common::fresh_key("plain");
    assert_eq!(admitted(&mut client, "plain", &key, 12).await, 10);
    let refused = ask(&mut client, "plain", &key).await;
    // A fixed minute would say up to 60 s; a bucket of 10 a minute refills one in 6 s.
    assert!(header_u64(&refused, "retry-after") <= 6);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_mode_refuses_refill_rules_at_start_naming_the_rule() {
    let domain = ratelimitd::config::parse_domain(std::path::Path::new("algo.yaml"), RULES)
        .expect("the rules load");
    let rules = ratelimitd::rules::RuleSet::new(vec![domain]);
    // No Redis on this port: the refusal does not depend on reaching it.
    let unused = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = unused.local_addr().unwrap().port();
    drop(unused);
    let settings = Settings {
        backend: Backend::Redis {
            target: Target::parse(&format!("redis://127.0.0.1:{port}")).unwrap(),
            timeout: Duration::from_millis(50),
            on_error: OnBackendError::Allow,
            key_prefix: String::new(),
        },
        ..Settings::default()
    };
    let listeners = Listeners {
        grpc: tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        http: None,
        metrics: None,
    };
    let initial = InitialRules {
        rules,
        hash: "test".to_string(),
    };
    let outcome = tokio::time::timeout(
        Duration::from_secs(20),
        ratelimitd::app::serve(settings, initial, listeners, std::future::pending()),
    )
    .await
    .expect("serve returns at once with an error");
    let error = outcome
        .expect_err("refill rules are refused in Redis mode")
        .to_string();
    assert!(error.contains("algo.yaml"), "{error}");
    assert!(error.contains("bucket"), "{error}");
    assert!(error.contains("--backend memory"), "{error}");
}

#[test]
fn burst_is_for_token_buckets_and_a_bucket_refills_within_the_longest_window() {
    let load = |yaml: &str| {
        ratelimitd::config::parse_domain(std::path::Path::new("t.yaml"), yaml)
            .map(|_| ())
            .map_err(|errors| errors[0].to_string())
    };
    let limit = |fields: &str| {
        format!("domain: d\ndescriptors:\n  - key: k\n    rate_limit: {{{fields}}}\n")
    };
    assert_eq!(
        load(&limit(
            "unit: minute, requests_per_unit: 10, algorithm: token_bucket, burst: 30"
        )),
        Ok(())
    );
    assert_eq!(
        load(&limit("unit: minute, requests_per_unit: 10, burst: 30")),
        Ok(()),
        "with no algorithm, burst waits for --default-algorithm"
    );
    assert_eq!(
        load(&limit(
            "unit: minute, requests_per_unit: 10, algorithm: sliding_window, burst: 30"
        )),
        Err("t.yaml:4:89: `burst` is for `algorithm: token_bucket` only".to_string())
    );
    let error = load(&limit(
        "unit: year, requests_per_unit: 1, algorithm: token_bucket, burst: 1000",
    ))
    .unwrap_err();
    assert!(error.contains("to refill from empty"), "{error}");
    let error = load(&limit(
        "unit: minute, requests_per_unit: 1, algorithm: leaky",
    ))
    .unwrap_err();
    assert!(
        error.contains(
            r#"unknown algorithm "leaky" (expected fixed_window|sliding_window|token_bucket)"#
        ),
        "{error}"
    );
}
