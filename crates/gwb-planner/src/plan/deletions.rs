//! Removing written groups: per policy (keep, delete, move), and cloud-caused
//! deletions held until the end of the cycle and passed through the threshold.

use gwb_core::command::WriteCommand;
use gwb_core::deletion;
use gwb_core::naming;
use gwb_core::state::WritebackState;

use super::{EngineError, Plan};
use crate::config::RemovalAction;
use crate::store::{AuditResult, Meta, StoreTx};

impl<T: StoreTx> Plan<'_, T> {
    pub(super) fn remove_per_policy(
        &mut self,
        group_id: &str,
        action: RemovalAction,
        reason: &str,
    ) -> Result<(), EngineError> {
        match action {
            RemovalAction::Keep => Ok(self.set_state(group_id, WritebackState::Kept, reason)?),
            RemovalAction::Delete => self.delete_group(group_id, reason),
            RemovalAction::Move => {
                let Some(retired_ou) = self.policy.retired_ou.clone() else {
                    return Ok(self.set_state(group_id, WritebackState::Kept, reason)?);
                };
                self.set_state(group_id, WritebackState::Retired, reason)?;
                self.emit(group_id, WriteCommand::Retire { anchor: naming::anchor(group_id), retired_ou })
            }
        }
    }

    /// Deletes the group's AD object: at once for an operator's request, else at the
    /// end of the cycle, through the deletion threshold.
    pub(super) fn delete_group(&mut self, group_id: &str, reason: &str) -> Result<(), EngineError> {
        if self.cause.operator {
            return self.emit_delete(group_id, reason);
        }
        Ok(self.tx.request_deletion(group_id, reason, self.cause.now_ms)?)
    }

    /// End of a cycle: the pending deletions go ahead together, or are all held. They
    /// count with the deletions sent in the threshold's window, and while some are held
    /// for an operator every new one waits with them.
    pub(super) fn settle_deletions(&mut self) -> Result<(), EngineError> {
        let pending = self.tx.take_pending_deletions()?;
        if pending.is_empty() {
            return Ok(());
        }
        let threshold = self.policy.threshold;
        let window_start =
            self.cause.now_ms - i64::try_from(threshold.window_minutes.saturating_mul(60_000)).unwrap_or(i64::MAX);
        let recent = self.tx.deletions_sent_since(window_start)?;
        let held = self.tx.count_in_states(&[WritebackState::Held])?;
        let written_back = self.tx.count_in_states(&WritebackState::matching(WritebackState::is_owned))?;
        let why = if held > 0 {
            Some(format!("{held} deletions are already held for an operator; later ones wait with them"))
        } else {
            let deletions = pending.len() as u64 + recent;
            // The base is what was written back when the window began.
            deletion::must_hold(deletions, written_back + recent, threshold)
                .map(|why| if recent > 0 { format!("{why} ({recent} of them already sent)") } else { why })
        };
        match why {
            Some(why) => {
                tracing::warn!(deletions = pending.len(), %why, "deletions held for an operator");
                self.tx.set_meta(&Meta::HeldReason, &why)?;
                for (group_id, reason) in pending {
                    self.set_state(&group_id, WritebackState::Held, &format!("{reason}; held: {why}"))?;
                    self.audit_deletion(&group_id, AuditResult::Held, &why)?;
                }
            }
            None => {
                for (group_id, reason) in pending {
                    self.tx.record_deletion_sent(&group_id, self.cause.now_ms)?;
                    self.emit_delete(&group_id, &reason)?;
                }
            }
        }
        Ok(())
    }

    pub(super) fn emit_delete(&mut self, group_id: &str, reason: &str) -> Result<(), EngineError> {
        self.ensure_row(group_id)?;
        self.set_state(group_id, WritebackState::Deleting, reason)?;
        self.tx.forget_member_plan(group_id)?;
        self.emit(group_id, WriteCommand::Delete { anchor: naming::anchor(group_id) })
    }
}
