//! Redrive: dead letters replayed through the pipeline from their store, once (`assetflow
//! redrive`) or every `redrive.interval` inside the running service. Each round opens the
//! store afresh and reads it as a [`RedriveSource`] through the same ingest loop as any
//! source, into the same Enricher: a replay takes exactly the path of a first delivery, with
//! `attempts` one higher; those tried `redrive.max_attempts` times are parked instead.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use futures_util::FutureExt;
use tokio::sync::oneshot;

use super::ingest::{Feed, IngestLoop};
use crate::ports::DeadLetterOpener;
use crate::redrive::{RedriveSource, RedriveStats};

/// What a redrive reads and how often.
pub struct RedrivePlan {
    pub opener: Arc<dyn DeadLetterOpener>,
    pub max_attempts: u32,
    /// Replay at most this many in all (`--max N`).
    pub limit: Option<u64>,
    pub stats: Arc<RedriveStats>,
    /// `None`: one round, then report drained; `Some`: a round every interval until stopped.
    pub interval: Option<Duration>,
}

pub struct Redrive {
    plan: Option<RedrivePlan>,
    feed: Feed,
    drained: Option<oneshot::Sender<()>>,
}

/// The name redriven messages come from, in logs and metrics.
pub const REDRIVE: &str = "redrive";

impl Redrive {
    /// Redrives per `plan` into `feed`; `drained` is told once the last round ended cleanly.
    pub fn new(plan: RedrivePlan, feed: Feed, drained: oneshot::Sender<()>) -> Self {
        Redrive { plan: Some(plan), feed, drained: Some(drained) }
    }
}

impl Actor for Redrive {
    type Context = Context<Self>;
    fn started(&mut self, ctx: &mut Context<Self>) {
        let Some(plan) = self.plan.take() else { return };
        let feed = self.feed.clone();
        let (supervisor, mut stop) = (self.feed.supervisor.clone(), self.feed.stop.clone());
        let rounds = async move {
            loop {
                // A round that panics is run again once (the store is opened afresh: what the
                // first try acknowledged is not read again); a second panic ends the redrive.
                let round = supervisor
                    .twice("redrive", "round", || {
                        let feed = feed.clone();
                        let plan = &plan;
                        async move {
                            crate::failpoint!("redrive.round");
                            let store = match plan.opener.open().await {
                                Ok(store) => store,
                                Err(e) => return Err(format!("opening the dead-letter store: {e}")),
                            };
                            let source = RedriveSource::new(store, plan.max_attempts, plan.limit, plan.stats.clone());
                            IngestLoop::new(REDRIVE.to_owned(), Box::new(source), feed).run().await
                        }
                    })
                    .await
                    .map_err(|why| why.to_string())?;
                match round {
                    Ok(()) => tracing::info!(
                        replayed = plan.stats.replayed(),
                        parked = plan.stats.parked(),
                        "redrive round done"
                    ),
                    Err(e) if plan.interval.is_none() => return Err(e),
                    Err(e) => tracing::error!(error = %e, "redrive round failed; next round later"),
                }
                let Some(every) = plan.interval else { return Ok(()) };
                if *stop.borrow() {
                    return Ok(());
                }
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = stop.changed() => return Ok(()),
                }
            }
        };
        let drained = self.drained.take();
        let supervisor = self.feed.supervisor.clone();
        ctx.spawn(actix::fut::wrap_future::<_, Self>(AssertUnwindSafe(rounds).catch_unwind()).map(
            move |ended, _, ctx| {
                match ended {
                    Ok(Ok(())) => {
                        if let Some(tx) = drained {
                            let _ = tx.send(());
                        }
                    }
                    Ok(Err(why)) => supervisor.give_up(format!("redrive: {why}")),
                    Err(panic) => {
                        supervisor.give_up(format!("redrive panicked: {}", crate::retry::panic_message(&panic)))
                    }
                }
                ctx.stop();
            },
        ));
    }
}
