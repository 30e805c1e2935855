//! Following the directory for drift: `uSNChanged` polling against the DC's
//! `highestCommittedUSN`, with the show-deleted control so tombstones are seen, and
//! tombstone reanimation for a written group deleted by hand.
//!
//! Why polling rather than DirSync (1.2.840.113556.1.4.841): DirSync needs the
//! "Replicating Directory Changes" right on the naming context (the bind account
//! would need a domain-wide replication right it otherwise never needs), returns only
//! changed attributes (a member change arrives as a value delta that must be merged
//! into a stored copy of every group), and its cookie is opaque and DC-bound. A poll
//! costs one rootDSE read when nothing changed and one indexed search (`uSNChanged`
//! is indexed) when something did, answers with whole objects the planner can compare
//! with its desired state, and its mark is a number that is easy to check against the
//! DC (`highestCommittedUSN` going backwards, another `invocationId`).

use gwb_core::drift::{ObservedGroup, ObservedMember};
use gwb_core::escape::filter_value;
use ldap3::controls::RawControl;
use ldap3::{Mod, Scope, SearchEntry};

use crate::codec::{guid_from_bytes, is_at_or_below, is_below, is_privileged_sid, parent_dn, parse_extended_dn};
use crate::directory::{Directory, extended_dn, first_value, values};
use crate::error::{DirectoryError, NO_SUCH_OBJECT};
use crate::group::{self, binary};
use gwb_core::command::{AppliedGroup, ApplyReport};

/// Show deleted: searches and modifies see tombstones (`isDeleted=TRUE`).
pub(crate) const SHOW_DELETED_OID: &str = "1.2.840.113556.1.4.417";

/// Where the watcher stands on one DC.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WatchPosition {
    /// `dnsHostName` of the DC.
    pub dc: String,
    /// The DC's database identity (its NTDS Settings `invocationId`); it changes when
    /// the DC is restored from a backup, and then USNs no longer mean what they meant.
    pub invocation_id: String,
    /// `highestCommittedUSN`.
    pub highest_usn: u64,
}

/// Attributes the watcher reads of every group besides the managed ones.
const WATCH_ATTRIBUTES: [&str; 10] = [
    "objectGUID",
    "objectSid",
    "adminDescription",
    "isDeleted",
    "lastKnownParent",
    "whenChanged",
    "uSNChanged",
    "groupType",
    "displayName",
    "description",
];
const MAIL_ATTRIBUTES: [&str; 3] = ["mail", "mailNickname", "proxyAddresses"];

fn show_deleted() -> RawControl {
    RawControl { ctype: SHOW_DELETED_OID.to_string(), crit: true, val: None }
}

impl Directory {
    /// The DC's name and highest committed USN: one rootDSE read, the whole cost of
    /// a poll that finds nothing changed.
    pub async fn highest_usn(&mut self) -> Result<(String, u64), DirectoryError> {
        let root = self
            .search("", Scope::Base, "(objectClass=*)", &["dnsHostName", "highestCommittedUSN"], Vec::new())
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| DirectoryError::permanent("the server returned no rootDSE"))?;
        let usn = first_value(&root, "highestCommittedUSN")
            .and_then(|v| v.trim().parse::<u64>().ok())
            .ok_or_else(|| DirectoryError::permanent("rootDSE has no readable highestCommittedUSN"))?;
        Ok((first_value(&root, "dnsHostName").unwrap_or_default(), usn))
    }

    /// The full position: name, USN and the DC's invocationId (two reads).
    pub async fn watch_position(&mut self) -> Result<WatchPosition, DirectoryError> {
        let root = self
            .search(
                "",
                Scope::Base,
                "(objectClass=*)",
                &["dnsHostName", "highestCommittedUSN", "dsServiceName"],
                Vec::new(),
            )
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| DirectoryError::permanent("the server returned no rootDSE"))?;
        let highest_usn = first_value(&root, "highestCommittedUSN")
            .and_then(|v| v.trim().parse::<u64>().ok())
            .ok_or_else(|| DirectoryError::permanent("rootDSE has no readable highestCommittedUSN"))?;
        let service = first_value(&root, "dsServiceName")
            .ok_or_else(|| DirectoryError::permanent("rootDSE has no dsServiceName"))?;
        let settings = self.search(&service, Scope::Base, "(objectClass=*)", &["invocationId"], Vec::new()).await?;
        let invocation_id = settings
            .first()
            .and_then(|entry| binary(entry, "invocationId"))
            .and_then(|bytes| guid_from_bytes(&bytes))
            .ok_or_else(|| DirectoryError::permanent(format!("{service} has no readable invocationId")))?;
        Ok(WatchPosition { dc: first_value(&root, "dnsHostName").unwrap_or_default(), invocation_id, highest_usn })
    }

    /// Groups that may be written groups, as they are now: changed after `after_usn`
    /// (a poll), or every one (None: a full comparison, which reads the tombstones
    /// whose last parent is a managed OU itself, not an OU below one). Kept are groups below a
    /// managed OU, groups carrying an anchor anywhere (one moved out keeps it), and
    /// tombstones whose last parent was a managed OU; everything else is dropped here.
    ///
    /// Members come in the search itself, up to the first window of 1,500 values (so
    /// a poll never reads a huge group whole); a larger group is read in full unless
    /// its objectGUID is in `written`, the groups the writer itself wrote since the
    /// last poll, whose member list the planner ignores anyway while it is being
    /// written (it is then reported with `members_unread`).
    pub async fn observe_groups(
        &mut self,
        after_usn: Option<u64>,
        written: &std::collections::HashSet<String>,
    ) -> Result<Vec<ObservedGroup>, DirectoryError> {
        let filter = match after_usn {
            Some(usn) => format!("(&(objectClass=group)(uSNChanged>={}))", usn.saturating_add(1)),
            // Tombstones only of the managed OUs' own groups: the domain keeps every
            // deleted group for the tombstone lifetime, and most are not ours.
            None => format!(
                "(&(objectClass=group)(|(adminDescription=Group_*)(&(isDeleted=TRUE)(|{}))))",
                self.config
                    .managed_ous
                    .iter()
                    .map(|ou| format!("(lastKnownParent={})", filter_value(ou)))
                    .collect::<String>()
            ),
        };
        let mail_read = self.caps.has_exchange_schema;
        let mut attrs: Vec<&str> = WATCH_ATTRIBUTES.to_vec();
        if mail_read {
            attrs.extend(MAIL_ATTRIBUTES);
        }
        attrs.push("member;range=0-1499");
        let base = self.caps.default_naming_context.clone();
        let entries =
            self.paged_search(&base, Scope::Subtree, &filter, &attrs, vec![show_deleted(), extended_dn()]).await?;
        let mut observed = Vec::new();
        for entry in entries {
            if let Some(group) = self.observed_group(entry, mail_read, written).await? {
                observed.push(group);
            }
        }
        Ok(observed)
    }

    async fn observed_group(
        &mut self,
        entry: SearchEntry,
        mail_read: bool,
        written: &std::collections::HashSet<String>,
    ) -> Result<Option<ObservedGroup>, DirectoryError> {
        // Under the extended-DN control the entry's own DN and DN-valued attributes
        // come back as `<GUID=…>;<SID=…>;dn`.
        let plain = |value: &str| parse_extended_dn(value).map(|e| e.dn).unwrap_or_else(|| value.to_string());
        let dn = plain(&entry.dn);
        let Some(object_guid) = binary(&entry, "objectGUID").and_then(|b| guid_from_bytes(&b)) else {
            return Ok(None);
        };
        let deleted = first_value(&entry, "isDeleted").is_some_and(|v| v.eq_ignore_ascii_case("TRUE"));
        let anchor = first_value(&entry, "adminDescription");
        let managed = |dn: &str, below: bool| {
            self.config.managed_ous.iter().any(|ou| if below { is_below(dn, ou) } else { is_at_or_below(dn, ou) })
        };
        let in_managed_ous = if deleted {
            first_value(&entry, "lastKnownParent").is_some_and(|parent| managed(&plain(&parent), false))
        } else {
            // An adopted original group is written where it lies (an adoptable OU).
            managed(&dn, true) || self.is_adopted_place(&dn)
        };
        let anchored = anchor.as_deref().is_some_and(|a| a.len() > 6 && a[..6].eq_ignore_ascii_case("Group_"));
        if !in_managed_ous && (deleted || !anchored) {
            return Ok(None);
        }
        let mut members = Vec::new();
        let mut members_unread = false;
        // `member;range=0-*` (or plain `member`) is the whole list; `member;range=0-1499`
        // the first window of a larger group.
        let mut first_window = None;
        let mut complete = Vec::new();
        for (name, vals) in &entry.attrs {
            match crate::codec::parse_range(name, "member") {
                Some((_, Some(_))) => first_window = Some(vals.clone()),
                Some((_, None)) => complete.extend(vals.iter().cloned()),
                None if name.eq_ignore_ascii_case("member") => complete.extend(vals.iter().cloned()),
                None => {}
            }
        }
        if first_window.is_some() {
            if written.contains(&object_guid) {
                members_unread = true;
            } else {
                for member in self.read_members_of(&dn).await? {
                    members.push(ObservedMember { guid: member.guid, sid: member.sid, dn: member.dn });
                }
            }
        } else {
            for value in complete {
                let member = parse_extended_dn(&value).ok_or_else(|| {
                    DirectoryError::permanent(format!("member value of {dn} is not in extended-DN form: {value}"))
                })?;
                members.push(ObservedMember { guid: member.guid, sid: member.sid, dn: member.dn });
            }
        }
        let mut attributes = Vec::new();
        for name in ["groupType", "displayName", "description"]
            .into_iter()
            .chain(mail_read.then_some(MAIL_ATTRIBUTES).into_iter().flatten())
        {
            attributes.push((name.to_string(), values(&entry, name)));
        }
        Ok(Some(ObservedGroup {
            object_guid,
            object_sid: binary(&entry, "objectSid").and_then(|b| crate::codec::sid_from_bytes(&b)),
            dn,
            anchor,
            deleted,
            in_managed_ous,
            attributes,
            mail_read,
            members,
            members_unread,
            when_changed: first_value(&entry, "whenChanged").unwrap_or_default(),
            usn_changed: first_value(&entry, "uSNChanged").and_then(|v| v.trim().parse().ok()).unwrap_or(0),
        }))
    }

    /// Brings the written group with objectGUID `guid` back from its tombstone to
    /// `dn` and gives it its anchor again (Samba and AD: a modify with show-deleted
    /// that removes `isDeleted` and sets `distinguishedName`). Idempotent: a group
    /// already back in the managed OUs only gets its anchor if it lacks one. Refused:
    /// a target outside the managed OUs, an object that is not a group, carries another
    /// anchor, lives outside the managed OUs, or has a privileged SID. No tombstone
    /// (past the tombstone lifetime, or purged) is a permanent error: the upsert
    /// planned after this command then creates the group anew.
    pub(crate) async fn reanimate(
        &mut self,
        anchor: &str,
        guid: &str,
        dn: &str,
    ) -> Result<ApplyReport, DirectoryError> {
        let parent = parent_dn(dn).ok_or_else(|| DirectoryError::permanent(format!("{dn} has no parent")))?;
        self.check_target_ou(parent, "OU")?;
        let attrs = ["isDeleted", "objectSid", "adminDescription", "objectClass"];
        let found = match self
            .search(&format!("<GUID={guid}>"), Scope::Base, "(objectClass=*)", &attrs, vec![show_deleted()])
            .await
        {
            Ok(entries) => entries.into_iter().next(),
            Err(e) if e.code == Some(NO_SUCH_OBJECT) => None,
            Err(e) => return Err(e),
        };
        let entry = found.ok_or_else(|| {
            DirectoryError::permanent(format!("no object or tombstone has objectGUID {guid}: cannot reanimate"))
        })?;
        let refuse = |why: &str| Err(DirectoryError::permanent(format!("refusing to reanimate {}: {why}", entry.dn)));
        if !values(&entry, "objectClass").iter().any(|c| c.eq_ignore_ascii_case("group")) {
            return refuse("it is not a group");
        }
        if binary(&entry, "objectSid")
            .and_then(|b| crate::codec::sid_from_bytes(&b))
            .is_some_and(|s| is_privileged_sid(&s))
        {
            return refuse("its SID is well-known or privileged");
        }
        if first_value(&entry, "adminDescription").is_some_and(|a| !a.trim().eq_ignore_ascii_case(anchor.trim())) {
            return refuse("it carries another anchor");
        }
        let deleted = first_value(&entry, "isDeleted").is_some_and(|v| v.eq_ignore_ascii_case("TRUE"));
        let mut changed = false;
        let current_dn = if deleted {
            let mods = vec![
                Mod::Delete("isDeleted".to_string(), Default::default()),
                Mod::Replace("distinguishedName".to_string(), [dn.to_string()].into()),
            ];
            self.modify(&entry.dn, mods, vec![show_deleted()], &format!("reanimate {} as {dn}", entry.dn)).await?;
            changed = true;
            dn.to_string()
        } else if self.config.managed_ous.iter().any(|ou| is_below(&entry.dn, ou)) {
            entry.dn.clone()
        } else {
            return refuse("it is not deleted and lies outside the managed OUs");
        };
        if first_value(&entry, "adminDescription").is_none() {
            let mut mods = vec![Mod::Replace("adminDescription".to_string(), [anchor.to_string()].into())];
            if self.caps.has_external_directory_object_id {
                mods.push(Mod::Replace(group::EXTERNAL_ID.to_string(), [anchor.to_string()].into()));
            }
            self.modify(&current_dn, mods, Vec::new(), &format!("anchor reanimated {current_dn}")).await?;
            changed = true;
        }
        let group = self.read_group(&current_dn).await?;
        self.remember(anchor, &group.guid);
        let applied: AppliedGroup = group.applied();
        Ok(ApplyReport { group: Some(applied), changed, ..ApplyReport::default() })
    }
}
