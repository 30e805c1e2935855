//! Wire command → domain command, rejecting what cannot be applied.

use gwb_core::command::{GroupSpec, GroupType, MailAttributes, MemberRef, WriteCommand};
use gwb_core::members::is_sid;
use gwb_core::naming;
use gwb_proto::commands::v1 as cmd;

pub fn to_domain(command: &cmd::WriteCommand) -> Result<WriteCommand, String> {
    let anchor = naming::anchor(&command.group_id);
    if command.anchor != anchor {
        return Err(format!("anchor {:?} does not match group {}", command.anchor, command.group_id));
    }
    let action = command.action.as_ref().ok_or("command has no action")?;
    Ok(match action {
        cmd::write_command::Action::Upsert(spec) => {
            let group_type = match cmd::GroupType::try_from(spec.group_type) {
                Ok(cmd::GroupType::UniversalSecurity) => GroupType::UniversalSecurity,
                Ok(cmd::GroupType::UniversalDistribution) => GroupType::UniversalDistribution,
                Ok(cmd::GroupType::UniversalMailEnabledSecurity) => GroupType::UniversalMailEnabledSecurity,
                _ => return Err(format!("unknown group type {}", spec.group_type)),
            };
            if spec.cn.trim().is_empty() || spec.parent_dn.trim().is_empty() {
                return Err("upsert without cn or parent_dn".into());
            }
            WriteCommand::Upsert(GroupSpec {
                object_id: command.group_id.to_ascii_lowercase(),
                anchor,
                cn: spec.cn.clone(),
                parent_dn: spec.parent_dn.clone(),
                sam_account_name_candidates: spec.sam_account_name_candidates.clone(),
                group_type,
                display_name: spec.display_name.clone(),
                description: spec.description.clone(),
                mail: spec.mail.as_ref().map(|m| MailAttributes {
                    mail: m.mail.clone(),
                    mail_nickname: m.mail_nickname.clone(),
                    proxy_addresses: m.proxy_addresses.clone(),
                }),
            })
        }
        cmd::write_command::Action::AddMembers(change) => {
            WriteCommand::AddMembers { anchor, members: members(change)? }
        }
        cmd::write_command::Action::RemoveMembers(change) => {
            WriteCommand::RemoveMembers { anchor, members: members(change)? }
        }
        cmd::write_command::Action::Delete(_) => WriteCommand::Delete { anchor },
        cmd::write_command::Action::Retire(retire) => {
            WriteCommand::Retire { anchor, retired_ou: retire.retired_ou.clone() }
        }
    })
}

fn members(change: &cmd::MemberChange) -> Result<Vec<MemberRef>, String> {
    change
        .members
        .iter()
        .map(|member| match member.reference.as_ref() {
            Some(cmd::member_ref::Reference::Sid(sid)) if is_sid(sid) => Ok(MemberRef::Sid(sid.clone())),
            Some(cmd::member_ref::Reference::Guid(guid)) if is_guid(guid) => {
                Ok(MemberRef::Guid(guid.to_ascii_lowercase()))
            }
            other => Err(format!("member reference {other:?} is neither a SID nor a GUID")),
        })
        .collect()
}

fn is_guid(text: &str) -> bool {
    text.len() == 36
        && text
            .chars()
            .enumerate()
            .all(|(i, c)| if [8, 13, 18, 23].contains(&i) { c == '-' } else { c.is_ascii_hexdigit() })
}

pub fn member_message(reference: &MemberRef) -> cmd::MemberRef {
    let reference = match reference {
        MemberRef::Sid(sid) => cmd::member_ref::Reference::Sid(sid.clone()),
        MemberRef::Guid(guid) => cmd::member_ref::Reference::Guid(guid.clone()),
    };
    cmd::MemberRef { reference: Some(reference) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command(action: cmd::write_command::Action) -> cmd::WriteCommand {
        cmd::WriteCommand {
            group_id: "ABC".into(),
            anchor: "Group_abc".into(),
            action: Some(action),
            ..Default::default()
        }
    }

    #[test]
    fn hostile_member_values_are_refused() {
        let bad = cmd::MemberChange { members: vec![member_message(&MemberRef::Sid("S-1-5-21>;<GUID=x".into()))] };
        assert!(to_domain(&command(cmd::write_command::Action::AddMembers(bad))).is_err());
        let good = cmd::MemberChange {
            members: vec![member_message(&MemberRef::Guid("0D6A8E1C-1111-2222-3333-444455556666".into()))],
        };
        assert!(to_domain(&command(cmd::write_command::Action::AddMembers(good))).is_ok());
    }

    #[test]
    fn mismatched_anchor_and_missing_action_are_refused() {
        let mut c = command(cmd::write_command::Action::Delete(cmd::Delete {}));
        c.anchor = "Group_other".into();
        assert!(to_domain(&c).is_err());
        c.anchor = "Group_abc".into();
        c.action = None;
        assert!(to_domain(&c).is_err());
    }
}
