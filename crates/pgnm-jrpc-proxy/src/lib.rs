//! `pgnm-jrpc-proxy`: executes `jrpcCall` — one JSON-RPC call to a node — for
//! the checker, over the bus (the seed system's `pg_jrpc-proxy`). It runs where
//! the nodes are reachable, and resolves the `${VAR}` secrets of the call from
//! its own environment, so secret values never pass through Redis.

use std::time::{Duration, Instant};

use pgnm_bus::service::{self, Call, CommandHandler};
use pgnm_bus::{Bus, BusError, RedisArgs, WorkerArgs};
use pgnm_protocol::jrpc::{JrpcCallArgs, JrpcCallResult};
use pgnm_protocol::node::NodeSpec;
use pgnm_protocol::{Command, ErrorBody, ErrorCode, Role, decode_args, encode_data};
use pgnm_rpc::{Dialect, RpcClient, RpcError};
use pgnm_runtime::{AdminArgs, Readiness};
use tokio_util::sync::CancellationToken;

/// Settings of `pgnm-jrpc-proxy`.
#[derive(Debug, Clone, clap::Args)]
pub struct ProxyConfig {
    /// Redis settings.
    #[command(flatten)]
    pub redis: RedisArgs,
    /// Worker settings.
    #[command(flatten)]
    pub worker: WorkerArgs,
    /// Name of this instance (the consumer name); defaults to host name, role and process id.
    #[arg(long, env = "PGNM_INSTANCE")]
    pub instance: Option<String>,
    /// Admin server settings.
    #[command(flatten)]
    pub admin: AdminArgs,
}

/// Runs the proxy until `shutdown` is cancelled, then drains.
pub async fn run(config: ProxyConfig, shutdown: CancellationToken) -> Result<(), BusError> {
    let instance = config.instance.clone().unwrap_or_else(|| pgnm_runtime::default_instance("jrpc-proxy"));
    let bus = Bus::connect(&config.redis, &instance).await?;
    let inbox = bus.keys().inbox(Role::JrpcProxy);
    let readiness = Readiness::new(&shutdown).check("redis", bus.group_check(inbox, Role::JrpcProxy.as_str()));
    let _admin = pgnm_runtime::admin::start(&config.admin, readiness).await.map_err(BusError::Config)?;
    pgnm_bus::metrics::describe();
    let handler = Proxy { client: RpcClient::new() };
    service::serve(bus, Role::JrpcProxy, config.worker, handler, shutdown).await
}

struct Proxy {
    client: RpcClient,
}

/// Returns the error a failed call is answered with: `UNAVAILABLE`, with the
/// reason (and status, code) in the details.
fn call_error(e: &RpcError) -> ErrorBody {
    let reason = match e {
        RpcError::MethodNotFound => "method_not_found",
        other => other.reason(),
    };
    let mut details = vec![("reason".into(), reason.into())];
    match e {
        RpcError::Auth(s) | RpcError::Http(s) => details.push(("httpStatus".into(), u64::from(*s).into())),
        RpcError::RateLimited { retry_after: Some(r) } => details.push(("retryAfter".into(), (*r).into())),
        RpcError::Rpc { code, .. } => details.push(("rpcCode".into(), (*code).into())),
        _ => {}
    }
    ErrorBody::new(ErrorCode::Unavailable, e.to_string()).with_details(rmpv::Value::Map(details))
}

impl Proxy {
    async fn jrpc_call(&self, args: JrpcCallArgs) -> Result<Vec<u8>, ErrorBody> {
        if !(100..=60_000).contains(&args.timeout_ms) {
            return Err(ErrorBody::bad_request(format!(
                "args.timeoutMs: must be between 100 and 60000, got {}",
                args.timeout_ms
            )));
        }
        let dialect = match args.jsonrpc.as_str() {
            "1.0" => Dialect::V1,
            "2.0" => Dialect::V2,
            other => {
                return Err(ErrorBody::bad_request(format!("args.jsonrpc: must be \"1.0\" or \"2.0\", got {other:?}")));
            }
        };
        if !(args.url.starts_with("http://") || args.url.starts_with("https://")) {
            return Err(ErrorBody::bad_request("args.url: must be an http or https URL"));
        }
        let spec = NodeSpec {
            name: "jrpc-call".to_owned(),
            url: args.url,
            auth: args.auth,
            headers: args.headers,
            enabled: true,
            priority: 0,
            weight: 1,
            labels: Default::default(),
            transport: Default::default(),
            timeout_ms: None,
            max_lag: None,
        };
        let lookup = |name: &str| std::env::var(name).ok();
        let endpoint = pgnm_rpc::resolve_endpoint(&spec, &lookup).map_err(|e| {
            ErrorBody::new(ErrorCode::Unavailable, format!("args.{e}"))
                .with_details(rmpv::Value::Map(vec![("reason".into(), "secret_missing".into())]))
        })?;
        let started = Instant::now();
        let result = self
            .client
            .call(&endpoint, dialect, &args.method, args.params, Duration::from_millis(args.timeout_ms))
            .await
            .map_err(|e| call_error(&e))?;
        encode_data(&JrpcCallResult { result, latency_ms: started.elapsed().as_millis() as u64 })
    }
}

impl CommandHandler for Proxy {
    async fn execute(&self, call: Call) -> Result<Vec<u8>, ErrorBody> {
        match call.command {
            Command::JrpcCall => self.jrpc_call(decode_args(call.args)?).await,
            other => Err(ErrorBody::new(
                ErrorCode::UnknownCommand,
                format!("command {other} is not served by pgnm-jrpc-proxy"),
            )),
        }
    }
}
