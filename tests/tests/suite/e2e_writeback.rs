//! The walking skeleton, end to end: a cloud group created in graph-sim appears with
//! its synced members in the real (Samba) AD, carried by the real collector, planner
//! and writer over the real RabbitMQ; membership changes, renames and deletion follow;
//! nothing outside the test's OU changes.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Context, ensure};
use graph_sim::{GroupFields, NewGroup, NewUser, UserFields};
use gwb_tests::ad::LabAd;
use gwb_tests::fixture::TestLab;
use gwb_tests::pipeline::{Options, Pipeline, unique};

const WAIT: Duration = Duration::from_secs(60);
const UNIVERSAL_SECURITY: i32 = -2147483640;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloud_group_is_written_back_and_follows_the_cloud() -> anyhow::Result<()> {
    let lab = TestLab::with_groups_ou("e2e", "Cloud Groups").await?;
    // sAMAccountNames are domain-wide: unique names keep parallel and repeated runs apart.
    let (_, alice_sid) = lab.ad.create_user(&lab.users_ou, &unique("alice")).await?;
    let (_, bob_sid) = lab.ad.create_user(&lab.users_ou, &unique("bob")).await?;
    // Everything outside the test's OU but other tests' fixture OUs (they share the DC
    // and run at the same time): `fixture::without_volatile`.
    let before = lab.outside().await?;

    let pipeline = Pipeline::start(Options {
        planner_toml: "name_template = \"display_name\"".into(),
        ..Options::new(&lab.groups_ou)
    })
    .await?;
    let result = scenario(&lab.ad, &pipeline, &lab.groups_ou, &alice_sid, &bob_sid).await;
    lab.finish_unchanged(pipeline, result, &before).await
}

async fn scenario(
    ad: &LabAd,
    pipeline: &Pipeline,
    groups_ou: &str,
    alice_sid: &str,
    bob_sid: &str,
) -> anyhow::Result<()> {
    let sim = &pipeline.sim;
    let synced = gwb_tests::workload::synced_user_named;
    let alice = sim.create_user(&synced("Alice Synced", alice_sid)).await?.user.id;
    let bob = sim.create_user(&synced("Bob Synced", bob_sid)).await?.user.id;
    let carol = sim
        .create_user(&NewUser {
            id: None,
            fields: UserFields {
                display_name: Some("Carol Cloud".into()),
                user_principal_name: Some("carol@contoso.onmicrosoft.com".into()),
                ..UserFields::default()
            },
        })
        .await?
        .user
        .id;
    let group = sim
        .create_group(&NewGroup {
            id: None,
            fields: GroupFields {
                display_name: Some("Finance Team".into()),
                description: Some("Cloud security group".into()),
                mail_enabled: Some(false),
                security_enabled: Some(true),
                group_types: Some(vec![]),
                ..GroupFields::default()
            },
            members: vec![alice, bob, carol],
        })
        .await?
        .group
        .id;
    let group_id = group.to_string();
    let anchor = format!("Group_{group_id}");

    // Writeback is off until an operator turns it on: the planner learns the group,
    // AD stays untouched.
    pipeline
        .eventually("the planner knows the group", WAIT, || async {
            let detail = pipeline.gwbctl_json(&["group", &group_id]).await?;
            ensure!(detail["summary"]["display_name"] == "Finance Team", "{detail}");
            Ok(())
        })
        .await?;
    let status = pipeline.gwbctl_json(&["status"]).await?;
    ensure!(status["writeback_enabled"] == false, "writeback must start off: {status}");
    ensure!(ad.find_groups_by_anchor(&anchor).await?.is_empty(), "written before writeback was enabled");

    let enabled = pipeline.gwbctl(&["enable"]).await?;
    ensure!(enabled.status.success(), "gwbctl enable: {}", String::from_utf8_lossy(&enabled.stderr));

    // b. the group exists in the target OU, universal security, anchored, with exactly
    //    the two synced members.
    let mut written_guid = String::new();
    pipeline
        .eventually("the group is in AD with its two synced members", WAIT, || async {
            let found = ad.find_groups_by_anchor(&anchor).await?;
            ensure!(found.len() == 1, "expected one group with adminDescription={anchor}, found {}", found.len());
            let entry = &found[0];
            ensure!(
                entry.dn.to_ascii_lowercase().ends_with(&groups_ou.to_ascii_lowercase()),
                "{} is not in {groups_ou}",
                entry.dn
            );
            ensure!(entry.dn.starts_with("CN=Finance Team_"), "unexpected DN {}", entry.dn);
            ensure!(entry.group_type == UNIVERSAL_SECURITY, "groupType {}", entry.group_type);
            ensure!(
                entry.admin_description.as_deref() == Some(anchor.as_str()),
                "adminDescription {:?}",
                entry.admin_description
            );
            ensure!(
                entry.description.as_deref() == Some("Cloud security group"),
                "description {:?}",
                entry.description
            );
            let members = ad.member_sids(&entry.dn).await?;
            ensure!(members == BTreeSet::from([alice_sid.to_string(), bob_sid.to_string()]), "members {members:?}");
            Ok(())
        })
        .await?;
    if let Some(entry) = ad.find_groups_by_anchor(&anchor).await?.first() {
        written_guid = entry.guid.clone();
    }

    // The cloud-only member is skipped with a reason the operator can read.
    pipeline
        .eventually("gwbctl shows the group written and the skipped member", WAIT, || async {
            let detail = pipeline.gwbctl_json(&["group", &group_id]).await?;
            ensure!(detail["summary"]["state"] == "written", "{detail}");
            ensure!(detail["ad_object_guid"] == written_guid.as_str(), "{detail}");
            let skipped = detail["members_skipped"].as_array().context("members_skipped")?;
            ensure!(skipped.len() == 1 && skipped[0]["member_id"] == carol.to_string().as_str(), "{detail}");
            ensure!(skipped[0]["reason"].as_str().unwrap_or_default().contains("cloud-only"), "{detail}");
            Ok(())
        })
        .await?;

    // c. removing a member in the tenant removes it in AD…
    sim.remove_member(group, bob).await?;
    pipeline
        .eventually("Bob is removed from the AD group", WAIT, || async {
            let entry = ad.find_groups_by_anchor(&anchor).await?.into_iter().next().context("group vanished")?;
            let members = ad.member_sids(&entry.dn).await?;
            ensure!(members == BTreeSet::from([alice_sid.to_string()]), "members {members:?}");
            Ok(())
        })
        .await?;

    // …and renaming the group renames the same AD object.
    sim.update_group(
        group,
        &GroupFields { display_name: Some("Finance, Risk & Audit".into()), ..GroupFields::default() },
        &[],
    )
    .await?;
    pipeline
        .eventually("the AD group is renamed in place", WAIT, || async {
            let found = ad.find_groups_by_anchor(&anchor).await?;
            ensure!(found.len() == 1, "expected one group, found {}", found.len());
            let entry = &found[0];
            ensure!(entry.dn.starts_with("CN=Finance\\, Risk & Audit_"), "DN {}", entry.dn);
            ensure!(entry.guid == written_guid, "objectGUID changed from {written_guid} to {}", entry.guid);
            ensure!(
                entry.display_name.as_deref() == Some("Finance, Risk & Audit"),
                "displayName {:?}",
                entry.display_name
            );
            Ok(())
        })
        .await?;

    // d. deleting the group in the tenant deletes it in AD.
    sim.delete_group(group, false).await?;
    pipeline
        .eventually("the AD group is deleted", WAIT, || async {
            let found = ad.find_groups_by_anchor(&anchor).await?;
            ensure!(found.is_empty(), "still in AD: {:?}", found.iter().map(|g| &g.dn).collect::<Vec<_>>());
            Ok(())
        })
        .await?;
    Ok(())
}
