//! Ingest: one per source. Pulls raw messages, checks size, decodes and validates them, sends
//! valid events on to the Enricher (or, with no enricher configured, the Router) and invalid
//! ones to the dead-letter path, and commits the source's watermark as acknowledgements come
//! back.

use std::time::{Duration, Instant};

use actix::prelude::*;
use tokio::sync::{oneshot, watch};

use super::Enriched;
use super::enricher::{Enrich, Enricher};
use super::history::{DeadLetters, HistoryWriter};
use super::router::{Route, Router};
use crate::decision::{DeadLetter, Stage};
use crate::envelope::Envelope;
use crate::event::{AssetEvent, RejectKind, Rejection, decode};
use crate::forward::forward;
use crate::metrics::{Flow, Metrics};
use crate::ports::{Pull, RawMessage, Source};
use crate::supervise::{Panicked, Supervisor};
use futures_util::FutureExt;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

/// How an Ingest reads.
#[derive(Debug, Clone)]
pub struct IngestSettings {
    pub max_event_bytes: usize,
    /// Messages asked of the source per pull.
    pub pull_batch: usize,
    /// Unacknowledged messages past which reading pauses.
    pub max_in_flight: usize,
    /// How often the watermark is committed while messages flow.
    pub commit_interval: Duration,
    /// After a stop, how long in-flight messages get to finish before the ingest gives up on them.
    pub drain_timeout: Duration,
}

/// Where decoded events go next.
#[derive(Clone)]
pub enum Onward {
    /// To the Enricher, for their business data.
    Enrich(Addr<Enricher>),
    /// Straight to the Router, with no business data: no enricher is configured, and the
    /// Enricher would only have passed each batch on, a thread hop for nothing.
    Route(Addr<Router>),
}

/// What reading an input feeds and answers to: the same for every Ingest and for Redrive.
#[derive(Clone)]
pub struct Feed {
    pub onward: Onward,
    /// Where rejected messages go as dead letters.
    pub history: Addr<HistoryWriter>,
    pub settings: IngestSettings,
    pub metrics: Arc<Metrics>,
    pub supervisor: Supervisor,
    /// Turns true when the process stops reading.
    pub stop: watch::Receiver<bool>,
}

pub struct Ingest {
    name: String,
    source: Option<Box<dyn Source>>,
    feed: Feed,
    drained: Option<oneshot::Sender<()>>,
}

impl Ingest {
    /// Reads `source` into `feed`; `drained` is told once it drained (or stopped) cleanly.
    pub fn new(name: String, source: Box<dyn Source>, feed: Feed, drained: oneshot::Sender<()>) -> Self {
        Ingest { name, source: Some(source), feed, drained: Some(drained) }
    }
}

impl Actor for Ingest {
    type Context = Context<Self>;
    fn started(&mut self, ctx: &mut Context<Self>) {
        let Some(source) = self.source.take() else {
            return;
        };
        let run = IngestLoop::new(self.name.clone(), source, self.feed.clone());
        let drained = self.drained.take();
        let supervisor = self.feed.supervisor.clone();
        let name = self.name.clone();
        // Drained is reported only when the loop got to its end: an ingest that stopped early
        // (the stage behind it gone, a panic outside what is supervised) stops the process.
        let run = AssertUnwindSafe(run.run()).catch_unwind();
        ctx.spawn(actix::fut::wrap_future::<_, Self>(run).map(move |ended, _, ctx| {
            match ended {
                Ok(Ok(())) => {
                    if let Some(tx) = drained {
                        let _ = tx.send(());
                    }
                }
                Ok(Err(why)) => supervisor.give_up(format!("source {name}: {why}")),
                Err(panic) => supervisor
                    .give_up(format!("source {name}: its ingest panicked: {}", crate::retry::panic_message(&panic))),
            }
            ctx.stop();
        }));
    }
}

/// One source read until drained or stopped: what an Ingest runs, and each round of Redrive.
pub(super) struct IngestLoop {
    name: String,
    source: Box<dyn Source>,
    onward: Onward,
    history: Addr<HistoryWriter>,
    settings: IngestSettings,
    metrics: Arc<Metrics>,
    supervisor: Supervisor,
    stop: watch::Receiver<bool>,
}

/// The stage behind an ingest is gone: it cannot drain.
const BEHIND_GONE: &str = "the stage behind the ingest stopped; what it read stays unacknowledged";

impl IngestLoop {
    pub(super) fn new(name: String, source: Box<dyn Source>, feed: Feed) -> Self {
        let Feed { onward, history, settings, metrics, supervisor, stop } = feed;
        IngestLoop { name, source, onward, history, settings, metrics, supervisor, stop }
    }

    /// Reads until drained or stopped; an error says why it could not drain.
    pub(super) async fn run(mut self) -> Result<(), String> {
        let mut last_commit = Instant::now();
        let mut idle_pause = Duration::from_millis(5);
        loop {
            if *self.stop.borrow() {
                break;
            }
            let throttled = self.source.outstanding() >= self.settings.max_in_flight;
            let batch = self.settings.pull_batch;
            let pulled = tokio::select! {
                r = AssertUnwindSafe(self.source.pull(batch)).catch_unwind(), if !throttled => match r {
                    Ok(r) => r,
                    Err(panic) => {
                        // What the source handed out stays unacknowledged; it is read again.
                        let pause = self.supervisor.restarted("ingest", "pull", &crate::retry::panic_message(&panic));
                        tokio::time::sleep(pause).await;
                        Ok(Pull::Messages(Vec::new()))
                    }
                },
                // Enough in flight: let the pipeline catch up before reading more.
                _ = tokio::time::sleep(Duration::from_millis(2)), if throttled => Ok(Pull::Messages(Vec::new())),
                _ = self.stop.changed() => break,
            };
            match pulled {
                Ok(Pull::Messages(msgs)) => {
                    idle_pause = Duration::from_millis(5);
                    if !self.admit(msgs).await {
                        return Err(BEHIND_GONE.to_owned());
                    }
                }
                Ok(Pull::Idle) => {
                    self.commit().await;
                    last_commit = Instant::now();
                    tokio::select! {
                        _ = tokio::time::sleep(idle_pause) => {},
                        _ = self.stop.changed() => break,
                    }
                    idle_pause = (idle_pause * 2).min(Duration::from_millis(200));
                }
                Ok(Pull::Drained) => break,
                Ok(Pull::Refused(why)) => {
                    tracing::error!(source = %self.name, "{why}");
                    self.metrics.refuse(&self.name, &why);
                    break;
                }
                Err(e) => {
                    tracing::error!(source = %self.name, error = %e, "reading the source failed; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
            if last_commit.elapsed() >= self.settings.commit_interval {
                self.commit().await;
                last_commit = Instant::now();
            }
        }
        self.drain().await;
        Ok(())
    }

    /// Decodes a pulled batch and hands it on as one message to the Enricher (the valid events,
    /// in input order) and one to the dead-letter path (the rest); false once the pipeline
    /// behind is gone.
    async fn admit(&mut self, msgs: Vec<RawMessage>) -> bool {
        if msgs.is_empty() {
            return true;
        }
        self.metrics.events_in(&self.name, msgs.len() as u64);
        let read_at = Instant::now();
        let decoded = decode_batch(msgs, self.settings.max_event_bytes, &self.supervisor).await;
        let mut events = Vec::with_capacity(decoded.len());
        let mut letters = Vec::new();
        for (m, decoded) in decoded {
            match decoded {
                Ok(Ok(event)) => events.push(Envelope {
                    body: event,
                    raw: Arc::new(m.bytes),
                    origin: m.origin,
                    attempts: m.attempts,
                    ack: m.ack,
                    read_at,
                }),
                Ok(Err(rejection)) => {
                    let stage =
                        if rejection.kind == RejectKind::InvalidEvent { Stage::Validate } else { Stage::Decode };
                    let dl = DeadLetter::new(
                        stage,
                        rejection.kind.as_str(),
                        rejection.message,
                        &m.bytes,
                        rejection.event_id,
                        m.origin,
                        m.attempts,
                    );
                    letters.push((dl, m.ack));
                }
                Err(panic) => {
                    let dl = DeadLetter::new(
                        Stage::Decode,
                        "panic",
                        panic.to_string(),
                        &m.bytes,
                        None,
                        m.origin,
                        m.attempts,
                    );
                    letters.push((dl, m.ack));
                }
            }
        }
        if !letters.is_empty() {
            self.metrics.sent_from(&self.name, Flow::IngestHistory, letters.len() as u64);
            if forward(&self.history, DeadLetters(letters)).await.is_err() {
                return false;
            }
        }
        if events.is_empty() {
            return true;
        }
        match &self.onward {
            Onward::Enrich(enricher) => {
                self.metrics.sent_from(&self.name, Flow::IngestEnricher, events.len() as u64);
                forward(enricher, Enrich(events)).await.is_ok()
            }
            Onward::Route(router) => {
                self.metrics.sent_from(&self.name, Flow::IngestRouter, events.len() as u64);
                let enriched_at = chrono::Utc::now();
                let events =
                    events.into_iter().map(|env| env.map(|event| Enriched { event, business: None, enriched_at }));
                forward(router, Route(events.collect())).await.is_ok()
            }
        }
    }

    async fn commit(&mut self) {
        self.metrics.set_in_flight(&self.name, self.source.outstanding() as u64);
        if let Some(lag) = self.source.lag() {
            self.metrics.set_lag(&self.name, lag);
        }
        self.metrics.set_problem(&self.name, self.source.not_ready());
        if let Err(e) = self.source.commit().await {
            tracing::warn!(source = %self.name, error = %e, "committing the source position failed; will retry");
        }
    }

    /// Waits for what is in flight to be acknowledged, committing as it goes.
    async fn drain(&mut self) {
        let started = Instant::now();
        loop {
            self.commit().await;
            if self.source.outstanding() == 0 {
                break;
            }
            if *self.stop.borrow() && started.elapsed() >= self.settings.drain_timeout {
                tracing::warn!(source = %self.name, outstanding = self.source.outstanding(), "drain timed out; unacknowledged messages will be re-delivered after restart");
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.commit().await;
        self.source.close().await;
    }
}

/// A message and what decoding it gave: the event, why it was rejected, or the panic it caused
/// twice.
type Decoded = (RawMessage, Result<Result<AssetEvent, Rejection>, Panicked>);

/// Batches at least this large are decoded in parallel; smaller ones cost less decoded here than
/// handed to another thread.
const PARALLEL_DECODE: usize = 32;

/// Decodes a batch on the decode pool (rayon's, one thread per core), keeping input order, so
/// that parsing and validating, the heaviest per-event work before the shards, is spread over
/// the cores rather than done on the thread that runs the Ingests.
async fn decode_batch(msgs: Vec<RawMessage>, max: usize, supervisor: &Supervisor) -> Vec<Decoded> {
    let one = move |m: RawMessage, supervisor: &Supervisor| {
        let decoded = supervisor.twice_now("ingest", "decode", || {
            crate::failpoint!("ingest.decode");
            decode(&m.bytes, max)
        });
        (m, decoded)
    };
    if msgs.len() < PARALLEL_DECODE {
        return msgs.into_iter().map(|m| one(m, supervisor)).collect();
    }
    let (tx, rx) = oneshot::channel();
    let sup = supervisor.clone();
    rayon::spawn(move || {
        use rayon::prelude::*;
        let _ = tx.send(msgs.into_par_iter().map(|m| one(m, &sup)).collect::<Vec<_>>());
    });
    // The pool only drops the sender if the closure panicked, and `twice_now` catches panics.
    rx.await.unwrap_or_default()
}
