//! Publishing with publisher confirms: a publish returns only once the broker
//! has taken responsibility for the message, which is what lets the worker
//! ack the job afterwards without ever losing its result.

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection};

use crate::{BrokerError, Incoming};

/// What to publish, apart from the exchange, routing key and body.
#[derive(Debug, Clone, Default)]
pub struct Outgoing {
    pub content_type: Option<String>,
    pub message_id: Option<String>,
    pub correlation_id: Option<String>,
    pub reply_to: Option<String>,
    /// String headers (`x-genfleet-error`, `traceparent`, ...).
    pub headers: Vec<(String, String)>,
    /// Delivery mode 2: survives a broker restart. Events are transient.
    pub persistent: bool,
}

pub struct Publisher {
    channel: Channel,
}

impl Publisher {
    pub(crate) async fn open(connection: &Connection) -> Result<Publisher, BrokerError> {
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Publisher { channel })
    }

    pub fn is_open(&self) -> bool {
        self.channel.status().connected()
    }

    /// Publishes and waits for the broker's confirm.
    ///
    /// # Errors
    /// [`BrokerError::Nacked`] when the broker refuses the message,
    /// [`BrokerError::Channel`] when the channel or connection fails before
    /// the confirm arrives (the message may or may not have been routed: the
    /// caller must not ack the job it belongs to).
    ///
    /// # Cancel safety
    /// Not cancel safe: dropping the future after the publish was written
    /// leaves the message's fate unknown, as above.
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        outgoing: &Outgoing,
    ) -> Result<(), BrokerError> {
        let mut properties = BasicProperties::default();
        if let Some(v) = &outgoing.content_type {
            properties = properties.with_content_type(ShortString::from(v.as_str()));
        }
        if let Some(v) = &outgoing.message_id {
            properties = properties.with_message_id(ShortString::from(v.as_str()));
        }
        if let Some(v) = &outgoing.correlation_id {
            properties = properties.with_correlation_id(ShortString::from(v.as_str()));
        }
        if let Some(v) = &outgoing.reply_to {
            properties = properties.with_reply_to(ShortString::from(v.as_str()));
        }
        if outgoing.persistent {
            properties = properties.with_delivery_mode(2);
        }
        if !outgoing.headers.is_empty() {
            let mut table = FieldTable::default();
            for (k, v) in &outgoing.headers {
                table.insert(k.as_str().into(), AMQPValue::LongString(v.as_str().into()));
            }
            properties = properties.with_headers(table);
        }
        self.publish_properties(exchange, routing_key, body, properties, false)
            .await
    }

    /// Publishes with properties as given and waits for the confirm. With
    /// `mandatory`, a message that no queue would take comes back as
    /// [`BrokerError::Unroutable`] instead of a silent positive confirm: a
    /// replayed dead letter must land in a queue before it is deleted.
    ///
    /// # Errors
    /// As [`Publisher::publish`], plus [`BrokerError::Unroutable`].
    pub(crate) async fn publish_properties(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
        mandatory: bool,
    ) -> Result<(), BrokerError> {
        let confirm = self
            .channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions {
                    mandatory,
                    ..Default::default()
                },
                body,
                properties,
            )
            .await?
            .await?;
        if confirm.is_nack() {
            return Err(BrokerError::Nacked {
                exchange: exchange.to_string(),
            });
        }
        if confirm.take_message().is_some() {
            return Err(BrokerError::Unroutable {
                exchange: exchange.to_string(),
                routing_key: routing_key.to_string(),
            });
        }
        Ok(())
    }

    /// Publishes a copy of a delivery (body and properties) to another
    /// exchange or routing key, with `headers` added, and waits for the
    /// confirm. Mandatory: a copy no queue takes is an error, never a
    /// silent loss, so the caller may ack the original only on `Ok`.
    /// The broker's delivery count is dropped: the copy is a new message.
    ///
    /// # Errors
    /// As [`Publisher::publish`], plus [`BrokerError::Unroutable`].
    pub async fn forward(
        &self,
        exchange: &str,
        routing_key: &str,
        incoming: &Incoming,
        headers: &[(&str, String)],
    ) -> Result<(), BrokerError> {
        let mut properties = incoming.properties().clone();
        let mut table = properties.headers().clone().unwrap_or_default();
        let mut kept = FieldTable::default();
        for (name, value) in table.inner() {
            if name.as_str() != "x-delivery-count" {
                kept.insert(name.clone(), value.clone());
            }
        }
        table = kept;
        for (name, value) in headers {
            table.insert((*name).into(), AMQPValue::LongString(value.as_str().into()));
        }
        properties = properties.with_headers(table);
        self.publish_properties(exchange, routing_key, incoming.body(), properties, true)
            .await
    }

    pub async fn close(&self) {
        let _ = self.channel.close(200, "publisher closed".into()).await;
    }
}
