//! The operator's requests: the global switch, decisions on held deletions, per-group
//! overrides, previews and staging.

use std::collections::HashSet;

use prost::Message as _;

use gwb_core::command::{CommandKind, WriteCommand};
use gwb_core::policy::{self, Decision, GroupOverride};
use gwb_core::state::WritebackState;
use gwb_proto::commands::v1 as cmd;
use gwb_proto::convert::commands::describe_command;

use super::{Cause, Engine, EngineError, Origin, Plan, Planned};
use crate::store::{AuditEntry, AuditResult, Meta, SkippedMember, Store, StoreTx};

/// What an operator's decision on held changes affected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeldDecision {
    /// Held group deletions.
    pub deletions: u64,
    /// Held member values.
    pub member_removals: u64,
}

/// What [`Engine::preview`] found.
pub struct Preview {
    pub decision: Decision,
    /// (kind, description) of each command that would be sent.
    pub commands: Vec<(CommandKind, String)>,
    pub members_to_write: u64,
    pub skipped: Vec<SkippedMember>,
}

impl<S: Store> Engine<S> {
    /// Global switch. Enabling plans every group; disabling freezes (`keep`) or deletes
    /// every group this product wrote.
    pub fn set_writeback(
        &mut self,
        enabled: bool,
        delete_on_disable: bool,
        origin: &Origin,
    ) -> Result<Planned, EngineError> {
        let cause_text = if enabled {
            "operator enabled writeback"
        } else if delete_on_disable {
            "operator disabled writeback (delete)"
        } else {
            "operator disabled writeback (keep)"
        };
        let (_, planned) = self.in_transaction(Cause::operator(cause_text, origin), |plan| {
            plan.tx.set_meta(&Meta::WritebackEnabled, if enabled { "1" } else { "0" })?;
            if enabled {
                return plan.reconcile_all();
            }
            plan.tx.set_meta(&Meta::LastDisableMode, if delete_on_disable { "delete" } else { "keep" })?;
            let owned = plan.tx.group_ids_in_states(&WritebackState::matching(WritebackState::is_owned))?;
            for group_id in owned {
                if delete_on_disable {
                    plan.delete_group(&group_id, "writeback disabled by the operator (delete)")?;
                } else {
                    plan.set_state(&group_id, WritebackState::Kept, "writeback disabled by the operator (keep)")?;
                }
            }
            Ok(())
        })?;
        Ok(planned)
    }

    /// Operator decision on what the thresholds hold: held deletions (`approve`:
    /// delete now; otherwise keep the AD groups, frozen) and held member removals
    /// (`approve`: remove them now; otherwise AD keeps the members, no longer managed
    /// by gwb). Empty `group_ids` means all.
    pub fn decide_held(
        &mut self,
        group_ids: &[String],
        approve: bool,
        origin: &Origin,
    ) -> Result<(HeldDecision, Planned), EngineError> {
        let text = if approve { "operator approved held changes" } else { "operator discarded held changes" };
        self.in_transaction(Cause::operator(text, origin), |plan| {
            let requested: HashSet<String> = group_ids.iter().map(|id| id.to_ascii_lowercase()).collect();
            let chosen = |ids: Vec<String>| -> Vec<String> {
                if requested.is_empty() { ids } else { ids.into_iter().filter(|id| requested.contains(id)).collect() }
            };
            let deletions = chosen(plan.tx.group_ids_in_states(&[WritebackState::Held])?);
            for group_id in &deletions {
                if approve {
                    plan.emit_delete(group_id, "deletion approved by the operator")?;
                } else {
                    plan.set_state(
                        group_id,
                        WritebackState::Kept,
                        "deletion discarded by the operator; the AD group is kept",
                    )?;
                    plan.audit_deletion(group_id, AuditResult::Discarded, "")?;
                }
            }
            let mut member_removals = 0u64;
            for group_id in chosen(plan.tx.groups_with_held_member_removals()?) {
                let active = plan.state_of(&group_id)?.is_some_and(WritebackState::is_active);
                if !approve {
                    let kept = plan.tx.keep_held_member_removals(&group_id)?;
                    member_removals += kept;
                    let detail = format!("{kept} held member removal(s) discarded: AD keeps the members");
                    plan.audit(&group_id, CommandKind::RemoveMembers, AuditResult::Discarded, &detail)?;
                    continue;
                }
                let held = plan.tx.take_held_member_removals(&group_id)?;
                member_removals += held.len() as u64;
                if active {
                    plan.emit_member_changes(&group_id, &held, &[])?;
                } else {
                    let detail =
                        format!("{} held member removal(s) dropped: the group is no longer written back", held.len());
                    plan.audit(&group_id, CommandKind::RemoveMembers, AuditResult::Discarded, &detail)?;
                }
            }
            Ok(HeldDecision { deletions: deletions.len() as u64, member_removals })
        })
    }

    /// Sets (or clears) the operator's override of one group and re-plans it.
    pub fn set_override(
        &mut self,
        group_id: &str,
        over: Option<&GroupOverride>,
        origin: &Origin,
    ) -> Result<Planned, EngineError> {
        let id = group_id.to_ascii_lowercase();
        let cause = Cause::operator("operator changed the group's writeback settings", origin);
        let (_, planned) = self.in_transaction(cause, |plan| {
            plan.tx.set_group_override(&id, over)?;
            plan.reconcile(&id, None, false)
        })?;
        Ok(planned)
    }

    /// The plan for one group, computed exactly as for real inside a transaction that
    /// is then rolled back: what would go to the writer now, and which members would
    /// be skipped.
    pub fn preview(&mut self, group_id: &str, origin: &Origin) -> Result<Option<Preview>, EngineError> {
        let id = group_id.to_ascii_lowercase();
        let mut tx = self.store.transaction()?;
        let mut planned = Planned::default();
        let mut plan = Plan {
            tx: &mut tx,
            policy: &self.policy,
            cause: Cause::operator("preview", origin),
            ignore_switch: true,
            planned: &mut planned,
        };
        let Some(group) = plan.tx.cloud_group(&id)? else { return Ok(None) };
        let over = plan.tx.group_override(&id)?;
        let decision = policy::decide(&group, &over, &plan.policy.scope, &plan.policy.placement, plan.schema()?);
        plan.reconcile(&id, None, false)?;
        if plan.state_of(&id)?.is_some_and(WritebackState::is_active) {
            plan.sync_all_members(&id)?;
        }
        let members_to_write = plan.tx.planned_member_count(&id)?;
        let skipped = plan.tx.skipped_members(&id, 10_000)?;
        // Dropping the transaction rolls every change back: nothing was planned.
        drop(tx);
        Ok(Some(Preview { decision, commands: planned.commands, members_to_write, skipped }))
    }

    /// Staging mode: record the outbox as `staged` in the audit log instead of sending it.
    pub fn stage_outbox(&mut self, now_ms: i64) -> Result<usize, EngineError> {
        let mut tx = self.store.transaction()?;
        let rows = tx.outbox_head(1000)?;
        for row in &rows {
            let decoded =
                cmd::WriteCommand::decode(row.payload.as_slice()).map_err(|error| error.to_string()).and_then(|wire| {
                    WriteCommand::try_from(&wire).map(|command| (wire, command)).map_err(|e| e.to_string())
                });
            match decoded {
                Ok((wire, command)) => {
                    tx.audit(&AuditEntry {
                        at_ms: now_ms,
                        group_id: &wire.group_id,
                        command_id: &wire.command_id,
                        kind: command.kind(),
                        result: AuditResult::Staged,
                        cause: &wire.cause,
                        detail: &describe_command(&command),
                    })?;
                }
                // The planner wrote it itself; a row it cannot read is dropped, not
                // staged, and said so. It will never be sent, so it is not in flight.
                Err(error) => tracing::error!(seq = row.seq, %error, "unreadable outbox row dropped while staging"),
            }
            tx.command_finished(&row.command_id)?;
            tx.remove_from_outbox(row.seq)?;
        }
        tx.commit()?;
        Ok(rows.len())
    }
}
