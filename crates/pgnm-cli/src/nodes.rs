//! `pgnm nodes list|show|add|update|rm|bootstrap`: the registry commands with
//! human output (tables) by default and the replies as JSON with `--json`.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Args, Subcommand};
use pgnm_protocol::Role;
use pgnm_protocol::node::{BootstrapResult, GetNodesResult, NodeView};
use serde_json::{Value, json};

use crate::{Client, EXIT_ERROR_REPLY, print_reply, to_json};

/// The registry's subcommands.
#[derive(Debug, Subcommand)]
pub enum NodesCmd {
    /// List nodes (every page, unless --limit).
    List {
        /// Only nodes of this type.
        #[arg(long = "type")]
        node_type: Option<String>,
        /// Only enabled (`true`) or disabled (`false`) nodes.
        #[arg(long)]
        enabled: Option<bool>,
        /// Only nodes with this label (`key=value`); repeatable.
        #[arg(long = "label", value_parser = key_value)]
        labels: Vec<(String, String)>,
        /// Show one page of this many nodes.
        #[arg(long)]
        limit: Option<u32>,
        /// Start after this cursor (the `next` of a previous page).
        #[arg(long)]
        after: Option<String>,
    },
    /// Show one node: by id, node hash or name.
    Show {
        /// Id, node hash or name.
        node: String,
        /// Show credentials unredacted (if the deployment allows it).
        #[arg(long)]
        reveal: bool,
    },
    /// Add a node.
    Add {
        /// Chain type (`btc`, `eth`, ...).
        #[arg(value_name = "TYPE")]
        node_type: String,
        /// Unique name.
        name: String,
        /// JSON-RPC endpoint; may reference `${VARS}` of the checker's environment.
        url: String,
        #[command(flatten)]
        fields: NodeFields,
    },
    /// Change a node (only the given fields).
    Update {
        /// Id, node hash or name.
        node: String,
        /// New name.
        #[arg(long)]
        name: Option<String>,
        /// New endpoint.
        #[arg(long)]
        url: Option<String>,
        #[command(flatten)]
        fields: NodeFields,
        /// Enable the node.
        #[arg(long, conflicts_with = "disable")]
        enable: bool,
        /// The revision the change is based on (default: the current one).
        #[arg(long)]
        revision: Option<i64>,
    },
    /// Remove a node: by id, node hash or name.
    Rm {
        /// Id, node hash or name.
        node: String,
    },
    /// Load the nodes file into the registry.
    Bootstrap {
        /// Apply the valid entries even when some are invalid.
        #[arg(long)]
        skip_invalid: bool,
        /// Only report what would change.
        #[arg(long)]
        dry_run: bool,
    },
}

/// Optional node fields shared by `add` and `update`.
#[derive(Debug, Args)]
pub struct NodeFields {
    /// HTTP basic user name.
    #[arg(long)]
    user: Option<String>,
    /// HTTP basic password; prefer a `${VAR}` reference.
    #[arg(long, requires = "user")]
    password: Option<String>,
    /// Extra HTTP header (`Name=value`); repeatable.
    #[arg(long = "header", value_parser = key_value)]
    headers: Vec<(String, String)>,
    /// Label (`key=value`); repeatable.
    #[arg(long = "label", value_parser = key_value)]
    labels: Vec<(String, String)>,
    /// Priority tier, 0 (preferred) to 9.
    #[arg(long)]
    priority: Option<u8>,
    /// Weight within the tier, 1 to 10000.
    #[arg(long)]
    weight: Option<u32>,
    /// Transport: `direct` or `jrpc-proxy`.
    #[arg(long)]
    transport: Option<String>,
    /// Probe timeout, milliseconds.
    #[arg(long)]
    timeout_ms: Option<u32>,
    /// Lag limit, in blocks.
    #[arg(long)]
    max_lag: Option<u64>,
    /// Disable the node.
    #[arg(long)]
    disable: bool,
}

pub(crate) fn key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())).ok_or_else(|| format!("expected key=value, got {s:?}"))
}

impl NodeFields {
    fn into_json(self, out: &mut serde_json::Map<String, Value>) {
        if let Some(user) = self.user {
            out.insert("auth".into(), json!({"username": user, "password": self.password.unwrap_or_default()}));
        }
        if !self.headers.is_empty() {
            out.insert("headers".into(), json!(self.headers.into_iter().collect::<BTreeMap<_, _>>()));
        }
        if !self.labels.is_empty() {
            out.insert("labels".into(), json!(self.labels.into_iter().collect::<BTreeMap<_, _>>()));
        }
        for (k, v) in [
            ("priority", self.priority.map(Value::from)),
            ("weight", self.weight.map(Value::from)),
            ("transport", self.transport.map(Value::from)),
            ("timeoutMs", self.timeout_ms.map(Value::from)),
            ("maxLag", self.max_lag.map(Value::from)),
        ] {
            if let Some(v) = v {
                out.insert(k.into(), v);
            }
        }
        if self.disable {
            out.insert("enabled".into(), Value::Bool(false));
        }
    }
}

/// Returns the selector fields for `node`: a number is an id, 32 hex digits a
/// node hash, anything else a name.
fn selector(node: &str) -> serde_json::Map<String, Value> {
    let mut m = serde_json::Map::new();
    if let Ok(id) = node.parse::<i64>() {
        m.insert("id".into(), id.into());
    } else if node.len() == 32 && node.chars().all(|c| c.is_ascii_hexdigit()) {
        m.insert("nodeHash".into(), node.into());
    } else {
        m.insert("name".into(), node.into());
    }
    m
}

/// Runs a `nodes` subcommand.
pub async fn run(client: &Client, cmd: NodesCmd, json: bool) -> anyhow::Result<ExitCode> {
    let checker = Some(Role::Checker);
    let (command, args) = match cmd {
        NodesCmd::List { node_type, enabled, labels, limit, after } => {
            return list(client, node_type, enabled, labels, limit, after, json).await;
        }
        NodesCmd::Show { node, reveal } => {
            let mut a = selector(&node);
            if reveal {
                a.insert("revealSecrets".into(), true.into());
            }
            ("getNodeConfig", a)
        }
        NodesCmd::Add { node_type, name, url, fields } => {
            let mut config = serde_json::Map::new();
            config.insert("name".into(), name.into());
            config.insert("url".into(), url.into());
            fields.into_json(&mut config);
            let mut a = serde_json::Map::new();
            a.insert("type".into(), node_type.into());
            a.insert("config".into(), Value::Object(config));
            ("addNode", a)
        }
        NodesCmd::Update { node, name, url, fields, enable, revision } => {
            let mut set = serde_json::Map::new();
            if let Some(n) = name {
                set.insert("name".into(), n.into());
            }
            if let Some(u) = url {
                set.insert("url".into(), u.into());
            }
            fields.into_json(&mut set);
            if enable {
                set.insert("enabled".into(), true.into());
            }
            let mut a = selector(&node);
            let revision = match revision {
                Some(r) => r,
                None => {
                    let reply = client.call("getNodeConfig", checker, Some(Value::Object(a.clone()))).await?;
                    match reply.result() {
                        Ok(data) => to_json(data)["revision"].as_i64().unwrap_or(0),
                        Err(_) => return Ok(print_reply("getNodeConfig", &reply, Default::default(), json)),
                    }
                }
            };
            a.insert("revision".into(), revision.into());
            a.insert("set".into(), Value::Object(set));
            ("updateNode", a)
        }
        NodesCmd::Rm { node } => ("rmNode", selector(&node)),
        NodesCmd::Bootstrap { skip_invalid, dry_run } => {
            let mut a = serde_json::Map::new();
            a.insert("skipInvalid".into(), skip_invalid.into());
            a.insert("dryRun".into(), dry_run.into());
            ("bootstrap", a)
        }
    };
    let started = Instant::now();
    let reply = client.call(command, checker, Some(Value::Object(args))).await?;
    let data = match reply.result() {
        Ok(data) if !json => data.clone(),
        _ => return Ok(print_reply(command, &reply, started.elapsed(), json)),
    };
    match command {
        "bootstrap" => {
            let r: BootstrapResult = pgnm_protocol::decode_data(&data)?;
            print_bootstrap(&r);
            Ok(if r.invalid.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(EXIT_ERROR_REPLY) })
        }
        _ => {
            let node: NodeView = pgnm_protocol::decode_data(&data)?;
            let verb = match command {
                "addNode" => "added",
                "updateNode" => "updated",
                "rmNode" => "removed",
                _ => "",
            };
            if !verb.is_empty() {
                out!(
                    "{verb} node {} ({}), id {}, revision {}",
                    node.config.name,
                    node.node_hash,
                    node.id,
                    node.revision
                );
            }
            if command != "rmNode" {
                print_node(&node);
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn list(
    client: &Client,
    node_type: Option<String>,
    enabled: Option<bool>,
    labels: Vec<(String, String)>,
    limit: Option<u32>,
    after: Option<String>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let mut filter = json!({"labels": labels.into_iter().collect::<BTreeMap<_, _>>()});
    if let Some(t) = node_type {
        filter["type"] = t.into();
    }
    if let Some(e) = enabled {
        filter["enabled"] = e.into();
    }
    let (nodes, next) = match fetch(client, filter, limit, after, json).await? {
        Ok(found) => found,
        Err(code) => return Ok(code),
    };
    if !json {
        print_table(&nodes);
        if let Some(next) = next {
            out!("(more: --after {next})");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Fetches the nodes `filter` selects with `getNodes`: one page of `limit`
/// when given, every page otherwise. With `json`, each page is printed as it
/// comes (one per line) instead of being returned. Returns the nodes and the
/// next cursor, or the exit status of an error reply (already printed).
pub(crate) async fn fetch(
    client: &Client,
    filter: serde_json::Value,
    limit: Option<u32>,
    mut after: Option<String>,
    json: bool,
) -> anyhow::Result<Result<(Vec<NodeView>, Option<String>), ExitCode>> {
    let mut all = Vec::new();
    loop {
        let mut args = filter.clone();
        args["limit"] = limit.unwrap_or(1000).into();
        if let Some(c) = &after {
            args["after"] = c.clone().into();
        }
        let reply = client.call("getNodes", Some(Role::Checker), Some(args)).await?;
        let data = match reply.result() {
            Ok(d) => d.clone(),
            Err(_) => return Ok(Err(print_reply("getNodes", &reply, Default::default(), json))),
        };
        let page: GetNodesResult = pgnm_protocol::decode_data(&data)?;
        if json {
            out!("{}", serde_json::to_string(&page)?);
        } else {
            all.extend(page.nodes);
        }
        after = page.next;
        if after.is_none() || limit.is_some() {
            return Ok(Ok((all, after)));
        }
    }
}

fn labels_text(labels: &BTreeMap<String, String>) -> String {
    labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
}

fn print_table(nodes: &[NodeView]) {
    let rows: Vec<[String; 8]> = nodes
        .iter()
        .map(|n| {
            [
                n.id.to_string(),
                n.config.name.clone(),
                n.node_type.clone(),
                if n.config.enabled { "yes" } else { "no" }.to_owned(),
                n.config.priority.to_string(),
                n.config.weight.to_string(),
                n.config.url.clone(),
                labels_text(&n.config.labels),
            ]
        })
        .collect();
    let header = ["ID", "NAME", "TYPE", "ENABLED", "TIER", "WEIGHT", "URL", "LABELS"].map(str::to_owned);
    crate::print_table(&header, &rows);
    out!("{} node(s)", rows.len());
}

fn print_node(n: &NodeView) {
    let c = &n.config;
    out!("id:         {}", n.id);
    out!("nodeHash:   {}", n.node_hash);
    out!("name:       {}", c.name);
    out!("type:       {} ({})", n.node_type, n.family.as_str());
    out!("url:        {}", c.url);
    if let Some(a) = &c.auth {
        out!("auth:       {}:{}", a.username, a.password);
    }
    for (k, v) in &c.headers {
        out!("header:     {k}: {v}");
    }
    out!("enabled:    {}", c.enabled);
    out!("priority:   {}", c.priority);
    out!("weight:     {}", c.weight);
    out!("transport:  {}", c.transport.as_str());
    out!("labels:     {}", labels_text(&c.labels));
    if let Some(t) = c.timeout_ms {
        out!("timeoutMs:  {t}");
    }
    if let Some(l) = c.max_lag {
        out!("maxLag:     {l}");
    }
    out!("source:     {}", n.source);
    out!("revision:   {}", n.revision);
}

fn print_bootstrap(r: &BootstrapResult) {
    let state = if r.applied { "applied" } else { "not applied" };
    out!(
        "{}: {} added, {} changed, {} unchanged, {} invalid ({state})",
        r.file,
        r.added.len(),
        r.changed.len(),
        r.unchanged.len(),
        r.invalid.len()
    );
    for e in &r.added {
        out!("  + {} ({}, {})", e.name, e.node_type, e.node_hash);
    }
    for e in &r.changed {
        out!("  ~ {} ({}): {}", e.name, e.node_type, e.fields.join(", "));
    }
    for e in &r.invalid {
        out!("  ! entry {}{}: {}", e.index, e.name.as_ref().map(|n| format!(" ({n})")).unwrap_or_default(), e.reason);
    }
}
