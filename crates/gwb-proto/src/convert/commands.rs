//! Writeback commands and their outcomes: the domain vocabulary of `gwb_core::command`
//! ↔ the wire messages of `gwb.commands.v1`, both directions.
//!
//! Encoding is total: every domain value has a wire form. Decoding refuses what cannot
//! be applied safely, before it reaches the directory: an anchor that is not the
//! group's, a missing action, an unknown group type, an upsert without a name, and any
//! member value that is not a well-formed SID or GUID (a hostile value would otherwise
//! end up inside a `<SID=…>` member value).

use gwb_core::command::{
    AppliedGroup, ApplyReport, CommandKind, FailureClass, GroupSpec, GroupType, MailAttributes, MemberRef,
    SkippedAddress, WriteCommand,
};
use gwb_core::members::is_sid;
use gwb_core::naming;

use crate::commands::v1 as cmd;
use crate::control::v1 as control;

/// Why a wire command (or outcome) has no domain meaning.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("anchor {anchor:?} does not match group {group_id}")]
    AnchorMismatch { anchor: String, group_id: String },
    #[error("command has no action")]
    NoAction,
    #[error("unknown group type {0}")]
    UnknownGroupType(i32),
    #[error("upsert without cn or parent_dn")]
    MissingName,
    #[error("member reference {0} is neither a SID nor a GUID")]
    BadMember(String),
    #[error("on-premises SID {0:?} of a converted group is not a SID")]
    BadGroupSid(String),
}

// ----- group type ------------------------------------------------------------------

impl From<GroupType> for cmd::GroupType {
    fn from(group_type: GroupType) -> Self {
        match group_type {
            GroupType::UniversalSecurity => cmd::GroupType::UniversalSecurity,
            GroupType::UniversalDistribution => cmd::GroupType::UniversalDistribution,
            GroupType::UniversalMailEnabledSecurity => cmd::GroupType::UniversalMailEnabledSecurity,
        }
    }
}

/// The domain group type of a wire `group_type` field (an open enum: any `i32`).
pub fn group_type_from_wire(value: i32) -> Result<GroupType, CommandError> {
    match cmd::GroupType::try_from(value) {
        Ok(cmd::GroupType::UniversalSecurity) => Ok(GroupType::UniversalSecurity),
        Ok(cmd::GroupType::UniversalDistribution) => Ok(GroupType::UniversalDistribution),
        Ok(cmd::GroupType::UniversalMailEnabledSecurity) => Ok(GroupType::UniversalMailEnabledSecurity),
        Ok(cmd::GroupType::Unspecified) | Err(_) => Err(CommandError::UnknownGroupType(value)),
    }
}

// ----- group spec ------------------------------------------------------------------

impl From<&MailAttributes> for cmd::MailAttributes {
    fn from(mail: &MailAttributes) -> Self {
        cmd::MailAttributes {
            mail: mail.mail.clone(),
            mail_nickname: mail.mail_nickname.clone(),
            proxy_addresses: mail.proxy_addresses.clone(),
        }
    }
}

impl From<&cmd::MailAttributes> for MailAttributes {
    fn from(mail: &cmd::MailAttributes) -> Self {
        MailAttributes {
            mail: mail.mail.clone(),
            mail_nickname: mail.mail_nickname.clone(),
            proxy_addresses: mail.proxy_addresses.clone(),
        }
    }
}

/// The wire spec carries no object id or anchor: the command around it does.
impl From<&GroupSpec> for cmd::GroupSpec {
    fn from(spec: &GroupSpec) -> Self {
        cmd::GroupSpec {
            cn: spec.cn.clone(),
            parent_dn: spec.parent_dn.clone(),
            sam_account_name_candidates: spec.sam_account_name_candidates.clone(),
            group_type: cmd::GroupType::from(spec.group_type) as i32,
            display_name: spec.display_name.clone(),
            description: spec.description.clone(),
            mail: spec.mail.as_ref().map(cmd::MailAttributes::from),
            on_premises_sid: spec.on_premises_sid.clone(),
        }
    }
}

/// The domain spec of group `group_id` (its cloud objectId) from a wire spec.
pub fn group_spec_from_wire(group_id: &str, spec: &cmd::GroupSpec) -> Result<GroupSpec, CommandError> {
    let group_type = group_type_from_wire(spec.group_type)?;
    if spec.cn.trim().is_empty() || spec.parent_dn.trim().is_empty() {
        return Err(CommandError::MissingName);
    }
    if let Some(sid) = spec.on_premises_sid.as_ref().filter(|sid| !is_sid(sid)) {
        return Err(CommandError::BadGroupSid(sid.clone()));
    }
    Ok(GroupSpec {
        object_id: group_id.to_ascii_lowercase(),
        anchor: naming::anchor(group_id),
        cn: spec.cn.clone(),
        parent_dn: spec.parent_dn.clone(),
        sam_account_name_candidates: spec.sam_account_name_candidates.clone(),
        group_type,
        display_name: spec.display_name.clone(),
        description: spec.description.clone(),
        mail: spec.mail.as_ref().map(MailAttributes::from),
        on_premises_sid: spec.on_premises_sid.clone(),
    })
}

// ----- member values ---------------------------------------------------------------

impl From<&MemberRef> for cmd::MemberRef {
    fn from(reference: &MemberRef) -> Self {
        let reference = match reference {
            MemberRef::Sid(sid) => cmd::member_ref::Reference::Sid(sid.clone()),
            MemberRef::Guid(guid) => cmd::member_ref::Reference::Guid(guid.clone()),
        };
        cmd::MemberRef { reference: Some(reference) }
    }
}

/// Only a well-formed SID or GUID becomes a member value; GUIDs are lower-cased, the
/// form the planner keys them by.
impl TryFrom<&cmd::MemberRef> for MemberRef {
    type Error = CommandError;

    fn try_from(reference: &cmd::MemberRef) -> Result<Self, CommandError> {
        match reference.reference.as_ref() {
            Some(cmd::member_ref::Reference::Sid(sid)) if is_sid(sid) => Ok(MemberRef::Sid(sid.clone())),
            Some(cmd::member_ref::Reference::Guid(guid)) if is_guid(guid) => {
                Ok(MemberRef::Guid(guid.to_ascii_lowercase()))
            }
            Some(cmd::member_ref::Reference::Sid(sid)) => Err(CommandError::BadMember(format!("sid {sid:?}"))),
            Some(cmd::member_ref::Reference::Guid(guid)) => Err(CommandError::BadMember(format!("guid {guid:?}"))),
            None => Err(CommandError::BadMember("(empty)".into())),
        }
    }
}

impl From<&[MemberRef]> for cmd::MemberChange {
    fn from(members: &[MemberRef]) -> Self {
        cmd::MemberChange { members: members.iter().map(cmd::MemberRef::from).collect() }
    }
}

/// Every value of a member change, or the first one refused.
pub fn members_from_wire(change: &cmd::MemberChange) -> Result<Vec<MemberRef>, CommandError> {
    change.members.iter().map(MemberRef::try_from).collect()
}

/// `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` in hexadecimal digits, either case.
pub(crate) fn is_guid(text: &str) -> bool {
    text.len() == 36
        && text
            .bytes()
            .enumerate()
            .all(|(i, c)| if [8, 13, 18, 23].contains(&i) { c == b'-' } else { c.is_ascii_hexdigit() })
}

// ----- commands --------------------------------------------------------------------

/// What a domain command asks for, as the wire action.
impl From<&WriteCommand> for cmd::write_command::Action {
    fn from(command: &WriteCommand) -> Self {
        use cmd::write_command::Action;
        match command {
            WriteCommand::Upsert(spec) => Action::Upsert(spec.into()),
            WriteCommand::AddMembers { members, .. } => Action::AddMembers(members.as_slice().into()),
            WriteCommand::RemoveMembers { members, .. } => Action::RemoveMembers(members.as_slice().into()),
            WriteCommand::Delete { .. } => Action::Delete(cmd::Delete {}),
            WriteCommand::Retire { retired_ou, .. } => Action::Retire(cmd::Retire { retired_ou: retired_ou.clone() }),
            WriteCommand::Reanimate { object_guid, dn, .. } => {
                Action::Reanimate(cmd::Reanimate { object_guid: object_guid.clone(), dn: dn.clone() })
            }
        }
    }
}

/// The kind of a wire action, without decoding (or validating) the rest of it: for
/// readers that only count or label commands.
impl From<&cmd::write_command::Action> for CommandKind {
    fn from(action: &cmd::write_command::Action) -> Self {
        use cmd::write_command::Action;
        match action {
            Action::Upsert(_) => CommandKind::Upsert,
            Action::AddMembers(_) => CommandKind::AddMembers,
            Action::RemoveMembers(_) => CommandKind::RemoveMembers,
            Action::Delete(_) => CommandKind::Delete,
            Action::Retire(_) => CommandKind::Retire,
            Action::Reanimate(_) => CommandKind::Reanimate,
        }
    }
}

/// The wire fields of a command that the domain command does not carry: who planned
/// it, when and why, and its place in the group's order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Envelope {
    pub command_id: String,
    /// Cloud objectId of the group.
    pub group_id: String,
    /// Per-group sequence number, increasing.
    pub sequence: u64,
    pub cause: String,
    /// When the earliest Graph change behind the command was observed (0: operator).
    pub observed_at_ms: i64,
    pub planned_at_ms: i64,
}

/// The wire command for `command` of group `envelope.group_id`. The anchor sent is the
/// group's (`naming::anchor`), which is what [`command_from_wire`] requires.
pub fn command_to_wire(envelope: Envelope, command: &WriteCommand) -> cmd::WriteCommand {
    cmd::WriteCommand {
        anchor: naming::anchor(&envelope.group_id),
        command_id: envelope.command_id,
        group_id: envelope.group_id,
        sequence: envelope.sequence,
        cause: envelope.cause,
        observed_at_ms: envelope.observed_at_ms,
        planned_at_ms: envelope.planned_at_ms,
        action: Some(command.into()),
    }
}

/// The domain command a wire command stands for, or why it cannot be applied.
pub fn command_from_wire(command: &cmd::WriteCommand) -> Result<WriteCommand, CommandError> {
    use cmd::write_command::Action;
    let anchor = naming::anchor(&command.group_id);
    if command.anchor != anchor {
        return Err(CommandError::AnchorMismatch {
            anchor: command.anchor.clone(),
            group_id: command.group_id.clone(),
        });
    }
    Ok(match command.action.as_ref().ok_or(CommandError::NoAction)? {
        Action::Upsert(spec) => WriteCommand::Upsert(group_spec_from_wire(&command.group_id, spec)?),
        Action::AddMembers(change) => WriteCommand::AddMembers { anchor, members: members_from_wire(change)? },
        Action::RemoveMembers(change) => WriteCommand::RemoveMembers { anchor, members: members_from_wire(change)? },
        Action::Delete(_) => WriteCommand::Delete { anchor },
        Action::Retire(retire) => WriteCommand::Retire { anchor, retired_ou: retire.retired_ou.clone() },
        Action::Reanimate(reanimate) => {
            // The GUID goes into a `<GUID=…>` search base: anything else is refused here.
            if !is_guid(&reanimate.object_guid) {
                return Err(CommandError::BadMember(reanimate.object_guid.clone()));
            }
            if reanimate.dn.trim().is_empty() {
                return Err(CommandError::MissingName);
            }
            WriteCommand::Reanimate {
                anchor,
                object_guid: reanimate.object_guid.to_ascii_lowercase(),
                dn: reanimate.dn.clone(),
            }
        }
    })
}

impl TryFrom<&cmd::WriteCommand> for WriteCommand {
    type Error = CommandError;

    fn try_from(command: &cmd::WriteCommand) -> Result<Self, CommandError> {
        command_from_wire(command)
    }
}

// ----- outcomes --------------------------------------------------------------------

impl From<&AppliedGroup> for cmd::AppliedGroup {
    fn from(group: &AppliedGroup) -> Self {
        cmd::AppliedGroup {
            dn: group.dn.clone(),
            object_guid: group.object_guid.clone(),
            object_sid: group.object_sid.clone(),
            sam_account_name: group.sam_account_name.clone(),
        }
    }
}

impl From<&cmd::AppliedGroup> for AppliedGroup {
    fn from(group: &cmd::AppliedGroup) -> Self {
        AppliedGroup {
            dn: group.dn.clone(),
            object_guid: group.object_guid.clone(),
            object_sid: group.object_sid.clone(),
            sam_account_name: group.sam_account_name.clone(),
        }
    }
}

/// Marks `outcome` applied with what applying did. The command's own fields (ids,
/// sequence, times, kind) are the caller's.
pub fn fill_report(outcome: &mut cmd::Outcome, report: ApplyReport) {
    outcome.status = cmd::OutcomeStatus::Applied as i32;
    outcome.group = report.group.as_ref().map(cmd::AppliedGroup::from);
    outcome.members_added = report.members_added;
    outcome.members_removed = report.members_removed;
    outcome.members_unchanged = report.members_unchanged;
    outcome.members_rejected = report
        .members_rejected
        .into_iter()
        .map(|(member, reason)| cmd::RejectedMember { member: Some((&member).into()), reason })
        .collect();
    outcome.changed = report.changed;
    outcome.addresses_skipped = report
        .addresses_skipped
        .into_iter()
        .map(|skipped| cmd::SkippedAddress { address: skipped.address, holder_dn: skipped.holder_dn })
        .collect();
    outcome.name_clash = report.name_clash.unwrap_or_default();
}

fn addresses_skipped_from_wire(outcome: &cmd::Outcome) -> Vec<SkippedAddress> {
    outcome
        .addresses_skipped
        .iter()
        .map(|skipped| SkippedAddress { address: skipped.address.clone(), holder_dn: skipped.holder_dn.clone() })
        .collect()
}

/// Marks `outcome` failed permanently (or refused, for [`FailureClass::Refused`]), with
/// the LDAP result code when there is one.
pub fn fill_failure(outcome: &mut cmd::Outcome, class: FailureClass, ldap_code: Option<u32>, message: &str) {
    outcome.status = match class {
        FailureClass::Refused => cmd::OutcomeStatus::Refused,
        FailureClass::Transient | FailureClass::Permanent => cmd::OutcomeStatus::Failed,
    } as i32;
    outcome.ldap_code = ldap_code.unwrap_or(0);
    outcome.message = message.to_string();
}

/// What an outcome reports applying did (of a failed outcome: nothing). A refused
/// member value that is not a SID or GUID makes the whole report an error; a reader
/// that wants the other values takes `MemberRef::try_from` per `members_rejected` entry.
pub fn report_from_wire(outcome: &cmd::Outcome) -> Result<ApplyReport, CommandError> {
    let members_rejected = outcome
        .members_rejected
        .iter()
        .map(|rejected| {
            let member = rejected.member.as_ref().ok_or_else(|| CommandError::BadMember("(empty)".into()))?;
            Ok((MemberRef::try_from(member)?, rejected.reason.clone()))
        })
        .collect::<Result<_, CommandError>>()?;
    Ok(ApplyReport {
        group: outcome.group.as_ref().map(AppliedGroup::from),
        members_added: outcome.members_added,
        members_removed: outcome.members_removed,
        members_unchanged: outcome.members_unchanged,
        members_rejected,
        changed: outcome.changed,
        addresses_skipped: addresses_skipped_from_wire(outcome),
        name_clash: Some(outcome.name_clash.clone()).filter(|clash| !clash.is_empty()),
    })
}

/// [`report_from_wire`] for a reader that must not lose an outcome over one bad value
/// (the planner records every outcome it receives): the report keeps each refused
/// member value that is a well-formed SID or GUID, and each one that is not comes
/// back as an error, for the caller to log.
pub fn report_from_wire_lossy(outcome: &cmd::Outcome) -> (ApplyReport, Vec<CommandError>) {
    let mut refused = Vec::new();
    let members_rejected = outcome
        .members_rejected
        .iter()
        .filter_map(|rejected| {
            let member = rejected.member.as_ref().ok_or_else(|| CommandError::BadMember("(empty)".into()));
            match member.and_then(MemberRef::try_from) {
                Ok(member) => Some((member, rejected.reason.clone())),
                Err(error) => {
                    refused.push(error);
                    None
                }
            }
        })
        .collect();
    let report = ApplyReport {
        group: outcome.group.as_ref().map(AppliedGroup::from),
        members_added: outcome.members_added,
        members_removed: outcome.members_removed,
        members_unchanged: outcome.members_unchanged,
        members_rejected,
        changed: outcome.changed,
        addresses_skipped: addresses_skipped_from_wire(outcome),
        name_clash: Some(outcome.name_clash.clone()).filter(|clash| !clash.is_empty()),
    };
    (report, refused)
}

// ----- descriptions ----------------------------------------------------------------

/// One line describing a command for people (the planner's audit log, previews and
/// staging): an upsert's DN, type and first sAMAccountName candidate, up to five
/// values of a member change, a retire's OU. The group type is spelt as on the wire
/// (`GROUP_TYPE_…`), as the audit log has always shown it.
pub fn describe_command(command: &WriteCommand) -> String {
    /// More values than this are counted, not listed: a first write carries hundreds.
    const SHOWN: usize = 5;
    match command {
        WriteCommand::Upsert(spec) => format!(
            "{} ({}, sAMAccountName {})",
            gwb_core::escape::child_dn(&spec.cn, &spec.parent_dn),
            cmd::GroupType::from(spec.group_type).as_str_name(),
            spec.sam_account_name_candidates.first().map(String::as_str).unwrap_or("?")
        ),
        WriteCommand::AddMembers { members, .. } | WriteCommand::RemoveMembers { members, .. } => {
            let shown: Vec<String> = members.iter().take(SHOWN).map(MemberRef::ldap_value).collect();
            let more = members.len() - shown.len();
            if more > 0 {
                format!("{} values: {} … (+{more})", members.len(), shown.join(" "))
            } else {
                format!("{} values: {}", members.len(), shown.join(" "))
            }
        }
        WriteCommand::Delete { .. } => "delete the AD group".into(),
        WriteCommand::Retire { retired_ou, .. } => format!("move to {retired_ou}"),
        WriteCommand::Reanimate { object_guid, dn, .. } => format!("reanimate tombstone {object_guid} as {dn}"),
    }
}

// ----- writer status ---------------------------------------------------------------

/// The writer's answer to `GetWriterState` is its last status report; the pause reason
/// is not in the report and is the caller's to fill.
impl From<&cmd::WriterStatus> for control::WriterState {
    fn from(status: &cmd::WriterStatus) -> Self {
        control::WriterState {
            writer_id: status.writer_id.clone(),
            version: status.version.clone(),
            paused: status.paused,
            pause_reason: String::new(),
            directory_connected: status.directory_connected,
            detail: status.detail.clone(),
            has_exchange_schema: status.has_exchange_schema,
            has_external_directory_object_id: status.has_external_directory_object_id,
            supports_permissive_modify: status.supports_permissive_modify,
            missing_ous: status.missing_ous.clone(),
            dry_run: status.dry_run,
            unwritable_ous: status.unwritable_ous.clone(),
            exchange: status.exchange.as_ref().map(|e| e.description.clone()).unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GROUP: &str = "0D6A8E1C-AAAA-BBBB-CCCC-DDDDEEEEFFFF";
    const SID: &str = "S-1-5-21-1111-2222-3333-1104";
    const GUID: &str = "0d6a8e1c-1111-2222-3333-444455556666";

    fn spec() -> GroupSpec {
        GroupSpec {
            object_id: GROUP.to_ascii_lowercase(),
            anchor: naming::anchor(GROUP),
            cn: "Sales, EMEA".into(),
            parent_dn: "OU=Cloud Groups,DC=lab,DC=example".into(),
            sam_account_name_candidates: vec!["Sales-EMEA".into(), "Sales-EMEA-0d6a".into()],
            group_type: GroupType::UniversalMailEnabledSecurity,
            display_name: "Sales EMEA".into(),
            description: Some("all of sales".into()),
            mail: Some(MailAttributes {
                mail: Some("sales@lab.example".into()),
                mail_nickname: Some("sales".into()),
                proxy_addresses: vec!["SMTP:sales@lab.example".into(), "smtp:s@lab.example".into()],
            }),
            on_premises_sid: None,
        }
    }

    fn envelope() -> Envelope {
        Envelope {
            command_id: "c-1".into(),
            group_id: GROUP.into(),
            sequence: 7,
            cause: "cloud change".into(),
            observed_at_ms: 1_000,
            planned_at_ms: 2_000,
        }
    }

    fn command(action: cmd::write_command::Action) -> cmd::WriteCommand {
        cmd::WriteCommand {
            group_id: "ABC".into(),
            anchor: "Group_abc".into(),
            action: Some(action),
            ..Default::default()
        }
    }

    fn sid_value(sid: &str) -> cmd::MemberRef {
        cmd::MemberRef { reference: Some(cmd::member_ref::Reference::Sid(sid.into())) }
    }

    fn guid_value(guid: &str) -> cmd::MemberRef {
        cmd::MemberRef { reference: Some(cmd::member_ref::Reference::Guid(guid.into())) }
    }

    #[test]
    fn every_command_survives_the_round_trip_through_the_wire() {
        let anchor = naming::anchor(GROUP);
        let members = vec![MemberRef::Sid(SID.into()), MemberRef::Guid(GUID.into())];
        for domain in [
            WriteCommand::Upsert(spec()),
            WriteCommand::Upsert(GroupSpec {
                group_type: GroupType::UniversalSecurity,
                description: None,
                mail: None,
                ..spec()
            }),
            WriteCommand::Upsert(GroupSpec { group_type: GroupType::UniversalDistribution, ..spec() }),
            WriteCommand::AddMembers { anchor: anchor.clone(), members: members.clone() },
            WriteCommand::RemoveMembers { anchor: anchor.clone(), members },
            WriteCommand::Delete { anchor: anchor.clone() },
            WriteCommand::Retire { anchor: anchor.clone(), retired_ou: "OU=Retired,DC=lab,DC=example".into() },
        ] {
            let wire = command_to_wire(envelope(), &domain);
            assert_eq!(CommandKind::from(wire.action.as_ref().unwrap()), domain.command_kind());
            assert_eq!(wire.anchor, anchor);
            assert_eq!((wire.command_id.as_str(), wire.sequence, wire.observed_at_ms), ("c-1", 7, 1_000));
            assert_eq!(WriteCommand::try_from(&wire), Ok(domain.clone()), "{}", domain.kind());
        }
    }

    #[test]
    fn a_wire_spec_survives_the_round_trip_through_the_domain() {
        let wire = cmd::GroupSpec::from(&spec());
        assert_eq!(wire.group_type, cmd::GroupType::UniversalMailEnabledSecurity as i32);
        assert_eq!(cmd::GroupSpec::from(&group_spec_from_wire(GROUP, &wire).unwrap()), wire);
    }

    #[test]
    fn hostile_member_values_are_refused() {
        for bad in [
            sid_value("S-1-5-21>;<GUID=x"),
            sid_value("S-1-5"),
            sid_value(""),
            guid_value("0d6a8e1c-1111-2222-3333-44445555666)"),
            guid_value("0d6a8e1c-1111-2222-3333-4444555566667"),
            guid_value("0d6a8e1c_1111_2222_3333_444455556666"),
            cmd::MemberRef { reference: None },
        ] {
            let error = MemberRef::try_from(&bad);
            assert!(matches!(error, Err(CommandError::BadMember(_))), "{bad:?}: {error:?}");
            let change = cmd::MemberChange { members: vec![sid_value(SID), bad] };
            let refused = command_from_wire(&command(cmd::write_command::Action::AddMembers(change)));
            assert!(matches!(refused, Err(CommandError::BadMember(_))));
        }
        let good = cmd::MemberChange { members: vec![guid_value("0D6A8E1C-1111-2222-3333-444455556666")] };
        assert_eq!(
            command_from_wire(&command(cmd::write_command::Action::AddMembers(good))),
            Ok(WriteCommand::AddMembers { anchor: "Group_abc".into(), members: vec![MemberRef::Guid(GUID.into())] })
        );
    }

    #[test]
    fn mismatched_anchor_missing_action_unknown_type_and_missing_name_are_refused() {
        let mut c = command(cmd::write_command::Action::Delete(cmd::Delete {}));
        c.anchor = "Group_other".into();
        assert!(matches!(command_from_wire(&c), Err(CommandError::AnchorMismatch { .. })));
        c.anchor = "Group_abc".into();
        c.action = None;
        assert_eq!(command_from_wire(&c), Err(CommandError::NoAction));
        let wire = cmd::GroupSpec::from(&spec());
        for group_type in [0, 99] {
            let upsert = command(cmd::write_command::Action::Upsert(cmd::GroupSpec { group_type, ..wire.clone() }));
            assert_eq!(command_from_wire(&upsert), Err(CommandError::UnknownGroupType(group_type)));
        }
        let unnamed = command(cmd::write_command::Action::Upsert(cmd::GroupSpec { cn: " ".into(), ..wire.clone() }));
        assert_eq!(command_from_wire(&unnamed), Err(CommandError::MissingName));
        let unplaced = command(cmd::write_command::Action::Upsert(cmd::GroupSpec { parent_dn: String::new(), ..wire }));
        assert_eq!(command_from_wire(&unplaced), Err(CommandError::MissingName));
    }

    #[test]
    fn an_upsert_is_addressed_by_the_lower_cased_group_id() {
        let wire = command_to_wire(envelope(), &WriteCommand::Upsert(spec()));
        let Ok(WriteCommand::Upsert(decoded)) = command_from_wire(&wire) else { panic!("not an upsert") };
        assert_eq!(decoded.object_id, GROUP.to_ascii_lowercase());
        assert_eq!(decoded.anchor, format!("Group_{}", GROUP.to_ascii_lowercase()));
    }

    #[test]
    fn a_report_survives_the_round_trip_through_an_outcome() {
        let report = ApplyReport {
            group: Some(AppliedGroup {
                dn: "CN=Sales,OU=Cloud Groups,DC=lab,DC=example".into(),
                object_guid: GUID.into(),
                object_sid: SID.into(),
                sam_account_name: "Sales".into(),
            }),
            members_added: 3,
            members_removed: 2,
            members_unchanged: 1,
            members_rejected: vec![(MemberRef::Sid(SID.into()), "no such object".into())],
            changed: true,
            addresses_skipped: vec![SkippedAddress {
                address: "smtp:sales@contoso.com".into(),
                holder_dn: "CN=Sales DL,OU=Mail,DC=lab,DC=example".into(),
            }],
            name_clash: Some("CN=Sales,OU=Cloud Groups,… is held by another object; written as CN=Sales_1f0e,…".into()),
        };
        let mut outcome = cmd::Outcome { command_id: "c-1".into(), kind: "upsert".into(), ..Default::default() };
        fill_report(&mut outcome, report.clone());
        assert_eq!(outcome.status, cmd::OutcomeStatus::Applied as i32);
        assert_eq!((outcome.command_id.as_str(), outcome.kind.as_str()), ("c-1", "upsert"));
        assert_eq!(report_from_wire(&outcome), Ok(report));
        outcome.members_rejected.push(cmd::RejectedMember { member: Some(sid_value("S-1-x")), reason: "?".into() });
        assert!(matches!(report_from_wire(&outcome), Err(CommandError::BadMember(_))));
    }

    #[test]
    fn a_lossy_report_keeps_the_good_refusals_and_returns_the_bad_ones() {
        let mut outcome = cmd::Outcome { members_added: 2, changed: true, ..Default::default() };
        outcome.members_rejected = vec![
            cmd::RejectedMember { member: Some(sid_value(SID)), reason: "no such object".into() },
            cmd::RejectedMember { member: Some(sid_value("S-1-5>")), reason: "?".into() },
            cmd::RejectedMember { member: None, reason: "?".into() },
            cmd::RejectedMember { member: Some(guid_value(&GUID.to_ascii_uppercase())), reason: "busy".into() },
        ];
        let (report, refused) = report_from_wire_lossy(&outcome);
        assert_eq!(
            report.members_rejected,
            vec![
                (MemberRef::Sid(SID.into()), "no such object".to_string()),
                (MemberRef::Guid(GUID.into()), "busy".to_string())
            ]
        );
        assert_eq!((report.members_added, report.changed), (2, true));
        assert_eq!(refused.len(), 2);
        assert!(refused.iter().all(|error| matches!(error, CommandError::BadMember(_))), "{refused:?}");
        assert!(report_from_wire(&outcome).is_err(), "the strict reader refuses the whole report");
    }

    #[test]
    fn every_command_is_described_in_one_line() {
        let anchor = naming::anchor(GROUP);
        assert_eq!(
            describe_command(&WriteCommand::Upsert(spec())),
            "CN=Sales\\, EMEA,OU=Cloud Groups,DC=lab,DC=example \
             (GROUP_TYPE_UNIVERSAL_MAIL_ENABLED_SECURITY, sAMAccountName Sales-EMEA)"
        );
        let unnamed =
            GroupSpec { sam_account_name_candidates: Vec::new(), group_type: GroupType::UniversalSecurity, ..spec() };
        assert!(
            describe_command(&WriteCommand::Upsert(unnamed))
                .ends_with("(GROUP_TYPE_UNIVERSAL_SECURITY, sAMAccountName ?)")
        );
        let two = vec![MemberRef::Sid(SID.into()), MemberRef::Guid(GUID.into())];
        assert_eq!(
            describe_command(&WriteCommand::AddMembers { anchor: anchor.clone(), members: two }),
            format!("2 values: <SID={SID}> <GUID={GUID}>")
        );
        let seven: Vec<MemberRef> = (0..7).map(|n| MemberRef::Sid(format!("S-1-5-21-1-2-3-{n}"))).collect();
        let described = describe_command(&WriteCommand::RemoveMembers { anchor: anchor.clone(), members: seven });
        assert_eq!(
            described,
            "7 values: <SID=S-1-5-21-1-2-3-0> <SID=S-1-5-21-1-2-3-1> <SID=S-1-5-21-1-2-3-2> \
             <SID=S-1-5-21-1-2-3-3> <SID=S-1-5-21-1-2-3-4> … (+2)"
        );
        assert_eq!(describe_command(&WriteCommand::Delete { anchor: anchor.clone() }), "delete the AD group");
        let retire = WriteCommand::Retire { anchor, retired_ou: "OU=Retired,DC=lab".into() };
        assert_eq!(describe_command(&retire), "move to OU=Retired,DC=lab");
    }

    #[test]
    fn a_failure_carries_the_ldap_code_or_zero() {
        let mut outcome = cmd::Outcome::default();
        fill_failure(&mut outcome, FailureClass::Permanent, Some(53), "unwilling to perform");
        assert_eq!(outcome.status, cmd::OutcomeStatus::Failed as i32);
        assert_eq!((outcome.ldap_code, outcome.message.as_str()), (53, "unwilling to perform"));
        fill_failure(&mut outcome, FailureClass::Permanent, None, "refused: outside the managed OUs");
        assert_eq!(outcome.ldap_code, 0);
    }

    #[test]
    fn the_writer_state_is_its_last_status() {
        let status = cmd::WriterStatus {
            writer_id: "w1".into(),
            version: "1.2.3".into(),
            directory_connected: true,
            detail: "connected to dc1".into(),
            has_exchange_schema: true,
            has_external_directory_object_id: true,
            supports_permissive_modify: true,
            missing_ous: vec!["OU=Gone".into()],
            at_ms: 5,
            paused: true,
            dry_run: true,
            unwritable_ous: vec!["OU=Locked".into()],
            exchange: Some(cmd::ExchangeStatus {
                description: "Exchange 2019 CU10+ schema only, no organisation".into(),
                ..Default::default()
            }),
        };
        let state = control::WriterState::from(&status);
        assert_eq!(
            state,
            control::WriterState {
                writer_id: "w1".into(),
                version: "1.2.3".into(),
                paused: true,
                pause_reason: String::new(),
                directory_connected: true,
                detail: "connected to dc1".into(),
                has_exchange_schema: true,
                has_external_directory_object_id: true,
                supports_permissive_modify: true,
                missing_ous: vec!["OU=Gone".into()],
                dry_run: true,
                unwritable_ous: vec!["OU=Locked".into()],
                exchange: "Exchange 2019 CU10+ schema only, no organisation".into(),
            }
        );
    }
}
