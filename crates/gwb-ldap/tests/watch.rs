//! The directory watcher's LDAP side against the lab Samba AD DC (same lab variables as
//! `samba.rs`): the USN mark, changed groups with their members (a large group in full,
//! or not at all when the writer itself just wrote it), tombstones, and reanimation
//! keeping objectGUID and SID, with its refusals.

#[allow(dead_code)]
#[path = "../../../tests/src/ad.rs"]
mod ad;

use std::collections::{BTreeSet, HashSet};

use ad::LabAd;
use anyhow::{Context, ensure};
use gwb_core::command::{GroupSpec, GroupType, MemberRef, WriteCommand};
use gwb_ldap::{Directory, DirectoryConfig};

struct Fixture {
    lab: LabAd,
    ou: String,
    id: String,
}

async fn fixture() -> anyhow::Result<Fixture> {
    let lab = LabAd::from_env().await?;
    let parent = lab.create_ou("gwb-ldap-tests").await?;
    let id = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    let ou = lab.create_ou_in(&parent, &format!("w-{id}")).await?;
    Ok(Fixture { lab, ou, id })
}

impl Fixture {
    async fn directory(&self) -> anyhow::Result<Directory> {
        let config = DirectoryConfig::new(
            self.lab.url.clone(),
            self.lab.ca_file.clone(),
            self.lab.bind_dn.clone(),
            self.lab.password(),
            vec![self.ou.clone()],
        );
        Ok(Directory::connect(config).await?)
    }

    fn spec(&self, label: &str) -> GroupSpec {
        let object_id = uuid::Uuid::new_v4().to_string();
        let name = format!("{label}-{}", self.id);
        GroupSpec {
            anchor: format!("Group_{object_id}"),
            object_id,
            cn: name.clone(),
            parent_dn: self.ou.clone(),
            sam_account_name_candidates: vec![name],
            group_type: GroupType::UniversalSecurity,
            display_name: format!("{label} display"),
            description: Some(format!("{label} description")),
            mail: None,
            on_premises_sid: None,
        }
    }
}

#[tokio::test]
async fn changed_groups_tombstones_and_reanimation() -> anyhow::Result<()> {
    let f = fixture().await?;
    let mut dir = f.directory().await?;
    let position = dir.watch_position().await?;
    ensure!(!position.dc.is_empty() && position.invocation_id.len() == 36, "{position:?}");
    let spec = f.spec("watched");
    let created = dir.apply(&WriteCommand::Upsert(spec.clone())).await?.group.context("no group")?;
    let (_, usn) = dir.highest_usn().await?;
    ensure!(usn > position.highest_usn, "the USN did not move");

    let changed = dir.observe_groups(Some(position.highest_usn), &HashSet::new()).await?;
    let seen = changed.iter().find(|g| g.object_guid == created.object_guid).context("created group not observed")?;
    ensure!(seen.in_managed_ous && !seen.deleted && seen.anchor.as_deref() == Some(spec.anchor.as_str()), "{seen:?}");
    ensure!(seen.attributes.iter().any(|(n, v)| n == "description" && v == &vec!["watched description".to_string()]));
    ensure!(dir.observe_groups(Some(usn), &HashSet::new()).await?.iter().all(|g| g.object_guid != created.object_guid));

    // Deleted by hand: the tombstone is observed (by its objectGUID, without anchor)
    // in a poll and in a full comparison.
    let ldap = &mut f.lab.connection().await?;
    ldap.delete(&created.dn).await?.success()?;
    let tombstones = dir.observe_groups(Some(usn), &HashSet::new()).await?;
    let tombstone = tombstones.iter().find(|g| g.object_guid == created.object_guid).context("no tombstone")?;
    ensure!(tombstone.deleted && tombstone.in_managed_ous, "{tombstone:?}");
    let full = dir.observe_groups(None, &HashSet::new()).await?;
    ensure!(full.iter().any(|g| g.object_guid == created.object_guid && g.deleted), "full comparison misses it");

    // Reanimated: same objectGUID and SID, anchored again; a replay changes nothing.
    let reanimate = WriteCommand::Reanimate {
        anchor: spec.anchor.clone(),
        object_guid: created.object_guid.clone(),
        dn: created.dn.clone(),
    };
    let back = dir.apply(&reanimate).await?;
    let group = back.group.context("no group after reanimation")?;
    ensure!(
        back.changed && group.object_guid == created.object_guid && group.object_sid == created.object_sid,
        "{group:?}"
    );
    let found = f.lab.find_groups_by_anchor(&spec.anchor).await?;
    ensure!(found.len() == 1 && found[0].dn.eq_ignore_ascii_case(&created.dn), "anchor not back: {found:?}");
    ensure!(!dir.apply(&reanimate).await?.changed, "a replay changed something");
    // The upsert that follows restores the attributes the tombstone lost.
    dir.apply(&WriteCommand::Upsert(spec.clone())).await?;
    ensure!(f.lab.find_groups_by_anchor(&spec.anchor).await?[0].description.as_deref() == Some("watched description"));

    // Refused: a target outside the managed OUs, an object with another anchor, a GUID
    // nothing has.
    let outside = WriteCommand::Reanimate {
        anchor: spec.anchor.clone(),
        object_guid: created.object_guid.clone(),
        dn: format!("CN=x,{}", f.lab.base_dn),
    };
    ensure!(dir.apply(&outside).await.unwrap_err().message.contains("not inside the managed OUs"));
    let other = WriteCommand::Reanimate {
        anchor: "Group_other".into(),
        object_guid: created.object_guid.clone(),
        dn: created.dn.clone(),
    };
    ensure!(dir.apply(&other).await.unwrap_err().message.contains("carries another anchor"));
    let nothing = WriteCommand::Reanimate {
        anchor: spec.anchor.clone(),
        object_guid: "00000000-0000-0000-0000-0000000000ff".into(),
        dn: created.dn.clone(),
    };
    ensure!(dir.apply(&nothing).await.unwrap_err().message.contains("no object or tombstone"));
    f.lab.delete_subtree(&f.ou).await
}

#[tokio::test]
async fn a_large_group_is_observed_whole_unless_just_written() -> anyhow::Result<()> {
    const USERS: usize = 1600;
    let f = fixture().await?;
    let mut dir = f.directory().await?;
    let spec = f.spec("large");
    let created = dir.apply(&WriteCommand::Upsert(spec.clone())).await?.group.context("no group")?;
    let users = f.lab.create_users(&f.ou, &format!("w{}", f.id), USERS).await?;
    let (_, before) = dir.highest_usn().await?;
    let members: Vec<MemberRef> = users.iter().map(|(_, sid)| MemberRef::Sid(sid.clone())).collect();
    dir.apply(&WriteCommand::AddMembers { anchor: spec.anchor.clone(), members }).await?;

    let observed = dir.observe_groups(Some(before), &HashSet::new()).await?;
    let group = observed.iter().find(|g| g.object_guid == created.object_guid).context("not observed")?;
    let sids: BTreeSet<String> = group.members.iter().filter_map(|m| m.sid.clone()).collect();
    ensure!(!group.members_unread && sids.len() == USERS, "{} members observed", sids.len());
    let written = HashSet::from([created.object_guid.clone()]);
    let observed = dir.observe_groups(Some(before), &written).await?;
    let group = observed.iter().find(|g| g.object_guid == created.object_guid).context("not observed")?;
    ensure!(
        group.members_unread && group.members.is_empty(),
        "{} members read of a group just written",
        group.members.len()
    );
    f.lab.delete_subtree(&f.ou).await
}
