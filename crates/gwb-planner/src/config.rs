//! The planner's configuration (`--config` TOML, `GWB_*` environment overrides).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use gwb_bus::BusConfig;
use gwb_core::naming::NameTemplate;
use gwb_core::policy::{Placement, Scope};
use gwb_proto::server::ControlSettings;
use gwb_runtime::telemetry::LogConfig;

/// Where the control API listens unless `[planner.control] listen` says otherwise.
pub const DEFAULT_CONTROL_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 50051);

/// A configuration the planner refuses to start with.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub planner: PlannerSettings,
    #[serde(default)]
    pub scope: ScopeSettings,
    /// Deprecated spelling of `[planner.control]`, still read (with a warning) so
    /// configurations written before the three services shared one spelling work.
    #[serde(default)]
    pub control: Option<ControlSettings>,
    #[serde(default)]
    pub coordination: CoordinationSettings,
    #[serde(default)]
    pub deletion: DeletionSettings,
    #[serde(default)]
    pub drift: DriftSettings,
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
    /// What happens to the memberships of a user soft-deleted in the cloud.
    #[serde(default)]
    pub on_user_soft_delete: UserSoftDelete,
    /// Plan everything, send nothing: commands are recorded in the audit log as
    /// `staged` instead of reaching the writer.
    #[serde(default)]
    pub staging: bool,
    /// `[planner.control]`: the operator's control API.
    #[serde(default)]
    pub control: Option<ControlSettings>,
}

/// The control settings in effect and the section they came from.
#[derive(Debug, Clone, PartialEq)]
pub struct ControlSection {
    /// `planner.control`, or `control` for the deprecated top-level section.
    pub name: &'static str,
    pub settings: ControlSettings,
}

impl ControlSection {
    pub fn listen(&self) -> SocketAddr {
        self.settings.listen_or(DEFAULT_CONTROL_LISTEN)
    }

    pub fn is_deprecated(&self) -> bool {
        self.name == "control"
    }
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
    /// Removals of more member values than this from one group within the window
    /// are held.
    #[serde(default = "default_max_member_removals")]
    pub max_member_removals: u64,
    /// Removals of more than this percentage of a group's members (groups of 20 or
    /// more) within the window are held.
    #[serde(default = "default_max_member_removal_percent")]
    pub max_member_removal_percent: u64,
}

impl Default for DeletionSettings {
    fn default() -> Self {
        DeletionSettings {
            max_groups: default_max_groups(),
            max_percent: default_max_percent(),
            window_minutes: default_window_minutes(),
            max_member_removals: default_max_member_removals(),
            max_member_removal_percent: default_max_member_removal_percent(),
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

    pub fn member_removal_threshold(&self) -> gwb_core::deletion::MemberRemovalThreshold {
        gwb_core::deletion::MemberRemovalThreshold {
            max_members: self.max_member_removals,
            max_percent: self.max_member_removal_percent,
            ..Default::default()
        }
    }
}

/// `[drift]`: what the planner does with AD edits of written groups (issue 18).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriftSettings {
    /// `repair` (default), `report` or `off`; `gwbctl set-group --drift` overrides it
    /// per group.
    #[serde(default = "default_drift_mode")]
    pub mode: String,
    /// The same drift on a group more than this many times within the window stops
    /// its repairs (the group is contested).
    #[serde(default = "default_contest_repeats")]
    pub contest_repeats: u64,
    #[serde(default = "default_contest_window_minutes")]
    pub contest_window_minutes: u64,
}

impl Default for DriftSettings {
    fn default() -> Self {
        DriftSettings {
            mode: default_drift_mode(),
            contest_repeats: default_contest_repeats(),
            contest_window_minutes: default_contest_window_minutes(),
        }
    }
}

impl DriftSettings {
    pub fn policy(&self) -> Result<gwb_core::drift::DriftPolicy, ConfigError> {
        let mode = gwb_core::drift::DriftMode::parse(&self.mode).ok_or_else(|| {
            ConfigError(format!("drift.mode: {:?} is not one of \"repair\", \"report\", \"off\"", self.mode))
        })?;
        Ok(gwb_core::drift::DriftPolicy {
            mode,
            contest_repeats: self.contest_repeats,
            contest_window_ms: (self.contest_window_minutes as i64).saturating_mul(60_000),
        })
    }
}

fn default_drift_mode() -> String {
    "repair".into()
}
fn default_contest_repeats() -> u64 {
    3
}
fn default_contest_window_minutes() -> u64 {
    10
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
fn default_max_member_removals() -> u64 {
    100
}
fn default_max_member_removal_percent() -> u64 {
    50
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

/// A soft-deleted synced user (`@removed: changed`: restorable for 30 days, often a
/// sync-scope mistake on the AD side) most likely still has its AD account; removing
/// it from every written group would strip its access until it is restored.
#[derive(Debug, Clone, Copy, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum UserSoftDelete {
    /// It stays a member until it is permanently deleted.
    #[default]
    Keep,
    /// It is removed from the groups at once, as for a permanent deletion.
    Remove,
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

fn default_state() -> PathBuf {
    PathBuf::from("gwb-planner.db")
}
fn default_batch() -> usize {
    500
}
fn yes() -> bool {
    true
}

fn ensure(condition: bool, message: impl FnOnce() -> String) -> Result<(), ConfigError> {
    if condition { Ok(()) } else { Err(ConfigError(message())) }
}

impl Config {
    pub fn validate(&self) -> Result<(), ConfigError> {
        ensure(self.planner.default_ou.contains('='), || {
            "planner.default_ou must be a DN such as \"OU=Cloud Groups,DC=contoso,DC=com\"".into()
        })?;
        ensure((1..=5000).contains(&self.planner.member_batch_size), || {
            "planner.member_batch_size must be between 1 and 5000".into()
        })?;
        let needs_retired = [self.planner.on_leave_scope, self.planner.on_soft_delete].contains(&RemovalAction::Move);
        ensure(!needs_retired || self.planner.retired_ou.is_some(), || {
            "planner.retired_ou is required when an action is \"move\"".into()
        })?;
        let control = self.control()?;
        let listen = control.listen();
        ensure(listen.ip().is_loopback() || control.settings.token_file.is_some(), || {
            format!("{0}.token_file is required when {0}.listen ({listen}) is not a loopback address", control.name)
        })
    }

    /// `[planner.control]`, or the deprecated top-level `[control]`; both at once is
    /// refused, since which one wins would be a guess.
    pub fn control(&self) -> Result<ControlSection, ConfigError> {
        match (&self.planner.control, &self.control) {
            (Some(_), Some(_)) => Err(ConfigError(
                "both [planner.control] and the deprecated [control] are set: keep only [planner.control]".into(),
            )),
            (None, Some(old)) => Ok(ControlSection { name: "control", settings: old.clone() }),
            (new, None) => Ok(ControlSection { name: "planner.control", settings: new.clone().unwrap_or_default() }),
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn load(toml: &str) -> Config {
        let dir = std::env::temp_dir().join(format!("gwb-planner-config-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("planner.toml");
        std::fs::write(&path, toml).unwrap();
        let config = gwb_runtime::config::load_with_env(Some(&path), std::iter::empty()).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        config
    }

    const PLANNER: &str = "[planner]\ndefault_ou = \"OU=G,DC=lab\"\n";

    #[test]
    fn the_control_section_defaults_to_loopback_50051() {
        let config = load(PLANNER);
        config.validate().unwrap();
        let control = config.control().unwrap();
        assert_eq!((control.name, control.listen()), ("planner.control", DEFAULT_CONTROL_LISTEN));
    }

    #[test]
    fn planner_control_is_read_and_a_token_is_required_off_loopback() {
        let config = load(&format!("{PLANNER}[planner.control]\nlisten = \"127.0.0.1:0\"\ntoken_file = \"/t\"\n"));
        config.validate().unwrap();
        let control = config.control().unwrap();
        assert_eq!(control.listen(), "127.0.0.1:0".parse().unwrap());
        assert_eq!(control.settings.token_file, Some(PathBuf::from("/t")));
        assert!(!control.is_deprecated());
        let open = load(&format!("{PLANNER}[planner.control]\nlisten = \"0.0.0.0:50051\"\n"));
        let error = open.validate().unwrap_err().to_string();
        assert!(error.contains("planner.control.token_file is required"), "{error}");
    }

    #[test]
    fn the_deprecated_control_section_still_works_but_not_beside_the_new_one() {
        let old = load(&format!("{PLANNER}[control]\nlisten = \"127.0.0.1:6000\"\ntoken_file = \"/t\"\n"));
        old.validate().unwrap();
        let control = old.control().unwrap();
        assert!(control.is_deprecated());
        assert_eq!(control.listen(), "127.0.0.1:6000".parse().unwrap());
        assert_eq!(control.settings.token_file, Some(PathBuf::from("/t")));
        let open = load(&format!("{PLANNER}[control]\nlisten = \"0.0.0.0:6000\"\n"));
        assert!(open.validate().unwrap_err().to_string().contains("control.token_file is required"));
        let both = load(&format!(
            "{PLANNER}[planner.control]\nlisten = \"127.0.0.1:0\"\n[control]\nlisten = \"127.0.0.1:6000\"\n"
        ));
        assert!(
            both.validate().unwrap_err().to_string().contains("both [planner.control] and the deprecated [control]")
        );
    }
}
