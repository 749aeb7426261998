//! `pgnm-checker`: the node registry (node commands, the nodes file) and, with
//! the health-check work, checks, status and best-node selection.

pub mod health;
pub mod registry;

use std::path::PathBuf;
use std::sync::Arc;

use pgnm_bus::service::{self, Call, CommandHandler};
use pgnm_bus::{Bus, RedisArgs, WorkerArgs};
use pgnm_protocol::health::{CheckArgs, GetBestNodeArgs, StatusEvent};
use pgnm_protocol::node::{CheckNodeArgs, GetNodeConfigArgs, GetNodesArgs};
use pgnm_protocol::task::{PruneHistoryArgs, PruneHistoryResult};
use pgnm_protocol::{Command, ErrorBody, ErrorCode, Role, decode_args, encode_data};
use pgnm_runtime::{AdminArgs, Readiness};
use pgnm_store::{DbArgs, Store};
use tokio_util::sync::CancellationToken;

use health::{EventSink, Health, HealthArgs};
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
    /// Health-check settings.
    #[command(flatten)]
    pub health: HealthArgs,
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
    /// Admin server settings.
    #[command(flatten)]
    pub admin: AdminArgs,
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
    let registry = Registry::new(store.clone(), chains.clone(), config.nodes_file.clone(), config.allow_secret_reveal);
    if let Err(e) = registry.bootstrap_if_empty().await {
        tracing::warn!(code = %e.code, error = %e.message, "cold-start load of the nodes file failed");
    }
    let bus = Bus::connect(&config.redis, &instance).await?;
    let readiness = Readiness::new(&shutdown)
        .check("redis", bus.group_check(bus.keys().inbox(Role::Checker), Role::Checker.as_str()))
        .check("postgres", store.ready_check());
    let _admin = pgnm_runtime::admin::start(&config.admin, readiness).await.map_err(CheckerError::Config)?;
    pgnm_bus::metrics::describe();
    health::describe_metrics();
    // Probes of nodes behind pgnm-jrpc-proxy go through the router like any call.
    let proxy =
        pgnm_bus::Caller::start(Bus::connect(&config.redis, &format!("{instance}-probes")).await?, &instance).await?;
    let health = Arc::new(Health::new(store, chains, config.health.clone(), event_sink(bus.clone()), proxy.clone()));
    health.refresh().await?;
    let refresher = tokio::spawn(health.clone().refresh_loop(shutdown.clone()));
    let handler = Checker { instance, registry, health };
    let served = service::serve(bus, Role::Checker, config.worker, handler, shutdown).await;
    let _ = refresher.await;
    proxy.close().await;
    Ok(served?)
}

/// Most events kept on the events stream.
const EVENTS_MAXLEN: i64 = 100_000;

/// Publishes status changes on the events stream, one entry each.
fn event_sink(bus: Bus) -> EventSink {
    Box::new(move |events: Vec<StatusEvent>| {
        let bus = bus.clone();
        Box::pin(async move {
            let stream = bus.keys().events();
            // All at once: the client pipelines them.
            let sends = events
                .iter()
                .filter_map(|event| encode_data(event).ok())
                .map(|payload| pgnm_bus::caller::send_capped(&bus, &stream, payload, EVENTS_MAXLEN));
            let failed = futures::future::join_all(sends).await.into_iter().filter(Result::is_err).count();
            if failed > 0 {
                tracing::warn!(failed, "cannot publish status events");
            }
        })
    })
}

struct Checker {
    instance: String,
    registry: Registry,
    health: Arc<Health>,
}

fn reply<T: serde::Serialize>(result: Result<T, ErrorBody>) -> Result<Vec<u8>, ErrorBody> {
    encode_data(&result?)
}

impl Checker {
    fn with_status(&self, mut node: pgnm_protocol::node::NodeView) -> pgnm_protocol::node::NodeView {
        node.status = self.health.live_status(node.id);
        node
    }
}

impl CommandHandler for Checker {
    async fn execute(&self, call: Call) -> Result<Vec<u8>, ErrorBody> {
        let r = &self.registry;
        let h = &self.health;
        match call.command {
            Command::Ping => service::ping(Role::Checker, &self.instance, call.args).await,
            Command::AddNode => reply(r.add_node(decode_args(call.args)?).await),
            Command::RmNode => reply(r.rm_node(decode_args(call.args)?).await),
            Command::UpdateNode => reply(r.update_node(decode_args(call.args)?).await.map(|n| self.with_status(n))),
            Command::GetNodeConfig => {
                let args: GetNodeConfigArgs = decode_args(call.args)?;
                reply(r.get_node_config(args).await.map(|n| self.with_status(n)))
            }
            Command::GetNodes => {
                let args: GetNodesArgs = decode_args(call.args)?;
                reply(r.get_nodes(args).await.map(|mut page| {
                    page.nodes = page.nodes.into_iter().map(|n| self.with_status(n)).collect();
                    page
                }))
            }
            Command::Bootstrap => reply(r.bootstrap(decode_args(call.args)?).await),
            Command::Check => {
                let args: CheckArgs = decode_args(call.args)?;
                reply(h.check(args).await)
            }
            Command::CheckNode => {
                let args: CheckNodeArgs = decode_args(call.args)?;
                let key = args.key().map_err(ErrorBody::bad_request)?;
                reply(h.check_node(key).await)
            }
            Command::GetBestNode => {
                let args: GetBestNodeArgs = decode_args(call.args)?;
                reply(h.best_node(&args))
            }
            Command::PruneHistory => {
                let args: PruneHistoryArgs = decode_args(call.args)?;
                let deleted = h.prune(args.older_than_secs.unwrap_or(7 * 24 * 3600)).await?;
                reply(Ok(PruneHistoryResult { deleted }))
            }
            other => Err(ErrorBody::new(
                ErrorCode::UnknownCommand,
                format!("command {other} is not implemented by this pgnm-checker build"),
            )),
        }
    }
}
