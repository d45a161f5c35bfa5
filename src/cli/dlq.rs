//! `genfleet dlq`: look at, replay or purge the dead letters in genfleet.dead.

use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::Subcommand;
use genfleet_broker::{Broker, DeadLetter, Selector};
use genfleet_worker::Config;

use super::shared::open_broker;

#[derive(Subcommand)]
pub(crate) enum DlqCommand {
    /// Peek at dead letters without removing them.
    List {
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// One dead letter's headers and job; the body (which may hold a
    /// customer's prompt) only with --body.
    Show {
        message_id: String,
        /// Print the message body as well.
        #[arg(long)]
        body: bool,
    },
    /// Republish dead letters to genfleet.jobs under their original routing
    /// key; each is removed only after the broker confirmed its copy.
    #[command(group(clap::ArgGroup::new("which").required(true).args(["message_ids", "all"])))]
    Replay {
        /// Message ids (job ids) to replay.
        message_ids: Vec<String>,
        /// Replay every dead letter.
        #[arg(long)]
        all: bool,
    },
    /// Delete dead letters for good; without --yes, only say what would go.
    #[command(group(clap::ArgGroup::new("which").required(true).args(["message_ids", "all"])))]
    Purge {
        /// Message ids (job ids) to delete.
        message_ids: Vec<String>,
        /// Delete every dead letter.
        #[arg(long)]
        all: bool,
        /// Really delete.
        #[arg(long)]
        yes: bool,
    },
}

pub(crate) async fn run(config: Config, command: DlqCommand) -> Result<ExitCode> {
    let broker = open_broker(&config, "genfleet-dlq").await?;
    // Closed on errors too, so the broker does not log a dropped connection.
    let result = dlq_command(&broker, command).await;
    broker.close().await;
    result
}

fn selector(message_ids: Vec<String>, all: bool) -> Selector {
    if all {
        Selector::All
    } else {
        Selector::Ids(message_ids)
    }
}

async fn dlq_command(broker: &Broker, command: DlqCommand) -> Result<ExitCode> {
    let dead = genfleet_broker::DEAD_QUEUE;
    match command {
        DlqCommand::List { limit } => {
            let depth = broker.queue_depth(dead).await?;
            let letters = broker.dead_letters(&Selector::All, limit).await?;
            for (i, d) in letters.iter().enumerate() {
                println!(
                    "{:>3}  {:<26}  {:<20}  {:<18}  {:>7} B  {}",
                    i + 1,
                    d.message_id.as_deref().unwrap_or("-"),
                    d.queue.as_deref().unwrap_or(&d.routing_key),
                    d.error,
                    d.body.len(),
                    one_line(&d.reason, 80)
                );
            }
            println!(
                "{} of {depth} dead letter(s) in {dead} shown; none removed",
                letters.len()
            );
        }
        DlqCommand::Show { message_id, body } => {
            let letters = broker
                .dead_letters(&Selector::Ids(vec![message_id.clone()]), usize::MAX)
                .await?;
            if letters.is_empty() {
                println!("no dead letter with message id {message_id} in {dead}");
                return Ok(ExitCode::FAILURE);
            }
            for (i, d) in letters.iter().enumerate() {
                if i > 0 {
                    println!();
                }
                show_dead_letter(d, body);
            }
        }
        DlqCommand::Replay { message_ids, all } => {
            let report = broker
                .replay_dead_letters(&selector(message_ids, all))
                .await?;
            for id in &report.replayed {
                println!("replayed {id}");
            }
            for r in &report.refused {
                println!(
                    "left {} in {dead}: {}",
                    r.message_id.as_deref().unwrap_or("-"),
                    r.why
                );
            }
            for id in &report.missing {
                println!("no dead letter with message id {id}");
            }
            println!(
                "replayed {} dead letter(s) to {}, each confirmed before removal",
                report.replayed.len(),
                genfleet_broker::JOBS_EXCHANGE
            );
            if let Some(e) = report.stopped {
                bail!("replay stopped early, the rest stays in {dead}: {e}");
            }
            if !report.refused.is_empty() || !report.missing.is_empty() {
                return Ok(ExitCode::FAILURE);
            }
        }
        DlqCommand::Purge {
            message_ids,
            all,
            yes,
        } => {
            let selector = selector(message_ids, all);
            if !yes {
                let letters = broker.dead_letters(&selector, usize::MAX).await?;
                for d in &letters {
                    println!(
                        "would delete {} ({}, from {})",
                        d.message_id.as_deref().unwrap_or("-"),
                        d.error,
                        d.queue.as_deref().unwrap_or(&d.routing_key)
                    );
                }
                println!(
                    "refusing to delete {} dead letter(s) without --yes; nothing deleted",
                    letters.len()
                );
                return Ok(ExitCode::FAILURE);
            }
            let report = broker.purge_dead_letters(&selector).await?;
            for id in &report.missing {
                println!("no dead letter with message id {id}");
            }
            println!("deleted {} dead letter(s) from {dead}", report.purged);
            if !report.missing.is_empty() {
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn show_dead_letter(d: &DeadLetter, with_body: bool) {
    println!("message_id    {}", d.message_id.as_deref().unwrap_or("-"));
    println!("routing_key   {}", d.routing_key);
    if let Some(queue) = &d.queue {
        println!("queue         {queue}");
    }
    println!("error         {}", d.error);
    println!("reason        {}", d.reason);
    println!("content_type  {}", d.content_type.as_deref().unwrap_or("-"));
    println!("headers");
    for (k, v) in &d.headers {
        println!("  {k}: {v}");
    }
    // Lenient on purpose: a dead letter may be a job the contract refused.
    let job: Option<serde_json::Value> = serde_json::from_slice(&d.body).ok();
    let field = |path: &[&str]| -> String {
        let mut v = job.as_ref();
        for key in path {
            v = v.and_then(|v| v.get(key));
        }
        v.and_then(serde_json::Value::as_str)
            .unwrap_or("?")
            .to_string()
    };
    if job.is_some() {
        println!(
            "job           {} kind {} tenant {}/{}",
            field(&["jobId"]),
            field(&["kind"]),
            field(&["tenant", "org"]),
            field(&["tenant", "workspace"])
        );
    } else {
        println!("job           body is not JSON");
    }
    if with_body {
        println!("body ({} bytes)", d.body.len());
        println!("{}", String::from_utf8_lossy(&d.body));
    } else {
        println!(
            "body          {} bytes, not shown: it may hold a customer prompt (--body prints it)",
            d.body.len()
        );
    }
}

/// `text` on one line, cut to `max` characters.
fn one_line(text: &str, max: usize) -> String {
    let flat: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if flat.chars().count() <= max {
        return flat;
    }
    let mut cut: String = flat.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}
