//! Every scenario at smoke scale, so the suite cannot rot. Uses the debug binaries that
//! scripts/test.sh builds (`cargo build --workspace --bins`) and its `test` lab DC.

use std::path::Path;

use gwb_bench::{Bench, SCENARIOS, Scale};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_runs_at_smoke_scale() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map(std::path::PathBuf::from).unwrap_or_else(|| root.join("target"));
    let bench = Bench::new(Scale::Smoke, target.join("debug"), target.join("bench/smoke"));
    for scenario in SCENARIOS {
        bench.run(scenario).await.unwrap_or_else(|e| panic!("{scenario}: {e:#}"));
        let json = target.join("bench/smoke").join(format!("{scenario}.json"));
        assert!(json.exists(), "{} not written", json.display());
    }
}
