//! Writeback state of one cloud group: what the planner has asked of AD and what
//! became of it. The planner's store keeps it as text ([`WritebackState::as_str`]),
//! so these spellings are part of the store's format and of the control API.

use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WritebackState {
    /// Commands sent, no successful create/update outcome yet.
    Pending,
    Written,
    /// The last command failed permanently; the next change retries in full.
    Error,
    /// Not written back, for the recorded reason.
    Skipped,
    /// Written once, now frozen in AD (disabled with `keep`, left scope, soft-deleted).
    Kept,
    Deleting,
    Deleted,
    /// Moved to the retired OU.
    Retired,
    /// A deletion held by the deletion threshold until an operator decides.
    Held,
}

impl WritebackState {
    pub const ALL: [WritebackState; 9] = [
        WritebackState::Pending,
        WritebackState::Written,
        WritebackState::Error,
        WritebackState::Skipped,
        WritebackState::Kept,
        WritebackState::Deleting,
        WritebackState::Deleted,
        WritebackState::Retired,
        WritebackState::Held,
    ];

    /// The AD object is ours and kept in step with the cloud.
    pub fn is_active(self) -> bool {
        matches!(self, WritebackState::Pending | WritebackState::Written)
    }

    /// An AD object this product wrote (or may have written) still exists and is
    /// ours to freeze or delete: what disabling writeback acts on, and the base the
    /// deletion threshold's percentage is taken of.
    pub fn is_owned(self) -> bool {
        matches!(
            self,
            WritebackState::Pending
                | WritebackState::Written
                | WritebackState::Error
                | WritebackState::Kept
                | WritebackState::Retired
                | WritebackState::Held
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            WritebackState::Pending => "pending",
            WritebackState::Written => "written",
            WritebackState::Error => "error",
            WritebackState::Skipped => "skipped",
            WritebackState::Kept => "kept",
            WritebackState::Deleting => "deleting",
            WritebackState::Deleted => "deleted",
            WritebackState::Retired => "retired",
            WritebackState::Held => "held",
        }
    }

    /// Every state for which `keep` holds, e.g. for a store query.
    pub fn matching(keep: impl Fn(WritebackState) -> bool) -> Vec<WritebackState> {
        WritebackState::ALL.into_iter().filter(|s| keep(*s)).collect()
    }
}

impl fmt::Display for WritebackState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown writeback state {0:?}")]
pub struct UnknownState(pub String);

impl FromStr for WritebackState {
    type Err = UnknownState;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        WritebackState::ALL.into_iter().find(|s| s.as_str() == text).ok_or_else(|| UnknownState(text.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_reads_back_from_its_spelling() {
        for state in WritebackState::ALL {
            assert_eq!(state.as_str().parse::<WritebackState>(), Ok(state));
        }
        assert!("unknown".parse::<WritebackState>().is_err());
    }

    #[test]
    fn active_states_are_owned_and_skipped_or_deleted_ones_are_not() {
        for state in WritebackState::ALL {
            assert!(!state.is_active() || state.is_owned(), "{state}");
        }
        let owned: Vec<&str> = WritebackState::matching(WritebackState::is_owned).iter().map(|s| s.as_str()).collect();
        assert_eq!(owned, ["pending", "written", "error", "kept", "retired", "held"]);
    }
}
