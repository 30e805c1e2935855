//! Issue 9, case 9: sustained load, 200 tenant changes per second (small: 20 s; full,
//! `GWB_RELIABILITY_SCALE=full`: 5 minutes), paced steadily (one change every 5 ms,
//! catching up when behind, never in bursts). Every 2 s the test samples the planner's
//! commands in flight and the age of the oldest one (the lag), the RSS and CPU time of
//! each service and of the Samba DC, and the writer's applied commands and LDAP
//! operations. It asserts the lag stays bounded, memory stays flat (last samples within
//! a bound of the post-warm-up ones) and AD ends equal to the desired state; the
//! figures are printed (`--nocapture`).
//!
//! `dc_capacity_for_the_load_mix` (ignored: a measurement, not a check) replays the
//! same mix straight over ldap3 to show what the lab DC itself can apply:
//! `cargo test -p gwb-tests --test suite -- --ignored --exact reliability_load::dc_capacity_for_the_load_mix --nocapture`
//! (`GWB_RELIABILITY_DC_CHANGES=<n>` changes per run, default 600).
//!
//! The load case runs alone (`Options::alone`): the other tests of this binary wait, so
//! its rates and lag are the pipeline's, not the machine's share of it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use gwb_tests::ad::{LabAd, escape_dn_value};
use gwb_tests::fixture::TestLab;
use gwb_tests::pipeline::{Options, Pipeline, cpu_seconds, metric_sum, unique};
use gwb_tests::workload::{Rng, Workload, compare_with_desired, scaled, synced_users};
use ldap3::{Ldap, Mod, Scope};

const SERVICES: [&str; 3] = ["gwb-collector", "gwb-planner", "gwb-writer"];
/// Processes whose CPU time is sampled: the services and the DC.
const CPU: [&str; 4] = ["gwb-collector", "gwb-planner", "gwb-writer", "samba"];
const RATE: f64 = 200.0;
const SAMPLE_EVERY: Duration = Duration::from_secs(2);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sustained_load_keeps_lag_bounded_and_memory_flat() -> anyhow::Result<()> {
    let seconds: u64 = scaled(20, 300);
    let lab = TestLab::new("rel-load").await?;
    let options = Options {
        planner_sections: "[deletion]\nmax_groups = 1000000\nmax_percent = 100\n".into(),
        alone: true,
        ..Options::new(&lab.groups_ou)
    };
    let pipeline = Pipeline::start(options).await?;
    let result = scenario(&lab.ad, &pipeline, &lab.users_ou, &lab.groups_ou, seconds).await;
    lab.finish(pipeline, result).await
}

struct Sample {
    at: Duration,
    /// Changes made in the tenant so far.
    issued: usize,
    in_flight: u64,
    oldest_ms: u64,
    rss: BTreeMap<&'static str, u64>,
    /// CPU seconds used so far, per process of [`CPU`].
    cpu: BTreeMap<&'static str, f64>,
    /// Writer: commands applied, LDAP operations and their total time so far.
    applied: f64,
    ldap_ops: f64,
    ldap_seconds: f64,
}

fn samba_pid() -> Option<u32> {
    let dir = std::env::var("GWB_LAB_DIR").ok()?;
    std::fs::read_to_string(std::path::Path::new(&dir).join("samba.pid")).ok()?.trim().parse().ok()
}

async fn sample(pipeline: &Pipeline, start: Instant, issued: usize) -> anyhow::Result<Sample> {
    let status = pipeline.gwbctl_json(&["status"]).await?;
    let writer = pipeline.scrape("gwb-writer").await.unwrap_or_default();
    let mut cpu: BTreeMap<&'static str, f64> =
        SERVICES.iter().map(|s| (*s, pipeline.cpu_seconds(s).unwrap_or_default())).collect();
    cpu.insert("samba", samba_pid().and_then(cpu_seconds).unwrap_or_default());
    Ok(Sample {
        at: start.elapsed(),
        issued,
        in_flight: status["commands_in_flight"].as_u64().unwrap_or_default(),
        oldest_ms: status["oldest_in_flight_ms"].as_u64().unwrap_or_default(),
        rss: SERVICES.iter().map(|s| (*s, pipeline.rss_kib(s).unwrap_or_default())).collect(),
        cpu,
        applied: metric_sum(&writer, "gwb_commands_total", &["result=\"applied\""]),
        ldap_ops: metric_sum(&writer, "gwb_ldap_operation_duration_seconds_count", &[]),
        ldap_seconds: metric_sum(&writer, "gwb_ldap_operation_duration_seconds_sum", &[]),
    })
}

fn rate(a: &Sample, b: &Sample, value: impl Fn(&Sample) -> f64) -> f64 {
    let seconds = (b.at - a.at).as_secs_f64();
    if seconds <= 0.0 { 0.0 } else { (value(b) - value(a)) / seconds }
}

async fn scenario(
    ad: &LabAd,
    pipeline: &Pipeline,
    users_ou: &str,
    groups_ou: &str,
    seconds: u64,
) -> anyhow::Result<()> {
    let sim = &pipeline.sim;
    // Graph-sized pages (the harness default of 1–3 objects per page is for paging tests).
    let paging = graph_sim::PagingConfig {
        max_objects_per_page: 100,
        min_objects_per_page: 50,
        member_slice: 500,
        empty_page_every: None,
        shuffle: true,
        page_delay_ms: 0,
    };
    sim.update_settings(&graph_sim::SettingsPatch { paging: Some(paging), ..Default::default() }).await?;
    let users = synced_users(ad, sim, users_ou, scaled(100, 500)).await?;
    let mut workload = Workload::new(users, Rng::from_env("load"));
    workload.create_groups(sim, scaled(50, 200)).await?;
    pipeline.gwbctl_ok(&["enable"]).await?;
    let initial = workload.desired();
    pipeline
        .eventually("the initial groups are written", Duration::from_secs(120), || {
            compare_with_desired(ad, groups_ou, &initial)
        })
        .await?;

    let load = Duration::from_secs(seconds);
    let interval = Duration::from_secs_f64(1.0 / RATE);
    let issued = AtomicUsize::new(0);
    let stop_sampling = AtomicBool::new(false);
    let start = Instant::now();
    let first = sample(pipeline, start, 0).await?;
    // The load and its drain, while a sampler runs beside them (a gwbctl call takes tens
    // of milliseconds and must not hold the pacing up).
    let drive = async {
        let result = async {
            let mut n: u32 = 0;
            while start.elapsed() < load {
                // Change n is due at n × 5 ms; when behind, the next one goes at once.
                tokio::time::sleep_until(tokio::time::Instant::from_std(start + interval * n)).await;
                workload.step(sim).await?;
                n += 1;
                issued.store(n as usize, Ordering::Relaxed);
            }
            let load_time = start.elapsed();
            let desired = workload.desired();
            // AD is compared every 2 s rather than every 100 ms: reading every group is
            // itself work for the DC, which must go to the writer.
            let drain = Instant::now();
            // Long enough to measure the drain rate when the pipeline falls behind; the
            // case fails past 60 s anyway.
            let deadline = Duration::from_secs(scaled(180, 300));
            let caught_up = loop {
                match compare_with_desired(ad, groups_ou, &desired).await {
                    Ok(()) => break Ok(()),
                    Err(error) if drain.elapsed() > deadline => {
                        break Err(error.context(format!("AD did not catch up within {deadline:?} after the load")));
                    }
                    Err(_) => tokio::time::sleep(SAMPLE_EVERY).await,
                }
            };
            Ok::<_, anyhow::Error>((load_time, drain.elapsed(), caught_up))
        }
        .await;
        stop_sampling.store(true, Ordering::Relaxed);
        result
    };
    let sampler = async {
        let mut samples = Vec::new();
        let mut next = start + SAMPLE_EVERY;
        while !stop_sampling.load(Ordering::Relaxed) {
            if Instant::now() < next {
                tokio::time::sleep((next - Instant::now()).min(Duration::from_millis(100))).await;
                continue;
            }
            next += SAMPLE_EVERY;
            match sample(pipeline, start, issued.load(Ordering::Relaxed)).await {
                Ok(s) => samples.push(s),
                Err(error) => eprintln!("load: sample failed: {error:#}"),
            }
        }
        samples
    };
    let (driven, rest) = tokio::join!(drive, sampler);
    let (load_time, drain_time, caught_up) = driven?;
    let mut samples = vec![first];
    samples.extend(rest);
    samples.push(sample(pipeline, start, issued.load(Ordering::Relaxed)).await?);
    let changes = issued.load(Ordering::Relaxed);

    eprintln!(
        "load: {changes} changes in {load_time:?} = {:.1}/s (target {RATE}/s); AD {} {drain_time:?} after the last change",
        changes as f64 / load_time.as_secs_f64(),
        if caught_up.is_ok() { "caught up" } else { "had NOT caught up" }
    );
    eprintln!(
        "load:   t(s)  issued/s applied/s ldap-ops/s ldap-ms/op in-flight oldest(ms) | CPU % {} | RSS MiB {}",
        CPU.map(|s| s.trim_start_matches("gwb-")).join(" "),
        SERVICES.map(|s| s.trim_start_matches("gwb-")).join(" ")
    );
    for pair in samples.windows(2) {
        let (a, s) = (&pair[0], &pair[1]);
        let ops = s.ldap_ops - a.ldap_ops;
        eprintln!(
            "load: {:6.1} {:9.1} {:9.1} {:10.1} {:10.1} {:9} {:10} | {} | {}",
            s.at.as_secs_f64(),
            rate(a, s, |x| x.issued as f64),
            rate(a, s, |x| x.applied),
            rate(a, s, |x| x.ldap_ops),
            if ops > 0.0 { (s.ldap_seconds - a.ldap_seconds) * 1000.0 / ops } else { 0.0 },
            s.in_flight,
            s.oldest_ms,
            CPU.map(|n| format!("{:5.0}", rate(a, s, |x| x.cpu[n]) * 100.0)).join(" "),
            SERVICES.map(|n| format!("{:6.1}", s.rss[n] as f64 / 1024.0)).join(" "),
        );
    }
    // Summary over the load window and over the whole run (load + drain).
    let during: Vec<&Sample> = samples.iter().filter(|s| s.at <= load_time + SAMPLE_EVERY).collect();
    let (first, end_of_load, last) =
        (&samples[0], *during.last().unwrap_or(&&samples[0]), samples.last().unwrap_or(&samples[0]));
    eprintln!(
        "load: applied {:.1} commands/s during the load, {:.1}/s over load + drain; LDAP {:.1} ops/s, {:.1} ms/op",
        rate(first, end_of_load, |x| x.applied),
        rate(first, last, |x| x.applied),
        rate(first, last, |x| x.ldap_ops),
        if last.ldap_ops > first.ldap_ops {
            (last.ldap_seconds - first.ldap_seconds) * 1000.0 / (last.ldap_ops - first.ldap_ops)
        } else {
            0.0
        },
    );
    eprintln!(
        "load: CPU % over load + drain (100 % = one core): {}",
        CPU.map(|n| format!("{n} {:.0}", rate(first, last, |x| x.cpu[n]) * 100.0)).join(", ")
    );
    if let Ok(writer) = pipeline.scrape("gwb-writer").await {
        // Which LDAP operations the writer spent its time on (whole run, initial sync included).
        let kinds: BTreeSet<String> = writer
            .lines()
            .filter_map(|l| l.strip_prefix("gwb_ldap_operation_duration_seconds_count{"))
            .filter_map(|l| l.split("kind=\"").nth(1)?.split('"').next().map(str::to_string))
            .collect();
        let line = kinds
            .iter()
            .map(|kind| {
                let label = format!("kind=\"{kind}\"");
                let count = metric_sum(&writer, "gwb_ldap_operation_duration_seconds_count", &[&label]);
                let sum = metric_sum(&writer, "gwb_ldap_operation_duration_seconds_sum", &[&label]);
                format!("{kind} {count:.0} × {:.1} ms", if count > 0.0 { sum * 1000.0 / count } else { 0.0 })
            })
            .collect::<Vec<_>>()
            .join(", ");
        let commands = metric_sum(&writer, "gwb_commands_total", &["result=\"applied\""]);
        eprintln!("load: writer LDAP operations for {commands:.0} applied commands: {line}");
    }
    let max_oldest = samples.iter().map(|s| s.oldest_ms).max().unwrap_or_default();
    let max_in_flight = samples.iter().map(|s| s.in_flight).max().unwrap_or_default();
    eprintln!("load: max commands in flight {max_in_flight}, max oldest in flight {max_oldest} ms");
    // Flat memory: compare the mean of the last quarter with the samples after warm-up.
    let quarter = (samples.len() / 4).max(1);
    let mut memory = Vec::new();
    for service in SERVICES {
        let mean = |part: &[Sample]| part.iter().map(|s| s.rss[service]).sum::<u64>() as f64 / part.len().max(1) as f64;
        let warm = mean(&samples[1.min(samples.len() - 1)..(1 + quarter).min(samples.len())]);
        let last = mean(&samples[samples.len() - quarter..]);
        eprintln!(
            "load: {service} RSS at the start {:.1} MiB, after warm-up {:.1} MiB, at the end {:.1} MiB",
            samples[0].rss[service] as f64 / 1024.0,
            warm / 1024.0,
            last / 1024.0
        );
        memory.push((service, warm, last));
    }
    caught_up?;
    ensure!(
        changes as f64 >= RATE * load_time.as_secs_f64() * 0.8,
        "the test could only drive {changes} changes in {load_time:?}"
    );
    ensure!(max_oldest < 30_000, "lag not bounded: a command waited {max_oldest} ms");
    ensure!(drain_time < Duration::from_secs(60), "AD needed {drain_time:?} to catch up after the load");
    for (service, warm, last) in memory {
        ensure!(last <= warm * 1.5 + 64.0 * 1024.0, "{service} memory grew from {warm} KiB to {last} KiB");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------
// The DC's own limit for the load mix, straight over ldap3 (no product code).
// ---------------------------------------------------------------------------------

/// One stream of changes on groups of its own, applied on one connection in order
/// (as one writer partition does).
struct Stream {
    groups_ou: String,
    users: Vec<String>,
    /// Live groups: DN, anchor and member indexes.
    groups: Vec<(String, String, BTreeSet<usize>)>,
    rng: Rng,
    /// Also look each group up by anchor before writing it, as the writer does.
    lookup: bool,
    ldap_ops: usize,
    counts: BTreeMap<&'static str, (usize, Duration)>,
}

impl Stream {
    async fn search_anchor(&mut self, ldap: &mut Ldap, anchor: &str) -> anyhow::Result<()> {
        if self.lookup {
            let filter = format!("(&(objectClass=group)(adminDescription={anchor}))");
            let result = ldap
                .search(&self.groups_ou, Scope::Subtree, &filter, vec!["member", "cn", "sAMAccountName"])
                .await?
                .success()?;
            ensure!(result.0.len() == 1, "{anchor} found {} times", result.0.len());
            self.ldap_ops += 1;
        }
        Ok(())
    }

    async fn create(&mut self, ldap: &mut Ldap) -> anyhow::Result<()> {
        let id = uuid::Uuid::new_v4();
        let anchor = format!("Group_{id}");
        let cn = unique("DC Load");
        let dn = format!("CN={},{}", escape_dn_value(&cn), self.groups_ou);
        let members: BTreeSet<usize> = (0..self.rng.below(4)).map(|_| self.rng.below(self.users.len())).collect();
        let sam = format!("g{}", &id.simple().to_string()[..15]);
        if self.lookup {
            // The writer checks the anchor and the sAMAccountName first, and reads the
            // new group back.
            let filter = format!("(|(adminDescription={anchor})(sAMAccountName={sam}))");
            ldap.search(&self.groups_ou, Scope::Subtree, &filter, vec!["1.1"]).await?.success()?;
            self.ldap_ops += 1;
        }
        let mut attrs: Vec<(String, std::collections::HashSet<String>)> = vec![
            ("objectClass".into(), ["group".to_string()].into()),
            ("sAMAccountName".into(), [sam].into()),
            ("adminDescription".into(), [anchor.clone()].into()),
            ("displayName".into(), [cn.clone()].into()),
            ("groupType".into(), ["-2147483640".to_string()].into()),
        ];
        if !members.is_empty() {
            attrs.push(("member".into(), members.iter().map(|&i| self.users[i].clone()).collect()));
        }
        ldap.add(&dn, attrs).await?.success().with_context(|| format!("adding {dn}"))?;
        self.ldap_ops += 1;
        if self.lookup {
            ldap.search(&dn, Scope::Base, "(objectClass=*)", vec!["objectGUID", "objectSid", "sAMAccountName"])
                .await?
                .success()?;
            self.ldap_ops += 1;
        }
        self.groups.push((dn, anchor, members));
        Ok(())
    }

    async fn step(&mut self, ldap: &mut Ldap) -> anyhow::Result<&'static str> {
        let roll = self.rng.below(100);
        if self.groups.len() < 3 || roll < 10 {
            self.create(ldap).await?;
            return Ok("create");
        }
        let index = self.rng.below(self.groups.len());
        let (dn, anchor) = (self.groups[index].0.clone(), self.groups[index].1.clone());
        self.search_anchor(ldap, &anchor).await?;
        if roll < 85 {
            let user = self.rng.below(self.users.len());
            let value = [self.users[user].clone()].into();
            let add = !self.groups[index].2.contains(&user);
            let change =
                if add { Mod::Add("member".to_string(), value) } else { Mod::Delete("member".to_string(), value) };
            ldap.modify(&dn, vec![change]).await?.success().with_context(|| format!("member change on {dn}"))?;
            self.ldap_ops += 1;
            if add {
                self.groups[index].2.insert(user);
            } else {
                self.groups[index].2.remove(&user);
            }
            Ok("member")
        } else if roll < 96 {
            // A rename: modDN to the new CN, then the new displayName.
            let cn = unique("DC Renamed");
            let rdn = format!("CN={}", escape_dn_value(&cn));
            ldap.modifydn(&dn, &rdn, true, None).await?.success().with_context(|| format!("renaming {dn}"))?;
            let new_dn = format!("{rdn},{}", self.groups_ou);
            ldap.modify(&new_dn, vec![Mod::Replace("displayName".to_string(), [cn].into())]).await?.success()?;
            self.ldap_ops += 2;
            self.groups[index].0 = new_dn;
            Ok("rename")
        } else {
            ldap.delete(&dn).await?.success().with_context(|| format!("deleting {dn}"))?;
            self.ldap_ops += 1;
            self.groups.swap_remove(index);
            Ok("delete")
        }
    }

    async fn run(&mut self, mut ldap: Ldap, changes: usize) -> anyhow::Result<()> {
        for _ in 0..changes {
            let started = Instant::now();
            let kind = self.step(&mut ldap).await?;
            let entry = self.counts.entry(kind).or_default();
            entry.0 += 1;
            entry.1 += started.elapsed();
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "a measurement, not a check: prints what the lab DC applies of the load mix by direct LDAP"]
async fn dc_capacity_for_the_load_mix() -> anyhow::Result<()> {
    let changes: usize = std::env::var("GWB_RELIABILITY_DC_CHANGES").ok().and_then(|v| v.parse().ok()).unwrap_or(600);
    // A measurement of the DC: nothing else of this process may load it meanwhile.
    let _turn = gwb_tests::pipeline::alone().await;
    let ad = LabAd::from_env().await?;
    let root = ad.create_ou(&unique("rel-dc")).await?;
    let result = async {
        let users_ou = ad.create_ou_in(&root, "Users").await?;
        let users: Vec<String> = ad.create_users(&users_ou, &unique("du"), 200).await?.into_iter().map(|(dn, _)| dn).collect();
        let samba_before = samba_pid().and_then(cpu_seconds);
        eprintln!("dc capacity: {} (lab dir {}), {changes} changes per run", ad.url, std::env::var("GWB_LAB_DIR").unwrap_or_default());
        for (lookup, connections) in [(false, 1), (false, 2), (true, 1), (true, 2)] {
            let mut streams = Vec::new();
            for c in 0..connections {
                let groups_ou = ad.create_ou_in(&root, &unique("Groups")).await?;
                let mut stream = Stream { groups_ou, users: users.clone(), groups: Vec::new(), rng: Rng::from_env("dc capacity"), lookup: false, ldap_ops: 0, counts: BTreeMap::new() };
                // 100 groups to start from (not timed), as in the load test's tenant.
                let mut ldap = ad.connection().await?;
                for _ in 0..100 / connections {
                    stream.create(&mut ldap).await?;
                }
                stream.lookup = lookup;
                stream.ldap_ops = 0;
                streams.push((stream, ad.connection().await?, changes / connections + usize::from(c < changes % connections)));
            }
            let samba_cpu = samba_pid().and_then(cpu_seconds);
            let started = Instant::now();
            let runs = streams.iter_mut().map(|(stream, ldap, n)| stream.run(ldap.clone(), *n));
            futures::future::try_join_all(runs).await?;
            let elapsed = started.elapsed();
            let samba = samba_pid().and_then(cpu_seconds).zip(samba_cpu).map(|(b, a)| (b - a) / elapsed.as_secs_f64() * 100.0);
            let ops: usize = streams.iter().map(|(s, _, _)| s.ldap_ops).sum();
            let mut kinds: BTreeMap<&str, (usize, Duration)> = BTreeMap::new();
            for (stream, _, _) in &streams {
                for (kind, (n, time)) in &stream.counts {
                    let entry = kinds.entry(kind).or_default();
                    entry.0 += n;
                    entry.1 += *time;
                }
            }
            eprintln!(
                "dc capacity: {} lookups, {connections} connection(s): {changes} changes in {elapsed:.2?} = {:.1} changes/s, {:.1} LDAP ops/s, samba CPU {}; per change: {}",
                if lookup { "with writer-like" } else { "without" },
                changes as f64 / elapsed.as_secs_f64(),
                ops as f64 / elapsed.as_secs_f64(),
                samba.map(|p| format!("{p:.0} %")).unwrap_or_else(|| "?".into()),
                kinds.iter().map(|(k, (n, t))| format!("{k} {n} × {:.1} ms", t.as_secs_f64() * 1000.0 / *n as f64)).collect::<Vec<_>>().join(", ")
            );
        }
        if let Some((after, before)) = samba_pid().and_then(cpu_seconds).zip(samba_before) {
            eprintln!("dc capacity: samba used {:.1} s of CPU for all runs", after - before);
        }
        Ok::<_, anyhow::Error>(())
    }
    .await;
    ad.delete_subtree(&root).await?;
    result
}
