//! Any bytes as a `RateLimitRequest`: read or refused, never a panic, and what is read keeps the
//! reader's promises.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ratelimitd::service::request::{MAX_DESCRIPTORS, MAX_ENTRIES, parse};

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = parse(data) {
        assert!(!request.domain.is_empty());
        assert!(!request.descriptors.is_empty() && request.descriptors.len() <= MAX_DESCRIPTORS);
        for descriptor in &request.descriptors {
            assert!(!descriptor.entries.is_empty() && descriptor.entries.len() <= MAX_ENTRIES);
            assert!(descriptor.entries.iter().all(|(key, _)| !key.is_empty()));
        }
        assert!(request.hits >= 1);
    }
});
