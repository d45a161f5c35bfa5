//! `[retention]`: how long outputs, job records and dead letters are kept,
//! per organisation, and whether this worker runs the periodic purge.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// Longest window accepted: 100 years. Beyond it a cutoff computed from the
/// clock stops meaning anything.
const MAX_DAYS: u32 = 36_500;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionSection {
    /// Days an output stays in the store (by its last-modified time) before
    /// the purge deletes it. `retention.orgs.<org>.outputs_days` overrides
    /// it for one organisation.
    pub outputs_days: u32,
    /// Days a finished job's records stay in the ledger: its stored result
    /// (signed URLs, user ids), provider request, start count and cancel
    /// request. Credit holds and ledger entries are never purged.
    /// `retention.orgs.<org>.records_days` overrides it. After it, a
    /// redelivered copy of the job would run again, so keep it at least as
    /// long as a job message can live (queues, parks, dead letters).
    pub records_days: u32,
    /// Days a dead letter stays in `genfleet.dead` (it carries the job
    /// message, prompts included). One window for all organisations: the
    /// queue is drained from its oldest end.
    pub dead_letters_days: u32,
    /// Seconds between purges run by this worker; 0 (the default) never
    /// purges here (run `genfleet purge` from a CronJob instead). Several
    /// workers may have it on: one purges at a time (a PostgreSQL advisory
    /// lock), the others skip that round.
    pub purge_interval_seconds: u64,
    /// Seconds between this worker's passes over the source deletions that
    /// failed (a store outage) or whose worker died before doing them; 0
    /// turns the retries off here. Every worker may run it.
    pub source_retry_seconds: u64,
    /// Rows or objects the purge deletes per statement or delete request.
    pub batch_size: u32,
    /// Per-organisation overrides, e.g. `[retention.orgs.acme] outputs_days = 30`.
    pub orgs: BTreeMap<String, OrgRetention>,
}

/// One organisation's windows; unset keys take the `[retention]` value
/// (`records_days` takes the org's `outputs_days` when only that is set).
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct OrgRetention {
    pub outputs_days: Option<u32>,
    pub records_days: Option<u32>,
}

impl Default for RetentionSection {
    fn default() -> Self {
        RetentionSection {
            outputs_days: 180,
            records_days: 180,
            dead_letters_days: 30,
            purge_interval_seconds: 0,
            source_retry_seconds: 60,
            batch_size: 1_000,
            orgs: BTreeMap::new(),
        }
    }
}

impl RetentionSection {
    /// The records window of `org`'s override, when it has one.
    pub fn org_records_days(&self, org: &OrgRetention) -> u32 {
        org.records_days
            .or(org.outputs_days)
            .unwrap_or(self.records_days)
    }

    /// The outputs window of `org`'s override, when it has one.
    pub fn org_outputs_days(&self, org: &OrgRetention) -> u32 {
        org.outputs_days.unwrap_or(self.outputs_days)
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let days = |key: String, value: u32| {
            if value == 0 || value > MAX_DAYS {
                Err(ConfigError::Invalid(format!(
                    "{key} must be 1 to {MAX_DAYS} days, not {value}"
                )))
            } else {
                Ok(())
            }
        };
        days("retention.outputs_days".into(), self.outputs_days)?;
        days("retention.records_days".into(), self.records_days)?;
        days("retention.dead_letters_days".into(), self.dead_letters_days)?;
        if self.batch_size == 0 {
            return Err(ConfigError::Invalid(
                "retention.batch_size must be at least 1".into(),
            ));
        }
        for (org, windows) in &self.orgs {
            if !genfleet_proto::is_valid_tenant_id(org) {
                return Err(ConfigError::Invalid(format!(
                    "retention.orgs: {org:?} is not an organisation id ([A-Za-z0-9_-])"
                )));
            }
            if let Some(d) = windows.outputs_days {
                days(format!("retention.orgs.{org}.outputs_days"), d)?;
            }
            if let Some(d) = windows.records_days {
                days(format!("retention.orgs.{org}.records_days"), d)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_org_overrides() {
        let mut section = RetentionSection::default();
        section.validate().unwrap();
        assert_eq!(
            (section.outputs_days, section.purge_interval_seconds),
            (180, 0)
        );
        let only_outputs = OrgRetention {
            outputs_days: Some(30),
            records_days: None,
        };
        assert_eq!(section.org_outputs_days(&only_outputs), 30);
        assert_eq!(section.org_records_days(&only_outputs), 30);
        assert_eq!(section.org_records_days(&OrgRetention::default()), 180);
        section.orgs.insert("acme".into(), only_outputs);
        section.validate().unwrap();

        for bad in [
            RetentionSection {
                outputs_days: 0,
                ..RetentionSection::default()
            },
            RetentionSection {
                dead_letters_days: MAX_DAYS + 1,
                ..RetentionSection::default()
            },
            RetentionSection {
                batch_size: 0,
                ..RetentionSection::default()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
        let mut bad_org = RetentionSection::default();
        bad_org.orgs.insert(
            "a/b".into(),
            OrgRetention {
                outputs_days: Some(1),
                records_days: None,
            },
        );
        assert!(bad_org.validate().is_err());
        let mut zero = RetentionSection::default();
        zero.orgs.insert(
            "acme".into(),
            OrgRetention {
                outputs_days: None,
                records_days: Some(0),
            },
        );
        let error = zero.validate().unwrap_err().to_string();
        assert!(
            error.contains("retention.orgs.acme.records_days"),
            "{error}"
        );
    }
}
