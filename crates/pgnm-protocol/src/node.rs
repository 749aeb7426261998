//! The node registry's commands: `addNode`, `rmNode`, `updateNode`,
//! `getNodeConfig`, `getNodes` and the checker's `bootstrap`.
//!
//! A node's configuration may reference environment variables (`${NAME}`) in its
//! URL, credentials and headers; the reference is what is stored and shown, the
//! value is resolved only when the node is probed.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};

/// Longest accepted node name.
pub const MAX_NAME_LEN: usize = 100;
/// Largest page of `getNodes`.
pub const MAX_PAGE: u32 = 1000;
/// Default page of `getNodes`.
pub const DEFAULT_PAGE: u32 = 100;

/// The JSON-RPC dialect a node speaks, derived from its type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    /// bitcoind and its forks: btc, ltc, bch, bsv, doge, ...
    Bitcoin,
    /// Ethereum-compatible: eth, bsc, polygon, arbitrum, ...
    Evm,
}

impl Family {
    /// Returns the name as written on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Family::Bitcoin => "bitcoin",
            Family::Evm => "evm",
        }
    }
}

/// How the checker reaches a node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Transport {
    /// HTTP JSON-RPC from the checker itself.
    #[default]
    Direct,
    /// Through `pgnm-jrpc-proxy`, over its Redis stream.
    JrpcProxy,
}

impl Transport {
    /// Returns the name as written on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Direct => "direct",
            Transport::JrpcProxy => "jrpc-proxy",
        }
    }
}

/// HTTP basic credentials; either part may reference environment variables.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BasicAuth {
    /// User name.
    pub username: String,
    /// Password; shown as `***` in replies unless it is a single `${VAR}` reference.
    pub password: String,
}

/// A node's configuration, as given to `addNode` and in the nodes file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeSpec {
    /// Unique name, 1 to 100 characters from `[A-Za-z0-9._-]`.
    pub name: String,
    /// JSON-RPC endpoint, `http` or `https`. User info, path and query may
    /// reference environment variables (`https://rpc.example/${API_KEY}`).
    pub url: String,
    /// HTTP basic credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<BasicAuth>,
    /// Extra HTTP headers (an API key header, say); values may reference
    /// environment variables and are redacted in replies.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Whether the node is checked and may be chosen.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Priority tier, 0 to 9: the best node is taken from the lowest tier that has
    /// an eligible node.
    #[serde(default)]
    #[schemars(range(max = 9))]
    pub priority: u8,
    /// Relative weight within a tier, 1 to 10000.
    #[serde(default = "default_weight")]
    #[schemars(range(min = 1, max = 10000))]
    pub weight: u32,
    /// Free labels for selection (`region: eu`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// How the checker reaches the node.
    #[serde(default)]
    pub transport: Transport,
    /// Probe timeout override, 100 to 60000 ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 100, max = 60000))]
    pub timeout_ms: Option<u32>,
    /// Largest lag behind the group head (in blocks) still counted healthy,
    /// overriding the type's default; 0 to 100000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 100000))]
    pub max_lag: Option<u64>,
}

fn yes() -> bool {
    true
}

fn default_weight() -> u32 {
    100
}

/// Arguments of `addNode`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AddNodeArgs {
    /// Chain type (`btc`, `eth`, ...).
    #[serde(rename = "type")]
    pub node_type: String,
    /// The node's configuration.
    pub config: NodeSpec,
}

/// Which node a command is about: exactly one of `id`, `nodeHash` or `name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeKey {
    /// By database id.
    Id(i64),
    /// By stable hash of type and endpoint.
    Hash(String),
    /// By unique name.
    Name(String),
}

impl NodeKey {
    /// Builds the key from the three optional selector fields of an argument map.
    pub fn from_fields(id: Option<i64>, node_hash: Option<&str>, name: Option<&str>) -> Result<NodeKey, String> {
        match (id, node_hash, name) {
            (Some(id), None, None) => Ok(NodeKey::Id(id)),
            (None, Some(h), None) => Ok(NodeKey::Hash(h.to_owned())),
            (None, None, Some(n)) => Ok(NodeKey::Name(n.to_owned())),
            (None, None, None) => Err("args: give the node's id, nodeHash or name".to_owned()),
            _ => Err("args: give only one of id, nodeHash and name".to_owned()),
        }
    }
}

impl std::fmt::Display for NodeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NodeKey::Id(id) => write!(f, "id {id}"),
            NodeKey::Hash(h) => write!(f, "nodeHash {h}"),
            NodeKey::Name(n) => write!(f, "name {n:?}"),
        }
    }
}

macro_rules! selector_args {
    ($(#[$doc:meta])* $name:ident { $($(#[$fdoc:meta])* $fvis:vis $field:ident : $ty:ty),* $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
        #[serde(rename_all = "camelCase", deny_unknown_fields)]
        pub struct $name {
            /// The node's id.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub id: Option<i64>,
            /// The node's hash.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub node_hash: Option<String>,
            /// The node's name.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub name: Option<String>,
            $($(#[$fdoc])* $fvis $field: $ty,)*
        }

        impl $name {
            /// Returns the node the arguments select.
            pub fn key(&self) -> Result<NodeKey, String> {
                NodeKey::from_fields(self.id, self.node_hash.as_deref(), self.name.as_deref())
            }
        }
    };
}

selector_args! {
    /// Arguments of `rmNode`: the node, by `id`, `nodeHash` or `name`.
    RmNodeArgs {}
}

selector_args! {
    /// Arguments of `checkNode`: the node, by `id`, `nodeHash` or `name`.
    CheckNodeArgs {}
}

selector_args! {
    /// Arguments of `getNodeConfig`: the node, by `id`, `nodeHash` or `name`.
    GetNodeConfigArgs {
        /// Show credentials unredacted (as stored: `${VAR}` references stay
        /// references). Refused unless the deployment allows it.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        pub reveal_secrets: bool,
    }
}

selector_args! {
    /// Arguments of `updateNode`: the node, the revision the change is based on,
    /// and the fields to change.
    UpdateNodeArgs {
        /// The node's revision as last read; a stale revision gets `CONFLICT`.
        pub revision: i64,
        /// The fields to change; absent fields keep their value.
        pub set: NodePatch,
    }
}

/// A partial change of a node's configuration. A field set to `null` is cleared
/// where it is optional (`auth`, `timeoutMs`, `maxLag`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodePatch {
    /// New name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// New endpoint (the node's hash changes with it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// New credentials, or `null` to remove them.
    #[serde(default, deserialize_with = "double_option", skip_serializing_if = "Option::is_none")]
    pub auth: Option<Option<BasicAuth>>,
    /// New headers (replacing all of them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<BTreeMap<String, String>>,
    /// Enable or disable the node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// New priority tier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u8>,
    /// New weight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    /// New labels (replacing all of them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    /// New transport.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transport: Option<Transport>,
    /// New probe timeout, or `null` for the default.
    #[serde(default, deserialize_with = "double_option", skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<Option<u32>>,
    /// New lag limit, or `null` for the type's default.
    #[serde(default, deserialize_with = "double_option", skip_serializing_if = "Option::is_none")]
    pub max_lag: Option<Option<u64>>,
}

impl NodePatch {
    /// Returns the configuration with the patch applied.
    pub fn apply(&self, spec: &NodeSpec) -> NodeSpec {
        let mut out = spec.clone();
        if let Some(v) = &self.name {
            out.name = v.clone();
        }
        if let Some(v) = &self.url {
            out.url = v.clone();
        }
        if let Some(v) = &self.auth {
            out.auth = v.clone();
        }
        if let Some(v) = &self.headers {
            out.headers = v.clone();
        }
        if let Some(v) = self.enabled {
            out.enabled = v;
        }
        if let Some(v) = self.priority {
            out.priority = v;
        }
        if let Some(v) = self.weight {
            out.weight = v;
        }
        if let Some(v) = &self.labels {
            out.labels = v.clone();
        }
        if let Some(v) = self.transport {
            out.transport = v;
        }
        if let Some(v) = self.timeout_ms {
            out.timeout_ms = v;
        }
        if let Some(v) = self.max_lag {
            out.max_lag = v;
        }
        out
    }
}

/// Present-and-null is `Some(None)`, absent is `None` (with `#[serde(default)]`).
fn double_option<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// Arguments of `getNodes`: filters and a page.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GetNodesArgs {
    /// Only nodes of this type.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub node_type: Option<String>,
    /// Only enabled (or only disabled) nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Only nodes carrying every one of these labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// The `next` cursor of the previous page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
    /// Page size, 1 to 1000 (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub limit: Option<u32>,
}

/// Result of `getNodes`: one page, in id order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GetNodesResult {
    /// The nodes of this page.
    pub nodes: Vec<NodeView>,
    /// Cursor of the next page (`after`); absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// A node as replies show it (the result of `addNode`, `updateNode`, `rmNode`
/// and `getNodeConfig`): credentials redacted unless revealed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeView {
    /// Database id.
    pub id: i64,
    /// Stable hash of type and normalised endpoint.
    pub node_hash: String,
    /// Chain type.
    #[serde(rename = "type")]
    pub node_type: String,
    /// Protocol family of the type.
    pub family: Family,
    /// The configuration (redacted unless revealed).
    pub config: NodeSpec,
    /// Where the node came from: `api` or `file` (the nodes file).
    pub source: String,
    /// Revision, for `updateNode`.
    pub revision: i64,
    /// Creation time, Unix epoch milliseconds.
    pub created_at: i64,
    /// Last change, Unix epoch milliseconds.
    pub updated_at: i64,
    /// Live health, once the node has been checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<crate::health::NodeStatusView>,
}

/// Arguments of the checker's `bootstrap`: load the nodes file into the registry.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BootstrapArgs {
    /// Apply the valid entries even when some are invalid (default: apply nothing
    /// when any entry is invalid).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub skip_invalid: bool,
    /// Report what would change without changing anything.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
}

/// One entry of a bootstrap report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BootstrapEntry {
    /// Node name.
    pub name: String,
    /// Chain type.
    #[serde(rename = "type")]
    pub node_type: String,
    /// Node hash.
    pub node_hash: String,
    /// The fields that differ from the registry (for `changed`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<String>,
}

/// An entry of the nodes file that cannot be loaded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InvalidEntry {
    /// Position in the file's `nodes` list, from 0.
    pub index: usize,
    /// The entry's name, where it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Why it is invalid; names the field.
    pub reason: String,
}

/// Result of the checker's `bootstrap`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BootstrapResult {
    /// The nodes file that was read.
    pub file: String,
    /// Whether the registry was changed (false on a dry run, or when invalid
    /// entries stopped the load).
    pub applied: bool,
    /// Nodes new to the registry.
    pub added: Vec<BootstrapEntry>,
    /// Nodes whose configuration the file changed.
    pub changed: Vec<BootstrapEntry>,
    /// Nodes already as the file says.
    pub unchanged: Vec<BootstrapEntry>,
    /// Entries that cannot be loaded, each with its reason.
    pub invalid: Vec<InvalidEntry>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patch_distinguishes_absent_from_null() {
        let patch: NodePatch = serde_json::from_value(serde_json::json!({"auth": null, "weight": 5})).unwrap();
        assert_eq!(patch.auth, Some(None));
        assert_eq!(patch.timeout_ms, None);
        let spec: NodeSpec = serde_json::from_value(serde_json::json!({
            "name": "n", "url": "http://h", "auth": {"username": "u", "password": "p"}, "timeoutMs": 500
        }))
        .unwrap();
        let out = patch.apply(&spec);
        assert_eq!(out.auth, None);
        assert_eq!(out.weight, 5);
        assert_eq!(out.timeout_ms, Some(500));
    }

    #[test]
    fn selectors_need_exactly_one_key() {
        assert_eq!(RmNodeArgs { id: Some(3), ..Default::default() }.key(), Ok(NodeKey::Id(3)));
        assert!(RmNodeArgs::default().key().is_err());
        assert!(RmNodeArgs { id: Some(3), name: Some("x".into()), ..Default::default() }.key().is_err());
    }
}
