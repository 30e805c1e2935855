//! What the planner asks the writer to make true in AD. These are intents about one
//! cloud group, addressed by its anchor, never by DN: the writer finds the object by
//! anchor under the managed OUs and only then acts on it.

use std::fmt;

/// AD group flavour written back (DESIGN.md §3, Graph `onPremisesGroupType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GroupType {
    UniversalSecurity,
    UniversalDistribution,
    UniversalMailEnabledSecurity,
}

impl GroupType {
    /// `groupType` attribute value: universal scope (0x8) plus the security bit
    /// (0x80000000) for security flavours.
    pub fn ad_group_type(self) -> i32 {
        const UNIVERSAL: i32 = 0x8;
        const SECURITY: i32 = i32::MIN; // 0x80000000
        match self {
            GroupType::UniversalSecurity | GroupType::UniversalMailEnabledSecurity => UNIVERSAL | SECURITY,
            GroupType::UniversalDistribution => UNIVERSAL,
        }
    }

    /// Whether this type needs Exchange recipient attributes in the AD schema.
    pub fn needs_exchange(self) -> bool {
        !matches!(self, GroupType::UniversalSecurity)
    }

    /// Graph's spelling (`writebackConfiguration.onPremisesGroupType`).
    pub fn graph_name(self) -> &'static str {
        match self {
            GroupType::UniversalSecurity => "universalSecurityGroup",
            GroupType::UniversalDistribution => "universalDistributionGroup",
            GroupType::UniversalMailEnabledSecurity => "universalMailEnabledSecurityGroup",
        }
    }

    pub fn from_graph_name(name: &str) -> Option<Self> {
        [GroupType::UniversalSecurity, GroupType::UniversalDistribution, GroupType::UniversalMailEnabledSecurity]
            .into_iter()
            .find(|t| t.graph_name().eq_ignore_ascii_case(name))
    }
}

impl fmt::Display for GroupType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.graph_name())
    }
}

/// Mail attributes, sent when the target type is mail-enabled and the schema has the
/// Exchange attributes; all empty for a Microsoft 365 group written as plain security
/// into such a forest (the writer then removes what it wrote as another type). Absent:
/// the writer leaves mail attributes alone.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MailAttributes {
    pub mail: Option<String>,
    pub mail_nickname: Option<String>,
    /// Every proxy address, primary (`SMTP:`) and secondary (`smtp:`).
    pub proxy_addresses: Vec<String>,
}

/// Desired AD shape of one written-back group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupSpec {
    /// Cloud objectId (GUID string).
    pub object_id: String,
    /// `Group_<objectId>`: written to `adminDescription` (and
    /// `msDS-ExternalDirectoryObjectId` where the schema has it).
    pub anchor: String,
    /// Unescaped RDN value; the writer escapes it.
    pub cn: String,
    /// DN of the OU the group must live in (already a valid DN).
    pub parent_dn: String,
    /// Ordered, deterministic candidates; the writer takes the first one not used by
    /// another object, and keeps the current one if it is still a candidate.
    pub sam_account_name_candidates: Vec<String>,
    pub group_type: GroupType,
    pub display_name: String,
    pub description: Option<String>,
    pub mail: Option<MailAttributes>,
    /// The SID of the AD group this cloud group came from (`onPremisesSecurityIdentifier`
    /// of a group no longer synced). When no group carries the anchor yet, the writer
    /// looks for this SID: an AD group that has it is adopted when the operator allows
    /// it, and otherwise the write is refused; a second group is never created.
    pub on_premises_sid: Option<String>,
}

impl GroupSpec {
    /// A stable fingerprint of every field, for change detection: equal specs give
    /// equal fingerprints in every process and every Rust release. It is FNV-1a (64
    /// bit) over an explicit encoding: each field in declaration order, strings
    /// length-prefixed, options and lists tagged, so no two different specs share an
    /// encoding. (std's `Hash` and `DefaultHasher` may change between releases, and a
    /// `Debug` string changes with any formatting change.) A new field must be added
    /// here; changing the encoding makes every written group send one upsert.
    pub fn fingerprint(&self) -> u64 {
        let mut hash = Fnv1a::new();
        hash.str(&self.object_id);
        hash.str(&self.anchor);
        hash.str(&self.cn);
        hash.str(&self.parent_dn);
        hash.list(&self.sam_account_name_candidates);
        hash.str(self.group_type.graph_name());
        hash.str(&self.display_name);
        hash.option_str(self.description.as_deref());
        match &self.mail {
            None => hash.tag(0),
            Some(mail) => {
                hash.tag(1);
                hash.option_str(mail.mail.as_deref());
                hash.option_str(mail.mail_nickname.as_deref());
                hash.list(&mail.proxy_addresses);
            }
        }
        // Only when set, so the fingerprints of every other group stay as they were.
        if let Some(sid) = &self.on_premises_sid {
            hash.tag(2);
            hash.str(sid);
        }
        hash.finish()
    }
}

/// FNV-1a, 64 bit, with the framing [`GroupSpec::fingerprint`] needs.
struct Fnv1a(u64);

impl Fnv1a {
    fn new() -> Self {
        Fnv1a(0xcbf2_9ce4_8422_2325)
    }

    fn bytes(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 ^= u64::from(byte);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    fn tag(&mut self, tag: u8) {
        self.bytes(&[tag]);
    }

    fn len(&mut self, len: usize) {
        self.bytes(&(len as u64).to_le_bytes());
    }

    fn str(&mut self, text: &str) {
        self.len(text.len());
        self.bytes(text.as_bytes());
    }

    fn option_str(&mut self, text: Option<&str>) {
        match text {
            None => self.tag(0),
            Some(text) => {
                self.tag(1);
                self.str(text);
            }
        }
    }

    fn list(&mut self, items: &[String]) {
        self.len(items.len());
        for item in items {
            self.str(item);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// How a member is referenced in a `member` value: by AD SID (`<SID=…>`, synced users)
/// or AD objectGUID (`<GUID=…>`, nested groups we wrote back ourselves).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MemberRef {
    Sid(String),
    Guid(String),
}

impl MemberRef {
    /// The value to put in `member` (AD resolves it to the referenced object's DN).
    pub fn ldap_value(&self) -> String {
        match self {
            MemberRef::Sid(sid) => format!("<SID={sid}>"),
            MemberRef::Guid(guid) => format!("<GUID={guid}>"),
        }
    }

    /// Stable text form used as a key in the planner's store, e.g. `sid:S-1-5-…`.
    pub fn key(&self) -> String {
        match self {
            MemberRef::Sid(sid) => format!("sid:{sid}"),
            MemberRef::Guid(guid) => format!("guid:{}", guid.to_ascii_lowercase()),
        }
    }

    pub fn from_key(key: &str) -> Option<Self> {
        if let Some(sid) = key.strip_prefix("sid:") {
            Some(MemberRef::Sid(sid.to_string()))
        } else {
            key.strip_prefix("guid:").map(|g| MemberRef::Guid(g.to_string()))
        }
    }
}

/// One writer command. Every variant names the group by anchor.
#[derive(Debug, Clone, PartialEq, Eq)]
// A command is built once per planned change and moved, never held in bulk: the
// spec's size beside the other variants costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
pub enum WriteCommand {
    /// Create the group if no object carries the anchor, else make its name, OU and
    /// attributes match (rename/move keep objectGUID and SID).
    Upsert(GroupSpec),
    AddMembers {
        anchor: String,
        members: Vec<MemberRef>,
    },
    RemoveMembers {
        anchor: String,
        members: Vec<MemberRef>,
    },
    /// Delete the group carrying the anchor; absent already counts as done.
    Delete {
        anchor: String,
    },
    /// Move the group carrying the anchor into the retired OU, keeping it.
    Retire {
        anchor: String,
        retired_ou: String,
    },
    /// Bring the group back from its tombstone (same objectGUID and SID) to `dn`, and
    /// give it its anchor again; the upsert and member adds that follow restore the
    /// rest. A tombstone keeps no anchor, so it is named by the objectGUID the writer
    /// reported for the group.
    Reanimate {
        anchor: String,
        object_guid: String,
        dn: String,
    },
}

impl WriteCommand {
    pub fn anchor(&self) -> &str {
        match self {
            WriteCommand::Upsert(spec) => &spec.anchor,
            WriteCommand::AddMembers { anchor, .. }
            | WriteCommand::RemoveMembers { anchor, .. }
            | WriteCommand::Delete { anchor }
            | WriteCommand::Retire { anchor, .. }
            | WriteCommand::Reanimate { anchor, .. } => anchor,
        }
    }

    pub fn command_kind(&self) -> CommandKind {
        match self {
            WriteCommand::Upsert(_) => CommandKind::Upsert,
            WriteCommand::AddMembers { .. } => CommandKind::AddMembers,
            WriteCommand::RemoveMembers { .. } => CommandKind::RemoveMembers,
            WriteCommand::Delete { .. } => CommandKind::Delete,
            WriteCommand::Retire { .. } => CommandKind::Retire,
            WriteCommand::Reanimate { .. } => CommandKind::Reanimate,
        }
    }

    /// The kind's spelling (see [`CommandKind::as_str`]).
    pub fn kind(&self) -> &'static str {
        self.command_kind().as_str()
    }
}

/// The kinds of [`WriteCommand`]. Their spellings are shared by the outcomes, the
/// audit log, metrics labels and the control API, so they are defined only here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CommandKind {
    Upsert,
    AddMembers,
    RemoveMembers,
    Delete,
    Retire,
    Reanimate,
}

impl CommandKind {
    pub const ALL: [CommandKind; 6] = [
        CommandKind::Upsert,
        CommandKind::AddMembers,
        CommandKind::RemoveMembers,
        CommandKind::Delete,
        CommandKind::Retire,
        CommandKind::Reanimate,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CommandKind::Upsert => "upsert",
            CommandKind::AddMembers => "add_members",
            CommandKind::RemoveMembers => "remove_members",
            CommandKind::Delete => "delete",
            CommandKind::Retire => "retire",
            CommandKind::Reanimate => "reanimate",
        }
    }
}

impl fmt::Display for CommandKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown command kind {0:?}")]
pub struct UnknownCommandKind(pub String);

impl std::str::FromStr for CommandKind {
    type Err = UnknownCommandKind;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        CommandKind::ALL.into_iter().find(|k| k.as_str() == text).ok_or_else(|| UnknownCommandKind(text.to_string()))
    }
}

/// The AD object a command acted on, as the writer found or left it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AppliedGroup {
    pub dn: String,
    /// Lower-case hyphenated GUID string.
    pub object_guid: String,
    /// `S-1-5-21-…` string.
    pub object_sid: String,
    pub sam_account_name: String,
}

/// What applying one command did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ApplyReport {
    /// The group after the command (None after a delete, or when it was already absent).
    pub group: Option<AppliedGroup>,
    pub members_added: u32,
    pub members_removed: u32,
    /// Values that were already in the requested state (idempotent replays).
    pub members_unchanged: u32,
    /// Member values AD refused (e.g. the SID does not resolve), with the reason.
    pub members_rejected: Vec<(MemberRef, String)>,
    /// Whether anything was changed in AD.
    pub changed: bool,
    /// Proxy addresses of the spec not written because another object of the domain
    /// holds them (Exchange needs every proxy address unique).
    pub addresses_skipped: Vec<SkippedAddress>,
    /// The group's wanted name is held by an object that is not ours: what holds it and
    /// the name used instead (upserts only; empty when there is no clash).
    pub name_clash: Option<String>,
}

/// A proxy address left out of a group because another recipient holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedAddress {
    pub address: String,
    /// The DN of the object that holds it.
    pub holder_dn: String,
}

impl SkippedAddress {
    /// How the operator reads it: `smtp:x@contoso.com (held by CN=…)`.
    pub fn describe(&self) -> String {
        format!("{} (held by {})", self.address, self.holder_dn)
    }
}

impl ApplyReport {
    /// This report followed by `next`, a later write to the same group: counts and
    /// refusals add up, the group is the latest one known.
    pub fn combined_with(mut self, next: ApplyReport) -> ApplyReport {
        self.group = next.group.or(self.group);
        self.members_added += next.members_added;
        self.members_removed += next.members_removed;
        self.members_unchanged += next.members_unchanged;
        self.members_rejected.extend(next.members_rejected);
        self.changed |= next.changed;
        self.addresses_skipped.extend(next.addresses_skipped);
        self.name_clash = next.name_clash.or(self.name_clash);
        self
    }
}

/// Retry classification at the directory boundary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureClass {
    /// Server down, busy (51), unavailable (52), timeout: retry later, same command.
    Transient,
    /// Constraint, syntax, missing parent, access, safety refusal: retrying will not help.
    Permanent,
    /// The writer will not write this group as it stands (an AD group with the cloud
    /// group's SID exists and may not be adopted): nothing was written; the planner
    /// skips the group with the reason until the cloud group or the settings change.
    Refused,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> GroupSpec {
        GroupSpec {
            object_id: "1f0e".into(),
            anchor: "Group_1f0e".into(),
            cn: "Sales".into(),
            parent_dn: "OU=G,DC=lab".into(),
            sam_account_name_candidates: vec!["Sales".into(), "Sales_1f0e".into()],
            group_type: GroupType::UniversalSecurity,
            display_name: "Sales".into(),
            description: None,
            mail: None,
            on_premises_sid: None,
        }
    }

    #[test]
    fn the_fingerprint_is_stable_and_sees_every_field() {
        // Pinned (computed independently too): a change of this value means every
        // written group is sent again after an upgrade.
        assert_eq!(spec().fingerprint(), spec().fingerprint());
        assert_eq!(format!("{:016x}", spec().fingerprint()), format!("{:016x}", 0x9792_ef47_7146_f141u64));
        let changes: [fn(&mut GroupSpec); 7] = [
            |s| s.cn = "Sales2".into(),
            |s| s.parent_dn = "OU=H,DC=lab".into(),
            |s| s.sam_account_name_candidates.truncate(1),
            |s| s.group_type = GroupType::UniversalDistribution,
            |s| s.display_name = "sales".into(),
            |s| s.description = Some(String::new()),
            |s| s.mail = Some(MailAttributes::default()),
        ];
        for change in changes {
            let mut changed = spec();
            change(&mut changed);
            assert_ne!(changed.fingerprint(), spec().fingerprint(), "{changed:?}");
        }
        // Framing: moving text between adjacent fields changes the fingerprint.
        let mut shifted = spec();
        shifted.cn = "Sale".into();
        shifted.parent_dn = "sOU=G,DC=lab".into();
        assert_ne!(shifted.fingerprint(), spec().fingerprint());
    }

    #[test]
    fn command_kinds_read_back_from_their_spelling() {
        for kind in CommandKind::ALL {
            assert_eq!(kind.as_str().parse::<CommandKind>(), Ok(kind));
        }
        assert!("rename".parse::<CommandKind>().is_err());
    }
}
