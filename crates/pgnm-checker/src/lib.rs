//! `pgnm-checker`: the node registry (node commands, the nodes file) and, with
//! the health-check work, checks, status and best-node selection.

pub mod registry;

use std::path::PathBuf;

use pgnm_bus::service::{self, Call, CommandHandler};
use pgnm_bus::{Bus, RedisArgs, WorkerArgs};
use pgnm_protocol::{Command, ErrorBody, ErrorCode, Role, decode_args, encode_data};
use pgnm_store::{DbArgs, Store};
use tokio_util::sync::CancellationToken;

use registry::Registry;
use registry::chains::Chains;

/// Settings of `pgnm-checker`.
#[derive(Debug, Clone, clap::Args)]
pub struct CheckerConfig {
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
    /// The nodes file (YAML) that `bootstrap` loads, and that a cold start with an
    /// empty registry loads by itself.
    #[arg(long, env = "PGNM_NODES_FILE")]
    pub nodes_file: Option<PathBuf>,
    /// A YAML file of chain types extending (or overriding) the built-in table.
    #[arg(long, env = "PGNM_CHAINS_FILE")]
    pub chains_file: Option<PathBuf>,
    /// Let callers see credentials with `getNodeConfig {revealSecrets: true}`.
    #[arg(long, env = "PGNM_ALLOW_SECRET_REVEAL", default_value_t = false)]
    pub allow_secret_reveal: bool,
}

/// Why the checker cannot run.
#[derive(Debug, thiserror::Error)]
pub enum CheckerError {
    /// The configuration is unusable.
    #[error("{0}")]
    Config(String),
    /// The database is unreachable or not migrated.
    #[error(transparent)]
    Store(#[from] pgnm_store::StoreError),
    /// The bus failed.
    #[error(transparent)]
    Bus(#[from] pgnm_bus::BusError),
}

/// Applies the database migrations and returns the versions applied.
pub async fn migrate(db: &DbArgs) -> Result<Vec<i32>, CheckerError> {
    Ok(Store::new(db)?.migrate().await?)
}

/// Runs the checker until `shutdown` is cancelled, then drains.
pub async fn run(config: CheckerConfig, shutdown: CancellationToken) -> Result<(), CheckerError> {
    let instance = config.instance.clone().unwrap_or_else(|| pgnm_runtime::default_instance("checker"));
    let chains = Chains::load(config.chains_file.as_deref()).map_err(CheckerError::Config)?;
    let store = Store::new(&config.db)?;
    store.check().await?;
    let registry = Registry::new(store, chains, config.nodes_file.clone(), config.allow_secret_reveal);
    if let Err(e) = registry.bootstrap_if_empty().await {
        tracing::warn!(code = %e.code, error = %e.message, "cold-start load of the nodes file failed");
    }
    let bus = Bus::connect(&config.redis, &instance).await?;
    let handler = Checker { instance, registry };
    Ok(service::serve(bus, Role::Checker, config.worker, handler, shutdown).await?)
}

struct Checker {
    instance: String,
    registry: Registry,
}

fn reply<T: serde::Serialize>(result: Result<T, ErrorBody>) -> Result<Vec<u8>, ErrorBody> {
    encode_data(&result?)
}

impl CommandHandler for Checker {
    async fn execute(&self, call: Call) -> Result<Vec<u8>, ErrorBody> {
        let r = &self.registry;
        match call.command {
            Command::Ping => service::ping(Role::Checker, &self.instance, call.args).await,
            Command::AddNode => reply(r.add_node(decode_args(call.args)?).await),
            Command::RmNode => reply(r.rm_node(decode_args(call.args)?).await),
            Command::UpdateNode => reply(r.update_node(decode_args(call.args)?).await),
            Command::GetNodeConfig => reply(r.get_node_config(decode_args(call.args)?).await),
            Command::GetNodes => reply(r.get_nodes(decode_args(call.args)?).await),
            Command::Bootstrap => reply(r.bootstrap(decode_args(call.args)?).await),
            other => Err(ErrorBody::new(
                ErrorCode::UnknownCommand,
                format!("command {other} is not implemented by this pgnm-checker build"),
            )),
        }
    }
}
