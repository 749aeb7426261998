//! `pgnm-checker` binary: parses the configuration and runs the checker, or
//! applies the database migrations (`pgnm-checker migrate`).

use anyhow::Context;
use clap::{Parser, Subcommand};

/// pgnm-checker: the node registry and node health.
#[derive(Debug, Parser)]
#[command(name = "pgnm-checker", version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Sub>,
    #[command(flatten)]
    config: pgnm_checker::CheckerConfig,
    #[command(flatten)]
    log: pgnm_runtime::LogArgs,
}

#[derive(Debug, Subcommand)]
enum Sub {
    /// Apply the pending database migrations, then exit (run once per release,
    /// e.g. as a Kubernetes Job, not by every replica).
    Migrate,
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let result = async {
        pgnm_runtime::init_logging(&cli.log).map_err(anyhow::Error::msg)?;
        match cli.command {
            Some(Sub::Migrate) => {
                pgnm_checker::migrate(&cli.config.db).await.context("migrating the database")?;
                Ok(())
            }
            None => {
                let shutdown = pgnm_runtime::shutdown_on_signal();
                pgnm_checker::run(cli.config, shutdown).await.context("running the checker")
            }
        }
    };
    pgnm_runtime::exit_on_error("pgnm-checker", result.await);
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_is_well_formed() {
        <super::Cli as clap::CommandFactory>::command().debug_assert();
    }
}
