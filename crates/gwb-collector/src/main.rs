//! gwb-collector binary: loads the configuration and runs [`gwb_collector::run`] until
//! SIGTERM or Ctrl-C.

use std::path::PathBuf;

use clap::Parser;

use gwb_runtime::{shutdown, telemetry};

#[derive(Parser)]
#[command(name = "gwb-collector", version, about = "Graph delta collector of Group Writeback")]
struct Args {
    /// TOML configuration file; `GWB_*` environment variables override it.
    #[arg(long, env = "GWB_CONFIG")]
    config: Option<PathBuf>,
    /// Directory to write each bound listener's address in (`gwb-collector.<listener>.addr`).
    #[arg(long)]
    address_dir: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let config: gwb_collector::Config = gwb_runtime::config::load(args.config.as_deref())?;
    telemetry::init_logging("gwb-collector", &config.log);
    gwb_runtime::listen::init("gwb-collector", args.address_dir.as_deref());
    let _ = rustls::crypto::ring::default_provider().install_default();
    let shutdown = shutdown::on_signals();
    let metrics = gwb_runtime::metrics::Metrics::install("gwb-collector")?;
    gwb_runtime::metrics::start(&config.metrics, &metrics, shutdown.clone()).await?;
    let result = gwb_collector::run(config, gwb_collector::Listeners::default(), shutdown).await;
    telemetry::flush_traces();
    result?;
    Ok(())
}
