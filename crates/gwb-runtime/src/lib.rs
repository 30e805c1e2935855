//! Shared service runtime: configuration layering, secrets from files, logging and
//! traces, metrics, shutdown. Knows nothing about Graph, AMQP or LDAP.

pub mod backoff;
pub mod clock;
pub mod config;
pub mod listen;
pub mod metrics;
pub mod secret;
pub mod shutdown;
pub mod telemetry;
