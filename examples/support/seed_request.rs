//! The seed-shaped request that the benchmarks send, shared by `examples/loadgen.rs` and
//! `benches/decision.rs` (included with `#[path]`).

use ratelimitd::proto::rate_limit_descriptor::Entry;
use ratelimitd::proto::{RateLimitDescriptor, RateLimitRequest};

/// Domain `mega-api`, one descriptor `(api_key, key), (bucket, default)`.
pub fn seed_request(key: &str) -> RateLimitRequest {
    let entry = |key: &str, value: &str| Entry {
        key: key.to_string(),
        value: value.to_string(),
    };
    RateLimitRequest {
        domain: "mega-api".to_string(),
        descriptors: vec![RateLimitDescriptor {
            entries: vec![entry("api_key", key), entry("bucket", "default")],
            ..Default::default()
        }],
        hits_addend: 0,
    }
}
