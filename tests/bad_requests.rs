//! Malformed and oversized requests: each gets a gRPC error (or a bounded answer), never a
//! panic, and the server goes on serving.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use tonic::Code as GrpcCode;

const RULES: &str = r#"
domain: d
descriptors:
  - key: k
    rate_limit: {unit: hour, requests_per_unit: 1000}
"#;

#[tokio::test]
async fn bad_requests_get_errors_and_the_server_keeps_serving() {
    let server = TestServer::start(RULES).await;
    let mut client = server.client().await;
    let huge_value = "v".repeat(1024 * 1024);
    let table = [
        (
            "empty domain",
            request("", vec![descriptor(&[("k", "v")])]),
            GrpcCode::InvalidArgument,
        ),
        (
            "no descriptors",
            request("d", vec![]),
            GrpcCode::InvalidArgument,
        ),
        (
            "descriptor without entries",
            request("d", vec![descriptor(&[])]),
            GrpcCode::InvalidArgument,
        ),
        (
            "entry with an empty key",
            request("d", vec![descriptor(&[("", "v")])]),
            GrpcCode::InvalidArgument,
        ),
        (
            "10,000 descriptors",
            request("d", vec![descriptor(&[("k", "v")]); 10_000]),
            GrpcCode::InvalidArgument,
        ),
        (
            "a 1 MiB value",
            request("d", vec![descriptor(&[("k", &huge_value)])]),
            GrpcCode::OutOfRange,
        ),
        (
            "a 9 KiB value",
            request("d", vec![descriptor(&[("k", &"v".repeat(9 * 1024))])]),
            GrpcCode::InvalidArgument,
        ),
    ];
    for (what, bad, expected) in table {
        let status = client.should_rate_limit(bad).await.expect_err(what);
        assert_eq!(status.code(), expected, "{what}: {}", status.message());
        assert!(!status.message().is_empty(), "{what}: the error says why");
        let ok = call(
            &mut client,
            request("d", vec![descriptor(&[("k", "after")])]),
        )
        .await;
        assert_eq!(
            ok.overall_code,
            Code::Ok as i32,
            "still serving after {what}"
        );
    }
}

#[tokio::test]
async fn the_largest_accepted_request_gets_a_bounded_answer() {
    let server = TestServer::start(RULES).await;
    let mut client = server.client().await;
    let descriptors = (0..256)
        .map(|i| descriptor(&[("k", &format!("value-{i}"))]))
        .collect();
    let response = call(&mut client, request("d", descriptors)).await;
    assert_eq!(response.statuses.len(), 256);
    assert_eq!(response.overall_code, Code::Ok as i32);
}
