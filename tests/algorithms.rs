//! The refill algorithms through real gRPC: a token bucket and a sliding window, what their
//! answers say (`Retry-After`, `RateLimit-Reset`), and where they differ from a fixed window.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{TestServer, call, descriptor, header_u64, request};
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitResponse;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use ratelimitd::app::{Backend, Settings};
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

/// The same answers with the counters in a real `redis-server`, shared by two replicas: the
/// bucket's time is Redis's own, so the second replica sees the first one's hits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_a_token_bucket_and_a_sliding_window_in_redis() {
    let redis = common::redis::RedisServer::start();
    let settings = || Settings {
        backend: Backend::Redis {
            target: Target::parse(&redis.url()).unwrap(),
            timeout: Duration::from_secs(2),
            on_error: OnBackendError::Deny,
            key_prefix: String::new(),
            tls: None,
            local_cache_bytes: 1 << 20,
        },
        ..Settings::default()
    };
    let first = TestServer::start_with(RULES, settings()).await;
    let second = TestServer::start_with(RULES, settings()).await;
    let (mut a, mut b) = (first.client().await, second.client().await);
    let bucket = common::fresh_key("tb-redis");
    assert_eq!(admitted(&mut a, "bucket", &bucket, 6).await, 6);
    assert_eq!(admitted(&mut b, "bucket", &bucket, 6).await, 4);
    let refused = ask(&mut a, "bucket", &bucket).await;
    assert_eq!(refused.overall_code, Code::OverLimit as i32);
    let retry_after = header_u64(&refused, "retry-after");
    assert!((1..=6).contains(&retry_after), "Retry-After {retry_after}");
    assert!((50..=60).contains(&header_u64(&refused, "ratelimit-reset")));
    let sliding = common::fresh_key("sw-redis");
    let spent = admitted(&mut a, "sliding", &sliding, 7).await
        + admitted(&mut b, "sliding", &sliding, 7).await;
    assert_eq!(spent, 10, "one limit across both replicas");
    first.stop().await;
    second.stop().await;
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
        "unit: day, requests_per_unit: 4000000000, algorithm: sliding_window",
    ))
    .unwrap_err();
    assert!(error.contains("cannot be counted exactly"), "{error}");
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
