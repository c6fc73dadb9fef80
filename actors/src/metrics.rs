//! Counters the actors bump and the binary reports (summary, and later `/metrics`).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::decision::Outcome;

/// The actors whose mailboxes are measured (shards together).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActorName {
    Enricher,
    Router,
    Decisor,
    UpsertProducer,
    DropProducer,
    EnrichedProducer,
    HistoryWriter,
}

impl ActorName {
    pub const ALL: [ActorName; 7] = [
        ActorName::Enricher,
        ActorName::Router,
        ActorName::Decisor,
        ActorName::UpsertProducer,
        ActorName::DropProducer,
        ActorName::EnrichedProducer,
        ActorName::HistoryWriter,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            ActorName::Enricher => "enricher",
            ActorName::Router => "router",
            ActorName::Decisor => "decisor",
            ActorName::UpsertProducer => "upsert_producer",
            ActorName::DropProducer => "drop_producer",
            ActorName::EnrichedProducer => "enriched_producer",
            ActorName::HistoryWriter => "history_writer",
        }
    }
}

/// What flows along one edge of the topology graph: the sending actor counts each message it
/// sends (for the receiver's mailbox depth) and the items in it (for the edge's rate). The
/// flows out of an Ingest are kept per source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Messages read from a source (per source).
    SourceIngest,
    /// Decoded events, to the Enricher (per source).
    IngestEnricher,
    /// Rejected messages, as dead letters (per source).
    IngestHistory,
    /// Decoded events, straight to the Router where no enricher is configured (per source).
    IngestRouter,
    EnricherRouter,
    EnricherEnriched,
    EnricherHistory,
    RouterDecisor,
    /// Completion rows and drop-guard or incomplete-run dead letters, from the sweep.
    RouterHistory,
    /// Content objects written.
    DecisorContent,
    /// Control records written.
    DecisorControl,
    DecisorUpsert,
    DecisorDrop,
    DecisorHistory,
    UpsertHistory,
    DropHistory,
    EnrichedHistory,
}

impl Flow {
    const COUNT: usize = 17;
    /// The flows out of a source's Ingest, each counted per source too ([`Flow::source_slot`]).
    const PER_SOURCE: usize = 4;
    pub const ALL: [Flow; Flow::COUNT] = [
        Flow::SourceIngest,
        Flow::IngestEnricher,
        Flow::IngestHistory,
        Flow::IngestRouter,
        Flow::EnricherRouter,
        Flow::EnricherEnriched,
        Flow::EnricherHistory,
        Flow::RouterDecisor,
        Flow::RouterHistory,
        Flow::DecisorContent,
        Flow::DecisorControl,
        Flow::DecisorUpsert,
        Flow::DecisorDrop,
        Flow::DecisorHistory,
        Flow::UpsertHistory,
        Flow::DropHistory,
        Flow::EnrichedHistory,
    ];

    /// The actor whose mailbox a message along this edge lands in (none for a store).
    pub fn to(self) -> Option<ActorName> {
        use ActorName as A;
        match self {
            Flow::SourceIngest | Flow::DecisorContent | Flow::DecisorControl => None,
            Flow::IngestEnricher => Some(A::Enricher),
            Flow::IngestRouter | Flow::EnricherRouter => Some(A::Router),
            Flow::EnricherEnriched => Some(A::EnrichedProducer),
            Flow::RouterDecisor => Some(A::Decisor),
            Flow::DecisorUpsert => Some(A::UpsertProducer),
            Flow::DecisorDrop => Some(A::DropProducer),
            Flow::IngestHistory
            | Flow::EnricherHistory
            | Flow::RouterHistory
            | Flow::DecisorHistory
            | Flow::UpsertHistory
            | Flow::DropHistory
            | Flow::EnrichedHistory => Some(A::HistoryWriter),
        }
    }

    fn per_source(self) -> bool {
        self.source_slot().is_some()
    }

    /// Where a flow out of a source's Ingest is counted among that source's flows.
    fn source_slot(self) -> Option<usize> {
        match self {
            Flow::SourceIngest => Some(0),
            Flow::IngestEnricher => Some(1),
            Flow::IngestHistory => Some(2),
            Flow::IngestRouter => Some(3),
            _ => None,
        }
    }

    /// The name of this flow in `/status.json` and in the topology graph: the edge's ends, with
    /// the source's name for the flows out of a source's Ingest.
    pub fn key(self, source: &str) -> String {
        let (from, to) = match self {
            Flow::SourceIngest => ("source", "ingest"),
            Flow::IngestEnricher => ("ingest", "enricher"),
            Flow::IngestHistory => ("ingest", "history_writer"),
            Flow::IngestRouter => ("ingest", "router"),
            Flow::EnricherRouter => ("enricher", "router"),
            Flow::EnricherEnriched => ("enricher", "enriched_producer"),
            Flow::EnricherHistory => ("enricher", "history_writer"),
            Flow::RouterDecisor => ("router", "decisor"),
            Flow::RouterHistory => ("router", "history_writer"),
            Flow::DecisorContent => ("decisor", "content"),
            Flow::DecisorControl => ("decisor", "control"),
            Flow::DecisorUpsert => ("decisor", "upsert_producer"),
            Flow::DecisorDrop => ("decisor", "drop_producer"),
            Flow::DecisorHistory => ("decisor", "history_writer"),
            Flow::UpsertHistory => ("upsert_producer", "history_writer"),
            Flow::DropHistory => ("drop_producer", "history_writer"),
            Flow::EnrichedHistory => ("enriched_producer", "history_writer"),
        };
        if self.per_source() { format!("{from}:{source}->{to}") } else { format!("{from}->{to}") }
    }
}

/// Pipeline-wide counters, shared by every actor through an `Arc`.
#[derive(Debug, Default)]
pub struct Metrics {
    pub events_in: AtomicU64,
    outcomes: [AtomicU64; 8],
    pub upserts_published: AtomicU64,
    pub drops_published: AtomicU64,
    pub enriched_published: AtomicU64,
    /// Times each actor recovered from a panic (`assetflow_actor_restarts_total{actor}`).
    restarts: Mutex<BTreeMap<String, u64>>,
    dead_letters: Mutex<BTreeMap<String, u64>>,
    dead_letters_by_stage: Mutex<BTreeMap<(String, String), u64>>,
    in_flight: Mutex<BTreeMap<String, u64>>,
    lag: Mutex<BTreeMap<String, u64>>,
    /// Sources that refused to be read, with why: the run ends with a non-zero exit.
    refused: Mutex<BTreeMap<String, String>>,
    /// Backends whose last call failed (after retries), with the error: what `/readyz` reports.
    unhealthy: Mutex<BTreeMap<String, String>>,
    /// Messages sent to and handled by each actor: the difference is its mailbox depth.
    actor_sent: [AtomicU64; 7],
    /// Latency and errors of every backend call attempt, by (backend, operation).
    calls: Mutex<BTreeMap<(String, String), CallStats>>,
    /// Items sent along each edge ([`Flow`]), and per source for the flows out of an Ingest.
    flows: [AtomicU64; Flow::COUNT],
    /// Per source, the items of each of its flows, by [`Flow::source_slot`].
    source_flows: Mutex<BTreeMap<String, [u64; Flow::PER_SOURCE]>>,
    actor_handled: [AtomicU64; 7],
    /// Decisor micro-batches applied, and the events in them.
    pub batches: AtomicU64,
    pub batch_events: AtomicU64,
    /// Of those events, the ones whose content hash the decisor took; the others were
    /// unchanged assets whose text print the store vouched for ([`crate::print`]).
    pub hashed: AtomicU64,
    /// From reading a message to its decision being durable (acknowledged).
    pub decision_latency: crate::latency::LatencyHistogram,
    /// Time each actor spent on its own work (not waiting for the stage after it), summed over
    /// its instances, work in progress included: the rate of this is how busy a stage is,
    /// which is how the status page finds the slow one.
    busy: [Mutex<BusyClock>; 7],
}

/// Integrates "how many instances of an actor are working" over time.
#[derive(Debug, Default)]
struct BusyClock {
    active: u32,
    since: Option<std::time::Instant>,
    total: std::time::Duration,
}

impl BusyClock {
    fn now_total(&self) -> std::time::Duration {
        self.total + self.since.map_or(std::time::Duration::ZERO, |s| s.elapsed() * self.active)
    }
    fn change(&mut self, up: bool) {
        self.total = self.now_total();
        self.since = Some(std::time::Instant::now());
        self.active = if up { self.active + 1 } else { self.active.saturating_sub(1) };
    }
}

/// While alive, an instance of an actor is counted as working ([`Metrics::working`]) or, inside
/// that, as waiting for the next stage instead ([`Metrics::waiting`]); dropping it undoes that.
#[must_use = "the count changes back as soon as this is dropped"]
pub struct BusyGuard<'a> {
    metrics: &'a Metrics,
    actor: ActorName,
    /// Whether dropping the guard counts the instance as working again.
    resumes_work: bool,
}

impl Drop for BusyGuard<'_> {
    fn drop(&mut self) {
        self.metrics.clock(self.actor, self.resumes_work);
    }
}

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn index(o: Outcome) -> usize {
    Outcome::ALL.iter().position(|x| *x == o).unwrap_or(0)
}

impl Metrics {
    /// One message carrying `items` sent along `flow`.
    pub fn sent(&self, flow: Flow, items: u64) {
        if let Some(a) = flow.to() {
            self.actor_sent[a as usize].fetch_add(1, Ordering::Relaxed);
        }
        self.flows[flow as usize].fetch_add(items, Ordering::Relaxed);
    }
    /// [`Metrics::sent`] for the flows out of `source`'s Ingest.
    pub fn sent_from(&self, source: &str, flow: Flow, items: u64) {
        self.sent(flow, items);
        let Some(slot) = flow.source_slot() else { return };
        let mut m = locked(&self.source_flows);
        // Looked up by `&str`: the source's name is copied once, not once per event.
        match m.get_mut(source) {
            Some(counts) => counts[slot] += items,
            None => {
                let mut counts = [0; Flow::PER_SOURCE];
                counts[slot] = items;
                m.insert(source.to_owned(), counts);
            }
        }
    }
    /// Records one attempt of a backend call (see [`crate::calls::Calls`]).
    pub fn record_call(&self, backend: &str, operation: &str, took: std::time::Duration, ok: bool) {
        let mut m = locked(&self.calls);
        let s = m.entry((backend.to_owned(), operation.to_owned())).or_default();
        s.count += 1;
        if !ok {
            s.errors += 1;
        }
        let secs = took.as_secs_f64();
        s.sum_seconds += secs;
        if let Some(i) = CALL_BUCKETS.iter().position(|b| secs <= *b) {
            s.buckets[i] += 1;
        }
    }
    /// Every backend call's statistics so far, by (backend, operation).
    pub fn calls(&self) -> BTreeMap<(String, String), CallStats> {
        locked(&self.calls).clone()
    }
    /// Counts `source`'s flows from zero, so an edge that nothing has crossed yet still shows.
    pub fn add_source(&self, source: &str) {
        locked(&self.source_flows).entry(source.to_owned()).or_insert([0; Flow::PER_SOURCE]);
    }
    /// Items sent along every edge so far, by [`Flow::key`].
    pub fn flows(&self) -> BTreeMap<String, u64> {
        let mut out: BTreeMap<String, u64> = Flow::ALL
            .iter()
            .filter(|f| !f.per_source())
            .map(|f| (f.key(""), self.flows[*f as usize].load(Ordering::Relaxed)))
            .collect();
        for (source, counts) in locked(&self.source_flows).iter() {
            for f in Flow::ALL {
                if let Some(slot) = f.source_slot() {
                    out.insert(f.key(source), counts[slot]);
                }
            }
        }
        out
    }
    /// `actor` recovered from a panic ([`crate::supervise::Supervisor`]).
    pub fn restart(&self, actor: &str) {
        *locked(&self.restarts).entry(actor.to_owned()).or_default() += 1;
    }
    /// Restarts by actor.
    pub fn restarts(&self) -> BTreeMap<String, u64> {
        locked(&self.restarts).clone()
    }
    pub fn handled(&self, a: ActorName) {
        self.actor_handled[a as usize].fetch_add(1, Ordering::Relaxed);
    }
    fn clock(&self, a: ActorName, up: bool) {
        locked(&self.busy[a as usize]).change(up);
    }
    /// One instance of `a` works on its own until the guard drops.
    pub fn working(&self, a: ActorName) -> BusyGuard<'_> {
        self.clock(a, true);
        BusyGuard { metrics: self, actor: a, resumes_work: false }
    }
    /// Inside [`Metrics::working`]: the instance waits for the next stage until the guard drops.
    pub fn waiting(&self, a: ActorName) -> BusyGuard<'_> {
        self.clock(a, false);
        BusyGuard { metrics: self, actor: a, resumes_work: true }
    }
    /// Seconds of work so far (in progress included), per actor.
    pub fn busy_seconds(&self) -> Vec<(ActorName, f64)> {
        ActorName::ALL.iter().map(|a| (*a, locked(&self.busy[*a as usize]).now_total().as_secs_f64())).collect()
    }
    /// (actor, messages handled, messages waiting) for every measured actor.
    pub fn actors(&self) -> Vec<(ActorName, u64, u64)> {
        ActorName::ALL
            .iter()
            .map(|a| {
                let handled = self.actor_handled[*a as usize].load(Ordering::Relaxed);
                let sent = self.actor_sent[*a as usize].load(Ordering::Relaxed);
                (*a, handled, sent.saturating_sub(handled))
            })
            .collect()
    }
    pub fn outcome(&self, o: Outcome, n: u64) {
        self.outcomes[index(o)].fetch_add(n, Ordering::Relaxed);
    }
    pub fn outcomes(&self) -> Vec<(Outcome, u64)> {
        Outcome::ALL.iter().map(|o| (*o, self.outcomes[index(*o)].load(Ordering::Relaxed))).collect()
    }
    pub fn dead_letter(&self, stage: &str, kind: &str) {
        *locked(&self.dead_letters).entry(kind.to_owned()).or_default() += 1;
        *locked(&self.dead_letters_by_stage).entry((stage.to_owned(), kind.to_owned())).or_default() += 1;
    }
    /// Dead letters by (stage, kind).
    pub fn dead_letters_by_stage(&self) -> BTreeMap<(String, String), u64> {
        locked(&self.dead_letters_by_stage).clone()
    }
    /// Marks `backend` (or a source) unhealthy with why, or healthy again with `None`.
    pub fn set_problem(&self, backend: &str, problem: Option<String>) {
        let mut m = locked(&self.unhealthy);
        match problem {
            None => {
                if !m.is_empty() {
                    m.remove(backend);
                }
            }
            Some(why) => {
                m.insert(backend.to_owned(), why);
            }
        }
    }
    /// `source` refused to be read (see `Pull::Refused`).
    pub fn refuse(&self, source: &str, why: &str) {
        locked(&self.refused).insert(source.to_owned(), why.to_owned());
    }
    /// Sources that refused to be read, with why.
    pub fn refused(&self) -> BTreeMap<String, String> {
        locked(&self.refused).clone()
    }
    /// Backends whose last call failed, with why.
    pub fn unhealthy(&self) -> BTreeMap<String, String> {
        locked(&self.unhealthy).clone()
    }
    /// `n` messages read from `source` at once.
    pub fn events_in(&self, source: &str, n: u64) {
        self.events_in.fetch_add(n, Ordering::Relaxed);
        self.sent_from(source, Flow::SourceIngest, n);
    }
    /// Messages read, by source: the flow from each source into its Ingest.
    pub fn events_by_source(&self) -> BTreeMap<String, u64> {
        let Some(slot) = Flow::SourceIngest.source_slot() else { return BTreeMap::new() };
        locked(&self.source_flows).iter().map(|(s, counts)| (s.clone(), counts[slot])).collect()
    }
    /// Messages of `source` read but not yet acknowledged.
    pub fn set_in_flight(&self, source: &str, n: u64) {
        locked(&self.in_flight).insert(source.to_owned(), n);
    }
    pub fn set_lag(&self, source: &str, lag: u64) {
        locked(&self.lag).insert(source.to_owned(), lag);
    }
    /// How far behind its input's end each source is (bytes, milliseconds...).
    pub fn lag(&self) -> BTreeMap<String, u64> {
        locked(&self.lag).clone()
    }
    pub fn in_flight(&self) -> BTreeMap<String, u64> {
        locked(&self.in_flight).clone()
    }
    /// Dead letters by `error.kind`.
    pub fn dead_letters(&self) -> BTreeMap<String, u64> {
        self.dead_letters.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
    pub fn count(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// Upper bounds (seconds) of the backend-call latency histogram buckets.
pub const CALL_BUCKETS: [f64; 12] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

/// Latency and errors of one (backend, operation).
#[derive(Debug, Default, Clone)]
pub struct CallStats {
    pub count: u64,
    pub errors: u64,
    pub sum_seconds: f64,
    /// Counts per bucket of [`CALL_BUCKETS`] (not cumulative).
    pub buckets: [u64; CALL_BUCKETS.len()],
}
