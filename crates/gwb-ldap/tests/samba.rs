//! gwb-ldap against the lab Samba AD DC. Needs the lab's env vars:
//! `scripts/lab-ad.sh up test && source $(scripts/lab-ad.sh env test)` (or
//! `scripts/test.sh`). Each test works in its own OU under `OU=gwb-ldap-tests`, so the
//! tests run in parallel, and removes it at the end.

// The lab helpers of the end-to-end test crate, shared rather than copied; not every
// helper is needed here.
#[allow(dead_code)]
#[path = "../../../tests/src/ad.rs"]
mod ad;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use ad::LabAd;
use anyhow::{Context, anyhow, ensure};
use gwb_core::command::{ApplyReport, FailureClass, GroupSpec, GroupType, MemberRef, WriteCommand};
use gwb_ldap::{Directory, DirectoryConfig, DirectoryError, OperationKind, OperationOutcome, OperationRecord};

const TESTS_OU: &str = "gwb-ldap-tests";

fn short_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..8].to_string()
}

struct Fixture {
    lab: LabAd,
    /// `OU=gwb-ldap-tests,<base>`: parent of every test's OU.
    parent: String,
    /// This test's own OU, the writer's managed OU.
    ou: String,
    id: String,
}

async fn fixture() -> anyhow::Result<Fixture> {
    let lab = LabAd::from_env().await?;
    let parent = lab.create_ou(TESTS_OU).await?;
    let id = short_id();
    let ou = lab.create_ou_in(&parent, &format!("t-{id}")).await?;
    Ok(Fixture { lab, parent, ou, id })
}

impl Fixture {
    fn config(&self, managed_ous: Vec<String>) -> DirectoryConfig {
        DirectoryConfig::new(
            self.lab.url.clone(),
            self.lab.ca_file.clone(),
            self.lab.bind_dn.clone(),
            self.lab.password(),
            managed_ous,
        )
    }

    async fn directory(&self) -> anyhow::Result<Directory> {
        Ok(Directory::connect(self.config(vec![self.ou.clone()])).await?)
    }

    /// A security group spec with a fresh cloud objectId, named `<label>-<test id>`.
    fn spec(&self, label: &str) -> GroupSpec {
        let object_id = uuid::Uuid::new_v4().to_string();
        let name = format!("{label}-{}", self.id);
        GroupSpec {
            anchor: format!("Group_{object_id}"),
            object_id,
            cn: name.clone(),
            parent_dn: self.ou.clone(),
            sam_account_name_candidates: vec![name.clone(), format!("{name}-2")],
            group_type: GroupType::UniversalSecurity,
            display_name: format!("{label} display"),
            description: Some(format!("{label} description")),
            mail: None,
            on_premises_sid: None,
        }
    }

    async fn cleanup(self) -> anyhow::Result<()> {
        self.lab.delete_subtree(&self.ou).await
    }
}

async fn upsert(dir: &mut Directory, spec: &GroupSpec) -> anyhow::Result<ApplyReport> {
    Ok(dir.apply(&WriteCommand::Upsert(spec.clone())).await?)
}

fn expect_permanent(result: Result<ApplyReport, DirectoryError>, needle: &str) -> anyhow::Result<()> {
    match result {
        Ok(report) => Err(anyhow!("expected a refusal mentioning {needle:?}, got {report:?}")),
        Err(e) => {
            ensure!(e.class == FailureClass::Permanent, "expected Permanent, got {e:?}");
            ensure!(e.message.contains(needle), "expected {needle:?} in: {}", e.message);
            Ok(())
        }
    }
}

/// Every LDAP operation `dir` performs from now on.
fn record_operations(dir: &mut Directory) -> std::sync::Arc<std::sync::Mutex<Vec<OperationRecord>>> {
    let records = std::sync::Arc::new(std::sync::Mutex::new(Vec::<OperationRecord>::new()));
    let sink = std::sync::Arc::clone(&records);
    dir.set_observer(std::sync::Arc::new(move |record: &OperationRecord| {
        if let Ok(mut list) = sink.lock() {
            list.push(*record);
        }
    }));
    records
}

fn sids(users: &[(String, String)]) -> Vec<MemberRef> {
    users.iter().map(|(_, sid)| MemberRef::Sid(sid.clone())).collect()
}

#[tokio::test]
async fn connect_reports_capabilities() -> anyhow::Result<()> {
    let f = fixture().await?;
    let missing = format!("OU=missing-{},{}", f.id, f.lab.base_dn);
    // A user object exists but can never hold groups: it must be reported unwritable.
    let (not_an_ou, _) = f.lab.create_user(&f.ou, &format!("c{}", f.id)).await?;
    let mut dir = Directory::connect(f.config(vec![f.ou.clone(), missing.clone(), not_an_ou.clone()])).await?;
    let caps = dir.capabilities().clone();
    ensure!(caps.default_naming_context.eq_ignore_ascii_case(&f.lab.base_dn), "{caps:?}");
    ensure!(caps.schema_naming_context.starts_with("CN=Schema,CN=Configuration,"), "{caps:?}");
    ensure!(caps.dns_host_name.eq_ignore_ascii_case("dc1.lab.example"), "{caps:?}");
    ensure!(caps.supports_extended_dn && caps.supports_permissive_modify, "{caps:?}");
    // lab-ad.sh adds the 2016 schema's msDS-ExternalDirectoryObjectId; Samba has no Exchange.
    ensure!(caps.has_external_directory_object_id, "{caps:?}");
    ensure!(!caps.has_exchange_schema, "{caps:?}");
    ensure!(caps.missing_ous == vec![missing], "{caps:?}");
    ensure!(caps.unwritable_ous == vec![not_an_ou], "the test OU is writable, the user object is not: {caps:?}");
    dir.check_health().await?;
    ensure!(*dir.rediscover().await? == caps);
    ensure!(!format!("{dir:?}").contains(f.lab.password()), "password leaked into Debug");
    f.cleanup().await
}

#[tokio::test]
async fn connection_failures_are_classified() -> anyhow::Result<()> {
    let f = fixture().await?;

    let mut untrusted = f.config(vec![f.ou.clone()]);
    untrusted.ca_file = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/untrusted-ca.pem");
    let err = Directory::connect(untrusted).await.err().context("untrusted CA was accepted")?;
    ensure!(err.class == FailureClass::Permanent, "{err:?}");
    ensure!(err.message.contains("TLS"), "{err:?}");

    let mut wrong_password = f.config(vec![f.ou.clone()]);
    wrong_password.bind_password = "Not-the-password-1".into();
    let err = Directory::connect(wrong_password).await.err().context("bad password accepted")?;
    ensure!(err.class == FailureClass::Permanent && err.code == Some(49), "{err:?}");
    ensure!(!err.message.contains("Not-the-password-1"), "{err:?}");

    let mut closed_port = f.config(vec![f.ou.clone()]);
    closed_port.url = f.lab.url.replace(":636", ":1");
    let err = Directory::connect(closed_port).await.err().context("closed port connected")?;
    ensure!(err.class == FailureClass::Transient, "{err:?}");

    let mut hurried = f.config(vec![f.ou.clone()]);
    hurried.operation_timeout = Duration::from_nanos(1);
    let err = Directory::connect(hurried).await.err().context("1 ns timeout met")?;
    ensure!(err.class == FailureClass::Transient && err.message.contains("timed out"), "{err:?}");

    let mut plain = f.config(vec![f.ou.clone()]);
    plain.url = f.lab.url.replace("ldaps://", "ldap://").replace(":636", ":389");
    let err = Directory::connect(plain).await.err().context("plain LDAP accepted")?;
    ensure!(err.class == FailureClass::Permanent, "{err:?}");

    // The same URL with StartTLS is fine: TLS (verified) before the bind.
    let mut starttls = f.config(vec![f.ou.clone()]);
    starttls.url = f.lab.url.replace("ldaps://", "ldap://").replace(":636", ":389");
    starttls.starttls = true;
    Directory::connect(starttls).await?.check_health().await?;
    f.cleanup().await
}

#[tokio::test]
async fn upsert_creates_then_is_idempotent() -> anyhow::Result<()> {
    let f = fixture().await?;
    let mut dir = f.directory().await?;
    let spec = f.spec("create");

    let first = upsert(&mut dir, &spec).await?;
    ensure!(first.changed, "{first:?}");
    let applied = first.group.clone().context("no group reported")?;
    ensure!(applied.dn == format!("CN={},{}", spec.cn, f.ou), "{applied:?}");
    ensure!(applied.sam_account_name == spec.cn, "{applied:?}");
    ensure!(applied.object_sid.starts_with("S-1-5-21-"), "{applied:?}");

    let found = f.lab.find_groups_by_anchor(&spec.anchor).await?;
    ensure!(found.len() == 1, "{found:?}");
    let group = &found[0];
    ensure!(group.guid == applied.object_guid && group.sid == applied.object_sid, "{group:?}");
    ensure!(group.group_type == GroupType::UniversalSecurity.ad_group_type(), "{group:?}");
    ensure!(group.display_name.as_deref() == Some(spec.display_name.as_str()), "{group:?}");
    ensure!(group.description == spec.description, "{group:?}");
    let external = f
        .lab
        .entry(&group.dn, &["msDS-ExternalDirectoryObjectId"])
        .await?
        .and_then(|e| ad::first(&e, "msDS-ExternalDirectoryObjectId"));
    ensure!(external.as_deref() == Some(spec.anchor.as_str()), "{external:?}");

    let before = f.lab.snapshot_entry(&group.dn).await?;
    let second = upsert(&mut dir, &spec).await?;
    ensure!(!second.changed, "replay changed something: {second:?}");
    ensure!(second.group == first.group, "{second:?}");
    ensure!(f.lab.snapshot_entry(&group.dn).await? == before, "replay touched the object");

    ensure!(dir.find_group(&spec.anchor).await? == first.group);
    ensure!(dir.find_group("Group_nothing-carries-this").await?.is_none());
    f.cleanup().await
}

#[tokio::test]
async fn rename_and_move_keep_guid_and_sid() -> anyhow::Result<()> {
    let f = fixture().await?;
    let sub = f.lab.create_ou_in(&f.ou, "moved-here").await?;
    let mut dir = f.directory().await?;
    let mut spec = f.spec("rename");
    let original = upsert(&mut dir, &spec).await?.group.context("no group")?;

    // Every RFC 4514 special character, a leading '#' and edge spaces exercise escaping.
    spec.cn = format!("#R&D, \"Core\" <x>; a=b + c\\d {} ", f.id);
    let renamed = upsert(&mut dir, &spec).await?;
    ensure!(renamed.changed, "{renamed:?}");
    let renamed = renamed.group.context("no group")?;
    ensure!(renamed.object_guid == original.object_guid, "GUID changed on rename");
    ensure!(renamed.object_sid == original.object_sid, "SID changed on rename");
    let entry = f.lab.entry(&renamed.dn, &["cn"]).await?.context("renamed DN not found")?;
    ensure!(ad::first(&entry, "cn").as_deref() == Some(spec.cn.as_str()), "{entry:?}");
    ensure!(!upsert(&mut dir, &spec).await?.changed, "escaped name not recognised as current");

    // A change of letter case only is still a rename of the same object.
    spec.cn = spec.cn.to_uppercase();
    let upper = upsert(&mut dir, &spec).await?;
    ensure!(upper.changed, "{upper:?}");
    let upper = upper.group.context("no group")?;
    ensure!(upper.object_guid == original.object_guid, "{upper:?}");
    let entry = f.lab.entry(&upper.dn, &["cn"]).await?.context("renamed DN not found")?;
    ensure!(ad::first(&entry, "cn").as_deref() == Some(spec.cn.as_str()), "{entry:?}");

    spec.parent_dn = sub.clone();
    let moved = upsert(&mut dir, &spec).await?;
    ensure!(moved.changed, "{moved:?}");
    let moved = moved.group.context("no group")?;
    ensure!(moved.object_guid == original.object_guid && moved.object_sid == original.object_sid);
    let found = f.lab.find_groups_by_anchor(&spec.anchor).await?;
    ensure!(found.len() == 1 && found[0].dn.to_lowercase().ends_with(&sub.to_lowercase()), "{found:?}");
    ensure!(!upsert(&mut dir, &spec).await?.changed, "move replay changed something");
    f.cleanup().await
}

/// `replPropertyMetaData` (MS-DRSR 5.162): per attribute id, its version. Only
/// attributes actually written get a new version.
fn attribute_versions(blob: &[u8]) -> anyhow::Result<BTreeMap<u32, u32>> {
    let word = |at: usize| -> anyhow::Result<u32> {
        let bytes = blob.get(at..at + 4).context("short replPropertyMetaData")?;
        Ok(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    };
    let count = word(8)? as usize;
    (0..count).map(|i| Ok((word(16 + i * 48)?, word(16 + i * 48 + 4)?))).collect()
}

async fn versions(lab: &LabAd, dn: &str) -> anyhow::Result<BTreeMap<u32, u32>> {
    let entry = lab.entry(dn, &["replPropertyMetaData"]).await?.context("group gone")?;
    attribute_versions(&ad::binary(&entry, "replPropertyMetaData").context("no metadata")?)
}

#[tokio::test]
async fn only_changed_attributes_are_written() -> anyhow::Result<()> {
    const DESCRIPTION: u32 = 13; // attributeID 2.5.4.13
    let f = fixture().await?;
    let mut dir = f.directory().await?;
    let mut spec = f.spec("diff");
    let dn = upsert(&mut dir, &spec).await?.group.context("no group")?.dn;
    let before = versions(&f.lab, &dn).await?;
    spec.description = Some("a new description".into());
    ensure!(upsert(&mut dir, &spec).await?.changed);
    let after = versions(&f.lab, &dn).await?;
    let written: BTreeSet<u32> =
        after.iter().filter(|(id, version)| before.get(id) != Some(version)).map(|(id, _)| *id).collect();
    ensure!(written == BTreeSet::from([DESCRIPTION]), "attributes written: {written:?}");

    spec.description = None;
    ensure!(upsert(&mut dir, &spec).await?.changed);
    let group = &f.lab.find_groups_by_anchor(&spec.anchor).await?[0];
    ensure!(group.description.is_none(), "{group:?}");
    ensure!(!upsert(&mut dir, &spec).await?.changed);
    f.cleanup().await
}

#[tokio::test]
async fn sam_account_name_collision_takes_next_candidate() -> anyhow::Result<()> {
    let f = fixture().await?;
    let mut dir = f.directory().await?;
    let spec = f.spec("sam");
    let foreign_dn = format!("CN=foreign-{},{}", f.id, f.ou);
    f.lab.add_entry(&foreign_dn, &[("objectClass", &["group"]), ("sAMAccountName", &[&spec.cn])]).await?;
    let foreign_before = f.lab.snapshot_entry(&foreign_dn).await?;

    let report = upsert(&mut dir, &spec).await?;
    let group = report.group.context("no group")?;
    ensure!(group.sam_account_name == format!("{}-2", spec.cn), "{group:?}");
    ensure!(!upsert(&mut dir, &spec).await?.changed, "kept candidate should not change");

    // With follow_display_name, a current name that is no longer a candidate is
    // replaced by the first free one.
    let mut config = f.config(vec![f.ou.clone()]);
    config.follow_display_name = true;
    let mut dir = Directory::connect(config).await?;
    let mut renamed = spec.clone();
    renamed.sam_account_name_candidates = vec![spec.cn.clone(), format!("{}-3", spec.cn)];
    let report = upsert(&mut dir, &renamed).await?;
    ensure!(report.changed, "{report:?}");
    let group = report.group.context("no group")?;
    ensure!(group.sam_account_name == format!("{}-3", spec.cn), "{group:?}");
    let found = f.lab.find_groups_by_anchor(&spec.anchor).await?;
    ensure!(found.len() == 1 && found[0].sam == format!("{}-3", spec.cn), "{found:?}");
    ensure!(f.lab.snapshot_entry(&foreign_dn).await? == foreign_before, "foreign group touched");
    f.cleanup().await
}

#[tokio::test]
async fn a_written_sam_account_name_stays_when_the_display_name_changes() -> anyhow::Result<()> {
    let f = fixture().await?;
    let mut dir = f.directory().await?;
    let spec = f.spec("keep");
    let first = upsert(&mut dir, &spec).await?.group.context("no group")?;
    let mut renamed = spec.clone();
    renamed.display_name = "keep renamed display".into();
    renamed.sam_account_name_candidates = vec![format!("kr-{}", f.id), format!("kr-{}-2", f.id)];
    let report = upsert(&mut dir, &renamed).await?;
    ensure!(report.changed, "the display name changed: {report:?}");
    let group = report.group.context("no group")?;
    ensure!(group.sam_account_name == first.sam_account_name, "sAMAccountName moved: {group:?}");
    let found = f.lab.find_groups_by_anchor(&spec.anchor).await?;
    ensure!(found.len() == 1 && found[0].sam == first.sam_account_name, "{found:?}");
    f.cleanup().await
}

#[tokio::test]
async fn a_refused_sam_account_name_takes_the_next_candidate() -> anyhow::Result<()> {
    let f = fixture().await?;
    let mut dir = f.directory().await?;
    let mut spec = f.spec("refused");
    // The DC refuses a trailing period (constraint violation); the next candidate is fine.
    let good = format!("ok-{}", f.id);
    spec.sam_account_name_candidates = vec![format!("bad-{}.", f.id), good.clone()];
    let group = upsert(&mut dir, &spec).await?.group.context("no group")?;
    ensure!(group.sam_account_name == good, "{group:?}");
    let found = f.lab.find_groups_by_anchor(&spec.anchor).await?;
    ensure!(found.len() == 1 && found[0].sam == good, "{found:?}");
    f.cleanup().await
}

#[tokio::test]
async fn name_collision_uses_fallback_and_never_adopts() -> anyhow::Result<()> {
    let f = fixture().await?;
    let mut dir = f.directory().await?;
    let spec = f.spec("cn");
    let foreign_dn = format!("CN={},{}", spec.cn, f.ou);
    f.lab.add_entry(&foreign_dn, &[("objectClass", &["group"]), ("sAMAccountName", &[&format!("f-{}", f.id)])]).await?;
    let foreign_before = f.lab.snapshot_entry(&foreign_dn).await?;

    let report = upsert(&mut dir, &spec).await?;
    let group = report.group.clone().context("no group")?;
    let fallback = format!("{}_{}", spec.cn, spec.object_id);
    ensure!(group.dn == format!("CN={fallback},{}", f.ou), "{group:?}");
    // #15 item 8: the clash is reported with the write, for the planner to show.
    let expected = format!("{foreign_dn} is held by another object; written as {}", group.dn);
    ensure!(report.name_clash.as_deref() == Some(expected.as_str()), "{:?}", report.name_clash);
    ensure!(f.lab.snapshot_entry(&foreign_dn).await? == foreign_before, "foreign object touched");
    let again = upsert(&mut dir, &spec).await?;
    ensure!(!again.changed, "fallback name should be stable");
    ensure!(again.name_clash.as_deref() == Some(expected.as_str()), "still reported while it lasts: {again:?}");

    // Once the name is free again, the group takes it (same object).
    f.lab.delete_subtree(&foreign_dn).await?;
    let report = upsert(&mut dir, &spec).await?;
    ensure!(report.changed, "{report:?}");
    ensure!(report.name_clash.is_none(), "the clash is over: {report:?}");
    let renamed = report.group.context("no group")?;
    ensure!(renamed.dn == foreign_dn && renamed.object_guid == group.object_guid, "{renamed:?}");
    f.cleanup().await
}

#[tokio::test]
async fn members_add_remove_and_replay() -> anyhow::Result<()> {
    let f = fixture().await?;
    let mut dir = f.directory().await?;
    let spec = f.spec("members");
    let group_dn = upsert(&mut dir, &spec).await?.group.context("no group")?.dn;
    let users = f.lab.create_users(&f.ou, &format!("m{}", f.id), 5).await?;
    let all = sids(&users);
    let anchor = spec.anchor.clone();

    let add = |members: Vec<MemberRef>| WriteCommand::AddMembers { anchor: anchor.clone(), members };
    let remove = |members: Vec<MemberRef>| WriteCommand::RemoveMembers { anchor: anchor.clone(), members };

    let r = dir.apply(&add(all[..3].to_vec())).await?;
    ensure!((r.members_added, r.members_unchanged, r.changed) == (3, 0, true), "{r:?}");
    // Three present, two new: Samba fails the batch with 68; the writer retries the rest.
    let r = dir.apply(&add(all.clone())).await?;
    ensure!((r.members_added, r.members_unchanged) == (2, 3), "{r:?}");
    ensure!(r.members_rejected.is_empty(), "{r:?}");
    let r = dir.apply(&add(all.clone())).await?;
    ensure!((r.members_added, r.members_unchanged, r.changed) == (0, 5, false), "{r:?}");
    let expected: BTreeSet<String> = users.iter().map(|(_, sid)| sid.clone()).collect();
    ensure!(f.lab.member_sids(&group_dn).await? == expected);

    let r = dir.apply(&remove(all[..2].to_vec())).await?;
    ensure!((r.members_removed, r.changed) == (2, true), "{r:?}");
    let r = dir.apply(&remove(all[..2].to_vec())).await?;
    ensure!((r.members_removed, r.members_unchanged, r.changed) == (0, 2, false), "{r:?}");
    let remaining: BTreeSet<String> = users[2..].iter().map(|(_, sid)| sid.clone()).collect();
    ensure!(f.lab.member_sids(&group_dn).await? == remaining);
    let read: BTreeSet<String> = dir.read_members(&spec.anchor).await?.into_iter().filter_map(|m| m.sid).collect();
    ensure!(read == remaining, "read_members disagrees: {read:?}");
    f.cleanup().await
}

#[tokio::test]
async fn unresolvable_member_is_rejected_alone() -> anyhow::Result<()> {
    let f = fixture().await?;
    let mut dir = f.directory().await?;
    let spec = f.spec("reject");
    let group_dn = upsert(&mut dir, &spec).await?.group.context("no group")?.dn;
    let users = f.lab.create_users(&f.ou, &format!("r{}", f.id), 6).await?;
    let domain = f.lab.domain_sid().await?;
    let unknown_sid = MemberRef::Sid(format!("{domain}-999999"));
    let unknown_guid = MemberRef::Guid(uuid::Uuid::new_v4().to_string());
    let mut members = sids(&users);
    members.insert(2, unknown_sid.clone());
    members.push(unknown_guid.clone());

    let r = dir.apply(&WriteCommand::AddMembers { anchor: spec.anchor.clone(), members: members.clone() }).await?;
    ensure!(r.members_added == 6, "{r:?}");
    let rejected: BTreeSet<MemberRef> = r.members_rejected.iter().map(|(m, _)| m.clone()).collect();
    ensure!(rejected == BTreeSet::from([unknown_sid.clone(), unknown_guid.clone()]), "{r:?}");
    // The unknown SID is caught before any write (no object of the domain); the unknown
    // GUID is refused by the DC.
    for (member, why) in &r.members_rejected {
        let expected = if *member == unknown_sid { "no object of this domain" } else { "LDAP" };
        ensure!(why.contains(expected), "{member:?}: {why}");
    }
    let expected: BTreeSet<String> = users.iter().map(|(_, sid)| sid.clone()).collect();
    ensure!(f.lab.member_sids(&group_dn).await? == expected);

    // Replaying: the good ones are unchanged, the bad ones rejected again.
    let r = dir.apply(&WriteCommand::AddMembers { anchor: spec.anchor.clone(), members }).await?;
    ensure!((r.members_added, r.members_unchanged, r.members_rejected.len()) == (0, 6, 2), "{r:?}");
    f.cleanup().await
}

#[tokio::test]
async fn a_member_of_another_domain_creates_no_foreign_security_principal() -> anyhow::Result<()> {
    let f = fixture().await?;
    let mut dir = f.directory().await?;
    let spec = f.spec("foreign");
    let group_dn = upsert(&mut dir, &spec).await?.group.context("no group")?.dn;
    let users = f.lab.create_users(&f.ou, &format!("f{}", f.id), 2).await?;
    // A synced user whose SID belongs to another forest (no trust configured).
    let other_domain =
        format!("S-1-5-21-1111111111-2222222222-{}", 3_000_000_000u32 + u32::from_str_radix(&f.id[..4], 16)?);
    let foreign = MemberRef::Sid(format!("{other_domain}-1105"));
    let fsp_dn = format!("CN={other_domain}-1105,CN=ForeignSecurityPrincipals,{}", f.lab.base_dn);
    let mut members = sids(&users);
    members.push(foreign.clone());

    let r = dir.apply(&WriteCommand::AddMembers { anchor: spec.anchor.clone(), members: members.clone() }).await?;
    ensure!(r.members_added == 2, "{r:?}");
    ensure!(r.members_rejected.len() == 1 && r.members_rejected[0].0 == foreign, "{r:?}");
    ensure!(r.members_rejected[0].1.contains("foreign_domain_sids"), "{r:?}");
    ensure!(f.lab.entry(&fsp_dn, &["cn"]).await?.is_none(), "the DC created {fsp_dn}");
    let expected: BTreeSet<String> = users.iter().map(|(_, sid)| sid.clone()).collect();
    ensure!(f.lab.member_sids(&group_dn).await? == expected);

    // A listed (trusted) domain's member is written as a trust needs.
    let mut config = f.config(vec![f.ou.clone()]);
    config.foreign_domain_sids = vec![other_domain.clone()];
    let mut trusting = Directory::connect(config).await?;
    let r = trusting.apply(&WriteCommand::AddMembers { anchor: spec.anchor.clone(), members }).await?;
    ensure!(r.members_added == 1 && r.members_rejected.is_empty(), "{r:?}");
    let created = f.lab.entry(&fsp_dn, &["cn"]).await?.is_some();
    f.lab.delete_subtree(&fsp_dn).await.ok();
    ensure!(created, "a trusted domain's member is written through its foreignSecurityPrincipal");
    f.cleanup().await
}

#[tokio::test]
async fn nested_group_by_guid() -> anyhow::Result<()> {
    let f = fixture().await?;
    let mut dir = f.directory().await?;
    let outer = f.spec("outer");
    let inner = f.spec("inner");
    let outer_dn = upsert(&mut dir, &outer).await?.group.context("no group")?.dn;
    let inner_group = upsert(&mut dir, &inner).await?.group.context("no group")?;
    let member = MemberRef::Guid(inner_group.object_guid.clone());
    let r =
        dir.apply(&WriteCommand::AddMembers { anchor: outer.anchor.clone(), members: vec![member.clone()] }).await?;
    ensure!(r.members_added == 1, "{r:?}");
    let members = f.lab.members(&outer_dn).await?;
    ensure!(members.len() == 1 && members[0].guid == inner_group.object_guid, "{members:?}");
    ensure!(members[0].sid.as_deref() == Some(inner_group.object_sid.as_str()), "{members:?}");
    let read = dir.read_members(&outer.anchor).await?;
    ensure!(read.len() == 1 && read[0].guid == inner_group.object_guid, "{read:?}");
    ensure!(read[0].dn.eq_ignore_ascii_case(&inner_group.dn), "{read:?}");
    let r = dir.apply(&WriteCommand::AddMembers { anchor: outer.anchor.clone(), members: vec![member] }).await?;
    ensure!((r.members_added, r.members_unchanged) == (0, 1), "{r:?}");
    f.cleanup().await
}

#[tokio::test]
async fn large_group_is_read_in_ranges() -> anyhow::Result<()> {
    const USERS: usize = 1600;
    let f = fixture().await?;
    let mut dir = f.directory().await?;
    let spec = f.spec("large");
    let group_dn = upsert(&mut dir, &spec).await?.group.context("no group")?.dn;

    let started = Instant::now();
    let users = f.lab.create_users(&f.ou, &format!("l{}", f.id), USERS).await?;
    eprintln!("created {USERS} users in {:?}", started.elapsed());

    let started = Instant::now();
    let r = dir.apply(&WriteCommand::AddMembers { anchor: spec.anchor.clone(), members: sids(&users) }).await?;
    eprintln!("added {USERS} members in {:?}", started.elapsed());
    ensure!(r.members_added as usize == USERS && r.members_rejected.is_empty(), "{r:?}");

    let started = Instant::now();
    let members = dir.read_members(&spec.anchor).await?;
    eprintln!("read {} members in {:?}", members.len(), started.elapsed());
    let read: BTreeSet<String> = members.iter().filter_map(|m| m.sid.clone()).collect();
    let expected: BTreeSet<String> = users.iter().map(|(_, sid)| sid.clone()).collect();
    ensure!(members.len() == USERS && read == expected, "read {} members", members.len());
    ensure!(f.lab.member_sids(&group_dn).await? == expected, "independent read disagrees");

    // A replay of the whole list, after a clash, only reads and changes nothing.
    let r = dir.apply(&WriteCommand::AddMembers { anchor: spec.anchor.clone(), members: sids(&users) }).await?;
    ensure!((r.members_added as usize, r.members_unchanged as usize) == (0, USERS), "{r:?}");
    f.cleanup().await
}

#[tokio::test]
async fn delete_and_retire() -> anyhow::Result<()> {
    let f = fixture().await?;
    let retired = f.lab.create_ou_in(&f.ou, "retired").await?;
    let mut dir = f.directory().await?;

    let spec = f.spec("retire");
    let group = upsert(&mut dir, &spec).await?.group.context("no group")?;
    let retire = WriteCommand::Retire { anchor: spec.anchor.clone(), retired_ou: retired.clone() };
    let r = dir.apply(&retire).await?;
    ensure!(r.changed, "{r:?}");
    let moved = r.group.context("no group")?;
    ensure!(moved.dn == format!("CN={},{retired}", spec.cn), "{moved:?}");
    ensure!(moved.object_guid == group.object_guid && moved.object_sid == group.object_sid);
    ensure!(!dir.apply(&retire).await?.changed, "retire replay changed something");

    // A second group with the same name retires beside the first one.
    let mut twin = f.spec("retire");
    twin.parent_dn = f.lab.create_ou_in(&f.ou, "twin").await?;
    upsert(&mut dir, &twin).await?;
    let r = dir.apply(&WriteCommand::Retire { anchor: twin.anchor.clone(), retired_ou: retired.clone() }).await?;
    let twin_dn = r.group.context("no group")?.dn;
    ensure!(twin_dn == format!("CN={}_{},{retired}", twin.cn, twin.object_id), "{twin_dn}");

    // Restoring from the retired OU is an ordinary upsert: same object comes back.
    let restored = upsert(&mut dir, &spec).await?.group.context("no group")?;
    ensure!(restored.dn == group.dn && restored.object_sid == group.object_sid, "{restored:?}");

    let delete = WriteCommand::Delete { anchor: spec.anchor.clone() };
    let r = dir.apply(&delete).await?;
    ensure!(r.changed && r.group.is_none(), "{r:?}");
    ensure!(f.lab.find_groups_by_anchor(&spec.anchor).await?.is_empty(), "group still there");
    ensure!(!dir.apply(&delete).await?.changed, "delete replay changed something");
    ensure!(!dir.apply(&retire).await?.changed, "retiring an absent group changed something");

    let outside = WriteCommand::Retire { anchor: twin.anchor.clone(), retired_ou: f.lab.base_dn.clone() };
    expect_permanent(dir.apply(&outside).await, "not inside the managed OUs")?;
    f.cleanup().await
}

#[tokio::test]
async fn refuses_objects_without_the_anchor() -> anyhow::Result<()> {
    let f = fixture().await?;
    let mut dir = f.directory().await?;
    let spec = f.spec("noanchor");
    let foreign_dn = format!("CN={},{}", spec.cn, f.ou);
    f.lab
        .add_entry(&foreign_dn, &[("objectClass", &["group"]), ("sAMAccountName", &[&format!("na-{}", f.id)])])
        .await?;
    let before = f.lab.snapshot_entry(&foreign_dn).await?;
    let (_, user_sid) = f.lab.create_user(&f.ou, &format!("na-u-{}", f.id)).await?;

    let r = dir.apply(&WriteCommand::Delete { anchor: spec.anchor.clone() }).await?;
    ensure!(!r.changed, "{r:?}");
    let add = WriteCommand::AddMembers { anchor: spec.anchor.clone(), members: vec![MemberRef::Sid(user_sid)] };
    expect_permanent(dir.apply(&add).await, "no group carries anchor")?;
    let retire = WriteCommand::Retire { anchor: spec.anchor.clone(), retired_ou: f.ou.clone() };
    ensure!(!dir.apply(&retire).await?.changed);
    ensure!(f.lab.snapshot_entry(&foreign_dn).await? == before, "foreign group touched");
    f.cleanup().await
}

#[tokio::test]
async fn refuses_groups_outside_the_managed_ous() -> anyhow::Result<()> {
    let f = fixture().await?;
    let elsewhere = f.lab.create_ou_in(&f.ou, "not-managed").await?;
    let managed = f.lab.create_ou_in(&f.ou, "managed").await?;
    let mut dir = Directory::connect(f.config(vec![managed.clone()])).await?;

    let mut spec = f.spec("outside");
    spec.parent_dn = managed.clone();
    let outside_dn = format!("CN={},{elsewhere}", spec.cn);
    f.lab
        .add_entry(
            &outside_dn,
            &[
                ("objectClass", &["group"]),
                ("sAMAccountName", &[&format!("out-{}", f.id)]),
                ("adminDescription", &[&spec.anchor]),
            ],
        )
        .await?;
    let before = f.lab.snapshot_entry(&outside_dn).await?;

    expect_permanent(dir.apply(&WriteCommand::Upsert(spec.clone())).await, "outside the")?;
    expect_permanent(dir.apply(&WriteCommand::Delete { anchor: spec.anchor.clone() }).await, "outside the")?;
    let add = WriteCommand::AddMembers { anchor: spec.anchor.clone(), members: vec![] };
    expect_permanent(dir.apply(&add).await, "outside the")?;
    ensure!(f.lab.snapshot_entry(&outside_dn).await? == before, "object outside managed OUs touched");
    ensure!(f.lab.find_groups_by_anchor(&spec.anchor).await?.len() == 1, "a duplicate was created");

    let mut elsewhere_spec = f.spec("target");
    elsewhere_spec.parent_dn = elsewhere;
    expect_permanent(dir.apply(&WriteCommand::Upsert(elsewhere_spec)).await, "not inside the managed OUs")?;
    f.cleanup().await
}

#[tokio::test]
async fn real_domain_admins_is_never_touched() -> anyhow::Result<()> {
    let f = fixture().await?;
    let domain_admins = format!("CN=Domain Admins,CN=Users,{}", f.lab.base_dn);
    let before = f.lab.snapshot_entry(&domain_admins).await?;
    let mut dir = f.directory().await?;
    let (_, user_sid) = f.lab.create_user(&f.ou, &format!("da-u-{}", f.id)).await?;

    let object_id = uuid::Uuid::new_v4().to_string();
    let mut spec = GroupSpec {
        anchor: format!("Group_{object_id}"),
        object_id,
        cn: "Domain Admins".into(),
        parent_dn: f.ou.clone(),
        sam_account_name_candidates: vec!["Domain Admins".into(), format!("Domain Admins {}", f.id)],
        group_type: GroupType::UniversalSecurity,
        display_name: "Domain Admins".into(),
        description: Some("a cloud group that happens to be called Domain Admins".into()),
        mail: None,
        on_premises_sid: None,
    };
    let created = upsert(&mut dir, &spec).await?.group.context("no group")?;
    ensure!(created.dn == format!("CN=Domain Admins,{}", f.ou), "{created:?}");
    ensure!(created.sam_account_name == format!("Domain Admins {}", f.id), "{created:?}");
    let add = WriteCommand::AddMembers { anchor: spec.anchor.clone(), members: vec![MemberRef::Sid(user_sid)] };
    ensure!(dir.apply(&add).await?.members_added == 1);
    ensure!(dir.apply(&WriteCommand::Delete { anchor: spec.anchor.clone() }).await?.changed);

    // Asked to put it where the real one lives: refused before anything is looked up.
    spec.parent_dn = format!("CN=Users,{}", f.lab.base_dn);
    expect_permanent(dir.apply(&WriteCommand::Upsert(spec)).await, "not inside the managed OUs")?;

    ensure!(f.lab.snapshot_entry(&domain_admins).await? == before, "Domain Admins changed");
    f.cleanup().await
}

#[tokio::test]
async fn refuses_protected_groups() -> anyhow::Result<()> {
    let f = fixture().await?;
    let mut dir = f.directory().await?;
    let spec = f.spec("protected");
    let dn = format!("CN={},{}", spec.cn, f.ou);
    f.lab
        .add_entry(
            &dn,
            &[
                ("objectClass", &["group"]),
                ("sAMAccountName", &[&spec.cn]),
                ("adminDescription", &[&spec.anchor]),
                ("adminCount", &["1"]),
            ],
        )
        .await?;
    let before = f.lab.snapshot_entry(&dn).await?;
    let mut renamed = spec.clone();
    renamed.cn = format!("{}-renamed", spec.cn);
    let (_, user_sid) = f.lab.create_user(&f.ou, &format!("pr-u-{}", f.id)).await?;
    let commands = [
        WriteCommand::Upsert(renamed),
        WriteCommand::AddMembers { anchor: spec.anchor.clone(), members: vec![MemberRef::Sid(user_sid)] },
        WriteCommand::Delete { anchor: spec.anchor.clone() },
        WriteCommand::Retire { anchor: spec.anchor.clone(), retired_ou: f.ou.clone() },
    ];
    for command in &commands {
        expect_permanent(dir.apply(command).await, "adminCount=1")?;
    }
    ensure!(f.lab.snapshot_entry(&dn).await? == before, "protected group touched");
    f.cleanup().await
}

#[tokio::test]
async fn ambiguous_anchor_is_refused() -> anyhow::Result<()> {
    let f = fixture().await?;
    let mut dir = f.directory().await?;
    let spec = f.spec("twice");
    for n in 1..=2 {
        f.lab
            .add_entry(
                &format!("CN={}-{n},{}", spec.cn, f.ou),
                &[
                    ("objectClass", &["group"]),
                    ("sAMAccountName", &[&format!("{}-{n}", spec.cn)]),
                    ("adminDescription", &[&spec.anchor]),
                ],
            )
            .await?;
    }
    expect_permanent(dir.apply(&WriteCommand::Upsert(spec.clone())).await, "refusing to guess")?;
    ensure!(dir.find_group(&spec.anchor).await.is_err(), "find_group guessed");
    f.cleanup().await
}

#[tokio::test]
async fn mail_enabled_types_need_exchange() -> anyhow::Result<()> {
    let f = fixture().await?;
    let mut dir = f.directory().await?;
    for group_type in [GroupType::UniversalDistribution, GroupType::UniversalMailEnabledSecurity] {
        let mut spec = f.spec("mail");
        spec.group_type = group_type;
        expect_permanent(dir.apply(&WriteCommand::Upsert(spec.clone())).await, "Exchange")?;
        ensure!(f.lab.find_groups_by_anchor(&spec.anchor).await?.is_empty());
    }
    f.cleanup().await
}

/// Whether `dn` lies in an OU created under the domain root by some test run (ours or
/// another suite's running against the same lab), i.e. not in what provisioning made.
fn in_test_ou(dn: &str, base_dn: &str) -> bool {
    let lower = dn.to_lowercase();
    let Some(above_base) = lower.strip_suffix(&format!(",{}", base_dn.to_lowercase())) else {
        return false;
    };
    let top = above_base.rsplit(',').next().unwrap_or_default();
    top.starts_with("ou=") && top != "ou=domain controllers"
}

#[tokio::test]
async fn nothing_outside_the_test_ou_changes() -> anyhow::Result<()> {
    let f = fixture().await?;
    let base = f.lab.base_dn.clone();
    let provisioned = |snapshot: BTreeMap<String, String>| -> BTreeMap<String, String> {
        snapshot.into_iter().filter(|(dn, _)| !in_test_ou(dn, &base)).collect()
    };
    let before = provisioned(f.lab.snapshot_outside(&f.parent).await?);
    let mut dir = f.directory().await?;
    let spec = f.spec("quiet");
    let users = f.lab.create_users(&f.ou, &format!("q{}", f.id), 3).await?;
    upsert(&mut dir, &spec).await?;
    let add = WriteCommand::AddMembers { anchor: spec.anchor.clone(), members: sids(&users) };
    dir.apply(&add).await?;
    dir.apply(&WriteCommand::Delete { anchor: spec.anchor.clone() }).await?;
    let after = provisioned(f.lab.snapshot_outside(&f.parent).await?);
    let changed: Vec<&String> = after
        .iter()
        .filter(|(dn, usn)| before.get(*dn) != Some(usn))
        .map(|(dn, _)| dn)
        .chain(before.keys().filter(|dn| !after.contains_key(*dn)))
        .collect();
    ensure!(changed.is_empty(), "changed outside the test OUs: {changed:?}");
    ensure!(before.len() > 50, "the snapshot saw only {} objects", before.len());
    f.cleanup().await
}

/// A TCP relay to the DC on the DC's own address (so its certificate still matches)
/// that can cut every open connection, as a DC restart or an idle timeout would.
struct Relay {
    url: String,
    connections: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn start(lab_url: &str) -> anyhow::Result<Relay> {
        let upstream = lab_url.strip_prefix("ldaps://").context("lab url is not ldaps://")?.to_string();
        let host = upstream.rsplit_once(':').map_or(upstream.as_str(), |(h, _)| h).to_string();
        let listener = tokio::net::TcpListener::bind((host.as_str(), 0)).await?;
        let url = format!("ldaps://{host}:{}", listener.local_addr()?.port());
        let connections = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let registry = std::sync::Arc::clone(&connections);
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let upstream = upstream.clone();
                let task = tokio::spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                if let Ok(mut list) = registry.lock() {
                    list.push(task.abort_handle());
                }
            }
        });
        Ok(Relay { url, connections, accept })
    }

    fn cut(&self) {
        if let Ok(mut list) = self.connections.lock() {
            for connection in list.drain(..) {
                connection.abort();
            }
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}

#[tokio::test]
async fn reconnects_after_the_connection_drops() -> anyhow::Result<()> {
    let f = fixture().await?;
    let relay = Relay::start(&f.lab.url).await?;
    let mut config = f.config(vec![f.ou.clone()]);
    config.url = relay.url.clone();
    let mut dir = Directory::connect(config).await?;
    let records = record_operations(&mut dir);
    let mut spec = f.spec("reconnect");
    upsert(&mut dir, &spec).await?;

    // Noticed before the next call: that call reconnects and succeeds.
    relay.cut();
    tokio::time::sleep(Duration::from_millis(200)).await;
    spec.description = Some("after reconnect".into());
    ensure!(upsert(&mut dir, &spec).await?.changed);

    // Cut under a call's feet: at worst that call fails as Transient, the next works.
    relay.cut();
    match dir.check_health().await {
        Ok(()) => {}
        Err(e) => ensure!(e.class == FailureClass::Transient, "{e:?}"),
    }
    dir.check_health().await?;
    ensure!(!upsert(&mut dir, &spec).await?.changed);
    drop(relay);

    let records = records.lock().map_err(|_| anyhow!("observer poisoned"))?.clone();
    let count = |kind: OperationKind, outcome: OperationOutcome| {
        records.iter().filter(|r| r.kind == kind && r.outcome == outcome).count()
    };
    ensure!(count(OperationKind::Connect, OperationOutcome::Success) >= 2, "{records:?}");
    ensure!(count(OperationKind::Add, OperationOutcome::Success) == 1, "{records:?}");
    ensure!(count(OperationKind::Modify, OperationOutcome::Success) == 1, "{records:?}");
    ensure!(count(OperationKind::Search, OperationOutcome::Success) > 0, "{records:?}");
    f.cleanup().await
}

/// A new group gets the members that exist in its create (one write); an unknown SID
/// never reaches an add (Samba would invent a foreignSecurityPrincipal for it) and is
/// rejected by the member path instead; a privileged SID is refused; on an existing
/// group the same call is an update plus a member change.
#[tokio::test]
async fn upsert_with_members_creates_the_group_with_them_in_one_write() -> anyhow::Result<()> {
    let f = fixture().await?;
    let mut dir = f.directory().await?;
    let records = record_operations(&mut dir);
    let users = f.lab.create_users(&f.ou, &format!("w{}", f.id), 5).await?;
    let domain = f.lab.domain_sid().await?;
    let unknown = MemberRef::Sid(format!("{domain}-999998"));
    let privileged = MemberRef::Sid(format!("{domain}-512"));

    let spec = f.spec("with-members");
    let mut members = sids(&users[..4]);
    members.push(unknown.clone());
    members.push(privileged.clone());
    let report = dir.upsert_with_members(&spec, &members).await?;
    let writes = |records: &[OperationRecord]| {
        records
            .iter()
            .filter(|r| matches!(r.kind, OperationKind::Add | OperationKind::Modify))
            .map(|r| r.kind)
            .collect::<Vec<_>>()
    };
    let seen = records.lock().map_err(|_| anyhow!("observer poisoned"))?.clone();
    // The create carries the four users; the unknown SID (no object of the domain) and
    // the privileged one are refused without a write.
    ensure!(writes(&seen) == vec![OperationKind::Add], "{seen:?}");
    ensure!(report.members_added == 4, "{report:?}");
    let rejected: BTreeSet<MemberRef> = report.members_rejected.iter().map(|(m, _)| m.clone()).collect();
    ensure!(rejected == BTreeSet::from([unknown.clone(), privileged.clone()]), "{report:?}");
    let group_dn = report.group.context("no group")?.dn;
    let expected: BTreeSet<String> = users[..4].iter().map(|(_, sid)| sid.clone()).collect();
    ensure!(f.lab.member_sids(&group_dn).await? == expected);
    let fsp = format!("CN={domain}-999998,CN=ForeignSecurityPrincipals,{}", f.lab.base_dn);
    ensure!(f.lab.entry(&fsp, &["cn"]).await?.is_none(), "a foreignSecurityPrincipal was created for the unknown SID");

    // Existing group: an update and an ordinary member change, idempotent.
    records.lock().map_err(|_| anyhow!("observer poisoned"))?.clear();
    let report = dir.upsert_with_members(&spec, &sids(&users)).await?;
    ensure!((report.members_added, report.members_unchanged) == (1, 4), "{report:?}");
    let expected: BTreeSet<String> = users.iter().map(|(_, sid)| sid.clone()).collect();
    ensure!(f.lab.member_sids(&group_dn).await? == expected);
    f.cleanup().await
}

/// Writes after the first find the group by the objectGUID the writer remembered, and
/// still re-check it: a group an administrator moved out of the managed OUs, or whose
/// anchor was cleared, is never acted on through that memory.
#[tokio::test]
async fn a_remembered_group_is_checked_again_before_every_write() -> anyhow::Result<()> {
    let f = fixture().await?;
    let elsewhere = f.lab.create_ou_in(&f.ou, "not-managed").await?;
    let managed = f.lab.create_ou_in(&f.ou, "managed").await?;
    let mut dir = Directory::connect(f.config(vec![managed.clone()])).await?;
    let (_, user_sid) = f.lab.create_user(&f.ou, &format!("rm-u-{}", f.id)).await?;
    let add = |spec: &GroupSpec| WriteCommand::AddMembers {
        anchor: spec.anchor.clone(),
        members: vec![MemberRef::Sid(user_sid.clone())],
    };

    // Anchor cleared by an administrator: the object is no longer ours.
    let mut cleared = f.spec("cleared");
    cleared.parent_dn = managed.clone();
    let cleared_dn = upsert(&mut dir, &cleared).await?.group.context("no group")?.dn;
    let mut ldap = f.lab.connection().await?;
    ldap.modify(
        &cleared_dn,
        vec![ldap3::Mod::Delete("adminDescription".to_string(), std::collections::HashSet::new())],
    )
    .await?
    .success()?;
    let before = f.lab.snapshot_entry(&cleared_dn).await?;
    expect_permanent(dir.apply(&add(&cleared)).await, "no group carries anchor")?;
    ensure!(f.lab.snapshot_entry(&cleared_dn).await? == before, "a group without our anchor was changed");

    // Moved out of the managed OUs by an administrator: refused, untouched.
    let mut moved = f.spec("moved");
    moved.parent_dn = managed.clone();
    let moved_dn = upsert(&mut dir, &moved).await?.group.context("no group")?.dn;
    let rdn = moved_dn.split(",OU=").next().context("rdn")?.to_string();
    ldap.modifydn(&moved_dn, &rdn, true, Some(&elsewhere)).await?.success()?;
    let outside_dn = format!("{rdn},{elsewhere}");
    let before = f.lab.snapshot_entry(&outside_dn).await?;
    expect_permanent(dir.apply(&add(&moved)).await, "outside the")?;
    expect_permanent(dir.apply(&WriteCommand::Delete { anchor: moved.anchor.clone() }).await, "outside the")?;
    ensure!(f.lab.snapshot_entry(&outside_dn).await? == before, "a group outside the managed OUs was changed");
    f.cleanup().await
}

/// A batch's anchors looked up with one search: a group found in the managed OUs is
/// acted on in place (never duplicated), an absent anchor is created, and an anchor
/// carried outside the managed OUs is still refused by the command itself.
#[tokio::test]
async fn anchors_looked_up_for_a_batch_keep_every_refusal() -> anyhow::Result<()> {
    let f = fixture().await?;
    let elsewhere = f.lab.create_ou_in(&f.ou, "not-managed").await?;
    let managed = f.lab.create_ou_in(&f.ou, "managed").await?;
    let in_managed = |label: &str| GroupSpec { parent_dn: managed.clone(), ..f.spec(label) };
    let (existing, absent, outside) = (in_managed("existing"), in_managed("absent"), in_managed("outside"));
    // Written by an earlier writer process: this one has not seen it.
    let first = Directory::connect(f.config(vec![managed.clone()])).await?;
    let existing_guid = {
        let mut first = first;
        upsert(&mut first, &existing).await?.group.context("no group")?.object_guid
    };
    f.lab
        .add_entry(
            &format!("CN={},{elsewhere}", outside.cn),
            &[
                ("objectClass", &["group"]),
                ("sAMAccountName", &[&format!("lo-{}", f.id)]),
                ("adminDescription", &[&outside.anchor]),
            ],
        )
        .await?;

    let mut dir = Directory::connect(f.config(vec![managed.clone()])).await?;
    dir.look_up_anchors(&[&existing.anchor, &absent.anchor, &outside.anchor]).await?;
    let renamed = GroupSpec { description: Some("changed".into()), ..existing.clone() };
    let updated = upsert(&mut dir, &renamed).await?;
    ensure!(updated.group.as_ref().is_some_and(|g| g.object_guid == existing_guid) && updated.changed, "{updated:?}");
    ensure!(upsert(&mut dir, &absent).await?.changed);
    expect_permanent(dir.apply(&WriteCommand::Upsert(outside.clone())).await, "outside the")?;
    for spec in [&existing, &absent, &outside] {
        ensure!(f.lab.find_groups_by_anchor(&spec.anchor).await?.len() == 1, "{} has a duplicate", spec.cn);
    }
    f.cleanup().await
}
