//! The store operations of drift (issue 18): per-group mode and contested mark, the
//! history of drift found, and the reads the comparison needs. A trait of its own
//! that every [`super::StoreTx`] also implements, so drift's additions stay in one
//! place.

use gwb_core::command::MemberRef;
use gwb_core::drift::DriftMode;

use super::StoreError;

/// A group's drift settings and mark.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DriftGroupRow {
    /// The operator's override of `[drift] mode`; None: inherit.
    pub mode: Option<DriftMode>,
    /// Why repairs stopped (contested, or moved out of the managed OUs); None: not
    /// contested.
    pub contested: Option<String>,
}

/// One drift found, as kept for `gwbctl group` and the contested rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriftEvent<'a> {
    pub group_id: &'a str,
    pub at_ms: i64,
    /// `Drift::repeat_key`: what "the same drift" means.
    pub repeat_key: &'a str,
    pub kind: &'a str,
    pub detail: &'a str,
    /// The group's `whenChanged` as the watcher read it.
    pub when_changed: &'a str,
    /// `repaired`, `reported`, `contested`.
    pub action: &'a str,
}

pub trait DriftTx {
    /// The group whose AD object has this objectGUID (lower case), if any.
    fn group_by_object_guid(&self, object_guid: &str) -> Result<Option<String>, StoreError>;
    /// Commands of the group planned and without an outcome yet.
    fn inflight_count(&self, group_id: &str) -> Result<u64, StoreError>;
    /// The DN the writer last reported for the group.
    fn written_dn(&self, group_id: &str) -> Result<Option<String>, StoreError>;
    /// The proxy addresses the writer left out at the group's last write (another
    /// object holds them), without their holders.
    fn skipped_addresses(&self, group_id: &str) -> Result<Vec<String>, StoreError>;
    /// The member values planned into AD for the group.
    fn planned_refs(&self, group_id: &str) -> Result<Vec<MemberRef>, StoreError>;
    /// Values whose removal the member-removal threshold holds: AD keeps them until an
    /// operator decides, so they are no drift.
    fn held_removal_refs(&self, group_id: &str) -> Result<Vec<MemberRef>, StoreError>;
    fn drift_group(&self, group_id: &str) -> Result<DriftGroupRow, StoreError>;
    fn set_drift_mode(&mut self, group_id: &str, mode: Option<DriftMode>) -> Result<(), StoreError>;
    /// Marks the group contested (`Some(reason)`) or clears the mark.
    fn set_contested(&mut self, group_id: &str, reason: Option<&str>, now_ms: i64) -> Result<(), StoreError>;
    fn record_drift(&mut self, event: &DriftEvent<'_>) -> Result<(), StoreError>;
    /// How often this drift was recorded for the group since `since_ms`.
    fn drift_count_since(&self, group_id: &str, repeat_key: &str, since_ms: i64) -> Result<u64, StoreError>;
}

/// One drift as `gwbctl group` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriftHistoryRow {
    pub at_ms: i64,
    pub kind: String,
    pub detail: String,
    pub action: String,
}

/// Read models of drift for the control API and the gauge.
pub trait DriftQueries {
    /// The group's drift settings and its newest `limit` drifts, newest first.
    fn drift_detail(&self, group_id: &str, limit: usize) -> Result<(DriftGroupRow, Vec<DriftHistoryRow>), StoreError>;
    /// Groups contested now.
    fn contested_count(&self) -> Result<u64, StoreError>;
}
