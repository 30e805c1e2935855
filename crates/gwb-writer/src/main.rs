//! gwb-writer binary: parses its arguments, loads the configuration and runs
//! [`gwb_writer::run`] until SIGTERM or Ctrl-C.

use std::path::PathBuf;

use clap::Parser;

use gwb_runtime::{shutdown, telemetry};

#[derive(Parser)]
#[command(name = "gwb-writer", version, about = "AD writer of Group Writeback")]
struct Args {
    /// TOML configuration file; `GWB_*` environment variables override it.
    #[arg(long, env = "GWB_CONFIG")]
    config: Option<PathBuf>,
    /// Directory to report bound listener addresses in (`gwb-writer.<listener>.addr`).
    #[arg(long)]
    address_dir: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    gwb_runtime::listen::init("gwb-writer", args.address_dir.as_deref());
    let config: gwb_writer::Config = gwb_runtime::config::load(args.config.as_deref())?;
    telemetry::init_logging("gwb-writer", &config.log);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let shutdown = shutdown::on_signals();
    let metrics = gwb_runtime::metrics::Metrics::install("gwb-writer")?;
    gwb_runtime::metrics::start(&config.metrics, &metrics, shutdown.clone()).await?;
    let result = gwb_writer::run(config, gwb_writer::Listeners::default(), shutdown).await;
    telemetry::flush_traces();
    result?;
    Ok(())
}
