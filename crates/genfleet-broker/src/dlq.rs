//! Dead letters in [`DEAD_QUEUE`]: peek at them, replay them to their job
//! queue, or delete them.
//!
//! Every operation walks the queue the same way: `basic.get` without
//! auto-ack on one dedicated channel, deciding per message whether to ack it
//! (after a confirmed republish, or for a purge) or to leave it unacked; then
//! the channel is closed and RabbitMQ puts every message left unacked back in
//! the queue. A crash at any point therefore loses nothing: an unacked
//! message goes back, and a message is acked only after its copy was
//! confirmed. A replayed job may then exist twice (replayed, and still dead
//! if the ack was lost), which is harmless because jobs are idempotent on
//! `job_id`.
//!
//! This module deliberately knows nothing of the job contract: it deals in
//! bytes and header strings. Reading the job out of a body is the caller's.
//!
//! # Concurrency caveat
//! While a walk holds messages unacked, other walks cannot see them: a
//! `replay --all` that runs beside a `list` skips what the list holds at that
//! moment (run it again). Messages returned by closing the channel count as
//! redeliveries (`x-delivery-count` grows); `genfleet.dead` has no delivery
//! limit, so that is harmless here, and the header is dropped on replay.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lapin::options::{BasicAckOptions, BasicGetOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel};

use crate::consumer::settled;
use crate::{Broker, Publisher};
use crate::{BrokerError, JobClass, Lane, DEAD_QUEUE, HEADER_ERROR, HEADER_REASON, JOBS_EXCHANGE};

/// Which dead letters an operation touches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    All,
    /// Messages whose `message_id` (the job id) is one of these. Every
    /// message with a listed id is selected: one job dead-lettered twice
    /// appears twice. Messages without a message id are only reached by
    /// [`Selector::All`].
    Ids(Vec<String>),
}

impl Selector {
    pub fn matches(&self, message_id: Option<&str>) -> bool {
        match self {
            Selector::All => true,
            Selector::Ids(ids) => message_id.is_some_and(|m| ids.iter().any(|id| id == m)),
        }
    }

    /// The listed ids that no message in `seen` had.
    fn missing(&self, seen: &[String]) -> Vec<String> {
        match self {
            Selector::All => Vec::new(),
            Selector::Ids(ids) => ids
                .iter()
                .filter(|id| !seen.contains(id))
                .cloned()
                .collect(),
        }
    }
}

/// A dead letter as read, without removing it from the queue.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// The job id, when the publisher set one.
    pub message_id: Option<String>,
    /// The routing key it was published with on [`JOBS_EXCHANGE`]; a replay
    /// uses it.
    pub routing_key: String,
    /// The queue RabbitMQ dead-lettered it from (first `x-death` entry);
    /// `None` for dead letters the worker published itself.
    pub queue: Option<String>,
    /// Stable code: `x-genfleet-error`, or RabbitMQ's `x-death` reason
    /// (`rejected`, `expired`, `maxlen`, `delivery_limit`).
    pub error: String,
    /// Human reason: `x-genfleet-reason`, or a sentence built from `x-death`.
    pub reason: String,
    /// Every header, values rendered as text, in name order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub content_type: Option<String>,
}

impl DeadLetter {
    /// The job class its routing key names, if it names one: only those can
    /// be replayed.
    pub fn job_class(&self) -> Option<(JobClass, Lane)> {
        JobClass::parse_routing_key(&self.routing_key)
    }

    fn from_delivery(delivery: &lapin::message::Delivery) -> DeadLetter {
        let properties = &delivery.properties;
        let table = properties.headers().clone().unwrap_or_default();
        let headers = table.inner();
        let string = |name: &str| headers.get(name).and_then(as_string);
        let death = first_death(&table);

        let mut routing_key = delivery.routing_key.as_str().to_string();
        let (error, reason, queue) = match (string(HEADER_ERROR), &death) {
            (Some(error), _) => (error, string(HEADER_REASON).unwrap_or_default(), None),
            (None, Some(death)) => {
                if let Some(key) = &death.routing_key {
                    routing_key.clone_from(key);
                }
                let reason = format!(
                    "RabbitMQ dead-lettered it from {} ({}, {} time(s))",
                    death.queue, death.reason, death.count
                );
                (death.reason.clone(), reason, Some(death.queue.clone()))
            }
            (None, None) => (
                "unknown".to_string(),
                string(HEADER_REASON).unwrap_or_default(),
                None,
            ),
        };
        DeadLetter {
            message_id: properties.message_id().as_ref().map(|m| m.to_string()),
            routing_key,
            queue,
            error,
            reason,
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), render(v)))
                .collect(),
            body: delivery.data.clone(),
            content_type: properties.content_type().as_ref().map(|c| c.to_string()),
        }
    }
}

/// What a replay did. `replayed` holds the message ids (`-` when a message
/// had none) of messages that are now in their job queue and gone from
/// [`DEAD_QUEUE`].
#[derive(Debug, Default)]
pub struct ReplayReport {
    pub replayed: Vec<String>,
    /// Selected but left in the queue, with the reason.
    pub refused: Vec<Refused>,
    /// Ids asked for that no dead letter had.
    pub missing: Vec<String>,
    /// The error that stopped the replay early; the messages not yet
    /// replayed are all still in [`DEAD_QUEUE`].
    pub stopped: Option<BrokerError>,
}

#[derive(Debug, Clone)]
pub struct Refused {
    pub message_id: Option<String>,
    pub routing_key: String,
    pub why: String,
}

/// Header the worker sets on every dead letter it publishes: when it was
/// dead-lettered, in Unix seconds. The retention purge reads a dead
/// letter's age from it (or, for messages RabbitMQ dead-lettered itself,
/// from the `x-death` time).
pub const HEADER_DEAD_AT: &str = "x-genfleet-dead-at";

/// What [`Broker::purge_dead_letters_older_than`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct AgePurgeReport {
    /// Dead letters older than the cutoff, acked (or, dry, counted).
    pub purged: usize,
    /// Dead letters passed over because nothing tells their age (no
    /// [`HEADER_DEAD_AT`], no `x-death` time, no timestamp property): the
    /// broker's message-ttl policy is their backstop.
    pub undated: usize,
}

#[derive(Debug, Default)]
pub struct PurgeReport {
    pub purged: usize,
    /// Ids asked for that no dead letter had.
    pub missing: Vec<String>,
}

impl Broker {
    /// Up to `limit` dead letters that `selector` matches, in queue order.
    /// Nothing is removed: the messages return to the queue when the walk's
    /// channel closes.
    ///
    /// # Errors
    /// The queue does not exist or the channel fails; nothing is lost either
    /// way.
    pub async fn dead_letters(
        &self,
        selector: &Selector,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, BrokerError> {
        let mut walk = Walk::open(self).await?;
        let result = async {
            let mut found = Vec::new();
            while found.len() < limit {
                let Some(delivery) = walk.next().await? else {
                    break;
                };
                let letter = DeadLetter::from_delivery(&delivery);
                if selector.matches(letter.message_id.as_deref()) {
                    found.push(letter);
                }
            }
            Ok(found)
        }
        .await;
        walk.close().await;
        result
    }

    /// Republishes each selected dead letter to [`JOBS_EXCHANGE`] under its
    /// original routing key, with its original properties minus the
    /// dead-letter headers, waits for the broker's confirm (mandatory: it
    /// must reach a queue), and only then acks it from [`DEAD_QUEUE`].
    /// Messages whose routing key is not a job class are left, and reported.
    ///
    /// # Errors
    /// The walk could not start. Failures during the walk stop it and are
    /// reported in [`ReplayReport::stopped`], beside what was done already.
    pub async fn replay_dead_letters(
        &self,
        selector: &Selector,
    ) -> Result<ReplayReport, BrokerError> {
        let publisher = self.publisher().await?;
        let mut walk = match Walk::open(self).await {
            Ok(walk) => walk,
            Err(e) => {
                publisher.close().await;
                return Err(e);
            }
        };
        let mut report = ReplayReport::default();
        let mut seen = Vec::new();
        if let Err(e) = replay(&mut walk, &publisher, selector, &mut report, &mut seen).await {
            report.stopped = Some(e);
        }
        walk.close().await;
        publisher.close().await;
        report.missing = selector.missing(&seen);
        Ok(report)
    }

    /// Deletes (acks) every selected dead letter.
    ///
    /// # Errors
    /// The queue does not exist or the channel fails; what was acked before
    /// is deleted, the rest stays.
    pub async fn purge_dead_letters(
        &self,
        selector: &Selector,
    ) -> Result<PurgeReport, BrokerError> {
        let mut walk = Walk::open(self).await?;
        let mut seen = Vec::new();
        let result: Result<usize, BrokerError> = async {
            let mut purged = 0;
            while let Some(delivery) = walk.next().await? {
                let id = delivery
                    .properties
                    .message_id()
                    .as_ref()
                    .map(|m| m.to_string());
                if selector.matches(id.as_deref()) {
                    ack(&delivery).await?;
                    purged += 1;
                    seen.extend(id);
                }
            }
            Ok(purged)
        }
        .await;
        walk.close().await;
        Ok(PurgeReport {
            purged: result?,
            missing: selector.missing(&seen),
        })
    }
}

impl Broker {
    /// Deletes (acks) the dead letters that were dead-lettered before
    /// `cutoff`, from the head of [`DEAD_QUEUE`]: dead letters arrive in
    /// the order they died, so the walk stops at the first one that is
    /// younger and leaves it and everything behind it. Undated letters are
    /// passed over (left) without stopping. With `dry_run`, nothing is
    /// acked: the same letters are counted and all return to the queue.
    ///
    /// # Errors
    /// The queue does not exist or the channel fails; what was acked before
    /// is deleted, the rest stays (run again).
    pub async fn purge_dead_letters_older_than(
        &self,
        cutoff: SystemTime,
        dry_run: bool,
    ) -> Result<AgePurgeReport, BrokerError> {
        let mut walk = Walk::open(self).await?;
        let mut report = AgePurgeReport::default();
        let result: Result<(), BrokerError> = async {
            while let Some(delivery) = walk.next().await? {
                match dead_at(&delivery.properties) {
                    None => report.undated += 1,
                    Some(at) if at < cutoff => {
                        if !dry_run {
                            ack(&delivery).await?;
                        }
                        report.purged += 1;
                    }
                    // Closing the walk returns it (and all left unacked)
                    // to the queue.
                    Some(_) => break,
                }
            }
            Ok(())
        }
        .await;
        walk.close().await;
        result.map(|()| report)
    }
}

/// When a dead letter died: the worker's [`HEADER_DEAD_AT`], else the
/// newest `x-death` entry's time (RabbitMQ's own dead-lettering), else the
/// message's timestamp property.
pub fn dead_at(properties: &BasicProperties) -> Option<SystemTime> {
    let from_secs = |secs: u64| UNIX_EPOCH.checked_add(Duration::from_secs(secs));
    if let Some(headers) = properties.headers() {
        let headers_map = headers.inner();
        if let Some(secs) = headers_map
            .get(HEADER_DEAD_AT)
            .and_then(as_string)
            .and_then(|s| s.trim().parse::<u64>().ok())
        {
            return from_secs(secs);
        }
        if let Some(AMQPValue::FieldArray(deaths)) = headers_map.get("x-death") {
            if let Some(AMQPValue::FieldTable(entry)) = deaths.as_slice().first() {
                if let Some(AMQPValue::Timestamp(secs)) = entry.inner().get("time") {
                    return from_secs(*secs);
                }
            }
        }
    }
    properties.timestamp().and_then(from_secs)
}

impl Broker {
    /// Deletes (acks) every dead letter for which `select` says yes, and
    /// leaves the others in the queue, in their order: one walk holds every
    /// message it looked at unacked and returns the unselected ones together
    /// when its channel closes. The walk looks at the messages ready when it
    /// began, so it ends however many arrive meanwhile. Returns how many
    /// were deleted.
    ///
    /// # Errors
    /// The queue does not exist or the channel fails; what was acked before
    /// is deleted, the rest stays.
    pub async fn purge_dead_letters_where<F>(&self, mut select: F) -> Result<usize, BrokerError>
    where
        F: FnMut(&DeadLetter) -> bool,
    {
        let mut walk = Walk::open(self).await?;
        let result: Result<usize, BrokerError> = async {
            let mut purged = 0;
            while let Some(delivery) = walk.next().await? {
                if select(&DeadLetter::from_delivery(&delivery)) {
                    ack(&delivery).await?;
                    purged += 1;
                }
            }
            Ok(purged)
        }
        .await;
        walk.close().await;
        result
    }
}

async fn replay(
    walk: &mut Walk,
    publisher: &Publisher,
    selector: &Selector,
    report: &mut ReplayReport,
    seen: &mut Vec<String>,
) -> Result<(), BrokerError> {
    while let Some(delivery) = walk.next().await? {
        let letter = DeadLetter::from_delivery(&delivery);
        if !selector.matches(letter.message_id.as_deref()) {
            continue;
        }
        seen.extend(letter.message_id.clone());
        let Some((class, lane)) = letter.job_class() else {
            report.refused.push(Refused {
                why: format!(
                    "routing key {:?} is not a job class and lane (cpu, gpu, remote, optionally .high or .low)",
                    letter.routing_key
                ),
                message_id: letter.message_id,
                routing_key: letter.routing_key,
            });
            continue;
        };
        publisher
            .publish_properties(
                JOBS_EXCHANGE,
                &class.lane_routing_key(lane),
                &delivery.data,
                replay_properties(&delivery.properties),
                true,
            )
            .await?;
        // Confirmed: the job queue holds the copy, so the dead letter may go.
        ack(&delivery).await?;
        report
            .replayed
            .push(letter.message_id.unwrap_or_else(|| "-".to_string()));
    }
    Ok(())
}

/// Headers a dead letter gained on its way to [`DEAD_QUEUE`]; a replayed job
/// must look like a fresh one, or the worker would count old deliveries.
fn is_dead_letter_header(name: &str) -> bool {
    name == HEADER_ERROR
        || name == HEADER_REASON
        || name == "x-death"
        || name == "x-delivery-count"
        || name.starts_with("x-first-death-")
        || name.starts_with("x-last-death-")
}

fn replay_properties(original: &BasicProperties) -> BasicProperties {
    let Some(headers) = original.headers() else {
        return original.clone();
    };
    let mut kept = FieldTable::default();
    for (k, v) in headers.inner() {
        if !is_dead_letter_header(k.as_str()) {
            kept.insert(k.clone(), v.clone());
        }
    }
    original.clone().with_headers(kept)
}

async fn ack(delivery: &lapin::message::Delivery) -> Result<(), BrokerError> {
    delivery
        .acker
        .ack(BasicAckOptions::default())
        .await
        .map_err(BrokerError::from)
        .and_then(settled)
}

/// One pass over [`DEAD_QUEUE`] on a channel of its own.
struct Walk {
    channel: Channel,
    /// Messages ready when the walk began. The walk stops there, so dead
    /// letters arriving meanwhile cannot keep it going forever.
    remaining: u32,
}

impl Walk {
    async fn open(broker: &Broker) -> Result<Walk, BrokerError> {
        let channel = broker.connection.create_channel().await?;
        let declared = channel
            .queue_declare(
                DEAD_QUEUE.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await;
        match declared {
            Ok(declared) => Ok(Walk {
                channel,
                remaining: declared.message_count(),
            }),
            Err(e) => {
                let _ = channel.close(200, "dead letter walk failed".into()).await;
                Err(e.into())
            }
        }
    }

    /// The next message, unacked; `None` at the end of the walk.
    async fn next(&mut self) -> Result<Option<lapin::message::Delivery>, BrokerError> {
        if self.remaining == 0 {
            return Ok(None);
        }
        self.remaining -= 1;
        let message = self
            .channel
            .basic_get(DEAD_QUEUE.into(), BasicGetOptions { no_ack: false })
            .await?;
        Ok(message.map(|m| m.delivery))
    }

    /// Closing the channel returns every message still unacked to the queue.
    async fn close(self) {
        let _ = self
            .channel
            .close(200, "dead letter walk done".into())
            .await;
    }
}

/// The most recent `x-death` entry (RabbitMQ puts it first).
struct Death {
    queue: String,
    reason: String,
    count: i64,
    routing_key: Option<String>,
}

fn first_death(headers: &FieldTable) -> Option<Death> {
    let AMQPValue::FieldArray(deaths) = headers.inner().get("x-death")? else {
        return None;
    };
    let AMQPValue::FieldTable(entry) = deaths.as_slice().first()? else {
        return None;
    };
    let entry = entry.inner();
    let field = |name: &str| entry.get(name).and_then(as_string);
    let routing_key = match entry.get("routing-keys") {
        Some(AMQPValue::FieldArray(keys)) => keys.as_slice().first().and_then(as_string),
        _ => None,
    };
    Some(Death {
        queue: field("queue").unwrap_or_else(|| "?".to_string()),
        reason: field("reason").unwrap_or_else(|| "unknown".to_string()),
        count: entry.get("count").and_then(as_integer).unwrap_or(1),
        routing_key,
    })
}

fn as_string(value: &AMQPValue) -> Option<String> {
    match value {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
        _ => None,
    }
}

fn as_integer(value: &AMQPValue) -> Option<i64> {
    match value {
        AMQPValue::ShortShortInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortShortUInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortUInt(n) => Some(i64::from(*n)),
        AMQPValue::LongInt(n) => Some(i64::from(*n)),
        AMQPValue::LongUInt(n) => Some(i64::from(*n)),
        AMQPValue::LongLongInt(n) => Some(*n),
        _ => None,
    }
}

/// A header value as text; tables and arrays (`x-death`) in brace and
/// bracket notation.
fn render(value: &AMQPValue) -> String {
    if let Some(s) = as_string(value) {
        return s;
    }
    if let Some(n) = as_integer(value) {
        return n.to_string();
    }
    match value {
        AMQPValue::Boolean(b) => b.to_string(),
        AMQPValue::Float(f) => f.to_string(),
        AMQPValue::Double(f) => f.to_string(),
        AMQPValue::Timestamp(t) => t.to_string(),
        AMQPValue::ByteArray(bytes) => format!("<{} bytes>", bytes.as_slice().len()),
        AMQPValue::Void => String::new(),
        AMQPValue::FieldArray(items) => {
            let items: Vec<String> = items.as_slice().iter().map(render).collect();
            format!("[{}]", items.join(", "))
        }
        AMQPValue::FieldTable(table) => {
            let fields: Vec<String> = table
                .inner()
                .iter()
                .map(|(k, v)| format!("{k}: {}", render(v)))
                .collect();
            format!("{{{}}}", fields.join(", "))
        }
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selector_matches_ids_only_when_present() {
        let ids = Selector::Ids(vec!["a".into(), "b".into()]);
        assert!(ids.matches(Some("a")));
        assert!(!ids.matches(Some("c")));
        assert!(!ids.matches(None));
        assert!(Selector::All.matches(None));
        assert_eq!(ids.missing(&["b".to_string()]), vec!["a".to_string()]);
    }

    #[test]
    fn replay_drops_only_dead_letter_headers() {
        let mut headers = FieldTable::default();
        for name in [
            HEADER_ERROR,
            HEADER_REASON,
            "x-death",
            "x-delivery-count",
            "x-first-death-queue",
            "traceparent",
        ] {
            headers.insert(name.into(), AMQPValue::LongString("v".into()));
        }
        let properties = BasicProperties::default()
            .with_headers(headers)
            .with_delivery_mode(2);
        let replayed = replay_properties(&properties);
        let kept: Vec<String> = replayed
            .headers()
            .as_ref()
            .unwrap()
            .inner()
            .keys()
            .map(|k| k.to_string())
            .collect();
        assert_eq!(kept, vec!["traceparent".to_string()]);
        assert_eq!(*replayed.delivery_mode(), Some(2));
    }

    #[test]
    fn a_dead_letters_age_comes_from_our_header_then_x_death_then_the_timestamp() {
        let at = |secs: u64| Some(UNIX_EPOCH + Duration::from_secs(secs));
        let mut ours = FieldTable::default();
        ours.insert(HEADER_DEAD_AT.into(), AMQPValue::LongString("1000".into()));
        let mut entry = FieldTable::default();
        entry.insert("time".into(), AMQPValue::Timestamp(2000));
        ours.insert(
            "x-death".into(),
            AMQPValue::FieldArray(vec![AMQPValue::FieldTable(entry.clone())].into()),
        );
        let p = BasicProperties::default().with_timestamp(3000);
        assert_eq!(dead_at(&p.clone().with_headers(ours)), at(1000));
        let mut death = FieldTable::default();
        death.insert(
            "x-death".into(),
            AMQPValue::FieldArray(vec![AMQPValue::FieldTable(entry)].into()),
        );
        assert_eq!(dead_at(&p.clone().with_headers(death)), at(2000));
        assert_eq!(dead_at(&p), at(3000));
        let mut garbage = FieldTable::default();
        garbage.insert(HEADER_DEAD_AT.into(), AMQPValue::LongString("soon".into()));
        assert_eq!(
            dead_at(&BasicProperties::default().with_headers(garbage)),
            None
        );
    }

    #[test]
    fn x_death_is_read_and_rendered() {
        let mut entry = FieldTable::default();
        entry.insert(
            "queue".into(),
            AMQPValue::LongString("genfleet.jobs.cpu".into()),
        );
        entry.insert("reason".into(), AMQPValue::LongString("rejected".into()));
        entry.insert("count".into(), AMQPValue::LongLongInt(1));
        entry.insert(
            "routing-keys".into(),
            AMQPValue::FieldArray(vec![AMQPValue::LongString("cpu".into())].into()),
        );
        let mut headers = FieldTable::default();
        headers.insert(
            "x-death".into(),
            AMQPValue::FieldArray(vec![AMQPValue::FieldTable(entry)].into()),
        );
        let death = first_death(&headers).unwrap();
        assert_eq!(
            (death.queue.as_str(), death.reason.as_str(), death.count),
            ("genfleet.jobs.cpu", "rejected", 1)
        );
        assert_eq!(death.routing_key.as_deref(), Some("cpu"));
        assert_eq!(
            render(headers.inner().get("x-death").unwrap()),
            "[{count: 1, queue: genfleet.jobs.cpu, reason: rejected, routing-keys: [cpu]}]"
        );
    }
}
