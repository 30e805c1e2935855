//! Read models for the control API and the gauges: typed answers, read outside the
//! planning transactions. The control API maps them to its protobuf messages.

use super::{SkippedMember, StoreError};

/// One group as `ListGroups` and `GetGroup` show it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GroupSummary {
    pub id: String,
    pub display_name: String,
    /// The writeback state's spelling, `unknown` for a group never decided.
    pub state: String,
    pub ad_dn: String,
    pub last_error: String,
    pub members_written: u64,
    pub members_skipped: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GroupDetail {
    pub summary: GroupSummary,
    pub target_type: String,
    pub ad_object_guid: String,
    pub ad_object_sid: String,
    pub sam_account_name: String,
    /// Member values planned into AD (`MemberRef::key`), at most 10,000.
    pub members_written: Vec<String>,
    pub members_skipped: Vec<SkippedMember>,
    pub policy_reason: String,
    /// Proxy addresses left out at the last write: "address (held by DN)".
    pub addresses_skipped: Vec<String>,
    /// The wanted name held by another object, and the name used ("" without a clash).
    pub name_clash: String,
}

/// A service's last report, as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceRow {
    pub name: String,
    pub healthy: bool,
    pub version: String,
    pub detail: String,
    pub last_seen_ms: i64,
}

/// What `GetStatus` reports from the store.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StatusSnapshot {
    pub writeback_enabled: bool,
    /// `keep`, `delete` or None when writeback was never disabled.
    pub last_disable_mode: Option<String>,
    pub services: Vec<ServiceRow>,
    pub last_round_completed_ms: i64,
    /// (state spelling, count), by state.
    pub groups_by_state: Vec<(String, u64)>,
    pub users_known: u64,
    pub memberships_known: u64,
    pub commands_in_flight: u64,
    pub oldest_in_flight_planned_ms: Option<i64>,
    pub held_deletions: u64,
    pub held_member_removals: u64,
    /// Newest first, at most 10.
    pub recent_errors: Vec<String>,
    /// What the writer found of Exchange (empty before it reported it).
    pub exchange: String,
    /// Why the writer refuses mail-enabled groups (empty: it accepts them).
    pub mail_refusal: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldDeletion {
    pub group_id: String,
    pub display_name: String,
    pub ad_dn: String,
    pub reason: String,
    pub held_at_ms: i64,
}

/// One group's member removals held by the member-removal threshold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldMemberRemovals {
    pub group_id: String,
    pub display_name: String,
    pub ad_dn: String,
    pub count: u64,
    pub reason: String,
    pub held_at_ms: i64,
}

/// The gauges the planner publishes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Gauges {
    pub held_deletions: u64,
    pub held_member_removals: u64,
    pub name_clashes: u64,
    /// Skipped members counted by their full reason.
    pub skipped: Vec<(String, u64)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRow {
    pub at_ms: i64,
    pub command_id: String,
    pub kind: String,
    pub result: String,
    pub cause: String,
    pub detail: String,
}

/// Read-only queries over the store.
pub trait Queries {
    fn status(&self) -> Result<StatusSnapshot, StoreError>;
    /// Groups with ids after `after`, by id, optionally only those in `state`
    /// (`""`: all).
    fn list_groups(&self, after: &str, state: &str, limit: usize) -> Result<Vec<GroupSummary>, StoreError>;
    fn group_detail(&self, group_id: &str) -> Result<Option<GroupDetail>, StoreError>;
    /// Held deletions by group id, and why they were held.
    fn held_deletions(&self) -> Result<(Vec<HeldDeletion>, String), StoreError>;
    /// Held member removals by group id, with the reason of the last one held.
    fn held_member_removals(&self) -> Result<Vec<HeldMemberRemovals>, StoreError>;
    /// A group's audit log, newest first.
    fn audit_log(&self, group_id: &str, limit: u32) -> Result<Vec<AuditRow>, StoreError>;
    fn gauges(&self) -> Result<Gauges, StoreError>;
    fn has_exchange_schema(&self) -> Result<bool, StoreError>;
    /// Why the writer refuses mail-enabled groups in this forest, when it does.
    fn mail_refusal(&self) -> Result<Option<String>, StoreError>;
}
