//! `pgnm-scheduler`: the persisted task list and its runner, which sends
//! periodic commands (the node `check` rounds first) through the router like any
//! other caller. Any number of replicas may run: each due tick is claimed once in
//! the database.

mod runner;
pub mod schedule;

use std::time::Duration;

use pgnm_bus::service::{self, Call, CommandHandler};
use pgnm_bus::{Bus, Caller, RedisArgs, WorkerArgs};
use pgnm_protocol::task::{
    PruneHistoryArgs, PruneHistoryResult, SchedulerBootstrapResult, TaskAddArgs, TaskListArgs, TaskListResult,
    TaskName, TaskRunResult, TaskUpdateArgs, TaskView,
};
use pgnm_protocol::{Command, ErrorBody, ErrorCode, Role, decode_args, encode_data};
use pgnm_runtime::{AdminArgs, Readiness};
use pgnm_store::{DbArgs, Store, StoreError, TaskRow, TaskWriteError};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Settings of `pgnm-scheduler`.
#[derive(Debug, Clone, clap::Args)]
pub struct SchedulerConfig {
    /// Redis settings.
    #[command(flatten)]
    pub redis: RedisArgs,
    /// Worker settings.
    #[command(flatten)]
    pub worker: WorkerArgs,
    /// PostgreSQL settings.
    #[command(flatten)]
    pub db: DbArgs,
    /// Name of this instance (the consumer name); defaults to host name, role and process id.
    #[arg(long, env = "PGNM_INSTANCE")]
    pub instance: Option<String>,
    /// How often the runner looks for due tasks, in milliseconds.
    #[arg(long, env = "PGNM_SCHEDULER_POLL_MS", default_value_t = 100)]
    pub poll_ms: u64,
    /// How long a run stays leased to the replica that dispatched it without a
    /// renewal; past it another replica takes the run over, in milliseconds.
    #[arg(long, env = "PGNM_SCHEDULER_LEASE_MS", default_value_t = 10_000)]
    pub lease_ms: u64,
    /// Check rounds of the default task list: one task per shard, so checker
    /// replicas share the work.
    #[arg(long, env = "PGNM_CHECK_SHARDS", default_value_t = 4)]
    pub check_shards: u32,
    /// Interval of the default check rounds, in milliseconds.
    #[arg(long, env = "PGNM_CHECK_INTERVAL_MS", default_value_t = 5_000)]
    pub check_interval_ms: u64,
    /// Age after which finished history is pruned by the default task, in seconds.
    #[arg(long, env = "PGNM_HISTORY_RETENTION_SECS", default_value_t = 7 * 24 * 3600)]
    pub history_retention_secs: u64,
    /// Admin server settings.
    #[command(flatten)]
    pub admin: AdminArgs,
}

/// Why the scheduler cannot run.
#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    /// The database is unreachable or not migrated.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The bus failed.
    #[error(transparent)]
    Bus(#[from] pgnm_bus::BusError),
    /// The configuration is unusable.
    #[error("{0}")]
    Config(String),
}

/// Runs the scheduler (its command handler and its runner) until `shutdown` is
/// cancelled, then drains.
pub async fn run(config: SchedulerConfig, shutdown: CancellationToken) -> Result<(), SchedulerError> {
    let instance = config.instance.clone().unwrap_or_else(|| pgnm_runtime::default_instance("scheduler"));
    let store = Store::new(&config.db)?;
    store.check().await?;
    let tasks = Tasks { store: store.clone(), instance: instance.clone(), defaults: defaults(&config) };
    if store.count_tasks().await? == 0 {
        match tasks.bootstrap().await {
            Ok(r) => info!(created = ?r.created, "default tasks created on a cold start"),
            Err(e) => warn!(error = %e.message, "cannot create the default tasks"),
        }
    }
    let bus = Bus::connect(&config.redis, &instance).await?;
    let readiness = Readiness::new(&shutdown)
        .check("redis", bus.group_check(bus.keys().inbox(Role::Scheduler), Role::Scheduler.as_str()))
        .check("postgres", store.ready_check());
    let _admin = pgnm_runtime::admin::start(&config.admin, readiness).await.map_err(SchedulerError::Config)?;
    pgnm_bus::metrics::describe();
    runner::describe_metrics();
    // The runner sends commands like any caller, over its own reply stream.
    let caller = Caller::start(Bus::connect(&config.redis, &format!("{instance}-runner")).await?, &instance).await?;
    let runner = tokio::spawn(runner::run(
        store,
        caller.clone(),
        runner::Settings {
            instance: instance.clone(),
            poll: Duration::from_millis(config.poll_ms.max(10)),
            lease_ms: config.lease_ms.max(100),
        },
        shutdown.clone(),
    ));
    let handler = Scheduler { instance, tasks };
    let served = service::serve(bus, Role::Scheduler, config.worker, handler, shutdown).await;
    let _ = runner.await;
    caller.close().await;
    Ok(served?)
}

/// The default task list: a check round per shard and the history retention.
fn defaults(config: &SchedulerConfig) -> Vec<TaskAddArgs> {
    let shards = config.check_shards.max(1);
    let interval = config.check_interval_ms.max(pgnm_protocol::task::MIN_INTERVAL_MS);
    let mut out: Vec<TaskAddArgs> = (0..shards)
        .map(|shard| {
            let mut args = serde_json::Map::new();
            args.insert("shard".into(), shard.into());
            args.insert("shards".into(), shards.into());
            TaskAddArgs {
                name: format!("check-shard-{shard}-of-{shards}"),
                command: Command::Check.to_string(),
                role: Some(Role::Checker.to_string()),
                args: Some(args),
                interval_ms: Some(interval),
                cron: None,
                enabled: true,
                allow_overlap: false,
                timeout_ms: interval.clamp(100, 60_000),
            }
        })
        .collect();
    let mut args = serde_json::Map::new();
    args.insert("olderThanSecs".into(), config.history_retention_secs.into());
    out.push(TaskAddArgs {
        name: "prune-task-history".to_owned(),
        command: Command::PruneHistory.to_string(),
        role: Some(Role::Scheduler.to_string()),
        args: Some(args),
        interval_ms: Some(3_600_000),
        cron: None,
        enabled: true,
        allow_overlap: false,
        timeout_ms: 60_000,
    });
    out
}

/// The task commands.
struct Tasks {
    store: Store,
    instance: String,
    defaults: Vec<TaskAddArgs>,
}

fn store_error(e: StoreError) -> ErrorBody {
    if e.is_unavailable() {
        warn!(error = %e, "database unavailable");
        ErrorBody::new(ErrorCode::Unavailable, format!("{e}: try again later"))
    } else {
        warn!(error = %e, cause = ?std::error::Error::source(&e).map(|s| s.to_string()), "database error");
        ErrorBody::internal(e.to_string())
    }
}

fn not_found(name: &str) -> ErrorBody {
    ErrorBody::new(ErrorCode::NotFound, format!("no task named {name:?}"))
}

fn view(row: TaskRow) -> TaskView {
    TaskView {
        id: row.id,
        definition: row.spec,
        next_run_at: row.next_run_at,
        last_run_at: row.last_run_at,
        last_outcome: row.last_outcome,
        last_error: row.last_error,
        run_count: row.run_count,
        running: row.running,
        source: row.source,
    }
}

impl Tasks {
    async fn bootstrap(&self) -> Result<SchedulerBootstrapResult, ErrorBody> {
        let now = pgnm_protocol::now_ms() as i64;
        let tasks: Vec<(TaskAddArgs, i64)> = self.defaults.iter().map(|t| (t.clone(), now)).collect();
        let created = self.store.insert_missing_tasks(&tasks, "default").await.map_err(store_error)?;
        let existing = self.defaults.iter().map(|t| t.name.clone()).filter(|n| !created.contains(n)).collect();
        Ok(SchedulerBootstrapResult { created, existing })
    }

    async fn add(&self, spec: TaskAddArgs) -> Result<TaskView, ErrorBody> {
        schedule::validate(&spec, "args").map_err(ErrorBody::bad_request)?;
        let now = pgnm_protocol::now_ms() as i64;
        let first = schedule::first_run(&spec, now);
        let row = self.store.insert_task(&spec, first, "api").await.map_err(|e| match e {
            TaskWriteError::DuplicateName => {
                ErrorBody::new(ErrorCode::Conflict, format!("args.name: a task named {:?} already exists", spec.name))
            }
            TaskWriteError::Store(e) => store_error(e),
        })?;
        info!(task = %row.spec.name, command = %row.spec.command, "task added");
        Ok(view(row))
    }

    async fn update(&self, args: TaskUpdateArgs) -> Result<TaskView, ErrorBody> {
        let current =
            self.store.get_task(&args.name).await.map_err(store_error)?.ok_or_else(|| not_found(&args.name))?;
        let spec = args.set.apply(&current.spec);
        schedule::validate(&spec, "set").map_err(ErrorBody::bad_request)?;
        let rescheduled = args.set.interval_ms.is_some() || args.set.cron.is_some();
        let next = rescheduled.then(|| schedule::first_run(&spec, pgnm_protocol::now_ms() as i64));
        let row = self.store.update_task(&args.name, &spec, next).await.map_err(store_error)?;
        let row = row.ok_or_else(|| not_found(&args.name))?;
        info!(task = %row.spec.name, "task updated");
        Ok(view(row))
    }

    async fn stop(&self, args: TaskName) -> Result<TaskView, ErrorBody> {
        let current =
            self.store.get_task(&args.name).await.map_err(store_error)?.ok_or_else(|| not_found(&args.name))?;
        let spec = TaskAddArgs { enabled: false, ..current.spec };
        let row = self.store.update_task(&args.name, &spec, None).await.map_err(store_error)?;
        let row = row.ok_or_else(|| not_found(&args.name))?;
        info!(task = %row.spec.name, running = row.running, "task stopped");
        Ok(view(row))
    }

    async fn run_now(&self, args: TaskName) -> Result<TaskRunResult, ErrorBody> {
        let run = self.store.queue_run(&args.name, &self.instance).await.map_err(store_error)?;
        let run = run.ok_or_else(|| not_found(&args.name))?;
        info!(task = %run.name, request = %run.request_id, "task run queued");
        Ok(TaskRunResult { name: run.name, run_id: run.run_id, request_id: run.request_id })
    }

    async fn remove(&self, args: TaskName) -> Result<TaskView, ErrorBody> {
        let row = self.store.delete_task(&args.name).await.map_err(store_error)?;
        let row = row.ok_or_else(|| not_found(&args.name))?;
        info!(task = %row.spec.name, "task removed");
        Ok(view(row))
    }

    async fn list(&self, args: TaskListArgs) -> Result<TaskListResult, ErrorBody> {
        let rows = self.store.list_tasks(args.enabled).await.map_err(store_error)?;
        Ok(TaskListResult { tasks: rows.into_iter().map(view).collect() })
    }

    async fn prune(&self, args: PruneHistoryArgs) -> Result<PruneHistoryResult, ErrorBody> {
        let older = args.older_than_secs.unwrap_or(7 * 24 * 3600);
        let deleted = self.store.prune_runs(older).await.map_err(store_error)?;
        Ok(PruneHistoryResult { deleted })
    }
}

struct Scheduler {
    instance: String,
    tasks: Tasks,
}

fn reply<T: serde::Serialize>(result: Result<T, ErrorBody>) -> Result<Vec<u8>, ErrorBody> {
    encode_data(&result?)
}

impl CommandHandler for Scheduler {
    async fn execute(&self, call: Call) -> Result<Vec<u8>, ErrorBody> {
        let t = &self.tasks;
        match call.command {
            Command::Ping => service::ping(Role::Scheduler, &self.instance, call.args).await,
            // Sent without a role, `bootstrap` reaches the checker too with the
            // checker's arguments; the scheduler's takes none and ignores them.
            Command::Bootstrap => reply(t.bootstrap().await),
            Command::TaskAdd => reply(t.add(decode_args(call.args)?).await),
            Command::TaskUpdate => reply(t.update(decode_args(call.args)?).await),
            Command::TaskStop => reply(t.stop(decode_args(call.args)?).await),
            Command::TaskRun => reply(t.run_now(decode_args(call.args)?).await),
            Command::TaskRemove => reply(t.remove(decode_args(call.args)?).await),
            Command::TaskList => reply(t.list(decode_args(call.args)?).await),
            Command::PruneHistory => reply(t.prune(decode_args(call.args)?).await),
            other => Err(ErrorBody::new(
                ErrorCode::UnknownCommand,
                format!("command {other} is not implemented by this pgnm-scheduler build"),
            )),
        }
    }
}
