//! The command line: `ratelimitd serve`, `check`, `health` and `explain`. Every flag has an environment
//! twin (`RATELIMITD_…`), so a container can be configured without a command line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

use ratelimitd::app::{Backend, Settings};
use ratelimitd::limiter::redis::BadAddress;
use ratelimitd::limiter::{Budget, OnBackendError, RedisTls, Target};
use ratelimitd::reload::ReloadSettings;
use ratelimitd::rules::Algorithm;
use ratelimitd::server::tls::TlsSettings;
use ratelimitd::service::{HeaderStyle, ResponseSettings};
use ratelimitd::tls_client::ClientTls;
use ratelimitd::traces::TraceSettings;
use ratelimitd::xds::XdsSettings;

#[derive(Debug, Parser)]
#[command(name = "ratelimitd", version, about = "Rate-limit decisions for Envoy")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve Envoy's RateLimitService over gRPC.
    Serve(Box<Serve>),
    /// Validate rule files; print every error as file:line:column and exit 1 if there is one.
    Check(Check),
    /// Ask a running ratelimitd's gRPC health service; exit 0 if it is SERVING, else 1.
    Health(Health),
    /// Tell how a request's descriptors match the rules, level by level, and which limits
    /// apply, without counting anything.
    Explain(Explain),
}

#[derive(Debug, clap::Args)]
pub struct Explain {
    /// A rule file, or a directory of rule files.
    #[arg(long, env = "RATELIMITD_CONFIG")]
    pub config: PathBuf,
    /// The request's domain.
    #[arg(long)]
    pub domain: String,
    /// One descriptor: its entries, `key=value` each, in order.
    #[arg(value_name = "KEY=VALUE")]
    pub entries: Vec<String>,
    /// Another descriptor of the request, `key=value,key=value` (repeat for more).
    #[arg(long = "descriptor", value_name = "KEY=VALUE,...")]
    pub descriptors: Vec<String>,
    /// How limits that name no `algorithm` count (as `serve --default-algorithm`).
    #[arg(long, env = "RATELIMITD_DEFAULT_ALGORITHM", value_enum, default_value_t = Algorithm::FixedWindow)]
    pub default_algorithm: Algorithm,
}

impl Explain {
    /// The request's descriptors: the positional entries first (if any), then each
    /// `--descriptor`; an entry without `=` is refused with its text.
    pub fn request(&self) -> Result<Vec<Vec<(String, String)>>, String> {
        let entry = |text: &str| {
            text.split_once('=')
                .filter(|(key, _)| !key.is_empty())
                .map(|(key, value)| (key.to_string(), value.to_string()))
                .ok_or_else(|| format!("{text:?}: an entry is key=value"))
        };
        let mut descriptors = Vec::new();
        if !self.entries.is_empty() {
            descriptors.push(
                self.entries
                    .iter()
                    .map(|e| entry(e))
                    .collect::<Result<_, _>>()?,
            );
        }
        for group in &self.descriptors {
            descriptors.push(group.split(',').map(entry).collect::<Result<_, _>>()?);
        }
        if descriptors.is_empty() {
            return Err(
                "name at least one descriptor: key=value … or --descriptor key=value,…".into(),
            );
        }
        Ok(descriptors)
    }
}

#[derive(Debug, clap::Args)]
pub struct Health {
    /// Address of the ratelimitd to ask.
    #[arg(long, env = "RATELIMITD_HEALTH_ADDR", default_value = "127.0.0.1:8081")]
    pub grpc_addr: String,
    /// The service to ask about; empty: the whole server.
    #[arg(long, default_value = "")]
    pub service: String,
    /// Give up after this many milliseconds.
    #[arg(long, default_value_t = 2000)]
    pub timeout_ms: u64,
    /// Speak TLS, trusting this CA (PEM) for the server's certificate.
    #[arg(long, env = "RATELIMITD_HEALTH_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// mTLS: the client certificate (PEM) to present.
    #[arg(long, env = "RATELIMITD_HEALTH_TLS_CERT", requires_all = ["tls_ca", "tls_key"])]
    pub tls_cert: Option<PathBuf>,
    /// mTLS: the key (PEM) of `--tls-cert`.
    #[arg(long, env = "RATELIMITD_HEALTH_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// The name the server's certificate must hold; default: the host of `--grpc-addr`.
    #[arg(long, env = "RATELIMITD_HEALTH_TLS_SERVER_NAME", requires = "tls_ca")]
    pub tls_server_name: Option<String>,
}

impl Health {
    /// How the probe speaks TLS, if it does.
    pub fn tls(&self) -> Option<ratelimitd::probe::ProbeTls> {
        let ca = self.tls_ca.clone()?;
        Some(ratelimitd::probe::ProbeTls {
            ca,
            client: self.tls_cert.clone().zip(self.tls_key.clone()),
            server_name: self.tls_server_name.clone(),
        })
    }
}

#[derive(Debug, clap::Args)]
pub struct Serve {
    /// A rule file, or a directory of rule files (one domain per file); with `--xds-server` the
    /// rules come over xDS and this is not read (the image sets it for the file case).
    #[arg(
        long,
        env = "RATELIMITD_CONFIG",
        required_unless_present = "xds_server"
    )]
    pub config: Option<PathBuf>,
    /// Take the rules over xDS from this ADS server (`http://host:port`; envoyproxy/ratelimit's
    /// `CONFIG_TYPE=GRPC_XDS_SOTW` with `CONFIG_GRPC_XDS_SERVER_URL`) instead of files.
    #[arg(long, env = "RATELIMITD_XDS_SERVER")]
    pub xds_server: Option<String>,
    /// The node id ratelimitd gives the ADS server (`CONFIG_GRPC_XDS_NODE_ID`).
    #[arg(long, env = "RATELIMITD_XDS_NODE_ID", default_value = "default")]
    pub xds_node_id: String,
    /// The node's metadata sent to the ADS server: `key=value,key2=value2`
    /// (`CONFIG_GRPC_XDS_NODE_METADATA`).
    #[arg(long, env = "RATELIMITD_XDS_NODE_METADATA", default_value = "")]
    pub xds_node_metadata: String,
    /// Serve and report ready before the first rules arrive over xDS, answering OK for every
    /// domain meanwhile (`FORCE_START_WITHOUT_INITIAL_CONFIG`); else not ready until they do.
    #[arg(long, env = "RATELIMITD_XDS_FORCE_START", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub xds_force_start: bool,
    /// TLS to the ADS server: the CA (PEM) its certificate must chain to
    /// (`CONFIG_GRPC_XDS_SERVER_TLS_CACERT`).
    #[arg(long, env = "RATELIMITD_XDS_TLS_CA", requires = "xds_server")]
    pub xds_tls_ca: Option<PathBuf>,
    /// The client certificate (PEM) presented to the ADS server (`CONFIG_GRPC_XDS_CLIENT_TLS_CERT`).
    #[arg(long, env = "RATELIMITD_XDS_TLS_CERT", requires_all = ["xds_tls_ca", "xds_tls_key"])]
    pub xds_tls_cert: Option<PathBuf>,
    /// Its key (`CONFIG_GRPC_XDS_CLIENT_TLS_KEY`).
    #[arg(long, env = "RATELIMITD_XDS_TLS_KEY", requires = "xds_tls_cert")]
    pub xds_tls_key: Option<PathBuf>,
    /// The name the ADS server's certificate must hold; default: its host
    /// (`CONFIG_GRPC_XDS_SERVER_TLS_SAN`).
    #[arg(long, env = "RATELIMITD_XDS_TLS_SERVER_NAME", requires = "xds_tls_ca")]
    pub xds_tls_server_name: Option<String>,
    /// Export a span per decision over OTLP/gRPC to this collector (`http://host:4317`;
    /// envoyproxy/ratelimit's `TRACING_ENABLED` with `OTEL_EXPORTER_OTLP_ENDPOINT`).
    #[arg(long, env = "RATELIMITD_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// The share of traces exported, 0 to 1 (`TRACING_SAMPLING_RATE`); a trace Envoy sampled
    /// stays sampled.
    #[arg(long, env = "RATELIMITD_OTLP_SAMPLING_RATE", default_value_t = 1.0)]
    pub otlp_sampling_rate: f64,
    /// The `service.name` of the spans (`TRACING_SERVICE_NAME`).
    #[arg(
        long,
        env = "RATELIMITD_OTLP_SERVICE_NAME",
        default_value = "ratelimitd"
    )]
    pub otlp_service_name: String,
    /// Their `service.namespace` (`TRACING_SERVICE_NAMESPACE`).
    #[arg(long, env = "RATELIMITD_OTLP_SERVICE_NAMESPACE")]
    pub otlp_service_namespace: Option<String>,
    /// Their `service.instance.id` (`TRACING_SERVICE_INSTANCE_ID`).
    #[arg(long, env = "RATELIMITD_OTLP_INSTANCE_ID")]
    pub otlp_instance_id: Option<String>,
    /// Address of the gRPC server (RateLimitService, health, reflection).
    #[arg(long, env = "RATELIMITD_GRPC_ADDR", default_value = "0.0.0.0:8081")]
    pub grpc_addr: SocketAddr,
    /// Address of the admin HTTP server (/healthcheck, /metrics, /rlconfig, POST /json).
    #[arg(long, env = "RATELIMITD_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    pub http_addr: SocketAddr,
    /// Also serve `/metrics` alone on this address (envoyproxy/ratelimit's `PROMETHEUS_ADDR`,
    /// where Envoy Gateway scrapes); it stays on the admin port too.
    #[arg(long, env = "RATELIMITD_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    /// How often the rule files are read to catch changes that sent no file event, in
    /// milliseconds (changes are also watched with inotify, and SIGHUP reloads at once).
    #[arg(long, env = "RATELIMITD_RELOAD_POLL_MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(10..))]
    pub reload_poll_ms: u64,
    /// Record every decision in the metrics (per-rule counters, answer counts, latency).
    #[arg(long, env = "RATELIMITD_DECISION_METRICS", default_value_t = true, action = clap::ArgAction::Set)]
    pub decision_metrics: bool,
    /// Global shadow mode: every limit is counted and reported as if enforced, every answer is
    /// OK, and the metrics show what would have been refused (envoyproxy/ratelimit's
    /// `SHADOW_MODE`).
    #[arg(long, env = "RATELIMITD_SHADOW_MODE", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub shadow_mode: bool,
    /// Show the rules' exact values as short stable hashes in metric labels and `/rlconfig`
    /// (per-customer overrides name customers' API keys).
    #[arg(long, env = "RATELIMITD_REDACT_RULE_VALUES", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub redact_rule_values: bool,
    /// Answer `POST /json` and `/rlconfig` to peers other than loopback too (by default they
    /// answer loopback peers only; `/healthcheck` and `/metrics` answer anyone).
    #[arg(long, env = "RATELIMITD_ADMIN_REMOTE_DEBUG", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub admin_remote_debug: bool,
    /// The most metric series named by request values (`detailed_metric`, `value_to_metric`)
    /// per rule window; further values share one series labelled `_other_`.
    #[arg(long, env = "RATELIMITD_MAX_METRIC_VALUES", default_value_t = ratelimitd::metrics::DEFAULT_MAX_METRIC_VALUES)]
    pub max_metric_values: usize,
    /// Where counters live: `memory`, `redis://HOST:PORT[/DB]`, `rediss://…` (TLS), or
    /// `redis+cluster://HOST:PORT,HOST:PORT,…` (`rediss+cluster://` for TLS).
    #[arg(long, env = "RATELIMITD_BACKEND", default_value = "memory")]
    pub backend: String,
    /// The longest a decision waits for Redis, in milliseconds, before the failure policy
    /// answers (Envoy's own timeout is 20 ms by default).
    #[arg(long, env = "RATELIMITD_BACKEND_TIMEOUT_MS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub backend_timeout_ms: u64,
    /// What to answer when Redis cannot count in time: `allow` (OK), `deny` (OVER_LIMIT), or
    /// `local` (count in this process until Redis is back).
    #[arg(long, env = "RATELIMITD_ON_BACKEND_ERROR", value_enum, default_value_t = OnBackendErrorArg::Local)]
    pub on_backend_error: OnBackendErrorArg,
    /// Which rate-limit headers go on responses.
    #[arg(long, env = "RATELIMITD_HEADER_STYLE", value_enum, default_value_t = HeaderStyleArg::Ratelimit)]
    pub header_style: HeaderStyleArg,
    /// Body of the 429 that Envoy sends when over the limit (an empty string: Envoy's own).
    #[arg(long, env = "RATELIMITD_OVER_LIMIT_BODY", default_value = ratelimitd::service::DEFAULT_OVER_LIMIT_BODY)]
    pub over_limit_body: String,
    /// `content-type` of that body.
    #[arg(
        long,
        env = "RATELIMITD_OVER_LIMIT_CONTENT_TYPE",
        default_value = "application/json"
    )]
    pub over_limit_content_type: String,
    /// Bytes of the local over-limit cache in Redis mode (`64MiB`, or bytes; 0: off): a counter
    /// Redis said is full is refused here, without a Redis call, until a request could pass.
    #[arg(long, env = "RATELIMITD_LOCAL_CACHE_BYTES", default_value = DEFAULT_LOCAL_CACHE, value_parser = byte_size)]
    pub local_cache_bytes: usize,
    /// Replicas counting in the same Redis: while Redis is away, `--on-backend-error local`
    /// admits one share in this many of what Redis last said was left for each counter.
    #[arg(long, env = "RATELIMITD_REPLICAS", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub replicas: u32,
    /// How limits that name no `algorithm` count: fixed_window (envoyproxy/ratelimit's),
    /// sliding_window or token_bucket (see docs/algorithms.md).
    #[arg(long, env = "RATELIMITD_DEFAULT_ALGORITHM", value_enum, default_value_t = Algorithm::FixedWindow)]
    pub default_algorithm: Algorithm,
    /// Bytes the counters in memory may take (`512MiB`, `2GiB`, or bytes); default: half the
    /// container's memory limit, else 1GiB. When full, a new key evicts the key counted least.
    #[arg(long, env = "RATELIMITD_MAX_COUNTER_MEMORY", value_parser = counter_memory)]
    pub max_counter_memory: Option<usize>,
    /// TLS on the gRPC port: the certificate chain (PEM), read again when the file changes.
    #[arg(long, env = "RATELIMITD_GRPC_TLS_CERT", requires = "grpc_tls_key")]
    pub grpc_tls_cert: Option<PathBuf>,
    /// The private key (PEM) of `--grpc-tls-cert`, read again when the file changes.
    #[arg(long, env = "RATELIMITD_GRPC_TLS_KEY", requires = "grpc_tls_cert")]
    pub grpc_tls_key: Option<PathBuf>,
    /// mTLS: clients must present a certificate signed by this CA (PEM).
    #[arg(
        long,
        env = "RATELIMITD_GRPC_TLS_CLIENT_CA",
        requires = "grpc_tls_cert"
    )]
    pub grpc_tls_client_ca: Option<PathBuf>,
    /// mTLS: a client certificate must name one of these (DNS names or IP addresses, in its
    /// subject alternative names); repeat the flag or separate with commas.
    #[arg(
        long,
        env = "RATELIMITD_GRPC_TLS_CLIENT_SAN",
        value_delimiter = ',',
        requires = "grpc_tls_client_ca"
    )]
    pub grpc_tls_client_san: Vec<String>,
    /// Serve the admin port over HTTPS, with `--grpc-tls-cert` (no client certificate asked).
    #[arg(long, env = "RATELIMITD_HTTP_TLS", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true", requires = "grpc_tls_cert")]
    pub http_tls: bool,
    /// Put before every Redis key (envoyproxy/ratelimit's `CACHE_KEY_PREFIX`), to share a Redis
    /// with other users; no `{` or `}`, which would change a key's Cluster slot.
    #[arg(long, env = "RATELIMITD_REDIS_KEY_PREFIX", default_value = "", value_parser = key_prefix)]
    pub redis_key_prefix: String,
    /// For a `rediss://` backend: the CA (PEM) Redis's certificate must chain to, instead of
    /// the public web roots (envoyproxy/ratelimit's `REDIS_TLS_CACERT`).
    #[arg(long, env = "RATELIMITD_REDIS_TLS_CA")]
    pub redis_tls_ca: Option<PathBuf>,
    /// A client certificate (PEM) to present to Redis (`REDIS_TLS_CLIENT_CERT`).
    #[arg(long, env = "RATELIMITD_REDIS_TLS_CERT", requires = "redis_tls_key")]
    pub redis_tls_cert: Option<PathBuf>,
    /// Its key (`REDIS_TLS_CLIENT_KEY`).
    #[arg(long, env = "RATELIMITD_REDIS_TLS_KEY", requires = "redis_tls_cert")]
    pub redis_tls_key: Option<PathBuf>,
    /// The most gRPC connections open at once; one more closes the connection idle longest.
    /// Default: the open-file limit less 1,024, between 64 and 10,000.
    #[arg(long, env = "RATELIMITD_MAX_CONNECTIONS", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_connections: Option<u64>,
    /// The most descriptor keys counted in memory at once (besides the bytes); default: as many
    /// as the bytes allow.
    #[arg(long, env = "RATELIMITD_MAX_COUNTERS", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_counters: Option<u64>,
    /// Seconds that in-flight calls get to finish after SIGTERM or Ctrl-C.
    #[arg(long, env = "RATELIMITD_DRAIN_TIMEOUT", default_value_t = 10)]
    pub drain_timeout: u64,
    /// Seconds to keep answering after SIGTERM has turned health failing, before the listener
    /// closes (time for load balancers to notice).
    #[arg(long, env = "RATELIMITD_SHUTDOWN_DELAY", default_value_t = 0)]
    pub shutdown_delay: u64,
    #[command(flatten)]
    pub log: Log,
}

impl Serve {
    /// The rule files, unless the rules come over xDS.
    pub fn rule_files(&self) -> Option<PathBuf> {
        self.config.clone().filter(|_| self.xds_server.is_none())
    }

    /// How traces are exported, if they are.
    pub fn traces(&self) -> Option<TraceSettings> {
        Some(TraceSettings {
            endpoint: self.otlp_endpoint.clone()?,
            sampling_rate: self.otlp_sampling_rate,
            service_name: self.otlp_service_name.clone(),
            service_namespace: self.otlp_service_namespace.clone(),
            instance_id: self.otlp_instance_id.clone(),
        })
    }

    /// What `app::serve` needs, from the flags; refuses a `--backend` it cannot read.
    pub fn settings(&self) -> Result<Settings, BadAddress> {
        let backend = if self.backend == "memory" {
            Backend::Memory
        } else {
            Backend::Redis {
                target: Target::parse(&self.backend)?,
                timeout: Duration::from_millis(self.backend_timeout_ms),
                on_error: self.on_backend_error.into(),
                key_prefix: self.redis_key_prefix.clone(),
                tls: (self.redis_tls_ca.is_some() || self.redis_tls_cert.is_some()).then(|| {
                    RedisTls {
                        ca: self.redis_tls_ca.clone(),
                        client: self.redis_tls_cert.clone().zip(self.redis_tls_key.clone()),
                    }
                }),
                local_cache_bytes: self.local_cache_bytes,
            }
        };
        Ok(Settings {
            response: ResponseSettings {
                header_style: self.header_style.into(),
                over_limit_body: Some(self.over_limit_body.clone()).filter(|b| !b.is_empty()),
                over_limit_content_type: self.over_limit_content_type.clone(),
            },
            default_algorithm: self.default_algorithm,
            counter_budget: Budget {
                bytes: self
                    .max_counter_memory
                    .unwrap_or_else(ratelimitd::container::default_counter_memory),
                max_keys: self
                    .max_counters
                    .map_or(usize::MAX, |n| usize::try_from(n).unwrap_or(usize::MAX)),
            },
            drain_timeout: Duration::from_secs(self.drain_timeout),
            shutdown_delay: Duration::from_secs(self.shutdown_delay),
            decision_metrics: self.decision_metrics,
            max_metric_values: self.max_metric_values,
            shadow_mode: self.shadow_mode,
            redact_rule_values: self.redact_rule_values,
            http_tls: self.http_tls,
            grpc_tls: match (&self.grpc_tls_cert, &self.grpc_tls_key) {
                (Some(cert), Some(key)) => Some(TlsSettings {
                    cert: cert.clone(),
                    key: key.clone(),
                    client_ca: self.grpc_tls_client_ca.clone(),
                    client_sans: self.grpc_tls_client_san.clone(),
                }),
                _ => None,
            },
            admin_remote_debug: self.admin_remote_debug,
            replicas: self.replicas,
            max_connections: self.max_connections.map_or_else(
                ratelimitd::server::connection_cap::default_max_connections,
                |n| usize::try_from(n).unwrap_or(usize::MAX),
            ),
            backend,
            reload: self.rule_files().map(|path| ReloadSettings {
                path,
                poll_interval: Duration::from_millis(self.reload_poll_ms),
                on_sighup: true,
            }),
            xds: self.xds_server.clone().map(|server| XdsSettings {
                server,
                tls: self.xds_tls_ca.clone().map(|ca| ClientTls {
                    ca,
                    client: self.xds_tls_cert.clone().zip(self.xds_tls_key.clone()),
                    server_name: self.xds_tls_server_name.clone(),
                }),
                node_id: self.xds_node_id.clone(),
                node_metadata: ratelimitd::xds::node_metadata(&self.xds_node_metadata),
                force_start: self.xds_force_start,
            }),
            ..Settings::default()
        })
    }
}

#[derive(Debug, clap::Args)]
pub struct Check {
    /// A rule file, or a directory of rule files.
    #[arg(long, env = "RATELIMITD_CONFIG")]
    pub config: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct Log {
    /// Log format on stderr.
    #[arg(long, env = "RATELIMITD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Log filter, in `tracing` syntax (`info`, `ratelimitd=debug`, …).
    #[arg(long, env = "RATELIMITD_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnBackendErrorArg {
    Allow,
    Deny,
    Local,
}

impl From<OnBackendErrorArg> for OnBackendError {
    fn from(arg: OnBackendErrorArg) -> OnBackendError {
        match arg {
            OnBackendErrorArg::Allow => OnBackendError::Allow,
            OnBackendErrorArg::Deny => OnBackendError::Deny,
            OnBackendErrorArg::Local => OnBackendError::Local,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum HeaderStyleArg {
    /// RateLimit-Limit, RateLimit-Remaining, RateLimit-Reset
    Ratelimit,
    /// X-RateLimit-Limit, X-RateLimit-Remaining, X-RateLimit-Reset
    XRatelimit,
    /// IETF draft-10: RateLimit and RateLimit-Policy
    Draft10,
    /// no rate-limit headers
    None,
}

impl From<HeaderStyleArg> for HeaderStyle {
    fn from(arg: HeaderStyleArg) -> HeaderStyle {
        match arg {
            HeaderStyleArg::Ratelimit => HeaderStyle::RateLimit,
            HeaderStyleArg::XRatelimit => HeaderStyle::XRateLimit,
            HeaderStyleArg::Draft10 => HeaderStyle::IetfDraft10,
            HeaderStyleArg::None => HeaderStyle::None,
        }
    }
}

/// The smallest `--max-counter-memory`: room for a few thousand counters.
const MIN_COUNTER_MEMORY: u64 = 1 << 20;

/// Reads `--max-counter-memory`: a size such as `512MiB`, `2GiB` or `100MB`, or bytes.
fn counter_memory(text: &str) -> Result<usize, String> {
    let bytes = byte_size(text)?;
    if (bytes as u64) < MIN_COUNTER_MEMORY {
        return Err(format!("{text} is less than the least, 1MiB"));
    }
    Ok(bytes)
}

/// The default of `--local-cache-bytes`: about 380,000 counters.
const DEFAULT_LOCAL_CACHE: &str = "64MiB";

/// Reads a size such as `64MiB`, `2GiB` or `100MB`, or bytes.
fn byte_size(text: &str) -> Result<usize, String> {
    let size: bytesize::ByteSize = text.parse()?;
    Ok(usize::try_from(size.as_u64()).unwrap_or(usize::MAX))
}

/// Reads `--redis-key-prefix`: any text but `{` and `}` (a Redis Cluster hashes what braces
/// enclose, so a prefix with them would put every key in one slot).
fn key_prefix(text: &str) -> Result<String, String> {
    if text.contains(['{', '}']) {
        return Err(format!(
            "{text:?} holds a brace: Redis Cluster would hash it"
        ));
    }
    Ok(text.to_string())
}
