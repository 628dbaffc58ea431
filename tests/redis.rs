//! The Redis backend against real `redis-server` processes: exact counts across replicas on
//! one Redis and on a three-master Cluster, keys that expire with their window, and faults
//! (Redis killed and restarted, a Cluster master killed) answered by the chosen policy within
//! the time bound.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::process::{Ratelimitd, wait_until};
use common::redis::{RedisCluster, RedisServer, cli};
use common::*;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;

const RULES: &str = "\
domain: shared
descriptors:
  - key: k
    rate_limit: {unit: minute, requests_per_unit: 50}
  - key: fast
    rate_limit: {unit: second, requests_per_unit: 5}
";

fn rules_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("shared.yaml"), RULES).unwrap();
    dir
}

fn replica(rules: &Path, backend: &str, flags: &[&str]) -> Ratelimitd {
    let mut all = vec!["--backend", backend];
    all.extend_from_slice(flags);
    Ratelimitd::start_with(rules, 0, &all)
}

fn shared(
    key: &str,
    value: &str,
) -> envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest {
    request("shared", vec![descriptor(&[(key, value)])])
}

/// Three ratelimitd processes counting in `backend`, and their gRPC addresses. The timeout is
/// generous: these tests are about exact counts, not about failing over.
fn three_replicas(rules: &Path, backend: &str) -> (Vec<Ratelimitd>, Vec<String>) {
    let replicas: Vec<Ratelimitd> = (0..3)
        .map(|_| replica(rules, backend, &["--backend-timeout-ms", "1000"]))
        .collect();
    let addrs = replicas.iter().map(|r| r.addr.clone()).collect();
    (replicas, addrs)
}

#[derive(Debug, Default, PartialEq, Eq, Clone, Copy)]
struct Tally {
    ok: usize,
    over: usize,
    errors: usize,
}

/// `calls` calls for `(k, value)` from each of `tasks` tasks per replica, all at once.
async fn hammer(replicas: &[String], value: &str, tasks: usize, calls: usize) -> Tally {
    let mut handles = Vec::new();
    for addr in replicas {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        for _ in 0..tasks {
            let mut client = Client::new(channel.clone());
            let value = value.to_string();
            handles.push(tokio::spawn(async move {
                let mut tally = Tally::default();
                for _ in 0..calls {
                    match client.should_rate_limit(shared("k", &value)).await {
                        Ok(answer) if answer.get_ref().overall_code == Code::Ok as i32 => {
                            tally.ok += 1
                        }
                        Ok(_) => tally.over += 1,
                        Err(_) => tally.errors += 1,
                    }
                }
                tally
            }));
        }
    }
    let mut total = Tally::default();
    for handle in handles {
        let tally = handle.await.unwrap();
        total.ok += tally.ok;
        total.over += tally.over;
        total.errors += tally.errors;
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_on_one_redis_admit_exactly_the_limit() {
    let redis = RedisServer::start();
    let rules = rules_dir();
    let (replicas, addrs) = three_replicas(rules.path(), &redis.url());
    let tally = within_one_window(60, |attempt| {
        let addrs = addrs.clone();
        async move { hammer(&addrs, &fresh_key(&format!("one-{attempt}")), 8, 20).await }
    })
    .await;
    assert_eq!(
        tally,
        Tally {
            ok: 50,
            over: 430,
            errors: 0
        }
    );
    // The counter lives in Redis, with an expiry no later than its window's end.
    let keys = cli(redis.port, &["--scan"]);
    let key = keys.lines().next().expect("a counter key in Redis");
    let ttl: i64 = cli(redis.port, &["ttl", key]).parse().unwrap();
    assert!((1..=60).contains(&ttl), "ttl {ttl} of {key}");
    assert!(
        key.starts_with('{') && key.len() <= 26,
        "a short key: {key}"
    );
    for replica in replicas {
        replica.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_on_a_cluster_admit_exactly_the_limit_for_each_key() {
    let cluster = RedisCluster::start();
    let rules = rules_dir();
    let (replicas, addrs) = three_replicas(rules.path(), &cluster.url());
    let tallies = within_one_window(60, |attempt| {
        let addrs = addrs.clone();
        async move {
            let keys: Vec<String> = (0..6)
                .map(|i| fresh_key(&format!("cluster-{attempt}-{i}")))
                .collect();
            let runs = keys.iter().map(|key| hammer(&addrs, key, 3, 20));
            futures_util::future::join_all(runs).await
        }
    })
    .await;
    for tally in tallies {
        assert_eq!(
            tally,
            Tally {
                ok: 50,
                over: 130,
                errors: 0
            }
        );
    }
    let spread = cluster.nodes.iter().filter(|n| n.dbsize() > 0).count();
    assert!(spread >= 2, "keys spread over the masters' slots");
    for replica in replicas {
        replica.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_gone_from_redis_once_their_window_ends() {
    let redis = RedisServer::start();
    let rules = rules_dir();
    let rl = replica(
        rules.path(),
        &redis.url(),
        &["--backend-timeout-ms", "1000"],
    );
    let mut client = Client::connect(format!("http://{}", rl.addr))
        .await
        .unwrap();
    for i in 0..20 {
        call(&mut client, shared("fast", &format!("key-{i}"))).await;
    }
    assert!(redis.dbsize() > 0);
    let dbsize = tokio::task::spawn_blocking(move || {
        wait_until(Duration::from_secs(4), "every 1-second key expired", || {
            (redis.dbsize() == 0).then_some(())
        });
        redis.dbsize()
    })
    .await
    .unwrap();
    assert_eq!(dbsize, 0);
    rl.stop();
}

/// A decision's answer and how long it took.
/// Sends signal `name` (`-STOP`, `-CONT`) to the process `pid` that this test started.
fn signal(pid: u32, name: &str) {
    let status = std::process::Command::new("kill")
        .args([name, &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill {name} {pid}");
}

async fn timed(client: &mut Client, value: &str) -> (Result<i32, tonic::Code>, Duration) {
    let started = Instant::now();
    let answer = client
        .should_rate_limit(shared("k", value))
        .await
        .map(|a| a.into_inner().overall_code)
        .map_err(|s| s.code());
    (answer, started.elapsed())
}

/// The bound a decision must answer within while Redis is gone: the backend timeout (50 ms in
/// these tests, so that the first call, which also loads the script, fits on a loaded
/// machine), with room for a loaded 2-core machine.
const ANSWER_BOUND: Duration = Duration::from_millis(500);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_then_restarted_each_policy_answers_in_time_then_redis_counts_again() {
    for policy in ["allow", "deny", "local"] {
        let redis = RedisServer::start();
        let rules = rules_dir();
        let rl = replica(
            rules.path(),
            &redis.url(),
            &["--on-backend-error", policy, "--backend-timeout-ms", "50"],
        );
        let mut client = Client::connect(format!("http://{}", rl.addr))
            .await
            .unwrap();
        let before = fresh_key("before");
        assert_eq!(timed(&mut client, &before).await.0, Ok(Code::Ok as i32));
        assert_eq!(redis.dbsize(), 1);

        let port = redis.kill();
        let down = fresh_key(&format!("down-{policy}"));
        let mut answers = Vec::new();
        for _ in 0..60 {
            let (answer, took) = timed(&mut client, &down).await;
            assert!(took < ANSWER_BOUND, "{policy}: took {took:?}");
            answers.push(answer.unwrap_or_else(|code| panic!("{policy}: an error {code:?}")));
        }
        let ok = answers.iter().filter(|&&c| c == Code::Ok as i32).count();
        let expected_ok = match policy {
            "allow" => 60,
            "deny" => 0,
            _ => 50, // counted in memory, limit 50
        };
        assert_eq!(ok, expected_ok, "{policy}: {answers:?}");
        let (status, health) = http_get(&rl.http_addr, "/healthcheck");
        assert_eq!(status, 200);
        assert!(health.contains("Redis down"), "{health}");
        let scrape = http_get(&rl.http_addr, "/metrics").1;
        assert_eq!(metric(&scrape, "ratelimitd_backend_up"), 0.0);
        assert_eq!(metric(&scrape, "ratelimitd_backend_outages_total"), 1.0);
        assert!(metric(&scrape, "ratelimitd_backend_fallback_decisions_total") >= 60.0);

        // Back on the same port: Redis counts again, without restarting ratelimitd.
        let redis = RedisServer::start_on(port, &[]);
        let back = fresh_key("back");
        let mut counted = false;
        for _ in 0..100 {
            let (answer, took) = timed(&mut client, &back).await;
            assert!(took < ANSWER_BOUND);
            assert!(answer.is_ok());
            // Counted in Redis, and known to be: a call that came back after its decision
            // gave up (on a loaded machine) counts in Redis, but does not end the outage.
            let scrape = http_get(&rl.http_addr, "/metrics").1;
            if redis.dbsize() > 0 && metric(&scrape, "ratelimitd_backend_up") == 1.0 {
                counted = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(counted, "{policy}: Redis never counted again");
        rl.log
            .wait_for("Redis answers again", Duration::from_secs(5));
        rl.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_master_killed_never_hangs_a_decision() {
    let mut cluster = RedisCluster::start();
    let rules = rules_dir();
    let rl = replica(
        rules.path(),
        &cluster.url(),
        &["--on-backend-error", "deny", "--backend-timeout-ms", "50"],
    );
    let mut client = Client::connect(format!("http://{}", rl.addr))
        .await
        .unwrap();
    // The client opens its connection to each master on first use: wait until all answer
    // (a slow first call falls to `deny`, as it should).
    let mut healthy = 0;
    for i in 0..200 {
        let (answer, _) = timed(&mut client, &fresh_key(&format!("up-{i}"))).await;
        healthy = if answer == Ok(Code::Ok as i32) {
            healthy + 1
        } else {
            0
        };
        if healthy == 20 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(healthy, 20, "the Cluster answers before a master is killed");
    let victim = cluster.nodes.remove(1);
    victim.kill();
    let mut over = 0;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(3) {
        let (answer, took) = timed(&mut client, &fresh_key("after")).await;
        assert!(took < ANSWER_BOUND, "took {took:?}");
        match answer {
            Ok(code) if code == Code::OverLimit as i32 => over += 1,
            Ok(_) => {}
            Err(code) => panic!("an error instead of the policy's answer: {code:?}"),
        }
    }
    assert!(
        over > 0,
        "with a master gone, some decisions fall to `deny`"
    );
    let scrape = http_get(&rl.http_addr, "/metrics").1;
    assert!(metric(&scrape, "ratelimitd_backend_errors_total") > 0.0);
    rl.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_stops_answering_is_waited_for_only_the_timeout() {
    let redis = RedisServer::start();
    let rules = rules_dir();
    let rl = replica(
        rules.path(),
        &redis.url(),
        &["--on-backend-error", "allow", "--backend-timeout-ms", "50"],
    );
    let mut client = Client::connect(format!("http://{}", rl.addr))
        .await
        .unwrap();
    assert_eq!(
        timed(&mut client, &fresh_key("before")).await.0,
        Ok(Code::Ok as i32)
    );
    let pid = redis.process.child.id();
    let signal = |name: &str| signal(pid, name);
    // Stopped, not gone: the connection stays open and nothing answers on it.
    signal("-STOP");
    let slow = fresh_key("slow");
    for _ in 0..20 {
        let (answer, took) = timed(&mut client, &slow).await;
        assert!(took < ANSWER_BOUND, "took {took:?}");
        assert_eq!(answer, Ok(Code::Ok as i32), "allow answers OK");
    }
    signal("-CONT");
    let back = fresh_key("resumed");
    let before = redis.dbsize();
    let mut counted = false;
    for _ in 0..50 {
        let (answer, took) = timed(&mut client, &back).await;
        assert!(took < ANSWER_BOUND && answer.is_ok());
        if redis.dbsize() > before {
            counted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(counted, "Redis counts again once it answers");
    rl.stop();
}

/// While Redis is away, a replica counting locally admits only its share of what Redis last
/// said was left, not a whole limit from zero; when Redis answers again, what it admitted is
/// written back, so the window as a whole never admits more than the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counting_locally_takes_a_share_of_what_is_left_and_writes_it_back() {
    let redis = RedisServer::start();
    let rules = rules_dir();
    // Two replicas count in this Redis (the other is idle here): this one's share is half.
    let rl = replica(
        rules.path(),
        &redis.url(),
        &[
            "--on-backend-error",
            "local",
            // Generous, so that Redis answers every call before it is stopped, even on a busy
            // machine: the share is computed from what Redis said.
            "--backend-timeout-ms",
            "200",
            "--replicas",
            "2",
        ],
    );
    let client = Client::connect(format!("http://{}", rl.addr))
        .await
        .unwrap();
    let pid = redis.process.child.id();
    let (before, during, after) = within_one_window(60, |_| {
        let mut client = client.clone();
        let log = &rl.log;
        async move {
            let key = fresh_key("share");
            let admitted =
                |answer: (Result<i32, tonic::Code>, Duration)| answer.0 == Ok(Code::Ok as i32);
            let mut before = 0;
            for _ in 0..20 {
                before += u32::from(admitted(timed(&mut client, &key).await));
            }
            // Redis said 20 of 50: 30 left, this replica's share 15.
            signal(pid, "-STOP");
            let mut during = 0;
            for _ in 0..30 {
                during += u32::from(admitted(timed(&mut client, &key).await));
            }
            signal(pid, "-CONT");
            // The first answer from Redis again starts the write-back: call until it has landed.
            let mut after = 0;
            let mut written_back = false;
            for _ in 0..200 {
                after += u32::from(admitted(timed(&mut client, &key).await));
                let lines = log.all(Duration::from_millis(20));
                if lines.iter().any(|l| l.contains("written back to Redis")) {
                    written_back = true;
                    break;
                }
            }
            assert!(written_back, "the local hits were written back");
            for _ in 0..40 {
                after += u32::from(admitted(timed(&mut client, &key).await));
            }
            (before, during, after)
        }
    })
    .await;
    assert_eq!(before, 20);
    assert_eq!(during, 15, "one share of the 30 left, not 50 from zero");
    // Calls that timed out while Redis was stopped may still run there once it resumes: they
    // count twice, so at most a few fewer are admitted, never more.
    let total = before + during + after;
    assert!(
        (47..=50).contains(&total),
        "admitted {total} of 50 in the window"
    );
    rl.stop();
}
