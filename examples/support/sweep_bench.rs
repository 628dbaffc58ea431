//! `loadgen sweep`: what removing ended windows costs the decisions around it, with millions of
//! live keys.
//!
//! ratelimitd (pinned to core 0) serves `config/`; one request in flight (pinned to core 1)
//! measures decision latency for `--seconds` on an empty table (the baseline), then `--keys`
//! keys are made live (one request each; the seed policy keeps them for its hour window) and the
//! same probe runs again, across several of the sweeps that run every 5 s.

use super::{Binaries, Kind, Server, load, probe_one_in_flight};

#[derive(clap::Args)]
pub struct SweepArgs {
    /// Live keys during the second probe.
    #[arg(long, default_value_t = 10_000_000)]
    keys: usize,
    /// Seconds of each probe (sweeps run every 5 s).
    #[arg(long, default_value_t = 20.0)]
    seconds: f64,
    #[command(flatten)]
    binaries: Binaries,
}

fn probe(addr: &str, seconds: f64) -> Result<serde_json::Value, Box<dyn std::error::Error>> {
    probe_one_in_flight(addr, seconds, &["--keys", "1000", "--key-prefix", "probe-"])
}

pub fn sweep(args: SweepArgs) -> Result<(), Box<dyn std::error::Error>> {
    // Room for every key (~150 bytes each at most), whatever the default budget.
    let budget = ((args.keys + 100_000) * 150).to_string();
    let flags = ["--max-counter-memory", budget.as_str()];
    let server = Server::start(&args.binaries, Kind::Ratelimitd(&flags), None)?;
    let empty = probe(&server.addr, args.seconds)?;
    let keys = args.keys.to_string();
    let prefill: Vec<String> = [
        "--keys",
        &keys,
        "--prefill",
        "--duration",
        "0.1",
        "--warmup",
        "0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    load(&server.addr, &prefill)?;
    let live = server
        .metric("ratelimitd_counters_in_memory")
        .unwrap_or(0.0);
    let full = probe(&server.addr, args.seconds)?;
    let figure = |run: &serde_json::Value, name: &str| run[name].as_u64().unwrap_or(0);
    println!(
        "decisions at 1 in flight, {} s each (sweeps every 5 s):",
        args.seconds
    );
    println!("| table | p50 µs | p99 µs | max µs |");
    println!("|---|---|---|---|");
    for (what, run) in [("empty", &empty), (&*format!("{live} live keys"), &full)] {
        println!(
            "| {what} | {} | {} | {} |",
            figure(run, "p50_us"),
            figure(run, "p99_us"),
            figure(run, "max_us")
        );
    }
    println!(
        "ratio (full / empty): p99 {:.2}x, max {:.2}x",
        figure(&full, "p99_us") as f64 / figure(&empty, "p99_us").max(1) as f64,
        figure(&full, "max_us") as f64 / figure(&empty, "max_us").max(1) as f64
    );
    let (peak, rss) = server.memory_kib();
    println!(
        "memory: {:.0} MiB resident, {:.0} MiB peak",
        rss as f64 / 1024.0,
        peak as f64 / 1024.0
    );
    Ok(())
}
