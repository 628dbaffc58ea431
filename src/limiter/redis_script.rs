//! The one Lua script that counts in Redis, its answer, and Redis's errors.
//!
//! One script serves one Redis and Redis Cluster alike: it counts a list of requests, each all
//! or nothing, one after another. The batcher (`redis_batcher`) sends the requests queued for one
//! Redis together; in Cluster mode each call holds one request's counters of one slot. The
//! "over its limit" rule is `is_over` below, the Lua twin of `store::is_over`.

use redis::RedisError;

use super::store::{Increment, StoreError};

/// ARGV: the number of requests, then per request its number of keys and, per key, hits,
/// limit, enforced (1/0), expiry (milliseconds: what the window has left, by the caller's
/// clock; relative, so a caller whose clock is behind cannot expire a key at once). KEYS: every
/// request's keys,
/// in order. Returns, per request: admitted (1/0), first over (1-based, 0: none) and the value
/// of each of its keys.
///
/// Per request: each key is incremented in turn (a new key gets its expiry in the same step),
/// and at the first enforced one that is over, everything this request counted is taken back
/// and the rest only read: atomic, so nobody sees hits that were taken back. A request within
/// its limits costs one INCRBY per key. Hits go to Redis as the caller wrote them (strings, never
/// through Lua's floating-point numbers). A command that fails for one request (a counter that
/// would overflow, a key holding something else) is caught (`redis.pcall`): that request's
/// counts are taken back and it alone answers admitted -1, and the requests batched with it
/// count as usual.
pub const SCRIPT: &str = r"
local function is_over(value, hits, limit)
  if hits == 0 then
    return value >= limit
  end
  return value > limit
end

local function read(key)
  local value = redis.pcall('GET', key)
  if type(value) == 'table' then
    return nil
  end
  return tonumber(value or '0')
end

local out = {}
local k = 0
local a = 2
for r = 1, tonumber(ARGV[1]) do
  local n = tonumber(ARGV[a])
  a = a + 1
  local values = {}
  local first_over = 0
  local failed = false
  local counted = 0
  for i = 1, n do
    local at = a + (i - 1) * 4
    local key = KEYS[k + i]
    local hits = tonumber(ARGV[at])
    local value
    if hits > 0 then
      value = redis.pcall('INCRBY', key, ARGV[at])
      if type(value) == 'table' then
        failed = true
        break
      end
      counted = i
      if value == hits then
        redis.call('PEXPIRE', key, ARGV[at + 3])
      end
    else
      value = read(key)
      if value == nil then
        failed = true
        break
      end
    end
    values[i] = value
    if ARGV[at + 2] == '1' and is_over(value, hits, tonumber(ARGV[at + 1])) then
      first_over = i
      break
    end
  end
  if failed or first_over > 0 then
    local upto = failed and counted or first_over
    for j = 1, upto do
      local taken = ARGV[a + (j - 1) * 4]
      if tonumber(taken) > 0 then
        values[j] = redis.pcall('DECRBY', KEYS[k + j], taken)
      end
    end
    for j = upto + 1, n do
      values[j] = read(KEYS[k + j]) or 0
    end
  end
  if failed then
    out[#out + 1] = -1
    out[#out + 1] = 0
    for i = 1, n do
      out[#out + 1] = 0
    end
  else
    out[#out + 1] = first_over == 0 and 1 or 0
    out[#out + 1] = first_over
    for i = 1, n do
      out[#out + 1] = values[i]
    end
  end
  k = k + n
  a = a + 4 * n
end
return out
";

/// A key's ARGV in [`SCRIPT`]: hits, limit, enforced, expiry.
pub fn key_args(inc: &Increment) -> [u64; 4] {
    [
        inc.hits,
        u64::from(inc.requests_per_unit),
        u64::from(inc.enforced),
        inc.expires_in_ms,
    ]
}

/// Why Redis could not count a request.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("not connected to Redis yet")]
    NotConnected,
    #[error("Redis did not answer within {0:?}")]
    Timeout(std::time::Duration),
    #[error("Redis: {0}")]
    Redis(#[from] RedisError),
    #[error("Redis answered something unexpected: {0}")]
    Unexpected(String),
    #[error("Redis: {0}")]
    Batch(String),
    /// About one request only: Redis could not count it (a counter that would overflow, or a
    /// key holding something else); the requests batched with it counted as usual.
    #[error("Redis could not count this request (a counter would overflow or holds no number)")]
    RequestFailed,
}

/// A Redis failure is the store's (the failure policy decides), except one request's own.
impl From<BackendError> for StoreError {
    fn from(error: BackendError) -> StoreError {
        match error {
            BackendError::RequestFailed => StoreError::Refused(error.to_string()),
            error => StoreError::Unavailable(Box::new(error)),
        }
    }
}

/// The script's answer for one request.
pub struct Answer {
    pub admitted: bool,
    /// Index in the request of the first enforced counter without room.
    pub first_over: Option<usize>,
    pub values: Vec<u64>,
}

impl Answer {
    /// One request's part of a reply, which has `keys` keys.
    pub fn read(reply: &[i64], keys: usize) -> Result<Answer, BackendError> {
        let [admitted, first_over, values @ ..] = reply else {
            return Err(BackendError::Unexpected(format!("{reply:?}")));
        };
        if *admitted == -1 {
            return Err(BackendError::RequestFailed);
        }
        if values.len() != keys {
            return Err(BackendError::Unexpected(format!("{reply:?}")));
        }
        Ok(Answer {
            admitted: *admitted == 1,
            first_over: usize::try_from(*first_over)
                .ok()
                .and_then(|i| i.checked_sub(1)),
            values: values
                .iter()
                .map(|v| u64::try_from(*v).unwrap_or(0))
                .collect(),
        })
    }
}
