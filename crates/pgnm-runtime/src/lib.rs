//! What every pgnm binary shares at its edge: logging setup, the admin HTTP
//! server and metrics, TLS client settings, the shutdown token cancelled on
//! SIGTERM/SIGINT, and the instance name.

pub mod admin;
pub mod tls;

pub use admin::{AdminArgs, Readiness};

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines, for terminals.
    Text,
    /// One JSON object per line, for Kubernetes log collectors.
    Json,
}

/// Logging settings shared by every service.
#[derive(Debug, Clone, clap::Args)]
pub struct LogArgs {
    /// Log filter in `tracing` syntax, e.g. `info` or `pgnm_bus=debug,info`.
    #[arg(long = "log", env = "PGNM_LOG", default_value = "info")]
    pub filter: String,
    /// Log format: `text` for terminals, `json` in Kubernetes.
    #[arg(long = "log-format", env = "PGNM_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub format: LogFormat,
}

/// Installs the global `tracing` subscriber; logs go to standard error.
pub fn init_logging(args: &LogArgs) -> Result<(), String> {
    let filter = tracing_subscriber::EnvFilter::try_new(&args.filter)
        .map_err(|e| format!("invalid log filter {:?}: {e}", args.filter))?;
    // A log line that cannot be written (its reader is gone) is dropped: the
    // default reports it with `eprintln!`, which panics on a closed stderr and
    // would take the panicking task (the signal listener, say) with it.
    let builder =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).log_internal_errors(false);
    let result = match args.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    result.map_err(|e| format!("installing the log subscriber: {e}"))
}

/// Returns a token cancelled on the first SIGTERM or SIGINT.
pub fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown signal received, draining");
        cancel.cancel();
    });
    token
}

#[cfg(unix)]
async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        tracing::error!("cannot install signal handlers; the process will only stop when killed");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() {
    let _ = tokio::signal::ctrl_c().await;
}

/// Returns the instance name to use when none is configured: the host name (the
/// pod name in Kubernetes), the role and the process id, so that several
/// processes on one machine never share a consumer name.
pub fn default_instance(role: &str) -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok().map(|h| h.trim().to_owned()))
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned());
    format!("{host}-{role}-{}", std::process::id())
}

/// Returns an error and its causes on one line (`a: b: c`).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// Parses a duration written in milliseconds, for clap.
pub fn parse_millis(s: &str) -> Result<Duration, String> {
    s.parse::<u64>().map(Duration::from_millis).map_err(|_| format!("{s:?} is not a number of milliseconds"))
}

/// Ends the process after a fatal error: one line on standard error naming the
/// binary and the whole cause chain, and exit status 1.
#[allow(clippy::print_stderr)]
pub fn exit_on_error(binary: &str, result: anyhow::Result<()>) {
    if let Err(e) = result {
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), "{binary}: {e:#}");
        std::process::exit(1);
    }
}
