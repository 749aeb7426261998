//! `pgnm-checker`: node registry and health: node commands, cold-start load of the nodes file, health checks, best-node selection. This build answers `ping`; the registry and health commands arrive with their issues.

use pgnm_bus::service::{self, Call, CommandHandler};
use pgnm_bus::{Bus, BusError, RedisArgs, WorkerArgs};
use pgnm_protocol::{Command, ErrorBody, ErrorCode, Role};
use tokio_util::sync::CancellationToken;

/// Settings of `pgnm-checker`.
#[derive(Debug, Clone, clap::Args)]
pub struct CheckerConfig {
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

/// Runs the checker until `shutdown` is cancelled, then drains.
pub async fn run(config: CheckerConfig, shutdown: CancellationToken) -> Result<(), BusError> {
    let instance = config.instance.clone().unwrap_or_else(|| pgnm_runtime::default_instance("checker"));
    let bus = Bus::connect(&config.redis, &instance).await?;
    let handler = Checker { instance: instance.clone() };
    service::serve(bus, Role::Checker, config.worker, handler, shutdown).await
}

struct Checker {
    instance: String,
}

impl CommandHandler for Checker {
    async fn execute(&self, call: Call) -> Result<Vec<u8>, ErrorBody> {
        match call.command {
            Command::Ping => service::ping(Role::Checker, &self.instance, call.args).await,
            other => Err(ErrorBody::new(
                ErrorCode::UnknownCommand,
                format!("command {other} is not implemented by this pgnm-checker build"),
            )),
        }
    }
}
