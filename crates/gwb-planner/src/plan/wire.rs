//! The planner's translations between the command vocabulary of `gwb_core` and the
//! `commands.v1` protobuf messages, and the one-line descriptions of commands shown
//! in the audit log and previews.

use gwb_core::command::{CommandKind, GroupSpec, GroupType, MemberRef};
use gwb_proto::commands::v1 as cmd;

pub fn action_kind(action: &cmd::write_command::Action) -> CommandKind {
    use cmd::write_command::Action;
    match action {
        Action::Upsert(_) => CommandKind::Upsert,
        Action::AddMembers(_) => CommandKind::AddMembers,
        Action::RemoveMembers(_) => CommandKind::RemoveMembers,
        Action::Delete(_) => CommandKind::Delete,
        Action::Retire(_) => CommandKind::Retire,
    }
}

/// One line describing a command, for the audit log and previews.
pub fn describe_action(action: &cmd::write_command::Action) -> String {
    use cmd::write_command::Action;
    let members = |change: &cmd::MemberChange| {
        let shown: Vec<String> =
            change.members.iter().take(5).filter_map(member_from_message).map(|m| m.ldap_value()).collect();
        let more = change.members.len().saturating_sub(shown.len());
        if more > 0 {
            format!("{} values: {} … (+{more})", change.members.len(), shown.join(" "))
        } else {
            format!("{} values: {}", change.members.len(), shown.join(" "))
        }
    };
    match action {
        Action::Upsert(spec) => format!(
            "{} ({}, sAMAccountName {})",
            gwb_core::escape::child_dn(&spec.cn, &spec.parent_dn),
            cmd::GroupType::try_from(spec.group_type).map(|t| t.as_str_name()).unwrap_or("?"),
            spec.sam_account_name_candidates.first().map(String::as_str).unwrap_or("?")
        ),
        Action::AddMembers(change) | Action::RemoveMembers(change) => members(change),
        Action::Delete(_) => "delete the AD group".into(),
        Action::Retire(retire) => format!("move to {}", retire.retired_ou),
    }
}

pub fn member_message(reference: &MemberRef) -> cmd::MemberRef {
    let reference = match reference {
        MemberRef::Sid(sid) => cmd::member_ref::Reference::Sid(sid.clone()),
        MemberRef::Guid(guid) => cmd::member_ref::Reference::Guid(guid.clone()),
    };
    cmd::MemberRef { reference: Some(reference) }
}

pub fn member_from_message(reference: &cmd::MemberRef) -> Option<MemberRef> {
    match reference.reference.as_ref()? {
        cmd::member_ref::Reference::Sid(sid) => Some(MemberRef::Sid(sid.clone())),
        cmd::member_ref::Reference::Guid(guid) => Some(MemberRef::Guid(guid.clone())),
    }
}

pub fn spec_message(spec: &GroupSpec) -> cmd::GroupSpec {
    let group_type = match spec.group_type {
        GroupType::UniversalSecurity => cmd::GroupType::UniversalSecurity,
        GroupType::UniversalDistribution => cmd::GroupType::UniversalDistribution,
        GroupType::UniversalMailEnabledSecurity => cmd::GroupType::UniversalMailEnabledSecurity,
    };
    cmd::GroupSpec {
        cn: spec.cn.clone(),
        parent_dn: spec.parent_dn.clone(),
        sam_account_name_candidates: spec.sam_account_name_candidates.clone(),
        group_type: group_type as i32,
        display_name: spec.display_name.clone(),
        description: spec.description.clone(),
        mail: spec.mail.as_ref().map(|mail| cmd::MailAttributes {
            mail: mail.mail.clone(),
            mail_nickname: mail.mail_nickname.clone(),
            proxy_addresses: mail.proxy_addresses.clone(),
        }),
    }
}

/// The event's member kind in the domain's terms.
pub fn member_kind(kind: i32) -> gwb_core::members::MemberKind {
    use gwb_core::members::MemberKind;
    use gwb_proto::events::v1 as ev;
    match ev::MemberKind::try_from(kind).unwrap_or(ev::MemberKind::Other) {
        ev::MemberKind::User => MemberKind::User,
        ev::MemberKind::Group => MemberKind::Group,
        ev::MemberKind::Device => MemberKind::Device,
        ev::MemberKind::OrgContact => MemberKind::OrgContact,
        ev::MemberKind::ServicePrincipal => MemberKind::ServicePrincipal,
        ev::MemberKind::Application => MemberKind::Application,
        ev::MemberKind::Other | ev::MemberKind::Unspecified => MemberKind::Other,
    }
}
