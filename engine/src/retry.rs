//! Retry as a policy value: which errors are retried, how often, how long to wait.
//!
//! In: a [`RetryPolicy`] and an attempt number. Out: the delay before the next attempt
//! (exponential with full jitter), or `None` when the budget is spent.
//!
//! Every loop that repeats a cloud call goes through [`with_retry`] (one call) or
//! [`follow_pages`] (a paginated list, retried page by page), so `--max-attempts` and
//! `--retry-for` mean the same thing everywhere.

use std::future::Future;
use std::time::{Duration, Instant};

use crate::provider::ProviderError;

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

/// Runs `call` until it succeeds, fails with an error that is not retryable, or the policy
/// gives up; waits the policy's delay between attempts. `on_retry` hears of each failed
/// attempt that will be repeated (attempt number, error, delay), e.g. for progress output.
///
/// # Errors
/// The last error: not retryable, or retryable with the budget spent.
pub async fn with_retry<T, F, Fut>(
    policy: RetryPolicy,
    mut call: F,
    mut on_retry: impl FnMut(u32, &ProviderError, Duration),
) -> Result<T, ProviderError>
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<T, ProviderError>>,
{
    let started = Instant::now();
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        match call(attempt).await {
            Ok(value) => return Ok(value),
            Err(error) if error.kind.is_retryable() => {
                match policy.delay(attempt, started.elapsed()) {
                    Some(delay) => {
                        on_retry(attempt, &error, delay);
                        tokio::time::sleep(delay).await;
                    }
                    None => return Err(error),
                }
            }
            Err(error) => return Err(error),
        }
    }
}

/// Follows a list call's pages. `fetch` is given the page token (`None` for the first page)
/// and answers the page and the next token (`None` or empty at the end); `each` takes every
/// page once. A page that fails with a retryable error is asked for again *with the same
/// token*, under `policy`: a fault on page 7 costs one more call for page 7, not a new listing.
/// The budget is per page: each page gets the policy's attempts and time.
///
/// # Errors
/// The error of a page that failed for good.
pub async fn follow_pages<P, F, Fut>(
    policy: RetryPolicy,
    mut fetch: F,
    mut each: impl FnMut(P),
) -> Result<(), ProviderError>
where
    F: FnMut(Option<String>) -> Fut,
    Fut: Future<Output = Result<(P, Option<String>), ProviderError>>,
{
    let mut page_token: Option<String> = None;
    loop {
        let (page, next) = with_retry(policy, |_| fetch(page_token.clone()), |_, _, _| {}).await?;
        each(page);
        match next.filter(|token| !token.is_empty()) {
            Some(token) => page_token = Some(token),
            None => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::provider::{ErrorKind, ProviderError};
    use std::cell::RefCell;

    fn quick(max_attempts: u32) -> RetryPolicy {
        RetryPolicy {
            max_attempts,
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(1),
            max_elapsed: Duration::from_secs(60),
        }
    }

    fn throttled() -> ProviderError {
        ProviderError::new(
            ErrorKind::Throttled,
            "list",
            "RequestLimitExceeded",
            "slow down",
        )
    }

    #[tokio::test]
    async fn a_failed_page_is_asked_for_again_with_its_own_token() {
        // Three pages; page "2" fails twice, then answers.
        let asked = RefCell::new(Vec::new());
        let failures = RefCell::new(2);
        let mut pages = Vec::new();
        follow_pages(
            quick(5),
            |token: Option<String>| {
                asked.borrow_mut().push(token.clone());
                let result = match token.as_deref() {
                    None => Ok((1, Some("2".to_string()))),
                    Some("2") if *failures.borrow() > 0 => {
                        *failures.borrow_mut() -= 1;
                        Err(throttled())
                    }
                    Some("2") => Ok((2, Some("3".to_string()))),
                    Some(_) => Ok((3, None)),
                };
                async move { result }
            },
            |page| pages.push(page),
        )
        .await
        .unwrap();
        assert_eq!(pages, vec![1, 2, 3]);
        let asked = asked.into_inner();
        assert_eq!(
            asked,
            vec![
                None,
                Some("2".to_string()),
                Some("2".to_string()),
                Some("2".to_string()),
                Some("3".to_string())
            ],
            "the first page is never asked for again"
        );
    }

    #[tokio::test]
    async fn a_page_that_keeps_failing_gives_up_after_the_attempts_allowed() {
        let calls = RefCell::new(0);
        let result = follow_pages(
            quick(3),
            |_token: Option<String>| {
                *calls.borrow_mut() += 1;
                async { Err::<(u32, Option<String>), _>(throttled()) }
            },
            |_| {},
        )
        .await;
        assert_eq!(result.unwrap_err().code, "RequestLimitExceeded");
        assert_eq!(*calls.borrow(), 3);
    }

    #[tokio::test]
    async fn a_fatal_error_is_not_retried() {
        let calls = RefCell::new(0);
        let result = with_retry(
            quick(5),
            |_| {
                *calls.borrow_mut() += 1;
                async {
                    Err::<(), _>(ProviderError::new(
                        ErrorKind::Fatal,
                        "ec2:RunInstances",
                        "InvalidParameterValue",
                        "bad",
                    ))
                }
            },
            |_, _, _| {},
        )
        .await;
        assert!(result.is_err());
        assert_eq!(*calls.borrow(), 1);
    }

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
