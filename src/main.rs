//! `ratelimitd`: parses the command line, sets up logging, and starts things. The only place
//! that uses `anyhow` and chooses exit codes.

/// mimalloc (see `ratelimitd::allocator`). The no-op baseline and the benchmarks use the same
/// allocator with the same settings, so that ratios compare like with like.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod cli;

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use tokio::net::TcpListener;

use cli::{Cli, Command, LogFormat};
use ratelimitd::app::{self, InitialRules, Listeners};
use ratelimitd::{config, envoy_env, probe};

/// Raises the soft limit on open files to the hard limit: every connection costs one, and the
/// usual soft limit (1,024 or 4,096) let a few thousand slow admin connections exhaust it, so a
/// restarted Envoy could not connect and a reload failed with "Too many open files".
fn raise_open_file_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::debug!(limit, "open files"),
        Err(error) => tracing::warn!(%error, "cannot raise the open-file limit"),
    }
}

fn main() -> ExitCode {
    ratelimitd::allocator::configure();
    let args = envoy_env::command_line(std::env::args_os().collect(), |name| {
        std::env::var(name).ok()
    });
    let (args, no_effect) = match args {
        Ok(translated) => translated,
        Err(unsupported) => {
            eprintln!("ratelimitd: envoyproxy/ratelimit's {unsupported}");
            return ExitCode::FAILURE;
        }
    };
    let cli = Cli::parse_from(args);
    match cli.command {
        Command::Check(check) => run_check(&check),
        Command::Explain(explain) => run_explain(&explain),
        Command::Health(health) => run_health(&health),
        Command::Serve(serve) => {
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(runtime) => runtime,
                Err(error) => {
                    eprintln!("ratelimitd: cannot start the async runtime: {error}");
                    return ExitCode::FAILURE;
                }
            };
            // The trace exporter runs on the runtime.
            let traces = {
                let _runtime = runtime.enter();
                serve
                    .traces()
                    .map(|t| ratelimitd::traces::provider(&t))
                    .transpose()
            };
            let traces = match traces {
                Ok(traces) => traces,
                Err(error) => {
                    eprintln!("ratelimitd: {error}");
                    return ExitCode::FAILURE;
                }
            };
            init_logging(&serve.log, traces.as_ref());
            for name in no_effect {
                tracing::info!(variable = %name, "envoyproxy/ratelimit's variable has no effect here");
            }
            raise_open_file_limit();
            let served = run_serve(*serve, &runtime);
            if let Some(traces) = traces {
                // Sends the spans still batched.
                let _runtime = runtime.enter();
                let _ = traces.shutdown();
            }
            match served {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("ratelimitd: {error:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn run_check(check: &cli::Check) -> ExitCode {
    match config::load(&check.config) {
        Ok(rules) => {
            for warning in rules.warnings() {
                eprintln!("warning: {warning}");
            }
            let domains = rules.domains();
            println!(
                "{}: OK ({} domain{}: {})",
                check.config.display(),
                domains.len(),
                if domains.len() == 1 { "" } else { "s" },
                domains
                    .iter()
                    .map(|d| d.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            ExitCode::SUCCESS
        }
        Err(errors) => {
            eprintln!("{errors}");
            ExitCode::FAILURE
        }
    }
}

fn run_explain(explain: &cli::Explain) -> ExitCode {
    let descriptors = match explain.request() {
        Ok(descriptors) => descriptors,
        Err(error) => {
            eprintln!("ratelimitd explain: {error}");
            return ExitCode::from(2);
        }
    };
    match config::load(&explain.config) {
        Ok(rules) => {
            let (head, explained) = ratelimitd::explain::explain(
                &rules,
                &explain.domain,
                &descriptors,
                explain.default_algorithm,
            );
            print!("{}", ratelimitd::explain::render(&head, &explained));
            ExitCode::SUCCESS
        }
        Err(errors) => {
            eprintln!("{errors}");
            ExitCode::FAILURE
        }
    }
}

fn run_health(health: &cli::Health) -> ExitCode {
    let timeout = Duration::from_millis(health.timeout_ms);
    let answer = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
        .and_then(|runtime| {
            runtime
                .block_on(probe::check(
                    &health.grpc_addr,
                    &health.service,
                    timeout,
                    health.tls().as_ref(),
                ))
                .map_err(|e| e.to_string())
        });
    match answer {
        Ok(status) => {
            println!("{status}");
            if status == "SERVING" {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(error) => {
            eprintln!("ratelimitd health: {error}");
            ExitCode::FAILURE
        }
    }
}

fn run_serve(serve: cli::Serve, runtime: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    let settings = serve.settings()?;
    let initial = match &serve.rule_files() {
        Some(path) => config::read(path)
            .and_then(|sources| {
                let rules = sources.parse()?;
                Ok(InitialRules {
                    rules,
                    hash: sources.hash(),
                })
            })
            .map_err(|errors| anyhow::anyhow!("{errors}"))
            .with_context(|| format!("cannot load the rules in {}", path.display()))?,
        // Over xDS: no rules until the first response (every domain answered OK meanwhile).
        None => InitialRules {
            rules: ratelimitd::rules::RuleSet::new(Vec::new()),
            hash: "none yet (xDS)".to_string(),
        },
    };
    runtime.block_on(async {
        let grpc = TcpListener::bind(serve.grpc_addr)
            .await
            .with_context(|| format!("cannot listen on {}", serve.grpc_addr))?;
        let http = TcpListener::bind(serve.http_addr)
            .await
            .with_context(|| format!("cannot listen on {}", serve.http_addr))?;
        let metrics = match serve.metrics_addr {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot listen on {addr}"))?,
            ),
            None => None,
        };
        let listeners = Listeners {
            grpc,
            http: Some(http),
            metrics,
        };
        app::serve(settings, initial, listeners, shutdown_signal()).await?;
        tracing::info!("ratelimitd stopped");
        Ok(())
    })
}

/// Completes on SIGTERM (how containers are stopped) or Ctrl-C. The handlers are installed at
/// once, so a SIGTERM that comes before the future is first polled is not fatal.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    async move {
        let ctrl_c = tokio::signal::ctrl_c();
        match term {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(error) => {
                tracing::warn!(%error, "cannot watch SIGTERM; stopping on Ctrl-C only");
                let _ = ctrl_c.await;
            }
        }
    }
}

/// Logs on stderr, filtered by `--log-level`; with `traces`, the decision spans exported too,
/// whatever the log level (their own filter).
fn init_logging(log: &cli::Log, traces: Option<&opentelemetry_sdk::trace::SdkTracerProvider>) {
    use opentelemetry::trace::TracerProvider as _;
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;

    let filter = tracing_subscriber::EnvFilter::try_new(&log.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let fmt = match log.log_format {
        LogFormat::Text => fmt.boxed(),
        LogFormat::Json => fmt.json().boxed(),
    };
    let spans = traces.map(|provider| {
        let decisions = tracing_subscriber::filter::Targets::new()
            .with_target("ratelimitd::service", tracing::Level::DEBUG);
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("ratelimitd"))
            .with_filter(decisions)
    });
    tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .with(spans)
        .init();
}
