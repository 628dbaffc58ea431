//! Shared helpers for the black-box tests: a real ratelimitd on a free loopback port, a real
//! gRPC client, and request builders.
#![allow(dead_code)]

pub mod ads;
pub mod process;
pub mod redis;
pub mod tls;

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use envoy_types::pb::envoy::config::core::v3::HeaderValue;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::transport::Channel;

use ratelimitd::app::{self, InitialRules, Listeners, Settings};

pub type Client = RateLimitServiceClient<Channel>;

/// A ratelimitd serving `rules` in this process, on 127.0.0.1 and a port the OS chose.
pub struct TestServer {
    pub addr: SocketAddr,
    /// The admin HTTP server.
    pub http_addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestServer {
    pub async fn start(rules_yaml: &str) -> TestServer {
        TestServer::start_with(rules_yaml, Settings::default()).await
    }

    pub async fn start_with(rules_yaml: &str, settings: Settings) -> TestServer {
        let domain =
            ratelimitd::config::parse_domain(std::path::Path::new("test.yaml"), rules_yaml)
                .unwrap_or_else(|errors| panic!("test rules do not load: {errors:?}"));
        let rules = ratelimitd::rules::RuleSet::new(vec![domain]);
        TestServer::start_rules(rules, settings).await
    }

    /// Serves the rule file or directory `path` (relative to the crate).
    pub async fn start_path(path: &str, settings: Settings) -> TestServer {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
        let rules = ratelimitd::config::load(&path)
            .unwrap_or_else(|errors| panic!("test rules do not load: {errors}"));
        TestServer::start_rules(rules, settings).await
    }

    pub async fn start_rules(rules: ratelimitd::rules::RuleSet, settings: Settings) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a free port");
        let addr = listener.local_addr().expect("bound address");
        let http = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a free port");
        let http_addr = http.local_addr().expect("bound address");
        let initial = InitialRules {
            rules,
            hash: "test".to_string(),
        };
        let listeners = Listeners {
            metrics: None,
            grpc: listener,
            http: Some(http),
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            if let Err(e) = app::serve(settings, initial, listeners, shutdown).await {
                panic!("server failed: {e}");
            }
        });
        TestServer {
            addr,
            http_addr,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub async fn client(&self) -> Client {
        let endpoint = format!("http://{}", self.addr);
        RateLimitServiceClient::connect(endpoint)
            .await
            .expect("connect to ratelimitd")
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .expect("server stops within 10 s")
                .expect("server task ends cleanly");
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

pub fn descriptor(entries: &[(&str, &str)]) -> RateLimitDescriptor {
    RateLimitDescriptor {
        entries: entries
            .iter()
            .map(|(key, value)| Entry {
                key: key.to_string(),
                value: value.to_string(),
            })
            .collect(),
        ..Default::default()
    }
}

pub fn request(domain: &str, descriptors: Vec<RateLimitDescriptor>) -> RateLimitRequest {
    RateLimitRequest {
        domain: domain.to_string(),
        descriptors,
        hits_addend: 0,
    }
}

/// The seed's request shape: `(api_key, key), (bucket, bucket)` in domain `mega-api`.
pub fn seed_request(api_key: &str, bucket: &str) -> RateLimitRequest {
    request(
        "mega-api",
        vec![descriptor(&[("api_key", api_key), ("bucket", bucket)])],
    )
}

pub async fn call(client: &mut Client, request: RateLimitRequest) -> RateLimitResponse {
    client
        .should_rate_limit(request)
        .await
        .expect("ShouldRateLimit answers")
        .into_inner()
}

/// The value of response header `name` (case-insensitive), if present.
pub fn header<'r>(response: &'r RateLimitResponse, name: &str) -> Option<&'r str> {
    find_header(&response.response_headers_to_add, name)
}

pub fn find_header<'h>(headers: &'h [HeaderValue], name: &str) -> Option<&'h str> {
    headers
        .iter()
        .find(|h| h.key.eq_ignore_ascii_case(name))
        .map(|h| h.value.as_str())
}

pub fn header_u64(response: &RateLimitResponse, name: &str) -> u64 {
    header(response, name)
        .unwrap_or_else(|| panic!("missing header {name}: {response:?}"))
        .parse()
        .unwrap_or_else(|_| panic!("header {name} is not a number"))
}

/// A key no other test uses.
pub fn fresh_key(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{prefix}-{nanos}")
}

/// The number of the `seconds`-long window that now falls in, as ratelimitd counts windows.
pub fn window_index(seconds: u64) -> u64 {
    window_index_at(SystemTime::now(), seconds)
}

fn window_index_at(time: SystemTime, seconds: u64) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() / seconds)
        .unwrap_or_default()
}

/// How far the server's clock (the wall clock read at its start, carried on by the monotonic
/// clock) may be from this test's wall clock; a run this close to a window's edge is not trusted.
const CLOCK_MARGIN: Duration = Duration::from_secs(1);

/// When a run started, to tell afterwards whether it stayed inside one window.
pub struct Run {
    started: SystemTime,
    seconds: u64,
}

impl Run {
    pub fn start(seconds: u64) -> Run {
        Run {
            started: SystemTime::now(),
            seconds,
        }
    }

    /// Whether the run began and ended in one window, with [`CLOCK_MARGIN`] (at most a tenth
    /// of the window) on each side.
    pub fn stayed_in_one_window(&self) -> bool {
        let margin = CLOCK_MARGIN.min(Duration::from_secs(self.seconds) / 10);
        let from = self.started.checked_sub(margin).unwrap_or(UNIX_EPOCH);
        let to = SystemTime::now() + margin;
        window_index_at(from, self.seconds) == window_index_at(to, self.seconds)
    }

    /// What the run gave back, if it counts; `None` to run again. A run that panicked (an
    /// assertion failed) across a window's edge runs again; one that panicked inside a single
    /// window fails the test with its own message.
    /// How long until now is more than the margin away from a window's edge: a run retried
    /// at once, just before an edge, would only cross it again.
    pub fn until_clear_of_the_edge(&self) -> Duration {
        let margin = CLOCK_MARGIN.min(Duration::from_secs(self.seconds) / 10);
        let window = Duration::from_secs(self.seconds);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let into = Duration::from_nanos((now.as_nanos() % window.as_nanos()) as u64);
        if into < margin {
            margin - into + Duration::from_millis(10)
        } else if window - into < margin {
            window - into + margin + Duration::from_millis(10)
        } else {
            Duration::ZERO
        }
    }

    /// The last run's panic is the test's, window or not: a scenario that failed for a reason
    /// of its own must say so, not "a window turned over".
    fn outcome<T>(&self, result: std::thread::Result<T>, last: bool) -> Option<T> {
        let clean = self.stayed_in_one_window();
        match result {
            Ok(observed) if clean => Some(observed),
            Err(panic) if clean || last => std::panic::resume_unwind(panic),
            _ => None,
        }
    }
}

/// Runs `scenario` until one run starts and ends in the same `seconds`-long window (at most 3
/// runs), and returns what that run observed. So a test never fails because a window turned
/// over in the middle of it, even when the scenario asserts as it goes. Each run gets a new
/// attempt number, to build fresh keys from.
pub async fn within_one_window<F, Fut, T>(seconds: u64, mut scenario: F) -> T
where
    F: FnMut(u32) -> Fut,
    Fut: std::future::Future<Output = T>,
{
    for attempt in 0..3 {
        let run = Run::start(seconds);
        let result = CatchUnwind(Box::pin(scenario(attempt))).await;
        if let Some(observed) = run.outcome(result, attempt == 2) {
            return observed;
        }
        tokio::time::sleep(run.until_clear_of_the_edge()).await;
    }
    panic!("a {seconds}-second window turned over during each of 3 attempts");
}

/// [`within_one_window`] for blocking code; each run should use fresh keys of its own.
pub fn within_one_window_blocking<T>(seconds: u64, mut scenario: impl FnMut() -> T) -> T {
    for attempt in 0..3 {
        let run = Run::start(seconds);
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(&mut scenario));
        if let Some(observed) = run.outcome(result, attempt == 2) {
            return observed;
        }
        std::thread::sleep(run.until_clear_of_the_edge());
    }
    panic!("a {seconds}-second window turned over during each of 3 attempts");
}

/// A future that turns a panic while it is polled into an `Err`, as `catch_unwind` does for
/// a closure.
struct CatchUnwind<Fut>(std::pin::Pin<Box<Fut>>);

impl<Fut: std::future::Future> std::future::Future for CatchUnwind<Fut> {
    type Output = std::thread::Result<Fut::Output>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let inner = self.0.as_mut();
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(std::task::Poll::Pending) => std::task::Poll::Pending,
            Ok(std::task::Poll::Ready(value)) => std::task::Poll::Ready(Ok(value)),
            Err(panic) => std::task::Poll::Ready(Err(panic)),
        }
    }
}

/// Sleeps until just after the next whole second.
pub async fn next_second() {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let wait = Duration::from_secs(1) - Duration::from_nanos(u64::from(now.subsec_nanos()));
    tokio::time::sleep(wait + Duration::from_millis(5)).await;
}

/// `GET http://addr/path`: the status and the body.
pub fn http_get(addr: impl std::fmt::Display, path: &str) -> (u16, String) {
    let mut response = process::http_agent()
        .get(format!("http://{addr}{path}"))
        .call()
        .expect("the admin server answers");
    let body = response.body_mut().read_to_string().expect("a text body");
    (response.status().as_u16(), body)
}

/// `POST http://addr/json` with `body`: the status and the body.
pub fn post_json(addr: impl std::fmt::Display, body: &str) -> (u16, String) {
    let mut response = process::http_agent()
        .post(format!("http://{addr}/json"))
        .send(body)
        .expect("the admin server answers");
    let body = response.body_mut().read_to_string().expect("a text body");
    (response.status().as_u16(), body)
}

/// The value of one series (`name{labels}` exactly as exported, labels in name order) in a
/// Prometheus text scrape; 0 when it is absent, as Prometheus reads a counter never touched.
pub fn metric(scrape: &str, series: &str) -> f64 {
    scrape
        .lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == series).then(|| value.parse().expect("a number"))
        })
        .unwrap_or(0.0)
}

/// [`http_get`] from async code (the server may share this runtime).
pub async fn get_async(addr: SocketAddr, path: &str) -> (u16, String) {
    let path = path.to_string();
    tokio::task::spawn_blocking(move || http_get(addr, &path))
        .await
        .expect("the request thread ends")
}

/// [`post_json`] from async code.
pub async fn post_json_async(addr: SocketAddr, body: &str) -> (u16, String) {
    let body = body.to_string();
    tokio::task::spawn_blocking(move || post_json(addr, &body))
        .await
        .expect("the request thread ends")
}
