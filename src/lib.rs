//! ratelimitd: the rate-limit decision service behind Envoy's HTTP rate-limit filter.
//!
//! The modules, and the direction of their dependencies:
//!
//! - [`rules`]: the rule tree, immutable once built, and the descriptor matcher.
//! - [`config`]: YAML rule files → [`rules::RuleSet`], with file:line:column errors.
//! - [`limiter`]: the decision core (plan, count, conclude), windows, the clock, counter keys,
//!   and the store contract with its stores (process memory; Redis or Redis Cluster wrapped in
//!   a failure policy).
//! - [`service`]: deciding Envoy's `ShouldRateLimit`: the request read in place from its bytes,
//!   the call into the limiter, and the answer with its headers and body, encoded by hand.
//! - [`metrics`]: the Prometheus metrics, with per-rule counters resolved once per load.
//! - [`server`]: the gRPC server: the service's route and codec, health and reflection on a
//!   bound listener.
//! - [`admin`]: the HTTP server for operators: `/healthcheck`, `/metrics`, `/rlconfig`, `/json`.
//! - [`reload`]: re-reads the rule files on change or SIGHUP and installs them.
//! - [`background`]: low-priority threads for work that must never hold a decision.
//! - [`probe`]: the client side of `ratelimitd health`.
//! - [`allocator`]: the allocator settings of the binaries.
//! - [`app`]: wires settings, rules, store and server, and shuts them down in order.
//!
//! `config` → `rules` ← `limiter`; `service` uses `rules`, `limiter` and `proto`; `server` uses
//! `service`; `admin` uses `service` and `metrics`; `app` uses them all. `config`, `rules` and
//! `limiter` never name tonic or prost (`scripts/test` checks it). docs/architecture.md walks
//! one decision through them.

pub mod admin;
pub mod allocator;
pub mod app;
pub mod background;
pub mod config;
pub mod container;
pub mod envoy_env;
pub mod explain;
pub mod limiter;
pub mod metrics;
pub mod probe;
pub mod proto;
pub mod reload;
pub mod rules;
pub mod server;
pub mod service;
pub mod tls_client;
pub mod traces;
pub mod xds;
