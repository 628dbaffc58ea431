//! The hand-written protobuf reader and writer (`service::request`, `service::response`) against
//! prost, the generated codec, on arbitrary messages: what prost writes, ours reads back the
//! same; what ours writes, prost reads back the same; and no bytes make ours panic.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::{
    Entry, RateLimitOverride,
};
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{Code, rate_limit};
use envoy_types::pb::envoy::r#type::v3::RateLimitUnit;
use envoy_types::pb::google::protobuf::UInt64Value;
use proptest::prelude::*;
use prost::Message;

use ratelimitd::limiter::window::whole_seconds;
use ratelimitd::limiter::{Decision, DescriptorDecision, WindowReport};
use ratelimitd::rules::{Unit, Window};
use ratelimitd::service::request::{MAX_HITS, parse};
use ratelimitd::service::{Answer, HeaderStyle, ResponseSettings};

const UNITS: [Unit; 7] = [
    Unit::Second,
    Unit::Minute,
    Unit::Hour,
    Unit::Day,
    Unit::Week,
    Unit::Month,
    Unit::Year,
];

fn entry() -> impl Strategy<Value = Entry> {
    ("\\PC{1,12}", "\\PC{0,12}").prop_map(|(key, value)| Entry { key, value })
}

fn descriptor() -> impl Strategy<Value = RateLimitDescriptor> {
    (
        prop::collection::vec(entry(), 1..5),
        prop::option::of((any::<u32>(), 0..8i32)),
        prop::option::of(prop_oneof![3 => 0..=MAX_HITS, 1 => any::<u64>()]),
    )
        .prop_map(|(entries, limit, hits)| RateLimitDescriptor {
            entries,
            limit: limit.map(|(requests_per_unit, unit)| RateLimitOverride {
                requests_per_unit,
                unit,
            }),
            hits_addend: hits.map(|value| UInt64Value { value }),
            is_negative_hits: false,
        })
}

fn request() -> impl Strategy<Value = RateLimitRequest> {
    (
        "\\PC{1,20}",
        prop::collection::vec(descriptor(), 1..5),
        any::<u32>(),
    )
        .prop_map(|(domain, descriptors, hits_addend)| RateLimitRequest {
            domain,
            descriptors,
            hits_addend,
        })
}

fn report() -> impl Strategy<Value = WindowReport> {
    (
        any::<u32>(),
        0..UNITS.len(),
        prop::option::of("\\PC{0,12}"),
        any::<u32>(),
        0..2_000_000_000u64,
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(requests_per_unit, unit, name, remaining, reset_ms, over_limit, shadow_mode)| {
                WindowReport {
                    requests_per_unit,
                    window: Window::of(UNITS[unit]),
                    name,
                    remaining,
                    reset_in: Duration::from_millis(reset_ms),
                    over_limit,
                    shadow_mode,
                }
            },
        )
}

fn decision() -> impl Strategy<Value = Decision> {
    (
        prop::collection::vec((any::<bool>(), prop::option::of(report())), 1..5),
        any::<bool>(),
        prop::option::of(report()),
        prop::option::of(0..100_000_000u64),
    )
        .prop_map(|(descriptors, over_limit, headline, retry_ms)| Decision {
            domain_known: true,
            over_limit,
            descriptors: descriptors
                .into_iter()
                .map(|(over_limit, report)| DescriptorDecision { over_limit, report })
                .collect(),
            headline,
            retry_after: retry_ms.map(Duration::from_millis),
        })
}

fn style() -> impl Strategy<Value = HeaderStyle> {
    prop_oneof![
        Just(HeaderStyle::RateLimit),
        Just(HeaderStyle::XRateLimit),
        Just(HeaderStyle::IetfDraft10),
        Just(HeaderStyle::None),
    ]
}

fn code(over_limit: bool) -> i32 {
    if over_limit {
        Code::OverLimit as i32
    } else {
        Code::Ok as i32
    }
}

/// `RateLimitResponse.RateLimit.Unit`'s name for a unit, as prost names it.
fn response_unit(unit: Unit) -> rate_limit::Unit {
    rate_limit::Unit::from_str_name(&unit.name().to_ascii_uppercase()).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn what_prost_writes_our_reader_reads_back_the_same(sent in request()) {
        let bytes = sent.encode_to_vec();
        let overrides_known = sent.descriptors.iter().all(|d| {
            d.limit.as_ref().is_none_or(|l| (1..=6).contains(&l.unit))
        });
        let hits_bounded = sent.descriptors.iter().all(|d| {
            d.hits_addend.as_ref().is_none_or(|h| h.value <= MAX_HITS)
        });
        let read = parse(&bytes);
        if !overrides_known || !hits_bounded {
            // An override without a unit Envoy can send (UNKNOWN, WEEK) is refused, and so is
            // a descriptor's hits_addend past what any limit can hold.
            prop_assert!(read.is_err());
            return Ok(());
        }
        let read = read.unwrap();
        prop_assert_eq!(read.domain, sent.domain.as_str());
        prop_assert_eq!(read.hits, u64::from(sent.hits_addend.max(1)));
        prop_assert_eq!(read.descriptors.len(), sent.descriptors.len());
        for (ours, theirs) in read.descriptors.iter().zip(&sent.descriptors) {
            let entries: Vec<(&str, &str)> = theirs
                .entries
                .iter()
                .map(|e| (e.key.as_str(), e.value.as_str()))
                .collect();
            prop_assert_eq!(&ours.entries[..], &entries[..]);
            prop_assert_eq!(ours.hits, theirs.hits_addend.as_ref().map(|h| h.value));
            let theirs_limit = theirs.limit.as_ref().map(|l| {
                let unit = RateLimitUnit::try_from(l.unit).unwrap();
                (l.requests_per_unit, unit.as_str_name().to_ascii_lowercase())
            });
            let ours_limit = ours
                .limit_override
                .map(|l| (l.requests_per_unit, l.unit.name().to_string()));
            prop_assert_eq!(ours_limit, theirs_limit);
        }
    }

    #[test]
    fn what_our_writer_writes_prost_reads_back_the_same(decision in decision(), style in style()) {
        let settings = ResponseSettings { header_style: style, ..ResponseSettings::default() };
        let answer = Answer::new(decision.clone(), Arc::new(settings));
        let message = answer.to_message().unwrap();
        prop_assert_eq!(message.overall_code, code(decision.over_limit));
        prop_assert_eq!(message.statuses.len(), decision.descriptors.len());
        for (status, ours) in message.statuses.iter().zip(&decision.descriptors) {
            prop_assert_eq!(status.code, code(ours.over_limit));
            match &ours.report {
                None => {
                    prop_assert!(status.current_limit.is_none());
                    prop_assert!(status.duration_until_reset.is_none());
                    prop_assert_eq!(status.limit_remaining, 0);
                }
                Some(report) => {
                    let limit = status.current_limit.as_ref().unwrap();
                    prop_assert_eq!(limit.requests_per_unit, report.requests_per_unit);
                    prop_assert_eq!(limit.unit, response_unit(report.window.unit()) as i32);
                    prop_assert_eq!(&limit.name, report.name.as_deref().unwrap_or(""));
                    prop_assert_eq!(status.limit_remaining, report.remaining);
                    let reset = status.duration_until_reset.unwrap();
                    prop_assert_eq!(reset.seconds as u64, whole_seconds(report.reset_in));
                    prop_assert_eq!(reset.nanos, 0);
                }
            }
        }
        let header = |name: &str| {
            message
                .response_headers_to_add
                .iter()
                .find(|h| h.key == name)
                .map(|h| h.value.clone())
        };
        match (&decision.headline, style) {
            (Some(report), HeaderStyle::RateLimit) => {
                prop_assert_eq!(header("ratelimit-limit"), Some(report.requests_per_unit.to_string()));
                prop_assert_eq!(header("ratelimit-remaining"), Some(report.remaining.to_string()));
                prop_assert_eq!(
                    header("ratelimit-reset"),
                    Some(whole_seconds(report.reset_in).to_string())
                );
            }
            (None, _) | (_, HeaderStyle::None) => {
                prop_assert!(header("ratelimit-limit").is_none());
                prop_assert!(header("x-ratelimit-limit").is_none());
                prop_assert!(header("ratelimit").is_none());
            }
            _ => {}
        }
        let retry_after = decision
            .retry_after
            .map_or(1, |d| whole_seconds(d).max(1))
            .to_string();
        prop_assert_eq!(header("retry-after"), decision.over_limit.then_some(retry_after));
        prop_assert_eq!(!message.raw_body.is_empty(), decision.over_limit);
    }

    #[test]
    fn no_bytes_make_the_reader_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = parse(&bytes);
    }

    #[test]
    fn no_corruption_of_a_real_request_makes_the_reader_panic(
        sent in request(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
    ) {
        let mut bytes = sent.encode_to_vec();
        for (at, byte) in flips {
            let at = at.index(bytes.len());
            bytes[at] = byte;
        }
        let _ = parse(&bytes);
    }
}
