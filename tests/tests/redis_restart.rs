//! A Redis restart loses every stream, group and reply stream (no persistence):
//! the services reconnect and re-create their groups, callers re-create their
//! reply streams, and commands flow again without restarting anything.

use std::time::{Duration, Instant};

use fred::prelude::*;
use pgnm_bus::{CallSpec, Caller};
use pgnm_protocol::Role;
use pgnm_tests::{Env, OwnRedis, fast_worker};

/// Pings `role` until it answers, for at most `patience`.
async fn ping_until_answered(caller: &Caller, role: Role, patience: Duration) {
    let start = Instant::now();
    loop {
        match caller.call(CallSpec::new("ping", Duration::from_secs(2)).role(role)).await {
            Ok(reply) if reply.result().is_ok() => return,
            other => {
                assert!(start.elapsed() < patience, "{role} still not answering after a Redis restart: {other:?}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

async fn groups(env: &Env, stream: &str) -> Vec<String> {
    let v: Value = env.redis.xinfo_groups(stream).await.unwrap_or(Value::Null);
    let Value::Array(groups) = v else { return Vec::new() };
    groups
        .into_iter()
        .filter_map(|g| {
            let Value::Array(fields) = g else { return None };
            let mut it = fields.into_iter();
            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                if k.as_str().as_deref() == Some("name") {
                    return v.as_string();
                }
            }
            None
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_and_callers_recover_after_a_redis_restart() {
    let mut redis = OwnRedis::start().await;
    let mut env = Env::with_url(redis.url()).await;
    env.start_router("router-1", fast_worker());
    env.start_checker("checker-1", fast_worker());
    env.start_scheduler("scheduler-1", fast_worker());
    env.wait_for_groups().await;
    let caller = env.caller().await;
    ping_until_answered(&caller, Role::Checker, Duration::from_secs(5)).await;

    redis.restart().await;

    // Everything is gone; the services and the caller must notice and rebuild.
    for role in [Role::Checker, Role::Scheduler, Role::Router] {
        ping_until_answered(&caller, role, Duration::from_secs(30)).await;
    }
    for role in [Role::Router, Role::Checker, Role::Scheduler] {
        assert_eq!(groups(&env, &env.keys.inbox(role)).await, [role.as_str()], "group of {role}");
    }
    // And it keeps working: a fan-out to both roles, then a burst.
    let reply = caller.call(CallSpec::new("ping", Duration::from_secs(5))).await.expect("a reply");
    assert!(reply.result().is_ok(), "{reply:?}");
    let burst = (0..50).map(|_| caller.call(CallSpec::new("ping", Duration::from_secs(5)).role(Role::Checker)));
    for reply in futures::future::join_all(burst).await {
        assert!(reply.expect("a reply").result().is_ok());
    }

    caller.close().await;
    env.finish().await;
}
