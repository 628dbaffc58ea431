//! `loadgen overload`: the same steady overload through each algorithm, admitted requests per
//! second, for the picture in `docs/algorithms.md` (`scripts/plot-algorithms`).
//!
//! One ratelimitd per algorithm (`--default-algorithm`) serves `config/`, whose default bucket
//! admits 60 a minute; each gets one API key's requests at `--rate` per second (3: three times
//! the limit) for `--seconds`, all three at once. Prints CSV: algorithm, second (since the
//! start), Unix second (where the fixed windows' edges are), admitted, refused.

use std::time::Duration;

use tokio::time::{Instant, MissedTickBehavior};

use super::{Binaries, Kind, LeanClient, Server, connect, encoded_request};

#[derive(clap::Args)]
pub struct OverloadArgs {
    /// Requests per second sent to each server.
    #[arg(long, default_value_t = 3.0)]
    rate: f64,
    /// How long each is driven.
    #[arg(long, default_value_t = 180)]
    seconds: u64,
    #[command(flatten)]
    binaries: Binaries,
}

const ALGORITHMS: [&str; 3] = ["fixed_window", "sliding_window", "token_bucket"];

/// Per second: (admitted, refused).
type Seconds = Vec<(u64, u64)>;

async fn drive(addr: String, rate: f64, seconds: u64) -> Result<Seconds, String> {
    let channel = connect(&addr, 1)
        .await
        .map_err(|e| e.to_string())?
        .pop()
        .ok_or("no channel")?;
    let mut client = LeanClient::new(channel);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let request = encoded_request(&format!("overload-{nanos}"));
    let mut tally = vec![(0, 0); seconds as usize];
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    ticks.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let started = Instant::now();
    loop {
        ticks.tick().await;
        let second = started.elapsed().as_secs() as usize;
        let Some(slot) = tally.get_mut(second) else {
            return Ok(tally);
        };
        match client.call(request.clone()).await {
            Ok(1) => slot.0 += 1,
            Ok(_) => slot.1 += 1,
            Err(status) => return Err(status.to_string()),
        }
    }
}

pub fn overload(args: OverloadArgs) -> Result<(), Box<dyn std::error::Error>> {
    let started = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
    let mut servers = Vec::new();
    for algorithm in ALGORITHMS {
        let mut binaries = args.binaries.clone();
        binaries.algorithm = Some(algorithm.to_string());
        servers.push(Server::start(&binaries, Kind::Ratelimitd(&[]), None)?);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let tallies = runtime.block_on(async {
        let runs = servers
            .iter()
            .map(|server| tokio::spawn(drive(server.addr.clone(), args.rate, args.seconds)));
        let mut tallies = Vec::new();
        for run in runs.collect::<Vec<_>>() {
            tallies.push(run.await.map_err(|e| e.to_string()).and_then(|t| t));
        }
        tallies
    });
    println!("algorithm,second,unix_second,admitted,refused");
    for (algorithm, tally) in ALGORITHMS.iter().zip(tallies) {
        for (second, (admitted, refused)) in tally?.iter().enumerate() {
            let unix = (started + Duration::from_secs(second as u64)).as_secs();
            println!("{algorithm},{second},{unix},{admitted},{refused}");
        }
    }
    drop(servers);
    Ok(())
}
