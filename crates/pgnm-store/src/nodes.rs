//! The node registry's table.

use std::collections::{BTreeMap, HashMap};

use pgnm_protocol::node::{BasicAuth, NodeKey, NodeSpec, Transport};
use serde_json::Value as Json;
use tokio_postgres::Row;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;

use crate::{Store, StoreError};

/// A node as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeRow {
    /// Database id.
    pub id: i64,
    /// Stable hash of type and normalised endpoint.
    pub node_hash: String,
    /// Chain type.
    pub node_type: String,
    /// The configuration as given (secrets as `${VAR}` references or literals).
    pub spec: NodeSpec,
    /// `api` or `file`.
    pub source: String,
    /// Revision, bumped by every change.
    pub revision: i64,
    /// Creation time, Unix epoch milliseconds.
    pub created_at: i64,
    /// Last change, Unix epoch milliseconds.
    pub updated_at: i64,
}

/// A node to write.
#[derive(Debug, Clone, PartialEq)]
pub struct NewNode {
    /// Stable hash of type and normalised endpoint.
    pub node_hash: String,
    /// Chain type.
    pub node_type: String,
    /// The configuration.
    pub spec: NodeSpec,
    /// `api` or `file`.
    pub source: String,
}

/// A write that a uniqueness rule refused.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// Another node has the same type and endpoint.
    #[error("a node with this type and endpoint already exists")]
    DuplicateEndpoint,
    /// Another node has the same name.
    #[error("a node with this name already exists")]
    DuplicateName,
    /// Any other failure.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<tokio_postgres::Error> for WriteError {
    fn from(e: tokio_postgres::Error) -> Self {
        if let Some(db) = e.as_db_error()
            && db.code() == &SqlState::UNIQUE_VIOLATION
        {
            return match db.constraint() {
                Some("nodes_name_key") => WriteError::DuplicateName,
                _ => WriteError::DuplicateEndpoint,
            };
        }
        WriteError::Store(StoreError::Query(e))
    }
}

/// The outcome of a revision-checked update.
#[derive(Debug, Clone, PartialEq)]
pub enum UpdateOutcome {
    /// Written; the node as it is now.
    Updated(Box<NodeRow>),
    /// The node's revision is no longer the one the change was based on.
    Stale {
        /// The current revision.
        current: i64,
    },
    /// No such node.
    Missing,
}

/// Filters of a node listing.
#[derive(Debug, Clone, Default)]
pub struct NodeFilter {
    /// Only this type.
    pub node_type: Option<String>,
    /// Only enabled or disabled nodes.
    pub enabled: Option<bool>,
    /// Only nodes carrying every one of these labels.
    pub labels: BTreeMap<String, String>,
}

/// What loading one entry of the nodes file does.
#[derive(Debug, Clone, PartialEq)]
pub enum SyncOutcome {
    /// New node.
    Added,
    /// Existing node (same hash), with these fields different.
    Changed(Vec<&'static str>),
    /// Existing node, identical.
    Unchanged,
    /// Its name belongs to another node.
    NameTaken {
        /// That node's hash.
        by: String,
    },
}

pub(crate) const COLUMNS: &str = "id, node_hash, type, name, url, auth, headers, enabled, priority, weight, labels, transport, \
     timeout_ms, max_lag, source, revision, \
     (extract(epoch FROM created_at) * 1000)::bigint AS created_ms, \
     (extract(epoch FROM updated_at) * 1000)::bigint AS updated_ms";

fn to_json<T: serde::Serialize>(v: &T) -> Json {
    serde_json::to_value(v).expect("node fields always convert to JSON")
}

pub(crate) fn row_to_node(row: &Row) -> Result<NodeRow, StoreError> {
    let auth: Option<Json> = row.get("auth");
    let headers: Json = row.get("headers");
    let labels: Json = row.get("labels");
    let transport: String = row.get("transport");
    let priority: i16 = row.get("priority");
    let weight: i32 = row.get("weight");
    let timeout_ms: Option<i32> = row.get("timeout_ms");
    let max_lag: Option<i64> = row.get("max_lag");
    let spec = NodeSpec {
        name: row.get("name"),
        url: row.get("url"),
        auth: auth.map(serde_json::from_value::<BasicAuth>).transpose().unwrap_or(None),
        headers: serde_json::from_value(headers).unwrap_or_default(),
        enabled: row.get("enabled"),
        priority: u8::try_from(priority).unwrap_or(0),
        weight: u32::try_from(weight).unwrap_or(1),
        labels: serde_json::from_value(labels).unwrap_or_default(),
        transport: serde_json::from_value(Json::String(transport)).unwrap_or(Transport::Direct),
        timeout_ms: timeout_ms.and_then(|t| u32::try_from(t).ok()),
        max_lag: max_lag.and_then(|l| u64::try_from(l).ok()),
    };
    Ok(NodeRow {
        id: row.get("id"),
        node_hash: row.get("node_hash"),
        node_type: row.get("type"),
        spec,
        source: row.get("source"),
        revision: row.get("revision"),
        created_at: row.get("created_ms"),
        updated_at: row.get("updated_ms"),
    })
}

fn rows_to_nodes(rows: &[Row]) -> Result<Vec<NodeRow>, StoreError> {
    rows.iter().map(row_to_node).collect()
}

/// The column values of a node, in the order of the `INSERT`/`UPDATE` statements.
struct Columns {
    auth: Option<Json>,
    headers: Json,
    priority: i16,
    weight: i32,
    labels: Json,
    transport: &'static str,
    timeout_ms: Option<i32>,
    max_lag: Option<i64>,
}

impl Columns {
    fn of(spec: &NodeSpec) -> Columns {
        Columns {
            auth: spec.auth.as_ref().map(to_json),
            headers: to_json(&spec.headers),
            priority: i16::from(spec.priority),
            weight: i32::try_from(spec.weight).unwrap_or(i32::MAX),
            labels: to_json(&spec.labels),
            transport: spec.transport.as_str(),
            timeout_ms: spec.timeout_ms.map(|t| i32::try_from(t).unwrap_or(i32::MAX)),
            max_lag: spec.max_lag.map(|l| i64::try_from(l).unwrap_or(i64::MAX)),
        }
    }
}

fn key_clause(key: &NodeKey) -> (&'static str, Box<dyn ToSql + Sync + Send>) {
    match key {
        NodeKey::Id(id) => ("id = $1", Box::new(*id)),
        NodeKey::Hash(h) => ("node_hash = $1", Box::new(h.clone())),
        NodeKey::Name(n) => ("name = $1", Box::new(n.clone())),
    }
}

/// Returns the fields in which two configurations differ, by wire name.
pub fn changed_fields(a: &NodeSpec, b: &NodeSpec) -> Vec<&'static str> {
    let mut out = Vec::new();
    let mut check = |differs: bool, name: &'static str| {
        if differs {
            out.push(name);
        }
    };
    check(a.name != b.name, "name");
    check(a.url != b.url, "url");
    check(a.auth != b.auth, "auth");
    check(a.headers != b.headers, "headers");
    check(a.enabled != b.enabled, "enabled");
    check(a.priority != b.priority, "priority");
    check(a.weight != b.weight, "weight");
    check(a.labels != b.labels, "labels");
    check(a.transport != b.transport, "transport");
    check(a.timeout_ms != b.timeout_ms, "timeoutMs");
    check(a.max_lag != b.max_lag, "maxLag");
    out
}

impl Store {
    /// Adds a node.
    pub async fn insert_node(&self, node: &NewNode) -> Result<NodeRow, WriteError> {
        let c = Columns::of(&node.spec);
        let sql = format!(
            "INSERT INTO nodes (node_hash, type, name, url, auth, headers, enabled, priority, weight, labels, \
             transport, timeout_ms, max_lag, source) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) RETURNING {COLUMNS}"
        );
        let client = self.client().await?;
        let row = client
            .query_one(
                &sql,
                &[
                    &node.node_hash,
                    &node.node_type,
                    &node.spec.name,
                    &node.spec.url,
                    &c.auth,
                    &c.headers,
                    &node.spec.enabled,
                    &c.priority,
                    &c.weight,
                    &c.labels,
                    &c.transport,
                    &c.timeout_ms,
                    &c.max_lag,
                    &node.source,
                ],
            )
            .await?;
        Ok(row_to_node(&row)?)
    }

    /// Returns a node.
    pub async fn get_node(&self, key: &NodeKey) -> Result<Option<NodeRow>, StoreError> {
        let (clause, param) = key_clause(key);
        let sql = format!("SELECT {COLUMNS} FROM nodes WHERE {clause}");
        let client = self.client().await?;
        let row = client.query_opt(&sql, &[param.as_ref() as &(dyn ToSql + Sync)]).await?;
        row.as_ref().map(row_to_node).transpose()
    }

    /// Removes a node, returning it as it was.
    pub async fn delete_node(&self, key: &NodeKey) -> Result<Option<NodeRow>, StoreError> {
        let (clause, param) = key_clause(key);
        let sql = format!("DELETE FROM nodes WHERE {clause} RETURNING {COLUMNS}");
        let client = self.client().await?;
        let row = client.query_opt(&sql, &[param.as_ref() as &(dyn ToSql + Sync)]).await?;
        row.as_ref().map(row_to_node).transpose()
    }

    /// Replaces node `id`'s configuration (and hash) if its revision is still
    /// `revision`; bumps the revision.
    pub async fn update_node(&self, id: i64, revision: i64, node: &NewNode) -> Result<UpdateOutcome, WriteError> {
        let c = Columns::of(&node.spec);
        let sql = format!(
            "UPDATE nodes SET node_hash = $3, name = $4, url = $5, auth = $6, headers = $7, enabled = $8, \
             priority = $9, weight = $10, labels = $11, transport = $12, timeout_ms = $13, max_lag = $14, \
             revision = revision + 1, updated_at = now() \
             WHERE id = $1 AND revision = $2 RETURNING {COLUMNS}"
        );
        let client = self.client().await?;
        let row = client
            .query_opt(
                &sql,
                &[
                    &id,
                    &revision,
                    &node.node_hash,
                    &node.spec.name,
                    &node.spec.url,
                    &c.auth,
                    &c.headers,
                    &node.spec.enabled,
                    &c.priority,
                    &c.weight,
                    &c.labels,
                    &c.transport,
                    &c.timeout_ms,
                    &c.max_lag,
                ],
            )
            .await?;
        if let Some(row) = row {
            return Ok(UpdateOutcome::Updated(Box::new(row_to_node(&row)?)));
        }
        let current = client.query_opt("SELECT revision FROM nodes WHERE id = $1", &[&id]).await?;
        Ok(match current {
            Some(r) => UpdateOutcome::Stale { current: r.get(0) },
            None => UpdateOutcome::Missing,
        })
    }

    /// Returns up to `limit` nodes with an id above `after`, in id order.
    pub async fn list_nodes(&self, filter: &NodeFilter, after: i64, limit: i64) -> Result<Vec<NodeRow>, StoreError> {
        let labels = to_json(&filter.labels);
        let sql = format!(
            "SELECT {COLUMNS} FROM nodes \
             WHERE id > $1 AND ($2::text IS NULL OR type = $2) AND ($3::bool IS NULL OR enabled = $3) \
             AND labels @> $4 ORDER BY id LIMIT $5"
        );
        let client = self.client().await?;
        let rows = client.query(&sql, &[&after, &filter.node_type, &filter.enabled, &labels, &limit]).await?;
        rows_to_nodes(&rows)
    }

    /// Returns the number of nodes.
    pub async fn count_nodes(&self) -> Result<i64, StoreError> {
        let client = self.client().await?;
        Ok(client.query_one("SELECT count(*) FROM nodes", &[]).await?.get(0))
    }

    /// Loads the nodes file's entries: in one transaction (serialised against
    /// concurrent loads), works out what each entry would do, lets `choose` pick
    /// the entries to write (none, to write nothing), and writes those in one
    /// statement. Returns each entry's outcome, in order.
    pub async fn sync_nodes(
        &self,
        nodes: &[NewNode],
        choose: impl FnOnce(&[SyncOutcome]) -> Vec<bool>,
    ) -> Result<Vec<SyncOutcome>, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock(hashtext('pgnm.bootstrap'))", &[]).await?;
        let hashes: Vec<&str> = nodes.iter().map(|n| n.node_hash.as_str()).collect();
        let names: Vec<&str> = nodes.iter().map(|n| n.spec.name.as_str()).collect();
        let sql = format!("SELECT {COLUMNS} FROM nodes WHERE node_hash = ANY($1) OR name = ANY($2)");
        let existing = rows_to_nodes(&tx.query(&sql, &[&hashes, &names]).await?)?;
        let by_hash: HashMap<&str, &NodeRow> = existing.iter().map(|r| (r.node_hash.as_str(), r)).collect();
        let by_name: HashMap<&str, &NodeRow> = existing.iter().map(|r| (r.spec.name.as_str(), r)).collect();

        let outcomes: Vec<SyncOutcome> = nodes
            .iter()
            .map(|n| match (by_hash.get(n.node_hash.as_str()), by_name.get(n.spec.name.as_str())) {
                (_, Some(owner)) if owner.node_hash != n.node_hash => {
                    SyncOutcome::NameTaken { by: owner.node_hash.clone() }
                }
                (Some(row), _) => {
                    let fields = changed_fields(&row.spec, &n.spec);
                    if fields.is_empty() { SyncOutcome::Unchanged } else { SyncOutcome::Changed(fields) }
                }
                (None, _) => SyncOutcome::Added,
            })
            .collect();
        let write = choose(&outcomes);
        let chosen: Vec<&NewNode> = nodes
            .iter()
            .zip(&outcomes)
            .zip(write.iter().copied().chain(std::iter::repeat(false)))
            .filter(|((_, o), w)| *w && matches!(o, SyncOutcome::Added | SyncOutcome::Changed(_)))
            .map(|((n, _), _)| n)
            .collect();
        if chosen.is_empty() {
            tx.rollback().await?;
            return Ok(outcomes);
        }

        let cols: Vec<Columns> = chosen.iter().map(|n| Columns::of(&n.spec)).collect();
        let hash: Vec<&str> = chosen.iter().map(|n| n.node_hash.as_str()).collect();
        let node_type: Vec<&str> = chosen.iter().map(|n| n.node_type.as_str()).collect();
        let name: Vec<&str> = chosen.iter().map(|n| n.spec.name.as_str()).collect();
        let url: Vec<&str> = chosen.iter().map(|n| n.spec.url.as_str()).collect();
        let auth: Vec<Option<Json>> = cols.iter().map(|c| c.auth.clone()).collect();
        let headers: Vec<Json> = cols.iter().map(|c| c.headers.clone()).collect();
        let enabled: Vec<bool> = chosen.iter().map(|n| n.spec.enabled).collect();
        let priority: Vec<i16> = cols.iter().map(|c| c.priority).collect();
        let weight: Vec<i32> = cols.iter().map(|c| c.weight).collect();
        let labels: Vec<Json> = cols.iter().map(|c| c.labels.clone()).collect();
        let transport: Vec<&str> = cols.iter().map(|c| c.transport).collect();
        let timeout_ms: Vec<Option<i32>> = cols.iter().map(|c| c.timeout_ms).collect();
        let max_lag: Vec<Option<i64>> = cols.iter().map(|c| c.max_lag).collect();
        let source: Vec<&str> = chosen.iter().map(|n| n.source.as_str()).collect();
        tx.execute(
            "INSERT INTO nodes (node_hash, type, name, url, auth, headers, enabled, priority, weight, labels, \
             transport, timeout_ms, max_lag, source) \
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::jsonb[], $6::jsonb[], \
             $7::bool[], $8::int2[], $9::int4[], $10::jsonb[], $11::text[], $12::int4[], $13::int8[], $14::text[]) \
             ON CONFLICT (node_hash) DO UPDATE SET name = excluded.name, url = excluded.url, auth = excluded.auth, \
             headers = excluded.headers, enabled = excluded.enabled, priority = excluded.priority, \
             weight = excluded.weight, labels = excluded.labels, transport = excluded.transport, \
             timeout_ms = excluded.timeout_ms, max_lag = excluded.max_lag, source = excluded.source, \
             revision = nodes.revision + 1, updated_at = now()",
            &[
                &hash,
                &node_type,
                &name,
                &url,
                &auth,
                &headers,
                &enabled,
                &priority,
                &weight,
                &labels,
                &transport,
                &timeout_ms,
                &max_lag,
                &source,
            ],
        )
        .await?;
        tx.commit().await?;
        Ok(outcomes)
    }
}
