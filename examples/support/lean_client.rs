//! The load benchmark's client: `ShouldRateLimit` calls that cost the load generator as little
//! as possible, so that it measures the server and not itself.
//!
//! Requests are encoded once per key and sent as bytes; an answer is read only as far as its
//! `overall_code`. A generated client would build and decode every message field by field, a
//! 429 with its headers and JSON body costing about 15 allocations, on the load generator's
//! single core; with two cores that made the client nearly as busy as the server, and larger
//! answers slowed the client rather than the server.

use bytes::{Buf, BufMut, Bytes};
use prost::Message;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;

use super::seed_request::seed_request;

const SHOULD_RATE_LIMIT: &str = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit";

/// The seed-shaped request for `key`, encoded.
pub fn encoded_request(key: &str) -> Bytes {
    Bytes::from(seed_request(key).encode_to_vec())
}

/// A client on one HTTP/2 connection (shared with other clients of the same channel).
pub struct LeanClient {
    grpc: tonic::client::Grpc<Channel>,
    path: PathAndQuery,
}

impl LeanClient {
    pub fn new(channel: Channel) -> LeanClient {
        LeanClient {
            grpc: tonic::client::Grpc::new(channel),
            path: PathAndQuery::from_static(SHOULD_RATE_LIMIT),
        }
    }

    /// Sends one encoded request; the answer's `overall_code` (1 OK, 2 OVER_LIMIT).
    pub async fn call(&mut self, request: Bytes) -> Result<i32, tonic::Status> {
        self.grpc
            .ready()
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let answer = self
            .grpc
            .unary(tonic::Request::new(request), self.path.clone(), Lean)
            .await?;
        Ok(answer.into_inner())
    }
}

/// Requests as bytes, answers as their overall code.
#[derive(Clone, Copy)]
struct Lean;

impl Codec for Lean {
    type Encode = Bytes;
    type Decode = i32;
    type Encoder = Lean;
    type Decoder = Lean;

    fn encoder(&mut self) -> Lean {
        Lean
    }

    fn decoder(&mut self) -> Lean {
        Lean
    }
}

impl Encoder for Lean {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Lean {
    type Item = i32;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<i32>, tonic::Status> {
        let message = src.copy_to_bytes(src.remaining());
        overall_code(&message)
            .map(Some)
            .ok_or_else(|| tonic::Status::internal("an answer without a readable overall_code"))
    }
}

/// Field 1 of a `RateLimitResponse`, skipping any field before it; 0 (UNKNOWN) if absent.
fn overall_code(mut message: &[u8]) -> Option<i32> {
    while !message.is_empty() {
        let tag = prost::encoding::decode_varint(&mut message).ok()?;
        match (tag >> 3, tag & 7) {
            (1, 0) => {
                return prost::encoding::decode_varint(&mut message)
                    .ok()
                    .map(|v| v as i32);
            }
            (_, 0) => {
                prost::encoding::decode_varint(&mut message).ok()?;
            }
            (_, 2) => {
                let len = prost::encoding::decode_varint(&mut message).ok()? as usize;
                message = message.get(len..)?;
            }
            (_, 1) => message = message.get(8..)?,
            (_, 5) => message = message.get(4..)?,
            _ => return None,
        }
    }
    Some(0)
}
