//! Retry policy: pure attempt -> delay arithmetic. Sleeping is the engine's job.

use std::time::Duration;

/// How often and how patiently a failed task is retried.
///
/// Attempt `i` (0-based, the retry after the i-th failure) waits `min(max_delay, delay * (1 + backoff)^i)`,
/// scaled by a random factor in `[1 - jitter, 1 + jitter]`. `backoff = 0` is a fixed delay.
#[derive(Clone, Debug, PartialEq)]
pub struct RetryPolicy {
    /// Retries after the first attempt (0 = never retry).
    pub retries: u32,
    /// Base delay before the first retry.
    pub delay: Duration,
    /// Growth rate per retry (`0` fixed, `1` doubling).
    pub backoff: f64,
    /// Upper bound of any delay (before jitter).
    pub max_delay: Option<Duration>,
    /// Relative jitter in `[0, 1]`.
    pub jitter: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            retries: 0,
            delay: Duration::ZERO,
            backoff: 0.0,
            max_delay: None,
            jitter: 0.0,
        }
    }
}

impl RetryPolicy {
    /// Whether a task that has failed `failures` times may run again.
    pub fn allows(&self, failures: u32) -> bool {
        failures <= self.retries
    }

    /// The delay before retry `i` (0-based), before jitter.
    pub fn base_delay(&self, i: u32) -> Duration {
        let secs =
            self.delay.as_secs_f64() * (1.0 + self.backoff).powi(i.min(i32::MAX as u32) as i32);
        let capped = match self.max_delay {
            Some(m) => secs.min(m.as_secs_f64()),
            None => secs,
        };
        Duration::try_from_secs_f64(capped).unwrap_or(Duration::MAX)
    }

    /// The delay before retry `i` with jitter applied; `unit` is a uniform sample from `[0, 1)`.
    pub fn delay_for(&self, i: u32, unit: f64) -> Duration {
        let base = self.base_delay(i).as_secs_f64();
        let j = self.jitter.clamp(0.0, 1.0);
        let factor = 1.0 - j + 2.0 * j * unit.clamp(0.0, 1.0);
        Duration::try_from_secs_f64(base * factor).unwrap_or(Duration::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exponential_backoff_is_capped() {
        let p = RetryPolicy {
            retries: 5,
            delay: Duration::from_secs(1),
            backoff: 1.0,
            max_delay: Some(Duration::from_secs(5)),
            jitter: 0.0,
        };
        let d: Vec<u64> = (0..5).map(|i| p.base_delay(i).as_secs()).collect();
        assert_eq!(d, [1, 2, 4, 5, 5]);
        assert!(p.allows(5) && !p.allows(6));
    }

    #[test]
    fn zero_backoff_is_fixed_and_jitter_bounds_hold() {
        let p = RetryPolicy {
            retries: 3,
            delay: Duration::from_millis(100),
            jitter: 0.5,
            ..Default::default()
        };
        assert_eq!(p.base_delay(7), Duration::from_millis(100));
        assert_eq!(p.delay_for(0, 0.0), Duration::from_millis(50));
        assert_eq!(p.delay_for(0, 0.5), Duration::from_millis(100));
        assert!(p.delay_for(0, 0.999_999) <= Duration::from_millis(150));
    }

    #[test]
    fn huge_values_do_not_panic() {
        let p = RetryPolicy {
            retries: u32::MAX,
            delay: Duration::from_secs(u64::MAX / 2),
            backoff: 10.0,
            ..Default::default()
        };
        assert_eq!(p.base_delay(u32::MAX), Duration::MAX);
    }
}
