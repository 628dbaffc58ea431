//! Turning one parsed rule file into a [`Domain`], checking everything on the way.
//!
//! Every field of envoyproxy/ratelimit's format is known here and read with its meaning there
//! (`src/config/config_impl.go`): a null field is absent, an empty `value` or `name` is none,
//! an empty list is no items. What envoyproxy/ratelimit loads but is very likely a mistake loads
//! here too, with a warning naming the place. An unknown field or a wrong type is an error.
//! Errors are collected, not returned at the first, so one `ratelimitd check` lists them all.

use std::collections::HashSet;

use super::error::ConfigErrorKind;
use super::limits::{MAX_DESCRIPTOR_DEPTH, MAX_DESCRIPTORS};
use super::tree::{Data, Node as Yaml, Place};
use super::yaml::{Field, Reader, is_null};
use crate::rules::{
    Algorithm, Children, Domain, DuplicateNode, InvalidWindow, Limit, MAX_WINDOW_SECONDS, Node,
    NodeValue, Policy, Unit, Wildcard, Window,
};

const ROOT_FIELDS: &str = "name, domain, descriptors";
const DESCRIPTOR_FIELDS: &str = "key, value, rate_limit, rate_limits, descriptors, shadow_mode, \
     detailed_metric, value_to_metric, share_threshold, quota_mode, metadata";
const LIMIT_FIELDS: &str =
    "unit, requests_per_unit, unlimited, name, replaces, unit_multiplier, algorithm, burst";
const REPLACES_FIELDS: &str = "name";

/// Reads a whole rule file; `None` when it has errors (they are in `reader.errors`).
pub fn domain(reader: &mut Reader<'_>, root: &Yaml<'_>) -> Option<Domain> {
    let fields = reader.fields(root, "the rule file", ROOT_FIELDS)?;
    let mut name = None;
    let mut config_name = None;
    let mut children = Children::default();
    for field in &fields {
        match field.name.as_str() {
            "name" => config_name = reader.string(field).filter(|n| !n.is_empty()),
            "domain" => name = reader.string(field),
            "descriptors" => children = descriptors(reader, field),
            _ => {}
        }
    }
    let name = match name {
        Some(name) if !name.is_empty() => name,
        Some(_) => {
            reader.error(root.span, ConfigErrorKind::Empty("domain"));
            return None;
        }
        None => {
            reader.error(root.span, ConfigErrorKind::MissingField("domain"));
            return None;
        }
    };
    if !reader.errors.is_empty() {
        return None;
    }
    Some(Domain {
        name,
        config_name,
        source: reader.file.to_path_buf(),
        root: children,
        warnings: std::mem::take(&mut reader.warnings),
    })
}

fn descriptors(reader: &mut Reader<'_>, field: &Field<'_, '_>) -> Children {
    let mut children = Children::default();
    if reader.depth >= MAX_DESCRIPTOR_DEPTH {
        reader.error(
            field.name_span,
            ConfigErrorKind::DescriptorsTooDeep(MAX_DESCRIPTOR_DEPTH),
        );
        return children;
    }
    reader.depth += 1;
    for item in reader.sequence(field).into_iter().flatten() {
        reader.descriptors += 1;
        if reader.descriptors > MAX_DESCRIPTORS {
            reader.error(
                item.span,
                ConfigErrorKind::TooManyDescriptors(MAX_DESCRIPTORS),
            );
            break;
        }
        let Some(node) = descriptor(reader, item) else {
            continue;
        };
        let (key, value) = (node.key.clone(), node.value.as_str().to_string());
        if let Err(DuplicateNode) = children.insert(node) {
            reader.error(item.span, ConfigErrorKind::DuplicateNode { key, value });
        }
    }
    reader.depth -= 1;
    children
}

fn descriptor(reader: &mut Reader<'_>, item: &Yaml<'_>) -> Option<Node> {
    let fields = reader.fields(item, "a descriptor", DESCRIPTOR_FIELDS)?;
    let mut key = None;
    let mut value = None;
    let mut rate_limit = None;
    let mut rate_limits = None;
    let mut children = Children::default();
    let mut flags = NodeFlags::default();
    let mut share_threshold_span = None;
    for field in &fields {
        let flag = |reader: &mut Reader<'_>| reader.boolean(field).unwrap_or(false);
        match field.name.as_str() {
            "key" => key = reader.string(field),
            "value" => value = reader.string(field),
            "rate_limit" => rate_limit = Some(field),
            "rate_limits" => rate_limits = Some(field),
            "descriptors" => children = descriptors(reader, field),
            "shadow_mode" => flags.shadow_mode = flag(reader),
            "quota_mode" => flags.quota_mode = flag(reader),
            "detailed_metric" => flags.detailed_metric = flag(reader),
            "value_to_metric" => flags.value_to_metric = flag(reader),
            "share_threshold" => {
                flags.share_threshold = flag(reader);
                share_threshold_span = Some(field.name_span);
            }
            "metadata" => metadata(reader, field),
            _ => {}
        }
    }
    let key = match key {
        Some(key) if !key.is_empty() => key,
        Some(_) => {
            reader.error(item.span, ConfigErrorKind::Empty("key"));
            return None;
        }
        None => {
            reader.error(item.span, ConfigErrorKind::MissingField("key"));
            return None;
        }
    };
    let policy = match (rate_limit, rate_limits) {
        (Some(_), Some(both)) => {
            reader.error(both.name_span, ConfigErrorKind::BothRateLimitForms);
            None
        }
        (Some(one), None) => single_limit(reader, one, &flags),
        (None, Some(list)) => limit_list(reader, list, &flags),
        (None, None) => None,
    };
    let value = match value.filter(|v| !v.is_empty()) {
        None => NodeValue::Any,
        Some(value) => match Wildcard::parse(&value) {
            Some(pattern) => NodeValue::Wildcard(pattern),
            None => NodeValue::Exact(value),
        },
    };
    // envoyproxy/ratelimit refuses this too: only a pattern can stand for many values.
    if let Some(span) = share_threshold_span
        && flags.share_threshold
        && !matches!(value, NodeValue::Wildcard(_))
    {
        reader.error(span, ConfigErrorKind::ShareThresholdWithoutWildcard);
    }
    Some(Node {
        key,
        value,
        line: u32::try_from(item.span.line).unwrap_or(u32::MAX),
        policy,
        children,
        detailed_metric: flags.detailed_metric,
        value_to_metric: flags.value_to_metric,
        share_threshold: flags.share_threshold,
    })
}

/// The per-node switches of envoyproxy/ratelimit's format.
#[derive(Default)]
struct NodeFlags {
    shadow_mode: bool,
    quota_mode: bool,
    detailed_metric: bool,
    value_to_metric: bool,
    share_threshold: bool,
}

/// `metadata`: a mapping that envoyproxy/ratelimit returns as dynamic metadata only when its
/// `RESPONSE_DYNAMIC_METADATA` setting is on (off by default). ratelimitd does not send dynamic
/// metadata, so the mapping is checked and not kept.
fn metadata(reader: &mut Reader<'_>, field: &Field<'_, '_>) {
    if !matches!(field.value.data, Data::Mapping(_)) {
        reader.error(
            field.value.span,
            ConfigErrorKind::WrongType {
                field: field.name.clone(),
                expected: "a mapping",
            },
        );
    }
}

/// `rate_limit: {…}`: one window, or `unlimited: true`.
fn single_limit(
    reader: &mut Reader<'_>,
    field: &Field<'_, '_>,
    flags: &NodeFlags,
) -> Option<Policy> {
    let parsed = limit(reader, field.value, flags)?;
    match parsed {
        ParsedLimit::Unlimited => Some(Policy::Unlimited),
        ParsedLimit::Limited(limit) => Some(Policy::Limited(vec![limit])),
    }
}

/// `rate_limits: [{…}, …]`: several windows, all enforced.
fn limit_list(reader: &mut Reader<'_>, field: &Field<'_, '_>, flags: &NodeFlags) -> Option<Policy> {
    let items = reader.sequence(field)?;
    let errors_before = reader.errors.len();
    let mut limits = Vec::with_capacity(items.len());
    let mut windows = HashSet::new();
    for item in items {
        match limit(reader, item, flags) {
            Some(ParsedLimit::Limited(limit)) => {
                if !windows.insert(limit.window.seconds()) {
                    reader.error(
                        item.span,
                        ConfigErrorKind::DuplicateWindow(limit.window.seconds()),
                    );
                }
                limits.push(limit);
            }
            Some(ParsedLimit::Unlimited) => {
                reader.error(item.span, ConfigErrorKind::UnlimitedInList)
            }
            None => {}
        }
    }
    if limits.is_empty() {
        if reader.errors.len() == errors_before {
            reader.error(field.value.span, ConfigErrorKind::Empty("rate_limits"));
        }
        return None;
    }
    Some(Policy::Limited(limits))
}

enum ParsedLimit {
    Unlimited,
    Limited(Limit),
}

fn limit(reader: &mut Reader<'_>, node: &Yaml<'_>, flags: &NodeFlags) -> Option<ParsedLimit> {
    let fields = reader.fields(node, "a rate limit", LIMIT_FIELDS)?;
    let errors_before = reader.errors.len();
    let mut unit: Option<(Unit, Place)> = None;
    let mut requests_per_unit = None;
    let mut unlimited = false;
    let mut name = None;
    let mut replaces = Vec::new();
    let mut multiplier = 1;
    let mut algorithm = None;
    let mut burst: Option<(u32, Place)> = None;
    for field in &fields {
        match field.name.as_str() {
            "unit" => {
                if let Some(text) = reader.string(field) {
                    match Unit::parse(&text) {
                        Some(parsed) => unit = Some((parsed, field.value.span)),
                        None => reader.error(field.value.span, ConfigErrorKind::UnknownUnit(text)),
                    }
                }
            }
            "requests_per_unit" => requests_per_unit = reader.u32(field),
            "unlimited" => unlimited = reader.boolean(field).unwrap_or(false),
            "name" => name = reader.string(field).filter(|n| !n.is_empty()),
            "replaces" => replaces = replaced_names(reader, field),
            "unit_multiplier" => multiplier = reader.u32(field).unwrap_or(1),
            "algorithm" => algorithm = algorithm_of(reader, field),
            "burst" => burst = reader.u32(field).map(|b| (b, field.value.span)),
            _ => {}
        }
    }
    if let (Some(own), Some(span)) = (
        &name,
        replaces
            .iter()
            .find(|(n, _)| Some(n) == name.as_ref())
            .map(|(_, s)| *s),
    ) {
        reader.error(span, ConfigErrorKind::ReplacesItself(own.clone()));
    }
    let replaces = replaces.into_iter().map(|(name, _)| name).collect();
    if unlimited {
        if let Some((_, span)) = unit {
            reader.error(span, ConfigErrorKind::UnlimitedWithUnit);
        }
        if requests_per_unit.is_some_and(|n| n > 0) {
            reader.warn(
                node.span,
                "`unlimited: true` ignores `requests_per_unit`: this limit never limits",
            );
        }
        return (reader.errors.len() == errors_before).then_some(ParsedLimit::Unlimited);
    }
    let Some((unit, unit_span)) = unit else {
        if reader.errors.len() == errors_before {
            reader.error(node.span, ConfigErrorKind::MissingField("unit"));
        }
        return None;
    };
    // envoyproxy/ratelimit reads a missing count as 0, which blocks every request.
    let written = fields.iter().any(|f| f.name == "requests_per_unit");
    let requests_per_unit = requests_per_unit.or_else(|| {
        if written {
            return None;
        }
        reader.warn(
            node.span,
            "no `requests_per_unit`: read as 0, which refuses every request",
        );
        Some(0)
    })?;
    let window = match Window::try_new(unit, multiplier) {
        Ok(window) => window,
        Err(InvalidWindow::ZeroMultiplier) => {
            reader.error(unit_span, ConfigErrorKind::ZeroMultiplier);
            return None;
        }
        Err(InvalidWindow::TooLong) => {
            reader.error(unit_span, ConfigErrorKind::WindowTooLong);
            return None;
        }
    };
    if let Some((burst, span)) = burst {
        if algorithm.is_some_and(|a| a != Algorithm::TokenBucket) {
            reader.error(span, ConfigErrorKind::BurstWithoutBucket);
        } else if refill_seconds(burst, requests_per_unit, window) > MAX_WINDOW_SECONDS as f64 {
            reader.error(span, ConfigErrorKind::RefillTooLong);
        }
    }
    // Redis computes a sliding window in doubles, exact below 2^53; 2^50 leaves room for the
    // counts of shadow mode, which may pass the limit.
    if algorithm == Some(Algorithm::SlidingWindow)
        && f64::from(requests_per_unit) * f64::from(window.seconds()) * 1000.0 > (1u64 << 50) as f64
    {
        reader.error(unit_span, ConfigErrorKind::SlidingTooLarge);
    }
    if reader.errors.len() != errors_before {
        return None;
    }
    Some(ParsedLimit::Limited(Limit {
        requests_per_unit,
        window,
        name,
        replaces,
        shadow_mode: flags.shadow_mode,
        quota_mode: flags.quota_mode,
        shared_values: None,
        id: None,
        algorithm,
        burst: burst.map(|(b, _)| b),
    }))
}

/// How long a token bucket of `burst` takes to refill from empty at `rate` per `window`.
fn refill_seconds(burst: u32, rate: u32, window: Window) -> f64 {
    if rate == 0 {
        return 0.0;
    }
    f64::from(burst) / f64::from(rate) * f64::from(window.seconds())
}

/// `replaces: [{name: …}, …]`, each name with its place for messages.
fn replaced_names(reader: &mut Reader<'_>, field: &Field<'_, '_>) -> Vec<(String, Place)> {
    let mut names = Vec::new();
    for item in reader.sequence(field).into_iter().flatten() {
        let Some(fields) = reader.fields(item, "a replaces entry", REPLACES_FIELDS) else {
            continue;
        };
        let name = fields.iter().find_map(|f| reader.string(f));
        match name {
            Some(name) if !name.is_empty() => names.push((name, item.span)),
            _ => reader.error(item.span, ConfigErrorKind::Empty("replaces: name")),
        }
    }
    names
}

/// `algorithm`: `fixed_window` (envoyproxy/ratelimit's), `sliding_window` or `token_bucket`.
fn algorithm_of(reader: &mut Reader<'_>, field: &Field<'_, '_>) -> Option<Algorithm> {
    if is_null(field.value) {
        return None;
    }
    let name = reader.string(field)?;
    let algorithm = Algorithm::parse(&name);
    if algorithm.is_none() {
        reader.error(field.value.span, ConfigErrorKind::UnknownAlgorithm(name));
    }
    algorithm
}
