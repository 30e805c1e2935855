//! The benchmark suite of issue 8. Each scenario runs the real binaries against the
//! real RabbitMQ, the lab Samba AD DC and graph-sim, prints one table row and writes
//! `target/bench/<scenario>.json`. `Scale::Smoke` is what `cargo test` runs (so the
//! suite cannot rot); `Scale::Full` is what `scripts/bench.sh` runs.

pub mod ldap;
pub mod scenarios;

use std::path::PathBuf;

use serde_json::{Value, json};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scale {
    Smoke,
    Full,
}

impl Scale {
    pub fn name(self) -> &'static str {
        match self {
            Scale::Smoke => "smoke",
            Scale::Full => "full",
        }
    }
}

pub const SCENARIOS: &[&str] =
    &["initial-sync", "incremental-latency", "large-group", "idle", "pipeline-throughput", "memory", "drift"];

pub struct Bench {
    pub scale: Scale,
    /// Where graph-sim, the services and gwbctl are (target/release or target/debug).
    pub bin_dir: PathBuf,
    pub out_dir: PathBuf,
    /// Members of the large group at full scale (250,000 in the issue).
    pub large_members: usize,
    /// Peak RSS per service, collected by scenarios 1, 3 and 5 for `memory`.
    pub memory: std::sync::Mutex<Vec<Value>>,
}

impl Bench {
    pub fn new(scale: Scale, bin_dir: PathBuf, out_dir: PathBuf) -> Bench {
        Bench { scale, bin_dir, out_dir, large_members: 250_000, memory: std::sync::Mutex::new(Vec::new()) }
    }

    pub fn full(&self) -> bool {
        self.scale == Scale::Full
    }

    /// Prints the row and writes the JSON.
    pub fn report(&self, scenario: &str, row: &str, figures: Value) -> anyhow::Result<()> {
        println!("| {scenario:<20} | {:<5} | {row}", self.scale.name());
        std::fs::create_dir_all(&self.out_dir)?;
        let doc = json!({
            "scenario": scenario,
            "scale": self.scale.name(),
            "unix_ms": now_ms(),
            "machine": machine(),
            "figures": figures,
        });
        std::fs::write(self.out_dir.join(format!("{scenario}.json")), serde_json::to_string_pretty(&doc)?)?;
        Ok(())
    }

    pub async fn run(&self, scenario: &str) -> anyhow::Result<()> {
        let started = std::time::Instant::now();
        let result = self.run_one(scenario).await;
        eprintln!(
            "({scenario} took {:.1} s of wall-clock, fixtures and cleanup included)",
            started.elapsed().as_secs_f64()
        );
        result
    }

    async fn run_one(&self, scenario: &str) -> anyhow::Result<()> {
        match scenario {
            "initial-sync" => scenarios::initial_sync(self).await,
            "incremental-latency" => scenarios::incremental_latency(self).await,
            "large-group" => scenarios::large_group(self).await,
            "idle" => scenarios::idle(self).await,
            "pipeline-throughput" => scenarios::throughput(self).await,
            "memory" => scenarios::memory(self).await,
            "drift" => scenarios::drift(self).await,
            other => anyhow::bail!("unknown scenario {other}; one of {SCENARIOS:?} or all"),
        }
    }
}

pub fn now_ms() -> u64 {
    u64::try_from(gwb_runtime::clock::system_now_ms()).unwrap_or_default()
}

fn machine() -> Value {
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    json!({"cpus": cpus, "cpu_model": model, "loadavg_at_end": load.trim()})
}
