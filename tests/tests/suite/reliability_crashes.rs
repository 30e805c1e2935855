//! Issue 9, case 1: every service is killed with SIGKILL at random points during a
//! random workload of tenant changes and started again; at the end AD equals the
//! tenant's desired state (no duplicate group, no lost or extra member, nothing
//! outside the test's OU changed).
//!
//! Small scale (CI): ~300 changes, 5 kills. `GWB_RELIABILITY_SCALE=full`: 5,000
//! changes, 20 kills (scripts/reliability.sh).

use std::time::{Duration, Instant};

use anyhow::ensure;
use gwb_tests::ad::LabAd;
use gwb_tests::fixture::TestLab;
use gwb_tests::pipeline::{Options, Pipeline};
use gwb_tests::workload::{Rng, Workload, compare_with_desired, scaled, synced_users};

/// The deletion threshold has its own test (reliability_mass_deletion): here deletions
/// that pile up while a service is down must simply be carried out.
const NO_THRESHOLD: &str = "[deletion]\nmax_groups = 1000000\nmax_percent = 100\n";
const SERVICES: [&str; 3] = ["gwb-collector", "gwb-planner", "gwb-writer"];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_at_random_points_loses_nothing() -> anyhow::Result<()> {
    let changes: usize = scaled(300, 5_000);
    let kills: usize = scaled(5, 20);
    let lab = TestLab::new("rel-crash").await?;
    let before = lab.outside().await?;
    let mut pipeline =
        Pipeline::start(Options { planner_sections: NO_THRESHOLD.into(), ..Options::new(&lab.groups_ou) }).await?;
    let started = Instant::now();
    let result = scenario(&lab.ad, &mut pipeline, &lab.users_ou, &lab.groups_ou, changes, kills).await;
    lab.finish_unchanged(pipeline, result, &before).await?;
    eprintln!("crash test: {changes} changes, {kills} kills, {:?} in all", started.elapsed());
    Ok(())
}

async fn scenario(
    ad: &LabAd,
    pipeline: &mut Pipeline,
    users_ou: &str,
    groups_ou: &str,
    changes: usize,
    kills: usize,
) -> anyhow::Result<()> {
    let users = synced_users(ad, &pipeline.sim, users_ou, scaled(40, 200)).await?;
    let mut workload = Workload::new(users, Rng::from_env("crash test"));
    workload.create_groups(&pipeline.sim, scaled(20, 200)).await?;
    let out = pipeline.gwbctl(&["enable"]).await?;
    ensure!(out.status.success(), "enable: {}", String::from_utf8_lossy(&out.stderr));

    // Kill points spread over the workload at random offsets.
    let mut kill_at: Vec<usize> =
        (0..kills).map(|k| changes * k / kills + workload.rng.below((changes / kills).max(1))).collect();
    kill_at.sort();
    let mut next_kill = 0;
    let mut killed = Vec::new();
    while workload.changes < changes {
        workload.step(&pipeline.sim).await?;
        while next_kill < kill_at.len() && workload.changes >= kill_at[next_kill] {
            let service = SERVICES[workload.rng.below(SERVICES.len())];
            pipeline.restart(service).await?;
            killed.push(service);
            next_kill += 1;
        }
        // A bit of pacing so kills land in the middle of work rather than all at the start.
        if workload.changes.is_multiple_of(25) {
            tokio::time::sleep(Duration::from_millis(scaled(150, 50))).await;
        }
    }
    eprintln!("crash test: killed {killed:?}");
    let desired = workload.desired();
    let converge = Instant::now();
    pipeline
        .eventually("AD equals the tenant's desired state", Duration::from_secs(scaled(90, 600)), || {
            compare_with_desired(ad, groups_ou, &desired)
        })
        .await?;
    eprintln!(
        "crash test: {} groups, {} deleted, converged {:?} after the last change",
        desired.len(),
        workload.deleted.len(),
        converge.elapsed()
    );
    // And it stays equal (no late duplicate effect from a redelivered command).
    tokio::time::sleep(Duration::from_secs(3)).await;
    compare_with_desired(ad, groups_ou, &desired).await
}
