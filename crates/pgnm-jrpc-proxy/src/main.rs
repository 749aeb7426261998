//! `pgnm-jrpc-proxy` binary: parses the configuration and runs the proxy.

use anyhow::Context;
use clap::Parser;

/// pgnm-jrpc-proxy: executes JSON-RPC calls to nodes for the checker.
#[derive(Debug, Parser)]
#[command(name = "pgnm-jrpc-proxy", version)]
struct Cli {
    #[command(flatten)]
    config: pgnm_jrpc_proxy::ProxyConfig,
    #[command(flatten)]
    log: pgnm_runtime::LogArgs,
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let result = async {
        pgnm_runtime::init_logging(&cli.log).map_err(anyhow::Error::msg)?;
        let shutdown = pgnm_runtime::shutdown_on_signal();
        pgnm_jrpc_proxy::run(cli.config, shutdown).await.context("running the jrpc proxy")
    };
    pgnm_runtime::exit_on_error("pgnm-jrpc-proxy", result.await);
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_is_well_formed() {
        <super::Cli as clap::CommandFactory>::command().debug_assert();
    }
}
