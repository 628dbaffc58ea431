//! Reading a `ShouldRateLimit` request from its protobuf bytes, checked before anything is
//! matched or counted.
//!
//! The request is read in place: the domain, keys and values are slices of the message as it
//! arrived, so reading one allocates nothing (a generated decoder makes a `String` of each, and
//! a `Vec` of each list). Only what ratelimitd uses is kept; unknown fields are skipped, as
//! protobuf requires.
//!
//! Everything here comes from a peer, so nothing is trusted: sizes are capped (a request can
//! make ratelimitd hold only so much), the wire format is checked as it is read, required
//! fields are checked, and every refusal is a gRPC `INVALID_ARGUMENT` with a message that says
//! what was wrong.

use smallvec::SmallVec;

use crate::limiter::{Descriptor, LimitOverride, Request};
use crate::rules::Unit;

/// Most descriptors in one request. Envoy sends one per `rate_limits` action on the route.
pub const MAX_DESCRIPTORS: usize = 256;
/// Most entries in one descriptor.
pub const MAX_ENTRIES: usize = 64;
/// Longest entry key, in bytes.
pub const MAX_KEY_BYTES: usize = 1024;
/// Longest entry value, in bytes (a path or a header value fits).
pub const MAX_VALUE_BYTES: usize = 8192;
/// Most hits one descriptor may add (its `hits_addend`): the largest limit a rule can state
/// (`requests_per_unit` is 32 bits), so more could never be admitted. The request's own
/// `hits_addend` is 32 bits already. Bounded, a request adds at most 256 × 2³² hits, so no sum
/// in the stores, in Redis (whose Lua numbers are exact to 2⁵³) or in the metrics can wrap; a
/// `hits_addend` of 10¹⁸ once made Redis's script fail for every request batched with it.
pub const MAX_HITS: u64 = u32::MAX as u64;

/// Why a request was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RequestError {
    #[error("not a RateLimitRequest: {0}")]
    Malformed(&'static str),
    #[error("domain must not be empty")]
    EmptyDomain,
    #[error("domain is longer than {MAX_KEY_BYTES} bytes")]
    DomainTooLong,
    #[error("domain is not UTF-8")]
    DomainNotUtf8,
    #[error("the request has no descriptors")]
    NoDescriptors,
    #[error("the request has more than {MAX_DESCRIPTORS} descriptors")]
    TooManyDescriptors,
    #[error("descriptor {0} has no entries")]
    NoEntries(usize),
    #[error("descriptor {0} has more than {MAX_ENTRIES} entries")]
    TooManyEntries(usize),
    #[error("descriptor {0}, entry {1}: key must not be empty")]
    EmptyKey(usize, usize),
    #[error("descriptor {0}, entry {1}: key is longer than {MAX_KEY_BYTES} bytes")]
    KeyTooLong(usize, usize),
    #[error("descriptor {0}, entry {1}: value is longer than {MAX_VALUE_BYTES} bytes")]
    ValueTooLong(usize, usize),
    #[error("descriptor {0}, entry {1}: key or value is not UTF-8")]
    EntryNotUtf8(usize, usize),
    #[error("descriptor {0}: limit override has no valid unit")]
    OverrideWithoutUnit(usize),
    #[error("descriptor {0}: is_negative_hits is not supported yet")]
    NegativeHits(usize),
    #[error("descriptor {0}: hits_addend is more than {MAX_HITS}")]
    TooManyHits(usize),
}

impl From<RequestError> for tonic::Status {
    fn from(error: RequestError) -> tonic::Status {
        tonic::Status::invalid_argument(error.to_string())
    }
}

/// Reads and checks one encoded `envoy.service.ratelimit.v3.RateLimitRequest`, in one pass.
pub fn parse(message: &[u8]) -> Result<Request<'_>, RequestError> {
    let mut request = Request {
        domain: "",
        descriptors: SmallVec::new(),
        hits: 1,
    };
    let mut fields = Fields(message);
    while let Some((number, value)) = fields.next_field()? {
        match (number, value) {
            (1, Value::Bytes(bytes)) => {
                if bytes.len() > MAX_KEY_BYTES {
                    return Err(RequestError::DomainTooLong);
                }
                request.domain =
                    std::str::from_utf8(bytes).map_err(|_| RequestError::DomainNotUtf8)?;
            }
            (2, Value::Bytes(bytes)) => {
                let i = request.descriptors.len();
                if i == MAX_DESCRIPTORS {
                    return Err(RequestError::TooManyDescriptors);
                }
                request.descriptors.push(descriptor(i, bytes)?);
            }
            // 0 means 1: proto3 cannot tell unset from 0.
            (3, Value::Varint(n)) => request.hits = u64::from(n as u32).max(1),
            (1..=3, _) => return Err(wrong_type()),
            _ => {}
        }
    }
    if request.domain.is_empty() {
        return Err(RequestError::EmptyDomain);
    }
    if request.descriptors.is_empty() {
        return Err(RequestError::NoDescriptors);
    }
    Ok(request)
}

/// Reads and checks `envoy.extensions.common.ratelimit.v3.RateLimitDescriptor`, number `i` in
/// its request.
fn descriptor(i: usize, message: &[u8]) -> Result<Descriptor<'_>, RequestError> {
    let mut descriptor = Descriptor {
        entries: SmallVec::new(),
        limit_override: None,
        hits: None,
    };
    // `limit`: requests per unit and the unit's code, when present.
    let mut limit: Option<(u32, i32)> = None;
    let mut fields = Fields(message);
    while let Some((number, value)) = fields.next_field()? {
        match (number, value) {
            (1, Value::Bytes(bytes)) => {
                let j = descriptor.entries.len();
                if j == MAX_ENTRIES {
                    return Err(RequestError::TooManyEntries(i));
                }
                descriptor.entries.push(entry(i, j, bytes)?);
            }
            // Embedded messages that appear twice are merged, field by field.
            (2, Value::Bytes(bytes)) => {
                let (mut requests, mut unit) = limit.unwrap_or((0, 0));
                let mut fields = Fields(bytes);
                while let Some(field) = fields.next_field()? {
                    match field {
                        (1, Value::Varint(n)) => requests = n as u32,
                        (2, Value::Varint(n)) => unit = n as i32,
                        (1 | 2, _) => return Err(wrong_type()),
                        _ => {}
                    }
                }
                limit = Some((requests, unit));
            }
            // A wrapper message: present and 0 ("check only") differ from absent.
            (3, Value::Bytes(bytes)) => {
                let mut hits = descriptor.hits.unwrap_or(0);
                let mut fields = Fields(bytes);
                while let Some(field) = fields.next_field()? {
                    match field {
                        (1, Value::Varint(n)) if n > MAX_HITS => {
                            return Err(RequestError::TooManyHits(i));
                        }
                        (1, Value::Varint(n)) => hits = n,
                        (1, _) => return Err(wrong_type()),
                        _ => {}
                    }
                }
                descriptor.hits = Some(hits);
            }
            (4, Value::Varint(n)) if n != 0 => return Err(RequestError::NegativeHits(i)),
            (4, Value::Varint(_)) => {}
            (1..=4, _) => return Err(wrong_type()),
            _ => {}
        }
    }
    if descriptor.entries.is_empty() {
        return Err(RequestError::NoEntries(i));
    }
    if let Some((requests_per_unit, unit)) = limit {
        descriptor.limit_override = Some(LimitOverride {
            requests_per_unit,
            unit: unit_of(unit).ok_or(RequestError::OverrideWithoutUnit(i))?,
        });
    }
    Ok(descriptor)
}

/// Reads and checks `RateLimitDescriptor.Entry` number `j` of descriptor `i`.
fn entry(i: usize, j: usize, message: &[u8]) -> Result<(&str, &str), RequestError> {
    let (mut key, mut value): (&[u8], &[u8]) = (&[], &[]);
    let mut fields = Fields(message);
    while let Some(field) = fields.next_field()? {
        match field {
            (1, Value::Bytes(bytes)) => key = bytes,
            (2, Value::Bytes(bytes)) => value = bytes,
            (1 | 2, _) => return Err(wrong_type()),
            _ => {}
        }
    }
    if key.is_empty() {
        return Err(RequestError::EmptyKey(i, j));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(RequestError::KeyTooLong(i, j));
    }
    if value.len() > MAX_VALUE_BYTES {
        return Err(RequestError::ValueTooLong(i, j));
    }
    let text = |bytes| std::str::from_utf8(bytes).map_err(|_| RequestError::EntryNotUtf8(i, j));
    Ok((text(key)?, text(value)?))
}

fn wrong_type() -> RequestError {
    RequestError::Malformed("a field has the wrong wire type")
}

/// `envoy.type.v3.RateLimitUnit` (the override's unit); `None` for UNKNOWN or a code it lacks.
fn unit_of(code: i32) -> Option<Unit> {
    let unit = match code {
        1 => Unit::Second,
        2 => Unit::Minute,
        3 => Unit::Hour,
        4 => Unit::Day,
        5 => Unit::Month,
        6 => Unit::Year,
        _ => return None,
    };
    Some(unit)
}

/// One field's value, by wire type (fixed-width values are skipped: no field read here has one).
enum Value<'m> {
    Varint(u64),
    Bytes(&'m [u8]),
    Fixed,
}

/// The fields of one message, in wire order.
struct Fields<'m>(&'m [u8]);

impl<'m> Fields<'m> {
    /// The next field's number and value; `None` at the end of the message.
    #[inline]
    fn next_field(&mut self) -> Result<Option<(u64, Value<'m>)>, RequestError> {
        if self.0.is_empty() {
            return Ok(None);
        }
        let tag = self.varint()?;
        let value = match tag & 7 {
            0 => Value::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Value::Fixed
            }
            2 => {
                let len = usize::try_from(self.varint()?)
                    .map_err(|_| RequestError::Malformed("a length is too large"))?;
                Value::Bytes(self.take(len)?)
            }
            5 => {
                self.take(4)?;
                Value::Fixed
            }
            _ => return Err(RequestError::Malformed("unsupported wire type")),
        };
        match tag >> 3 {
            0 => Err(RequestError::Malformed("field number 0")),
            number => Ok(Some((number, value))),
        }
    }

    /// A base-128 varint: at most ten bytes.
    #[inline]
    fn varint(&mut self) -> Result<u64, RequestError> {
        // Tags and short lengths: one byte.
        if let Some((&byte, rest)) = self.0.split_first()
            && byte < 0x80
        {
            self.0 = rest;
            return Ok(u64::from(byte));
        }
        let mut value = 0u64;
        for (i, &byte) in self.0.iter().take(10).enumerate() {
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte < 0x80 {
                self.0 = &self.0[i + 1..];
                return Ok(value);
            }
        }
        Err(RequestError::Malformed("a varint is cut short or too long"))
    }

    #[inline]
    fn take(&mut self, len: usize) -> Result<&'m [u8], RequestError> {
        if len > self.0.len() {
            return Err(RequestError::Malformed(
                "a field runs past the end of its message",
            ));
        }
        let (taken, rest) = self.0.split_at(len);
        self.0 = rest;
        Ok(taken)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::rate_limit_descriptor::{Entry, RateLimitOverride};
    use crate::proto::{RateLimitDescriptor, RateLimitRequest, RateLimitUnit};
    use envoy_types::pb::google::protobuf::UInt64Value;
    use prost::Message;

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

    fn check(request: &RateLimitRequest) -> Result<Request<'static>, RequestError> {
        let bytes: &'static [u8] = request.encode_to_vec().leak();
        parse(bytes)
    }

    #[test]
    fn reads_what_envoy_sends() {
        let mut with_override = descriptor(&[("api_key", "k1"), ("bucket", "default")]);
        with_override.limit = Some(RateLimitOverride {
            requests_per_unit: 42,
            unit: RateLimitUnit::Hour as i32,
        });
        let req = request("mega-api", vec![with_override, descriptor(&[("path", "")])]);
        let read = check(&req).expect("valid");
        assert_eq!(read.domain, "mega-api");
        assert_eq!(read.descriptors.len(), 2);
        assert_eq!(
            read.descriptors[0].entries.as_slice(),
            &[("api_key", "k1"), ("bucket", "default")]
        );
        assert_eq!(
            read.descriptors[0].limit_override,
            Some(LimitOverride {
                requests_per_unit: 42,
                unit: Unit::Hour
            })
        );
        assert_eq!(read.descriptors[1].entries.as_slice(), &[("path", "")]);
        assert_eq!(read.descriptors[1].limit_override, None);
        assert_eq!(read.hits_of(&read.descriptors[1]), 1);
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
                RequestError::TooManyDescriptors,
            ),
            (
                request("d", vec![descriptor(&[("k", "v"); 65])]),
                RequestError::TooManyEntries(0),
            ),
            (
                request("d", vec![descriptor(&[("k", &"x".repeat(8193))])]),
                RequestError::ValueTooLong(0, 0),
            ),
            (
                request("d", vec![descriptor(&[(&"k".repeat(1025), "v")])]),
                RequestError::KeyTooLong(0, 0),
            ),
        ];
        for (request, expected) in table {
            assert_eq!(check(&request), Err(expected));
        }
        let mut negative = descriptor(&[("k", "v")]);
        negative.is_negative_hits = true;
        assert_eq!(
            check(&request("d", vec![negative])),
            Err(RequestError::NegativeHits(0))
        );
        let hits = |value: u64| {
            let mut heavy = descriptor(&[("k", "v")]);
            heavy.hits_addend = Some(UInt64Value { value });
            request("d", vec![descriptor(&[("a", "b")]), heavy])
        };
        assert_eq!(
            check(&hits(1_000_000_000_000_000_000)),
            Err(RequestError::TooManyHits(1))
        );
        assert_eq!(
            check(&hits(MAX_HITS + 1)),
            Err(RequestError::TooManyHits(1))
        );
        let most = check(&hits(MAX_HITS)).expect("the most hits a limit can hold");
        assert_eq!(most.hits_of(&most.descriptors[1]), MAX_HITS);
    }

    #[test]
    fn hits_come_from_the_descriptor_then_the_request() {
        let mut with_own = descriptor(&[("k", "v")]);
        with_own.hits_addend = Some(UInt64Value { value: 0 });
        let mut req = request("d", vec![descriptor(&[("k", "v")]), with_own]);
        req.hits_addend = 5;
        let read = check(&req).expect("valid");
        assert_eq!(read.hits_of(&read.descriptors[0]), 5);
        assert_eq!(
            read.hits_of(&read.descriptors[1]),
            0,
            "0 on a descriptor checks only"
        );
        let unset = check(&request("d", vec![descriptor(&[("k", "v")])])).expect("valid");
        assert_eq!(
            unset.hits_of(&unset.descriptors[0]),
            1,
            "0 on the request means 1"
        );
    }

    #[test]
    fn an_override_needs_a_known_unit() {
        for unit in [RateLimitUnit::Unknown as i32, 99] {
            let mut d = descriptor(&[("k", "v")]);
            d.limit = Some(RateLimitOverride {
                requests_per_unit: 3,
                unit,
            });
            assert_eq!(
                check(&request("d", vec![d])),
                Err(RequestError::OverrideWithoutUnit(0))
            );
        }
    }

    #[test]
    fn unknown_fields_are_skipped_and_the_last_value_wins() {
        let mut bytes = request("first", vec![descriptor(&[("k", "v")])]).encode_to_vec();
        // Field 9 of each wire type a newer Envoy could add, then domain again.
        bytes.extend_from_slice(&[9 << 3, 150, 1]); // varint
        bytes.extend_from_slice(&[(9 << 3) | 1, 0, 0, 0, 0, 0, 0, 0, 0]); // fixed64
        bytes.extend_from_slice(&[(9 << 3) | 2, 2, b'x', b'y']); // length-delimited
        bytes.extend_from_slice(&[(9 << 3) | 5, 0, 0, 0, 0]); // fixed32
        bytes.extend_from_slice(&[(1 << 3) | 2, 6]);
        bytes.extend_from_slice(b"second");
        let read = parse(&bytes).expect("valid");
        assert_eq!(read.domain, "second");
        assert_eq!(read.descriptors[0].entries.as_slice(), &[("k", "v")]);
    }

    #[test]
    fn broken_bytes_are_refused_never_read_past() {
        let good = request("d", vec![descriptor(&[("key", "value")])]).encode_to_vec();
        // Every truncation of a valid message, and every single-byte change, is either read or
        // refused; none panics or reads out of bounds.
        for cut in 0..good.len() {
            let _ = parse(&good[..cut]);
        }
        for at in 0..good.len() {
            for byte in [0x00, 0x07, 0x0f, 0x7f, 0x80, 0xff] {
                let mut bad = good.clone();
                bad[at] = byte;
                let _ = parse(&bad);
            }
        }
        let table: [(&[u8], RequestError); 5] = [
            (
                &[0x0a, 0x05, b'd'],
                RequestError::Malformed("a field runs past the end of its message"),
            ),
            (
                &[0x08],
                RequestError::Malformed("a varint is cut short or too long"),
            ),
            (
                &[0x80; 11],
                RequestError::Malformed("a varint is cut short or too long"),
            ),
            (&[0x0b], RequestError::Malformed("unsupported wire type")),
            (
                &[0x08, 0x01],
                RequestError::Malformed("a field has the wrong wire type"),
            ),
        ];
        for (bytes, expected) in table {
            assert_eq!(parse(bytes), Err(expected), "{bytes:?}");
        }
        let not_utf8 = [0x0a, 0x02, 0xc3, 0x28];
        assert_eq!(parse(&not_utf8), Err(RequestError::DomainNotUtf8));
    }
}
