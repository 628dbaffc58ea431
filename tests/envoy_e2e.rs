//! End to end, as a client of the seed API sees it: plain HTTP through a real Envoy
//! (`examples/envoy/envoy.yaml`, addresses rewritten) to the example upstream, with the real
//! `ratelimitd` binary on the shipped rules (`config/`) deciding. Plus grpcurl against the same
//! ratelimitd, with nothing but server reflection.
//!
//! With `RATELIMITD_E2E_BACKEND=redis` (as `scripts/test` runs it a second time), ratelimitd
//! counts in a real `redis-server` started for each scenario. With `RATELIMITD_E2E_TLS=mtls`
//! (the third time), Envoy and grpcurl speak mTLS to ratelimitd
//! (`examples/envoy/ratelimitd-cluster-mtls.yaml`), and ratelimitd requires their certificate.
//! With `RATELIMITD_E2E_ALGORITHM=token_bucket` or `sliding_window` (as `scripts/test` runs the
//! default bucket's scenario twice more), the shipped rules count with that algorithm
//! (`--default-algorithm`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::fresh_key;
use common::process::{Envoy, Ratelimitd, Upstream, grpcurl_over, http_agent, project, wait_until};
use common::redis::{RedisServer, cli};
use common::tls::Mtls;

const SEED_BODY: &str = r#"{ "error": { "type": "rate_limit_error", "code": 429, "message": "Rate limit exceeded. Please retry later." } }"#;

/// Upstream, ratelimitd and Envoy, each on its own free loopback port.
struct Trio {
    envoy: Envoy,
    ratelimitd: Option<Ratelimitd>,
    _upstream: Upstream,
    agent: ureq::Agent,
    /// The counters' Redis, when the suite runs with the Redis backend.
    redis: Option<RedisServer>,
    /// Certificates, when the suite runs over mTLS.
    mtls: Option<Mtls>,
}

/// ratelimitd on the shipped rules, on `port`, counting in `redis` if there is one, and
/// requiring mTLS with `mtls`.
fn start_ratelimitd(redis: Option<&RedisServer>, mtls: Option<&Mtls>, port: u16) -> Ratelimitd {
    let mut flags: Vec<String> = Vec::new();
    if let Some(redis) = redis {
        flags.extend(["--backend".to_string(), redis.url()]);
        flags.extend(["--backend-timeout-ms".to_string(), "50".to_string()]);
    }
    if let Some(mtls) = mtls {
        flags.extend(mtls.ratelimitd_flags());
    }
    if let Some(algorithm) = algorithm() {
        flags.extend(["--default-algorithm".to_string(), algorithm.to_string()]);
    }
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    Ratelimitd::start_with(&project("config"), port, &flags)
}

/// `RATELIMITD_E2E_ALGORITHM`: how the shipped rules count in this run (`None`: as shipped, a
/// fixed window).
fn algorithm() -> Option<&'static str> {
    match std::env::var("RATELIMITD_E2E_ALGORITHM").as_deref() {
        Ok("token_bucket") => Some("token_bucket"),
        Ok("sliding_window") => Some("sliding_window"),
        Ok("fixed_window") | Ok("") | Err(_) => None,
        Ok(other) => panic!(
            "RATELIMITD_E2E_ALGORITHM={other}: expected fixed_window, sliding_window or token_bucket"
        ),
    }
}

/// What a client sees of one response.
#[derive(Debug)]
struct Seen {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn number(&self, name: &str) -> u64 {
        self.header(name)
            .unwrap_or_else(|| panic!("no {name} header: {self:?}"))
            .parse()
            .unwrap_or_else(|_| panic!("{name} is not a number: {self:?}"))
    }
}

impl Trio {
    fn start() -> Trio {
        let redis = match std::env::var("RATELIMITD_E2E_BACKEND").as_deref() {
            Ok("redis") => Some(RedisServer::start()),
            Ok("memory") | Err(_) => None,
            Ok(other) => panic!("RATELIMITD_E2E_BACKEND={other}: expected memory or redis"),
        };
        let mtls = match std::env::var("RATELIMITD_E2E_TLS").as_deref() {
            Ok("mtls") => Some(Mtls::make()),
            Ok("") | Err(_) => None,
            Ok(other) => panic!("RATELIMITD_E2E_TLS={other}: expected mtls or nothing"),
        };
        let upstream = Upstream::start();
        let ratelimitd = start_ratelimitd(redis.as_ref(), mtls.as_ref(), 0);
        let envoy = match &mtls {
            Some(mtls) => Envoy::start_from(mtls.envoy_yaml(), &ratelimitd.addr, &upstream.addr),
            None => Envoy::start(&ratelimitd.addr, &upstream.addr),
        };
        Trio {
            envoy,
            ratelimitd: Some(ratelimitd),
            _upstream: upstream,
            agent: http_agent(),
            redis,
            mtls,
        }
    }

    /// `method path` through Envoy, with `x-api-key: key` unless `key` is `None`.
    fn send(&self, method: &str, path: &str, key: Option<&str>) -> Seen {
        self.send_with(method, path, key, &[])
    }

    fn send_with(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        extra: &[(&str, &str)],
    ) -> Seen {
        let url = format!("http://{}{path}", self.envoy.addr);
        let mut request = ureq::http::Request::builder().method(method).uri(url);
        if let Some(key) = key {
            request = request.header("x-api-key", key);
        }
        for (name, value) in extra {
            request = request.header(*name, *value);
        }
        let request = request.body(()).expect("a request");
        let mut response = self.agent.run(request).expect("Envoy answers");
        let headers = response
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
            .collect();
        Seen {
            status: response.status().as_u16(),
            headers,
            body: response.body_mut().read_to_string().unwrap_or_default(),
        }
    }

    fn times(&self, n: usize, method: &str, path: &str, key: Option<&str>) -> Vec<Seen> {
        (0..n).map(|_| self.send(method, path, key)).collect()
    }

    /// Restarts ratelimitd on the same port (fresh counters) and waits until Envoy uses it.
    fn restart_ratelimitd(&mut self) {
        let old = self.ratelimitd.take().expect("ratelimitd is running");
        let port = old.port();
        old.stop();
        if let Some(redis) = &self.redis {
            assert_eq!(cli(redis.port, &["flushall"]), "OK");
        }
        self.ratelimitd = Some(start_ratelimitd(
            self.redis.as_ref(),
            self.mtls.as_ref(),
            port,
        ));
        self.wait_until_limited();
    }

    /// grpcurl against ratelimitd as this suite connects: plaintext, or mTLS as Envoy.
    fn grpcurl(&self, args: &[&str]) -> String {
        let connection = match &self.mtls {
            Some(mtls) => mtls.grpcurl_flags(),
            None => vec!["-plaintext".to_string()],
        };
        grpcurl_over(&connection, args)
    }

    /// Waits until responses carry rate-limit headers again (Envoy reconnected).
    fn wait_until_limited(&self) {
        let probe = fresh_key("probe");
        wait_until(Duration::from_secs(20), "Envoy using ratelimitd", || {
            self.send("GET", "/leads", Some(&probe))
                .header("ratelimit-limit")
                .map(|_| ())
        });
    }

    /// Runs `scenario` until one run stays within one minute window (at most 3 runs), giving
    /// ratelimitd fresh counters before each retry. Returns what the kept run saw.
    fn within_one_minute<T>(&mut self, mut scenario: impl FnMut(&Trio) -> T) -> T {
        for attempt in 0..3 {
            if attempt > 0 {
                self.restart_ratelimitd();
            }
            let run = common::Run::start(60);
            let seen = scenario(self);
            if run.stayed_in_one_window() {
                return seen;
            }
            std::thread::sleep(run.until_clear_of_the_edge());
        }
        panic!("the minute turned over during each of 3 attempts");
    }
}

#[test]
fn the_default_bucket_admits_60_then_429_with_headers_retry_after_and_the_json_body() {
    let mut trio = Trio::start();
    let seen = trio.within_one_minute(|trio| {
        let started = std::time::Instant::now();
        let key = fresh_key("e2e");
        // GET /leads, POST /leads and the lead-webhooks routes share the default bucket.
        let mut seen = Vec::new();
        for i in 0..60 {
            seen.push(match i % 4 {
                0 => trio.send("GET", "/leads", Some(&key)),
                1 => trio.send("POST", "/leads", Some(&key)),
                2 => trio.send("GET", "/lead-webhooks", Some(&key)),
                _ => trio.send_with(
                    "DELETE",
                    "/lead-webhooks/wh_1",
                    Some(&key),
                    &[("x-upstream-status", "500")],
                ),
            });
        }
        // A bucket of 60 a minute refills one a second while the 60 go out: send until the
        // first 429, and count what passed after the 60.
        let extra = if algorithm() == Some("token_bucket") {
            120
        } else {
            1
        };
        for _ in 0..extra {
            let next = trio.send("GET", "/leads", Some(&key));
            let refused = next.status == 429;
            seen.push(next);
            if refused {
                break;
            }
        }
        (seen, started.elapsed())
    });
    let (seen, elapsed) = seen;
    for (i, s) in seen[..60].iter().enumerate() {
        let expected_status = if i % 4 == 3 { 500 } else { 200 };
        assert_eq!(s.status, expected_status, "request {}: {s:?}", i + 1);
        assert_eq!(
            s.header("ratelimit-limit"),
            Some("60"),
            "request {}: {s:?}\nEnvoy's rate-limit stats:\n{}",
            i + 1,
            trio.envoy.ratelimit_stats()
        );
        let remaining = s.number("ratelimit-remaining");
        let reset = s.number("ratelimit-reset");
        match algorithm() {
            // Refilled meanwhile: at least what a fixed window leaves; full again within 60 s.
            Some("token_bucket") => {
                assert!(remaining >= 59 - i as u64, "request {}: {s:?}", i + 1);
                assert!(reset <= 60, "request {}: {s:?}", i + 1);
            }
            // Fully available once this window and the next have slid by.
            Some("sliding_window") => {
                assert_eq!(remaining, 59 - i as u64, "counts down");
                assert!((1..=120).contains(&reset), "request {}: {s:?}", i + 1);
            }
            _ => {
                assert_eq!(remaining, 59 - i as u64, "counts down");
                assert!((1..=60).contains(&reset));
            }
        }
        assert_eq!(s.header("retry-after"), None);
    }
    let over = seen.last().expect("responses");
    if algorithm() == Some("token_bucket") {
        let refilled = seen.len() - 61;
        assert!(
            refilled as f64 <= elapsed.as_secs_f64() + 1.0,
            "{refilled} passed after the 60 in {elapsed:?}"
        );
    } else {
        assert_eq!(seen.len(), 61);
    }
    assert_eq!(over.status, 429, "{over:?}");
    assert_eq!(over.header("ratelimit-limit"), Some("60"));
    assert_eq!(over.header("ratelimit-remaining"), Some("0"));
    let reset = over.number("ratelimit-reset");
    let retry_after = over.number("retry-after");
    assert!(
        (1..=reset).contains(&retry_after),
        "Retry-After {retry_after}, Reset {reset}"
    );
    if algorithm() == Some("token_bucket") {
        // One request refills in a second: the client is told so, not the whole minute.
        assert_eq!(retry_after, 1, "{over:?}");
    }
    assert_eq!(over.header("content-type"), Some("application/json"));
    assert_eq!(over.body, SEED_BODY);
    let parsed: serde_json::Value = serde_json::from_str(&over.body).expect("the body is JSON");
    assert_eq!(parsed["error"]["code"], 429);
    if let Some(redis) = &trio.redis {
        // The minute and hour counters of the key, and the probe's.
        assert!(redis.dbsize() >= 2, "the counters are in Redis");
        let rl = trio.ratelimitd.as_ref().expect("ratelimitd");
        let scrape = common::http_get(&rl.http_addr, "/metrics").1;
        assert_eq!(
            common::metric(&scrape, "ratelimitd_backend_fallback_decisions_total"),
            0.0
        );
    }
}

#[test]
fn buckets_keys_overrides_internal_and_keyless_traffic_behave_as_documented() {
    /// What the scenario saw, for the assertions below.
    struct Observed {
        bulk: Vec<crate::Seen>,
        default_after_bulk: crate::Seen,
        other_key_bulk: crate::Seen,
        default: Vec<crate::Seen>,
        bulk_after_default: crate::Seen,
        acme: Vec<crate::Seen>,
        internal: Vec<crate::Seen>,
        keyless: Vec<crate::Seen>,
    }
    let mut trio = Trio::start();
    let seen = trio.within_one_minute(|trio| {
        let key = fresh_key("bulk");
        let other = fresh_key("other");
        let key2 = fresh_key("default");
        Observed {
            bulk: trio.times(11, "POST", "/leads/bulk", Some(&key)),
            default_after_bulk: trio.send("GET", "/leads", Some(&key)),
            other_key_bulk: trio.send("POST", "/leads/bulk", Some(&other)),
            default: trio.times(61, "GET", "/leads", Some(&key2)),
            bulk_after_default: trio.send("POST", "/leads/bulk", Some(&key2)),
            acme: trio.times(100, "GET", "/leads", Some("acme-live")),
            internal: trio.times(100, "POST", "/leads/bulk", Some("internal_reports")),
            keyless: trio.times(61, "GET", "/leads", None),
        }
    });
    let Observed {
        bulk,
        default_after_bulk,
        other_key_bulk,
        default,
        bulk_after_default,
        acme,
        internal,
        keyless,
    } = seen;

    assert!(bulk[..10].iter().all(|s| s.status == 200), "bulk admits 10");
    assert_eq!(bulk[0].header("ratelimit-limit"), Some("10"));
    assert_eq!(bulk[10].status, 429);
    assert_eq!(default_after_bulk.status, 200, "bulk has its own counter");
    assert_eq!(default_after_bulk.header("ratelimit-remaining"), Some("59"));
    assert_eq!(other_key_bulk.status, 200, "keys are isolated");
    assert_eq!(other_key_bulk.header("ratelimit-remaining"), Some("9"));

    assert_eq!(default[60].status, 429);
    assert_eq!(
        bulk_after_default.status, 200,
        "default has its own counter"
    );
    assert_eq!(bulk_after_default.header("ratelimit-remaining"), Some("9"));

    assert!(
        acme.iter().all(|s| s.status == 200),
        "the override key passes more than 60"
    );
    assert_eq!(acme[0].header("ratelimit-limit"), Some("600"));

    for s in &internal {
        assert_eq!(s.status, 200, "internal traffic is never limited");
        assert_eq!(s.header("ratelimit-limit"), None);
    }

    // Without x-api-key: all such requests share the `anonymous` key's default limits.
    assert!(keyless[..60].iter().all(|s| s.status == 200));
    assert_eq!(keyless[0].header("ratelimit-limit"), Some("60"));
    assert_eq!(keyless[60].status, 429);
}

#[test]
fn envoy_fails_open_while_ratelimitd_is_down_and_limits_again_when_it_is_back() {
    let mut trio = Trio::start();
    let key = fresh_key("down");
    assert!(
        trio.send("GET", "/leads", Some(&key))
            .header("ratelimit-limit")
            .is_some()
    );

    let running = trio.ratelimitd.take().expect("ratelimitd");
    let port = running.port();
    running.stop();
    let while_down = trio.times(20, "POST", "/leads/bulk", Some(&key));
    for s in &while_down {
        assert_eq!(
            s.status, 200,
            "failure_mode_deny: false lets requests through: {s:?}"
        );
        assert_eq!(
            s.header("ratelimit-limit"),
            None,
            "nobody decided, so no headers"
        );
    }

    trio.ratelimitd = Some(start_ratelimitd(
        trio.redis.as_ref(),
        trio.mtls.as_ref(),
        port,
    ));
    trio.wait_until_limited();
    let seen = trio
        .within_one_minute(|trio| trio.times(11, "POST", "/leads/bulk", Some(&fresh_key("back"))));
    assert!(seen[..10].iter().all(|s| s.status == 200));
    assert_eq!(
        seen[10].status, 429,
        "limits apply again without restarting Envoy"
    );
}

#[test]
fn grpcurl_lists_describes_calls_and_checks_health_through_reflection() {
    let trio = Trio::start();
    let addr = trio.ratelimitd.as_ref().expect("ratelimitd").addr.clone();

    let list = trio.grpcurl(&[&addr, "list"]);
    assert!(
        list.contains("envoy.service.ratelimit.v3.RateLimitService"),
        "{list}"
    );
    assert!(list.contains("grpc.health.v1.Health"), "{list}");

    let describe = trio.grpcurl(&[
        &addr,
        "describe",
        "envoy.service.ratelimit.v3.RateLimitService",
    ]);
    assert!(describe.contains("rpc ShouldRateLimit"), "{describe}");
    let describe = trio.grpcurl(&[
        &addr,
        "describe",
        "envoy.service.ratelimit.v3.RateLimitRequest",
    ]);
    assert!(describe.contains("string domain = 1;"), "{describe}");

    for service in ["", "envoy.service.ratelimit.v3.RateLimitService"] {
        let body = format!(r#"{{"service":"{service}"}}"#);
        let health = trio.grpcurl(&["-d", &body, &addr, "grpc.health.v1.Health/Check"]);
        assert!(
            health.contains("\"status\": \"SERVING\""),
            "{service:?}: {health}"
        );
    }

    let method = "envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit";
    let (first, second) = common::within_one_window_blocking(60, || {
        let call = format!(
            r#"{{"domain":"mega-api","descriptors":[{{"entries":[{{"key":"api_key","value":"{}"}},{{"key":"bucket","value":"bulk"}}]}}],"hits_addend":10}}"#,
            fresh_key("grpcurl")
        );
        (
            trio.grpcurl(&["-d", &call, &addr, method]),
            trio.grpcurl(&["-d", &call, &addr, method]),
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
