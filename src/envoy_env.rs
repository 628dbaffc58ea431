//! envoyproxy/ratelimit's environment: where a deployment of envoyproxy/ratelimit (Istio's
//! sample, a Helm chart) configures it by environment variables, ratelimitd reads the same
//! variables, so that swapping the image is enough. Each variable set is translated to the
//! `serve` flag that does the same; a flag or `RATELIMITD_…` variable given explicitly wins.
//!
//! What each variable means was read in envoyproxy/ratelimit's `src/settings/settings.go` and
//! `src/provider/file_provider.go`; docs/envoyproxy-ratelimit.md says what ratelimitd does with each.
//! A variable that asks for something ratelimitd does not do (statsd, memcache, a Unix socket,
//! rules over xDS, tracing) stops the start, naming it: never silently ignored. Tuning knobs of
//! the Go implementation (pool sizes, pipelining, flush intervals) are accepted and reported
//! once as having no effect.

use std::ffi::OsString;

/// What the environment asks of `serve`: flags to add, and notes to log.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Translated {
    /// `serve` flags, each with its value.
    pub flags: Vec<(String, String)>,
    /// Variables accepted with no effect, to log once.
    pub no_effect: Vec<String>,
}

impl Translated {
    fn flag(&mut self, name: &str, value: String) {
        self.flags.push((name.to_string(), value));
    }

    /// Each `(variable, flag)` pair whose variable is set becomes that flag with its value.
    fn pass(&mut self, set: &impl Fn(&str) -> Option<String>, pairs: &[(&str, &str)]) {
        for (name, to) in pairs {
            if let Some(value) = set(name) {
                self.flag(to, value);
            }
        }
    }
}

/// A variable ratelimitd cannot honour.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("{variable}={value}: {reason}")]
pub struct Unsupported {
    pub variable: String,
    pub value: String,
    pub reason: &'static str,
}

/// Variables of the Go implementation's tuning that change nothing here.
const NO_EFFECT: &[&str] = &[
    "GRPC_MAX_CONNECTION_AGE",
    "GRPC_MAX_CONNECTION_AGE_GRACE",
    "DEBUG_HOST",
    "DEBUG_PORT",
    "XDS_CLIENT_BACKOFF_INITIAL_INTERVAL",
    "XDS_CLIENT_BACKOFF_MAX_INTERVAL",
    "XDS_CLIENT_BACKOFF_RANDOM_FACTOR",
    "XDS_CLIENT_BACKOFF_JITTER",
    "STATSD_HOST",
    "STATSD_PORT",
    "EXTRA_TAGS",
    "STATS_FLUSH_INTERVAL",
    "USE_DOG_STATSD_MOGRIFIERS",
    "PROMETHEUS_MAPPER_YAML",
    "RUNTIME_WATCH_ROOT",
    "RUNTIME_IGNOREDOTFILES",
    "EXPIRATION_JITTER_MAX_SECONDS",
    "STOP_CACHE_KEY_INCREMENT_WHEN_OVERLIMIT",
    "HEALTHY_WITH_AT_LEAST_ONE_CONFIG_LOADED",
    "REDIS_POOL_SIZE",
    "REDIS_PIPELINE_WINDOW",
    "REDIS_PIPELINE_LIMIT",
    "REDIS_HEALTH_CHECK_ACTIVE_CONNECTION",
    "CONFIG_GRPC_XDS_SERVER_CONNECT_RETRY_INTERVAL",
    "CONFIG_GRPC_XDS_CLIENT_ADDITIONAL_HEADERS",
    "REDIS_PERSECOND_SOCKET_TYPE",
    "REDIS_PERSECOND_TYPE",
    "REDIS_PERSECOND_URL",
    "REDIS_PERSECOND_POOL_SIZE",
    "REDIS_PERSECOND_AUTH",
    "REDIS_PERSECOND_TLS",
    "REDIS_PERSECOND_PIPELINE_WINDOW",
    "REDIS_PERSECOND_PIPELINE_LIMIT",
    "MEMCACHE_MAX_IDLE_CONNS",
    "MEMCACHE_SRV_REFRESH",
    "MEMCACHE_TLS",
    "MEMCACHE_TLS_CLIENT_CERT",
    "MEMCACHE_TLS_CLIENT_KEY",
    "MEMCACHE_TLS_CACERT",
    "MEMCACHE_TLS_SKIP_HOSTNAME_VERIFICATION",
];

/// Reads envoyproxy/ratelimit's variables through `get`.
pub fn translate(get: impl Fn(&str) -> Option<String>) -> Result<Translated, Unsupported> {
    let mut out = Translated::default();
    let set = |name: &str| get(name).filter(|v| !v.is_empty());
    let is_true = |name: &str| set(name).is_some_and(|v| parse_bool(&v));
    let refuse = |variable: &str, value: String, reason: &'static str| Unsupported {
        variable: variable.to_string(),
        value,
        reason,
    };

    // Refusals first: what ratelimitd does not do.
    if let Some(v) = set("PROTO").filter(|v| v != "tcp") {
        return Err(refuse("PROTO", v, "ratelimitd listens on TCP only"));
    }
    if let Some(v) = set("GRPC_UDS") {
        return Err(refuse(
            "GRPC_UDS",
            v,
            "ratelimitd listens on TCP only, not a Unix socket",
        ));
    }
    let xds = match set("CONFIG_TYPE") {
        Some(v) if v.eq_ignore_ascii_case("GRPC_XDS_SOTW") => true,
        Some(v) if !v.eq_ignore_ascii_case("FILE") => {
            return Err(refuse("CONFIG_TYPE", v, "only FILE and GRPC_XDS_SOTW"));
        }
        _ => false,
    };
    if xds
        && is_true("CONFIG_GRPC_XDS_SERVER_USE_TLS")
        && set("CONFIG_GRPC_XDS_SERVER_TLS_CACERT").is_none()
    {
        return Err(refuse(
            "CONFIG_GRPC_XDS_SERVER_USE_TLS",
            "true".into(),
            "set CONFIG_GRPC_XDS_SERVER_TLS_CACERT to the CA of the xDS server's certificate",
        ));
    }
    for name in ["USE_STATSD", "USE_DOG_STATSD"] {
        if is_true(name) {
            return Err(refuse(
                name,
                "true".into(),
                "statsd export is not built: set it to false and scrape /metrics (Prometheus)",
            ));
        }
    }
    if let Some(v) = set("PROMETHEUS_PATH").filter(|v| v != "/metrics") {
        return Err(refuse("PROMETHEUS_PATH", v, "metrics are at /metrics only"));
    }
    if let Some(v) = set("BACKEND_TYPE").filter(|v| !v.eq_ignore_ascii_case("redis")) {
        return Err(refuse(
            "BACKEND_TYPE",
            v,
            "only redis (or memory, when REDIS_URL is not set)",
        ));
    }
    for name in ["MEMCACHE_HOST_PORT", "MEMCACHE_SRV"] {
        if let Some(v) = set(name) {
            return Err(refuse(name, v, "memcache is not built"));
        }
    }
    if is_true("REDIS_PERSECOND") {
        return Err(refuse(
            "REDIS_PERSECOND",
            "true".into(),
            "a second Redis for per-second limits is not built",
        ));
    }
    if is_true("MERGE_DOMAIN_CONFIG") {
        return Err(refuse(
            "MERGE_DOMAIN_CONFIG",
            "true".into(),
            "merging domains across files is not built: a domain is defined in one file",
        ));
    }
    let tracing = is_true("TRACING_ENABLED");
    // envoyproxy/ratelimit's default protocol is http; ratelimitd exports over gRPC only.
    let protocol = set("TRACING_EXPORTER_PROTOCOL").unwrap_or_else(|| "http".into());
    if tracing && !protocol.eq_ignore_ascii_case("grpc") {
        return Err(refuse(
            "TRACING_EXPORTER_PROTOCOL",
            protocol,
            "traces are exported over OTLP/gRPC only: set TRACING_EXPORTER_PROTOCOL=grpc",
        ));
    }
    if is_true("REDIS_TLS_SKIP_HOSTNAME_VERIFICATION") {
        return Err(refuse(
            "REDIS_TLS_SKIP_HOSTNAME_VERIFICATION",
            "true".into(),
            "ratelimitd always checks the name in Redis's certificate",
        ));
    }
    if let Some(v) = set("NEAR_LIMIT_RATIO").filter(|v| v.parse::<f64>().ok() != Some(0.8)) {
        return Err(refuse(
            "NEAR_LIMIT_RATIO",
            v,
            "the near-limit share is fixed at 0.8",
        ));
    }
    for (name, default) in [
        ("LIMIT_LIMIT_HEADER", "RateLimit-Limit"),
        ("LIMIT_REMAINING_HEADER", "RateLimit-Remaining"),
        ("LIMIT_RESET_HEADER", "RateLimit-Reset"),
    ] {
        if let Some(v) = set(name).filter(|v| !v.eq_ignore_ascii_case(default)) {
            return Err(refuse(
                name,
                v,
                "header names follow --header-style (ratelimit, x-ratelimit, draft10)",
            ));
        }
    }

    // Translations.
    // Either half set means the listener moves: Istio's sample sets only `HOST: "::"`.
    if set("HOST").is_some() || set("PORT").is_some() {
        let host = set("HOST").unwrap_or_else(|| "0.0.0.0".into());
        let port = set("PORT").unwrap_or_else(|| "8080".into());
        out.flag("--http-addr", join(&host, &port));
    }
    if let Some(addr) = set("PROMETHEUS_ADDR") {
        // Go's `:19001` listens on every address.
        let addr = match addr.strip_prefix(':') {
            Some(port) => format!("0.0.0.0:{port}"),
            None => addr,
        };
        out.flag("--metrics-addr", addr);
    }
    if set("GRPC_HOST").is_some() || set("GRPC_PORT").is_some() {
        let host = set("GRPC_HOST").unwrap_or_else(|| "0.0.0.0".into());
        let port = set("GRPC_PORT").unwrap_or_else(|| "8081".into());
        out.flag("--grpc-addr", join(&host, &port));
    }
    if is_true("GRPC_SERVER_USE_TLS") {
        out.pass(
            &set,
            &[
                ("GRPC_SERVER_TLS_CERT", "--grpc-tls-cert"),
                ("GRPC_SERVER_TLS_KEY", "--grpc-tls-key"),
                ("GRPC_CLIENT_TLS_CACERT", "--grpc-tls-client-ca"),
                ("GRPC_CLIENT_TLS_SAN", "--grpc-tls-client-san"),
            ],
        );
    }
    if let Some(level) = set("LOG_LEVEL") {
        out.flag("--log-level", level.to_ascii_lowercase());
    }
    if let Some(format) = set("LOG_FORMAT") {
        out.flag("--log-format", format.to_ascii_lowercase());
    }
    if xds {
        // Go's grpc.Dial takes `host:port`.
        let server = set("CONFIG_GRPC_XDS_SERVER_URL").unwrap_or_else(|| "localhost:18000".into());
        let server = if server.contains("://") {
            server
        } else {
            format!("http://{server}")
        };
        out.flag("--xds-server", server);
        if let Some(node) = set("CONFIG_GRPC_XDS_NODE_ID") {
            out.flag("--xds-node-id", node);
        }
        if let Some(metadata) = set("CONFIG_GRPC_XDS_NODE_METADATA") {
            out.flag("--xds-node-metadata", metadata);
        }
        if is_true("FORCE_START_WITHOUT_INITIAL_CONFIG") {
            out.flag("--xds-force-start", "true".into());
        }
        if is_true("CONFIG_GRPC_XDS_SERVER_USE_TLS") {
            out.pass(
                &set,
                &[
                    ("CONFIG_GRPC_XDS_SERVER_TLS_CACERT", "--xds-tls-ca"),
                    ("CONFIG_GRPC_XDS_CLIENT_TLS_CERT", "--xds-tls-cert"),
                    ("CONFIG_GRPC_XDS_CLIENT_TLS_KEY", "--xds-tls-key"),
                    ("CONFIG_GRPC_XDS_SERVER_TLS_SAN", "--xds-tls-server-name"),
                ],
            );
        }
    } else if set("RUNTIME_ROOT").is_some() || set("RUNTIME_SUBDIRECTORY").is_some() {
        let root = set("RUNTIME_ROOT").unwrap_or_else(|| "/srv/runtime_data/current".into());
        let mut dir = std::path::PathBuf::from(root);
        if let Some(sub) = set("RUNTIME_SUBDIRECTORY") {
            dir.push(sub);
        }
        dir.push(set("RUNTIME_APPDIRECTORY").unwrap_or_else(|| "config".into()));
        out.flag("--config", dir.display().to_string());
    }
    if let Some(url) = set("REDIS_URL") {
        out.flag("--backend", redis_backend(&url, &set)?);
    }
    if set("REDIS_URL").is_some() {
        out.pass(
            &set,
            &[
                ("LOCAL_CACHE_SIZE_IN_BYTES", "--local-cache-bytes"),
                ("REDIS_TLS_CACERT", "--redis-tls-ca"),
                ("REDIS_TLS_CLIENT_CERT", "--redis-tls-cert"),
                ("REDIS_TLS_CLIENT_KEY", "--redis-tls-key"),
            ],
        );
    }
    if tracing {
        let endpoint =
            set("OTEL_EXPORTER_OTLP_ENDPOINT").unwrap_or_else(|| "localhost:4317".into());
        let endpoint = if endpoint.contains("://") {
            endpoint
        } else {
            format!("http://{endpoint}")
        };
        out.flag("--otlp-endpoint", endpoint);
        out.flag(
            "--otlp-service-name",
            set("TRACING_SERVICE_NAME").unwrap_or_else(|| "RateLimit".into()),
        );
        out.pass(
            &set,
            &[
                ("TRACING_SERVICE_NAMESPACE", "--otlp-service-namespace"),
                ("TRACING_SERVICE_INSTANCE_ID", "--otlp-instance-id"),
                ("TRACING_SAMPLING_RATE", "--otlp-sampling-rate"),
            ],
        );
    }
    if let Some(prefix) = set("CACHE_KEY_PREFIX") {
        out.flag("--redis-key-prefix", prefix);
    }
    if is_true("SHADOW_MODE") {
        out.flag("--shadow-mode", "true".into());
    }
    if is_true("DISABLE_STATS") {
        out.flag("--decision-metrics", "false".into());
    }
    match set("LIMIT_RESPONSE_HEADERS_ENABLED").map(|v| parse_bool(&v)) {
        Some(true) => out.flag("--header-style", "ratelimit".into()),
        Some(false) => out.flag("--header-style", "none".into()),
        None => {}
    }
    for name in NO_EFFECT {
        if set(name).is_some() {
            out.no_effect.push((*name).to_string());
        }
    }
    Ok(out)
}

/// `--backend` from `REDIS_URL` and its companions.
fn redis_backend(url: &str, set: &impl Fn(&str) -> Option<String>) -> Result<String, Unsupported> {
    let refuse = |variable: &str, value: String, reason: &'static str| Unsupported {
        variable: variable.to_string(),
        value,
        reason,
    };
    // envoyproxy/ratelimit's default socket type is unix.
    let socket = set("REDIS_SOCKET_TYPE").unwrap_or_else(|| "unix".into());
    if !socket.eq_ignore_ascii_case("tcp") {
        return Err(refuse(
            "REDIS_SOCKET_TYPE",
            socket,
            "ratelimitd reaches Redis over TCP only: set REDIS_SOCKET_TYPE=tcp",
        ));
    }
    let kind = set("REDIS_TYPE").unwrap_or_else(|| "SINGLE".into());
    let scheme = match (
        kind.to_ascii_uppercase().as_str(),
        set("REDIS_TLS").is_some_and(|v| parse_bool(&v)),
    ) {
        ("SINGLE", false) => "redis",
        ("SINGLE", true) => "rediss",
        ("CLUSTER", false) => "redis+cluster",
        ("CLUSTER", true) => "rediss+cluster",
        _ => {
            return Err(refuse(
                "REDIS_TYPE",
                kind,
                "only SINGLE and CLUSTER (no SENTINEL)",
            ));
        }
    };
    // REDIS_AUTH is a password, or `user:password`.
    let auth = set("REDIS_AUTH").map(|auth| match auth.split_once(':') {
        Some((user, password)) => format!("{user}:{password}@"),
        None => format!(":{auth}@"),
    });
    let hosts: Vec<String> = url
        .split(',')
        .map(|host| format!("{}{}", auth.clone().unwrap_or_default(), host.trim()))
        .collect();
    Ok(format!("{scheme}://{}", hosts.join(",")))
}

fn join(host: &str, port: &str) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// As Go's `strconv.ParseBool`: 1, t, T, TRUE, true, True.
fn parse_bool(value: &str) -> bool {
    matches!(value, "1" | "t" | "T" | "TRUE" | "true" | "True")
}

/// The command line as given, with `serve` and the environment's flags added where they apply:
/// started as `ratelimit` (envoyproxy/ratelimit's binary name) with no arguments means
/// `serve`; a flag already on the command line, or its `RATELIMITD_…` variable, wins.
pub fn command_line(
    args: Vec<OsString>,
    get: impl Fn(&str) -> Option<String>,
) -> Result<(Vec<OsString>, Vec<String>), Unsupported> {
    let mut args = args;
    let named_ratelimit = args
        .first()
        .and_then(|arg0| {
            std::path::Path::new(arg0)
                .file_name()
                .map(|n| n == "ratelimit")
        })
        .unwrap_or(false);
    if named_ratelimit && args.len() == 1 {
        args.push("serve".into());
    }
    if args.get(1).is_none_or(|command| command != "serve") {
        return Ok((args, Vec::new()));
    }
    let translated = translate(&get)?;
    for (flag, value) in translated.flags {
        let given = args.iter().any(|a| {
            a.to_str()
                .is_some_and(|a| a == flag || a.starts_with(&format!("{flag}=")))
        });
        let own = format!(
            "RATELIMITD_{}",
            flag.trim_start_matches("--")
                .replace('-', "_")
                .to_ascii_uppercase()
        );
        if !given && get(&own).is_none() {
            args.push(flag.into());
            args.push(value.into());
        }
    }
    Ok((args, translated.no_effect))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'p>(pairs: &'p [(&'p str, &'p str)]) -> impl Fn(&str) -> Option<String> + 'p {
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    fn flags(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        translate(env(pairs)).expect("supported").flags
    }

    fn flag(pairs: &[(&str, &str)], name: &str) -> Option<String> {
        flags(pairs)
            .into_iter()
            .find(|(f, _)| f == name)
            .map(|(_, v)| v)
    }

    #[test]
    fn redis_variables_make_a_backend() {
        let tcp = [("REDIS_URL", "redis:6379"), ("REDIS_SOCKET_TYPE", "tcp")];
        let prefixed = [("CACHE_KEY_PREFIX", "rl_")];
        assert_eq!(
            flag(&prefixed, "--redis-key-prefix").as_deref(),
            Some("rl_")
        );
        assert_eq!(
            flag(&tcp, "--backend").as_deref(),
            Some("redis://redis:6379")
        );
        let cluster = [
            ("REDIS_URL", "a:7000,b:7001"),
            ("REDIS_SOCKET_TYPE", "tcp"),
            ("REDIS_TYPE", "cluster"),
            ("REDIS_TLS", "true"),
            ("REDIS_AUTH", "user:secret"),
        ];
        assert_eq!(
            flag(&cluster, "--backend").as_deref(),
            Some("rediss+cluster://user:secret@a:7000,user:secret@b:7001")
        );
        let password = [
            ("REDIS_URL", "r:6379"),
            ("REDIS_SOCKET_TYPE", "tcp"),
            ("REDIS_AUTH", "pw"),
        ];
        assert_eq!(
            flag(&password, "--backend").as_deref(),
            Some("redis://:pw@r:6379")
        );
        assert_eq!(flag(&[], "--backend"), None, "nothing set: memory");
        let cache = [
            ("REDIS_URL", "r:6379"),
            ("REDIS_SOCKET_TYPE", "tcp"),
            ("LOCAL_CACHE_SIZE_IN_BYTES", "1048576"),
        ];
        assert_eq!(
            flag(&cache, "--local-cache-bytes").as_deref(),
            Some("1048576")
        );
        let unix = translate(env(&[("REDIS_URL", "/var/run/r.sock")])).unwrap_err();
        assert_eq!(
            unix.variable, "REDIS_SOCKET_TYPE",
            "the Go default is a Unix socket"
        );
        let sentinel = [
            ("REDIS_URL", "s:26379"),
            ("REDIS_SOCKET_TYPE", "tcp"),
            ("REDIS_TYPE", "sentinel"),
        ];
        assert_eq!(
            translate(env(&sentinel)).unwrap_err().variable,
            "REDIS_TYPE"
        );
    }

    #[test]
    fn listeners_tls_rules_and_headers_translate() {
        let all = [
            ("PORT", "8080"),
            ("GRPC_HOST", "::1"),
            ("GRPC_PORT", "8081"),
            ("GRPC_SERVER_USE_TLS", "true"),
            ("GRPC_SERVER_TLS_CERT", "/tls/cert.pem"),
            ("GRPC_SERVER_TLS_KEY", "/tls/key.pem"),
            ("GRPC_CLIENT_TLS_CACERT", "/tls/ca.pem"),
            ("GRPC_CLIENT_TLS_SAN", "envoy"),
            ("RUNTIME_ROOT", "/data"),
            ("RUNTIME_SUBDIRECTORY", "ratelimit"),
            ("LIMIT_RESPONSE_HEADERS_ENABLED", "false"),
            ("SHADOW_MODE", "1"),
            ("PROMETHEUS_ADDR", ":19001"),
        ];
        let got = flags(&all);
        let has = |name: &str, value: &str| got.iter().any(|(f, v)| f == name && v == value);
        assert!(has("--http-addr", "0.0.0.0:8080"));
        assert!(has("--grpc-addr", "[::1]:8081"));
        assert!(has("--grpc-tls-cert", "/tls/cert.pem"));
        assert!(has("--grpc-tls-client-san", "envoy"));
        assert!(has("--config", "/data/ratelimit/config"));
        assert!(has("--header-style", "none"));
        assert!(has("--shadow-mode", "true"));
        assert!(has("--metrics-addr", "0.0.0.0:19001"));
        let istio = [("HOST", "::"), ("GRPC_HOST", "::")];
        assert_eq!(flag(&istio, "--http-addr").as_deref(), Some("[::]:8080"));
        assert_eq!(flag(&istio, "--grpc-addr").as_deref(), Some("[::]:8081"));
        let no_tls = [("GRPC_SERVER_TLS_CERT", "/tls/cert.pem")];
        assert!(
            flags(&no_tls).is_empty(),
            "TLS files count only with GRPC_SERVER_USE_TLS"
        );
    }

    #[test]
    fn what_is_not_built_is_refused_and_knobs_are_reported() {
        for (name, value) in [
            ("USE_STATSD", "true"),
            ("GRPC_UDS", "/tmp/rl.sock"),
            ("CONFIG_TYPE", "GRPC_XDS_DELTA"),
            ("BACKEND_TYPE", "memcache"),
            ("MERGE_DOMAIN_CONFIG", "true"),
            ("NEAR_LIMIT_RATIO", "0.9"),
            ("LIMIT_LIMIT_HEADER", "X-Limit"),
        ] {
            let refused = translate(env(&[(name, value)])).expect_err(name);
            assert_eq!(
                (refused.variable.as_str(), refused.value.as_str()),
                (name, value)
            );
        }
        let fine = translate(env(&[("USE_STATSD", "false"), ("REDIS_POOL_SIZE", "10")]))
            .expect("supported");
        assert_eq!(fine.no_effect, ["REDIS_POOL_SIZE"]);
        let tls = [
            ("CONFIG_TYPE", "GRPC_XDS_SOTW"),
            ("CONFIG_GRPC_XDS_SERVER_USE_TLS", "true"),
        ];
        let refused = translate(env(&tls)).expect_err("xDS over TLS without a CA");
        assert_eq!(refused.variable, "CONFIG_GRPC_XDS_SERVER_USE_TLS");
    }

    #[test]
    fn tracing_variables_become_the_otlp_flags_over_grpc_only() {
        let by_default = translate(env(&[("TRACING_ENABLED", "true")])).expect_err("http");
        assert_eq!(
            (by_default.variable.as_str(), by_default.value.as_str()),
            ("TRACING_EXPORTER_PROTOCOL", "http"),
            "envoyproxy/ratelimit's default protocol is http, which is not built"
        );
        let vars = [
            ("TRACING_ENABLED", "true"),
            ("TRACING_EXPORTER_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "127.0.0.1:4317"),
            ("TRACING_SAMPLING_RATE", "0.25"),
            ("TRACING_SERVICE_INSTANCE_ID", "pod-1"),
        ];
        assert_eq!(
            flag(&vars, "--otlp-endpoint").as_deref(),
            Some("http://127.0.0.1:4317")
        );
        assert_eq!(
            flag(&vars, "--otlp-service-name").as_deref(),
            Some("RateLimit")
        );
        assert_eq!(flag(&vars, "--otlp-sampling-rate").as_deref(), Some("0.25"));
        assert_eq!(flag(&vars, "--otlp-instance-id").as_deref(), Some("pod-1"));
        assert!(
            flags(&[("TRACING_SERVICE_NAME", "x")]).is_empty(),
            "off unless enabled"
        );
    }

    #[test]
    fn redis_tls_files_become_the_redis_tls_flags() {
        let vars = [
            ("REDIS_SOCKET_TYPE", "tcp"),
            ("REDIS_URL", "redis:6379"),
            ("REDIS_TLS", "true"),
            ("REDIS_TLS_CACERT", "/certs/ca.pem"),
            ("REDIS_TLS_CLIENT_CERT", "/certs/client.pem"),
            ("REDIS_TLS_CLIENT_KEY", "/certs/client-key.pem"),
        ];
        assert_eq!(
            flag(&vars, "--backend").as_deref(),
            Some("rediss://redis:6379")
        );
        assert_eq!(
            flag(&vars, "--redis-tls-ca").as_deref(),
            Some("/certs/ca.pem")
        );
        assert_eq!(
            flag(&vars, "--redis-tls-key").as_deref(),
            Some("/certs/client-key.pem")
        );
        let skip = [("REDIS_TLS_SKIP_HOSTNAME_VERIFICATION", "true")];
        let refused = translate(env(&skip)).expect_err("hostnames are always checked");
        assert_eq!(refused.variable, "REDIS_TLS_SKIP_HOSTNAME_VERIFICATION");
    }

    #[test]
    fn envoy_gateways_xds_variables_become_the_xds_flags() {
        let gateway = [
            ("CONFIG_TYPE", "GRPC_XDS_SOTW"),
            ("CONFIG_GRPC_XDS_SERVER_URL", "envoy-gateway:18001"),
            ("CONFIG_GRPC_XDS_NODE_ID", "envoy-ratelimit"),
            ("FORCE_START_WITHOUT_INITIAL_CONFIG", "true"),
            ("RUNTIME_ROOT", "/data"),
            ("CONFIG_GRPC_XDS_SERVER_USE_TLS", "true"),
            ("CONFIG_GRPC_XDS_SERVER_TLS_CACERT", "/certs/ca.crt"),
            ("CONFIG_GRPC_XDS_CLIENT_TLS_CERT", "/certs/tls.crt"),
            ("CONFIG_GRPC_XDS_CLIENT_TLS_KEY", "/certs/tls.key"),
        ];
        let pair = |a: &str, b: &str| (a.to_string(), b.to_string());
        assert_eq!(
            flags(&gateway),
            [
                pair("--xds-server", "http://envoy-gateway:18001"),
                pair("--xds-node-id", "envoy-ratelimit"),
                pair("--xds-force-start", "true"),
                pair("--xds-tls-ca", "/certs/ca.crt"),
                pair("--xds-tls-cert", "/certs/tls.crt"),
                pair("--xds-tls-key", "/certs/tls.key"),
            ],
            "RUNTIME_* names no rules directory when the rules come over xDS"
        );
    }

    #[test]
    fn started_as_ratelimit_with_nothing_it_serves_and_explicit_settings_win() {
        let args = |list: &[&str]| list.iter().map(OsString::from).collect::<Vec<_>>();
        let vars = [
            ("PORT", "9000"),
            ("GRPC_PORT", "9001"),
            ("RATELIMITD_GRPC_ADDR", "1.2.3.4:5"),
        ];
        let (line, _) = command_line(args(&["/bin/ratelimit"]), env(&vars)).expect("ok");
        assert_eq!(
            line,
            args(&["/bin/ratelimit", "serve", "--http-addr", "0.0.0.0:9000"])
        );
        let (line, _) = command_line(
            args(&["ratelimitd", "serve", "--http-addr", "x:1"]),
            env(&vars),
        )
        .expect("ok");
        assert_eq!(
            line,
            args(&["ratelimitd", "serve", "--http-addr", "x:1"]),
            "the flag given wins"
        );
        let (line, _) =
            command_line(args(&["ratelimitd", "check", "--config", "c"]), env(&vars)).expect("ok");
        assert_eq!(
            line,
            args(&["ratelimitd", "check", "--config", "c"]),
            "only serve reads them"
        );
        let (line, _) = command_line(args(&["/usr/local/bin/ratelimitd"]), env(&vars)).expect("ok");
        assert_eq!(
            line,
            args(&["/usr/local/bin/ratelimitd"]),
            "only the name ratelimit means serve"
        );
    }
}
