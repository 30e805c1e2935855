//! Issue 9, case 7: a mass deletion in the tenant (small: 30 groups, full: 1,000)
//! exceeds the `[deletion]` defaults (max 100 groups or 10 % of the written ones) and is
//! held: nothing is deleted in AD until `gwbctl approve`, then everything is.

use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use gwb_tests::fixture::TestLab;
use gwb_tests::pipeline::{Options, Pipeline};
use gwb_tests::workload::{Rng, Workload, ad_groups, compare_with_desired, scaled, synced_users};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mass_deletion_is_held_until_approved() -> anyhow::Result<()> {
    let groups = scaled(30, 1_000);
    let lab = TestLab::new("rel-massdel").await?;
    let pipeline = Pipeline::start(Options::new(&lab.groups_ou)).await?;
    let started = Instant::now();
    let (ad, users_ou, groups_ou) = (&lab.ad, &lab.users_ou, &lab.groups_ou);
    let result = async {
        let sim = &pipeline.sim;
        let users = synced_users(ad, sim, users_ou, 10).await?;
        let mut workload = Workload::new(users, Rng::from_env("mass deletion"));
        workload.create_groups(sim, groups).await?;
        pipeline.gwbctl_ok(&["enable"]).await?;
        let all = workload.desired();
        pipeline
            .eventually("every group is written", Duration::from_secs(scaled(60, 600)), || {
                compare_with_desired(ad, groups_ou, &all)
            })
            .await?;
        let ids: Vec<uuid::Uuid> = workload.groups.keys().copied().collect();
        for id in &ids {
            sim.delete_group(*id, true).await?;
        }
        let held = pipeline
            .eventually("the deletions are held", Duration::from_secs(scaled(60, 180)), || async {
                let status = pipeline.gwbctl_json(&["status"]).await?;
                ensure!(
                    status["held_deletions"].as_u64() == Some(ids.len() as u64),
                    "held_deletions {}",
                    status["held_deletions"]
                );
                Ok(())
            })
            .await;
        if let Err(error) = held {
            // Say how many went through without approval: the threshold applies to the
            // deletions of one delta round, and the tenant's deletions may span several.
            let left = ad_groups(ad, groups_ou).await.map(|g| g.len()).unwrap_or_default();
            return Err(error.context(format!(
                "{} of {} groups were deleted from AD without approval",
                all.len().saturating_sub(left),
                all.len()
            )));
        }
        // Held means held: several more rounds, still nothing deleted.
        let _ = pipeline.gwbctl(&["sync"]).await?;
        tokio::time::sleep(Duration::from_secs(5)).await;
        compare_with_desired(ad, groups_ou, &all).await.context("a held deletion reached AD")?;
        let held = pipeline.gwbctl_json(&["held"]).await?;
        eprintln!(
            "mass deletion: {} deletions held; first: {}",
            ids.len(),
            held.to_string().chars().take(300).collect::<String>()
        );
        pipeline.gwbctl_ok(&["approve"]).await?;
        let none = Default::default();
        pipeline
            .eventually("approved deletions are carried out", Duration::from_secs(scaled(60, 600)), || {
                compare_with_desired(ad, groups_ou, &none)
            })
            .await?;
        Ok(())
    }
    .await;
    lab.finish(pipeline, result).await?;
    eprintln!("mass deletion: {groups} groups, {:?}", started.elapsed());
    Ok(())
}
