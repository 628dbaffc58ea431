//! The gRPC port against hostile connections: a bound on the streams of one connection, told
//! to the peer in HTTP/2's SETTINGS, and an open-file limit raised to the hard limit.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use common::process::Ratelimitd;

/// What the server tells an HTTP/2 client it may have open at once on one connection: read
/// from its SETTINGS frame by a plain HTTP/2 client (h2), which then refuses to open more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_may_hold_at_most_256_streams() {
    let rules = tempfile::tempdir().unwrap();
    std::fs::write(
        rules.path().join("r.yaml"),
        "domain: d\ndescriptors:\n  - key: k\n",
    )
    .unwrap();
    let rl = Ratelimitd::start(rules.path(), 0);
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
    let (_, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap();
    let soft = hard.min(1024) / 2;
    rlimit::setrlimit(rlimit::Resource::NOFILE, soft, hard).unwrap();
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
