//! Exchange and queue names and their idempotent declaration.

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Channel, ExchangeKind};

use crate::{BusConfig, BusError};

/// Where a message goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Events,
    Command { partition: u16 },
    Outcomes,
}

/// Names derived from the namespace. Every service declares the whole topology at
/// connect time (declarations are idempotent), so start order does not matter.
#[derive(Debug, Clone)]
pub struct Topology {
    namespace: String,
    partitions: u16,
    delivery_limit: u32,
}

impl Topology {
    pub fn new(config: &BusConfig) -> Self {
        Topology {
            namespace: config.namespace.clone(),
            partitions: config.command_partitions.max(1),
            delivery_limit: config.delivery_limit,
        }
    }

    pub fn partitions(&self) -> u16 {
        self.partitions
    }

    pub fn events_queue(&self) -> String {
        format!("{}.events", self.namespace)
    }

    pub fn outcomes_queue(&self) -> String {
        format!("{}.outcomes", self.namespace)
    }

    pub fn command_queue(&self, partition: u16) -> String {
        format!("{}.commands.{partition}", self.namespace)
    }

    pub fn dead_letter_queue(&self) -> String {
        format!("{}.dead", self.namespace)
    }

    fn exchange(&self) -> String {
        format!("{}.x", self.namespace)
    }

    fn dead_letter_exchange(&self) -> String {
        format!("{}.dlx", self.namespace)
    }

    /// (exchange, routing key) for a route.
    pub fn address(&self, route: &Route) -> (String, String) {
        let key = match route {
            Route::Events => "events".to_string(),
            Route::Outcomes => "outcomes".to_string(),
            Route::Command { partition } => format!("commands.{}", partition % self.partitions),
        };
        (self.exchange(), key)
    }

    /// Every queue this topology owns (for test clean-up and status).
    pub fn all_queues(&self) -> Vec<String> {
        let mut queues = vec![self.events_queue(), self.outcomes_queue(), self.dead_letter_queue()];
        queues.extend((0..self.partitions).map(|p| self.command_queue(p)));
        queues
    }

    pub fn all_exchanges(&self) -> Vec<String> {
        vec![self.exchange(), self.dead_letter_exchange()]
    }

    pub(crate) async fn declare(&self, channel: &Channel) -> Result<(), BusError> {
        let durable = ExchangeDeclareOptions { durable: true, ..Default::default() };
        declare_exchange(channel, &self.exchange(), ExchangeKind::Direct, durable).await?;
        declare_exchange(channel, &self.dead_letter_exchange(), ExchangeKind::Fanout, durable).await?;

        let dead = self.dead_letter_queue();
        declare_queue(channel, &dead, quorum_args(None, None)).await?;
        bind(channel, &dead, &self.dead_letter_exchange(), "").await?;

        let dlx = Some(self.dead_letter_exchange());
        let limit = Some(self.delivery_limit);
        let mut routed = vec![(self.events_queue(), Route::Events), (self.outcomes_queue(), Route::Outcomes)];
        routed.extend((0..self.partitions).map(|p| (self.command_queue(p), Route::Command { partition: p })));
        for (queue, route) in routed {
            let mut args = quorum_args(dlx.clone(), limit);
            // One active consumer per queue keeps each queue's order; other consumers
            // wait as hot standbys and take over when the active one goes away.
            args.insert(ShortString::from("x-single-active-consumer"), AMQPValue::Boolean(true));
            declare_queue(channel, &queue, args).await?;
            let (exchange, key) = self.address(&route);
            bind(channel, &queue, &exchange, &key).await?;
        }
        Ok(())
    }
}

fn quorum_args(dead_letter_exchange: Option<String>, delivery_limit: Option<u32>) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(ShortString::from("x-queue-type"), AMQPValue::LongString("quorum".into()));
    if let Some(dlx) = dead_letter_exchange {
        args.insert(ShortString::from("x-dead-letter-exchange"), AMQPValue::LongString(dlx.into()));
    }
    if let Some(limit) = delivery_limit {
        args.insert(ShortString::from("x-delivery-limit"), AMQPValue::LongUInt(limit));
    }
    args
}

async fn declare_exchange(
    channel: &Channel,
    name: &str,
    kind: ExchangeKind,
    options: ExchangeDeclareOptions,
) -> Result<(), BusError> {
    channel
        .exchange_declare(name.into(), kind, options, FieldTable::default())
        .await
        .map_err(|source| BusError::Amqp { operation: "exchange.declare", source })
}

async fn declare_queue(channel: &Channel, name: &str, args: FieldTable) -> Result<(), BusError> {
    let options = QueueDeclareOptions { durable: true, ..Default::default() };
    channel
        .queue_declare(name.into(), options, args)
        .await
        .map(|_| ())
        .map_err(|source| BusError::Amqp { operation: "queue.declare", source })
}

async fn bind(channel: &Channel, queue: &str, exchange: &str, key: &str) -> Result<(), BusError> {
    channel
        .queue_bind(queue.into(), exchange.into(), key.into(), QueueBindOptions::default(), FieldTable::default())
        .await
        .map_err(|source| BusError::Amqp { operation: "queue.bind", source })
}

/// Stable partition of a group id (FNV-1a), identical in every process and release.
pub fn partition_of(group_id: &str, partitions: u16) -> u16 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in group_id.to_ascii_lowercase().bytes() {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    (hash % u32::from(partitions.max(1))) as u16
}

/// Deletes every queue and exchange of the namespace (test and demo clean-up).
pub async fn delete_topology(config: &BusConfig) -> Result<(), BusError> {
    use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
    let topology = Topology::new(config);
    let connection = crate::publisher::connect(config).await?;
    let channel =
        connection.create_channel().await.map_err(|source| BusError::Amqp { operation: "channel.open", source })?;
    for queue in topology.all_queues() {
        channel
            .queue_delete(queue.into(), QueueDeleteOptions::default())
            .await
            .map_err(|source| BusError::Amqp { operation: "queue.delete", source })?;
    }
    for exchange in topology.all_exchanges() {
        channel
            .exchange_delete(exchange.into(), ExchangeDeleteOptions::default())
            .await
            .map_err(|source| BusError::Amqp { operation: "exchange.delete", source })?;
    }
    let _ = connection.close(200, "clean-up".into()).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_is_stable_and_case_insensitive() {
        let a = partition_of("3A5C3221-0000-4000-8000-000000000001", 4);
        assert_eq!(a, partition_of("3a5c3221-0000-4000-8000-000000000001", 4));
        assert!(a < 4);
        assert_eq!(partition_of("x", 0), 0);
    }
}
