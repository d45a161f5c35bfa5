//! Reserve: the job's credits are held once its inputs are known to be
//! usable, so a bad upload never touches the customer's balance. The hold
//! is keyed by job id, so a redelivery holds nothing twice.

use std::time::Duration;

use genfleet_proto::{v1, ValidJob};

use super::progress::Tracker;
use crate::failure::Stop;
use crate::services::Services;

/// A hold lives this long when the job names no TTL; the sweeper returns
/// the credits of a hold whose worker died.
const DEFAULT_HOLD_TTL: Duration = Duration::from_secs(3600);

pub(crate) async fn reserve(
    services: &Services,
    job: &ValidJob,
    tracker: &mut Tracker<'_>,
) -> Result<(), Stop> {
    tracker.begin(v1::Stage::Reserve, 0.3).await;
    let amount = job.credit_amount();
    if amount > 0 {
        let ttl = job
            .job()
            .credits
            .as_ref()
            .and_then(|c| c.hold_ttl.as_ref())
            .map_or(DEFAULT_HOLD_TTL, |d| {
                // The contract's checks bound it (a week at most); the
                // conversion stays total regardless.
                let seconds = u64::try_from(d.seconds).unwrap_or(0);
                let nanos = u32::try_from(d.nanos).unwrap_or(0) % 1_000_000_000;
                Duration::new(seconds, nanos)
            });
        services
            .ledger
            .reserve(job.job_id(), &job.credit_account(), amount, ttl)
            .await?;
    }
    Ok(())
}
