//! Issue 9, case 3: the AD DC goes away in the middle of a run: first frozen
//! (SIGSTOP: connections hang, LDAP operations time out mid-batch), then killed and
//! started again (connections refused, then a fresh DC process). The writer retries,
//! nothing is lost or duplicated, and AD ends equal to the desired state.
//!
//! It uses a lab DC of its own (`scripts/lab-ad.sh up reliability`) so the other tests'
//! DC is never stopped. The outer test brings that lab up and runs the inner test in a
//! child process with the lab's GWB_LAB_* variables (the test harness reads them from
//! the environment). Small: 20 s of outage; `GWB_RELIABILITY_SCALE=full`: 60 s.

use std::time::{Duration, Instant};

use anyhow::ensure;
use gwb_tests::ad::LabAd;
use gwb_tests::fixture::TestLab;
use gwb_tests::pipeline::{Options, Pipeline};
use gwb_tests::workload::{Rng, Workload, compare_with_desired, scaled, synced_users};

const LAB: &str = "reliability";
const INNER: &str = "GWB_RELIABILITY_DIRECTORY_INNER";

fn repo() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn lab_ad(verb: &str) -> anyhow::Result<String> {
    let out = std::process::Command::new(repo().join("scripts/lab-ad.sh")).args([verb, LAB]).output()?;
    ensure!(out.status.success(), "lab-ad.sh {verb} {LAB}: {}", String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn signal(pid: &str, sig: &str) -> anyhow::Result<()> {
    let status = std::process::Command::new("kill").arg(format!("-{sig}")).arg(pid).status()?;
    ensure!(status.success(), "kill -{sig} {pid}");
    Ok(())
}

#[test]
fn directory_outage_mid_run_loses_nothing() -> anyhow::Result<()> {
    if std::env::var_os(INNER).is_some() {
        return Ok(()); // we are the child: only the inner test runs
    }
    // The child uses RabbitMQ: not while a test of this process that runs alone does.
    let _turn = gwb_tests::pipeline::shared_blocking();
    let env_file = lab_ad("up")?;
    let env = std::fs::read_to_string(&env_file)?;
    let mut child = std::process::Command::new(std::env::current_exe()?);
    // Test names leave out the crate: `reliability_directory::inner_directory_outage`.
    let module = module_path!().split_once("::").map(|(_, module)| module).unwrap_or(module_path!());
    let inner = format!("{module}::inner_directory_outage");
    child.args(["--exact", &inner, "--nocapture", "--test-threads", "1"]).env(INNER, "1");
    for line in env.lines() {
        if let Some((key, value)) = line.trim().strip_prefix("export ").and_then(|l| l.split_once('=')) {
            child.env(key, value.trim_matches('"').trim_matches('\''));
        }
    }
    let status = child.status()?;
    ensure!(status.success(), "the directory outage scenario failed (output above)");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn inner_directory_outage() -> anyhow::Result<()> {
    if std::env::var_os(INNER).is_none() {
        return Ok(()); // run through directory_outage_mid_run_loses_nothing
    }
    let lab_dir = std::path::PathBuf::from(std::env::var("GWB_LAB_DIR")?);
    let mut lab = TestLab::new("rel-dir").await?;
    let before = lab.outside().await?;
    let options = Options {
        planner_sections: "[deletion]\nmax_groups = 1000000\nmax_percent = 100\n".into(),
        ..Options::new(&lab.groups_ou)
    };
    let pipeline = Pipeline::start(options).await?;
    let started = Instant::now();
    let result = scenario(&pipeline, &lab_dir, &lab.users_ou, &lab.groups_ou).await;
    // Make sure the DC is serving again whatever happened.
    if let Ok(pid) = std::fs::read_to_string(lab_dir.join("samba.pid")) {
        let _ = signal(pid.trim(), "CONT");
    }
    let _ = lab_ad("up");
    lab.reconnect().await?;
    lab.finish_unchanged(pipeline, result, &before).await?;
    eprintln!("directory outage: passed in {:?}", started.elapsed());
    Ok(())
}

async fn scenario(
    pipeline: &Pipeline,
    lab_dir: &std::path::Path,
    users_ou: &str,
    groups_ou: &str,
) -> anyhow::Result<()> {
    let sim = &pipeline.sim;
    let ad = LabAd::from_env().await?;
    let users = synced_users(&ad, sim, users_ou, 30).await?;
    let mut workload = Workload::new(users, Rng::from_env("directory outage"));
    workload.create_groups(sim, 20).await?;
    ensure!(pipeline.gwbctl(&["enable"]).await?.status.success(), "enable failed");
    for _ in 0..60 {
        workload.step(sim).await?;
    }
    let outage = Duration::from_secs(scaled(20, 60));
    let pid = std::fs::read_to_string(lab_dir.join("samba.pid"))?.trim().to_string();
    // Half the outage frozen: connections hang mid-batch.
    signal(&pid, "STOP")?;
    let down = Instant::now();
    for _ in 0..60 {
        workload.step(sim).await?;
    }
    tokio::time::sleep((outage / 2).saturating_sub(down.elapsed())).await;
    // The other half dead: connections refused. SIGCONT first so SIGTERM is handled.
    signal(&pid, "CONT")?;
    signal(&pid, "TERM")?;
    for _ in 0..60 {
        workload.step(sim).await?;
    }
    tokio::time::sleep(outage.saturating_sub(down.elapsed())).await;
    lab_ad("up")?;
    eprintln!("directory outage: DC unavailable for {:?}", down.elapsed());
    for _ in 0..30 {
        workload.step(sim).await?;
    }
    let ad = LabAd::from_env().await?;
    let desired = workload.desired();
    let converge = Instant::now();
    pipeline
        .eventually("AD equals the desired state after the outage", Duration::from_secs(scaled(90, 300)), || {
            compare_with_desired(&ad, groups_ou, &desired)
        })
        .await?;
    eprintln!(
        "directory outage: {} changes, {} groups, converged {:?} after the DC came back",
        workload.changes,
        desired.len(),
        converge.elapsed()
    );
    let writer_log = pipeline.log("gwb-writer");
    eprintln!(
        "directory outage: writer logged {} 'directory unavailable' retries",
        writer_log.matches("directory unavailable").count()
    );
    // #15 item 8: the status loop says at warn what failed, with its class, once per
    // failure rather than once per status interval, and when the DC is back.
    let warned = writer_log.lines().filter(|l| l.contains("directory unavailable to the writer")).count();
    ensure!(warned >= 1 && writer_log.contains("class=Transient"), "the outage is logged at warn with its class");
    ensure!(writer_log.contains("directory reachable again"), "and its end");
    ensure!(!writer_log.contains('\u{1b}'), "a log that is not a terminal carries no colour codes");
    Ok(())
}
