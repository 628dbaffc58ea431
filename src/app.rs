//! Wiring: rules, counter store, the gRPC server and its background work, and an orderly stop.
//!
//! On shutdown: health turns NOT_SERVING, the server stops accepting and lets in-flight calls
//! finish, and gives up after `drain_timeout`. The counter sweeper stops with the server.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::limiter::{Limiter, MemoryStore};
use crate::rules::RuleSet;
use crate::server::{self, Health, ServerError};
use crate::service::{ResponseSettings, RlsService};

/// Everything `serve` needs besides the listener.
#[derive(Debug, Clone)]
pub struct Settings {
    pub response: ResponseSettings,
    /// The most counters held in memory at once.
    pub max_counters: usize,
    /// How often counters of ended windows are removed.
    pub sweep_interval: Duration,
    /// How long in-flight calls may take to finish after a shutdown signal.
    pub drain_timeout: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            response: ResponseSettings::default(),
            max_counters: 10_000_000,
            sweep_interval: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(10),
        }
    }
}

/// Runs ratelimitd on `grpc` until `shutdown` completes and the server has drained.
pub async fn serve(
    settings: Settings,
    rules: RuleSet,
    grpc: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    let limiter = Arc::new(Limiter::new(MemoryStore::new(settings.max_counters)));
    let _sweeper = Sweeper::start(Arc::clone(&limiter), settings.sweep_interval);
    let service = RlsService::new(Arc::new(rules), limiter, settings.response.clone());

    let (health_tx, mut health_rx) = watch::channel::<Option<Health>>(None);
    let (stopping_tx, mut stopping_rx) = watch::channel(false);
    let stop_accepting = async move {
        shutdown.await;
        tracing::info!("shutting down: health NOT_SERVING, draining in-flight calls");
        let health = health_rx.borrow_and_update().clone();
        if let Some(health) = health {
            health.set(false).await;
        }
        let _ = stopping_tx.send(true);
    };
    let server = server::serve(
        grpc,
        service,
        move |health| {
            let _ = health_tx.send(Some(health));
        },
        stop_accepting,
    );
    let deadline = async {
        while !*stopping_rx.borrow_and_update() {
            if stopping_rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
        tokio::time::sleep(settings.drain_timeout).await;
    };
    tokio::select! {
        result = server => result,
        () = deadline => {
            tracing::warn!(timeout = ?settings.drain_timeout, "gave up waiting for in-flight calls");
            Ok(())
        }
    }
}

/// Removes counters of ended windows on a timer; stops when dropped.
struct Sweeper(tokio::task::JoinHandle<()>);

impl Sweeper {
    fn start(limiter: Arc<Limiter>, every: Duration) -> Sweeper {
        Sweeper(tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            loop {
                ticks.tick().await;
                let Ok(now) = SystemTime::now().duration_since(UNIX_EPOCH) else {
                    continue;
                };
                let removed = limiter.store().sweep(now);
                tracing::trace!(removed, live = limiter.store().len(), "swept counters");
            }
        }))
    }
}

impl Drop for Sweeper {
    fn drop(&mut self) {
        self.0.abort();
    }
}
