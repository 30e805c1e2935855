//! The six scenarios of issue 8.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, ensure};
use graph_sim::{GenerateSpec, GroupFields, NewGroup, NewUser, Seed, UserFields};
use ldap3::Ldap;
use serde_json::{Value, json};
use uuid::Uuid;

use gwb_tests::pipeline::{Options, Pipeline};

use crate::ldap::{self, ByteProxy, GroupLoad, Lab, User};
use crate::{Bench, now_ms};

/// Member values per modify in the baseline: the writer's default `member_batch_size`.
const BATCH: usize = 1000;
const LDAP_OP: &str = "gwb_ldap_operation_duration_seconds_count";

/// A fresh OU per run under `OU=Bench`, so runs never see each other's groups.
async fn fresh_ou(lab: &Lab, ldap: &mut Ldap, what: &str) -> anyhow::Result<String> {
    let parent = lab.ensure_ou(ldap, &lab.base_dn, "Bench").await?;
    lab.ensure_ou(ldap, &parent, &format!("{what}-{}", &Uuid::new_v4().simple().to_string()[..8])).await
}

/// The shared harness (`gwb_tests::pipeline`) the way benchmarks run it: the bench's
/// binaries (release for full runs), Graph's own paging (graph-sim's defaults: 50–100
/// objects a page, 500-member slices, not the tiny pages the end-to-end tests use to
/// shake out paging bugs), no deletion threshold, the collector started separately (so
/// timing can start at its first round), 50 ms checks.
fn options(bench: &Bench, target_ou: &str, poll: f64) -> Options {
    Options {
        bin_dir: Some(bench.bin_dir.clone()),
        graph_sim_args: vec!["--log".into(), "warn".into()],
        log_filter: std::env::var("GWB_BENCH_LOG").unwrap_or_else(|_| "info".into()),
        poll_interval_seconds: poll,
        planner_sections: "[deletion]\nmax_groups = 1000000\nmax_percent = 100\n".into(),
        defer_collector: true,
        check_every: Duration::from_millis(50),
        name: "gwbbench".into(),
        keep_dir: std::env::var_os("GWB_BENCH_KEEP").is_some(),
        ..Options::new(target_ou)
    }
}

/// What the benchmarks read of `gwbctl status`.
#[derive(Debug, Clone, Copy, Default)]
struct Status {
    memberships_known: u64,
    commands_in_flight: u64,
}

async fn status(services: &Pipeline) -> anyhow::Result<Status> {
    let v = services.gwbctl_json(&["status"]).await?;
    Ok(Status {
        memberships_known: v["memberships_known"].as_u64().unwrap_or_default(),
        commands_in_flight: v["commands_in_flight"].as_u64().unwrap_or_default(),
    })
}

/// Sum of every sample of `name` whose labels contain all `labels` (`key="value"`).
fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    gwb_tests::pipeline::metric_sum(text, name, &labels.iter().map(String::as_str).collect::<Vec<_>>())
}

/// A tenant in graph-sim: `groups` security groups; group g has `members` users,
/// from g × members on (wrapping), like graph-sim's generator, but with the fixture
/// users' real SIDs so the writer can resolve them.
async fn seed_tenant(
    services: &Pipeline,
    users: &[User],
    groups: usize,
    members: usize,
    tag: &str,
) -> anyhow::Result<(Vec<Uuid>, Vec<Uuid>, Vec<Vec<usize>>)> {
    let user_ids: Vec<Uuid> = users.iter().map(|_| Uuid::new_v4()).collect();
    let mut membership = Vec::with_capacity(groups);
    let seed = Seed {
        users: users
            .iter()
            .zip(&user_ids)
            .enumerate()
            .map(|(i, (user, id))| NewUser {
                id: Some(*id),
                fields: UserFields {
                    display_name: Some(format!("Bench user {i}")),
                    user_principal_name: Some(format!("bu{i}@lab.example")),
                    account_enabled: Some(true),
                    on_premises_sync_enabled: Some(true),
                    on_premises_security_identifier: Some(user.sid.clone()),
                    ..UserFields::default()
                },
            })
            .collect(),
        groups: (0..groups)
            .map(|g| {
                let indexes: Vec<usize> = (0..members).map(|j| (g * members + j) % users.len()).collect();
                let group = NewGroup {
                    id: None,
                    fields: GroupFields {
                        display_name: Some(format!("{tag} {g}")),
                        mail_nickname: Some(format!("{tag}{g}")),
                        security_enabled: Some(true),
                        mail_enabled: Some(false),
                        group_types: Some(vec![]),
                        ..GroupFields::default()
                    },
                    members: indexes.iter().map(|i| user_ids[*i]).collect(),
                };
                membership.push(indexes);
                group
            })
            .collect(),
        objects: vec![],
    };
    let result = services.sim.seed(&seed).await?;
    Ok((result.user_ids, result.group_ids, membership))
}

/// Waits until the planner holds the whole tenant (the collector's first round is done).
async fn wait_ingested(services: &Pipeline, memberships: u64, timeout: Duration) -> anyhow::Result<Duration> {
    let started = Instant::now();
    services
        .eventually("the planner knows every membership", timeout, || async {
            let status = status(services).await?;
            ensure!(
                status.memberships_known >= memberships,
                "{} of {memberships} memberships known",
                status.memberships_known
            );
            Ok(())
        })
        .await?;
    Ok(started.elapsed())
}

/// Waits until the writer reports `members` member values and `groups` upserts applied,
/// and the planner has nothing in flight. Metrics are counted after the AD write
/// returns, so this is never early; it polls every 50 ms, so it is at most that late.
async fn wait_converged(services: &Pipeline, groups: u64, members: u64, timeout: Duration) -> anyhow::Result<()> {
    services
        .eventually("AD converged (writer metrics)", timeout, || async {
            let text = services.scrape("gwb-writer").await?;
            let written = metric_sum(&text, "gwb_members_written_total", &[]) as u64;
            let upserts = metric_sum(&text, "gwb_commands_total", &[("kind", "upsert"), ("result", "applied")]) as u64;
            let failed = metric_sum(&text, "gwb_commands_total", &[("result", "failed")]) as u64;
            ensure!(failed == 0, "{failed} commands failed");
            ensure!(
                written >= members && upserts >= groups,
                "{written}/{members} members, {upserts}/{groups} groups written"
            );
            Ok(())
        })
        .await?;
    services
        .eventually("nothing in flight", timeout, || async {
            let status = status(services).await?;
            ensure!(status.commands_in_flight == 0, "{} in flight", status.commands_in_flight);
            Ok(())
        })
        .await
}

/// Reads every group in `ou` back and compares its members with the expectation
/// (anchor → member DNs). Not timed.
async fn verify(lab: &Lab, ou: &str, expected: &BTreeMap<String, Vec<String>>) -> anyhow::Result<()> {
    let mut ldap = lab.connect().await?;
    let found = ldap::groups_in(&mut ldap, ou).await?;
    ensure!(found.len() == expected.len(), "{} groups in {ou}, expected {}", found.len(), expected.len());
    for (anchor, members) in expected {
        let dn = found.get(anchor).ok_or_else(|| anyhow!("no group with anchor {anchor} in {ou}"))?;
        let actual = ldap::member_dns(&mut ldap, dn).await?;
        let wanted: std::collections::BTreeSet<String> = members.iter().map(|m| m.to_ascii_lowercase()).collect();
        ensure!(actual == wanted, "{dn}: {} members in AD, {} expected", actual.len(), wanted.len());
    }
    Ok(())
}

fn memory_of(services: &Pipeline) -> Value {
    services
        .process_stats()
        .into_iter()
        .map(|(name, s)| (name, json!({"peak_rss_mb": round(s.peak_rss_mb), "cpu_seconds": round(s.cpu_seconds)})))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

fn round(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

async fn cleanup(lab: &Lab, ous: &[&str]) {
    if std::env::var_os("GWB_BENCH_KEEP").is_some() {
        return;
    }
    if let Ok(mut ldap) = lab.connect().await {
        for ou in ous {
            if let Err(error) = lab.delete_subtree(&mut ldap, ou).await {
                eprintln!("cleanup of {ou}: {error:#}");
            }
        }
    }
}

/// A pipeline load of `groups` × `members` followed by the baseline load of the same
/// end state; shared by initial-sync and large-group.
struct LoadResult {
    pipeline_s: f64,
    baseline_s: f64,
    ingest_s: f64,
    memory: Value,
    services: Pipeline,
    group_ids: Vec<Uuid>,
    proxy: Option<ByteProxy>,
}

async fn load(
    bench: &Bench,
    lab: &Lab,
    users: &[User],
    groups: usize,
    members: usize,
    what: &str,
    with_proxy: bool,
) -> anyhow::Result<(LoadResult, String)> {
    let mut ldap = lab.connect().await?;
    let ou = fresh_ou(lab, &mut ldap, what).await?;
    let proxy = if with_proxy {
        let (host, port) = lab.host_port()?;
        Some(ByteProxy::start(&host, port).await?)
    } else {
        None
    };
    let mut opts = options(bench, &ou, 1.0);
    if let Some(proxy) = &proxy {
        let (host, _) = lab.host_port()?;
        opts.ldap_url = Some(format!("ldaps://{host}:{}", proxy.port));
    }
    let mut services = Pipeline::start(opts).await?;
    let (_, group_ids, membership) = seed_tenant(&services, users, groups, members, what).await?;
    let total = (groups * members) as u64;
    services.start_collector().await?;
    let timeout = Duration::from_secs(if bench.full() { 3600 } else { 120 });
    let ingest = wait_ingested(&services, total, timeout).await?;
    eprintln!("{what}: planner holds {total} memberships after {:.1} s; enabling writeback", ingest.as_secs_f64());
    // The clock starts at "writeback enabled": the planner already holds the tenant,
    // as it would in production before an operator switches writeback on.
    let started = Instant::now();
    services.gwbctl_json(&["enable"]).await?;
    wait_converged(&services, groups as u64, total, timeout).await?;
    let pipeline = started.elapsed();
    let memory = memory_of(&services);
    eprintln!("{what}: pipeline converged in {:.1} s; verifying over LDAP", pipeline.as_secs_f64());

    let expected: BTreeMap<String, Vec<String>> = group_ids
        .iter()
        .zip(&membership)
        .map(|(id, m)| (format!("Group_{id}"), m.iter().map(|i| users[*i].dn.clone()).collect()))
        .collect();
    verify(lab, &ou, &expected).await.context("verifying the pipeline's result by LDAP")?;

    // The baseline: the identical end state (same groups, anchors, member values) into
    // a sibling OU of the same DC, straight over LDAP.
    let base_ou = fresh_ou(lab, &mut ldap, &format!("{what}-baseline")).await?;
    let loads: Vec<GroupLoad> = group_ids
        .iter()
        .zip(&membership)
        .enumerate()
        .map(|(g, (id, m))| GroupLoad {
            cn: format!("Group_{id}"),
            sam: format!("b{}{g}", &Uuid::new_v4().simple().to_string()[..6]),
            anchor: format!("Group_{id}"),
            member_dns: m.iter().map(|i| users[*i].dn.clone()).collect(),
        })
        .collect();
    eprintln!("{what}: verified; baseline load into {base_ou}");
    let baseline = ldap::baseline_load(lab, &base_ou, &loads, BATCH).await?;
    eprintln!("{what}: baseline loaded in {:.1} s; verifying", baseline.as_secs_f64());
    verify(lab, &base_ou, &expected).await.context("verifying the baseline's result")?;
    cleanup(lab, &[&base_ou]).await;
    Ok((
        LoadResult {
            pipeline_s: pipeline.as_secs_f64(),
            baseline_s: baseline.as_secs_f64(),
            ingest_s: ingest.as_secs_f64(),
            memory,
            services,
            group_ids,
            proxy,
        },
        ou,
    ))
}

pub async fn initial_sync(bench: &Bench) -> anyhow::Result<()> {
    let (groups, members, user_count) = if bench.full() { (1000, 100, 10_000) } else { (20, 10, 50) };
    let lab = Lab::from_env()?;
    let (users, fixture) = ldap::ensure_users(&lab, user_count).await?;
    let (result, ou) = load(bench, &lab, &users, groups, members, "initial", false).await?;
    let memberships = groups * members;
    let ratio = result.pipeline_s / result.baseline_s;
    bench.report(
        "initial-sync",
        &format!(
            "{groups}×{members}: pipeline {:.2} s, baseline {:.2} s, ratio {:.2} (target ≤ 1.25), {:.0} members/s",
            result.pipeline_s,
            result.baseline_s,
            ratio,
            memberships as f64 / result.pipeline_s
        ),
        json!({
            "groups": groups, "members_per_group": members, "memberships": memberships, "users": user_count,
            "pipeline_seconds": round(result.pipeline_s), "baseline_seconds": round(result.baseline_s),
            "ratio": round(ratio), "target_ratio": 1.25, "met": ratio <= 1.25,
            "pipeline_members_per_second": round(memberships as f64 / result.pipeline_s),
            "baseline_members_per_second": round(memberships as f64 / result.baseline_s),
            "collector_ingest_seconds_before_enable": round(result.ingest_s),
            "fixture_users": fixture.to_json(),
            "baseline_method": format!("ldap3, 4 connections, 8 groups in flight, members in the add then modify/add batches of {BATCH} DNs"),
            "convergence_method": "writer metrics (members written, upserts applied) polled every 50 ms, then planner commands_in_flight = 0; verified afterwards by reading every group's members over LDAP",
            "peak_memory": result.memory,
        }),
    )?;
    bench
        .memory
        .lock()
        .map_err(|_| anyhow!("poisoned"))?
        .push(json!({"scenario": "initial-sync", "memberships": memberships, "services": result.memory}));
    result.services.stop().await?;
    cleanup(&lab, &[&ou]).await;
    Ok(())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Latency with 1 s polls alone, then with change notifications triggering rounds.
pub async fn incremental_latency(bench: &Bench) -> anyhow::Result<()> {
    let polled = latency_run(bench, false).await?;
    let notified = latency_run(bench, true).await?;
    let line = |run: &serde_json::Value| {
        format!(
            "p50 {:.3} s, p95 {:.3} s, p99 {:.3} s, max {:.3} s",
            run["p50_seconds"].as_f64().unwrap_or(f64::NAN),
            run["p95_seconds"].as_f64().unwrap_or(f64::NAN),
            run["p99_seconds"].as_f64().unwrap_or(f64::NAN),
            run["max_seconds"].as_f64().unwrap_or(f64::NAN)
        )
    };
    bench.report(
        "incremental-latency",
        &format!("{} changes at {}/s — poll 1 s: {}; with notifications: {} (target p50 ≤ 0.3, p99 ≤ 1)", polled["changes"], polled["rate_per_second"], line(&polled), line(&notified)),
        json!({ "poll_only": polled, "with_notifications": notified, "target": {"p50_seconds": 0.3, "p99_seconds": 1.0} }),
    )
}

async fn latency_run(bench: &Bench, webhook: bool) -> anyhow::Result<serde_json::Value> {
    // Steady rate, 1 s polls. Changes rotate over the groups so no group has two
    // changes pending at once, and each adds a user that is not yet a member.
    let (groups, members, changes, rate) = if bench.full() { (100, 20, 1000, 10.0) } else { (10, 5, 20, 10.0) };
    let user_count = if bench.full() { 10_000 } else { 50 };
    let lab = Lab::from_env()?;
    let (users, _) = ldap::ensure_users(&lab, user_count).await?;
    let mut ldap = lab.connect().await?;
    let ou = fresh_ou(&lab, &mut ldap, "latency").await?;
    let mut services = Pipeline::start(Options { notifications: webhook, ..options(bench, &ou, 1.0) }).await?;
    let (user_ids, group_ids, _) = seed_tenant(&services, &users, groups, members, "latency").await?;
    services.start_collector().await?;
    let timeout = Duration::from_secs(600);
    wait_ingested(&services, (groups * members) as u64, timeout).await?;
    services.gwbctl_json(&["enable"]).await?;
    wait_converged(&services, groups as u64, (groups * members) as u64, timeout).await?;
    let dns = ldap::groups_in(&mut ldap, &ou).await?;

    // A watcher polls AD for every pending change every 20 ms with a `memberOf` base
    // search on the added user (one cheap read each); the latency is the first time it
    // sees the value minus graph-sim's commit time. Resolution: ~20 ms + one search.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, String, u64)>();
    let watcher_lab = lab.clone();
    let watcher = tokio::spawn(async move {
        let mut ldap = watcher_lab.connect().await?;
        let mut pending: Vec<(String, String, u64)> = Vec::new();
        let mut latencies = Vec::new();
        let mut closed = false;
        loop {
            loop {
                match rx.try_recv() {
                    Ok(item) => pending.push(item),
                    Err(tokio::sync::mpsc::error::TryRecvError::Empty) => break,
                    Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => {
                        closed = true;
                        break;
                    }
                }
            }
            let mut still = Vec::new();
            for (user, group, committed) in pending.drain(..) {
                if ldap::is_member(&mut ldap, &user, &group).await? {
                    latencies.push(now_ms().saturating_sub(committed) as f64 / 1000.0);
                } else {
                    still.push((user, group, committed));
                }
            }
            pending = still;
            if closed && pending.is_empty() {
                return anyhow::Ok(latencies);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let interval = Duration::from_secs_f64(1.0 / rate);
    let started = Instant::now();
    for k in 0..changes {
        let g = k % groups;
        let round = k / groups;
        let user = (g * members + members + round) % users.len();
        let group_dn = dns.get(&format!("Group_{}", group_ids[g])).ok_or_else(|| anyhow!("group {g} not in AD"))?;
        let result = services.sim.add_members(group_ids[g], &[user_ids[user]]).await?;
        tx.send((users[user].dn.clone(), group_dn.clone(), result.committed_at_ms))
            .map_err(|_| anyhow!("watcher stopped"))?;
        // Steady rate: sleep until this change's slot, not a fixed gap (no drift).
        let next = started + interval * (k as u32 + 1);
        tokio::time::sleep_until(next.into()).await;
    }
    drop(tx);
    let mut latencies =
        tokio::time::timeout(Duration::from_secs(120), watcher).await.context("changes never all reached AD")???;
    latencies.sort_by(|a, b| a.total_cmp(b));
    let (p50, p95, p99, max) = (
        percentile(&latencies, 50.0),
        percentile(&latencies, 95.0),
        percentile(&latencies, 99.0),
        percentile(&latencies, 100.0),
    );
    let writer_metrics = services.scrape("gwb-writer").await?;
    let e2e_sum = metric_sum(&writer_metrics, "gwb_end_to_end_latency_seconds_sum", &[]);
    let e2e_count = metric_sum(&writer_metrics, "gwb_end_to_end_latency_seconds_count", &[]);
    let result = json!({
            "changes": changes, "rate_per_second": rate, "poll_interval_seconds": 1.0, "groups": groups, "change_notifications": webhook,
            "p50_seconds": round3(p50), "p95_seconds": round3(p95), "p99_seconds": round3(p99), "max_seconds": round3(max),
            "target": {"p50_seconds": 0.3, "p99_seconds": 1.0}, "met": p50 <= 0.3 && p99 <= 1.0,
            "method": "latency = first time a 20 ms AD poll (base search on the user with (memberOf=<group DN>)) sees the member, minus graph-sim's committedAtMs for the change",
            "writer_mean_observed_to_written_seconds": if e2e_count > 0.0 { round3(e2e_sum / e2e_count) } else { f64::NAN },
    });
    services.stop().await?;
    cleanup(&lab, &[&ou]).await;
    Ok(result)
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// LDAP operations (by kind) and bytes the writer sends for one membership change.
async fn one_member_cost(
    services: &Pipeline,
    proxy: &ByteProxy,
    lab: &Lab,
    group: Uuid,
    group_dn: &str,
    user: Uuid,
    user_dn: &str,
) -> anyhow::Result<Value> {
    let kinds = ["search", "add", "modify", "modify_dn", "delete", "connect", "bind"];
    let before_text = services.scrape("gwb-writer").await?;
    let before_bytes = proxy.bytes_sent();
    services.sim.add_members(group, &[user]).await?;
    let mut ldap = lab.connect().await?;
    services
        .eventually("the one-member change is in AD", Duration::from_secs(60), || {
            let mut ldap = ldap.clone();
            async move {
                ensure!(ldap::is_member(&mut ldap, user_dn, group_dn).await?, "not yet");
                Ok(())
            }
        })
        .await?;
    // Let the writer finish (outcome, metrics) before reading its counters.
    services
        .eventually("nothing in flight", Duration::from_secs(60), || async {
            ensure!(status(services).await?.commands_in_flight == 0, "in flight");
            Ok(())
        })
        .await?;
    let after_text = services.scrape("gwb-writer").await?;
    let bytes = proxy.bytes_sent() - before_bytes;
    let mut ops = serde_json::Map::new();
    let mut total = 0.0;
    for kind in kinds {
        let n =
            metric_sum(&after_text, LDAP_OP, &[("kind", kind)]) - metric_sum(&before_text, LDAP_OP, &[("kind", kind)]);
        if n > 0.0 {
            ops.insert(kind.to_string(), json!(n));
            total += n;
        }
    }
    let _ = ldap.unbind().await;
    Ok(json!({"ldap_operations": total, "by_kind": ops, "bytes_sent_to_dc": bytes}))
}

pub async fn large_group(bench: &Bench) -> anyhow::Result<()> {
    // Smoke: 500, not 2,000 — Samba creates only ~40–70 fixture users a second, and the
    // smoke run must stay well under two minutes on a fresh CI DC.
    let size = if bench.full() { bench.large_members } else { 500 };
    let lab = Lab::from_env()?;
    // One more user than the group holds: the one-member change adds it.
    let (users, fixture) = ldap::ensure_users(&lab, size + 1).await?;
    let (members_users, extra) = users.split_at(size);
    let (result, ou) = load(bench, &lab, members_users, 1, size, "large", true).await?;
    let LoadResult { pipeline_s, baseline_s, memory, services, group_ids, proxy, .. } = result;
    let proxy = proxy.ok_or_else(|| anyhow!("no proxy"))?;
    // The extra user must be known to graph-sim: add it as a synced user first.
    let extra_user = services
        .sim
        .create_user(&NewUser {
            id: None,
            fields: UserFields {
                display_name: Some("Bench extra".into()),
                user_principal_name: Some(format!("bextra{}@lab.example", Uuid::new_v4().simple())),
                account_enabled: Some(true),
                on_premises_sync_enabled: Some(true),
                on_premises_security_identifier: Some(extra[0].sid.clone()),
                ..UserFields::default()
            },
        })
        .await?
        .user
        .id;
    let mut ldap = lab.connect().await?;
    let group_dn =
        ldap::groups_in(&mut ldap, &ou).await?.into_values().next().ok_or_else(|| anyhow!("large group not in AD"))?;
    // Let the user's own event pass through the planner first, so the cost below is the
    // membership change alone.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let cost = one_member_cost(&services, &proxy, &lab, group_ids[0], &group_dn, extra_user, &extra[0].dn).await?;
    let ratio = pipeline_s / baseline_s;
    bench.report(
        "large-group",
        &format!(
            "1×{size}: pipeline {pipeline_s:.2} s, baseline {baseline_s:.2} s, ratio {ratio:.2}; one-member change: {} LDAP ops, {} bytes",
            cost["ldap_operations"], cost["bytes_sent_to_dc"]
        ),
        json!({
            "members": size, "pipeline_seconds": round(pipeline_s), "baseline_seconds": round(baseline_s), "ratio": round(ratio),
            "one_member_change": cost,
            "bytes_method": "TCP proxy on the DC's address in front of LDAPS, counting client→DC bytes (TLS records included)",
            "ops_method": "writer metric gwb_ldap_operation_duration_seconds_count by kind, before/after",
            "fixture_users": fixture.to_json(),
            "peak_memory": memory,
        }),
    )?;
    bench
        .memory
        .lock()
        .map_err(|_| anyhow!("poisoned"))?
        .push(json!({"scenario": "large-group", "memberships": size, "services": memory}));
    services.stop().await?;
    cleanup(&lab, &[&ou]).await;
    Ok(())
}

pub async fn idle(bench: &Bench) -> anyhow::Result<()> {
    let (groups, members, poll, rounds) = if bench.full() { (100, 20, 1.0, 10u64) } else { (10, 5, 0.3, 10u64) };
    let lab = Lab::from_env()?;
    let (users, _) = ldap::ensure_users(&lab, if bench.full() { 2000 } else { 50 }).await?;
    let mut ldap = lab.connect().await?;
    let ou = fresh_ou(&lab, &mut ldap, "idle").await?;
    let mut services = Pipeline::start(options(bench, &ou, poll)).await?;
    seed_tenant(&services, &users, groups, members, "idle").await?;
    services.start_collector().await?;
    let timeout = Duration::from_secs(600);
    wait_ingested(&services, (groups * members) as u64, timeout).await?;
    services.gwbctl_json(&["enable"]).await?;
    wait_converged(&services, groups as u64, (groups * members) as u64, timeout).await?;
    // Settle: the rounds right after convergence may still carry the last echoes.
    tokio::time::sleep(Duration::from_secs_f64(poll * 3.0)).await;

    let rounds_of = |text: &str| metric_sum(text, "gwb_delta_rounds_total", &[("resource", "groups")]);
    let requests = |s: &graph_sim::Stats| {
        s.requests
            .iter()
            .filter(|r| r.endpoint.contains("delta") || r.endpoint.contains("token"))
            .map(|r| r.count)
            .sum::<u64>()
    };
    let writes = |text: &str| {
        ["add", "modify", "modify_dn", "delete"].iter().map(|k| metric_sum(text, LDAP_OP, &[("kind", k)])).sum::<f64>()
    };
    let cpu_before = services.process_stats();
    let stats_before = services.sim.stats().await?;
    let collector_before = services.scrape("gwb-collector").await?;
    let writer_before = services.scrape("gwb-writer").await?;
    let started = Instant::now();
    services
        .eventually("10 idle poll rounds", Duration::from_secs_f64(poll * rounds as f64 * 5.0 + 30.0), || async {
            let now = services.scrape("gwb-collector").await?;
            ensure!(rounds_of(&now) - rounds_of(&collector_before) >= rounds as f64, "not yet");
            Ok(())
        })
        .await?;
    let elapsed = started.elapsed().as_secs_f64();
    let cpu_after = services.process_stats();
    let stats_after = services.sim.stats().await?;
    let collector_after = services.scrape("gwb-collector").await?;
    let writer_after = services.scrape("gwb-writer").await?;
    let observed_rounds = rounds_of(&collector_after) - rounds_of(&collector_before);
    let graph_requests = requests(&stats_after) - requests(&stats_before);
    let ldap_writes = writes(&writer_after) - writes(&writer_before);
    let ldap_reads = metric_sum(&writer_after, LDAP_OP, &[("kind", "search")])
        - metric_sum(&writer_before, LDAP_OP, &[("kind", "search")]);
    let mut cpu = serde_json::Map::new();
    for (name, after) in &cpu_after {
        let before = cpu_before.iter().find(|(n, _)| n == name).map(|(_, s)| s.cpu_seconds).unwrap_or_default();
        cpu.insert(name.clone(), json!(round3(after.cpu_seconds - before)));
    }
    let per_round = graph_requests as f64 / observed_rounds;
    bench.report(
        "idle",
        &format!(
            "{observed_rounds} rounds in {elapsed:.1} s: {per_round:.1} Graph requests/round, {ldap_writes} LDAP writes, CPU s: {}",
            cpu.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", ")
        ),
        json!({
            "poll_interval_seconds": poll, "rounds": observed_rounds, "seconds": round(elapsed),
            "graph_requests": graph_requests, "graph_requests_per_round": round(per_round),
            "ldap_writes": ldap_writes, "ldap_writes_target": 0, "met": ldap_writes == 0.0, "ldap_searches": ldap_reads,
            "cpu_seconds": cpu, "tenant": {"groups": groups, "members_per_group": members},
            "cpu_method": "utime+stime from /proc/<pid>/stat, before/after the rounds",
        }),
    )?;
    services.stop().await?;
    cleanup(&lab, &[&ou]).await;
    Ok(())
}

pub async fn throughput(bench: &Bench) -> anyhow::Result<()> {
    // Dry-run writer: no LDAP at all, so the figure is collector → planner → writer
    // over RabbitMQ alone. Full: 1,000 groups × 1,000 members = 1,000,000 memberships,
    // which is also the "planner tracking 1,000,000 memberships" memory figure.
    let (users, groups, members) = if bench.full() { (100_000u32, 1000u32, 1000u32) } else { (200, 20, 100) };
    let lab = Lab::from_env()?;
    let mut opts = options(bench, &format!("OU=DryRun,{}", lab.base_dn), 1.0);
    opts.writer_toml = "dry_run = true".into();
    let mut services = Pipeline::start(opts).await?;
    let generated = services
        .sim
        .generate(&GenerateSpec {
            users,
            groups,
            members_per_group: members,
            sid_prefix: Some("S-1-5-21-1-2-3".into()),
            synced_percent: 100,
            group_kind: Default::default(),
            name_prefix: "tp".into(),
            seed: Some(8),
            return_user_ids: false,
            large_groups: vec![],
        })
        .await?;
    let memberships = generated.memberships as u64;
    // Writeback on before the collector starts: the whole tenant flows through every
    // stage, and the clock runs from the collector's start to the writer's last ack.
    services.gwbctl_json(&["enable"]).await?;
    let started = Instant::now();
    services.start_collector().await?;
    let timeout = Duration::from_secs(if bench.full() { 3600 } else { 120 });
    let mut ingested = None;
    let mut published_at = None;
    let dry_runs = |text: &str| metric_sum(text, "gwb_commands_total", &[("result", "dry_run")]);
    loop {
        // Poll every ~250 ms: a status call counts rows in SQLite.
        tokio::time::sleep(Duration::from_millis(250)).await;
        anyhow::ensure!(started.elapsed() < timeout, "timed out waiting for the dry run\n{}", services.log_tails());
        let collector = services.scrape("gwb-collector").await.unwrap_or_default();
        if published_at.is_none()
            && metric_sum(&collector, "gwb_delta_rounds_total", &[("resource", "groups"), ("result", "completed")])
                >= 1.0
        {
            published_at = Some(started.elapsed());
        }
        let Ok(status) = status(&services).await else { continue };
        if ingested.is_none() && status.memberships_known >= memberships {
            ingested = Some(started.elapsed());
        }
        let writer = services.scrape("gwb-writer").await.unwrap_or_default();
        if ingested.is_some() && status.commands_in_flight == 0 && dry_runs(&writer) >= groups as f64 {
            break;
        }
    }
    let total = started.elapsed().as_secs_f64();
    let rate = memberships as f64 / total;
    let writer = services.scrape("gwb-writer").await?;
    let memory = memory_of(&services);
    let ingest_s = ingested.map(|d| d.as_secs_f64()).unwrap_or(f64::NAN);
    let collector_s = published_at.map(|d| d.as_secs_f64()).unwrap_or(f64::NAN);
    bench.report(
        "pipeline-throughput",
        &format!("{memberships} memberships in {total:.2} s: {rate:.0} changes/s (target ≥ 50,000/s); collector round {collector_s:.1} s, planner ingest {ingest_s:.1} s"),
        json!({
            "memberships": memberships, "groups": groups, "users": users, "seconds": round(total), "changes_per_second": round(rate),
            "target_per_second": 50_000, "met": rate >= 50_000.0,
            "collector_first_round_seconds": round(collector_s), "planner_ingested_seconds": round(ingest_s),
            "writer_commands": dry_runs(&writer),
            "method": "graph-sim generated tenant; writeback enabled before the collector starts; clock from collector start to planner commands_in_flight = 0 with all memberships known (status polled every ~250 ms, so up to that much late)",
            "peak_memory": memory,
        }),
    )?;
    bench
        .memory
        .lock()
        .map_err(|_| anyhow!("poisoned"))?
        .push(json!({"scenario": "pipeline-throughput", "memberships": memberships, "services": memory}));
    services.stop().await?;
    Ok(())
}

/// Peak RSS collected by the other scenarios; runs the ones that have not run yet.
pub async fn memory(bench: &Bench) -> anyhow::Result<()> {
    let have = |name: &str| bench.memory.lock().map(|m| m.iter().any(|v| v["scenario"] == name)).unwrap_or(false);
    for (name, run) in [("initial-sync", 0), ("large-group", 1), ("pipeline-throughput", 2)] {
        if !have(name) {
            match run {
                0 => initial_sync(bench).await?,
                1 => large_group(bench).await?,
                _ => throughput(bench).await?,
            }
        }
    }
    let runs = bench.memory.lock().map_err(|_| anyhow!("poisoned"))?.clone();
    let planner_1m = runs
        .iter()
        .find(|v| v["scenario"] == "pipeline-throughput")
        .and_then(|v| v["services"]["gwb-planner"]["peak_rss_mb"].as_f64())
        .unwrap_or(f64::NAN);
    let tracked = runs
        .iter()
        .find(|v| v["scenario"] == "pipeline-throughput")
        .and_then(|v| v["memberships"].as_u64())
        .unwrap_or_default();
    let row = runs
        .iter()
        .map(|v| {
            format!(
                "{}: {}",
                v["scenario"].as_str().unwrap_or(""),
                ["gwb-collector", "gwb-planner", "gwb-writer"]
                    .iter()
                    .map(|s| format!("{} {} MB", s.trim_start_matches("gwb-"), v["services"][s]["peak_rss_mb"]))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
        .collect::<Vec<_>>()
        .join("; ");
    bench.report(
        "memory",
        &format!("{row}; planner with {tracked} memberships {planner_1m:.0} MB (target ≤ 256 MB at 1,000,000)"),
        json!({"runs": runs, "planner_memberships_tracked": tracked, "planner_peak_rss_mb": planner_1m, "target_mb": 256, "met": planner_1m <= 256.0, "method": "VmHWM from /proc/<pid>/status at the end of each scenario"}),
    )
}

/// One hand edit of the `drift` scenario: the group, what was done, when.
struct HandEdit {
    group: Uuid,
    kind: &'static str,
    at_ms: u64,
}

/// Issue 18: `groups` written groups, then hand edits of mixed kinds (one per group,
/// paced 10/s) straight over LDAP; each edit's latency is from the edit to the last
/// repair command's outcome (the planner's audit: the `applied` entry of every command
/// whose cause is the AD edit, recorded when the writer's outcome arrives, right after
/// the AD write). Before the edits, the watcher's idle cost: its LDAP operations per
/// minute (`gwb_drift_watch_ldap_operations_total`) with nothing changing.
pub async fn drift(bench: &Bench) -> anyhow::Result<()> {
    const KINDS: [&str; 7] =
        ["member_added", "member_removed", "description", "display_name", "renamed", "moved", "deleted"];
    let (groups, members, edits, idle_s) = if bench.full() { (1000, 10, 100, 60u64) } else { (14, 3, 7, 5u64) };
    let lab = Lab::from_env()?;
    let (users, _) = ldap::ensure_users(&lab, if bench.full() { 2000 } else { 60 }).await?;
    let mut ldap = lab.connect().await?;
    let ou = fresh_ou(&lab, &mut ldap, "drift").await?;
    let sub = lab.ensure_ou(&mut ldap, &ou, "Moved").await?;
    let mut opts = options(bench, &ou, 1.0);
    opts.writer_toml = "\n[drift]\npoll_interval_ms = 1000\n".into();
    let mut services = Pipeline::start(opts).await?;
    let (_, group_ids, membership) = seed_tenant(&services, &users, groups, members, "drift").await?;
    services.start_collector().await?;
    let timeout = Duration::from_secs(if bench.full() { 1800 } else { 120 });
    wait_ingested(&services, (groups * members) as u64, timeout).await?;
    services.gwbctl_json(&["enable"]).await?;
    wait_converged(&services, groups as u64, (groups * members) as u64, timeout).await?;
    // The watcher's first full comparison and the observations of the initial writes
    // are behind it once nothing is in flight for a few polls.
    tokio::time::sleep(Duration::from_secs(5)).await;

    let watch_ops = |text: &str| metric_sum(text, "gwb_drift_watch_ldap_operations_total", &[]);
    let before = watch_ops(&services.scrape("gwb-writer").await?);
    let idle_started = Instant::now();
    tokio::time::sleep(Duration::from_secs(idle_s)).await;
    let idle_ops = watch_ops(&services.scrape("gwb-writer").await?) - before;
    let idle_per_minute = idle_ops * 60.0 / idle_started.elapsed().as_secs_f64();
    eprintln!("drift: watcher idle cost {idle_per_minute:.1} LDAP operations/minute");

    let dns = ldap::groups_in(&mut ldap, &ou).await?;
    let mut done = Vec::with_capacity(edits);
    let pace = Duration::from_millis(100);
    let started = Instant::now();
    for (index, group) in group_ids.iter().take(edits).enumerate() {
        let kind = KINDS[index % KINDS.len()];
        let dn = dns.get(&format!("Group_{group}")).with_context(|| format!("group {group} not in {ou}"))?.clone();
        let cn = dn.split(',').next().unwrap_or_default().to_string();
        let outsider = &users[(membership[index][0] + members + 1) % users.len()].dn;
        let member = &users[membership[index][0]].dn;
        let at_ms = now_ms();
        let result = match kind {
            "member_added" => ldap.modify(&dn, vec![ldap3::Mod::Add("member", [outsider.as_str()].into())]).await,
            "member_removed" => ldap.modify(&dn, vec![ldap3::Mod::Delete("member", [member.as_str()].into())]).await,
            "description" => ldap.modify(&dn, vec![ldap3::Mod::Replace("description", ["by hand"].into())]).await,
            "display_name" => ldap.modify(&dn, vec![ldap3::Mod::Replace("displayName", ["by hand"].into())]).await,
            "renamed" => ldap.modifydn(&dn, &format!("{cn}-by-hand"), true, None).await,
            "moved" => ldap.modifydn(&dn, &cn, true, Some(&sub)).await,
            _ => ldap.delete(&dn).await,
        };
        result?.success().with_context(|| format!("{kind} edit of {dn}"))?;
        done.push(HandEdit { group: *group, kind, at_ms });
        tokio::time::sleep_until((started + pace * (index as u32 + 1)).into()).await;
    }
    eprintln!(
        "drift: {} hand edits made in {:.1} s; waiting for the repairs",
        done.len(),
        started.elapsed().as_secs_f64()
    );

    let mut latencies = Vec::with_capacity(done.len());
    let mut by_kind: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for edit in &done {
        let repaired_ms = std::cell::Cell::new(0u64);
        services
            .eventually(&format!("the {} edit of {} is repaired", edit.kind, edit.group), timeout, || async {
                let audit = services.gwbctl_json(&["audit", &edit.group.to_string(), "--limit", "200"]).await?;
                let entries = audit["entries"].as_array().cloned().unwrap_or_default();
                let repair_ids: std::collections::BTreeSet<String> = entries
                    .iter()
                    .filter(|e| {
                        e["cause"].as_str().is_some_and(|c| c.starts_with("AD edit (")) && e["result"] == "planned"
                    })
                    .filter_map(|e| e["command_id"].as_str().map(str::to_string))
                    .collect();
                ensure!(!repair_ids.is_empty(), "no repair planned yet");
                let applied: Vec<u64> = entries
                    .iter()
                    .filter(|e| {
                        e["result"] == "applied" && e["command_id"].as_str().is_some_and(|id| repair_ids.contains(id))
                    })
                    .filter_map(|e| e["at_ms"].as_u64())
                    .collect();
                ensure!(
                    applied.len() == repair_ids.len(),
                    "{} of {} repair commands applied",
                    applied.len(),
                    repair_ids.len()
                );
                repaired_ms.set(applied.into_iter().max().unwrap_or_default());
                Ok(())
            })
            .await?;
        let seconds = repaired_ms.get().saturating_sub(edit.at_ms) as f64 / 1000.0;
        latencies.push(seconds);
        by_kind.entry(edit.kind).or_default().push(seconds);
    }
    latencies.sort_by(f64::total_cmp);
    let pct = |p: f64| latencies[((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len()) - 1];
    let (p50, p99, max) = (pct(0.50), pct(0.99), latencies[latencies.len() - 1]);
    let failed = metric_sum(&services.scrape("gwb-writer").await?, "gwb_commands_total", &[("result", "failed")]);
    ensure!(failed == 0.0, "{failed} commands failed");
    let kinds: serde_json::Map<String, Value> = by_kind
        .iter()
        .map(|(kind, values)| {
            let worst = values.iter().copied().fold(0.0, f64::max);
            (kind.to_string(), json!({"edits": values.len(), "max_s": round3(worst)}))
        })
        .collect();
    bench.report(
        "drift",
        &format!(
            "{} edits on {groups} groups: AD edit → repair written p50 {p50:.3} s, p99 {p99:.3} s, max {max:.3} s; \
             watcher idle {idle_per_minute:.1} LDAP ops/min",
            done.len()
        ),
        json!({
            "groups": groups, "members_per_group": members, "edits": done.len(), "poll_interval_ms": 1000,
            "p50_s": round3(p50), "p99_s": round3(p99), "max_s": round3(max), "p99_target_s": 5.0, "met": p99 <= 5.0,
            "by_kind": kinds, "idle_ldap_operations_per_minute": round(idle_per_minute), "idle_seconds": idle_s,
            "method": "edits over LDAP paced 10/s, one per group; latency = the planner's audit time of the last \
                       repair command's applied outcome minus the edit time (same host clock)",
        }),
    )?;
    services.stop().await?;
    cleanup(&lab, &[&ou]).await;
    Ok(())
}
