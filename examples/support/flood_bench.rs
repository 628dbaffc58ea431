//! `loadgen flood`: a flood of made-up keys into a small counter budget, with heavy keys and a
//! newcomer that must stay limited throughout; then what long descriptor values cost.
//!
//! ratelimitd (pinned to core 0) serves `config/` with `--max-counter-memory` (room for about
//! 100,000 counters by default). This process (run it under `taskset -c 1`) floods it with
//! requests of 256 descriptors `(api_key, random), (bucket, default)` until `--keys` one-hit
//! keys were sent, while 1,000 heavy keys send twice their limit of 60 a minute, and halfway a
//! new key sends 70 requests at once. Every answer is tallied: gRPC errors, heavy keys'
//! admissions past their limit in each minute, the newcomer's OKs. Then two fresh servers each
//! take `--value-keys` keys, with short and with 8 KiB values, and their memory per counter is
//! compared.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use prost::Message;
use ratelimitd::proto::rate_limit_descriptor::Entry;
use ratelimitd::proto::rate_limit_response::Code;
use ratelimitd::proto::{RateLimitDescriptor, RateLimitRequest};

use super::lean_client::LeanClient;
use super::seed_request::seed_request;
use super::{Binaries, Kind, Server, connect};

#[derive(clap::Args)]
pub struct FloodArgs {
    /// One-hit keys the flood sends.
    #[arg(long, default_value_t = 10_000_000)]
    keys: u64,
    /// The counters' budget.
    #[arg(long, default_value = "15MiB")]
    budget: String,
    /// Heavy keys, each sending twice its limit (60 a minute) throughout.
    #[arg(long, default_value_t = 1_000)]
    heavy: u64,
    /// Seconds the flood lasts at least (heavy keys reach their limit in full minutes).
    #[arg(long, default_value_t = 75.0)]
    seconds: f64,
    /// Keys made with short and with 8 KiB values, to compare their memory.
    #[arg(long, default_value_t = 50_000)]
    value_keys: u64,
    #[command(flatten)]
    binaries: Binaries,
}

/// Descriptors per flood request (fewer with long values).
const PER_REQUEST: usize = 256;
/// Flood requests in flight.
const FLOOD_IN_FLIGHT: usize = 4;
/// The seed's default bucket: 60 a minute.
const LIMIT: u32 = 60;

fn entry(key: &str, value: &str) -> Entry {
    Entry {
        key: key.to_string(),
        value: value.to_string(),
    }
}

/// A request of `n` descriptors `(api_key, value), (bucket, default)`, values from `next`.
fn many(n: usize, mut next: impl FnMut() -> String) -> Bytes {
    let descriptors = (0..n)
        .map(|_| RateLimitDescriptor {
            entries: vec![entry("api_key", &next()), entry("bucket", "default")],
            ..Default::default()
        })
        .collect();
    let request = RateLimitRequest {
        domain: "mega-api".to_string(),
        descriptors,
        hits_addend: 0,
    };
    Bytes::from(request.encode_to_vec())
}

fn minute_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 60)
}

#[derive(Default)]
struct Tally {
    sent_keys: AtomicU64,
    requests: AtomicU64,
    errors: AtomicU64,
}

/// Sends one-hit keys until `keys` were sent and `min_duration` has passed.
async fn flood(
    addr: String,
    keys: u64,
    min_duration: Duration,
    value_bytes: usize,
    tally: Arc<Tally>,
    seed: u64,
) {
    let Ok(channels) = connect(&addr, 1).await else {
        tally.errors.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let mut tasks = Vec::new();
    for t in 0..FLOOD_IN_FLIGHT as u64 {
        let mut client = LeanClient::new(channels[0].clone());
        let tally = Arc::clone(&tally);
        tasks.push(tokio::spawn(async move {
            let mut state = (seed ^ (t + 1)).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            let pad = "x".repeat(value_bytes.saturating_sub(16));
            // Requests stay under ratelimitd's 256 KiB bound.
            let per_request = PER_REQUEST.min(200 * 1024 / (value_bytes + 64));
            let until = Instant::now() + min_duration;
            while tally
                .sent_keys
                .fetch_add(per_request as u64, Ordering::Relaxed)
                < keys
                || Instant::now() < until
            {
                let request = many(per_request, || {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    format!("{state:016x}{pad}")
                });
                tally.requests.fetch_add(1, Ordering::Relaxed);
                if let Err(status) = client.call(request).await
                    && tally.errors.fetch_add(1, Ordering::Relaxed) == 0
                {
                    eprintln!("first error: {status}");
                }
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
}

/// Per (heavy key, minute): requests sent and admitted.
type Minutes = HashMap<(u64, u64), (u32, u32)>;

/// 1,000 heavy keys, each at twice its limit, until `stop`.
async fn heavy(addr: String, heavy: u64, stop: Arc<AtomicBool>, errors: Arc<Tally>) -> Minutes {
    let Ok(channels) = connect(&addr, 1).await else {
        errors.errors.fetch_add(1, Ordering::Relaxed);
        return Minutes::new();
    };
    // Twice the limit: 120 a minute per key.
    let per_second = heavy as f64 * 2.0 * f64::from(LIMIT) / 60.0;
    let tasks_n = 8u64;
    let start = Instant::now();
    let requests: Arc<Vec<Bytes>> = Arc::new(
        (0..heavy)
            .map(|i| Bytes::from(seed_request(&format!("heavy-{i}")).encode_to_vec()))
            .collect(),
    );
    let mut tasks = Vec::new();
    for t in 0..tasks_n {
        let mut client = LeanClient::new(channels[0].clone());
        let (stop, errors, requests) = (
            Arc::clone(&stop),
            Arc::clone(&errors),
            Arc::clone(&requests),
        );
        tasks.push(tokio::spawn(async move {
            let mut minutes = Minutes::new();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let global = n * tasks_n + t;
                let due = start + Duration::from_secs_f64(global as f64 / per_second);
                tokio::time::sleep_until(due.into()).await;
                let key = global % heavy;
                let minute = minute_now();
                let answer = client.call(requests[key as usize].clone()).await;
                let cell = minutes.entry((key, minute)).or_default();
                cell.0 += 1;
                match answer {
                    Ok(code) if code == Code::Ok as i32 => cell.1 += 1,
                    Ok(_) => {}
                    Err(_) => {
                        errors.errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                n += 1;
            }
            minutes
        }));
    }
    let mut all = Minutes::new();
    for task in tasks {
        if let Ok(minutes) = task.await {
            for (k, (sent, ok)) in minutes {
                let cell = all.entry(k).or_default();
                cell.0 += sent;
                cell.1 += ok;
            }
        }
    }
    all
}

/// A new key's 70 requests at once: (OKs, minutes it spanned).
async fn newcomer(addr: &str) -> Result<(u32, bool), Box<dyn std::error::Error>> {
    let channels = connect(addr, 1).await?;
    let mut client = LeanClient::new(channels[0].clone());
    let request = Bytes::from(seed_request("newcomer").encode_to_vec());
    let first = minute_now();
    let mut ok = 0;
    for _ in 0..70 {
        if client.call(request.clone()).await? == Code::Ok as i32 {
            ok += 1;
        }
    }
    Ok((ok, minute_now() == first))
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

pub fn flood_bench(args: FloodArgs) -> Result<(), Box<dyn std::error::Error>> {
    let flags = ["--max-counter-memory", args.budget.as_str()];
    let server = Server::start(&args.binaries, Kind::Ratelimitd(&flags), None)?;
    let (_, rss_start) = server.memory_kib();
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let heavy_thread = {
        let (addr, stop, tally) = (server.addr.clone(), Arc::clone(&stop), Arc::clone(&tally));
        let n = args.heavy;
        std::thread::spawn(move || runtime().map(|rt| rt.block_on(heavy(addr, n, stop, tally))))
    };
    let flood_thread = {
        let (addr, tally) = (server.addr.clone(), Arc::clone(&tally));
        let (keys, lasting) = (args.keys, Duration::from_secs_f64(args.seconds));
        std::thread::spawn(move || {
            runtime().map(|rt| rt.block_on(flood(addr, keys, lasting, 0, tally, 7)))
        })
    };
    // Halfway through the flood, a newcomer.
    let halfway = Duration::from_secs_f64(args.seconds / 2.0);
    while (tally.sent_keys.load(Ordering::Relaxed) < args.keys / 2 || started.elapsed() < halfway)
        && !flood_thread.is_finished()
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut newcomer_ok = runtime()?.block_on(newcomer(&server.addr))?;
    if !newcomer_ok.1 {
        // A minute turned over during its burst: once more, in a fresh minute.
        newcomer_ok = runtime()?.block_on(newcomer(&server.addr))?;
    }
    let mut peak_rss = 0;
    while !flood_thread.is_finished() {
        std::thread::sleep(Duration::from_millis(200));
        peak_rss = peak_rss.max(server.memory_kib().1);
    }
    let flood_seconds = started.elapsed().as_secs_f64();
    let _ = flood_thread.join();
    stop.store(true, Ordering::Relaxed);
    let minutes = heavy_thread
        .join()
        .map_err(|_| "the heavy keys' thread panicked")??;
    let (hwm, rss_end) = server.memory_kib();
    let metric = |name: &str| server.metric(name).unwrap_or(0.0);
    let (live, evictions, bytes, budget) = (
        metric("ratelimitd_counters_in_memory"),
        metric("ratelimitd_counter_evictions_total"),
        metric("ratelimitd_counter_memory_bytes"),
        metric("ratelimitd_counter_memory_budget_bytes"),
    );
    // Heavy keys: admissions past the limit in each (key, minute), against what was allowed.
    let (mut allowed, mut admitted, mut excess) = (0u64, 0u64, 0u64);
    for (sent, ok) in minutes.values() {
        allowed += u64::from((*sent).min(LIMIT));
        admitted += u64::from(*ok);
        excess += u64::from(ok.saturating_sub(LIMIT));
    }
    let sent = tally.sent_keys.load(Ordering::Relaxed);
    println!(
        "flood: {sent} one-hit keys in {flood_seconds:.1} s ({:.0} keys/s), {} requests of {PER_REQUEST} descriptors, budget {}",
        sent as f64 / flood_seconds,
        tally.requests.load(Ordering::Relaxed),
        args.budget
    );
    println!("| figure | value |");
    println!("|---|---|");
    println!(
        "| gRPC errors (flood, heavy keys, newcomer) | {} |",
        tally.errors.load(Ordering::Relaxed)
    );
    println!(
        "| heavy keys: admitted / allowed (min(sent, 60) per key-minute) | {admitted} / {allowed} |"
    );
    println!(
        "| heavy keys: admitted past the limit | {excess} ({:.3} % of allowed) |",
        100.0 * excess as f64 / allowed.max(1) as f64
    );
    println!(
        "| newcomer: OK of 70 at once (limit 60) | {} |",
        newcomer_ok.0
    );
    println!("| counters held at the end / evictions | {live} / {evictions} |");
    println!("| table bytes / budget bytes | {bytes} / {budget} |");
    println!(
        "| RSS at start / peak during flood / at end / VmHWM (KiB) | {rss_start} / {peak_rss} / {rss_end} / {hwm} |"
    );
    drop(server);
    values(&args)
}

/// Memory per counter with short and with 8 KiB values.
fn values(args: &FloodArgs) -> Result<(), Box<dyn std::error::Error>> {
    println!();
    println!("{} keys each, 1GiB budget (no eviction):", args.value_keys);
    println!("| values | RSS growth per counter (bytes) | table bytes per counter |");
    println!("|---|---|---|");
    for value_bytes in [16, 8192] {
        let flags = ["--max-counter-memory", "1GiB"];
        let server = Server::start(&args.binaries, Kind::Ratelimitd(&flags), None)?;
        let (_, before) = server.memory_kib();
        let tally = Arc::new(Tally::default());
        runtime()?.block_on(flood(
            server.addr.clone(),
            args.value_keys,
            Duration::ZERO,
            value_bytes,
            Arc::clone(&tally),
            11,
        ));
        // Let the allocator give back the requests' buffers.
        std::thread::sleep(Duration::from_secs(2));
        let (_, after) = server.memory_kib();
        let live = server
            .metric("ratelimitd_counters_in_memory")
            .unwrap_or(0.0)
            .max(1.0);
        let bytes = server
            .metric("ratelimitd_counter_memory_bytes")
            .unwrap_or(0.0);
        println!(
            "| {value_bytes} bytes | {:.1} | {:.1} |",
            (after.saturating_sub(before) * 1024) as f64 / live,
            bytes / live
        );
        if tally.errors.load(Ordering::Relaxed) > 0 {
            println!("(errors: {})", tally.errors.load(Ordering::Relaxed));
        }
    }
    Ok(())
}
