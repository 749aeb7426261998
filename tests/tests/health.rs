//! Health checks end to end against real EVM nodes (anvil): status and reason
//! per behaviour, best-node choice and failover, events, and the scheduler's
//! default task driving check rounds.

use std::time::Duration;

use fred::prelude::*;
use pgnm_bus::Caller;
use pgnm_protocol::{ErrorBody, ErrorCode, Role};
use pgnm_tests::{Anvil, Env, fast_worker};
use serde_json::{Value, json};

async fn call(caller: &Caller, role: Role, command: &str, args: Value) -> Result<Value, ErrorBody> {
    pgnm_tests::call_json(caller, role, command, args).await
}

async fn ok(caller: &Caller, command: &str, args: Value) -> Value {
    call(caller, Role::Checker, command, args.clone()).await.unwrap_or_else(|e| panic!("{command} {args}: {e:?}"))
}

/// A chain type like anvil's, with a short stall window and a small lag limit.
const CHAINS: &str =
    "chains:\n  - {type: evm-fast, family: evm, chainId: 31337, blockTimeMs: 1000, maxLag: 2, stallAfterMs: 4000}\n";

async fn start_checker(env: &mut Env) -> Caller {
    start_services(env, false).await
}

async fn start_services(env: &mut Env, proxy: bool) -> Caller {
    let dir = std::env::temp_dir().join(format!("pgnm-test-{}", env.prefix));
    std::fs::create_dir_all(&dir).unwrap();
    let chains = dir.join("chains.yaml");
    std::fs::write(&chains, CHAINS).unwrap();
    env.start_router("router-1", fast_worker());
    let mut config = env.checker_config("checker-1", fast_worker());
    config.chains_file = Some(chains);
    env.start_checker_with(config);
    if proxy {
        env.start_jrpc_proxy("proxy-1", fast_worker());
    }
    env.wait_for_groups().await;
    env.caller().await
}

fn status_of(nodes: &Value, name: &str) -> Value {
    nodes["nodes"].as_array().unwrap().iter().find(|n| n["config"]["name"] == name).unwrap()["status"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statuses_best_node_and_failover_on_real_evm_nodes() {
    failover_on_real_evm_nodes("direct").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_through_the_jrpc_proxy() {
    failover_on_real_evm_nodes("jrpc-proxy").await;
}

/// Three honest anvil nodes and one on the wrong chain, probed over `transport`:
/// the best is answered; a frozen node lags and the best moves within `fall`
/// checks of the lag appearing; a killed node is unavailable and comes back
/// after `rise` checks once restarted; the wrong chain is never chosen.
async fn failover_on_real_evm_nodes(transport: &str) {
    let mut env = Env::new().await;
    let caller = start_services(&mut env, transport == "jrpc-proxy").await;
    // Their chain state is saved every second, so a restarted node resumes its chain.
    let dir = std::env::temp_dir().join(format!("pgnm-test-{}", env.prefix));
    let state = |n: &str| dir.join(format!("anvil-{n}.json")).to_string_lossy().into_owned();
    let (sa, sb, sc) = (state("a"), state("b"), state("c"));
    let persist = |file: &str| {
        vec![
            "--block-time".to_owned(),
            "1".to_owned(),
            "--state".to_owned(),
            file.to_owned(),
            "--state-interval".to_owned(),
            "1".to_owned(),
        ]
    };
    let (pa, pb, pc) = (persist(&sa), persist(&sb), persist(&sc));
    let mut honest = [
        Anvil::start(&pa.iter().map(String::as_str).collect::<Vec<_>>()).await,
        Anvil::start(&pb.iter().map(String::as_str).collect::<Vec<_>>()).await,
        Anvil::start(&pc.iter().map(String::as_str).collect::<Vec<_>>()).await,
    ];
    let wrong = Anvil::start(&["--block-time", "1", "--chain-id", "1"]).await;
    for (name, node, priority) in
        [("a", &honest[0], 0), ("b", &honest[1], 0), ("c", &honest[2], 0), ("wrong", &wrong, 0)]
    {
        ok(
            &caller,
            "addNode",
            json!({"type": "evm-fast", "config": {"name": name, "url": node.url, "priority": priority}}),
        )
        .await;
    }
    // Before any check: nothing is eligible, and the reply says why for each node.
    let e = call(&caller, Role::Checker, "getBestNode", json!({"type": "evm-fast"})).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::NoHealthyNode);
    assert!(e.retryable);

    // Two rounds (rise = 2): the honest nodes are ok, the wrong chain never is.
    let round = ok(&caller, "check", json!({})).await;
    assert_eq!(round["checked"], 4);
    tokio::time::sleep(Duration::from_millis(300)).await;
    ok(&caller, "check", json!({"type": "evm-fast"})).await;
    let nodes = ok(&caller, "getNodes", json!({})).await;
    for name in ["a", "b", "c"] {
        let s = status_of(&nodes, name);
        assert_eq!(s["status"], "ok", "{name}: {s}");
        assert!(s["height"].as_i64().unwrap() >= 0);
        assert_eq!(s["eligible"], true);
    }
    let s = status_of(&nodes, "wrong");
    assert_eq!(s["status"], "unavailable", "{s}");
    assert!(s["reason"].as_str().unwrap().starts_with("wrong_chain"), "{s}");

    tokio::time::sleep(Duration::from_millis(300)).await;
    let best = ok(&caller, "getBestNode", json!({"type": "evm-fast"})).await;
    let first = best["node"]["name"].as_str().unwrap().to_owned();
    assert!(["a", "b", "c"].contains(&first.as_str()), "{best}");
    assert_eq!(best["fallbacks"].as_array().unwrap().len(), 2, "{best}");
    // Sticky: asked again, the same answer.
    for _ in 0..5 {
        assert_eq!(ok(&caller, "getBestNode", json!({"type": "evm-fast"})).await["node"]["name"], first.as_str());
    }

    // Freeze the chosen node: it falls behind the others (lag > 2), then stalls.
    let names = ["a", "b", "c"];
    let frozen = &honest[names.iter().position(|n| *n == first).unwrap()];
    frozen.freeze().await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    for _ in 0..2 {
        ok(&caller, "check", json!({})).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let s = status_of(&ok(&caller, "getNodes", json!({})).await, &first);
    assert_eq!(s["status"], "lagging", "{s}");
    assert!(
        s["reason"].as_str().unwrap().starts_with("lag") || s["reason"].as_str().unwrap().starts_with("stalled"),
        "{s}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let best = ok(&caller, "getBestNode", json!({"type": "evm-fast"})).await;
    let second = best["node"]["name"].as_str().unwrap().to_owned();
    assert_ne!(second, first, "failover away from the lagging node");

    // Kill a node: unreachable, unavailable after `fall` checks.
    // Kill a node that is not the frozen one: unreachable, unavailable after `fall` checks.
    let victim = names.iter().position(|n| *n != first).unwrap();
    let victim_name = names[victim];
    honest[victim].kill();
    for _ in 0..2 {
        ok(&caller, "check", json!({})).await;
    }
    let s = status_of(&ok(&caller, "getNodes", json!({})).await, victim_name);
    assert_eq!(s["status"], "unavailable", "{s}");
    assert!(s["reason"].as_str().unwrap().starts_with("unreachable"), "{s}");

    // Restarted, it comes back after `rise` (2) good checks.
    honest[victim].restart().await;
    ok(&caller, "check", json!({})).await;
    let s = status_of(&ok(&caller, "getNodes", json!({})).await, victim_name);
    assert_eq!(s["status"], "unavailable", "one good check is not enough: {s}");
    assert_eq!(s["rawStatus"], "ok", "{s}");
    ok(&caller, "check", json!({})).await;
    let s = status_of(&ok(&caller, "getNodes", json!({})).await, victim_name);
    assert_eq!(s["status"], "ok", "{s}");

    // The wrong chain is never chosen, whatever happens to the others.
    for _ in 0..5 {
        let best = ok(&caller, "getBestNode", json!({"type": "evm-fast"})).await;
        assert_ne!(best["node"]["name"], "wrong");
        assert!(best["fallbacks"].as_array().unwrap().iter().all(|f| f["name"] != "wrong"), "{best}");
    }

    // checkNode on one node.
    let one = ok(&caller, "checkNode", json!({"name": "wrong"})).await;
    assert_eq!(one["status"]["status"], "unavailable");

    // Every change was published on the events stream.
    let events: Vec<(String, std::collections::HashMap<String, Vec<u8>>)> =
        env.redis.xrange(env.keys.events(), "-", "+", None).await.unwrap();
    let events: Vec<Value> =
        events.iter().map(|(_, f)| rmp_serde::from_slice::<Value>(&f["m"]).expect("an event")).collect();
    assert!(
        events.iter().any(|e| e["name"] == first.as_str() && e["from"] == "ok" && e["to"] == "lagging"),
        "{events:?}"
    );
    assert!(events.iter().any(|e| e["name"] == "wrong" && e["to"] == "unavailable"), "{events:?}");

    caller.close().await;
    env.finish().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_check_task_drives_check_rounds() {
    let mut env = Env::new().await;
    let caller = start_checker(&mut env).await;
    let anvil = Anvil::start(&["--block-time", "1"]).await;
    ok(&caller, "addNode", json!({"type": "evm-fast", "config": {"name": "a", "url": anvil.url}})).await;
    // A scheduler on an empty task table creates the check tasks (every second,
    // two shards) and they run the rounds: no `check` is sent by the test.
    env.start_scheduler("scheduler-1", fast_worker());
    env.wait_for_group(Role::Scheduler).await;
    let mut status = Value::Null;
    for _ in 0..100 {
        status = status_of(&ok(&caller, "getNodes", json!({})).await, "a");
        if status["status"] == "ok" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status["status"], "ok", "{status}");
    let first = status["height"].as_i64().unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let later = status_of(&ok(&caller, "getNodes", json!({})).await, "a");
    assert!(later["height"].as_i64().unwrap() > first, "rounds keep running: {later}");
    // The operator's view of it.
    let pgnm = |args: &[&str]| {
        let out = pgnm_tests::run_cli(&env, args);
        assert!(out.status.success(), "pgnm {args:?}: {}", String::from_utf8_lossy(&out.stdout));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let status = pgnm(&["status"]);
    assert!(status.starts_with("NODE"), "{status}");
    assert!(status.lines().any(|l| l.starts_with("a ") && l.contains(" ok ") && l.ends_with("yes")), "{status}");
    let best = pgnm(&["best", "evm-fast"]);
    assert!(best.starts_with(&format!("a  {}", anvil.url)), "{best}");
    let check = pgnm(&["check", "evm-fast"]);
    assert!(check.starts_with("checked 1 node(s)"), "{check}");

    let tasks = call(&caller, Role::Scheduler, "taskList", json!({})).await.unwrap();
    for t in tasks["tasks"].as_array().unwrap().iter().filter(|t| t["definition"]["command"] == "check") {
        assert_eq!(t["lastOutcome"], "ok", "{t}");
    }
    caller.close().await;
    env.finish().await;
}
