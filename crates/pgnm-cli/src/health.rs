//! `pgnm best <type>`, `pgnm status [type]`, `pgnm check [type]`.

use std::process::ExitCode;
use std::time::Instant;

use pgnm_protocol::Role;
use pgnm_protocol::health::{CheckResult, GetBestNodeResult};
use serde_json::{Value, json};

use crate::{Client, print_reply};

/// `pgnm best`: the node to use now, and the fallbacks.
pub async fn best(
    client: &Client,
    node_type: String,
    labels: Vec<(String, String)>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let labels: serde_json::Map<String, Value> = labels.into_iter().map(|(k, v)| (k, Value::String(v))).collect();
    let started = Instant::now();
    let reply =
        client.call("getBestNode", Some(Role::Checker), Some(json!({"type": node_type, "labels": labels}))).await?;
    let data = match reply.result() {
        Ok(d) if !json => d.clone(),
        _ => return Ok(print_reply("getBestNode", &reply, started.elapsed(), json)),
    };
    let r: GetBestNodeResult = pgnm_protocol::decode_data(&data)?;
    out!(
        "{}  {}  (tier {}, height {}, {:.1} ms)",
        r.node.name,
        r.node.url,
        r.node.priority,
        r.node.height.map(|h| h.to_string()).unwrap_or_else(|| "-".into()),
        r.node.latency_ewma_ms
    );
    for (i, f) in r.fallbacks.iter().enumerate() {
        out!("  fallback {}: {}  {}  (tier {}, {:.1} ms)", i + 1, f.name, f.url, f.priority, f.latency_ewma_ms);
    }
    Ok(ExitCode::SUCCESS)
}

/// `pgnm status`: a table of every node's health.
pub async fn status(client: &Client, node_type: Option<String>, json: bool) -> anyhow::Result<ExitCode> {
    let filter = match node_type {
        Some(t) => json!({"type": t}),
        None => json!({}),
    };
    let nodes = match crate::nodes::fetch(client, filter, None, None, json).await? {
        Ok((nodes, _)) => nodes,
        Err(code) => return Ok(code),
    };
    let opt = |v: Option<String>| v.unwrap_or_else(|| "-".to_owned());
    let rows: Vec<[String; 8]> = nodes
        .iter()
        .map(|n| {
            let s = n.status.as_ref();
            [
                n.config.name.clone(),
                n.node_type.clone(),
                if !n.config.enabled { "disabled".to_owned() } else { opt(s.map(|s| s.status.clone())) },
                opt(s.map(|s| s.reason.clone())),
                opt(s.and_then(|s| s.height).map(|h| h.to_string())),
                opt(s.and_then(|s| s.lag).map(|l| l.to_string())),
                opt(s.and_then(|s| s.latency_ms).map(|l| format!("{l} ms"))),
                opt(s.map(|s| if s.eligible { "yes" } else { "no" }.to_owned())),
            ]
        })
        .collect();
    if json {
        return Ok(ExitCode::SUCCESS);
    }
    let header = ["NODE", "TYPE", "STATUS", "REASON", "HEIGHT", "LAG", "LATENCY", "ELIGIBLE"].map(str::to_owned);
    crate::print_table(&header, &rows);
    Ok(ExitCode::SUCCESS)
}

/// `pgnm check`: runs a round now and prints its summary.
pub async fn check(client: &Client, node_type: Option<String>, json: bool) -> anyhow::Result<ExitCode> {
    let args = match node_type {
        Some(t) => json!({"type": t}),
        None => json!({}),
    };
    let started = Instant::now();
    let reply = client.call("check", Some(Role::Checker), Some(args)).await?;
    let data = match reply.result() {
        Ok(d) if !json => d.clone(),
        _ => return Ok(print_reply("check", &reply, started.elapsed(), json)),
    };
    let r: CheckResult = pgnm_protocol::decode_data(&data)?;
    let by: Vec<String> = r.by_status.iter().map(|(s, n)| format!("{n} {s}")).collect();
    out!("checked {} node(s) in {} ms: {}; {} changed", r.checked, r.duration_ms, by.join(", "), r.changed);
    for (t, h) in &r.group_heads {
        out!("  {t}: head {h}");
    }
    Ok(ExitCode::SUCCESS)
}
