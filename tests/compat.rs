//! envoyproxy/ratelimit's rule format as its users write it, through real gRPC: rule files in
//! the shape Envoy Gateway generates (`tests/fixtures/envoy-gateway-shape/`), `detailed_metric`,
//! `value_to_metric`, `share_threshold`, `quota_mode`, per-rule and global shadow mode. Each
//! answer is the one envoyproxy/ratelimit gives (read from its `src/config/config_impl.go` and
//! `src/service/ratelimit.go`; see docs/envoyproxy-ratelimit.md).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitResponse;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{Code, rate_limit::Unit};

use common::{
    TestServer, call, descriptor, fresh_key, get_async, header, metric, request, within_one_window,
};
use ratelimitd::app::Settings;

const SHAPE: &str = "tests/fixtures/envoy-gateway-shape";

fn code(response: &RateLimitResponse) -> Code {
    Code::try_from(response.overall_code).expect("a known code")
}

fn codes(response: &RateLimitResponse) -> Vec<Code> {
    response
        .statuses
        .iter()
        .map(|s| Code::try_from(s.code).expect("a known code"))
        .collect()
}

/// One series of a per-rule metric, labels in the order Prometheus writes them.
fn rule_series(name: &str, domain: &str, key1: &str, key2: &str, window: &str) -> String {
    format!(
        "ratelimit_service_rate_limit_{name}{{domain=\"{domain}\",key1=\"{key1}\",key2=\"{key2}\",window=\"{window}\"}}"
    )
}

async fn scrape(server: &TestServer) -> String {
    let (status, body) = get_async(server.http_addr, "/metrics").await;
    assert_eq!(status, 200);
    body
}

const ROUTE0: &str = "httproute/default/backend/rule/0";
const ROUTE1: &str = "httproute/default/backend/rule/1";

#[tokio::test]
async fn envoy_gateway_rules_limit_as_generated() {
    let server = TestServer::start_path(SHAPE, Settings::default()).await;
    let mut client = server.client().await;
    let observed = within_one_window(60, |attempt| {
        let mut client = client.clone();
        async move {
            // `value: ""` under the route: any header value, a counter each.
            let user = format!("user-{attempt}-{}", fresh_key("a"));
            let other = format!("user-{attempt}-{}", fresh_key("b"));
            let route0 = |value: &str| {
                request(
                    "default/eg/http",
                    vec![descriptor(&[(ROUTE0, ROUTE0), ("rule-0-match-0", value)])],
                )
            };
            let mut answers = Vec::new();
            for _ in 0..4 {
                answers.push(call(&mut client, route0(&user)).await);
            }
            answers.push(call(&mut client, route0(&other)).await);
            answers
        }
    })
    .await;
    let got: Vec<Code> = observed.iter().map(code).collect();
    assert_eq!(
        got,
        [Code::Ok, Code::Ok, Code::Ok, Code::OverLimit, Code::Ok]
    );
    let limit = observed[0].statuses[0].current_limit.as_ref().unwrap();
    assert_eq!(
        (limit.requests_per_unit, limit.unit),
        (3, Unit::Minute as i32)
    );
    assert_eq!(observed[0].statuses[0].limit_remaining, 2);

    // The masked remote address rule: an exact value, two an hour, for every client.
    let route1 = request(
        "default/eg/http",
        vec![descriptor(&[
            (ROUTE1, ROUTE1),
            ("masked_remote_address", "0.0.0.0/0"),
        ])],
    );
    let first = call(&mut client, route1.clone()).await;
    assert_eq!(code(&first), Code::Ok);
    assert_eq!(
        first.statuses[0].current_limit.as_ref().unwrap().unit,
        Unit::Hour as i32
    );
    assert_eq!(code(&call(&mut client, route1.clone()).await), Code::Ok);
    assert_eq!(code(&call(&mut client, route1).await), Code::OverLimit);

    // A route the rules do not name is not limited.
    let unknown = request(
        "default/eg/http",
        vec![descriptor(&[("httproute/default/other/rule/0", "x")])],
    );
    let answer = call(&mut client, unknown).await;
    assert_eq!(code(&answer), Code::Ok);
    assert_eq!(answer.statuses[0].current_limit, None);

    // The top-level name is kept and listed.
    let (_, rlconfig) = get_async(server.http_addr, "/rlconfig").await;
    assert!(
        rlconfig.contains("default/eg/http.yaml (name default/eg/http)")
            || rlconfig.contains("routes.yaml (name default/eg/http)"),
        "{rlconfig}"
    );
    server.stop().await;
}

#[tokio::test]
async fn detailed_metric_names_the_request_values_of_that_rule_only_and_bounds_them() {
    let server = TestServer::start_path(SHAPE, Settings::default()).await;
    let mut client = server.client().await;
    let route0 = |value: &str| {
        request(
            "default/eg/http",
            vec![descriptor(&[(ROUTE0, ROUTE0), ("rule-0-match-0", value)])],
        )
    };
    // 1,000 distinct values fill the rule's series; the 1,001st goes to `_other_`.
    for i in 0..1000 {
        call(&mut client, route0(&format!("value-{i}"))).await;
    }
    call(&mut client, route0("value-0")).await;
    call(&mut client, route0("one-too-many")).await;
    call(&mut client, route0("two-too-many")).await;
    // A rule without detailed_metric never shows a request value.
    let secret = fresh_key("secret-file");
    call(
        &mut client,
        request(
            "default/eg/files",
            vec![descriptor(&[("path", &format!("files/{secret}"))])],
        ),
    )
    .await;
    let scrape = scrape(&server).await;
    let series = |key2: &str| {
        metric(
            &scrape,
            &rule_series(
                "total_hits",
                "default/eg/http",
                &format!("{ROUTE0}_{ROUTE0}"),
                key2,
                "1m",
            ),
        )
    };
    assert_eq!(series("rule-0-match-0_value-0"), 2.0);
    assert_eq!(series("rule-0-match-0_value-999"), 1.0);
    assert_eq!(series("rule-0-match-0_one-too-many"), 0.0);
    assert!(
        !scrape.contains("one-too-many"),
        "an 1,001st value is not a label"
    );
    let other = metric(
        &scrape,
        &rule_series(
            "total_hits",
            "default/eg/http",
            &format!("{ROUTE0}__other_"),
            "rule-0-match-0__other_",
            "1m",
        ),
    );
    assert_eq!(other, 2.0);
    let value_series = scrape
        .lines()
        .filter(|l| {
            l.starts_with("ratelimit_service_rate_limit_total_hits{") && l.contains("value-")
        })
        .count();
    assert_eq!(value_series, 1000);
    assert!(
        !scrape.contains(&secret),
        "a value of a rule without detailed_metric"
    );
    assert_eq!(
        metric(
            &scrape,
            &rule_series("total_hits", "default/eg/files", "path_files/*", "", "1m")
        ),
        1.0
    );
    server.stop().await;
}

#[tokio::test]
async fn share_threshold_makes_every_matching_value_share_one_counter() {
    let server = TestServer::start_path(SHAPE, Settings::default()).await;
    let client = server.client().await;
    let (shared, own) = within_one_window(60, |attempt| {
        let mut client = client.clone();
        async move {
            let files = |name: &str| {
                request(
                    "default/eg/files",
                    vec![descriptor(&[("path", &format!("files/{attempt}-{name}"))])],
                )
            };
            let mut shared = Vec::new();
            for name in ["a.pdf", "b.csv", "c.txt", "d.json"] {
                shared.push(code(&call(&mut client, files(name)).await));
            }
            // `docs/*` has value_to_metric but no share_threshold: a counter per path.
            let mut own = Vec::new();
            for name in ["x", "y"] {
                let docs = request(
                    "default/eg/files",
                    vec![descriptor(&[("path", &format!("docs/{attempt}-{name}"))])],
                );
                let answer = call(&mut client, docs).await;
                own.push(answer.statuses[0].limit_remaining);
            }
            (shared, own)
        }
    })
    .await;
    assert_eq!(
        shared,
        [Code::Ok, Code::Ok, Code::Ok, Code::OverLimit],
        "four paths, one counter of 3"
    );
    assert_eq!(own, [99, 99], "a counter per docs/ path");
    // value_to_metric: the runtime value stands in the metric name of that level.
    let mut client = client.clone();
    call(
        &mut client,
        request("default/eg/files", vec![descriptor(&[("user", "alice")])]),
    )
    .await;
    let scrape = scrape(&server).await;
    assert_eq!(
        metric(
            &scrape,
            &rule_series("total_hits", "default/eg/files", "user_alice", "", "1m")
        ),
        1.0
    );
    assert!(
        scrape.contains("key1=\"path_docs/0-x\"") || scrape.contains("key1=\"path_docs/1-x\""),
        "{scrape}"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_shadow_mode_rule_counts_and_never_refuses() {
    let server = TestServer::start_path(SHAPE, Settings::default()).await;
    let client = server.client().await;
    let rule = "httproute/default/shadow/rule/0";
    let shadow = request(
        "default/eg/shadow",
        vec![descriptor(&[
            (rule, rule),
            ("rule-0-match-0", "rule-0-match-0"),
        ])],
    );
    let answers = within_one_window(60, |_| {
        let mut client = client.clone();
        let shadow = shadow.clone();
        async move {
            let mut answers = Vec::new();
            for _ in 0..5 {
                answers.push(call(&mut client, shadow.clone()).await);
            }
            answers
        }
    })
    .await;
    for answer in &answers {
        assert_eq!(code(answer), Code::Ok);
        assert_eq!(codes(answer), [Code::Ok]);
        assert_eq!(header(answer, "retry-after"), None);
    }
    let scrape = scrape(&server).await;
    let over = metric(
        &scrape,
        &rule_series(
            "shadow_mode",
            "default/eg/shadow",
            &format!("{rule}_{rule}"),
            "rule-0-match-0_rule-0-match-0",
            "1m",
        ),
    );
    assert!(
        over >= 3.0,
        "5 calls on 2 a minute: 3 over at least ({over})"
    );
    server.stop().await;
}

/// envoyproxy/ratelimit's quota mode: a quota-mode descriptor over its limit does not refuse
/// the request while another quota group (model) still has quota; the request is refused when
/// a descriptor in normal mode is over, or every quota group is. A request refused by its only
/// quota group consumes nothing.
#[tokio::test]
async fn quota_mode_refuses_only_when_every_model_is_exhausted() {
    let server = TestServer::start_path(SHAPE, Settings::default()).await;
    let client = server.client().await;
    let table = within_one_window(60, |attempt| {
        let mut client = client.clone();
        async move {
            let tenant = format!("t-{attempt}-{}", fresh_key("q"));
            let model = |backend: &str, model: &str| {
                descriptor(&[("backend_name", backend), ("model_name_override", model)])
            };
            let gpt = || model("openai", "gpt");
            let claude = || model("anthropic", "claude");
            let mini = || model("openai", "gpt-mini");
            let mini_tenant = || {
                descriptor(&[
                    ("backend_name", "openai"),
                    ("model_name_override", "gpt-mini"),
                    ("tenant", &tenant),
                ])
            };
            let chat = || descriptor(&[("route", "chat")]);
            // gpt has 2 a minute, claude 1; gpt-mini 5 and 1 per tenant (one group: the model).
            let steps = [
                ("both models have quota", vec![gpt(), claude()]),
                (
                    "tenant and model buckets have room",
                    vec![mini_tenant(), mini()],
                ),
                (
                    "tenant bucket exhausted, gpt has quota",
                    vec![mini_tenant(), mini(), gpt()],
                ),
                ("both models exhausted", vec![gpt(), claude()]),
                (
                    "tenant bucket exhausted, alone",
                    vec![mini_tenant(), mini()],
                ),
                (
                    "normal within, the only model exhausted",
                    vec![chat(), claude()],
                ),
                // ... and took nothing: the route still has its 2.
                ("normal within both", vec![chat(), chat()]),
                ("normal over", vec![chat()]),
            ];
            let mut rows = Vec::new();
            for (name, descriptors) in steps {
                let answer = call(&mut client, request("default/eg/models", descriptors)).await;
                rows.push((name, code(&answer), codes(&answer)));
            }
            rows
        }
    })
    .await;
    use Code::{Ok, OverLimit as Over};
    let expected: [(&str, Code, Vec<Code>); 8] = [
        ("both models have quota", Ok, vec![Ok, Ok]),
        ("tenant and model buckets have room", Ok, vec![Ok, Ok]),
        (
            "tenant bucket exhausted, gpt has quota",
            Ok,
            vec![Over, Ok, Ok],
        ),
        ("both models exhausted", Over, vec![Over, Over]),
        ("tenant bucket exhausted, alone", Over, vec![Over, Ok]),
        (
            "normal within, the only model exhausted",
            Over,
            vec![Ok, Over],
        ),
        ("normal within both", Ok, vec![Ok, Ok]),
        ("normal over", Over, vec![Over]),
    ];
    for (row, want) in table.into_iter().zip(expected) {
        assert_eq!(row, want);
    }
    server.stop().await;
}

#[tokio::test]
async fn global_shadow_mode_answers_ok_and_counts_what_it_would_refuse() {
    let rules = r#"
domain: shadowed
descriptors:
  - key: api_key
    rate_limit: {unit: minute, requests_per_unit: 10}
"#;
    let settings = Settings {
        shadow_mode: true,
        ..Settings::default()
    };
    let server = TestServer::start_with(rules, settings).await;
    let client = server.client().await;
    let answers = within_one_window(60, |_| {
        let mut client = client.clone();
        async move {
            let key = fresh_key("shadowed");
            let mut answers = Vec::new();
            for _ in 0..100 {
                let one = request("shadowed", vec![descriptor(&[("api_key", &key)])]);
                answers.push(call(&mut client, one).await);
            }
            answers
        }
    })
    .await;
    assert!(
        answers.iter().all(|a| code(a) == Code::Ok),
        "every answer OK"
    );
    // Reported as if enforced: the 11th says the descriptor is over, with nothing left.
    assert_eq!(codes(&answers[9]), [Code::Ok]);
    assert_eq!(codes(&answers[10]), [Code::OverLimit]);
    assert_eq!(answers[10].statuses[0].limit_remaining, 0);
    assert_eq!(header(&answers[10], "ratelimit-remaining"), Some("0"));
    assert_eq!(header(&answers[10], "retry-after"), None);
    let scrape = scrape(&server).await;
    let series = |name: &str| metric(&scrape, &rule_series(name, "shadowed", "api_key", "", "1m"));
    assert_eq!(series("total_hits"), 100.0);
    assert_eq!(series("over_limit"), 90.0);
    assert_eq!(series("shadow_mode"), 90.0);
    assert_eq!(
        metric(&scrape, "ratelimit_service_global_shadow_mode"),
        90.0
    );
    assert_eq!(metric(&scrape, "ratelimitd_shadow_mode"), 1.0);
    assert_eq!(
        metric(&scrape, "ratelimitd_decisions_total{code=\"OK\"}"),
        100.0
    );
    server.stop().await;
}
