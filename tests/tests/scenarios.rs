//! The node behaviours of `pgnm-sim`, one row each, with the status and reason
//! every node gets and the node `getBestNode` picks; and no flapping.

use std::collections::BTreeMap;
use std::time::Duration;

use pgnm_bus::Caller;
use pgnm_protocol::{ErrorBody, Role};
use pgnm_sim::{Family, NodeBehaviour, Sim};
use pgnm_tests::{Env, fast_worker};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

async fn call(caller: &Caller, command: &str, args: Value) -> Result<Value, ErrorBody> {
    pgnm_tests::call_json(caller, Role::Checker, command, args).await
}

async fn ok(caller: &Caller, command: &str, args: Value) -> Value {
    call(caller, command, args.clone()).await.unwrap_or_else(|e| panic!("{command} {args}: {e:?}"))
}

const CHAINS: &str = "chains:
  - {type: evm-sim, family: evm, chainId: 31337, blockTimeMs: 1000, maxLag: 2, stallAfterMs: 3000}
  - {type: btc-sim, family: bitcoin, bitcoinChain: regtest, blockTimeMs: 1000, maxLag: 2, stallAfterMs: 3000}
";

struct Fleet {
    env: Env,
    caller: Caller,
    sim_url: String,
    stop: CancellationToken,
}

async fn fleet(nodes: &[(&str, &str, NodeBehaviour)]) -> Fleet {
    let mut env = Env::new().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sim_url = format!("http://{}", listener.local_addr().unwrap());
    let behaviours: BTreeMap<String, NodeBehaviour> =
        nodes.iter().map(|(n, _, b)| (n.to_string(), b.clone())).collect();
    let stop = CancellationToken::new();
    tokio::spawn(pgnm_sim::serve(listener, Sim::new(behaviours), stop.clone()));

    let dir = std::env::temp_dir().join(format!("pgnm-test-{}", env.prefix));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("chains.yaml"), CHAINS).unwrap();
    env.start_router("router-1", fast_worker());
    let mut config = env.checker_config("checker-1", fast_worker());
    config.chains_file = Some(dir.join("chains.yaml"));
    config.health.check_timeout_ms = 700;
    env.start_checker_with(config);
    env.wait_for_groups().await;
    let caller = env.caller().await;
    for (name, node_type, _) in nodes {
        ok(
            &caller,
            "addNode",
            json!({"type": node_type, "config": {"name": name, "url": format!("{sim_url}/node/{name}")}}),
        )
        .await;
    }
    Fleet { env, caller, sim_url, stop }
}

impl Fleet {
    async fn set(&self, name: &str, b: &NodeBehaviour) {
        let r = reqwest::Client::new().put(format!("{}/control/{name}", self.sim_url)).json(b).send().await.unwrap();
        assert!(r.status().is_success());
    }

    async fn rounds(&self, n: usize) {
        for _ in 0..n {
            ok(&self.caller, "check", json!({})).await;
        }
        // Let the view catch up (it reloads every 100 ms in tests).
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    async fn statuses(&self) -> BTreeMap<String, Value> {
        let page = ok(&self.caller, "getNodes", json!({"limit": 1000})).await;
        page["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| (n["config"]["name"].as_str().unwrap().to_owned(), n["status"].clone()))
            .collect()
    }

    async fn best(&self, node_type: &str) -> String {
        ok(&self.caller, "getBestNode", json!({"type": node_type})).await["node"]["name"].as_str().unwrap().to_owned()
    }

    async fn finish(self) {
        self.stop.cancel();
        self.caller.close().await;
        self.env.finish().await;
    }
}

fn evm() -> NodeBehaviour {
    NodeBehaviour::healthy(Family::Evm, "evm")
}

fn btc() -> NodeBehaviour {
    NodeBehaviour::healthy(Family::Bitcoin, "btc")
}

fn with(mut b: NodeBehaviour, f: impl FnOnce(&mut NodeBehaviour)) -> NodeBehaviour {
    f(&mut b);
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_behaviour_gets_its_status_and_reason() {
    // (node, type, behaviour, expected status, reason prefix)
    let table: Vec<(&str, &str, NodeBehaviour, &str, &str)> = vec![
        ("evm-healthy-1", "evm-sim", evm(), "ok", "ok"),
        ("evm-healthy-2", "evm-sim", with(evm(), |b| b.no_peer_count = true), "ok", "ok"),
        ("evm-healthy-3", "evm-sim", evm(), "ok", "ok"),
        ("evm-no-batch", "evm-sim", with(evm(), |b| b.no_batch = true), "ok", "ok"),
        ("evm-lag", "evm-sim", with(evm(), |b| b.lag = 5), "lagging", "lag"),
        ("evm-stalled", "evm-sim", with(evm(), |b| b.stalled_at = Some(90)), "lagging", "stalled"),
        ("evm-syncing", "evm-sim", with(evm(), |b| b.syncing = true), "syncing", "syncing"),
        ("evm-wrong-chain", "evm-sim", with(evm(), |b| b.chain_id = 1), "unavailable", "wrong_chain"),
        ("evm-slow", "evm-sim", with(evm(), |b| b.delay_ms = 1500), "unavailable", "timeout"),
        ("evm-rpc-error", "evm-sim", with(evm(), |b| b.rpc_error = Some(-32000)), "unavailable", "rpc_error"),
        ("evm-429", "evm-sim", with(evm(), |b| b.http_status = Some(429)), "unavailable", "rate_limited"),
        ("evm-401", "evm-sim", with(evm(), |b| b.http_status = Some(401)), "unavailable", "auth"),
        ("evm-503", "evm-sim", with(evm(), |b| b.http_status = Some(503)), "unavailable", "http_5xx"),
        ("btc-healthy-1", "btc-sim", btc(), "ok", "ok"),
        ("btc-healthy-2", "btc-sim", btc(), "ok", "ok"),
        ("btc-lag", "btc-sim", with(btc(), |b| b.lag = 5), "lagging", "lag"),
        ("btc-ibd", "btc-sim", with(btc(), |b| b.syncing = true), "syncing", "syncing"),
        ("btc-wrong-chain", "btc-sim", with(btc(), |b| b.bitcoin_chain = "main".into()), "unavailable", "wrong_chain"),
        ("btc-rpc-error", "btc-sim", with(btc(), |b| b.rpc_error = Some(-28)), "unavailable", "rpc_error"),
    ];
    let nodes: Vec<(&str, &str, NodeBehaviour)> = table.iter().map(|(n, t, b, _, _)| (*n, *t, b.clone())).collect();
    let f = fleet(&nodes).await;
    f.rounds(2).await;
    let statuses = f.statuses().await;
    let mut wrong = Vec::new();
    for (name, _, _, status, reason) in &table {
        let s = &statuses[*name];
        if s["status"] != *status || !s["reason"].as_str().unwrap_or("").starts_with(reason) {
            wrong.push(format!("{name}: expected {status}/{reason}, got {}/{}", s["status"], s["reason"]));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
    // The best node is a healthy one of its type; the others are fallbacks.
    assert!(f.best("evm-sim").await.starts_with("evm-healthy"));
    assert!(f.best("btc-sim").await.starts_with("btc-healthy"));
    let best = ok(&f.caller, "getBestNode", json!({"type": "evm-sim"})).await;
    assert_eq!(best["fallbacks"].as_array().unwrap().len(), 3, "{best}");
    let best = ok(&f.caller, "getBestNode", json!({"type": "evm-sim", "maxFallbacks": 1})).await;
    assert_eq!(best["fallbacks"].as_array().unwrap().len(), 1, "{best}");
    f.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_runaway_node_does_not_push_the_honest_ones_out() {
    // A node far ahead (a wrong fork, a bug) would make every honest node "lag"
    // against a plain maximum; the corroborated head ignores it.
    let runaway = with(evm(), |b| b.chain = "runaway".into());
    let f =
        fleet(&[("honest-1", "evm-sim", evm()), ("honest-2", "evm-sim", evm()), ("runaway", "evm-sim", runaway)]).await;
    // The runaway chain's clock: make it 1000 blocks ahead by giving it a fast block time.
    f.set("runaway", &with(evm(), |b| b.block_time_ms = 1)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    f.rounds(2).await;
    let s = f.statuses().await;
    assert_eq!(s["honest-1"]["status"], "ok", "{:?}", s);
    assert_eq!(s["honest-2"]["status"], "ok", "{:?}", s);
    f.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flapping_node_does_not_bounce_the_best_node() {
    let f = fleet(&[("n1", "evm-sim", evm()), ("n2", "evm-sim", evm()), ("n3", "evm-sim", evm())]).await;
    f.rounds(2).await;
    let first = f.best("evm-sim").await;
    // The chosen node starts failing every other check.
    f.set(&first, &with(evm(), |b| b.flapping = true)).await;
    let mut picks = Vec::new();
    for _ in 0..12 {
        f.rounds(1).await;
        picks.push(f.best("evm-sim").await);
    }
    let switches = picks.windows(2).filter(|w| w[0] != w[1]).count() + usize::from(picks[0] != first);
    assert!(switches <= 1, "the best node bounced: {first} then {picks:?}");
    // And a node that flaps from the start never becomes eligible.
    f.set("n4-never", &with(evm(), |b| b.flapping = true)).await;
    ok(
        &f.caller,
        "addNode",
        json!({"type": "evm-sim", "config": {"name": "n4-never", "url": format!("{}/node/n4-never", f.sim_url)}}),
    )
    .await;
    f.rounds(8).await;
    let s = f.statuses().await;
    assert_eq!(s["n4-never"]["eligible"], false, "{}", s["n4-never"]);
    f.finish().await;
}
