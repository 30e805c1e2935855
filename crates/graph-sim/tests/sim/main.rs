//! End-to-end tests of graph-sim over HTTP: an in-process server on port 0 and
//! reqwest as the client, as the Graph collector would use it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod admin;
mod auth;
mod binary;
mod certificates;
mod common;
mod delta;
mod faults;
mod objects;
mod subscriptions;
