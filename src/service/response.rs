//! Turning a [`Decision`] into Envoy's `RateLimitResponse`.
//!
//! Envoy applies what we send: `response_headers_to_add` go on the upstream's response when the
//! answer is OK and on Envoy's own 429 when it is OVER_LIMIT, and `raw_body` becomes the 429's
//! body. So the client-facing contract of the seed policy (headers on every response,
//! `Retry-After` and a JSON body on a 429) is built here. The overall code is never UNKNOWN:
//! Envoy lets UNKNOWN through, so failures travel as gRPC errors instead.

use envoy_types::pb::google::protobuf::Duration as ProtoDuration;

use crate::limiter::window::whole_seconds;
use crate::limiter::{Decision, WindowReport};
use crate::proto::rate_limit_response::{Code, DescriptorStatus, RateLimit, rate_limit};
use crate::proto::{HeaderValue, RateLimitResponse};
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

/// Builds the response for `decision`.
pub fn build(decision: &Decision, settings: &ResponseSettings) -> RateLimitResponse {
    let statuses = decision
        .descriptors
        .iter()
        .map(|d| match &d.report {
            None => DescriptorStatus {
                code: Code::Ok as i32,
                ..Default::default()
            },
            Some(report) => DescriptorStatus {
                code: if d.over_limit {
                    Code::OverLimit
                } else {
                    Code::Ok
                } as i32,
                current_limit: Some(RateLimit {
                    name: report.name.clone().unwrap_or_default(),
                    requests_per_unit: report.requests_per_unit,
                    unit: unit_code(report.window.unit()) as i32,
                }),
                limit_remaining: report.remaining,
                duration_until_reset: Some(ProtoDuration {
                    seconds: whole_seconds(report.reset_in) as i64,
                    nanos: 0,
                }),
                quota: None,
            },
        })
        .collect();
    let mut response = RateLimitResponse {
        overall_code: if decision.over_limit {
            Code::OverLimit
        } else {
            Code::Ok
        } as i32,
        statuses,
        // Three RateLimit-* headers, and on OVER_LIMIT Retry-After and content-type.
        response_headers_to_add: Vec::with_capacity(5),
        ..Default::default()
    };
    if let Some(headline) = &decision.headline {
        rate_limit_headers(
            &mut response.response_headers_to_add,
            headline,
            settings.header_style,
        );
    }
    if decision.over_limit {
        let retry_after = decision.retry_after.map_or(1, |d| whole_seconds(d).max(1));
        push(
            &mut response.response_headers_to_add,
            "retry-after",
            retry_after.to_string(),
        );
        if let Some(body) = &settings.over_limit_body {
            push(
                &mut response.response_headers_to_add,
                "content-type",
                settings.over_limit_content_type.clone(),
            );
            response.raw_body = body.clone().into_bytes();
        }
    }
    response
}

fn rate_limit_headers(headers: &mut Vec<HeaderValue>, report: &WindowReport, style: HeaderStyle) {
    let limit = report.requests_per_unit.to_string();
    let remaining = report.remaining.to_string();
    let reset = whole_seconds(report.reset_in).to_string();
    match style {
        HeaderStyle::RateLimit => {
            push(headers, "ratelimit-limit", limit);
            push(headers, "ratelimit-remaining", remaining);
            push(headers, "ratelimit-reset", reset);
        }
        HeaderStyle::XRateLimit => {
            push(headers, "x-ratelimit-limit", limit);
            push(headers, "x-ratelimit-remaining", remaining);
            push(headers, "x-ratelimit-reset", reset);
        }
        HeaderStyle::IetfDraft10 => {
            let name = report.name.as_deref().unwrap_or("default");
            let window = report.window.seconds();
            push(
                headers,
                "ratelimit-policy",
                format!("\"{name}\";q={limit};w={window}"),
            );
            push(
                headers,
                "ratelimit",
                format!("\"{name}\";r={remaining};t={reset}"),
            );
        }
        HeaderStyle::None => {}
    }
}

fn push(headers: &mut Vec<HeaderValue>, key: &str, value: String) {
    headers.push(HeaderValue {
        key: key.to_string(),
        value,
        raw_value: Vec::new(),
    });
}

fn unit_code(unit: Unit) -> rate_limit::Unit {
    match unit {
        Unit::Second => rate_limit::Unit::Second,
        Unit::Minute => rate_limit::Unit::Minute,
        Unit::Hour => rate_limit::Unit::Hour,
        Unit::Day => rate_limit::Unit::Day,
        Unit::Week => rate_limit::Unit::Week,
        Unit::Month => rate_limit::Unit::Month,
        Unit::Year => rate_limit::Unit::Year,
    }
}
