//! Node health: the latest state of every node and the check history.

use crate::nodes::{NodeRow, row_to_node};
use crate::{Store, StoreError};

/// The stored health of one node.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeState {
    /// The node.
    pub node_id: i64,
    /// Status after hysteresis: `ok`, `lagging`, `syncing`, `unavailable`, `unknown`.
    pub status: String,
    /// Status of the last check alone.
    pub raw_status: String,
    /// Machine-readable reason of the last check.
    pub reason: String,
    /// Whether the node may be chosen.
    pub eligible: bool,
    /// Last height seen.
    pub height: Option<i64>,
    /// Hash of the last head seen.
    pub head_hash: Option<String>,
    /// Timestamp of the last head seen, Unix seconds.
    pub head_time: Option<i64>,
    /// The type's corroborated head at the last check.
    pub group_head: Option<i64>,
    /// Latency of the last check.
    pub latency_ms: Option<i32>,
    /// Moving average of the latency.
    pub latency_ewma_ms: f64,
    /// Moving average of failed checks (0 to 1).
    pub error_rate: f64,
    /// Good checks in a row.
    pub consecutive_ok: i32,
    /// Bad checks in a row.
    pub consecutive_bad: i32,
    /// Since when the height has been what it is, Unix epoch milliseconds.
    pub height_since: Option<i64>,
    /// Rate-limited until, Unix epoch milliseconds.
    pub cooldown_until: Option<i64>,
    /// Last check, Unix epoch milliseconds.
    pub checked_at: i64,
    /// Last status change, Unix epoch milliseconds.
    pub changed_at: i64,
}

const STATE_COLUMNS: &str = "s.node_id, s.status, s.raw_status, s.reason, s.eligible, s.height, s.head_hash, \
     s.head_time, s.group_head, s.latency_ms, s.latency_ewma_ms, s.error_rate, s.consecutive_ok, s.consecutive_bad, \
     (extract(epoch FROM s.height_since) * 1000)::bigint AS height_since_ms, \
     (extract(epoch FROM s.cooldown_until) * 1000)::bigint AS cooldown_ms, \
     (extract(epoch FROM s.checked_at) * 1000)::bigint AS checked_ms, \
     (extract(epoch FROM s.changed_at) * 1000)::bigint AS changed_ms";

fn row_to_state(row: &tokio_postgres::Row) -> NodeState {
    NodeState {
        node_id: row.get("node_id"),
        status: row.get("status"),
        raw_status: row.get("raw_status"),
        reason: row.get("reason"),
        eligible: row.get("eligible"),
        height: row.get("height"),
        head_hash: row.get("head_hash"),
        head_time: row.get("head_time"),
        group_head: row.get("group_head"),
        latency_ms: row.get("latency_ms"),
        latency_ewma_ms: row.get("latency_ewma_ms"),
        error_rate: row.get("error_rate"),
        consecutive_ok: row.get("consecutive_ok"),
        consecutive_bad: row.get("consecutive_bad"),
        height_since: row.get("height_since_ms"),
        cooldown_until: row.get("cooldown_ms"),
        checked_at: row.get("checked_ms"),
        changed_at: row.get("changed_ms"),
    }
}

impl Store {
    /// Returns every node with its stored health (none before its first check),
    /// in id order: the whole fleet in one query.
    pub async fn fleet(&self) -> Result<Vec<(NodeRow, Option<NodeState>)>, StoreError> {
        let client = self.client().await?;
        let sql = format!(
            "SELECT {}, {STATE_COLUMNS}, s.node_id IS NOT NULL AS has_state \
             FROM nodes LEFT JOIN node_state s ON s.node_id = nodes.id ORDER BY nodes.id",
            crate::nodes::COLUMNS
        );
        let rows = client.query(&sql, &[]).await?;
        rows.iter()
            .map(|r| {
                let node = row_to_node(r)?;
                let has: bool = r.get("has_state");
                Ok((node, has.then(|| row_to_state(r))))
            })
            .collect()
    }

    /// Returns a fingerprint of the fleet that changes whenever a node is added,
    /// changed or removed, or a check is saved: a cheap way to know whether the
    /// view needs reloading.
    pub async fn fleet_version(&self) -> Result<(i64, i64, i64), StoreError> {
        let client = self.client().await?;
        let row = client
            .query_one(
                "SELECT (SELECT count(*) FROM nodes), \
                 (SELECT coalesce((extract(epoch FROM max(updated_at)) * 1000)::bigint, 0) FROM nodes), \
                 (SELECT coalesce((extract(epoch FROM max(checked_at)) * 1000)::bigint, 0) FROM node_state)",
                &[],
            )
            .await?;
        Ok((row.get(0), row.get(1), row.get(2)))
    }

    /// Writes the states of a round and appends them to the history, in one
    /// transaction of two statements.
    pub async fn save_checks(&self, states: &[NodeState]) -> Result<(), StoreError> {
        if states.is_empty() {
            return Ok(());
        }
        let col = |f: fn(&NodeState) -> Option<i64>| states.iter().map(f).collect::<Vec<_>>();
        let ids: Vec<i64> = states.iter().map(|s| s.node_id).collect();
        let status: Vec<&str> = states.iter().map(|s| s.status.as_str()).collect();
        let raw: Vec<&str> = states.iter().map(|s| s.raw_status.as_str()).collect();
        let reason: Vec<&str> = states.iter().map(|s| s.reason.as_str()).collect();
        let eligible: Vec<bool> = states.iter().map(|s| s.eligible).collect();
        let height = col(|s| s.height);
        let hash: Vec<Option<&str>> = states.iter().map(|s| s.head_hash.as_deref()).collect();
        let head_time = col(|s| s.head_time);
        let group_head = col(|s| s.group_head);
        let latency: Vec<Option<i32>> = states.iter().map(|s| s.latency_ms).collect();
        let ewma: Vec<f64> = states.iter().map(|s| s.latency_ewma_ms).collect();
        let errors: Vec<f64> = states.iter().map(|s| s.error_rate).collect();
        let c_ok: Vec<i32> = states.iter().map(|s| s.consecutive_ok).collect();
        let c_bad: Vec<i32> = states.iter().map(|s| s.consecutive_bad).collect();
        let since = col(|s| s.height_since);
        let cooldown = col(|s| s.cooldown_until);
        let checked: Vec<i64> = states.iter().map(|s| s.checked_at).collect();
        let changed: Vec<i64> = states.iter().map(|s| s.changed_at).collect();
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        tx.execute(
            "INSERT INTO node_state (node_id, status, raw_status, reason, eligible, height, head_hash, head_time, \
             group_head, latency_ms, latency_ewma_ms, error_rate, consecutive_ok, consecutive_bad, height_since, \
             cooldown_until, checked_at, changed_at) \
             SELECT u.id, u.status, u.raw, u.reason, u.eligible, u.height, u.hash, u.head_time, u.group_head, \
             u.latency, u.ewma, u.errors, u.c_ok, u.c_bad, to_timestamp(u.since::float8 / 1000), \
             to_timestamp(u.cooldown::float8 / 1000), to_timestamp(u.checked::float8 / 1000), \
             to_timestamp(u.changed::float8 / 1000) \
             FROM UNNEST($1::int8[], $2::text[], $3::text[], $4::text[], $5::bool[], $6::int8[], $7::text[], \
             $8::int8[], $9::int8[], $10::int4[], $11::float8[], $12::float8[], $13::int4[], $14::int4[], $15::int8[], \
             $16::int8[], $17::int8[], $18::int8[]) \
             AS u(id, status, raw, reason, eligible, height, hash, head_time, group_head, latency, ewma, errors, \
             c_ok, c_bad, since, cooldown, checked, changed) \
             WHERE EXISTS (SELECT 1 FROM nodes n WHERE n.id = u.id) \
             ON CONFLICT (node_id) DO UPDATE SET status = excluded.status, raw_status = excluded.raw_status, \
             reason = excluded.reason, eligible = excluded.eligible, height = excluded.height, \
             head_hash = excluded.head_hash, head_time = excluded.head_time, group_head = excluded.group_head, \
             latency_ms = excluded.latency_ms, latency_ewma_ms = excluded.latency_ewma_ms, \
             error_rate = excluded.error_rate, consecutive_ok = excluded.consecutive_ok, \
             consecutive_bad = excluded.consecutive_bad, height_since = excluded.height_since, \
             cooldown_until = excluded.cooldown_until, checked_at = excluded.checked_at, \
             changed_at = excluded.changed_at",
            &[
                &ids,
                &status,
                &raw,
                &reason,
                &eligible,
                &height,
                &hash,
                &head_time,
                &group_head,
                &latency,
                &ewma,
                &errors,
                &c_ok,
                &c_bad,
                &since,
                &cooldown,
                &checked,
                &changed,
            ],
        )
        .await?;
        tx.execute(
            "INSERT INTO node_checks (node_id, checked_at, status, reason, height, latency_ms) \
             SELECT u.id, to_timestamp(u.checked::float8 / 1000), u.raw, u.reason, u.height, u.latency \
             FROM UNNEST($1::int8[], $2::int8[], $3::text[], $4::text[], $5::int8[], $6::int4[]) \
             AS u(id, checked, raw, reason, height, latency) WHERE EXISTS (SELECT 1 FROM nodes n WHERE n.id = u.id)",
            &[&ids, &checked, &raw, &reason, &height, &latency],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Deletes check history older than `older_than_secs`; returns how many rows.
    pub async fn prune_checks(&self, older_than_secs: u64) -> Result<u64, StoreError> {
        let client = self.client().await?;
        Ok(client
            .execute(
                "DELETE FROM node_checks WHERE checked_at < now() - make_interval(secs => $1::float8)",
                &[&(older_than_secs as f64)],
            )
            .await?)
    }
}
