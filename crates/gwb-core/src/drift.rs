//! Drift: what the writer's directory watcher saw of a written group, compared with
//! what the planner wants it to be. The comparison is a pure function so that the
//! planner decides (and tests prove) what counts as drift; the writer only reports.
//!
//! Drift is always a difference from the desired state, never an event count: the
//! writer's own writes converge on the desired state, so they never show up here.

use std::collections::HashSet;
use std::fmt;

use crate::command::{GroupSpec, MemberRef};

/// A member value of a group as AD holds it (from an extended-DN read).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ObservedMember {
    /// Lower-case hyphenated objectGUID.
    pub guid: String,
    /// `S-1-5-…`; None for objects without a SID.
    pub sid: Option<String>,
    pub dn: String,
}

/// One group as the watcher read it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ObservedGroup {
    /// Lower-case hyphenated objectGUID: how the planner recognises a group it wrote
    /// (the anchor does not survive a deletion, the GUID does).
    pub object_guid: String,
    pub object_sid: Option<String>,
    /// Its DN now (a tombstone's DN under Deleted Objects when `deleted`).
    pub dn: String,
    /// `adminDescription`, if any.
    pub anchor: Option<String>,
    /// A tombstone (`isDeleted`), read with the show-deleted control.
    pub deleted: bool,
    /// The group lies below one of the writer's managed OUs (for a tombstone: its
    /// `lastKnownParent` does).
    pub in_managed_ous: bool,
    /// The managed attributes as read (absent attribute = no values).
    pub attributes: Vec<(String, Vec<String>)>,
    /// The mail attributes were read (the schema has them).
    pub mail_read: bool,
    pub members: Vec<ObservedMember>,
    /// `members` is not the whole list (a large group the writer itself wrote since
    /// its last poll, not read again): members are not compared.
    pub members_unread: bool,
    /// `whenChanged` as AD spells it (generalized time).
    pub when_changed: String,
    pub usn_changed: u64,
}

/// One batch of observations from one writer's watcher.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Observation {
    pub writer_id: String,
    /// The DC read (`dnsHostName`).
    pub dc: String,
    pub observed_at_ms: i64,
    /// Part of a full comparison (after the watcher lost its mark, changed DC, or on
    /// its periodic full pass) rather than of a change poll.
    pub full: bool,
    pub groups: Vec<ObservedGroup>,
}

/// What kind of drift, as counted (`gwb_drift_detected_total{kind}`) and as the
/// contested rule groups repeats ("the same drift").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DriftKind {
    MemberAdded,
    MemberRemoved,
    Attribute,
    Renamed,
    Moved,
    MovedOut,
    Deleted,
}

impl DriftKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DriftKind::MemberAdded => "member_added",
            DriftKind::MemberRemoved => "member_removed",
            DriftKind::Attribute => "attribute",
            DriftKind::Renamed => "renamed",
            DriftKind::Moved => "moved",
            DriftKind::MovedOut => "moved_out",
            DriftKind::Deleted => "deleted",
        }
    }
}

impl fmt::Display for DriftKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One difference between AD and the desired state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Drift {
    /// A member value AD holds that the planner did not plan (added by hand).
    MemberAdded(ObservedMember),
    /// A planned member value AD no longer holds (removed by hand).
    MemberRemoved(MemberRef),
    /// A managed attribute differs: its name, the desired and the observed values.
    Attribute { name: String, before: Vec<String>, after: Vec<String> },
    /// Same OU, another name.
    Renamed { from: String, to: String },
    /// Another OU inside the managed OUs.
    Moved { from: String, to: String },
    /// Moved out of the managed OUs: reported, never followed nor recreated beside it.
    MovedOut { from: String, to: String },
    /// Deleted: a tombstone with the group's objectGUID.
    Deleted { last_dn: String },
}

impl Drift {
    pub fn kind(&self) -> DriftKind {
        match self {
            Drift::MemberAdded(_) => DriftKind::MemberAdded,
            Drift::MemberRemoved(_) => DriftKind::MemberRemoved,
            Drift::Attribute { .. } => DriftKind::Attribute,
            Drift::Renamed { .. } => DriftKind::Renamed,
            Drift::Moved { .. } => DriftKind::Moved,
            Drift::MovedOut { .. } => DriftKind::MovedOut,
            Drift::Deleted { .. } => DriftKind::Deleted,
        }
    }

    /// The key repeats are counted under: the kind, and the attribute for attributes
    /// (a script that keeps resetting `description` is one repeated drift).
    pub fn repeat_key(&self) -> String {
        match self {
            Drift::Attribute { name, .. } => format!("attribute:{}", name.to_ascii_lowercase()),
            other => other.kind().as_str().to_string(),
        }
    }

    /// What an operator reads in the audit log and drift history.
    pub fn describe(&self) -> String {
        let values = |v: &[String]| if v.is_empty() { "(none)".to_string() } else { v.join("; ") };
        match self {
            Drift::MemberAdded(member) => {
                format!("member added by hand: {}", if member.dn.is_empty() { &member.guid } else { &member.dn })
            }
            Drift::MemberRemoved(reference) => format!("member removed by hand: {}", reference.ldap_value()),
            Drift::Attribute { name, before, after } => {
                format!("{name} changed: before {} after {}", values(before), values(after))
            }
            Drift::Renamed { from, to } => format!("renamed: before {from} after {to}"),
            Drift::Moved { from, to } => format!("moved: before {from} after {to}"),
            Drift::MovedOut { from, to } => {
                format!("moved out of the managed OUs: before {from} after {to} (reported, not followed)")
            }
            Drift::Deleted { last_dn } => format!("deleted: {last_dn}"),
        }
    }
}

/// What the planner does with drift (`[drift] mode`, or per group).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DriftMode {
    /// Put the group back as planned (the default).
    #[default]
    Repair,
    /// Record, count and audit it; change nothing.
    Report,
    /// Ignore it.
    Off,
}

impl DriftMode {
    pub fn as_str(self) -> &'static str {
        match self {
            DriftMode::Repair => "repair",
            DriftMode::Report => "report",
            DriftMode::Off => "off",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [DriftMode::Repair, DriftMode::Report, DriftMode::Off].into_iter().find(|m| m.as_str() == text)
    }
}

/// The planner's drift policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DriftPolicy {
    pub mode: DriftMode,
    /// The same drift on the same group more than this many times within the window
    /// makes the group contested (another writer is fighting): repairs stop.
    pub contest_repeats: u64,
    pub contest_window_ms: i64,
}

impl Default for DriftPolicy {
    fn default() -> Self {
        DriftPolicy { mode: DriftMode::Repair, contest_repeats: 3, contest_window_ms: 10 * 60_000 }
    }
}

impl DriftPolicy {
    /// Whether `repeats` occurrences of one drift inside the window (this one
    /// included) mean another writer is fighting over the group.
    pub fn is_contested(&self, repeats: u64) -> bool {
        repeats > self.contest_repeats
    }
}

/// What the planner wants a written group to be in AD.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired<'a> {
    pub spec: &'a GroupSpec,
    /// The DN the writer last reported for the group (the CN may differ from the
    /// spec's after a collision fallback, so the writer's own answer is the reference).
    pub dn: &'a str,
    /// The member values planned into AD.
    pub members: &'a [MemberRef],
    /// Proxy addresses the writer left out at its last write because another object
    /// holds them: not in AD on purpose, so not drift.
    pub addresses_skipped: &'a [String],
}

/// The attributes a written group's spec determines, with their desired values
/// (empty: absent), as the writer writes them. Mail attributes only when the spec
/// carries them: otherwise the writer leaves them alone and so does drift.
pub fn desired_attributes(spec: &GroupSpec) -> Vec<(&'static str, Vec<String>)> {
    let present = |value: &str| if value.trim().is_empty() { Vec::new() } else { vec![value.to_string()] };
    let mut attributes = vec![
        ("groupType", vec![spec.group_type.ad_group_type().to_string()]),
        ("displayName", present(&spec.display_name)),
        ("description", spec.description.as_deref().map(present).unwrap_or_default()),
    ];
    if let Some(mail) = &spec.mail {
        attributes.push(("mail", mail.mail.as_deref().map(present).unwrap_or_default()));
        attributes.push(("mailNickname", mail.mail_nickname.as_deref().map(present).unwrap_or_default()));
        attributes.push(("proxyAddresses", mail.proxy_addresses.clone()));
    }
    attributes
}

/// Every difference between the observed group and the desired state. A deleted or
/// moved-out group has only that one drift (its attributes are not ours to compare).
pub fn compare(desired: &Desired<'_>, observed: &ObservedGroup) -> Vec<Drift> {
    if observed.deleted {
        return vec![Drift::Deleted { last_dn: desired.dn.to_string() }];
    }
    if !observed.in_managed_ous {
        return vec![Drift::MovedOut { from: desired.dn.to_string(), to: observed.dn.clone() }];
    }
    let mut drifts = Vec::new();
    if !dn_eq(&observed.dn, desired.dn) {
        let (from_rdn, from_parent) = split_dn(desired.dn);
        let (to_rdn, to_parent) = split_dn(&observed.dn);
        if dn_eq(from_parent, to_parent) && !dn_eq(from_rdn, to_rdn) {
            drifts.push(Drift::Renamed { from: desired.dn.to_string(), to: observed.dn.clone() });
        } else {
            drifts.push(Drift::Moved { from: desired.dn.to_string(), to: observed.dn.clone() });
        }
    }
    for (name, mut want) in desired_attributes(desired.spec) {
        let mail = matches!(name, "mail" | "mailNickname" | "proxyAddresses");
        if mail && !observed.mail_read {
            continue;
        }
        if name == "proxyAddresses" {
            want.retain(|address| !desired.addresses_skipped.iter().any(|s| s.eq_ignore_ascii_case(address)));
        }
        let have: Vec<String> = observed
            .attributes
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .flat_map(|(_, values)| values.iter().cloned())
            .collect();
        let same = want.iter().collect::<HashSet<_>>() == have.iter().collect::<HashSet<_>>();
        if !same {
            drifts.push(Drift::Attribute { name: name.to_string(), before: want, after: have });
        }
    }
    if observed.members_unread {
        return drifts;
    }
    let sids: HashSet<String> =
        observed.members.iter().filter_map(|m| m.sid.as_deref()).map(str::to_ascii_uppercase).collect();
    let guids: HashSet<String> = observed.members.iter().map(|m| m.guid.to_ascii_lowercase()).collect();
    let mut wanted_sids = HashSet::new();
    let mut wanted_guids = HashSet::new();
    for reference in desired.members {
        let present = match reference {
            MemberRef::Sid(sid) => {
                wanted_sids.insert(sid.to_ascii_uppercase());
                sids.contains(&sid.to_ascii_uppercase())
            }
            MemberRef::Guid(guid) => {
                wanted_guids.insert(guid.to_ascii_lowercase());
                guids.contains(&guid.to_ascii_lowercase())
            }
        };
        if !present {
            drifts.push(Drift::MemberRemoved(reference.clone()));
        }
    }
    for member in &observed.members {
        let wanted = wanted_guids.contains(&member.guid.to_ascii_lowercase())
            || member.sid.as_deref().is_some_and(|sid| wanted_sids.contains(&sid.to_ascii_uppercase()));
        if !wanted {
            drifts.push(Drift::MemberAdded(member.clone()));
        }
    }
    drifts
}

/// The first RDN and the parent of a DN, split at the first unescaped comma.
fn split_dn(dn: &str) -> (&str, &str) {
    let mut escaped = false;
    for (index, c) in dn.char_indices() {
        match c {
            '\\' if !escaped => escaped = true,
            ',' if !escaped => return (&dn[..index], &dn[index + 1..]),
            _ => escaped = false,
        }
    }
    (dn, "")
}

/// DNs as AD compares them, for DNs read from the same server: case and the spaces
/// after separators do not matter.
fn dn_eq(a: &str, b: &str) -> bool {
    let normal = |dn: &str| dn.split(',').map(|part| part.trim().to_lowercase()).collect::<Vec<_>>().join(",");
    normal(a) == normal(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{GroupType, MailAttributes};

    const DN: &str = "CN=Sales,OU=Cloud,DC=lab,DC=example";

    fn spec() -> GroupSpec {
        GroupSpec {
            object_id: "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0".into(),
            anchor: "Group_0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0".into(),
            cn: "Sales".into(),
            parent_dn: "OU=Cloud,DC=lab,DC=example".into(),
            sam_account_name_candidates: vec!["Sales".into()],
            group_type: GroupType::UniversalSecurity,
            display_name: "Sales".into(),
            description: Some("All of sales".into()),
            mail: None,
            on_premises_sid: None,
        }
    }

    fn alice() -> ObservedMember {
        ObservedMember {
            guid: "11111111-1111-1111-1111-111111111111".into(),
            sid: Some("S-1-5-21-1-2-3-1001".into()),
            dn: "CN=alice,OU=Users,DC=lab,DC=example".into(),
        }
    }

    fn nested() -> ObservedMember {
        ObservedMember {
            guid: "22222222-2222-2222-2222-222222222222".into(),
            sid: Some("S-1-5-21-1-2-3-2001".into()),
            dn: "CN=Nested,OU=Cloud,DC=lab,DC=example".into(),
        }
    }

    fn observed() -> ObservedGroup {
        ObservedGroup {
            object_guid: "33333333-3333-3333-3333-333333333333".into(),
            dn: DN.into(),
            anchor: Some(spec().anchor),
            in_managed_ous: true,
            attributes: vec![
                ("groupType".into(), vec!["-2147483640".into()]),
                ("displayName".into(), vec!["Sales".into()]),
                ("description".into(), vec!["All of sales".into()]),
            ],
            members: vec![alice(), nested()],
            ..Default::default()
        }
    }

    fn members() -> Vec<MemberRef> {
        // Users are planned by SID (any case), nested groups by GUID.
        vec![MemberRef::Sid("s-1-5-21-1-2-3-1001".into()), MemberRef::Guid(nested().guid.to_ascii_uppercase())]
    }

    fn diff(observed: &ObservedGroup) -> Vec<Drift> {
        let spec = spec();
        let members = members();
        compare(&Desired { spec: &spec, dn: DN, members: &members, addresses_skipped: &[] }, observed)
    }

    #[test]
    fn the_desired_state_is_no_drift() {
        assert_eq!(diff(&observed()), Vec::<Drift>::new());
        // DN spelling from the server may differ in case and spaces.
        let mut group = observed();
        group.dn = "cn=Sales, ou=Cloud, dc=lab, dc=example".into();
        assert_eq!(diff(&group), Vec::<Drift>::new());
    }

    #[test]
    fn members_added_and_removed_by_hand() {
        let mut group = observed();
        let bob =
            ObservedMember { guid: "44444444-4444-4444-4444-444444444444".into(), sid: None, dn: "CN=bob".into() };
        group.members = vec![nested(), bob.clone()];
        let drifts = diff(&group);
        assert_eq!(
            drifts,
            vec![Drift::MemberRemoved(MemberRef::Sid("s-1-5-21-1-2-3-1001".into())), Drift::MemberAdded(bob)]
        );
        assert_eq!(drifts[1].describe(), "member added by hand: CN=bob");
    }

    #[test]
    fn members_not_read_are_not_compared() {
        let mut group = observed();
        group.members.clear();
        group.members_unread = true;
        assert_eq!(diff(&group), Vec::<Drift>::new());
    }

    #[test]
    fn managed_attributes_changed() {
        let mut group = observed();
        group.attributes[2].1 = vec!["edited".into()];
        group.attributes[0].1 = vec!["8".into()];
        group.attributes.remove(1);
        let drifts = diff(&group);
        let names: Vec<String> = drifts.iter().map(Drift::repeat_key).collect();
        assert_eq!(names, ["attribute:grouptype", "attribute:displayname", "attribute:description"]);
        assert_eq!(drifts[2].describe(), "description changed: before All of sales after edited");
        assert_eq!(drifts[1].describe(), "displayName changed: before Sales after (none)");
    }

    #[test]
    fn mail_attributes_count_only_when_managed_and_read() {
        let mut with_mail = spec();
        with_mail.mail = Some(MailAttributes {
            mail: Some("sales@contoso.com".into()),
            mail_nickname: Some("sales".into()),
            proxy_addresses: vec!["SMTP:sales@contoso.com".into()],
        });
        let members = members();
        let desired = Desired { spec: &with_mail, dn: DN, members: &members, addresses_skipped: &[] };
        let mut group = observed();
        assert_eq!(compare(&desired, &group), Vec::<Drift>::new(), "not read: not compared");
        group.mail_read = true;
        group.attributes.push(("mail".into(), vec!["sales@contoso.com".into()]));
        group.attributes.push(("mailNickname".into(), vec!["sales".into()]));
        group.attributes.push(("proxyAddresses".into(), vec!["SMTP:other@contoso.com".into()]));
        let drifts = compare(&desired, &group);
        assert_eq!(drifts.len(), 1, "{drifts:?}");
        assert_eq!(drifts[0].repeat_key(), "attribute:proxyaddresses");
        // A spec without mail attributes leaves whatever AD holds alone.
        assert_eq!(diff(&group), Vec::<Drift>::new());
        // An address the writer left out (another object holds it) is not drift.
        with_mail.mail.as_mut().unwrap().proxy_addresses.push("smtp:taken@contoso.com".into());
        group.attributes[5].1 = vec!["SMTP:sales@contoso.com".into()];
        let skipped = ["SMTP:TAKEN@contoso.com".to_string()];
        let desired = Desired { spec: &with_mail, dn: DN, members: &members, addresses_skipped: &skipped };
        assert_eq!(compare(&desired, &group), Vec::<Drift>::new());
    }

    #[test]
    fn renamed_moved_and_moved_out() {
        let mut group = observed();
        group.dn = "CN=Sales by hand,OU=Cloud,DC=lab,DC=example".into();
        assert_eq!(diff(&group)[0].kind(), DriftKind::Renamed);
        group.dn = "CN=Sales,OU=Sub,OU=Cloud,DC=lab,DC=example".into();
        assert_eq!(diff(&group)[0].kind(), DriftKind::Moved);
        // An escaped comma is part of the RDN, not a separator.
        group.dn = "CN=Sales\\, EMEA,OU=Cloud,DC=lab,DC=example".into();
        assert_eq!(diff(&group)[0].kind(), DriftKind::Renamed);
        group.dn = "CN=Sales,OU=Elsewhere,DC=lab,DC=example".into();
        group.in_managed_ous = false;
        group.attributes.clear();
        assert_eq!(
            diff(&group),
            vec![Drift::MovedOut { from: DN.into(), to: "CN=Sales,OU=Elsewhere,DC=lab,DC=example".into() }]
        );
    }

    #[test]
    fn deleted_is_the_only_drift_of_a_tombstone() {
        let mut group = observed();
        group.deleted = true;
        group.members.clear();
        group.attributes.clear();
        group.dn = "CN=Sales\\0ADEL:33333333-3333-3333-3333-333333333333,CN=Deleted Objects,DC=lab,DC=example".into();
        assert_eq!(diff(&group), vec![Drift::Deleted { last_dn: DN.into() }]);
        assert_eq!(Drift::Deleted { last_dn: DN.into() }.repeat_key(), "deleted");
    }
}
