//! Any bytes as the body of `POST /json`: turned into a request (then read as gRPC's would be)
//! or refused with a message, never a panic.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use ratelimitd::admin::JsonCodec;
use ratelimitd::service::request::parse;

fuzz_target!(|data: &[u8]| {
    static CODEC: OnceLock<JsonCodec> = OnceLock::new();
    let codec = CODEC.get_or_init(|| match JsonCodec::new() {
        Ok(codec) => codec,
        Err(error) => panic!("the descriptors load: {error}"),
    });
    match codec.request(data) {
        Ok(bytes) => {
            let _ = parse(&bytes);
        }
        Err(message) => assert!(!message.is_empty()),
    }
});
