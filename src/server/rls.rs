//! Envoy's `RateLimitService` as a gRPC route, with a codec of its own.
//!
//! tonic's generated server would decode each request into a `RateLimitRequest` (a `String`
//! per domain, key and value, a `Vec` per list) and encode a `RateLimitResponse` built the
//! same way. Here the codec hands the request's bytes to [`RlsService`], which reads them in
//! place, and has the [`Answer`] write its own protobuf into tonic's buffer. Everything else
//! (HTTP/2, gRPC framing, size limits, status codes) is tonic's, as for any generated service.
//!
//! In memory mode the decision is made as soon as the request is read, with no future of its
//! own; only in Redis mode is one boxed, to wait for Redis.

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Either, Map};
use tonic::Status;
use tonic::body::Body;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::{Service, StdError, http};
use tonic::server::{Grpc, NamedService, UnaryService};
use tracing::Instrument;

use crate::proto;
use crate::service::{Answer, Decided, MAX_REQUEST_BYTES, RlsService};

/// The one method of the service.
const SHOULD_RATE_LIMIT: &str = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit";

/// The `RateLimitService` route, for `tonic::transport::Server::add_service`.
#[derive(Clone)]
pub struct RlsRoute {
    service: Arc<RlsService>,
}

impl RlsRoute {
    pub fn new(service: Arc<RlsService>) -> RlsRoute {
        RlsRoute { service }
    }
}

impl NamedService for RlsRoute {
    const NAME: &'static str = proto::RATE_LIMIT_SERVICE;
}

impl<B> Service<http::Request<B>> for RlsRoute
where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<http::Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if request.uri().path() != SHOULD_RATE_LIMIT {
            return Box::pin(ready(Ok(Status::unimplemented("").into_http())));
        }
        // From here: the latency histogram includes reading the body and any wait for a worker.
        let method = ShouldRateLimit(Arc::clone(&self.service), std::time::Instant::now());
        Box::pin(async move {
            let mut grpc = Grpc::new(RlsCodec).max_decoding_message_size(MAX_REQUEST_BYTES);
            Ok(grpc.unary(method, request).await)
        })
    }
}

/// `ShouldRateLimit` on the request's bytes, for a call that arrived at the instant given.
struct ShouldRateLimit(Arc<RlsService>, std::time::Instant);

type Answered = Result<tonic::Response<Answer>, Status>;
type Waiting = tracing::instrument::Instrumented<BoxFuture<'static, Result<Answer, Status>>>;

impl UnaryService<Bytes> for ShouldRateLimit {
    type Response = Answer;
    type Future = Either<Ready<Answered>, Map<Waiting, fn(Result<Answer, Status>) -> Answered>>;

    fn call(&mut self, request: tonic::Request<Bytes>) -> Self::Future {
        let respond: fn(Result<Answer, Status>) -> Answered = |a| a.map(tonic::Response::new);
        // The call's span, for traces (`traces.rs`); off, and one check, unless exported.
        let call = tracing::debug_span!(target: "ratelimitd::service", "ShouldRateLimit");
        if !call.is_disabled() {
            crate::traces::continue_trace(&call, request.metadata());
        }
        let entered = call.enter();
        match self.0.decide_since(request.into_inner(), self.1) {
            Decided::Now(answer) => Either::Left(ready(respond(answer))),
            Decided::Later(answer) => {
                drop(entered);
                Either::Right(answer.instrument(call).map(respond))
            }
        }
    }
}

/// Requests as bytes, answers written by [`Answer::encode`].
#[derive(Clone, Copy)]
struct RlsCodec;

impl Codec for RlsCodec {
    type Encode = Answer;
    type Decode = Bytes;
    type Encoder = RlsCodec;
    type Decoder = RlsCodec;

    fn encoder(&mut self) -> RlsCodec {
        RlsCodec
    }

    fn decoder(&mut self) -> RlsCodec {
        RlsCodec
    }
}

impl Encoder for RlsCodec {
    type Item = Answer;
    type Error = Status;

    fn encode(&mut self, answer: Answer, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        answer.encode(buf);
        Ok(())
    }
}

impl Decoder for RlsCodec {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(buf.copy_to_bytes(buf.remaining())))
    }
}
