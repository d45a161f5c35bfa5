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
            job_id: job.job_id().to_string(),
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

pub(crate) fn timestamp_to_system_time(t: &pbjson_types::Timestamp) -> SystemTime {
    let nanos = u32::try_from(t.nanos).unwrap_or(0);
    if t.seconds >= 0 {
        SystemTime::UNIX_EPOCH + Duration::new(t.seconds as u64, nanos)
    } else {
        SystemTime::UNIX_EPOCH
    }
}
