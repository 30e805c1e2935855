//! One backoff policy type for every retry loop (Graph requests, the bus, the
//! directory): exponential from `base`, capped at `cap`, with jitter so restarted
//! services do not retry in lockstep. Each user picks its numbers; the arithmetic is
//! here once.

use std::time::Duration;

use rand::Rng;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backoff {
    /// Delay before the first retry (before jitter).
    pub base: Duration,
    /// Largest delay (before jitter).
    pub cap: Duration,
    /// Each delay is multiplied by a random factor in `[1 - jitter, 1]`
    /// (`1.0` is "full jitter", `0.0` none).
    pub jitter: f64,
}

impl Backoff {
    pub const fn new(base: Duration, cap: Duration, jitter: f64) -> Self {
        Backoff { base, cap, jitter }
    }

    /// The delay after `failures` consecutive failures (1 = the first retry).
    pub fn delay(&self, failures: u32) -> Duration {
        let exponent = failures.saturating_sub(1).min(30);
        let ceiling = self.base.saturating_mul(1u32 << exponent.min(20)).min(self.cap);
        let jitter = self.jitter.clamp(0.0, 1.0);
        if jitter == 0.0 {
            return ceiling;
        }
        ceiling.mul_f64(rand::rng().random_range((1.0 - jitter)..=1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_and_jitter_stays_below_the_ceiling() {
        let plain = Backoff::new(Duration::from_millis(100), Duration::from_secs(1), 0.0);
        assert_eq!(plain.delay(1), Duration::from_millis(100));
        assert_eq!(plain.delay(2), Duration::from_millis(200));
        assert_eq!(plain.delay(4), Duration::from_millis(800));
        assert_eq!(plain.delay(5), Duration::from_secs(1));
        assert_eq!(plain.delay(u32::MAX), Duration::from_secs(1));
        let jittered = Backoff { jitter: 0.5, ..plain };
        for failures in 1..40 {
            let delay = jittered.delay(failures);
            assert!(delay <= plain.delay(failures) && delay >= plain.delay(failures) / 2, "{failures}: {delay:?}");
        }
    }
}
