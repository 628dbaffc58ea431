//! Traces over OTLP: a small OTLP/gRPC receiver in the test, a real ratelimitd exporting to
//! it; one `decision` span per decision, with the service name, and Envoy's trace continued.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::process::{Ratelimitd, project};
use common::{Client, seed_request};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use tokio::sync::mpsc;

/// Reports every export it receives.
struct Receiver(mpsc::UnboundedSender<ExportTraceServiceRequest>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let _ = self.0.send(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// A span received: its name, trace id (hex) and the service name of its resource.
#[derive(Debug)]
struct Received {
    name: String,
    trace_id: String,
    service: String,
}

fn spans_of(export: ExportTraceServiceRequest) -> Vec<Received> {
    let mut out = Vec::new();
    for resource_spans in export.resource_spans {
        let service = resource_spans
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|kv| kv.key == "service.name")
            .and_then(|kv| kv.value.as_ref()?.value.as_ref())
            .map(|v| match v {
                Value::StringValue(s) => s.clone(),
                other => format!("{other:?}"),
            })
            .unwrap_or_default();
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                let trace_id = span.trace_id.iter().map(|b| format!("{b:02x}")).collect();
                out.push(Received {
                    name: span.name,
                    trace_id,
                    service: service.clone(),
                });
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_decision_is_a_span_exported_over_otlp_continuing_envoy_s_trace() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let (sender, mut exports) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let _ = tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(Receiver(sender)))
            .serve_with_incoming(incoming)
            .await;
    });
    let rl = Ratelimitd::start_with(
        &project("config"),
        0,
        &[
            "--otlp-endpoint",
            &endpoint,
            "--otlp-service-name",
            "ratelimitd-under-test",
        ],
    );
    let mut client = Client::connect(format!("http://{}", rl.addr))
        .await
        .unwrap();
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    for i in 0..3 {
        let mut request =
            tonic::Request::new(seed_request(&common::fresh_key("traced"), "default"));
        if i == 0 {
            let parent = format!("00-{trace_id}-00f067aa0ba902b7-01");
            request
                .metadata_mut()
                .insert("traceparent", parent.parse().unwrap());
        }
        client.should_rate_limit(request).await.unwrap();
    }
    let mut received = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while received
        .iter()
        .filter(|s: &&Received| s.name == "decision")
        .count()
        < 3
    {
        let export = tokio::time::timeout_at(deadline, exports.recv())
            .await
            .unwrap_or_else(|_| panic!("3 decision spans within 15 s; got {received:?}"))
            .expect("the receiver runs");
        received.extend(spans_of(export));
    }
    assert!(
        received
            .iter()
            .all(|s| s.service == "ratelimitd-under-test"),
        "{received:?}"
    );
    let continued: Vec<&Received> = received.iter().filter(|s| s.trace_id == trace_id).collect();
    assert!(
        continued.iter().any(|s| s.name == "decision"),
        "Envoy's trace is continued: {received:?}"
    );
    assert!(
        continued.iter().any(|s| s.name == "ShouldRateLimit"),
        "{received:?}"
    );
    drop(client);
    rl.stop();
}
