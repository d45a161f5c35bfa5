//! The `genfleet` command: parse, load configuration, call a crate.
#![forbid(unsafe_code)]

mod cli;

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;
use cli::{Cli, Command, LogFormat};
use genfleet_worker::Config;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,lapin=warn,amq_protocol=warn,tokio_postgres=warn")
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// `batch` and `validate` work offline, so they neither read the
/// configuration nor start a runtime: a broken config file or an unreachable
/// service cannot stop them.
fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Batch(args) => cli::batch::run(args, cli.config.as_deref()),
        Command::Validate(args) => cli::validate::run(&args),
        command => {
            let config = Config::load(cli.config.as_deref())?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            runtime.block_on(async move {
                match command {
                    Command::Worker => cli::worker::run(config).await,
                    Command::Migrate => cli::migrate::run(config).await,
                    Command::Credits { command } => cli::credits::run(config, command).await,
                    Command::Dlq { command } => cli::dlq::run(config, command).await,
                    Command::Purge(args) => cli::purge::run(config, args).await,
                    Command::Enqueue(args) => cli::enqueue::run(config, args).await,
                    Command::Cancel(args) => cli::cancel::run(config, args).await,
                    Command::Forget(args) => cli::forget::run(config, args).await,
                    Command::ServeFiles(args) => cli::serve_files::run(config, args).await,
                    Command::Batch(_) | Command::Validate(_) => Ok(ExitCode::SUCCESS),
                }
            })
        }
    }
}
