//! Microsoft 365 groups into an Exchange organisation, end to end through graph-sim,
//! the collector, the planner and the writer, against the Exchange variants of the lab
//! DC (`scripts/lab-ad.sh up <name> --exchange` / `--exchange-schema-only`), every step
//! checked over LDAP attribute by attribute (issue 16 items 2–5):
//!
//! * `GWB_LAB_EXCHANGE_ORG_ENV`: env file of the lab with schema and organisation;
//! * `GWB_LAB_EXCHANGE_SCHEMA_ENV`: env file of the schema-only lab;
//! * the usual `GWB_LAB_*` variables: the plain lab.
//!
//! A test whose Exchange lab is not given is skipped with a message, or fails when
//! `GWB_REQUIRE_EXCHANGE_LAB=1` (as scripts/test.sh sets it), like
//! `crates/gwb-ldap/tests/exchange.rs`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use graph_sim::{GroupFields, NewGroup, WritebackConfiguration};
use gwb_tests::ad::{LabAd, LabEnv};
use gwb_tests::fixture::TestLab;
use gwb_tests::pipeline::{Options, Pipeline, unique};
use gwb_tests::workload::synced_user_named;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(60);
const ORG_LAB: &str = "GWB_LAB_EXCHANGE_ORG_ENV";
const SCHEMA_LAB: &str = "GWB_LAB_EXCHANGE_SCHEMA_ENV";
const REQUIRE: &str = "GWB_REQUIRE_EXCHANGE_LAB";

const UNIVERSAL_SECURITY: &str = "-2147483640";
const UNIVERSAL_DISTRIBUTION: &str = "8";
const REMOTE_GROUP_MAILBOX: &str = "8796093022208";
const MAIL_UNIVERSAL_SECURITY: &str = "1024";
const DISPLAY_DISTRIBUTION_GROUP: &str = "1";
const DISPLAY_SECURITY_DISTRIBUTION_GROUP: &str = "1073741833";

/// What gwb writes (and must be exactly so); any attribute here absent from an
/// expectation must be absent from AD.
const WRITTEN: [&str; 10] = [
    "groupType",
    "displayName",
    "description",
    "adminDescription",
    "mail",
    "mailNickname",
    "proxyAddresses",
    "msExchRecipientTypeDetails",
    "msExchRecipientDisplayType",
    "targetAddress",
];
/// What Exchange stamps itself (Update-Recipient); gwb never writes or reverts them.
const STAMPED: [&str; 3] = ["legacyExchangeDN", "showInAddressBook", "msExchVersion"];

/// The lab of an Exchange variant, `None` (skipped, with a message) when not given.
fn exchange_lab(var: &str, variant: &str) -> anyhow::Result<Option<LabEnv>> {
    let Some(path) = std::env::var_os(var) else {
        if std::env::var(REQUIRE).as_deref() == Ok("1") {
            bail!("{REQUIRE}=1 but {var} is not set: export {var}=$(scripts/lab-ad.sh env <name>)");
        }
        eprintln!("skipped: {var} is not set (scripts/lab-ad.sh up <name> --exchange…; export {var}=…)");
        return Ok(None);
    };
    let lab = LabEnv::from_file(Path::new(&path))?;
    ensure!(lab.variant() == variant, "{var} names a '{}' lab, not '{variant}'", lab.variant());
    Ok(Some(lab))
}

/// An AD group's attributes by lower-cased name, values sorted.
type Attributes = BTreeMap<String, BTreeSet<String>>;

async fn read(ad: &LabAd, dn: &str) -> anyhow::Result<Attributes> {
    let mut names: Vec<&str> = WRITTEN.iter().chain(STAMPED.iter()).copied().collect();
    names.extend(["cn", "sAMAccountName"]);
    let entry = ad.entry(dn, &names).await?.with_context(|| format!("{dn} does not exist"))?;
    Ok(entry
        .attrs
        .into_iter()
        .map(|(name, values)| (name.to_ascii_lowercase(), values.into_iter().collect()))
        .collect())
}

/// The attributes gwb writes, as expected after a step.
#[derive(Clone, Debug)]
struct Expect {
    display_name: String,
    group_type: &'static str,
    anchor: String,
    /// Mail attributes, `None`: all absent.
    mail: Option<Mail>,
}

#[derive(Clone, Debug)]
struct Mail {
    mail: String,
    nickname: String,
    proxies: Vec<String>,
    type_details: &'static str,
    display_type: &'static str,
    target: Option<String>,
}

impl Expect {
    fn attributes(&self) -> Attributes {
        let mut out = Attributes::new();
        let mut put = |name: &str, values: Vec<String>| {
            if !values.is_empty() {
                out.insert(name.to_ascii_lowercase(), values.into_iter().collect());
            }
        };
        put("groupType", vec![self.group_type.into()]);
        put("displayName", vec![self.display_name.clone()]);
        put("description", vec!["Sales team, cloud managed".into()]);
        put("adminDescription", vec![self.anchor.clone()]);
        if let Some(mail) = &self.mail {
            put("mail", vec![mail.mail.clone()]);
            put("mailNickname", vec![mail.nickname.clone()]);
            put("proxyAddresses", mail.proxies.clone());
            put("msExchRecipientTypeDetails", vec![mail.type_details.into()]);
            put("msExchRecipientDisplayType", vec![mail.display_type.into()]);
            put("targetAddress", mail.target.iter().cloned().collect());
        }
        out
    }
}

fn written_part(all: &Attributes) -> Attributes {
    let wanted: BTreeSet<String> = WRITTEN.iter().map(|n| n.to_ascii_lowercase()).collect();
    all.iter().filter(|(name, _)| wanted.contains(*name)).map(|(n, v)| (n.clone(), v.clone())).collect()
}

fn stamped_part(all: &Attributes) -> Attributes {
    let wanted: BTreeSet<String> = STAMPED.iter().map(|n| n.to_ascii_lowercase()).collect();
    all.iter().filter(|(name, _)| wanted.contains(*name)).map(|(n, v)| (n.clone(), v.clone())).collect()
}

/// Waits until the group with `anchor` is the only one, is the object `guid` (when
/// known), has a DN starting with `cn_prefix`, exactly the written attributes of
/// `expect`, the Exchange-stamped `stamped` (when given) and the member SIDs `members`.
#[allow(clippy::too_many_arguments)]
async fn settle(
    pipeline: &Pipeline,
    ad: &LabAd,
    step: &str,
    guid: Option<&str>,
    cn_prefix: &str,
    expect: &Expect,
    stamped: Option<&Attributes>,
    members: &BTreeSet<String>,
) -> anyhow::Result<String> {
    pipeline
        .eventually(step, WAIT, || async {
            let found = ad.find_groups_by_anchor(&expect.anchor).await?;
            ensure!(found.len() == 1, "{} groups carry {}", found.len(), expect.anchor);
            let group = &found[0];
            if let Some(guid) = guid {
                ensure!(group.guid == guid, "objectGUID {} is not {guid}: not the same object", group.guid);
            }
            ensure!(group.dn.starts_with(cn_prefix), "DN {} does not start with {cn_prefix}", group.dn);
            let all = read(ad, &group.dn).await?;
            let written = written_part(&all);
            let wanted = expect.attributes();
            ensure!(written == wanted, "attributes differ:\n  AD:     {written:?}\n  wanted: {wanted:?}");
            if let Some(stamped) = stamped {
                let now = stamped_part(&all);
                ensure!(now == *stamped, "Exchange-stamped attributes changed: {now:?}, were {stamped:?}");
            }
            let sids = ad.member_sids(&group.dn).await?;
            ensure!(sids == *members, "members {sids:?}, wanted {members:?}");
            Ok(())
        })
        .await?;
    let found = ad.find_groups_by_anchor(&expect.anchor).await?;
    Ok(found.first().context("the group vanished")?.dn.clone())
}

async fn state_of(pipeline: &Pipeline, id: &str) -> anyhow::Result<serde_json::Value> {
    pipeline.gwbctl_json(&["group", id]).await
}

async fn wait_state(pipeline: &Pipeline, id: &str, state: &str) -> anyhow::Result<()> {
    pipeline
        .eventually(&format!("group {id} is {state}"), WAIT, || async {
            let detail = state_of(pipeline, id).await?;
            ensure!(detail["summary"]["state"] == state, "{detail}");
            Ok(())
        })
        .await
}

fn group_type(name: &str) -> GroupFields {
    GroupFields {
        writeback_configuration: Some(WritebackConfiguration {
            is_enabled: None,
            on_premises_group_type: Some(name.into()),
        }),
        ..GroupFields::default()
    }
}

/// Item 4: the whole lifecycle of a Microsoft 365 group in the Exchange lab, with a cloud
/// mail-enabled security group (item 5) and a security group beside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn microsoft_365_group_lifecycle_in_an_exchange_organisation() -> anyhow::Result<()> {
    let Some(lab_env) = exchange_lab(ORG_LAB, "org")? else { return Ok(()) };
    let lab = TestLab::in_lab(&lab_env, "x365", "Cloud Groups").await?;
    let (_, alice_sid) = lab.ad.create_user(&lab.users_ou, &unique("alice")).await?;
    let (_, bob_sid) = lab.ad.create_user(&lab.users_ou, &unique("bob")).await?;
    // An on-premises recipient that holds one of the group's addresses.
    let taken = format!("{}@contoso.com", unique("taken"));
    let holder_dn = format!("CN={},{}", unique("Holder DL"), lab.users_ou);
    let holder_sam = unique("holder");
    let holder_proxy = format!("SMTP:{taken}");
    let holder: [(&str, &[&str]); 4] = [
        ("objectClass", &["group"]),
        ("sAMAccountName", &[holder_sam.as_str()]),
        ("groupType", &[UNIVERSAL_DISTRIBUTION]),
        ("proxyAddresses", &[holder_proxy.as_str()]),
    ];
    lab.ad.add_entry(&holder_dn, &holder).await?;
    let before = lab.outside().await?;
    let pipeline = Pipeline::start(Options {
        planner_toml: "name_template = \"display_name\"".into(),
        lab: Some(lab_env.clone()),
        ..Options::new(&lab.groups_ou)
    })
    .await?;
    let result = lifecycle(&lab, &pipeline, &lab_env, &alice_sid, &bob_sid, &taken, &holder_dn).await;
    lab.finish_unchanged(pipeline, result, &before).await
}

#[allow(clippy::too_many_arguments)]
async fn lifecycle(
    lab: &TestLab,
    pipeline: &Pipeline,
    lab_env: &LabEnv,
    alice_sid: &str,
    bob_sid: &str,
    taken: &str,
    holder_dn: &str,
) -> anyhow::Result<()> {
    let ad = &lab.ad;
    let sim = &pipeline.sim;
    let organisation = lab_env.get("GWB_LAB_EXCHANGE_ORGANIZATION")?.to_string();
    let alice = sim.create_user(&synced_user_named("Alice Synced", alice_sid)).await?.user.id;
    let bob = sim.create_user(&synced_user_named("Bob Synced", bob_sid)).await?.user.id;
    let alias = unique("sales");
    let primary = format!("SMTP:{alias}@contoso.com");
    let routing = format!("smtp:{alias}@labtenant.mail.onmicrosoft.com");
    let moera = format!("smtp:{alias}@labtenant.onmicrosoft.com");
    let x500 =
        format!("X500:/o=ExchangeLabs/ou=Exchange Administrative Group (FYDIBOHF23SPDLT)/cn=Recipients/cn={alias}");
    let taken_proxy = format!("smtp:{taken}");
    let proxies = vec![
        primary.clone(),
        routing.clone(),
        moera.clone(),
        x500.clone(),
        "SPO:SPO_5b7a0c4e-1111-2222-3333-444455556666@SPO_6a1c3f0e".to_string(),
        "SIP:someone@contoso.com".to_string(),
        taken_proxy.clone(),
    ];
    let m365 = sim
        .create_group(&NewGroup {
            id: None,
            fields: GroupFields {
                display_name: Some("Sales Team".into()),
                description: Some("Sales team, cloud managed".into()),
                mail_nickname: Some(alias.clone()),
                mail: Some(format!("{alias}@contoso.com")),
                mail_enabled: Some(true),
                security_enabled: Some(false),
                group_types: Some(vec!["Unified".into()]),
                proxy_addresses: Some(proxies),
                ..GroupFields::default()
            },
            members: vec![alice],
        })
        .await?
        .group
        .id;
    // Item 5: a cloud mail-enabled security group (Microsoft's writeback does not take
    // them): written as a plain universal security group, no mail attributes.
    let mail_security_alias = unique("mailsec");
    let mail_security = sim
        .create_group(&NewGroup {
            id: None,
            fields: GroupFields {
                display_name: Some("Mail Security".into()),
                description: Some("Sales team, cloud managed".into()),
                mail_nickname: Some(mail_security_alias.clone()),
                mail: Some(format!("{mail_security_alias}@contoso.com")),
                mail_enabled: Some(true),
                security_enabled: Some(true),
                group_types: Some(vec![]),
                proxy_addresses: Some(vec![format!("SMTP:{mail_security_alias}@contoso.com")]),
                ..GroupFields::default()
            },
            members: vec![bob],
        })
        .await?
        .group
        .id;
    let security = pipeline.security_group("Plain Security", vec![alice, bob]).await?;
    let id = m365.to_string();
    let anchor = format!("Group_{id}");
    let tail = &id[id.len() - 12..];

    // Item 2: the writer's Exchange detection reaches `gwbctl status`.
    pipeline
        .eventually("gwbctl status shows the Exchange organisation", WAIT, || async {
            let status = pipeline.gwbctl_json(&["status"]).await?;
            let exchange = status["exchange"].as_str().unwrap_or_default();
            ensure!(
                exchange.starts_with(&format!("Exchange 2019 CU10+ schema, organisation {organisation}")),
                "{status}"
            );
            ensure!(status["m365_writeback_allowed"] == true, "{status}");
            ensure!(status["m365_writeback_refusal"] == "", "{status}");
            Ok(())
        })
        .await?;
    let text = pipeline.gwbctl_ok(&["status"]).await?;
    ensure!(
        text.contains(&format!("Exchange:           Exchange 2019 CU10+ schema, organisation {organisation}")),
        "{text}"
    );
    ensure!(text.contains("Microsoft 365 groups: written back"), "{text}");

    pipeline.gwbctl_ok(&["enable"]).await?;

    // Create: a RemoteGroupMailbox, SMTP and X500 addresses only, the taken one skipped.
    let mut expect = Expect {
        display_name: "Sales Team".into(),
        group_type: UNIVERSAL_DISTRIBUTION,
        anchor: anchor.clone(),
        mail: Some(Mail {
            mail: format!("{alias}@contoso.com"),
            nickname: alias.clone(),
            proxies: vec![primary.clone(), routing.clone(), moera.clone(), x500.clone()],
            type_details: REMOTE_GROUP_MAILBOX,
            display_type: DISPLAY_DISTRIBUTION_GROUP,
            target: Some(format!("SMTP:{alias}@labtenant.mail.onmicrosoft.com")),
        }),
    };
    let alice_only = BTreeSet::from([alice_sid.to_string()]);
    let dn =
        settle(pipeline, ad, "the M365 group is created", None, "CN=Sales Team_", &expect, None, &alice_only).await?;
    ensure!(dn.ends_with(&lab.groups_ou), "{dn} is not in {}", lab.groups_ou);
    let guid = ad.find_groups_by_anchor(&anchor).await?.first().context("group vanished")?.guid.clone();
    wait_state(pipeline, &id, "written").await?;
    // Item 3 / b: the address another recipient holds is skipped, with the reason, on the group.
    let detail = state_of(pipeline, &id).await?;
    let skipped = detail["addresses_skipped"].as_array().context("addresses_skipped")?;
    ensure!(skipped.len() == 1 && skipped[0] == format!("{taken_proxy} (held by {holder_dn})").as_str(), "{detail}");
    let shown = pipeline.gwbctl_ok(&["group", &id]).await?;
    ensure!(shown.contains("Proxy addresses not written (1): another object holds them"), "{shown}");
    let audit = pipeline.gwbctl_ok(&["audit", &id]).await?;
    ensure!(audit.contains(&format!("proxy addresses not written: {taken_proxy} (held by {holder_dn})")), "{audit}");

    // Item 5: the mail-enabled security group is plain security, with no mail attributes.
    let mail_security_anchor = format!("Group_{mail_security}");
    let mail_security_expect = Expect {
        display_name: "Mail Security".into(),
        group_type: UNIVERSAL_SECURITY,
        anchor: mail_security_anchor.clone(),
        mail: None,
    };
    let bob_only = BTreeSet::from([bob_sid.to_string()]);
    let mail_security_dn = settle(
        pipeline,
        ad,
        "the mail-enabled security group is written as plain security",
        None,
        "CN=Mail Security_",
        &mail_security_expect,
        None,
        &bob_only,
    )
    .await?;
    let security_anchor = format!("Group_{security}");
    pipeline
        .eventually("the security group is written", WAIT, || async {
            let found = ad.find_groups_by_anchor(&security_anchor).await?;
            ensure!(found.len() == 1 && found[0].group_type.to_string() == UNIVERSAL_SECURITY, "{found:?}");
            Ok(())
        })
        .await?;

    // What Exchange's Update-Recipient stamps later; gwb must leave it alone.
    let legacy =
        format!("/o={organisation}/ou=Exchange Administrative Group (FYDIBOHF23SPDLT)/cn=Recipients/cn={alias}");
    ad.replace(&dn, "legacyExchangeDN", &[&legacy]).await?;
    ad.replace(&dn, "showInAddressBook", &[&format!("CN=Users,{}", ad.base_dn)]).await?;
    ad.replace(&dn, "msExchVersion", &["88218628259840"]).await?;
    let stamped = stamped_part(&read(ad, &dn).await?);
    ensure!(stamped.len() == 3, "the lab did not take the stamped attributes: {stamped:?}");

    // Rename: display name and alias; the same object, renamed in place.
    let new_alias = format!("{alias}-mkt");
    sim.update_group(
        m365,
        &GroupFields {
            display_name: Some("Sales & Marketing".into()),
            mail_nickname: Some(new_alias.clone()),
            ..GroupFields::default()
        },
        &[],
    )
    .await?;
    expect.display_name = "Sales & Marketing".into();
    if let Some(mail) = expect.mail.as_mut() {
        mail.nickname = new_alias.clone();
    }
    let cn = format!("CN=Sales & Marketing_{tail}");
    settle(pipeline, ad, "renamed (display name and alias)", Some(&guid), &cn, &expect, Some(&stamped), &alice_only)
        .await?;

    // Members in and out.
    sim.add_members(m365, &[bob]).await?;
    let both = BTreeSet::from([alice_sid.to_string(), bob_sid.to_string()]);
    settle(pipeline, ad, "Bob added", Some(&guid), &cn, &expect, Some(&stamped), &both).await?;
    sim.remove_member(m365, alice).await?;
    settle(pipeline, ad, "Alice removed", Some(&guid), &cn, &expect, Some(&stamped), &bob_only).await?;

    // The holder gives the address up; a primary address change follows: the old
    // primary becomes a secondary, and the freed address is now written.
    ad.replace(holder_dn, "proxyAddresses", &[&format!("SMTP:{}", unique("other"))]).await?;
    let new_primary = format!("SMTP:{new_alias}@contoso.com");
    let old_primary = format!("smtp:{alias}@contoso.com");
    let mut cloud_proxies = vec![
        new_primary.clone(),
        old_primary.clone(),
        routing.clone(),
        moera.clone(),
        x500.clone(),
        "SPO:SPO_5b7a0c4e-1111-2222-3333-444455556666@SPO_6a1c3f0e".to_string(),
        taken_proxy.clone(),
    ];
    sim.update_group(
        m365,
        &GroupFields {
            mail: Some(format!("{new_alias}@contoso.com")),
            proxy_addresses: Some(cloud_proxies.clone()),
            ..GroupFields::default()
        },
        &[],
    )
    .await?;
    if let Some(mail) = expect.mail.as_mut() {
        mail.mail = format!("{new_alias}@contoso.com");
        mail.proxies = vec![
            new_primary.clone(),
            old_primary.clone(),
            routing.clone(),
            moera.clone(),
            x500.clone(),
            taken_proxy.clone(),
        ];
    }
    settle(pipeline, ad, "primary address changed", Some(&guid), &cn, &expect, Some(&stamped), &bob_only).await?;
    pipeline
        .eventually("no address is reported skipped any more", WAIT, || async {
            let detail = state_of(pipeline, &id).await?;
            ensure!(detail["addresses_skipped"].as_array().is_some_and(|a| a.is_empty()), "{detail}");
            Ok(())
        })
        .await?;

    // A secondary address added, then removed.
    let extra = format!("smtp:{alias}-emea@contoso.com");
    cloud_proxies.push(extra.clone());
    sim.update_group(
        m365,
        &GroupFields { proxy_addresses: Some(cloud_proxies.clone()), ..GroupFields::default() },
        &[],
    )
    .await?;
    if let Some(mail) = expect.mail.as_mut() {
        mail.proxies.push(extra.clone());
    }
    settle(pipeline, ad, "a secondary address added", Some(&guid), &cn, &expect, Some(&stamped), &bob_only).await?;
    cloud_proxies.retain(|p| *p != extra);
    sim.update_group(
        m365,
        &GroupFields { proxy_addresses: Some(cloud_proxies.clone()), ..GroupFields::default() },
        &[],
    )
    .await?;
    if let Some(mail) = expect.mail.as_mut() {
        mail.proxies.retain(|p| *p != extra);
    }
    settle(pipeline, ad, "the secondary address removed", Some(&guid), &cn, &expect, Some(&stamped), &bob_only).await?;
    let distribution = expect.clone();

    // The writeback type, by writebackConfiguration.onPremisesGroupType: security takes
    // every mail attribute gwb wrote away (Exchange's own stamps stay) …
    sim.update_group(m365, &group_type("universalSecurityGroup"), &[]).await?;
    let as_security = Expect { group_type: UNIVERSAL_SECURITY, mail: None, ..distribution.clone() };
    settle(pipeline, ad, "written as security", Some(&guid), &cn, &as_security, Some(&stamped), &bob_only).await?;
    // … and back to distribution brings them back.
    sim.update_group(m365, &group_type("universalDistributionGroup"), &[]).await?;
    settle(pipeline, ad, "back to distribution", Some(&guid), &cn, &distribution, Some(&stamped), &bob_only).await?;

    // … and by the operator: mail-enabled security (1024, no targetAddress), then cleared.
    pipeline.gwbctl_ok(&["set-group", &id, "--type", "mail-enabled-security"]).await?;
    let mut as_mail_security = distribution.clone();
    as_mail_security.group_type = UNIVERSAL_SECURITY;
    if let Some(mail) = as_mail_security.mail.as_mut() {
        mail.type_details = MAIL_UNIVERSAL_SECURITY;
        mail.display_type = DISPLAY_SECURITY_DISTRIBUTION_GROUP;
        mail.target = None;
    }
    settle(
        pipeline,
        ad,
        "mail-enabled security by the operator",
        Some(&guid),
        &cn,
        &as_mail_security,
        Some(&stamped),
        &bob_only,
    )
    .await?;
    let detail = state_of(pipeline, &id).await?;
    ensure!(detail["target_type"].as_str().unwrap_or_default().contains("MailEnabledSecurity"), "{detail}");
    pipeline.gwbctl_ok(&["set-group", &id, "--clear"]).await?;
    settle(pipeline, ad, "the override cleared", Some(&guid), &cn, &distribution, Some(&stamped), &bob_only).await?;

    // Soft delete: kept in AD, unchanged; restore: written again, the same object.
    sim.delete_group(m365, false).await?;
    wait_state(pipeline, &id, "kept").await?;
    settle(pipeline, ad, "kept after soft delete", Some(&guid), &cn, &distribution, Some(&stamped), &bob_only).await?;
    sim.restore_group(m365).await?;
    wait_state(pipeline, &id, "written").await?;
    settle(pipeline, ad, "written after restore", Some(&guid), &cn, &distribution, Some(&stamped), &bob_only).await?;

    // Hard delete: the AD group goes.
    sim.delete_group(m365, true).await?;
    pipeline
        .eventually("the M365 group is deleted from AD", WAIT, || async {
            let found = ad.find_groups_by_anchor(&anchor).await?;
            ensure!(found.is_empty(), "still in AD: {found:?}");
            Ok(())
        })
        .await?;

    // disable --mode keep: the other groups stay, unchanged; --mode delete removes them.
    let kept_before = read(ad, &mail_security_dn).await?;
    pipeline.gwbctl_ok(&["disable", "--mode", "keep"]).await?;
    wait_state(pipeline, &mail_security.to_string(), "kept").await?;
    wait_state(pipeline, &security.to_string(), "kept").await?;
    ensure!(read(ad, &mail_security_dn).await? == kept_before, "disable --mode keep changed the group");
    ensure!(ad.find_groups_by_anchor(&security_anchor).await?.len() == 1, "disable --mode keep removed a group");
    pipeline.gwbctl_ok(&["disable", "--mode", "delete"]).await?;
    pipeline
        .eventually("disable --mode delete removed every written group", WAIT, || async {
            for anchor in [&mail_security_anchor, &security_anchor] {
                let found = ad.find_groups_by_anchor(anchor).await?;
                ensure!(found.is_empty(), "{anchor} still in AD: {found:?}");
            }
            Ok(())
        })
        .await?;
    Ok(())
}

/// Item 2 on the schema-only lab: the writers refuse Microsoft 365 groups, and the
/// planner plans them as skipped with that reason instead of sending commands that
/// fail; the operator's mail-enabled types are refused with it too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_only_forest_skips_microsoft_365_groups_with_the_reason() -> anyhow::Result<()> {
    let Some(lab_env) = exchange_lab(SCHEMA_LAB, "schema")? else { return Ok(()) };
    let lab = TestLab::in_lab(&lab_env, "xschema", "Cloud Groups").await?;
    let pipeline = Pipeline::start(Options { lab: Some(lab_env), ..Options::new(&lab.groups_ou) }).await?;
    let result =
        refused(&lab, &pipeline, "schema only, no organisation", "schema only, no Exchange organisation").await;
    lab.finish(pipeline, result).await
}

/// Item 2 on the plain lab: "none", and Microsoft 365 groups skipped with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forest_without_exchange_reports_none() -> anyhow::Result<()> {
    let lab_env = LabEnv::from_process_env();
    if lab_env.variant() != "none" {
        eprintln!("skipped: the GWB_LAB_* lab is the '{}' Exchange variant, not the plain one", lab_env.variant());
        return Ok(());
    }
    let lab = TestLab::in_lab(&lab_env, "xnone", "Cloud Groups").await?;
    let pipeline = Pipeline::start(Options::new(&lab.groups_ou)).await?;
    let result = refused(&lab, &pipeline, "none", "needs the Exchange schema").await;
    lab.finish(pipeline, result).await
}

/// A Microsoft 365 group is skipped with `reason` while a security group is written;
/// `gwbctl status` shows `exchange` and the refusal.
async fn refused(lab: &TestLab, pipeline: &Pipeline, exchange: &str, reason: &str) -> anyhow::Result<()> {
    let sim = &pipeline.sim;
    let alias = unique("team");
    let m365 = sim
        .create_group(&NewGroup {
            id: None,
            fields: GroupFields {
                display_name: Some("Team".into()),
                mail_nickname: Some(alias.clone()),
                mail: Some(format!("{alias}@contoso.com")),
                mail_enabled: Some(true),
                security_enabled: Some(false),
                group_types: Some(vec!["Unified".into()]),
                proxy_addresses: Some(vec![format!("SMTP:{alias}@contoso.com")]),
                ..GroupFields::default()
            },
            members: Vec::<Uuid>::new(),
        })
        .await?
        .group
        .id;
    let security = pipeline.security_group("Security", Vec::new()).await?;
    pipeline
        .eventually("gwbctl status shows what was found of Exchange", WAIT, || async {
            let status = pipeline.gwbctl_json(&["status"]).await?;
            let found = status["exchange"].as_str().unwrap_or_default();
            ensure!(found == exchange || found.ends_with(exchange), "{status}");
            ensure!(status["m365_writeback_allowed"] == false, "{status}");
            Ok(())
        })
        .await?;
    let text = pipeline.gwbctl_ok(&["status"]).await?;
    ensure!(text.contains("Microsoft 365 groups: refused: "), "{text}");
    pipeline.gwbctl_ok(&["enable"]).await?;
    let id = m365.to_string();
    pipeline
        .eventually("the security group is written", WAIT, || async {
            ensure!(lab.ad.find_groups_by_anchor(&format!("Group_{security}")).await?.len() == 1, "not yet");
            Ok(())
        })
        .await?;
    wait_state(pipeline, &id, "skipped").await?;
    let detail = state_of(pipeline, &id).await?;
    ensure!(detail["policy_reason"].as_str().unwrap_or_default().contains(reason), "{detail}");
    ensure!(detail["summary"]["last_error"] == "", "{detail}");
    ensure!(lab.ad.find_groups_by_anchor(&format!("Group_{id}")).await?.is_empty(), "the M365 group was written");
    let listed = pipeline.gwbctl_ok(&["groups", "--state", "skipped"]).await?;
    ensure!(listed.contains(&id), "{listed}");
    // The operator's mail-enabled type is refused, with the reason.
    let out = pipeline.gwbctl(&["set-group", &id, "--type", "distribution"]).await?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success() && stderr.contains(reason), "set-group --type distribution: {stderr}");
    let status = pipeline.gwbctl_json(&["status"]).await?;
    ensure!(status["recent_errors"].as_array().is_some_and(|e| e.is_empty()), "{status}");
    Ok(())
}
