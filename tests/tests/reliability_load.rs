//! Issue 9, case 9: sustained load, 200 tenant changes per second (small: 20 s; full,
//! `GWB_RELIABILITY_SCALE=full`: 5 minutes). Every 2 s the test samples the planner's
//! commands in flight and the age of the oldest one (the lag), and the RSS of each
//! service. It asserts the lag stays bounded, memory stays flat (last samples within
//! a bound of the post-warm-up ones) and AD ends equal to the desired state; the
//! figures are printed (`--nocapture`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use gwb_tests::ad::LabAd;
use gwb_tests::pipeline::{Options, Pipeline, Rng, Workload, compare_with_desired, scaled, synced_users, unique};

const SERVICES: [&str; 3] = ["gwb-collector", "gwb-planner", "gwb-writer"];
const RATE: f64 = 200.0;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "not met yet: this mix at 200 changes/s (10 % creates, 11 % renames, 4 % deletes) exceeds what the lab Samba DC on 2 shared cores applies (~45 changes/s end to end after batching); the backlog grows, AD catches up ~70 s after 20 s of load. Run with scripts/reliability.sh"]
async fn sustained_load_keeps_lag_bounded_and_memory_flat() -> anyhow::Result<()> {
    let seconds: u64 = scaled(20, 300);
    let ad = LabAd::from_env().await?;
    let root = ad.create_ou(&unique("rel-load")).await?;
    let users_ou = ad.create_ou_in(&root, "Users").await?;
    let groups_ou = ad.create_ou_in(&root, "Groups").await?;
    let options = Options { planner_sections: "[deletion]\nmax_groups = 1000000\nmax_percent = 100\n".into(), ..Options::new(&groups_ou) };
    let pipeline = Pipeline::start(options).await?;
    let result = scenario(&ad, &pipeline, &users_ou, &groups_ou, seconds).await;
    let logs = pipeline.log_tails();
    pipeline.stop().await?;
    ad.delete_subtree(&root).await?;
    result.with_context(|| logs)
}

struct Sample {
    at: Duration,
    in_flight: u64,
    oldest_ms: u64,
    rss: BTreeMap<&'static str, u64>,
}

async fn sample(pipeline: &Pipeline, start: Instant) -> anyhow::Result<Sample> {
    let status = pipeline.gwbctl_json(&["status"]).await?;
    Ok(Sample {
        at: start.elapsed(),
        in_flight: status["commands_in_flight"].as_u64().unwrap_or_default(),
        oldest_ms: status["oldest_in_flight_ms"].as_u64().unwrap_or_default(),
        rss: SERVICES.iter().map(|s| (*s, pipeline.rss_kib(s).unwrap_or_default())).collect(),
    })
}

async fn scenario(ad: &LabAd, pipeline: &Pipeline, users_ou: &str, groups_ou: &str, seconds: u64) -> anyhow::Result<()> {
    let sim = &pipeline.sim;
    // Graph-sized pages (the harness default of 1–3 objects per page is for paging tests).
    let paging = graph_sim::PagingConfig { max_objects_per_page: 100, min_objects_per_page: 50, member_slice: 500, empty_page_every: None, shuffle: true };
    sim.update_settings(&graph_sim::SettingsPatch { paging: Some(paging), ..Default::default() }).await?;
    let users = synced_users(ad, sim, users_ou, scaled(100, 500)).await?;
    let mut workload = Workload::new(users, Rng::from_env("load"));
    workload.create_groups(sim, scaled(50, 200)).await?;
    ensure!(pipeline.gwbctl(&["enable"]).await?.status.success(), "enable failed");
    let initial = workload.desired();
    pipeline.eventually("the initial groups are written", Duration::from_secs(120), || compare_with_desired(ad, groups_ou, &initial)).await?;

    let start = Instant::now();
    let mut samples = vec![sample(pipeline, start).await?];
    let mut next_sample = Duration::from_secs(2);
    let first_change = workload.changes;
    while start.elapsed() < Duration::from_secs(seconds) {
        let due = ((workload.changes - first_change) as f64 / RATE) as u64;
        let ahead = Duration::from_millis(due * 1000).saturating_sub(start.elapsed());
        if !ahead.is_zero() {
            tokio::time::sleep(ahead.min(Duration::from_millis(20))).await;
            continue;
        }
        workload.step(sim).await?;
        if start.elapsed() >= next_sample {
            samples.push(sample(pipeline, start).await?);
            next_sample += Duration::from_secs(2);
        }
    }
    let load_time = start.elapsed();
    let changes = workload.changes - first_change;
    let desired = workload.desired();
    let drain = Instant::now();
    let caught_up = pipeline.eventually("AD catches up with the load", Duration::from_secs(scaled(120, 600)), || compare_with_desired(ad, groups_ou, &desired)).await;
    let drain_time = drain.elapsed();
    samples.push(sample(pipeline, start).await?);

    eprintln!("load: {changes} changes in {load_time:?} = {:.0}/s; AD caught up {drain_time:?} after the last change", changes as f64 / load_time.as_secs_f64());
    eprintln!("load:   t(s)  in-flight  oldest(ms)  {}", SERVICES.iter().map(|s| format!("{s} RSS(MiB)")).collect::<Vec<_>>().join("  "));
    for s in &samples {
        eprintln!("load: {:6.1} {:10} {:11}  {}", s.at.as_secs_f64(), s.in_flight, s.oldest_ms, SERVICES.iter().map(|n| format!("{:>18.1}", s.rss[n] as f64 / 1024.0)).collect::<Vec<_>>().join("  "));
    }
    let max_oldest = samples.iter().map(|s| s.oldest_ms).max().unwrap_or_default();
    let max_in_flight = samples.iter().map(|s| s.in_flight).max().unwrap_or_default();
    eprintln!("load: max commands in flight {max_in_flight}, max oldest in flight {max_oldest} ms");
    caught_up?;
    ensure!(changes as f64 >= RATE * load_time.as_secs_f64() * 0.8, "the test could only drive {changes} changes in {load_time:?}");
    ensure!(max_oldest < 30_000, "lag not bounded: a command waited {max_oldest} ms");
    ensure!(drain_time < Duration::from_secs(60), "AD needed {drain_time:?} to catch up after the load");
    // Flat memory: compare the mean of the last quarter with the samples after warm-up.
    let quarter = (samples.len() / 4).max(1);
    for service in SERVICES {
        let mean = |part: &[Sample]| part.iter().map(|s| s.rss[service]).sum::<u64>() as f64 / part.len().max(1) as f64;
        let warm = mean(&samples[1.min(samples.len() - 1)..(1 + quarter).min(samples.len())]);
        let last = mean(&samples[samples.len() - quarter..]);
        eprintln!("load: {service} RSS after warm-up {:.1} MiB, at the end {:.1} MiB", warm / 1024.0, last / 1024.0);
        ensure!(last <= warm * 1.5 + 64.0 * 1024.0, "{service} memory grew from {warm} KiB to {last} KiB");
    }
    Ok(())
}
