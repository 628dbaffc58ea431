//! The `RateLimitConfig` resource that rules arrive as over xDS, and how it becomes rules.
//!
//! The messages are envoyproxy/ratelimit's `api/ratelimit/config/ratelimit/v3/rls_conf.proto`,
//! written out here with the same package, names and field numbers (`WEEK = 7` comes after
//! `YEAR = 6`). Like envoyproxy/ratelimit (`ConfigXdsProtoToYaml`), each resource is turned
//! into a rule file's text and loaded by the same loader as files, so rules from xDS are
//! validated, and refused, exactly as rules from files are; its errors name `xds:<resource>`.

use std::path::Path;

use prost::Message;
use serde_json::{Value, json};

use crate::config::{self, ConfigError};
use crate::rules::{Domain, RuleSet};

/// The resource type ratelimitd asks for.
pub const TYPE_URL: &str = "type.googleapis.com/ratelimit.config.ratelimit.v3.RateLimitConfig";

/// Rate limit configuration for one domain.
#[derive(Clone, PartialEq, Message)]
pub struct RateLimitConfig {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub domain: String,
    #[prost(message, repeated, tag = "3")]
    pub descriptors: Vec<RateLimitDescriptor>,
}

#[derive(Clone, PartialEq, Message)]
pub struct RateLimitDescriptor {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(string, tag = "2")]
    pub value: String,
    #[prost(message, optional, tag = "3")]
    pub rate_limit: Option<RateLimitPolicy>,
    #[prost(message, repeated, tag = "4")]
    pub descriptors: Vec<RateLimitDescriptor>,
    #[prost(bool, tag = "5")]
    pub shadow_mode: bool,
}

#[derive(Clone, PartialEq, Message)]
pub struct RateLimitPolicy {
    #[prost(enumeration = "RateLimitUnit", tag = "1")]
    pub unit: i32,
    #[prost(uint32, tag = "2")]
    pub requests_per_unit: u32,
    #[prost(bool, tag = "3")]
    pub unlimited: bool,
    #[prost(string, tag = "4")]
    pub name: String,
    #[prost(message, repeated, tag = "5")]
    pub replaces: Vec<RateLimitReplace>,
}

#[derive(Clone, PartialEq, Message)]
pub struct RateLimitReplace {
    #[prost(string, tag = "1")]
    pub name: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum RateLimitUnit {
    Unknown = 0,
    Second = 1,
    Minute = 2,
    Hour = 3,
    Day = 4,
    Month = 5,
    Year = 6,
    Week = 7,
}

impl RateLimitUnit {
    fn name(self) -> &'static str {
        match self {
            RateLimitUnit::Unknown => "UNKNOWN",
            RateLimitUnit::Second => "SECOND",
            RateLimitUnit::Minute => "MINUTE",
            RateLimitUnit::Hour => "HOUR",
            RateLimitUnit::Day => "DAY",
            RateLimitUnit::Month => "MONTH",
            RateLimitUnit::Year => "YEAR",
            RateLimitUnit::Week => "WEEK",
        }
    }
}

/// Why a response's resources cannot become rules: the NACK's message.
#[derive(Debug, thiserror::Error)]
pub enum ResourceError {
    #[error("resource {index}: type {type_url:?}, expected {TYPE_URL}")]
    WrongType { index: usize, type_url: String },
    #[error("resource {index}: not a RateLimitConfig: {error}")]
    Undecodable {
        index: usize,
        error: prost::DecodeError,
    },
    #[error("{}", join(.0))]
    Rules(Vec<ConfigError>),
    #[error("domain {0:?} is in two resources")]
    DuplicateDomain(String),
}

fn join(errors: &[ConfigError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// The rules of a response's resources (`(type URL, bytes)` each): one domain per resource,
/// the whole set replacing the running one.
pub fn rules_of<'r>(
    resources: impl IntoIterator<Item = (&'r str, &'r [u8])>,
) -> Result<RuleSet, ResourceError> {
    let mut domains: Vec<Domain> = Vec::new();
    for (index, (type_url, bytes)) in resources.into_iter().enumerate() {
        if type_url != TYPE_URL {
            return Err(ResourceError::WrongType {
                index,
                type_url: type_url.to_string(),
            });
        }
        let resource = RateLimitConfig::decode(bytes)
            .map_err(|error| ResourceError::Undecodable { index, error })?;
        let domain = domain_of(&resource)?;
        if domains.iter().any(|d| d.name == domain.name) {
            return Err(ResourceError::DuplicateDomain(domain.name));
        }
        domains.push(domain);
    }
    Ok(RuleSet::new(domains))
}

/// One resource's domain, loaded from the rule file it stands for.
fn domain_of(resource: &RateLimitConfig) -> Result<Domain, ResourceError> {
    let text = rule_file(resource);
    let name = format!("xds:{}", resource.name);
    config::parse_domain(Path::new(&name), &text).map_err(ResourceError::Rules)
}

/// The rule file a resource stands for, as JSON (which YAML reads), one field a line so that
/// errors point at the field.
pub fn rule_file(resource: &RateLimitConfig) -> String {
    let file = json!({
        "name": resource.name,
        "domain": resource.domain,
        "descriptors": resource.descriptors.iter().map(descriptor).collect::<Vec<_>>(),
    });
    serde_json::to_string_pretty(&file).unwrap_or_default()
}

fn descriptor(d: &RateLimitDescriptor) -> Value {
    let mut out = json!({ "key": d.key, "value": d.value });
    if let Some(policy) = &d.rate_limit {
        let unit = RateLimitUnit::try_from(policy.unit).unwrap_or(RateLimitUnit::Unknown);
        let mut limit = json!({ "requests_per_unit": policy.requests_per_unit });
        if policy.unlimited {
            limit = json!({ "unlimited": true });
        } else {
            limit["unit"] = json!(unit.name());
        }
        if !policy.name.is_empty() {
            limit["name"] = json!(policy.name);
        }
        if !policy.replaces.is_empty() {
            let replaces: Vec<Value> = policy
                .replaces
                .iter()
                .map(|r| json!({ "name": r.name }))
                .collect();
            limit["replaces"] = json!(replaces);
        }
        out["rate_limit"] = limit;
    }
    if !d.descriptors.is_empty() {
        out["descriptors"] = json!(d.descriptors.iter().map(descriptor).collect::<Vec<_>>());
    }
    if d.shadow_mode {
        out["shadow_mode"] = json!(true);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gateway_like() -> RateLimitConfig {
        RateLimitConfig {
            name: "default/eg/http".into(),
            domain: "default/eg/http".into(),
            descriptors: vec![RateLimitDescriptor {
                key: "httproute/default/backend/rule/0/match/0".into(),
                value: "httproute/default/backend/rule/0/match/0".into(),
                descriptors: vec![RateLimitDescriptor {
                    key: "rule-0-match-0".into(),
                    value: String::new(),
                    rate_limit: Some(RateLimitPolicy {
                        unit: RateLimitUnit::Week as i32,
                        requests_per_unit: 3,
                        ..Default::default()
                    }),
                    shadow_mode: true,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    #[test]
    fn a_gateway_shaped_resource_becomes_its_domain() {
        let bytes = gateway_like().encode_to_vec();
        let rules = rules_of([(TYPE_URL, bytes.as_slice())]).expect("it loads");
        let domain = rules.domain("default/eg/http").expect("the domain");
        assert_eq!(domain.name, "default/eg/http");
        assert_eq!(rules.rules().len(), 1);
        let limit = rules.rules()[0].limit.as_ref().expect("a limit");
        assert_eq!(limit.requests_per_unit, 3);
        assert_eq!(limit.window.unit(), crate::rules::Unit::Week);
        assert!(limit.shadow_mode);
    }

    #[test]
    fn a_broken_resource_is_refused_with_its_reason() {
        let mut broken = gateway_like();
        broken.descriptors[0].descriptors[0]
            .rate_limit
            .as_mut()
            .expect("a policy")
            .unit = 0;
        let bytes = broken.encode_to_vec();
        let error = rules_of([(TYPE_URL, bytes.as_slice())]).expect_err("refused");
        let message = error.to_string();
        assert!(message.contains("xds:default/eg/http"), "{message}");
        assert!(message.contains("UNKNOWN"), "{message}");
        let error = rules_of([("type.googleapis.com/other", bytes.as_slice())]).expect_err("type");
        assert!(error.to_string().contains("expected"), "{error}");
        let twice = [(TYPE_URL, bytes.as_slice()), (TYPE_URL, bytes.as_slice())];
        assert!(rules_of(twice).is_err());
    }
}
