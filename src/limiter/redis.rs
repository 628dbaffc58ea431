//! Counters in Redis or Redis Cluster, shared by every ratelimitd replica that points at it.
//!
//! One request is one round trip: the Lua script (`redis_script.rs`) increments every counter
//! of the request and, if an enforced one has no room, takes the increments back before anyone
//! can see them (so, as in memory, a refused request moves nothing); it sets each new key's
//! expiry to the end of its window in the same step (so a key never outlives its window, nor
//! exists without one).
//!
//! Keys are short, to keep Redis small: `{H}S:I`, where `H` is 16 base64url characters of a
//! BLAKE3 hash of the counter key (domain and descriptor entries), `S` the window length in
//! seconds and `I` the window number modulo 100 (a key lives one window, so this only guards
//! against clocks a little apart); a refill counter's key ends in `S:b` (token bucket) or `S:s`
//! (sliding window) and lives as long as it weighs. The braces are a Cluster hash tag: all windows of one
//! descriptor live in one slot and go in one script. In Cluster mode the descriptors of one
//! request go out in parallel, one script each; if one refuses after another has counted, every
//! hit the others counted is taken back (shadow ones too, as memory never counts them).
//!
//! With one Redis, concurrent decisions are sent together: `redis_batcher` puts every decision
//! queued while the previous call was out into one script call (each request still counted
//! all-or-nothing, one after another). In Cluster mode concurrent decisions share a multiplexed
//! connection per node, which pipelines their commands. The client reconnects by itself.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{RedisError, Script};
use smallvec::SmallVec;
use tokio::sync::{OnceCell, mpsc, oneshot};

use super::algorithm::{SlidingCounts, Standing};
use super::redis_batcher::{self, Job};
use super::redis_script::{Answer, KeyArgs, SCRIPT, numbers, write_argv};
use super::store::{Batch, Count, CounterStore, Counting, Counts, Increment, StoreError, is_over};

pub use super::redis_script::BackendError;

/// Why a `--backend` address was refused.
#[derive(Debug, thiserror::Error)]
#[error("--backend {}: {reason}", redacted(address))]
pub struct BadAddress {
    address: String,
    reason: String,
}

/// Where the counters are: one Redis, or a Cluster reached through some of its nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `redis://host:port[/db]` or `rediss://` (TLS).
    Single(String),
    /// `redis+cluster://h1:p1,h2:p2` (`rediss+cluster://` for TLS): the seed nodes.
    Cluster(Vec<String>),
}

impl Target {
    /// How many addresses it names (logs never show them: they may hold a password).
    pub fn nodes(&self) -> usize {
        match self {
            Target::Single(_) => 1,
            Target::Cluster(nodes) => nodes.len(),
        }
    }

    /// Reads a `--backend` value other than `memory`.
    pub fn parse(address: &str) -> Result<Target, BadAddress> {
        let bad = |reason: &str| BadAddress {
            address: address.to_string(),
            reason: reason.to_string(),
        };
        let cluster = [
            ("redis+cluster://", "redis://"),
            ("rediss+cluster://", "rediss://"),
        ];
        for (scheme, node_scheme) in cluster {
            if let Some(nodes) = address.strip_prefix(scheme) {
                let nodes: Vec<String> = nodes
                    .split(',')
                    .map(str::trim)
                    .filter(|n| !n.is_empty())
                    .map(|n| format!("{node_scheme}{n}"))
                    .collect();
                if nodes.is_empty() {
                    return Err(bad("name at least one node: redis+cluster://HOST:PORT,…"));
                }
                return Ok(Target::Cluster(nodes));
            }
        }
        if address.starts_with("redis://") || address.starts_with("rediss://") {
            redis::Client::open(address).map_err(|e| bad(&e.to_string()))?;
            return Ok(Target::Single(address.to_string()));
        }
        Err(bad(
            "expected memory, redis://HOST:PORT, rediss://HOST:PORT or redis+cluster://HOST:PORT,…",
        ))
    }
}

/// An address as messages show it: without the credentials before `@`.
fn redacted(address: &str) -> String {
    match (address.find("://"), address.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://…@{}", &address[..scheme], &address[at + 1..])
        }
        _ => address.to_string(),
    }
}

#[derive(Clone)]
enum Connection {
    /// One Redis: decisions queue for the batcher (`redis_batcher`).
    Single(mpsc::Sender<Job>),
    Cluster(ClusterConnection),
}

/// Counters in Redis.
pub struct RedisStore {
    target: Target,
    timeout: Duration,
    /// Put before every key (`--redis-key-prefix`, envoyproxy/ratelimit's `CACHE_KEY_PREFIX`).
    key_prefix: Box<str>,
    /// For `rediss://`: the CA and client certificate files, when not the public web roots.
    tls: Option<RedisTls>,
    connection: OnceCell<Connection>,
    count: Script,
    release: Script,
}

/// Takes back hits counted by a script whose request another slot refused. ARGV, per key:
/// hits, algorithm, limit, burst, window length in milliseconds (as in the counting script). A fixed window loses the hits; a bucket's arrival time moves back by what they cost
/// (computed as the counting script computes it); a sliding window's current count loses them.
/// Each keeps its expiry.
const RELEASE_SCRIPT: &str = r"
for i = 1, #KEYS do
  local at = (i - 1) * 5
  local hits, algorithm = tonumber(ARGV[at + 1]), ARGV[at + 2]
  local raw = redis.call('GET', KEYS[i])
  if algorithm == '0' then
    if tonumber(raw or '0') >= hits then
      redis.call('DECRBY', KEYS[i], hits)
    end
  elseif raw and algorithm == '2' then
    local limit, burst = tonumber(ARGV[at + 3]), tonumber(ARGV[at + 4])
    if hits > burst + 1 then
      hits = burst + 1
    end
    local cost = math.ceil(hits * ((tonumber(ARGV[at + 5]) * 1000) / limit))
    local tat = tonumber(raw)
    if tat and limit > 0 and tat >= cost then
      redis.call('SET', KEYS[i], string.format('%.0f', tat - cost), 'KEEPTTL')
    end
  elseif raw then
    local window, current, previous = string.match(raw, '^(%d+):(%d+):(%d+)$')
    if window then
      current = math.max(0, tonumber(current) - hits)
      redis.call('SET', KEYS[i], window .. ':' .. string.format('%.0f', current) .. ':' .. previous, 'KEEPTTL')
    end
  end
end
return 1
";

/// TLS to Redis with a CA of one's own (`--redis-tls-ca`, envoyproxy/ratelimit's
/// `REDIS_TLS_CACERT`) and a client certificate (`REDIS_TLS_CLIENT_CERT`/`_KEY`). The files are
/// read at each connection, so renewed ones are used when the client reconnects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisTls {
    pub ca: Option<std::path::PathBuf>,
    pub client: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

impl RedisTls {
    fn certificates(&self) -> Result<redis::TlsCertificates, RedisError> {
        let read = |path: &std::path::Path| {
            std::fs::read(path).map_err(|e| {
                RedisError::from((
                    redis::ErrorKind::Io,
                    "cannot read a Redis TLS file",
                    format!("{}: {e}", path.display()),
                ))
            })
        };
        let client_tls = match &self.client {
            None => None,
            Some((cert, key)) => Some(redis::ClientTlsConfig {
                client_cert: read(cert)?,
                client_key: read(key)?,
            }),
        };
        let root_cert = self.ca.as_deref().map(read).transpose()?;
        Ok(redis::TlsCertificates {
            client_tls,
            root_cert,
        })
    }
}

/// How long a call may take, in `--backend-timeout-ms`: a call that misses the timeout is late,
/// and while Redis is not known to be down its decision waits for the late answer up to this
/// bound, because only Redis's answer is exact (`shared.rs`). Past it, the call has failed.
pub const LATE_ANSWER_TIMEOUTS: u32 = 8;

/// How long the client waits to connect before trying again.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Pause between connection attempts while Redis cannot be reached at start.
const CONNECT_RETRY: Duration = Duration::from_secs(1);

impl RedisStore {
    /// A store for `target`; connects in the background (call within the runtime), so that
    /// ratelimitd starts, and answers by its failure policy, while Redis is away.
    /// Counting in `target`, every key after `key_prefix` (usually empty).
    pub fn start(target: Target, timeout: Duration, key_prefix: &str) -> Arc<RedisStore> {
        RedisStore::start_with_tls(target, timeout, key_prefix, None)
    }

    /// [`RedisStore::start`], speaking TLS with `tls`'s CA and client certificate (for
    /// `rediss://` targets).
    pub fn start_with_tls(
        target: Target,
        timeout: Duration,
        key_prefix: &str,
        tls: Option<RedisTls>,
    ) -> Arc<RedisStore> {
        let store = Arc::new(RedisStore {
            target,
            timeout,
            key_prefix: Box::from(key_prefix),
            tls,
            connection: OnceCell::new(),
            count: Script::new(SCRIPT),
            release: Script::new(RELEASE_SCRIPT),
        });
        let connecting = Arc::clone(&store);
        tokio::spawn(async move { connecting.connect().await });
        store
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    /// `--backend-timeout-ms`: a call slower than this is late.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The longest a call may take: see [`LATE_ANSWER_TIMEOUTS`].
    pub fn late_bound(&self) -> Duration {
        self.timeout * LATE_ANSWER_TIMEOUTS
    }

    /// Whether a first connection has been made (it reconnects by itself after that).
    pub fn is_connected(&self) -> bool {
        self.connection.get().is_some()
    }

    /// Waits until connected, for at most `within`; whether it is.
    pub async fn wait_connected(&self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        while self.connection.get().is_none() {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }

    async fn connect(&self) {
        loop {
            match self.open().await {
                Ok(connection) => {
                    let _ = self.connection.set(connection);
                    tracing::info!(nodes = self.target.nodes(), "connected to Redis");
                    return;
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot connect to Redis yet");
                    tokio::time::sleep(CONNECT_RETRY).await;
                }
            }
        }
    }

    async fn open(&self) -> Result<Connection, RedisError> {
        match &self.target {
            Target::Single(url) => {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_response_timeout(None)
                    .set_max_delay(CONNECT_RETRY);
                let client = match &self.tls {
                    None => redis::Client::open(url.as_str())?,
                    Some(tls) => redis::Client::build_with_tls(url.as_str(), tls.certificates()?)?,
                };
                let mut manager = ConnectionManager::new_with_config(client, config).await?;
                redis_batcher::preload(&mut manager).await?;
                Ok(Connection::Single(redis_batcher::start(manager)))
            }
            Target::Cluster(nodes) => {
                let mut builder = ClusterClient::builder(nodes.clone())
                    .connection_timeout(CONNECT_TIMEOUT)
                    .response_timeout(self.late_bound())
                    .retries(0);
                if let Some(tls) = &self.tls {
                    builder = builder.certs(tls.certificates()?);
                }
                let client = builder.build()?;
                let mut connection = client.get_async_connection().await?;
                preload_on_every_master(&mut connection).await?;
                Ok(Connection::Cluster(connection))
            }
        }
    }

    /// Counts `batch`, all or nothing, within the [late bound](RedisStore::late_bound).
    pub async fn apply(&self, batch: &Batch) -> Result<(bool, Counts), BackendError> {
        let bound = self.late_bound();
        tokio::time::timeout(bound, self.apply_tagged(batch, &tags_of(batch)))
            .await
            .map_err(|_| BackendError::Timeout(bound))?
    }

    /// [`RedisStore::apply`] with the batch's [`tags_of`] already computed, and no time bound:
    /// the caller keeps to the late bound (the failure policy's timers, `shared.rs`, which
    /// spares a decision a second timer).
    pub async fn apply_tagged(
        &self,
        batch: &Batch,
        tags: &[Tag],
    ) -> Result<(bool, Counts), BackendError> {
        let connection = self
            .connection
            .get()
            .cloned()
            .ok_or(BackendError::NotConnected)?;
        self.apply_on(connection, batch, tags).await
    }

    /// The Redis key of one increment's counter: see the module documentation.
    fn key(&self, tags: &[Tag], inc: &Increment) -> RedisKey {
        redis_key(&self.key_prefix, &tags[inc.key], inc)
    }

    async fn apply_on(
        &self,
        connection: Connection,
        batch: &Batch,
        tags: &[Tag],
    ) -> Result<(bool, Counts), BackendError> {
        match connection {
            Connection::Single(jobs) => self.apply_single(&jobs, batch, tags).await,
            // Boxed: a decision's future is moved whole from frame to frame, so what only
            // Cluster mode waits on should not make every decision's future larger.
            Connection::Cluster(cluster) => {
                Box::pin(self.apply_cluster(cluster, batch, tags)).await
            }
        }
    }

    /// One Redis: the request joins the batcher's queue and waits for its answer.
    async fn apply_single(
        &self,
        jobs: &mpsc::Sender<Job>,
        batch: &Batch,
        tags: &[Tag],
    ) -> Result<(bool, Counts), BackendError> {
        let stopped = || BackendError::Batch("the batcher stopped".into());
        let (reply, answer) = oneshot::channel();
        let job = Job {
            keys: batch
                .increments
                .iter()
                .map(|inc| self.key(tags, inc))
                .collect(),
            args: batch.increments.iter().map(KeyArgs::of).collect(),
            reply,
        };
        match jobs.try_send(job) {
            Ok(()) => {}
            // A full queue is rare: its wait is boxed for the same reason as Cluster mode.
            Err(mpsc::error::TrySendError::Full(job)) => {
                Box::pin(jobs.send(job)).await.map_err(|_| stopped())?;
            }
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(stopped()),
        }
        let answer = answer.await.map_err(|_| stopped())??;
        let all: SmallVec<[usize; 4]> = (0..batch.increments.len()).collect();
        Ok(counts_of(batch, &[(all, answer)]))
    }

    /// Redis Cluster: one script per descriptor key (one slot each), all at once.
    async fn apply_cluster(
        &self,
        cluster: ClusterConnection,
        batch: &Batch,
        tags: &[Tag],
    ) -> Result<(bool, Counts), BackendError> {
        let mut groups: Vec<SmallVec<[usize; 4]>> = Vec::new();
        for (i, inc) in batch.increments.iter().enumerate() {
            match groups
                .iter_mut()
                .find(|g| batch.increments[g[0]].key == inc.key)
            {
                Some(group) => group.push(i),
                None => groups.push(smallvec::smallvec![i]),
            }
        }
        let answers = futures_util::future::join_all(groups.iter().map(|group| {
            let mut connection = cluster.clone();
            async move { self.run(&mut connection, batch, tags, group).await }
        }))
        .await;
        // A refusal, or a failure, in one slot: take back what the others counted.
        let counted =
            |answer: &Result<Answer, BackendError>| answer.as_ref().is_ok_and(|a| a.admitted);
        let complete = answers.iter().all(counted);
        if !complete {
            let releases =
                groups
                    .iter()
                    .zip(&answers)
                    .filter(|(_, a)| counted(a))
                    .map(|(group, _)| {
                        let mut connection = cluster.clone();
                        async move { self.take_back(&mut connection, batch, tags, group).await }
                    });
            let released = futures_util::future::join_all(releases).await;
            let answers = answers.into_iter().collect::<Result<Vec<_>, _>>()?;
            released.into_iter().collect::<Result<Vec<()>, _>>()?;
            let pairs: Vec<_> = groups.into_iter().zip(answers).collect();
            return Ok(counts_of(batch, &pairs));
        }
        let answers = answers.into_iter().collect::<Result<Vec<_>, _>>()?;
        let pairs: Vec<_> = groups.into_iter().zip(answers).collect();
        Ok(counts_of(batch, &pairs))
    }

    async fn run(
        &self,
        connection: &mut impl redis::aio::ConnectionLike,
        batch: &Batch,
        tags: &[Tag],
        group: &[usize],
    ) -> Result<Answer, BackendError> {
        // One request: the script's lists of shapes and requests hold just this one.
        let args: SmallVec<[_; 4]> = group
            .iter()
            .map(|&i| KeyArgs::of(&batch.increments[i]))
            .collect();
        let mut invocation = self.count.prepare_invoke();
        for &i in group {
            invocation.key(self.key(tags, &batch.increments[i]).as_slice());
        }
        write_argv(&[&args], |n| {
            invocation.arg(n);
        });
        let reply: Vec<u8> = invocation.invoke_async(connection).await?;
        Answer::read(&numbers(&reply)?, &args).0
    }

    async fn take_back(
        &self,
        connection: &mut impl redis::aio::ConnectionLike,
        batch: &Batch,
        tags: &[Tag],
        group: &[usize],
    ) -> Result<(), BackendError> {
        let mut invocation = self.release.prepare_invoke();
        for &i in group {
            let inc = &batch.increments[i];
            if inc.hits > 0 {
                // The same algorithm numbers and burst as the counting script's.
                let args = KeyArgs::of(inc);
                invocation.key(self.key(tags, inc).as_slice()).arg(&[
                    inc.hits,
                    args.algorithm(),
                    u64::from(inc.requests_per_unit),
                    args.burst(),
                    inc.window_ms(),
                ]);
            }
        }
        let _: i64 = invocation.invoke_async(connection).await?;
        Ok(())
    }
}

/// Loads both scripts on every master, which also opens the connection to each: so that the
/// first decisions in each slot neither wait for a connection nor load the script.
async fn preload_on_every_master(connection: &mut ClusterConnection) -> Result<(), RedisError> {
    use redis::cluster_routing::{MultipleNodeRoutingInfo, ResponsePolicy, RoutingInfo};
    for script in [SCRIPT, RELEASE_SCRIPT] {
        let mut load = redis::cmd("SCRIPT");
        load.arg("LOAD").arg(script);
        let every_master = RoutingInfo::MultiNode((
            MultipleNodeRoutingInfo::AllMasters,
            Some(ResponsePolicy::AllSucceeded),
        ));
        connection.route_command(load, every_master).await?;
    }
    Ok(())
}

/// The counts of every increment, as the memory store reports them: an enforced counter is over
/// when it refused, or, read after the refusing one, when its hits would not have fitted
/// either; another is over when its count is past its limit.
fn counts_of(batch: &Batch, answers: &[(SmallVec<[usize; 4]>, Answer)]) -> (bool, Counts) {
    let admitted = answers.iter().all(|(_, a)| a.admitted);
    let mut counts = Counts::from_elem(Count::default(), batch.increments.len());
    for (group, answer) in answers {
        for (place, (&i, numbers)) in group.iter().zip(&answer.values).enumerate() {
            let inc = &batch.increments[i];
            let (value, standing) = read_numbers(inc, *numbers);
            // A counter this request incremented, in a request refused elsewhere, is back.
            let value = if answer.admitted && !admitted {
                value.saturating_sub(inc.hits)
            } else {
                value
            };
            let over_limit = match answer.first_over {
                // After the refusing counter the script only read: over if the hits would not
                // have fitted either, as in memory.
                Some(first) if inc.enforced && place > first => {
                    is_over(value.saturating_add(inc.hits), inc.hits, inc.ceiling())
                }
                Some(first) if inc.enforced => place == first,
                _ if inc.enforced => false,
                _ => is_over(value, inc.hits, inc.ceiling()),
            };
            counts[i] = Count {
                standing,
                ..Count::fixed(value, over_limit)
            };
        }
    }
    (admitted, counts)
}

/// A key's count, and a refill counter's answer, from the script's three numbers for it.
fn read_numbers(inc: &Increment, [a, b, c]: [u64; 3]) -> (u64, Option<Standing>) {
    match inc.counting {
        Counting::Fixed => (a, None),
        Counting::Bucket { burst } => {
            let (bucket, tat, now) = (inc.bucket(burst), a, b);
            let standing = bucket.standing(tat, now, inc.hits);
            (bucket.used(tat, now), Some(standing))
        }
        Counting::Sliding => {
            let counts = SlidingCounts {
                current: a,
                previous: b,
                elapsed_ms: c,
            };
            let sliding = inc.sliding();
            (
                sliding.used(&counts),
                Some(sliding.standing(&counts, inc.hits)),
            )
        }
    }
}

/// The `{H}` part of a descriptor's keys: 18 bytes. It names the descriptor in Redis, and in
/// the local over-limit cache (`over_limit_cache.rs`).
pub type Tag = [u8; 18];

/// A Redis key: inline up to 32 bytes (every key without a `--redis-key-prefix`).
pub type RedisKey = SmallVec<[u8; 32]>;

/// The [`Tag`] of each of a batch's keys, in order: each descriptor hashed once, however many
/// windows it has.
pub fn tags_of(batch: &Batch) -> SmallVec<[Tag; 2]> {
    batch.keys.iter().map(|k| tag_of(k.as_bytes())).collect()
}

/// `{H}S:I`, `{H}S:s` or `{H}S:b` after `prefix`: see the module documentation.
fn redis_key(prefix: &str, tag: &Tag, inc: &Increment) -> RedisKey {
    let mut seconds = itoa::Buffer::new();
    let seconds = seconds.format(inc.window_seconds).as_bytes();
    let mut index = itoa::Buffer::new();
    // A refill counter's key lives as long as it weighs, whatever the window number.
    let last: &[u8] = match inc.counting {
        Counting::Fixed => index.format(inc.window_index % 100).as_bytes(),
        Counting::Sliding => b"s",
        Counting::Bucket { .. } => b"b",
    };
    let parts = [prefix.as_bytes(), tag, seconds, b":", last];
    let len: usize = parts.iter().map(|part| part.len()).sum();
    let mut inline = [0u8; 32];
    let Some(place) = inline.get_mut(..len) else {
        // Only a long `--redis-key-prefix` makes a key this long.
        return parts.concat().into();
    };
    // Every key without a prefix: written in place, no growing.
    let mut at = 0;
    for part in parts {
        place[at..at + part.len()].copy_from_slice(part);
        at += part.len();
    }
    RedisKey::from_buf_and_len(inline, len)
}

fn tag_of(counter_key: &[u8]) -> Tag {
    let hash = blake3::hash(counter_key);
    let mut tag = [0u8; 18];
    tag[0] = b'{';
    tag[17] = b'}';
    // 12 bytes are exactly 16 base64 characters.
    let _ = URL_SAFE_NO_PAD.encode_slice(&hash.as_bytes()[..12], &mut tag[1..17]);
    tag
}

impl CounterStore for RedisStore {
    async fn count(&self, batch: &Batch) -> Result<(bool, Counts), StoreError> {
        Ok(self.apply(batch).await?)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::limiter::CounterKey;

    #[test]
    fn addresses_are_read_or_refused_with_the_forms_that_work() {
        assert_eq!(
            Target::parse("redis://127.0.0.1:6379").unwrap(),
            Target::Single("redis://127.0.0.1:6379".into())
        );
        assert_eq!(
            Target::parse("redis+cluster://a:1, b:2").unwrap(),
            Target::Cluster(vec!["redis://a:1".into(), "redis://b:2".into()])
        );
        assert_eq!(
            Target::parse("rediss+cluster://a:1").unwrap(),
            Target::Cluster(vec!["rediss://a:1".into()])
        );
        for bad in ["redis+cluster://", "http://x", "localhost:6379"] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
        let secret = Target::parse("redis://:hunter2@host:1/notanumber").unwrap_err();
        assert!(!secret.to_string().contains("hunter2"), "{secret}");
    }

    #[test]
    fn keys_are_short_and_name_descriptor_and_window() {
        let key = |value: &str, seconds: u32, index: u32| {
            let batch = Batch {
                keys: smallvec::smallvec![CounterKey::new(
                    "mega-api",
                    [("api_key", value)].into_iter()
                )],
                increments: Default::default(),
            };
            let inc = Increment {
                key: 0,
                window_seconds: seconds,
                window_index: index,
                expires_in_ms: 1_000,
                requests_per_unit: 60,
                hits: 1,
                enforced: true,
                counting: Counting::Fixed,
                now_us: 0,
            };
            String::from_utf8(redis_key("", &tags_of(&batch)[0], &inc).to_vec()).unwrap()
        };
        let a = key("customer-1", 60, 29_931_234);
        assert_eq!(a.len(), 1 + 16 + 1 + "60:34".len(), "{a}");
        assert!(a.starts_with('{') && a.ends_with("}60:34"), "{a}");
        assert_eq!(a, key("customer-1", 60, 29_931_234), "stable");
        assert_ne!(a[..18], key("customer-2", 60, 29_931_234)[..18]);
        assert_eq!(
            a[..18],
            key("customer-1", 3600, 498_853)[..18],
            "one slot per descriptor"
        );
    }

    #[test]
    fn keys_take_the_prefix_and_the_refill_forms_whatever_their_length() {
        let batch = Batch {
            keys: smallvec::smallvec![CounterKey::new("d", [("k", "v")].into_iter())],
            increments: Default::default(),
        };
        let tags = tags_of(&batch);
        let tag = std::str::from_utf8(&tags[0]).unwrap();
        let key = |prefix: &str, seconds: u32, counting: Counting| {
            let inc = Increment {
                key: 0,
                window_seconds: seconds,
                window_index: 1_234,
                expires_in_ms: 1_000,
                requests_per_unit: 60,
                hits: 1,
                enforced: true,
                counting,
                now_us: 0,
            };
            String::from_utf8(redis_key(prefix, &tags[0], &inc).to_vec()).unwrap()
        };
        assert_eq!(key("", 60, Counting::Fixed), format!("{tag}60:34"));
        assert_eq!(key("", 1, Counting::Sliding), format!("{tag}1:s"));
        let longest = key("", u32::MAX, Counting::Fixed);
        assert_eq!(longest, format!("{tag}4294967295:34"));
        assert_eq!(longest.len(), 31, "inline, as every key without a prefix");
        assert_eq!(
            key("rl_", 60, Counting::Bucket { burst: 5 }),
            format!("rl_{tag}60:b")
        );
        let prefix = "a-prefix-long-enough-to-need-the-heap_";
        assert_eq!(
            key(prefix, 3_600, Counting::Fixed),
            format!("{prefix}{tag}3600:34")
        );
    }
}
