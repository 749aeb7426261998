//! `pgnm-router` binary: parses the configuration and runs the router.

use anyhow::Context;
use clap::Parser;

/// pgnm-router: the ingress that validates and routes every command.
#[derive(Debug, Parser)]
#[command(name = "pgnm-router", version)]
struct Cli {
    #[command(flatten)]
    config: pgnm_router::RouterConfig,
    #[command(flatten)]
    log: pgnm_runtime::LogArgs,
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let result = async {
        pgnm_runtime::init_logging(&cli.log).map_err(anyhow::Error::msg)?;
        let shutdown = pgnm_runtime::shutdown_on_signal();
        pgnm_router::run(cli.config, shutdown).await.context("running the router")
    };
    pgnm_runtime::exit_on_error("pgnm-router", result.await);
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_is_well_formed() {
        <super::Cli as clap::CommandFactory>::command().debug_assert();
    }
}
