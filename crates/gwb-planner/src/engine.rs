//! The planning engine: applies events and outcomes to the store and writes the
//! resulting commands into the outbox, each in one transaction.
//!
//! Cost model: a membership change touches one membership row and emits at most one
//! command (O(change)); only a group's first write, a re-enable and a full-round sweep
//! walk a whole group.

use std::collections::{HashMap, HashSet};

use prost::Message as _;
use rusqlite::{Connection, OptionalExtension, params};

use gwb_core::command::{GroupSpec, GroupType, MemberRef};
use gwb_core::deletion::{self, DeletionThreshold};
use gwb_core::members::{self, MemberKind, Resolution, UserAnchor};
use gwb_core::policy::{self, CloudGroup, Decision, DirectorySchema, GroupOverride, Placement, Scope};
use gwb_proto::commands::v1 as cmd;
use gwb_proto::events::v1 as ev;

use crate::config::RemovalAction;

/// Writeback states of a group.
pub mod state {
    /// Commands sent, no successful create/update outcome yet.
    pub const PENDING: &str = "pending";
    pub const WRITTEN: &str = "written";
    /// The last command failed permanently; the next change retries in full.
    pub const ERROR: &str = "error";
    /// Not written back, for the recorded reason.
    pub const SKIPPED: &str = "skipped";
    /// Written once, now frozen in AD (disabled with `keep`, left scope, soft-deleted).
    pub const KEPT: &str = "kept";
    pub const DELETING: &str = "deleting";
    pub const DELETED: &str = "deleted";
    pub const RETIRED: &str = "retired";
    /// A deletion held by the deletion threshold until an operator decides.
    pub const HELD: &str = "held";

    /// States in which the AD object is ours and kept in step with the cloud.
    pub fn is_active(state: &str) -> bool {
        state == PENDING || state == WRITTEN
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("store: {0}")]
    Store(#[from] rusqlite::Error),
    #[error("invalid event: {0}")]
    Invalid(String),
}

pub struct PolicySettings {
    pub scope: Scope,
    pub placement: Placement,
    pub member_batch_size: usize,
    pub on_leave_scope: RemovalAction,
    pub on_soft_delete: RemovalAction,
    pub retired_ou: Option<String>,
    pub partitions: u16,
    pub threshold: DeletionThreshold,
}

pub struct Engine {
    db: Connection,
    policy: PolicySettings,
}

/// Why commands are being planned, carried into each command.
struct Cause {
    text: String,
    observed_at_ms: i64,
    now_ms: i64,
    /// An operator's explicit request: its deletions are not held by the threshold.
    operator: bool,
}

impl Cause {
    fn cloud(text: impl Into<String>, observed_at_ms: i64, now_ms: i64) -> Self {
        Cause { text: text.into(), observed_at_ms, now_ms, operator: false }
    }

    fn operator(text: impl Into<String>, now_ms: i64) -> Self {
        Cause { text: text.into(), observed_at_ms: 0, now_ms, operator: true }
    }
}

impl Engine {
    pub fn new(db: Connection, policy: PolicySettings) -> Self {
        Engine { db, policy }
    }

    pub fn db(&self) -> &Connection {
        &self.db
    }

    /// Applies one change event. Returns false for an event id applied before.
    #[cfg(test)]
    pub fn apply_event(&mut self, event: &ev::ChangeEvent, now_ms: i64) -> Result<bool, EngineError> {
        let tx = self.db.transaction()?;
        let fresh = apply_one(&tx, &self.policy, event, now_ms)?;
        tx.commit()?;
        Ok(fresh)
    }

    /// Applies events in order with one commit for all of them: a commit costs far more
    /// than planning one membership, and the collector publishes events in bursts.
    /// Each event is planned under its own span, so the commands it plans carry its
    /// trace. When an event fails, the whole transaction is rolled back and the events
    /// before it are applied again on their own (per-event savepoints would make SQLite
    /// copy every page a statement touches, doubling the cost of the normal case);
    /// the failed event and those after it are left to be redelivered, so order is
    /// never broken. Returns how many events were applied (or recognised as applied
    /// before) and the error that stopped the batch.
    pub fn apply_events(
        &mut self,
        events: &[(ev::ChangeEvent, tracing::Span)],
        now_ms: i64,
    ) -> (usize, Option<EngineError>) {
        match self.apply_all(events, now_ms) {
            Ok(()) => (events.len(), None),
            Err((0, error)) => (0, Some(error)),
            Err((failed_at, error)) => match self.apply_all(&events[..failed_at], now_ms) {
                Ok(()) => (failed_at, Some(error)),
                Err((_, retry_error)) => {
                    tracing::error!(error = %retry_error, "re-applying the events before a failed one failed too");
                    (0, Some(error))
                }
            },
        }
    }

    /// All of `events` in one transaction, or none of them: the error carries the
    /// index of the event that failed (0 when the transaction itself failed).
    fn apply_all(
        &mut self,
        events: &[(ev::ChangeEvent, tracing::Span)],
        now_ms: i64,
    ) -> Result<(), (usize, EngineError)> {
        let tx = self.db.transaction().map_err(|error| (0, error.into()))?;
        for (index, (event, span)) in events.iter().enumerate() {
            let _entered = span.enter();
            apply_one(&tx, &self.policy, event, now_ms).map_err(|error| (index, error))?;
        }
        tx.commit().map_err(|error| (0, error.into()))
    }

    pub fn apply_outcome(&mut self, outcome: &cmd::Outcome, now_ms: i64) -> Result<(), EngineError> {
        let tx = self.db.transaction()?;
        let cause = Cause::cloud(format!("writer outcome {}", outcome.command_id), 0, now_ms);
        let mut plan = Plan { tx: &tx, policy: &self.policy, cause, ignore_switch: false };
        plan.outcome(outcome)?;
        tx.commit()?;
        Ok(())
    }

    pub fn apply_writer_status(&mut self, status: &cmd::WriterStatus, now_ms: i64) -> Result<(), EngineError> {
        let tx = self.db.transaction()?;
        let detail = if status.directory_connected {
            status.detail.clone()
        } else {
            format!("directory unreachable: {}", status.detail)
        };
        tx.execute(
            "INSERT INTO services (name, healthy, version, detail, last_seen_ms) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT(name) DO UPDATE SET healthy = excluded.healthy, version = excluded.version, detail = excluded.detail, last_seen_ms = excluded.last_seen_ms",
            params![format!("gwb-writer/{}", status.writer_id), status.directory_connected, status.version, detail, now_ms],
        )?;
        let previous = get_meta(&tx, "has_exchange_schema")?;
        let current = if status.has_exchange_schema { "1" } else { "0" };
        if status.directory_connected && previous.as_deref() != Some(current) {
            set_meta(&tx, "has_exchange_schema", current)?;
            let cause = Cause::cloud("directory schema discovered", 0, now_ms);
            let mut plan = Plan { tx: &tx, policy: &self.policy, cause, ignore_switch: false };
            plan.reconcile_all()?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Global switch. Enabling plans every group; disabling freezes (`keep`) or deletes
    /// every group this product wrote.
    pub fn set_writeback(&mut self, enabled: bool, delete_on_disable: bool, now_ms: i64) -> Result<(), EngineError> {
        let tx = self.db.transaction()?;
        set_meta(&tx, "writeback_enabled", if enabled { "1" } else { "0" })?;
        let cause_text = if enabled {
            "operator enabled writeback"
        } else if delete_on_disable {
            "operator disabled writeback (delete)"
        } else {
            "operator disabled writeback (keep)"
        };
        let cause = Cause::operator(cause_text, now_ms);
        let mut plan = Plan { tx: &tx, policy: &self.policy, cause, ignore_switch: false };
        if enabled {
            plan.reconcile_all()?;
        } else {
            set_meta(&tx, "last_disable_mode", if delete_on_disable { "delete" } else { "keep" })?;
            let owned: Vec<String> = plan.group_ids_in_states(&[
                state::PENDING,
                state::WRITTEN,
                state::ERROR,
                state::KEPT,
                state::RETIRED,
                state::HELD,
            ])?;
            for group_id in owned {
                if delete_on_disable {
                    plan.delete_group(&group_id, "writeback disabled by the operator (delete)")?;
                } else {
                    plan.set_state(&group_id, state::KEPT, "writeback disabled by the operator (keep)")?;
                }
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Operator decision on held deletions (`approve`: delete now; otherwise keep the
    /// AD groups, frozen). Empty `group_ids` means all. Returns how many were affected.
    pub fn decide_held(&mut self, group_ids: &[String], approve: bool, now_ms: i64) -> Result<u64, EngineError> {
        let tx = self.db.transaction()?;
        let text = if approve { "operator approved held deletions" } else { "operator discarded held deletions" };
        let mut plan =
            Plan { tx: &tx, policy: &self.policy, cause: Cause::operator(text, now_ms), ignore_switch: false };
        let held = plan.group_ids_in_states(&[state::HELD])?;
        let wanted: Vec<String> = if group_ids.is_empty() {
            held
        } else {
            let requested: HashSet<String> = group_ids.iter().map(|id| id.to_ascii_lowercase()).collect();
            held.into_iter().filter(|id| requested.contains(id)).collect()
        };
        for group_id in &wanted {
            if approve {
                plan.emit_delete(group_id, "deletion approved by the operator")?;
            } else {
                plan.set_state(group_id, state::KEPT, "deletion discarded by the operator; the AD group is kept")?;
                plan.audit(group_id, "", "delete", "discarded", "")?;
            }
        }
        tx.commit()?;
        Ok(wanted.len() as u64)
    }

    /// Sets (or clears) the operator's override of one group and re-plans it.
    pub fn set_override(
        &mut self,
        group_id: &str,
        over: Option<&GroupOverride>,
        now_ms: i64,
    ) -> Result<(), EngineError> {
        let id = group_id.to_ascii_lowercase();
        let tx = self.db.transaction()?;
        match over {
            Some(over) => {
                tx.execute(
                    "INSERT INTO group_overrides (group_id, enabled, group_type, parent_dn) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT(group_id) DO UPDATE SET enabled = excluded.enabled, group_type = excluded.group_type, parent_dn = excluded.parent_dn",
                    params![id, over.enabled, over.group_type.map(|t| t.graph_name()), over.parent_dn],
                )?;
            }
            None => {
                tx.execute("DELETE FROM group_overrides WHERE group_id = ?1", params![id])?;
            }
        }
        let mut plan = Plan {
            tx: &tx,
            policy: &self.policy,
            cause: Cause::operator("operator changed the group's writeback settings", now_ms),
            ignore_switch: false,
        };
        plan.reconcile(&id, None, false)?;
        tx.commit()?;
        Ok(())
    }

    /// Whether the directory, as the writer last reported it, has the Exchange schema.
    pub fn has_exchange_schema(&self) -> Result<bool, EngineError> {
        Ok(get_meta(&self.db, "has_exchange_schema")?.as_deref() == Some("1"))
    }

    /// The plan for one group, computed exactly as for real inside a transaction that
    /// is then rolled back: what would go to the writer now, and which members would
    /// be skipped.
    pub fn preview(&mut self, group_id: &str, now_ms: i64) -> Result<Option<Preview>, EngineError> {
        let id = group_id.to_ascii_lowercase();
        let tx = self.db.transaction()?;
        let before: i64 = tx.query_row("SELECT COALESCE(MAX(seq), 0) FROM outbox", [], |row| row.get(0))?;
        let mut plan =
            Plan { tx: &tx, policy: &self.policy, cause: Cause::operator("preview", now_ms), ignore_switch: true };
        let Some(group) = plan.load_group(&id)? else { return Ok(None) };
        let over = plan.load_override(&id)?;
        let decision = policy::decide(&group, &over, &plan.policy.scope, &plan.policy.placement, plan.schema()?);
        plan.reconcile(&id, None, false)?;
        if plan.state_of(&id)?.as_deref().is_some_and(state::is_active) {
            plan.sync_all_members(&id)?;
        }
        let commands: Vec<(String, String)> = {
            let mut stmt = tx.prepare("SELECT payload FROM outbox WHERE seq > ?1 ORDER BY seq")?;
            let rows = stmt.query_map(params![before], |row| row.get::<_, Vec<u8>>(0))?;
            rows.filter_map(Result::ok)
                .filter_map(|payload| cmd::WriteCommand::decode(payload.as_slice()).ok())
                .filter_map(|command| command.action)
                .map(|action| (action_kind(&action).to_string(), describe_action(&action)))
                .collect()
        };
        let members_to_write: i64 =
            tx.query_row("SELECT COUNT(*) FROM planned_members WHERE group_id = ?1", params![id], |row| row.get(0))?;
        let skipped: Vec<(String, String, String)> = {
            let mut stmt = tx.prepare("SELECT member_id, member_kind, reason FROM skipped_members WHERE group_id = ?1 ORDER BY member_id LIMIT 10000")?;
            let rows = stmt.query_map(params![id], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?;
            rows.collect::<Result<_, _>>()?
        };
        // Dropping the transaction rolls every change back: nothing was planned.
        drop(tx);
        Ok(Some(Preview { decision, commands, members_to_write: members_to_write.max(0) as u64, skipped }))
    }

    /// Staging mode: record the outbox as `staged` in the audit log instead of sending it.
    pub fn stage_outbox(&mut self, now_ms: i64) -> Result<usize, EngineError> {
        let tx = self.db.transaction()?;
        let rows: Vec<(i64, Vec<u8>)> = {
            let mut stmt = tx.prepare("SELECT seq, payload FROM outbox ORDER BY seq LIMIT 1000")?;
            let rows = stmt.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?;
            rows.collect::<Result<_, _>>()?
        };
        for (seq, payload) in &rows {
            if let Ok(command) = cmd::WriteCommand::decode(payload.as_slice()) {
                let detail = command.action.as_ref().map(describe_action).unwrap_or_default();
                let kind = command.action.as_ref().map(action_kind).unwrap_or("unknown");
                tx.execute(
                    "INSERT INTO audit (at_ms, group_id, command_id, kind, result, cause, detail) VALUES (?1, ?2, ?3, ?4, 'staged', ?5, ?6)",
                    params![now_ms, command.group_id, command.command_id, kind, command.cause, detail],
                )?;
                tx.execute("DELETE FROM inflight WHERE command_id = ?1", params![command.command_id])?;
            }
            tx.execute("DELETE FROM outbox WHERE seq = ?1", params![seq])?;
        }
        tx.commit()?;
        Ok(rows.len())
    }

    /// Oldest outbox entries, in order.
    pub fn outbox_batch(&self, limit: usize) -> Result<Vec<OutboxRow>, EngineError> {
        let mut stmt = self
            .db
            .prepare_cached("SELECT seq, partition, payload, command_id, headers FROM outbox ORDER BY seq LIMIT ?1")?;
        let rows = stmt.query_map(params![limit as i64], |row| {
            let headers: String = row.get(4)?;
            Ok(OutboxRow {
                seq: row.get(0)?,
                partition: row.get(1)?,
                payload: row.get(2)?,
                command_id: row.get(3)?,
                headers: serde_json::from_str(&headers).unwrap_or_default(),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Held deletions and skipped members by reason category, for the gauges.
    pub fn gauges(&self) -> Result<(u64, Vec<(String, u64)>), EngineError> {
        let held: i64 =
            self.db
                .query_row("SELECT COUNT(*) FROM writeback WHERE state = ?1", params![state::HELD], |row| row.get(0))?;
        let mut stmt = self.db.prepare_cached("SELECT reason, COUNT(*) FROM skipped_members GROUP BY reason")?;
        let rows = stmt.query_map([], |row| Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?)))?;
        let mut by_category: HashMap<String, u64> = HashMap::new();
        for row in rows {
            let (reason, count) = row?;
            // Reasons may carry details (a server message, a value); the category before
            // them keeps the label set small.
            let category = reason.split([':', '(']).next().unwrap_or_default().trim().to_string();
            *by_category.entry(category).or_default() += count.max(0) as u64;
        }
        Ok((held.max(0) as u64, by_category.into_iter().collect()))
    }

    pub fn outbox_published(&mut self, up_to_seq: i64) -> Result<(), EngineError> {
        self.db.execute("DELETE FROM outbox WHERE seq <= ?1", params![up_to_seq])?;
        Ok(())
    }

    /// Forgets processed event ids older than `before_ms` (replays older than that are
    /// still harmless: every change is applied idempotently).
    pub fn prune_processed(&mut self, before_ms: i64) -> Result<(), EngineError> {
        self.db.execute("DELETE FROM processed_events WHERE at_ms < ?1", params![before_ms])?;
        Ok(())
    }
}

/// Plans one event inside the caller's transaction or savepoint.
fn apply_one(
    tx: &Connection,
    policy: &PolicySettings,
    event: &ev::ChangeEvent,
    now_ms: i64,
) -> Result<bool, EngineError> {
    let fresh = tx
        .prepare_cached("INSERT OR IGNORE INTO processed_events (event_id, at_ms) VALUES (?1, ?2)")?
        .execute(params![event.event_id, now_ms])?
        == 1;
    if !fresh {
        return Ok(false);
    }
    let cause = Cause::cloud(event.cause.clone(), event.observed_at_ms, now_ms);
    let mut plan = Plan { tx, policy, cause, ignore_switch: false };
    let round = event.round_id.as_str();
    use ev::change_event::Change;
    match &event.change {
        Some(Change::User(user)) => plan.user_upsert(user, round)?,
        Some(Change::UserRemoved(removed)) => plan.user_removed(&removed.id)?,
        Some(Change::Group(group)) => plan.group_upsert(group, round)?,
        Some(Change::GroupRemoved(removed)) => {
            let hard = removed.reason == ev::RemovalReason::Deleted as i32;
            plan.group_removed(&removed.id, hard)?
        }
        Some(Change::RoundStarted(boundary)) => plan.round_started(boundary, round)?,
        Some(Change::RoundCompleted(boundary)) => plan.round_completed(boundary, round)?,
        None => return Err(EngineError::Invalid("event without a change".into())),
    }
    Ok(true)
}

fn get_meta(tx: &Connection, key: &str) -> rusqlite::Result<Option<String>> {
    tx.query_row("SELECT value FROM meta WHERE key = ?1", params![key], |row| row.get(0)).optional()
}

fn set_meta(tx: &Connection, key: &str, value: &str) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        params![key, value],
    )?;
    Ok(())
}

pub fn writeback_enabled(db: &Connection) -> rusqlite::Result<bool> {
    Ok(get_meta(db, "writeback_enabled")?.as_deref() == Some("1"))
}

pub fn meta(db: &Connection, key: &str) -> rusqlite::Result<Option<String>> {
    get_meta(db, key)
}

fn kind_name(kind: i32) -> &'static str {
    let kind = ev::MemberKind::try_from(kind).unwrap_or(ev::MemberKind::Other);
    match kind {
        ev::MemberKind::User => MemberKind::User,
        ev::MemberKind::Group => MemberKind::Group,
        ev::MemberKind::Device => MemberKind::Device,
        ev::MemberKind::OrgContact => MemberKind::OrgContact,
        ev::MemberKind::ServicePrincipal => MemberKind::ServicePrincipal,
        ev::MemberKind::Application => MemberKind::Application,
        ev::MemberKind::Other | ev::MemberKind::Unspecified => MemberKind::Other,
    }
    .as_str()
}

struct Plan<'t> {
    tx: &'t Connection,
    policy: &'t PolicySettings,
    cause: Cause,
    /// Plan as if writeback were on (previews).
    ignore_switch: bool,
}

/// What the store knows about one (group, member) pair, read in one statement.
struct KnownMember {
    /// The cloud link's member kind; None when the link is gone.
    kind: Option<String>,
    /// The value planned into AD before (`MemberRef::key`).
    planned: Option<String>,
    user: Option<UserAnchor>,
    /// The AD objectGUID of the member when it is a group written back.
    written_guid: Option<String>,
    /// The recorded reason when the member was skipped before.
    skipped: Option<String>,
}

/// Member values to add and remove for one group, flushed as batched commands.
#[derive(Default)]
struct MemberDelta {
    add: Vec<MemberRef>,
    remove: Vec<MemberRef>,
}

impl Plan<'_> {
    fn enabled(&self) -> rusqlite::Result<bool> {
        Ok(self.ignore_switch || writeback_enabled(self.tx)?)
    }

    fn schema(&self) -> rusqlite::Result<DirectorySchema> {
        Ok(DirectorySchema { has_exchange: get_meta(self.tx, "has_exchange_schema")?.as_deref() == Some("1") })
    }

    // ----- users -------------------------------------------------------------------

    /// Keeps a status counter (see the `counters` table) in step with a change.
    fn count(&self, name: &str, delta: i64) -> rusqlite::Result<()> {
        if delta != 0 {
            self.tx
                .prepare_cached("UPDATE counters SET value = value + ?2 WHERE name = ?1")?
                .execute(params![name, delta])?;
        }
        Ok(())
    }

    fn user_anchor(&self, user_id: &str) -> rusqlite::Result<Option<UserAnchor>> {
        self.tx
            .prepare_cached("SELECT sid, sync_enabled, deleted FROM users WHERE id = ?1")?
            .query_row(params![user_id], |row| {
                Ok(UserAnchor {
                    on_premises_sid: row.get(0)?,
                    on_premises_sync_enabled: row.get(1)?,
                    deleted: row.get(2)?,
                })
            })
            .optional()
    }

    fn user_upsert(&mut self, user: &ev::UserUpsert, round: &str) -> Result<(), EngineError> {
        let id = user.id.to_ascii_lowercase();
        let before = self.user_anchor(&id)?;
        self.tx.prepare_cached(
            "INSERT INTO users (id, display_name, user_principal_name, sid, sync_enabled, deleted, seen_round)
             VALUES (?1, ?2, ?3, ?4, ?5, 0, ?6)
             ON CONFLICT(id) DO UPDATE SET display_name = excluded.display_name, user_principal_name = excluded.user_principal_name,
               sid = excluded.sid, sync_enabled = excluded.sync_enabled, deleted = 0, seen_round = excluded.seen_round",
        )?
        .execute(params![id, user.display_name, user.user_principal_name, user.on_premises_security_identifier, user.on_premises_sync_enabled, round])?;
        if before.as_ref().is_none_or(|user| user.deleted) {
            self.count("users", 1)?;
        }
        let after = self.user_anchor(&id)?;
        if members::resolve_user(before.as_ref()) != members::resolve_user(after.as_ref()) {
            self.member_changed(&id)?;
        }
        Ok(())
    }

    fn user_removed(&mut self, user_id: &str) -> Result<(), EngineError> {
        let id = user_id.to_ascii_lowercase();
        // Both "changed" and "deleted" remove the user from our view. A soft-deleted
        // user keeps its cloud memberships, but its AD account is no longer a synced
        // identity we may vouch for; if it is restored it comes back as an upsert.
        if self.user_anchor(&id)?.is_some_and(|user| !user.deleted) {
            self.count("users", -1)?;
        }
        self.tx.execute(
            "INSERT INTO users (id, deleted) VALUES (?1, 1) ON CONFLICT(id) DO UPDATE SET deleted = 1",
            params![id],
        )?;
        self.member_changed(&id)
    }

    // ----- groups ------------------------------------------------------------------

    fn group_upsert(&mut self, group: &ev::GroupUpsert, round: &str) -> Result<(), EngineError> {
        let id = group.id.to_ascii_lowercase();
        let was_removed: Option<Option<String>> = self
            .tx
            .prepare_cached("SELECT removed FROM groups WHERE id = ?1")?
            .query_row(params![id], |row| row.get(0))
            .optional()?;
        let config = group.writeback_configuration.as_ref();
        self.tx.prepare_cached(
            "INSERT INTO groups (id, display_name, description, mail_nickname, mail, mail_enabled, security_enabled, group_types,
                                 proxy_addresses, on_premises_sync_enabled, writeback_enabled, writeback_group_type, removed, seen_round)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, NULL, ?13)
             ON CONFLICT(id) DO UPDATE SET display_name = excluded.display_name, description = excluded.description,
               mail_nickname = excluded.mail_nickname, mail = excluded.mail, mail_enabled = excluded.mail_enabled,
               security_enabled = excluded.security_enabled, group_types = excluded.group_types, proxy_addresses = excluded.proxy_addresses,
               on_premises_sync_enabled = excluded.on_premises_sync_enabled, writeback_enabled = excluded.writeback_enabled,
               writeback_group_type = excluded.writeback_group_type, removed = NULL, seen_round = excluded.seen_round",
        )?
        .execute(params![
            id,
            group.display_name.clone().unwrap_or_default(),
            group.description,
            group.mail_nickname,
            group.mail,
            group.mail_enabled.unwrap_or(false),
            group.security_enabled.unwrap_or(false),
            serde_json::to_string(&group.group_types).unwrap_or_else(|_| "[]".into()),
            serde_json::to_string(&group.proxy_addresses).unwrap_or_else(|_| "[]".into()),
            group.on_premises_sync_enabled,
            config.and_then(|c| c.is_enabled),
            config.and_then(|c| c.on_premises_group_type.clone()),
            round,
        ])?;
        let mut touched: Vec<String> = Vec::with_capacity(group.members_added.len() + group.members_removed.len());
        let mut counted = 0i64;
        {
            // Insert, else update: two plain statements, so the count is exact and SQLite
            // needs no statement journal for an upsert.
            let mut insert = self.tx.prepare_cached(
                "INSERT OR IGNORE INTO memberships (group_id, member_id, member_kind, seen_round) VALUES (?1, ?2, ?3, ?4)",
            )?;
            let mut update = self.tx.prepare_cached(
                "UPDATE memberships SET member_kind = ?3, seen_round = ?4 WHERE group_id = ?1 AND member_id = ?2",
            )?;
            for member in &group.members_added {
                let member_id = member.id.to_ascii_lowercase();
                let values = params![id, member_id, kind_name(member.kind), round];
                if insert.execute(values)? == 1 {
                    counted += 1;
                } else {
                    update.execute(values)?;
                }
                touched.push(member_id);
            }
            let mut remove =
                self.tx.prepare_cached("DELETE FROM memberships WHERE group_id = ?1 AND member_id = ?2")?;
            for member in &group.members_removed {
                let member_id = member.id.to_ascii_lowercase();
                counted -= remove.execute(params![id, member_id])? as i64;
                touched.push(member_id);
            }
        }
        self.count("memberships", counted)?;
        let restored = matches!(was_removed, Some(Some(_)));
        self.reconcile(&id, Some(&touched), restored)
    }

    fn group_removed(&mut self, group_id: &str, hard: bool) -> Result<(), EngineError> {
        let id = group_id.to_ascii_lowercase();
        self.tx.execute(
            "INSERT INTO groups (id, removed) VALUES (?1, ?2) ON CONFLICT(id) DO UPDATE SET removed = excluded.removed",
            params![id, if hard { "deleted" } else { "changed" }],
        )?;
        if hard {
            let removed = self.tx.execute("DELETE FROM memberships WHERE group_id = ?1", params![id])?;
            self.count("memberships", -(removed as i64))?;
            // AD drops links to a deleted object by itself.
            self.tx.execute("DELETE FROM planned_members WHERE member_id = ?1", params![id])?;
        }
        if !self.enabled()? {
            return Ok(());
        }
        let Some(current) = self.state_of(&id)? else { return Ok(()) };
        let owned = state::is_active(&current)
            || current == state::ERROR
            || current == state::KEPT
            || current == state::RETIRED;
        if !owned {
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
    fn reconcile(&mut self, group_id: &str, touched: Option<&[String]>, restored: bool) -> Result<(), EngineError> {
        if !self.enabled()? {
            return Ok(());
        }
        let Some(group) = self.load_group(group_id)? else { return Ok(()) };
        let over = self.load_override(group_id)?;
        let decision = policy::decide(&group, &over, &self.policy.scope, &self.policy.placement, self.schema()?);
        let current = self.state_of(group_id)?;
        match decision {
            Decision::Write(spec) => {
                // Back in scope or restored before its deletion went out: keep it.
                self.tx.execute("DELETE FROM pending_deletions WHERE group_id = ?1", params![group_id])?;
                let spec_text = format!("{spec:?}");
                let active = current.as_deref().is_some_and(state::is_active);
                if !active || restored {
                    self.ensure_row(group_id)?;
                    self.tx.execute(
                        "UPDATE writeback SET state = ?2, reason = 'in scope', spec = ?3, target_type = ?4, updated_ms = ?5 WHERE group_id = ?1",
                        params![group_id, state::PENDING, spec_text, spec.group_type.graph_name(), self.cause.now_ms],
                    )?;
                    self.emit(group_id, cmd::write_command::Action::Upsert(spec_message(&spec)))?;
                    self.sync_all_members(group_id)?;
                } else {
                    let stored: Option<String> = self.tx.query_row(
                        "SELECT spec FROM writeback WHERE group_id = ?1",
                        params![group_id],
                        |row| row.get(0),
                    )?;
                    if stored.as_deref() != Some(spec_text.as_str()) {
                        self.tx.execute(
                            "UPDATE writeback SET spec = ?2, target_type = ?3, updated_ms = ?4 WHERE group_id = ?1",
                            params![group_id, spec_text, spec.group_type.graph_name(), self.cause.now_ms],
                        )?;
                        self.emit(group_id, cmd::write_command::Action::Upsert(spec_message(&spec)))?;
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
            Decision::Skip(reason) => match current.as_deref() {
                Some(s) if state::is_active(s) || s == state::ERROR => {
                    self.remove_per_policy(
                        group_id,
                        self.policy.on_leave_scope,
                        &format!("left writeback scope: {reason}"),
                    )?;
                }
                Some(state::KEPT) | Some(state::RETIRED) | Some(state::DELETING) | Some(state::HELD) => {}
                _ => {
                    self.ensure_row(group_id)?;
                    self.set_state(group_id, state::SKIPPED, &reason)?;
                }
            },
        }
        Ok(())
    }

    fn reconcile_all(&mut self) -> Result<(), EngineError> {
        let ids: Vec<String> = {
            let mut stmt = self.tx.prepare("SELECT id FROM groups WHERE removed IS NULL ORDER BY id")?;
            let rows = stmt.query_map([], |row| row.get(0))?;
            rows.collect::<Result<_, _>>()?
        };
        for id in ids {
            self.reconcile(&id, None, false)?;
        }
        Ok(())
    }

    fn remove_per_policy(&mut self, group_id: &str, action: RemovalAction, reason: &str) -> Result<(), EngineError> {
        match action {
            RemovalAction::Keep => self.set_state(group_id, state::KEPT, reason).map_err(Into::into),
            RemovalAction::Delete => self.delete_group(group_id, reason),
            RemovalAction::Move => {
                let Some(retired_ou) = self.policy.retired_ou.clone() else {
                    return self.set_state(group_id, state::KEPT, reason).map_err(Into::into);
                };
                self.set_state(group_id, state::RETIRED, reason)?;
                self.emit(group_id, cmd::write_command::Action::Retire(cmd::Retire { retired_ou }))
            }
        }
    }

    /// Deletes the group's AD object: at once for an operator's request, else at the
    /// end of the cycle, through the deletion threshold.
    fn delete_group(&mut self, group_id: &str, reason: &str) -> Result<(), EngineError> {
        if self.cause.operator {
            return self.emit_delete(group_id, reason);
        }
        self.tx.execute(
            "INSERT INTO pending_deletions (group_id, reason, requested_ms) VALUES (?1, ?2, ?3)
             ON CONFLICT(group_id) DO UPDATE SET reason = excluded.reason",
            params![group_id, reason, self.cause.now_ms],
        )?;
        Ok(())
    }

    /// End of a cycle: the pending deletions go ahead together, or are all held. They
    /// count with the deletions sent in the threshold's window, and while some are held
    /// for an operator every new one waits with them.
    fn settle_deletions(&mut self) -> Result<(), EngineError> {
        let pending: Vec<(String, String)> = {
            let mut stmt = self.tx.prepare("SELECT group_id, reason FROM pending_deletions ORDER BY group_id")?;
            let rows = stmt.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?;
            rows.collect::<Result<_, _>>()?
        };
        if pending.is_empty() {
            return Ok(());
        }
        self.tx.execute("DELETE FROM pending_deletions", [])?;
        let threshold = self.policy.threshold;
        let window_start =
            self.cause.now_ms - i64::try_from(threshold.window_minutes.saturating_mul(60_000)).unwrap_or(i64::MAX);
        self.tx.execute("DELETE FROM deletions_sent WHERE at_ms < ?1", params![window_start])?;
        let count = |sql: &str| -> rusqlite::Result<u64> {
            self.tx.query_row(sql, [], |row| row.get::<_, i64>(0)).map(|n| n.max(0) as u64)
        };
        let recent = count("SELECT COUNT(*) FROM deletions_sent")?;
        let held = count("SELECT COUNT(*) FROM writeback WHERE state = 'held'")?;
        let written_back = count(
            "SELECT COUNT(*) FROM writeback WHERE state IN ('pending', 'written', 'error', 'kept', 'retired', 'held')",
        )?;
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
                set_meta(self.tx, "held_reason", &why)?;
                for (group_id, reason) in pending {
                    self.set_state(&group_id, state::HELD, &format!("{reason}; held: {why}"))?;
                    self.audit(&group_id, "", "delete", "held", &why)?;
                }
            }
            None => {
                for (group_id, reason) in pending {
                    self.tx
                        .prepare_cached("INSERT INTO deletions_sent (group_id, at_ms) VALUES (?1, ?2)")?
                        .execute(params![group_id, self.cause.now_ms])?;
                    self.emit_delete(&group_id, &reason)?;
                }
            }
        }
        Ok(())
    }

    fn emit_delete(&mut self, group_id: &str, reason: &str) -> Result<(), EngineError> {
        self.ensure_row(group_id)?;
        self.set_state(group_id, state::DELETING, reason)?;
        self.tx.execute("DELETE FROM planned_members WHERE group_id = ?1", params![group_id])?;
        self.tx.execute("DELETE FROM skipped_members WHERE group_id = ?1", params![group_id])?;
        self.emit(group_id, cmd::write_command::Action::Delete(cmd::Delete {}))
    }

    // ----- members -----------------------------------------------------------------

    /// Plans one (group, member) pair against what was planned before. Everything it
    /// needs is read in one statement and only what changed is written: this runs once
    /// per membership of every group written back, so it sets the planner's pace.
    fn plan_member(&self, group_id: &str, member_id: &str, delta: &mut MemberDelta) -> rusqlite::Result<()> {
        let known = self
            .tx
            .prepare_cached(
                "SELECT m.member_kind, p.ref_key, u.id IS NOT NULL, u.sid, u.sync_enabled, u.deleted, w.object_guid, s.reason
                 FROM (SELECT ?1 AS group_id, ?2 AS member_id) k
                 LEFT JOIN memberships m ON m.group_id = k.group_id AND m.member_id = k.member_id
                 LEFT JOIN planned_members p ON p.group_id = k.group_id AND p.member_id = k.member_id
                 LEFT JOIN users u ON u.id = k.member_id
                 LEFT JOIN writeback w ON w.group_id = k.member_id AND w.state IN ('pending', 'written') AND w.object_guid IS NOT NULL
                 LEFT JOIN skipped_members s ON s.group_id = k.group_id AND s.member_id = k.member_id",
            )?
            .query_row(params![group_id, member_id], |row| {
                let user = row.get::<_, bool>(2)?.then(|| -> rusqlite::Result<UserAnchor> {
                    Ok(UserAnchor { on_premises_sid: row.get(3)?, on_premises_sync_enabled: row.get(4)?, deleted: row.get::<_, Option<bool>>(5)?.unwrap_or(false) })
                });
                Ok(KnownMember {
                    kind: row.get(0)?,
                    planned: row.get(1)?,
                    user: user.transpose()?,
                    written_guid: row.get(6)?,
                    skipped: row.get(7)?,
                })
            })?;
        let resolution = known.kind.as_deref().map(|kind| match MemberKind::from_str_lossy(kind) {
            MemberKind::User => members::resolve_user(known.user.as_ref()),
            MemberKind::Group => members::resolve_group(known.written_guid.as_deref()),
            other => members::resolve_other(other),
        });
        let wanted = match &resolution {
            Some(Resolution::Write(reference)) => Some(reference),
            _ => None,
        };
        if known.planned.as_deref() != wanted.map(MemberRef::key).as_deref() {
            if let Some(old) = known.planned.as_deref().and_then(MemberRef::from_key) {
                delta.remove.push(old);
                if wanted.is_none() {
                    self.tx
                        .prepare_cached("DELETE FROM planned_members WHERE group_id = ?1 AND member_id = ?2")?
                        .execute(params![group_id, member_id])?;
                }
            }
            if let Some(new) = wanted {
                delta.add.push(new.clone());
                self.tx
                    .prepare_cached(
                        "INSERT OR REPLACE INTO planned_members (group_id, member_id, ref_key) VALUES (?1, ?2, ?3)",
                    )?
                    .execute(params![group_id, member_id, new.key()])?;
            }
        }
        match (&resolution, &known.kind) {
            (Some(Resolution::Skip(reason)), Some(kind)) if known.skipped.as_deref() != Some(reason.as_str()) => {
                self.tx
                    .prepare_cached("INSERT OR REPLACE INTO skipped_members (group_id, member_id, member_kind, reason) VALUES (?1, ?2, ?3, ?4)")?
                    .execute(params![group_id, member_id, kind, reason])?;
            }
            (Some(Resolution::Skip(_)), Some(_)) => {}
            _ if known.skipped.is_some() => {
                self.tx
                    .prepare_cached("DELETE FROM skipped_members WHERE group_id = ?1 AND member_id = ?2")?
                    .execute(params![group_id, member_id])?;
            }
            _ => {}
        }
        Ok(())
    }

    /// Full member plan of one group (first write, re-enable, restore).
    fn sync_all_members(&mut self, group_id: &str) -> Result<(), EngineError> {
        let mut ids: Vec<String> = {
            let mut stmt = self.tx.prepare_cached("SELECT member_id FROM memberships WHERE group_id = ?1")?;
            let rows = stmt.query_map(params![group_id], |row| row.get(0))?;
            rows.collect::<Result<_, _>>()?
        };
        let present: HashSet<String> = ids.iter().cloned().collect();
        let planned_only: Vec<String> = {
            let mut stmt = self.tx.prepare_cached("SELECT member_id FROM planned_members WHERE group_id = ?1")?;
            let rows = stmt.query_map(params![group_id], |row| row.get::<_, String>(0))?;
            rows.filter_map(Result::ok).filter(|m| !present.contains(m)).collect()
        };
        ids.extend(planned_only);
        let mut delta = MemberDelta::default();
        for member_id in &ids {
            self.plan_member(group_id, member_id, &mut delta)?;
        }
        self.flush_members(group_id, delta)
    }

    /// A member's resolvability changed (user synced/unsynced, nested group written or
    /// deleted): re-plan it in every active group that contains it.
    fn member_changed(&mut self, member_id: &str) -> Result<(), EngineError> {
        if !self.enabled()? {
            return Ok(());
        }
        let groups: Vec<String> = {
            let mut stmt = self.tx.prepare_cached(
                "SELECT m.group_id FROM memberships m JOIN writeback w ON w.group_id = m.group_id
                 WHERE m.member_id = ?1 AND w.state IN ('pending', 'written')
                 UNION SELECT p.group_id FROM planned_members p WHERE p.member_id = ?1",
            )?;
            let rows = stmt.query_map(params![member_id], |row| row.get(0))?;
            rows.collect::<Result<_, _>>()?
        };
        for group_id in groups {
            let mut delta = MemberDelta::default();
            self.plan_member(&group_id, member_id, &mut delta)?;
            self.flush_members(&group_id, delta)?;
        }
        Ok(())
    }

    fn flush_members(&mut self, group_id: &str, delta: MemberDelta) -> Result<(), EngineError> {
        let batch = self.policy.member_batch_size.max(1);
        for chunk in delta.remove.chunks(batch) {
            let change = cmd::MemberChange { members: chunk.iter().map(member_message).collect() };
            self.emit(group_id, cmd::write_command::Action::RemoveMembers(change))?;
        }
        for chunk in delta.add.chunks(batch) {
            let change = cmd::MemberChange { members: chunk.iter().map(member_message).collect() };
            self.emit(group_id, cmd::write_command::Action::AddMembers(change))?;
        }
        Ok(())
    }

    // ----- full rounds -------------------------------------------------------------

    fn round_started(&mut self, boundary: &ev::RoundBoundary, round: &str) -> Result<(), EngineError> {
        if boundary.full {
            set_meta(self.tx, &format!("full_round.{}", boundary.resource), round)?;
        }
        Ok(())
    }

    /// End of a round. After a *complete* full round, whatever was not seen in it has
    /// vanished (deleted while the delta token was lost) and is swept.
    fn round_completed(&mut self, boundary: &ev::RoundBoundary, round: &str) -> Result<(), EngineError> {
        set_meta(self.tx, "last_round_completed_ms", &self.cause.now_ms.to_string())?;
        self.sweep_full_round(boundary, round)?;
        self.settle_deletions()
    }

    fn sweep_full_round(&mut self, boundary: &ev::RoundBoundary, round: &str) -> Result<(), EngineError> {
        if !boundary.full {
            return Ok(());
        }
        let key = format!("full_round.{}", boundary.resource);
        if get_meta(self.tx, &key)?.as_deref() != Some(round) {
            // Its start was not seen (or another full round began since): sweeping
            // could delete what was merely not re-read. Never guess.
            return Ok(());
        }
        self.tx.execute("DELETE FROM meta WHERE key = ?1", params![key])?;
        if boundary.resource == ev::Resource::Users as i32 {
            let vanished: Vec<String> = {
                let mut stmt = self
                    .tx
                    .prepare("SELECT id FROM users WHERE deleted = 0 AND (seen_round IS NULL OR seen_round <> ?1)")?;
                let rows = stmt.query_map(params![round], |row| row.get(0))?;
                rows.collect::<Result<_, _>>()?
            };
            for id in vanished {
                self.user_removed(&id)?;
            }
        } else if boundary.resource == ev::Resource::Groups as i32 {
            let vanished: Vec<String> = {
                let mut stmt = self.tx.prepare(
                    "SELECT id FROM groups WHERE removed IS NULL AND (seen_round IS NULL OR seen_round <> ?1)",
                )?;
                let rows = stmt.query_map(params![round], |row| row.get(0))?;
                rows.collect::<Result<_, _>>()?
            };
            for id in vanished {
                // Soft or hard is unknowable here; the soft-delete policy is the safe one.
                self.group_removed(&id, false)?;
            }
            let stale: Vec<(String, String)> = {
                let mut stmt = self.tx.prepare(
                    "SELECT m.group_id, m.member_id FROM memberships m JOIN groups g ON g.id = m.group_id
                     WHERE g.seen_round = ?1 AND (m.seen_round IS NULL OR m.seen_round <> ?1)",
                )?;
                let rows = stmt.query_map(params![round], |row| Ok((row.get(0)?, row.get(1)?)))?;
                rows.collect::<Result<_, _>>()?
            };
            let mut by_group: HashMap<String, Vec<String>> = HashMap::new();
            for (group_id, member_id) in stale {
                let removed = self.tx.execute(
                    "DELETE FROM memberships WHERE group_id = ?1 AND member_id = ?2",
                    params![group_id, member_id],
                )?;
                self.count("memberships", -(removed as i64))?;
                by_group.entry(group_id).or_default().push(member_id);
            }
            for (group_id, touched) in by_group {
                self.reconcile(&group_id, Some(&touched), false)?;
            }
        }
        Ok(())
    }

    // ----- outcomes ----------------------------------------------------------------

    fn outcome(&mut self, outcome: &cmd::Outcome) -> Result<(), EngineError> {
        self.tx.execute("DELETE FROM inflight WHERE command_id = ?1", params![outcome.command_id])?;
        let group_id = outcome.group_id.to_ascii_lowercase();
        let Some(current) = self.state_of(&group_id)? else { return Ok(()) };
        let last: i64 = self.tx.query_row(
            "SELECT last_outcome_sequence FROM writeback WHERE group_id = ?1",
            params![group_id],
            |row| row.get(0),
        )?;
        let sequence = i64::try_from(outcome.sequence).unwrap_or(i64::MAX);
        if sequence < last {
            return Ok(());
        }
        self.tx.execute(
            "UPDATE writeback SET last_outcome_sequence = ?2 WHERE group_id = ?1",
            params![group_id, sequence],
        )?;
        let status = cmd::OutcomeStatus::try_from(outcome.status).unwrap_or(cmd::OutcomeStatus::Unspecified);
        let (result, detail) = match status {
            cmd::OutcomeStatus::Failed => ("failed", format!("LDAP {}: {}", outcome.ldap_code, outcome.message)),
            cmd::OutcomeStatus::DryRun => ("dry_run", String::new()),
            _ => (
                "applied",
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
        self.audit(&group_id, &outcome.command_id, &outcome.kind, result, &detail)?;
        if status == cmd::OutcomeStatus::Failed {
            let message = format!("{} failed (LDAP {}): {}", outcome.kind, outcome.ldap_code, outcome.message);
            // The first failure is the cause; member commands failing after a failed
            // upsert ("no group carries anchor…") must not hide it.
            let keep_cause = current == state::ERROR && outcome.kind != "upsert";
            self.tx.execute(
                "UPDATE writeback SET state = ?2, last_error = CASE WHEN ?5 THEN last_error ELSE ?3 END, updated_ms = ?4 WHERE group_id = ?1",
                params![group_id, state::ERROR, message, self.cause.now_ms, keep_cause],
            )?;
            self.tx.execute(
                "INSERT INTO errors (at_ms, group_id, message) VALUES (?1, ?2, ?3)",
                params![self.cause.now_ms, group_id, message],
            )?;
            self.tx.execute("DELETE FROM errors WHERE id <= (SELECT MAX(id) - 200 FROM errors)", [])?;
            return Ok(());
        }
        match outcome.kind.as_str() {
            "upsert" | "retire" => {
                if let Some(group) = &outcome.group {
                    let previous_guid: Option<String> = self.tx.query_row(
                        "SELECT object_guid FROM writeback WHERE group_id = ?1",
                        params![group_id],
                        |row| row.get(0),
                    )?;
                    self.tx.execute(
                        "UPDATE writeback SET dn = ?2, object_guid = ?3, object_sid = ?4, sam_account_name = ?5, updated_ms = ?6 WHERE group_id = ?1",
                        params![group_id, group.dn, group.object_guid.to_ascii_lowercase(), group.object_sid, group.sam_account_name, self.cause.now_ms],
                    )?;
                    if outcome.kind == "upsert" && (current == state::PENDING || current == state::ERROR) {
                        self.tx.execute(
                            "UPDATE writeback SET state = ?2, last_error = NULL WHERE group_id = ?1",
                            params![group_id, state::WRITTEN],
                        )?;
                    }
                    if previous_guid.as_deref() != Some(group.object_guid.to_ascii_lowercase().as_str()) {
                        // Groups that nest this one can now reference it by objectGUID.
                        self.member_changed(&group_id)?;
                    }
                }
            }
            "delete" if current == state::DELETING => {
                self.tx.execute(
                    "UPDATE writeback SET state = ?2, dn = NULL, object_guid = NULL, object_sid = NULL, updated_ms = ?3 WHERE group_id = ?1",
                    params![group_id, state::DELETED, self.cause.now_ms],
                )?;
            }
            _ => {}
        }
        for rejected in &outcome.members_rejected {
            let Some(reference) = rejected.member.as_ref().and_then(member_from_message) else { continue };
            let key = reference.key();
            let member: Option<String> = self
                .tx
                .query_row(
                    "SELECT member_id FROM planned_members WHERE group_id = ?1 AND ref_key = ?2",
                    params![group_id, key],
                    |row| row.get(0),
                )
                .optional()?;
            if let Some(member_id) = member {
                self.tx.execute(
                    "DELETE FROM planned_members WHERE group_id = ?1 AND member_id = ?2",
                    params![group_id, member_id],
                )?;
                let kind: String = self
                    .tx
                    .query_row(
                        "SELECT member_kind FROM memberships WHERE group_id = ?1 AND member_id = ?2",
                        params![group_id, member_id],
                        |row| row.get(0),
                    )
                    .optional()?
                    .unwrap_or_else(|| "user".into());
                self.tx.execute(
                    "INSERT OR REPLACE INTO skipped_members (group_id, member_id, member_kind, reason) VALUES (?1, ?2, ?3, ?4)",
                    params![group_id, member_id, kind, format!("AD refused the member: {}", rejected.reason)],
                )?;
            }
        }
        Ok(())
    }

    // ----- rows and commands -------------------------------------------------------

    fn load_group(&self, group_id: &str) -> rusqlite::Result<Option<CloudGroup>> {
        self.tx
            .prepare_cached(
                "SELECT id, display_name, description, mail_nickname, mail, mail_enabled, security_enabled, group_types, proxy_addresses,
                        on_premises_sync_enabled, writeback_enabled, writeback_group_type
                 FROM groups WHERE id = ?1 AND removed IS NULL",
            )?
            .query_row(params![group_id], |row| {
                let group_types: String = row.get(7)?;
                let proxy_addresses: String = row.get(8)?;
                Ok(CloudGroup {
                    id: row.get(0)?,
                    display_name: row.get(1)?,
                    description: row.get(2)?,
                    mail_nickname: row.get(3)?,
                    mail: row.get(4)?,
                    mail_enabled: row.get(5)?,
                    security_enabled: row.get(6)?,
                    group_types: serde_json::from_str(&group_types).unwrap_or_default(),
                    proxy_addresses: serde_json::from_str(&proxy_addresses).unwrap_or_default(),
                    on_premises_sync_enabled: row.get(9)?,
                    writeback_enabled: row.get(10)?,
                    writeback_group_type: row.get(11)?,
                })
            })
            .optional()
    }

    fn load_override(&self, group_id: &str) -> rusqlite::Result<GroupOverride> {
        Ok(self
            .tx
            .prepare_cached("SELECT enabled, group_type, parent_dn FROM group_overrides WHERE group_id = ?1")?
            .query_row(params![group_id], |row| {
                let group_type: Option<String> = row.get(1)?;
                Ok(GroupOverride {
                    enabled: row.get(0)?,
                    group_type: group_type.as_deref().and_then(GroupType::from_graph_name),
                    parent_dn: row.get(2)?,
                })
            })
            .optional()?
            .unwrap_or_default())
    }

    fn state_of(&self, group_id: &str) -> rusqlite::Result<Option<String>> {
        self.tx
            .prepare_cached("SELECT state FROM writeback WHERE group_id = ?1")?
            .query_row(params![group_id], |row| row.get(0))
            .optional()
    }

    fn group_ids_in_states(&self, states: &[&str]) -> rusqlite::Result<Vec<String>> {
        let mut stmt = self.tx.prepare("SELECT group_id, state FROM writeback ORDER BY group_id")?;
        let rows = stmt.query_map([], |row| Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?)))?;
        let mut ids = Vec::new();
        for row in rows {
            let (id, state) = row?;
            if states.contains(&state.as_str()) {
                ids.push(id);
            }
        }
        Ok(ids)
    }

    fn ensure_row(&self, group_id: &str) -> rusqlite::Result<()> {
        self.tx
            .prepare_cached("INSERT OR IGNORE INTO writeback (group_id, state, updated_ms) VALUES (?1, ?2, ?3)")?
            .execute(params![group_id, state::SKIPPED, self.cause.now_ms])?;
        Ok(())
    }

    fn set_state(&self, group_id: &str, new_state: &str, reason: &str) -> rusqlite::Result<()> {
        self.tx
            .prepare_cached("UPDATE writeback SET state = ?2, reason = ?3, updated_ms = ?4 WHERE group_id = ?1")?
            .execute(params![group_id, new_state, reason, self.cause.now_ms])?;
        Ok(())
    }

    fn emit(&mut self, group_id: &str, action: cmd::write_command::Action) -> Result<(), EngineError> {
        let kind = action_kind(&action);
        let sequence: i64 = self.tx.query_row(
            "UPDATE writeback SET next_sequence = next_sequence + 1 WHERE group_id = ?1 RETURNING next_sequence",
            params![group_id],
            |row| row.get(0),
        )?;
        let command_id = uuid::Uuid::new_v4().to_string();
        let command = cmd::WriteCommand {
            command_id: command_id.clone(),
            group_id: group_id.to_string(),
            sequence: u64::try_from(sequence).unwrap_or(0),
            cause: self.cause.text.clone(),
            observed_at_ms: self.cause.observed_at_ms,
            planned_at_ms: self.cause.now_ms,
            anchor: gwb_core::naming::anchor(group_id),
            action: Some(action),
        };
        let partition = gwb_bus::partition_of(group_id, self.policy.partitions);
        let mut trace = std::collections::BTreeMap::new();
        gwb_runtime::telemetry::inject_current(&mut trace);
        let headers = serde_json::to_string(&trace).unwrap_or_else(|_| "{}".into());
        self.tx
            .prepare_cached("INSERT INTO outbox (command_id, partition, payload, headers) VALUES (?1, ?2, ?3, ?4)")?
            .execute(params![command_id, partition, command.encode_to_vec(), headers])?;
        if let Some(metrics) = gwb_runtime::metrics::global() {
            metrics.command(kind, "planned");
        }
        self.tx
            .prepare_cached("INSERT INTO inflight (command_id, group_id, kind, planned_ms) VALUES (?1, ?2, ?3, ?4)")?
            .execute(params![command_id, group_id, kind, self.cause.now_ms])?;
        let detail = command.action.as_ref().map(describe_action).unwrap_or_default();
        self.audit(group_id, &command_id, kind, "planned", &detail)?;
        Ok(())
    }

    fn audit(&self, group_id: &str, command_id: &str, kind: &str, result: &str, detail: &str) -> rusqlite::Result<()> {
        self.tx
            .prepare_cached("INSERT INTO audit (at_ms, group_id, command_id, kind, result, cause, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)")?
            .execute(params![self.cause.now_ms, group_id, command_id, kind, result, self.cause.text, detail])?;
        Ok(())
    }
}

/// One line describing a command, for the audit log and previews.
pub fn describe_action(action: &cmd::write_command::Action) -> String {
    use cmd::write_command::Action;
    let members = |change: &cmd::MemberChange| {
        let shown: Vec<String> =
            change.members.iter().take(5).filter_map(member_from_message).map(|m| m.ldap_value()).collect();
        let more = change.members.len().saturating_sub(shown.len());
        if more > 0 {
            format!("{} values: {} … (+{more})", change.members.len(), shown.join(" "))
        } else {
            format!("{} values: {}", change.members.len(), shown.join(" "))
        }
    };
    match action {
        Action::Upsert(spec) => format!(
            "{} ({}, sAMAccountName {})",
            gwb_core::escape::child_dn(&spec.cn, &spec.parent_dn),
            cmd::GroupType::try_from(spec.group_type).map(|t| t.as_str_name()).unwrap_or("?"),
            spec.sam_account_name_candidates.first().map(String::as_str).unwrap_or("?")
        ),
        Action::AddMembers(change) | Action::RemoveMembers(change) => members(change),
        Action::Delete(_) => "delete the AD group".into(),
        Action::Retire(retire) => format!("move to {}", retire.retired_ou),
    }
}

/// One command waiting in the outbox.
pub struct OutboxRow {
    pub seq: i64,
    pub partition: u16,
    pub payload: Vec<u8>,
    pub command_id: String,
    /// Trace context of the change that caused it.
    pub headers: std::collections::BTreeMap<String, String>,
}

/// What [`Engine::preview`] found.
pub struct Preview {
    pub decision: Decision,
    /// (kind, description) of each command that would be sent.
    pub commands: Vec<(String, String)>,
    pub members_to_write: u64,
    /// (member id, kind, reason).
    pub skipped: Vec<(String, String, String)>,
}

pub fn action_kind(action: &cmd::write_command::Action) -> &'static str {
    use cmd::write_command::Action;
    match action {
        Action::Upsert(_) => "upsert",
        Action::AddMembers(_) => "add_members",
        Action::RemoveMembers(_) => "remove_members",
        Action::Delete(_) => "delete",
        Action::Retire(_) => "retire",
    }
}

pub fn member_message(reference: &MemberRef) -> cmd::MemberRef {
    let reference = match reference {
        MemberRef::Sid(sid) => cmd::member_ref::Reference::Sid(sid.clone()),
        MemberRef::Guid(guid) => cmd::member_ref::Reference::Guid(guid.clone()),
    };
    cmd::MemberRef { reference: Some(reference) }
}

pub fn member_from_message(reference: &cmd::MemberRef) -> Option<MemberRef> {
    match reference.reference.as_ref()? {
        cmd::member_ref::Reference::Sid(sid) => Some(MemberRef::Sid(sid.clone())),
        cmd::member_ref::Reference::Guid(guid) => Some(MemberRef::Guid(guid.clone())),
    }
}

fn spec_message(spec: &GroupSpec) -> cmd::GroupSpec {
    let group_type = match spec.group_type {
        GroupType::UniversalSecurity => cmd::GroupType::UniversalSecurity,
        GroupType::UniversalDistribution => cmd::GroupType::UniversalDistribution,
        GroupType::UniversalMailEnabledSecurity => cmd::GroupType::UniversalMailEnabledSecurity,
    };
    cmd::GroupSpec {
        cn: spec.cn.clone(),
        parent_dn: spec.parent_dn.clone(),
        sam_account_name_candidates: spec.sam_account_name_candidates.clone(),
        group_type: group_type as i32,
        display_name: spec.display_name.clone(),
        description: spec.description.clone(),
        mail: spec.mail.as_ref().map(|mail| cmd::MailAttributes {
            mail: mail.mail.clone(),
            mail_nickname: mail.mail_nickname.clone(),
            proxy_addresses: mail.proxy_addresses.clone(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gwb_core::naming::NameTemplate;

    const SID: &str = "S-1-5-21-1-2-3-";

    fn engine(threshold: DeletionThreshold) -> Engine {
        let db = crate::store::open(std::path::Path::new(":memory:")).unwrap();
        let policy = PolicySettings {
            scope: Scope { all_security_groups: true, ..Default::default() },
            placement: Placement {
                default_ou: "OU=G,DC=lab".into(),
                security_ou: None,
                distribution_ou: None,
                name_template: NameTemplate::ObjectId,
            },
            member_batch_size: 500,
            on_leave_scope: RemovalAction::Keep,
            on_soft_delete: RemovalAction::Keep,
            retired_ou: None,
            partitions: 4,
            threshold,
        };
        let mut engine = Engine::new(db, policy);
        engine.set_writeback(true, false, 0).unwrap();
        engine
    }

    fn event(change: ev::change_event::Change) -> ev::ChangeEvent {
        ev::ChangeEvent {
            event_id: uuid::Uuid::new_v4().to_string(),
            cause: "test".into(),
            observed_at_ms: 1,
            round_id: "r1".into(),
            round_position: 0,
            change: Some(change),
        }
    }

    fn user(n: u32) -> ev::ChangeEvent {
        event(ev::change_event::Change::User(ev::UserUpsert {
            id: format!("u{n}"),
            on_premises_security_identifier: Some(format!("{SID}{}", 1000 + n)),
            on_premises_sync_enabled: Some(true),
            ..Default::default()
        }))
    }

    fn group(
        id: &str,
        added: impl IntoIterator<Item = u32>,
        removed: impl IntoIterator<Item = u32>,
    ) -> ev::ChangeEvent {
        let link = |n: u32| ev::MemberLink { id: format!("u{n}"), kind: ev::MemberKind::User as i32 };
        event(ev::change_event::Change::Group(ev::GroupUpsert {
            id: id.into(),
            display_name: Some(id.to_uppercase()),
            security_enabled: Some(true),
            mail_enabled: Some(false),
            members_added: added.into_iter().map(link).collect(),
            members_removed: removed.into_iter().map(link).collect(),
            ..Default::default()
        }))
    }

    fn removed(id: &str, hard: bool) -> ev::ChangeEvent {
        let reason = if hard { ev::RemovalReason::Deleted } else { ev::RemovalReason::Changed };
        event(ev::change_event::Change::GroupRemoved(ev::ObjectRemoved { id: id.into(), reason: reason as i32 }))
    }

    fn round_completed() -> ev::ChangeEvent {
        event(ev::change_event::Change::RoundCompleted(ev::RoundBoundary {
            resource: ev::Resource::Groups as i32,
            full: false,
        }))
    }

    /// Takes the outbox: (kind, number of member values) per command.
    fn drain(engine: &mut Engine) -> Vec<(String, usize)> {
        let rows = engine.outbox_batch(100_000).unwrap();
        if let Some(last) = rows.last() {
            engine.outbox_published(last.seq).unwrap();
        }
        rows.iter()
            .map(|row| {
                let command = cmd::WriteCommand::decode(row.payload.as_slice()).unwrap();
                let action = command.action.unwrap();
                let values = match &action {
                    cmd::write_command::Action::AddMembers(c) | cmd::write_command::Action::RemoveMembers(c) => {
                        c.members.len()
                    }
                    _ => 0,
                };
                (action_kind(&action).to_string(), values)
            })
            .collect()
    }

    #[test]
    fn a_membership_change_costs_one_command_whatever_the_group_size() {
        let mut engine = engine(DeletionThreshold::default());
        for n in 0..2000 {
            engine.apply_event(&user(n), 0).unwrap();
        }
        engine.apply_event(&group("g1", 0..1999, []), 0).unwrap();
        let first = drain(&mut engine);
        assert_eq!(first[0], ("upsert".to_string(), 0));
        assert_eq!(first[1..].iter().map(|(_, n)| n).sum::<usize>(), 1999);
        assert!(first[1..].iter().all(|(kind, n)| kind == "add_members" && *n <= 500), "{first:?}");
        engine.apply_event(&group("g1", [1999], []), 0).unwrap();
        assert_eq!(drain(&mut engine), vec![("add_members".to_string(), 1)]);
        engine.apply_event(&group("g1", [], [5]), 0).unwrap();
        assert_eq!(drain(&mut engine), vec![("remove_members".to_string(), 1)]);
    }

    #[test]
    fn replays_and_duplicates_change_nothing() {
        let mut engine = engine(DeletionThreshold::default());
        engine.apply_event(&user(1), 0).unwrap();
        let created = group("g1", [1], []);
        assert!(engine.apply_event(&created, 0).unwrap());
        assert_eq!(drain(&mut engine).len(), 2);
        assert!(!engine.apply_event(&created, 0).unwrap(), "same event id applied twice");
        // Graph replays the same content under a new event id: nothing to do.
        engine.apply_event(&group("g1", [1], []), 0).unwrap();
        assert!(drain(&mut engine).is_empty());
    }

    #[test]
    fn cloud_deletions_wait_for_the_end_of_the_cycle_and_pass_the_threshold() {
        let mut engine = engine(DeletionThreshold { max_groups: 2, max_percent: 100, window_minutes: 60 });
        for id in ["a", "b", "c", "d"] {
            engine.apply_event(&group(id, [], []), 0).unwrap();
        }
        drain(&mut engine);
        engine.apply_event(&removed("a", true), 0).unwrap();
        assert!(drain(&mut engine).is_empty(), "deleted before the cycle ended");
        engine.apply_event(&round_completed(), 0).unwrap();
        assert_eq!(drain(&mut engine), vec![("delete".to_string(), 0)]);
        for id in ["b", "c", "d"] {
            engine.apply_event(&removed(id, true), 0).unwrap();
        }
        engine.apply_event(&round_completed(), 0).unwrap();
        assert!(drain(&mut engine).is_empty(), "3 deletions > 2 must be held");
        assert_eq!(engine.decide_held(&["c".into()], true, 0).unwrap(), 1);
        assert_eq!(drain(&mut engine), vec![("delete".to_string(), 0)]);
        assert_eq!(engine.decide_held(&[], false, 0).unwrap(), 2);
        assert!(drain(&mut engine).is_empty());
    }

    /// A tenant's mass deletion seen over several fast rounds is one mass deletion.
    #[test]
    fn the_threshold_counts_every_deletion_of_its_window_and_holds_later_ones_with_the_held() {
        const MINUTE: i64 = 60_000;
        let mut engine = engine(DeletionThreshold { max_groups: 3, max_percent: 100, window_minutes: 60 });
        for n in 0..12 {
            engine.apply_event(&group(&format!("g{n}"), [], []), 0).unwrap();
        }
        drain(&mut engine);
        let delete_in_round = |engine: &mut Engine, ids: &[&str], at: i64| {
            for id in ids {
                engine.apply_event(&removed(id, true), at).unwrap();
            }
            engine.apply_event(&round_completed(), at).unwrap();
            drain(engine).iter().filter(|(kind, _)| kind == "delete").count()
        };
        assert_eq!(delete_in_round(&mut engine, &["g0", "g1"], MINUTE), 2);
        // 2 sent + 2 now = 4 > 3 within the hour: held, though each round alone passes.
        assert_eq!(delete_in_round(&mut engine, &["g2", "g3"], 2 * MINUTE), 0);
        // While those wait for an operator, a single later deletion waits with them.
        assert_eq!(delete_in_round(&mut engine, &["g4"], 3 * MINUTE), 0);
        assert_eq!(engine.decide_held(&[], false, 4 * MINUTE).unwrap(), 3);
        // Discarded, and the first two have left the window: small deletions go again.
        assert_eq!(delete_in_round(&mut engine, &["g5", "g6"], 62 * MINUTE), 2);
    }

    #[test]
    fn a_group_restored_before_its_cycle_ends_is_not_deleted() {
        let mut engine = engine(DeletionThreshold::default());
        engine.apply_event(&group("a", [], []), 0).unwrap();
        drain(&mut engine);
        engine.apply_event(&removed("a", false), 0).unwrap();
        engine.apply_event(&group("a", [], []), 0).unwrap();
        engine.apply_event(&round_completed(), 0).unwrap();
        assert!(drain(&mut engine).iter().all(|(kind, _)| kind != "delete"));
    }

    #[test]
    fn only_a_complete_full_round_sweeps() {
        let mut engine = engine(DeletionThreshold { max_groups: 100, max_percent: 100, window_minutes: 60 });
        engine.apply_event(&user(1), 0).unwrap();
        engine.apply_event(&group("keep", [1], []), 0).unwrap();
        engine.apply_event(&group("gone", [1], []), 0).unwrap();
        drain(&mut engine);
        let boundary = ev::RoundBoundary { resource: ev::Resource::Groups as i32, full: true };
        let in_round = |change| ev::ChangeEvent { round_id: "full-1".into(), ..event(change) };
        engine.apply_event(&in_round(ev::change_event::Change::RoundStarted(boundary)), 0).unwrap();
        let mut seen = group("keep", [], []);
        seen.round_id = "full-1".into();
        engine.apply_event(&seen, 0).unwrap();
        // A completion for another round (its start never seen) sweeps nothing.
        let mut other = event(ev::change_event::Change::RoundCompleted(boundary));
        other.round_id = "full-0".into();
        engine.apply_event(&other, 0).unwrap();
        assert!(drain(&mut engine).is_empty());
        engine.apply_event(&in_round(ev::change_event::Change::RoundCompleted(boundary)), 0).unwrap();
        // "gone" vanished (soft-delete policy: keep) and "keep" lost its member, which
        // the full round no longer listed.
        assert_eq!(drain(&mut engine), vec![("remove_members".to_string(), 1)]);
        let state: String =
            engine.db().query_row("SELECT state FROM writeback WHERE group_id = 'gone'", [], |r| r.get(0)).unwrap();
        assert_eq!(state, state::KEPT);
    }

    #[test]
    fn switched_off_plans_nothing_and_preview_changes_nothing() {
        let mut engine = engine(DeletionThreshold::default());
        engine.set_writeback(false, false, 0).unwrap();
        engine.apply_event(&user(1), 0).unwrap();
        engine.apply_event(&group("g", [1], []), 0).unwrap();
        assert!(drain(&mut engine).is_empty());
        let preview = engine.preview("g", 0).unwrap().unwrap();
        let kinds: Vec<&str> = preview.commands.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(kinds, ["upsert", "add_members"]);
        assert_eq!(preview.members_to_write, 1);
        assert!(drain(&mut engine).is_empty(), "preview left commands behind");
        let planned: i64 = engine.db().query_row("SELECT COUNT(*) FROM planned_members", [], |r| r.get(0)).unwrap();
        assert_eq!(planned, 0, "preview left planned state behind");
    }

    #[test]
    fn a_batch_keeps_the_events_before_a_failure_and_leaves_the_rest_for_redelivery() {
        let mut engine = engine(DeletionThreshold::default());
        let broken = ev::ChangeEvent { change: None, ..user(3) };
        let batch: Vec<(ev::ChangeEvent, tracing::Span)> =
            [user(1), user(2), broken, user(4)].into_iter().map(|e| (e, tracing::Span::none())).collect();
        let (applied, failure) = engine.apply_events(&batch, 0);
        assert_eq!(applied, 2);
        assert!(matches!(failure, Some(EngineError::Invalid(_))));
        let known = |engine: &Engine, id: &str| -> bool {
            engine
                .db()
                .query_row("SELECT COUNT(*) FROM users WHERE id = ?1", params![id], |row| row.get::<_, i64>(0))
                .unwrap()
                == 1
        };
        assert!(known(&engine, "u1") && known(&engine, "u2"));
        assert!(!known(&engine, "u4"), "an event after the failure was applied out of order");
        let processed: i64 =
            engine.db().query_row("SELECT COUNT(*) FROM processed_events", [], |row| row.get(0)).unwrap();
        assert_eq!(processed, 2, "the failed event must not be recorded as processed");
        // Redelivered (with the failing one fixed), everything lands once.
        let (applied, failure) = engine.apply_events(&batch[..2], 0);
        assert_eq!((applied, failure.is_none()), (2, true));
        let processed_again: i64 =
            engine.db().query_row("SELECT COUNT(*) FROM processed_events", [], |row| row.get(0)).unwrap();
        assert_eq!(processed_again, 2);
    }

    #[test]
    fn the_status_counters_follow_every_membership_and_user_change() {
        let mut engine = engine(DeletionThreshold::default());
        let check = |engine: &Engine| {
            let counted = |name: &str| -> i64 {
                engine
                    .db()
                    .query_row("SELECT value FROM counters WHERE name = ?1", params![name], |row| row.get(0))
                    .unwrap()
            };
            let memberships: i64 =
                engine.db().query_row("SELECT COUNT(*) FROM memberships", [], |row| row.get(0)).unwrap();
            let users: i64 =
                engine.db().query_row("SELECT COUNT(*) FROM users WHERE deleted = 0", [], |row| row.get(0)).unwrap();
            assert_eq!((counted("memberships"), counted("users")), (memberships, users));
            (memberships, users)
        };
        for n in 0..10 {
            engine.apply_event(&user(n), 0).unwrap();
        }
        engine.apply_event(&user(3), 0).unwrap();
        engine.apply_event(&group("g1", 0..6, []), 0).unwrap();
        engine.apply_event(&group("g2", 4..10, []), 0).unwrap();
        engine.apply_event(&group("g1", 0..3, [5]), 0).unwrap();
        assert_eq!(check(&engine), (11, 10));
        let gone = event(ev::change_event::Change::UserRemoved(ev::ObjectRemoved {
            id: "u7".into(),
            reason: ev::RemovalReason::Deleted as i32,
        }));
        engine.apply_event(&gone, 0).unwrap();
        engine.apply_event(&removed("g2", true), 0).unwrap();
        assert_eq!(check(&engine), (5, 9));
        engine.apply_event(&user(7), 0).unwrap();
        assert_eq!(check(&engine), (5, 10));
    }
}
