//! `jrpcCall`: a JSON-RPC call to a node, executed by `pgnm-jrpc-proxy` for
//! nodes whose transport is `jrpc-proxy` (reachable only from the proxy's
//! network). Secrets travel as `${VAR}` references and are resolved from the
//! proxy's own environment: their values never pass through Redis.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::node::BasicAuth;

/// Arguments of `jrpcCall`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JrpcCallArgs {
    /// The node's endpoint, `${VAR}` references unresolved.
    pub url: String,
    /// HTTP basic credentials, references unresolved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<BasicAuth>,
    /// Extra headers, references unresolved.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// JSON-RPC version: `1.0` (bitcoind) or `2.0`.
    #[serde(default = "v2")]
    pub jsonrpc: String,
    /// The method.
    pub method: String,
    /// Its parameters (an array or an object); none by default.
    #[serde(default)]
    pub params: serde_json::Value,
    /// Call timeout, 100 to 60000 ms.
    #[schemars(range(min = 100, max = 60000))]
    pub timeout_ms: u64,
}

fn v2() -> String {
    "2.0".to_owned()
}

/// Result of `jrpcCall`: the JSON-RPC `result`. A failed call is an
/// `UNAVAILABLE` error whose details carry `reason` (`timeout`, `unreachable`,
/// `auth`, `rate_limited`, `http_5xx`, `http_error`, `rpc_error`,
/// `method_not_found`, `bad_response`) and, where they apply, `httpStatus`,
/// `rpcCode`, `retryAfter`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JrpcCallResult {
    /// The node's answer.
    pub result: serde_json::Value,
    /// Time the call took at the proxy.
    pub latency_ms: u64,
}
