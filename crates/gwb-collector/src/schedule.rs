//! When the next round runs. A round that found changes is followed soon (a tenant that
//! changes usually goes on changing); an empty one waits the idle interval. A round
//! that was asked for (a change notification, SyncNow) and found nothing is followed by
//! a few short rounds: Graph's delta often lags its notification by seconds (F18), and
//! otherwise the change would wait the whole idle interval. Refused credentials back
//! off up to a quarter of an hour instead of asking Entra again every poll (F19).

use std::time::Duration;

/// After an asked-for round that found nothing: look again after these.
const FOLLOW_UPS: [Duration; 3] = [Duration::from_secs(1), Duration::from_secs(3), Duration::from_secs(10)];
const MAX_AUTH_BACKOFF: Duration = Duration::from_secs(15 * 60);

/// What a set of rounds found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct RoundsOutcome {
    pub changed: usize,
    /// Graph or Entra refused the credentials.
    pub unauthorized: bool,
}

#[derive(Debug)]
pub(crate) struct Schedule {
    idle: Duration,
    active: Duration,
    auth_failures: u32,
    follow_ups_left: usize,
}

impl Schedule {
    pub fn new(idle: Duration, active: Duration) -> Self {
        Schedule { idle, active, auth_failures: 0, follow_ups_left: 0 }
    }

    /// How long to wait after rounds with this `outcome`; `requested`: they were asked
    /// for (woken) rather than run on the timer.
    pub fn after(&mut self, outcome: RoundsOutcome, requested: bool) -> Duration {
        if outcome.unauthorized {
            self.auth_failures += 1;
            self.follow_ups_left = 0;
            let doubled = self.idle.saturating_mul(1 << (self.auth_failures - 1).min(16));
            return doubled.min(MAX_AUTH_BACKOFF).max(self.idle);
        }
        self.auth_failures = 0;
        if outcome.changed > 0 {
            self.follow_ups_left = 0;
            return self.active;
        }
        if requested {
            self.follow_ups_left = FOLLOW_UPS.len();
        }
        if self.follow_ups_left > 0 {
            let next = FOLLOW_UPS[FOLLOW_UPS.len() - self.follow_ups_left];
            self.follow_ups_left -= 1;
            return next.min(self.idle);
        }
        self.idle
    }

    /// Consecutive rounds that failed on credentials.
    pub fn auth_failures(&self) -> u32 {
        self.auth_failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDLE: Duration = Duration::from_secs(30);
    const ACTIVE: Duration = Duration::from_millis(250);

    fn found(changed: usize) -> RoundsOutcome {
        RoundsOutcome { changed, unauthorized: false }
    }

    #[test]
    fn an_asked_for_round_that_finds_nothing_is_followed_by_short_rounds() {
        let mut schedule = Schedule::new(IDLE, ACTIVE);
        assert_eq!(schedule.after(found(0), false), IDLE);
        let waits: Vec<Duration> = [true, false, false, false].iter().map(|&r| schedule.after(found(0), r)).collect();
        assert_eq!(waits, [FOLLOW_UPS[0], FOLLOW_UPS[1], FOLLOW_UPS[2], IDLE]);
        // The change shows up in a follow-up: the active interval takes over.
        schedule.after(found(0), true);
        assert_eq!(schedule.after(found(2), false), ACTIVE);
        assert_eq!(schedule.after(found(0), false), IDLE);
        // Follow-ups never wait longer than the idle interval.
        let mut fast = Schedule::new(Duration::from_secs(2), ACTIVE);
        let waits: Vec<Duration> = (0..3).map(|n| fast.after(found(0), n == 0)).collect();
        assert_eq!(waits, [Duration::from_secs(1), Duration::from_secs(2), Duration::from_secs(2)]);
    }

    #[test]
    fn refused_credentials_back_off_to_a_quarter_of_an_hour() {
        let mut schedule = Schedule::new(IDLE, ACTIVE);
        let refused = RoundsOutcome { changed: 0, unauthorized: true };
        let waits: Vec<u64> = (0..7).map(|_| schedule.after(refused, false).as_secs()).collect();
        assert_eq!(waits, [30, 60, 120, 240, 480, 900, 900]);
        assert_eq!(schedule.auth_failures(), 7);
        assert_eq!(schedule.after(found(0), false), IDLE, "credentials fixed: back to normal");
        assert_eq!(schedule.auth_failures(), 0);
    }
}
