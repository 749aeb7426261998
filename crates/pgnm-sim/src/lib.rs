//! `pgnm-sim`: one process serving many simulated chain nodes, EVM and bitcoin
//! JSON-RPC, one path per node (`POST /node/<name>`), whose behaviour is
//! scriptable at run time (`PUT /control/<name>`): advancing height, lag, stall,
//! syncing, wrong chain, slowness, JSON-RPC errors, HTTP errors (429, 401, 5xx),
//! flapping. Used by the tests, the benchmark and `make run`'s demo fleet.
//!
//! Nodes of one `chain` share a clock: their height is the chain's height
//! (blocks since the simulator started, one per `blockTimeMs`) minus their lag,
//! unless they are stalled.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// A node's protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    /// Ethereum-style JSON-RPC 2.0.
    Evm,
    /// bitcoind-style JSON-RPC 1.0.
    Bitcoin,
}

/// A simulated node and its behaviour; every field but `family` can be changed
/// at run time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeBehaviour {
    /// Protocol.
    pub family: Family,
    /// The chain it follows (nodes of one chain share a height).
    #[serde(default = "default_chain")]
    pub chain: String,
    /// EVM chain id it reports.
    #[serde(default = "default_chain_id")]
    pub chain_id: u64,
    /// Bitcoin `chain` it reports (`main`, `test`, `regtest`).
    #[serde(default = "default_bitcoin_chain")]
    pub bitcoin_chain: String,
    /// Time between blocks of its chain.
    #[serde(default = "default_block_time")]
    pub block_time_ms: u64,
    /// Blocks behind its chain.
    #[serde(default)]
    pub lag: u64,
    /// Height frozen at this value (a stalled node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stalled_at: Option<u64>,
    /// Reports that it is syncing.
    #[serde(default)]
    pub syncing: bool,
    /// Delay before every answer.
    #[serde(default)]
    pub delay_ms: u64,
    /// Answer every call with this JSON-RPC error code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpc_error: Option<i64>,
    /// Answer every call with this HTTP status (429, 401, 503, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u16>,
    /// Alternate between healthy and failing (HTTP 503) on every probe.
    #[serde(default)]
    pub flapping: bool,
    /// Does not implement `net_peerCount` (like anvil).
    #[serde(default)]
    pub no_peer_count: bool,
    /// Refuses JSON-RPC batches (HTTP 400), as some providers do.
    #[serde(default)]
    pub no_batch: bool,
}

fn default_chain() -> String {
    "main".to_owned()
}
fn default_chain_id() -> u64 {
    31337
}
fn default_bitcoin_chain() -> String {
    "regtest".to_owned()
}
fn default_block_time() -> u64 {
    1000
}

impl NodeBehaviour {
    /// Returns a healthy node of `family` on chain `chain`.
    pub fn healthy(family: Family, chain: &str) -> NodeBehaviour {
        NodeBehaviour {
            family,
            chain: chain.to_owned(),
            chain_id: default_chain_id(),
            bitcoin_chain: default_bitcoin_chain(),
            block_time_ms: default_block_time(),
            lag: 0,
            stalled_at: None,
            syncing: false,
            delay_ms: 0,
            rpc_error: None,
            http_status: None,
            flapping: false,
            no_peer_count: false,
            no_batch: false,
        }
    }
}

#[derive(Debug)]
struct SimNode {
    behaviour: NodeBehaviour,
    calls: u64,
    probes: u64,
}

/// The simulator's state.
#[derive(Debug)]
pub struct Sim {
    started: Instant,
    nodes: Mutex<BTreeMap<String, SimNode>>,
}

impl Sim {
    /// Returns a simulator with `nodes`.
    pub fn new(nodes: BTreeMap<String, NodeBehaviour>) -> Arc<Sim> {
        Arc::new(Sim {
            started: Instant::now(),
            nodes: Mutex::new(
                nodes.into_iter().map(|(k, b)| (k, SimNode { behaviour: b, calls: 0, probes: 0 })).collect(),
            ),
        })
    }

    fn chain_height(&self, b: &NodeBehaviour) -> u64 {
        // 100 blocks of history, then one per block time.
        100 + self.started.elapsed().as_millis() as u64 / b.block_time_ms.max(1)
    }

    fn height(&self, b: &NodeBehaviour) -> u64 {
        b.stalled_at.unwrap_or_else(|| self.chain_height(b).saturating_sub(b.lag))
    }
}

/// Returns the simulator's HTTP routes.
pub fn router(sim: Arc<Sim>) -> Router {
    Router::new()
        .route("/node/{name}", post(rpc))
        .route("/control/{name}", put(control).get(show).delete(remove))
        .route("/control/{name}/stall", post(stall))
        .route("/nodes", get(list))
        .with_state(sim)
}

/// Serves `sim` on `listener` until `stop`.
pub async fn serve(listener: tokio::net::TcpListener, sim: Arc<Sim>, stop: CancellationToken) -> std::io::Result<()> {
    axum::serve(listener, router(sim)).with_graceful_shutdown(async move { stop.cancelled().await }).await
}

async fn list(State(sim): State<Arc<Sim>>) -> Json<Value> {
    let nodes = sim.nodes.lock().expect("sim lock poisoned");
    let out: BTreeMap<&String, Value> = nodes
        .iter()
        .map(|(k, n)| (k, json!({"behaviour": n.behaviour, "height": sim.height(&n.behaviour), "calls": n.calls})))
        .collect();
    Json(json!(out))
}

async fn show(State(sim): State<Arc<Sim>>, Path(name): Path<String>) -> Response {
    let nodes = sim.nodes.lock().expect("sim lock poisoned");
    match nodes.get(&name) {
        Some(n) => Json(json!({"behaviour": n.behaviour, "height": sim.height(&n.behaviour), "calls": n.calls}))
            .into_response(),
        None => (StatusCode::NOT_FOUND, format!("no simulated node {name}")).into_response(),
    }
}

/// Creates or replaces a node's behaviour.
async fn control(State(sim): State<Arc<Sim>>, Path(name): Path<String>, Json(b): Json<NodeBehaviour>) -> StatusCode {
    let mut nodes = sim.nodes.lock().expect("sim lock poisoned");
    let entry = nodes.entry(name).or_insert(SimNode { behaviour: b.clone(), calls: 0, probes: 0 });
    entry.behaviour = b;
    StatusCode::NO_CONTENT
}

/// Freezes a node's height where it is now.
async fn stall(State(sim): State<Arc<Sim>>, Path(name): Path<String>) -> StatusCode {
    let mut nodes = sim.nodes.lock().expect("sim lock poisoned");
    let Some(n) = nodes.get_mut(&name) else { return StatusCode::NOT_FOUND };
    n.behaviour.stalled_at = Some(sim.height(&n.behaviour));
    StatusCode::NO_CONTENT
}

async fn remove(State(sim): State<Arc<Sim>>, Path(name): Path<String>) -> StatusCode {
    match sim.nodes.lock().expect("sim lock poisoned").remove(&name) {
        Some(_) => StatusCode::NO_CONTENT,
        None => StatusCode::NOT_FOUND,
    }
}

fn hex(v: u64) -> String {
    format!("0x{v:x}")
}

async fn rpc(State(sim): State<Arc<Sim>>, Path(name): Path<String>, Json(request): Json<Value>) -> Response {
    let calls: Vec<Value> = match &request {
        Value::Array(items) => items.clone(),
        single => vec![single.clone()],
    };
    // Decide under the lock, answer after it.
    let decision = {
        let mut nodes = sim.nodes.lock().expect("sim lock poisoned");
        let Some(node) = nodes.get_mut(&name) else {
            return (StatusCode::NOT_FOUND, format!("no simulated node {name}")).into_response();
        };
        node.calls += 1;
        // One probe = one eth_chainId / getblockchaininfo call.
        if calls.iter().any(|c| matches!(c["method"].as_str(), Some("eth_chainId" | "getblockchaininfo"))) {
            node.probes += 1;
        }
        let b = node.behaviour.clone();
        let failing_flap = b.flapping && node.probes % 2 == 0;
        (b, failing_flap, sim.height(&node.behaviour), sim.chain_height(&node.behaviour))
    };
    let (b, failing_flap, height, chain_height) = decision;
    if b.delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(b.delay_ms)).await;
    }
    if failing_flap {
        return (StatusCode::SERVICE_UNAVAILABLE, "flapping").into_response();
    }
    if let Some(status) = b.http_status {
        let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut headers = HeaderMap::new();
        if status == 429 {
            headers.insert("retry-after", HeaderValue::from_static("1"));
        }
        return (code, headers, "simulated HTTP error").into_response();
    }
    if b.no_batch && request.is_array() {
        return (StatusCode::BAD_REQUEST, "batches are not supported").into_response();
    }
    let answers: Vec<Value> = calls.iter().map(|c| answer(&b, c, height, chain_height)).collect();
    match request {
        Value::Array(_) => (StatusCode::OK, Json(Value::Array(answers))).into_response(),
        _ => {
            let one = answers.into_iter().next().unwrap_or(Value::Null);
            // bitcoind answers errors with HTTP 500.
            let status = if b.family == Family::Bitcoin && one["error"].is_object() {
                StatusCode::INTERNAL_SERVER_ERROR
            } else {
                StatusCode::OK
            };
            (status, Json(one)).into_response()
        }
    }
}

/// Returns the JSON-RPC response object to one call.
fn answer(b: &NodeBehaviour, call: &Value, height: u64, chain_height: u64) -> Value {
    let method = call["method"].as_str().unwrap_or("");
    let id = call.get("id").cloned().unwrap_or(Value::Null);
    let version = if b.family == Family::Bitcoin { "1.0" } else { "2.0" };
    let reply = |result: Result<Value, (i64, &str)>| match result {
        Ok(r) => json!({"jsonrpc": version, "id": id, "result": r, "error": null}),
        Err((code, message)) => {
            json!({"jsonrpc": version, "id": id, "result": null, "error": {"code": code, "message": message}})
        }
    };
    if let Some(code) = b.rpc_error {
        return reply(Err((code, "simulated error")));
    }
    let now_s = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs();
    let head_time = if b.stalled_at.is_some() { now_s.saturating_sub(3600) } else { now_s };
    let hash = format!("0x{:064x}", height.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let result = match (b.family, method) {
        (Family::Evm, "eth_chainId") => Ok(json!(hex(b.chain_id))),
        (Family::Evm, "eth_blockNumber") => Ok(json!(hex(height))),
        (Family::Evm, "eth_syncing") if b.syncing => {
            Ok(json!({"startingBlock": "0x0", "currentBlock": hex(height), "highestBlock": hex(chain_height)}))
        }
        (Family::Evm, "eth_syncing") => Ok(json!(false)),
        (Family::Evm, "eth_getBlockByNumber") => {
            Ok(json!({"number": hex(height), "hash": hash, "timestamp": hex(head_time)}))
        }
        (Family::Evm, "net_peerCount") if !b.no_peer_count => Ok(json!("0x8")),
        (Family::Bitcoin, "getblockchaininfo") => {
            let headers = if b.syncing { chain_height } else { height };
            Ok(json!({
                "chain": b.bitcoin_chain, "blocks": height, "headers": headers, "bestblockhash": &hash[2..],
                "time": head_time, "mediantime": head_time,
                "verificationprogress": if b.syncing { 0.5 } else { 1.0 },
                "initialblockdownload": b.syncing,
            }))
        }
        (Family::Bitcoin, "getconnectioncount") => Ok(json!(8)),
        (Family::Bitcoin, "getblockcount") => Ok(json!(height)),
        _ => Err((-32601, "Method not found")),
    };
    reply(result)
}
