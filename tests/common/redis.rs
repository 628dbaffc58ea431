//! Real `redis-server` processes (Debian's package) for the Redis backend's tests: one server,
//! or a three-master Cluster built with `redis-cli --cluster create`, on free loopback ports,
//! stopped by PID when dropped.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use super::process::{Process, wait_until};

const INSTALL: &str = "scripts/test (it installs it), or apt-get install -y redis-server";

fn tool(name: &str) -> PathBuf {
    let path = PathBuf::from("/usr/bin").join(name);
    assert!(path.is_file(), "{name} is missing: run {INSTALL}");
    path
}

/// A port that was free a moment ago (and, for Cluster nodes, whose bus port +10000 too).
pub fn free_port(with_bus: bool) -> u16 {
    loop {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
        let port = listener.local_addr().expect("bound address").port();
        if !with_bus {
            return port;
        }
        if port < 55_000 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

/// Script calls (`EVALSHA`) the Redis at `port` has run so far, from `INFO commandstats`.
pub fn script_calls(port: u16) -> u64 {
    cli(port, &["info", "commandstats"])
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_evalsha:calls="))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// `redis-cli -p PORT ARGS…`: its output, trimmed.
pub fn cli(port: u16, args: &[&str]) -> String {
    let output = Command::new(tool("redis-cli"))
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli runs");
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// One `redis-server` on 127.0.0.1.
pub struct RedisServer {
    pub process: Process,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        RedisServer::start_on(free_port(false), &[])
    }

    /// On `port` (a restart on the same port), with more `redis-server` arguments.
    pub fn start_on(port: u16, extra: &[&str]) -> RedisServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let process = Process::spawn(
            Command::new(tool("redis-server"))
                .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
                .args(["--save", "", "--appendonly", "no", "--dir"])
                .arg(dir.path())
                .args(extra)
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        );
        wait_until(Duration::from_secs(10), "redis-server answers PING", || {
            (cli(port, &["ping"]) == "PONG").then_some(())
        });
        RedisServer {
            process,
            port,
            _dir: dir,
        }
    }

    /// `redis://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn dbsize(&self) -> u64 {
        cli(self.port, &["dbsize"]).parse().unwrap_or(0)
    }

    /// Kills it (SIGKILL), as a crash would.
    pub fn kill(mut self) -> u16 {
        let _ = self.process.child.kill();
        let _ = self.process.child.wait();
        self.port
    }
}

/// Three masters, no replicas, every slot covered.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Creates one, trying again with fresh nodes if a creation does not complete (on a loaded
    /// machine the nodes' handshake can stall, and `redis-cli --cluster create` then waits
    /// forever).
    pub fn start() -> RedisCluster {
        for _ in 0..3 {
            if let Some(cluster) = RedisCluster::try_start() {
                return cluster;
            }
        }
        panic!("no Redis Cluster could be created in 3 attempts");
    }

    fn try_start() -> Option<RedisCluster> {
        let nodes: Vec<RedisServer> = (0..3)
            .map(|_| {
                RedisServer::start_on(
                    free_port(true),
                    &["--cluster-enabled", "yes", "--cluster-node-timeout", "5000"],
                )
            })
            .collect();
        let addresses: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let mut create = Command::new(tool("redis-cli"))
            .arg("--cluster")
            .arg("create")
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-cli --cluster create runs");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let created = loop {
            match create.try_wait().expect("wait on redis-cli") {
                Some(status) => break status.success(),
                None if std::time::Instant::now() > deadline => {
                    let _ = create.kill();
                    let _ = create.wait();
                    break false;
                }
                None => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        if !created {
            return None;
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !nodes
            .iter()
            .all(|n| cli(n.port, &["cluster", "info"]).contains("cluster_state:ok"))
        {
            if std::time::Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(RedisCluster { nodes })
    }

    /// `redis+cluster://127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3`
    pub fn url(&self) -> String {
        let nodes: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!("redis+cluster://{}", nodes.join(","))
    }

    /// Keys in the whole Cluster.
    pub fn dbsize(&self) -> u64 {
        self.nodes.iter().map(RedisServer::dbsize).sum()
    }
}
