//! `loadgen connections`: how long a fresh client (a restarted Envoy) waits for its first answer
//! while idle connections hold every place under `--max-connections`.
//!
//! ratelimitd (pinned to core 0) serves `config/` with `--max-connections CAP`. First a fresh
//! client connects and calls `--tries` times with no other connection open (the baseline);
//! then twice CAP idle TCP connections are opened and kept, and the fresh client's connect and
//! call are timed again, each on a new connection (each one closes an idle one to get in).

use std::time::{Duration, Instant};

use bytes::Bytes;
use prost::Message;

use super::lean_client::LeanClient;
use super::seed_request::seed_request;
use super::{Binaries, Kind, Server, connect};

#[derive(clap::Args)]
pub struct ConnectionsArgs {
    /// `--max-connections` of the server.
    #[arg(long, default_value_t = 1_000)]
    cap: usize,
    /// Fresh connections timed in each phase.
    #[arg(long, default_value_t = 50)]
    tries: usize,
    #[command(flatten)]
    binaries: Binaries,
}

/// Connect and first answer, `tries` times on new connections: the times in microseconds.
async fn fresh_clients(addr: &str, tries: usize) -> Result<Vec<u64>, Box<dyn std::error::Error>> {
    let request = Bytes::from(seed_request("fresh").encode_to_vec());
    let mut times = Vec::with_capacity(tries);
    for _ in 0..tries {
        let started = Instant::now();
        let channels = connect(addr, 1).await?;
        let mut client = LeanClient::new(channels[0].clone());
        client.call(request.clone()).await?;
        times.push(u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX));
        drop(client);
        drop(channels);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    times.sort_unstable();
    Ok(times)
}

pub fn connections(args: ConnectionsArgs) -> Result<(), Box<dyn std::error::Error>> {
    let cap = args.cap.to_string();
    let flags = ["--max-connections", cap.as_str()];
    let server = Server::start(&args.binaries, Kind::Ratelimitd(&flags), None)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let alone = runtime.block_on(fresh_clients(&server.addr, args.tries))?;
    let idle: Vec<std::net::TcpStream> = (0..2 * args.cap)
        .map(|_| std::net::TcpStream::connect(&server.addr))
        .collect::<Result<_, _>>()?;
    // Every idle connection accepted (and the first CAP of them closed for the rest).
    for _ in 0..200 {
        if server
            .metric("ratelimitd_grpc_connections_closed_for_room_total")
            .unwrap_or(0.0)
            >= args.cap as f64
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let crowded = runtime.block_on(fresh_clients(&server.addr, args.tries))?;
    let open = server.metric("ratelimitd_grpc_connections").unwrap_or(0.0);
    let closed = server
        .metric("ratelimitd_grpc_connections_closed_for_room_total")
        .unwrap_or(0.0);
    let at = |times: &[u64], q: f64| times[((times.len() - 1) as f64 * q) as usize];
    println!(
        "fresh client: connect + first answer, {} tries each, --max-connections {}:",
        args.tries, args.cap
    );
    println!("| idle connections held | p50 µs | p90 µs | max µs |");
    println!("|---|---|---|---|");
    for (what, times) in [("none", &alone), (&*format!("{}", 2 * args.cap), &crowded)] {
        println!(
            "| {what} | {} | {} | {} |",
            at(times, 0.5),
            at(times, 0.9),
            at(times, 1.0)
        );
    }
    println!("open at the end: {open}; closed to make room: {closed}");
    drop(idle);
    Ok(())
}
