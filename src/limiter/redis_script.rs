//! The one Lua script that counts in Redis, its answer, and Redis's errors.
//!
//! One script serves one Redis and Redis Cluster alike: it counts a list of requests, each all
//! or nothing, one after another. The batcher (`redis_batcher`) sends the requests queued for one
//! Redis together; in Cluster mode each call holds one request's counters of one slot. The
//! "over its limit" rule of a fixed window is written out in the script's main loop, the Lua twin
//! of `store::is_over`.

use redis::RedisError;
use smallvec::SmallVec;

use super::store::{Counting, Increment, StoreError};

/// ARGV: the requests' shapes, then the requests. A shape is the arguments of a request's keys,
/// which the requests of one call mostly share (the same rules, counted at the same
/// millisecond): the number of shapes, then per shape its number of keys and, per key
/// ([`KeyArgs`], 4 or 5 numbers): its kind (2 × algorithm + 1 if enforced; algorithm 0: fixed
/// window, 1: sliding window, 2: token bucket), hits, limit, then a fixed window's expiry
/// (milliseconds: what the window has left, by the caller's clock; relative, so a caller whose
/// clock is behind cannot expire a key at once) or a refill counter's window length in
/// milliseconds, and a bucket's burst. Then the number of requests and each one's shape
/// (1-based). Every argument costs ratelimitd its writing and Redis its reading, so a shared
/// shape takes a seed-shaped request from 9 arguments to 1. KEYS: every request's keys, in
/// order. Returns, per request: the first enforced key over its limit (1-based; 0: admitted;
/// -1: failed, and nothing more), then per key ([`width`] numbers): a fixed window's count; a
/// bucket's theoretical arrival time and Redis's time, in µs; a sliding window's current count,
/// previous count and milliseconds into the window; all packed in one string ([`numbers`]).
/// As few numbers each way as that: each argument costs ratelimitd hundreds of instructions to
/// write, and Redis a string to make.
///
/// Per request: each key is counted in turn (a new key gets its expiry in the same step), and
/// at the first enforced one that is over, everything this request counted is taken back and
/// the rest only read: atomic, so nobody sees hits that were taken back. A fixed window costs
/// one INCRBY per key; hits go to Redis as the caller wrote them (strings, never through Lua's
/// floating-point numbers). A refill counter is one key read and, when it moves, written with
/// its expiry (`SET … PX`): a bucket's TAT lives until the bucket is full again, a sliding
/// window (`window:current:previous`) until the window after it ends. Their time is Redis's own
/// (`TIME`, read once per call), so replicas whose clocks differ agree; their arithmetic is
/// `algorithm.rs`'s, in the same order (doubles: integers exact below 2^53). A command that
/// fails for one request (a counter that would overflow, a key holding something else) is
/// caught (`redis.pcall`): that request's counts are taken back and it alone answers admitted
/// -1, and the requests batched with it count as usual. A shape's numbers are read once a call,
/// not once a request: around its two `INCRBY`s, the Lua of a seed-shaped request cost Redis
/// 1.3 µs more than the commands themselves, and 0.8 µs once written so.
pub const SCRIPT: &str = r"
local now_us
local function now()
  if not now_us then
    local t = redis.call('TIME')
    now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
  end
  return now_us
end

local function read(key)
  local value = redis.pcall('GET', key)
  if type(value) == 'table' then
    return nil
  end
  return tonumber(value or '0')
end

local function whole(x)
  return string.format('%.0f', x)
end

local function at_least_one(hits)
  if hits == 0 then
    return 1
  end
  return hits
end

-- Whether the hits fit, the three numbers answered, and the value to store and its ttl (when
-- the bucket moves); nil when the key holds no bucket.
local function bucket(raw, hits, limit, enforced, burst, window_ms)
  local tat = tonumber(raw or '0')
  if tat == nil then
    return nil
  end
  local t = now()
  if limit == 0 or burst == 0 then
    return false, tat, t, 0
  end
  local interval = (window_ms * 1000) / limit
  local function cost(n)
    if n > burst + 1 then
      n = burst + 1
    end
    return math.ceil(n * interval)
  end
  local capacity = cost(burst)
  local base = math.max(tat, t)
  local fits = base - t + cost(at_least_one(hits)) <= capacity
  if hits > 0 and (fits or not enforced) then
    local after = math.min(base, t + capacity) + cost(hits)
    return fits, after, t, 0, whole(after), math.max(1, math.ceil((after - t) / 1000))
  end
  return fits, tat, t, 0
end

-- As `bucket`, for a sliding window.
local function sliding(raw, hits, limit, enforced, window_ms)
  local t = math.floor(now() / 1000)
  local index = math.floor(t / window_ms)
  local elapsed = t - index * window_ms
  local current, previous = 0, 0
  if raw then
    local at, c, p = string.match(raw, '^(%d+):(%d+):(%d+)$')
    if not at then
      return nil
    end
    at, c, p = tonumber(at), tonumber(c), tonumber(p)
    if at >= index then
      if at > index then
        index, elapsed = at, 0
      end
      current, previous = c, p
    elseif at == index - 1 then
      previous = c
    end
  end
  local fits = previous * (window_ms - elapsed) + (current + at_least_one(hits)) * window_ms
    <= limit * window_ms
  if hits > 0 and (fits or not enforced) then
    local after = current + hits
    local value = whole(index) .. ':' .. whole(after) .. ':' .. whole(previous)
    return fits, after, previous, elapsed, value, 2 * window_ms - elapsed
  end
  return fits, current, previous, elapsed
end

-- The refill counter whose arguments start at `at`.
local function refill(raw, at, hits, enforced)
  local kind = ARGV[at]
  local limit = tonumber(ARGV[at + 2])
  local window_ms = tonumber(ARGV[at + 3])
  if kind == '4' or kind == '5' then
    return bucket(raw, hits, limit, enforced, tonumber(ARGV[at + 4]), window_ms)
  end
  return sliding(raw, hits, limit, enforced, window_ms)
end

-- A key's three numbers, only read.
local function numbers_of(key, at)
  local kind = ARGV[at]
  if kind == '0' or kind == '1' then
    return read(key) or 0, 0, 0
  end
  local raw = redis.pcall('GET', key)
  if type(raw) == 'table' then
    return 0, 0, 0
  end
  local fits, x, y, z = refill(raw, at, 0, false)
  if fits == nil then
    return 0, 0, 0
  end
  return x, y, z
end

-- Per shape, where each of its keys' arguments start; the numbers of its keys' arguments, read
-- once a call rather than once a request (in one table: tables cost Redis at each call).
local shapes = {}
local num = {}
local a = 2
for s = 1, tonumber(ARGV[1]) do
  local starts = {}
  for i = 1, tonumber(ARGV[a]) do
    a = a + 1
    starts[i] = a
    local kind = tonumber(ARGV[a])
    num[a], num[a + 1], num[a + 2] = kind, tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
    if kind >= 4 then
      a = a + 4
    else
      a = a + 3
    end
  end
  a = a + 1
  shapes[s] = starts
end

-- Per key of the request at hand (reused from request to request, so that counting allocates
-- nothing per key): its three numbers, a refill counter's old value.
local xs, ys, zs, olds = {}, {}, {}, {}
local out = {}
local o = 0
local k = 0
for r = 1, tonumber(ARGV[a]) do
  local ats = shapes[tonumber(ARGV[a + r])]
  local n = #ats
  local first_over = 0
  local failed = false
  local counted = 0
  for i = 1, n do
    local at = ats[i]
    local key = KEYS[k + i]
    local kind = num[at]
    local hits = num[at + 1]
    local over
    if kind < 2 then
      -- `store::is_over`, written out (a Lua call costs): this is most of what Redis runs.
      local value
      if hits > 0 then
        value = redis.pcall('INCRBY', key, ARGV[at + 1])
        if type(value) == 'table' then
          failed = true
          break
        end
        if value == hits then
          redis.call('PEXPIRE', key, ARGV[at + 3])
        end
        over = value > num[at + 2]
      else
        value = read(key)
        if value == nil then
          failed = true
          break
        end
        over = value >= num[at + 2]
      end
      xs[i] = value
    else
      olds[i] = nil
      local raw = redis.pcall('GET', key)
      local fits, x, y, z, store, ttl
      if type(raw) ~= 'table' then
        fits, x, y, z, store, ttl = refill(raw, at, hits, kind % 2 == 1)
      end
      if fits == nil then
        failed = true
        break
      end
      if store then
        olds[i] = raw
        redis.call('SET', key, store, 'PX', ttl)
      end
      xs[i], ys[i], zs[i] = x, y, z
      over = not fits
    end
    counted = i
    if over and kind % 2 == 1 then
      first_over = i
      break
    end
  end
  if failed or first_over > 0 then
    local upto = failed and counted or first_over
    for j = 1, upto do
      local at = ats[j]
      local key = KEYS[k + j]
      if num[at] < 2 then
        if num[at + 1] > 0 then
          xs[j] = redis.pcall('DECRBY', key, ARGV[at + 1])
        end
      elseif olds[j] ~= nil then
        if olds[j] then
          redis.call('SET', key, olds[j], 'KEEPTTL')
        else
          redis.call('DEL', key)
        end
        xs[j], ys[j], zs[j] = numbers_of(key, at)
      end
    end
    for j = upto + 1, n do
      xs[j], ys[j], zs[j] = numbers_of(KEYS[k + j], ats[j])
    end
  end
  o = o + 1
  if failed then
    out[o] = -1
  else
    out[o] = first_over
    for i = 1, n do
      local kind = num[ats[i]]
      o = o + 1
      out[o] = xs[i]
      if kind >= 2 then
        o = o + 1
        out[o] = ys[i]
        if kind < 4 then
          o = o + 1
          out[o] = zs[i]
        end
      end
    end
  end
  k = k + n
end
-- The numbers packed in one string, 8 bytes each, little-endian: costs Redis what an array of
-- integers does and ratelimitd next to nothing to read (an array costs it about a thousand
-- instructions a number in its Redis client's reply parser). In pieces, as `unpack` puts every
-- number on Lua's stack.
local packed = {}
for i = 1, o, 4096 do
  local j = math.min(o, i + 4095)
  packed[#packed + 1] = struct.pack('<' .. string.rep('i8', j - i + 1), unpack(out, i, j))
end
return table.concat(packed)
";

/// A key's ARGV in [`SCRIPT`]: see there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyArgs {
    numbers: [u64; 5],
    len: usize,
}

impl KeyArgs {
    pub fn of(inc: &Increment) -> KeyArgs {
        let enforced = u64::from(inc.enforced);
        let (hits, limit) = (inc.hits, u64::from(inc.requests_per_unit));
        let (numbers, len) = match inc.counting {
            Counting::Fixed => ([enforced, hits, limit, inc.expires_in_ms, 0], 4),
            Counting::Sliding => ([2 + enforced, hits, limit, inc.window_ms(), 0], 4),
            Counting::Bucket { burst } => (
                [4 + enforced, hits, limit, inc.window_ms(), u64::from(burst)],
                5,
            ),
        };
        KeyArgs { numbers, len }
    }

    pub fn as_slice(&self) -> &[u64] {
        &self.numbers[..self.len]
    }

    /// 0: fixed window, 1: sliding window, 2: token bucket.
    pub fn algorithm(&self) -> u64 {
        self.numbers[0] / 2
    }

    /// A bucket's burst; 0 for the other algorithms.
    pub fn burst(&self) -> u64 {
        self.numbers[4]
    }
}

/// The most numbers a key's ARGV holds.
pub const MAX_KEY_ARGS: usize = 5;

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

/// How many of the latest shapes a request's arguments are compared with before it gets a
/// shape of its own: bounds the search, since a call's requests mostly share one or two.
const SHAPES_SEARCHED: usize = 8;

/// Gives `arg`, in order, the ARGV of [`SCRIPT`] for `requests` (each its keys' arguments):
/// requests whose keys' arguments are the same share one shape.
pub fn write_argv(requests: &[&[KeyArgs]], mut arg: impl FnMut(u64)) {
    // Each shape's first request, and each request's shape (1-based).
    let mut shapes: SmallVec<[usize; 8]> = SmallVec::new();
    let mut shape_of: SmallVec<[u64; 128]> = SmallVec::new();
    for (i, keys) in requests.iter().enumerate() {
        let same = shapes
            .iter()
            .enumerate()
            .rev()
            .take(SHAPES_SEARCHED)
            .find(|(_, first)| requests[**first] == *keys);
        let shape = match same {
            Some((shape, _)) => shape,
            None => {
                shapes.push(i);
                shapes.len() - 1
            }
        };
        shape_of.push(shape as u64 + 1);
    }
    arg(shapes.len() as u64);
    for &first in &shapes {
        let keys = requests[first];
        arg(keys.len() as u64);
        for &number in keys.iter().flat_map(KeyArgs::as_slice) {
            arg(number);
        }
    }
    arg(requests.len() as u64);
    shape_of.into_iter().for_each(arg);
}

/// The numbers of a reply of [`SCRIPT`]: 8-byte little-endian integers, one after another.
pub fn numbers(reply: &[u8]) -> Result<Vec<i64>, BackendError> {
    let (numbers, rest) = reply.as_chunks::<8>();
    if !rest.is_empty() {
        return Err(BackendError::Unexpected(format!(
            "a reply of {} bytes, not 8 a number",
            reply.len()
        )));
    }
    Ok(numbers.iter().map(|n| i64::from_le_bytes(*n)).collect())
}

/// How many numbers [`SCRIPT`] answers for a key whose ARGV are `args`.
pub fn width(args: &KeyArgs) -> usize {
    match args.algorithm() {
        0 => 1,
        2 => 2,
        _ => 3,
    }
}

/// The script's answer for one request.
pub struct Answer {
    pub admitted: bool,
    /// Index in the request of the first enforced counter without room.
    pub first_over: Option<usize>,
    /// Three numbers per key, the ones the script did not send 0 (see [`SCRIPT`]).
    pub values: SmallVec<[[u64; 3]; 4]>,
}

impl Answer {
    /// One request's part of the front of `reply`, for keys whose ARGV are `args`, and how many
    /// numbers it took (a broken reply: all of them).
    pub fn read(reply: &[i64], args: &[KeyArgs]) -> (Result<Answer, BackendError>, usize) {
        let broken = || {
            (
                Err(BackendError::Unexpected(format!("{reply:?}"))),
                reply.len(),
            )
        };
        let Some((&first_over, mut rest)) = reply.split_first() else {
            return broken();
        };
        if first_over == -1 {
            return (Err(BackendError::RequestFailed), 1);
        }
        let mut values = SmallVec::with_capacity(args.len());
        for key in args {
            let Some((numbers, after)) = rest.split_at_checked(width(key)) else {
                return broken();
            };
            let mut three = [0u64; 3];
            for (place, n) in three.iter_mut().zip(numbers) {
                *place = u64::try_from(*n).unwrap_or(0);
            }
            values.push(three);
            rest = after;
        }
        let answer = Answer {
            admitted: first_over == 0,
            first_over: usize::try_from(first_over)
                .ok()
                .and_then(|i| i.checked_sub(1)),
            values,
        };
        (Ok(answer), reply.len() - rest.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_is_read_request_by_request_with_each_key_s_numbers() {
        let inc = |counting| Increment {
            key: 0,
            window_seconds: 60,
            window_index: 0,
            expires_in_ms: 1_000,
            requests_per_unit: 10,
            hits: 1,
            enforced: true,
            counting,
            now_us: 0,
        };
        let fixed = KeyArgs::of(&inc(Counting::Fixed));
        let bucket = KeyArgs::of(&inc(Counting::Bucket { burst: 20 }));
        let sliding = KeyArgs::of(&inc(Counting::Sliding));
        assert_eq!(fixed.as_slice(), [1, 1, 10, 1_000]);
        assert_eq!(sliding.as_slice(), [3, 1, 10, 60_000]);
        assert_eq!(bucket.as_slice(), [5, 1, 10, 60_000, 20]);
        // Admitted (two keys); failed; refused at its second key (three keys).
        let reply = [0, 7, 9, -1, 2, 3, 100, 200, 4, 5, 6];
        let (first, used) = Answer::read(&reply, &[fixed, fixed]);
        let first = first.unwrap();
        assert_eq!(used, 3);
        assert!(first.admitted && first.first_over.is_none());
        assert_eq!(first.values.to_vec(), vec![[7, 0, 0], [9, 0, 0]]);
        let (second, used) = Answer::read(&reply[3..], &[fixed]);
        assert!(matches!(second, Err(BackendError::RequestFailed)));
        assert_eq!(used, 1);
        let (third, used) = Answer::read(&reply[4..], &[fixed, bucket, sliding]);
        let third = third.unwrap();
        assert_eq!(used, 7);
        assert!(!third.admitted);
        assert_eq!(third.first_over, Some(1));
        assert_eq!(
            third.values.to_vec(),
            vec![[3, 0, 0], [100, 200, 0], [4, 5, 6]]
        );
        let (short, used) = Answer::read(&reply[4..6], &[fixed, bucket]);
        assert!(matches!(short, Err(BackendError::Unexpected(_))));
        assert_eq!(used, 2);
    }

    #[test]
    fn a_packed_reply_is_eight_bytes_a_number_little_endian() {
        // A bucket's arrival time in µs is past 2^50; -1 is a failed request.
        let sent = [0, 7, 1_764_000_000_123_456, -1];
        let packed: Vec<u8> = sent.iter().flat_map(|n: &i64| n.to_le_bytes()).collect();
        assert_eq!(numbers(&packed).unwrap(), sent);
        assert_eq!(numbers(&[]).unwrap(), Vec::<i64>::new());
        let cut = numbers(&packed[..12]).unwrap_err();
        assert_eq!(
            cut.to_string(),
            "Redis answered something unexpected: a reply of 12 bytes, not 8 a number"
        );
    }
}
