//! Supervision: the [`Supervisor`] every actor runs its work under. A panic is caught (actix
//! cannot restart an actor whose handler unwound: the panic ends the actor's task, and with it
//! the `Supervised` restart hook), logged with the actor and the message kind, counted
//! (`assetflow_actor_restarts_total{actor}`), and the actor goes on from state it re-reads;
//! the message in hand is tried once more after a back-off, and if it panics again the caller
//! dead-letters it (kind `panic`). One actor restarting more than `max_restarts` times within
//! `window` is a stage that keeps failing: the supervisor reports it as fatal, and the process
//! stops with a non-zero exit instead of spinning, acknowledging nothing that is not durable.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use tokio::sync::watch;

use crate::metrics::Metrics;
use crate::retry::panic_message;

/// The actors a supervisor restarts, as `assetflow_actor_restarts_total{actor}` names them.
pub const ACTORS: [&str; 9] = [
    "ingest",
    "enricher",
    "router",
    "decisor",
    "upsert_producer",
    "drop_producer",
    "enriched_producer",
    "history_writer",
    "redrive",
];

/// How much failing a stage may do before the process gives up.
#[derive(Debug, Clone, Copy)]
pub struct SupervisionPolicy {
    /// Restarts of one actor within `window` past which the process stops.
    pub max_restarts: u32,
    pub window: Duration,
    /// Pause before the first retry of a message whose handling panicked; doubles with each
    /// restart in the window, up to `backoff_max`.
    pub backoff: Duration,
    pub backoff_max: Duration,
}

impl Default for SupervisionPolicy {
    fn default() -> Self {
        SupervisionPolicy {
            max_restarts: 10,
            window: Duration::from_secs(60),
            backoff: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
        }
    }
}

/// Why the process must stop: an actor past its restart budget, or an actor gone.
pub type Fatal = Option<String>;

/// Shared by every actor of a pipeline; cheap to clone.
#[derive(Clone)]
pub struct Supervisor {
    policy: SupervisionPolicy,
    metrics: Arc<Metrics>,
    recent: Arc<Mutex<HashMap<&'static str, VecDeque<Instant>>>>,
    fatal: Arc<watch::Sender<Fatal>>,
}

/// The handling of a message panicked twice: the caller dead-letters it (kind `panic`).
#[derive(Debug, Clone)]
pub struct Panicked(pub String);

impl std::fmt::Display for Panicked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "panicked twice: {}", self.0)
    }
}

impl Supervisor {
    pub fn new(policy: SupervisionPolicy, metrics: Arc<Metrics>) -> Self {
        Supervisor { policy, metrics, recent: Arc::default(), fatal: Arc::new(watch::channel(None).0) }
    }

    /// Resolves to `Some(why)` once the process must stop.
    pub fn fatal(&self) -> watch::Receiver<Fatal> {
        self.fatal.subscribe()
    }

    /// The process is stopping: nothing more is dead-lettered or acknowledged on a failure's
    /// account; what is not durable yet is read again after the restart.
    pub fn given_up(&self) -> bool {
        self.fatal.borrow().is_some()
    }

    /// Stops the process (the first reason given wins).
    pub fn give_up(&self, why: String) {
        self.fatal.send_if_modified(|f| {
            if f.is_some() {
                return false;
            }
            tracing::error!("{why}");
            *f = Some(why);
            true
        });
    }

    /// Records that `actor` recovered from a panic while handling a `message`; returns the
    /// back-off to wait before it goes on. Past the restart budget, the process is told to stop.
    pub fn restarted(&self, actor: &'static str, message: &str, panic: &str) -> Duration {
        self.metrics.restart(actor);
        let now = Instant::now();
        let in_window = {
            let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
            let times = recent.entry(actor).or_default();
            times.push_back(now);
            while times.front().is_some_and(|t| now.duration_since(*t) > self.policy.window) {
                times.pop_front();
            }
            times.len() as u32
        };
        tracing::error!(actor, message, restarts_in_window = in_window, "actor panicked and was restarted: {panic}");
        if in_window > self.policy.max_restarts {
            self.give_up(format!(
                "actor {actor} panicked {in_window} times within {:?} (supervision.max_restarts = {}); stopping, unacknowledged input will be re-delivered on restart; last panic: {panic}",
                self.policy.window, self.policy.max_restarts
            ));
        }
        let doublings = in_window.saturating_sub(1).min(16);
        (self.policy.backoff * 2u32.pow(doublings)).min(self.policy.backoff_max)
    }

    /// Runs `work` (built again for the retry) under supervision: a panic restarts the actor,
    /// and after the back-off `work` runs once more; a second panic is returned for the caller
    /// to dead-letter.
    pub async fn twice<T, F, Fut>(&self, actor: &'static str, message: &str, mut work: F) -> Result<T, Panicked>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = T>,
    {
        match AssertUnwindSafe(work()).catch_unwind().await {
            Ok(v) => return Ok(v),
            Err(panic) => {
                let pause = self.restarted(actor, message, &panic_message(&panic));
                tokio::time::sleep(pause).await;
            }
        }
        AssertUnwindSafe(work()).catch_unwind().await.map_err(|panic| {
            let why = panic_message(&panic);
            tracing::error!(actor, message, "the message panicked again after the restart; dead-lettering it: {why}");
            Panicked(why)
        })
    }

    /// [`Supervisor::twice`] for work that does not wait; the retry follows without a pause
    /// (the caller holds the actor's thread), the restart still counted.
    pub fn twice_now<T>(&self, actor: &'static str, message: &str, mut work: impl FnMut() -> T) -> Result<T, Panicked> {
        match std::panic::catch_unwind(AssertUnwindSafe(&mut work)) {
            Ok(v) => return Ok(v),
            Err(panic) => {
                self.restarted(actor, message, &panic_message(&panic));
            }
        }
        std::panic::catch_unwind(AssertUnwindSafe(work)).map_err(|panic| Panicked(panic_message(&panic)))
    }
}

/// A fail point (the `fail` crate) named `name`, compiled in only with the `failpoints`
/// feature, which only the tests turn on; `FAILPOINTS=name=99*off->1*panic->off` panics at
/// the 100th pass.
#[macro_export]
macro_rules! failpoint {
    ($name:expr) => {
        #[cfg(feature = "failpoints")]
        fail::fail_point!($name);
    };
}

/// Reads `FAILPOINTS` once (with the `failpoints` feature; a no-op without).
pub fn setup_failpoints() {
    #[cfg(feature = "failpoints")]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            if let Ok(spec) = std::env::var("FAILPOINTS") {
                for point in spec.split(';').filter(|p| !p.trim().is_empty()) {
                    if let Some((name, actions)) = point.split_once('=') {
                        if let Err(e) = fail::cfg(name.trim(), actions.trim()) {
                            tracing::error!("FAILPOINTS: {point}: {e}");
                        }
                    }
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quick(max: u32) -> Supervisor {
        let policy = SupervisionPolicy {
            max_restarts: max,
            window: Duration::from_secs(60),
            backoff: Duration::from_millis(1),
            backoff_max: Duration::from_millis(4),
        };
        Supervisor::new(policy, Arc::new(Metrics::default()))
    }

    #[tokio::test]
    async fn a_panic_is_retried_once_and_counted() {
        let s = quick(10);
        let mut tries = 0;
        let r = s
            .twice("enricher", "enrich", || {
                tries += 1;
                let first = tries == 1;
                async move {
                    assert!(!first, "boom");
                    7
                }
            })
            .await;
        assert_eq!(r.unwrap(), 7);
        assert_eq!(s.metrics.restarts().get("enricher"), Some(&1));
        assert!(s.fatal().borrow().is_none());
    }

    #[tokio::test]
    async fn a_second_panic_is_handed_back_and_past_the_budget_the_process_stops() {
        let s = quick(3);
        let r: Result<(), _> = s.twice("router", "route", || async { panic!("always") }).await;
        assert!(r.unwrap_err().0.contains("always"));
        assert!(s.fatal().borrow().is_none(), "one restart is within the budget");
        for _ in 0..3 {
            let _ = s.twice_now("router", "route", || panic!("again"));
        }
        let why = s.fatal().borrow().clone().expect("past the budget");
        assert!(why.contains("actor router"), "{why}");
    }
}
