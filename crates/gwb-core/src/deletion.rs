//! Deletion safety: deletions are held for an operator when there are too many of them
//! (DESIGN.md §3 "Deletion"). The limits apply to a sliding window, not to one delta
//! round: rounds follow each other within a second while a tenant changes, so a mass
//! deletion is usually seen by several rounds, and a per-round limit would let it
//! through in slices.

/// Limits for the deletions of one window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeletionThreshold {
    /// More deletions than this within the window are held.
    pub max_groups: u64,
    /// More than this percentage of the written-back groups within the window is held.
    /// A single deletion is never held by the percentage rule alone, so small
    /// deployments can still lose one group without an operator.
    pub max_percent: u64,
    /// Deletions sent without an operator in this many minutes count with the ones
    /// about to be sent.
    pub window_minutes: u64,
}

impl Default for DeletionThreshold {
    fn default() -> Self {
        DeletionThreshold { max_groups: 100, max_percent: 10, window_minutes: 60 }
    }
}

/// Whether `deletions` within the window (those sent in it already plus those about to
/// be sent), out of `written_back` groups this product managed in AD when the window
/// began, must wait for an operator. Returns the reason when held.
pub fn must_hold(deletions: u64, written_back: u64, threshold: DeletionThreshold) -> Option<String> {
    let window = threshold.window_minutes;
    if deletions > threshold.max_groups {
        return Some(format!(
            "{deletions} deletions within {window} minutes exceed the threshold of {} groups",
            threshold.max_groups
        ));
    }
    let percent_exceeded =
        deletions > 1 && deletions.saturating_mul(100) > threshold.max_percent.saturating_mul(written_back);
    percent_exceeded.then(|| {
        format!(
            "{deletions} deletions within {window} minutes are more than {} % of the {written_back} written-back groups",
            threshold.max_percent
        )
    })
}

/// Limits for the member values one group may lose within the deletion window
/// (DESIGN.md §3 "Deletion" applied to members): a sync-scope mistake or a broken
/// source strips access as surely as a deleted group. Google Cloud Directory Sync has
/// such a limit; Microsoft's tools have none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemberRemovalThreshold {
    /// More removals from one group than this within the window are held.
    pub max_members: u64,
    /// More than this percentage of a group's members within the window is held…
    pub max_percent: u64,
    /// …when the group had at least this many members (a small group may lose most
    /// of its members without an operator).
    pub min_group_size: u64,
}

impl Default for MemberRemovalThreshold {
    fn default() -> Self {
        MemberRemovalThreshold { max_members: 100, max_percent: 50, min_group_size: 20 }
    }
}

/// Whether `removals` member values within `window_minutes` (those sent in the window
/// already plus those about to be sent), out of the `members` the group held in AD when
/// the window began, must wait for an operator. Returns the reason when held.
pub fn must_hold_member_removals(
    removals: u64,
    members: u64,
    window_minutes: u64,
    threshold: MemberRemovalThreshold,
) -> Option<String> {
    if removals > threshold.max_members {
        return Some(format!(
            "{removals} member removals within {window_minutes} minutes exceed the threshold of {} members",
            threshold.max_members
        ));
    }
    let percent_exceeded = members >= threshold.min_group_size
        && removals.saturating_mul(100) > threshold.max_percent.saturating_mul(members);
    percent_exceeded.then(|| {
        format!(
            "{removals} member removals within {window_minutes} minutes are more than {} % of the group's {members} members",
            threshold.max_percent
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threshold_table() {
        let t = DeletionThreshold::default();
        // (deletions, written back, held?)
        let cases = [
            (0, 0, false),
            (1, 1, false),
            (1, 5, false),
            (2, 5, true),
            (2, 20, false),
            (3, 20, true),
            (10, 100, false),
            (11, 100, true),
            (100, 1000, false),
            (101, 1000, true),
            (101, 100_000, true),
            (1000, 1000, true),
        ];
        for (deletions, written, held) in cases {
            assert_eq!(must_hold(deletions, written, t).is_some(), held, "{deletions} of {written}");
        }
        assert!(must_hold(101, 100_000, t).unwrap_or_default().contains("threshold of 100"));
    }

    #[test]
    fn configurable() {
        let strict = DeletionThreshold { max_groups: 0, max_percent: 100, window_minutes: 60 };
        assert!(must_hold(1, 1000, strict).is_some());
        let lax = DeletionThreshold { max_groups: u64::MAX, max_percent: 100, window_minutes: 60 };
        assert!(must_hold(1000, 1000, lax).is_none());
    }

    #[test]
    fn member_removal_table() {
        let t = MemberRemovalThreshold::default();
        // (removals, members when the window began, held?)
        let cases = [
            (0, 0, false),
            (1, 1, false),
            (19, 19, false),
            (10, 20, false),
            (11, 20, true),
            (50, 100, false),
            (51, 100, true),
            (100, 100_000, false),
            (101, 100_000, true),
            (101, 150, true),
        ];
        for (removals, members, held) in cases {
            assert_eq!(must_hold_member_removals(removals, members, 60, t).is_some(), held, "{removals} of {members}");
        }
        assert!(
            must_hold_member_removals(101, 100_000, 60, t).unwrap_or_default().contains("threshold of 100 members")
        );
        assert!(
            must_hold_member_removals(11, 20, 60, t).unwrap_or_default().contains("50 % of the group's 20 members")
        );
    }
}
