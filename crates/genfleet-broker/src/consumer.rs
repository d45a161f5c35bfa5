//! Consuming jobs with manual acks. A delivery is acked by the worker only
//! after everything the job produced is safe; until then the broker keeps it
//! and redelivers it if this consumer's channel dies.

use futures_util::StreamExt as _;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Channel, Connection, Consumer};

use crate::BrokerError;

pub struct JobConsumer {
    channel: Channel,
    consumer: Consumer,
    tag: String,
}

impl JobConsumer {
    pub(crate) async fn open(
        connection: &Connection,
        queue: &str,
        prefetch: u16,
        tag: &str,
    ) -> Result<JobConsumer, BrokerError> {
        let channel = connection.create_channel().await?;
        // QoS before consume: otherwise the broker may push the whole queue
        // at a consumer that has not yet said how much it can hold.
        channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await?;
        let consumer = channel
            .basic_consume(
                queue.into(),
                tag.into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok(JobConsumer {
            channel,
            consumer,
            tag: tag.to_string(),
        })
    }

    /// The next delivery; `None` when the consumer was cancelled or its
    /// channel closed.
    ///
    /// # Cancel safety
    /// Cancel safe: a delivery not yet returned stays in the stream.
    pub async fn next(&mut self) -> Option<Result<Incoming, BrokerError>> {
        let item = self.consumer.next().await?;
        Some(item.map(Incoming::new).map_err(BrokerError::from))
    }

    /// Stops new deliveries (basic.cancel). Unacked deliveries stay with this
    /// channel until acked, or go back to the queue when it closes.
    pub async fn cancel(&self) {
        let _ = self
            .channel
            .basic_cancel(self.tag.as_str().into(), BasicCancelOptions::default())
            .await;
    }

    pub async fn close(&self) {
        let _ = self.channel.close(200, "consumer closed".into()).await;
    }
}

/// One delivery of a job message.
pub struct Incoming {
    delivery: lapin::message::Delivery,
}

impl Incoming {
    fn new(delivery: lapin::message::Delivery) -> Incoming {
        Incoming { delivery }
    }

    pub fn body(&self) -> &[u8] {
        &self.delivery.data
    }

    pub(crate) fn properties(&self) -> &lapin::BasicProperties {
        &self.delivery.properties
    }

    pub fn routing_key(&self) -> &str {
        self.delivery.routing_key.as_str()
    }

    pub fn redelivered(&self) -> bool {
        self.delivery.redelivered
    }

    pub fn content_type(&self) -> Option<&str> {
        self.delivery
            .properties
            .content_type()
            .as_ref()
            .map(ShortString::as_str)
    }

    pub fn message_id(&self) -> Option<&str> {
        self.delivery
            .properties
            .message_id()
            .as_ref()
            .map(ShortString::as_str)
    }

    pub fn reply_to(&self) -> Option<&str> {
        self.delivery
            .properties
            .reply_to()
            .as_ref()
            .map(ShortString::as_str)
            .filter(|s| !s.is_empty())
    }

    /// A header's value if it is a string.
    pub fn header(&self, name: &str) -> Option<String> {
        let headers = self.delivery.properties.headers().as_ref()?;
        match headers.inner().get(name)? {
            AMQPValue::LongString(s) => Some(s.to_string()),
            AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
            _ => None,
        }
    }

    /// How often infrastructure failures sent this job through a retry
    /// queue ([`crate::HEADER_REQUEUES`]; 0 when absent or unreadable).
    pub fn requeues(&self) -> u32 {
        self.header(crate::HEADER_REQUEUES)
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }

    /// How often this job was parked while a provider rendered it
    /// ([`crate::HEADER_PARKS`]; 0 when absent or unreadable).
    pub fn parks(&self) -> u32 {
        self.header(crate::HEADER_PARKS)
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }

    /// Unix time (seconds) the job was first parked, if it was.
    pub fn parked_at(&self) -> Option<u64> {
        self.header(crate::HEADER_PARKED_AT)
            .and_then(|n| n.parse().ok())
    }

    /// Unix time (seconds) the job was first deferred, if it was
    /// ([`crate::HEADER_DEFERRED_AT`]).
    pub fn deferred_at(&self) -> Option<u64> {
        self.header(crate::HEADER_DEFERRED_AT)
            .and_then(|n| n.parse().ok())
    }

    /// How many times a quorum queue has delivered this message before
    /// (`x-delivery-count`; absent on the first delivery).
    pub fn delivery_count(&self) -> u64 {
        let Some(headers) = self.delivery.properties.headers().as_ref() else {
            return 0;
        };
        match headers.inner().get("x-delivery-count") {
            Some(AMQPValue::LongLongInt(n)) => u64::try_from(*n).unwrap_or(0),
            Some(AMQPValue::LongInt(n)) => u64::try_from(*n).unwrap_or(0),
            Some(AMQPValue::LongUInt(n)) => u64::from(*n),
            Some(AMQPValue::ShortInt(n)) => u64::try_from(*n).unwrap_or(0),
            Some(AMQPValue::ShortShortInt(n)) => u64::try_from(*n).unwrap_or(0),
            _ => 0,
        }
    }

    /// Acknowledges: the broker forgets the message.
    ///
    /// # Errors
    /// The channel died; the broker will redeliver the message.
    pub async fn ack(&self) -> Result<(), BrokerError> {
        self.delivery
            .acker
            .ack(BasicAckOptions::default())
            .await
            .map_err(BrokerError::from)
            .and_then(settled)
    }

    /// Returns the message to its queue (`requeue`) or to the dead-letter
    /// exchange.
    ///
    /// # Errors
    /// The channel died; the broker will redeliver the message.
    pub async fn nack(&self, requeue: bool) -> Result<(), BrokerError> {
        self.delivery
            .acker
            .nack(BasicNackOptions {
                requeue,
                ..Default::default()
            })
            .await
            .map_err(BrokerError::from)
            .and_then(settled)
    }
}

/// lapin answers `Ok(false)` when the delivery's channel is gone (or it was
/// settled already): the broker will redeliver, which the caller must know.
pub(crate) fn settled(sent: bool) -> Result<(), BrokerError> {
    if sent {
        Ok(())
    } else {
        Err(BrokerError::Channel(
            "delivery can no longer be settled: its channel is closed".into(),
        ))
    }
}
