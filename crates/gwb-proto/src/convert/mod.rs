//! The one translation layer: every conversion between the domain types of `gwb-core`
//! and the wire types generated from `proto/`, in both directions. Services decode at
//! the edge and work on domain types; nothing else in the workspace builds or reads a
//! wire message field by field.

pub mod commands;
pub mod events;
pub mod observations;
