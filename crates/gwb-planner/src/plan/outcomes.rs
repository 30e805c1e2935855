//! The writer's outcomes: what AD now holds, failures, refused member values.

use gwb_core::command::{AppliedGroup, CommandKind};
use gwb_core::members::MemberKind;
use gwb_core::state::WritebackState;
use gwb_proto::commands::v1 as cmd;

use super::{EngineError, Plan, wire};
use crate::store::{AuditEntry, AuditResult, StoreTx};

impl<T: StoreTx> Plan<'_, T> {
    pub(super) fn outcome(&mut self, outcome: &cmd::Outcome) -> Result<(), EngineError> {
        self.tx.command_finished(&outcome.command_id)?;
        let group_id = outcome.group_id.to_ascii_lowercase();
        let Some(row) = self.tx.writeback(&group_id)? else { return Ok(()) };
        let current = row.state;
        let sequence = i64::try_from(outcome.sequence).unwrap_or(i64::MAX);
        if sequence < row.last_outcome_sequence {
            return Ok(());
        }
        self.tx.set_last_outcome_sequence(&group_id, sequence)?;
        let status = cmd::OutcomeStatus::try_from(outcome.status).unwrap_or(cmd::OutcomeStatus::Unspecified);
        let (result, detail) = match status {
            cmd::OutcomeStatus::Failed => {
                (AuditResult::Failed, format!("LDAP {}: {}", outcome.ldap_code, outcome.message))
            }
            cmd::OutcomeStatus::DryRun => (AuditResult::DryRun, String::new()),
            _ => (
                AuditResult::Applied,
                format!(
                    "{}changed; members +{} -{} ={} refused {}",
                    if outcome.changed { "" } else { "un" },
                    outcome.members_added,
                    outcome.members_removed,
                    outcome.members_unchanged,
                    outcome.members_rejected.len()
                ),
            ),
        };
        self.tx.audit(&AuditEntry {
            at_ms: self.cause.now_ms,
            group_id: &group_id,
            command_id: &outcome.command_id,
            kind: &outcome.kind,
            result,
            cause: &self.cause.text,
            detail: &detail,
        })?;
        // An outcome of a kind this version does not know changes no state.
        let kind = outcome.kind.parse::<CommandKind>().ok();
        if status == cmd::OutcomeStatus::Failed {
            let message = format!("{} failed (LDAP {}): {}", outcome.kind, outcome.ldap_code, outcome.message);
            // The first failure is the cause; member commands failing after a failed
            // upsert ("no group carries anchor…") must not hide it.
            let keep_cause = current == WritebackState::Error && kind != Some(CommandKind::Upsert);
            self.tx.record_failure(&group_id, &message, keep_cause, self.cause.now_ms)?;
            return Ok(());
        }
        match kind {
            Some(CommandKind::Upsert | CommandKind::Retire) => {
                if let Some(group) = &outcome.group {
                    let applied = AppliedGroup {
                        dn: group.dn.clone(),
                        object_guid: group.object_guid.to_ascii_lowercase(),
                        object_sid: group.object_sid.clone(),
                        sam_account_name: group.sam_account_name.clone(),
                    };
                    self.tx.record_applied(&group_id, &applied, self.cause.now_ms)?;
                    if kind == Some(CommandKind::Upsert)
                        && matches!(current, WritebackState::Pending | WritebackState::Error)
                    {
                        self.tx.mark_written(&group_id)?;
                    }
                    if row.object_guid.as_deref() != Some(applied.object_guid.as_str()) {
                        // Groups that nest this one can now reference it by objectGUID.
                        self.member_changed(&group_id)?;
                    }
                }
            }
            Some(CommandKind::Delete) if current == WritebackState::Deleting => {
                self.tx.mark_deleted(&group_id, self.cause.now_ms)?;
            }
            _ => {}
        }
        for rejected in &outcome.members_rejected {
            let Some(reference) = rejected.member.as_ref().and_then(wire::member_from_message) else { continue };
            if let Some(member_id) = self.tx.planned_member_by_ref(&group_id, &reference)? {
                self.tx.clear_planned_member(&group_id, &member_id)?;
                let kind = self.tx.membership_kind(&group_id, &member_id)?.unwrap_or(MemberKind::User);
                self.tx.set_skipped_member(
                    &group_id,
                    &member_id,
                    kind.as_str(),
                    &format!("AD refused the member: {}", rejected.reason),
                )?;
            }
        }
        Ok(())
    }
}
