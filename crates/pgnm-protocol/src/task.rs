//! The scheduler's commands: `taskList`, `taskAdd`, `taskUpdate`, `taskStop`,
//! `taskRun`, `taskRemove`, `pruneHistory` and the scheduler's `bootstrap`.
//!
//! A task sends one command through the router on a schedule: a fixed interval
//! (`intervalMs`) or a cron expression (`cron`, UTC).

use serde::{Deserialize, Deserializer, Serialize};

/// Shortest accepted interval.
pub const MIN_INTERVAL_MS: u64 = 100;
/// Longest accepted interval (a year).
pub const MAX_INTERVAL_MS: u64 = 366 * 24 * 3600 * 1000;
/// Accepted run timeouts.
pub const TIMEOUT_RANGE_MS: std::ops::RangeInclusive<u64> = 100..=3_600_000;

fn yes() -> bool {
    true
}

fn default_timeout() -> u64 {
    30_000
}

/// Present-and-null is `Some(None)`, absent is `None` (with `#[serde(default)]`).
fn double_option<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// Arguments of `taskAdd`: a new task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TaskAddArgs {
    /// Unique name, 1 to 100 of `[A-Za-z0-9._:-]`.
    pub name: String,
    /// The command to send (it must exist on `role`).
    pub command: String,
    /// The role that must execute it; without one, every role that serves it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// The command's arguments (a map).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<serde_json::Map<String, serde_json::Value>>,
    /// Run every this many milliseconds (100 ms to a year); or give `cron`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_ms: Option<u64>,
    /// Run on this cron expression, in UTC: 5 fields (`*/5 * * * *`) or 6 with
    /// seconds first (`*/10 * * * * *`); or give `intervalMs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron: Option<String>,
    /// Whether the task runs on its schedule.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Start a run even while the previous one is still in flight.
    #[serde(default)]
    pub allow_overlap: bool,
    /// Deadline of each run, milliseconds (100 ms to an hour, default 30 s).
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
}

/// Arguments of the commands that name one task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TaskName {
    /// The task's name.
    pub name: String,
}

/// Arguments of `taskUpdate`: the task and the fields to change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TaskUpdateArgs {
    /// The task's name.
    pub name: String,
    /// The fields to change; absent fields keep their value.
    pub set: TaskPatch,
}

/// A partial change of a task. Giving `intervalMs` replaces a cron schedule and
/// the other way round.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TaskPatch {
    /// New command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// New role, or `null` for every role that serves the command.
    #[serde(default, deserialize_with = "double_option", skip_serializing_if = "Option::is_none")]
    pub role: Option<Option<String>>,
    /// New arguments, or `null` for none.
    #[serde(default, deserialize_with = "double_option", skip_serializing_if = "Option::is_none")]
    pub args: Option<Option<serde_json::Map<String, serde_json::Value>>>,
    /// New interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_ms: Option<u64>,
    /// New cron expression.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron: Option<String>,
    /// Enable or disable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Allow overlapping runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_overlap: Option<bool>,
    /// New run timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

impl TaskPatch {
    /// Returns the task with the patch applied.
    pub fn apply(&self, task: &TaskAddArgs) -> TaskAddArgs {
        let mut out = task.clone();
        if let Some(v) = &self.command {
            out.command = v.clone();
        }
        if let Some(v) = &self.role {
            out.role = v.clone();
        }
        if let Some(v) = &self.args {
            out.args = v.clone();
        }
        if let Some(v) = self.interval_ms {
            out.interval_ms = Some(v);
            out.cron = None;
        }
        if let Some(v) = &self.cron {
            out.cron = Some(v.clone());
            out.interval_ms = None;
        }
        if let Some(v) = self.enabled {
            out.enabled = v;
        }
        if let Some(v) = self.allow_overlap {
            out.allow_overlap = v;
        }
        if let Some(v) = self.timeout_ms {
            out.timeout_ms = v;
        }
        out
    }
}

/// Arguments of `taskList`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TaskListArgs {
    /// Only enabled (or only disabled) tasks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
}

/// A task as replies show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskView {
    /// Database id.
    pub id: i64,
    /// The task's definition, as `taskAdd` takes it.
    pub definition: TaskAddArgs,
    /// Next scheduled run, Unix epoch milliseconds.
    pub next_run_at: i64,
    /// Last run's start, Unix epoch milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run_at: Option<i64>,
    /// Last finished run's outcome: `ok`, `error` or `timeout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_outcome: Option<String>,
    /// Last finished run's error (`CODE: message`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Runs started so far.
    pub run_count: i64,
    /// Whether a run is in flight.
    pub running: bool,
    /// `api`, or `default` for the tasks `bootstrap` creates.
    pub source: String,
}

/// Result of `taskList`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskListResult {
    /// The tasks, by name.
    pub tasks: Vec<TaskView>,
}

/// Result of `taskRun`: the run that was queued.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskRunResult {
    /// The task.
    pub name: String,
    /// The run's id in the history.
    pub run_id: i64,
    /// The request id the run is dispatched under.
    pub request_id: String,
}

/// Result of the scheduler's `bootstrap`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SchedulerBootstrapResult {
    /// Default tasks created now.
    pub created: Vec<String>,
    /// Default tasks that already existed (left as they are).
    pub existing: Vec<String>,
}

/// Arguments of `pruneHistory`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PruneHistoryArgs {
    /// Delete finished entries older than this many seconds (default 7 days).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub older_than_secs: Option<u64>,
}

/// Result of `pruneHistory`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PruneHistoryResult {
    /// Entries deleted.
    pub deleted: u64,
}
