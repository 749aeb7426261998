//! From what a check saw to a node's status: the independent signals (probe
//! failure, wrong chain, syncing, lag behind the corroborated group head,
//! stall), the worst of them, and rise/fall hysteresis.

use std::collections::HashMap;

use pgnm_store::{NodeRow, NodeState};

use super::probe::Observation;
use crate::registry::chains::ChainType;
use pgnm_rpc::RpcError;

/// Status levels, best first; a node's status is the worst of its signals.
pub const OK: &str = "ok";
/// Behind the group head, or stalled.
pub const LAGGING: &str = "lagging";
/// The node says it is syncing.
pub const SYNCING: &str = "syncing";
/// Cannot be used: probe failed, auth, rate limit, wrong chain.
pub const UNAVAILABLE: &str = "unavailable";
/// Not checked yet (or not enough checks to say).
pub const UNKNOWN: &str = "unknown";

/// Hysteresis settings.
#[derive(Debug, Clone, Copy)]
pub struct Hysteresis {
    /// Good checks in a row before a node becomes eligible again.
    pub rise: i32,
    /// Bad checks in a row before an eligible node is dropped.
    pub fall: i32,
}

/// How a probe went, as the evaluation sees it.
#[derive(Debug, Clone)]
pub enum Probed {
    /// It answered.
    Seen(Observation),
    /// It failed.
    Failed(RpcError),
    /// It could not be made (a secret is missing, a transport is unavailable).
    NotProbed(&'static str),
    /// Skipped: the node asked us to back off (HTTP 429) until then.
    CoolingDown,
}

/// Returns the corroborated head of each type: with three or more heights, the
/// second highest (so one node on a wrong or runaway chain cannot push every
/// honest node out); otherwise the highest.
pub fn group_heads(heights: impl IntoIterator<Item = (String, u64)>) -> HashMap<String, u64> {
    let mut by_type: HashMap<String, Vec<u64>> = HashMap::new();
    for (t, h) in heights {
        by_type.entry(t).or_default().push(h);
    }
    by_type
        .into_iter()
        .map(|(t, mut hs)| {
            hs.sort_unstable_by(|a, b| b.cmp(a));
            let head = if hs.len() >= 3 { hs[1] } else { hs[0] };
            (t, head)
        })
        .collect()
}

fn rank(status: &str) -> u8 {
    match status {
        OK => 0,
        LAGGING => 1,
        SYNCING => 2,
        UNAVAILABLE => 3,
        _ => 4,
    }
}

/// Returns the node's new state after a check, and whether its status changed.
#[allow(clippy::too_many_arguments)]
pub fn evaluate(
    node: &NodeRow,
    chain: &ChainType,
    prev: Option<&NodeState>,
    probed: &Probed,
    group_head: Option<u64>,
    now_ms: i64,
    cooldown_ms: i64,
    hysteresis: Hysteresis,
) -> (NodeState, bool) {
    let prev_status = prev.map(|p| p.status.as_str()).unwrap_or(UNKNOWN);
    let max_lag = node.spec.max_lag.unwrap_or(chain.max_lag);
    let stall_after = chain.stall_after_ms() as i64;
    let mut height = prev.and_then(|p| p.height);
    let mut head_hash = prev.and_then(|p| p.head_hash.clone());
    let mut head_time = prev.and_then(|p| p.head_time);
    let mut height_since = prev.and_then(|p| p.height_since);
    let mut cooldown_until = prev.and_then(|p| p.cooldown_until).filter(|c| *c > now_ms);
    let mut latency = None;
    let mut wrong_chain = false;
    let mut probe_failed = false;

    // The signals, each (status, reason); the worst one wins.
    let mut signals: Vec<(&'static str, String)> = Vec::new();
    match probed {
        Probed::Seen(obs) => {
            latency = Some(obs.latency_ms.min(i32::MAX as u64) as i32);
            let h = obs.height as i64;
            if height != Some(h) {
                height_since = Some(now_ms);
            }
            height = Some(h);
            head_hash = obs.head_hash.clone();
            head_time = obs.head_time.map(|t| t as i64);
            if let Some(why) = &obs.wrong_chain {
                wrong_chain = true;
                signals.push((UNAVAILABLE, format!("wrong_chain: {why}")));
            }
            if obs.syncing {
                signals.push((SYNCING, "syncing".to_owned()));
            }
            if let Some(head) = group_head
                && head > obs.height
                && head - obs.height > max_lag
            {
                signals.push((LAGGING, format!("lag: {} blocks behind (max {max_lag})", head - obs.height)));
            }
            let unchanged_for = height_since.map(|s| now_ms - s).unwrap_or(0);
            let head_age = head_time.map(|t| now_ms - t * 1000).unwrap_or(0);
            if unchanged_for > stall_after {
                signals.push((LAGGING, format!("stalled: height unchanged for {} s", unchanged_for / 1000)));
            } else if head_age > stall_after {
                signals.push((LAGGING, format!("stalled: head is {} s old", head_age / 1000)));
            }
        }
        Probed::Failed(e) => {
            probe_failed = true;
            if let RpcError::RateLimited { retry_after } = e {
                let wait = retry_after.map(|s| s as i64 * 1000).unwrap_or(cooldown_ms);
                cooldown_until = Some(now_ms + wait);
            }
            signals.push((UNAVAILABLE, format!("{}: {e}", e.reason())));
        }
        Probed::NotProbed(why) => {
            probe_failed = true;
            signals.push((UNAVAILABLE, (*why).to_owned()));
        }
        Probed::CoolingDown => {
            signals.push((UNAVAILABLE, "rate_limited: cooling down".to_owned()));
        }
    }
    let (raw, reason) = signals.into_iter().max_by_key(|(s, _)| rank(s)).unwrap_or((OK, "ok".to_owned()));

    let good = raw == OK;
    let (c_ok, c_bad) = match prev {
        Some(p) if good => (p.consecutive_ok + 1, 0),
        Some(p) => (0, p.consecutive_bad + 1),
        None if good => (1, 0),
        None => (0, 1),
    };
    let status: String = if wrong_chain {
        UNAVAILABLE.to_owned()
    } else if good {
        if prev_status == OK || c_ok >= hysteresis.rise { OK.to_owned() } else { prev_status.to_owned() }
    } else if prev_status == OK && c_bad < hysteresis.fall {
        OK.to_owned()
    } else {
        raw.to_owned()
    };
    let eligible = status == OK && node.spec.enabled;

    let prev_ewma = prev.map(|p| p.latency_ewma_ms).unwrap_or(0.0);
    let latency_ewma_ms = match latency {
        Some(l) if prev_ewma > 0.0 => 0.7 * prev_ewma + 0.3 * f64::from(l),
        Some(l) => f64::from(l),
        None => prev_ewma,
    };
    let prev_errors = prev.map(|p| p.error_rate).unwrap_or(0.0);
    let error_rate = 0.8 * prev_errors + if probe_failed { 0.2 } else { 0.0 };
    let changed = status != prev_status;
    let state = NodeState {
        node_id: node.id,
        status,
        raw_status: raw.to_owned(),
        reason,
        eligible,
        height,
        head_hash,
        head_time,
        group_head: group_head.map(|h| h as i64),
        latency_ms: latency,
        latency_ewma_ms,
        error_rate,
        consecutive_ok: c_ok,
        consecutive_bad: c_bad,
        height_since,
        cooldown_until,
        checked_at: now_ms,
        changed_at: if changed { now_ms } else { prev.map(|p| p.changed_at).unwrap_or(now_ms) },
    };
    (state, changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_group_head_is_corroborated() {
        let h = |v: &[u64]| group_heads(v.iter().map(|h| ("eth".to_owned(), *h)))["eth"];
        assert_eq!(h(&[100]), 100);
        assert_eq!(h(&[100, 90]), 100);
        // One runaway node cannot push the honest ones out.
        assert_eq!(h(&[100, 101, 5_000_000]), 101);
        assert_eq!(h(&[100, 100, 99, 1]), 100);
    }
}
