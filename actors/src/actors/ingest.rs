//! Ingest: one per source. Pulls raw messages, checks size, decodes and validates them, sends
//! valid events on to the Enricher (or, with no enricher configured, the Router) and invalid
//! ones to the dead-letter path, and commits the source's watermark as acknowledgements come
//! back.

use std::time::{Duration, Instant};

use actix::prelude::*;
use tokio::sync::{mpsc, oneshot, watch};

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
    ///
    /// Reading and handing on run side by side: while up to [`DECODE_AHEAD`] pulled batches
    /// decode on the pool, the next one is pulled, and each decoded batch is handed on in the
    /// order it was pulled. Done one after the other (read, wait for the decode, send, read
    /// again), that loop held a steady crawl on 16 cores at ~260-300k events/s with no thread
    /// more than half busy; side by side, 448k (benches/analysis.md, twenty-second session).
    pub(super) async fn run(mut self) -> Result<(), String> {
        let (decoded_tx, mut decoded_rx) = mpsc::channel::<Decoding>(DECODE_AHEAD);
        let hand_on = HandOn { name: &self.name, onward: &self.onward, history: &self.history, metrics: &self.metrics };
        let handing_on = async {
            while let Some(decoding) = decoded_rx.recv().await {
                if !hand_on.batch(decoding).await {
                    // Dropping the receiver tells the reader the stage behind is gone.
                    return false;
                }
            }
            true
        };
        let mut reader = Reader {
            name: &self.name,
            source: &mut self.source,
            settings: &self.settings,
            metrics: &self.metrics,
            supervisor: &self.supervisor,
            stop: &mut self.stop,
        };
        let (read, handed_on) = tokio::join!(reader.read(decoded_tx), handing_on);
        if !handed_on {
            return Err(BEHIND_GONE.to_owned());
        }
        read?;
        self.drain().await;
        Ok(())
    }

    async fn commit(&mut self) {
        commit(&self.name, &mut self.source, &self.metrics).await;
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

/// The reading half of an [`IngestLoop`]: pulls, starts each batch's decode, queues it.
struct Reader<'a> {
    name: &'a str,
    source: &'a mut Box<dyn Source>,
    settings: &'a IngestSettings,
    metrics: &'a Metrics,
    supervisor: &'a Supervisor,
    stop: &'a mut watch::Receiver<bool>,
}

impl Reader<'_> {
    /// Reads until drained or stopped, queueing each pulled batch's decode on `decoded`;
    /// returns once nothing more will be read (dropping `decoded`, which lets the handing on
    /// finish), with an error when the stage behind is gone.
    async fn read(&mut self, decoded: mpsc::Sender<Decoding>) -> Result<(), String> {
        let mut last_commit = Instant::now();
        let mut idle_pause = Duration::from_millis(5);
        loop {
            if *self.stop.borrow() {
                break;
            }
            if decoded.is_closed() {
                return Err(BEHIND_GONE.to_owned());
            }
            let throttled = self.source.outstanding() >= self.settings.max_in_flight;
            let batch = self.settings.pull_batch;
            // A pull is never cut short by the handing on (only by a stop, as ever): the queue
            // of decodes waits for it, and every source may take a pull's time to return.
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
                    if !msgs.is_empty() {
                        self.metrics.events_in(self.name, msgs.len() as u64);
                        let decoding = Decoding::start(msgs, self.settings.max_event_bytes, self.supervisor);
                        // Waits while DECODE_AHEAD batches are queued: back-pressure from the
                        // stage behind reaches the source here.
                        if decoded.send(decoding).await.is_err() {
                            return Err(BEHIND_GONE.to_owned());
                        }
                    }
                }
                Ok(Pull::Idle) => {
                    commit(self.name, self.source, self.metrics).await;
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
                    self.metrics.refuse(self.name, &why);
                    break;
                }
                Err(e) => {
                    tracing::error!(source = %self.name, error = %e, "reading the source failed; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
            if last_commit.elapsed() >= self.settings.commit_interval {
                commit(self.name, self.source, self.metrics).await;
                last_commit = Instant::now();
            }
        }
        Ok(())
    }
}

/// The handing-on half of an [`IngestLoop`]: a decoded batch's valid events go on as one
/// message, the rest to the dead-letter path.
struct HandOn<'a> {
    name: &'a str,
    onward: &'a Onward,
    history: &'a Addr<HistoryWriter>,
    metrics: &'a Metrics,
}

impl HandOn<'_> {
    /// Waits for a batch's decode and hands it on as one message to the Enricher (the valid
    /// events, in input order) and one to the dead-letter path (the rest); false once the
    /// pipeline behind is gone.
    async fn batch(&self, decoding: Decoding) -> bool {
        let read_at = decoding.read_at;
        let decoded = decoding.finish().await;
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
            self.metrics.sent_from(self.name, Flow::IngestHistory, letters.len() as u64);
            if forward(self.history, DeadLetters(letters)).await.is_err() {
                return false;
            }
        }
        if events.is_empty() {
            return true;
        }
        match self.onward {
            Onward::Enrich(enricher) => {
                self.metrics.sent_from(self.name, Flow::IngestEnricher, events.len() as u64);
                forward(enricher, Enrich(events)).await.is_ok()
            }
            Onward::Route(router) => {
                self.metrics.sent_from(self.name, Flow::IngestRouter, events.len() as u64);
                let enriched_at = chrono::Utc::now();
                let events =
                    events.into_iter().map(|env| env.map(|event| Enriched { event, business: None, enriched_at }));
                forward(router, Route(events.collect())).await.is_ok()
            }
        }
    }
}

/// Persists the source's watermarks and reports its in-flight count, lag and problem.
async fn commit(name: &str, source: &mut Box<dyn Source>, metrics: &Metrics) {
    metrics.set_in_flight(name, source.outstanding() as u64);
    if let Some(lag) = source.lag() {
        metrics.set_lag(name, lag);
    }
    metrics.set_problem(name, source.not_ready());
    if let Err(e) = source.commit().await {
        tracing::warn!(source = %name, error = %e, "committing the source position failed; will retry");
    }
}

/// A message and what decoding it gave: the event, why it was rejected, or the panic it caused
/// twice.
type Decoded = (RawMessage, Result<Result<AssetEvent, Rejection>, Panicked>);

/// Batches at least this large are decoded in parallel; smaller ones cost less decoded here than
/// handed to another thread.
const PARALLEL_DECODE: usize = 32;

/// Pulled batches of one source that may decode at once, waiting their turn to be handed on.
/// Enough to keep a many-core decode pool fed from one source; memory stays bounded by
/// `max_in_flight`, which counts these messages too.
const DECODE_AHEAD: usize = 8;

/// Where a [`Decoding`] stands.
enum DecodingState {
    /// Small enough to have been decoded in place.
    Done(Vec<Decoded>),
    /// On the pool.
    Pending(oneshot::Receiver<Vec<Decoded>>),
}

/// A pulled batch being decoded on the decode pool (rayon's, [`crate::threads::decode_threads`]), keeping
/// input order, so that parsing and validating, the heaviest per-event work before the shards,
/// is spread over the cores rather than done on the thread that runs the Ingests.
struct Decoding {
    /// When the batch was read: where each event's decision latency starts.
    read_at: Instant,
    state: DecodingState,
}

impl Decoding {
    /// Starts decoding `msgs` now (it goes on while the caller reads the next batch).
    fn start(msgs: Vec<RawMessage>, max: usize, supervisor: &Supervisor) -> Decoding {
        let read_at = Instant::now();
        let one = move |m: RawMessage, supervisor: &Supervisor| {
            let decoded = supervisor.twice_now("ingest", "decode", || {
                crate::failpoint!("ingest.decode");
                decode(&m.bytes, max)
            });
            (m, decoded)
        };
        if msgs.len() < PARALLEL_DECODE {
            let decoded = msgs.into_iter().map(|m| one(m, supervisor)).collect();
            return Decoding { read_at, state: DecodingState::Done(decoded) };
        }
        let (tx, rx) = oneshot::channel();
        let sup = supervisor.clone();
        rayon::spawn(move || {
            use rayon::prelude::*;
            let _ = tx.send(msgs.into_par_iter().map(|m| one(m, &sup)).collect::<Vec<_>>());
        });
        Decoding { read_at, state: DecodingState::Pending(rx) }
    }

    /// The batch, decoded, in input order.
    async fn finish(self) -> Vec<Decoded> {
        match self.state {
            DecodingState::Done(decoded) => decoded,
            // The pool only drops the sender if the closure panicked, and `twice_now` catches panics.
            DecodingState::Pending(rx) => rx.await.unwrap_or_default(),
        }
    }
}
