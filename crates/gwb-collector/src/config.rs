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
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollectorSettings {
    /// Seconds between delta rounds (fractions allowed; at least 0.2).
    #[serde(default = "default_poll")]
    pub poll_interval_seconds: f64,
    /// Embedded store of the delta cursors.
    #[serde(default = "default_state")]
    pub state_path: PathBuf,
    /// Guard against a nextLink chain that never reaches a deltaLink.
    #[serde(default = "default_max_pages")]
    pub max_pages_per_round: u64,
}

impl Default for CollectorSettings {
    fn default() -> Self {
        CollectorSettings {
            poll_interval_seconds: default_poll(),
            state_path: default_state(),
            max_pages_per_round: default_max_pages(),
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
}

fn default_poll() -> f64 {
    30.0
}
fn default_state() -> PathBuf {
    PathBuf::from("gwb-collector.db")
}
fn default_max_pages() -> u64 {
    1_000_000
}
