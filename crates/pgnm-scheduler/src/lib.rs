//! `pgnm-scheduler`: the persisted task list and its runner, which sends periodic commands (the node `check` rounds first) through the router. This build answers `ping`; the task commands arrive with their issues.

use pgnm_bus::service::{self, Call, CommandHandler};
use pgnm_bus::{Bus, BusError, RedisArgs, WorkerArgs};
use pgnm_protocol::{Command, ErrorBody, ErrorCode, Role};
use tokio_util::sync::CancellationToken;

/// Settings of `pgnm-scheduler`.
#[derive(Debug, Clone, clap::Args)]
pub struct SchedulerConfig {
    /// Redis settings.
    #[command(flatten)]
    pub redis: RedisArgs,
    /// Worker settings.
    #[command(flatten)]
    pub worker: WorkerArgs,
    /// Name of this instance (the consumer name); defaults to host name, role and process id.
    #[arg(long, env = "PGNM_INSTANCE")]
    pub instance: Option<String>,
}

/// Runs the scheduler until `shutdown` is cancelled, then drains.
pub async fn run(config: SchedulerConfig, shutdown: CancellationToken) -> Result<(), BusError> {
    let instance = config.instance.clone().unwrap_or_else(|| pgnm_runtime::default_instance("scheduler"));
    let bus = Bus::connect(&config.redis, &instance).await?;
    let handler = Scheduler { instance: instance.clone() };
    service::serve(bus, Role::Scheduler, config.worker, handler, shutdown).await
}

struct Scheduler {
    instance: String,
}

impl CommandHandler for Scheduler {
    async fn execute(&self, call: Call) -> Result<Vec<u8>, ErrorBody> {
        match call.command {
            Command::Ping => service::ping(Role::Scheduler, &self.instance, call.args).await,
            other => Err(ErrorBody::new(
                ErrorCode::UnknownCommand,
                format!("command {other} is not implemented by this pgnm-scheduler build"),
            )),
        }
    }
}
