//! 10,000 malformed entries flood the ingress while real traffic flows: every
//! malformed entry is answered (where its replyTo can be read) or
//! dead-lettered, the real requests keep being answered within their
//! deadlines, and no service stops.

use std::time::{Duration, Instant};

use fred::prelude::*;
use pgnm_bus::CallSpec;
use pgnm_protocol::Role;
use pgnm_tests::Env;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_malformed_entries_while_real_traffic_flows() {
    let mut env = Env::new().await;
    env.start_all().await;
    let replies = env.raw_reply_stream("flood").await;
    let deadline = pgnm_protocol::now_ms() + 120_000;

    // Real traffic: a ping every 5 ms until the flood is handled.
    let caller = env.caller().await;
    let stop = tokio_util::sync::CancellationToken::new();
    let traffic = {
        let (caller, stop) = (caller.clone(), stop.clone());
        tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut failures = Vec::new();
            while !stop.is_cancelled() {
                let started = Instant::now();
                let spec = CallSpec::new("ping", Duration::from_secs(5)).role(Role::Checker);
                match caller.call(spec).await {
                    Ok(reply) if reply.error.is_none() => latencies.push(started.elapsed()),
                    Ok(reply) => failures.push(format!("{:?}", reply.error)),
                    Err(e) => failures.push(e.to_string()),
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (latencies, failures)
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The flood: half with a readable replyTo (each must get an error reply),
    // half unreadable garbage (each must be dead-lettered), pipelined.
    let total = 10_000;
    let ingress = env.keys.ingress();
    let mut pipeline = env.redis.pipeline();
    for i in 0..total {
        let payload = if i % 2 == 0 {
            let bad = serde_json::json!({
                "version": 99, "id": format!("flood-{i}"), "command": "ping", "replyTo": replies,
                "deadline": deadline, "caller": "flood",
            });
            rmp_serde::to_vec_named(&bad).unwrap()
        } else {
            let mut junk = vec![0xc1];
            junk.extend((i as u32).to_be_bytes());
            junk
        };
        let _: () = pipeline.xadd(ingress.as_str(), false, None, "*", ("m", payload)).await.unwrap();
        if i % 500 == 499 || i == total - 1 {
            let _: Vec<Value> = pipeline.all().await.unwrap();
            pipeline = env.redis.pipeline();
        }
    }

    let answered = env.wait_replies(&replies, total / 2, Duration::from_secs(60)).await;
    let dlq = env.keys.dead_letter(Role::Router);
    let until = Instant::now() + Duration::from_secs(60);
    while env.xlen(&dlq).await < (total / 2) as u64 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.cancel();
    let (latencies, failures) = traffic.await.unwrap();

    assert_eq!(answered.len(), total / 2, "every readable malformed entry is answered");
    assert!(answered.iter().all(|r| r.error.as_ref().is_some_and(|e| e.code.as_str() == "BAD_REQUEST")));
    let mut ids: Vec<&str> = answered.iter().map(|r| r.id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), total / 2, "each answered once");
    assert_eq!(env.xlen(&dlq).await, (total / 2) as u64, "every unreadable entry is dead-lettered");
    assert!(failures.is_empty(), "real requests failed during the flood: {failures:?}");
    assert!(latencies.len() >= 10, "real traffic flowed: {} requests", latencies.len());
    let mut sorted = latencies.clone();
    sorted.sort();
    let p99 = sorted[sorted.len() * 99 / 100];
    // Latency is reported, not asserted (timing belongs to benchmarks); the
    // deadline above is what the callers were promised.
    tracing::info!(requests = sorted.len(), p50 = ?sorted[sorted.len() / 2], ?p99, "real traffic during the flood");

    // Still serving, every service still running.
    let reply = caller.call(CallSpec::new("ping", Duration::from_secs(5)).role(Role::Checker)).await.unwrap();
    assert!(reply.error.is_none());
    let services = env.take_services();
    assert!(services.iter().all(|s| !s.handle.is_finished()), "no service stopped");
    for s in services {
        s.stop().await;
    }
    caller.close().await;
    env.finish().await;
}
