//! Nodes reached through `pgnm-jrpc-proxy`: probes over the bus, errors mapped
//! back to their reasons, and `jrpcCall` itself.

use std::collections::BTreeMap;
use std::time::Duration;

use pgnm_bus::Caller;
use pgnm_protocol::{ErrorBody, ErrorCode, Role};
use pgnm_sim::{Family, NodeBehaviour, Sim};
use pgnm_tests::{Env, fast_worker};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

async fn call(caller: &Caller, role: Role, command: &str, args: Value) -> Result<Value, ErrorBody> {
    pgnm_tests::call_json(caller, role, command, args).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_behind_the_proxy_are_probed_through_it() {
    let mut env = Env::new().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sim = format!("http://{}", listener.local_addr().unwrap());
    let mut nodes = BTreeMap::new();
    nodes.insert("healthy".to_owned(), NodeBehaviour::healthy(Family::Evm, "evm"));
    let mut locked = NodeBehaviour::healthy(Family::Evm, "evm");
    locked.http_status = Some(401);
    nodes.insert("locked".to_owned(), locked);
    let stop = CancellationToken::new();
    tokio::spawn(pgnm_sim::serve(listener, Sim::new(nodes), stop.clone()));

    env.start_router("router-1", fast_worker());
    env.start_checker("checker-1", fast_worker());
    env.start_jrpc_proxy("proxy-1", fast_worker());
    env.wait_for_groups().await;
    let caller = env.caller().await;

    // jrpcCall itself.
    let r = call(
        &caller,
        Role::JrpcProxy,
        "jrpcCall",
        json!({"url": format!("{sim}/node/healthy"), "method": "eth_chainId", "timeoutMs": 2000}),
    )
    .await
    .unwrap();
    assert_eq!(r["result"], "0x7a69");
    let e = call(
        &caller,
        Role::JrpcProxy,
        "jrpcCall",
        json!({"url": format!("{sim}/node/locked"), "method": "eth_chainId", "timeoutMs": 2000}),
    )
    .await
    .unwrap_err();
    assert_eq!(e.code, ErrorCode::Unavailable);
    assert!(e.retryable);
    let e = call(&caller, Role::JrpcProxy, "jrpcCall", json!({"url": format!("{sim}/node/healthy?key=${{PGNM_TEST_NOT_SET_ANYWHERE}}"), "method": "eth_chainId", "timeoutMs": 2000})).await.unwrap_err();
    assert!(e.message.contains("PGNM_TEST_NOT_SET_ANYWHERE is not set"), "{}", e.message);
    let e = call(&caller, Role::JrpcProxy, "jrpcCall", json!({"url": "ftp://x", "method": "m", "timeoutMs": 2000}))
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::BadRequest);

    // Probes through it.
    for name in ["healthy", "locked"] {
        call(&caller, Role::Checker, "addNode", json!({"type": "evm-dev", "config": {"name": name, "url": format!("{sim}/node/{name}"), "transport": "jrpc-proxy"}})).await.unwrap();
    }
    for _ in 0..2 {
        call(&caller, Role::Checker, "check", json!({})).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(250)).await;
    let page = call(&caller, Role::Checker, "getNodes", json!({})).await.unwrap();
    let status = |name: &str| {
        page["nodes"].as_array().unwrap().iter().find(|n| n["config"]["name"] == name).unwrap()["status"].clone()
    };
    assert_eq!(status("healthy")["status"], "ok", "{}", status("healthy"));
    assert_eq!(status("locked")["status"], "unavailable");
    assert!(status("locked")["reason"].as_str().unwrap().starts_with("auth"), "{}", status("locked"));

    stop.cancel();
    caller.close().await;
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retryable_failure_is_executed_again_when_the_caller_retries_the_id() {
    let mut env = Env::new().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sim = format!("http://{}", listener.local_addr().unwrap());
    let mut failing = NodeBehaviour::healthy(Family::Evm, "evm");
    failing.http_status = Some(503);
    let stop = CancellationToken::new();
    tokio::spawn(pgnm_sim::serve(listener, Sim::new(BTreeMap::from([("n".to_owned(), failing)])), stop.clone()));
    env.start_router("router-1", fast_worker());
    env.start_jrpc_proxy("proxy-1", fast_worker());
    env.wait_for_groups().await;
    let replies = env.raw_reply_stream("retry").await;
    let args = rmpv::ext::to_value(json!({"url": format!("{sim}/node/n"), "method": "eth_chainId", "timeoutMs": 2000}))
        .unwrap();
    let mut request = env.request("retry-1", "jrpcCall", Some(args), Some(&replies), Duration::from_secs(10));
    request.role = Some("jrpc-proxy".into());

    env.send(&request).await;
    let first = env.wait_replies(&replies, 1, Duration::from_secs(10)).await;
    let error = first[0].error.as_ref().expect("the node fails");
    assert_eq!((error.code, error.retryable), (ErrorCode::Unavailable, true));

    // The node recovers; the caller sends the same request (same id) again.
    reqwest::Client::new()
        .put(format!("{sim}/control/n"))
        .json(&NodeBehaviour::healthy(Family::Evm, "evm"))
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap();
    env.send(&request).await;
    let both = env.wait_replies(&replies, 2, Duration::from_secs(10)).await;
    assert_eq!(both.len(), 2);
    assert!(both[1].error.is_none(), "executed again, and succeeded: {:?}", both[1].error);

    // Now it is final: a third send gets the stored success without executing.
    env.send(&request).await;
    let all = env.wait_replies(&replies, 3, Duration::from_secs(10)).await;
    assert_eq!(all.len(), 3);
    assert!(all[2].error.is_none());
    stop.cancel();
    env.finish().await;
}
