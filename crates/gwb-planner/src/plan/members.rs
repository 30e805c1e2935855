//! Member planning: which member values each written group must hold in AD, planned
//! against what was planned before so only differences become commands.

use std::collections::HashSet;

use gwb_core::command::{CommandKind, MemberRef, WriteCommand};
use gwb_core::deletion;
use gwb_core::members::{self, MemberKind, Resolution};
use gwb_core::naming;

use super::{EngineError, Plan};
use crate::store::{AuditResult, KnownMember, StoreError, StoreTx};

/// Member values to add and remove for one group, flushed as batched commands.
#[derive(Default)]
pub(super) struct MemberDelta {
    add: Vec<MemberRef>,
    /// Old values of members whose value changed (the new one is in `add`): no access
    /// is lost, so these never wait for an operator.
    replaced: Vec<MemberRef>,
    /// (member id, value) of members the group no longer holds: these pass the
    /// member-removal threshold.
    removed: Vec<(String, MemberRef)>,
}

impl MemberDelta {
    /// Given values to add and remove (a drift repair), flushed like any other: the
    /// removals pass the member-removal threshold, held under their own value (a
    /// member added by hand has no cloud id).
    pub(super) fn of(add: Vec<MemberRef>, remove: Vec<MemberRef>) -> Self {
        MemberDelta {
            add,
            replaced: Vec::new(),
            removed: remove.into_iter().map(|value| (value.key(), value)).collect(),
        }
    }
}

impl<T: StoreTx> Plan<'_, T> {
    /// Plans one (group, member) pair against what was planned before. Everything it
    /// needs is read in one operation and only what changed is written: this runs once
    /// per membership of every group written back, so it sets the planner's pace.
    pub(super) fn plan_member(
        &mut self,
        group_id: &str,
        member_id: &str,
        delta: &mut MemberDelta,
    ) -> Result<(), StoreError> {
        let known = self.tx.known_member(group_id, member_id)?;
        self.plan_known_member(group_id, member_id, known, delta)
    }

    /// [`Plan::plan_member`] with what the store knows already read.
    fn plan_known_member(
        &mut self,
        group_id: &str,
        member_id: &str,
        known: KnownMember,
        delta: &mut MemberDelta,
    ) -> Result<(), StoreError> {
        let resolution = known.kind.map(|kind| match kind {
            MemberKind::User => members::resolve_user(known.user.as_ref()),
            MemberKind::Group => members::resolve_group(known.written_guid.as_deref()),
            other => members::resolve_other(other),
        });
        let wanted = match &resolution {
            Some(Resolution::Write(reference)) => Some(reference),
            _ => None,
        };
        if known.planned.as_ref() != wanted {
            match (known.planned, wanted) {
                (Some(old), Some(new)) => {
                    delta.replaced.push(old);
                    delta.add.push(new.clone());
                    self.tx.set_planned_member(group_id, member_id, new)?;
                }
                (Some(old), None) => {
                    delta.removed.push((member_id.to_string(), old));
                    self.tx.clear_planned_member(group_id, member_id)?;
                }
                (None, Some(new)) => {
                    delta.add.push(new.clone());
                    self.tx.set_planned_member(group_id, member_id, new)?;
                }
                (None, None) => {}
            }
        }
        match (&resolution, known.kind) {
            (Some(Resolution::Skip(reason)), Some(kind)) if known.skipped.as_deref() != Some(reason.as_str()) => {
                self.tx.set_skipped_member(group_id, member_id, kind.as_str(), reason)?;
            }
            (Some(Resolution::Skip(_)), Some(_)) => {}
            _ if known.skipped.is_some() => self.tx.clear_skipped_member(group_id, member_id)?,
            _ => {}
        }
        Ok(())
    }

    /// Full member plan of one group (first write, re-enable, restore): its links and
    /// whatever was planned before that is no longer linked.
    pub(super) fn sync_all_members(&mut self, group_id: &str) -> Result<(), EngineError> {
        let linked = self.tx.known_members_of(group_id)?;
        let present: HashSet<&str> = linked.iter().map(|(id, _)| id.as_str()).collect();
        let planned_only: Vec<String> =
            self.tx.planned_member_ids(group_id)?.into_iter().filter(|m| !present.contains(m.as_str())).collect();
        let mut delta = MemberDelta::default();
        // Reading them all first is safe: planning one member writes only that
        // member's planned and skipped rows.
        for (member_id, known) in linked {
            self.plan_known_member(group_id, &member_id, known, &mut delta)?;
        }
        for member_id in &planned_only {
            self.plan_member(group_id, member_id, &mut delta)?;
        }
        self.flush_members(group_id, delta)
    }

    /// A member's resolvability changed (user synced/unsynced, nested group written or
    /// deleted): re-plan it in every active group that contains it.
    pub(super) fn member_changed(&mut self, member_id: &str) -> Result<(), EngineError> {
        if !self.enabled()? {
            return Ok(());
        }
        for group_id in self.tx.groups_to_replan(member_id)? {
            let mut delta = MemberDelta::default();
            self.plan_member(&group_id, member_id, &mut delta)?;
            self.flush_members(&group_id, delta)?;
        }
        Ok(())
    }

    /// Sends the group's member changes, unless its removals must wait for an operator
    /// (the member-removal threshold): then AD keeps those members and the removals
    /// are held, and every later removal from the group waits with them.
    pub(super) fn flush_members(&mut self, group_id: &str, delta: MemberDelta) -> Result<(), EngineError> {
        let MemberDelta { add, mut replaced, removed } = delta;
        if !add.is_empty() && self.tx.held_member_removal_count(group_id)? > 0 {
            // A value planned again is one AD still holds: its held removal is moot.
            for reference in &add {
                self.tx.release_held_member_removal(group_id, reference)?;
            }
        }
        if !removed.is_empty() {
            let new_members = add.len().saturating_sub(replaced.len());
            match self.member_removals_to_hold(group_id, removed.len(), new_members)? {
                Some(why) => {
                    tracing::warn!(group = %group_id, removals = removed.len(), %why, "member removals held for an operator");
                    for (member_id, reference) in &removed {
                        self.tx.hold_member_removal(group_id, member_id, reference, &why, self.cause.now_ms)?;
                    }
                    let detail = format!("{} member removal(s) held: {why}", removed.len());
                    self.audit(group_id, CommandKind::RemoveMembers, AuditResult::Held, &detail)?;
                }
                None => {
                    if !self.cause.operator {
                        self.tx.record_member_removals_sent(group_id, removed.len() as u64, self.cause.now_ms)?;
                    }
                    replaced.extend(removed.into_iter().map(|(_, reference)| reference));
                }
            }
        }
        self.emit_member_changes(group_id, &replaced, &add)
    }

    /// Why `removals` more member values may not leave the group without an operator,
    /// if they may not. An operator's action is its own approval.
    fn member_removals_to_hold(
        &mut self,
        group_id: &str,
        removals: usize,
        new_members: usize,
    ) -> Result<Option<String>, StoreError> {
        if self.cause.operator {
            return Ok(None);
        }
        let held = self.tx.held_member_removal_count(group_id)?;
        if held > 0 {
            return Ok(Some(format!(
                "{held} member removals of this group are already held for an operator; later ones wait with them"
            )));
        }
        let window_minutes = self.policy.threshold.window_minutes;
        let window_ms = i64::try_from(window_minutes.saturating_mul(60_000)).unwrap_or(i64::MAX);
        let recent = self.tx.member_removals_sent_since(group_id, self.cause.now_ms.saturating_sub(window_ms))?;
        let removals = removals as u64;
        // The base is what the group held in AD when the window began: what is planned
        // now, without the members this change adds, with those it and the window removed.
        let members = (self.tx.planned_member_count(group_id)? + removals + recent).saturating_sub(new_members as u64);
        let why = deletion::must_hold_member_removals(
            removals + recent,
            members,
            window_minutes,
            self.policy.member_removals,
        );
        Ok(why.map(|why| if recent > 0 { format!("{why} ({recent} of them already sent)") } else { why }))
    }

    /// Removals first, then additions, in batches.
    pub(super) fn emit_member_changes(
        &mut self,
        group_id: &str,
        remove: &[MemberRef],
        add: &[MemberRef],
    ) -> Result<(), EngineError> {
        let batch = self.policy.member_batch_size.max(1);
        for chunk in remove.chunks(batch) {
            let command = WriteCommand::RemoveMembers { anchor: naming::anchor(group_id), members: chunk.to_vec() };
            self.emit(group_id, command)?;
        }
        for chunk in add.chunks(batch) {
            let command = WriteCommand::AddMembers { anchor: naming::anchor(group_id), members: chunk.to_vec() };
            self.emit(group_id, command)?;
        }
        Ok(())
    }
}
