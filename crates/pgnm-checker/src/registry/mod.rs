//! The node registry's commands: `addNode`, `rmNode`, `updateNode`,
//! `getNodeConfig`, `getNodes` and `bootstrap` (the nodes file).

pub mod chains;
pub mod validate;

use std::collections::HashMap;
use std::path::PathBuf;

use pgnm_protocol::node::{
    AddNodeArgs, BootstrapArgs, BootstrapEntry, BootstrapResult, DEFAULT_PAGE, GetNodeConfigArgs, GetNodesArgs,
    GetNodesResult, InvalidEntry, MAX_PAGE, NodeSpec, NodeView, RmNodeArgs, UpdateNodeArgs,
};
use pgnm_protocol::{ErrorBody, ErrorCode};
use pgnm_store::{NewNode, NodeFilter, NodeRow, Store, StoreError, SyncOutcome, UpdateOutcome, WriteError};
use tracing::{info, warn};

use chains::Chains;
use pgnm_rpc::secrets;

/// Where a node came from.
const SOURCE_API: &str = "api";
const SOURCE_FILE: &str = "file";

/// The registry: the store, the chain types and the deployment's choices.
#[derive(Debug)]
pub struct Registry {
    store: Store,
    chains: Chains,
    nodes_file: Option<PathBuf>,
    allow_reveal: bool,
    env: fn(&str) -> Option<String>,
}

fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// Maps a store failure to the reply's error.
pub fn store_error(e: StoreError) -> ErrorBody {
    if e.is_unavailable() {
        warn!(error = %e, cause = ?std::error::Error::source(&e).map(|s| s.to_string()), "database unavailable");
        ErrorBody::new(ErrorCode::Unavailable, format!("{e}: try again later"))
    } else {
        warn!(error = %e, cause = ?std::error::Error::source(&e).map(|s| s.to_string()), "database error");
        ErrorBody::internal(e.to_string())
    }
}

fn write_error(e: WriteError, at: &str) -> ErrorBody {
    match e {
        WriteError::DuplicateEndpoint => ErrorBody::new(
            ErrorCode::Conflict,
            format!("{at}.url: a node of this type with this endpoint already exists"),
        ),
        WriteError::DuplicateName => {
            ErrorBody::new(ErrorCode::Conflict, format!("{at}.name: a node with this name already exists"))
        }
        WriteError::Store(e) => store_error(e),
    }
}

impl Registry {
    /// Returns the registry over `store`.
    pub fn new(store: Store, chains: Chains, nodes_file: Option<PathBuf>, allow_reveal: bool) -> Registry {
        Registry { store, chains, nodes_file, allow_reveal, env: process_env }
    }

    /// Returns the store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    fn view(&self, row: NodeRow, reveal: bool) -> NodeView {
        let family = self.chains.get(&row.node_type).map(|c| c.family).unwrap_or(pgnm_protocol::node::Family::Evm);
        NodeView {
            id: row.id,
            node_hash: row.node_hash,
            node_type: row.node_type,
            family,
            config: if reveal { row.spec } else { secrets::redact_spec(&row.spec) },
            source: row.source,
            revision: row.revision,
            created_at: row.created_at,
            updated_at: row.updated_at,
            status: None,
        }
    }

    fn checked(&self, node_type: &str, spec: NodeSpec, at: &str, source: &str) -> Result<NewNode, String> {
        let env = self.env;
        validate::validate(&self.chains, node_type, &spec, at, &env)?;
        Ok(NewNode {
            node_hash: validate::node_hash(node_type, &spec.url),
            node_type: node_type.to_owned(),
            spec,
            source: source.to_owned(),
        })
    }

    /// `addNode`.
    pub async fn add_node(&self, args: AddNodeArgs) -> Result<NodeView, ErrorBody> {
        let node = self.checked(&args.node_type, args.config, "config", SOURCE_API).map_err(ErrorBody::bad_request)?;
        let row = self.store.insert_node(&node).await.map_err(|e| write_error(e, "config"))?;
        info!(node = %row.node_hash, name = %row.spec.name, r#type = %row.node_type, url = %secrets::redact_url(&row.spec.url), "node added");
        Ok(self.view(row, false))
    }

    /// `rmNode`.
    pub async fn rm_node(&self, args: RmNodeArgs) -> Result<NodeView, ErrorBody> {
        let key = args.key().map_err(ErrorBody::bad_request)?;
        let row = self.store.delete_node(&key).await.map_err(store_error)?;
        let row = row.ok_or_else(|| ErrorBody::new(ErrorCode::NotFound, format!("no node with {key}")))?;
        info!(node = %row.node_hash, name = %row.spec.name, "node removed");
        Ok(self.view(row, false))
    }

    /// `getNodeConfig`.
    pub async fn get_node_config(&self, args: GetNodeConfigArgs) -> Result<NodeView, ErrorBody> {
        let key = args.key().map_err(ErrorBody::bad_request)?;
        if args.reveal_secrets && !self.allow_reveal {
            return Err(ErrorBody::new(
                ErrorCode::Forbidden,
                "args.revealSecrets: this deployment does not reveal credentials (PGNM_ALLOW_SECRET_REVEAL)",
            ));
        }
        let row = self.store.get_node(&key).await.map_err(store_error)?;
        let row = row.ok_or_else(|| ErrorBody::new(ErrorCode::NotFound, format!("no node with {key}")))?;
        if args.reveal_secrets {
            info!(node = %row.node_hash, "credentials revealed to a caller");
        }
        Ok(self.view(row, args.reveal_secrets))
    }

    /// `updateNode`: a partial change based on a revision.
    pub async fn update_node(&self, args: UpdateNodeArgs) -> Result<NodeView, ErrorBody> {
        let key = args.key().map_err(ErrorBody::bad_request)?;
        let current = self.store.get_node(&key).await.map_err(store_error)?;
        let current = current.ok_or_else(|| ErrorBody::new(ErrorCode::NotFound, format!("no node with {key}")))?;
        let spec = args.set.apply(&current.spec);
        let node = self.checked(&current.node_type, spec, "set", &current.source).map_err(ErrorBody::bad_request)?;
        match self.store.update_node(current.id, args.revision, &node).await.map_err(|e| write_error(e, "set"))? {
            UpdateOutcome::Updated(row) => {
                let fields = pgnm_store::changed_fields(&current.spec, &row.spec);
                info!(node = %row.node_hash, name = %row.spec.name, ?fields, revision = row.revision, "node updated");
                Ok(self.view(*row, false))
            }
            UpdateOutcome::Stale { current } => Err(ErrorBody::new(
                ErrorCode::Conflict,
                format!("revision: the node is at revision {current}, not {}; read it again", args.revision),
            )),
            UpdateOutcome::Missing => Err(ErrorBody::new(ErrorCode::NotFound, format!("no node with {key}"))),
        }
    }

    /// `getNodes`: one page of nodes in id order.
    pub async fn get_nodes(&self, args: GetNodesArgs) -> Result<GetNodesResult, ErrorBody> {
        let limit = args.limit.unwrap_or(DEFAULT_PAGE);
        if !(1..=MAX_PAGE).contains(&limit) {
            return Err(ErrorBody::bad_request(format!("args.limit: must be between 1 and {MAX_PAGE}, got {limit}")));
        }
        let after = match &args.after {
            None => 0,
            Some(c) => c
                .parse::<i64>()
                .ok()
                .filter(|v| *v >= 0)
                .ok_or_else(|| ErrorBody::bad_request("args.after: not a cursor returned by getNodes"))?,
        };
        if let Some(t) = &args.node_type
            && self.chains.get(t).is_none()
        {
            return Err(ErrorBody::bad_request(format!("args.type: unknown chain type {t:?}")));
        }
        let filter = NodeFilter { node_type: args.node_type, enabled: args.enabled, labels: args.labels };
        let mut rows = self.store.list_nodes(&filter, after, i64::from(limit) + 1).await.map_err(store_error)?;
        let more = rows.len() > limit as usize;
        rows.truncate(limit as usize);
        let next = if more { rows.last().map(|r| r.id.to_string()) } else { None };
        Ok(GetNodesResult { nodes: rows.into_iter().map(|r| self.view(r, false)).collect(), next })
    }

    /// The checker's `bootstrap`: loads the nodes file into the registry.
    pub async fn bootstrap(&self, args: BootstrapArgs) -> Result<BootstrapResult, ErrorBody> {
        let path = self
            .nodes_file
            .as_ref()
            .ok_or_else(|| ErrorBody::new(ErrorCode::NotFound, "no nodes file is configured (PGNM_NODES_FILE)"))?;
        let file = path.display().to_string();
        let text = tokio::fs::read_to_string(path)
            .await
            .map_err(|e| ErrorBody::new(ErrorCode::NotFound, format!("nodes file {file}: {e}")))?;
        let entries = parse_nodes_file(&text).map_err(|e| ErrorBody::bad_request(format!("nodes file {file}: {e}")))?;

        let mut invalid = Vec::new();
        let mut valid: Vec<(usize, NewNode)> = Vec::new();
        let mut seen_hash: HashMap<String, usize> = HashMap::new();
        let mut seen_name: HashMap<String, usize> = HashMap::new();
        for (index, entry) in entries.into_iter().enumerate() {
            let at = format!("nodes[{index}]");
            let (name, checked) = match entry {
                Ok((node_type, spec)) => {
                    (
                        Some(spec.name.clone()),
                        self.checked(&node_type, spec, &at, SOURCE_FILE).map_err(|e| {
                            // `type: ...` comes without the entry's path.
                            if e.starts_with("type:") { format!("{at}.{e}") } else { e }
                        }),
                    )
                }
                Err((name, reason)) => (name, Err(format!("{at}: {reason}"))),
            };
            let checked = checked.and_then(|node| {
                if let Some(first) = seen_hash.insert(node.node_hash.clone(), index) {
                    return Err(format!("{at}.url: same type and endpoint as nodes[{first}]"));
                }
                if let Some(first) = seen_name.insert(node.spec.name.clone(), index) {
                    return Err(format!("{at}.name: same name as nodes[{first}]"));
                }
                Ok(node)
            });
            match checked {
                Ok(node) => valid.push((index, node)),
                Err(reason) => invalid.push(InvalidEntry { index, name, reason }),
            }
        }

        let nodes: Vec<NewNode> = valid.iter().map(|(_, n)| n.clone()).collect();
        let skip_invalid = args.skip_invalid;
        let dry_run = args.dry_run;
        let had_invalid = !invalid.is_empty();
        let mut applied = false;
        let outcomes = self
            .store
            .sync_nodes(&nodes, |outcomes| {
                let name_taken = outcomes.iter().any(|o| matches!(o, SyncOutcome::NameTaken { .. }));
                let write = !dry_run && (skip_invalid || !(had_invalid || name_taken));
                applied = write && outcomes.iter().any(|o| matches!(o, SyncOutcome::Added | SyncOutcome::Changed(_)));
                vec![write; outcomes.len()]
            })
            .await
            .map_err(store_error)?;

        let mut result =
            BootstrapResult { file, applied, added: Vec::new(), changed: Vec::new(), unchanged: Vec::new(), invalid };
        for ((index, node), outcome) in valid.into_iter().zip(outcomes) {
            let entry = |fields: Vec<String>| BootstrapEntry {
                name: node.spec.name.clone(),
                node_type: node.node_type.clone(),
                node_hash: node.node_hash.clone(),
                fields,
            };
            match outcome {
                SyncOutcome::Added => result.added.push(entry(Vec::new())),
                SyncOutcome::Changed(fields) => {
                    result.changed.push(entry(fields.into_iter().map(str::to_owned).collect()))
                }
                SyncOutcome::Unchanged => result.unchanged.push(entry(Vec::new())),
                SyncOutcome::NameTaken { by } => result.invalid.push(InvalidEntry {
                    index,
                    name: Some(node.spec.name.clone()),
                    reason: format!("nodes[{index}].name: already used by node {by}"),
                }),
            }
        }
        result.invalid.sort_by_key(|e| e.index);
        info!(
            file = %result.file,
            applied = result.applied,
            added = result.added.len(),
            changed = result.changed.len(),
            unchanged = result.unchanged.len(),
            invalid = result.invalid.len(),
            "nodes file loaded"
        );
        Ok(result)
    }

    /// On a cold start (an empty registry) loads the nodes file, if one is
    /// configured. Several replicas starting together are serialised by the
    /// store, and the load is idempotent.
    pub async fn bootstrap_if_empty(&self) -> Result<(), ErrorBody> {
        if self.nodes_file.is_none() || self.store.count_nodes().await.map_err(store_error)? > 0 {
            return Ok(());
        }
        let result = self.bootstrap(BootstrapArgs::default()).await?;
        for e in &result.invalid {
            warn!(index = e.index, reason = %e.reason, "invalid entry in the nodes file");
        }
        if !result.invalid.is_empty() {
            warn!("the nodes file has invalid entries, so nothing was loaded; fix it and run `pgnm nodes bootstrap`");
        }
        Ok(())
    }
}

/// An entry of the nodes file: its type and configuration, or its name (where
/// readable) and why it cannot be read.
type FileEntry = Result<(String, NodeSpec), (Option<String>, String)>;

/// Parses the nodes file: `nodes: [{type, name, url, ...}, ...]`. A broken file
/// is an error; a broken entry is reported as that entry's error.
fn parse_nodes_file(text: &str) -> Result<Vec<FileEntry>, String> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct File {
        nodes: Vec<serde_yaml_ng::Value>,
    }
    let file: File = serde_yaml_ng::from_str(text).map_err(|e| e.to_string())?;
    Ok(file
        .nodes
        .into_iter()
        .map(|value| {
            let serde_yaml_ng::Value::Mapping(mut map) = value else {
                return Err((None, "expected a map".to_owned()));
            };
            let name = map.get("name").and_then(|n| n.as_str()).map(str::to_owned);
            let node_type = match map.remove("type") {
                Some(serde_yaml_ng::Value::String(t)) => t,
                Some(_) => return Err((name, "type: expected a string".to_owned())),
                None => return Err((name, "type: missing".to_owned())),
            };
            let spec: NodeSpec = serde_path_to_error::deserialize(serde_yaml_ng::Value::Mapping(map)).map_err(|e| {
                let path = e.path().to_string();
                let why = e.inner().to_string();
                (name.clone(), if path == "." { why } else { format!("{path}: {why}") })
            })?;
            Ok((node_type, spec))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_file_entries_are_read_one_by_one() {
        let text = "nodes:\n  - {type: btc, name: a, url: 'http://h:8332'}\n  - {name: b, url: 'http://h'}\n  - {type: eth, name: c, url: 'http://h', weight: -1}\n  - {type: eth, name: d, url: 'http://h', colour: red}\n";
        let entries = parse_nodes_file(text).unwrap();
        assert!(entries[0].is_ok());
        assert_eq!(entries[1].as_ref().unwrap_err().1, "type: missing");
        assert!(entries[2].as_ref().unwrap_err().1.starts_with("weight:"), "{:?}", entries[2]);
        assert!(entries[3].as_ref().unwrap_err().1.contains("colour"), "{:?}", entries[3]);
        assert!(parse_nodes_file("nodes: 5").is_err());
    }
}
