//! The retry schedule as pure functions: the caller passes time and
//! randomness in.

use std::time::Duration;

#[derive(Clone, Debug, PartialEq)]
pub struct RetryPolicy {
    /// Delay before the first retry.
    pub initial: Duration,
    /// Each retry waits this much longer than the one before.
    pub factor: f64,
    /// Longest delay between attempts.
    pub max: Duration,
    /// Spread of the random jitter, as a fraction of the delay (0.2 = ±20%),
    /// so that messages deferred together do not retry in lockstep.
    pub jitter: f64,
    /// Give up (bounce) after a message has waited this long.
    pub max_age: Duration,
    /// Send a delay warning (DSN `Action: delayed`) at this age, if set.
    pub delay_warning: Option<Duration>,
}

impl Default for RetryPolicy {
    /// Minutes at first, growing to hours: 5m, 10m, 20m, 40m, 80m, 160m, 4h...
    fn default() -> Self {
        RetryPolicy {
            initial: Duration::from_secs(300),
            factor: 2.0,
            max: Duration::from_secs(4 * 3600),
            jitter: 0.2,
            max_age: Duration::from_secs(5 * 24 * 3600),
            delay_warning: Some(Duration::from_secs(4 * 3600)),
        }
    }
}

impl RetryPolicy {
    /// The delay after failed attempt number `attempts` (1 = the first
    /// attempt failed). `random` is uniform in [0, 1).
    pub fn delay(&self, attempts: u32, random: f64) -> Duration {
        let exp = attempts.saturating_sub(1).min(64) as i32;
        let base = self.initial.as_secs_f64() * self.factor.powi(exp);
        let base = base.min(self.max.as_secs_f64());
        let spread = 1.0 + self.jitter * (2.0 * random.clamp(0.0, 1.0) - 1.0);
        Duration::from_secs_f64((base * spread).max(1.0))
    }

    /// Whether a message received at `received` has expired at `now`
    /// (both seconds since the epoch).
    pub fn expired(&self, received: u64, now: u64) -> bool {
        now.saturating_sub(received) >= self.max_age.as_secs()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_and_caps() {
        let p = RetryPolicy { jitter: 0.0, ..RetryPolicy::default() };
        assert_eq!(p.delay(1, 0.5), Duration::from_secs(300));
        assert_eq!(p.delay(2, 0.5), Duration::from_secs(600));
        assert_eq!(p.delay(3, 0.5), Duration::from_secs(1200));
        assert_eq!(p.delay(30, 0.5), Duration::from_secs(4 * 3600));
        assert_eq!(p.delay(u32::MAX, 0.5), Duration::from_secs(4 * 3600));
    }

    #[test]
    fn jitter_stays_in_bounds() {
        let p = RetryPolicy::default();
        assert_eq!(p.delay(1, 0.0), Duration::from_secs(240));
        assert_eq!(p.delay(1, 1.0), Duration::from_secs(360));
        assert!(p.expired(0, 5 * 24 * 3600));
        assert!(!p.expired(10, 5 * 24 * 3600));
    }
}
