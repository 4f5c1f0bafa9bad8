//! What every simulated API call goes through before and after it touches the state:
//! counting, the rate limit, latency and injected faults.
//!
//! In: the operation's name, the key it acts on (token, id, page) and whether it mutates.
//! Out: permission to go on — possibly with the instruction to lose the response after
//! committing — or the `ProviderError` the real cloud would return.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use fleet_engine::provider::{Cloud, ErrorKind, ProviderError};
use sha2::{Digest, Sha256};

/// The prefix of the stats entries that count injected faults: `fault:ec2:DescribeInstances`
/// is how many `ec2:DescribeInstances` calls failed (or lost their answer) on purpose; they are
/// counted under `ec2:DescribeInstances` too.
pub(crate) const FAULT_PREFIX: &str = "fault:";

/// What the caller does after the call was let through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Commit and answer.
    Answer,
    /// Commit, then fail with a transient error as if the response was lost on the way back.
    LoseResponse,
}

/// A token bucket over the whole simulated cloud (this process).
#[derive(Debug)]
struct Bucket {
    rate: f64,
    capacity: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn new(rate: f64) -> Bucket {
        let capacity = rate.max(1.0);
        Bucket {
            rate,
            capacity,
            tokens: capacity,
            last: Instant::now(),
        }
    }

    /// Takes a token at `now` if one is there; refills first for the time since the last
    /// take. The caller passes the time, so the pace can be checked without waiting.
    fn try_take(&mut self, now: Instant) -> bool {
        let elapsed = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.capacity);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Counting, pacing and fault injection for one simulated cloud.
#[derive(Debug)]
pub(crate) struct Gate {
    latency: Duration,
    rate_limit: Option<f64>,
    fault_rate: f64,
    seed: u64,
    bucket: Option<Mutex<Bucket>>,
    /// Calls not yet merged into `stats.json`.
    pending: Mutex<BTreeMap<String, u64>>,
    /// Every call this process made, never reset (for `--stats`).
    session: Mutex<BTreeMap<String, u64>>,
    /// Attempts so far per (operation, key), so each retry draws a fresh, reproducible fault.
    attempts: Mutex<HashMap<(&'static str, String), u64>>,
}

impl Gate {
    /// A gate; a rate limit that is not a positive number means no limit.
    pub(crate) fn new(
        latency: Duration,
        rate_limit: Option<f64>,
        fault_rate: f64,
        seed: u64,
    ) -> Gate {
        let rate_limit = rate_limit.filter(|rate| rate.is_finite() && *rate > 0.0);
        Gate {
            latency,
            rate_limit,
            fault_rate: if fault_rate.is_nan() {
                0.0
            } else {
                fault_rate.clamp(0.0, 1.0)
            },
            seed,
            bucket: rate_limit.map(|rate| Mutex::new(Bucket::new(rate))),
            pending: Mutex::new(BTreeMap::new()),
            session: Mutex::new(BTreeMap::new()),
            attempts: Mutex::new(HashMap::new()),
        }
    }

    /// The rate limit in force.
    pub(crate) fn rate_limit(&self) -> Option<f64> {
        self.rate_limit
    }

    /// Takes the counts not yet merged into `stats.json`.
    pub(crate) fn take_pending(&self) -> BTreeMap<String, u64> {
        std::mem::take(&mut *lock(&self.pending))
    }

    /// Puts counts back after a failed merge, so they are not lost.
    pub(crate) fn restore_pending(&self, counts: BTreeMap<String, u64>) {
        let mut pending = lock(&self.pending);
        for (operation, count) in counts {
            *pending.entry(operation).or_default() += count;
        }
    }

    /// The counts not yet merged, without taking them.
    /// Every call this process made, by operation.
    pub(crate) fn session(&self) -> BTreeMap<String, u64> {
        lock(&self.session).clone()
    }

    pub(crate) fn pending(&self) -> BTreeMap<String, u64> {
        lock(&self.pending).clone()
    }

    /// Lets one API call through, or fails it as the cloud would.
    ///
    /// Every call is counted, including the ones that fail: the cloud saw them. A throttled
    /// call fails at once; the others wait the configured latency first.
    pub(crate) async fn call(
        &self,
        cloud: Cloud,
        operation: &'static str,
        key: &str,
        mutating: bool,
    ) -> Result<Outcome, ProviderError> {
        *lock(&self.pending).entry(operation.to_owned()).or_default() += 1;
        *lock(&self.session).entry(operation.to_owned()).or_default() += 1;
        if let Some(bucket) = &self.bucket {
            if !lock(bucket).try_take(Instant::now()) {
                return Err(throttled(
                    cloud,
                    operation,
                    self.rate_limit.unwrap_or_default(),
                ));
            }
        }
        if !self.latency.is_zero() {
            tokio::time::sleep(self.latency).await;
        }
        if self.fault_rate <= 0.0 {
            return Ok(Outcome::Answer);
        }
        let attempt = {
            let mut attempts = lock(&self.attempts);
            let counter = attempts.entry((operation, key.to_owned())).or_default();
            *counter += 1;
            *counter
        };
        let mut hasher = Sha256::new();
        hasher.update(self.seed.to_le_bytes());
        hasher.update((operation.len() as u64).to_le_bytes());
        hasher.update(operation.as_bytes());
        hasher.update((key.len() as u64).to_le_bytes());
        hasher.update(key.as_bytes());
        hasher.update(attempt.to_le_bytes());
        let digest = hasher.finalize();
        let mut draw = [0u8; 8];
        draw.copy_from_slice(&digest[..8]);
        // 53 bits give a uniform float in [0, 1).
        let draw = (u64::from_le_bytes(draw) >> 11) as f64 / (1u64 << 53) as f64;
        if draw >= self.fault_rate {
            return Ok(Outcome::Answer);
        }
        // Counted apart, so that a test can check that each fault cost exactly one more call.
        let fault = format!("{FAULT_PREFIX}{operation}");
        *lock(&self.pending).entry(fault.clone()).or_default() += 1;
        *lock(&self.session).entry(fault).or_default() += 1;
        let lose_response = mutating && digest[8] & 1 == 1;
        if lose_response {
            Ok(Outcome::LoseResponse)
        } else {
            Err(transient(cloud, operation, digest[9] & 1 == 1, false))
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Counters stay meaningful after a panic elsewhere; keep using them.
    mutex.lock().unwrap_or_else(|poison| poison.into_inner())
}

/// The error a rate-limited call gets.
fn throttled(cloud: Cloud, operation: &str, rate: f64) -> ProviderError {
    match cloud {
        Cloud::Gcp => ProviderError::new(
            ErrorKind::Throttled,
            operation,
            "rateLimitExceeded",
            format!(
                "403 Forbidden: Rate Limit Exceeded (simulated GCP allows {rate} calls per second)"
            ),
        ),
        Cloud::Aws => ProviderError::new(
            ErrorKind::Throttled,
            operation,
            "RequestLimitExceeded",
            format!("Request limit exceeded. (simulated AWS allows {rate} calls per second)"),
        ),
    }
}

/// The error of an injected fault; `after_commit` says the change was made before the
/// response was lost.
pub(crate) fn transient(
    cloud: Cloud,
    operation: &str,
    variant: bool,
    after_commit: bool,
) -> ProviderError {
    let when = if after_commit {
        "simulated fault: the request was carried out but its response was lost"
    } else {
        "simulated fault: the request was not carried out"
    };
    match cloud {
        Cloud::Gcp => ProviderError::new(
            ErrorKind::Transient,
            operation,
            "backendError",
            format!("503 Service Unavailable: Backend Error ({when})"),
        ),
        Cloud::Aws if variant => ProviderError::new(
            ErrorKind::Transient,
            operation,
            "Unavailable",
            format!("The server is overloaded and can't handle the request. ({when})"),
        ),
        Cloud::Aws => ProviderError::new(
            ErrorKind::Transient,
            operation,
            "InternalError",
            format!("An internal error has occurred. ({when})"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::future::Future;
    use std::pin::pin;
    use std::task::{Context, Poll, Waker};

    /// Polls a call once: `Ready` if it answered without waiting.
    fn poll_once<T>(future: impl Future<Output = T>) -> Poll<T> {
        let mut future = pin!(future);
        future
            .as_mut()
            .poll(&mut Context::from_waker(Waker::noop()))
    }

    #[test]
    fn a_bucket_refills_at_its_rate() {
        let start = Instant::now();
        let mut bucket = Bucket::new(2.0);
        bucket.last = start;
        assert!(
            bucket.try_take(start) && bucket.try_take(start),
            "it starts full"
        );
        assert!(!bucket.try_take(start));
        assert!(!bucket.try_take(start + Duration::from_millis(499)));
        assert!(
            bucket.try_take(start + Duration::from_millis(500)),
            "half a second, one call"
        );
        // Idle for long, it holds no more than its capacity.
        let later = start + Duration::from_secs(60);
        assert!(bucket.try_take(later) && bucket.try_take(later));
        assert!(!bucket.try_take(later));
    }

    #[tokio::test]
    async fn a_call_waits_the_latency_and_a_throttled_one_fails_at_once() {
        let gate = Gate::new(Duration::from_secs(3600), Some(0.001), 0.0, 0);
        // The bucket's one token: the call is let through and waits its latency.
        let waiting = poll_once(gate.call(Cloud::Aws, "ec2:RunInstances", "a", true));
        assert!(waiting.is_pending(), "the call did not wait its latency");
        // The next is over the rate (one call per 1,000 s): it fails without waiting.
        match poll_once(gate.call(Cloud::Aws, "ec2:RunInstances", "b", true)) {
            Poll::Ready(Err(error)) => {
                assert_eq!(error.kind, ErrorKind::Throttled);
                assert_eq!(error.code, "RequestLimitExceeded");
            }
            other => panic!("a throttled call waited or went through: {other:?}"),
        }
        assert_eq!(gate.session()["ec2:RunInstances"], 2, "both were counted");
        let quick = Gate::new(Duration::ZERO, None, 0.0, 0);
        assert!(matches!(
            poll_once(quick.call(Cloud::Gcp, "compute.instances.insert", "c", true)),
            Poll::Ready(Ok(Outcome::Answer))
        ));
    }
}
