//! `pgnm tasks list|add|update|stop|run|rm`: the scheduler's task commands,
//! with the last outcome of each task shown.

use std::process::ExitCode;
use std::time::Instant;

use clap::{Args, Subcommand};
use pgnm_protocol::Role;
use pgnm_protocol::task::{TaskListResult, TaskRunResult, TaskView};
use serde_json::{Value, json};

use crate::{Client, print_reply};

/// The scheduler's subcommands.
#[derive(Debug, Subcommand)]
pub enum TasksCmd {
    /// List the tasks with their schedule and last outcome.
    List {
        /// Only enabled (`true`) or disabled (`false`) tasks.
        #[arg(long)]
        enabled: Option<bool>,
    },
    /// Add a task.
    Add {
        /// Unique name.
        name: String,
        /// The command to send.
        command: String,
        #[command(flatten)]
        fields: TaskFields,
    },
    /// Change a task (only the given fields).
    Update {
        /// The task's name.
        name: String,
        /// New command.
        #[arg(long)]
        command: Option<String>,
        #[command(flatten)]
        fields: TaskFields,
        /// Enable the task.
        #[arg(long)]
        enable: bool,
    },
    /// Disable a task (a run in flight finishes).
    Stop {
        /// The task's name.
        name: String,
    },
    /// Run a task once now, whatever its schedule.
    Run {
        /// The task's name.
        name: String,
    },
    /// Remove a task and its history.
    Rm {
        /// The task's name.
        name: String,
    },
}

/// Optional task fields shared by `add` and `update`.
#[derive(Debug, Args)]
pub struct TaskFields {
    /// Role that must execute the command.
    #[arg(long)]
    role: Option<String>,
    /// Command arguments as a JSON object.
    #[arg(long)]
    args: Option<String>,
    /// Run every this many milliseconds.
    #[arg(long, conflicts_with = "cron")]
    every_ms: Option<u64>,
    /// Run on this cron expression (UTC; 5 fields, or 6 with seconds first).
    #[arg(long)]
    cron: Option<String>,
    /// Deadline of each run, milliseconds.
    #[arg(long)]
    timeout_ms: Option<u64>,
    /// Allow a run to start while the previous one is in flight.
    #[arg(long)]
    allow_overlap: bool,
    /// Create the task disabled.
    #[arg(long)]
    disabled: bool,
}

impl TaskFields {
    fn into_json(self, out: &mut serde_json::Map<String, Value>) -> anyhow::Result<()> {
        if let Some(r) = self.role {
            out.insert("role".into(), r.into());
        }
        if let Some(a) = self.args {
            let v: Value = serde_json::from_str(&a).map_err(|e| anyhow::anyhow!("--args: not valid JSON: {e}"))?;
            if !v.is_object() {
                anyhow::bail!("--args: must be a JSON object");
            }
            out.insert("args".into(), v);
        }
        if let Some(i) = self.every_ms {
            out.insert("intervalMs".into(), i.into());
        }
        if let Some(c) = self.cron {
            out.insert("cron".into(), c.into());
        }
        if let Some(t) = self.timeout_ms {
            out.insert("timeoutMs".into(), t.into());
        }
        if self.allow_overlap {
            out.insert("allowOverlap".into(), true.into());
        }
        if self.disabled {
            out.insert("enabled".into(), false.into());
        }
        Ok(())
    }
}

/// Runs a `tasks` subcommand.
pub async fn run(client: &Client, cmd: TasksCmd, json: bool) -> anyhow::Result<ExitCode> {
    let (command, args) = match cmd {
        TasksCmd::List { enabled } => ("taskList", enabled.map(|e| json!({"enabled": e})).unwrap_or(json!({}))),
        TasksCmd::Add { name, command, fields } => {
            let mut m = serde_json::Map::new();
            m.insert("name".into(), name.into());
            m.insert("command".into(), command.into());
            fields.into_json(&mut m)?;
            ("taskAdd", Value::Object(m))
        }
        TasksCmd::Update { name, command, fields, enable } => {
            let mut set = serde_json::Map::new();
            if let Some(c) = command {
                set.insert("command".into(), c.into());
            }
            fields.into_json(&mut set)?;
            if enable {
                set.insert("enabled".into(), true.into());
            }
            ("taskUpdate", json!({"name": name, "set": set}))
        }
        TasksCmd::Stop { name } => ("taskStop", json!({"name": name})),
        TasksCmd::Run { name } => ("taskRun", json!({"name": name})),
        TasksCmd::Rm { name } => ("taskRemove", json!({"name": name})),
    };
    let started = Instant::now();
    let reply = client.call(command, Some(Role::Scheduler), Some(args)).await?;
    let data = match reply.result() {
        Ok(data) if !json => data.clone(),
        _ => return Ok(print_reply(command, &reply, started.elapsed(), json)),
    };
    match command {
        "taskList" => {
            let list: TaskListResult = pgnm_protocol::decode_data(&data)?;
            print_table(&list.tasks);
        }
        "taskRun" => {
            let r: TaskRunResult = pgnm_protocol::decode_data(&data)?;
            out!("queued a run of {} (run {}, request {})", r.name, r.run_id, r.request_id);
        }
        _ => {
            let t: TaskView = pgnm_protocol::decode_data(&data)?;
            let verb = match command {
                "taskAdd" => "added",
                "taskUpdate" => "updated",
                "taskStop" => "stopped",
                _ => "removed",
            };
            out!("{verb} task {}", t.definition.name);
            print_table(std::slice::from_ref(&t));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn when(ms: i64) -> String {
    let now = pgnm_protocol::now_ms() as i64;
    let d = (ms - now) / 1000;
    match d {
        d if d.abs() < 1 => "now".to_owned(),
        d if d > 0 => format!("in {}", human(d)),
        d => format!("{} ago", human(-d)),
    }
}

fn human(secs: i64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

fn print_table(tasks: &[TaskView]) {
    let header = ["NAME", "COMMAND", "SCHEDULE", "ENABLED", "NEXT", "LAST", "RUNS", "OUTCOME"].map(str::to_owned);
    let rows: Vec<[String; 8]> = tasks
        .iter()
        .map(|t| {
            let d = &t.definition;
            let target = match &d.role {
                Some(r) => format!("{}@{r}", d.command),
                None => d.command.clone(),
            };
            let schedule = match (&d.cron, d.interval_ms) {
                (Some(c), _) => format!("cron {c}"),
                (None, Some(i)) => format!("every {i} ms"),
                _ => "-".to_owned(),
            };
            let outcome = match (&t.last_outcome, &t.last_error) {
                (_, _) if t.running => "running".to_owned(),
                (Some(o), Some(e)) => format!("{o}: {e}"),
                (Some(o), None) => o.clone(),
                (None, _) => "-".to_owned(),
            };
            [
                d.name.clone(),
                target,
                schedule,
                if d.enabled { "yes" } else { "no" }.to_owned(),
                if d.enabled { when(t.next_run_at) } else { "-".to_owned() },
                t.last_run_at.map(when).unwrap_or_else(|| "-".to_owned()),
                t.run_count.to_string(),
                outcome,
            ]
        })
        .collect();
    crate::print_table(&header, &rows);
}
