//! The checker's Prometheus metrics: check rounds, and the fleet as the view
//! shows it (every replica reports the whole fleet: take `max` across replicas).

use std::collections::{BTreeMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use pgnm_store::{NodeRow, NodeState};

/// Check rounds run by this replica, by outcome (`ok`, `failed`).
const ROUNDS: &str = "pgnm_check_rounds_total";
/// Duration of a check round.
const ROUND_DURATION: &str = "pgnm_check_round_duration_seconds";
/// Nodes checked by this replica.
const NODES_CHECKED: &str = "pgnm_nodes_checked_total";
/// Status changes seen by this replica's rounds.
const STATUS_CHANGES: &str = "pgnm_node_status_changes_total";
/// Nodes per type and status, from the view.
const NODES: &str = "pgnm_nodes";
/// A node's last height.
const HEIGHT: &str = "pgnm_node_height";
/// A node's blocks behind its type's group head.
const LAG: &str = "pgnm_node_lag_blocks";
/// A node's last probe latency.
const LATENCY: &str = "pgnm_node_latency_seconds";
/// Whether a node may be chosen as best node (1) or not (0).
const ELIGIBLE: &str = "pgnm_node_eligible";
/// Times the best node of a type changed.
const BEST_SWITCHES: &str = "pgnm_best_node_switches_total";
/// Age of the view getBestNode answers from.
const VIEW_AGE: &str = "pgnm_view_age_seconds";

/// Describes the checker's metrics.
pub fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(ROUNDS, "Check rounds run by this replica, by outcome");
    describe_histogram!(ROUND_DURATION, Unit::Seconds, "Duration of a check round");
    describe_counter!(NODES_CHECKED, "Nodes probed by this replica's rounds");
    describe_counter!(STATUS_CHANGES, "Node status changes found by this replica's rounds, by type and new status");
    describe_gauge!(NODES, "Nodes per type and status, from this replica's view of the fleet");
    describe_gauge!(HEIGHT, "A node's last seen block height");
    describe_gauge!(LAG, "Blocks a node is behind its type's group head");
    describe_gauge!(LATENCY, Unit::Seconds, "A node's last probe latency");
    describe_gauge!(ELIGIBLE, "1 when a node may be chosen as best node, 0 otherwise");
    describe_counter!(BEST_SWITCHES, "Times the best node of a type changed on this replica");
    describe_gauge!(VIEW_AGE, Unit::Seconds, "Seconds since the fleet view was last loaded from the database");
}

/// Records one check round.
pub fn round(ok: bool, duration: Duration, checked: usize) {
    metrics::counter!(ROUNDS, "outcome" => if ok { "ok" } else { "failed" }).increment(1);
    metrics::histogram!(ROUND_DURATION).record(duration.as_secs_f64());
    metrics::counter!(NODES_CHECKED).increment(checked as u64);
}

/// Records a status change.
pub fn status_changed(node_type: &str, to: &str) {
    metrics::counter!(STATUS_CHANGES, "type" => node_type.to_owned(), "status" => to.to_owned()).increment(1);
}

/// Records a change of the best node of a type.
pub fn best_switched(node_type: &str) {
    metrics::counter!(BEST_SWITCHES, "type" => node_type.to_owned()).increment(1);
}

/// Records the age of the view.
pub fn view_age(age: Duration) {
    metrics::gauge!(VIEW_AGE).set(age.as_secs_f64());
}

/// The fleet's series, exported at every view load. The per-node series of a
/// node gone from the fleet stop being updated and are dropped by the exporter
/// after its idle timeout; the type/status counts that vanish are zeroed here.
#[derive(Debug, Default)]
pub struct FleetGauges {
    counted: Mutex<HashSet<(String, String)>>,
}

impl FleetGauges {
    /// Exports the fleet as the view holds it.
    pub fn export(&self, nodes: &[(NodeRow, Option<NodeState>)]) {
        let mut counts: BTreeMap<(String, String), u64> = BTreeMap::new();
        for (n, s) in nodes {
            let status = s.as_ref().map(|s| s.status.as_str()).unwrap_or("unknown");
            let status = if n.spec.enabled { status } else { "disabled" };
            *counts.entry((n.node_type.clone(), status.to_owned())).or_default() += 1;
            let Some(s) = s else { continue };
            let labels = [("node", n.spec.name.clone()), ("type", n.node_type.clone())];
            if let Some(h) = s.height {
                metrics::gauge!(HEIGHT, &labels).set(h as f64);
            }
            if let (Some(g), Some(h)) = (s.group_head, s.height) {
                metrics::gauge!(LAG, &labels).set((g - h).max(0) as f64);
            }
            if let Some(l) = s.latency_ms {
                metrics::gauge!(LATENCY, &labels).set(f64::from(l) / 1000.0);
            }
            metrics::gauge!(ELIGIBLE, &labels).set(if s.eligible && n.spec.enabled { 1.0 } else { 0.0 });
        }
        for ((node_type, status), count) in &counts {
            metrics::gauge!(NODES, "type" => node_type.clone(), "status" => status.clone()).set(*count as f64);
        }
        let now: HashSet<(String, String)> = counts.into_keys().collect();
        let mut counted = self.counted.lock().expect("gauges lock poisoned");
        for (node_type, status) in counted.difference(&now) {
            metrics::gauge!(NODES, "type" => node_type.clone(), "status" => status.clone()).set(0.0);
        }
        *counted = now;
    }
}
