//! Two writer instances split the command partitions: groups are applied by both at
//! once, each group's commands still apply in order (create before members, members
//! before rename), and AD ends exactly in the tenant's state.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Context, ensure};
use graph_sim::{GroupFields, NewGroup, NewUser, UserFields};
use gwb_tests::ad::LabAd;
use gwb_tests::fixture::TestLab;
use gwb_tests::pipeline::{Options, Pipeline, metric_sum, unique};

const GROUPS: usize = 12;

/// Commands a writer applied, from its `/metrics`.
async fn applied_by(p: &Pipeline, writer: &str) -> anyhow::Result<f64> {
    Ok(metric_sum(&p.scrape(writer).await?, "gwb_commands_total", &["result=\"applied\""]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_writers_apply_partitions_in_parallel_and_in_order() -> anyhow::Result<()> {
    let lab = TestLab::new("e2e").await?;
    // The pipeline's own writer takes partition 0; a second instance takes partition 1.
    let mut pipeline = Pipeline::start(Options {
        writer_toml: "partitions = [0]".into(),
        planner_toml: "name_template = \"display_name\"".into(),
        ..Options::new(&lab.groups_ou)
    })
    .await?;
    let result = match pipeline.start_writer("gwb-writer-2", "partitions = [1]").await {
        Ok(()) => scenario(&lab.ad, &pipeline, &lab.users_ou).await,
        Err(error) => Err(error.context("starting the second writer")),
    };
    lab.finish(pipeline, result).await
}

async fn scenario(ad: &LabAd, p: &Pipeline, users_ou: &str) -> anyhow::Result<()> {
    let users = ad.create_users(users_ou, &unique("pw"), 3).await?;
    let mut ids = Vec::new();
    for (_, sid) in &users {
        let fields = UserFields {
            on_premises_security_identifier: Some(sid.clone()),
            on_premises_sync_enabled: Some(true),
            ..UserFields::default()
        };
        ids.push(p.sim.create_user(&NewUser { id: None, fields }).await?.user.id);
    }
    let enabled = p.gwbctl(&["enable"]).await?;
    ensure!(enabled.status.success(), "{enabled:?}");
    // Each group gets a sequence of dependent changes that must apply in order.
    let mut groups = Vec::new();
    for n in 0..GROUPS {
        let fields = GroupFields {
            display_name: Some(format!("Parallel {n}")),
            security_enabled: Some(true),
            mail_enabled: Some(false),
            group_types: Some(vec![]),
            ..GroupFields::default()
        };
        let group = p.sim.create_group(&NewGroup { id: None, fields, members: vec![ids[0]] }).await?.group.id;
        p.sim.add_members(group, &[ids[1], ids[2]]).await?;
        p.sim.remove_member(group, ids[0]).await?;
        p.sim
            .update_group(
                group,
                &GroupFields { display_name: Some(format!("Parallel {n} renamed")), ..GroupFields::default() },
                &[],
            )
            .await?;
        groups.push((n, group));
    }
    let wanted: BTreeSet<String> = [users[1].1.clone(), users[2].1.clone()].into();
    p.eventually("every group converged", Duration::from_secs(90), || async {
        for (n, group) in &groups {
            let found = ad.find_groups_by_anchor(&format!("Group_{group}")).await?;
            ensure!(found.len() == 1, "group {n}: {} AD objects", found.len());
            ensure!(found[0].dn.starts_with(&format!("CN=Parallel {n} renamed_")), "group {n}: {}", found[0].dn);
            let members = ad.member_sids(&found[0].dn).await?;
            ensure!(members == wanted, "group {n}: members {members:?}");
        }
        Ok(())
    })
    .await?;
    let first_applied = applied_by(p, "gwb-writer").await.context("first writer metrics")?;
    let second_applied = applied_by(p, "gwb-writer-2").await.context("second writer metrics")?;
    ensure!(
        first_applied > 0.0 && second_applied > 0.0,
        "both writers apply commands: {first_applied} and {second_applied}"
    );
    Ok(())
}
