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
