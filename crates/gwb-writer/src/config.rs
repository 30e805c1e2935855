//! The writer's configuration: `[directory]`, `[writer]` (with `[writer.control]`),
//! and the shared `[bus]`, `[log]` and `[metrics]` sections.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use gwb_bus::BusConfig;
use gwb_proto::server::ControlSettings;
use gwb_runtime::telemetry::LogConfig;

/// Where `gwb.control.v1.Writer` listens unless `[writer.control] listen` says otherwise.
pub const DEFAULT_CONTROL_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 50053);

/// A configuration that parses but cannot run.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(pub String);

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
    #[serde(default)]
    pub drift: DriftWatchSettings,
}

/// `[drift]`: the directory watcher that reports AD edits of written groups to the
/// planner (which decides whether they are repaired).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DriftWatchSettings {
    /// Follow the directory (default true). With several writers on one DC, one
    /// watcher is enough: the others would only repeat its observations.
    #[serde(default = "default_true")]
    pub watch: bool,
    /// How often the DC's highestCommittedUSN is read (one rootDSE read).
    #[serde(default = "default_poll_interval_ms")]
    pub poll_interval_ms: u64,
    /// Where the watcher keeps its position (DC, invocationId, USN) so that a restart
    /// resumes; unset: every start begins with a full comparison.
    #[serde(default)]
    pub state_file: Option<PathBuf>,
    /// A full comparison of every written group this often, besides the change polls
    /// (0: only after a lost mark or a DC change).
    #[serde(default = "default_full_interval_minutes")]
    pub full_interval_minutes: u64,
}

impl Default for DriftWatchSettings {
    fn default() -> Self {
        DriftWatchSettings {
            watch: true,
            poll_interval_ms: default_poll_interval_ms(),
            state_file: None,
            full_interval_minutes: default_full_interval_minutes(),
        }
    }
}

fn default_true() -> bool {
    true
}
fn default_poll_interval_ms() -> u64 {
    1000
}
fn default_full_interval_minutes() -> u64 {
    60
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
    /// Rename a written group's sAMAccountName when its display name changes (default:
    /// keep it, as AD documents it should not change).
    #[serde(default)]
    pub follow_display_name: bool,
    /// Domain SIDs of trusted domains whose accounts may be written as members.
    #[serde(default)]
    pub foreign_domain_sids: Vec<String>,
    /// Write cloud groups converted from AD back to their original AD group (found by
    /// SID, in `adoptable_ous`); off: they are skipped with the reason.
    #[serde(default)]
    pub adopt_converted_groups: bool,
    #[serde(default)]
    pub adoptable_ous: Vec<String>,
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
    /// `[writer.control]`: gRPC `gwb.control.v1.Writer` (pause, resume, state) for the
    /// planner, spelt as in the planner and the collector.
    #[serde(default)]
    pub control: Option<ControlSettings>,
    /// Deprecated spelling of `[writer.control] listen`, still read (with a warning).
    #[serde(default)]
    pub control_listen: Option<SocketAddr>,
    /// Deprecated spelling of `[writer.control] token_file`, still read (with a warning).
    #[serde(default)]
    pub control_token_file: Option<PathBuf>,
}

impl Default for WriterSettings {
    fn default() -> Self {
        WriterSettings {
            id: None,
            partitions: Vec::new(),
            dry_run: false,
            status_interval_seconds: default_status_interval(),
            control: None,
            control_listen: None,
            control_token_file: None,
        }
    }
}

impl WriterSettings {
    /// The control settings in effect: `[writer.control]`, or the deprecated
    /// `[writer] control_listen` / `control_token_file` (each named in a warning). Both
    /// spellings at once are refused, since which one wins would be a guess.
    pub fn control(&self) -> Result<ControlSettings, ConfigError> {
        let old: Vec<&str> = [
            self.control_listen.is_some().then_some("writer.control_listen"),
            self.control_token_file.is_some().then_some("writer.control_token_file"),
        ]
        .into_iter()
        .flatten()
        .collect();
        match &self.control {
            Some(_) if !old.is_empty() => Err(ConfigError(format!(
                "both [writer.control] and the deprecated {} are set: keep only [writer.control]",
                old.join(" and ")
            ))),
            Some(control) => Ok(control.clone()),
            None => {
                if self.control_listen.is_some() {
                    tracing::warn!("writer.control_listen is deprecated: use [writer.control] listen");
                }
                if self.control_token_file.is_some() {
                    tracing::warn!("writer.control_token_file is deprecated: use [writer.control] token_file");
                }
                Ok(ControlSettings { listen: self.control_listen, token_file: self.control_token_file.clone() })
            }
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    const DIRECTORY: &str = "[directory]\nurl = \"ldaps://dc:636\"\nca_file = \"/ca.pem\"\nbind_dn = \"CN=svc\"\n\
        bind_password_file = \"/pw\"\nmanaged_ous = [\"OU=G,DC=lab\"]\n";

    fn load(toml: &str) -> Config {
        let path = std::env::temp_dir().join(format!("gwb-writer-config-{}-{}.toml", std::process::id(), toml.len()));
        std::fs::write(&path, format!("{DIRECTORY}{toml}")).unwrap();
        let config = gwb_runtime::config::load_with_env(Some(&path), Vec::new());
        let _ = std::fs::remove_file(&path);
        config.unwrap()
    }

    #[test]
    fn the_control_section_is_read_and_defaults_to_loopback() {
        let config = load("[writer.control]\nlisten = \"0.0.0.0:0\"\ntoken_file = \"/t\"\n");
        let control = config.writer.control().unwrap();
        assert_eq!(control.listen, Some("0.0.0.0:0".parse().unwrap()));
        assert_eq!(control.token_file, Some(PathBuf::from("/t")));
        let default = load("").writer.control().unwrap();
        assert_eq!(default, ControlSettings::default());
        assert_eq!(default.listen_or(DEFAULT_CONTROL_LISTEN), "127.0.0.1:50053".parse().unwrap());
    }

    #[test]
    fn the_old_keys_still_work() {
        let config = load("[writer]\ncontrol_listen = \"127.0.0.1:7\"\ncontrol_token_file = \"/old\"\n");
        let control = config.writer.control().unwrap();
        assert_eq!(control.listen, Some("127.0.0.1:7".parse().unwrap()));
        assert_eq!(control.token_file, Some(PathBuf::from("/old")));
        let listen_only = load("[writer]\ncontrol_listen = \"127.0.0.1:8\"\n").writer.control().unwrap();
        assert_eq!(listen_only, ControlSettings { listen: Some("127.0.0.1:8".parse().unwrap()), token_file: None });
    }

    #[test]
    fn old_and_new_keys_together_are_refused_naming_them() {
        let config = load(
            "[writer]\ncontrol_listen = \"127.0.0.1:7\"\ncontrol_token_file = \"/old\"\n\
             [writer.control]\nlisten = \"127.0.0.1:8\"\n",
        );
        let error = config.writer.control().unwrap_err().to_string();
        assert!(error.contains("[writer.control]"), "{error}");
        assert!(error.contains("writer.control_listen and writer.control_token_file"), "{error}");
        let config = load("[writer]\ncontrol_token_file = \"/old\"\n[writer.control]\n");
        let error = config.writer.control().unwrap_err().to_string();
        assert!(error.contains("writer.control_token_file are set"), "{error}");
    }
}
