//! The `genfleet` command line: the clap types here, each command's
//! arguments and body in its own file.

pub(crate) mod batch;
pub(crate) mod cancel;
pub(crate) mod credits;
pub(crate) mod dlq;
pub(crate) mod enqueue;
pub(crate) mod forget;
pub(crate) mod migrate;
pub(crate) mod purge;
pub(crate) mod serve_files;
mod shared;
pub(crate) mod validate;
pub(crate) mod worker;

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "genfleet",
    version,
    about = "Workers for AI image and video generation jobs"
)]
pub(crate) struct Cli {
    /// TOML configuration file; `GENFLEET__SECTION__KEY` variables override it.
    #[arg(long, global = true, env = "GENFLEET_CONFIG")]
    pub(crate) config: Option<PathBuf>,
    /// Log format: text or json.
    #[arg(
        long,
        global = true,
        env = "GENFLEET_LOG_FORMAT",
        default_value = "text"
    )]
    pub(crate) log_format: LogFormat,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum LogFormat {
    Text,
    Json,
}

// The variants' doc comments are the commands' help; the argument structs
// carry none, so that clap has one source for it.
#[derive(Subcommand)]
pub(crate) enum Command {
    /// Consume jobs from RabbitMQ and run them until SIGTERM.
    Worker,
    /// Publish jobs to RabbitMQ: JSON job files, or generated jobs.
    Enqueue(enqueue::EnqueueArgs),
    /// Cancel jobs by id: publishes a CancelJob to genfleet.cancel. A job
    /// still queued or parked ends `cancelled` with its credits released and
    /// its provider request cancelled; a finished job keeps its result.
    Cancel(cancel::CancelArgs),
    /// Validate, sanitise and resize a folder of images locally (no broker,
    /// database or network).
    Batch(batch::BatchArgs),
    /// Check a job JSON file against the contract, or an image against the
    /// upload checks; prints what a worker would decide.
    Validate(validate::ValidateArgs),
    /// Run the credit ledger's database migrations.
    Migrate,
    /// Credit accounts: grant credits, read a balance.
    Credits {
        #[command(subcommand)]
        command: credits::CreditsCommand,
    },
    /// Forget a data subject (a workspace, an org, a user or one job):
    /// delete its outputs, uploads, stored results, dead letters and spool
    /// leftovers, and anonymise its credit accounts so the books still
    /// balance. Idempotent; prints counts, never contents.
    Forget(forget::ForgetArgs),
    /// Remove what is past retention ([retention], per organisation):
    /// outputs in the store, stored results, provider submission records,
    /// job start counts and cancel requests, dead letters; retry pending
    /// source deletions. Never touches open holds or the credit books.
    /// Prints counts; --dry-run removes nothing.
    Purge(purge::PurgeArgs),
    /// Dead letters in genfleet.dead: list, show, replay to their job queue,
    /// or purge.
    Dlq {
        #[command(subcommand)]
        command: dlq::DlqCommand,
    },
    /// Serve the local store's outputs to holders of valid signed links
    /// (storage.public_base_url): GET and HEAD only, unexpired signatures
    /// of an accepted key only.
    ServeFiles(serve_files::ServeFilesArgs),
}
