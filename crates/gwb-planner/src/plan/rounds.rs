//! Delta round boundaries, and the sweep that follows a complete full round.

use std::collections::HashMap;

use gwb_core::event::{Resource, RoundBoundary};

use super::{EngineError, Plan};
use crate::store::{Counter, Meta, StoreTx};

impl<T: StoreTx> Plan<'_, T> {
    pub(super) fn round_started(&mut self, boundary: &RoundBoundary, round: &str) -> Result<(), EngineError> {
        if boundary.full {
            self.tx.set_meta(&Meta::FullRound(boundary.resource), round)?;
        }
        Ok(())
    }

    /// End of a round. After a *complete* full round, whatever was not seen in it has
    /// vanished (deleted while the delta token was lost) and is swept.
    pub(super) fn round_completed(&mut self, boundary: &RoundBoundary, round: &str) -> Result<(), EngineError> {
        self.tx.set_meta(&Meta::LastRoundCompletedMs, &self.cause.now_ms.to_string())?;
        self.sweep_full_round(boundary, round)?;
        self.settle_deletions()
    }

    fn sweep_full_round(&mut self, boundary: &RoundBoundary, round: &str) -> Result<(), EngineError> {
        if !boundary.full {
            return Ok(());
        }
        let key = Meta::FullRound(boundary.resource);
        if self.tx.meta(&key)?.as_deref() != Some(round) {
            // Its start was not seen (or another full round began since): sweeping
            // could delete what was merely not re-read. Never guess.
            return Ok(());
        }
        self.tx.delete_meta(&key)?;
        match boundary.resource {
            Resource::Users => {
                for id in self.tx.users_not_seen_in(round)? {
                    // Soft or hard is unknowable here, as for groups: the soft policy.
                    self.user_removed(&id, false)?;
                }
            }
            Resource::Groups => self.sweep_groups(round)?,
        }
        Ok(())
    }

    /// The groups a complete full round of groups did not show, and the links of the
    /// groups it showed that it did not list.
    fn sweep_groups(&mut self, round: &str) -> Result<(), EngineError> {
        for id in self.tx.groups_not_seen_in(round)? {
            // Soft or hard is unknowable here; the soft-delete policy is the safe one.
            self.group_removed(&id, false)?;
        }
        let mut by_group: HashMap<String, Vec<String>> = HashMap::new();
        for (group_id, member_id) in self.tx.stale_memberships(round)? {
            if self.tx.remove_membership(&group_id, &member_id)? {
                self.tx.add_to_counter(Counter::Memberships, -1)?;
            }
            by_group.entry(group_id).or_default().push(member_id);
        }
        for (group_id, touched) in by_group {
            self.reconcile(&group_id, Some(&touched), false)?;
        }
        Ok(())
    }
}
