//! Pure domain core of group writeback: naming, escaping, policy and member
//! resolution.
//!
//! Architecture invariant: this crate does no I/O and knows nothing about Graph's
//! wire format, AMQP, LDAP libraries or SQLite. Time is passed in as a parameter.

pub mod command;
pub mod deletion;
pub mod drift;
pub mod escape;
pub mod event;
pub mod members;
pub mod naming;
pub mod policy;
pub mod state;
