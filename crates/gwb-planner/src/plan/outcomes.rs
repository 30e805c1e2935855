//! The writer's outcomes: what AD now holds, failures, refused member values.

use gwb_core::command::CommandKind;
use gwb_core::members::MemberKind;
use gwb_core::state::WritebackState;
use gwb_proto::commands::v1 as cmd;
use gwb_proto::convert::commands::report_from_wire_lossy;

use super::{EngineError, Plan};
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
        // One malformed refused value must not cost the rest of the outcome (the
        // group's AD object, the other refusals): it is logged and left out.
        let (report, malformed) = report_from_wire_lossy(outcome);
        for error in &malformed {
            tracing::warn!(%group_id, command_id = %outcome.command_id, %error, "a refused member value in an outcome is ignored");
        }
        let (result, detail) = match status {
            cmd::OutcomeStatus::Failed => {
                (AuditResult::Failed, format!("LDAP {}: {}", outcome.ldap_code, outcome.message))
            }
            cmd::OutcomeStatus::Refused => (AuditResult::Refused, outcome.message.clone()),
            cmd::OutcomeStatus::DryRun => (AuditResult::DryRun, String::new()),
            _ => {
                let mut detail = format!(
                    "{}changed; members +{} -{} ={} refused {}",
                    if report.changed { "" } else { "un" },
                    report.members_added,
                    report.members_removed,
                    report.members_unchanged,
                    outcome.members_rejected.len()
                );
                if !report.addresses_skipped.is_empty() {
                    let skipped: Vec<String> = report.addresses_skipped.iter().map(|a| a.describe()).collect();
                    detail.push_str(&format!("; proxy addresses not written: {}", skipped.join(", ")));
                }
                if let Some(clash) = &report.name_clash {
                    detail.push_str(&format!("; name clash: {clash}"));
                }
                (AuditResult::Applied, detail)
            }
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
        if status == cmd::OutcomeStatus::Refused {
            // Nothing was written: the group is skipped with the writer's reason, and
            // its members are planned afresh if it is ever written (say, adopted).
            tracing::warn!(%group_id, reason = %outcome.message, "the writer refused the group");
            self.set_state(&group_id, WritebackState::Skipped, &outcome.message)?;
            self.tx.forget_member_plan(&group_id)?;
            return Ok(());
        }
        if status == cmd::OutcomeStatus::Failed {
            // Member commands planned before a refusal fail for want of the group.
            if current == WritebackState::Skipped && kind != Some(CommandKind::Upsert) {
                return Ok(());
            }
            let message = format!("{} failed (LDAP {}): {}", outcome.kind, outcome.ldap_code, outcome.message);
            // The first failure is the cause; member commands failing after a failed
            // upsert ("no group carries anchor…") must not hide it.
            let keep_cause = current == WritebackState::Error && kind != Some(CommandKind::Upsert);
            self.tx.record_failure(&group_id, &message, keep_cause, self.cause.now_ms)?;
            return Ok(());
        }
        match kind {
            Some(CommandKind::Upsert | CommandKind::Retire) => {
                if let Some(mut applied) = report.group {
                    // GUIDs are compared and keyed in lower case throughout the store.
                    applied.object_guid.make_ascii_lowercase();
                    self.tx.record_applied(&group_id, &applied, self.cause.now_ms)?;
                    if kind == Some(CommandKind::Upsert)
                        && matches!(current, WritebackState::Pending | WritebackState::Error)
                    {
                        self.tx.mark_written(&group_id)?;
                    }
                    if kind == Some(CommandKind::Upsert) {
                        let skipped: Vec<String> = report.addresses_skipped.iter().map(|a| a.describe()).collect();
                        self.tx.set_addresses_skipped(&group_id, &skipped)?;
                        self.tx.set_name_clash(&group_id, report.name_clash.as_deref().unwrap_or_default())?;
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
        for (reference, reason) in &report.members_rejected {
            if let Some(member_id) = self.tx.planned_member_by_ref(&group_id, reference)? {
                self.tx.clear_planned_member(&group_id, &member_id)?;
                let kind = self.tx.membership_kind(&group_id, &member_id)?.unwrap_or(MemberKind::User);
                self.tx.set_skipped_member(
                    &group_id,
                    &member_id,
                    kind.as_str(),
                    &format!("AD refused the member: {reason}"),
                )?;
            }
        }
        Ok(())
    }
}
