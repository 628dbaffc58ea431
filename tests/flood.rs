//! A flood of made-up keys against a real ratelimitd with a small counter budget: no call gets
//! an error (Envoy would let it through), keys that count towards their limit stay limited, a
//! newcomer is limited, and the table stays within its budget.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;

use common::process::Ratelimitd;
use common::*;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;

/// Flood requests per generator, of 256 one-hit keys each.
const FLOOD_REQUESTS: usize = 40;

/// The seed's default bucket: 60 a minute.
const LIMIT: usize = 60;

async fn flood(mut client: Client, generator: usize) -> usize {
    let mut errors = 0;
    for r in 0..FLOOD_REQUESTS {
        let keys: Vec<String> = (0..256)
            .map(|d| fresh_key(&format!("f{generator}-{r}-{d}")))
            .collect();
        let descriptors = keys
            .iter()
            .map(|key| descriptor(&[("api_key", key), ("bucket", "default")]))
            .collect();
        if client
            .should_rate_limit(request("mega-api", descriptors))
            .await
            .is_err()
        {
            errors += 1;
        }
    }
    errors
}

/// `n` calls for `key`; how many were OK.
async fn oks(client: &mut Client, key: &str, n: usize) -> usize {
    let mut ok = 0;
    for _ in 0..n {
        let answer = call(client, seed_request(key, "default")).await;
        ok += usize::from(answer.overall_code == Code::Ok as i32);
    }
    ok
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_flood_into_a_full_table_errs_nothing_and_limits_known_and_new_keys() {
    let config = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/config"));
    // 1 MiB: room for about 6,000 keys; three generators send 30,720.
    let rl = Ratelimitd::start_with(config, 0, &["--max-counter-memory", "1MiB"]);
    let client = Client::connect(format!("http://{}", rl.addr))
        .await
        .unwrap();
    let (heavy_ok, newcomer_ok, errors) = within_one_window(60, |attempt| {
        let client = client.clone();
        async move {
            let heavy = format!("heavy-{attempt}-{}", fresh_key("h"));
            let mut heavy_client = client.clone();
            // The heavy key counts towards its limit before the flood.
            let before = oks(&mut heavy_client, &heavy, 30).await;
            let generators: Vec<_> = (0..3)
                .map(|g| tokio::spawn(flood(client.clone(), g)))
                .collect();
            // While the flood runs: the heavy key goes on, and a newcomer arrives.
            let during = oks(&mut heavy_client, &heavy, 40).await;
            let newcomer = fresh_key("newcomer");
            let newcomer_ok = oks(&mut heavy_client, &newcomer, LIMIT + 10).await;
            let mut errors = 0;
            for generator in generators {
                errors += generator.await.unwrap();
            }
            (before + during, newcomer_ok, errors)
        }
    })
    .await;
    assert_eq!(errors, 0, "no flood request got a gRPC error");
    assert_eq!(heavy_ok, LIMIT, "the heavy key stayed limited at 60");
    assert_eq!(newcomer_ok, LIMIT, "the newcomer was limited at 60");
    let scrape = http_get(&rl.http_addr, "/metrics").1;
    let held = metric(&scrape, "ratelimitd_counters_in_memory");
    let evicted = metric(&scrape, "ratelimitd_counter_evictions_total");
    let bytes = metric(&scrape, "ratelimitd_counter_memory_bytes");
    let budget = metric(&scrape, "ratelimitd_counter_memory_budget_bytes");
    assert!(evicted > 20_000.0, "the flood evicted keys: {evicted}");
    assert!(held < 10_000.0, "the table holds what 1 MiB holds: {held}");
    assert!(
        bytes <= budget && budget <= f64::from(1 << 20),
        "{bytes} bytes in a budget of {budget}"
    );
    rl.stop();
}
