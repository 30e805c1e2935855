//! Users whose cloud object is soft-deleted (F2: an Entra Connect OU-filter mistake
//! soft-deletes synced users whose AD accounts still exist) keep their written-back
//! memberships until they are permanently deleted, end to end against the real AD.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Context, ensure};
use graph_sim::{GroupFields, NewGroup, NewUser, UserFields};
use gwb_tests::fixture::TestLab;
use gwb_tests::pipeline::{Options, Pipeline, unique};

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_soft_deleted_user_keeps_its_groups_until_permanently_deleted() -> anyhow::Result<()> {
    let lab = TestLab::with_groups_ou("e2e-user-soft", "Cloud Groups").await?;
    let (_, alice_sid) = lab.ad.create_user(&lab.users_ou, &unique("alice")).await?;
    let (_, bob_sid) = lab.ad.create_user(&lab.users_ou, &unique("bob")).await?;
    let (_, dave_sid) = lab.ad.create_user(&lab.users_ou, &unique("dave")).await?;
    let before = lab.outside().await?;
    let pipeline = Pipeline::start(Options::new(&lab.groups_ou)).await?;
    let result = scenario(&lab, &pipeline, [&alice_sid, &bob_sid, &dave_sid]).await;
    lab.finish_unchanged(pipeline, result, &before).await
}

async fn scenario(lab: &TestLab, pipeline: &Pipeline, [alice_sid, bob_sid, dave_sid]: [&str; 3]) -> anyhow::Result<()> {
    let sim = &pipeline.sim;
    let synced = |name: &str, sid: &str| NewUser {
        id: None,
        fields: UserFields {
            display_name: Some(name.into()),
            user_principal_name: Some(format!("{}@lab.example", name.to_ascii_lowercase())),
            on_premises_security_identifier: Some(sid.into()),
            on_premises_sync_enabled: Some(true),
            ..UserFields::default()
        },
    };
    let alice = sim.create_user(&synced("Alice", alice_sid)).await?.user.id;
    let bob = sim.create_user(&synced("Bob", bob_sid)).await?.user.id;
    let group = sim
        .create_group(&NewGroup {
            id: None,
            fields: GroupFields {
                display_name: Some("Share Access".into()),
                mail_enabled: Some(false),
                security_enabled: Some(true),
                group_types: Some(vec![]),
                ..GroupFields::default()
            },
            members: vec![alice, bob],
        })
        .await?
        .group
        .id;
    let anchor = &format!("Group_{group}");
    let members_are = |expected: BTreeSet<String>, what: &'static str| async move {
        pipeline
            .eventually(what, WAIT, || async {
                let entry = lab.ad.find_groups_by_anchor(anchor).await?.into_iter().next().context("not in AD")?;
                let members = lab.ad.member_sids(&entry.dn).await?;
                ensure!(members == expected, "members {members:?}, expected {expected:?}");
                Ok(())
            })
            .await
    };
    let sids = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    let enabled = pipeline.gwbctl(&["enable"]).await?;
    ensure!(enabled.status.success(), "gwbctl enable: {}", String::from_utf8_lossy(&enabled.stderr));
    members_are(sids(&[alice_sid, bob_sid]), "the group is written with Alice and Bob").await?;

    // Bob is soft-deleted. Dave, created after it and added to the group, is the
    // marker: when Dave is in AD, Bob's removal (earlier in the users delta) has been
    // planned too, and Bob must still be there.
    sim.delete_user(bob, false).await?;
    let dave = sim.create_user(&synced("Dave", dave_sid)).await?.user.id;
    sim.add_members(group, &[dave]).await?;
    members_are(sids(&[alice_sid, bob_sid, dave_sid]), "Dave is added and soft-deleted Bob stays").await?;
    let status = pipeline.gwbctl_json(&["status"]).await?;
    ensure!(status["users_known"] == 3, "the soft-deleted user is still known: {status}");

    // Permanently deleted, Bob leaves the group.
    sim.delete_user(bob, true).await?;
    members_are(sids(&[alice_sid, dave_sid]), "permanently deleted Bob is removed").await?;
    Ok(())
}
