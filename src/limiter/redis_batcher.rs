//! Decisions waiting for one Redis, sent together: one script call for many requests.
//!
//! Each decision queues its keys and arguments; one task takes everything queued, sends it as
//! a single `EVALSHA`, and hands each decision its own answer. The script runs the requests
//! one after another, each exactly as the one-request script would (count, and take back on a
//! refusal), so every request keeps its all-or-nothing rule; what is shared is the cost of the
//! call, in Redis (a script call has a fixed cost well above its commands') and in ratelimitd
//! (one command, one write, one read for the lot). Under light load a batch holds one request
//! and nothing waits for company.

use redis::Script;
use redis::aio::ConnectionManager;
use tokio::sync::{mpsc, oneshot};

use super::redis::{Answer, BackendError};

/// The most requests in one call: bounds the script's run time, during which Redis serves
/// nobody else.
const MAX_REQUESTS: usize = 128;

/// The longest one call may take before its decisions are told it failed (each decision gave
/// up long before, after `--backend-timeout-ms`): a Redis that stopped answering must not stall
/// the batcher for good.
const CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// One request's part of a call.
pub struct Job {
    pub keys: Vec<Vec<u8>>,
    /// Per key: hits, limit, enforced (1/0), expiry.
    pub args: Vec<[u64; 4]>,
    pub reply: oneshot::Sender<Result<Answer, BackendError>>,
}

/// ARGV: the number of requests, then per request its number of keys and, per key, hits,
/// limit, enforced, expiry. KEYS: every request's keys, in order. Returns, per request,
/// admitted, first over (1-based, 0: none) and the value of each of its keys.
const BATCH_SCRIPT: &str = r"
local out = {}
local k = 0
local a = 2
for r = 1, tonumber(ARGV[1]) do
  local n = tonumber(ARGV[a])
  a = a + 1
  local values = {}
  local first_over = 0
  for i = 1, n do
    local at = a + (i - 1) * 4
    local key = KEYS[k + i]
    local hits = tonumber(ARGV[at])
    local value
    if hits > 0 then
      value = redis.call('INCRBY', key, hits)
      if value == hits then
        redis.call('EXPIREAT', key, ARGV[at + 3])
      end
    else
      value = tonumber(redis.call('GET', key) or '0')
    end
    values[i] = value
    if ARGV[at + 2] == '1' then
      local limit = tonumber(ARGV[at + 1])
      if (hits == 0 and value >= limit) or (hits > 0 and value > limit) then
        first_over = i
        break
      end
    end
  end
  if first_over > 0 then
    for j = 1, first_over do
      local taken = tonumber(ARGV[a + (j - 1) * 4])
      if taken > 0 then
        values[j] = redis.call('DECRBY', KEYS[k + j], taken)
      end
    end
    for j = first_over + 1, n do
      values[j] = tonumber(redis.call('GET', KEYS[k + j]) or '0')
    end
  end
  out[#out + 1] = first_over == 0 and 1 or 0
  out[#out + 1] = first_over
  for i = 1, n do
    out[#out + 1] = values[i]
  end
  k = k + n
  a = a + 4 * n
end
return out
";

/// Loads the script into Redis, so that the first decisions do not wait for it.
pub async fn preload(connection: &mut ConnectionManager) -> redis::RedisResult<()> {
    Script::new(BATCH_SCRIPT).load_async(connection).await?;
    Ok(())
}

/// Starts the task that sends queued jobs on `connection`; it ends when every sender is gone.
pub fn start(connection: ConnectionManager) -> mpsc::Sender<Job> {
    let (jobs, queue) = mpsc::channel(4 * MAX_REQUESTS);
    tokio::spawn(run(connection, queue));
    jobs
}

async fn run(mut connection: ConnectionManager, mut queue: mpsc::Receiver<Job>) {
    let script = Script::new(BATCH_SCRIPT);
    let mut batch: Vec<Job> = Vec::with_capacity(MAX_REQUESTS);
    while let Some(first) = queue.recv().await {
        batch.push(first);
        while batch.len() < MAX_REQUESTS {
            match queue.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        // A decision that gave up waiting has been answered by the failure policy: do not
        // count it after all.
        batch.retain(|job| !job.reply.is_closed());
        if !batch.is_empty() {
            send(&script, &mut connection, &mut batch).await;
        }
        batch.clear();
    }
}

async fn send(script: &Script, connection: &mut ConnectionManager, batch: &mut Vec<Job>) {
    let mut invocation = script.prepare_invoke();
    invocation.arg(batch.len());
    for job in batch.iter() {
        invocation.arg(job.keys.len());
        for (key, args) in job.keys.iter().zip(&job.args) {
            invocation.key(key.as_slice());
            for arg in args {
                invocation.arg(*arg);
            }
        }
    }
    let reply: Result<Vec<i64>, redis::RedisError> =
        tokio::time::timeout(CALL_TIMEOUT, invocation.invoke_async(connection))
            .await
            .unwrap_or_else(|_| {
                Err(redis::RedisError::from((
                    redis::ErrorKind::Io,
                    "no answer within the call timeout",
                )))
            });
    match reply {
        Ok(reply) => {
            let mut rest = reply.as_slice();
            for job in batch.drain(..) {
                let length = 2 + job.keys.len();
                let answer = match rest.get(..length) {
                    Some(part) => {
                        rest = &rest[length..];
                        Answer::read(part, job.keys.len())
                    }
                    None => Err(BackendError::Unexpected("a short batch answer".into())),
                };
                let _ = job.reply.send(answer);
            }
        }
        Err(error) => {
            let message = error.to_string();
            for job in batch.drain(..) {
                let _ = job.reply.send(Err(BackendError::Batch(message.clone())));
            }
        }
    }
}
