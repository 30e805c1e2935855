//! Users and groups as the cloud changes them, and the policy decision that follows.

use gwb_core::command::{CommandKind, WriteCommand};
use gwb_core::event::{GroupObserved, UserObserved};
use gwb_core::members;
use gwb_core::policy::{self, CloudGroup, Decision};
use gwb_core::state::WritebackState;
use gwb_proto::commands::v1 as cmd;

use super::members::MemberDelta;
use super::{EngineError, Plan};
use crate::config::UserSoftDelete;
use crate::store::{Counter, Meta, ServiceReport, StoreTx, UserRow};

impl<T: StoreTx> Plan<'_, T> {
    pub(super) fn user_upsert(&mut self, user: &UserObserved, round: &str) -> Result<(), EngineError> {
        let id = user.id.to_ascii_lowercase();
        let before = self.tx.user_anchor(&id)?;
        let row = UserRow {
            id: id.clone(),
            display_name: user.display_name.clone(),
            user_principal_name: user.user_principal_name.clone(),
            sid: user.on_premises_security_identifier.clone(),
            sync_enabled: user.on_premises_sync_enabled,
        };
        self.tx.upsert_user(&row, round)?;
        if before.as_ref().is_none_or(|user| user.deleted) {
            self.tx.add_to_counter(Counter::Users, 1)?;
        }
        let after = self.tx.user_anchor(&id)?;
        if members::resolve_user(before.as_ref()) != members::resolve_user(after.as_ref()) {
            self.member_changed(&id)?;
        }
        Ok(())
    }

    /// A user left the delta: permanently deleted (`hard`), or soft-deleted. A synced
    /// user's cloud object goes because its AD account went out of sync scope or was
    /// deleted: AD drops a deleted account from its groups by itself, and one out of
    /// scope still exists, so by default a soft-deleted user stays a member until it is
    /// permanently deleted (`on_user_soft_delete`). Restored, it comes back as an upsert.
    pub(super) fn user_removed(&mut self, user_id: &str, hard: bool) -> Result<(), EngineError> {
        let id = user_id.to_ascii_lowercase();
        if !hard && self.policy.on_user_soft_delete == UserSoftDelete::Keep {
            tracing::info!(user = %id, "user soft-deleted in the cloud: it stays a member until permanently deleted");
            return Ok(());
        }
        if self.tx.user_anchor(&id)?.is_some_and(|user| !user.deleted) {
            self.tx.add_to_counter(Counter::Users, -1)?;
        }
        self.tx.mark_user_deleted(&id)?;
        self.member_changed(&id)
    }

    pub(super) fn group_upsert(&mut self, group: &GroupObserved, round: &str) -> Result<(), EngineError> {
        let id = group.id.to_ascii_lowercase();
        let restored = self.tx.group_is_removed(&id)?;
        let config = group.writeback.as_ref();
        let row = CloudGroup {
            id: id.clone(),
            display_name: group.display_name.clone().unwrap_or_default(),
            description: group.description.clone(),
            mail_nickname: group.mail_nickname.clone(),
            mail: group.mail.clone(),
            mail_enabled: group.mail_enabled.unwrap_or(false),
            security_enabled: group.security_enabled.unwrap_or(false),
            group_types: group.group_types.clone(),
            proxy_addresses: group.proxy_addresses.clone(),
            on_premises_sync_enabled: group.on_premises_sync_enabled,
            on_premises_sid: group.on_premises_security_identifier.clone(),
            writeback_enabled: config.and_then(|c| c.is_enabled),
            writeback_group_type: config.and_then(|c| c.on_premises_group_type.clone()),
        };
        self.tx.upsert_group(&row, round)?;
        let mut touched: Vec<String> = Vec::with_capacity(group.members_added.len() + group.members_removed.len());
        let mut counted = 0i64;
        for member in &group.members_added {
            let member_id = member.id.to_ascii_lowercase();
            if self.tx.upsert_membership(&id, &member_id, member.kind, round)? {
                counted += 1;
            }
            touched.push(member_id);
        }
        for member in &group.members_removed {
            let member_id = member.id.to_ascii_lowercase();
            if self.tx.remove_membership(&id, &member_id)? {
                counted -= 1;
            }
            touched.push(member_id);
        }
        self.tx.add_to_counter(Counter::Memberships, counted)?;
        self.reconcile(&id, Some(&touched), restored)
    }

    pub(super) fn group_removed(&mut self, group_id: &str, hard: bool) -> Result<(), EngineError> {
        let id = group_id.to_ascii_lowercase();
        self.tx.mark_group_removed(&id, hard)?;
        if hard {
            let removed = self.tx.remove_group_memberships(&id)?;
            self.tx.add_to_counter(Counter::Memberships, -(removed as i64))?;
            // AD drops links to a deleted object by itself.
            self.tx.forget_planned_links_to(&id)?;
        }
        if !self.enabled()? {
            return Ok(());
        }
        // A held group already waits for the operator's decision on its deletion.
        let Some(current) = self.state_of(&id)? else { return Ok(()) };
        if !current.is_owned() || current == WritebackState::Held {
            return Ok(());
        }
        if hard {
            self.delete_group(&id, "group permanently deleted in the cloud")
        } else {
            self.remove_per_policy(&id, self.policy.on_soft_delete, "group soft-deleted in the cloud")
        }
    }

    /// Re-decides one group. `touched` lists the members whose links changed (None: no
    /// member change). `restored`: the group came back from a removal.
    pub(super) fn reconcile(
        &mut self,
        group_id: &str,
        touched: Option<&[String]>,
        restored: bool,
    ) -> Result<(), EngineError> {
        if !self.enabled()? {
            return Ok(());
        }
        let Some(group) = self.tx.cloud_group(group_id)? else { return Ok(()) };
        let over = self.tx.group_override(group_id)?;
        let decision = policy::decide(&group, &over, &self.policy.scope, &self.policy.placement, self.schema()?);
        let current = self.tx.writeback(group_id)?;
        match decision {
            Decision::Write(spec) => {
                // Back in scope or restored before its deletion went out: keep it.
                self.tx.cancel_deletion(group_id)?;
                let fingerprint = spec.fingerprint();
                let target_type = spec.group_type.graph_name();
                let active = current.as_ref().is_some_and(|row| row.state.is_active());
                if !active || restored {
                    self.ensure_row(group_id)?;
                    self.set_state(group_id, WritebackState::Pending, "in scope")?;
                    self.tx.set_spec(group_id, fingerprint, target_type, self.cause.now_ms)?;
                    self.emit(group_id, WriteCommand::Upsert(spec))?;
                    self.sync_all_members(group_id)?;
                } else {
                    if current.as_ref().and_then(|row| row.fingerprint) != Some(fingerprint) {
                        self.tx.set_spec(group_id, fingerprint, target_type, self.cause.now_ms)?;
                        self.emit(group_id, WriteCommand::Upsert(spec))?;
                    }
                    if let Some(touched) = touched {
                        let mut delta = MemberDelta::default();
                        for member_id in touched {
                            self.plan_member(group_id, member_id, &mut delta)?;
                        }
                        self.flush_members(group_id, delta)?;
                    }
                }
            }
            Decision::Skip(reason) => match current.map(|row| row.state) {
                Some(state) if state.is_active() || state == WritebackState::Error => {
                    self.remove_per_policy(
                        group_id,
                        self.policy.on_leave_scope,
                        &format!("left writeback scope: {reason}"),
                    )?;
                }
                Some(
                    WritebackState::Kept | WritebackState::Retired | WritebackState::Deleting | WritebackState::Held,
                ) => {}
                _ => {
                    self.ensure_row(group_id)?;
                    self.set_state(group_id, WritebackState::Skipped, &reason)?;
                }
            },
        }
        Ok(())
    }

    pub(super) fn reconcile_all(&mut self) -> Result<(), EngineError> {
        for id in self.tx.present_group_ids()? {
            self.reconcile(&id, None, false)?;
        }
        Ok(())
    }

    /// A writer's status report; a change in the directory's schema, or in whether the
    /// writer accepts mail-enabled groups in this forest, re-decides every group
    /// (mail-enabled types depend on both).
    pub(super) fn writer_status(&mut self, status: &cmd::WriterStatus) -> Result<(), EngineError> {
        let detail = if status.directory_connected {
            status.detail.clone()
        } else {
            format!("directory unreachable: {}", status.detail)
        };
        self.tx.record_service(&ServiceReport {
            name: format!("gwb-writer/{}", status.writer_id),
            healthy: status.directory_connected,
            version: status.version.clone(),
            detail,
            last_seen_ms: self.cause.now_ms,
        })?;
        if !status.directory_connected {
            return Ok(());
        }
        let mut changed = false;
        let current = if status.has_exchange_schema { "1" } else { "0" };
        if self.tx.meta(&Meta::HasExchangeSchema)?.as_deref() != Some(current) {
            self.tx.set_meta(&Meta::HasExchangeSchema, current)?;
            changed = true;
        }
        // A writer from before Exchange detection says nothing: no refusal is assumed.
        if let Some(exchange) = &status.exchange {
            self.tx.set_meta(&Meta::ExchangeDescription, &exchange.description)?;
            let refusal = if exchange.m365_writeback_allowed { "" } else { exchange.m365_writeback_refusal.as_str() };
            if self.tx.meta(&Meta::MailRefusal)?.as_deref().unwrap_or("") != refusal {
                self.tx.set_meta(&Meta::MailRefusal, refusal)?;
                changed = true;
            }
        }
        if changed {
            self.reconcile_all()?;
        }
        Ok(())
    }

    /// Audits a held or discarded deletion (no command is sent).
    pub(super) fn audit_deletion(
        &mut self,
        group_id: &str,
        result: crate::store::AuditResult,
        detail: &str,
    ) -> Result<(), EngineError> {
        Ok(self.audit(group_id, CommandKind::Delete, result, detail)?)
    }
}
