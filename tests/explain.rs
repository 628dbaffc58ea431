//! `POST /explain` on a running ratelimitd, in memory and counting in a real `redis-server`:
//! the explanation of the request in `/json`'s body with each window's count, what remains and
//! when it resets, which the next `ShouldRateLimit` over gRPC confirms; explaining counts
//! nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::process::{Ratelimitd, http_agent};
use common::redis::RedisServer;
use common::*;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;

const RULES: &str = "\
domain: shop
descriptors:
  - key: api_key
    rate_limit: {unit: hour, requests_per_unit: 5}
    descriptors:
      - key: path
        value: /checkout
        rate_limit: {unit: hour, requests_per_unit: 2, algorithm: token_bucket}
";

fn body(api_key: &str) -> String {
    format!(
        r#"{{"domain":"shop","descriptors":[{{"entries":[{{"key":"api_key","value":"{api_key}"}}]}},{{"entries":[{{"key":"api_key","value":"{api_key}"}},{{"key":"path","value":"/checkout"}}]}},{{"entries":[{{"key":"user","value":"u"}}]}}]}}"#
    )
}

fn explain(rl: &Ratelimitd, body: &str) -> (u16, String) {
    let mut response = http_agent()
        .post(format!("http://{}/explain", rl.http_addr))
        .send(body)
        .expect("the admin server answers");
    let text = response.body_mut().read_to_string().expect("a text body");
    (response.status().as_u16(), text)
}

/// The `now:` lines of an explanation.
fn now_lines(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("now: "))
        .map(|l| {
            l.split(", the window resets")
                .next()
                .unwrap_or(l)
                .to_string()
        })
        .collect()
}

fn explained_counts_then_confirmed(rl: &Ratelimitd) {
    let key = fresh_key("explain");
    for _ in 0..2 {
        let (status, _) = post_json(&rl.http_addr, &body(&key));
        assert_eq!(status, 200);
    }
    let (status, text) = explain(rl, &body(&key));
    assert_eq!(status, 200, "{text}");
    assert!(
        text.contains("level 2: path=/checkout takes `path: /checkout`"),
        "{text}"
    );
    assert!(text.contains("level 1: no rule for key `user`"), "{text}");
    assert_eq!(
        now_lines(&text),
        vec![
            "2 counted of 5 per hour, 3 remaining".to_string(),
            "holds 2 of 2 per hour, 0 remaining".to_string(),
        ],
        "{text}"
    );
    assert!(text.contains("the window resets in "), "{text}");
    // Explaining again counted nothing: the same state, and the next ShouldRateLimit finds it:
    // refused by the empty bucket, with 3 of the hour's 5 left.
    assert_eq!(now_lines(&explain(rl, &body(&key)).1), now_lines(&text));
    let answer = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let mut client = Client::connect(format!("http://{}", rl.addr))
            .await
            .unwrap();
        let descriptors = vec![
            descriptor(&[("api_key", &key)]),
            descriptor(&[("api_key", &key), ("path", "/checkout")]),
            descriptor(&[("user", "u")]),
        ];
        call(&mut client, request("shop", descriptors)).await
    });
    assert_eq!(answer.overall_code, Code::OverLimit as i32);
    assert_eq!(answer.statuses[0].limit_remaining, 3, "{answer:?}");
    assert_eq!(answer.statuses[1].code, Code::OverLimit as i32);
    let (_, after) = explain(rl, &body(&key));
    assert_eq!(
        now_lines(&after)[0],
        "2 counted of 5 per hour, 3 remaining",
        "a refused request counts nothing either"
    );
}

#[test]
fn explain_reports_each_window_without_counting_in_memory() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("shop.yaml"), RULES).unwrap();
    let rl = Ratelimitd::start(dir.path(), 0);
    explained_counts_then_confirmed(&rl);
    let (status, text) = explain(&rl, "{\"domain\": 7}");
    assert_eq!(status, 400, "{text}");
    rl.stop();
}

#[test]
fn explain_reports_each_window_without_counting_in_redis() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("shop.yaml"), RULES).unwrap();
    let url = redis.url();
    let rl = Ratelimitd::start_with(
        dir.path(),
        0,
        &["--backend", &url, "--backend-timeout-ms", "1000"],
    );
    explained_counts_then_confirmed(&rl);
    rl.stop();
}
