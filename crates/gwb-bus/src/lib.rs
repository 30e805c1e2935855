//! The product's RabbitMQ layer. Only this crate knows lapin.
//!
//! Guarantees (DESIGN.md §4): durable quorum queues, persistent messages, publisher
//! confirms where a Nack is a failure, manual acks after the consumer's side effect is
//! durable, bounded prefetch, dead-lettering for messages that cannot be processed and
//! a delivery limit for poison messages. Connection loss is handled by rebuilding the
//! connection with backoff; unacked deliveries return to their queue, so nothing is
//! lost and consumers must be idempotent.

mod config;
mod consumer;
mod publisher;
mod topology;

pub use config::BusConfig;

/// AMQP `type` of writer commands, shared by the planner (publisher) and the writer
/// (which refuses anything else).
pub const COMMAND_TYPE: &str = "gwb.commands.v1.WriteCommand";
pub use consumer::{Delivery, Disposition, consume, consume_batches};
pub use publisher::{Message, PUBLISHED_AT_HEADER, Publisher};
pub use topology::{Route, Topology, delete_topology, partition_of};

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("RabbitMQ connection to {url}: {source}")]
    Connect { url: String, source: lapin::Error },
    #[error("RabbitMQ {operation}: {source}")]
    Amqp { operation: &'static str, source: lapin::Error },
    #[error("broker refused (nack) the message published to {route}")]
    Nacked { route: String },
    #[error("message published to {route} was unroutable")]
    Unroutable { route: String },
    #[error("timed out after {seconds}s waiting for {operation}")]
    Timeout { operation: &'static str, seconds: u64 },
}
