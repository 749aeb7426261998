//! Health commands: `check` (a round), `checkNode`, `getBestNode`, and the
//! status change events.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Arguments of `check`: which nodes the round covers (every enabled node by
/// default).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CheckArgs {
    /// Only nodes of this type.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub node_type: Option<String>,
    /// Only the nodes of this shard (`id % shards == shard`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<u32>,
    /// Number of shards (1 to 1024).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1024))]
    pub shards: Option<u32>,
}

/// Result of `check`: a summary of the round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CheckResult {
    /// Nodes checked.
    pub checked: u32,
    /// Nodes per status after the round.
    pub by_status: BTreeMap<String, u32>,
    /// Nodes whose status changed.
    pub changed: u32,
    /// Duration of the round.
    pub duration_ms: u64,
    /// The corroborated head of each type checked.
    pub group_heads: BTreeMap<String, u64>,
}

/// A node's live health.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatusView {
    /// `ok`, `lagging`, `syncing`, `unavailable` or `unknown` (after hysteresis).
    pub status: String,
    /// Status of the last check alone.
    pub raw_status: String,
    /// Machine-readable reason of the last check (`timeout`, `lag`, `stalled`, ...).
    pub reason: String,
    /// Whether the node may be chosen by `getBestNode`.
    pub eligible: bool,
    /// Last height seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub height: Option<i64>,
    /// The type's corroborated head at the last check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_head: Option<i64>,
    /// Blocks behind the group head.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag: Option<i64>,
    /// Latency of the last check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<i32>,
    /// Moving average of the latency.
    pub latency_ewma_ms: f64,
    /// Moving average of failed checks, 0 to 1.
    pub error_rate: f64,
    /// Last check, Unix epoch milliseconds.
    pub checked_at: i64,
    /// Last status change, Unix epoch milliseconds.
    pub changed_at: i64,
}

/// Result of `checkNode`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CheckNodeResult {
    /// The node's name.
    pub name: String,
    /// The node's hash.
    pub node_hash: String,
    /// Its health after the check.
    pub status: NodeStatusView,
}

/// Arguments of `getBestNode`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GetBestNodeArgs {
    /// Chain type.
    #[serde(rename = "type")]
    pub node_type: String,
    /// Only nodes carrying every one of these labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Fallbacks to return, 0 to 20 (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 20))]
    pub max_fallbacks: Option<u32>,
}

/// Default number of fallbacks `getBestNode` returns.
pub const DEFAULT_FALLBACKS: u32 = 3;
/// Most fallbacks `getBestNode` returns.
pub const MAX_FALLBACKS: u32 = 20;

/// A node chosen by `getBestNode`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChosenNode {
    /// Database id.
    pub id: i64,
    /// The node's hash.
    pub node_hash: String,
    /// The node's name.
    pub name: String,
    /// Its endpoint (credentials redacted).
    pub url: String,
    /// Its priority tier.
    pub priority: u8,
    /// Last height seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub height: Option<i64>,
    /// Moving average of its latency.
    pub latency_ewma_ms: f64,
}

/// Result of `getBestNode`: the node to use and, in order, the ones to fall back to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GetBestNodeResult {
    /// The node to use.
    pub node: ChosenNode,
    /// The next best eligible nodes, best first (at most `maxFallbacks`).
    pub fallbacks: Vec<ChosenNode>,
}

/// A node's status change, as published on the events stream (`<prefix>:events`,
/// field `m`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StatusEvent {
    /// Database id.
    pub node_id: i64,
    /// The node's hash.
    pub node_hash: String,
    /// The node's name.
    pub name: String,
    /// Chain type.
    #[serde(rename = "type")]
    pub node_type: String,
    /// Status before.
    pub from: String,
    /// Status now.
    pub to: String,
    /// Why.
    pub reason: String,
    /// Height seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub height: Option<i64>,
    /// The type's corroborated head.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_head: Option<i64>,
    /// When, Unix epoch milliseconds.
    pub time: i64,
}
