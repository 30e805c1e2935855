use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use gwb_bus::BusConfig;
use gwb_graph::GraphConfig;
use gwb_runtime::telemetry::LogConfig;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub graph: GraphConfig,
    #[serde(default)]
    pub bus: BusConfig,
    #[serde(default)]
    pub collector: CollectorSettings,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub metrics: gwb_runtime::metrics::MetricsConfig,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollectorSettings {
    /// Seconds between delta rounds (fractions allowed; at least 0.2).
    #[serde(default = "default_poll")]
    pub poll_interval_seconds: f64,
    /// Seconds before the next round when the last one found changes (at least 0.1,
    /// at most `poll_interval_seconds`): a tenant in the middle of changes is followed
    /// closely, an idle one costs the idle interval's requests only.
    #[serde(default = "default_active_poll")]
    pub active_poll_interval_seconds: f64,
    /// Embedded store of the delta cursors.
    #[serde(default = "default_state")]
    pub state_path: PathBuf,
    /// Guard against a nextLink chain that never reaches a deltaLink.
    #[serde(default = "default_max_pages")]
    pub max_pages_per_round: u64,
    /// A page that takes longer to read (with its retries) abandons the round attempt;
    /// the next attempt resumes at that page. A whole first round of a big tenant can
    /// take hours, so there is no limit on a round.
    #[serde(default = "default_page_timeout")]
    pub page_timeout_seconds: u64,
    /// Deprecated and ignored (rounds resume page by page now); accepted so existing
    /// configurations still start, with a warning.
    #[serde(default)]
    pub round_timeout_seconds: Option<u64>,
    /// Graph change notifications; absent = polling only.
    #[serde(default)]
    pub notifications: Option<NotificationSettings>,
    #[serde(default)]
    pub control: ControlSettings,
}

impl Default for CollectorSettings {
    fn default() -> Self {
        CollectorSettings {
            poll_interval_seconds: default_poll(),
            active_poll_interval_seconds: default_active_poll(),
            state_path: default_state(),
            max_pages_per_round: default_max_pages(),
            page_timeout_seconds: default_page_timeout(),
            round_timeout_seconds: None,
            notifications: None,
            control: ControlSettings::default(),
        }
    }
}

impl CollectorSettings {
    pub fn poll_interval_ms(&self) -> u64 {
        if self.poll_interval_seconds.is_finite() {
            (self.poll_interval_seconds.max(0.2) * 1000.0) as u64
        } else {
            30_000
        }
    }

    pub fn active_poll_interval_ms(&self) -> u64 {
        let active = if self.active_poll_interval_seconds.is_finite() {
            (self.active_poll_interval_seconds.max(0.1) * 1000.0) as u64
        } else {
            self.poll_interval_ms()
        };
        active.min(self.poll_interval_ms())
    }
}

/// `[collector.notifications]`: the receiver Graph posts change notifications to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotificationSettings {
    /// Where the receiver listens.
    pub listen: SocketAddr,
    /// How Graph reaches that listener (HTTPS in production, e.g. through a reverse
    /// proxy): notifications go to `<public_url>/notifications`, lifecycle
    /// notifications to `<public_url>/lifecycle`.
    pub public_url: String,
    /// File (mode 0600) with the `clientState` secret Graph echoes in every
    /// notification (at most 128 characters).
    pub client_state_file: PathBuf,
    /// Lifetime requested for each subscription; Graph allows at most 41,760 minutes
    /// for users and groups. Renewed when a third of it is left.
    #[serde(default = "default_subscription_minutes")]
    pub subscription_minutes: u64,
    /// Subscribed resources.
    #[serde(default = "default_resources")]
    pub resources: Vec<String>,
}

/// `[collector.control]`: the internal gRPC service the planner calls; the same
/// settings as every service's control section.
pub use gwb_proto::server::ControlSettings;

/// Where `[collector.control]` listens when `listen` is not set.
pub const DEFAULT_CONTROL_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 50052);

fn default_poll() -> f64 {
    30.0
}
fn default_active_poll() -> f64 {
    0.25
}
fn default_state() -> PathBuf {
    PathBuf::from("gwb-collector.db")
}
fn default_max_pages() -> u64 {
    1_000_000
}
fn default_page_timeout() -> u64 {
    600
}
fn default_subscription_minutes() -> u64 {
    4320
}
fn default_resources() -> Vec<String> {
    vec!["/groups".into(), "/users".into()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_active_interval_is_clamped_between_a_tenth_of_a_second_and_the_idle_interval() {
        let with = |idle: f64, active: f64| CollectorSettings {
            poll_interval_seconds: idle,
            active_poll_interval_seconds: active,
            ..Default::default()
        };
        assert_eq!((with(30.0, 0.25).poll_interval_ms(), with(30.0, 0.25).active_poll_interval_ms()), (30_000, 250));
        assert_eq!(with(1.0, 5.0).active_poll_interval_ms(), 1_000);
        assert_eq!(with(1.0, 0.0).active_poll_interval_ms(), 100);
        assert_eq!(with(1.0, f64::NAN).active_poll_interval_ms(), 1_000);
    }
}
