//! Load benchmark for ratelimitd, measured against a no-op baseline on the same tonic stack.
//!
//! `compare` is the benchmark: it starts `ratelimitd` (on `config/`, the seed policy) and the
//! no-op baseline (`examples/noop_server.rs`), each pinned to core 0 with `taskset`, and drives
//! them alternately (A/B, B/A, …) from a load process pinned to core 1. Each figure is the median
//! over the rounds, and is reported as a ratio to the baseline measured in the same run:
//!
//!     cargo build --release --bin ratelimitd --example noop_server --example loadgen
//!     target/release/examples/loadgen compare --rounds 5 --duration 5
//!
//! `memory` measures peak memory (VmHWM) of ratelimitd holding a million keys' counters under
//! the seed policy, and that the memory goes back once their windows end. `instructions` counts
//! each server's CPU instructions per decision under valgrind's callgrind, which the machine's
//! noise does not move. `run` is one load run against an address (what `compare` runs on core 1).
//!
//! Requests are seed-shaped: domain `mega-api`, one descriptor
//! `(api_key, key-<i>), (bucket, default)`, with `i` drawn uniformly from `--keys` keys, or one
//! hot key (`--hot`) that is over its limit after its first 60 requests.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[path = "support/connections_bench.rs"]
mod connections_bench;
#[path = "support/flood_bench.rs"]
mod flood_bench;
#[path = "support/lean_client.rs"]
mod lean_client;
#[path = "support/overload_bench.rs"]
mod overload_bench;
#[path = "support/reload_bench.rs"]
mod reload_bench;
#[path = "support/seed_request.rs"]
mod seed_request;
#[path = "support/sweep_bench.rs"]
mod sweep_bench;
use lean_client::{LeanClient, encoded_request};

use bytes::Bytes;
use clap::{Parser, Subcommand};
use hdrhistogram::Histogram;
use ratelimitd::proto::rate_limit_response::Code;
use serde_json::{Value, json};
use tonic::transport::{Channel, Endpoint};

#[derive(Parser)]
#[command(about = "Load benchmark for ratelimitd against a no-op baseline")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// One load run against ADDR; prints one JSON line.
    Run(RunArgs),
    /// The benchmark: ratelimitd vs the no-op baseline, scenario by scenario, A/B alternated.
    Compare(CompareArgs),
    /// What metrics and spans cost: ratelimitd as shipped against ratelimitd without decision
    /// metrics and spans, A/B alternated like `compare`.
    Overhead(CompareArgs),
    /// Peak memory with a million keys' counters live, and memory given back after the windows end.
    Memory(MemoryArgs),
    /// CPU instructions per decision (valgrind's callgrind): a measure the machine's noise
    /// does not move.
    Instructions(InstructionsArgs),
    /// Decision latency while a big rule file loads, and idle CPU with it loaded.
    Reload(reload_bench::ReloadArgs),
    /// Decision latency across sweeps of ended windows, with millions of live keys.
    Sweep(sweep_bench::SweepArgs),
    /// A flood of made-up keys into a small counter budget: errors, heavy keys, a newcomer,
    /// memory; then memory per counter with long values.
    Flood(flood_bench::FloodArgs),
    /// A fresh client's first answer while idle connections fill `--max-connections`.
    Connections(connections_bench::ConnectionsArgs),
    /// The same steady overload through each algorithm: admitted per second, as CSV.
    Overload(overload_bench::OverloadArgs),
}

#[derive(clap::Args)]
struct InstructionsArgs {
    /// Compare ratelimitd without and with decision metrics and spans, instead of against
    /// the no-op baseline.
    #[arg(long)]
    overhead: bool,
    /// Requests in the longer of the two runs (the shorter sends a tenth as many).
    #[arg(long, default_value_t = 20_000)]
    requests: usize,
    /// ratelimitd counts in a redis-server started for the run (Redis's own instructions are
    /// not counted: it is another process).
    #[arg(long)]
    redis: bool,
    #[command(flatten)]
    binaries: Binaries,
}

#[derive(clap::Args, Clone)]
struct RunArgs {
    #[arg(long)]
    addr: String,
    /// HTTP/2 connections.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Requests in flight.
    #[arg(long, default_value_t = 64)]
    in_flight: usize,
    /// Seconds of measured load.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Distinct API keys.
    #[arg(long, default_value_t = 10_000)]
    keys: usize,
    /// One hot key instead of `--keys` keys.
    #[arg(long)]
    hot: bool,
    /// Keys are this prefix and a number (`internal_` keys are unlimited in config/).
    #[arg(long, default_value = "key-")]
    key_prefix: String,
    /// First send one request for each key (to make every key's counters live), unmeasured.
    #[arg(long)]
    prefill: bool,
    /// Send exactly this many requests (keys in turn) and stop, instead of a timed run.
    #[arg(long)]
    requests: Option<usize>,
    /// Seconds of unmeasured load before measuring.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Open loop: send this many requests a second in all, each worker on its own schedule,
    /// whatever the answers' pace (as Envoy sends for independent clients), instead of a new
    /// request as soon as an answer comes. `--in-flight` workers bound what is outstanding.
    #[arg(long)]
    rate: Option<f64>,
}

#[derive(clap::Args)]
struct CompareArgs {
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Scenarios to run: uniform-10k, hot-key, keys-1m, latency-8 (default: all).
    #[arg(long, value_delimiter = ',')]
    scenarios: Vec<String>,
    /// ratelimitd counts in a redis-server started for each scenario, pinned to the server's
    /// core.
    #[arg(long)]
    redis: bool,
    #[command(flatten)]
    binaries: Binaries,
}

#[derive(clap::Args)]
struct MemoryArgs {
    #[arg(long, default_value_t = 1_000_000)]
    keys: usize,
    /// Measure Redis's memory for the counters instead (ratelimitd with `--backend redis://`).
    #[arg(long)]
    redis: bool,
    #[command(flatten)]
    binaries: Binaries,
}

#[derive(clap::Args, Clone)]
struct Binaries {
    #[arg(long, default_value = "target/release/ratelimitd")]
    ratelimitd: PathBuf,
    #[arg(long, default_value = "target/release/examples/noop_server")]
    noop: PathBuf,
    #[arg(long, default_value = "config")]
    config: PathBuf,
    /// `--backend` for ratelimitd (set by `--redis`).
    #[arg(skip)]
    backend: Option<String>,
    /// `--default-algorithm` for ratelimitd: how the rules of `--config` count
    /// (fixed_window, sliding_window, token_bucket).
    #[arg(long)]
    algorithm: Option<String>,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    match Cli::parse().command {
        Cmd::Run(args) => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let result = runtime.block_on(run(args))?;
            println!("{result}");
        }
        Cmd::Compare(args) => compare(args, baseline_lineup)?,
        Cmd::Overhead(args) => compare(args, |_| overhead_lineup())?,
        Cmd::Memory(args) => memory(args)?,
        Cmd::Instructions(args) => instructions(args)?,
        Cmd::Reload(args) => reload_bench::reload(args)?,
        Cmd::Overload(args) => overload_bench::overload(args)?,
        Cmd::Sweep(args) => sweep_bench::sweep(args)?,
        Cmd::Flood(args) => flood_bench::flood_bench(args)?,
        Cmd::Connections(args) => connections_bench::connections(args)?,
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// One load run.

async fn connect(addr: &str, n: usize) -> Result<Vec<Channel>, Box<dyn std::error::Error>> {
    let mut channels = Vec::with_capacity(n);
    for _ in 0..n {
        // One `connect` per channel: each is its own HTTP/2 connection.
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))?.tcp_nodelay(true);
        channels.push(endpoint.connect().await?);
    }
    Ok(channels)
}

/// Counts shared by the workers of one run.
#[derive(Default)]
struct Counts {
    ok: AtomicU64,
    over: AtomicU64,
    errors: AtomicU64,
}

async fn run(args: RunArgs) -> Result<Value, Box<dyn std::error::Error>> {
    if args
        .rate
        .is_some_and(|rate| !(rate.is_finite() && rate >= 1.0))
    {
        return Err("--rate: at least 1 request a second".into());
    }
    let channels = connect(&args.addr, args.connections.max(1)).await?;
    // Each key's request, encoded once (see `support/lean_client.rs`).
    let keys: Arc<Vec<Bytes>> = Arc::new(if args.hot {
        vec![encoded_request("hot-key")]
    } else {
        (0..args.keys.max(1))
            .map(|i| encoded_request(&format!("{}{i}", args.key_prefix)))
            .collect()
    });
    if args.prefill {
        prefill(&channels, &keys, args.in_flight).await;
    }
    if let Some(n) = args.requests {
        let cycled: Arc<Vec<Bytes>> =
            Arc::new((0..n).map(|i| keys[i % keys.len()].clone()).collect());
        prefill(&channels, &cycled, args.in_flight).await;
        return Ok(json!({ "requests": n }));
    }
    let warmup = Duration::from_secs_f64(args.warmup);
    let measure = Duration::from_secs_f64(args.duration);
    let start = Instant::now();
    let measure_from = start + warmup;
    let until = measure_from + measure;
    let counts = Arc::new(Counts::default());
    let (rate, workers) = (args.rate, args.in_flight.max(1));
    let mut handles = Vec::with_capacity(workers);
    for w in 0..workers {
        let mut client = LeanClient::new(channels[w % channels.len()].clone());
        let keys = Arc::clone(&keys);
        let counts = Arc::clone(&counts);
        handles.push(tokio::spawn(async move {
            let mut latencies =
                Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map_err(|e| e.to_string())?;
            // A small xorshift per worker: uniform keys without a shared RNG.
            let mut state =
                0x9E37_79B9_7F4A_7C15_u64 ^ (w as u64 + 1).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            // With `--rate`, this worker's k-th request is due at `start + (k * workers + w) /
            // rate`; a worker behind its schedule sends at once.
            let interval = rate.map(|rate| Duration::from_secs_f64(workers as f64 / rate));
            let mut due =
                start + interval.map_or(Duration::ZERO, |i| i.mul_f64(w as f64 / workers as f64));
            loop {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let key = &keys[(state % keys.len() as u64) as usize];
                if let Some(interval) = interval {
                    if due >= until {
                        break;
                    }
                    tokio::time::sleep_until(due.into()).await;
                    due += interval;
                }
                let sent = Instant::now();
                if sent >= until {
                    break;
                }
                let answer = client.call(key.clone()).await;
                let done = Instant::now();
                if sent < measure_from || done > until {
                    continue;
                }
                let micros = done.duration_since(sent).as_micros() as u64;
                let _ = latencies.record(micros.max(1));
                let counter = match answer {
                    Ok(code) if code == Code::OverLimit as i32 => &counts.over,
                    Ok(_) => &counts.ok,
                    Err(_) => &counts.errors,
                };
                counter.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<_, String>(latencies)
        }));
    }
    let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for handle in handles {
        let latencies = handle.await??;
        all.add(&latencies)?;
    }
    let (ok, over, errors) = (
        counts.ok.load(Ordering::Relaxed),
        counts.over.load(Ordering::Relaxed),
        counts.errors.load(Ordering::Relaxed),
    );
    Ok(json!({
        "decisions_per_s": (ok + over) as f64 / measure.as_secs_f64(),
        "ok": ok,
        "over_limit": over,
        "errors": errors,
        "p50_us": all.value_at_quantile(0.50),
        "p90_us": all.value_at_quantile(0.90),
        "p99_us": all.value_at_quantile(0.99),
        "max_us": all.max(),
    }))
}

/// One request per key, `in_flight` at a time.
async fn prefill(channels: &[Channel], keys: &Arc<Vec<Bytes>>, in_flight: usize) {
    let next = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for w in 0..in_flight.max(1) {
        let mut client = LeanClient::new(channels[w % channels.len()].clone());
        let keys = Arc::clone(keys);
        let next = Arc::clone(&next);
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                let Some(key) = keys.get(i) else { break };
                let _ = client.call(key.clone()).await;
            }
        }));
    }
    for worker in workers {
        let _ = worker.await;
    }
}

// ---------------------------------------------------------------------------------------------
// Servers and processes.

/// A server process, pinned to core 0, stopped by PID on drop.
struct Server {
    child: Child,
    addr: String,
    /// ratelimitd's admin address (the no-op has none).
    http: Option<String>,
}

/// Which server to start.
#[derive(Clone, Copy)]
enum Kind<'a> {
    /// The no-op baseline with that canned answer (`empty`, `ok`, `over-limit`).
    Noop(&'a str),
    /// ratelimitd, with these flags besides the addresses and the rules.
    Ratelimitd(&'a [&'a str]),
}

/// ratelimitd with nothing around the decision: no decision metrics, and the decision spans
/// switched off at their call sites (the start-up line still says where it listens).
const BARE: &[&str] = &[
    "--decision-metrics",
    "false",
    "--log-level",
    "info,ratelimitd::service=off",
];

impl Server {
    /// Starts `kind` pinned to core 0.
    fn start(
        binaries: &Binaries,
        kind: Kind<'_>,
        config: Option<&PathBuf>,
    ) -> Result<Server, Box<dyn std::error::Error>> {
        let mut pinned = Command::new("taskset");
        pinned.args(["-c", "0"]);
        Server::spawn(pinned, binaries, kind, config)
    }

    /// Runs the server under `wrapper` (a program and its arguments, such as `taskset -c 0` or
    /// `valgrind`) and waits until it reports its address.
    fn spawn(
        mut wrapper: Command,
        binaries: &Binaries,
        kind: Kind<'_>,
        config: Option<&PathBuf>,
    ) -> Result<Server, Box<dyn std::error::Error>> {
        match kind {
            Kind::Noop(answer) => {
                wrapper.arg(&binaries.noop).args(["127.0.0.1:0", answer]);
            }
            Kind::Ratelimitd(flags) => {
                wrapper
                    .arg(&binaries.ratelimitd)
                    .args([
                        "serve",
                        "--grpc-addr",
                        "127.0.0.1:0",
                        "--http-addr",
                        "127.0.0.1:0",
                        "--log-format",
                        "json",
                    ])
                    .args(flags)
                    .args(
                        binaries
                            .backend
                            .iter()
                            .flat_map(|url| ["--backend", url.as_str()]),
                    )
                    .args(
                        binaries
                            .algorithm
                            .iter()
                            .flat_map(|a| ["--default-algorithm", a.as_str()]),
                    )
                    .arg("--config")
                    .arg(config.unwrap_or(&binaries.config));
            }
        }
        let mut child = wrapper
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let addr = if matches!(kind, Kind::Noop(_)) {
            read_line_with(child.stdout.take(), "listening on ")
                .map(|l| l.trim_start_matches("listening on ").trim().to_string())
        } else {
            read_line_with(child.stderr.take(), "ratelimitd serving")
        };
        let field = |line: &str, name: &str| {
            let key = format!("\"{name}\":\"");
            let at = line.find(&key)? + key.len();
            line[at..].split('"').next().map(str::to_string)
        };
        let (addr, http) = match (&kind, addr) {
            (Kind::Noop(_), Some(addr)) => (addr, None),
            (Kind::Ratelimitd(_), Some(line)) => match field(&line, "grpc") {
                Some(addr) => (addr, field(&line, "http")),
                None => (String::new(), None),
            },
            (_, None) => (String::new(), None),
        };
        if addr.is_empty() {
            let _ = child.kill();
            return Err("the server did not report its address".into());
        }
        Ok(Server { child, addr, http })
    }

    /// One unlabelled metric from ratelimitd's `/metrics`.
    fn metric(&self, name: &str) -> Option<f64> {
        let http = self.http.as_ref()?;
        let mut answer = ureq::get(format!("http://{http}/metrics")).call().ok()?;
        let text = answer.body_mut().read_to_string().ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    }

    /// (user + system) CPU seconds used so far.
    fn cpu_seconds(&self) -> f64 {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        // Fields after the command name (which is in parentheses): utime is 14th, stime 15th overall.
        let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
        let fields: Vec<&str> = after.split_whitespace().collect();
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        (ticks(11) + ticks(12)) / clock_ticks()
    }

    /// `VmHWM` and `VmRSS` in KiB.
    fn memory_kib(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        (field("VmHWM:"), field("VmRSS:"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// Reads lines from `pipe` on a thread until one contains `needle` (within 30 s); keeps
/// draining the pipe afterwards so the child never blocks on a full pipe.
fn read_line_with(
    pipe: Option<impl std::io::Read + Send + 'static>,
    needle: &str,
) -> Option<String> {
    use std::io::BufRead;
    let pipe = pipe?;
    let (tx, rx) = std::sync::mpsc::channel();
    let needle = needle.to_string();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
            if !sent && line.contains(&needle) {
                let _ = tx.send(line);
                sent = true;
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(30)).ok()
}

/// `seconds` of load at one request in flight on one connection, measured from the start (no
/// warm-up), with `extra` arguments: the probe of `reload` and `sweep`.
fn probe_one_in_flight(
    addr: &str,
    seconds: f64,
    extra: &[&str],
) -> Result<Value, Box<dyn std::error::Error>> {
    let seconds = seconds.to_string();
    let fixed = [
        "--in-flight",
        "1",
        "--connections",
        "1",
        "--duration",
        &seconds,
        "--warmup",
        "0",
    ];
    let args: Vec<String> = fixed.iter().chain(extra).map(|s| s.to_string()).collect();
    load(addr, &args)
}

/// Runs `loadgen run` pinned to core 1 and returns its JSON result.
fn load(addr: &str, args: &[String]) -> Result<Value, Box<dyn std::error::Error>> {
    let me = std::env::current_exe()?;
    let output = Command::new("taskset")
        .args(["-c", "1"])
        .arg(me)
        .args(["run", "--addr", addr])
        .args(args)
        .output()?;
    if !output.status.success() {
        return Err(format!(
            "load run failed: {}",
            String::from_utf8_lossy(&output.stderr)
        )
        .into());
    }
    Ok(serde_json::from_slice(&output.stdout)?)
}

// ---------------------------------------------------------------------------------------------
// The benchmark.

struct Scenario {
    name: &'static str,
    what: &'static str,
    /// The canned answer of the payload-matched baseline: what ratelimitd mostly answers here.
    answer: &'static str,
    args: Vec<String>,
    prefill: Option<Vec<String>>,
}

fn scenarios(duration: f64) -> Vec<Scenario> {
    let d = duration.to_string();
    let args = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = vec!["--duration".into(), d.clone()];
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    vec![
        Scenario {
            name: "uniform-10k",
            what: "10,000 uniform keys, 64 in flight",
            answer: "over-limit",
            args: args(&["--keys", "10000", "--in-flight", "64"]),
            prefill: None,
        },
        Scenario {
            name: "hot-key",
            what: "one hot key over its limit, 64 in flight",
            answer: "over-limit",
            args: args(&["--hot", "--in-flight", "64"]),
            prefill: None,
        },
        Scenario {
            name: "keys-1m",
            what: "1,000,000 live keys (2 windows each), 64 in flight",
            answer: "ok",
            args: args(&["--keys", "1000000", "--in-flight", "64"]),
            prefill: Some(vec![
                "--keys".into(),
                "1000000".into(),
                "--prefill".into(),
                "--duration".into(),
                "0.1".into(),
                "--warmup".into(),
                "0".into(),
            ]),
        },
        Scenario {
            name: "latency-8",
            what: "10,000 uniform keys, 8 in flight (latency)",
            answer: "over-limit",
            args: args(&["--keys", "10000", "--in-flight", "8"]),
            prefill: None,
        },
    ]
}

/// A redis-server for `--redis`, pinned to core 0 beside the server it serves.
struct RedisProcess {
    child: Child,
    port: u16,
}

impl RedisProcess {
    fn start() -> Result<RedisProcess, Box<dyn std::error::Error>> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let child = Command::new("taskset")
            .args(["-c", "0", "redis-server", "--bind", "127.0.0.1", "--port"])
            .arg(port.to_string())
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let redis = RedisProcess { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while redis.cli(&["ping"])? != "PONG" {
            if Instant::now() > deadline {
                return Err("redis-server did not answer".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(redis)
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn cli(&self, args: &[&str]) -> Result<String, Box<dyn std::error::Error>> {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// `used_memory` from `INFO memory`, in bytes.
    fn used_memory(&self) -> Result<u64, Box<dyn std::error::Error>> {
        let info = self.cli(&["info", "memory"])?;
        info.lines()
            .find_map(|l| l.strip_prefix("used_memory:"))
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| "no used_memory in INFO".into())
    }
}

/// With `redis`, a redis-server for the run (kept alive by the caller) and `binaries` counting
/// in it; else no Redis and `binaries` as they are.
fn with_redis(
    binaries: &Binaries,
    redis: bool,
) -> Result<(Option<RedisProcess>, Binaries), Box<dyn std::error::Error>> {
    let redis = if redis {
        Some(RedisProcess::start()?)
    } else {
        None
    };
    let mut binaries = binaries.clone();
    binaries.backend = redis.as_ref().map(RedisProcess::url);
    Ok((redis, binaries))
}

impl Drop for RedisProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// The servers `compare` measures in a scenario; the first is the baseline of the ratios.
fn baseline_lineup(scenario: &Scenario) -> Vec<(String, Kind<'static>)> {
    vec![
        ("no-op baseline".into(), Kind::Noop("empty")),
        (
            format!("no-op answering like ratelimitd ({})", scenario.answer),
            Kind::Noop(scenario.answer),
        ),
        ("ratelimitd".into(), Kind::Ratelimitd(&[])),
    ]
}

/// The servers `overhead` measures: ratelimitd without and with what surrounds a decision.
fn overhead_lineup() -> Vec<(String, Kind<'static>)> {
    vec![
        (
            "ratelimitd, no decision metrics, no decision spans".into(),
            Kind::Ratelimitd(BARE),
        ),
        (
            "ratelimitd (metrics and spans on, as shipped)".into(),
            Kind::Ratelimitd(&[]),
        ),
    ]
}

fn compare(
    args: CompareArgs,
    lineup: fn(&Scenario) -> Vec<(String, Kind<'static>)>,
) -> Result<(), Box<dyn std::error::Error>> {
    let chosen = |name: &str| args.scenarios.is_empty() || args.scenarios.iter().any(|s| s == name);
    println!(
        "| scenario | server | decisions/s | ratio | p50 µs | p99 µs | p99 ratio | server CPU µs/decision | CPU ratio | OK / OVER_LIMIT / errors (last round) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for scenario in scenarios(args.duration)
        .into_iter()
        .filter(|s| chosen(s.name))
    {
        eprintln!(
            "{}: {} ({} rounds)",
            scenario.name, scenario.what, args.rounds
        );
        let (labels, kinds): (Vec<String>, Vec<Kind<'_>>) = lineup(&scenario).into_iter().unzip();
        let (_redis, binaries) = with_redis(&args.binaries, args.redis)?;
        let servers = kinds
            .iter()
            .map(|kind| Server::start(&binaries, *kind, None))
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(prefill) = &scenario.prefill {
            for server in &servers {
                load(&server.addr, prefill)?;
            }
        }
        type Round = (f64, f64, f64, f64, Value);
        let mut results: Vec<Vec<Round>> = vec![Vec::new(); servers.len()];
        for round in 0..args.rounds {
            // Rotate which server goes first, so that drift in the machine spreads evenly.
            for step in 0..servers.len() {
                let s = (round + step) % servers.len();
                let cpu_before = servers[s].cpu_seconds();
                let result = load(&servers[s].addr, &scenario.args)?;
                let cpu = servers[s].cpu_seconds() - cpu_before;
                let rate = result["decisions_per_s"].as_f64().unwrap_or(0.0);
                // CPU over the whole run (warm-up included) per decision of the whole run.
                let total = rate * (args.duration + 1.0);
                let cpu_per = if total > 0.0 {
                    cpu * 1e6 / total
                } else {
                    f64::NAN
                };
                let p50 = result["p50_us"].as_f64().unwrap_or(0.0);
                let p99 = result["p99_us"].as_f64().unwrap_or(0.0);
                eprintln!(
                    "  round {} {}: {rate:.0}/s p50 {p50}µs p99 {p99}µs cpu {cpu_per:.1}µs/decision",
                    round + 1,
                    labels[s],
                );
                results[s].push((rate, p50, p99, cpu_per, result));
            }
        }
        let summary = |s: usize| {
            let r = &results[s];
            (
                median(r.iter().map(|x| x.0).collect()),
                median(r.iter().map(|x| x.1).collect()),
                median(r.iter().map(|x| x.2).collect()),
                median(r.iter().map(|x| x.3).collect()),
                r.last().map(|x| x.4.clone()).unwrap_or(Value::Null),
            )
        };
        let base = summary(0);
        for (s, label) in labels.iter().enumerate() {
            let m = summary(s);
            println!(
                "| {} | {label} | {:.0} | {:.2}x | {:.0} | {:.0} | {:.2}x | {:.1} | {:.2}x | {} / {} / {} |",
                scenario.name,
                m.0,
                m.0 / base.0,
                m.1,
                m.2,
                m.2 / base.2,
                m.3,
                m.3 / base.3,
                m.4["ok"],
                m.4["over_limit"],
                m.4["errors"],
            );
        }
        if args.redis {
            for (server, label) in servers.iter().zip(&labels) {
                if let Some(fallbacks) =
                    server.metric("ratelimitd_backend_fallback_decisions_total")
                {
                    eprintln!("  {label}: {fallbacks} decisions fell back from Redis");
                }
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Memory.

fn memory(args: MemoryArgs) -> Result<(), Box<dyn std::error::Error>> {
    let keys = args.keys.to_string();
    let prefill = |addr: &str| {
        load(
            addr,
            &[
                "--keys".into(),
                keys.clone(),
                "--prefill".into(),
                "--duration".into(),
                "0.1".into(),
                "--warmup".into(),
                "0".into(),
            ],
        )
    };
    let counters = 2.0 * args.keys as f64;

    if args.redis {
        let redis = RedisProcess::start()?;
        let mut binaries = args.binaries.clone();
        binaries.backend = Some(redis.url());
        let server = Server::start(&binaries, Kind::Ratelimitd(&[]), None)?;
        let before = redis.used_memory()?;
        prefill(&server.addr)?;
        let after = redis.used_memory()?;
        let keys_in_redis: f64 = redis.cli(&["dbsize"])?.parse().unwrap_or(0.0);
        println!(
            "Redis, seed policy (60/minute + 1,000/hour), {} descriptor keys = {keys_in_redis} keys in Redis:",
            args.keys
        );
        println!(
            "  used_memory {:.1} MiB before, {:.1} MiB after: {:.1} MiB for the counters = {:.1} bytes per key",
            before as f64 / 1048576.0,
            after as f64 / 1048576.0,
            (after - before) as f64 / 1048576.0,
            (after - before) as f64 / keys_in_redis.max(1.0)
        );
        // Minute keys written before a minute boundary have expired by the end: project.
        println!(
            "  so {} keys x 2 windows take {:.1} MiB of Redis",
            args.keys,
            (after - before) as f64 / keys_in_redis.max(1.0) * counters / 1048576.0
        );
        if let Some(fallbacks) = server.metric("ratelimitd_backend_fallback_decisions_total") {
            println!("  ({fallbacks} decisions fell back from Redis)");
        }
        return Ok(());
    }

    let server = Server::start(&args.binaries, Kind::Ratelimitd(&[]), None)?;
    // "Idle" is a server that has carried the same traffic but holds no counters: 200,000
    // requests with internal (unlimited) keys bring its buffers and caches to their working size.
    load(
        &server.addr,
        &[
            "--keys".into(),
            "200000".into(),
            "--key-prefix".into(),
            "internal_".into(),
            "--prefill".into(),
            "--duration".into(),
            "0.1".into(),
            "--warmup".into(),
            "0".into(),
        ],
    )?;
    let (idle_hwm, idle_rss) = server.memory_kib();
    prefill(&server.addr)?;
    let (hwm, rss) = server.memory_kib();
    println!(
        "seed policy (60/minute + 1,000/hour), {} keys = {} counters:",
        args.keys, counters
    );
    println!(
        "  idle (after 200,000 requests that count nothing):  VmHWM {idle_hwm} KiB, VmRSS {idle_rss} KiB"
    );
    println!("  full:  VmHWM {hwm} KiB, VmRSS {rss} KiB");
    println!(
        "  peak above idle: {:.1} MiB = {:.1} bytes per live counter",
        (hwm - idle_hwm) as f64 / 1024.0,
        (hwm - idle_hwm) as f64 * 1024.0 / counters
    );
    drop(server);

    // The same shape with windows of 40 and 45 seconds (longer than the prefill takes): once
    // they end, the sweeper (every 5 s) drops the counters and gives their memory back.
    let dir = std::env::temp_dir().join(format!("ratelimitd-memory-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let rules = dir.join("short.yaml");
    std::fs::write(
        &rules,
        "domain: mega-api\ndescriptors:\n  - key: api_key\n    descriptors:\n      - key: bucket\n        value: default\n        rate_limits:\n          - {unit: second, unit_multiplier: 40, requests_per_unit: 60}\n          - {unit: second, unit_multiplier: 45, requests_per_unit: 1000}\n",
    )?;
    let server = Server::start(&args.binaries, Kind::Ratelimitd(&[]), Some(&rules))?;
    let (_, idle_rss) = server.memory_kib();
    prefill(&server.addr)?;
    let (_, full_rss) = server.memory_kib();
    // Every counter's window ends within 45 s of the last request; then one sweep.
    std::thread::sleep(Duration::from_secs(52));
    let (_, after_rss) = server.memory_kib();
    println!("windows of 40 s and 45 s, {} keys:", args.keys);
    println!(
        "  VmRSS at start {idle_rss} KiB, full {full_rss} KiB, after the windows ended and a sweep {after_rss} KiB ({:.0} % of the growth given back)",
        100.0 * (full_rss.saturating_sub(after_rss)) as f64
            / (full_rss.saturating_sub(idle_rss)).max(1) as f64
    );
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Instructions.

/// Instructions a server executes for `requests` requests (of `load_args`), from start to exit,
/// counted by callgrind.
fn instructions_for(
    binaries: &Binaries,
    kind: Kind<'_>,
    requests: usize,
    load_args: &[&str],
) -> Result<u64, Box<dyn std::error::Error>> {
    let out = std::env::temp_dir().join(format!(
        "ratelimitd-callgrind-{}-{requests}",
        std::process::id()
    ));
    let mut valgrind = Command::new("valgrind");
    valgrind
        .args(["--tool=callgrind", "--quiet"])
        .arg(format!("--callgrind-out-file={}", out.display()));
    let server = Server::spawn(valgrind, binaries, kind, None)?;
    let mut args: Vec<String> = vec![
        "--requests".into(),
        requests.to_string(),
        "--in-flight".into(),
        "8".into(),
    ];
    args.extend(load_args.iter().map(|a| a.to_string()));
    load(&server.addr, &args)?;
    Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()?;
    let mut server = server;
    let deadline = Instant::now() + Duration::from_secs(60);
    while server.child.try_wait()?.is_none() {
        if Instant::now() > deadline {
            return Err("the server did not exit after SIGTERM".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let text = std::fs::read_to_string(&out)?;
    let _ = std::fs::remove_file(&out);
    text.lines()
        .find_map(|l| {
            l.strip_prefix("summary: ")
                .or_else(|| l.strip_prefix("totals: "))
        })
        .and_then(|n| n.trim().parse().ok())
        .ok_or_else(|| "no instruction total in callgrind's output".into())
}

fn instructions(args: InstructionsArgs) -> Result<(), Box<dyn std::error::Error>> {
    let (_redis, binaries) = with_redis(&args.binaries, args.redis)?;
    let long = args.requests.max(10);
    let short = long / 10;
    println!("| scenario | server | instructions per decision | ratio |");
    println!("|---|---|---|---|");
    for (scenario, answer, load_args) in [
        ("10,000 uniform keys", "ok", vec!["--keys", "10000"]),
        ("one hot key over its limit", "over-limit", vec!["--hot"]),
    ] {
        let kinds: Vec<(String, Kind<'_>)> = if args.overhead {
            overhead_lineup()
        } else {
            vec![
                ("no-op baseline".into(), Kind::Noop("empty")),
                (
                    format!("no-op answering like ratelimitd ({answer})"),
                    Kind::Noop(answer),
                ),
                // Under valgrind a healthy Redis answers late: wait for it rather than fall back.
                (
                    "ratelimitd".into(),
                    Kind::Ratelimitd(if args.redis {
                        &["--backend-timeout-ms", "2000"]
                    } else {
                        &[]
                    }),
                ),
            ]
        };
        let mut base = f64::NAN;
        for (i, (label, kind)) in kinds.into_iter().enumerate() {
            // The difference of two runs cancels start-up and shutdown.
            let per = (instructions_for(&binaries, kind, long, &load_args)? as f64
                - instructions_for(&binaries, kind, short, &load_args)? as f64)
                / (long - short) as f64;
            if i == 0 {
                base = per;
            }
            println!("| {scenario} | {label} | {per:.0} | {:.2}x |", per / base);
        }
    }
    Ok(())
}
