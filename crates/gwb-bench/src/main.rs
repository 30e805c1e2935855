//! `gwb-bench <scenario|all> [--scale smoke|full]`: see README.md, "Benchmarks".

use std::path::PathBuf;

use clap::Parser;
use gwb_bench::{Bench, SCENARIOS, Scale};

#[derive(Parser)]
#[command(name = "gwb-bench", about = "Benchmarks of issue 8 against RabbitMQ, the lab AD DC and graph-sim")]
struct Args {
    /// initial-sync, incremental-latency, large-group, idle, pipeline-throughput, memory, drift, or all.
    scenario: String,
    #[arg(long, default_value = "full", value_parser = ["smoke", "full"])]
    scale: String,
    /// Directory with graph-sim, gwb-collector, gwb-planner, gwb-writer and gwbctl.
    #[arg(long, env = "GWB_BENCH_BIN_DIR")]
    bin_dir: Option<PathBuf>,
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
    /// Members of the large group at full scale.
    #[arg(long, default_value_t = 250_000)]
    large_members: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let scale = if args.scale == "smoke" { Scale::Smoke } else { Scale::Full };
    // Release binaries next to this one by default (cargo run --release puts it there).
    let bin_dir = match args.bin_dir {
        Some(dir) => dir,
        None => std::env::current_exe()?.parent().map(PathBuf::from).unwrap_or_else(|| PathBuf::from("target/release")),
    };
    let mut bench = Bench::new(scale, bin_dir, args.out);
    bench.large_members = args.large_members;
    let list: Vec<&str> = if args.scenario == "all" { SCENARIOS.to_vec() } else { vec![args.scenario.as_str()] };
    println!("| scenario             | scale | figures");
    let mut failed = Vec::new();
    for scenario in list {
        if let Err(error) = bench.run(scenario).await {
            eprintln!("{scenario} failed: {error:#}");
            failed.push(scenario);
        }
    }
    anyhow::ensure!(failed.is_empty(), "failed: {failed:?}");
    Ok(())
}
