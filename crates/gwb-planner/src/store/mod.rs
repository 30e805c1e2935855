//! The planner's store seam: a synchronous, transactional store of users, groups,
//! memberships and writeback state, with typed rows and typed errors.
//!
//! Planning (`crate::plan`) runs over [`StoreTx`] and never sees SQL; the SQLite
//! implementation (`sqlite`) is the only place that does. Each operation is what one
//! prepared statement (rarely two) does in SQLite, so the cost model of ARCHITECTURE.md
//! holds for any backend: a membership change costs a constant number of operations.
//! The traits are synchronous: the engine runs inside `spawn_blocking` behind a mutex,
//! so a backend may block (a PostgreSQL one would use the blocking client).

pub mod drift;
pub mod queries;
pub mod sqlite;

pub use drift::{DriftEvent, DriftGroupRow, DriftHistoryRow, DriftQueries, DriftTx};

use gwb_core::command::{AppliedGroup, CommandKind, MemberRef};
use gwb_core::event::Resource;
use gwb_core::members::{MemberKind, UserAnchor};
use gwb_core::policy::{CloudGroup, GroupOverride};
use gwb_core::state::WritebackState;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend failed (I/O, constraint, lock): the transaction is rolled back.
    #[error("{0}")]
    Backend(Box<dyn std::error::Error + Send + Sync>),
    /// A stored value this version cannot read.
    #[error("stored {what} is invalid: {detail}")]
    Corrupt { what: &'static str, detail: String },
}

/// Planner-wide settings and markers kept in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Meta {
    /// `1` when the operator enabled writeback.
    WritebackEnabled,
    /// `keep` or `delete`: how writeback was last disabled.
    LastDisableMode,
    /// `1` when the writer found the Exchange schema.
    HasExchangeSchema,
    /// What the writer found of Exchange, as one line for `gwbctl status`.
    ExchangeDescription,
    /// Why the writer refuses mail-enabled groups in this forest; empty when it
    /// accepts them.
    MailRefusal,
    /// Why the deletions now held were held.
    HeldReason,
    LastRoundCompletedMs,
    /// The id of the full round of a resource in progress.
    FullRound(Resource),
}

/// Status counts kept up to date by planning, never counted on demand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counter {
    Memberships,
    Users,
}

/// A user as observed in the cloud.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UserRow {
    pub id: String,
    pub display_name: Option<String>,
    pub user_principal_name: Option<String>,
    pub sid: Option<String>,
    pub sync_enabled: Option<bool>,
}

/// A service's last report (`gwb-writer/<id>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceReport {
    pub name: String,
    pub healthy: bool,
    pub version: String,
    pub detail: String,
    pub last_seen_ms: i64,
}

/// What the store knows about one (group, member) pair, read in one operation.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KnownMember {
    /// The cloud link's member kind; None when the link is gone.
    pub kind: Option<MemberKind>,
    /// The value planned into AD before.
    pub planned: Option<MemberRef>,
    pub user: Option<UserAnchor>,
    /// The AD objectGUID of the member when it is a group written back and active.
    pub written_guid: Option<String>,
    /// The recorded reason when the member was skipped before.
    pub skipped: Option<String>,
}

/// One group's writeback row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WritebackRow {
    pub state: WritebackState,
    /// `GroupSpec::fingerprint` of the spec last sent; None before the first one
    /// (and for rows written by versions before fingerprints).
    pub fingerprint: Option<u64>,
    pub last_outcome_sequence: i64,
    pub object_guid: Option<String>,
}

/// A command planned for the outbox, with what the audit log records of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedCommand {
    pub command_id: String,
    pub group_id: String,
    pub kind: CommandKind,
    pub partition: u16,
    /// The encoded `commands.v1.WriteCommand`.
    pub payload: Vec<u8>,
    /// W3C trace context of the change that caused it, as JSON.
    pub headers: String,
    pub planned_ms: i64,
    pub cause: String,
    pub detail: String,
}

/// What became of a command, as the audit log says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditResult {
    Planned,
    Staged,
    Held,
    Discarded,
    Applied,
    Failed,
    /// The writer refused to write the group (a safety rule); nothing was written.
    Refused,
    DryRun,
    /// Drift found in AD (an edit by someone else).
    Detected,
    /// Drift repairs stopped for the group.
    Contested,
}

impl AuditResult {
    pub fn as_str(self) -> &'static str {
        match self {
            AuditResult::Planned => "planned",
            AuditResult::Staged => "staged",
            AuditResult::Held => "held",
            AuditResult::Discarded => "discarded",
            AuditResult::Applied => "applied",
            AuditResult::Failed => "failed",
            AuditResult::Refused => "refused",
            AuditResult::DryRun => "dry_run",
            AuditResult::Detected => "detected",
            AuditResult::Contested => "contested",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry<'a> {
    pub at_ms: i64,
    pub group_id: &'a str,
    /// Empty for decisions that sent no command (held, discarded).
    pub command_id: &'a str,
    /// The command kind's spelling; an outcome's kind is recorded as the writer sent it.
    pub kind: &'a str,
    pub result: AuditResult,
    pub cause: &'a str,
    pub detail: &'a str,
}

/// One command waiting in the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRow {
    pub seq: i64,
    pub partition: u16,
    pub payload: Vec<u8>,
    pub command_id: String,
    /// Trace context of the change that caused it.
    pub headers: std::collections::BTreeMap<String, String>,
}

/// A member not written back, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedMember {
    pub member_id: String,
    pub kind: String,
    pub reason: String,
}

/// The store: transactions for planning, plus the outbox's own bookkeeping.
pub trait Store: Send + 'static {
    type Tx<'a>: StoreTx
    where
        Self: 'a;

    /// A transaction; dropping it without [`StoreTx::commit`] rolls it back.
    fn transaction(&mut self) -> Result<Self::Tx<'_>, StoreError>;

    /// Oldest outbox entries, in order.
    fn outbox_batch(&self, limit: usize) -> Result<Vec<OutboxRow>, StoreError>;

    /// The outbox entries up to `up_to_seq` were published with confirms.
    fn outbox_published(&mut self, up_to_seq: i64) -> Result<(), StoreError>;

    /// Forgets processed event ids older than `before_ms`.
    fn prune_processed(&mut self, before_ms: i64) -> Result<(), StoreError>;
}

/// Everything planning reads and writes, inside one transaction.
/// Drift's operations are their own trait ([`DriftTx`]), required of every transaction.
pub trait StoreTx: DriftTx {
    fn commit(self) -> Result<(), StoreError>;

    // ----- events, settings, counters, services ---------------------------------

    /// Records an event id; false when it was recorded before (a redelivery).
    fn mark_processed(&mut self, event_id: &str, now_ms: i64) -> Result<bool, StoreError>;
    fn meta(&self, key: &Meta) -> Result<Option<String>, StoreError>;
    fn set_meta(&mut self, key: &Meta, value: &str) -> Result<(), StoreError>;
    fn delete_meta(&mut self, key: &Meta) -> Result<(), StoreError>;
    fn add_to_counter(&mut self, counter: Counter, delta: i64) -> Result<(), StoreError>;
    fn record_service(&mut self, report: &ServiceReport) -> Result<(), StoreError>;

    // ----- users ------------------------------------------------------------------

    fn user_anchor(&self, user_id: &str) -> Result<Option<UserAnchor>, StoreError>;
    /// Inserts or updates the user (no longer deleted), seen in `round`.
    fn upsert_user(&mut self, user: &UserRow, round: &str) -> Result<(), StoreError>;
    fn mark_user_deleted(&mut self, user_id: &str) -> Result<(), StoreError>;
    /// Users not deleted and not seen in `round`.
    fn users_not_seen_in(&self, round: &str) -> Result<Vec<String>, StoreError>;

    // ----- groups -----------------------------------------------------------------

    /// Whether the group is known and marked removed.
    fn group_is_removed(&self, group_id: &str) -> Result<bool, StoreError>;
    /// Inserts or updates the group (no longer removed), seen in `round`.
    fn upsert_group(&mut self, group: &CloudGroup, round: &str) -> Result<(), StoreError>;
    /// Marks the group removed, hard (deleted) or soft.
    fn mark_group_removed(&mut self, group_id: &str, hard: bool) -> Result<(), StoreError>;
    /// The group unless it is removed.
    fn cloud_group(&self, group_id: &str) -> Result<Option<CloudGroup>, StoreError>;
    /// Every group not removed, by id.
    fn present_group_ids(&self) -> Result<Vec<String>, StoreError>;
    /// Groups not removed and not seen in `round`.
    fn groups_not_seen_in(&self, round: &str) -> Result<Vec<String>, StoreError>;
    fn group_override(&self, group_id: &str) -> Result<GroupOverride, StoreError>;
    fn set_group_override(&mut self, group_id: &str, over: Option<&GroupOverride>) -> Result<(), StoreError>;

    // ----- memberships ------------------------------------------------------------

    /// Records the link, seen in `round`; true when it is new.
    fn upsert_membership(
        &mut self,
        group_id: &str,
        member_id: &str,
        kind: MemberKind,
        round: &str,
    ) -> Result<bool, StoreError>;
    /// True when there was such a link.
    fn remove_membership(&mut self, group_id: &str, member_id: &str) -> Result<bool, StoreError>;
    /// Removes every link of the group; returns how many there were.
    fn remove_group_memberships(&mut self, group_id: &str) -> Result<u64, StoreError>;
    fn membership_kind(&self, group_id: &str, member_id: &str) -> Result<Option<MemberKind>, StoreError>;
    /// Links of the groups seen in `round` that were not seen in it: (group, member).
    fn stale_memberships(&self, round: &str) -> Result<Vec<(String, String)>, StoreError>;

    // ----- member plan ------------------------------------------------------------

    fn known_member(&self, group_id: &str, member_id: &str) -> Result<KnownMember, StoreError>;
    /// [`StoreTx::known_member`] for every link of the group, in one operation (a
    /// group's first write reads them all).
    fn known_members_of(&self, group_id: &str) -> Result<Vec<(String, KnownMember)>, StoreError>;
    fn set_planned_member(&mut self, group_id: &str, member_id: &str, reference: &MemberRef) -> Result<(), StoreError>;
    fn clear_planned_member(&mut self, group_id: &str, member_id: &str) -> Result<(), StoreError>;
    /// Members planned into AD for the group.
    fn planned_member_ids(&self, group_id: &str) -> Result<Vec<String>, StoreError>;
    fn planned_member_by_ref(&self, group_id: &str, reference: &MemberRef) -> Result<Option<String>, StoreError>;
    fn planned_member_count(&self, group_id: &str) -> Result<u64, StoreError>;
    /// Forgets every planned link to `member_id` (AD drops links to a deleted object).
    fn forget_planned_links_to(&mut self, member_id: &str) -> Result<(), StoreError>;
    fn set_skipped_member(
        &mut self,
        group_id: &str,
        member_id: &str,
        kind: &str,
        reason: &str,
    ) -> Result<(), StoreError>;
    fn clear_skipped_member(&mut self, group_id: &str, member_id: &str) -> Result<(), StoreError>;
    fn skipped_members(&self, group_id: &str, limit: usize) -> Result<Vec<SkippedMember>, StoreError>;
    /// Forgets the group's planned, skipped and held members (its AD object goes away).
    fn forget_member_plan(&mut self, group_id: &str) -> Result<(), StoreError>;
    /// Member removals of the group held for an operator.
    fn held_member_removal_count(&self, group_id: &str) -> Result<u64, StoreError>;
    fn hold_member_removal(
        &mut self,
        group_id: &str,
        member_id: &str,
        reference: &MemberRef,
        reason: &str,
        now_ms: i64,
    ) -> Result<(), StoreError>;
    /// The value is planned again (back in the cloud group): its held removal is moot.
    fn release_held_member_removal(&mut self, group_id: &str, reference: &MemberRef) -> Result<(), StoreError>;
    /// Takes the group's held removals out of the store (the operator approved them).
    fn take_held_member_removals(&mut self, group_id: &str) -> Result<Vec<MemberRef>, StoreError>;
    /// The operator discarded the group's held removals: AD keeps those values,
    /// unmanaged, and drift repair leaves them alone. Returns how many.
    fn keep_held_member_removals(&mut self, group_id: &str) -> Result<u64, StoreError>;
    fn groups_with_held_member_removals(&self) -> Result<Vec<String>, StoreError>;
    /// Member values removed from the group without an operator since `window_start_ms`;
    /// older records are forgotten.
    fn member_removals_sent_since(&mut self, group_id: &str, window_start_ms: i64) -> Result<u64, StoreError>;
    fn record_member_removals_sent(&mut self, group_id: &str, removals: u64, at_ms: i64) -> Result<(), StoreError>;
    /// Groups in which a change of `member_id` must be re-planned: active groups
    /// linking it and groups it was planned into.
    fn groups_to_replan(&self, member_id: &str) -> Result<Vec<String>, StoreError>;

    // ----- writeback --------------------------------------------------------------

    fn writeback(&self, group_id: &str) -> Result<Option<WritebackRow>, StoreError>;
    /// Creates the group's row (skipped) unless it exists.
    fn ensure_writeback(&mut self, group_id: &str, now_ms: i64) -> Result<(), StoreError>;
    fn set_state(&mut self, group_id: &str, state: WritebackState, reason: &str, now_ms: i64)
    -> Result<(), StoreError>;
    /// Records the spec sent (fingerprint and target type).
    fn set_spec(&mut self, group_id: &str, fingerprint: u64, target_type: &str, now_ms: i64) -> Result<(), StoreError>;
    /// The group's next command sequence number.
    fn next_sequence(&mut self, group_id: &str) -> Result<u64, StoreError>;
    fn set_last_outcome_sequence(&mut self, group_id: &str, sequence: i64) -> Result<(), StoreError>;
    /// State `error` with `message` (kept as the last error unless `keep_cause`), and
    /// the message in the recent-errors log.
    fn record_failure(
        &mut self,
        group_id: &str,
        message: &str,
        keep_cause: bool,
        now_ms: i64,
    ) -> Result<(), StoreError>;
    /// The AD object as the writer found or left it.
    fn record_applied(&mut self, group_id: &str, group: &AppliedGroup, now_ms: i64) -> Result<(), StoreError>;
    /// State `written`, last error cleared.
    fn mark_written(&mut self, group_id: &str) -> Result<(), StoreError>;
    /// The proxy addresses the writer left out at the group's last write, because
    /// another object holds them (empty: none).
    fn set_addresses_skipped(&mut self, group_id: &str, addresses: &[String]) -> Result<(), StoreError>;
    /// What holds the group's wanted name and the name used instead ("" without a clash).
    fn set_name_clash(&mut self, group_id: &str, clash: &str) -> Result<(), StoreError>;
    /// State `deleted`, the AD object forgotten.
    fn mark_deleted(&mut self, group_id: &str, now_ms: i64) -> Result<(), StoreError>;
    fn group_ids_in_states(&self, states: &[WritebackState]) -> Result<Vec<String>, StoreError>;
    fn count_in_states(&self, states: &[WritebackState]) -> Result<u64, StoreError>;

    // ----- deletions --------------------------------------------------------------

    /// Queues a cloud-caused deletion until the end of the cycle.
    fn request_deletion(&mut self, group_id: &str, reason: &str, now_ms: i64) -> Result<(), StoreError>;
    fn cancel_deletion(&mut self, group_id: &str) -> Result<(), StoreError>;
    /// The queued deletions (group, reason), by group id; the queue is left empty.
    fn take_pending_deletions(&mut self) -> Result<Vec<(String, String)>, StoreError>;
    /// Deletions sent since `window_start_ms` (older ones are forgotten).
    fn deletions_sent_since(&mut self, window_start_ms: i64) -> Result<u64, StoreError>;
    fn record_deletion_sent(&mut self, group_id: &str, at_ms: i64) -> Result<(), StoreError>;

    // ----- outbox and audit -------------------------------------------------------

    /// Writes the command to the outbox, marks it in flight and audits it as planned.
    fn enqueue(&mut self, command: &PlannedCommand) -> Result<(), StoreError>;
    fn audit(&mut self, entry: &AuditEntry<'_>) -> Result<(), StoreError>;
    /// The command is no longer in flight (its outcome arrived, or it was staged).
    fn command_finished(&mut self, command_id: &str) -> Result<(), StoreError>;
    /// Oldest outbox entries, in order (staging reads them inside its transaction).
    fn outbox_head(&self, limit: usize) -> Result<Vec<OutboxRow>, StoreError>;
    fn remove_from_outbox(&mut self, seq: i64) -> Result<(), StoreError>;
}
