//! Stage boundaries: timings for the result, progress events for whoever
//! listens, stage histograms for Prometheus, and the in-flight gauge.

use std::time::{Duration, Instant, SystemTime};

use genfleet_broker::{Outgoing, Publisher};
use genfleet_proto::{pbjson_types, v1, ValidJob};
use tracing::debug;

use crate::services::Services;

/// Counts a job in `genfleet_jobs_in_flight` until dropped, also when the
/// job panics.
pub(crate) struct InFlight<'a>(&'a prometheus::IntGauge);

impl<'a> InFlight<'a> {
    pub(crate) fn enter(gauge: &'a prometheus::IntGauge) -> InFlight<'a> {
        gauge.inc();
        InFlight(gauge)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Publishes a progress event at each stage boundary and times the stages.
pub(crate) struct Tracker<'a> {
    services: &'a Services,
    publisher: &'a Publisher,
    job_id: String,
    tenant: v1::Tenant,
    current: Option<(v1::Stage, Instant)>,
    timings: Vec<v1::StageTiming>,
}

impl<'a> Tracker<'a> {
    pub(crate) fn new(
        services: &'a Services,
        publisher: &'a Publisher,
        job: &ValidJob,
    ) -> Tracker<'a> {
        Tracker {
            services,
            publisher,
            job_id: job.job_id_as_sent().to_string(),
            tenant: job.tenant().clone(),
            current: None,
            timings: Vec::new(),
        }
    }

    pub(crate) async fn begin(&mut self, stage: v1::Stage, progress: f32) {
        self.finish();
        self.current = Some((stage, Instant::now()));
        let event = v1::JobEvent {
            job_id: self.job_id.clone(),
            stage: stage as i32,
            progress,
            time: Some(system_time_to_timestamp(SystemTime::now())),
        };
        let body = genfleet_proto::encode_json(&event);
        let outgoing = Outgoing {
            content_type: Some("application/json".into()),
            message_id: Some(format!("{}.{}", self.job_id, stage.label())),
            ..Default::default()
        };
        let key = genfleet_proto::event_routing_key(Some(&self.tenant), stage);
        // Events are advisory: a lost one must not fail or delay the job.
        if let Err(e) = self
            .publisher
            .publish(genfleet_broker::EVENTS_EXCHANGE, &key, &body, &outgoing)
            .await
        {
            debug!(error = %e, "progress event not published");
        }
    }

    /// Ends the current stage's timing; the stage timings so far.
    pub(crate) fn finish(&mut self) {
        if let Some((stage, since)) = self.current.take() {
            let elapsed = since.elapsed();
            self.services
                .metrics
                .stage_duration_seconds
                .with_label_values(&[stage.label()])
                .observe(elapsed.as_secs_f64());
            self.timings.push(v1::StageTiming {
                stage: stage.label().to_string(),
                duration: Some(pbjson_types::Duration {
                    seconds: i64::try_from(elapsed.as_secs()).unwrap_or(i64::MAX),
                    nanos: i32::try_from(elapsed.subsec_nanos()).unwrap_or(0),
                }),
            });
        }
    }

    /// The timings of the finished stages, for the result.
    pub(crate) fn take_timings(&mut self) -> Vec<v1::StageTiming> {
        self.finish();
        std::mem::take(&mut self.timings)
    }
}

pub(crate) fn system_time_to_timestamp(t: SystemTime) -> pbjson_types::Timestamp {
    let since = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    pbjson_types::Timestamp {
        seconds: i64::try_from(since.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(since.subsec_nanos()).unwrap_or(0),
    }
}

/// A contract timestamp as a `SystemTime`. The contract's checks keep it
/// between 1970 and 9999; out-of-range values still convert without a
/// panic (before 1970 is the epoch, beyond what the clock holds is the
/// furthest time it does).
pub(crate) fn timestamp_to_system_time(t: &pbjson_types::Timestamp) -> SystemTime {
    let Ok(seconds) = u64::try_from(t.seconds) else {
        return SystemTime::UNIX_EPOCH;
    };
    let nanos = u32::try_from(t.nanos)
        .ok()
        .filter(|n| *n < 1_000_000_000)
        .unwrap_or(0);
    SystemTime::UNIX_EPOCH
        .checked_add(Duration::new(seconds, nanos))
        .unwrap_or_else(far_future)
}

/// Unix seconds from a header this fleet wrote (`genfleet-parked-at`,
/// `genfleet-deferred-at`). A publisher can write them too, so a value
/// past now is read as now (it cannot buy a job more time) and none
/// overflows.
pub(crate) fn header_time(unix_seconds: u64) -> SystemTime {
    let now = SystemTime::now();
    SystemTime::UNIX_EPOCH
        .checked_add(Duration::from_secs(unix_seconds))
        .filter(|t| *t <= now)
        .unwrap_or(now)
}

/// The furthest time this platform's clock can hold, within reason.
fn far_future() -> SystemTime {
    // 10,000 years: far past any deadline, and representable everywhere
    // Rust runs.
    SystemTime::UNIX_EPOCH
        .checked_add(Duration::from_secs(253_402_300_799))
        .unwrap_or_else(SystemTime::now)
}

#[cfg(test)]
mod time_tests {
    use super::*;

    #[test]
    fn hostile_times_convert_without_panicking() {
        for (seconds, nanos) in [
            (i64::MAX, 0),
            (i64::MAX, i32::MAX),
            (i64::MIN, 0),
            (-1, -1),
            (1, 2_000_000_000),
            (253_402_300_799, 999_999_999),
        ] {
            let t = timestamp_to_system_time(&pbjson_types::Timestamp { seconds, nanos });
            assert!(t >= SystemTime::UNIX_EPOCH);
        }
        let now = SystemTime::now();
        assert!(header_time(u64::MAX) >= now);
        assert!(header_time(u64::MAX) <= SystemTime::now());
        assert_eq!(header_time(0), SystemTime::UNIX_EPOCH);
    }
}
