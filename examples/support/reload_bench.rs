//! `loadgen reload`: what a big rule file costs the decisions around it, and the idle server
//! afterwards.
//!
//! ratelimitd (pinned to core 0) serves `config/`; one request in flight (pinned to core 1)
//! measures decision latency in two-second runs: first with nothing else happening (the
//! baseline), then while a generated rule file of `--megabytes` is renamed into the rules
//! directory and loads, until the load is counted. Then the server idles for `--idle` seconds,
//! first with `config/` alone (before the big file) and again with the big file loaded, and the
//! CPU time it used each time is reported as a share of one core, with its memory.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{Binaries, Kind, Server, probe_one_in_flight};

#[derive(clap::Args)]
pub struct ReloadArgs {
    /// Size of the generated rule file (per-customer overrides, about 70 bytes each).
    #[arg(long, default_value_t = 100)]
    megabytes: usize,
    /// Seconds the server is left idle for each idle figure.
    #[arg(long, default_value_t = 20.0)]
    idle: f64,
    #[command(flatten)]
    binaries: Binaries,
}

/// One override: about 70 bytes.
fn write_overrides(path: &Path, megabytes: usize) -> std::io::Result<usize> {
    use std::io::Write;
    let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
    writeln!(file, "domain: big\ndescriptors:")?;
    let (mut written, mut count) = (0, 0);
    while written < megabytes * 1024 * 1024 {
        let line = format!(
            "  - key: api_key\n    value: customer-{count:09}\n    rate_limit: {{unit: minute, requests_per_unit: {}}}\n",
            100 + count % 900
        );
        file.write_all(line.as_bytes())?;
        written += line.len();
        count += 1;
    }
    file.flush()?;
    Ok(count)
}

/// Two-second runs at one request in flight, keys of the seed policy.
fn probe(addr: &str) -> Result<Value, Box<dyn std::error::Error>> {
    probe_one_in_flight(addr, 2.0, &[])
}

fn field(run: &Value, name: &str) -> u64 {
    run[name].as_u64().unwrap_or(0)
}

/// The share of one core the server used while left alone for `seconds`.
fn idle_share(server: &Server, seconds: f64) -> f64 {
    let before = server.cpu_seconds();
    std::thread::sleep(Duration::from_secs_f64(seconds));
    (server.cpu_seconds() - before) / seconds
}

pub fn reload(args: ReloadArgs) -> Result<(), Box<dyn std::error::Error>> {
    let rules = tempfile::tempdir()?;
    for entry in std::fs::read_dir(&args.binaries.config)? {
        let path = entry?.path();
        if let Some(name) = path.file_name() {
            std::fs::copy(&path, rules.path().join(name))?;
        }
    }
    let staged = rules.path().join(".big.yaml.staged");
    let overrides = write_overrides(&staged, args.megabytes)?;
    let config = rules.path().to_path_buf();
    let server = Server::start(&args.binaries, Kind::Ratelimitd(&[]), Some(&config))?;
    let loads = || {
        server
            .metric("ratelimit_service_config_load_success")
            .unwrap_or(0.0)
    };

    let idle_before = idle_share(&server, args.idle);
    let (_, rss_before) = server.memory_kib();
    let baseline: Vec<Value> = (0..3)
        .map(|_| probe(&server.addr))
        .collect::<Result<_, _>>()?;

    let loaded_before = loads();
    std::fs::rename(&staged, rules.path().join("big.yaml"))?;
    let renamed = Instant::now();
    let mut during = Vec::new();
    while loads() <= loaded_before {
        if renamed.elapsed() > Duration::from_secs(600) {
            return Err("the big file did not load within 10 minutes".into());
        }
        during.push(probe(&server.addr)?);
    }
    let load_seconds = renamed.elapsed().as_secs_f64();
    let (peak, _) = server.memory_kib();
    let idle_after = idle_share(&server, args.idle);
    let (_, rss_after) = server.memory_kib();

    let summary = |runs: &[Value]| {
        let max = runs.iter().map(|r| field(r, "max_us")).max().unwrap_or(0);
        let p99 = runs.iter().map(|r| field(r, "p99_us")).max().unwrap_or(0);
        let p50 = runs.iter().map(|r| field(r, "p50_us")).max().unwrap_or(0);
        let rate: f64 = runs
            .iter()
            .map(|r| r["decisions_per_s"].as_f64().unwrap_or(0.0))
            .sum::<f64>()
            / runs.len().max(1) as f64;
        (p50, p99, max, rate)
    };
    let (b50, b99, bmax, brate) = summary(&baseline);
    let (d50, d99, dmax, drate) = summary(&during);
    println!(
        "a {} MB rule file ({overrides} overrides) renamed into the rules directory: loaded in {load_seconds:.1} s (until counted, probed in 2 s runs)",
        args.megabytes
    );
    println!("| decisions, 1 in flight | p50 µs | p99 µs | max µs | decisions/s |");
    println!("|---|---|---|---|---|");
    println!("| before (3 runs) | {b50} | {b99} | {bmax} | {brate:.0} |");
    println!(
        "| during the load ({} runs) | {d50} | {d99} | {dmax} | {drate:.0} |",
        during.len()
    );
    println!(
        "| ratio | {:.2}x | {:.2}x | {:.2}x | {:.2}x |",
        d50 as f64 / b50.max(1) as f64,
        d99 as f64 / b99.max(1) as f64,
        dmax as f64 / bmax.max(1) as f64,
        drate / brate.max(1.0)
    );
    let maxima: Vec<String> = during
        .iter()
        .map(|r| field(r, "max_us").to_string())
        .collect();
    println!(
        "the slowest decision of each run during the load, µs: {}",
        maxima.join(" ")
    );
    println!(
        "idle, {} s each: {:.3} % of a core with config/ alone, {:.3} % with the big file loaded",
        args.idle,
        idle_before * 100.0,
        idle_after * 100.0
    );
    println!(
        "memory: {:.0} MiB resident before, {:.0} MiB after, {:.0} MiB peak",
        rss_before as f64 / 1024.0,
        rss_after as f64 / 1024.0,
        peak as f64 / 1024.0
    );
    Ok(())
}
