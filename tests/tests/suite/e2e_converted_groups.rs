//! Issue 14 item 4 (F3): a cloud group converted from AD (Group Source of Authority, or
//! directory sync switched off) keeps its AD group's SID in `onPremisesSecurityIdentifier`
//! with `onPremisesSyncEnabled` null. gwb never writes it as a second group: by default
//! it is skipped with the reason; with `adopt_converted_groups` it writes back to the
//! original group (same objectGUID and SID, left where it is), only in `adoptable_ous`.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Context, ensure};
use gwb_tests::fixture::TestLab;
use gwb_tests::pipeline::{Options, Pipeline, unique};
use gwb_tests::workload::{SyncedUser, security_fields, synced_users};

const WAIT: Duration = Duration::from_secs(60);

/// The cloud side of a converted group: not synced, carrying the AD group's SID.
async fn converted_group(
    pipeline: &Pipeline,
    name: &str,
    sid: &str,
    members: &[&SyncedUser],
) -> anyhow::Result<uuid::Uuid> {
    let fields = graph_sim::GroupFields {
        on_premises_security_identifier: Some(sid.to_string()),
        on_premises_sync_enabled: None,
        ..security_fields(name)
    };
    let members = members.iter().map(|u| u.id).collect();
    Ok(pipeline.sim.create_group(&graph_sim::NewGroup { id: None, fields, members }).await?.group.id)
}

async fn state_is(pipeline: &Pipeline, group: uuid::Uuid, state: &str) -> anyhow::Result<serde_json::Value> {
    pipeline.group_in_state(group, state, WAIT).await
}

/// Failed before: the converted group was created as a new group in the target OU.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_converted_group_is_skipped_and_never_written_twice() -> anyhow::Result<()> {
    let lab = TestLab::with_groups_ou("e2e-converted", "Cloud Groups").await?;
    let pipeline = Pipeline::start(Options::new(&lab.groups_ou)).await?;
    let result = async {
        let legacy = lab.ou("Legacy Groups").await?;
        let users = synced_users(&lab.ad, &pipeline.sim, &lab.users_ou, 2).await?;
        let (original, sid) = lab.ad.create_group(&legacy, &unique("fin"), &[&users[0].dn]).await?;
        let group = converted_group(&pipeline, "Finance Share", &sid, &[&users[0], &users[1]]).await?;
        let marker = pipeline.security_group("Marker", vec![users[0].id]).await?;
        pipeline.gwbctl_ok(&["enable"]).await?;
        let detail = state_is(&pipeline, group, "skipped").await?;
        let reason = detail["policy_reason"].as_str().unwrap_or_default();
        ensure!(
            reason.contains(&format!("AD group {sid} exists: {original}")),
            "the reason names the original: {reason}"
        );
        ensure!(reason.contains("adopt_converted_groups"), "the reason says how to adopt it: {reason}");
        state_is(&pipeline, marker, "written").await?;
        ensure!(
            lab.ad.find_groups_by_anchor(&format!("Group_{group}")).await?.is_empty(),
            "no AD object carries the converted group's anchor"
        );
        let original_members = lab.ad.member_sids(&original).await?;
        ensure!(
            original_members == BTreeSet::from([users[0].sid.clone()]),
            "the original is untouched: {original_members:?}"
        );
        // A later cloud change does not write it either.
        let changed = graph_sim::GroupFields { description: Some("changed".into()), ..Default::default() };
        pipeline.sim.update_group(group, &changed, &[]).await?;
        let second = pipeline.security_group("Marker 2", vec![users[1].id]).await?;
        state_is(&pipeline, second, "written").await?;
        state_is(&pipeline, group, "skipped").await?;
        ensure!(lab.ad.find_groups_by_anchor(&format!("Group_{group}")).await?.is_empty(), "still not written");
        Ok(())
    }
    .await;
    lab.finish(pipeline, result).await
}

/// With adoption on, the original group in an adoptable OU is written back to in
/// place (anchor stamped, members from the cloud, same SID and DN); one outside the
/// adoptable OUs is refused with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adoption_writes_back_to_the_original_group_in_an_adoptable_ou() -> anyhow::Result<()> {
    let lab = TestLab::with_groups_ou("e2e-adopt", "Cloud Groups").await?;
    let adoptable = lab.ou("Adoptable").await?;
    let elsewhere = lab.ou("Elsewhere").await?;
    let mut options = Options::new(&lab.groups_ou);
    options.directory_toml = format!("adopt_converted_groups = true\nadoptable_ous = [\"{adoptable}\"]");
    let pipeline = Pipeline::start(options).await?;
    let result = async {
        let users = synced_users(&lab.ad, &pipeline.sim, &lab.users_ou, 3).await?;
        let (original, sid) = lab.ad.create_group(&adoptable, &unique("hr"), &[&users[0].dn]).await?;
        let (outside, outside_sid) = lab.ad.create_group(&elsewhere, &unique("ops"), &[]).await?;
        // As at a conversion: the cloud group has the AD group's member, plus one added
        // in the cloud since.
        let adopted = converted_group(&pipeline, "HR Share", &sid, &[&users[0], &users[1]]).await?;
        let refused = converted_group(&pipeline, "Ops Share", &outside_sid, &[&users[0]]).await?;
        pipeline.gwbctl_ok(&["enable"]).await?;

        let detail = state_is(&pipeline, adopted, "written").await?;
        ensure!(detail["ad_object_sid"] == sid.as_str(), "the original's SID: {detail}");
        ensure!(
            detail["summary"]["ad_dn"].as_str().is_some_and(|dn| dn.eq_ignore_ascii_case(&original)),
            "in place: {detail}"
        );
        let carriers = lab.ad.find_groups_by_anchor(&format!("Group_{adopted}")).await?;
        ensure!(carriers.len() == 1, "exactly one group carries the anchor: {carriers:?}");
        let members_are = |wanted: BTreeSet<String>, what: &'static str| {
            let original = original.clone();
            let ad = &lab.ad;
            let pipeline = &pipeline;
            async move {
                pipeline
                    .eventually(what, WAIT, || async {
                        let members = ad.member_sids(&original).await?;
                        ensure!(members == wanted, "{members:?}");
                        Ok(())
                    })
                    .await
            }
        };
        let sids = |list: &[&SyncedUser]| list.iter().map(|u| u.sid.clone()).collect::<BTreeSet<_>>();
        members_are(sids(&[&users[0], &users[1]]), "the original has the cloud group's members").await?;
        // It is gwb's now: cloud changes reach it.
        pipeline.sim.remove_members(adopted, &[users[0].id]).await?;
        pipeline.sim.add_members(adopted, &[users[2].id]).await?;
        members_are(sids(&[&users[1], &users[2]]), "cloud member changes reach the adopted group").await?;

        let detail = state_is(&pipeline, refused, "skipped").await?;
        let reason = detail["policy_reason"].as_str().context("a reason")?;
        ensure!(reason.contains(&format!("AD group {outside_sid} exists: {outside}")), "{reason}");
        ensure!(reason.contains("outside [directory] adoptable_ous"), "{reason}");
        ensure!(lab.ad.find_groups_by_anchor(&format!("Group_{refused}")).await?.is_empty(), "nothing written for it");
        Ok(())
    }
    .await;
    lab.finish(pipeline, result).await
}
