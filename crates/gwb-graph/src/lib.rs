//! The product's only Microsoft Graph client (used by gwb-collector).
//!
//! It authenticates with a client secret or a certificate (PS256 client assertion),
//! manages change-notification subscriptions, and turns Graph's HTTP surface into
//! typed delta pages and classified errors:
//! throttling and transient faults are retried here (honouring `Retry-After`), a lost
//! delta token becomes [`GraphError::ResyncRequired`], anything else is permanent.

mod budget;
mod client;
mod config;
mod credential;
mod delta;
mod error;
mod subscription;
mod token;

pub use client::{GraphClient, WritebackSource};
pub use config::GraphConfig;
pub use credential::{CertificateCredential, Credential};
pub use delta::{DeltaItem, DeltaPage, PageLink};
pub use error::GraphError;
pub use gwb_core::event::Resource;
pub use subscription::{MAX_SUBSCRIPTION_LIFETIME, NewSubscription, Subscription, rfc3339};
