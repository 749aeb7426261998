//! SIGTERM under load: a replica stops reading, finishes what it can within its
//! drain timeout, hands the rest back, and exits in time; every request is
//! answered exactly once.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use pgnm_tests::{Env, fast_worker, spawn_binary};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_leaves_no_request_unanswered() {
    let mut env = Env::new().await;
    env.start_router("router-1", fast_worker());
    let drain_ms = 1500;
    let common = [("PGNM_CLAIM_IDLE_MS", "2000".to_owned()), ("PGNM_BLOCK_MS", "200".to_owned())];
    let mut leaving = spawn_binary(
        &env,
        "pgnm-checker",
        &[&common[..], &[("PGNM_INSTANCE", "leaving".into()), ("PGNM_DRAIN_TIMEOUT_MS", drain_ms.to_string())]]
            .concat(),
    );
    let _staying = spawn_binary(&env, "pgnm-checker", &[&common[..], &[("PGNM_INSTANCE", "staying".into())]].concat());
    env.wait_for_groups().await;
    env.wait_for_group(pgnm_protocol::Role::Checker).await;
    tokio::time::sleep(Duration::from_millis(500)).await; // both consumers reading

    // 600 pings over about 3 s, each working 0 to 2.25 s: at any moment some are
    // in flight for longer than the leaving replica's drain timeout.
    let replies = env.raw_reply_stream("sigterm").await;
    let total = 600;
    let started = Instant::now();
    let mut terminated_at = None;
    for i in 0..total {
        let delay = (i % 10) as u64 * 250;
        let args = Some(rmpv::Value::Map(vec![("delayMs".into(), delay.into())]));
        let mut request = env.request(&format!("load-{i}"), "ping", args, Some(&replies), Duration::from_secs(60));
        request.role = Some("checker".into());
        env.send(&request).await;
        if terminated_at.is_none() && started.elapsed() > Duration::from_secs(1) {
            let pid = leaving.id().expect("running").to_string();
            let status = std::process::Command::new("kill").args(["-TERM", &pid]).status().expect("kill");
            assert!(status.success());
            terminated_at = Some(Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let terminated_at = terminated_at.expect("SIGTERM was sent");
    let exit = tokio::time::timeout(Duration::from_secs(15), leaving.wait()).await.expect("exits").expect("status");
    let took = terminated_at.elapsed();
    assert!(exit.success(), "a drained shutdown exits 0: {exit:?}");

    // Until every id has a reply (a duplicate must not end the wait early).
    let until = Instant::now() + Duration::from_secs(40);
    let got = loop {
        let got = env.replies(&replies).await;
        let distinct: std::collections::HashSet<&str> = got.iter().map(|r| r.id.as_str()).collect();
        if distinct.len() >= total || Instant::now() > until {
            break got;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut per_id: HashMap<String, usize> = HashMap::new();
    let mut by_instance: HashMap<String, usize> = HashMap::new();
    for reply in &got {
        *per_id.entry(reply.id.clone()).or_default() += 1;
        *by_instance.entry(reply.instance.clone()).or_default() += 1;
        assert!(reply.error.is_none(), "{}: {:?}", reply.id, reply.error);
    }
    let twice: Vec<(String, String)> = got
        .iter()
        .filter(|r| per_id.get(&r.id).is_some_and(|n| *n > 1))
        .map(|r| (r.id.clone(), r.instance.clone()))
        .collect();
    assert!(twice.is_empty(), "answered more than once (id, instance): {twice:?}");
    let missing: Vec<String> = (0..total).map(|i| format!("load-{i}")).filter(|id| !per_id.contains_key(id)).collect();
    assert!(missing.is_empty(), "unanswered: {missing:?}");
    assert!(by_instance.get("leaving").copied().unwrap_or(0) > 0, "{by_instance:?}");
    assert!(by_instance.get("staying").copied().unwrap_or(0) > 0, "{by_instance:?}");
    // Exit within the drain timeout plus the time to stop reading and hand back
    // (with room for a loaded machine; still well inside a 30 s grace period).
    assert!(took < Duration::from_millis(drain_ms + 8000), "took {took:?} to exit after SIGTERM");
    env.finish().await;
}
