//! `pgnm-sim` binary: serves the simulated nodes of a YAML/JSON file (or none)
//! and prints the address it listens on.

use std::collections::BTreeMap;

use anyhow::Context;
use clap::Parser;
use pgnm_sim::{NodeBehaviour, Sim};

/// pgnm-sim: many simulated chain nodes with faults scriptable at run time.
#[derive(Debug, Parser)]
#[command(name = "pgnm-sim", version)]
struct Cli {
    /// Address to listen on (port 0 picks a free one).
    #[arg(long, env = "PGNM_SIM_LISTEN", default_value = "127.0.0.1:8600")]
    listen: String,
    /// A JSON file of nodes: `{"<name>": {"family": "evm", ...}, ...}`.
    #[arg(long, env = "PGNM_SIM_NODES")]
    nodes: Option<std::path::PathBuf>,
    #[command(flatten)]
    log: pgnm_runtime::LogArgs,
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let result = async {
        pgnm_runtime::init_logging(&cli.log).map_err(anyhow::Error::msg)?;
        let nodes: BTreeMap<String, NodeBehaviour> = match &cli.nodes {
            Some(path) => {
                let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
                serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?
            }
            None => BTreeMap::new(),
        };
        let listener =
            tokio::net::TcpListener::bind(&cli.listen).await.with_context(|| format!("listening on {}", cli.listen))?;
        let addr = listener.local_addr()?;
        tracing::info!(%addr, nodes = nodes.len(), "simulating nodes at http://{addr}/node/<name>, control at /control/<name>");
        let shutdown = pgnm_runtime::shutdown_on_signal();
        pgnm_sim::serve(listener, Sim::new(nodes), shutdown).await.context("serving")?;
        anyhow::Ok(())
    };
    pgnm_runtime::exit_on_error("pgnm-sim", result.await);
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_is_well_formed() {
        <super::Cli as clap::CommandFactory>::command().debug_assert();
    }
}
