//! Graph's directory-read budget. Microsoft documents the identity and access limits
//! in resource units per 10 seconds per app and tenant: 3,500 for tenants under 50
//! users, 5,000 up to 500 users, 8,000 above. A delta page or a group read with
//! `$select` costs 1 unit (1, less 1 for `$select`, never below 1); each request in a
//! `$batch` counts on its own; Graph reports the real cost in `x-ms-resource-unit`.
//! The collector paces itself under the configured budget instead of running into
//! 429s, which count against the limit too.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The window Graph counts resource units in.
pub const WINDOW: Duration = Duration::from_secs(10);

/// Resource units spent in the last [`WINDOW`], and how long a request must wait.
#[derive(Debug)]
pub struct Budget {
    /// Units allowed per window; 0 = no pacing.
    limit: u32,
    spent: VecDeque<(Instant, u32)>,
    in_window: u32,
    peak: u32,
}

impl Budget {
    pub fn new(limit: u32) -> Self {
        Budget { limit, spent: VecDeque::new(), in_window: 0, peak: 0 }
    }

    fn expire(&mut self, now: Instant) {
        while let Some(&(at, cost)) = self.spent.front() {
            if now.saturating_duration_since(at) < WINDOW {
                break;
            }
            self.spent.pop_front();
            self.in_window -= cost;
        }
    }

    /// How long to wait at `now` before a request of `cost` units fits the budget
    /// (zero: send it now).
    pub fn wait_before(&mut self, now: Instant, cost: u32) -> Duration {
        self.expire(now);
        if self.limit == 0 || self.in_window + cost <= self.limit {
            return Duration::ZERO;
        }
        // The oldest spending that must leave the window first.
        let mut excess = self.in_window + cost - self.limit.max(cost);
        for &(at, spent) in &self.spent {
            if spent >= excess {
                return (at + WINDOW).saturating_duration_since(now);
            }
            excess -= spent;
        }
        Duration::ZERO
    }

    pub fn spend(&mut self, now: Instant, cost: u32) {
        if cost == 0 {
            return;
        }
        self.expire(now);
        self.spent.push_back((now, cost));
        self.in_window += cost;
        self.peak = self.peak.max(self.in_window);
    }

    /// (units spent in the last window, the most ever spent in one window, the limit).
    pub fn usage(&mut self, now: Instant) -> (u32, u32, u32) {
        self.expire(now);
        (self.in_window, self.peak, self.limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_wait_until_the_window_has_room() {
        let start = Instant::now();
        let mut budget = Budget::new(3);
        for n in 0..3 {
            let at = start + Duration::from_secs(n);
            assert_eq!(budget.wait_before(at, 1), Duration::ZERO);
            budget.spend(at, 1);
        }
        let at = start + Duration::from_secs(4);
        // The first unit leaves the window 10 s after it was spent.
        assert_eq!(budget.wait_before(at, 1), Duration::from_secs(6));
        // A costlier request waits for as many units to leave.
        assert_eq!(budget.wait_before(at, 2), Duration::from_secs(7));
        assert_eq!(budget.usage(at), (3, 3, 3));
        assert_eq!(budget.wait_before(start + WINDOW, 1), Duration::ZERO);
        assert_eq!(budget.usage(start + Duration::from_secs(13)), (0, 3, 3));
    }

    #[test]
    fn no_limit_never_waits_and_a_request_above_the_limit_waits_for_an_empty_window() {
        let start = Instant::now();
        let mut free = Budget::new(0);
        free.spend(start, 1_000_000);
        assert_eq!(free.wait_before(start, 5), Duration::ZERO);
        let mut small = Budget::new(2);
        small.spend(start, 2);
        assert_eq!(small.wait_before(start, 5), WINDOW);
        assert_eq!(small.wait_before(start + WINDOW, 5), Duration::ZERO);
    }
}
