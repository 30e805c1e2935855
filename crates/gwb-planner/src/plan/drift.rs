//! Drift: the writer's directory observations compared with the desired state, and
//! the repair planned as ordinary commands (issue 18).
//!
//! A group is compared only when it is written, writeback is on, its drift mode is
//! not `off`, it is not contested and none of its commands is in flight: the writer
//! publishes an observation only after the outcomes of every write it reflects, so a
//! group without commands in flight shows what AD holds after the planner's last
//! write, and any difference from the desired state is someone else's edit.

use gwb_core::command::{MemberRef, WriteCommand};
use gwb_core::drift::{self, Desired, Drift, DriftMode, Observation, ObservedGroup};
use gwb_core::naming;
use gwb_core::policy::{self, Decision};
use gwb_core::state::WritebackState;

use super::members::MemberDelta;
use super::{Cause, Engine, EngineError, Origin, Plan, Planned};
use crate::store::{AuditEntry, AuditResult, DriftEvent, DriftTx as _, Store, StoreTx};

/// An operator's change to a group's drift settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DriftRequest {
    /// `Some(None)`: inherit `[drift] mode`; None: leave the mode as it is.
    pub mode: Option<Option<DriftMode>>,
    /// Clear the contested mark (and send the group in full again).
    pub uncontest: bool,
}

impl<S: Store> Engine<S> {
    /// The configured drift policy (the default of every group).
    pub fn drift_policy(&self) -> drift::DriftPolicy {
        self.policy.drift
    }

    /// Sets a group's drift mode and/or clears its contested mark. Clearing it sends
    /// the group's upsert and every planned member again (idempotent in AD), since
    /// commands were held while it was contested; members added by hand meanwhile are
    /// removed at the watcher's next observation of the group.
    pub fn set_group_drift(
        &mut self,
        group_id: &str,
        request: DriftRequest,
        origin: &Origin,
    ) -> Result<Planned, EngineError> {
        let id = group_id.to_ascii_lowercase();
        let cause = Cause::operator("operator changed the group's drift settings", origin);
        let (_, planned) = self.in_transaction(cause, |plan| {
            if let Some(mode) = request.mode {
                plan.tx.set_drift_mode(&id, mode)?;
            }
            if request.uncontest && plan.tx.drift_group(&id)?.contested.is_some() {
                plan.tx.set_contested(&id, None, plan.cause.now_ms)?;
                plan.drift_audit(&id, AuditResult::Contested, "cleared by the operator")?;
                plan.resend(&id)?;
            }
            Ok(())
        })?;
        Ok(planned)
    }
}

impl<T: StoreTx> Plan<'_, T> {
    pub(super) fn observation(&mut self, observation: &Observation) -> Result<(), EngineError> {
        if !self.enabled()? {
            return Ok(());
        }
        tracing::debug!(
            writer = %observation.writer_id, dc = %observation.dc, full = observation.full,
            observed_at_ms = observation.observed_at_ms, groups = observation.groups.len(),
            "directory observation"
        );
        for group in &observation.groups {
            self.observed_group(group, &observation.dc)?;
        }
        Ok(())
    }

    fn observed_group(&mut self, observed: &ObservedGroup, observation_dc: &str) -> Result<(), EngineError> {
        // Only the objectGUID the writer reported for a group it wrote names it: an
        // anchor can be copied onto any object, and a tombstone has none.
        let Some(group_id) = self.tx.group_by_object_guid(&observed.object_guid)? else { return Ok(()) };
        if self.state_of(&group_id)? != Some(WritebackState::Written) {
            return Ok(());
        }
        let settings = self.tx.drift_group(&group_id)?;
        let mode = settings.mode.unwrap_or(self.policy.drift.mode);
        if mode == DriftMode::Off || settings.contested.is_some() || self.tx.inflight_count(&group_id)? > 0 {
            return Ok(());
        }
        let Some(cloud) = self.tx.cloud_group(&group_id)? else { return Ok(()) };
        let over = self.tx.group_override(&group_id)?;
        let Decision::Write(spec) =
            policy::decide(&cloud, &over, &self.policy.scope, &self.policy.placement, self.schema()?)
        else {
            return Ok(());
        };
        let dn = self.tx.written_dn(&group_id)?.unwrap_or_default();
        // Values whose removal waits for an operator are still meant to be in AD.
        let mut members = self.tx.planned_refs(&group_id)?;
        members.extend(self.tx.held_removal_refs(&group_id)?);
        let addresses_skipped = self.tx.skipped_addresses(&group_id)?;
        let desired = Desired { spec: &spec, dn: &dn, members: &members, addresses_skipped: &addresses_skipped };
        let drifts = drift::compare(&desired, observed);
        if drifts.is_empty() {
            return Ok(());
        }
        let now = self.cause.now_ms;
        let since = now - self.policy.drift.contest_window_ms;
        let mut contested = None;
        for found in &drifts {
            if let Drift::MovedOut { to, .. } = found {
                contested = Some(format!(
                    "moved out of the managed OUs to {to} by an AD edit (whenChanged {}): reported, not \
                     followed; move it back into a managed OU, then `gwbctl uncontest {group_id}`",
                    observed.when_changed
                ));
                break;
            }
            let repeats = self.tx.drift_count_since(&group_id, &found.repeat_key(), since)? + 1;
            if mode == DriftMode::Repair && self.policy.drift.is_contested(repeats) {
                contested = Some(format!(
                    "contested: the same drift came back {repeats} times within {} min ({}, whenChanged {}); \
                     repairs stopped until an operator clears it (`gwbctl uncontest {group_id}`)",
                    self.policy.drift.contest_window_ms / 60_000,
                    found.describe(),
                    observed.when_changed
                ));
                break;
            }
        }
        let action = match (&contested, mode) {
            (Some(_), _) => "contested",
            (None, DriftMode::Repair) => "repaired",
            (None, _) => "reported",
        };
        for found in &drifts {
            let detail = format!(
                "{} (whenChanged {}, uSNChanged {} on {})",
                found.describe(),
                observed.when_changed,
                observed.usn_changed,
                observation_dc
            );
            self.tx.record_drift(&DriftEvent {
                group_id: &group_id,
                at_ms: now,
                repeat_key: &found.repeat_key(),
                kind: found.kind().as_str(),
                detail: &detail,
                when_changed: &observed.when_changed,
                action,
            })?;
            self.drift_audit(&group_id, AuditResult::Detected, &detail)?;
            self.planned.drift.push(found.kind());
        }
        if let Some(reason) = contested {
            tracing::warn!(group = %group_id, %reason, "drift: group contested");
            self.tx.set_contested(&group_id, Some(&reason), now)?;
            self.drift_audit(&group_id, AuditResult::Contested, &reason)?;
            return Ok(());
        }
        if mode != DriftMode::Repair {
            return Ok(());
        }
        self.cause.text = format!(
            "AD edit (whenChanged {}): {}",
            observed.when_changed,
            drifts.iter().map(Drift::describe).collect::<Vec<_>>().join("; ")
        );
        self.repair(&group_id, spec, &dn, observed, &drifts, members)?;
        self.planned.drift_repaired += 1;
        Ok(())
    }

    /// Plans what puts the group back: the upsert for names, OU and attributes,
    /// member adds and removes through the normal member path (so its limits apply),
    /// and for a deleted group its reanimation first (then the upsert and every
    /// planned member, which the tombstone lost; if reanimation fails, that upsert
    /// creates the group anew).
    fn repair(
        &mut self,
        group_id: &str,
        spec: gwb_core::command::GroupSpec,
        dn: &str,
        observed: &ObservedGroup,
        drifts: &[Drift],
        planned: Vec<MemberRef>,
    ) -> Result<(), EngineError> {
        let anchor = naming::anchor(group_id);
        if drifts.iter().any(|d| matches!(d, Drift::Deleted { .. })) {
            let target =
                if dn.is_empty() { gwb_core::escape::child_dn(&spec.cn, &spec.parent_dn) } else { dn.to_string() };
            self.emit(
                group_id,
                WriteCommand::Reanimate { anchor, object_guid: observed.object_guid.clone(), dn: target },
            )?;
            self.emit(group_id, WriteCommand::Upsert(spec))?;
            return self.flush_members(group_id, MemberDelta::of(planned, Vec::new()));
        }
        if drifts.iter().any(|d| matches!(d, Drift::Attribute { .. } | Drift::Renamed { .. } | Drift::Moved { .. })) {
            self.emit(group_id, WriteCommand::Upsert(spec))?;
        }
        let mut add = Vec::new();
        let mut remove = Vec::new();
        for found in drifts {
            match found {
                Drift::MemberAdded(member) => remove.push(MemberRef::Guid(member.guid.clone())),
                Drift::MemberRemoved(reference) => add.push(reference.clone()),
                _ => {}
            }
        }
        self.flush_members(group_id, MemberDelta::of(add, remove))
    }

    /// The group's upsert and every planned member, as after a contested spell.
    fn resend(&mut self, group_id: &str) -> Result<(), EngineError> {
        if !self.enabled()? || !self.state_of(group_id)?.is_some_and(WritebackState::is_active) {
            return Ok(());
        }
        let Some(cloud) = self.tx.cloud_group(group_id)? else { return Ok(()) };
        let over = self.tx.group_override(group_id)?;
        if let Decision::Write(spec) =
            policy::decide(&cloud, &over, &self.policy.scope, &self.policy.placement, self.schema()?)
        {
            self.emit(group_id, WriteCommand::Upsert(spec))?;
            let planned = self.tx.planned_refs(group_id)?;
            self.flush_members(group_id, MemberDelta::of(planned, Vec::new()))?;
        }
        Ok(())
    }

    fn drift_audit(&mut self, group_id: &str, result: AuditResult, detail: &str) -> Result<(), EngineError> {
        Ok(self.tx.audit(&AuditEntry {
            at_ms: self.cause.now_ms,
            group_id,
            command_id: "",
            kind: "drift",
            result,
            cause: "AD edit",
            detail,
        })?)
    }
}
