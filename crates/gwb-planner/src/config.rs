use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use gwb_bus::BusConfig;
use gwb_core::naming::NameTemplate;
use gwb_core::policy::{Placement, Scope};
use gwb_runtime::telemetry::LogConfig;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub planner: PlannerSettings,
    #[serde(default)]
    pub scope: ScopeSettings,
    #[serde(default)]
    pub control: ControlSettings,
    #[serde(default)]
    pub coordination: CoordinationSettings,
    #[serde(default)]
    pub deletion: DeletionSettings,
    #[serde(default)]
    pub bus: BusConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub metrics: gwb_runtime::metrics::MetricsConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlannerSettings {
    #[serde(default = "default_state")]
    pub state_path: PathBuf,
    /// OU for written-back groups, e.g. `OU=Cloud Groups,DC=contoso,DC=com`.
    pub default_ou: String,
    pub security_ou: Option<String>,
    pub distribution_ou: Option<String>,
    /// Where `move` puts groups that leave scope or are soft-deleted.
    pub retired_ou: Option<String>,
    #[serde(default)]
    pub name_template: TemplateSetting,
    /// Member values per add/remove command.
    #[serde(default = "default_batch")]
    pub member_batch_size: usize,
    /// What happens to a written group that leaves scope or is disabled per group.
    #[serde(default)]
    pub on_leave_scope: RemovalAction,
    /// What happens to a written group that is soft-deleted in the cloud.
    #[serde(default)]
    pub on_soft_delete: RemovalAction,
    /// Plan everything, send nothing: commands are recorded in the audit log as
    /// `staged` instead of reaching the writer.
    #[serde(default)]
    pub staging: bool,
}

/// How the planner reaches the collector and the writers (`gwbctl sync`, `pause`…).
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct CoordinationSettings {
    /// e.g. `http://127.0.0.1:50052`.
    pub collector_endpoint: Option<String>,
    /// Every writer instance, e.g. `["http://127.0.0.1:50053"]`.
    #[serde(default)]
    pub writer_endpoints: Vec<String>,
    /// Bearer token presented to them (mode 0600).
    pub token_file: Option<PathBuf>,
}

/// Deletion threshold (DESIGN.md §3): more deletions within the window are held.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeletionSettings {
    #[serde(default = "default_max_groups")]
    pub max_groups: u64,
    #[serde(default = "default_max_percent")]
    pub max_percent: u64,
    #[serde(default = "default_window_minutes")]
    pub window_minutes: u64,
}

impl Default for DeletionSettings {
    fn default() -> Self {
        DeletionSettings {
            max_groups: default_max_groups(),
            max_percent: default_max_percent(),
            window_minutes: default_window_minutes(),
        }
    }
}

impl DeletionSettings {
    pub fn threshold(&self) -> gwb_core::deletion::DeletionThreshold {
        gwb_core::deletion::DeletionThreshold {
            max_groups: self.max_groups,
            max_percent: self.max_percent,
            window_minutes: self.window_minutes,
        }
    }
}

fn default_max_groups() -> u64 {
    100
}
fn default_max_percent() -> u64 {
    10
}
fn default_window_minutes() -> u64 {
    60
}

#[derive(Debug, Clone, Copy, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TemplateSetting {
    #[default]
    ObjectId,
    DisplayName,
}

#[derive(Debug, Clone, Copy, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RemovalAction {
    /// Leave the AD group as it is (frozen) — Microsoft's v2 default.
    #[default]
    Keep,
    Delete,
    /// Move it to `retired_ou`.
    Move,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScopeSettings {
    #[serde(default)]
    pub security_groups: bool,
    /// Microsoft's default: Microsoft 365 groups are written back unless disabled.
    #[serde(default = "yes")]
    pub microsoft365_groups: bool,
    #[serde(default)]
    pub group_ids: BTreeSet<String>,
    #[serde(default)]
    pub display_name_prefixes: Vec<String>,
}

impl Default for ScopeSettings {
    fn default() -> Self {
        ScopeSettings {
            security_groups: false,
            microsoft365_groups: true,
            group_ids: BTreeSet::new(),
            display_name_prefixes: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlSettings {
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// File with the bearer token operators must present (mode 0600). Without it
    /// the API is open, which is only acceptable on loopback.
    pub token_file: Option<PathBuf>,
}

impl Default for ControlSettings {
    fn default() -> Self {
        ControlSettings { listen: default_listen(), token_file: None }
    }
}

fn default_state() -> PathBuf {
    PathBuf::from("gwb-planner.db")
}
fn default_batch() -> usize {
    500
}
fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 50051))
}
fn yes() -> bool {
    true
}

impl Config {
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.planner.default_ou.contains('='),
            "planner.default_ou must be a DN such as \"OU=Cloud Groups,DC=contoso,DC=com\""
        );
        anyhow::ensure!(
            (1..=5000).contains(&self.planner.member_batch_size),
            "planner.member_batch_size must be between 1 and 5000"
        );
        let needs_retired = [self.planner.on_leave_scope, self.planner.on_soft_delete].contains(&RemovalAction::Move);
        anyhow::ensure!(
            !needs_retired || self.planner.retired_ou.is_some(),
            "planner.retired_ou is required when an action is \"move\""
        );
        let listen_is_loopback = self.control.listen.ip().is_loopback();
        anyhow::ensure!(
            listen_is_loopback || self.control.token_file.is_some(),
            "control.token_file is required when control.listen ({}) is not a loopback address",
            self.control.listen
        );
        Ok(())
    }

    pub fn scope(&self) -> Scope {
        Scope {
            all_security_groups: self.scope.security_groups,
            all_microsoft_365_groups: self.scope.microsoft365_groups,
            group_ids: self.scope.group_ids.iter().map(|id| id.to_ascii_lowercase()).collect(),
            display_name_prefixes: self.scope.display_name_prefixes.clone(),
        }
    }

    pub fn placement(&self) -> Placement {
        Placement {
            default_ou: self.planner.default_ou.clone(),
            security_ou: self.planner.security_ou.clone(),
            distribution_ou: self.planner.distribution_ou.clone(),
            name_template: match self.planner.name_template {
                TemplateSetting::ObjectId => NameTemplate::ObjectId,
                TemplateSetting::DisplayName => NameTemplate::DisplayName,
            },
        }
    }
}
