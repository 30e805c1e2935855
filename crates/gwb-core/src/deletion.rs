//! Deletion safety: a cycle's deletions are held for an operator when there are too
//! many of them (DESIGN.md §3 "Deletion").

/// Limits for one cycle (one completed delta round, or one reconciliation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeletionThreshold {
    /// More deletions than this in one cycle are held.
    pub max_groups: u64,
    /// More than this percentage of the written-back groups in one cycle is held.
    /// A single deletion is never held by the percentage rule alone, so small
    /// deployments can still lose one group without an operator.
    pub max_percent: u64,
}

impl Default for DeletionThreshold {
    fn default() -> Self {
        DeletionThreshold { max_groups: 100, max_percent: 10 }
    }
}

/// Whether `deletions` planned in one cycle, out of `written_back` groups this product
/// manages in AD, must wait for an operator. Returns the reason when held.
pub fn must_hold(deletions: u64, written_back: u64, threshold: DeletionThreshold) -> Option<String> {
    if deletions > threshold.max_groups {
        return Some(format!("{deletions} deletions in one cycle exceed the threshold of {} groups", threshold.max_groups));
    }
    let percent_exceeded = deletions > 1 && deletions.saturating_mul(100) > threshold.max_percent.saturating_mul(written_back);
    percent_exceeded.then(|| {
        format!(
            "{deletions} deletions in one cycle are more than {} % of the {written_back} written-back groups",
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
        let strict = DeletionThreshold { max_groups: 0, max_percent: 100 };
        assert!(must_hold(1, 1000, strict).is_some());
        let lax = DeletionThreshold { max_groups: u64::MAX, max_percent: 100 };
        assert!(must_hold(1000, 1000, lax).is_none());
    }
}
