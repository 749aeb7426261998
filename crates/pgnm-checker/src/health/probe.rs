//! Probes: what one check of a node asks it, per protocol family, behind one
//! trait so that a family is easy to add.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use pgnm_protocol::node::Family;
use serde_json::{Value, json};

use super::transport::JsonRpc;
use crate::registry::chains::ChainType;
use pgnm_rpc::{Dialect, RpcError};

/// What a check saw.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    /// Latest block height.
    pub height: u64,
    /// Latest block hash.
    pub head_hash: Option<String>,
    /// Latest block timestamp, Unix seconds.
    pub head_time: Option<u64>,
    /// The node says it is syncing (or its headers are far ahead of its blocks).
    pub syncing: bool,
    /// Connected peers, where the node reports them.
    pub peers: Option<u64>,
    /// The chain is not the type's: why.
    pub wrong_chain: Option<String>,
    /// Time the probe took.
    pub latency_ms: u64,
}

/// A boxed future, so that probes can live behind `dyn`.
pub type ProbeFuture<'a> = Pin<Box<dyn Future<Output = Result<Observation, RpcError>> + Send + 'a>>;

/// Asks a node how it is.
pub trait Probe: Send + Sync {
    /// Probes `endpoint`, a node of type `chain`, within `timeout`.
    fn probe<'a>(&'a self, rpc: &'a dyn JsonRpc, chain: &'a ChainType, timeout: Duration) -> ProbeFuture<'a>;
}

/// Returns the probe of a family.
pub fn for_family(family: Family) -> &'static dyn Probe {
    match family {
        Family::Evm => &EvmProbe,
        Family::Bitcoin => &BitcoinProbe,
    }
}

fn hex_u64(v: &Value, what: &str) -> Result<u64, RpcError> {
    let s = v.as_str().ok_or_else(|| RpcError::BadResponse(format!("{what}: not a hex string")))?;
    u64::from_str_radix(s.trim_start_matches("0x"), 16)
        .map_err(|_| RpcError::BadResponse(format!("{what}: bad hex {s:?}")))
}

/// EVM nodes: `eth_chainId`, `eth_syncing`, the latest block, `net_peerCount`
/// where supported.
#[derive(Debug)]
pub struct EvmProbe;

impl Probe for EvmProbe {
    fn probe<'a>(&'a self, rpc: &'a dyn JsonRpc, chain: &'a ChainType, timeout: Duration) -> ProbeFuture<'a> {
        Box::pin(async move {
            let started = Instant::now();
            let calls = vec![
                ("eth_chainId", json!([])),
                ("eth_syncing", json!([])),
                ("eth_getBlockByNumber", json!(["latest", false])),
                ("net_peerCount", json!([])),
            ];
            // One batch request where the node takes batches.
            let mut results = rpc.batch(Dialect::V2, calls, timeout).await?.into_iter();
            let mut next = || results.next().unwrap_or(Err(RpcError::BadResponse("short batch answer".to_owned())));
            let (chain_id, syncing, block, peers) = (next(), next(), next(), next());
            let chain_id = hex_u64(&chain_id?, "eth_chainId")?;
            let syncing = match syncing? {
                Value::Bool(b) => b,
                Value::Object(_) => true,
                other => return Err(RpcError::BadResponse(format!("eth_syncing: unexpected {other}"))),
            };
            let block = block?;
            let height = hex_u64(&block["number"], "latest block number")?;
            let head_hash = block["hash"].as_str().map(str::to_owned);
            let head_time = hex_u64(&block["timestamp"], "latest block timestamp").ok();
            let peers = match peers {
                Ok(v) => hex_u64(&v, "net_peerCount").ok(),
                // Not every node serves it (anvil does not): not a failure.
                Err(RpcError::MethodNotFound | RpcError::Rpc { .. }) => None,
                Err(e) => return Err(e),
            };
            let wrong_chain = match chain.chain_id {
                Some(expected) if expected != chain_id => Some(format!("chain id {chain_id}, expected {expected}")),
                _ => None,
            };
            Ok(Observation {
                height,
                head_hash,
                head_time,
                syncing,
                peers,
                wrong_chain,
                latency_ms: started.elapsed().as_millis() as u64,
            })
        })
    }
}

/// bitcoind and its forks: `getblockchaininfo` (with `initialblockdownload`
/// only where the node reports it) and the connection count.
#[derive(Debug)]
pub struct BitcoinProbe;

impl Probe for BitcoinProbe {
    fn probe<'a>(&'a self, rpc: &'a dyn JsonRpc, chain: &'a ChainType, timeout: Duration) -> ProbeFuture<'a> {
        Box::pin(async move {
            let started = Instant::now();
            let (info, connections) = tokio::join!(
                rpc.call(Dialect::V1, "getblockchaininfo", json!([]), timeout),
                rpc.call(Dialect::V1, "getconnectioncount", json!([]), timeout),
            );
            let info = info?;
            let blocks = info["blocks"]
                .as_u64()
                .ok_or_else(|| RpcError::BadResponse("getblockchaininfo: no blocks".to_owned()))?;
            let headers = info["headers"].as_u64().unwrap_or(blocks);
            let ibd = info.get("initialblockdownload").and_then(Value::as_bool).unwrap_or(false);
            let progress = info["verificationprogress"].as_f64().unwrap_or(1.0);
            let syncing = ibd || headers.saturating_sub(blocks) > 2 || progress < 0.9999;
            let reported_chain = info["chain"].as_str().unwrap_or("").to_owned();
            let wrong_chain = match &chain.bitcoin_chain {
                Some(expected) if *expected != reported_chain => {
                    Some(format!("chain {reported_chain:?}, expected {expected:?}"))
                }
                _ => None,
            };
            let peers = match connections {
                Ok(v) => v.as_u64(),
                Err(RpcError::MethodNotFound | RpcError::Rpc { .. }) => None,
                Err(e) => return Err(e),
            };
            Ok(Observation {
                height: blocks,
                head_hash: info["bestblockhash"].as_str().map(str::to_owned),
                head_time: info["time"].as_u64().or_else(|| info["mediantime"].as_u64()),
                syncing,
                peers,
                wrong_chain,
                latency_ms: started.elapsed().as_millis() as u64,
            })
        })
    }
}
