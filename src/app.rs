//! Wiring: rules, metrics, counter store, the gRPC and admin servers, their background work
//! (sweeping ended windows, reloading rules), and an orderly stop.
//!
//! On shutdown: `/healthcheck` and gRPC health turn failing, calls are still answered for
//! `shutdown_delay` (0 by default), then the gRPC server stops accepting and lets in-flight
//! calls finish, giving up after `drain_timeout`; then the admin server stops. The sweeper and the reloader stop with `serve`.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::admin::{self, Admin, AdminError};
use crate::limiter::{
    Budget, Limiter, MemoryStore, OnBackendError, RedisStore, RedisTls, Target, clock,
};
use crate::metrics::{Metrics, MetricsError};
use crate::reload::{self, ReloadSettings};
use crate::rules::{Algorithm, RuleSet};
use crate::server::{self, Health, ServerError};
use crate::service::{LiveRules, ResponseSettings, RlsService};

/// Everything `serve` needs besides the rules and the listeners.
#[derive(Debug, Clone)]
pub struct Settings {
    pub response: ResponseSettings,
    /// How much the counters in memory may hold (each memory store, in Redis mode).
    pub counter_budget: Budget,
    /// How often counters of ended windows are removed.
    pub sweep_interval: Duration,
    /// `--default-algorithm`: how limits that name no algorithm count.
    pub default_algorithm: Algorithm,
    /// Rules over xDS instead of files (`--xds-server`).
    pub xds: Option<crate::xds::XdsSettings>,
    /// How long in-flight calls may take to finish after a shutdown signal.
    pub drain_timeout: Duration,
    /// How long to keep serving after health turns failing on shutdown, so that load
    /// balancers stop sending before the listener closes.
    pub shutdown_delay: Duration,
    /// Record every decision in the metrics (rule loads are always counted).
    pub decision_metrics: bool,
    /// The most metric series named by request values per rule window (`detailed_metric`,
    /// `value_to_metric`); the rest share one `_other_` series.
    pub max_metric_values: usize,
    /// Global shadow mode: limits counted and reported as if enforced, every answer OK.
    pub shadow_mode: bool,
    /// Rule values shown as short hashes in metric labels and `/rlconfig`.
    pub redact_rule_values: bool,
    /// `/json` and `/rlconfig` answer peers other than loopback too.
    pub admin_remote_debug: bool,
    /// TLS (and mTLS) on the gRPC port; `None`: plaintext.
    pub grpc_tls: Option<server::tls::TlsSettings>,
    /// The admin port serves HTTPS with the gRPC port's certificate.
    pub http_tls: bool,
    /// Replicas counting in the same Redis: while Redis is away, a replica counting locally
    /// takes one share in this many of what Redis said was left.
    pub replicas: u32,
    /// The most gRPC connections open at once; one more closes the idlest.
    pub max_connections: usize,
    /// Where to look for new rules; `None`: the rules never change.
    pub reload: Option<ReloadSettings>,
    /// Where counters live.
    pub backend: Backend,
}

/// Where counters live.
#[derive(Debug, Clone)]
pub enum Backend {
    Memory,
    Redis {
        target: Target,
        /// The longest a decision waits for Redis.
        timeout: Duration,
        on_error: OnBackendError,
        /// Put before every Redis key (`--redis-key-prefix`).
        key_prefix: String,
        /// TLS with a CA and client certificate of one's own (`--redis-tls-*`).
        tls: Option<RedisTls>,
        /// Bytes of the local over-limit cache (`--local-cache-bytes`; 0: off).
        local_cache_bytes: usize,
    },
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            response: ResponseSettings::default(),
            counter_budget: Budget {
                bytes: crate::container::DEFAULT_COUNTER_MEMORY,
                max_keys: usize::MAX,
            },
            sweep_interval: Duration::from_secs(5),
            default_algorithm: Algorithm::FixedWindow,
            xds: None,
            drain_timeout: Duration::from_secs(10),
            shutdown_delay: Duration::ZERO,
            decision_metrics: true,
            max_metric_values: crate::metrics::DEFAULT_MAX_METRIC_VALUES,
            shadow_mode: false,
            redact_rule_values: false,
            admin_remote_debug: false,
            grpc_tls: None,
            http_tls: false,
            replicas: 1,
            max_connections: crate::server::connection_cap::default_max_connections(),
            reload: None,
            backend: Backend::Memory,
        }
    }
}

impl Backend {
    /// What kind of store, for logs (never the address, which may hold a password).
    pub fn kind(&self) -> &'static str {
        match self {
            Backend::Memory => "memory",
            Backend::Redis {
                target: Target::Single(_),
                ..
            } => "redis",
            Backend::Redis {
                target: Target::Cluster(_),
                ..
            } => "redis-cluster",
        }
    }
}

/// The rules to start with, and the hash of the files they came from.
pub struct InitialRules {
    pub rules: RuleSet,
    pub hash: String,
}

/// The bound sockets: gRPC, and the admin HTTP server if there is one.
pub struct Listeners {
    pub grpc: TcpListener,
    pub http: Option<TcpListener>,
    /// `/metrics` alone, for scrapers that look for it on a port of its own
    /// (`--metrics-addr`, envoyproxy/ratelimit's `PROMETHEUS_ADDR`).
    pub metrics: Option<TcpListener>,
}

/// Why ratelimitd could not run.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Server(#[from] ServerError),
    #[error(transparent)]
    Admin(#[from] AdminError),
    #[error("cannot set up the metrics: {0}")]
    Metrics(#[from] MetricsError),
    #[error("gRPC TLS: {0}")]
    Tls(#[from] server::tls::TlsError),
}

/// How long start-up waits for a first Redis connection before serving without it.
const REDIS_START_WAIT: Duration = Duration::from_secs(2);

/// How long the admin server gets to finish its answers once the gRPC server has stopped.
const ADMIN_STOP_TIMEOUT: Duration = Duration::from_secs(1);

/// Runs ratelimitd until `shutdown` completes and the gRPC server has drained.
pub async fn serve(
    settings: Settings,
    initial: InitialRules,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AppError> {
    let http_addr = listeners
        .http
        .as_ref()
        .map(display_addr)
        .unwrap_or_default();
    let metrics_addr = listeners
        .metrics
        .as_ref()
        .map(display_addr)
        .unwrap_or_default();
    // Anchor the decision clock now (see `limiter::clock`).
    let _ = clock::now();
    let hash = initial.hash.clone();
    let metrics = Arc::new(Metrics::new()?.with_max_metric_values(settings.max_metric_values));
    let budget = settings.counter_budget;
    let limiter = Arc::new(
        match &settings.backend {
            Backend::Memory => Limiter::new(MemoryStore::new(budget)),
            Backend::Redis {
                target,
                timeout,
                on_error,
                key_prefix,
                tls,
                local_cache_bytes,
            } => {
                let redis =
                    RedisStore::start_with_tls(target.clone(), *timeout, key_prefix, tls.clone());
                // Start serving with Redis when it is there; without it when it is not.
                if !redis.wait_connected(REDIS_START_WAIT).await {
                    tracing::warn!(
                        policy = on_error.name(),
                        "Redis not reachable yet: answering by --on-backend-error until it is"
                    );
                }
                Limiter::shared(
                    redis,
                    *on_error,
                    budget,
                    settings.replicas,
                    *local_cache_bytes,
                )
            }
        }
        .with_default_algorithm(settings.default_algorithm),
    );
    let mut live = LiveRules::new(
        initial.rules,
        initial.hash.clone(),
        Arc::clone(&metrics),
        settings.redact_rule_values,
    );
    if settings.xds.as_ref().is_some_and(|xds| !xds.force_start) {
        live = live.awaiting_first_rules();
    }
    let live = Arc::new(live);
    let _xds = settings
        .xds
        .clone()
        .map(|xds| crate::xds::start(xds, Arc::clone(&live)));
    let _sweeper = Sweeper::start(Arc::clone(&limiter), settings.sweep_interval);
    let _reloader = settings
        .reload
        .clone()
        .map(|reload| reload::start(reload, Arc::clone(&live), initial.hash));
    let mut service = RlsService::new(live, limiter, settings.response.clone())
        .in_shadow_mode(settings.shadow_mode);
    if !settings.decision_metrics {
        service = service.without_decision_metrics();
    }
    let service = Arc::new(service);

    let serving = Arc::new(AtomicBool::new(true));
    let connections = server::connection_cap::Connections::new(settings.max_connections);
    let tls = match &settings.grpc_tls {
        Some(tls) => {
            let tls = server::tls::Tls::new(tls)?;
            tls.watch();
            Some(tls)
        }
        None => None,
    };
    metrics.set_serving(true);
    let (admin_stop_tx, mut admin_stop) = watch::channel(false);
    let admin_task = match listeners.http {
        Some(http) => {
            let admin = Admin::new(
                Arc::clone(&service),
                Arc::clone(&serving),
                Arc::clone(&connections),
            )?
            .with_remote_debug(settings.admin_remote_debug);
            if let Some(metrics) = listeners.metrics {
                let (admin, mut stop) = (admin.clone(), admin_stop.clone());
                let stop = async move {
                    let _ = stop.wait_for(|stop| *stop).await;
                };
                tokio::spawn(async move {
                    if let Err(error) = admin::serve_metrics(metrics, admin, stop).await {
                        tracing::warn!(%error, "the metrics listener failed");
                    }
                });
            }
            let stop = async move {
                let _ = admin_stop.wait_for(|stop| *stop).await;
            };
            let https = settings
                .http_tls
                .then(|| tls.as_ref().map(|tls| tls.https()))
                .flatten();
            Some(tokio::spawn(admin::serve(http, https, admin, stop)))
        }
        None => None,
    };

    tracing::info!(
        grpc = %display_addr(&listeners.grpc),
        http = %http_addr,
        metrics = %metrics_addr,
        config = %settings.reload.as_ref().map(|r| r.path.display().to_string()).unwrap_or_default(),
        rules_hash = %hash,
        backend = settings.backend.kind(),
        "ratelimitd serving"
    );
    let (health_tx, mut health_rx) = watch::channel::<Option<Health>>(None);
    if service.limiter().backend().is_some_and(|b| !b.connected) || service.rules().awaiting_first()
    {
        not_ready_until_redis_and_rules(
            Arc::clone(&service),
            health_rx.clone(),
            Arc::clone(&serving),
        );
    }
    let (stopping_tx, mut stopping_rx) = watch::channel(false);
    let stop_accepting = async move {
        shutdown.await;
        tracing::info!("shutting down: health failing, draining in-flight calls");
        serving.store(false, Ordering::Relaxed);
        metrics.set_serving(false);
        let health = health_rx.borrow_and_update().clone();
        if let Some(health) = health {
            health.set(false).await;
        }
        if !settings.shutdown_delay.is_zero() {
            tracing::info!(delay = ?settings.shutdown_delay, "still serving until the delay ends");
            tokio::time::sleep(settings.shutdown_delay).await;
        }
        let _ = stopping_tx.send(true);
    };
    let grpc = server::serve(
        listeners.grpc,
        Arc::clone(&connections),
        tls,
        server::RlsRoute::new(service),
        move |health| {
            let _ = health_tx.send(Some(health));
        },
        stop_accepting,
    );
    let deadline = async {
        let _ = stopping_rx.wait_for(|stopping| *stopping).await;
        tokio::time::sleep(settings.drain_timeout).await;
    };
    let result = tokio::select! {
        result = grpc => result.map_err(AppError::from),
        () = deadline => {
            tracing::warn!(timeout = ?settings.drain_timeout, "gave up waiting for in-flight calls");
            Ok(())
        }
    };

    let _ = admin_stop_tx.send(true);
    if let Some(task) = admin_task {
        let abort = task.abort_handle();
        match tokio::time::timeout(ADMIN_STOP_TIMEOUT, task).await {
            Ok(Ok(Err(error))) => tracing::warn!(%error, "the admin server failed"),
            Ok(_) => {}
            Err(_) => abort.abort(),
        }
    }
    result
}

/// gRPC health says NOT_SERVING until Redis is first reached and the first rules are in (over
/// xDS), then SERVING (unless shutdown has begun), as `/healthcheck` does: a replica that never
/// reached its Redis, or has no rules yet, is not ready.
fn not_ready_until_redis_and_rules(
    service: Arc<RlsService>,
    mut health: watch::Receiver<Option<Health>>,
    serving: Arc<AtomicBool>,
) {
    tokio::spawn(async move {
        let handle = match health.wait_for(Option::is_some).await {
            Ok(handle) => handle.clone(),
            Err(_) => return,
        };
        let Some(handle) = handle else {
            return;
        };
        handle.set(false).await;
        while service
            .limiter()
            .backend()
            .is_some_and(|backend| !backend.connected)
            || service.rules().awaiting_first()
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if serving.load(Ordering::Relaxed) {
            handle.set(true).await;
            tracing::info!("ready");
        }
    });
}

fn display_addr(listener: &TcpListener) -> String {
    listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default()
}

/// Removes counters of ended windows on a timer, on a [background](crate::background) thread;
/// stops when dropped.
struct Sweeper {
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl Sweeper {
    fn start(limiter: Arc<Limiter>, every: Duration) -> Sweeper {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let started = crate::background::spawn("ratelimitd-sweep", 256 * 1024, move || {
            // Wakes often to notice a stop and to give freed memory back; sweeps every `every`.
            let nap = every.min(Duration::from_millis(100));
            let mut next = std::time::Instant::now() + every;
            while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(nap);
                crate::allocator::give_back_freed_memory();
                if std::time::Instant::now() < next {
                    continue;
                }
                next += every;
                let removed = limiter.store().sweep(clock::now());
                tracing::trace!(removed, live = limiter.store().len(), "swept counters");
            }
        });
        if let Err(error) = started {
            tracing::error!(%error, "cannot start the sweeper: ended windows stay in memory");
        }
        Sweeper { stop }
    }
}

impl Drop for Sweeper {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}
