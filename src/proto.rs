//! The protobuf types ratelimitd speaks, in one place.
//!
//! Messages and service traits come precompiled from `envoy-types`; the file descriptor set
//! that server reflection serves is built by `build.rs` from the vendored `proto/` tree, so
//! `grpcurl` can `list`, `describe` and call the service with no proto files of its own.

pub use envoy_types::pb::envoy::config::core::v3::HeaderValue;
pub use envoy_types::pb::envoy::extensions::common::ratelimit::v3::{
    RateLimitDescriptor, rate_limit_descriptor,
};
pub use envoy_types::pb::envoy::service::ratelimit::v3::{
    RateLimitRequest, RateLimitResponse, rate_limit_response, rate_limit_service_client,
    rate_limit_service_server,
};
pub use envoy_types::pb::envoy::r#type::v3::RateLimitUnit;

/// The full name of Envoy's rate-limit service, as health checks and reflection name it.
pub const RATE_LIMIT_SERVICE: &str = "envoy.service.ratelimit.v3.RateLimitService";

/// `FileDescriptorSet` of `envoy/service/ratelimit/v3/rls.proto` and everything it imports.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/rls_descriptor.bin"));
