//! Retry as a policy value: which errors are retried, how often, how long to wait.
//!
//! In: a [`RetryPolicy`] and an attempt number. Out: the delay before the next attempt
//! (exponential with full jitter), or `None` when the budget is spent.

use std::time::Duration;

use rand::Rng;

/// How a failed call is retried.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// The delay cap before jitter for the first retry; doubles each time.
    pub base_delay: Duration,
    /// The largest delay between two attempts.
    pub max_delay: Duration,
    /// Give up once this much time has passed since the first attempt.
    pub max_elapsed: Duration,
}

impl Default for RetryPolicy {
    fn default() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 10,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(10),
            max_elapsed: Duration::from_secs(300),
        }
    }
}

impl RetryPolicy {
    /// The delay before attempt `attempt + 1` (attempts count from 1), or `None` when no
    /// attempt is left or the time budget would be exceeded.
    pub fn delay(&self, attempt: u32, elapsed: Duration) -> Option<Duration> {
        if attempt >= self.max_attempts {
            return None;
        }
        let exponent = attempt.saturating_sub(1).min(20);
        let cap = self
            .base_delay
            .saturating_mul(1 << exponent)
            .min(self.max_delay);
        let jittered = rand::rng().random_range(0.0..=1.0) * cap.as_secs_f64();
        let delay = Duration::from_secs_f64(jittered.max(cap.as_secs_f64() / 10.0));
        (elapsed + delay <= self.max_elapsed).then_some(delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_and_stop() {
        let policy = RetryPolicy {
            max_attempts: 4,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(250),
            max_elapsed: Duration::from_secs(60),
        };
        for _ in 0..50 {
            let first = policy.delay(1, Duration::ZERO).unwrap();
            assert!(first <= Duration::from_millis(100) && first >= Duration::from_millis(10));
            let third = policy.delay(3, Duration::ZERO).unwrap();
            assert!(third <= Duration::from_millis(250));
        }
        assert_eq!(policy.delay(4, Duration::ZERO), None);
        assert_eq!(policy.delay(1, Duration::from_secs(60)), None);
    }
}
