//! ratelimitd: the rate-limit decision service behind Envoy's HTTP rate-limit filter.
//!
//! The modules, and the direction of their dependencies:
//!
//! - [`rules`]: the rule tree, immutable once built, and the descriptor matcher.
//! - [`config`]: YAML rule files → [`rules::RuleSet`], with file:line:column errors.
//! - [`limiter`]: windows, counter keys and the in-memory counter store; turns a matched
//!   request into a decision.
//! - [`service`]: Envoy's `RateLimitService` over gRPC: request validation, the call into the
//!   limiter, and the response with its headers and body.
//! - [`server`]: the gRPC server: the service, health and reflection on a bound listener.
//! - [`probe`]: the client side of `ratelimitd health`.
//! - [`allocator`]: the allocator settings of the binaries.
//! - [`app`]: wires settings, rules, store and server, and shuts them down in order.
//!
//! `config` → `rules` ← `limiter`; `service` uses `rules`, `limiter` and `proto`; `server` uses
//! `service`; `app` uses them all. `config`, `rules` and `limiter` never name tonic or prost.

pub mod allocator;
pub mod app;
pub mod config;
pub mod limiter;
pub mod probe;
pub mod proto;
pub mod rules;
pub mod server;
pub mod service;
