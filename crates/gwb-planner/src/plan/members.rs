//! Member planning: which member values each written group must hold in AD, planned
//! against what was planned before so only differences become commands.

use std::collections::HashSet;

use gwb_core::command::{MemberRef, WriteCommand};
use gwb_core::members::{self, MemberKind, Resolution};
use gwb_core::naming;

use super::{EngineError, Plan};
use crate::store::{KnownMember, StoreError, StoreTx};

/// Member values to add and remove for one group, flushed as batched commands.
#[derive(Default)]
pub(super) struct MemberDelta {
    add: Vec<MemberRef>,
    remove: Vec<MemberRef>,
}

impl MemberDelta {
    /// Given values to add and remove (a drift repair), flushed like any other.
    pub(super) fn of(add: Vec<MemberRef>, remove: Vec<MemberRef>) -> Self {
        MemberDelta { add, remove }
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
            if let Some(old) = known.planned {
                delta.remove.push(old);
                if wanted.is_none() {
                    self.tx.clear_planned_member(group_id, member_id)?;
                }
            }
            if let Some(new) = wanted {
                delta.add.push(new.clone());
                self.tx.set_planned_member(group_id, member_id, new)?;
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

    pub(super) fn flush_members(&mut self, group_id: &str, delta: MemberDelta) -> Result<(), EngineError> {
        let batch = self.policy.member_batch_size.max(1);
        for chunk in delta.remove.chunks(batch) {
            let command = WriteCommand::RemoveMembers { anchor: naming::anchor(group_id), members: chunk.to_vec() };
            self.emit(group_id, command)?;
        }
        for chunk in delta.add.chunks(batch) {
            let command = WriteCommand::AddMembers { anchor: naming::anchor(group_id), members: chunk.to_vec() };
            self.emit(group_id, command)?;
        }
        Ok(())
    }
}
