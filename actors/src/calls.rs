//! The one way actors call a backend. A [`Calls`] wraps every port call in the same layers, as
//! tower stacks retry, timeout and metrics around a service: retries with back-off
//! ([`RetryPolicy`]), a timeout on each attempt, a panicking adapter counted as a failed
//! attempt, each attempt's latency and outcome in the call statistics, and the backend's
//! health for `/readyz` (failing while its attempts fail, healthy again on the first success).

use std::future::Future;
use std::sync::Arc;

use crate::metrics::Metrics;
use crate::ports::{BackendResult, FailureKind};
use crate::retry::RetryPolicy;

/// Instrumented, retried backend calls; cheap to clone.
#[derive(Clone)]
pub struct Calls {
    policy: RetryPolicy,
    metrics: Arc<Metrics>,
}

impl Calls {
    pub fn new(policy: RetryPolicy, metrics: Arc<Metrics>) -> Self {
        Calls { policy, metrics }
    }

    pub fn policy(&self) -> RetryPolicy {
        self.policy
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Runs `op`, an `operation` on `backend` ("control store", "put"), until it succeeds or
    /// fails for good. A lost conditional write ([`FailureKind::Conflict`]) says nothing about
    /// the backend's health: it is counted as an error of the call but does not mark the
    /// backend failing.
    pub async fn call<T, F, Fut>(&self, backend: &str, operation: &str, op: F) -> BackendResult<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = BackendResult<T>>,
    {
        let observe = |took, outcome: Result<(), &crate::ports::BackendError>| {
            self.metrics.record_call(backend, operation, took, outcome.is_ok());
            match outcome {
                Err(e) if e.kind != FailureKind::Conflict => self.metrics.set_problem(backend, Some(e.to_string())),
                _ => self.metrics.set_problem(backend, None),
            }
        };
        self.policy.run_observed((backend, operation), observe, op).await
    }

    /// [`Calls::call`] over `items` in chunks of at most `max`, in order, each chunk a call of
    /// its own (its own attempts and timeouts); the first chunk that fails for good ends it.
    /// Chunks written before a failure stay written: callers treat the failure as the whole
    /// batch's, and a sink's consumers already tolerate a re-sent record (at least once).
    pub async fn call_chunked<'i, T, F, Fut>(
        &self,
        backend: &str,
        operation: &str,
        items: &'i [T],
        max: usize,
        mut op: F,
    ) -> BackendResult<()>
    where
        F: FnMut(&'i [T]) -> Fut,
        Fut: Future<Output = BackendResult<()>>,
    {
        for chunk in items.chunks(max.max(1)) {
            self.call(backend, operation, || op(chunk)).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::BackendError;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    fn quick() -> RetryPolicy {
        RetryPolicy {
            initial: Duration::from_millis(1),
            max: Duration::from_millis(2),
            attempts: 3,
            timeout: Duration::from_millis(50),
        }
    }

    #[tokio::test]
    async fn every_attempt_is_counted_and_health_follows_the_last_one() {
        let metrics = Arc::new(Metrics::default());
        let calls = Calls::new(quick(), metrics.clone());
        let tries = AtomicU32::new(0);
        let seen_failing = std::sync::Mutex::new(false);
        let r = calls
            .call("store", "put", || async {
                if tries.fetch_add(1, Ordering::SeqCst) < 2 {
                    Err(BackendError::transient("store", "put", "down"))
                } else {
                    // While it was being retried, the backend was reported failing.
                    *seen_failing.lock().unwrap() = metrics.unhealthy().contains_key("store");
                    Ok(7)
                }
            })
            .await;
        assert_eq!(r.unwrap(), 7);
        assert!(*seen_failing.lock().unwrap(), "an outage shows while it is retried");
        assert!(metrics.unhealthy().is_empty(), "healthy again after a success");
        let stats = &metrics.calls()[&("store".to_owned(), "put".to_owned())];
        assert_eq!((stats.count, stats.errors), (3, 2));
        assert_eq!(stats.buckets.iter().sum::<u64>(), 3);
    }

    #[tokio::test]
    async fn a_lost_conditional_write_is_no_outage() {
        let metrics = Arc::new(Metrics::default());
        let calls = Calls::new(quick(), metrics.clone());
        let r: BackendResult<()> = calls
            .call("store", "put", || async { Err(BackendError::new("store", "put", "moved", FailureKind::Conflict)) })
            .await;
        assert_eq!(r.unwrap_err().kind, FailureKind::Conflict);
        assert!(metrics.unhealthy().is_empty());
        assert_eq!(metrics.calls()[&("store".to_owned(), "put".to_owned())].errors, 1, "not retried, but counted");
    }

    #[tokio::test]
    async fn two_pipelines_keep_their_own_statistics() {
        // The statistics were a process-wide static: two pipelines in one process (tests, a
        // redrive inside a run) added up each other's calls.
        let (a, b) = (Arc::new(Metrics::default()), Arc::new(Metrics::default()));
        Calls::new(quick(), a.clone()).call("x", "op", || async { Ok(()) }).await.unwrap();
        assert_eq!(a.calls().len(), 1);
        assert!(b.calls().is_empty());
    }
}
