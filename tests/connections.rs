//! The gRPC port against hostile connections: a bound on the streams of one connection, told
//! to the peer in HTTP/2's SETTINGS, and an open-file limit raised to the hard limit.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use common::process::Ratelimitd;

/// A ratelimitd process on a one-rule file; the directory lives as long as the first part.
fn server() -> (tempfile::TempDir, Ratelimitd) {
    let rules = tempfile::tempdir().unwrap();
    std::fs::write(
        rules.path().join("r.yaml"),
        "domain: d\ndescriptors:\n  - key: k\n",
    )
    .unwrap();
    let rl = Ratelimitd::start(rules.path(), 0);
    (rules, rl)
}

/// What the server tells an HTTP/2 client it may have open at once on one connection: read
/// from its SETTINGS frame by a plain HTTP/2 client (h2), which then refuses to open more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_may_hold_at_most_256_streams() {
    let (_rules, rl) = server();
    let tcp = tokio::net::TcpStream::connect(&rl.addr).await.unwrap();
    let (client, mut connection) = h2::client::handshake(tcp).await.unwrap();
    let mut advertised = usize::MAX;
    for _ in 0..200 {
        // Drive the connection until the server's SETTINGS have been read.
        advertised = std::future::poll_fn(|cx| {
            let _ = Pin::new(&mut connection).poll(cx);
            Poll::Ready(connection.max_concurrent_send_streams())
        })
        .await;
        if advertised != usize::MAX {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        advertised,
        ratelimitd::server::MAX_STREAMS_PER_CONNECTION as usize
    );
    // Closed first, so that shutdown need not wait for it to drain.
    drop((client, connection));
    rl.stop();
}

#[test]
fn the_open_file_limit_is_raised_to_the_hard_limit() {
    let rules = tempfile::tempdir().unwrap();
    std::fs::write(
        rules.path().join("r.yaml"),
        "domain: d\ndescriptors:\n  - key: k\n",
    )
    .unwrap();
    // Started with a soft limit below the hard one (a child inherits it), as in most containers.
    // Just below the hard limit, so that the other tests of this binary keep their room.
    let (_, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap();
    rlimit::setrlimit(rlimit::Resource::NOFILE, hard - 1, hard).unwrap();
    let rl = Ratelimitd::start(rules.path(), 0);
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", rl.pid())).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("a limit on open files");
    let numbers: Vec<&str> = line.split_whitespace().skip(3).take(2).collect();
    assert_eq!(numbers.len(), 2, "{line}");
    assert_eq!(
        numbers[0], numbers[1],
        "soft limit raised to the hard one: {line}"
    );
    rl.stop();
}

/// A client that starts a request and never finishes it (slowloris) is cut off after the
/// request deadline, and the port keeps answering others meanwhile.
#[test]
fn the_admin_port_closes_a_request_that_never_ends() {
    use std::io::{Read, Write};
    let (_rules, rl) = server();
    let mut slow = std::net::TcpStream::connect(&rl.http_addr).unwrap();
    slow.write_all(b"GET /healthcheck HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let started = std::time::Instant::now();
    slow.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let (status, _) = common::http_get(&rl.http_addr, "/healthcheck");
    assert_eq!(status, 200, "others are answered meanwhile");
    let mut answer = Vec::new();
    let _ = slow.read_to_end(&mut answer);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(9) && took < Duration::from_secs(20),
        "closed after {took:?}"
    );
    assert!(
        !String::from_utf8_lossy(&answer).contains("200 OK"),
        "never answered: {answer:?}"
    );
    rl.stop();
}

/// Past 512 open admin connections, a new one is closed at once (the process's file
/// descriptors are kept for the gRPC port); once they go, the port answers again.
#[test]
fn the_admin_port_holds_at_most_512_connections() {
    use std::io::Read;
    let (_rules, rl) = server();
    let idle: Vec<std::net::TcpStream> = (0..512)
        .map(|_| std::net::TcpStream::connect(&rl.http_addr).unwrap())
        .collect();
    // Every one of them accepted before the next try.
    common::process::wait_until(Duration::from_secs(10), "a refused connection", || {
        let mut extra = std::net::TcpStream::connect(&rl.http_addr).ok()?;
        extra
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut byte = [0u8; 1];
        // Closed by the server: end of stream (or a reset), not a timeout.
        match extra.read(&mut byte) {
            Ok(0) => Some(()),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Some(()),
            _ => None,
        }
    });
    drop(idle);
    let healthy = common::process::wait_until(Duration::from_secs(10), "answers again", || {
        let answer = common::process::http_agent()
            .get(format!("http://{}/healthcheck", rl.http_addr))
            .call()
            .ok()?;
        let status = answer.status().as_u16();
        (status == 200).then_some(status)
    });
    assert_eq!(healthy, 200);
    rl.stop();
}

/// (user + system) clock ticks a process has used.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = stat.rsplit_once(')').unwrap().1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// Out of file descriptors (a hard limit of 64 here), the gRPC port pauses between failed
/// accepts instead of spinning a core, and serves a new client once descriptors are free again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_descriptors_the_grpc_port_waits_and_recovers() {
    let rules = tempfile::tempdir().unwrap();
    std::fs::write(
        rules.path().join("r.yaml"),
        "domain: d\ndescriptors:\n  - key: k\n",
    )
    .unwrap();
    assert!(
        std::process::Command::new("prlimit")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success()),
        "prlimit is missing: apt-get install util-linux"
    );
    let rl = Ratelimitd::start_under(&["prlimit", "--nofile=64:64"], rules.path(), 0, &[]);
    // More connections than the process has descriptors left; they stay open, saying nothing.
    let mut held = Vec::new();
    for _ in 0..80 {
        held.push(tokio::net::TcpStream::connect(&rl.addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = cpu_ticks(rl.pid());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let used = cpu_ticks(rl.pid()) - before;
    // 2 s at a full core would be about 200 ticks.
    assert!(used < 60, "{used} ticks in 2 s while out of descriptors");
    rl.log
        .wait_for("cannot accept a gRPC connection", Duration::from_secs(5));
    drop(held);
    let mut answered = false;
    for _ in 0..50 {
        if let Ok(mut client) = common::Client::connect(format!("http://{}", rl.addr)).await
            && client
                .should_rate_limit(common::request(
                    "d",
                    vec![common::descriptor(&[("k", "v")])],
                ))
                .await
                .is_ok()
        {
            answered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(answered, "a new client is served once descriptors are free");
    rl.stop();
}

/// More idle connections than `--max-connections`: the idlest are closed to make room, so a
/// fresh client (a restarted Envoy) is served, and a rule change still applies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_connections_the_idlest_are_closed_and_a_new_client_is_served() {
    use std::io::Read;
    let rules = tempfile::tempdir().unwrap();
    let file = rules.path().join("r.yaml");
    std::fs::write(&file, "domain: d\ndescriptors:\n  - key: k\n").unwrap();
    let rl = Ratelimitd::start_with(rules.path(), 0, &["--max-connections", "50"]);
    let idle: Vec<std::net::TcpStream> = (0..100)
        .map(|_| std::net::TcpStream::connect(&rl.addr).unwrap())
        .collect();
    // A fresh client is served, after the 100 idle ones were accepted.
    let scrape = || common::http_get(&rl.http_addr, "/metrics").1;
    common::process::wait_until(Duration::from_secs(10), "100 accepted", || {
        let closed = common::metric(
            &scrape(),
            "ratelimitd_grpc_connections_closed_for_room_total",
        );
        (closed >= 50.0).then_some(())
    });
    let mut client = common::Client::connect(format!("http://{}", rl.addr))
        .await
        .unwrap();
    let shadow = common::request("d", vec![common::descriptor(&[("k", "v")])]);
    let answer = tokio::time::timeout(Duration::from_secs(5), client.should_rate_limit(shadow))
        .await
        .expect("the fresh client is answered within 5 s")
        .expect("an answer");
    assert_eq!(answer.into_inner().overall_code, 1, "OK");
    let metrics = scrape();
    assert!(common::metric(&metrics, "ratelimitd_grpc_connections") <= 50.0);
    // The idle connections closed by the server read end-of-stream (after the server's
    // SETTINGS, if it sent them); an open one times out.
    let closed = idle
        .iter()
        .filter(|stream| {
            let mut stream = *stream;
            stream
                .set_read_timeout(Some(Duration::from_millis(20)))
                .unwrap();
            let mut bytes = [0u8; 256];
            loop {
                match stream.read(&mut bytes) {
                    Ok(0) => return true,
                    Ok(_) => continue,
                    Err(e) => return e.kind() == std::io::ErrorKind::ConnectionReset,
                }
            }
        })
        .count();
    assert!(closed >= 50, "{closed} of 100 idle connections closed");
    // A rule change still applies: the reloader is not out of file descriptors.
    std::fs::write(
        &file,
        "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: minute, requests_per_unit: 0}\n",
    )
    .unwrap();
    let mut refused = false;
    for _ in 0..100 {
        let request = common::request("d", vec![common::descriptor(&[("k", "v")])]);
        let code = client
            .should_rate_limit(request)
            .await
            .unwrap()
            .into_inner()
            .overall_code;
        if code == 2 {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(refused, "the new rule (0 a minute) applies");
    drop(idle);
    rl.stop();
}

/// A call whose body arrives late is measured from its arrival: the decision-latency histogram
/// shows the whole time a call waits, not only the decision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_latency_histogram_counts_from_the_call_s_arrival() {
    use prost::Message;
    let (_rules, rl) = server();
    let tcp = tokio::net::TcpStream::connect(&rl.addr).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    let driver = tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    let head = tonic::codegen::http::Request::post(format!(
        "http://{}/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit",
        rl.addr
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .body(())
    .unwrap();
    let (answer, mut body) = client.send_request(head, false).unwrap();
    // The headers are in; the message follows 300 ms later.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let message = common::request("d", vec![common::descriptor(&[("k", "v")])]).encode_to_vec();
    let mut framed = vec![0u8];
    framed.extend_from_slice(&u32::try_from(message.len()).unwrap().to_be_bytes());
    framed.extend_from_slice(&message);
    body.send_data(framed.into(), true).unwrap();
    let answer = answer.await.unwrap();
    assert_eq!(answer.status(), 200);
    let mut answer = answer.into_body();
    while let Some(chunk) = answer.data().await {
        chunk.unwrap();
    }
    let scrape = common::http_get(&rl.http_addr, "/metrics").1;
    let quick = common::metric(
        &scrape,
        r#"ratelimitd_decision_duration_seconds_bucket{le="0.25"}"#,
    );
    let all = common::metric(&scrape, "ratelimitd_decision_duration_seconds_count");
    assert_eq!((quick, all), (0.0, 1.0), "the one call took over 250 ms");
    drop(client);
    driver.abort();
    rl.stop();
}
