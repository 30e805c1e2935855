use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use gwb_bus::BusConfig;
use gwb_runtime::telemetry::LogConfig;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub directory: DirectorySettings,
    #[serde(default)]
    pub writer: WriterSettings,
    #[serde(default)]
    pub bus: BusConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub metrics: gwb_runtime::metrics::MetricsConfig,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectorySettings {
    /// `ldaps://dc.contoso.com:636`, or `ldap://…` with `starttls = true`.
    pub url: String,
    #[serde(default)]
    pub starttls: bool,
    /// PEM CA certificate(s) that issued the DC's certificate; nothing else is trusted.
    pub ca_file: PathBuf,
    pub bind_dn: String,
    /// File holding the bind password (mode 0600).
    pub bind_password_file: PathBuf,
    /// OUs the writer may touch (target OUs and the retired OU).
    pub managed_ous: Vec<String>,
    #[serde(default = "default_timeout")]
    pub operation_timeout_seconds: u64,
    #[serde(default = "default_batch")]
    pub member_batch_size: usize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WriterSettings {
    /// Identifies this instance in outcomes and status (default: host and pid).
    pub id: Option<String>,
    /// Partitions to consume; empty = all. Several writers may list the same
    /// partitions: one is active per partition, the others stand by.
    #[serde(default)]
    pub partitions: Vec<u16>,
    /// Validate and report, write nothing (benchmarks of the pipeline alone).
    #[serde(default)]
    pub dry_run: bool,
    #[serde(default = "default_status_interval")]
    pub status_interval_seconds: u64,
    /// gRPC `gwb.control.v1.Writer` (pause, resume, state) for the planner.
    #[serde(default = "default_control_listen")]
    pub control_listen: SocketAddr,
    /// Bearer token callers must present (mode 0600); required off loopback.
    pub control_token_file: Option<PathBuf>,
}

impl Default for WriterSettings {
    fn default() -> Self {
        WriterSettings {
            id: None,
            partitions: Vec::new(),
            dry_run: false,
            status_interval_seconds: default_status_interval(),
            control_listen: default_control_listen(),
            control_token_file: None,
        }
    }
}

fn default_control_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 50053))
}

fn default_timeout() -> u64 {
    30
}
fn default_batch() -> usize {
    1000
}
fn default_status_interval() -> u64 {
    15
}
