//! The `wiz-connector` binary: parse the command line, set up logging, run the command.

use std::process::ExitCode;

use clap::Parser;
use wiz_connector::cli::{Cli, Command};
use wiz_connector::{commands, heap, telemetry};

fn main() -> ExitCode {
    // Before any thread starts: the allocator's arenas are made by the first threads.
    let tuned = heap::tune();
    let cli = Cli::parse();
    telemetry::init(cli.log_format);
    tracing::debug!(?tuned, "allocator");
    // tokio reads TOKIO_WORKER_THREADS itself and panics on a bad value: refused here with the
    // reason instead.
    if let Some(v) = std::env::var_os("TOKIO_WORKER_THREADS") {
        if v.to_str()
            .and_then(|s| s.parse::<usize>().ok())
            .is_none_or(|n| n == 0)
        {
            eprintln!(
                "error: TOKIO_WORKER_THREADS={}: must be a whole number of threads, at least 1 (or unset: one per core the process may use)",
                v.to_string_lossy()
            );
            return ExitCode::from(2);
        }
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Run { config } => commands::run::run(&config.path).await,
            Command::Demo(args) => commands::demo::run(args).await,
            Command::Check {
                config,
                tenant,
                sinks: false,
            } => commands::check::run(&config.path, tenant.as_deref()).await,
            Command::Check {
                config,
                sinks: true,
                ..
            } => commands::check::run_sinks(&config.path).await,
            Command::Validate { config } => commands::validate::run(&config.path),
            Command::Simulate(args) => commands::simulate::run(args).await,
            Command::Status(args) => commands::status::run(args).await,
            Command::Action(args) => commands::action::run(args).await,
        }
    });
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
