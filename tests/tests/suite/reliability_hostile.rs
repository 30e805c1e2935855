//! Issue 9, case 6: the hostile-input corpus (tests/corpus/hostile_names.json, 250
//! table-driven cases: RFC 4514 specials, leading/trailing spaces and `#`, NUL and
//! control characters, right-to-left text, emoji, combining characters, names past
//! every AD length limit, privileged and colliding names, hostile mailNickname and
//! proxyAddresses, LDAP filter metacharacters in every value) goes through the whole
//! pipeline with `name_template = "display_name"`. Each case is either written safely
//! (exactly one AD object with its anchor, inside the target OU, sAMAccountName legal
//! and bounded) or refused with a reason readable in `gwbctl group <id>`. Objects the
//! test planted to collide are not adopted nor changed, the privileged groups keep their
//! members, and a snapshot of everything outside the test's OU is unchanged.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use graph_sim::{GroupFields, NewGroup};
use gwb_tests::ad::LabAd;
use gwb_tests::fixture::TestLab;
use gwb_tests::pipeline::{Options, Pipeline, unique};
use gwb_tests::workload::{ad_groups, synced_users};
use serde_json::Value;

const SAM_ILLEGAL: &[char] = &['"', '/', '\\', '[', ']', ':', ';', '|', '=', ',', '+', '*', '?', '<', '>'];
const PRIVILEGED: &[&str] =
    &["Domain Admins", "Enterprise Admins", "Administrators", "Schema Admins", "Account Operators", "Backup Operators"];

fn corpus() -> anyhow::Result<Vec<Value>> {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/corpus/hostile_names.json"))?;
    let value: Value = serde_json::from_str(&text)?;
    Ok(value["cases"].as_array().context("cases")?.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_corpus_is_written_safely_or_refused() -> anyhow::Result<()> {
    let cases = corpus()?;
    ensure!(cases.len() >= 200, "the corpus must hold at least 200 cases, has {}", cases.len());
    let lab = TestLab::new("rel-hostile").await?;
    let foreign_ou = lab.ou("Foreign").await?;
    let options = Options { planner_toml: "name_template = \"display_name\"".into(), ..Options::new(&lab.groups_ou) };
    let pipeline = Pipeline::start(options).await?;
    let before = lab.outside().await?;
    let ad = &lab.ad;
    let mut privileged_before = BTreeMap::new();
    for name in PRIVILEGED {
        let dn = format!(
            "CN={name},CN={},{}",
            if *name == "Domain Admins" || *name == "Enterprise Admins" || *name == "Schema Admins" {
                "Users"
            } else {
                "Builtin"
            },
            ad.base_dn
        );
        privileged_before.insert(dn.clone(), ad.snapshot_entry(&dn).await?);
    }
    let started = Instant::now();
    let result = scenario(ad, &pipeline, &cases, &lab.users_ou, &lab.groups_ou, &foreign_ou).await;
    let mut privileged_changed = Vec::new();
    for (dn, snapshot) in &privileged_before {
        let now = ad.snapshot_entry(dn).await?;
        if now != *snapshot {
            let changed: Vec<String> = now
                .iter()
                .filter(|(k, v)| snapshot.get(*k) != Some(v))
                .map(|(k, v)| format!("{k}: {:?} → {v:?}", snapshot.get(k)))
                .collect();
            privileged_changed.push(format!("{dn}: {changed:?}"));
        }
    }
    lab.finish_unchanged(pipeline, result, &before).await?;
    ensure!(privileged_changed.is_empty(), "privileged groups changed: {privileged_changed:?}");
    eprintln!("hostile corpus: {} cases checked in {:?}", cases.len(), started.elapsed());
    Ok(())
}

async fn scenario(
    ad: &LabAd,
    pipeline: &Pipeline,
    cases: &[Value],
    users_ou: &str,
    groups_ou: &str,
    foreign_ou: &str,
) -> anyhow::Result<()> {
    let sim = &pipeline.sim;
    let users = synced_users(ad, sim, users_ou, 2).await?;
    let run = &unique("r")[2..8];
    // Planted objects the product must neither adopt nor change.
    let mut planted: BTreeMap<String, BTreeMap<String, Vec<String>>> = BTreeMap::new();
    let mut created: Vec<(String, uuid::Uuid, Option<String>)> = Vec::new(); // (case id, group id, refused-by-source reason)
    let mut refused_by_source = 0;
    for case in cases {
        let id = case["id"].as_str().context("id")?.to_string();
        let mut name = case["displayName"].as_str().unwrap_or_default().to_string();
        let group_id = uuid::Uuid::new_v4();
        let last12 = group_id.simple().to_string()[20..].to_string();
        if let Some(how) = case["collide"].as_str() {
            name = format!("{name} {run}");
            let plant = |dn: String, attrs: Vec<(&'static str, Vec<String>)>| async move {
                let owned: Vec<(&str, Vec<&str>)> =
                    attrs.iter().map(|(k, v)| (*k, v.iter().map(String::as_str).collect())).collect();
                let refs: Vec<(&str, &[&str])> = owned.iter().map(|(k, v)| (*k, v.as_slice())).collect();
                ad.add_entry(&dn, &refs).await.map(|_| dn)
            };
            let group = |sam: String, extra: Option<(&'static str, String)>| {
                let mut attrs = vec![
                    ("objectClass", vec!["group".to_string()]),
                    ("sAMAccountName", vec![sam]),
                    ("groupType", vec!["-2147483640".to_string()]),
                ];
                if let Some((k, v)) = extra {
                    attrs.push((k, vec![v]));
                }
                attrs
            };
            let dn = match how {
                "same-cn" => {
                    plant(
                        format!("CN={}_{last12},{groups_ou}", gwb_tests::ad::escape_dn_value(&name)),
                        group(unique("pl"), None),
                    )
                    .await?
                }
                "same-sam" => {
                    plant(
                        format!("CN={},{foreign_ou}", gwb_tests::ad::escape_dn_value(&name)),
                        group(name.chars().take(20).collect(), None),
                    )
                    .await?
                }
                "user-same-cn" => {
                    plant(
                        format!("CN={}_{last12},{groups_ou}", gwb_tests::ad::escape_dn_value(&name)),
                        vec![
                            ("objectClass", vec!["user".into()]),
                            ("sAMAccountName", vec![unique("pu")]),
                            ("userAccountControl", vec!["514".into()]),
                        ],
                    )
                    .await?
                }
                _ => {
                    plant(
                        format!("CN=Forged {run} {last12},{foreign_ou}"),
                        group(unique("pf"), Some(("adminDescription", format!("Group_{group_id}")))),
                    )
                    .await?
                }
            };
            planted.insert(dn.clone(), ad.snapshot_entry(&dn).await?);
        }
        let unified = case["kind"].as_str() == Some("unified");
        let strings = |key: &str| {
            case[key].as_array().map(|a| a.iter().filter_map(|v| v.as_str().map(String::from)).collect::<Vec<_>>())
        };
        let fields = GroupFields {
            display_name: Some(name),
            description: case["description"].as_str().map(String::from),
            mail_nickname: case["mailNickname"].as_str().map(String::from),
            mail: case["mail"].as_str().map(String::from),
            proxy_addresses: strings("proxyAddresses"),
            security_enabled: Some(!unified),
            mail_enabled: Some(unified),
            group_types: Some(if unified { vec!["Unified".into()] } else { vec![] }),
            ..GroupFields::default()
        };
        match sim.create_group(&NewGroup { id: Some(group_id), fields, members: vec![users[0].id, users[1].id] }).await
        {
            Ok(_) => created.push((id, group_id, None)),
            Err(error) if error.status() == Some(400) => {
                // graph-sim (like Graph) refuses some values outright: nothing to write.
                refused_by_source += 1;
                created.push((id, group_id, Some(error.to_string())));
            }
            Err(error) => return Err(error).context(format!("creating case {id}")),
        }
    }
    pipeline.gwbctl_ok(&["enable"]).await?;

    // Wait until every group has settled (written, skipped or error).
    let expected: Vec<&(String, uuid::Uuid, Option<String>)> = created.iter().filter(|c| c.2.is_none()).collect();
    let cell: std::cell::RefCell<BTreeMap<String, Value>> = Default::default();
    pipeline
        .eventually("every corpus group has settled", Duration::from_secs(120), || {
            let cell = &cell;
            let expected = &expected;
            async move {
                let all = pipeline.all_groups().await?;
                let states: BTreeMap<String, Value> =
                    all.into_iter().map(|g| (g["id"].as_str().unwrap_or_default().to_string(), g)).collect();
                *cell.borrow_mut() = states.clone();
                let unsettled: Vec<_> = expected
                    .iter()
                    .filter(|(_, g, _)| {
                        !matches!(
                            states.get(&g.to_string()).and_then(|s| s["state"].as_str()),
                            Some("written" | "skipped" | "error")
                        )
                    })
                    .map(|(id, _, _)| id.as_str())
                    .collect();
                ensure!(
                    unsettled.is_empty(),
                    "{} unsettled, e.g. {:?}",
                    unsettled.len(),
                    &unsettled[..unsettled.len().min(5)]
                );
                let status = pipeline.gwbctl_json(&["status"]).await?;
                ensure!(status["commands_in_flight"] == 0, "commands in flight: {}", status["commands_in_flight"]);
                Ok(())
            }
        })
        .await?;
    let states = cell.into_inner();

    let in_ad = ad_groups(ad, &ad.base_dn).await?;
    let mut by_anchor: BTreeMap<String, Vec<_>> = BTreeMap::new();
    for group in &in_ad {
        if let Some(anchor) = &group.anchor {
            by_anchor.entry(anchor.clone()).or_default().push(group);
        }
    }
    let ou_suffix = format!(",{}", groups_ou.to_lowercase());
    let mut problems = Vec::new();
    let (mut written, mut refused) = (0, 0);
    let mut refusals: BTreeMap<String, usize> = BTreeMap::new();
    for (case, group, _) in &expected {
        let anchor = format!("Group_{group}");
        let state = states[&group.to_string()]["state"].as_str().unwrap_or_default().to_string();
        let ours: Vec<_> = by_anchor
            .get(&anchor)
            .map(|v| v.iter().filter(|g| g.dn.to_lowercase().ends_with(&ou_suffix)).collect())
            .unwrap_or_default();
        if state == "written" {
            written += 1;
            match ours.as_slice() {
                [one] => {
                    if one.sam.is_empty()
                        || one.sam.chars().count() > 256
                        || one.sam.contains(SAM_ILLEGAL)
                        || one.sam.ends_with('.')
                        || one.sam.chars().any(char::is_control)
                    {
                        problems.push(format!("{case}: illegal sAMAccountName {:?}", one.sam));
                    }
                    if one.members.len() != 2 {
                        problems.push(format!("{case}: {} members instead of 2", one.members.len()));
                    }
                }
                other => problems
                    .push(format!("{case}: written but {} AD objects with its anchor in the target OU", other.len())),
            }
        } else {
            refused += 1;
            let detail = pipeline.gwbctl_json(&["group", &group.to_string()]).await?;
            let reason = format!(
                "{} {}",
                detail["policy_reason"].as_str().unwrap_or_default(),
                detail["summary"]["last_error"].as_str().unwrap_or_default()
            );
            if reason.trim().is_empty() {
                problems.push(format!("{case}: {state} without a recorded reason: {detail}"));
            }
            *refusals.entry(format!("{state}: {}", reason.trim().chars().take(90).collect::<String>())).or_default() +=
                1;
            if state == "error" {
                eprintln!("  error for case {case}: {}", reason.trim().chars().take(200).collect::<String>());
            }
            if !ours.is_empty() {
                problems.push(format!("{case}: {state} but {} AD objects carry its anchor", ours.len()));
            }
        }
    }
    // Planted objects: neither adopted nor changed.
    for (dn, snapshot) in &planted {
        let now = ad.snapshot_entry(dn).await?;
        if &now != snapshot {
            problems.push(format!("planted object {dn} changed"));
        }
    }
    eprintln!(
        "hostile corpus: {} cases, {} refused by graph-sim, {written} written, {refused} refused by gwb",
        cases.len(),
        refused_by_source
    );
    for (reason, count) in &refusals {
        eprintln!("  {count:4} × {reason}");
    }
    ensure!(problems.is_empty(), "{} problems:\n{}", problems.len(), problems.join("\n"));
    Ok(())
}
