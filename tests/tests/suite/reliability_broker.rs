//! Issue 9, case 2: RabbitMQ is stopped (`rabbitmqctl stop_app`) in the middle of a
//! workload and started again: the services' connections and channels recover, no
//! change is lost and none has a duplicate effect (AD equals the desired state).
//!
//! Stopping the broker affects every test using RabbitMQ, so this case runs alone
//! (`Options::alone`: the other tests of this binary wait for it, and it waits for
//! them) and holds an exclusive lock on `$TMPDIR/gwb-broker-restart.lock` (which keeps
//! two concurrent runs of this test apart). `GWB_RELIABILITY_SKIP_BROKER=1` skips it
//! (for machines where the broker is shared).

use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use gwb_tests::ad::LabAd;
use gwb_tests::fixture::TestLab;
use gwb_tests::pipeline::{Options, Pipeline};
use gwb_tests::workload::{Rng, Workload, compare_with_desired, scaled, synced_users};

fn rabbitmqctl(verb: &str) -> anyhow::Result<()> {
    let out = std::process::Command::new("rabbitmqctl").arg(verb).output().context("running rabbitmqctl")?;
    ensure!(
        out.status.success(),
        "rabbitmqctl {verb}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broker_restart_mid_run_loses_nothing() -> anyhow::Result<()> {
    if std::env::var("GWB_RELIABILITY_SKIP_BROKER").is_ok() {
        eprintln!("skipped: GWB_RELIABILITY_SKIP_BROKER is set");
        return Ok(());
    }
    let lock = std::fs::File::create(std::env::temp_dir().join("gwb-broker-restart.lock"))?;
    lock.lock()?;
    let lab = TestLab::new("rel-broker").await?;
    let before = lab.outside().await?;
    let options = Options {
        planner_sections: "[deletion]\nmax_groups = 1000000\nmax_percent = 100\n".into(),
        alone: true,
        ..Options::new(&lab.groups_ou)
    };
    let pipeline = Pipeline::start(options).await?;
    let started = Instant::now();
    let result = scenario(&lab.ad, &pipeline, &lab.users_ou, &lab.groups_ou).await;
    // Whatever happened, the broker must be running again for everyone else.
    let _ = rabbitmqctl("start_app");
    lab.finish_unchanged(pipeline, result, &before).await?;
    eprintln!("broker restart: passed in {:?}", started.elapsed());
    Ok(())
}

async fn scenario(ad: &LabAd, pipeline: &Pipeline, users_ou: &str, groups_ou: &str) -> anyhow::Result<()> {
    let sim = &pipeline.sim;
    let users = synced_users(ad, sim, users_ou, 30).await?;
    let mut workload = Workload::new(users, Rng::from_env("broker restart"));
    workload.create_groups(sim, 20).await?;
    ensure!(pipeline.gwbctl(&["enable"]).await?.status.success(), "enable failed");
    let per_phase = scaled(100, 1_000);
    for _ in 0..per_phase {
        workload.step(sim).await?;
        if workload.changes.is_multiple_of(20) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // Mid-run: messages are in flight in every queue.
    rabbitmqctl("stop_app")?;
    let down = Instant::now();
    for _ in 0..per_phase {
        workload.step(sim).await?;
    }
    tokio::time::sleep(Duration::from_secs(scaled(8, 30)).saturating_sub(down.elapsed())).await;
    rabbitmqctl("start_app")?;
    eprintln!("broker restart: broker down for {:?}", down.elapsed());
    for _ in 0..per_phase {
        workload.step(sim).await?;
    }
    let desired = workload.desired();
    let converge = Instant::now();
    pipeline
        .eventually(
            "AD equals the desired state after the broker restart",
            Duration::from_secs(scaled(90, 300)),
            || compare_with_desired(ad, groups_ou, &desired),
        )
        .await?;
    eprintln!(
        "broker restart: {} changes, {} groups, converged {:?} after the last change",
        workload.changes,
        desired.len(),
        converge.elapsed()
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    compare_with_desired(ad, groups_ou, &desired).await?;
    let status = pipeline.gwbctl_json(&["status"]).await?;
    let unhealthy: Vec<_> = status["services"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|s| s["healthy"] != true)
        .collect();
    ensure!(unhealthy.is_empty(), "services unhealthy after the broker came back: {unhealthy:?}");
    Ok(())
}
