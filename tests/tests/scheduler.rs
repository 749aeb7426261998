//! The scheduler over the wire: task commands, exactly-once ticks across
//! replicas, takeover of a killed replica's run, and the cold start.

use std::collections::BTreeSet;
use std::time::Duration;

use fred::prelude::*;
use pgnm_bus::Caller;
use pgnm_protocol::{ErrorBody, ErrorCode, Role};
use pgnm_tests::{Env, fast_worker, spawn_binary};
use serde_json::{Value, json};

async fn call(caller: &Caller, command: &str, args: Value) -> Result<Value, ErrorBody> {
    pgnm_tests::call_json(caller, Role::Scheduler, command, args).await
}

async fn ok(caller: &Caller, command: &str, args: Value) -> Value {
    call(caller, command, args.clone()).await.unwrap_or_else(|e| panic!("{command} {args} failed: {e:?}"))
}

async fn task(caller: &Caller, name: &str) -> Value {
    let list = ok(caller, "taskList", json!({})).await;
    list["tasks"].as_array().unwrap().iter().find(|t| t["definition"]["name"] == name).cloned().unwrap_or(Value::Null)
}

/// Returns the request ids of the entries on `stream`.
async fn request_ids(env: &Env, stream: &str) -> Vec<String> {
    let entries: Vec<(String, std::collections::HashMap<String, Vec<u8>>)> =
        env.redis.xrange(stream, "-", "+", None).await.unwrap_or_default();
    entries
        .into_iter()
        .filter_map(|(_, fields)| fields.get("m").map(|m| pgnm_protocol::decode_header(m).id.unwrap_or_default()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_commands_work_and_bad_tasks_are_refused_by_field() {
    let mut env = Env::new().await;
    env.start_all().await;
    let caller = env.caller().await;

    // The cold start created the default list.
    let list = ok(&caller, "taskList", json!({})).await;
    let names: Vec<&str> =
        list["tasks"].as_array().unwrap().iter().map(|t| t["definition"]["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["check-shard-0-of-2", "check-shard-1-of-2", "prune-task-history"]);

    let added = ok(
        &caller,
        "taskAdd",
        json!({"name": "pinger", "command": "ping", "role": "checker", "args": {"echo": "tick"}, "intervalMs": 300, "timeoutMs": 2000}),
    )
    .await;
    assert_eq!(added["definition"]["intervalMs"], 300);
    assert_eq!(added["source"], "api");

    // It runs on its schedule, and its outcome is recorded.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let t = task(&caller, "pinger").await;
    assert!(t["runCount"].as_i64().unwrap() >= 3, "{t}");
    assert_eq!(t["lastOutcome"], "ok", "{t}");

    // taskStop stops future runs.
    let stopped = ok(&caller, "taskStop", json!({"name": "pinger"})).await;
    assert_eq!(stopped["definition"]["enabled"], false);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = task(&caller, "pinger").await["runCount"].as_i64().unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(task(&caller, "pinger").await["runCount"].as_i64().unwrap(), before, "a stopped task does not run");

    // taskRun runs it once now, stopped or not.
    let queued = ok(&caller, "taskRun", json!({"name": "pinger"})).await;
    assert!(queued["requestId"].as_str().unwrap().starts_with("task:pinger:"));
    tokio::time::sleep(Duration::from_millis(800)).await;
    let t = task(&caller, "pinger").await;
    assert_eq!(t["runCount"].as_i64().unwrap(), before + 1, "{t}");
    assert_eq!(t["lastOutcome"], "ok");
    assert_eq!(t["running"], false);

    // taskUpdate changes the schedule; a cron schedule replaces the interval.
    let updated =
        ok(&caller, "taskUpdate", json!({"name": "pinger", "set": {"cron": "0 3 * * *", "enabled": true}})).await;
    assert_eq!(updated["definition"]["cron"], "0 3 * * *");
    assert!(updated["definition"].get("intervalMs").is_none());
    assert!(updated["nextRunAt"].as_i64().unwrap() > pgnm_protocol::now_ms() as i64);

    // Bad definitions: BAD_REQUEST naming the field.
    let base = json!({"name": "bad", "command": "ping", "role": "checker", "intervalMs": 1000});
    let with = |k: &str, v: Value| {
        let mut t = base.clone();
        t[k] = v;
        t
    };
    let cases = [
        (with("command", json!("launchRockets")), ErrorCode::BadRequest, "args.command: unknown command"),
        (
            with("role", json!("scheduler"))
                .as_object()
                .map(|o| {
                    let mut o = o.clone();
                    o.insert("command".into(), json!("getBestNode"));
                    Value::Object(o)
                })
                .unwrap(),
            ErrorCode::BadRequest,
            "args.role",
        ),
        (
            json!({"name": "bad", "command": "ping", "cron": "every tuesday"}),
            ErrorCode::BadRequest,
            "args.cron: invalid cron expression",
        ),
        (json!({"name": "bad", "command": "ping", "cron": "99 * * * *"}), ErrorCode::BadRequest, "args.cron"),
        (with("intervalMs", json!(5)), ErrorCode::BadRequest, "args.intervalMs: must be between"),
        (with("intervalMs", json!(-5)), ErrorCode::BadRequest, "args.intervalMs"),
        (json!({"name": "bad", "command": "ping"}), ErrorCode::BadRequest, "args.intervalMs: give intervalMs or cron"),
        (with("cron", json!("* * * * *")), ErrorCode::BadRequest, "not both"),
        (with("timeoutMs", json!(0)), ErrorCode::BadRequest, "args.timeoutMs"),
        (with("name", json!("no spaces please")), ErrorCode::BadRequest, "args.name"),
        (with("colour", json!("red")), ErrorCode::BadRequest, "colour"),
        (with("name", json!("pinger")), ErrorCode::Conflict, "args.name"),
    ];
    for (args, code, text) in cases {
        let e = call(&caller, "taskAdd", args.clone()).await.expect_err("a bad task must be refused");
        assert_eq!(e.code, code, "{args}: {}", e.message);
        assert!(e.message.contains(text), "{args}: {:?} should mention {text:?}", e.message);
    }
    let e = call(&caller, "taskUpdate", json!({"name": "pinger", "set": {"intervalMs": 1}})).await.unwrap_err();
    assert!(e.message.starts_with("set.intervalMs"), "{}", e.message);
    assert_eq!(call(&caller, "taskStop", json!({"name": "ghost"})).await.unwrap_err().code, ErrorCode::NotFound);
    assert_eq!(call(&caller, "taskRun", json!({"name": "ghost"})).await.unwrap_err().code, ErrorCode::NotFound);

    // taskRemove.
    ok(&caller, "taskRemove", json!({"name": "pinger"})).await;
    assert_eq!(task(&caller, "pinger").await, Value::Null);
    assert_eq!(call(&caller, "taskRemove", json!({"name": "pinger"})).await.unwrap_err().code, ErrorCode::NotFound);

    caller.close().await;
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_dispatch_every_tick_exactly_once() {
    let mut env = Env::new().await;
    // The task's command goes to a role with no consumer, so every dispatched
    // command stays on its stream to be counted.
    let target = env.keys.inbox(Role::JrpcProxy);
    let _: fred::types::Value = env.redis.xgroup_create(target.as_str(), "jrpc-proxy", "$", true).await.unwrap();
    env.start_router("router-1", fast_worker());
    for i in 1..=3 {
        let mut config = env.scheduler_config(&format!("scheduler-{i}"), fast_worker());
        config.check_shards = 1;
        config.check_interval_ms = 3_600_000;
        env.start_scheduler_with(config);
    }
    env.wait_for_groups().await;
    let caller = env.caller().await;
    ok(
        &caller,
        "taskAdd",
        json!({"name": "tick", "command": "jrpcCall", "role": "jrpc-proxy", "intervalMs": 1000, "timeoutMs": 300}),
    )
    .await;

    tokio::time::sleep(Duration::from_secs(25)).await;
    // Stop it so the count is final, and let the last run reach the stream.
    ok(&caller, "taskStop", json!({"name": "tick"})).await;
    tokio::time::sleep(Duration::from_millis(700)).await;

    let ids: Vec<String> =
        request_ids(&env, &target).await.into_iter().filter(|id| id.starts_with("task:tick:")).collect();
    let unique: BTreeSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "a tick was dispatched twice: {ids:?}");
    assert!(ids.len() >= 20, "only {} ticks dispatched in 25 s", ids.len());
    let mut ticks: Vec<i64> = ids.iter().map(|id| id.rsplit(':').next().unwrap().parse().unwrap()).collect();
    ticks.sort_unstable();
    assert!(ticks.windows(2).all(|w| w[1] - w[0] == 1000), "every tick in turn, none skipped: {ticks:?}");
    let t = task(&caller, "tick").await;
    assert_eq!(t["runCount"].as_i64().unwrap(), ids.len() as i64, "{t}");

    caller.close().await;
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_replicas_run_is_taken_over_not_lost_and_not_doubled() {
    let mut env = Env::new().await;
    env.start_router("router-1", fast_worker());
    env.start_checker("checker-1", fast_worker());
    env.wait_for_groups().await;
    let settings = |name: &str| {
        vec![
            ("PGNM_INSTANCE", name.to_owned()),
            ("PGNM_SCHEDULER_POLL_MS", "50".to_owned()),
            ("PGNM_SCHEDULER_LEASE_MS", "1500".to_owned()),
            ("PGNM_CHECK_INTERVAL_MS", "3600000".to_owned()),
        ]
    };
    let mut a = spawn_binary(&env, "pgnm-scheduler", &settings("sched-a"));
    let mut b = spawn_binary(&env, "pgnm-scheduler", &settings("sched-b"));
    env.wait_for_group(Role::Scheduler).await;
    let caller = env.caller().await;
    // A 2.5 s command every 4 s.
    ok(
        &caller,
        "taskAdd",
        json!({"name": "slow", "command": "ping", "role": "checker", "args": {"delayMs": 2500}, "intervalMs": 4000, "timeoutMs": 10000}),
    )
    .await;

    // Wait for the first run to be in flight, and kill its owner.
    let db = env.sql().await;
    let mut owner = None;
    for _ in 0..200 {
        let rows = db
            .query("SELECT r.instance FROM task_runs r JOIN tasks t ON t.id = r.task_id WHERE t.name = 'slow' AND r.outcome IS NULL", &[])
            .await
            .unwrap();
        if let Some(r) = rows.first() {
            owner = Some(r.get::<_, String>(0));
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let owner = owner.expect("the first run started");
    let survivor = if owner == "sched-a" {
        a.kill().await.unwrap();
        "sched-b"
    } else {
        b.kill().await.unwrap();
        "sched-a"
    };

    // The survivor takes the run over and finishes it; later ticks go on.
    let mut first = None;
    for _ in 0..200 {
        let rows = db
            .query(
                "SELECT r.outcome, r.instance, r.attempts FROM task_runs r JOIN tasks t ON t.id = r.task_id \
                 WHERE t.name = 'slow' ORDER BY r.id LIMIT 1",
                &[],
            )
            .await
            .unwrap();
        if let Some(r) = rows.first()
            && r.get::<_, Option<String>>(0).is_some()
        {
            first = Some((r.get::<_, Option<String>>(0).unwrap(), r.get::<_, String>(1), r.get::<_, i32>(2)));
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (outcome, instance, attempts) = first.expect("the first run finished");
    assert_eq!(outcome, "ok");
    assert_eq!(instance, survivor);
    assert_eq!(attempts, 2, "sent once by the killed replica, once more by the survivor");

    // Not doubled: the checker executed the tick's request id once (the second
    // send was answered from the stored reply), and the tick has one run.
    let runs = db
        .query(
            "SELECT r.request_id FROM task_runs r JOIN tasks t ON t.id = r.task_id WHERE t.name = 'slow' ORDER BY r.id",
            &[],
        )
        .await
        .unwrap();
    let first_id: String = runs[0].get(0);
    let stored: Option<Vec<u8>> = env.redis.get(env.keys.result(Role::Checker, &first_id)).await.unwrap();
    assert!(stored.is_some(), "the checker stored the reply of {first_id}");

    tokio::time::sleep(Duration::from_secs(5)).await;
    let t = task(&caller, "slow").await;
    assert!(t["runCount"].as_i64().unwrap() >= 2, "the survivor carries on: {t}");
    let per_tick = db
        .query(
            "SELECT scheduled_for, count(*) FROM task_runs r JOIN tasks t ON t.id = r.task_id WHERE t.name = 'slow' \
             GROUP BY scheduled_for HAVING count(*) > 1",
            &[],
        )
        .await
        .unwrap();
    assert!(per_tick.is_empty(), "no tick has two runs");

    let _ = a.kill().await;
    let _ = b.kill().await;
    caller.close().await;
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_start_creates_the_default_tasks_once_and_they_reach_the_checker() {
    let mut env = Env::new().await;
    env.start_router("router-1", fast_worker());
    env.start_checker("checker-1", fast_worker());
    // Three replicas starting together on an empty task table.
    for i in 1..=3 {
        env.start_scheduler(&format!("scheduler-{i}"), fast_worker());
    }
    env.wait_for_groups().await;
    let caller = env.caller().await;
    let list = ok(&caller, "taskList", json!({})).await;
    let names: Vec<&str> =
        list["tasks"].as_array().unwrap().iter().map(|t| t["definition"]["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["check-shard-0-of-2", "check-shard-1-of-2", "prune-task-history"]);
    assert!(list["tasks"].as_array().unwrap().iter().all(|t| t["source"] == "default"));

    // bootstrap again: nothing new.
    let again = ok(&caller, "bootstrap", json!({})).await;
    assert!(again["created"].as_array().unwrap().is_empty());
    assert_eq!(again["existing"].as_array().unwrap().len(), 3);

    // The check tasks send `check` rounds (one per shard) to the checker.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    for shard in ["check-shard-0-of-2", "check-shard-1-of-2"] {
        let t = task(&caller, shard).await;
        assert!(t["runCount"].as_i64().unwrap() >= 2, "{t}");
        assert!(t.get("lastOutcome").is_some(), "{t}");
    }
    caller.close().await;
    env.finish().await;
}
