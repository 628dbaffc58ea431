//! The binary as envoyproxy/ratelimit's image runs it: named `ratelimit`, started with no
//! arguments, configured by envoyproxy/ratelimit's environment variables (Istio's sample
//! Deployment: the rules a ConfigMap under `RUNTIME_ROOT/RUNTIME_SUBDIRECTORY/config`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::process::Ratelimitd;
use common::*;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;

/// A directory holding a `ratelimit` symlink to the binary.
fn named_ratelimit() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("ratelimit");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_ratelimitd"), &link).unwrap();
    (dir, link)
}

/// `ratelimit` with no arguments and envoyproxy/ratelimit's variables `env`, nothing else.
fn ratelimit_command(link: &std::path::Path, env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(link);
    command.env_clear().envs(env.iter().copied());
    command
}

#[tokio::test]
async fn istio_s_sample_environment_serves_the_configmap_rules() {
    let (_bin, link) = named_ratelimit();
    let runtime = tempfile::tempdir().unwrap();
    let rules = runtime.path().join("ratelimit").join("config");
    std::fs::create_dir_all(&rules).unwrap();
    std::fs::write(
        rules.join("config.yaml"),
        "domain: ratelimit\ndescriptors:\n  - key: PATH\n    value: /productpage\n    rate_limit:\n      unit: minute\n      requests_per_unit: 1\n",
    )
    .unwrap();
    let root = runtime.path().to_str().unwrap();
    let rl = Ratelimitd::spawn(&mut ratelimit_command(
        &link,
        &[
            ("RUNTIME_ROOT", root),
            ("RUNTIME_SUBDIRECTORY", "ratelimit"),
            ("RUNTIME_IGNOREDOTFILES", "true"),
            ("RUNTIME_WATCH_ROOT", "false"),
            ("USE_STATSD", "false"),
            ("LOG_LEVEL", "INFO"),
            ("LOG_FORMAT", "json"),
            ("HOST", "127.0.0.1"),
            ("PORT", "0"),
            ("GRPC_HOST", "127.0.0.1"),
            ("GRPC_PORT", "0"),
            ("REDIS_POOL_SIZE", "10"),
            ("USE_PROMETHEUS", "true"),
            ("PROMETHEUS_ADDR", "127.0.0.1:0"),
        ],
    ));
    let client = Client::connect(format!("http://{}", rl.addr))
        .await
        .unwrap();
    let (first, second) = within_one_window(60, |_| {
        let mut client = client.clone();
        async move {
            let ask = || request("ratelimit", vec![descriptor(&[("PATH", "/productpage")])]);
            let first = call(&mut client, ask()).await.overall_code;
            let second = call(&mut client, ask()).await.overall_code;
            // A retry runs in a fresh minute: nothing else counts this key.
            (first, second)
        }
    })
    .await;
    assert_eq!(
        (first, second),
        (Code::Ok as i32, Code::OverLimit as i32),
        "the ConfigMap's rule (1 a minute) decides"
    );
    let log = rl.log.all(Duration::from_millis(200)).join("\n");
    // /metrics on its own listener, as Envoy Gateway scrapes it, with envoyproxy's series.
    let serving = log
        .lines()
        .find(|l| l.contains("ratelimitd serving"))
        .expect("the serving line");
    let key = "\"metrics\":\"";
    let at = serving.find(key).expect("the metrics address") + key.len();
    let metrics_addr = serving[at..].split('"').next().unwrap();
    let scrape = http_get(metrics_addr, "/metrics").1;
    let calls = metric(
        &scrape,
        r#"ratelimit_service_total_requests{grpc_method="ShouldRateLimit"}"#,
    );
    assert!(calls >= 2.0, "{calls} ShouldRateLimit calls counted");
    assert!(scrape.contains("ratelimit_service_response_time_seconds_bucket"));
    assert!(scrape.contains("ratelimit_service_rate_limit_over_limit"));
    assert!(
        log.contains("REDIS_POOL_SIZE") && log.contains("no effect"),
        "a tuning knob is reported, not silently dropped"
    );
    drop(client);
    rl.stop();
}

#[test]
fn a_variable_ratelimitd_cannot_honour_stops_the_start_and_is_named() {
    let (_bin, link) = named_ratelimit();
    for (variable, value) in [
        ("USE_STATSD", "true"),
        ("CONFIG_TYPE", "GRPC_XDS_DELTA"),
        ("MEMCACHE_HOST_PORT", "memcache:11211"),
    ] {
        let output = ratelimit_command(&link, &[(variable, value), ("RUNTIME_ROOT", "/nowhere")])
            .output()
            .unwrap();
        assert!(!output.status.success(), "{variable}={value} refused");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains(&format!("{variable}={value}")),
            "the message names it: {stderr}"
        );
    }
}

/// Envoy Gateway's deployment: `/bin/ratelimit` with no arguments and only the variables Envoy
/// Gateway sets (`internal/infrastructure/kubernetes/ratelimit/resource.go`), rules over ADS
/// with mutual TLS, counters in Redis, from a read-only working directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_gateway_s_environment_takes_its_rules_over_xds() {
    use common::ads::{AdsServer, gateway_resource, xds_mtls};
    use ratelimitd::xds::resource::RateLimitUnit;
    use std::os::unix::fs::PermissionsExt;

    let certs = tempfile::tempdir().unwrap();
    let mtls = xds_mtls(certs.path());
    let mut ads = AdsServer::start_with(Some(mtls.server.clone())).await;
    ads.publish("1", &[gateway_resource(2, RateLimitUnit::Hour)]);
    let redis = common::redis::RedisServer::start();
    let redis_url = format!("127.0.0.1:{}", redis.port);
    let (_bin, link) = named_ratelimit();
    let read_only = tempfile::tempdir().unwrap();
    std::fs::set_permissions(read_only.path(), std::fs::Permissions::from_mode(0o555)).unwrap();
    let xds_server = ads.url.trim_start_matches("http://").to_string();
    let (ca, cert, key) = (
        mtls.ca.to_str().unwrap(),
        mtls.client_cert.to_str().unwrap(),
        mtls.client_key.to_str().unwrap(),
    );
    let mut command = ratelimit_command(
        &link,
        &[
            ("CONFIG_TYPE", "GRPC_XDS_SOTW"),
            ("CONFIG_GRPC_XDS_SERVER_URL", &xds_server),
            ("CONFIG_GRPC_XDS_NODE_ID", "envoy-ratelimit"),
            ("CONFIG_GRPC_XDS_SERVER_USE_TLS", "true"),
            ("CONFIG_GRPC_XDS_CLIENT_TLS_CERT", cert),
            ("CONFIG_GRPC_XDS_CLIENT_TLS_KEY", key),
            ("CONFIG_GRPC_XDS_SERVER_TLS_CACERT", ca),
            ("CONFIG_GRPC_XDS_SERVER_TLS_SAN", "envoy-gateway"),
            ("FORCE_START_WITHOUT_INITIAL_CONFIG", "true"),
            ("REDIS_SOCKET_TYPE", "tcp"),
            ("REDIS_URL", &redis_url),
            ("USE_STATSD", "false"),
            ("USE_PROMETHEUS", "true"),
            ("PROMETHEUS_ADDR", "127.0.0.1:0"),
            ("PROMETHEUS_MAPPER_YAML", "/etc/statsd-exporter/conf.yaml"),
            ("LOG_LEVEL", "info"),
            ("LOG_FORMAT", "json"),
            ("RUNTIME_ROOT", "/data"),
            ("RUNTIME_SUBDIRECTORY", "ratelimit"),
            ("RUNTIME_IGNOREDOTFILES", "true"),
            ("RUNTIME_WATCH_ROOT", "false"),
            ("HOST", "127.0.0.1"),
            ("PORT", "0"),
            ("GRPC_HOST", "127.0.0.1"),
            ("GRPC_PORT", "0"),
            // The image sets it for the file case (Dockerfile); xDS must win.
            ("RATELIMITD_CONFIG", "/etc/ratelimitd"),
        ],
    );
    command.current_dir(read_only.path());
    let rl = Ratelimitd::spawn(&mut command);
    let ack = ads.answer_to("nonce-1").await;
    assert!(ack.error_detail.is_none(), "{ack:?}");
    assert_eq!(ack.node.map(|n| n.id).as_deref(), Some("envoy-ratelimit"));
    let mut client = Client::connect(format!("http://{}", rl.addr))
        .await
        .unwrap();
    let route = "httproute/default/backend/rule/0/match/0";
    let key = fresh_key("eg");
    let mut codes = Vec::new();
    for _ in 0..3 {
        let ask = request(
            "default/eg/http",
            vec![descriptor(&[(route, route), ("rule-0-match-0", &key)])],
        );
        codes.push(call(&mut client, ask).await.overall_code);
    }
    assert_eq!(
        codes,
        [Code::Ok as i32, Code::Ok as i32, Code::OverLimit as i32],
        "2 an hour, from xDS"
    );
    assert!(redis.dbsize() >= 1, "counted in Redis");
    assert_eq!(http_get(&rl.http_addr, "/healthcheck").0, 200);
    drop(client);
    rl.stop();
}
