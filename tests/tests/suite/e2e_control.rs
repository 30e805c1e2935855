//! The operator's control plane end to end, driven through gwbctl against the real
//! services, RabbitMQ and the lab AD: refusals, preview, audit, per-group overrides,
//! pause/resume, the enable → disable(keep) → re-enable → disable(delete) cycle, and
//! held deletions.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Context, ensure};
use graph_sim::{GroupFields, NewGroup, NewUser, UserFields};
use gwb_tests::ad::LabAd;
use gwb_tests::pipeline::{Options, Pipeline, unique};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(60);

struct Fixture {
    ad: LabAd,
    root: String,
    users: Vec<(Uuid, String)>,
}

/// An OU tree with `count` AD users, and the same users synced in the tenant.
async fn fixture(pipeline_options: impl FnOnce(&str) -> Options, count: usize) -> anyhow::Result<(Fixture, Pipeline)> {
    let ad = LabAd::from_env().await?;
    let root = ad.create_ou(&unique("e2e")).await?;
    let users_ou = ad.create_ou_in(&root, "Users").await?;
    let groups_ou = ad.create_ou_in(&root, "Groups").await?;
    let pipeline = Pipeline::start(pipeline_options(&groups_ou)).await?;
    let mut users = Vec::new();
    for _ in 0..count {
        let (_, sid) = ad.create_user(&users_ou, &unique("u")).await?;
        let user = pipeline
            .sim
            .create_user(&NewUser {
                id: None,
                fields: UserFields {
                    display_name: Some(unique("user")),
                    on_premises_security_identifier: Some(sid.clone()),
                    on_premises_sync_enabled: Some(true),
                    ..UserFields::default()
                },
            })
            .await?;
        users.push((user.user.id, sid));
    }
    Ok((Fixture { ad, root, users }, pipeline))
}

async fn security_group(pipeline: &Pipeline, name: &str, members: Vec<Uuid>) -> anyhow::Result<Uuid> {
    let fields = GroupFields {
        display_name: Some(name.into()),
        security_enabled: Some(true),
        mail_enabled: Some(false),
        group_types: Some(vec![]),
        ..GroupFields::default()
    };
    Ok(pipeline.sim.create_group(&NewGroup { id: None, fields, members }).await?.group.id)
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
    let id = group.to_string();
    let mut last = serde_json::Value::Null;
    pipeline
        .eventually(&format!("group {id} is {state}"), WAIT, || async {
            let detail = pipeline.gwbctl_json(&["group", &id]).await?;
            ensure!(detail["summary"]["state"] == state, "{detail}");
            Ok(())
        })
        .await?;
    if let Ok(detail) = pipeline.gwbctl_json(&["group", &id]).await {
        last = detail;
    }
    Ok(last)
}

async fn run_ok(pipeline: &Pipeline, args: &[&str]) -> anyhow::Result<String> {
    let out = pipeline.gwbctl(args).await?;
    ensure!(
        out.status.success(),
        "gwbctl {args:?} failed ({:?}): {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

async fn finish(fixture: Fixture, pipeline: Pipeline, result: anyhow::Result<()>) -> anyhow::Result<()> {
    let logs = pipeline.log_tails();
    pipeline.stop().await?;
    fixture.ad.delete_subtree(&fixture.root).await?;
    result.with_context(|| logs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_cycle_through_gwbctl() -> anyhow::Result<()> {
    let (fixture, pipeline) = fixture(Options::new, 2).await?;
    let result = operator_cycle(&fixture, &pipeline).await;
    finish(fixture, pipeline, result).await
}

async fn operator_cycle(f: &Fixture, p: &Pipeline) -> anyhow::Result<()> {
    let (alice, alice_sid) = (f.users[0].0, f.users[0].1.as_str());
    let (bob, bob_sid) = (f.users[1].0, f.users[1].1.as_str());
    let first = security_group(p, "Cycle One", vec![alice]).await?;
    let second = security_group(p, "Cycle Two", vec![bob]).await?;
    let first_id = first.to_string();

    // Refusals: no token, a wrong token, a disable without a mode, an unknown group.
    let binary = gwb_tests::pipeline::binary("gwbctl")?;
    let anonymous =
        tokio::process::Command::new(&binary).args(["--endpoint", &p.control_endpoint, "status"]).output().await?;
    ensure!(anonymous.status.code() == Some(4), "no token: exit {:?}", anonymous.status.code());
    ensure!(
        String::from_utf8_lossy(&anonymous.stderr).contains("token"),
        "{}",
        String::from_utf8_lossy(&anonymous.stderr)
    );
    let wrong_token = p.dir.join("wrong-token");
    gwb_runtime::secret::write_secret_file(&wrong_token, "not-the-token")?;
    let wrong = tokio::process::Command::new(&binary)
        .args(["--endpoint", &p.control_endpoint, "--token-file"])
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
    ensure!(ad_members(&f.ad, first).await?.is_none(), "preview wrote to AD");
    let again = p.gwbctl_json(&["preview", &first_id]).await?;
    ensure!(again["commands"] == plan["commands"], "a preview changed the planner's state");

    // Enable: both written.
    run_ok(p, &["enable"]).await?;
    expect_members(p, &f.ad, first, &[alice_sid], "first group written").await?;
    expect_members(p, &f.ad, second, &[bob_sid], "second group written").await?;
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
    let resync = run_ok(p, &["sync", "--full"]).await?;
    ensure!(resync.contains("full resync"), "{resync}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    expect_members(p, &f.ad, first, &[alice_sid], "first group intact after a full resync").await?;
    expect_members(p, &f.ad, second, &[bob_sid], "second group intact after a full resync").await?;

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
    run_ok(p, &["set-group", &first_id, "--disable"]).await?;
    expect_state(p, first, "kept").await?;
    ensure!(ad_members(&f.ad, first).await?.is_some(), "a kept group was removed from AD");
    run_ok(p, &["set-group", &first_id, "--clear"]).await?;
    let detail = expect_state(p, first, "written").await?;
    ensure!(detail["ad_object_guid"] == guid.as_str(), "re-enabled group has a new objectGUID: {detail}");

    // Pause: changes wait; resume: they land.
    let paused = run_ok(p, &["pause", "--reason", "maintenance"]).await?;
    ensure!(paused.contains("paused"), "{paused}");
    p.sim.add_members(first, &[bob]).await?;
    p.eventually("the planner planned Bob's add", WAIT, || async {
        let detail = p.gwbctl_json(&["group", &first_id]).await?;
        ensure!(detail["members_written"].as_array().map(Vec::len) == Some(2), "{detail}");
        Ok(())
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    ensure!(ad_members(&f.ad, first).await? == Some(BTreeSet::from([alice_sid.to_string()])), "applied while paused");
    let status = p.gwbctl_json(&["status"]).await?;
    ensure!(status["commands_in_flight"].as_u64().unwrap_or(0) >= 1, "{status}");
    run_ok(p, &["resume"]).await?;
    expect_members(p, &f.ad, first, &[alice_sid, bob_sid], "Bob added after resume").await?;

    // Global disable with keep: groups stay; changes meanwhile are not written…
    run_ok(p, &["disable", "--mode", "keep"]).await?;
    expect_state(p, second, "kept").await?;
    p.sim.add_members(second, &[alice]).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    ensure!(ad_members(&f.ad, second).await? == Some(BTreeSet::from([bob_sid.to_string()])), "written while disabled");
    // …until re-enabled, which catches up.
    run_ok(p, &["enable"]).await?;
    expect_members(p, &f.ad, second, &[alice_sid, bob_sid], "catch-up after re-enable").await?;

    // Global disable with delete: every written group goes.
    run_ok(p, &["disable", "--mode", "delete"]).await?;
    expect_absent(p, &f.ad, first, "first group deleted").await?;
    expect_absent(p, &f.ad, second, "second group deleted").await?;
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
    finish(fixture, pipeline, result).await
}

async fn held_deletions(f: &Fixture, p: &Pipeline) -> anyhow::Result<()> {
    let user = f.users[0].0;
    let sid = f.users[0].1.as_str();
    let kept = security_group(p, "Held One", vec![user]).await?;
    let approved = security_group(p, "Held Two", vec![user]).await?;
    let untouched = security_group(p, "Held Three", vec![user]).await?;
    run_ok(p, &["enable"]).await?;
    let synced = run_ok(p, &["sync"]).await?;
    ensure!(synced.contains("gwb-collector"), "{synced}");
    for group in [kept, approved, untouched] {
        expect_members(p, &f.ad, group, &[sid], "written").await?;
    }
    p.sim.delete_group(kept, false).await?;
    p.sim.delete_group(approved, false).await?;
    run_ok(p, &["sync"]).await?;
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
        ensure!(ad_members(&f.ad, group).await?.is_some(), "a held deletion reached AD");
    }
    let approved_id = approved.to_string();
    run_ok(p, &["approve", &approved_id]).await?;
    expect_absent(p, &f.ad, approved, "the approved deletion is carried out").await?;
    run_ok(p, &["discard"]).await?;
    expect_state(p, kept, "kept").await?;
    ensure!(ad_members(&f.ad, kept).await?.is_some(), "a discarded deletion reached AD");
    ensure!(ad_members(&f.ad, untouched).await?.is_some(), "an unrelated group was deleted");
    let held = p.gwbctl_json(&["held"]).await?;
    ensure!(held["deletions"].as_array().map(Vec::len) == Some(0), "{held}");
    Ok(())
}
