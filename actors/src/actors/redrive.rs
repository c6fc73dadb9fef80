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
use tokio::sync::{oneshot, watch};

use super::enricher::Enricher;
use super::history::HistoryWriter;
use super::ingest::{IngestLoop, IngestSettings};
use crate::metrics::Metrics;
use crate::ports::DeadLetterOpener;
use crate::redrive::{RedriveSource, RedriveStats};
use crate::supervise::Supervisor;

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
    enricher: Addr<Enricher>,
    history: Addr<HistoryWriter>,
    settings: IngestSettings,
    metrics: Arc<Metrics>,
    supervisor: Supervisor,
    stop: watch::Receiver<bool>,
    drained: Option<oneshot::Sender<()>>,
}

/// The name redriven messages come from, in logs and metrics.
pub const REDRIVE: &str = "redrive";

impl Redrive {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        plan: RedrivePlan,
        enricher: Addr<Enricher>,
        history: Addr<HistoryWriter>,
        settings: IngestSettings,
        metrics: Arc<Metrics>,
        supervisor: Supervisor,
        stop: watch::Receiver<bool>,
        drained: oneshot::Sender<()>,
    ) -> Self {
        Redrive { plan: Some(plan), enricher, history, settings, metrics, supervisor, stop, drained: Some(drained) }
    }
}

impl Actor for Redrive {
    type Context = Context<Self>;
    fn started(&mut self, ctx: &mut Context<Self>) {
        let Some(plan) = self.plan.take() else { return };
        let (enricher, history, settings) = (self.enricher.clone(), self.history.clone(), self.settings.clone());
        let (metrics, supervisor, mut stop) = (self.metrics.clone(), self.supervisor.clone(), self.stop.clone());
        let stop_for_rounds = stop.clone();
        let rounds = async move {
            loop {
                // A round that panics is run again once (the store is opened afresh: what the
                // first try acknowledged is not read again); a second panic ends the redrive.
                let round = supervisor
                    .twice("redrive", "round", || {
                        let (enricher, history, settings) = (enricher.clone(), history.clone(), settings.clone());
                        let (metrics, supervisor, stop) =
                            (metrics.clone(), supervisor.clone(), stop_for_rounds.clone());
                        let plan = &plan;
                        async move {
                            crate::failpoint!("redrive.round");
                            let store = match plan.opener.open().await {
                                Ok(store) => store,
                                Err(e) => return Err(format!("opening the dead-letter store: {e}")),
                            };
                            let source = RedriveSource::new(store, plan.max_attempts, plan.limit, plan.stats.clone());
                            let run = IngestLoop::new(
                                REDRIVE.to_owned(),
                                Box::new(source),
                                enricher,
                                history,
                                settings,
                                metrics,
                                supervisor,
                                stop,
                            );
                            run.run().await
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
        let supervisor = self.supervisor.clone();
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
