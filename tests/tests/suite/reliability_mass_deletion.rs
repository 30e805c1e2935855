//! Issue 9, case 7: a mass deletion in the tenant (small: 30 groups, full: 1,000)
//! exceeds the `[deletion]` defaults (max 100 groups or 10 % of the written ones) and is
//! held: nothing is deleted in AD until `gwbctl approve`, then everything is.

use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use gwb_tests::ad::LabAd;
use gwb_tests::pipeline::{Options, Pipeline, Rng, Workload, compare_with_desired, scaled, synced_users, unique};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mass_deletion_is_held_until_approved() -> anyhow::Result<()> {
    let groups = scaled(30, 1_000);
    let ad = LabAd::from_env().await?;
    let root = ad.create_ou(&unique("rel-massdel")).await?;
    let users_ou = ad.create_ou_in(&root, "Users").await?;
    let groups_ou = ad.create_ou_in(&root, "Groups").await?;
    let pipeline = Pipeline::start(Options::new(&groups_ou)).await?;
    let started = Instant::now();
    let result = async {
        let sim = &pipeline.sim;
        let users = synced_users(&ad, sim, &users_ou, 10).await?;
        let mut workload = Workload::new(users, Rng::from_env("mass deletion"));
        workload.create_groups(sim, groups).await?;
        ensure!(pipeline.gwbctl(&["enable"]).await?.status.success(), "enable failed");
        let all = workload.desired();
        pipeline
            .eventually("every group is written", Duration::from_secs(scaled(60, 600)), || {
                compare_with_desired(&ad, &groups_ou, &all)
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
            let left = gwb_tests::pipeline::ad_groups(&ad, &groups_ou).await.map(|g| g.len()).unwrap_or_default();
            return Err(error.context(format!(
                "{} of {} groups were deleted from AD without approval",
                all.len().saturating_sub(left),
                all.len()
            )));
        }
        // Held means held: several more rounds, still nothing deleted.
        let _ = pipeline.gwbctl(&["sync"]).await?;
        tokio::time::sleep(Duration::from_secs(5)).await;
        compare_with_desired(&ad, &groups_ou, &all).await.context("a held deletion reached AD")?;
        let held = pipeline.gwbctl_json(&["held"]).await?;
        eprintln!(
            "mass deletion: {} deletions held; first: {}",
            ids.len(),
            held.to_string().chars().take(300).collect::<String>()
        );
        let approved = pipeline.gwbctl(&["approve"]).await?;
        ensure!(approved.status.success(), "approve: {}", String::from_utf8_lossy(&approved.stderr));
        let none = Default::default();
        pipeline
            .eventually("approved deletions are carried out", Duration::from_secs(scaled(60, 600)), || {
                compare_with_desired(&ad, &groups_ou, &none)
            })
            .await?;
        Ok(())
    }
    .await;
    let logs = pipeline.log_tails();
    pipeline.stop().await?;
    ad.delete_subtree(&root).await?;
    result.with_context(|| logs)?;
    eprintln!("mass deletion: {groups} groups, {:?}", started.elapsed());
    Ok(())
}
