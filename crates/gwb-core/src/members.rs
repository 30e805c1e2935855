//! Member resolution: which cloud members can be written to AD, and how they are
//! referenced (DESIGN.md §3 "Members").

use crate::command::MemberRef;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MemberKind {
    User,
    Group,
    Device,
    OrgContact,
    ServicePrincipal,
    Application,
    Other,
}

impl MemberKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MemberKind::User => "user",
            MemberKind::Group => "group",
            MemberKind::Device => "device",
            MemberKind::OrgContact => "orgContact",
            MemberKind::ServicePrincipal => "servicePrincipal",
            MemberKind::Application => "application",
            MemberKind::Other => "other",
        }
    }

    pub fn from_str_lossy(kind: &str) -> Self {
        [
            MemberKind::User,
            MemberKind::Group,
            MemberKind::Device,
            MemberKind::OrgContact,
            MemberKind::ServicePrincipal,
            MemberKind::Application,
        ]
        .into_iter()
        .find(|k| k.as_str() == kind)
        .unwrap_or(MemberKind::Other)
    }
}

/// What the planner knows about a user's on-premises anchor.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UserAnchor {
    pub on_premises_sid: Option<String>,
    pub on_premises_sync_enabled: Option<bool>,
    pub deleted: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    Write(MemberRef),
    Skip(String),
}

/// A user member: written by its AD SID.
///
/// The SID decides, not `onPremisesSyncEnabled`: that flag turns `null` when the
/// user's source of authority moves to the cloud and `false` when directory sync is
/// switched off, while the AD account (and its access) still exists. Stripping such a
/// user from every group would cut their access for no reason. A SID whose account is
/// gone is no member either way: the writer writes only SIDs an object of the domain
/// carries.
pub fn resolve_user(user: Option<&UserAnchor>) -> Resolution {
    let Some(user) = user else {
        return Resolution::Skip("user not seen in users/delta yet".into());
    };
    if user.deleted {
        return Resolution::Skip("user deleted in the cloud".into());
    }
    match &user.on_premises_sid {
        Some(sid) if !is_sid(sid) => Resolution::Skip(format!("onPremisesSecurityIdentifier {sid:?} is not a SID")),
        Some(sid) if is_privileged_sid(sid) => {
            Resolution::Skip(format!("{sid} is a well-known or privileged SID; it is never written as a member"))
        }
        Some(sid) => Resolution::Write(MemberRef::Sid(sid.clone())),
        None => Resolution::Skip("cloud-only user (no onPremisesSecurityIdentifier)".into()),
    }
}

/// A nested group member: written by objectGUID once we have written it back.
pub fn resolve_group(written_guid: Option<&str>) -> Resolution {
    match written_guid {
        Some(guid) => Resolution::Write(MemberRef::Guid(guid.to_ascii_lowercase())),
        None => Resolution::Skip("nested group is not written back".into()),
    }
}

pub fn resolve_other(kind: MemberKind) -> Resolution {
    Resolution::Skip(format!("{} members are not written back", kind.as_str()))
}

/// Anything but an ordinary domain account (`S-1-5-21-a-b-c-RID` with RID ≥ 1000):
/// builtin groups (`S-1-5-32-…`), well-known SIDs and the domain's privileged RIDs
/// (Administrator 500, Domain Admins 512, krbtgt 502…).
pub fn is_privileged_sid(sid: &str) -> bool {
    let Some(rest) = sid.strip_prefix("S-1-5-21-") else { return true };
    let parts: Vec<&str> = rest.split('-').collect();
    parts.len() < 4 || parts.last().and_then(|rid| rid.parse::<u64>().ok()).is_none_or(|rid| rid < 1000)
}

/// `S-1-<authority>-<sub>…`, digits only: anything else would be refused by AD or,
/// worse, be interpreted as something else inside `<SID=…>`.
pub fn is_sid(text: &str) -> bool {
    let mut parts = text.split('-');
    parts.next() == Some("S") && parts.next() == Some("1") && {
        let rest: Vec<&str> = parts.collect();
        rest.len() >= 2
            && rest.len() <= 16
            && rest.iter().all(|p| !p.is_empty() && p.len() <= 10 && p.bytes().all(|b| b.is_ascii_digit()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synced_user_resolves_by_sid() {
        let user = UserAnchor {
            on_premises_sid: Some("S-1-5-21-1-2-3-1105".into()),
            on_premises_sync_enabled: Some(true),
            deleted: false,
        };
        assert_eq!(resolve_user(Some(&user)), Resolution::Write(MemberRef::Sid("S-1-5-21-1-2-3-1105".into())));
    }

    #[test]
    fn unresolvable_members_have_reasons() {
        assert!(matches!(resolve_user(None), Resolution::Skip(r) if r.contains("not seen")));
        let cloud = UserAnchor::default();
        assert!(matches!(resolve_user(Some(&cloud)), Resolution::Skip(r) if r.contains("cloud-only")));
        // Sync switched off (false) or the source of authority moved to the cloud
        // (null): the AD account still exists, so the user stays a member.
        for sync in [Some(false), None] {
            let converted = UserAnchor {
                on_premises_sid: Some("S-1-5-21-1-2-3-1104".into()),
                on_premises_sync_enabled: sync,
                deleted: false,
            };
            assert_eq!(
                resolve_user(Some(&converted)),
                Resolution::Write(MemberRef::Sid("S-1-5-21-1-2-3-1104".into())),
                "{sync:?}"
            );
        }
        let hostile = UserAnchor {
            on_premises_sid: Some("S-1-5-21>;<GUID=x".into()),
            on_premises_sync_enabled: Some(true),
            deleted: false,
        };
        assert!(matches!(resolve_user(Some(&hostile)), Resolution::Skip(r) if r.contains("not a SID")));
        assert!(matches!(resolve_group(None), Resolution::Skip(_)));
        for privileged in ["S-1-5-32-544", "S-1-5-21-1-2-3-512", "S-1-5-21-1-2-3-500", "S-1-5-18", "S-1-1-0"] {
            let user = UserAnchor {
                on_premises_sid: Some(privileged.into()),
                on_premises_sync_enabled: Some(true),
                deleted: false,
            };
            assert!(
                matches!(resolve_user(Some(&user)), Resolution::Skip(r) if r.contains("privileged")),
                "{privileged}"
            );
        }
        assert!(matches!(resolve_other(MemberKind::Device), Resolution::Skip(r) if r.starts_with("device")));
    }
}
