//! Issue 14 item 3: the member-removal threshold, end to end against the real AD. A
//! cloud change that would take more than half of a 30-member group's members is
//! held: AD keeps every member, `gwbctl held` lists the group with the count and the
//! cause, `gwbctl approve <id>` removes them and `gwbctl discard <id>` leaves them.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Context, ensure};
use gwb_tests::fixture::TestLab;
use gwb_tests::pipeline::{Options, Pipeline};
use gwb_tests::workload::{SyncedUser, synced_users};

const WAIT: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mass_member_removal_waits_for_an_operator() -> anyhow::Result<()> {
    let lab = TestLab::with_groups_ou("e2e-member-removals", "Cloud Groups").await?;
    let before = lab.outside().await?;
    let pipeline = Pipeline::start(Options::new(&lab.groups_ou)).await?;
    let result = scenario(&lab, &pipeline).await;
    lab.finish_unchanged(pipeline, result, &before).await
}

async fn scenario(lab: &TestLab, pipeline: &Pipeline) -> anyhow::Result<()> {
    let sim = &pipeline.sim;
    let users = synced_users(&lab.ad, sim, &lab.users_ou, 62).await?;
    let (first, rest) = users.split_at(30);
    let (second, markers) = rest.split_at(30);
    let approved = pipeline.security_group("Approved Share", first.iter().map(|u| u.id).collect()).await?;
    let discarded = pipeline.security_group("Discarded Share", second.iter().map(|u| u.id).collect()).await?;
    let members_are = |group: uuid::Uuid, expected: BTreeSet<String>, what: &'static str| async move {
        let anchor = format!("Group_{group}");
        pipeline
            .eventually(what, WAIT, || async {
                let entry = lab.ad.find_groups_by_anchor(&anchor).await?.into_iter().next().context("not in AD")?;
                let members = lab.ad.member_sids(&entry.dn).await?;
                ensure!(members == expected, "{} members, expected {}", members.len(), expected.len());
                Ok(())
            })
            .await
    };
    let sids = |list: &[SyncedUser]| list.iter().map(|u| u.sid.clone()).collect::<BTreeSet<_>>();
    let ids = |list: &[SyncedUser]| list.iter().map(|u| u.id).collect::<Vec<_>>();
    pipeline.gwbctl_ok(&["enable"]).await?;
    members_are(approved, sids(first), "the first group is written with 30 members").await?;
    members_are(discarded, sids(second), "the second group is written with 30 members").await?;

    // The cloud takes 20 of 30 members from each group (67 % > 50 %): held.
    sim.remove_members(approved, &ids(&first[..20])).await?;
    sim.remove_members(discarded, &ids(&second[..20])).await?;
    pipeline
        .eventually("both groups' removals are held", WAIT, || async {
            let status = pipeline.gwbctl_json(&["status"]).await?;
            ensure!(status["held_member_removals"] == 40, "held_member_removals {}", status["held_member_removals"]);
            Ok(())
        })
        .await?;
    // Held means held: a later change to the same group (a marker member added) is
    // written, and AD still has every member the held removals would take.
    sim.add_members(approved, &[markers[0].id]).await?;
    sim.add_members(discarded, &[markers[1].id]).await?;
    let with_marker = |list: &[SyncedUser], marker: &SyncedUser| {
        let mut all = sids(list);
        all.insert(marker.sid.clone());
        all
    };
    members_are(approved, with_marker(first, &markers[0]), "AD keeps the first group's members").await?;
    members_are(discarded, with_marker(second, &markers[1]), "AD keeps the second group's members").await?;
    let held = pipeline.gwbctl_json(&["held"]).await?;
    let listed = held["member_removals"].as_array().context("member_removals listed")?;
    ensure!(listed.len() == 2, "two groups listed: {held}");
    for entry in listed {
        ensure!(entry["count"] == 20, "20 values per group: {entry}");
        let reason = entry["reason"].as_str().unwrap_or_default();
        ensure!(reason.contains("more than 50 % of the group's 30 members"), "the cause is given: {reason}");
    }
    let text = pipeline.gwbctl_ok(&["held"]).await?;
    ensure!(text.contains("40 member removal(s) held in 2 group(s)"), "gwbctl held says so: {text}");

    // Approve one group: its 20 members go. Discard the other: AD keeps them.
    let out = pipeline.gwbctl_ok(&["approve", &approved.to_string()]).await?;
    ensure!(out.contains("20 held member removal(s) approved"), "{out}");
    let out = pipeline.gwbctl_ok(&["discard", &discarded.to_string()]).await?;
    ensure!(out.contains("20 held member removal(s) discarded"), "{out}");
    members_are(approved, with_marker(&first[20..], &markers[0]), "approved removals are carried out").await?;
    // After a discard the next removal is judged on its own: one member goes.
    sim.remove_members(discarded, &[second[25].id]).await?;
    let mut kept = with_marker(second, &markers[1]);
    kept.remove(&second[25].sid);
    members_are(discarded, kept, "discarded removals stay; a single later removal is made").await?;
    let status = pipeline.gwbctl_json(&["status"]).await?;
    ensure!(status["held_member_removals"] == 0, "nothing is held any more: {status}");
    Ok(())
}
