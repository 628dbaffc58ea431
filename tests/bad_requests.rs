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

/// A gRPC codec that sends its bytes as they are: a peer whose protobuf is broken.
#[derive(Clone, Copy)]
struct RawBytes;

impl tonic::codec::Codec for RawBytes {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawBytes;
    type Decoder = RawBytes;

    fn encoder(&mut self) -> RawBytes {
        RawBytes
    }

    fn decoder(&mut self) -> RawBytes {
        RawBytes
    }
}

impl tonic::codec::Encoder for RawBytes {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        use bytes::BufMut;
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawBytes {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        use bytes::Buf;
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

#[tokio::test]
async fn broken_protobuf_gets_invalid_argument_and_the_server_keeps_serving() {
    let server = TestServer::start(RULES).await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut raw = tonic::client::Grpc::new(channel);
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(
        "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit",
    );
    // domain "d", then descriptor ((k, v)).
    let good: &[u8] = &[
        0x0a, 1, b'd', 0x12, 8, 0x0a, 6, 0x0a, 1, b'k', 0x12, 1, b'v',
    ];
    let table: [(&str, Vec<u8>, &str); 5] = [
        ("cut short", vec![0x0a, 5, b'd'], "runs past the end"),
        (
            "a domain that is not UTF-8",
            vec![0x0a, 2, 0xc3, 0x28],
            "not UTF-8",
        ),
        (
            "an endless varint",
            vec![0x08; 1].into_iter().chain([0xff; 12]).collect(),
            "varint",
        ),
        (
            "a descriptor given as a number",
            vec![0x0a, 1, b'd', 0x10, 1],
            "wrong wire type",
        ),
        ("a group (wire type 3)", vec![0x0b], "wire type"),
    ];
    for (what, bytes, says) in table {
        raw.ready().await.unwrap();
        let status = raw
            .unary::<Vec<u8>, Vec<u8>, _>(tonic::Request::new(bytes), path.clone(), RawBytes)
            .await
            .expect_err(what);
        assert_eq!(
            status.code(),
            GrpcCode::InvalidArgument,
            "{what}: {}",
            status.message()
        );
        assert!(
            status.message().contains(says),
            "{what}: {}",
            status.message()
        );
    }
    raw.ready().await.unwrap();
    let answer = raw
        .unary::<Vec<u8>, Vec<u8>, _>(tonic::Request::new(good.to_vec()), path, RawBytes)
        .await
        .expect("the good message is answered");
    use prost::Message;
    let answer = envoy_types::pb::envoy::service::ratelimit::v3::RateLimitResponse::decode(
        answer.into_inner().as_slice(),
    )
    .unwrap();
    assert_eq!(answer.overall_code, Code::Ok as i32);
    assert_eq!(
        answer.statuses[0].limit_remaining, 999,
        "counted once, by the good message"
    );
}
