//! `genfleet purge`: remove what is past retention (outputs, stored
//! results, provider requests, job records, dead letters), per
//! organisation as `[retention]` says, and retry pending source deletions.

use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::{anyhow, Result};
use clap::Args;
use genfleet_storage::InputPolicy;
use genfleet_worker::retention::{self, PurgeOptions, PurgeOutcome, PurgeReport, Targets};
use genfleet_worker::Config;

use super::shared::{open_broker, open_ledger};

#[derive(Args)]
pub(crate) struct PurgeArgs {
    /// Retention for organisations without their own
    /// `retention.orgs.<org>` window, e.g. 180d, 12h, 30m; replaces
    /// `retention.outputs_days`, `records_days` and `dead_letters_days` for
    /// this run. Default: the configured windows.
    #[arg(long, value_parser = retention::parse_age)]
    older_than: Option<Duration>,
    /// Print what would be removed; remove nothing.
    #[arg(long)]
    dry_run: bool,
    /// Leave the dead-letter queue alone (no broker needed).
    #[arg(long)]
    no_dead_letters: bool,
}

pub(crate) async fn run(config: Config, args: PurgeArgs) -> Result<ExitCode> {
    let ledger = open_ledger(&config).await?;
    let inputs = InputPolicy::new(
        &config.storage.input_prefixes,
        config.storage.file_input_root.clone(),
    )?;
    let store = genfleet_worker::services::open_store(&config.storage, inputs)?;
    let broker = if args.no_dead_letters {
        None
    } else {
        Some(open_broker(&config, "genfleet-purge").await?)
    };
    let targets = Targets {
        ledger: &ledger,
        store: &store,
        broker: broker.as_ref(),
        metrics: None,
    };
    let options = PurgeOptions {
        now: SystemTime::now(),
        older_than: args.older_than,
        dry_run: args.dry_run,
    };
    let outcome = retention::purge(&targets, &config.retention, options).await;
    if let Some(broker) = broker {
        broker.close().await;
    }
    match outcome
        .map_err(|e| anyhow!("purge stopped: {e} (what was removed stays removed; run it again)"))?
    {
        PurgeOutcome::Busy => {
            eprintln!("another purge is running (the fleet-wide purge lock is held); nothing done");
            Ok(ExitCode::from(3))
        }
        PurgeOutcome::Done(report) => {
            print_report(&report, args.dry_run);
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn print_report(report: &PurgeReport, dry_run: bool) {
    let verb = if dry_run { "would remove" } else { "removed" };
    if dry_run {
        println!("dry run: nothing is removed");
    }
    for org in &report.outputs {
        println!(
            "outputs of {} (older than {}d): {verb} {} objects, {} bytes",
            org.org,
            org.window.as_secs() / 86_400,
            org.purged.objects,
            org.purged.bytes
        );
    }
    let total = report.outputs_total();
    println!(
        "outputs: {verb} {} objects, {} bytes",
        total.objects, total.bytes
    );
    let r = &report.records;
    println!("stored results: {verb} {}", r.outcomes);
    println!(
        "provider submission records: {verb} {}",
        r.provider_submissions
    );
    println!("job start counts: {verb} {}", r.job_attempts);
    println!("cancel requests: {verb} {}", r.job_cancellations);
    println!(
        "source deletions of jobs that never settled: {verb} {}",
        r.unsettled_source_deletions
    );
    match report.dead_letters {
        Some(dead) => {
            println!("dead letters: {verb} {}", dead.purged);
            if dead.undated > 0 {
                println!(
                    "dead letters without a time, left for the broker's message-ttl policy: {}",
                    dead.undated
                );
            }
        }
        None => println!("dead letters: not looked at (--no-dead-letters)"),
    }
    let s = &report.sources;
    if !dry_run {
        println!(
            "pending source deletions: deleted {}, failed again {}, refused {}",
            s.deleted, s.failed, s.refused
        );
    }
    println!(
        "source deletions still pending: {} ({} failing)",
        s.pending.pending, s.pending.failing
    );
}
