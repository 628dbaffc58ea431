//! The Redis backend against real `redis-server` processes: exact counts across replicas on
//! one Redis and on a three-master Cluster, keys that expire with their window, and faults
//! (Redis killed and restarted, a Cluster master killed) answered by the chosen policy within
//! the time bound.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::process::{Ratelimitd, wait_until};
use common::redis::{RedisCluster, RedisServer, cli, script_calls};
use common::*;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};

const RULES: &str = "\
domain: shared
descriptors:
  - key: k
    rate_limit: {unit: hour, requests_per_unit: 50}
  - key: fast
    rate_limit: {unit: second, requests_per_unit: 5}
  - key: busy
    rate_limit: {unit: hour, requests_per_unit: 1000}
  - key: stopped
    rate_limit: {unit: hour, requests_per_unit: 5000}
  - key: few
    rate_limit: {unit: hour, requests_per_unit: 4}
  - key: few_bucket
    rate_limit: {unit: hour, requests_per_unit: 4, algorithm: token_bucket}
  - key: few_sliding
    rate_limit: {unit: hour, requests_per_unit: 4, algorithm: sliding_window}
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

fn shared(key: &str, value: &str) -> RateLimitRequest {
    request("shared", vec![descriptor(&[(key, value)])])
}

#[derive(Debug, Default, PartialEq, Eq, Clone, Copy)]
struct Tally {
    ok: usize,
    over: usize,
    errors: usize,
}

/// One busy load: `requests` calls for one descriptor from three load generators at once, each
/// a thread of its own with `in_flight` calls outstanding, spread over every replica: with
/// three replicas and Redis, seven busy processes and threads on this machine's two cores.
struct BusyLoad<'a> {
    replicas: &'a [String],
    /// The descriptor: `(key, value)`.
    key: &'static str,
    value: String,
    requests: usize,
    in_flight: usize,
}

/// Runs `load`, and `meanwhile` on this thread with the count of calls sent so far.
fn busy_load(load: BusyLoad<'_>, meanwhile: impl FnOnce(&std::sync::atomic::AtomicUsize)) -> Tally {
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let generators: Vec<_> = (0..3)
        .map(|generator| {
            let replicas = load.replicas.to_vec();
            let request = shared(load.key, &load.value);
            let (sent, requests, in_flight) = (sent.clone(), load.requests, load.in_flight);
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                runtime.block_on(generate(
                    replicas, request, sent, requests, in_flight, generator,
                ))
            })
        })
        .collect();
    meanwhile(&sent);
    let mut total = Tally::default();
    for generator in generators {
        let tally = generator.join().unwrap();
        total.ok += tally.ok;
        total.over += tally.over;
        total.errors += tally.errors;
    }
    total
}

/// One load generator of [`busy_load`]: its own connection to each replica, `in_flight` tasks
/// taking turns over the replicas until `requests` calls have been sent by all generators.
async fn generate(
    replicas: Vec<String>,
    request: envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest,
    sent: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    requests: usize,
    in_flight: usize,
    generator: usize,
) -> Tally {
    let mut clients = Vec::new();
    for addr in &replicas {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        clients.push(Client::new(channel));
    }
    let tasks: Vec<_> = (0..in_flight)
        .map(|task| {
            let (mut clients, request, sent) = (clients.clone(), request.clone(), sent.clone());
            tokio::spawn(async move {
                let mut tally = Tally::default();
                let mut turn = generator + task;
                while sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < requests {
                    let count = clients.len();
                    let client = &mut clients[turn % count];
                    turn += 1;
                    match client.should_rate_limit(request.clone()).await {
                        Ok(answer) if answer.get_ref().overall_code == Code::Ok as i32 => {
                            tally.ok += 1
                        }
                        Ok(_) => tally.over += 1,
                        Err(_) => tally.errors += 1,
                    }
                }
                tally
            })
        })
        .collect();
    let mut total = Tally::default();
    for task in tasks {
        let tally = task.await.unwrap();
        total.ok += tally.ok;
        total.over += tally.over;
        total.errors += tally.errors;
    }
    total
}

/// Ten runs of [`busy_load`] against replicas with default settings (a 10 ms backend timeout,
/// `--on-backend-error local`): every run admits exactly the limit of 1,000 among 3,000 calls,
/// with no fault injected.
fn ten_busy_runs_admit_exactly_the_limit(replicas: &[Ratelimitd], name: &str) {
    let _turn = one_busy_test_at_a_time();
    let addrs = grpc_addrs(replicas);
    for run in 0..10 {
        let tally = within_one_window_blocking(3600, || {
            let load = BusyLoad {
                replicas: &addrs,
                key: "busy",
                value: fresh_key(&format!("{name}-{run}")),
                requests: 3_000,
                in_flight: 16,
            };
            busy_load(load, |_| {})
        });
        assert_eq!(
            tally,
            Tally {
                ok: 1_000,
                over: 2_000,
                errors: 0
            },
            "{name}: run {run} of 10; the replicas' backend metrics: {:?}",
            replicas.iter().map(backend_metrics).collect::<Vec<_>>()
        );
    }
    // Exact with the local over-limit cache on (the default), and the cache did answer.
    let cached: f64 = replicas
        .iter()
        .map(|r| {
            metric(
                &http_get(&r.http_addr, "/metrics").1,
                "ratelimitd_local_cache_refusals_total",
            )
        })
        .sum();
    assert!(cached > 0.0, "{name}: no refusal came from the local cache");
}

/// One busy test at a time: each makes the machine as busy as it is meant to be.
fn one_busy_test_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The `ratelimitd_backend_*` lines of a replica's metrics, and what it logged of Redis.
fn backend_metrics(replica: &Ratelimitd) -> Vec<String> {
    let scrape = http_get(&replica.http_addr, "/metrics").1;
    let metrics = scrape
        .lines()
        .filter(|l| l.starts_with("ratelimitd_backend_"))
        .map(str::to_string);
    let log = replica.log.all(Duration::from_millis(50));
    let warnings = log.into_iter().filter(|l| l.contains("Redis"));
    metrics.chain(warnings).collect()
}

/// The calls Redis failed so far for `replica` (`ratelimitd_backend_errors_total`).
fn backend_errors(replica: &Ratelimitd) -> u64 {
    let scrape = http_get(&replica.http_addr, "/metrics").1;
    scrape
        .lines()
        .find_map(|l| l.strip_prefix("ratelimitd_backend_errors_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("the metrics count backend errors")
}

/// The gRPC addresses of `replicas`.
fn grpc_addrs(replicas: &[Ratelimitd]) -> Vec<String> {
    replicas.iter().map(|r| r.addr.clone()).collect()
}

/// Stops every replica, by PID.
fn stop_all(replicas: Vec<Ratelimitd>) {
    for replica in replicas {
        replica.stop();
    }
}

/// Three replicas counting in `backend`, each with `flags`.
fn three_replicas(rules: &Path, backend: &str, flags: &[&str]) -> Vec<Ratelimitd> {
    (0..3).map(|_| replica(rules, backend, flags)).collect()
}

#[test]
fn three_busy_replicas_on_one_redis_admit_exactly_the_limit_ten_runs_of_ten() {
    let redis = RedisServer::start();
    let rules = rules_dir();
    let replicas = three_replicas(rules.path(), &redis.url(), &[]);
    ten_busy_runs_admit_exactly_the_limit(&replicas, "one");
    // The counters live in Redis, with an expiry no later than their window's end.
    let keys = cli(redis.port, &["--scan"]);
    let key = keys.lines().next().expect("a counter key in Redis");
    let ttl: i64 = cli(redis.port, &["ttl", key]).parse().unwrap();
    assert!((1..=3600).contains(&ttl), "ttl {ttl} of {key}");
    assert!(
        key.starts_with('{') && key.len() <= 26,
        "a short key: {key}"
    );
    stop_all(replicas);
}

/// The refill algorithms on one Redis, three busy replicas (`--default-algorithm`, the rules'
/// 1,000 an hour): a sliding window on a fresh key admits exactly the limit; a token bucket its
/// burst of 1,000 and what refilled while the run lasted (1,000 an hour), not one more.
#[test]
fn three_busy_replicas_count_each_refill_algorithm_exactly_in_one_redis() {
    let redis = RedisServer::start();
    let rules = rules_dir();
    for algorithm in ["sliding_window", "token_bucket"] {
        let replicas = three_replicas(
            rules.path(),
            &redis.url(),
            &["--default-algorithm", algorithm],
        );
        let addrs = grpc_addrs(&replicas);
        let _turn = one_busy_test_at_a_time();
        for run in 0..3 {
            let started = std::time::Instant::now();
            let load = BusyLoad {
                replicas: &addrs,
                key: "busy",
                value: fresh_key(&format!("{algorithm}-{run}")),
                requests: 3_000,
                in_flight: 16,
            };
            let tally = busy_load(load, |_| {});
            let refilled = (started.elapsed().as_secs_f64() * 1_000.0 / 3_600.0).ceil() as usize;
            let allowed = match algorithm {
                "sliding_window" => 1_000..=1_000,
                _ => 1_000..=1_000 + refilled,
            };
            assert!(
                allowed.contains(&tally.ok) && tally.errors == 0 && tally.ok + tally.over == 3_000,
                "{algorithm}: run {run}: {tally:?}, allowed {allowed:?}"
            );
        }
        stop_all(replicas);
    }
}

#[test]
fn three_busy_replicas_on_a_cluster_admit_exactly_the_limit_ten_runs_of_ten() {
    let cluster = RedisCluster::start();
    let rules = rules_dir();
    let replicas = three_replicas(rules.path(), &cluster.url(), &[]);
    ten_busy_runs_admit_exactly_the_limit(&replicas, "cluster");
    let spread = cluster.nodes.iter().filter(|n| n.dbsize() > 0).count();
    assert!(spread >= 2, "keys spread over the masters' slots");
    stop_all(replicas);
}

/// Redis stopped (SIGSTOP: connections open, no answers) for 200 ms in the middle of a busy
/// load, three replicas counting locally meanwhile: at most 1 % of the limit plus one request
/// per replica over it, and afterwards Redis's count includes every hit admitted locally.
#[test]
fn redis_stopped_200_ms_mid_load_costs_at_most_one_percent_under_local() {
    let _turn = one_busy_test_at_a_time();
    let redis = RedisServer::start();
    let rules = rules_dir();
    let replicas = three_replicas(rules.path(), &redis.url(), &["--replicas", "3"]);
    let addrs = grpc_addrs(&replicas);
    let pid = redis.process.child.id();
    let (limit, requests) = (5_000, 15_000);
    let load = BusyLoad {
        replicas: &addrs,
        key: "stopped",
        value: fresh_key("stopped"),
        requests,
        in_flight: 16,
    };
    let tally = busy_load(load, |sent| {
        // Mid-way to the limit: Redis stops while the counter still has room.
        wait_until(Duration::from_secs(60), "a third of the limit sent", || {
            (sent.load(std::sync::atomic::Ordering::Relaxed) >= limit / 3).then_some(())
        });
        signal(pid, "-STOP");
        std::thread::sleep(Duration::from_millis(200));
        signal(pid, "-CONT");
    });
    let metrics: Vec<Vec<String>> = replicas.iter().map(backend_metrics).collect();
    let fallbacks: f64 = replicas
        .iter()
        .map(|r| {
            metric(
                &http_get(&r.http_addr, "/metrics").1,
                "ratelimitd_backend_fallback_decisions_total",
            )
        })
        .sum();
    assert!(fallbacks > 0.0, "the replicas counted locally: {metrics:?}");
    assert_eq!(tally.errors, 0);
    assert_eq!(tally.ok + tally.over, requests);
    let bound = limit + limit / 100 + replicas.len();
    assert!(
        tally.ok <= bound,
        "admitted {} of a limit of {limit} (at most {bound}): {metrics:?}",
        tally.ok
    );
    // Each replica writes its local hits back on its first answer from Redis.
    let key = cli(redis.port, &["--scan"]).trim().to_string();
    let counted = wait_until(
        Duration::from_secs(10),
        "the local hits written back",
        || {
            let count: usize = cli(redis.port, &["get", &key]).trim().parse().ok()?;
            (count >= tally.ok).then_some(count)
        },
    );
    eprintln!(
        "stopped 200 ms: admitted {} (limit {limit}, bound {bound}), Redis counts {counted}, {fallbacks} decisions counted locally",
        tally.ok
    );
    stop_all(replicas);
}

/// A request with a `hits_addend` of 10^18, sent again and again in the middle of a busy load:
/// refused as INVALID_ARGUMENT before anything is counted, and nobody else's decision falls to
/// the failure policy (it once failed the Redis script for every request batched with it, and
/// marked Redis down).
#[test]
fn a_poisoned_hits_addend_is_refused_and_nobody_else_falls_back() {
    let _turn = one_busy_test_at_a_time();
    let redis = RedisServer::start();
    let rules = rules_dir();
    // A generous timeout: only a failure of Redis's own (a script error) may fall back here,
    // not a slow answer on a busy machine.
    let replicas = three_replicas(
        rules.path(),
        &redis.url(),
        &["--backend-timeout-ms", "1000"],
    );
    let addrs = grpc_addrs(&replicas);
    let poison_to = addrs[0].clone();
    let load = BusyLoad {
        replicas: &addrs,
        key: "busy",
        value: fresh_key("poisoned"),
        requests: 3_000,
        in_flight: 16,
    };
    let tally = busy_load(load, |_| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let mut client = Client::connect(format!("http://{poison_to}"))
                .await
                .unwrap();
            for _ in 0..20 {
                let mut poisoned = shared("busy", &fresh_key("poison"));
                poisoned.descriptors[0].hits_addend =
                    Some(envoy_types::pb::google::protobuf::UInt64Value {
                        value: 1_000_000_000_000_000_000,
                    });
                let refused = client.should_rate_limit(poisoned).await.unwrap_err();
                assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
                assert!(refused.message().contains("hits_addend"), "{refused:?}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
    });
    assert_eq!(
        tally,
        Tally {
            ok: 1_000,
            over: 2_000,
            errors: 0
        }
    );
    for replica in &replicas {
        let scrape = http_get(&replica.http_addr, "/metrics").1;
        assert_eq!(
            metric(&scrape, "ratelimitd_backend_fallback_decisions_total"),
            0.0,
            "{:?}",
            backend_metrics(replica)
        );
        assert_eq!(metric(&scrape, "ratelimitd_backend_outages_total"), 0.0);
    }
    stop_all(replicas);
}

/// A Redis, the rules (kept while the replica runs), one replica counting there with a
/// 1-second bound, and a client of it.
async fn one_replica_on_one_redis() -> (RedisServer, tempfile::TempDir, Ratelimitd, Client) {
    let redis = RedisServer::start();
    let rules = rules_dir();
    let rl = replica(
        rules.path(),
        &redis.url(),
        &["--backend-timeout-ms", "1000"],
    );
    let client = Client::connect(format!("http://{}", rl.addr))
        .await
        .unwrap();
    (redis, rules, rl, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_gone_from_redis_once_their_window_ends() {
    let (redis, _rules, rl, mut client) = one_replica_on_one_redis().await;
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

/// `requests` sent all at once on `client`'s connection; their answers, in order.
async fn all_at_once(
    client: &Client,
    requests: impl Iterator<Item = RateLimitRequest>,
) -> Vec<RateLimitResponse> {
    futures_util::future::join_all(requests.map(|request| {
        let mut client = client.clone();
        async move { call(&mut client, request).await }
    }))
    .await
}

/// Decisions that reach ratelimitd together go to Redis together: rounds of 16 calls sent at
/// once on one connection take a few script calls each, not one per decision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_that_arrive_together_share_a_script_call() {
    let (redis, _rules, rl, client) = one_replica_on_one_redis().await;
    // The script is loaded and the connections open before anything is counted.
    call(&mut client.clone(), shared("busy", "warm")).await;
    let before = script_calls(redis.port);
    let (rounds, at_once) = (20, 16);
    for round in 0..rounds {
        let requests = (0..at_once).map(|i| shared("busy", &format!("r{round}-{i}")));
        let answers = all_at_once(&client, requests).await;
        assert!(answers.iter().all(|a| a.overall_code == Code::Ok as i32));
    }
    let calls = script_calls(redis.port) - before;
    assert!(
        calls <= rounds * at_once / 4,
        "{} decisions took {calls} script calls",
        rounds * at_once
    );
    rl.stop();
}

/// Requests of every algorithm sent together share script calls, each with its keys' own
/// arguments (a bucket's are one longer), and each counts against its own limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_of_every_algorithm_sent_together_each_count_against_their_own_limit() {
    let (redis, _rules, rl, client) = one_replica_on_one_redis().await;
    call(&mut client.clone(), shared("busy", "warm")).await;
    let before = script_calls(redis.port);
    let keys = ["few", "few_bucket", "few_sliding"];
    let requests = (0..18).map(|i| shared(keys[i % 3], "together"));
    let answers = all_at_once(&client, requests).await;
    for (k, key) in keys.iter().enumerate() {
        let admitted = answers
            .iter()
            .skip(k)
            .step_by(3)
            .filter(|a| a.overall_code == Code::Ok as i32)
            .count();
        assert_eq!(admitted, 4, "{key}: {answers:?}");
    }
    let calls = script_calls(redis.port) - before;
    assert!(calls < 18 / 2, "18 decisions took {calls} script calls");
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
async fn a_redis_that_stops_answering_holds_decisions_only_a_bounded_time() {
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
    let (before, during, after, unanswered) = within_one_window(3600, |_| {
        let mut client = client.clone();
        let rl = &rl;
        async move {
            let key = fresh_key("share");
            let admitted =
                |answer: (Result<i32, tonic::Code>, Duration)| answer.0 == Ok(Code::Ok as i32);
            let mut before = 0;
            for _ in 0..20 {
                before += u32::from(admitted(timed(&mut client, &key).await));
            }
            // Redis said 20 of 50: 30 left, this replica's share 15.
            let errors_before = backend_errors(rl);
            signal(pid, "-STOP");
            let mut during = 0;
            for _ in 0..30 {
                during += u32::from(admitted(timed(&mut client, &key).await));
            }
            signal(pid, "-CONT");
            let unanswered = backend_errors(rl) - errors_before;
            // The first answer from Redis again starts the write-back: call until it has landed.
            let mut after = 0;
            let mut written_back = false;
            for _ in 0..200 {
                after += u32::from(admitted(timed(&mut client, &key).await));
                let lines = rl.log.all(Duration::from_millis(20));
                if lines.iter().any(|l| l.contains("written back to Redis")) {
                    written_back = true;
                    break;
                }
            }
            assert!(written_back, "the local hits were written back");
            for _ in 0..40 {
                after += u32::from(admitted(timed(&mut client, &key).await));
            }
            (before, during, after, unanswered)
        }
    })
    .await;
    assert_eq!(before, 20);
    assert_eq!(during, 15, "one share of the 30 left, not 50 from zero");
    // A call Redis did not answer while it was stopped still runs there once it resumes, and
    // its request was counted here too: each counts twice, so that many fewer may be admitted,
    // never more. How many there were depends on the machine's pace (one retry every 10 ms).
    let total = before + during + after;
    assert!(unanswered >= 1, "the stopped Redis left a call unanswered");
    assert!(
        (50 - unanswered.min(50)..=50).contains(&u64::from(total)),
        "admitted {total} of 50 in the window, {unanswered} calls unanswered by the stopped Redis"
    );
    rl.stop();
}

/// A replica whose Redis is not up yet keeps trying and is not ready (`/healthcheck` 500, gRPC
/// health NOT_SERVING) until it first reaches Redis; it never exits for it.
#[test]
fn not_ready_until_redis_is_first_reached() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap();
    let rules = rules_dir();
    let rl = replica(rules.path(), &format!("redis://127.0.0.1:{port}"), &[]);
    let grpc_health = || {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_ratelimitd"))
            .args(["health", "--grpc-addr", &rl.addr])
            .output()
            .expect("ratelimitd health runs");
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    };
    let (status, body) = http_get(&rl.http_addr, "/healthcheck");
    assert_eq!(
        (status, body.trim()),
        (500, "waiting for Redis: not reached yet")
    );
    wait_until(Duration::from_secs(5), "gRPC health NOT_SERVING", || {
        (grpc_health() == "NOT_SERVING").then_some(())
    });
    let redis = RedisServer::start_on(port, &[]);
    wait_until(
        Duration::from_secs(20),
        "ready once Redis is reached",
        || {
            (http_get(&rl.http_addr, "/healthcheck").0 == 200 && grpc_health() == "SERVING")
                .then_some(())
        },
    );
    rl.stop();
    drop(redis);
}

/// `--redis-key-prefix` (envoyproxy/ratelimit's `CACHE_KEY_PREFIX`) puts every key after it.
#[tokio::test]
async fn every_key_starts_with_the_key_prefix() {
    let redis = RedisServer::start();
    let rules = rules_dir();
    let rl = replica(rules.path(), &redis.url(), &["--redis-key-prefix", "rl_"]);
    let mut client = Client::connect(format!("http://{}", rl.addr))
        .await
        .unwrap();
    for i in 0..5 {
        call(&mut client, shared("k", &format!("key-{i}"))).await;
    }
    let keys = cli(redis.port, &["KEYS", "*"]);
    let keys: Vec<&str> = keys.lines().filter(|l| !l.is_empty()).collect();
    assert!(!keys.is_empty(), "counted in Redis");
    assert!(keys.iter().all(|k| k.starts_with("rl_{")), "{keys:?}");
    rl.stop();
}
