//! The local over-limit cache (`--local-cache-bytes`) against a real `redis-server`: a key over
//! its limit is refused without a Redis call (Redis's `INFO commandstats` says so) and with
//! Redis's own answer, passes again when Redis would admit it (a window's end, a bucket's
//! refill), a reload that raises the limit is honoured at once, and a cache too small for the
//! keys keeps every answer right.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::process::{Ratelimitd, wait_until};
use common::redis::{RedisServer, script_calls};
use common::*;
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitResponse;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;

const RULES: &str = "\
domain: cache
descriptors:
  - key: minute
    rate_limit: {unit: minute, requests_per_unit: 3}
  - key: two
    rate_limit: {unit: second, unit_multiplier: 2, requests_per_unit: 2}
  - key: bucket
    rate_limit: {unit: second, requests_per_unit: 2, algorithm: token_bucket}
  - key: sliding
    rate_limit: {unit: second, unit_multiplier: 2, requests_per_unit: 2, algorithm: sliding_window}
";

fn rules_dir(rules: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cache.yaml"), rules).unwrap();
    dir
}

/// A replica counting in `redis`, with `flags`.
fn replica(rules: &Path, redis: &RedisServer, flags: &[&str]) -> Ratelimitd {
    let url = redis.url();
    let mut all = vec!["--backend", url.as_str(), "--backend-timeout-ms", "1000"];
    all.extend_from_slice(flags);
    Ratelimitd::start_with(rules, 0, &all)
}

async fn client(rl: &Ratelimitd) -> Client {
    Client::connect(format!("http://{}", rl.addr))
        .await
        .unwrap()
}

async fn ask(client: &mut Client, key: &str, value: &str) -> RateLimitResponse {
    call(client, request("cache", vec![descriptor(&[(key, value)])])).await
}

fn is_ok(answer: &RateLimitResponse) -> bool {
    answer.overall_code == Code::Ok as i32
}

fn scrape(rl: &Ratelimitd) -> String {
    http_get(&rl.http_addr, "/metrics").1
}

/// Refusals the cache answered so far.
fn cached(rl: &Ratelimitd) -> f64 {
    metric(&scrape(rl), "ratelimitd_local_cache_refusals_total")
}

/// The answer's headers by name, and its one status, with the times in whole seconds.
fn told(answer: &RateLimitResponse) -> (Vec<(String, String)>, i32, u32, u32) {
    let headers = answer
        .response_headers_to_add
        .iter()
        .map(|h| (h.key.to_ascii_lowercase(), h.value.clone()))
        .collect();
    let status = &answer.statuses[0];
    (
        headers,
        status.code,
        status.limit_remaining,
        status
            .current_limit
            .as_ref()
            .map_or(0, |l| l.requests_per_unit),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_over_its_limit_is_refused_without_a_redis_call_and_as_redis_answers() {
    let redis = RedisServer::start();
    let rules = rules_dir(RULES);
    let rl = replica(rules.path(), &redis, &[]);
    let c = client(&rl).await;
    let (by_redis, cached_answers, calls) = within_one_window(60, |attempt| {
        let mut c = c.clone();
        let redis = &redis;
        async move {
            let key = fresh_key(&format!("over-{attempt}"));
            for _ in 0..3 {
                assert!(is_ok(&ask(&mut c, "minute", &key).await));
            }
            let by_redis = ask(&mut c, "minute", &key).await;
            assert!(!is_ok(&by_redis), "the 4th of 3 is refused by Redis");
            let before = script_calls(redis.port);
            let mut answers = Vec::new();
            for _ in 0..50 {
                answers.push(ask(&mut c, "minute", &key).await);
            }
            (by_redis, answers, script_calls(redis.port) - before)
        }
    })
    .await;
    assert_eq!(calls, 0, "50 refusals of a full key made no Redis call");
    let (headers, code, remaining, limit) = told(&by_redis);
    for answer in &cached_answers {
        let (cached_headers, cached_code, cached_remaining, cached_limit) = told(answer);
        assert!(!is_ok(answer));
        assert_eq!(
            (cached_code, cached_remaining, cached_limit),
            (code, remaining, limit)
        );
        let names = |h: &[(String, String)]| h.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
        assert_eq!(names(&cached_headers), names(&headers));
        for ((name, value), (_, cached_value)) in headers.iter().zip(&cached_headers) {
            match name.as_str() {
                // Times move on between the answers by a second at most.
                "ratelimit-reset" | "retry-after" => {
                    let (a, b): (i64, i64) =
                        (value.parse().unwrap(), cached_value.parse().unwrap());
                    assert!((a - b).abs() <= 1, "{name}: Redis said {a}, the cache {b}");
                }
                _ => assert_eq!(value, cached_value, "{name}"),
            }
        }
    }
    let text = scrape(&rl);
    assert!(metric(&text, "ratelimitd_local_cache_refusals_total") >= 50.0);
    let series = "ratelimit_service_rate_limit_over_limit_with_local_cache{domain=\"cache\",key1=\"minute\",key2=\"\",window=\"1m\"}";
    assert!(metric(&text, series) >= 50.0, "{series}");
    rl.stop();
}

/// Asks for `(key, value)` every `every` until it is admitted, failing after `within`; when it
/// was admitted.
async fn until_admitted(
    c: &mut Client,
    key: &str,
    value: &str,
    every: Duration,
    within: Duration,
) -> SystemTime {
    let deadline = Instant::now() + within;
    loop {
        assert!(Instant::now() < deadline, "{key} never admitted again");
        if is_ok(&ask(c, key, value).await) {
            return SystemTime::now();
        }
        tokio::time::sleep(every).await;
    }
}

/// Waits until just after a `seconds`-long window began; when the next one begins.
async fn start_of_a_window(seconds: u64) -> SystemTime {
    let since = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap();
    let now = since(SystemTime::now());
    let next = (now.as_secs() / seconds + 1) * seconds;
    tokio::time::sleep(Duration::from_secs(next) - now + Duration::from_millis(20)).await;
    UNIX_EPOCH + Duration::from_secs(next + seconds)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_refusal_ends_with_its_window_and_a_bucket_s_when_it_refills() {
    let redis = RedisServer::start();
    let rules = rules_dir(RULES);
    let rl = replica(rules.path(), &redis, &[]);
    let mut c = client(&rl).await;

    // A fixed window of 2 per 2 seconds: refused here until the window ends, then Redis admits.
    let key = fresh_key("edge");
    let edge = start_of_a_window(2).await;
    assert!(is_ok(&ask(&mut c, "two", &key).await));
    assert!(is_ok(&ask(&mut c, "two", &key).await));
    assert!(!is_ok(&ask(&mut c, "two", &key).await));
    let (before, cached_before) = (script_calls(redis.port), cached(&rl));
    let passed_at = until_admitted(
        &mut c,
        "two",
        &key,
        Duration::from_millis(20),
        Duration::from_secs(5),
    )
    .await;
    let late = passed_at
        .duration_since(edge)
        .expect("admitted before its window ended");
    assert!(
        late < Duration::from_millis(500),
        "admitted {late:?} after its window ended"
    );
    assert_eq!(
        script_calls(redis.port) - before,
        1,
        "only the admitted request asked Redis"
    );
    assert!(cached(&rl) - cached_before >= 10.0);

    // A token bucket of 2 a second: refused here until one token is back (about 0.5 s).
    let key = fresh_key("bucket");
    assert!(is_ok(&ask(&mut c, "bucket", &key).await));
    assert!(is_ok(&ask(&mut c, "bucket", &key).await));
    let refused = ask(&mut c, "bucket", &key).await;
    let refused_at = Instant::now();
    assert!(!is_ok(&refused));
    let (before, cached_before) = (script_calls(redis.port), cached(&rl));
    until_admitted(
        &mut c,
        "bucket",
        &key,
        Duration::from_millis(10),
        Duration::from_secs(5),
    )
    .await;
    let waited = refused_at.elapsed();
    assert!(
        waited < Duration::from_millis(800),
        "admitted {waited:?} after the refusal; a token comes back every 500 ms"
    );
    assert!(cached(&rl) - cached_before >= 5.0);
    assert!(
        script_calls(redis.port) - before <= 3,
        "Redis asked only once the token could be back"
    );
    rl.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sliding_window_is_refused_here_until_its_estimate_has_room() {
    let redis = RedisServer::start();
    let rules = rules_dir(RULES);
    let rl = replica(rules.path(), &redis, &[]);
    let mut c = client(&rl).await;
    // 2 per 2 s: two hits stay whole until their window ends, then slide out over the next; a
    // third passes once half of them have, between 1 and 3 s after they came.
    let key = fresh_key("sliding");
    assert!(is_ok(&ask(&mut c, "sliding", &key).await));
    assert!(is_ok(&ask(&mut c, "sliding", &key).await));
    let refused_at = Instant::now();
    assert!(!is_ok(&ask(&mut c, "sliding", &key).await));
    let (before, cached_before) = (script_calls(redis.port), cached(&rl));
    until_admitted(
        &mut c,
        "sliding",
        &key,
        Duration::from_millis(20),
        Duration::from_secs(6),
    )
    .await;
    let waited = refused_at.elapsed();
    assert!(
        waited > Duration::from_millis(900) && waited < Duration::from_millis(3_500),
        "admitted {waited:?} after the refusal"
    );
    assert!(cached(&rl) - cached_before >= 20.0);
    assert!(
        script_calls(redis.port) - before <= 3,
        "Redis asked only once there was room"
    );
    rl.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_raises_the_limit_is_honoured_at_once() {
    let redis = RedisServer::start();
    let rules = rules_dir(RULES);
    let rl = replica(rules.path(), &redis, &[]);
    let mut c = client(&rl).await;
    let (key, window) = within_one_window(60, |attempt| {
        let mut c = c.clone();
        let rl = &rl;
        async move {
            let key = fresh_key(&format!("raise-{attempt}"));
            for _ in 0..3 {
                assert!(is_ok(&ask(&mut c, "minute", &key).await));
            }
            assert!(!is_ok(&ask(&mut c, "minute", &key).await));
            let before = cached(rl);
            assert!(!is_ok(&ask(&mut c, "minute", &key).await));
            assert_eq!(cached(rl) - before, 1.0, "refused by the cache");
            (key, window_index(60))
        }
    })
    .await;
    std::fs::write(
        rules.path().join("cache.yaml"),
        RULES.replace("requests_per_unit: 3}", "requests_per_unit: 10}"),
    )
    .unwrap();
    wait_until(Duration::from_secs(5), "the raised limit loaded", || {
        http_get(&rl.http_addr, "/rlconfig")
            .1
            .contains("requests_per_unit=10")
            .then_some(())
    });
    let answer = ask(&mut c, "minute", &key).await;
    assert!(
        is_ok(&answer),
        "the 4th counted of a raised limit of 10 passes"
    );
    let (_, _, remaining, limit) = told(&answer);
    assert_eq!(limit, 10);
    if window_index(60) == window {
        assert_eq!(remaining, 6, "3 counted before, and this one");
    }
    rl.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_too_small_for_the_keys_keeps_every_answer_right() {
    let redis = RedisServer::start();
    let rules = rules_dir(RULES);
    let rl = replica(rules.path(), &redis, &["--local-cache-bytes", "1KiB"]);
    let c = client(&rl).await;
    let (answers, calls) = within_one_window(60, |attempt| {
        let mut c = c.clone();
        let redis = &redis;
        async move {
            let keys: Vec<String> = (0..30)
                .map(|i| fresh_key(&format!("small-{attempt}-{i}")))
                .collect();
            let mut answers = Vec::new();
            let mut calls = 0;
            for round in 0..8 {
                let before = script_calls(redis.port);
                for key in &keys {
                    answers.push((round, is_ok(&ask(&mut c, "minute", key).await)));
                }
                if round >= 3 {
                    calls += script_calls(redis.port) - before;
                }
            }
            (answers, calls)
        }
    })
    .await;
    for (round, ok) in answers {
        assert_eq!(ok, round < 3, "round {round}: 3 a minute per key");
    }
    assert!(
        calls > 0,
        "30 full keys do not fit in a cache of 1 KiB: evicted ones ask Redis"
    );
    let entries = metric(&scrape(&rl), "ratelimitd_local_cache_entries");
    assert!(entries <= 30.0, "{entries} entries in 1 KiB");
    rl.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_cache_off_every_refusal_asks_redis() {
    let redis = RedisServer::start();
    let rules = rules_dir(RULES);
    let rl = replica(rules.path(), &redis, &["--local-cache-bytes", "0"]);
    let c = client(&rl).await;
    let calls = within_one_window(60, |attempt| {
        let mut c = c.clone();
        let redis = &redis;
        async move {
            let key = fresh_key(&format!("off-{attempt}"));
            for _ in 0..4 {
                ask(&mut c, "minute", &key).await;
            }
            let before = script_calls(redis.port);
            for _ in 0..10 {
                assert!(!is_ok(&ask(&mut c, "minute", &key).await));
            }
            script_calls(redis.port) - before
        }
    })
    .await;
    assert_eq!(calls, 10);
    assert_eq!(cached(&rl), 0.0);
    rl.stop();
}
