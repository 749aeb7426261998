//! Chain types: the built-in table, extended or overridden by a YAML file.

use std::collections::BTreeMap;
use std::path::Path;

use pgnm_protocol::node::Family;
use serde::Deserialize;

/// What pgnm knows of a chain type.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ChainType {
    /// The type's name (`btc`, `eth`, ...).
    #[serde(rename = "type")]
    pub name: String,
    /// Its protocol family.
    pub family: Family,
    /// EVM: the chain id `eth_chainId` must return.
    #[serde(default)]
    pub chain_id: Option<u64>,
    /// Bitcoin: the `chain` `getblockchaininfo` must report (`main`, `test`, `regtest`).
    #[serde(default)]
    pub bitcoin_chain: Option<String>,
    /// Expected time between blocks, in milliseconds.
    pub block_time_ms: u64,
    /// Default lag limit, in blocks.
    pub max_lag: u64,
    /// A node whose height has not moved (or whose head is older) for this
    /// long is stalled; default ten block times, at least 30 s.
    #[serde(default)]
    pub stall_after_ms: Option<u64>,
}

impl ChainType {
    /// Returns the stall window.
    pub fn stall_after_ms(&self) -> u64 {
        self.stall_after_ms.unwrap_or_else(|| (self.block_time_ms * 10).max(30_000))
    }
}

/// The chain types this checker accepts.
#[derive(Debug, Clone)]
pub struct Chains {
    types: BTreeMap<String, ChainType>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChainsFile {
    chains: Vec<ChainType>,
}

fn evm(name: &str, chain_id: u64, block_time_ms: u64, max_lag: u64) -> ChainType {
    ChainType {
        name: name.to_owned(),
        family: Family::Evm,
        chain_id: Some(chain_id),
        bitcoin_chain: None,
        block_time_ms,
        max_lag,
        stall_after_ms: None,
    }
}

fn bitcoin(name: &str, chain: &str, block_time_ms: u64, max_lag: u64) -> ChainType {
    ChainType {
        name: name.to_owned(),
        family: Family::Bitcoin,
        chain_id: None,
        bitcoin_chain: Some(chain.to_owned()),
        block_time_ms,
        max_lag,
        stall_after_ms: None,
    }
}

impl Chains {
    /// Returns the built-in table.
    pub fn builtin() -> Chains {
        let list = [
            bitcoin("btc", "main", 600_000, 2),
            bitcoin("btc-testnet", "test", 600_000, 2),
            bitcoin("btc-regtest", "regtest", 600_000, 2),
            bitcoin("ltc", "main", 150_000, 2),
            bitcoin("bch", "main", 600_000, 2),
            bitcoin("bsv", "main", 600_000, 2),
            bitcoin("doge", "main", 60_000, 3),
            bitcoin("dash", "main", 150_000, 2),
            evm("eth", 1, 12_000, 6),
            evm("eth-sepolia", 11_155_111, 12_000, 6),
            evm("bsc", 56, 3_000, 10),
            evm("polygon", 137, 2_000, 16),
            evm("arbitrum", 42_161, 250, 80),
            evm("optimism", 10, 2_000, 10),
            evm("base", 8_453, 2_000, 10),
            evm("avalanche", 43_114, 2_000, 10),
            evm("evm-dev", 31_337, 1_000, 6),
        ];
        Chains { types: list.into_iter().map(|c| (c.name.clone(), c)).collect() }
    }

    /// Returns the built-in table extended (and overridden, type by type) by the
    /// YAML file at `path`: `chains: [{type, family, chainId | bitcoinChain,
    /// blockTimeMs, maxLag}, ...]`.
    pub fn load(path: Option<&Path>) -> Result<Chains, String> {
        let mut chains = Chains::builtin();
        let Some(path) = path else { return Ok(chains) };
        let text = std::fs::read_to_string(path).map_err(|e| format!("chains file {}: {e}", path.display()))?;
        let file: ChainsFile =
            serde_yaml_ng::from_str(&text).map_err(|e| format!("chains file {}: {e}", path.display()))?;
        for c in file.chains {
            let valid_name = !c.name.is_empty()
                && c.name.len() <= 32
                && c.name.chars().all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '-');
            if !valid_name {
                return Err(format!("chains file {}: type {:?}: use 1 to 32 of [a-z0-9-]", path.display(), c.name));
            }
            match c.family {
                Family::Evm if c.chain_id.is_none() => {
                    return Err(format!("chains file {}: type {}: an evm type needs chainId", path.display(), c.name));
                }
                Family::Bitcoin if c.bitcoin_chain.is_none() => {
                    return Err(format!(
                        "chains file {}: type {}: a bitcoin type needs bitcoinChain",
                        path.display(),
                        c.name
                    ));
                }
                _ => {}
            }
            chains.types.insert(c.name.clone(), c);
        }
        Ok(chains)
    }

    /// Returns the type named `name`.
    pub fn get(&self, name: &str) -> Option<&ChainType> {
        self.types.get(name)
    }

    /// Returns every type name, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.types.keys().map(String::as_str)
    }
}
