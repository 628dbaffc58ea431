//! The `ratelimitd` binary as an operator runs it: refusing broken rules, stopping on SIGTERM.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::process::{Ratelimitd, grpcurl, project};

#[test]
fn serve_refuses_to_start_on_broken_rules() {
    let output = Command::new(env!("CARGO_BIN_EXE_ratelimitd"))
        .args(["serve", "--grpc-addr", "127.0.0.1:0", "--config"])
        .arg(project("tests/fixtures/bad_unit.yaml"))
        .output()
        .expect("ratelimitd runs");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("bad_unit.yaml:5:13: unknown unit \"minutes\""),
        "{stderr}"
    );
}

#[test]
fn serve_refuses_a_backend_address_it_cannot_read() {
    let output = Command::new(env!("CARGO_BIN_EXE_ratelimitd"))
        .args([
            "serve",
            "--grpc-addr",
            "127.0.0.1:0",
            "--backend",
            "localhost:6379",
            "--config",
        ])
        .arg(project("config"))
        .output()
        .expect("ratelimitd runs");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--backend localhost:6379: expected memory, redis://HOST:PORT"),
        "{stderr}"
    );
}

#[test]
fn sigterm_stops_serving_and_exits_zero() {
    let mut served = Ratelimitd::start(&project("config"), 0);
    let health = grpcurl(&[&served.addr, "grpc.health.v1.Health/Check"]);
    assert!(health.contains("\"status\": \"SERVING\""), "{health}");
    served.process.terminate();
    served
        .log
        .wait_for("shutting down", Duration::from_secs(10));
    assert_eq!(served.process.wait_exit(Duration::from_secs(15)), 0);
}

#[test]
fn the_health_command_reports_serving_and_fails_when_nothing_answers() {
    let served = Ratelimitd::start(&project("config"), 0);
    let health = |addr: &str| {
        Command::new(env!("CARGO_BIN_EXE_ratelimitd"))
            .args(["health", "--timeout-ms", "2000", "--grpc-addr", addr])
            .output()
            .expect("ratelimitd health runs")
    };
    let up = health(&served.addr);
    assert_eq!(up.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&up.stdout).trim(), "SERVING");
    let port = served.port();
    served.stop();
    let down = health(&format!("127.0.0.1:{port}"));
    assert_eq!(down.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&down.stderr).contains("cannot connect"));
}
