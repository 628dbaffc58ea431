//! The decision path without the network: reading the request's bytes, rule matching,
//! counting and encoding the answer, as one gRPC call runs them.
//!
//!     cargo bench --bench decision
//!
//! `hot key` is one key over its limit (the read-only path); `1M keys` cycles through a million
//! keys whose counters (two windows each, the seed's default bucket) are all live.

use std::path::Path;
use std::sync::Arc;

#[path = "../examples/support/seed_request.rs"]
mod seed_request;
use seed_request::seed_request;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use prost::Message;
use ratelimitd::limiter::{Budget, Limiter, MemoryStore};
use ratelimitd::metrics::Metrics;
use ratelimitd::service::{Answer, Decided, LiveRules, ResponseSettings, RlsService};

/// The same allocator as ratelimitd (see `ratelimitd::allocator`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn service() -> (Arc<RlsService>, Arc<Limiter>) {
    let rules = ratelimitd::config::load(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/config")))
        .unwrap_or_else(|e| panic!("config/ loads: {e}"));
    let limiter = Arc::new(Limiter::new(MemoryStore::new(Budget::keys(10_000_000))));
    let metrics = Arc::new(Metrics::new().unwrap_or_else(|e| panic!("metrics: {e}")));
    let rules = LiveRules::new(rules, String::new(), metrics, false);
    let service = RlsService::new(
        Arc::new(rules),
        Arc::clone(&limiter),
        ResponseSettings::default(),
    );
    (Arc::new(service), limiter)
}

/// The answer of a decision in memory, which is made at once: no future, no runtime.
fn ready(decided: Decided) -> Result<Answer, tonic::Status> {
    match decided {
        Decided::Now(answer) => answer,
        Decided::Later(_) => panic!("a decision in memory waited"),
    }
}

fn decision(c: &mut Criterion) {
    ratelimitd::allocator::configure();
    let mut group = c.benchmark_group("decision");

    let (hot, _) = service();
    let hot_request = Bytes::from(seed_request("hot-key").encode_to_vec());
    for _ in 0..100 {
        let _ = ready(hot.decide(hot_request.clone()));
    }
    // Each iteration reads the request's bytes (as tonic hands them over), decides, and
    // encodes the answer (as tonic would) into a buffer that is reused.
    let mut out = Vec::with_capacity(1024);
    let mut answer = |answer: Result<Answer, tonic::Status>| {
        out.clear();
        if let Ok(answer) = answer {
            answer.encode(&mut out);
        }
        out.len()
    };
    group.bench_function("hot key (over limit)", |b| {
        b.iter(|| answer(ready(hot.decide(hot_request.clone()))))
    });

    let (wide, wide_limiter) = service();
    const KEYS: usize = 1_000_000;
    let requests: Vec<Bytes> = (0..KEYS)
        .map(|i| Bytes::from(seed_request(&format!("key-{i}")).encode_to_vec()))
        .collect();
    for request in &requests {
        let _ = ready(wide.decide(request.clone()));
    }
    let mut next = 0;
    group.bench_function("1M keys (2 live windows each)", |b| {
        b.iter(|| {
            next = (next + 7919) % KEYS;
            answer(ready(wide.decide(requests[next].clone())))
        })
    });

    // The sweeper's pass over a million live keys, none of whose windows has ended.
    group.sample_size(10);
    group.bench_function("sweep 1M live keys (nothing to remove)", |b| {
        b.iter(|| {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            wide_limiter.store().sweep(now)
        })
    });
    group.sample_size(100);

    group.finish();
}

criterion_group!(benches, decision);
criterion_main!(benches);
