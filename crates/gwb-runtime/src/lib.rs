//! Shared service runtime: configuration layering, secrets from files, logging and
//! traces, metrics, shutdown. Knows nothing about Graph, AMQP or LDAP.

pub mod config;
pub mod metrics;
pub mod secret;
pub mod shutdown;
pub mod telemetry;
