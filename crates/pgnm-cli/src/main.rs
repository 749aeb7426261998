//! `pgnm`: the operator's command line. Sends commands through the router like
//! any other caller and prints the replies, for people (default) or scripts (`--json`).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};
use pgnm_bus::{Bus, CallError, CallSpec, Caller, RedisArgs};
use pgnm_protocol::{Reply, Role};

/// Prints a line on standard output; a closed output (`pgnm ... | head`) ends
/// the program quietly instead of panicking.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if writeln!(std::io::stdout(), $($arg)*).is_err() {
            std::process::exit(0);
        }
    }};
}

mod health;
mod nodes;
mod tasks;

/// Exit status when the command was answered with an error.
const EXIT_ERROR_REPLY: u8 = 1;
/// Exit status when no answer came (transport failure or deadline).
const EXIT_NO_REPLY: u8 = 3;

/// pgnm: operate a pgnm installation from a terminal.
///
/// Connection settings come from the same PGNM_* environment variables as the services.
#[derive(Debug, Parser)]
#[command(name = "pgnm", version)]
struct Cli {
    #[command(flatten)]
    redis: RedisArgs,
    /// Print replies as one JSON object per line, for scripts.
    #[arg(long, global = true)]
    json: bool,
    /// Milliseconds to wait for the reply; also the request's deadline.
    #[arg(long, global = true, env = "PGNM_TIMEOUT_MS", default_value_t = 10_000)]
    timeout: u64,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Sends any command and prints its reply.
    Call {
        /// Command name, as in the command table (e.g. `ping`, `getBestNode`).
        command: String,
        /// Role that must execute the command (`router`, `checker`, `scheduler`, `jrpc-proxy`).
        #[arg(long)]
        role: Option<String>,
        /// Arguments as a JSON object.
        #[arg(long)]
        args: Option<String>,
        /// Request id (the idempotency key); a fresh one by default.
        #[arg(long)]
        id: Option<String>,
    },
    /// Manage the node registry.
    #[command(subcommand)]
    Nodes(nodes::NodesCmd),
    /// Manage the scheduler's tasks.
    #[command(subcommand)]
    Tasks(tasks::TasksCmd),
    /// Show the node to use now for a chain type, and its fallbacks.
    Best {
        /// Chain type (`btc`, `eth`, ...).
        #[arg(value_name = "TYPE")]
        node_type: String,
        /// Only nodes with this label (`key=value`); repeatable.
        #[arg(long = "label", value_parser = nodes::key_value)]
        labels: Vec<(String, String)>,
    },
    /// Show every node's health: status, reason, height, lag, latency.
    Status {
        /// Only nodes of this type.
        #[arg(value_name = "TYPE")]
        node_type: Option<String>,
    },
    /// Run a check round now.
    Check {
        /// Only nodes of this type.
        #[arg(value_name = "TYPE")]
        node_type: Option<String>,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            #[allow(clippy::print_stderr)]
            {
                eprintln!("pgnm: {e:#}");
            }
            ExitCode::from(EXIT_NO_REPLY)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let instance = format!("cli-{}", uuid::Uuid::new_v4().simple());
    let timeout = Duration::from_millis(cli.timeout);
    match cli.command {
        Cmd::Call { command, role, args, id } => {
            let role = role
                .map(|r| r.parse::<Role>().map_err(|_| anyhow::anyhow!("--role: unknown role {r:?}")))
                .transpose()?;
            let args: Option<serde_json::Value> = args
                .map(|a| serde_json::from_str(&a).with_context(|| format!("--args: not valid JSON: {a}")))
                .transpose()?;
            if args.as_ref().is_some_and(|a| !a.is_object()) {
                anyhow::bail!("--args: must be a JSON object");
            }
            let client = Client::connect(&cli.redis, &instance, timeout).await?;
            let started = Instant::now();
            let outcome = client.call_with_id(&command, role, args, id).await;
            let elapsed = started.elapsed();
            client.close().await;
            Ok(print_reply(&command, &outcome?, elapsed, cli.json))
        }
        Cmd::Nodes(cmd) => {
            let client = Client::connect(&cli.redis, &instance, timeout).await?;
            let outcome = nodes::run(&client, cmd, cli.json).await;
            client.close().await;
            outcome
        }
        Cmd::Tasks(cmd) => {
            let client = Client::connect(&cli.redis, &instance, timeout).await?;
            let outcome = tasks::run(&client, cmd, cli.json).await;
            client.close().await;
            outcome
        }
        Cmd::Best { node_type, labels } => {
            let client = Client::connect(&cli.redis, &instance, timeout).await?;
            let outcome = health::best(&client, node_type, labels, cli.json).await;
            client.close().await;
            outcome
        }
        Cmd::Status { node_type } => {
            let client = Client::connect(&cli.redis, &instance, timeout).await?;
            let outcome = health::status(&client, node_type, cli.json).await;
            client.close().await;
            outcome
        }
        Cmd::Check { node_type } => {
            let client = Client::connect(&cli.redis, &instance, timeout).await?;
            let outcome = health::check(&client, node_type, cli.json).await;
            client.close().await;
            outcome
        }
    }
}

/// A connection to the installation: a caller with its reply stream.
pub(crate) struct Client {
    caller: Caller,
    timeout: Duration,
}

impl Client {
    async fn connect(redis: &RedisArgs, instance: &str, timeout: Duration) -> anyhow::Result<Client> {
        let bus = Bus::connect(redis, instance).await?;
        Ok(Client { caller: Caller::start(bus, &user()).await?, timeout })
    }

    /// Sends `command` and returns its reply.
    pub(crate) async fn call(
        &self,
        command: &str,
        role: Option<Role>,
        args: Option<serde_json::Value>,
    ) -> anyhow::Result<Reply> {
        self.call_with_id(command, role, args, None).await
    }

    async fn call_with_id(
        &self,
        command: &str,
        role: Option<Role>,
        args: Option<serde_json::Value>,
        id: Option<String>,
    ) -> anyhow::Result<Reply> {
        let mut spec = CallSpec::new(command, self.timeout).args(args);
        spec.role = role;
        spec.id = id;
        match self.caller.call(spec).await {
            Ok(reply) => Ok(reply),
            Err(CallError::DeadlineExceeded { id }) => anyhow::bail!(
                "no reply to {command} (request {id}) within {} ms; is the router running?",
                self.timeout.as_millis()
            ),
            Err(e) => Err(e.into()),
        }
    }

    async fn close(self) {
        self.caller.close().await;
    }
}

fn user() -> String {
    let name = std::env::var("USER").unwrap_or_else(|_| "operator".to_owned());
    format!("pgnm-cli:{name}")
}

/// Prints `rows` under `header` in aligned columns.
pub(crate) fn print_table<const N: usize>(header: &[String; N], rows: &[[String; N]]) {
    let mut widths = header.clone().map(|h| h.chars().count());
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for row in std::iter::once(header).chain(rows) {
        let line: Vec<String> = row.iter().zip(widths).map(|(c, w)| format!("{c:<w$}")).collect();
        out!("{}", line.join("  ").trim_end());
    }
}

pub(crate) fn to_json(v: &rmpv::Value) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or(serde_json::Value::Null)
}

pub(crate) fn print_reply(command: &str, reply: &Reply, elapsed: Duration, json: bool) -> ExitCode {
    let ms = elapsed.as_secs_f64() * 1000.0;
    if json {
        let mut out = serde_json::json!({ "id": reply.id, "instance": reply.instance });
        match reply.result() {
            Ok(data) => out["data"] = to_json(data),
            Err(e) => {
                out["error"] =
                    serde_json::json!({ "code": e.code.as_str(), "message": e.message, "retryable": e.retryable });
                if let Some(d) = &e.details {
                    out["error"]["details"] = to_json(d);
                }
            }
        }
        out!("{out}");
    } else {
        match reply.result() {
            Ok(data) => {
                out!("ok: {command} answered by {} in {ms:.1} ms", reply.instance);
                out!("{}", serde_json::to_string_pretty(&to_json(data)).unwrap_or_default());
            }
            Err(e) => {
                let retry = if e.retryable { "retryable" } else { "not retryable" };
                out!("error {} ({retry}): {}", e.code, e.message);
                if let Some(d) = &e.details {
                    out!("{}", serde_json::to_string_pretty(&to_json(d)).unwrap_or_default());
                }
            }
        }
    }
    if reply.error.is_some() { ExitCode::from(EXIT_ERROR_REPLY) } else { ExitCode::SUCCESS }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_is_well_formed() {
        <super::Cli as clap::CommandFactory>::command().debug_assert();
    }
}
