//! The scheduler's tables: tasks, and the runs that are claimed, leased and
//! finished through them.

use pgnm_protocol::task::TaskAddArgs;
use serde_json::Value as Json;
use tokio_postgres::Row;
use tokio_postgres::error::SqlState;

use crate::{Store, StoreError};

/// A task as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskRow {
    /// Database id.
    pub id: i64,
    /// The definition.
    pub spec: TaskAddArgs,
    /// Next scheduled run, Unix epoch milliseconds.
    pub next_run_at: i64,
    /// Last run's start, Unix epoch milliseconds.
    pub last_run_at: Option<i64>,
    /// Last finished run's outcome.
    pub last_outcome: Option<String>,
    /// Last finished run's error.
    pub last_error: Option<String>,
    /// Runs started.
    pub run_count: i64,
    /// Whether a run is in flight.
    pub running: bool,
    /// `api` or `default`.
    pub source: String,
}

/// A run this replica must dispatch (and keep leased until it finishes).
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimedRun {
    /// The run's id.
    pub run_id: i64,
    /// The request id it is sent under (the same on every attempt).
    pub request_id: String,
    /// The tick it is for, Unix epoch milliseconds.
    pub scheduled_for: i64,
    /// Attempts so far, this one included.
    pub attempts: i32,
    /// The task's name.
    pub name: String,
    /// What to send.
    pub command: String,
    /// To which role.
    pub role: Option<String>,
    /// With which arguments.
    pub args: Option<serde_json::Map<String, Json>>,
    /// The run's deadline, from dispatch.
    pub timeout_ms: u64,
    /// Ticks of the schedule that passed unrun before this one was claimed (they
    /// coalesce into this run); 0 for a run taken over.
    pub missed: u32,
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunOutcome {
    /// Answered with data.
    Ok,
    /// Answered with an error.
    Error,
    /// No answer before the deadline.
    Timeout,
}

impl RunOutcome {
    /// Returns the stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            RunOutcome::Ok => "ok",
            RunOutcome::Error => "error",
            RunOutcome::Timeout => "timeout",
        }
    }
}

/// A task name already in use.
#[derive(Debug, thiserror::Error)]
pub enum TaskWriteError {
    /// Another task has this name.
    #[error("a task with this name already exists")]
    DuplicateName,
    /// Any other failure.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<tokio_postgres::Error> for TaskWriteError {
    fn from(e: tokio_postgres::Error) -> Self {
        match e.as_db_error() {
            Some(db) if db.code() == &SqlState::UNIQUE_VIOLATION => TaskWriteError::DuplicateName,
            _ => TaskWriteError::Store(StoreError::Query(e)),
        }
    }
}

const TASK_COLUMNS: &str = "t.id, t.name, t.command, t.role, t.args, t.interval_ms, t.cron, t.enabled, \
     t.allow_overlap, t.timeout_ms, (extract(epoch FROM t.next_run_at) * 1000)::bigint AS next_ms, \
     (extract(epoch FROM t.last_run_at) * 1000)::bigint AS last_ms, t.run_count, t.source, \
     EXISTS (SELECT 1 FROM task_runs r WHERE r.task_id = t.id AND r.outcome IS NULL) AS running";

/// The last finished run's outcome and error, joined where tasks are shown.
const LAST_OUTCOME: &str = "LEFT JOIN LATERAL (SELECT r.outcome AS last_outcome, r.error AS last_error FROM task_runs r \
     WHERE r.task_id = t.id AND r.outcome IS NOT NULL ORDER BY r.id DESC LIMIT 1) lo ON TRUE";

fn args_of(v: Option<Json>) -> Option<serde_json::Map<String, Json>> {
    match v {
        Some(Json::Object(m)) => Some(m),
        _ => None,
    }
}

/// A task row read without its last outcome (when claiming).
fn row_to_task_plain(row: &Row) -> TaskRow {
    task_from(row, None, None)
}

fn row_to_task(row: &Row) -> TaskRow {
    task_from(row, row.get("last_outcome"), row.get("last_error"))
}

fn task_from(row: &Row, last_outcome: Option<String>, last_error: Option<String>) -> TaskRow {
    let interval: Option<i64> = row.get("interval_ms");
    let timeout: i64 = row.get("timeout_ms");
    TaskRow {
        id: row.get("id"),
        spec: TaskAddArgs {
            name: row.get("name"),
            command: row.get("command"),
            role: row.get("role"),
            args: args_of(row.get("args")),
            interval_ms: interval.map(|i| i.max(0) as u64),
            cron: row.get("cron"),
            enabled: row.get("enabled"),
            allow_overlap: row.get("allow_overlap"),
            timeout_ms: timeout.max(0) as u64,
        },
        next_run_at: row.get("next_ms"),
        last_run_at: row.get("last_ms"),
        last_outcome,
        last_error,
        run_count: row.get("run_count"),
        running: row.get("running"),
        source: row.get("source"),
    }
}

/// Most missed ticks counted per claimed run.
const MAX_MISSED_COUNTED: u32 = 10_000;

fn row_to_run(row: &Row) -> ClaimedRun {
    let timeout: i64 = row.get("timeout_ms");
    ClaimedRun {
        run_id: row.get("run_id"),
        request_id: row.get("request_id"),
        scheduled_for: row.get("scheduled_ms"),
        attempts: row.get("attempts"),
        name: row.get("name"),
        command: row.get("command"),
        role: row.get("role"),
        args: args_of(row.get("args")),
        timeout_ms: timeout.max(0) as u64,
        missed: 0,
    }
}

fn ms(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Inserts one task and returns it as shown; with `skip_existing`, a task of
/// the same name is left alone and nothing is returned.
async fn insert(
    client: &tokio_postgres::Client,
    spec: &TaskAddArgs,
    next_run_at: i64,
    source: &str,
    skip_existing: bool,
) -> Result<Option<Row>, tokio_postgres::Error> {
    let on_conflict = if skip_existing { "ON CONFLICT (name) DO NOTHING" } else { "" };
    let sql = format!(
        "WITH t AS (INSERT INTO tasks (name, command, role, args, interval_ms, cron, enabled, allow_overlap, \
         timeout_ms, next_run_at, source) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, \
         to_timestamp($10::bigint::float8 / 1000), $11) {on_conflict} RETURNING *) \
         SELECT {TASK_COLUMNS}, lo.* FROM t {LAST_OUTCOME}"
    );
    let args = spec.args.clone().map(Json::Object);
    client
        .query_opt(
            &sql,
            &[
                &spec.name,
                &spec.command,
                &spec.role,
                &args,
                &spec.interval_ms.map(ms),
                &spec.cron,
                &spec.enabled,
                &spec.allow_overlap,
                &ms(spec.timeout_ms),
                &next_run_at,
                &source,
            ],
        )
        .await
}

impl Store {
    /// Adds a task whose first run is at `next_run_at` (epoch ms).
    pub async fn insert_task(
        &self,
        spec: &TaskAddArgs,
        next_run_at: i64,
        source: &str,
    ) -> Result<TaskRow, TaskWriteError> {
        let client = self.client().await?;
        let row = insert(&client, spec, next_run_at, source, false).await?;
        Ok(row_to_task(&row.expect("an insert without ON CONFLICT returns its row")))
    }

    /// Adds the tasks that do not exist yet (by name); returns the names added.
    /// Safe to run from several replicas at once.
    pub async fn insert_missing_tasks(
        &self,
        tasks: &[(TaskAddArgs, i64)],
        source: &str,
    ) -> Result<Vec<String>, StoreError> {
        let client = self.client().await?;
        let mut added = Vec::new();
        for (spec, next_run_at) in tasks {
            if let Some(row) = insert(&client, spec, *next_run_at, source, true).await? {
                added.push(row_to_task(&row).spec.name);
            }
        }
        Ok(added)
    }

    /// Returns the tasks, by name.
    pub async fn list_tasks(&self, enabled: Option<bool>) -> Result<Vec<TaskRow>, StoreError> {
        let client = self.client().await?;
        let sql = format!(
            "SELECT {TASK_COLUMNS}, lo.* FROM tasks t {LAST_OUTCOME} WHERE ($1::bool IS NULL OR t.enabled = $1) ORDER BY t.name"
        );
        Ok(client.query(&sql, &[&enabled]).await?.iter().map(row_to_task).collect())
    }

    /// Returns the number of tasks.
    pub async fn count_tasks(&self) -> Result<i64, StoreError> {
        let client = self.client().await?;
        Ok(client.query_one("SELECT count(*) FROM tasks", &[]).await?.get(0))
    }

    /// Returns a task.
    pub async fn get_task(&self, name: &str) -> Result<Option<TaskRow>, StoreError> {
        let client = self.client().await?;
        let sql = format!("SELECT {TASK_COLUMNS}, lo.* FROM tasks t {LAST_OUTCOME} WHERE t.name = $1");
        Ok(client.query_opt(&sql, &[&name]).await?.as_ref().map(row_to_task))
    }

    /// Replaces a task's definition (its name stays) and, when given, its next run.
    pub async fn update_task(
        &self,
        name: &str,
        spec: &TaskAddArgs,
        next_run_at: Option<i64>,
    ) -> Result<Option<TaskRow>, StoreError> {
        let client = self.client().await?;
        let args = spec.args.clone().map(Json::Object);
        let sql = format!(
            "WITH t AS (UPDATE tasks SET command = $2, role = $3, args = $4, interval_ms = $5, cron = $6, \
             enabled = $7, allow_overlap = $8, timeout_ms = $9, \
             next_run_at = coalesce(to_timestamp($10::bigint::float8 / 1000), next_run_at), updated_at = now() \
             WHERE name = $1 RETURNING *) SELECT {TASK_COLUMNS}, lo.* FROM t {LAST_OUTCOME}"
        );
        let row = client
            .query_opt(
                &sql,
                &[
                    &name,
                    &spec.command,
                    &spec.role,
                    &args,
                    &spec.interval_ms.map(ms),
                    &spec.cron,
                    &spec.enabled,
                    &spec.allow_overlap,
                    &ms(spec.timeout_ms),
                    &next_run_at,
                ],
            )
            .await?;
        Ok(row.as_ref().map(row_to_task))
    }

    /// Removes a task and its history.
    pub async fn delete_task(&self, name: &str) -> Result<Option<TaskRow>, StoreError> {
        let task = self.get_task(name).await?;
        if task.is_some() {
            let client = self.client().await?;
            client.execute("DELETE FROM tasks WHERE name = $1", &[&name]).await?;
        }
        Ok(task)
    }

    /// Claims the due ticks of up to `limit` tasks, in one transaction: each due
    /// task (enabled, `next_run_at` passed, no run in flight unless it may
    /// overlap) gets one run for its due tick, leased to `instance` for
    /// `lease_ms`, and its next run moved to `next(task, now_ms)` — so missed
    /// ticks coalesce into one run. Rows another replica is claiming are skipped,
    /// so a tick is claimed once whatever the number of replicas.
    pub async fn claim_due_runs(
        &self,
        instance: &str,
        limit: i64,
        lease_ms: u64,
        next: impl Fn(&TaskAddArgs, i64, i64) -> i64,
    ) -> Result<Vec<ClaimedRun>, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let now_ms: i64 = tx.query_one("SELECT (extract(epoch FROM now()) * 1000)::bigint", &[]).await?.get(0);
        let sql = format!(
            "SELECT {TASK_COLUMNS} FROM tasks t WHERE t.enabled AND t.next_run_at <= now() \
             AND (t.allow_overlap OR NOT EXISTS (SELECT 1 FROM task_runs r WHERE r.task_id = t.id AND r.outcome IS NULL)) \
             ORDER BY t.next_run_at LIMIT $1 FOR UPDATE OF t SKIP LOCKED"
        );
        let due: Vec<TaskRow> = tx.query(&sql, &[&limit]).await?.iter().map(row_to_task_plain).collect();
        if due.is_empty() {
            tx.rollback().await?;
            return Ok(Vec::new());
        }
        let ids: Vec<i64> = due.iter().map(|t| t.id).collect();
        let scheduled: Vec<i64> = due.iter().map(|t| t.next_run_at).collect();
        let nexts: Vec<i64> = due.iter().map(|t| next(&t.spec, t.next_run_at, now_ms).max(now_ms + 1)).collect();
        let request_ids: Vec<String> =
            due.iter().map(|t| format!("task:{}:{}:{}", t.spec.name, t.id, t.next_run_at)).collect();
        tx.execute(
            "UPDATE tasks t SET next_run_at = to_timestamp(u.next::float8 / 1000), last_run_at = now(), \
             run_count = run_count + 1 FROM UNNEST($1::int8[], $2::int8[]) AS u(id, next) WHERE t.id = u.id",
            &[&ids, &nexts],
        )
        .await?;
        let rows = tx
            .query(
                "WITH r AS (INSERT INTO task_runs (task_id, request_id, scheduled_for, instance, lease_until) \
                 SELECT u.id, u.rid, to_timestamp(u.due::float8 / 1000), $4, now() + make_interval(secs => $5::float8 / 1000) \
                 FROM UNNEST($1::int8[], $2::text[], $3::int8[]) AS u(id, rid, due) RETURNING *) \
                 SELECT r.id AS run_id, r.request_id, (extract(epoch FROM r.scheduled_for) * 1000)::bigint AS scheduled_ms, \
                 r.attempts, t.name, t.command, t.role, t.args, t.timeout_ms FROM r JOIN tasks t ON t.id = r.task_id",
                &[&ids, &request_ids, &scheduled, &instance, &(lease_ms as f64)],
            )
            .await?;
        tx.commit().await?;
        // Ticks skipped between each run's tick and now (counted up to a bound).
        let missed: std::collections::HashMap<String, u32> = due
            .iter()
            .zip(&request_ids)
            .map(|(t, rid)| {
                let mut count = 0u32;
                let mut tick = next(&t.spec, t.next_run_at, t.next_run_at);
                while tick <= now_ms && count < MAX_MISSED_COUNTED {
                    count += 1;
                    tick = next(&t.spec, tick, tick);
                }
                (rid.clone(), count)
            })
            .collect();
        Ok(rows
            .iter()
            .map(row_to_run)
            .map(|mut run| {
                run.missed = missed.get(&run.request_id).copied().unwrap_or(0);
                run
            })
            .collect())
    }

    /// Returns when the next runnable tick is due (epoch ms) and the database's
    /// clock (epoch ms), so a runner can sleep until then.
    pub async fn next_due(&self) -> Result<(Option<i64>, i64), StoreError> {
        let client = self.client().await?;
        let row = client
            .query_one(
                "SELECT (extract(epoch FROM min(t.next_run_at)) * 1000)::bigint,                  (extract(epoch FROM now()) * 1000)::bigint FROM tasks t WHERE t.enabled                  AND (t.allow_overlap OR NOT EXISTS (SELECT 1 FROM task_runs r WHERE r.task_id = t.id AND r.outcome IS NULL))",
                &[],
            )
            .await?;
        Ok((row.get(0), row.get(1)))
    }

    /// Takes over up to `limit` in-flight runs whose lease ran out (their owner
    /// died, or `taskRun` queued them): leases them to `instance`.
    pub async fn take_over_runs(
        &self,
        instance: &str,
        limit: i64,
        lease_ms: u64,
    ) -> Result<Vec<ClaimedRun>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "WITH r AS (UPDATE task_runs SET instance = $1, attempts = attempts + 1, \
                 lease_until = now() + make_interval(secs => $3::float8 / 1000) \
                 WHERE id IN (SELECT id FROM task_runs WHERE outcome IS NULL AND lease_until < now() \
                 ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED) RETURNING *) \
                 SELECT r.id AS run_id, r.request_id, (extract(epoch FROM r.scheduled_for) * 1000)::bigint AS scheduled_ms, \
                 r.attempts, t.name, t.command, t.role, t.args, t.timeout_ms FROM r JOIN tasks t ON t.id = r.task_id",
                &[&instance, &limit, &(lease_ms as f64)],
            )
            .await?;
        Ok(rows.iter().map(row_to_run).collect())
    }

    /// Extends the leases `instance` holds on `runs`.
    pub async fn renew_leases(&self, instance: &str, runs: &[i64], lease_ms: u64) -> Result<(), StoreError> {
        if runs.is_empty() {
            return Ok(());
        }
        let client = self.client().await?;
        client
            .execute(
                "UPDATE task_runs SET lease_until = now() + make_interval(secs => $3::float8 / 1000) \
                 WHERE id = ANY($2) AND instance = $1 AND outcome IS NULL",
                &[&instance, &runs, &(lease_ms as f64)],
            )
            .await?;
        Ok(())
    }

    /// Records how runs ended, in one statement (each once: a later report of
    /// the same run is ignored).
    pub async fn finish_runs(&self, runs: &[(i64, RunOutcome, Option<String>)]) -> Result<(), StoreError> {
        if runs.is_empty() {
            return Ok(());
        }
        let ids: Vec<i64> = runs.iter().map(|r| r.0).collect();
        let outcomes: Vec<&str> = runs.iter().map(|r| r.1.as_str()).collect();
        let errors: Vec<Option<&str>> = runs.iter().map(|r| r.2.as_deref()).collect();
        let client = self.client().await?;
        client
            // Only the runs' rows: the tasks' rows are locked by claims, and
            // writing both from two places in different orders could deadlock.
            .execute(
                "UPDATE task_runs SET outcome = u.outcome, error = u.error, finished_at = now() \
                 FROM UNNEST($1::int8[], $2::text[], $3::text[]) AS u(id, outcome, error) \
                 WHERE task_runs.id = u.id AND task_runs.outcome IS NULL",
                &[&ids, &outcomes, &errors],
            )
            .await?;
        Ok(())
    }

    /// Queues a run of task `name` now, whatever its schedule: the run is
    /// created with an expired lease, so a replica's takeover dispatches it.
    pub async fn queue_run(&self, name: &str, instance: &str) -> Result<Option<ClaimedRun>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "WITH r AS (INSERT INTO task_runs (task_id, request_id, scheduled_for, manual, instance, lease_until) \
                 SELECT id, 'task:' || name || ':manual:' || gen_random_uuid(), now(), TRUE, $2, now() - interval '1 ms' \
                 FROM tasks WHERE name = $1 RETURNING *), \
                 t AS (UPDATE tasks SET run_count = run_count + 1, last_run_at = now() FROM r WHERE tasks.id = r.task_id \
                 RETURNING tasks.*) \
                 SELECT r.id AS run_id, r.request_id, (extract(epoch FROM r.scheduled_for) * 1000)::bigint AS scheduled_ms, \
                 r.attempts, t.name, t.command, t.role, t.args, t.timeout_ms FROM r JOIN t ON t.id = r.task_id",
                &[&name, &instance],
            )
            .await?;
        Ok(row.as_ref().map(row_to_run))
    }

    /// Deletes finished runs older than `older_than_secs`; returns how many.
    pub async fn prune_runs(&self, older_than_secs: u64) -> Result<u64, StoreError> {
        let client = self.client().await?;
        Ok(client
            .execute(
                "DELETE FROM task_runs WHERE outcome IS NOT NULL \
                 AND finished_at < now() - make_interval(secs => $1::float8)",
                &[&(older_than_secs as f64)],
            )
            .await?)
    }
}
