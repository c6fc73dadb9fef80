//! Exponential back-off with jitter, for every backend call.

use std::future::Future;
use std::time::Duration;

use futures_util::FutureExt;

use crate::ports::{BackendError, FailureKind};

/// `[retry]`: first delay, ceiling, how many attempts in all, and how long one attempt may take.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    pub initial: Duration,
    pub max: Duration,
    pub attempts: u32,
    /// An attempt that has not answered by then counts as a transient failure.
    pub timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(10),
            attempts: 8,
            timeout: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// The pause before attempt `n + 1` (n starting at 1): doubling from `initial`, capped at
    /// `max`, then drawn uniformly from its upper half so that retrying callers spread out.
    pub fn delay(&self, n: u32) -> Duration {
        let exp = self.initial.saturating_mul(1u32 << n.saturating_sub(1).min(20));
        let capped = exp.min(self.max);
        let half = capped / 2;
        half + Duration::from_nanos(fastrand::u64(0..=half.as_nanos().min(u64::MAX as u128) as u64))
    }

    /// Runs `op` until it succeeds, fails for a reason retrying cannot fix, or runs out of attempts.
    /// An attempt that hangs past `timeout` or panics counts as a transient failure: a faulty
    /// adapter costs retries and, at worst, a dead letter, never the actor that called it.
    pub async fn run<T, F, Fut>(&self, op: F) -> Result<T, BackendError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, BackendError>>,
    {
        self.run_observed(("adapter", "call"), |_, _| {}, op).await
    }

    /// [`RetryPolicy::run`], telling `observe` how long each attempt took and how it ended; an
    /// attempt that times out or panics is reported as `(backend, operation)`'s, so the log
    /// says which call hung. The instrumented layer every actor uses is [`crate::calls::Calls`],
    /// built on this.
    pub async fn run_observed<T, F, Fut>(
        &self,
        (backend, operation): (&str, &str),
        observe: impl Fn(Duration, Result<(), &BackendError>),
        mut op: F,
    ) -> Result<T, BackendError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, BackendError>>,
    {
        let mut attempt = 1;
        loop {
            let began = std::time::Instant::now();
            let guarded = std::panic::AssertUnwindSafe(op()).catch_unwind();
            let outcome = match tokio::time::timeout(self.timeout, guarded).await {
                Ok(Ok(result)) => result,
                Ok(Err(panic)) => {
                    Err(BackendError::transient(backend, operation, format!("panicked: {}", panic_message(&panic))))
                }
                Err(_) => {
                    Err(BackendError::transient(backend, operation, format!("no answer within {:?}", self.timeout)))
                }
            };
            observe(began.elapsed(), outcome.as_ref().map(|_| ()));
            match outcome {
                Ok(v) => return Ok(v),
                Err(e) if e.kind == FailureKind::Transient && attempt < self.attempts => {
                    let pause = self.delay(attempt);
                    tracing::warn!(backend = %e.backend, operation = %e.operation, attempt, error = %e.message, "backend call failed; retrying in {pause:?}");
                    tokio::time::sleep(pause).await;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// The text of a panic payload, when it has one.
pub fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn delays_grow_and_stay_capped() {
        let p = RetryPolicy {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
            attempts: 5,
            ..Default::default()
        };
        let d1 = p.delay(1);
        assert!(d1 >= Duration::from_millis(50) && d1 <= Duration::from_millis(100), "{d1:?}");
        let d3 = p.delay(3);
        assert!(d3 >= Duration::from_millis(200) && d3 <= Duration::from_millis(400), "{d3:?}");
        assert!(p.delay(30) <= Duration::from_secs(1));
    }

    #[tokio::test]
    async fn transient_errors_are_retried_then_given_up() {
        let p = RetryPolicy {
            initial: Duration::from_millis(1),
            max: Duration::from_millis(2),
            attempts: 3,
            timeout: Duration::from_millis(50),
        };
        let calls = AtomicU32::new(0);
        let r: Result<(), _> = p
            .run(|| async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(BackendError::transient("x", "op", "down"))
            })
            .await;
        assert!(r.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        calls.store(0, Ordering::SeqCst);
        let r: Result<(), _> = p
            .run(|| async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(BackendError::permanent("x", "op", "bad"))
            })
            .await;
        assert!(r.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 1, "permanent errors are not retried");
    }

    #[tokio::test]
    async fn panics_and_hangs_are_transient_failures() {
        let p = RetryPolicy {
            initial: Duration::from_millis(1),
            max: Duration::from_millis(2),
            attempts: 3,
            timeout: Duration::from_millis(20),
        };
        let calls = AtomicU32::new(0);
        let r = p
            .run(|| async {
                match calls.fetch_add(1, Ordering::SeqCst) {
                    0 => panic!("adapter bug"),
                    1 => {
                        tokio::time::sleep(Duration::from_secs(5)).await;
                        Ok(0)
                    }
                    _ => Ok(7),
                }
            })
            .await;
        assert_eq!(r.unwrap(), 7);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }
}
