//! Traces over OTLP: a span per decision, exported to an OpenTelemetry collector, continuing
//! Envoy's trace (`--otlp-endpoint`; envoyproxy/ratelimit's `TRACING_ENABLED` with
//! `OTEL_EXPORTER_OTLP_ENDPOINT`).
//!
//! Each `ShouldRateLimit` call is a span (`ShouldRateLimit`, parent of the `decision` span the
//! service opens), whose parent is the W3C `traceparent` Envoy sends in the call's metadata,
//! when it sends one. Spans are sampled at `--otlp-sampling-rate` (a trace Envoy sampled stays
//! sampled) and sent in batches over OTLP/gRPC by a task on the runtime, so a slow collector
//! never holds a decision. With no endpoint the spans are off at their call sites: they cost
//! one check each.

use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry_otlp::{SpanExporter, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
use opentelemetry_sdk::trace::{BatchConfigBuilder, Sampler, SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Where and how traces are exported.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceSettings {
    /// The collector's OTLP/gRPC endpoint, `http://host:4317`.
    pub endpoint: String,
    /// The share of traces kept, 0 to 1.
    pub sampling_rate: f64,
    pub service_name: String,
    pub service_namespace: Option<String>,
    pub instance_id: Option<String>,
}

/// Why the exporter could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("cannot export traces to {endpoint}: {reason}")]
pub struct TraceError {
    endpoint: String,
    reason: String,
}

/// How often a batch of spans is sent.
const EXPORT_EVERY: Duration = Duration::from_millis(500);

/// The tracer provider exporting to `settings.endpoint`; call within the Tokio runtime, which
/// runs the export task. Shut it down at exit to send the last spans.
pub fn provider(settings: &TraceSettings) -> Result<SdkTracerProvider, TraceError> {
    let exporter = SpanExporter::builder()
        .with_tonic()
        .with_endpoint(settings.endpoint.clone())
        .build()
        .map_err(|e| TraceError {
            endpoint: settings.endpoint.clone(),
            reason: e.to_string(),
        })?;
    let batches = BatchConfigBuilder::default()
        .with_scheduled_delay(EXPORT_EVERY)
        .build();
    let processor = BatchSpanProcessor::builder(exporter, opentelemetry_sdk::runtime::Tokio)
        .with_batch_config(batches)
        .build();
    let mut resource = Resource::builder().with_service_name(settings.service_name.clone());
    if let Some(namespace) = &settings.service_namespace {
        resource = resource.with_attribute(KeyValue::new("service.namespace", namespace.clone()));
    }
    if let Some(instance) = &settings.instance_id {
        resource = resource.with_attribute(KeyValue::new("service.instance.id", instance.clone()));
    }
    let sampler = Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
        settings.sampling_rate.clamp(0.0, 1.0),
    )));
    Ok(SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_sampler(sampler)
        .with_resource(resource.build())
        .build())
}

/// Makes `span` continue the trace whose `traceparent` is in `metadata`, if any.
pub fn continue_trace(span: &tracing::Span, metadata: &tonic::metadata::MetadataMap) {
    let context = TraceContextPropagator::new().extract(&Metadata(metadata));
    let _ = span.set_parent(context);
}

/// gRPC metadata as the propagator reads it.
struct Metadata<'m>(&'m tonic::metadata::MetadataMap);

impl Extractor for Metadata<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|key| match key {
                tonic::metadata::KeyRef::Ascii(key) => Some(key.as_str()),
                tonic::metadata::KeyRef::Binary(_) => None,
            })
            .collect()
    }
}
