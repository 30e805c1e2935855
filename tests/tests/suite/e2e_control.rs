//! The operator's control plane end to end, driven through gwbctl against the real
//! services, RabbitMQ and the lab AD: refusals, preview, audit, per-group overrides,
//! pause/resume, the enable → disable(keep) → re-enable → disable(delete) cycle, and
//! held deletions.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Context, ensure};
use gwb_tests::ad::LabAd;
use gwb_tests::fixture::TestLab;
use gwb_tests::pipeline::{Options, Pipeline, unique};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(60);

struct Fixture {
    lab: TestLab,
    users: Vec<(Uuid, String)>,
}

/// An OU tree with `count` AD users, and the same users synced in the tenant.
async fn fixture(pipeline_options: impl FnOnce(&str) -> Options, count: usize) -> anyhow::Result<(Fixture, Pipeline)> {
    let lab = TestLab::new("e2e").await?;
    let pipeline = Pipeline::start(pipeline_options(&lab.groups_ou)).await?;
    let mut users = Vec::new();
    for _ in 0..count {
        let (_, sid) = lab.ad.create_user(&lab.users_ou, &unique("u")).await?;
        users.push((pipeline.synced_user(&sid).await?, sid));
    }
    Ok((Fixture { lab, users }, pipeline))
}

async fn ad_members(ad: &LabAd, group: Uuid) -> anyhow::Result<Option<BTreeSet<String>>> {
    let found = ad.find_groups_by_anchor(&format!("Group_{group}")).await?;
    match found.as_slice() {
        [] => Ok(None),
        [entry] => Ok(Some(ad.member_sids(&entry.dn).await?)),
        many => anyhow::bail!("{} AD groups carry the anchor of {group}", many.len()),
    }
}

async fn expect_members(pipeline: &Pipeline, ad: &LabAd, group: Uuid, sids: &[&str], what: &str) -> anyhow::Result<()> {
    let wanted: BTreeSet<String> = sids.iter().map(|s| s.to_string()).collect();
    pipeline
        .eventually(what, WAIT, || async {
            let members = ad_members(ad, group).await?.context("group not in AD")?;
            ensure!(members == wanted, "members {members:?}, want {wanted:?}");
            Ok(())
        })
        .await
}

async fn expect_absent(pipeline: &Pipeline, ad: &LabAd, group: Uuid, what: &str) -> anyhow::Result<()> {
    pipeline
        .eventually(what, WAIT, || async {
            ensure!(ad_members(ad, group).await?.is_none(), "still in AD");
            Ok(())
        })
        .await
}

async fn expect_state(pipeline: &Pipeline, group: Uuid, state: &str) -> anyhow::Result<serde_json::Value> {
    pipeline.group_in_state(group, state, WAIT).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_cycle_through_gwbctl() -> anyhow::Result<()> {
    let (fixture, pipeline) = fixture(Options::new, 2).await?;
    let result = operator_cycle(&fixture, &pipeline).await;
    fixture.lab.finish(pipeline, result).await
}

async fn operator_cycle(f: &Fixture, p: &Pipeline) -> anyhow::Result<()> {
    let (alice, alice_sid) = (f.users[0].0, f.users[0].1.as_str());
    let (bob, bob_sid) = (f.users[1].0, f.users[1].1.as_str());
    let first = p.security_group("Cycle One", vec![alice]).await?;
    let second = p.security_group("Cycle Two", vec![bob]).await?;
    let first_id = first.to_string();

    // Refusals: no token, a wrong token, a disable without a mode, an unknown group.
    let binary = p.binary("gwbctl")?;
    let endpoint = p.control_endpoint();
    let anonymous = tokio::process::Command::new(&binary).args(["--endpoint", &endpoint, "status"]).output().await?;
    ensure!(anonymous.status.code() == Some(4), "no token: exit {:?}", anonymous.status.code());
    ensure!(
        String::from_utf8_lossy(&anonymous.stderr).contains("token"),
        "{}",
        String::from_utf8_lossy(&anonymous.stderr)
    );
    let wrong_token = p.dir.join("wrong-token");
    gwb_runtime::secret::write_secret_file(&wrong_token, "not-the-token")?;
    let wrong = tokio::process::Command::new(&binary)
        .args(["--endpoint", &endpoint, "--token-file"])
        .arg(&wrong_token)
        .arg("status")
        .output()
        .await?;
    ensure!(wrong.status.code() == Some(4), "wrong token: exit {:?}", wrong.status.code());
    let no_mode = p.gwbctl(&["disable"]).await?;
    ensure!(no_mode.status.code() == Some(2), "disable without --mode: exit {:?}", no_mode.status.code());
    let unknown = p.gwbctl(&["group", "00000000-0000-0000-0000-000000000000"]).await?;
    ensure!(
        unknown.status.code() == Some(1) && String::from_utf8_lossy(&unknown.stderr).contains("no group"),
        "{unknown:?}"
    );

    // Preview while writeback is off: the plan, nothing written.
    p.eventually("the planner knows both groups", WAIT, || async {
        p.gwbctl_json(&["group", &first_id]).await?;
        p.gwbctl_json(&["group", &second.to_string()]).await?;
        Ok(())
    })
    .await?;
    let plan = p.gwbctl_json(&["preview", &first_id]).await?;
    ensure!(plan["decision"] == "write", "{plan}");
    let kinds: Vec<&str> =
        plan["commands"].as_array().context("commands")?.iter().filter_map(|c| c["kind"].as_str()).collect();
    ensure!(kinds == ["upsert", "add_members"], "preview commands {kinds:?}");
    ensure!(plan["commands"][1]["detail"].as_str().unwrap_or_default().contains(alice_sid), "{plan}");
    ensure!(ad_members(&f.lab.ad, first).await?.is_none(), "preview wrote to AD");
    let again = p.gwbctl_json(&["preview", &first_id]).await?;
    ensure!(again["commands"] == plan["commands"], "a preview changed the planner's state");

    // Enable: both written.
    p.gwbctl_ok(&["enable"]).await?;
    expect_members(p, &f.lab.ad, first, &[alice_sid], "first group written").await?;
    expect_members(p, &f.lab.ad, second, &[bob_sid], "second group written").await?;
    let detail = expect_state(p, first, "written").await?;
    let guid = detail["ad_object_guid"].as_str().unwrap_or_default().to_string();
    ensure!(!guid.is_empty(), "{detail}");
    let listed = p.gwbctl_json(&["groups", "--state", "written", "--page-size", "1"]).await?;
    ensure!(
        listed["groups"].as_array().map(Vec::len) == Some(1)
            && !listed["next_page_token"].as_str().unwrap_or_default().is_empty(),
        "{listed}"
    );
    let token = listed["next_page_token"].as_str().unwrap_or_default().to_string();
    let rest = p.gwbctl_json(&["groups", "--state", "written", "--page-token", &token]).await?;
    ensure!(
        rest["groups"].as_array().map(Vec::len) == Some(1) && rest["groups"][0]["id"] != listed["groups"][0]["id"],
        "{rest}"
    );

    // A full resync re-reads everything and deletes nothing that still exists.
    let resync = p.gwbctl_ok(&["sync", "--full"]).await?;
    ensure!(resync.contains("full resync"), "{resync}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    expect_members(p, &f.lab.ad, first, &[alice_sid], "first group intact after a full resync").await?;
    expect_members(p, &f.lab.ad, second, &[bob_sid], "second group intact after a full resync").await?;

    // Audit: the create and the member add, planned and applied, with their cause.
    let audit = p.gwbctl_json(&["audit", &first_id]).await?;
    let entries = audit["entries"].as_array().context("entries")?;
    for (kind, result) in
        [("upsert", "planned"), ("upsert", "applied"), ("add_members", "planned"), ("add_members", "applied")]
    {
        ensure!(entries.iter().any(|e| e["kind"] == kind && e["result"] == result), "no {kind}/{result} in {audit}");
    }
    ensure!(entries.iter().any(|e| e["cause"].as_str().unwrap_or_default().contains("enabled writeback")), "{audit}");

    // Exchange gating: the lab AD has no Exchange schema.
    let refused = p.gwbctl(&["set-group", &first_id, "--type", "distribution"]).await?;
    ensure!(refused.status.code() == Some(1), "exit {:?}", refused.status.code());
    ensure!(
        String::from_utf8_lossy(&refused.stderr).contains("Exchange schema"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    // Per-group disable: kept (default on_leave_scope) and frozen; clearing resumes it.
    p.gwbctl_ok(&["set-group", &first_id, "--disable"]).await?;
    expect_state(p, first, "kept").await?;
    ensure!(ad_members(&f.lab.ad, first).await?.is_some(), "a kept group was removed from AD");
    p.gwbctl_ok(&["set-group", &first_id, "--clear"]).await?;
    let detail = expect_state(p, first, "written").await?;
    ensure!(detail["ad_object_guid"] == guid.as_str(), "re-enabled group has a new objectGUID: {detail}");

    // Pause: changes wait; resume: they land.
    let paused = p.gwbctl_ok(&["pause", "--reason", "maintenance"]).await?;
    ensure!(paused.contains("paused"), "{paused}");
    p.sim.add_members(first, &[bob]).await?;
    p.eventually("the planner planned Bob's add", WAIT, || async {
        let detail = p.gwbctl_json(&["group", &first_id]).await?;
        ensure!(detail["members_written"].as_array().map(Vec::len) == Some(2), "{detail}");
        Ok(())
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    ensure!(
        ad_members(&f.lab.ad, first).await? == Some(BTreeSet::from([alice_sid.to_string()])),
        "applied while paused"
    );
    let status = p.gwbctl_json(&["status"]).await?;
    ensure!(status["commands_in_flight"].as_u64().unwrap_or(0) >= 1, "{status}");
    p.gwbctl_ok(&["resume"]).await?;
    expect_members(p, &f.lab.ad, first, &[alice_sid, bob_sid], "Bob added after resume").await?;

    // Global disable with keep: groups stay; changes meanwhile are not written…
    p.gwbctl_ok(&["disable", "--mode", "keep"]).await?;
    expect_state(p, second, "kept").await?;
    p.sim.add_members(second, &[alice]).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    ensure!(
        ad_members(&f.lab.ad, second).await? == Some(BTreeSet::from([bob_sid.to_string()])),
        "written while disabled"
    );
    // …until re-enabled, which catches up.
    p.gwbctl_ok(&["enable"]).await?;
    expect_members(p, &f.lab.ad, second, &[alice_sid, bob_sid], "catch-up after re-enable").await?;

    // Global disable with delete: every written group goes.
    p.gwbctl_ok(&["disable", "--mode", "delete"]).await?;
    expect_absent(p, &f.lab.ad, first, "first group deleted").await?;
    expect_absent(p, &f.lab.ad, second, "second group deleted").await?;
    expect_state(p, first, "deleted").await?;
    let status = p.gwbctl_json(&["status"]).await?;
    ensure!(status["writeback_enabled"] == false && status["last_disable_mode"] == "delete", "{status}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mass_deletion_is_held_until_an_operator_decides() -> anyhow::Result<()> {
    let options = |ou: &str| Options {
        planner_sections: "[deletion]\nmax_groups = 1\nmax_percent = 100\n".into(),
        // Rounds only when asked (`gwbctl sync`), so the two deletions below are
        // certain to land in one cycle.
        poll_interval_seconds: 3600.0,
        ..Options::new(ou)
    };
    let (fixture, pipeline) = fixture(options, 1).await?;
    let result = held_deletions(&fixture, &pipeline).await;
    fixture.lab.finish(pipeline, result).await
}

async fn held_deletions(f: &Fixture, p: &Pipeline) -> anyhow::Result<()> {
    let user = f.users[0].0;
    let sid = f.users[0].1.as_str();
    let kept = p.security_group("Held One", vec![user]).await?;
    let approved = p.security_group("Held Two", vec![user]).await?;
    let untouched = p.security_group("Held Three", vec![user]).await?;
    p.gwbctl_ok(&["enable"]).await?;
    let synced = p.gwbctl_ok(&["sync"]).await?;
    ensure!(synced.contains("gwb-collector"), "{synced}");
    for group in [kept, approved, untouched] {
        expect_members(p, &f.lab.ad, group, &[sid], "written").await?;
    }
    p.sim.delete_group(kept, false).await?;
    p.sim.delete_group(approved, false).await?;
    p.gwbctl_ok(&["sync"]).await?;
    p.eventually("both deletions are held", WAIT, || async {
        let held = p.gwbctl_json(&["held"]).await?;
        ensure!(held["deletions"].as_array().map(Vec::len) == Some(2), "{held}");
        ensure!(held["threshold_reason"].as_str().unwrap_or_default().contains("threshold"), "{held}");
        Ok(())
    })
    .await?;
    let status = p.gwbctl_json(&["status"]).await?;
    ensure!(status["held_deletions"] == 2, "{status}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    for group in [kept, approved] {
        ensure!(ad_members(&f.lab.ad, group).await?.is_some(), "a held deletion reached AD");
    }
    let approved_id = approved.to_string();
    p.gwbctl_ok(&["approve", &approved_id]).await?;
    expect_absent(p, &f.lab.ad, approved, "the approved deletion is carried out").await?;
    p.gwbctl_ok(&["discard"]).await?;
    expect_state(p, kept, "kept").await?;
    ensure!(ad_members(&f.lab.ad, kept).await?.is_some(), "a discarded deletion reached AD");
    ensure!(ad_members(&f.lab.ad, untouched).await?.is_some(), "an unrelated group was deleted");
    let held = p.gwbctl_json(&["held"]).await?;
    ensure!(held["deletions"].as_array().map(Vec::len) == Some(0), "{held}");
    Ok(())
}
