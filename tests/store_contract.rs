//! The store contract, run against every store: process memory, one real `redis-server`, and a
//! real three-master Redis Cluster. Each behaviour is written once, as a function of any
//! [`CounterStore`]; a behaviour that differs between stores fails here.
//!
//! Time is the caller's: every behaviour picks its window numbers from one instant (`now`), so
//! none waits for a window to turn, except expiry, which Redis measures on its own clock.
//! Every behaviour uses keys of its own, so they run one after another on one store.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ratelimitd::limiter::{
    Batch, Budget, Count, CounterKey, CounterStore, Counting, Increment, MemoryStore, RedisStore,
    StoreError, Target,
};

use common::redis::{RedisCluster, RedisServer};

/// A store under test, and a way to see how many counters it keeps.
trait Subject: Sync {
    type Store: CounterStore;
    fn store(&self) -> &Self::Store;
    /// Waits (a bounded time) until the store keeps `expected` counters, every window that ended
    /// by `now` being droppable; returns how many it keeps.
    async fn kept(&self, expected: u64, now: Duration) -> u64;
}

struct Memory(MemoryStore);

impl Subject for Memory {
    type Store = MemoryStore;
    fn store(&self) -> &MemoryStore {
        &self.0
    }
    async fn kept(&self, _expected: u64, now: Duration) -> u64 {
        // Memory drops ended windows when swept (the server sweeps every 5 s).
        self.0.sweep(now);
        self.0.len() as u64
    }
}

/// Redis or a Cluster: the store, and the number of keys in it.
struct InRedis {
    store: std::sync::Arc<RedisStore>,
    dbsize: Box<dyn Fn() -> u64 + Send + Sync>,
}

impl Subject for InRedis {
    type Store = RedisStore;
    fn store(&self) -> &RedisStore {
        &self.store
    }
    async fn kept(&self, expected: u64, _now: Duration) -> u64 {
        // Redis drops a key when its window ends (EXPIREAT), by its own clock.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let size = (self.dbsize)();
            if size == expected || tokio::time::Instant::now() > deadline {
                return size;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn redis_store(url: &str) -> std::sync::Arc<RedisStore> {
    let target = Target::parse(url).expect("a Redis address");
    // The contract is not about time: a generous timeout for a loaded machine.
    let store = RedisStore::start(target, Duration::from_secs(2), "");
    assert!(
        store.wait_connected(Duration::from_secs(10)).await,
        "Redis accepts the connection"
    );
    store
}

fn now() -> Duration {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap()
}

/// The window number of `now` in windows of `seconds`.
fn index(now: Duration, seconds: u32) -> u32 {
    (now.as_secs() / u64::from(seconds)) as u32
}

/// One counter of a batch: (descriptor, window seconds, window index, limit, hits, enforced).
type Spec<'a> = (&'a str, u32, u32, u32, u64, bool);

/// A batch over descriptors named `name` (each its own key, so its own Cluster slot).
fn batch(test: &str, counters: &[Spec<'_>]) -> Batch {
    let mut batch = Batch::default();
    let mut names: Vec<&str> = Vec::new();
    for &(name, window_seconds, window_index, requests_per_unit, hits, enforced) in counters {
        let key = match names.iter().position(|n| *n == name) {
            Some(key) => key,
            None => {
                names.push(name);
                let value = format!("{test}-{name}");
                batch.keys.push(CounterKey::new(
                    "contract",
                    [("k", value.as_str())].into_iter(),
                ));
                names.len() - 1
            }
        };
        batch.increments.push(Increment {
            key,
            window_seconds,
            window_index,
            // What the window has left, as the limiter computes it.
            expires_in_ms: left_ms(window_seconds, window_index),
            requests_per_unit,
            hits,
            enforced,
            counting: Counting::Fixed,
            now_us: 0,
        });
    }
    batch
}

async fn count(subject: &impl Subject, test: &str, counters: &[Spec<'_>]) -> (bool, Vec<Count>) {
    count_batch(subject, test, &batch(test, counters)).await
}

async fn count_batch(subject: &impl Subject, test: &str, batch: &Batch) -> (bool, Vec<Count>) {
    let (admitted, counts) = subject
        .store()
        .count(batch)
        .await
        .unwrap_or_else(|e| panic!("{test}: the store counts: {e}"));
    (admitted, counts.to_vec())
}

/// Milliseconds left in window `index` of `seconds` by the real clock; 30 s for a window that
/// has already ended (a caller whose clock is behind).
fn left_ms(seconds: u32, index: u32) -> u64 {
    let end = Duration::from_secs((u64::from(index) + 1) * u64::from(seconds));
    let left = end.saturating_sub(now()).as_millis() as u64;
    if left == 0 { 30_000 } else { left }
}

fn c(value: u64, over_limit: bool) -> Count {
    Count::fixed(value, over_limit)
}

/// Up to the limit every request is admitted; the next is refused and moves nothing.
async fn admitted_then_refused_at_the_limit(s: &impl Subject, t: &str) {
    let i = index(now(), 60);
    for expected in 1..=3 {
        let answer = count(s, t, &[("a", 60, i, 3, 1, true)]).await;
        assert_eq!(
            answer,
            (true, vec![c(expected, false)]),
            "{t}: hit {expected}"
        );
    }
    assert_eq!(
        count(s, t, &[("a", 60, i, 3, 1, true)]).await,
        (false, vec![c(3, true)])
    );
    assert_eq!(
        count(s, t, &[("a", 60, i, 3, 0, true)]).await,
        (false, vec![c(3, true)]),
        "{t}: still 3"
    );
}

/// Each window of a descriptor has its own counter; a refusal in one moves none of the others.
async fn several_windows_per_descriptor(s: &impl Subject, t: &str) {
    let now = now();
    let (m, h) = (index(now, 60), index(now, 3600));
    let both = |hits| [("a", 60, m, 10, hits, true), ("a", 3600, h, 2, hits, true)];
    assert_eq!(
        count(s, t, &both(1)).await,
        (true, vec![c(1, false), c(1, false)])
    );
    assert_eq!(
        count(s, t, &both(1)).await,
        (true, vec![c(2, false), c(2, false)])
    );
    assert_eq!(
        count(s, t, &both(1)).await,
        (false, vec![c(2, false), c(2, true)]),
        "{t}: the hour refuses, the minute is given back"
    );
    assert_eq!(
        count(s, t, &[("a", 60, m, 10, 1, true)]).await,
        (true, vec![c(3, false)]),
        "{t}: the minute alone"
    );
}

/// A refused request moves no counter: not its enforced ones, not its shadow ones, in any
/// descriptor, wherever they live (in a Cluster: in other slots too).
async fn a_refused_request_consumes_nothing_shadow_included(s: &impl Subject, t: &str) {
    let i = index(now(), 60);
    count(s, t, &[("full", 60, i, 1, 1, true)]).await;
    let request = [
        ("shadow", 60, i, 5, 1, false),
        ("open", 60, i, 5, 1, true),
        ("full", 60, i, 1, 1, true),
        ("after", 60, i, 5, 1, true),
    ];
    for _ in 0..2 {
        assert_eq!(
            count(s, t, &request).await,
            (
                false,
                vec![c(0, false), c(0, false), c(1, true), c(0, false)]
            ),
            "{t}"
        );
    }
    let check = [
        ("shadow", 60, i, 5, 0, false),
        ("open", 60, i, 5, 0, true),
        ("after", 60, i, 5, 0, true),
    ];
    assert_eq!(
        count(s, t, &check).await,
        (true, vec![c(0, false), c(0, false), c(0, false)]),
        "{t}: nothing moved"
    );
}

/// Every enforced counter whose hits do not fit is over, not only the first.
async fn every_counter_that_does_not_fit_is_over(s: &impl Subject, t: &str) {
    let i = index(now(), 60);
    count(s, t, &[("a", 60, i, 1, 1, true), ("b", 60, i, 1, 1, true)]).await;
    assert_eq!(
        count(s, t, &[("a", 60, i, 1, 1, true), ("b", 60, i, 1, 1, true)]).await,
        (false, vec![c(1, true), c(1, true)])
    );
}

/// Shadow counters count what is admitted, past their limit too, and never refuse.
async fn shadow_counters_count_and_never_refuse(s: &impl Subject, t: &str) {
    let i = index(now(), 60);
    for expected in 1..=3 {
        assert_eq!(
            count(s, t, &[("a", 60, i, 2, 1, false)]).await,
            (true, vec![c(expected, expected > 2)]),
            "{t}"
        );
    }
}

/// Hits of 0 check without counting: over once the limit is reached. Large hits count whole
/// or not at all.
async fn checks_and_large_hits(s: &impl Subject, t: &str) {
    let i = index(now(), 60);
    assert_eq!(
        count(s, t, &[("a", 60, i, 1, 0, true)]).await,
        (true, vec![c(0, false)])
    );
    count(s, t, &[("a", 60, i, 1, 1, true)]).await;
    assert_eq!(
        count(s, t, &[("a", 60, i, 1, 0, true)]).await,
        (false, vec![c(1, true)])
    );
    let max = u32::MAX;
    assert_eq!(
        count(s, t, &[("big", 60, i, max, u64::from(max), true)]).await,
        (true, vec![c(u64::from(max), false)])
    );
    assert_eq!(
        count(s, t, &[("big", 60, i, max, 1, true)]).await,
        (false, vec![c(u64::from(max), true)])
    );
    assert_eq!(
        count(s, t, &[("huge", 60, i, 1000, 5_000_000_000, true)]).await,
        (false, vec![c(0, true)]),
        "{t}: more hits than the limit move nothing"
    );
    assert_eq!(
        count(s, t, &[("zero", 60, i, 0, 0, true)]).await,
        (false, vec![c(0, true)]),
        "{t}: a limit of 0 refuses a check"
    );
}

/// The next window starts from 0 for the same descriptor.
async fn a_new_window_starts_from_zero(s: &impl Subject, t: &str) {
    let i = index(now(), 60);
    count(s, t, &[("a", 60, i, 1, 1, true)]).await;
    assert!(!count(s, t, &[("a", 60, i, 1, 1, true)]).await.0);
    assert_eq!(
        count(s, t, &[("a", 60, i + 1, 1, 1, true)]).await,
        (true, vec![c(1, false)]),
        "{t}"
    );
}

/// A counter is not kept once its window has ended. Runs first, on an empty store.
async fn counters_go_when_their_window_ends(s: &impl Subject, t: &str) {
    // The next one-second window: it ends one to two seconds from now.
    let i = index(now(), 1) + 1;
    count(s, t, &[("a", 1, i, 5, 1, true)]).await;
    assert_eq!(s.kept(1, now()).await, 1, "{t}: kept");
    let end = Duration::from_secs(u64::from(i) + 1);
    assert_eq!(s.kept(0, end).await, 0, "{t}: gone after {end:?}");
}

/// A caller whose clock is an hour behind still counts: its counters live as long as its window
/// has left, never expire at once.
async fn a_caller_whose_clock_is_behind_still_counts(s: &impl Subject, t: &str) {
    let behind = index(now() - Duration::from_secs(3_600), 60);
    for expected in 1..=3 {
        assert_eq!(
            count(s, t, &[("a", 60, behind, 5, 1, true)]).await,
            (true, vec![c(expected, false)]),
            "{t}"
        );
    }
}

/// Many descriptors in one request (in a Cluster: many slots) count together.
async fn many_descriptors_count_together(s: &impl Subject, t: &str) {
    let i = index(now(), 60);
    let names = ["d0", "d1", "d2", "d3", "d4", "d5", "d6", "d7"];
    let request: Vec<Spec<'_>> = names.iter().map(|n| (*n, 60, i, 2, 1, true)).collect();
    let (admitted, counts) = count(s, t, &request).await;
    assert!(admitted);
    assert!(counts.iter().all(|c| *c == self::c(1, false)), "{counts:?}");
    count(s, t, &[("d5", 60, i, 2, 1, true)]).await;
    let (admitted, counts) = count(s, t, &request).await;
    assert!(!admitted, "{t}: d5 is full");
    assert_eq!(counts[5], c(2, true));
    let check: Vec<Spec<'_>> = names.iter().map(|n| (*n, 60, i, 2, 0, true)).collect();
    let values: Vec<u64> = count(s, t, &check)
        .await
        .1
        .iter()
        .map(|c| c.value)
        .collect();
    assert_eq!(values, [1, 1, 1, 1, 1, 2, 1, 1], "{t}: nothing else moved");
}

/// Runs every behaviour on one store, one after another, naming each in a failure.
/// One counter of a batch of refill and fixed counters: (descriptor, how it counts, window
/// seconds, limit, hits, enforced); windows and time from the real clock.
type Counter<'a> = (&'a str, Counting, u32, u32, u64, bool);

/// A batch over descriptors named `name`; a refill counter gets its own key, as the limiter
/// gives it.
fn mixed(test: &str, counters: &[Counter<'_>]) -> Batch {
    let mut batch = Batch::default();
    let now = now();
    for &(name, counting, window_seconds, requests_per_unit, hits, enforced) in counters {
        let value = format!("{test}-{name}");
        let key = CounterKey::new("contract", [("k", value.as_str())].into_iter());
        let key = match counting {
            Counting::Fixed => key,
            Counting::Sliding | Counting::Bucket { .. } => key.refill(),
        };
        batch.keys.push(key);
        let window_index = index(now, window_seconds);
        batch.increments.push(Increment {
            key: batch.keys.len() - 1,
            window_seconds,
            window_index,
            expires_in_ms: left_ms(window_seconds, window_index),
            requests_per_unit,
            hits,
            enforced,
            counting,
            now_us: now.as_micros() as u64,
        });
    }
    batch
}

async fn count_mixed(s: &impl Subject, test: &str, counters: &[Counter<'_>]) -> (bool, Vec<Count>) {
    count_batch(s, test, &mixed(test, counters)).await
}

const REFILLS: [(&str, Counting); 2] = [
    ("bucket", Counting::Bucket { burst: 10 }),
    ("sliding", Counting::Sliding),
];

/// A token bucket admits its burst and a sliding window its limit; then each refuses, moving
/// nothing, and says when a request would pass.
async fn refill_counters_admit_what_their_algorithm_allows(s: &impl Subject, t: &str) {
    for (name, counting) in REFILLS {
        let one = [(name, counting, 60, 10, 1, true)];
        let mut admitted = 0;
        for _ in 0..12 {
            admitted += usize::from(count_mixed(s, t, &one).await.0);
        }
        assert_eq!(admitted, 10, "{t}: {name}");
        let (ok, counts) = count_mixed(s, t, &one).await;
        assert!(!ok && counts[0].over_limit, "{t}: {name}: {counts:?}");
        let standing = counts[0].standing.expect("a refill counter's standing");
        assert_eq!(standing.remaining, 0, "{t}: {name}");
        assert!(standing.retry_in_ms >= 1, "{t}: {name}: {standing:?}");
        assert!(
            standing.retry_in_ms <= standing.reset_in_ms,
            "{t}: {name}: {standing:?}"
        );
        match counting {
            Counting::Bucket { .. } => {
                assert!(standing.retry_in_ms <= 6_000, "{t}: {standing:?}");
                assert!(
                    (54_000..=60_000).contains(&standing.reset_in_ms),
                    "{t}: {standing:?}"
                );
            }
            _ => assert!(standing.reset_in_ms <= 120_000, "{t}: {standing:?}"),
        }
        let check = [(name, counting, 60, 10, 0, true)];
        assert!(
            !count_mixed(s, t, &check).await.0,
            "{t}: {name}: a check is over too"
        );
    }
}

/// A request refused by another counter (here a fixed window of 0, another descriptor: another
/// slot in a Cluster) gives back what its refill counters took.
async fn a_refused_request_gives_back_what_refill_counters_took(s: &impl Subject, t: &str) {
    for (name, counting) in REFILLS {
        let both = [
            (name, counting, 60, 10, 4, true),
            ("closed", Counting::Fixed, 60, 0, 1, true),
        ];
        for _ in 0..3 {
            let (ok, counts) = count_mixed(s, t, &both).await;
            assert!(!ok && counts[1].over_limit, "{t}: {name}: {counts:?}");
        }
        let alone = [(name, counting, 60, 10, 1, true)];
        let mut admitted = 0;
        for _ in 0..12 {
            admitted += usize::from(count_mixed(s, t, &alone).await.0);
        }
        assert_eq!(admitted, 10, "{t}: {name}: nothing stayed taken");
    }
}

/// Shadow refill counters count what was admitted and never refuse.
async fn shadow_refill_counters_never_refuse(s: &impl Subject, t: &str) {
    for (name, counting) in [("bucket", Counting::Bucket { burst: 2 }), REFILLS[1]] {
        let shadow = [(name, counting, 60, 2, 1, false)];
        let mut overs = 0;
        for _ in 0..4 {
            let (ok, counts) = count_mixed(s, t, &shadow).await;
            assert!(ok, "{t}: {name}");
            overs += usize::from(counts[0].over_limit);
        }
        assert_eq!(overs, 2, "{t}: {name}: the third and fourth are over");
    }
}

async fn run_contract(subject: &impl Subject, store: &str) {
    let test = |name: &str| format!("{store}/{name}/{}", now().as_nanos());
    let t = test("expiry");
    counters_go_when_their_window_ends(subject, &t).await;
    let t = test("limit");
    admitted_then_refused_at_the_limit(subject, &t).await;
    let t = test("windows");
    several_windows_per_descriptor(subject, &t).await;
    let t = test("refused");
    a_refused_request_consumes_nothing_shadow_included(subject, &t).await;
    let t = test("every-over");
    every_counter_that_does_not_fit_is_over(subject, &t).await;
    let t = test("shadow");
    shadow_counters_count_and_never_refuse(subject, &t).await;
    let t = test("hits");
    checks_and_large_hits(subject, &t).await;
    let t = test("next-window");
    a_new_window_starts_from_zero(subject, &t).await;
    let t = test("many");
    many_descriptors_count_together(subject, &t).await;
    let t = test("clock-behind");
    a_caller_whose_clock_is_behind_still_counts(subject, &t).await;
    let t = test("refill");
    refill_counters_admit_what_their_algorithm_allows(subject, &t).await;
    let t = test("refill-refused");
    a_refused_request_gives_back_what_refill_counters_took(subject, &t).await;
    let t = test("refill-shadow");
    shadow_refill_counters_never_refuse(subject, &t).await;
}

#[tokio::test]
async fn memory_keeps_the_contract() {
    run_contract(&Memory(MemoryStore::new(Budget::keys(1_000))), "memory").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_keeps_the_contract() {
    let redis = RedisServer::start();
    let port = redis.port;
    let subject = InRedis {
        store: redis_store(&redis.url()).await,
        dbsize: Box::new(move || common::redis::cli(port, &["dbsize"]).parse().unwrap_or(0)),
    };
    run_contract(&subject, "redis").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_cluster_keeps_the_contract() {
    let cluster = tokio::task::spawn_blocking(RedisCluster::start)
        .await
        .expect("the cluster starts");
    let ports: Vec<u16> = cluster.nodes.iter().map(|n| n.port).collect();
    let subject = InRedis {
        store: redis_store(&cluster.url()).await,
        dbsize: Box::new(move || {
            ports
                .iter()
                .map(|p| {
                    common::redis::cli(*p, &["dbsize"])
                        .parse::<u64>()
                        .unwrap_or(0)
                })
                .sum()
        }),
    };
    run_contract(&subject, "cluster").await;
    drop(cluster);
}

/// A request Redis cannot count (here a counter that would overflow: the store takes any hits,
/// the request reader bounds them) fails alone: the requests batched with it count as usual,
/// and of its own counters nothing stays counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_redis_cannot_count_fails_alone() {
    let redis = RedisServer::start();
    let store = redis_store(&redis.url()).await;
    let w = index(now(), 3600);
    let huge = 5_000_000_000_000_000_000_u64;
    let first = batch("poison", &[("p", 3600, w, u32::MAX, huge, false)]);
    store
        .count(&first)
        .await
        .expect("one huge add fits in Redis");
    // Its own `q` first, then `p` again, which would pass i64::MAX.
    let poisoned = batch(
        "poison",
        &[
            ("q", 3600, w, 10, 1, true),
            ("p", 3600, w, u32::MAX, huge, false),
        ],
    );
    let normal: Vec<Batch> = (0..50)
        .map(|i| batch(&format!("normal-{i}"), &[("n", 3600, w, 10, 1, true)]))
        .collect();
    let (refused, counted) = tokio::join!(
        store.count(&poisoned),
        futures_util::future::join_all(normal.iter().map(|b| store.count(b)))
    );
    match refused {
        Err(error @ StoreError::Refused(_)) => assert!(!error.is_transient()),
        other => panic!("the poisoned request fails alone: {:?}", other.map(|c| c.0)),
    }
    for answer in counted {
        let (admitted, counts) = answer.expect("a request batched with it counts");
        assert!(admitted);
        assert_eq!(counts[0].value, 1);
    }
    let check = batch("poison", &[("q", 3600, w, 10, 0, true)]);
    let (_, counts) = store.count(&check).await.unwrap();
    assert_eq!(
        counts[0].value, 0,
        "the poisoned request's own count was taken back"
    );
}
