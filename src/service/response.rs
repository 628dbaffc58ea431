//! Turning a [`Decision`] into Envoy's `RateLimitResponse`, written straight to protobuf bytes.
//!
//! Envoy applies what we send: `response_headers_to_add` go on the upstream's response when the
//! answer is OK and on Envoy's own 429 when it is OVER_LIMIT, and `raw_body` becomes the 429's
//! body. So the client-facing contract of the seed policy (headers on every response,
//! `Retry-After` and a JSON body on a 429) is built here. The overall code is never UNKNOWN:
//! Envoy lets UNKNOWN through, so failures travel as gRPC errors instead.
//!
//! An [`Answer`] is encoded by hand, the way a generated encoder would (sizes first, then the
//! fields in number order, defaults left out), but from the decision itself: the header values
//! are numbers formatted as they are written, so answering allocates nothing. A generated
//! `RateLimitResponse` would need a `String` for every header name and value (about 15
//! allocations for a 429). [`Answer::to_message`] decodes the bytes back for whoever needs the
//! message (the HTTP `/json` endpoint, tests).

use std::sync::Arc;

use bytes::BufMut;
use prost::Message;
use prost::encoding::{encode_varint, encoded_len_varint};

use crate::limiter::window::whole_seconds;
use crate::limiter::{Decision, DescriptorDecision, WindowReport};
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

/// Wire types.
const VARINT: u8 = 0;
const LENGTH_DELIMITED: u8 = 2;

impl Answer {
    pub fn new(decision: Decision, settings: Arc<ResponseSettings>) -> Answer {
        Answer { decision, settings }
    }

    pub fn decision(&self) -> &Decision {
        &self.decision
    }

    /// The answer's size in bytes, as [`Answer::encode`] writes it.
    pub fn encoded_len(&self) -> usize {
        let mut len = varint_field_len(self.overall_code());
        for status in &self.decision.descriptors {
            len += message_field_len(status_len(status));
        }
        self.headers(|key, value| len += message_field_len(header_len(key, &value)));
        if let Some(body) = self.body() {
            len += bytes_field_len(body.len());
        }
        len
    }

    /// Writes the answer as an encoded `envoy.service.ratelimit.v3.RateLimitResponse`.
    pub fn encode(&self, buf: &mut impl BufMut) {
        put_varint_field(buf, 1, self.overall_code());
        for status in &self.decision.descriptors {
            put_status(buf, status);
        }
        self.headers(|key, value| {
            put_tag(buf, 3, LENGTH_DELIMITED);
            encode_varint(header_len(key, &value) as u64, buf);
            put_bytes_field(buf, 1, key.as_bytes());
            if value.len() > 0 {
                put_tag(buf, 2, LENGTH_DELIMITED);
                encode_varint(value.len() as u64, buf);
                value.put(buf);
            }
        });
        if let Some(body) = self.body() {
            put_bytes_field(buf, 5, body.as_bytes());
        }
    }

    pub fn encode_to_vec(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(self.encoded_len());
        self.encode(&mut bytes);
        bytes
    }

    /// The answer as a generated message (for `/json`, and for tests).
    pub fn to_message(&self) -> Result<RateLimitResponse, prost::DecodeError> {
        RateLimitResponse::decode(self.encode_to_vec().as_slice())
    }

    fn overall_code(&self) -> u64 {
        if self.decision.over_limit {
            CODE_OVER_LIMIT
        } else {
            CODE_OK
        }
    }

    /// The 429 body, on OVER_LIMIT.
    fn body(&self) -> Option<&str> {
        let body = self.settings.over_limit_body.as_deref()?;
        (self.decision.over_limit && !body.is_empty()).then_some(body)
    }

    /// Calls `each` with every response header, in order: the `RateLimit-*` headers of the
    /// binding window, then on OVER_LIMIT `retry-after` and, with a body, `content-type`.
    fn headers(&self, mut each: impl FnMut(&'static str, HeaderText<'_>)) {
        if let Some(report) = &self.decision.headline {
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
                each(limit_name, HeaderText::Number(limit));
                each(remaining_name, HeaderText::Number(remaining));
                each(reset_name, HeaderText::Number(reset));
            }
            if self.settings.header_style == HeaderStyle::IetfDraft10 {
                let name = report.name.as_deref().unwrap_or("default");
                let window = u64::from(report.window.seconds());
                each(
                    "ratelimit-policy",
                    HeaderText::Item {
                        name,
                        params: [("q", limit), ("w", window)],
                    },
                );
                each(
                    "ratelimit",
                    HeaderText::Item {
                        name,
                        params: [("r", remaining), ("t", reset)],
                    },
                );
            }
        }
        if self.decision.over_limit {
            let retry_after = self
                .decision
                .retry_after
                .map_or(1, |d| whole_seconds(d).max(1));
            each("retry-after", HeaderText::Number(retry_after));
            if self.body().is_some() {
                each(
                    "content-type",
                    HeaderText::Text(&self.settings.over_limit_content_type),
                );
            }
        }
    }
}

/// A header value, formatted as it is written.
enum HeaderText<'a> {
    Number(u64),
    Text(&'a str),
    /// A structured-field item of the IETF draft: `"name";q=60;w=60`.
    Item {
        name: &'a str,
        params: [(&'static str, u64); 2],
    },
}

impl HeaderText<'_> {
    fn len(&self) -> usize {
        match self {
            HeaderText::Number(n) => digits(*n),
            HeaderText::Text(text) => text.len(),
            HeaderText::Item { name, params } => {
                // `"` name `"` then `;` key `=` value per parameter.
                name.len()
                    + 2
                    + params
                        .iter()
                        .map(|(k, v)| 2 + k.len() + digits(*v))
                        .sum::<usize>()
            }
        }
    }

    fn put(&self, buf: &mut impl BufMut) {
        match self {
            HeaderText::Number(n) => buf.put_slice(itoa::Buffer::new().format(*n).as_bytes()),
            HeaderText::Text(text) => buf.put_slice(text.as_bytes()),
            HeaderText::Item { name, params } => {
                buf.put_u8(b'"');
                buf.put_slice(name.as_bytes());
                buf.put_u8(b'"');
                for (key, value) in params {
                    buf.put_u8(b';');
                    buf.put_slice(key.as_bytes());
                    buf.put_u8(b'=');
                    buf.put_slice(itoa::Buffer::new().format(*value).as_bytes());
                }
            }
        }
    }
}

fn digits(n: u64) -> usize {
    n.checked_ilog10().map_or(1, |d| d as usize + 1)
}

/// `HeaderValue { key, value }`.
fn header_len(key: &str, value: &HeaderText<'_>) -> usize {
    let value = value.len();
    bytes_field_len(key.len()) + if value > 0 { bytes_field_len(value) } else { 0 }
}

/// `DescriptorStatus`: the code, and for a limited descriptor its window (`current_limit`),
/// `limit_remaining` and `duration_until_reset`.
fn status_len(status: &DescriptorDecision) -> usize {
    let code = varint_field_len(status_code(status));
    match &status.report {
        None => code,
        Some(report) => {
            code + message_field_len(rate_limit_len(report))
                + varint_field_len(u64::from(report.remaining))
                + message_field_len(varint_field_len(whole_seconds(report.reset_in)))
        }
    }
}

fn put_status(buf: &mut impl BufMut, status: &DescriptorDecision) {
    put_tag(buf, 2, LENGTH_DELIMITED);
    encode_varint(status_len(status) as u64, buf);
    put_varint_field(buf, 1, status_code(status));
    if let Some(report) = &status.report {
        put_tag(buf, 2, LENGTH_DELIMITED);
        encode_varint(rate_limit_len(report) as u64, buf);
        put_varint_field(buf, 1, u64::from(report.requests_per_unit));
        put_varint_field(buf, 2, unit_code(report.window.unit()));
        if let Some(name) = report.name.as_deref().filter(|n| !n.is_empty()) {
            put_bytes_field(buf, 3, name.as_bytes());
        }
        put_varint_field(buf, 3, u64::from(report.remaining));
        let seconds = whole_seconds(report.reset_in);
        put_tag(buf, 4, LENGTH_DELIMITED);
        encode_varint(varint_field_len(seconds) as u64, buf);
        put_varint_field(buf, 1, seconds);
    }
}

fn status_code(status: &DescriptorDecision) -> u64 {
    if status.over_limit {
        CODE_OVER_LIMIT
    } else {
        CODE_OK
    }
}

/// `RateLimit { requests_per_unit, unit, name }`.
fn rate_limit_len(report: &WindowReport) -> usize {
    let name = report.name.as_deref().map_or(0, str::len);
    varint_field_len(u64::from(report.requests_per_unit))
        + varint_field_len(unit_code(report.window.unit()))
        + if name > 0 { bytes_field_len(name) } else { 0 }
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

// Every field number here is below 16, so every tag is one byte.

fn put_tag(buf: &mut impl BufMut, field: u8, wire_type: u8) {
    buf.put_u8((field << 3) | wire_type);
}

/// A varint field; proto3 leaves out a 0.
fn varint_field_len(value: u64) -> usize {
    if value == 0 {
        0
    } else {
        1 + encoded_len_varint(value)
    }
}

fn put_varint_field(buf: &mut impl BufMut, field: u8, value: u64) {
    if value != 0 {
        put_tag(buf, field, VARINT);
        encode_varint(value, buf);
    }
}

fn bytes_field_len(len: usize) -> usize {
    1 + encoded_len_varint(len as u64) + len
}

fn put_bytes_field(buf: &mut impl BufMut, field: u8, bytes: &[u8]) {
    put_tag(buf, field, LENGTH_DELIMITED);
    encode_varint(bytes.len() as u64, buf);
    buf.put_slice(bytes);
}

/// An embedded message field: written even when empty (it is present).
fn message_field_len(len: usize) -> usize {
    bytes_field_len(len)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
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
    fn sizes_are_exact_for_every_shape() {
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
                    let bytes = answer.encode_to_vec();
                    assert_eq!(bytes.len(), answer.encoded_len());
                    assert!(answer.to_message().is_ok());
                    // Large numbers take multi-byte varints and more digits.
                    if let Some(report) = answer.decision.headline.as_mut() {
                        report.requests_per_unit = u32::MAX;
                        report.remaining = u32::MAX - 1;
                        report.reset_in = Duration::from_secs(365 * 86_400);
                    }
                    assert_eq!(answer.encode_to_vec().len(), answer.encoded_len());
                    let message = answer.to_message().expect("decodes");
                    if style == HeaderStyle::RateLimit {
                        assert_eq!(headers(&message)[0].1, u32::MAX.to_string());
                    }
                }
            }
        }
    }
}
