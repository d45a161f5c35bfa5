//! `genfleet credits`: grant credits and read accounts in the ledger.

use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;
use genfleet_worker::Config;

use super::shared::open_ledger;

#[derive(Subcommand)]
pub(crate) enum CreditsCommand {
    /// Add credits to an account (created if new), e.g. `acme/shop-1 500`.
    Grant {
        account: String,
        amount: i64,
        /// Why, for the ledger entry.
        #[arg(long, default_value = "operator grant")]
        reason: String,
    },
    /// Show an account's available, held and captured credits (and for a
    /// workspace account its parent, cap, drawn and spendable credits).
    Balance { account: String },
    /// Let a workspace account draw on its organisation's credits, e.g.
    /// `acme/shop-1 --parent acme --cap 500` (created if new; run again to
    /// change the cap; without --cap there is no limit).
    Link {
        account: String,
        /// The organisation account to draw on; it must exist.
        #[arg(long)]
        parent: String,
        /// Most credits the account may draw from the parent in all.
        #[arg(long)]
        cap: Option<i64>,
    },
    /// An account's ledger entries, newest first.
    Statement {
        account: String,
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
    /// An account's holds (open ones only unless --all).
    Holds {
        account: String,
        #[arg(long)]
        all: bool,
    },
}

pub(crate) async fn run(config: Config, command: CreditsCommand) -> Result<ExitCode> {
    let ledger = open_ledger(&config).await?;
    match command {
        CreditsCommand::Grant {
            account,
            amount,
            reason,
        } => {
            let available = ledger.grant(&account, amount, &reason).await?;
            println!("{account}: granted {amount}, {available} available");
        }
        CreditsCommand::Balance { account } => match ledger.balance(&account).await? {
            Some(b) => print_balance(&b),
            None => {
                println!("{account}: no such account");
                return Ok(ExitCode::FAILURE);
            }
        },
        CreditsCommand::Link {
            account,
            parent,
            cap,
        } => {
            let b = ledger.link(&account, &parent, cap).await?;
            println!("{account}: linked to {parent}");
            print_balance(&b);
        }
        CreditsCommand::Statement { account, limit } => {
            for e in ledger.statement(&account, limit).await? {
                println!(
                    "{:>10} {:<8} {:>8} {:<26} {}",
                    e.created_at_unix,
                    e.kind,
                    e.amount,
                    e.job_id.as_deref().unwrap_or("-"),
                    e.reason.as_deref().unwrap_or("")
                );
            }
        }
        CreditsCommand::Holds { account, all } => {
            for h in ledger.holds(&account, !all).await? {
                let mut line = format!(
                    "{:<26} {:<9} amount {:>6} captured {:>6} released {:>6}",
                    h.job_id,
                    h.state.as_str(),
                    h.amount,
                    h.captured,
                    h.released
                );
                if h.account != account {
                    line.push_str(&format!(" of {}", h.account));
                }
                if let Some(parent) = &h.parent_account {
                    line.push_str(&format!(
                        " (from {parent}: {} held, {} captured, {} released)",
                        h.parent_amount, h.parent_captured, h.parent_released
                    ));
                }
                println!("{line}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// An account's balance; a workspace account also gets its parent, cap,
/// what it has drawn and what one job could reserve now.
fn print_balance(b: &genfleet_credits::Balance) {
    println!(
        "{}: {} available, {} held, {} captured",
        b.account, b.available, b.held, b.captured
    );
    if let Some(parent) = &b.parent {
        println!("  parent:    {parent}");
        match b.parent_cap {
            Some(cap) => println!("  cap:       {cap}"),
            None => println!("  cap:       none"),
        }
        println!("  drawn:     {}", b.parent_drawn);
        println!("  spendable: {}", b.spendable);
    }
}
