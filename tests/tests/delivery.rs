//! The delivery rules of the bus, over the wire: reclaim of a killed consumer's
//! work, idempotency per request id, deadlines, dead letters, trimming, drain.

use std::time::Duration;

use fred::prelude::*;
use pgnm_protocol::{ErrorCode, encode_request};
use pgnm_tests::{Env, fast_worker, spawn_binary};

fn ping_args(delay_ms: u64) -> Option<rmpv::Value> {
    Some(rmpv::Value::Map(vec![("delayMs".into(), delay_ms.into())]))
}

/// Returns the consumers of `group` on `stream` that have pending entries.
async fn pending_owners(env: &Env, stream: &str, group: &str) -> Vec<String> {
    let summary: Value = env.redis.xpending(stream, group, ()).await.expect("xpending");
    let Value::Array(parts) = summary else { return Vec::new() };
    let Some(Value::Array(consumers)) = parts.into_iter().nth(3) else { return Vec::new() };
    consumers
        .into_iter()
        .filter_map(|c| match c {
            Value::Array(mut pair) if !pair.is_empty() => pair.swap_remove(0).as_string(),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_consumers_entry_is_reclaimed_and_answered_once() {
    let mut env = Env::new().await;
    env.start_router("router-1", fast_worker());
    // The first checker is a real process, killed with SIGKILL mid-command.
    let mut doomed = spawn_binary(
        &env,
        "pgnm-checker",
        &[("PGNM_INSTANCE", "doomed".into()), ("PGNM_CLAIM_IDLE_MS", "1000".into())],
    );
    let inbox = env.keys.inbox(pgnm_protocol::Role::Checker);
    env.wait_for_groups().await;
    env.wait_for_group(pgnm_protocol::Role::Checker).await;

    let replies = env.raw_reply_stream("reclaim").await;
    let mut request = env.request("reclaim-1", "ping", ping_args(3000), Some(&replies), Duration::from_secs(30));
    request.role = Some("checker".into());
    env.send(&request).await;

    // Wait until the doomed checker holds the entry, then kill it.
    let mut held = false;
    for _ in 0..200 {
        if pending_owners(&env, &inbox, "checker").await == ["doomed"] {
            held = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(held, "the doomed checker never picked the entry up");
    doomed.kill().await.expect("kill -9");

    // A live replica takes the entry over after the claim timeout and answers it.
    env.start_checker("survivor", fast_worker());
    let got = env.wait_replies(&replies, 1, Duration::from_secs(15)).await;
    assert_eq!(got.len(), 1, "exactly one reply");
    assert_eq!(got[0].id, "reclaim-1");
    assert_eq!(got[0].instance, "survivor");
    assert!(got[0].error.is_none(), "{:?}", got[0].error);
    // And only once: nothing else arrives, nothing stays pending.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(env.replies(&replies).await.len(), 1);
    assert!(pending_owners(&env, &inbox, "checker").await.is_empty());
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_command_keeps_its_claim_and_is_not_executed_twice() {
    let mut env = Env::new().await;
    env.start_all().await;
    env.start_checker("checker-2", fast_worker());
    let replies = env.raw_reply_stream("long").await;
    // Three claim timeouts long: the owner's refresher must keep the other replica away.
    let mut request = env.request("long-1", "ping", ping_args(3000), Some(&replies), Duration::from_secs(20));
    request.role = Some("checker".into());
    env.send(&request).await;
    let got = env.wait_replies(&replies, 1, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let got_after = env.replies(&replies).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got_after.len(), 1, "the command was answered twice: {got_after:?}");
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_request_id_is_executed_once_and_answered_each_time() {
    let mut env = Env::new().await;
    env.start_all().await;
    env.start_checker("checker-2", fast_worker());
    let replies = env.raw_reply_stream("dup").await;
    let mut request = env.request("dup-1", "ping", ping_args(300), Some(&replies), Duration::from_secs(10));
    request.role = Some("checker".into());

    // Twice at once (the second waits for the first's reply), then once more later.
    env.send(&request).await;
    env.send(&request).await;
    let got = env.wait_replies(&replies, 2, Duration::from_secs(5)).await;
    assert_eq!(got.len(), 2);
    env.send(&request).await;
    let got = env.wait_replies(&replies, 3, Duration::from_secs(5)).await;
    assert_eq!(got.len(), 3);
    // Identical replies, answer time included: one execution.
    assert!(got.iter().all(|r| r == &got[0]), "{got:#?}");
    assert!(got[0].error.is_none());
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_request_is_not_executed() {
    let mut env = Env::new().await;
    env.start_all().await;
    let replies = env.raw_reply_stream("late").await;

    // Expired at the ingress: the router answers.
    let mut request = env.request("late-1", "ping", None, Some(&replies), Duration::ZERO);
    request.deadline = pgnm_protocol::Deadline(pgnm_protocol::now_ms() - 1000);
    env.send(&request).await;
    // Expired by the time it reaches the role (written straight to its inbox).
    let mut request = env.request("late-2", "ping", None, Some(&replies), Duration::ZERO);
    request.deadline = pgnm_protocol::Deadline(pgnm_protocol::now_ms() - 1000);
    request.role = Some("checker".into());
    env.xadd_raw(&env.keys.inbox(pgnm_protocol::Role::Checker), encode_request(&request)).await;
    // Expiring while it executes.
    let mut request = env.request("late-3", "ping", ping_args(2000), Some(&replies), Duration::from_millis(300));
    request.role = Some("checker".into());
    env.send(&request).await;

    let got = env.wait_replies(&replies, 3, Duration::from_secs(5)).await;
    assert_eq!(got.len(), 3);
    for reply in &got {
        assert_eq!(reply.error.as_ref().map(|e| e.code), Some(ErrorCode::DeadlineExceeded), "{reply:?}");
    }
    assert_eq!(got.iter().find(|r| r.id == "late-1").unwrap().instance, "router-1");
    assert_eq!(got.iter().find(|r| r.id == "late-2").unwrap().instance, "checker-1");
    // Nothing was executed to the end, so no final result was stored (the
    // timed-out one keeps its retryable reply only for a redelivery of its entry).
    for id in ["late-1", "late-2", "late-3"] {
        let stored: Option<Vec<u8>> = env.redis.get(env.keys.result(pgnm_protocol::Role::Checker, id)).await.unwrap();
        assert!(stored.as_ref().is_none_or(|s| s.starts_with(b"retry:")), "{id} left a stored result");
    }
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_message_is_dead_lettered_and_its_caller_told() {
    let mut env = Env::new().await;
    let replies = env.raw_reply_stream("poison").await;
    let inbox = env.keys.inbox(pgnm_protocol::Role::Checker);
    let _: Value = env.redis.xgroup_create(inbox.as_str(), "checker", "0", true).await.unwrap();
    let mut request = env.request("poison-1", "ping", None, Some(&replies), Duration::from_secs(30));
    request.role = Some("checker".into());
    let entry = env.xadd_raw(&inbox, encode_request(&request)).await;
    // Consumers that read it and died, again and again: six deliveries.
    let _: Value = env.redis.xreadgroup("checker", "ghost", None, None, false, inbox.as_str(), ">").await.unwrap();
    for _ in 0..5 {
        let _: Value = env
            .redis
            .xclaim(inbox.as_str(), "checker", "ghost", 0, entry.as_str(), None, None, None, false, false)
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    env.start_checker("checker-1", fast_worker());

    let got = env.wait_replies(&replies, 1, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].error.as_ref().map(|e| e.code), Some(ErrorCode::DeadLettered));
    let dead = env.dead_letters(&env.keys.dead_letter(pgnm_protocol::Role::Checker)).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["entry"], entry.as_bytes());
    assert_eq!(dead[0]["m"], encode_request(&request));
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trimming_never_drops_an_unacknowledged_entry() {
    let env = Env::new().await;
    let bus = env.bus("janitor").await;
    let source = pgnm_bus::worker::Source {
        stream: format!("{}:trim", env.prefix),
        group: "g".into(),
        dead_letter: format!("{}:trim-dlq", env.prefix),
    };
    let _: Value = env.redis.xgroup_create(source.stream.as_str(), "g", "0", true).await.unwrap();
    let mut ids = Vec::new();
    for i in 0..30u32 {
        ids.push(env.xadd_raw(&source.stream, i.to_be_bytes().to_vec()).await);
    }
    // 20 delivered; of them all but #5 and #12 acknowledged; 10 never delivered.
    let _: Value = env.redis.xreadgroup("g", "c", Some(20), None, false, source.stream.as_str(), ">").await.unwrap();
    let acked: Vec<&str> =
        ids[..20].iter().enumerate().filter(|(i, _)| *i != 5 && *i != 12).map(|(_, id)| id.as_str()).collect();
    let _: i64 = env.redis.xack(source.stream.as_str(), "g", acked).await.unwrap();

    pgnm_bus::worker::trim(&bus, &source).await.expect("trim");
    let left: Vec<(String, std::collections::HashMap<String, Vec<u8>>)> =
        env.redis.xrange(source.stream.as_str(), "-", "+", None).await.unwrap();
    let left: Vec<&str> = left.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(left.first().copied(), Some(ids[5].as_str()), "entries below the oldest pending one go");
    assert!(left.contains(&ids[12].as_str()));
    assert!(ids[20..].iter().all(|id| left.contains(&id.as_str())), "undelivered entries stay");

    // Once everything is acknowledged, only the last delivered entry remains.
    let _: i64 = env.redis.xack(source.stream.as_str(), "g", vec![ids[5].as_str(), ids[12].as_str()]).await.unwrap();
    pgnm_bus::worker::trim(&bus, &source).await.expect("trim");
    assert_eq!(env.xlen(&source.stream).await, 11);
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_in_flight_work() {
    let mut env = Env::new().await;
    env.start_all().await;
    let replies = env.raw_reply_stream("drain").await;
    for i in 0..5 {
        let mut request =
            env.request(&format!("drain-{i}"), "ping", ping_args(500), Some(&replies), Duration::from_secs(10));
        request.role = Some("checker".into());
        env.send(&request).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Stop every service (router first, then the checker) while the pings run.
    for service in env.take_services() {
        service.stop().await;
    }
    let got = env.replies(&replies).await;
    assert_eq!(got.len(), 5, "every in-flight command finished before its service stopped");
    assert!(got.iter().all(|r| r.error.is_none()));
    env.finish().await;
}
