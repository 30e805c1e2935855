//! gwb-collector: polls Microsoft Graph's group and user deltas and publishes what
//! changed as protobuf events, with publisher confirms. A round's deltaLink is stored
//! only after every event of the round is confirmed, so a crash means re-reading,
//! never a gap.

mod config;
mod cursor;
mod events;
mod round;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;

use gwb_bus::Publisher;
use gwb_graph::{GraphClient, Resource};
use gwb_runtime::{secret, shutdown, telemetry};

#[derive(Parser)]
#[command(name = "gwb-collector", version, about = "Graph delta collector of Group Writeback")]
struct Args {
    /// TOML configuration file; `GWB_*` environment variables override it.
    #[arg(long, env = "GWB_CONFIG")]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let config: config::Config = gwb_runtime::config::load(args.config.as_deref())?;
    telemetry::init_logging("gwb-collector", &config.log);
    let _ = rustls::crypto::ring::default_provider().install_default();

    let client_secret = secret::read_secret_file("graph.client_secret_file", &config.graph.client_secret_file)?;
    let graph = GraphClient::new(config.graph.clone(), client_secret)?;
    let cursors = cursor::CursorStore::open(&config.collector.state_path)
        .with_context(|| format!("collector.state_path {}", config.collector.state_path.display()))?;
    let publisher = Publisher::connect(config.bus.clone()).await?;
    let shutdown = shutdown::on_signals();

    let interval = Duration::from_millis(config.collector.poll_interval_ms());
    let mut collector = round::Collector::new(graph, publisher, cursors, config.collector.max_pages_per_round);
    tracing::info!(poll_interval_ms = interval.as_millis() as u64, "collector running");
    while !shutdown.is_triggered() {
        for resource in [Resource::Users, Resource::Groups] {
            // Users first: the planner resolves a group's members from what it knows
            // about users, so fresh anchors should arrive before the groups using them.
            if let Err(error) = collector.run_round(resource).await {
                tracing::warn!(%error, resource = resource.path(), "delta round failed; the cursor did not advance and the round will be retried");
                break;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.triggered() => {}
        }
    }
    tracing::info!("collector stopped");
    Ok(())
}
