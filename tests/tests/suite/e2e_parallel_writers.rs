//! Two writer instances split the command partitions: groups are applied by both at
//! once, each group's commands still apply in order (create before members, members
//! before rename), and AD ends exactly in the tenant's state.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Context, ensure};
use graph_sim::{GroupFields, NewGroup, NewUser, UserFields};
use gwb_tests::ad::LabAd;
use gwb_tests::pipeline::{Options, Pipeline, binary, free_port, unique, without_gwb_env};

const GROUPS: usize = 12;

async fn applied_by(addr: &str) -> anyhow::Result<f64> {
    let body = reqwest_lite(addr).await?;
    Ok(body
        .lines()
        .filter(|line| line.starts_with("gwb_commands_total") && line.contains("result=\"applied\""))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

/// `GET /metrics` with a plain TCP request (the test needs nothing more).
async fn reqwest_lite(addr: &str) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream.write_all(format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes()).await?;
    let mut body = String::new();
    stream.read_to_string(&mut body).await?;
    Ok(body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_writers_apply_partitions_in_parallel_and_in_order() -> anyhow::Result<()> {
    let ad = LabAd::from_env().await?;
    let root = ad.create_ou(&unique("e2e")).await?;
    let users_ou = ad.create_ou_in(&root, "Users").await?;
    let groups_ou = ad.create_ou_in(&root, "Groups").await?;
    // The pipeline's own writer takes partition 0; a second instance takes partition 1.
    let pipeline = Pipeline::start(Options {
        writer_sections: "partitions = [0]".into(),
        planner_toml: "name_template = \"display_name\"".into(),
        ..Options::new(&groups_ou)
    })
    .await?;
    let second_config = pipeline.dir.join("gwb-writer-2.toml");
    let second_metrics = format!("127.0.0.1:{}", free_port()?);
    let first = std::fs::read_to_string(pipeline.dir.join("gwb-writer.toml"))?;
    let second = first
        .replace("partitions = [0]", "partitions = [1]")
        .replace("id = \"", "id = \"second-")
        .lines()
        .map(|line| {
            if line.starts_with("control_listen") {
                format!("control_listen = \"127.0.0.1:{}\"", free_port().unwrap_or(0))
            } else if line.starts_with("listen") {
                format!("listen = \"{second_metrics}\"")
            } else {
                line.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&second_config, second)?;
    let log = std::fs::File::create(pipeline.dir.join("gwb-writer-2.log"))?;
    let mut second_writer = without_gwb_env(&mut tokio::process::Command::new(binary("gwb-writer")?))
        .arg("--config")
        .arg(&second_config)
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()?;

    let result = scenario(&ad, &pipeline, &users_ou, &second_metrics).await;
    let _ = second_writer.kill().await;
    let logs = pipeline.log_tails();
    pipeline.stop().await?;
    ad.delete_subtree(&root).await?;
    result.with_context(|| logs)
}

async fn scenario(ad: &LabAd, p: &Pipeline, users_ou: &str, second_metrics: &str) -> anyhow::Result<()> {
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
    let (_, first_metrics) = p.metrics.iter().find(|(name, _)| name == "gwb-writer").context("writer metrics")?;
    let first_applied = applied_by(&first_metrics.to_string()).await?;
    let second_applied = applied_by(second_metrics).await?;
    ensure!(
        first_applied > 0.0 && second_applied > 0.0,
        "both writers apply commands: {first_applied} and {second_applied}"
    );
    Ok(())
}
