//! `genfleet forget`: erase a data subject (a workspace, a whole org, one
//! user of a workspace or org, or one job) from the store, the dead-letter
//! queue, the spool and the ledger's job records, and anonymise its credit
//! accounts. Prints counts per kind, never what was removed.
//!
//! The steps run in an order that lets a rerun finish what a killed run
//! began: the subject's jobs are found first from durable rows (owner rows,
//! stored outcomes) and its dead letters are read without removing them;
//! then objects, spool files and dead letters go; the ledger's rows go last,
//! in one transaction, since they are what the earlier steps are found by.
//! Every step is idempotent, so a second run removes nothing.
//!
//! What each selector reaches:
//! - `--org O [--workspace W]`: everything under the tenant's output and
//!   upload prefixes (by prefix: attributed or not), every job the tenant
//!   claimed, its dead letters, its cancel requests, and its accounts
//!   (anonymised).
//! - `--user U` / `--job J` (within O, and W when given): the jobs whose
//!   stored outcome names that user / that job id, and those of the
//!   subject's dead letters; their outputs, the uploads recorded as their
//!   pending source deletions, their rows. Other uploads cannot be tied to
//!   a user or a job (results do not name inputs) and stay; the accounts
//!   are the workspace's and stay.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Args;
use genfleet_broker::{DeadLetter, Selector};
use genfleet_credits::{Erased, Erasure, ForgetScope, KnownJob};
use genfleet_proto::v1;
use genfleet_storage::{InputPolicy, Store, SubjectPrefixes};
use genfleet_worker::Config;

use super::shared::{open_broker, open_ledger};

#[derive(Args)]
pub(crate) struct ForgetArgs {
    /// The organisation.
    #[arg(long)]
    org: String,
    /// One workspace of the organisation (default: all of them).
    #[arg(long)]
    workspace: Option<String>,
    /// Only the jobs of this end user (`tenant.user` of the jobs).
    #[arg(long)]
    user: Option<String>,
    /// Only this job.
    #[arg(long)]
    job: Option<String>,
    /// Say what would be removed, remove nothing.
    #[arg(long)]
    dry_run: bool,
}

/// Who is forgotten.
struct Subject {
    org: String,
    workspace: Option<String>,
    user: Option<String>,
    /// Canonical case.
    job: Option<String>,
}

impl Subject {
    fn whole_tenant(&self) -> bool {
        self.user.is_none() && self.job.is_none()
    }

    fn scope(&self) -> ForgetScope {
        match &self.workspace {
            Some(workspace) => ForgetScope::Workspace {
                org: self.org.clone(),
                workspace: workspace.clone(),
            },
            None => ForgetScope::Org {
                org: self.org.clone(),
            },
        }
    }

    /// Whether a job of `tenant` with id `job_id` is the subject's.
    fn covers(&self, tenant: &v1::Tenant, job_id: &str) -> bool {
        tenant.org == self.org
            && self
                .workspace
                .as_ref()
                .is_none_or(|ws| *ws == tenant.workspace)
            && self.user.as_ref().is_none_or(|u| *u == tenant.user)
            && self
                .job
                .as_ref()
                .is_none_or(|j| *j == genfleet_proto::canonical_job_id(job_id))
    }

    /// Whether an owner row (`org/workspace`) lies in the tenant scope.
    fn owns(&self, owner: &str) -> bool {
        match owner.split_once('/') {
            Some((org, ws)) => org == self.org && self.workspace.as_ref().is_none_or(|w| w == ws),
            None => false,
        }
    }
}

/// One job of the subject: where its outputs are.
#[derive(Debug, Clone)]
struct SubjectJob {
    org: String,
    workspace: String,
}

/// What a run found (and, unless dry, removed).
#[derive(Default)]
struct Found {
    jobs: BTreeMap<String, SubjectJob>,
    outputs: BTreeSet<String>,
    uploads: BTreeSet<String>,
    /// Upload URIs recorded as pending source deletions, with their tenant.
    pending_uploads: Vec<(String, String, String)>,
    dead_letters: usize,
    dead_letters_unattributable: usize,
    spool: SpoolFiles,
    prefixes: SubjectPrefixes,
}

pub(crate) async fn run(config: Config, args: ForgetArgs) -> Result<ExitCode> {
    let subject = subject(args.org, args.workspace, args.user, args.job)?;
    let ledger = open_ledger(&config).await?;
    let inputs = InputPolicy::new(
        &config.storage.input_prefixes,
        config.storage.file_input_root.clone(),
    )
    .context("storage.input_prefixes")?;
    let store = genfleet_worker::services::open_store(&config.storage, inputs)?;
    let broker = open_broker(&config, "genfleet-forget").await?;
    // Closed on errors too, so the broker does not log a dropped connection.
    let result = forget(&config, &subject, &ledger, &store, &broker, args.dry_run).await;
    broker.close().await;
    let (found, erased) = result?;
    print_report(&subject, &found, &erased, args.dry_run);
    Ok(ExitCode::SUCCESS)
}

fn subject(
    org: String,
    workspace: Option<String>,
    user: Option<String>,
    job: Option<String>,
) -> Result<Subject> {
    for (what, value) in [("--org", Some(&org)), ("--workspace", workspace.as_ref())] {
        if let Some(value) = value {
            if !genfleet_proto::is_valid_tenant_id(value) {
                bail!("{what} must be 1 to 64 characters of A-Z, a-z, 0-9, _ and -");
            }
        }
    }
    if user.as_ref().is_some_and(|u| u.is_empty()) {
        bail!("--user must not be empty");
    }
    if let Some(job) = &job {
        if !genfleet_proto::is_valid_job_id(job) {
            bail!("--job must be a ULID or a UUID");
        }
    }
    Ok(Subject {
        org,
        workspace,
        user,
        job: job.map(|j| genfleet_proto::canonical_job_id(&j)),
    })
}

async fn forget(
    config: &Config,
    subject: &Subject,
    ledger: &genfleet_credits::Ledger,
    store: &Store,
    broker: &genfleet_broker::Broker,
    dry_run: bool,
) -> Result<(Found, Erased)> {
    let scope = subject.scope();
    let mut found = Found::default();

    // 1. The subject's jobs, from durable rows.
    let candidates = ledger.forget_candidates(&scope).await?;
    for job in &candidates {
        if let Some(owned) = attribute(subject, job) {
            found.jobs.insert(job.job_id.clone(), owned);
        }
    }

    // 2. Its dead letters, read (not removed): they also attribute jobs that
    // left no outcome (a user's job dead-lettered before settling).
    let letters = broker.dead_letters(&Selector::All, usize::MAX).await?;
    let owners: BTreeMap<&str, &str> = candidates
        .iter()
        .map(|c| (c.job_id.as_str(), c.owner.as_str()))
        .collect();
    for letter in &letters {
        match letter_job(letter) {
            None => found.dead_letters_unattributable += 1,
            Some((tenant, job_id)) if subject.covers(&tenant, &job_id) => {
                found.dead_letters += 1;
                let id = genfleet_proto::canonical_job_id(&job_id);
                // Its rows only when the id is the subject's claim: another
                // tenant's job may carry the same id.
                if owners.get(id.as_str()).is_some_and(|o| subject.owns(o)) {
                    found.jobs.entry(id).or_insert(SubjectJob {
                        org: tenant.org.clone(),
                        workspace: tenant.workspace.clone(),
                    });
                }
            }
            Some(_) => {}
        }
    }

    // 3. Objects: by prefix for a whole tenant, by job otherwise.
    if subject.whole_tenant() {
        let mut workspaces: BTreeSet<String> = candidates
            .iter()
            .filter_map(|c| c.owner.split_once('/'))
            .filter(|(org, _)| *org == subject.org)
            .map(|(_, ws)| ws.to_string())
            .collect();
        workspaces.extend(found.jobs.values().map(|j| j.workspace.clone()));
        if subject.workspace.is_none() {
            workspaces.extend(store.child_names(&format!("{}/", subject.org)).await?);
        }
        let workspaces: Vec<String> = workspaces.into_iter().collect();
        found.prefixes =
            store.subject_prefixes(&subject.org, subject.workspace.as_deref(), &workspaces)?;
        for prefix in &found.prefixes.outputs {
            found.outputs.extend(keys_under(store, prefix).await?);
        }
        for prefix in &found.prefixes.uploads {
            found.uploads.extend(keys_under(store, prefix).await?);
        }
    } else {
        for (job_id, job) in &found.jobs {
            let prefix = format!("{}/{}/{job_id}/", job.org, job.workspace);
            found.outputs.extend(keys_under(store, &prefix).await?);
        }
    }
    // Uploads a job asked to delete and that are not deleted yet: the one
    // record tying an upload to a job. (A whole tenant's are under its
    // prefixes, found above.)
    let ids: Vec<String> = found.jobs.keys().cloned().collect();
    if !subject.whole_tenant() {
        for pending in ledger.pending_sources(&ids).await? {
            found
                .pending_uploads
                .push((pending.org, pending.workspace, pending.uri));
        }
    }

    // 4. Spool files left by workers that died (see `sweep_spool`).
    found.spool = sweep_spool(&config.worker.spool_base(), true)?;

    if dry_run {
        let erased = ledger.erase(&erasure(subject, &ids, &scope), true).await?;
        return Ok((found, erased));
    }

    // 5. Remove: files first, dead letters next, the ledger's rows last.
    found.spool = sweep_spool(&config.worker.spool_base(), false)?;
    // Local folders left empty go with the keys (`delete_keys`), so no
    // folder named after the tenant or a job stays.
    let keys: Vec<String> = found
        .outputs
        .iter()
        .chain(&found.uploads)
        .cloned()
        .collect();
    store.delete_keys(&keys).await?;
    for (org, workspace, uri) in &found.pending_uploads {
        // Under the rule the job itself was held to: only its tenant's
        // prefixes.
        // A URI the job could not have read (outside the prefixes, a
        // `file://` without a file root) is not deleted here either; only a
        // failing store stops the run.
        let Ok(scope) = store.scope(org, workspace) else {
            continue;
        };
        match store.delete_input(&scope, uri).await {
            Err(e) if e.is_retryable() => return Err(e.into()),
            _ => {}
        }
    }
    let removed = broker
        .purge_dead_letters_where(|letter| {
            letter_job(letter).is_some_and(|(tenant, job_id)| subject.covers(&tenant, &job_id))
        })
        .await?;
    // Dead letters that arrived after step 2 are removed too; report what
    // was removed.
    found.dead_letters = removed;
    let erased = ledger.erase(&erasure(subject, &ids, &scope), false).await?;
    Ok((found, erased))
}

/// The keys under a subject's prefix. Never the whole store: a prefix is
/// at least `<org>/`.
async fn keys_under(store: &Store, prefix: &str) -> Result<Vec<String>> {
    if prefix.trim_matches('/').is_empty() {
        bail!("refusing to list the whole store as one subject's");
    }
    Ok(store
        .list_under(prefix)
        .await?
        .into_iter()
        .map(|entry| entry.key)
        .collect())
}

fn erasure<'a>(subject: &Subject, ids: &'a [String], scope: &'a ForgetScope) -> Erasure<'a> {
    Erasure {
        job_ids: ids,
        tenant: subject.whole_tenant().then_some(scope),
    }
}

/// Whether a job the ledger knows is the subject's, and where its outputs
/// are. An owner row in scope is enough for a whole tenant; a user or a
/// job id needs the stored outcome (the only record of the user). A job
/// whose owner an earlier forget anonymised counts when its outcome (stored
/// after that forget) names the subject.
fn attribute(subject: &Subject, job: &KnownJob) -> Option<SubjectJob> {
    let tenant = job
        .outcome
        .as_deref()
        .and_then(|o| serde_json::from_slice::<v1::JobResult>(o).ok())
        .and_then(|r| r.tenant);
    if let Some(tenant) = tenant {
        if (job.is_forgotten() || subject.owns(&job.owner)) && subject.covers(&tenant, &job.job_id)
        {
            return Some(SubjectJob {
                org: tenant.org,
                workspace: tenant.workspace,
            });
        }
        return None;
    }
    let by_owner = !job.is_forgotten()
        && subject.owns(&job.owner)
        && subject.user.is_none()
        && subject.job.as_ref().is_none_or(|j| *j == job.job_id);
    let (org, workspace) = job.owner.split_once('/')?;
    by_owner.then(|| SubjectJob {
        org: org.to_string(),
        workspace: workspace.to_string(),
    })
}

/// The tenant and job id a dead letter's body names, if it reads as a job.
/// A body that does not cannot be attributed and is left.
fn letter_job(letter: &DeadLetter) -> Option<(v1::Tenant, String)> {
    let content_type = genfleet_proto::ContentType::from_header(letter.content_type.as_deref());
    let job = genfleet_proto::decode_job(&letter.body, &content_type).ok()?;
    let tenant = job.tenant?;
    let job_id = if job.job_id.is_empty() {
        letter.message_id.clone()?
    } else {
        job.job_id
    };
    Some((tenant, job_id))
}

#[derive(Default)]
struct SpoolFiles {
    /// Files in the folders of workers that are gone.
    stale: u64,
    /// Files of running workers, left.
    in_use: u64,
}

/// Spool files cannot be tied to a job: they are anonymous temporary files
/// (`run-<pid>-<start>/blob-*`) that a running worker deletes when the job
/// that holds them ends. What can outlive the job is the folder of a worker
/// that died (kill -9, OOM), which holds anyone's files until a worker with
/// the same spool folder starts again; forget removes those (the worker's
/// own rule: the folder's pid is not running here) and counts, but leaves,
/// the files of running workers. `count_only` removes nothing.
fn sweep_spool(base: &Path, count_only: bool) -> Result<SpoolFiles> {
    let mut files = SpoolFiles::default();
    let entries = match std::fs::read_dir(base) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(files),
        Err(e) => return Err(e).context(format!("spool folder {}", base.display())),
    };
    for entry in entries.flatten() {
        let Some(pid) = genfleet_worker::services::spool_folder_pid(&entry.file_name()) else {
            continue;
        };
        let count = std::fs::read_dir(entry.path()).map_or(0, |d| d.flatten().count() as u64);
        if genfleet_worker::services::process_alive(pid) {
            files.in_use += count;
            continue;
        }
        files.stale += count;
        if !count_only {
            std::fs::remove_dir_all(entry.path())
                .with_context(|| format!("removing the spool folder {}", entry.path().display()))?;
        }
    }
    Ok(files)
}

fn print_report(subject: &Subject, found: &Found, erased: &Erased, dry_run: bool) {
    let mut who = subject.org.clone();
    if let Some(ws) = &subject.workspace {
        who = format!("{who}/{ws}");
    }
    if subject.user.is_some() {
        who.push_str(" (one user)");
    }
    if let Some(job) = &subject.job {
        who = format!("{who} job {job}");
    }
    if dry_run {
        println!("forget {who}: dry run, nothing removed; a run would remove:");
    } else {
        println!("forget {who}: removed");
    }
    let rows: [(&str, u64); 15] = [
        ("jobs", found.jobs.len() as u64),
        ("outputs", found.outputs.len() as u64),
        (
            "uploads",
            (found.uploads.len() + found.pending_uploads.len()) as u64,
        ),
        ("dead_letters", found.dead_letters as u64),
        ("spool_files", found.spool.stale),
        ("outcomes", erased.outcomes),
        ("provider_submissions", erased.provider_submissions),
        ("attempts", erased.attempts),
        ("cancellations", erased.cancellations),
        ("pending_source_deletions", erased.pending_source_deletions),
        ("job_owners_anonymised", erased.owners_anonymised),
        ("accounts_anonymised", erased.accounts_anonymised),
        ("holds_anonymised", erased.holds_anonymised),
        ("ledger_entries_anonymised", erased.entries_anonymised),
        ("total", 0),
    ];
    let total: u64 = rows[1..14].iter().map(|(_, n)| n).sum();
    for (name, n) in rows {
        let n = if name == "total" { total } else { n };
        println!("  {name:<28}{n}");
    }
    println!("left in place:");
    println!(
        "  {:<28}{}",
        "dead_letters_unattributable", found.dead_letters_unattributable
    );
    println!("  {:<28}{}", "spool_files_in_use", found.spool.in_use);
}
