//! Users whose cloud object is soft-deleted (F2: an Entra Connect OU-filter mistake
//! soft-deletes synced users whose AD accounts still exist) keep their written-back
//! memberships until they are permanently deleted, end to end against the real AD.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Context, ensure};
use graph_sim::{RemovedReason, SettingsPatch};
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
    let alice = pipeline.synced_user(alice_sid).await?;
    let bob = pipeline.synced_user(bob_sid).await?;
    let group = pipeline.security_group("Share Access", vec![alice, bob]).await?;
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
    let dave = pipeline.synced_user(dave_sid).await?;
    sim.add_members(group, &[dave]).await?;
    members_are(sids(&[alice_sid, bob_sid, dave_sid]), "Dave is added and soft-deleted Bob stays").await?;
    let status = pipeline.gwbctl_json(&["status"]).await?;
    ensure!(status["users_known"] == 3, "the soft-deleted user is still known: {status}");

    // Permanently deleted, Bob leaves the group.
    sim.delete_user(bob, true).await?;
    members_are(sids(&[alice_sid, dave_sid]), "permanently deleted Bob is removed").await?;
    Ok(())
}

/// F7: an `@removed` annotation without a reason, or with one this version does not know
/// (`unknownFutureValue`), is a soft removal: a group deleted that way is kept in AD
/// (`on_soft_delete = "keep"`), and only `"deleted"` deletes. Failed with the parser
/// treating anything but `"changed"` as permanent (checked by flipping it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removal_without_a_known_reason_is_soft() -> anyhow::Result<()> {
    let lab = TestLab::with_groups_ou("e2e-removed-reason", "Cloud Groups").await?;
    let (_, alice_sid) = lab.ad.create_user(&lab.users_ou, &unique("alice")).await?;
    let pipeline = Pipeline::start(Options::new(&lab.groups_ou)).await?;
    let result = async {
        let sim = &pipeline.sim;
        let alice = pipeline.synced_user(&alice_sid).await?;
        let omitted = pipeline.security_group("No Reason", vec![alice]).await?;
        let unknown = pipeline.security_group("Unknown Reason", vec![alice]).await?;
        let documented = pipeline.security_group("Deleted", vec![alice]).await?;
        pipeline.gwbctl_ok(&["enable"]).await?;
        for group in [omitted, unknown, documented] {
            pipeline.group_in_state(group, "written", WAIT).await?;
        }
        for (group, shape) in [(omitted, RemovedReason::Omitted), (unknown, RemovedReason::Unknown)] {
            sim.update_settings(&SettingsPatch { removed_reason: Some(shape), ..Default::default() }).await?;
            sim.delete_group(group, true).await?;
            pipeline.group_in_state(group, "kept", WAIT).await?;
        }
        sim.update_settings(&SettingsPatch { removed_reason: Some(RemovedReason::Documented), ..Default::default() })
            .await?;
        sim.delete_group(documented, true).await?;
        pipeline.group_in_state(documented, "deleted", WAIT).await?;
        for group in [omitted, unknown] {
            let anchor = format!("Group_{group}");
            let entry = lab.ad.find_groups_by_anchor(&anchor).await?.into_iter().next().context("kept in AD")?;
            let members = lab.ad.member_sids(&entry.dn).await?;
            ensure!(members == BTreeSet::from([alice_sid.clone()]), "kept with its member: {members:?}");
        }
        ensure!(pipeline.log("gwb-collector").contains("@removed without a known reason"), "the collector warns");
        Ok(())
    }
    .await;
    lab.finish(pipeline, result).await
}

/// F21: `members@delta` entries without `@odata.type` are typed with
/// `directoryObjects/getByIds`, so a user member is written, not skipped as "other".
/// Failed before: the member was skipped silently.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_without_a_type_are_resolved() -> anyhow::Result<()> {
    let lab = TestLab::with_groups_ou("e2e-untyped", "Cloud Groups").await?;
    let (_, alice_sid) = lab.ad.create_user(&lab.users_ou, &unique("alice")).await?;
    let pipeline = Pipeline::start(Options::new(&lab.groups_ou)).await?;
    let result = async {
        let sim = &pipeline.sim;
        sim.update_settings(&SettingsPatch { omit_member_types: Some(true), ..Default::default() }).await?;
        let alice = pipeline.synced_user(&alice_sid).await?;
        let group = pipeline.security_group("Untyped Members", vec![alice]).await?;
        pipeline.gwbctl_ok(&["enable"]).await?;
        let anchor = format!("Group_{group}");
        pipeline
            .eventually("Alice is written as a member", WAIT, || async {
                let entry = lab.ad.find_groups_by_anchor(&anchor).await?.into_iter().next().context("not in AD")?;
                let members = lab.ad.member_sids(&entry.dn).await?;
                ensure!(members == BTreeSet::from([alice_sid.clone()]), "members {members:?}");
                Ok(())
            })
            .await?;
        ensure!(pipeline.log("gwb-collector").contains("resolved with getByIds"), "the collector says so");
        Ok(())
    }
    .await;
    lab.finish(pipeline, result).await
}
