//! `pgnm-scheduler` binary: parses the configuration and runs the scheduler.

use anyhow::Context;
use clap::Parser;

/// pgnm-scheduler: the persisted task list and its runner, which sends periodic commands (the node `check` rounds first) through the router.
#[derive(Debug, Parser)]
#[command(name = "pgnm-scheduler", version)]
struct Cli {
    #[command(flatten)]
    config: pgnm_scheduler::SchedulerConfig,
    #[command(flatten)]
    log: pgnm_runtime::LogArgs,
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let result = async {
        pgnm_runtime::init_logging(&cli.log).map_err(anyhow::Error::msg)?;
        let shutdown = pgnm_runtime::shutdown_on_signal();
        pgnm_scheduler::run(cli.config, shutdown).await.context("running the scheduler")
    };
    pgnm_runtime::exit_on_error("pgnm-scheduler", result.await);
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_is_well_formed() {
        <super::Cli as clap::CommandFactory>::command().debug_assert();
    }
}
