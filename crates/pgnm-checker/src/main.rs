//! `pgnm-checker` binary: parses the configuration and runs the checker.

use anyhow::Context;
use clap::Parser;

/// pgnm-checker: node registry and health: node commands, cold-start load of the nodes file, health checks, best-node selection.
#[derive(Debug, Parser)]
#[command(name = "pgnm-checker", version)]
struct Cli {
    #[command(flatten)]
    config: pgnm_checker::CheckerConfig,
    #[command(flatten)]
    log: pgnm_runtime::LogArgs,
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let result = async {
        pgnm_runtime::init_logging(&cli.log).map_err(anyhow::Error::msg)?;
        let shutdown = pgnm_runtime::shutdown_on_signal();
        pgnm_checker::run(cli.config, shutdown).await.context("running the checker")
    };
    pgnm_runtime::exit_on_error("pgnm-checker", result.await);
}
