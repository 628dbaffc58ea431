//! Decisions waiting for one Redis, sent together: one script call for many requests.
//!
//! Each decision queues its keys and arguments; one task takes everything queued, sends it as
//! a single `EVALSHA`, and hands each decision its own answer. The script runs the requests
//! one after another, each exactly as the one-request script would (count, and take back on a
//! refusal), so every request keeps its all-or-nothing rule; what is shared is the cost of the
//! call, in Redis (a script call has a fixed cost well above its commands') and in ratelimitd
//! (one command, one write, one read for the lot). Under light load a batch holds one request
//! and waits for company only two turns of the scheduler.

use redis::aio::ConnectionManager;
use redis::{ErrorKind, Script, ServerErrorKind};
use smallvec::SmallVec;
use tokio::sync::{mpsc, oneshot};

use super::redis::RedisKey;
use super::redis_script::{
    Answer, BackendError, KeyArgs, MAX_KEY_ARGS, SCRIPT, numbers, write_argv,
};

/// The most requests in one call: bounds the script's run time, during which Redis serves
/// nobody else.
const MAX_REQUESTS: usize = 128;

/// The most turns the batcher gives other tasks to queue their decisions before it sends.
const MAX_YIELDS: usize = 4;

/// Turns in a row that bring nothing after which it sends: one empty turn is often followed by
/// a full one (the next requests were still on their way in), so it takes two.
const EMPTY_TURNS: usize = 2;

/// The longest one call may take before its decisions are told it failed (each decision gave
/// up long before, after `--backend-timeout-ms`): a Redis that stopped answering must not stall
/// the batcher for good.
const CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// One request's part of a call.
pub struct Job {
    pub keys: SmallVec<[RedisKey; 4]>,
    /// Per key: its ARGV.
    pub args: SmallVec<[KeyArgs; 4]>,
    pub reply: oneshot::Sender<Result<Answer, BackendError>>,
}

/// Loads the script into Redis, so that the first decisions do not wait for it.
pub async fn preload(connection: &mut ConnectionManager) -> redis::RedisResult<()> {
    Script::new(SCRIPT).load_async(connection).await?;
    Ok(())
}

/// Starts the task that sends queued jobs on `connection`; it ends when every sender is gone.
pub fn start(connection: ConnectionManager) -> mpsc::Sender<Job> {
    let (jobs, queue) = mpsc::channel(4 * MAX_REQUESTS);
    tokio::spawn(run(connection, queue));
    jobs
}

async fn run(mut connection: ConnectionManager, mut queue: mpsc::Receiver<Job>) {
    let script = Script::new(SCRIPT);
    let mut batch: Vec<Job> = Vec::with_capacity(MAX_REQUESTS);
    while let Some(first) = queue.recv().await {
        batch.push(first);
        // The decision that woke this task usually arrived with others (one read of Envoy's
        // connection carries several requests), whose tasks are ready to run. Tokio runs the
        // task it woke last first, so this one would run right after that decision's and send
        // it alone: let the others queue theirs, and again until two turns in a row bring none.
        let mut empty_turns = 0;
        for _ in 0..MAX_YIELDS {
            tokio::task::yield_now().await;
            let before = batch.len();
            while batch.len() < MAX_REQUESTS {
                match queue.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            empty_turns = if batch.len() == before {
                empty_turns + 1
            } else {
                0
            };
            if empty_turns == EMPTY_TURNS || batch.len() == MAX_REQUESTS {
                break;
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

/// The `EVALSHA` of a batch, written straight into one command buffer (a script invocation
/// would allocate every key and argument on its own first).
fn command(script: &Script, batch: &[Job]) -> redis::Cmd {
    let keys: usize = batch.iter().map(|job| job.keys.len()).sum();
    // At most every argument and its bytes (20 digits a number), so nothing grows on the way.
    let args = 5 + keys + batch.len() + keys * (1 + MAX_KEY_ARGS);
    let bytes = 64
        + batch
            .iter()
            .flat_map(|job| &job.keys)
            .map(|k| k.len())
            .sum::<usize>()
        + 21 * (args - keys);
    let mut cmd = redis::Cmd::with_capacity(args, bytes);
    cmd.arg("EVALSHA").arg(script.get_hash()).arg(keys);
    for key in batch.iter().flat_map(|job| &job.keys) {
        cmd.arg(key.as_slice());
    }
    let requests: SmallVec<[&[KeyArgs]; MAX_REQUESTS]> =
        batch.iter().map(|job| job.args.as_slice()).collect();
    write_argv(&requests, |n| {
        cmd.arg(n);
    });
    cmd
}

/// Runs the batch's script, loading it first if Redis lost it (a restart, `SCRIPT FLUSH`).
async fn call(
    script: &Script,
    connection: &mut ConnectionManager,
    batch: &[Job],
) -> redis::RedisResult<Vec<u8>> {
    let cmd = command(script, batch);
    match cmd.query_async(connection).await {
        Err(error) if error.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
            script.load_async(connection).await?;
            cmd.query_async(connection).await
        }
        answer => answer,
    }
}

async fn send(script: &Script, connection: &mut ConnectionManager, batch: &mut Vec<Job>) {
    let reply = tokio::time::timeout(CALL_TIMEOUT, call(script, connection, batch))
        .await
        .unwrap_or_else(|_| {
            Err(redis::RedisError::from((
                ErrorKind::Io,
                "no answer within the call timeout",
            )))
        });
    let read = reply
        .map_err(|error| error.to_string())
        .and_then(|reply| numbers(&reply).map_err(|error| error.to_string()));
    match read {
        Ok(all) => {
            let mut rest = all.as_slice();
            for job in batch.drain(..) {
                let (answer, used) = Answer::read(rest, &job.args);
                rest = rest.get(used..).unwrap_or_default();
                let _ = job.reply.send(answer);
            }
        }
        Err(message) => {
            for job in batch.drain(..) {
                let _ = job.reply.send(Err(BackendError::Batch(message.clone())));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limiter::store::{Counting, Increment};

    fn args(limit: u32, expires_in_ms: u64) -> KeyArgs {
        KeyArgs::of(&Increment {
            key: 0,
            window_seconds: 60,
            window_index: 0,
            expires_in_ms,
            requests_per_unit: limit,
            hits: 1,
            enforced: true,
            counting: Counting::Fixed,
            now_us: 0,
        })
    }

    fn job(name: &str, keys: &[KeyArgs]) -> Job {
        Job {
            keys: keys
                .iter()
                .enumerate()
                .map(|(i, _)| RedisKey::from_slice(format!("{name}:{i}").as_bytes()))
                .collect(),
            args: keys.iter().copied().collect(),
            reply: oneshot::channel().0,
        }
    }

    #[test]
    fn requests_with_the_same_arguments_share_a_shape() {
        let seed = [args(60, 30_000), args(1_000, 1_800_000)];
        let later = [args(60, 29_999), args(1_000, 1_799_999)];
        let batch = [
            job("a", &seed),
            job("b", &seed),
            job("c", &later),
            job("d", &seed[..1]),
            job("e", &seed),
        ];
        let cmd = command(&Script::new(SCRIPT), &batch);
        let words: Vec<String> = cmd
            .args_iter()
            .skip(2)
            .map(|arg| match arg {
                redis::Arg::Simple(bytes) => String::from_utf8_lossy(bytes).into_owned(),
                _ => "not a plain argument".into(),
            })
            .collect();
        let expected = [
            "9", "a:0", "a:1", "b:0", "b:1", "c:0", "c:1", "d:0", "e:0", "e:1",
            // Three shapes: the seed's two windows, the same a millisecond later, one window.
            "3", //
            "2", "1", "1", "60", "30000", "1", "1", "1000", "1800000", //
            "2", "1", "1", "60", "29999", "1", "1", "1000", "1799999", //
            "1", "1", "1", "60", "30000", //
            // Five requests and their shapes.
            "5", "1", "1", "2", "3", "1",
        ];
        assert_eq!(words, expected);
    }
}
