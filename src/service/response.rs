//! Turning a [`Decision`] into Envoy's `RateLimitResponse`, written straight to protobuf bytes.
//!
//! Envoy applies what we send: `response_headers_to_add` go on the upstream's response when the
//! answer is OK and on Envoy's own 429 when it is OVER_LIMIT, and `raw_body` becomes the 429's
//! body. So the client-facing contract of the seed policy (headers on every response,
//! `Retry-After` and a JSON body on a 429) is built here. The overall code is never UNKNOWN:
//! Envoy lets UNKNOWN through, so failures travel as gRPC errors instead.
//!
//! An [`Answer`] is encoded by hand, as a generated encoder would (fields in number order,
//! defaults left out), but from the decision itself and into a buffer each thread keeps: the
//! header values are numbers formatted as they are written, so answering allocates nothing. A
//! generated `RateLimitResponse` would need a `String` for every header name and value (about
//! 15 allocations for a 429). [`Answer::to_message`] decodes the bytes back for whoever needs
//! the message (the HTTP `/json` endpoint, tests).

use std::sync::Arc;

use bytes::BufMut;
use prost::Message;

use crate::limiter::window::whole_seconds;
use crate::limiter::{Decision, DescriptorDecision};
use crate::proto::RateLimitResponse;
use crate::rules::Unit;

/// The seed policy's error body for a 429.
pub const DEFAULT_OVER_LIMIT_BODY: &str = r#"{ "error": { "type": "rate_limit_error", "code": 429, "message": "Rate limit exceeded. Please retry later." } }"#;

/// Which rate-limit headers go on responses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HeaderStyle {
    /// `RateLimit-Limit`, `RateLimit-Remaining`, `RateLimit-Reset` (envoyproxy/ratelimit's names).
    #[default]
    RateLimit,
    /// `X-RateLimit-Limit`, `X-RateLimit-Remaining`, `X-RateLimit-Reset` (Limitador's).
    XRateLimit,
    /// IETF draft-10: `RateLimit: "name";r=…;t=…` and `RateLimit-Policy: "name";q=…;w=…`.
    IetfDraft10,
    /// No rate-limit headers (`Retry-After` and the body still go on a 429).
    None,
}

/// How answers look to the client behind Envoy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseSettings {
    pub header_style: HeaderStyle,
    /// The 429 body; `None` leaves Envoy's own.
    pub over_limit_body: Option<String>,
    /// The 429 body's `content-type`.
    pub over_limit_content_type: String,
}

impl Default for ResponseSettings {
    fn default() -> Self {
        ResponseSettings {
            header_style: HeaderStyle::RateLimit,
            over_limit_body: Some(DEFAULT_OVER_LIMIT_BODY.to_string()),
            over_limit_content_type: "application/json".to_string(),
        }
    }
}

/// The response to one request: a decision and how answers look.
#[derive(Debug, Clone)]
pub struct Answer {
    decision: Decision,
    settings: Arc<ResponseSettings>,
}

/// `RateLimitResponse.Code`.
const CODE_OK: u64 = 1;
const CODE_OVER_LIMIT: u64 = 2;

impl Answer {
    pub fn new(decision: Decision, settings: Arc<ResponseSettings>) -> Answer {
        Answer { decision, settings }
    }

    pub fn decision(&self) -> &Decision {
        &self.decision
    }

    /// Writes the answer as an encoded `envoy.service.ratelimit.v3.RateLimitResponse`.
    pub fn encode(&self, buf: &mut impl BufMut) {
        SCRATCH.with_borrow_mut(|scratch| {
            scratch.clear();
            self.write(&mut Out(scratch));
            buf.put_slice(scratch);
            // An answer for hundreds of descriptors does not keep its room.
            if scratch.capacity() > SCRATCH_BYTES {
                *scratch = Vec::with_capacity(SCRATCH_BYTES);
            }
        });
    }

    pub fn encode_to_vec(&self) -> Vec<u8> {
        let mut bytes = Vec::new();
        self.encode(&mut bytes);
        bytes
    }

    /// The answer as a generated message (for `/json`, and for tests).
    pub fn to_message(&self) -> Result<RateLimitResponse, prost::DecodeError> {
        RateLimitResponse::decode(self.encode_to_vec().as_slice())
    }

    fn write(&self, out: &mut Out<'_>) {
        let decision = &self.decision;
        out.varint_field(
            1,
            if decision.over_limit {
                CODE_OVER_LIMIT
            } else {
                CODE_OK
            },
        );
        for status in &decision.descriptors {
            out.message(2, |out| write_status(out, status));
        }
        if let Some(report) = &decision.headline {
            let limit = u64::from(report.requests_per_unit);
            let remaining = u64::from(report.remaining);
            let reset = whole_seconds(report.reset_in);
            let names = match self.settings.header_style {
                HeaderStyle::RateLimit => {
                    Some(["ratelimit-limit", "ratelimit-remaining", "ratelimit-reset"])
                }
                HeaderStyle::XRateLimit => Some([
                    "x-ratelimit-limit",
                    "x-ratelimit-remaining",
                    "x-ratelimit-reset",
                ]),
                HeaderStyle::IetfDraft10 | HeaderStyle::None => None,
            };
            if let Some([limit_name, remaining_name, reset_name]) = names {
                out.header(limit_name, |out| out.number(limit));
                out.header(remaining_name, |out| out.number(remaining));
                out.header(reset_name, |out| out.number(reset));
            }
            if self.settings.header_style == HeaderStyle::IetfDraft10 {
                // Structured-field items: `"name";q=60;w=60` and `"name";r=18;t=31`.
                let name = report.name.as_deref().unwrap_or("default");
                let window = u64::from(report.window.seconds());
                out.header("ratelimit-policy", |out| {
                    out.item(name, [(b'q', limit), (b'w', window)])
                });
                out.header("ratelimit", |out| {
                    out.item(name, [(b'r', remaining), (b't', reset)])
                });
            }
        }
        if decision.over_limit {
            let retry_after = decision.retry_after.map_or(1, |d| whole_seconds(d).max(1));
            out.header("retry-after", |out| out.number(retry_after));
            if let Some(body) = &self.settings.over_limit_body {
                let content_type = self.settings.over_limit_content_type.as_bytes();
                out.header("content-type", |out| out.bytes(content_type));
                out.bytes_field(5, body.as_bytes());
            }
        }
    }
}

/// `DescriptorStatus`: the code, and for a limited descriptor its window (`current_limit`),
/// `limit_remaining` and `duration_until_reset`.
fn write_status(out: &mut Out<'_>, status: &DescriptorDecision) {
    out.varint_field(
        1,
        if status.over_limit {
            CODE_OVER_LIMIT
        } else {
            CODE_OK
        },
    );
    if let Some(report) = &status.report {
        out.message(2, |out| {
            out.varint_field(1, u64::from(report.requests_per_unit));
            out.varint_field(2, unit_code(report.window.unit()));
            if let Some(name) = report.name.as_deref() {
                out.bytes_field(3, name.as_bytes());
            }
        });
        out.varint_field(3, u64::from(report.remaining));
        out.message(4, |out| out.varint_field(1, whole_seconds(report.reset_in)));
    }
}

/// `RateLimitResponse.RateLimit.Unit`.
fn unit_code(unit: Unit) -> u64 {
    match unit {
        Unit::Second => 1,
        Unit::Minute => 2,
        Unit::Hour => 3,
        Unit::Day => 4,
        Unit::Month => 5,
        Unit::Year => 6,
        Unit::Week => 7,
    }
}

/// Room for the usual answer (a 429 for two descriptors is about 330 bytes).
const SCRATCH_BYTES: usize = 1024;

thread_local! {
    /// Where each thread writes its answers before handing them to tonic: allocated once per
    /// thread, so encoding allocates nothing.
    static SCRATCH: std::cell::RefCell<Vec<u8>> =
        std::cell::RefCell::new(Vec::with_capacity(SCRATCH_BYTES));
}

/// Protobuf output. Every field number here is below 16, so every tag is one byte.
struct Out<'v>(&'v mut Vec<u8>);

/// Wire types.
const VARINT: u8 = 0;
const LENGTH_DELIMITED: u8 = 2;

impl Out<'_> {
    fn varint(&mut self, mut value: u64) {
        while value >= 0x80 {
            self.0.push((value as u8) | 0x80);
            value >>= 7;
        }
        self.0.push(value as u8);
    }

    /// A varint field; proto3 leaves out a 0.
    fn varint_field(&mut self, field: u8, value: u64) {
        if value != 0 {
            self.0.push((field << 3) | VARINT);
            self.varint(value);
        }
    }

    /// A string or bytes field; proto3 leaves out an empty one.
    fn bytes_field(&mut self, field: u8, bytes: &[u8]) {
        if !bytes.is_empty() {
            self.0.push((field << 3) | LENGTH_DELIMITED);
            self.varint(bytes.len() as u64);
            self.0.extend_from_slice(bytes);
        }
    }

    /// An embedded message written by `body`, present even when empty. Its length goes in
    /// front once known: one byte is kept for it, and the body moved along in the rare case
    /// that it needs more (128 bytes and longer).
    fn message(&mut self, field: u8, body: impl FnOnce(&mut Out<'_>)) {
        self.0.push((field << 3) | LENGTH_DELIMITED);
        let at = self.0.len();
        self.0.push(0);
        body(self);
        let len = self.0.len() - at - 1;
        if len < 0x80 {
            self.0[at] = len as u8;
        } else {
            let mut prefix = Vec::with_capacity(10);
            Out(&mut prefix).varint(len as u64);
            self.0.splice(at..=at, prefix);
        }
    }

    /// A `HeaderValue { key, value }` of `response_headers_to_add`.
    fn header(&mut self, key: &str, value: impl FnOnce(&mut Out<'_>)) {
        self.message(3, |out| {
            out.bytes_field(1, key.as_bytes());
            out.message(2, value);
        });
    }

    fn bytes(&mut self, bytes: &[u8]) {
        self.0.extend_from_slice(bytes);
    }

    fn number(&mut self, n: u64) {
        self.bytes(itoa::Buffer::new().format(n).as_bytes());
    }

    fn item(&mut self, name: &str, params: [(u8, u64); 2]) {
        self.0.push(b'"');
        self.bytes(name.as_bytes());
        self.0.push(b'"');
        for (key, value) in params {
            self.bytes(&[b';', key, b'=']);
            self.number(value);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::limiter::WindowReport;
    use crate::proto::rate_limit_response::{Code, rate_limit};
    use crate::rules::Window;

    fn report(name: Option<&str>, remaining: u32, over_limit: bool) -> WindowReport {
        WindowReport {
            requests_per_unit: 60,
            window: Window::of(Unit::Minute),
            name: name.map(str::to_string),
            remaining,
            reset_in: Duration::from_millis(30_200),
            over_limit,
            shadow_mode: false,
        }
    }

    fn answer(style: HeaderStyle, name: Option<&str>, over_limit: bool) -> Answer {
        let limited = report(name, if over_limit { 0 } else { 18 }, over_limit);
        let decision = Decision {
            domain_known: true,
            over_limit,
            descriptors: smallvec::smallvec![
                DescriptorDecision {
                    over_limit,
                    report: Some(limited.clone()),
                },
                DescriptorDecision {
                    over_limit: false,
                    report: None,
                },
            ],
            headline: Some(limited),
            retry_after: over_limit.then_some(Duration::from_millis(30_200)),
        };
        let settings = ResponseSettings {
            header_style: style,
            ..ResponseSettings::default()
        };
        Answer::new(decision, Arc::new(settings))
    }

    fn headers(message: &RateLimitResponse) -> Vec<(String, String)> {
        message
            .response_headers_to_add
            .iter()
            .map(|h| (h.key.clone(), h.value.clone()))
            .collect()
    }

    fn pairs(expected: &[(&str, &str)]) -> Vec<(String, String)> {
        expected
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn an_ok_answer_decodes_as_envoy_reads_it() {
        let message = answer(HeaderStyle::RateLimit, None, false)
            .to_message()
            .expect("decodes");
        assert_eq!(message.overall_code, Code::Ok as i32);
        assert_eq!(message.statuses.len(), 2);
        let limited = &message.statuses[0];
        assert_eq!(limited.code, Code::Ok as i32);
        let limit = limited.current_limit.as_ref().expect("a limit");
        assert_eq!(
            (limit.requests_per_unit, limit.unit, limit.name.as_str()),
            (60, rate_limit::Unit::Minute as i32, "")
        );
        assert_eq!(limited.limit_remaining, 18);
        let reset = limited.duration_until_reset.expect("a reset");
        assert_eq!((reset.seconds, reset.nanos), (31, 0));
        let unlimited = &message.statuses[1];
        assert_eq!(unlimited.code, Code::Ok as i32);
        assert!(unlimited.current_limit.is_none() && unlimited.duration_until_reset.is_none());
        assert_eq!(
            headers(&message),
            pairs(&[
                ("ratelimit-limit", "60"),
                ("ratelimit-remaining", "18"),
                ("ratelimit-reset", "31"),
            ])
        );
        assert!(message.raw_body.is_empty());
    }

    #[test]
    fn an_over_limit_answer_carries_retry_after_and_the_body() {
        let message = answer(HeaderStyle::XRateLimit, Some("per_key"), true)
            .to_message()
            .expect("decodes");
        assert_eq!(message.overall_code, Code::OverLimit as i32);
        assert_eq!(message.statuses[0].code, Code::OverLimit as i32);
        assert_eq!(message.statuses[0].limit_remaining, 0);
        let limit = message.statuses[0].current_limit.as_ref().expect("a limit");
        assert_eq!(limit.name, "per_key");
        assert_eq!(
            headers(&message),
            pairs(&[
                ("x-ratelimit-limit", "60"),
                ("x-ratelimit-remaining", "0"),
                ("x-ratelimit-reset", "31"),
                ("retry-after", "31"),
                ("content-type", "application/json"),
            ])
        );
        assert_eq!(message.raw_body, DEFAULT_OVER_LIMIT_BODY.as_bytes());
    }

    #[test]
    fn draft_10_headers_name_the_policy() {
        let message = answer(HeaderStyle::IetfDraft10, Some("per_key"), false)
            .to_message()
            .expect("decodes");
        assert_eq!(
            headers(&message),
            pairs(&[
                ("ratelimit-policy", "\"per_key\";q=60;w=60"),
                ("ratelimit", "\"per_key\";r=18;t=31"),
            ])
        );
        let unnamed = answer(HeaderStyle::IetfDraft10, None, false)
            .to_message()
            .expect("decodes");
        assert_eq!(headers(&unnamed)[0].1, "\"default\";q=60;w=60");
        let none = answer(HeaderStyle::None, None, true)
            .to_message()
            .expect("decodes");
        assert_eq!(
            headers(&none),
            pairs(&[("retry-after", "31"), ("content-type", "application/json")])
        );
    }

    #[test]
    fn every_shape_decodes_with_long_names_and_large_numbers() {
        let long_name = "n".repeat(300);
        for style in [
            HeaderStyle::RateLimit,
            HeaderStyle::XRateLimit,
            HeaderStyle::IetfDraft10,
            HeaderStyle::None,
        ] {
            for name in [None, Some("a"), Some(long_name.as_str())] {
                for over_limit in [false, true] {
                    let mut answer = answer(style, name, over_limit);
                    let message = answer.to_message().expect("decodes");
                    let expected = name.filter(|n| !n.is_empty()).unwrap_or_default();
                    assert_eq!(
                        message.statuses[0]
                            .current_limit
                            .as_ref()
                            .map(|l| l.name.as_str()),
                        Some(expected)
                    );
                    // Large numbers take multi-byte varints and more digits.
                    if let Some(report) = answer.decision.headline.as_mut() {
                        report.requests_per_unit = u32::MAX;
                        report.remaining = u32::MAX - 1;
                        report.reset_in = Duration::from_secs(365 * 86_400);
                    }
                    let message = answer.to_message().expect("decodes");
                    if style == HeaderStyle::RateLimit {
                        assert_eq!(headers(&message)[0].1, u32::MAX.to_string());
                    }
                }
            }
        }
    }
}
