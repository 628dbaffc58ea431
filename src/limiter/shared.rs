//! Counting in Redis with a fallback: the failure policy (`--on-backend-error`), wrapped around
//! the Redis store, and the state of the backend (up or down, errors, fallbacks, outages) that
//! health, metrics and logs show.
//!
//! With `--on-backend-error local`, the local store mirrors what Redis last said of each counter,
//! and a replica counting locally admits at most its share of what Redis said was left (the
//! rest divided by `--replicas`), never a whole limit from zero; the hits it admitted are
//! written back to Redis once, when Redis answers again. A refill counter (sliding window,
//! token bucket) is neither mirrored nor written back: locally it counts from full, with its
//! share of the whole limit and burst.
//!
//! Before Redis is asked, the local over-limit cache (`over_limit_cache.rs`) may answer: a
//! request it knows Redis would refuse is refused here, at once, while Redis is up or down.
//!
//! One slow answer is not a failure, and one failure is not an outage. A call that misses
//! `--backend-timeout-ms` is late; while Redis is not known to be down, its decision waits for
//! the answer (up to [`LATE_ANSWER_TIMEOUTS`](super::redis::LATE_ANSWER_TIMEOUTS) timeouts),
//! because only Redis's answer is exact: on a busy machine a healthy Redis misses a 10 ms
//! deadline now and then, and answering those by the policy admitted requests Redis refused,
//! and counted twice some it admitted. An outage is Redis answering nothing at all for
//! [`SILENT_TIMEOUTS`] timeouts while a call waits, or [`TRIP_AFTER`] failed calls in a row
//! (errors, or no answer within the late bound): then the decisions still waiting are answered
//! by the policy at once, later requests skip Redis and go straight to the policy, and one
//! request every [`RETRY_EVERY`] tries Redis again: its success ends the outage, so a recovered
//! Redis counts again within milliseconds.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::clock;
use super::memory::{Budget, MemoryStore};
use super::over_limit_cache::{CLUSTER_TRUST, OverLimitCache};
use super::redis::{RedisStore, Tag, Target, tags_of};
use super::redis_script::BackendError;
use super::store::{Batch, Count, CounterStore, Counting, Counts, Increment, StoreError};

/// Counting in Redis, and what to do when it fails.
pub struct Shared {
    pub redis: Arc<RedisStore>,
    pub on_error: OnBackendError,
    /// With `OnBackendError::Local`: what Redis last said of each counter.
    local: MemoryStore,
    /// With `OnBackendError::Local`: the hits admitted here while Redis was away, each counter
    /// bounded by this replica's share; written back to Redis when it answers again.
    outage: Arc<MemoryStore<Box<[u8]>>>,
    /// The replicas counting in this Redis (`--replicas`): a replica's share of what is left.
    replicas: u32,
    /// Counters Redis said are full: their refusals are answered here (`--local-cache-bytes`).
    cache: OverLimitCache,
    state: BackendState,
}

/// What counting with a fallback gives: counts, from Redis or from the local store, or the
/// policy's answer when it counts nowhere.
// `Counts` is inline so that a decision allocates nothing; a `Counted` lives on the stack for
// one call, so its size costs a copy, where a box would cost an allocation.
#[allow(clippy::large_enum_variant)]
pub enum Counted {
    Counts(bool, Counts),
    /// Refused by the local over-limit cache, without asking Redis: the counts it knows.
    Cached(Counts),
    /// `--on-backend-error allow`: admit, uncounted.
    Allowed,
    /// `--on-backend-error deny`: refuse every limited descriptor, uncounted.
    Denied,
}

impl Shared {
    pub fn new(
        redis: Arc<RedisStore>,
        on_error: OnBackendError,
        budget: Budget,
        replicas: u32,
        local_cache_bytes: usize,
    ) -> Shared {
        let trust = matches!(redis.target(), Target::Cluster(_)).then_some(CLUSTER_TRUST);
        Shared {
            cache: OverLimitCache::new(local_cache_bytes, trust),
            redis,
            on_error,
            outage: Arc::new(MemoryStore::keeping_keys(budget)),
            local: MemoryStore::new(budget),
            replicas: replicas.max(1),
            state: BackendState::default(),
        }
    }

    /// The store that counts while Redis is away (`--on-backend-error local`).
    pub fn local(&self) -> &MemoryStore {
        &self.local
    }

    /// The backend's state now.
    pub fn snapshot(&self) -> BackendSnapshot {
        let read = |n: &AtomicU64| n.load(Ordering::Relaxed);
        BackendSnapshot {
            connected: self.redis.is_connected(),
            up: self.state.is_up(),
            policy: self.on_error,
            errors: read(&self.state.errors),
            late: read(&self.state.late),
            fallbacks: read(&self.state.fallbacks),
            outages: read(&self.state.outages),
            cached: read(&self.state.cached),
            cache_entries: self.cache.len(),
        }
    }
}

impl Shared {
    /// Counts `batch` here while Redis is away: each counter may take this replica's share of
    /// what Redis last said was left, `ceil((limit - count) / replicas)`, on top of that count.
    fn count_locally(&self, batch: &Batch) -> (bool, Counts) {
        let replicas = u64::from(self.replicas);
        let seeds: Vec<u64> = batch
            .increments
            .iter()
            .map(|inc| {
                if inc.counting.refills() {
                    // Redis's refill state is not mirrored: its share is of the whole limit.
                    return 0;
                }
                let key = &batch.keys[inc.key];
                self.local.peek(key, inc.window_seconds, inc.window_index)
            })
            .collect();
        let shares = Batch {
            keys: batch.keys.clone(),
            increments: batch
                .increments
                .iter()
                .zip(&seeds)
                .map(|(inc, seed)| {
                    let left = u64::from(inc.requests_per_unit).saturating_sub(*seed);
                    let share = |n: u64| u32::try_from(n.div_ceil(replicas)).unwrap_or(u32::MAX);
                    let counting = match inc.counting {
                        Counting::Bucket { burst } => Counting::Bucket {
                            burst: share(u64::from(burst)),
                        },
                        other => other,
                    };
                    Increment {
                        requests_per_unit: share(left),
                        counting,
                        ..*inc
                    }
                })
                .collect(),
        };
        let (admitted, counts) = self.outage.apply(&shares);
        let counts = counts
            .iter()
            .zip(&seeds)
            .map(|(count, seed)| Count {
                value: seed.saturating_add(count.value),
                ..*count
            })
            .collect();
        (admitted, counts)
    }

    /// Adds the hits admitted here during the outage to Redis, once, in the background; the
    /// windows that ended meanwhile are dropped (Redis has dropped them too).
    fn write_back(&self) {
        let now = clock::now();
        let held = self.outage.drain(now);
        if held.is_empty() {
            return;
        }
        let mut batch = Batch::default();
        for (key, window_seconds, window_index, hits) in held {
            let end = std::time::Duration::from_secs(
                (u64::from(window_index) + 1) * u64::from(window_seconds),
            );
            let left = end.saturating_sub(now);
            if left.is_zero() {
                continue;
            }
            batch.keys.push(key);
            batch.increments.push(Increment {
                key: batch.keys.len() - 1,
                window_seconds,
                window_index,
                expires_in_ms: u64::try_from(left.as_millis()).unwrap_or(u64::MAX).max(1),
                requests_per_unit: u32::MAX,
                hits,
                enforced: false,
                counting: Counting::Fixed,
                now_us: 0,
            });
        }
        let redis = Arc::clone(&self.redis);
        tokio::spawn(async move {
            let counters = batch.increments.len();
            match redis.count(&batch).await {
                Ok(_) => tracing::info!(counters, "hits counted locally written back to Redis"),
                Err(error) => {
                    tracing::warn!(%error, counters, "cannot write the local hits back to Redis")
                }
            }
        });
    }
}

/// `--on-backend-error`: the answer when Redis cannot count a request in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnBackendError {
    /// Answer OK (fail open, as Envoy's `failure_mode_deny: false`).
    Allow,
    /// Answer OVER_LIMIT for every descriptor that has a limit (fail closed).
    Deny,
    /// Count in this process's memory until Redis is back.
    Local,
}

impl OnBackendError {
    /// As `--on-backend-error` spells it.
    pub fn name(self) -> &'static str {
        match self {
            OnBackendError::Allow => "allow",
            OnBackendError::Deny => "deny",
            OnBackendError::Local => "local",
        }
    }
}

/// Whether Redis is answering, and what happened so far: what the limiter publishes for health
/// and metrics, read at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendSnapshot {
    /// Whether Redis has been reached at least once since start.
    pub connected: bool,
    pub up: bool,
    /// What answers while Redis is down.
    pub policy: OnBackendError,
    /// Requests Redis failed to count.
    pub errors: u64,
    /// Calls that missed the timeout (then answered late, or counted in `errors` too).
    pub late: u64,
    /// Requests answered by the failure policy.
    pub fallbacks: u64,
    /// Periods during which Redis was down.
    pub outages: u64,
    /// Requests refused by the local over-limit cache, without a Redis call.
    pub cached: u64,
    /// Counters in the local over-limit cache now.
    pub cache_entries: usize,
}

/// Whether Redis is answering, for health, metrics and logs.
#[derive(Default)]
pub struct BackendState {
    down: AtomicBool,
    /// Failures since the last success.
    failures_in_a_row: AtomicU64,
    /// While down, requests skip Redis until this (milliseconds since `started`).
    retry_at_ms: AtomicU64,
    started: std::sync::OnceLock<Instant>,
    /// Wakes the decisions waiting for late answers when an outage starts.
    tripped: tokio::sync::Notify,
    /// Calls Redis answered: whether it said anything while a call waited.
    answers: AtomicU64,
    errors: AtomicU64,
    late: AtomicU64,
    fallbacks: AtomicU64,
    outages: AtomicU64,
    cached: AtomicU64,
}

/// Failed calls in a row that make an outage: a call fails by an error (a refused connection
/// answers at once) or by no answer within the late bound.
pub const TRIP_AFTER: u64 = 3;

/// How long Redis may answer no call at all while one waits, in `--backend-timeout-ms`, before
/// that is an outage. Silence, not a count of late calls: every call queued behind one slow
/// answer is late with it, so on a busy machine one 15 ms pause made dozens of late calls at
/// once, and counting them tripped an outage that was not one. Five timeouts (50 ms by
/// default): three (30 ms) still tripped now and then in the busy Cluster test, where a Redis
/// process waits its turn behind seven others on two cores; 50 ms is short enough that a Redis
/// that stopped answering holds decisions only that long.
pub const SILENT_TIMEOUTS: u32 = 5;

/// While Redis is down, one request in this period tries it again; the others go straight to
/// the failure policy, so that they answer at once instead of after a timeout each.
const RETRY_EVERY: Duration = Duration::from_millis(10);

impl BackendState {
    pub fn is_up(&self) -> bool {
        !self.down.load(Ordering::Relaxed)
    }

    fn elapsed_ms(&self) -> u64 {
        let started = self.started.get_or_init(Instant::now);
        u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether to send this request to Redis.
    fn should_try(&self) -> bool {
        if self.is_up() {
            return true;
        }
        let now = self.elapsed_ms();
        let due = self.retry_at_ms.load(Ordering::Relaxed);
        now >= due
            && self
                .retry_at_ms
                .compare_exchange(
                    due,
                    now + RETRY_EVERY.as_millis() as u64,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
    }

    /// Records a success; whether it ended an outage.
    fn succeeded(&self) -> bool {
        self.answers.fetch_add(1, Ordering::Relaxed);
        self.failures_in_a_row.store(0, Ordering::Relaxed);
        let was_down = self.down.swap(false, Ordering::Relaxed);
        if was_down {
            tracing::warn!("Redis answers again: counting there again");
        }
        was_down
    }

    /// Records a call that failed: one more failure in a row.
    fn failed(&self, error: &dyn std::fmt::Display, policy: OnBackendError) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        self.strike(error, policy);
    }

    fn strike(&self, error: &dyn std::fmt::Display, policy: OnBackendError) {
        let in_a_row = self.failures_in_a_row.fetch_add(1, Ordering::Relaxed) + 1;
        if in_a_row < TRIP_AFTER {
            tracing::debug!(%error, in_a_row, "Redis failed one call");
            return;
        }
        self.trip(error, policy);
    }

    /// Starts an outage, unless one is on.
    fn trip(&self, error: &dyn std::fmt::Display, policy: OnBackendError) {
        self.retry_at_ms.store(
            self.elapsed_ms() + RETRY_EVERY.as_millis() as u64,
            Ordering::Relaxed,
        );
        if !self.down.swap(true, Ordering::Relaxed) {
            self.outages.fetch_add(1, Ordering::Relaxed);
            self.tripped.notify_waiters();
            tracing::error!(%error, ?policy, "Redis cannot count: answering by the failure policy until it is back");
        }
    }
}

impl Shared {
    /// Counts in Redis, unless the local over-limit cache knows the request is refused (under
    /// the rules of `generation`); when Redis fails (or is known down), answers by the failure
    /// policy, after recording it.
    pub(super) async fn count(
        &self,
        batch: &Batch,
        generation: u64,
    ) -> Result<Counted, StoreError> {
        let tags = tags_of(batch);
        if let Some(refused) = self.refused_here(batch, &tags, generation) {
            return Ok(refused);
        }
        if self.state.should_try() {
            match self.ask_redis(batch, &tags).await {
                Ok((admitted, counts)) => {
                    self.cache
                        .remember(batch, &tags, generation, admitted, &counts);
                    let was_down = self.state.succeeded();
                    if self.on_error == OnBackendError::Local {
                        self.local.mirror(batch, &counts);
                        if was_down {
                            self.write_back();
                        }
                    }
                    return Ok(Counted::Counts(admitted, counts));
                }
                Err(error) if error.is_transient() => {}
                Err(error) => return Err(error),
            }
        }
        self.state.fallbacks.fetch_add(1, Ordering::Relaxed);
        match self.on_error {
            OnBackendError::Local => {
                let (admitted, counts) = self.count_locally(batch);
                Ok(Counted::Counts(admitted, counts))
            }
            OnBackendError::Allow => Ok(Counted::Allowed),
            OnBackendError::Deny => Ok(Counted::Denied),
        }
    }

    /// The local over-limit cache's refusal of `batch` (under the rules of `generation`), if it
    /// knows one: what [`Shared::count`] answers without a call.
    pub(super) fn cached_refusal(&self, batch: &Batch, generation: u64) -> Option<Counted> {
        self.refused_here(batch, &tags_of(batch), generation)
    }

    fn refused_here(&self, batch: &Batch, tags: &[Tag], generation: u64) -> Option<Counted> {
        let counts = self.cache.refusal(batch, tags, generation)?;
        self.state.cached.fetch_add(1, Ordering::Relaxed);
        Some(Counted::Cached(counts))
    }

    /// How many counters the local over-limit cache holds at most (0: off).
    pub fn cache_capacity(&self) -> usize {
        self.cache.capacity()
    }

    /// Redis's answer for `batch`, its failure recorded. A call that misses the timeout while
    /// Redis is not known to be down is waited for until it answers, fails, or reaches its late
    /// bound, or until an outage starts (then the policy answers at once).
    async fn ask_redis(&self, batch: &Batch, tags: &[Tag]) -> Result<(bool, Counts), StoreError> {
        let answers_before = self.state.answers.load(Ordering::Relaxed);
        let started = tokio::time::Instant::now();
        let call = self.redis.apply_tagged(batch, tags);
        tokio::pin!(call);
        // One reading of the clock for both: a decision reads it often enough.
        if let Ok(answer) = tokio::time::timeout_at(started + self.redis.timeout(), &mut call).await
        {
            return self.recorded(answer);
        }
        // Boxed: a decision's future is moved whole from frame to frame, so the timers of this
        // rare wait should not make every decision's future larger.
        Box::pin(self.answer_late(call, started, answers_before)).await
    }

    /// The rest of [`Shared::ask_redis`] for a `call` that missed the timeout.
    async fn answer_late(
        &self,
        mut call: Pin<&mut impl Future<Output = Result<(bool, Counts), BackendError>>>,
        started: tokio::time::Instant,
        answers_before: u64,
    ) -> Result<(bool, Counts), StoreError> {
        let timeout = self.redis.timeout();
        self.state.late.fetch_add(1, Ordering::Relaxed);
        let late = BackendError::Timeout(timeout);
        // Woken if an outage starts from here on; checked for one that started already.
        let tripped = self.state.tripped.notified();
        tokio::pin!(tripped);
        tripped.as_mut().enable();
        if self.state.is_up() {
            let silence = tokio::time::sleep_until(started + timeout * SILENT_TIMEOUTS);
            tokio::pin!(silence);
            let bound = self.redis.late_bound();
            let given_up = tokio::time::sleep_until(started + bound);
            tokio::pin!(given_up);
            let mut heard_since = false;
            loop {
                tokio::select! {
                    answer = &mut call => return self.recorded(answer),
                    () = &mut tripped => break,
                    () = &mut given_up => {
                        return self.recorded(Err(BackendError::Timeout(bound)));
                    }
                    () = &mut silence, if !heard_since => {
                        if self.state.answers.load(Ordering::Relaxed) != answers_before {
                            // Redis answered others meanwhile: slow, not gone.
                            heard_since = true;
                            continue;
                        }
                        let now = tokio::time::Instant::now();
                        if now.saturating_duration_since(silence.deadline()) >= timeout {
                            // This timer fired a timeout late: this process was not running, and
                            // answers may be waiting unread. Listen for one more timeout first.
                            silence.as_mut().reset(now + timeout);
                            continue;
                        }
                        self.state.trip(&late, self.on_error);
                        break;
                    }
                }
            }
        }
        // A failure in a row like any other: while Redis is down it also puts off the next try.
        self.state.failed(&late, self.on_error);
        Err(late.into())
    }

    /// `answer`, with its failure recorded.
    fn recorded(
        &self,
        answer: Result<(bool, Counts), BackendError>,
    ) -> Result<(bool, Counts), StoreError> {
        match &answer {
            // One request's own failure says nothing about Redis.
            Err(BackendError::RequestFailed) | Ok(_) => {}
            Err(error) => self.state.failed(error, self.on_error),
        }
        Ok(answer?)
    }
}
