//! The one place that reads the wall clock. Everything else takes a [`Clock`] (or the
//! milliseconds it returned) as a parameter, so tests can set the time and the code
//! says where time enters. A clippy `disallowed-methods` rule keeps
//! `SystemTime::now` in this file.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Wall-clock time, real or set by a test.
#[derive(Clone, Debug, Default)]
pub struct Clock {
    fixed: Option<Arc<AtomicI64>>,
}

impl Clock {
    /// The system clock.
    pub fn system() -> Self {
        Clock { fixed: None }
    }

    /// A clock that stands at `ms` until [`Clock::set_ms`] or [`Clock::advance`] moves it.
    pub fn fixed(ms: i64) -> Self {
        Clock { fixed: Some(Arc::new(AtomicI64::new(ms))) }
    }

    /// Milliseconds since the Unix epoch.
    pub fn now_ms(&self) -> i64 {
        match &self.fixed {
            Some(ms) => ms.load(Ordering::Relaxed),
            None => system_now_ms(),
        }
    }

    /// The time as a `SystemTime` (for HTTP dates and certificates).
    pub fn now(&self) -> SystemTime {
        match &self.fixed {
            Some(ms) => UNIX_EPOCH + Duration::from_millis(u64::try_from(ms.load(Ordering::Relaxed)).unwrap_or(0)),
            None => system_now(),
        }
    }

    /// Sets a fixed clock; no effect on the system clock.
    pub fn set_ms(&self, ms: i64) {
        if let Some(fixed) = &self.fixed {
            fixed.store(ms, Ordering::Relaxed);
        }
    }

    /// Moves a fixed clock forward; no effect on the system clock.
    pub fn advance(&self, by: Duration) {
        if let Some(fixed) = &self.fixed {
            fixed.fetch_add(i64::try_from(by.as_millis()).unwrap_or(i64::MAX), Ordering::Relaxed);
        }
    }
}

/// Milliseconds since the Unix epoch from the system clock. Prefer a [`Clock`] passed
/// in; this is for the edges (a binary's `main`, a log line) where none is.
pub fn system_now_ms() -> i64 {
    i64::try_from(system_now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis()).unwrap_or(i64::MAX)
}

#[allow(clippy::disallowed_methods)] // the one reading of the wall clock
fn system_now() -> SystemTime {
    SystemTime::now()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fixed_clock_moves_only_when_told() {
        let clock = Clock::fixed(1_000);
        assert_eq!(clock.now_ms(), 1_000);
        clock.advance(Duration::from_millis(500));
        assert_eq!(clock.now_ms(), 1_500);
        clock.set_ms(7);
        assert_eq!(clock.now_ms(), 7);
        assert!(Clock::system().now_ms() > 1_700_000_000_000);
    }
}
