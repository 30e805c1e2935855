//! Confirmed publishing. A publish returns only when the broker has confirmed the
//! message (persisted to the quorum queue); a Nack, an unroutable return, a timeout or
//! a lost connection is an error and the caller keeps its data to publish again.

use std::collections::BTreeMap;
use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use tokio::sync::Mutex;

use crate::{BusConfig, BusError, Route, Topology};

/// One message to publish.
#[derive(Debug, Clone)]
pub struct Message {
    pub id: String,
    /// Protobuf message name, e.g. `gwb.events.v1.ChangeEvent`.
    pub kind: &'static str,
    pub payload: Vec<u8>,
    /// Extra headers (W3C trace context, cause).
    pub headers: BTreeMap<String, String>,
    pub timestamp_ms: i64,
}

struct Link {
    _connection: Connection,
    channel: Channel,
}

pub struct Publisher {
    config: BusConfig,
    topology: Topology,
    link: Mutex<Option<Link>>,
}

impl Publisher {
    /// Connects and declares the topology; fails fast if the broker is unreachable so
    /// a misconfigured service says so at start.
    pub async fn connect(config: BusConfig) -> Result<Self, BusError> {
        let topology = Topology::new(&config);
        let link = open_link(&config, &topology).await?;
        Ok(Publisher { config, topology, link: Mutex::new(Some(link)) })
    }

    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// Publishes one message and waits for its confirm.
    pub async fn publish(&self, route: &Route, message: &Message) -> Result<(), BusError> {
        self.publish_all(std::slice::from_ref(&(route.clone(), message.clone()))).await
    }

    /// Publishes every message, then waits for all confirms: one round trip per batch
    /// instead of per message. On error the whole batch must be considered unsent
    /// (some may have arrived: consumers are idempotent).
    pub async fn publish_all(&self, batch: &[(Route, Message)]) -> Result<(), BusError> {
        let mut guard = self.link.lock().await;
        if guard.is_none() {
            *guard = Some(open_link(&self.config, &self.topology).await?);
        }
        let Some(link) = guard.as_ref() else {
            return Err(BusError::Timeout { operation: "connect", seconds: 0 });
        };
        let result = self.publish_on(&link.channel, batch).await;
        if result.is_err() {
            // Rebuild the connection on the next call: a channel that saw an error may
            // be closed, and confirms are per channel.
            *guard = None;
        }
        result
    }

    async fn publish_on(&self, channel: &Channel, batch: &[(Route, Message)]) -> Result<(), BusError> {
        let mut pending = Vec::with_capacity(batch.len());
        for (route, message) in batch {
            let (exchange, key) = self.topology.address(route);
            let confirm = channel
                .basic_publish(
                    exchange.clone().into(),
                    key.clone().into(),
                    BasicPublishOptions { mandatory: true, ..Default::default() },
                    &message.payload,
                    properties(message),
                )
                .await
                .map_err(|source| BusError::Amqp { operation: "basic.publish", source })?;
            pending.push((format!("{exchange}/{key}"), confirm));
        }
        let timeout = Duration::from_secs(self.config.confirm_timeout_seconds);
        for (route, confirm) in pending {
            let confirmation = tokio::time::timeout(timeout, confirm)
                .await
                .map_err(|_| BusError::Timeout { operation: "publisher confirm", seconds: timeout.as_secs() })?
                .map_err(|source| BusError::Amqp { operation: "publisher confirm", source })?;
            match confirmation {
                Confirmation::Ack(None) => {}
                Confirmation::Ack(Some(_returned)) => return Err(BusError::Unroutable { route }),
                Confirmation::Nack(_) | Confirmation::NotRequested => {
                    return Err(BusError::Nacked { route });
                }
            }
        }
        Ok(())
    }
}

fn properties(message: &Message) -> BasicProperties {
    let mut headers = FieldTable::default();
    for (name, value) in &message.headers {
        headers.insert(ShortString::from(name.as_str()), AMQPValue::LongString(value.as_str().into()));
    }
    BasicProperties::default()
        .with_message_id(message.id.as_str().into())
        .with_type(message.kind.into())
        .with_content_type("application/protobuf".into())
        .with_delivery_mode(2)
        .with_timestamp(u64::try_from(message.timestamp_ms / 1000).unwrap_or(0))
        .with_headers(headers)
}

pub(crate) async fn connect(config: &BusConfig) -> Result<Connection, BusError> {
    Connection::connect(&config.url, ConnectionProperties::default())
        .await
        .map_err(|source| BusError::Connect { url: config.redacted_url(), source })
}

async fn open_link(config: &BusConfig, topology: &Topology) -> Result<Link, BusError> {
    let connection = connect(config).await?;
    let channel = connection
        .create_channel()
        .await
        .map_err(|source| BusError::Amqp { operation: "channel.open", source })?;
    topology.declare(&channel).await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(|source| BusError::Amqp { operation: "confirm.select", source })?;
    Ok(Link { _connection: connection, channel })
}
