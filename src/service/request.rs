//! Checking a `ShouldRateLimit` request before anything is matched or counted.
//!
//! Everything here comes from a peer, so nothing is trusted: sizes are capped (a request can
//! make ratelimitd allocate only so much), required fields are checked, and every refusal is a
//! gRPC `INVALID_ARGUMENT` with a message that says what was wrong.

use crate::limiter::{Descriptor, LimitOverride, Request};
use crate::proto::{RateLimitRequest, RateLimitUnit};
use crate::rules::Unit;

/// Most descriptors in one request. Envoy sends one per `rate_limits` action on the route.
pub const MAX_DESCRIPTORS: usize = 256;
/// Most entries in one descriptor.
pub const MAX_ENTRIES: usize = 64;
/// Longest entry key, in bytes.
pub const MAX_KEY_BYTES: usize = 1024;
/// Longest entry value, in bytes (a path or a header value fits).
pub const MAX_VALUE_BYTES: usize = 8192;

/// Why a request was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RequestError {
    #[error("domain must not be empty")]
    EmptyDomain,
    #[error("domain is longer than {MAX_KEY_BYTES} bytes")]
    DomainTooLong,
    #[error("the request has no descriptors")]
    NoDescriptors,
    #[error("the request has {0} descriptors; at most {MAX_DESCRIPTORS} are accepted")]
    TooManyDescriptors(usize),
    #[error("descriptor {0} has no entries")]
    NoEntries(usize),
    #[error("descriptor {0} has {1} entries; at most {MAX_ENTRIES} are accepted")]
    TooManyEntries(usize, usize),
    #[error("descriptor {0}, entry {1}: key must not be empty")]
    EmptyKey(usize, usize),
    #[error("descriptor {0}, entry {1}: key is longer than {MAX_KEY_BYTES} bytes")]
    KeyTooLong(usize, usize),
    #[error("descriptor {0}, entry {1}: value is longer than {MAX_VALUE_BYTES} bytes")]
    ValueTooLong(usize, usize),
    #[error("descriptor {0}: limit override has no valid unit")]
    OverrideWithoutUnit(usize),
    #[error("descriptor {0}: is_negative_hits is not supported yet")]
    NegativeHits(usize),
}

impl From<RequestError> for tonic::Status {
    fn from(error: RequestError) -> tonic::Status {
        tonic::Status::invalid_argument(error.to_string())
    }
}

/// Validates `request`, taking its strings rather than copying them.
pub fn validate(request: RateLimitRequest) -> Result<Request, RequestError> {
    if request.domain.is_empty() {
        return Err(RequestError::EmptyDomain);
    }
    if request.domain.len() > MAX_KEY_BYTES {
        return Err(RequestError::DomainTooLong);
    }
    match request.descriptors.len() {
        0 => return Err(RequestError::NoDescriptors),
        n if n > MAX_DESCRIPTORS => return Err(RequestError::TooManyDescriptors(n)),
        _ => {}
    }
    // Request-level hits_addend: 0 means 1 (proto3 cannot tell unset from 0).
    let request_hits = u64::from(request.hits_addend.max(1));
    let mut descriptors = Vec::with_capacity(request.descriptors.len());
    for (i, descriptor) in request.descriptors.into_iter().enumerate() {
        match descriptor.entries.len() {
            0 => return Err(RequestError::NoEntries(i)),
            n if n > MAX_ENTRIES => return Err(RequestError::TooManyEntries(i, n)),
            _ => {}
        }
        if descriptor.is_negative_hits {
            return Err(RequestError::NegativeHits(i));
        }
        let mut entries = Vec::with_capacity(descriptor.entries.len());
        for (j, entry) in descriptor.entries.into_iter().enumerate() {
            if entry.key.is_empty() {
                return Err(RequestError::EmptyKey(i, j));
            }
            if entry.key.len() > MAX_KEY_BYTES {
                return Err(RequestError::KeyTooLong(i, j));
            }
            if entry.value.len() > MAX_VALUE_BYTES {
                return Err(RequestError::ValueTooLong(i, j));
            }
            entries.push((entry.key, entry.value));
        }
        let limit_override = match descriptor.limit {
            None => None,
            Some(limit) => Some(LimitOverride {
                requests_per_unit: limit.requests_per_unit,
                unit: unit_of(limit.unit).ok_or(RequestError::OverrideWithoutUnit(i))?,
            }),
        };
        descriptors.push(Descriptor {
            entries,
            limit_override,
            // Descriptor-level hits_addend, when set, wins; there 0 means "check only".
            hits: descriptor.hits_addend.map_or(request_hits, |h| h.value),
        });
    }
    Ok(Request {
        domain: request.domain,
        descriptors,
    })
}

fn unit_of(code: i32) -> Option<Unit> {
    let unit = match RateLimitUnit::try_from(code).ok()? {
        RateLimitUnit::Unknown => return None,
        RateLimitUnit::Second => Unit::Second,
        RateLimitUnit::Minute => Unit::Minute,
        RateLimitUnit::Hour => Unit::Hour,
        RateLimitUnit::Day => Unit::Day,
        RateLimitUnit::Month => Unit::Month,
        RateLimitUnit::Year => Unit::Year,
    };
    Some(unit)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::RateLimitDescriptor;
    use crate::proto::rate_limit_descriptor::{Entry, RateLimitOverride};
    use envoy_types::pb::google::protobuf::UInt64Value;

    fn descriptor(entries: &[(&str, &str)]) -> RateLimitDescriptor {
        RateLimitDescriptor {
            entries: entries
                .iter()
                .map(|(k, v)| Entry {
                    key: k.to_string(),
                    value: v.to_string(),
                })
                .collect(),
            ..Default::default()
        }
    }

    fn request(domain: &str, descriptors: Vec<RateLimitDescriptor>) -> RateLimitRequest {
        RateLimitRequest {
            domain: domain.to_string(),
            descriptors,
            hits_addend: 0,
        }
    }

    #[test]
    fn refuses_what_envoy_would_never_send() {
        let table = [
            (
                request("", vec![descriptor(&[("k", "v")])]),
                RequestError::EmptyDomain,
            ),
            (request("d", vec![]), RequestError::NoDescriptors),
            (
                request("d", vec![descriptor(&[])]),
                RequestError::NoEntries(0),
            ),
            (
                request(
                    "d",
                    vec![descriptor(&[("k", "v")]), descriptor(&[("", "v")])],
                ),
                RequestError::EmptyKey(1, 0),
            ),
            (
                request("d", vec![descriptor(&[("k", "v")]); 257]),
                RequestError::TooManyDescriptors(257),
            ),
            (
                request("d", vec![descriptor(&[("k", &"x".repeat(8193))])]),
                RequestError::ValueTooLong(0, 0),
            ),
        ];
        for (request, expected) in table {
            assert_eq!(validate(request), Err(expected));
        }
    }

    #[test]
    fn hits_come_from_the_descriptor_then_the_request() {
        let mut with_own = descriptor(&[("k", "v")]);
        with_own.hits_addend = Some(UInt64Value { value: 0 });
        let mut req = request("d", vec![descriptor(&[("k", "v")]), with_own]);
        req.hits_addend = 5;
        let validated = validate(req).expect("valid");
        assert_eq!(validated.descriptors[0].hits, 5);
        assert_eq!(
            validated.descriptors[1].hits, 0,
            "0 on a descriptor checks only"
        );
        let unset = validate(request("d", vec![descriptor(&[("k", "v")])])).expect("valid");
        assert_eq!(unset.descriptors[0].hits, 1, "0 on the request means 1");
    }

    #[test]
    fn an_override_needs_a_known_unit() {
        let mut d = descriptor(&[("k", "v")]);
        d.limit = Some(RateLimitOverride {
            requests_per_unit: 3,
            unit: RateLimitUnit::Unknown as i32,
        });
        assert_eq!(
            validate(request("d", vec![d])),
            Err(RequestError::OverrideWithoutUnit(0))
        );
    }
}
