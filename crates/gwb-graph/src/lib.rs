//! The product's only Microsoft Graph client (used by gwb-collector).
//!
//! It turns Graph's HTTP surface into typed delta pages and classified errors:
//! throttling and transient faults are retried here (honouring `Retry-After`), a lost
//! delta token becomes [`GraphError::ResyncRequired`], anything else is permanent.

mod client;
mod config;
mod delta;
mod error;
mod token;

pub use client::GraphClient;
pub use config::GraphConfig;
pub use delta::{DeltaItem, DeltaPage, GroupChange, MemberChange, MemberType, PageLink, RemovedReason, Resource, UserChange};
pub use error::GraphError;
