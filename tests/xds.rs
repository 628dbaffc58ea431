//! Rules over xDS: a test ADS server (tonic, in this process) serves `RateLimitConfig`
//! resources shaped like Envoy Gateway's, and a real ratelimitd decides by them over gRPC.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::ads::{AdsServer, gateway_resource};
use common::{TestServer, call, descriptor, request};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use ratelimitd::app::Settings;
use ratelimitd::xds::XdsSettings;
use ratelimitd::xds::resource::{RateLimitUnit, TYPE_URL};

/// How many of `n` requests of the gateway's shape pass, for a client `value`.
async fn admitted(client: &mut common::Client, value: &str, n: usize) -> usize {
    let route = "httproute/default/backend/rule/0/match/0";
    let mut ok = 0;
    for _ in 0..n {
        let answer = call(
            client,
            request(
                "default/eg/http",
                vec![descriptor(&[(route, route), ("rule-0-match-0", value)])],
            ),
        )
        .await;
        ok += usize::from(answer.overall_code == Code::Ok as i32);
    }
    ok
}

/// A ratelimitd taking its rules from the ADS server of `xds`, none before.
async fn over_xds(xds: XdsSettings) -> TestServer {
    let settings = Settings {
        xds: Some(xds),
        ..Settings::default()
    };
    TestServer::start_rules(ratelimitd::rules::RuleSet::new(Vec::new()), settings).await
}

async fn healthcheck(server: &TestServer) -> (u16, String) {
    common::get_async(server.http_addr, "/healthcheck").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_arrive_over_ads_are_acked_replaced_and_a_broken_set_is_nacked() {
    let mut ads = AdsServer::start().await;
    let server = over_xds(XdsSettings {
        server: ads.url.clone(),
        tls: None,
        node_id: "envoy-ratelimit".into(),
        node_metadata: ratelimitd::xds::node_metadata("cluster=eg,zone=a,broken"),
        force_start: false,
    })
    .await;
    let mut client = server.client().await;

    // Before the first response: not ready.
    let (status, body) = healthcheck(&server).await;
    assert_eq!(status, 500, "{body}");
    assert!(body.contains("xDS"), "{body}");

    ads.publish("1", &[gateway_resource(3, RateLimitUnit::Minute)]);
    let ack = ads.answer_to("nonce-1").await;
    assert_eq!(ack.version_info, "1");
    assert!(ack.error_detail.is_none(), "an ACK: {ack:?}");
    assert_eq!(
        ack.node.as_ref().map(|n| n.id.as_str()),
        Some("envoy-ratelimit")
    );
    assert_eq!(ack.type_url, TYPE_URL);
    assert_eq!(healthcheck(&server).await.0, 200);
    assert_eq!(admitted(&mut client, "a", 5).await, 3, "3 a minute");
    // /rlconfig says where the rules came from: the xDS server and version, the resource.
    let (_, listing) = common::get_async(server.http_addr, "/rlconfig").await;
    assert!(
        listing.contains(&format!("xds {} version 1", ads.url)),
        "{listing}"
    );
    assert!(
        listing.contains("# domain default/eg/http: xds:default/eg/http"),
        "{listing}"
    );

    // A new version replaces the set; counters survive the swap.
    ads.publish("2", &[gateway_resource(5, RateLimitUnit::Minute)]);
    assert!(ads.answer_to("nonce-2").await.error_detail.is_none());
    assert_eq!(
        admitted(&mut client, "a", 5).await,
        2,
        "3 counted already, of 5"
    );

    // A broken set (a unit of 0, UNKNOWN) is NACKed with its reason; the rules stay.
    ads.publish("3", &[gateway_resource(1, RateLimitUnit::Unknown)]);
    let nack = ads.answer_to("nonce-3").await;
    assert_eq!(nack.version_info, "2", "the version still applied");
    let reason = nack.error_detail.expect("a NACK").message;
    assert!(reason.contains("xds:default/eg/http"), "{reason}");
    assert_eq!(
        admitted(&mut client, "b", 6).await,
        5,
        "version 2 still decides"
    );

    // The ADS server goes away: ratelimitd keeps serving by the last rules.
    let addr = ads.stop();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(admitted(&mut client, "c", 6).await, 5);
    assert_eq!(healthcheck(&server).await.0, 200);

    // Back on the same address: ratelimitd reconnects, asks for what it has (version 2), and
    // takes the new set.
    let mut back = AdsServer::start_at(&addr, None).await;
    let first = back.next_request().await;
    assert_eq!(
        first.version_info, "2",
        "it asks with the version it applied"
    );
    back.publish("4", &[gateway_resource(1, RateLimitUnit::Minute)]);
    let ack = back.answer_to("nonce-4").await;
    assert!(ack.error_detail.is_none(), "{ack:?}");
    assert_eq!(admitted(&mut client, "d", 3).await, 1, "version 4 decides");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forced_start_is_ready_at_once_and_answers_ok_until_the_first_rules() {
    let mut ads = AdsServer::start().await;
    let server = over_xds(XdsSettings {
        server: ads.url.clone(),
        tls: None,
        node_id: "n".into(),
        node_metadata: Vec::new(),
        force_start: true,
    })
    .await;
    let mut client = server.client().await;
    assert_eq!(healthcheck(&server).await.0, 200);
    assert_eq!(
        admitted(&mut client, "x", 5).await,
        5,
        "no rules yet: every domain is OK"
    );
    ads.publish("1", &[gateway_resource(1, RateLimitUnit::Week)]);
    ads.answer_to("nonce-1").await;
    assert_eq!(admitted(&mut client, "x", 3).await, 1);
    server.stop().await;
}

/// The ADS server's TLS, as Envoy Gateway's: its certificate from one CA, ratelimitd's client
/// certificate from another, which the server requires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_arrive_over_mutual_tls_and_a_client_without_a_certificate_gets_none() {
    let dir = tempfile::tempdir().unwrap();
    let mtls = common::ads::xds_mtls(dir.path());
    let mut ads = AdsServer::start_with(Some(mtls.server.clone())).await;
    ads.publish("1", &[gateway_resource(2, RateLimitUnit::Hour)]);

    let tls = |client: bool| ratelimitd::tls_client::ClientTls {
        ca: mtls.ca.clone(),
        client: client.then(|| (mtls.client_cert.clone(), mtls.client_key.clone())),
        server_name: Some("envoy-gateway".into()),
    };
    let xds = |tls| XdsSettings {
        server: ads.url.replace("http://", "https://"),
        tls: Some(tls),
        node_id: "envoy-ratelimit".into(),
        node_metadata: Vec::new(),
        force_start: false,
    };
    // Without a client certificate the server refuses it: no rules, not ready.
    let refused = over_xds(xds(tls(false))).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(healthcheck(&refused).await.0, 500);
    refused.stop().await;

    let server = over_xds(xds(tls(true))).await;
    let ack = ads.answer_to("nonce-1").await;
    assert!(ack.error_detail.is_none(), "{ack:?}");
    let mut client = server.client().await;
    assert_eq!(
        admitted(&mut client, "t", 4).await,
        2,
        "2 an hour, from xDS over mTLS"
    );
    assert_eq!(healthcheck(&server).await.0, 200);
    server.stop().await;
}
