//! `pgnm best <type>`, `pgnm status [type]`, `pgnm check [type]`.

use std::process::ExitCode;
use std::time::Instant;

use pgnm_protocol::Role;
use pgnm_protocol::health::{CheckResult, GetBestNodeResult};
use pgnm_protocol::node::GetNodesResult;
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
    let mut rows: Vec<[String; 8]> = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut args = json!({"limit": 1000});
        if let Some(t) = &node_type {
            args["type"] = t.clone().into();
        }
        if let Some(a) = &after {
            args["after"] = a.clone().into();
        }
        let reply = client.call("getNodes", Some(Role::Checker), Some(args)).await?;
        let data = match reply.result() {
            Ok(d) => d.clone(),
            Err(_) => return Ok(print_reply("getNodes", &reply, Default::default(), json)),
        };
        let page: GetNodesResult = pgnm_protocol::decode_data(&data)?;
        if json {
            out!("{}", serde_json::to_string(&page)?);
        }
        for n in &page.nodes {
            let s = n.status.as_ref();
            let opt = |v: Option<String>| v.unwrap_or_else(|| "-".to_owned());
            rows.push([
                n.config.name.clone(),
                n.node_type.clone(),
                if !n.config.enabled { "disabled".to_owned() } else { opt(s.map(|s| s.status.clone())) },
                opt(s.map(|s| s.reason.clone())),
                opt(s.and_then(|s| s.height).map(|h| h.to_string())),
                opt(s.and_then(|s| s.lag).map(|l| l.to_string())),
                opt(s.and_then(|s| s.latency_ms).map(|l| format!("{l} ms"))),
                opt(s.map(|s| if s.eligible { "yes" } else { "no" }.to_owned())),
            ]);
        }
        after = page.next;
        if after.is_none() {
            break;
        }
    }
    if json {
        return Ok(ExitCode::SUCCESS);
    }
    let header = ["NODE", "TYPE", "STATUS", "REASON", "HEIGHT", "LAG", "LATENCY", "ELIGIBLE"].map(str::to_owned);
    let mut widths = header.clone().map(|h| h.len());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for row in std::iter::once(&header).chain(&rows) {
        let line: Vec<String> = row.iter().zip(widths).map(|(c, w)| format!("{c:<w$}")).collect();
        out!("{}", line.join("  ").trim_end());
    }
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
