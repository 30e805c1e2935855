//! The lab harness's integration tests, one binary with one module per area (as
//! graph-sim's `tests/sim` does): end-to-end runs of the real binaries against RabbitMQ,
//! the lab Samba AD DC and graph-sim, the reliability and security cases of issue 9,
//! observability, and the compose-file check. Shared setup lives in the `gwb-tests`
//! library (`pipeline`, `fixture`, `workload`, `ad`).
//!
//! Tests run in parallel threads of this one process; a test that must run alone (the
//! broker restart, the load measurement) says so with `Options::alone`, and the others
//! wait for it (`gwb_tests::pipeline::shared`). Select a module with its name as the
//! filter: `cargo test -p gwb-tests --test suite -- reliability_poison::`.

mod compose_file;
mod e2e_control;
mod e2e_converted_groups;
mod e2e_drift;
mod e2e_exchange;
mod e2e_member_removals;
mod e2e_parallel_writers;
mod e2e_policy;
mod e2e_user_lifecycle;
mod e2e_writeback;
mod e2e_writeback_configuration;
mod observability_prometheus;
mod observability_secrets;
mod reliability_broker;
mod reliability_crashes;
mod reliability_directory;
mod reliability_graph_faults;
mod reliability_hostile;
mod reliability_load;
mod reliability_mass_deletion;
mod reliability_poison;
mod reliability_security;
