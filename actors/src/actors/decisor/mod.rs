//! Decisor: one shard of the decision stage. It owns the asset keys the router hashes to it and
//! decides their events one micro-batch at a time, in arrival order.
//!
//! Messages queue up inside the shard while a batch is being applied; the next batch is
//! everything queued by then. A batch reads the control records of its keys at once, decides
//! every event in order against them (so two events of one key in a batch see each other), and
//! then applies the effects outward first: content, output events, control records, history,
//! and only then the acknowledgements. A batch runs under `ctx.wait`, so no other message of this
//! shard is handled until it is done: that is what keeps each key's events in order.
//!
//! - `known`: what the shard knows of a batch's events before deciding them: which the store
//!   vouches are unchanged, which take their record's hash from their text print, which it hashes.
//! - `plan`: deciding a batch, pure: the events and the records they read in, a
//!   `BatchPlan` out. This file applies plans, and supervises batches.
//! - `settle`: batches written but waiting for their control records' sync, acknowledged as
//!   each becomes durable while the shard goes on.

mod known;
mod plan;
mod settle;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

// The maps a batch keeps per event hash with foldhash: SipHash, std's default, was ~2% of a
// steady crawl's CPU at a handful of lookups per event (benches/analysis.md). Those built
// from a backend's reply stay std's.
use foldhash::{HashMap as FastMap, HashSet as FastSet};

use actix::prelude::*;
use chrono::{DateTime, Utc};
use futures_util::FutureExt;
use std::panic::AssertUnwindSafe;
use tokio::sync::oneshot;

use self::known::{
    alone_in_batch, hash_batch, hash_from_prints, known_unchanged, read_unchanged, spent_count_unproven,
};
use self::plan::{BatchPlan, PlanEvent, plan_batch, sink_record};
use self::settle::Settling;
use super::Enriched;
use super::history::{DeadLetters, HistoryWriter, Record};
use super::producer::{DropProducer, Publish, UpsertProducer};
use crate::calls::Calls;
use crate::decision::{DeadLetter, Decision, DropDecision, HistoryRow, Outcome, Stage, decision_id, prior_state};
use crate::envelope::Envelope;
use crate::event::EventKind;
use crate::hash::HashIgnore;
use crate::lookup::{CachedLookup, LookupKeys};
use crate::mark::{CompletionMark, mark_key};
use crate::metrics::{ActorName, Flow, Metrics};
use crate::open_runs::{OpenRuns, first_run_key, first_run_of};
use crate::ports::{
    BackendError, BackendResult, ContentStore, ControlStore, Durable, FailureKind, PrintedRecords, RecordKey,
    RecordWrite,
};
use crate::print::{TextPrint, text_print};
use crate::record::{ControlRecord, RecordStatus, RunEvent};
use crate::retry::panic_message;
use crate::supervise::Supervisor;

/// How many times a batch is decided again after losing a conditional write.
const CONFLICT_ROUNDS: u32 = 5;

/// Decide these running events, in order.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Decide(pub Vec<Envelope<Enriched>>);

/// Resolves once every message sent to this shard before it is fully applied.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Barrier;

/// Drop these assets of `source`, unless they are no longer live or were seen in `run_id`.
#[derive(Message, Debug, Clone)]
#[rtype(result = "BackendResult<usize>")]
pub struct ApplyDrops {
    pub source: String,
    pub run_id: String,
    /// The completion event's id.
    pub event_id: String,
    pub emitted_at: DateTime<Utc>,
    pub keys: Vec<String>,
}

#[derive(Message)]
#[rtype(result = "()")]
struct Flush;

enum Item {
    /// A `Decide` message's events, kept as the router sent them: one item, not one per event.
    Events(Vec<Envelope<Enriched>>),
    Barrier(oneshot::Sender<()>),
    Drops(ApplyDrops, oneshot::Sender<BackendResult<usize>>),
}

/// What every shard needs to decide and apply.
pub struct DecisorDeps {
    pub control: Arc<dyn ControlStore>,
    pub content: Arc<dyn ContentStore>,
    pub upserts: Addr<UpsertProducer>,
    pub drops: Addr<DropProducer>,
    pub history: Addr<HistoryWriter>,
    pub lookup: Arc<CachedLookup>,
    pub lookup_keys: LookupKeys,
    pub ignore: HashIgnore,
    /// Every backend call: retried, timed, counted, health reported.
    pub calls: Calls,
    pub metrics: Arc<Metrics>,
    pub supervisor: Supervisor,
}

pub struct Decisor {
    shard: usize,
    deps: Arc<DecisorDeps>,
    mailbox: usize,
    queue: Vec<Item>,
    scheduled: bool,
    settling: std::rc::Rc<Settling>,
}

impl Decisor {
    pub fn new(shard: usize, deps: Arc<DecisorDeps>, mailbox: usize) -> Self {
        Decisor { shard, deps, mailbox, queue: Vec::new(), scheduled: false, settling: Default::default() }
    }

    fn push(&mut self, item: Item, ctx: &mut Context<Self>) {
        self.queue.push(item);
        if !self.scheduled {
            self.scheduled = true;
            // notify runs after the mailbox is drained, so the batch takes all that is queued.
            ctx.notify(Flush);
        }
    }
}

impl Actor for Decisor {
    type Context = Context<Self>;
    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(self.mailbox);
        tracing::debug!(shard = self.shard, "decisor started");
    }
}

impl Handler<Decide> for Decisor {
    type Result = ();
    fn handle(&mut self, msg: Decide, ctx: &mut Context<Self>) {
        self.deps.metrics.handled(ActorName::Decisor);
        if !msg.0.is_empty() {
            self.push(Item::Events(msg.0), ctx);
        }
    }
}

impl Handler<Barrier> for Decisor {
    type Result = ResponseFuture<()>;
    fn handle(&mut self, _: Barrier, ctx: &mut Context<Self>) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        self.push(Item::Barrier(tx), ctx);
        Box::pin(async move {
            let _ = rx.await;
        })
    }
}

impl Handler<ApplyDrops> for Decisor {
    type Result = ResponseFuture<BackendResult<usize>>;
    fn handle(&mut self, msg: ApplyDrops, ctx: &mut Context<Self>) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        self.push(Item::Drops(msg, tx), ctx);
        Box::pin(async move {
            rx.await.unwrap_or_else(|_| Err(BackendError::transient("decisor", "drop", "shard stopped")))
        })
    }
}

impl Handler<Flush> for Decisor {
    type Result = ();
    fn handle(&mut self, _: Flush, ctx: &mut Context<Self>) {
        self.scheduled = false;
        let items = std::mem::take(&mut self.queue);
        ctx.wait(actix::fut::wrap_future(run_batch(self.deps.clone(), self.settling.clone(), items)));
    }
}

/// Counts `f`, a wait for a later stage, as waiting rather than work.
async fn waiting<T>(deps: &DecisorDeps, f: impl std::future::Future<Output = T>) -> T {
    let _waiting = deps.metrics.waiting(ActorName::Decisor);
    f.await
}

async fn run_batch(deps: Arc<DecisorDeps>, settling: std::rc::Rc<Settling>, items: Vec<Item>) {
    let metrics = deps.metrics.clone();
    let _working = metrics.working(ActorName::Decisor);
    let mut events = Vec::new();
    let most = deps.control.max_batch().max(1);
    // Events not yet in a batch: a batch gathered from many messages is sized once from it, not
    // grown by doubling, each step a fresh allocation.
    let mut left: usize = items.iter().map(|i| if let Item::Events(envs) = i { envs.len() } else { 0 }).sum();
    for item in items {
        if let Item::Events(envs) = &item {
            left -= envs.len();
        }
        match item {
            // The usual case, a message that starts a batch and fits in it, moves in whole.
            Item::Events(envs) if events.is_empty() && envs.len() < most => events = envs,
            Item::Events(envs) => {
                let mut here = envs.len();
                for env in envs {
                    if events.len() == events.capacity() {
                        // Room for the rest up to a full batch (a batch holds under `most` here).
                        events.reserve((left + here).min(most - events.len()));
                    }
                    here -= 1;
                    events.push(env);
                    if events.len() >= most {
                        apply_supervised(&deps, &settling, std::mem::take(&mut events)).await;
                    }
                }
            }
            Item::Barrier(tx) => {
                apply_supervised(&deps, &settling, std::mem::take(&mut events)).await;
                // Applied means durable: a completion's sweep that follows reads these records.
                settling.all().await;
                let _ = tx.send(());
            }
            Item::Drops(cmd, tx) => {
                apply_supervised(&deps, &settling, std::mem::take(&mut events)).await;
                // Drops are idempotent (a dropped record is not live any more): a panic is
                // retried once, then the sweep dead-letters its completion.
                let result = deps
                    .supervisor
                    .twice("decisor", "drops", || apply_drops(&deps, cmd.clone()))
                    .await
                    .unwrap_or_else(|why| Err(BackendError::panicked("decisor", "drop", why)));
                let _ = tx.send(result);
            }
        }
    }
    apply_supervised(&deps, &settling, events).await;
}

/// One event of a batch, its key, print and hash computed once.
struct Pending {
    env: Envelope<()>,
    enriched: Enriched,
    key: String,
    /// The asset's text print ([`crate::print`]), taken for every event where the store keeps
    /// prints ([`ControlStore::keeps_prints`]): cheap.
    print: Option<TextPrint>,
    /// Its content hash: empty until [`hash_batch`] takes it, which it need not for an event
    /// whose print the store vouches for ([`known_unchanged`]).
    hash: String,
}

/// Applies a micro-batch under supervision. If applying it panics, the shard recovers and
/// delivers each event of the batch again, alone, after a pause (nothing it held is dropped);
/// an event that panics on its own is a poison message and is dead-lettered (kind `panic`), so
/// the events behind it go on.
async fn apply_supervised(deps: &Arc<DecisorDeps>, settling: &Settling, events: Vec<Envelope<Enriched>>) {
    let mut batch = Vec::with_capacity(events.len());
    let keeps_prints = deps.control.keeps_prints();
    for env in events {
        let (enriched, env) = env.split();
        let EventKind::Running { name: _, body } = &enriched.event.kind else {
            // The router never sends completions here; ack it rather than hold the partition.
            env.ack.done();
            continue;
        };
        let print = keeps_prints.then(|| text_print(body, &deps.ignore));
        let key = enriched.event.asset_key().unwrap_or_default();
        batch.push(Pending { env, enriched, key, print, hash: String::new() });
    }
    Metrics::add(&deps.metrics.batches, 1);
    Metrics::add(&deps.metrics.batch_events, batch.len() as u64);
    if batch.is_empty() {
        return;
    }
    let Err(panic) = AssertUnwindSafe(apply_events(deps, settling, &mut batch)).catch_unwind().await else {
        return;
    };
    // The shard goes on from state it reads again (each batch reads its records afresh).
    let pause = deps.supervisor.restarted("decisor", "decide", &panic_message(&panic));
    tracing::error!(events = batch.len(), "a decisor batch panicked; delivering its events again one by one");
    tokio::time::sleep(pause).await;
    for p in std::mem::take(&mut batch) {
        let mut one = vec![p];
        if let Err(panic) = AssertUnwindSafe(apply_events(deps, settling, &mut one)).catch_unwind().await {
            let why = BackendError::permanent("decisor", "decide", format!("panicked: {}", panic_message(&panic)));
            dead_letter_all(deps, one, Stage::Decide, "panic", &why).await;
        }
    }
}

/// Decides and applies `batch`, then empties it: dead-lettered, or handed to `settling` to be
/// acknowledged once its control records are durable. A panic leaves the unacknowledged
/// events in `batch` for the caller to deliver again.
async fn apply_events(deps: &Arc<DecisorDeps>, settling: &Settling, batch: &mut Vec<Pending>) {
    crate::failpoint!("decisor.batch");
    let mut round = 0;
    let mut earlier = EarlierRound::default();
    let (n, durable) = loop {
        round += 1;
        match decide_and_publish(deps, batch, &mut earlier).await {
            Ok(applied) => break applied,
            Err((_, e)) if e.kind == FailureKind::Conflict && round < CONFLICT_ROUNDS => {
                tracing::info!(error = %e, "control record changed under this batch; deciding again");
            }
            Err((stage, e)) => {
                return dead_letter_all(deps, std::mem::take(batch), stage, e.dead_letter_kind(), &e).await;
            }
        }
    };
    tracing::trace!(events = n, "batch applied");
    settling.settle(deps.clone(), std::mem::take(batch), durable);
}

fn stopped(what: &str) -> BackendError {
    BackendError::transient(what, "send", "actor stopped")
}

/// What the previous round of a batch read and meant to write, by asset key, kept when its
/// control write lost a conditional check. Some of those writes may have landed all the same
/// (a reply lost after the store committed, or one of several transactions of the write): a
/// stored record equal to the one this batch meant to write is this batch's own write, not news.
#[derive(Default)]
struct EarlierRound {
    /// The record each written key had before the batch (`None`: the asset was new).
    read: HashMap<String, Option<ControlRecord>>,
    wrote: HashMap<String, ControlRecord>,
}

impl EarlierRound {
    fn is_empty(&self) -> bool {
        self.read.is_empty() && self.wrote.is_empty()
    }

    /// Puts back the prior record of every key whose stored record is the one the earlier round
    /// wrote, so the batch decides those keys exactly as it did then (same outcomes, same ids)
    /// and does not write them again. Returns those keys.
    fn restore(&mut self, records: &mut HashMap<String, ControlRecord>) -> HashSet<String> {
        let mut landed = HashSet::new();
        for (key, wrote) in self.wrote.drain() {
            if records.get(&key) != Some(&wrote) {
                continue;
            }
            match self.read.remove(&key).flatten() {
                Some(prior) => records.insert(key.clone(), prior),
                None => records.remove(&key),
            };
            landed.insert(key);
        }
        self.read.clear();
        landed
    }
}

/// Reads the batch's control records, plans it against them, and applies the plan.
/// Returns how many history rows it wrote and when its control records are durable, or the
/// stage that failed.
async fn decide_and_publish(
    deps: &DecisorDeps,
    batch: &mut [Pending],
    earlier: &mut EarlierRound,
) -> Result<(usize, Durable), (Stage, BackendError)> {
    // The batch's records and, in the same read (one snapshot where the store gives one), the
    // completion marks of its sources: an event from before a source's last completion is a
    // replay, and a record that completion dropped must not come back for it. With them, each
    // source's first run, where the Router kept one ([`crate::open_runs`]).
    let first_round = earlier.is_empty();
    let alone = alone_in_batch(batch);
    let mut known = if first_round { known_unchanged(deps, batch, &alone) } else { vec![None; batch.len()] };
    // The batch's sources, owned: the events are hashed in place between the read and the marks.
    let sources: Vec<String> = {
        let distinct: FastSet<&str> = batch.iter().map(|p| p.enriched.event.source.as_str()).collect();
        distinct.into_iter().map(str::to_owned).collect()
    };
    let keys: Vec<RecordKey> = {
        let mut seen = FastSet::default();
        batch
            .iter()
            .zip(&known)
            .filter(|(p, k)| k.is_none() && seen.insert(p.key.as_str()))
            .map(|(p, _)| p)
            .map(|p| RecordKey { source: p.enriched.event.source.clone(), asset_key: p.key.clone() })
            .chain(sources.iter().map(|s| mark_key(s)))
            .chain(sources.iter().map(|s| first_run_key(s)))
            .collect()
    };
    let read = deps.calls.call("control store", "get", || deps.control.get_many_printed(&keys)).await;
    let PrintedRecords { mut records, prints } = read.map_err(|e| (Stage::Decide, e))?;
    hash_from_prints(batch, &records, &prints);
    hash_batch(deps, batch);
    let batch: &[Pending] = batch;
    let marks: FastMap<&str, CompletionMark> = sources
        .iter()
        .filter_map(|s| records.remove(s).as_ref().and_then(CompletionMark::from_record).map(|m| (s.as_str(), m)))
        .collect();
    let replayed = |p: &Pending| {
        let ev = &p.enriched.event;
        marks.get(ev.source.as_str()).is_some_and(|m| m.precedes(&p.env.origin, ev.emitted_at, p.env.attempts > 1))
    };
    let first_runs: FastMap<&str, String> = sources
        .iter()
        .filter_map(|s| {
            let kept = records.remove(&first_run_key(s).asset_key)?;
            first_run_of(s, &kept).map(|run| (s.as_str(), run))
        })
        .collect();
    let open_runs = |p: &Pending| {
        let source = p.enriched.event.source.as_str();
        match (marks.get(source), first_runs.get(source)) {
            (Some(mark), _) => OpenRuns::AllBut(&mark.run_id),
            (None, Some(first)) => OpenRuns::Only(first),
            (None, None) => OpenRuns::Unknown,
        }
    };
    // An unchanged asset moves only its run stamp, which leaves no run-event marker (§3.3):
    // right where its record's run has no completion left to count for it (a steady crawl
    // after its last completion). Where it may (that run's completion is late, or was
    // dead-lettered), the record is read and moved on the slow way, which leaves one.
    let unmarked = spent_count_unproven(batch, &mut known, open_runs);
    if !unmarked.is_empty() {
        let more = deps.calls.call("control store", "get", || deps.control.get_many(&unmarked)).await;
        records.extend(more.map_err(|e| (Stage::Decide, e))?);
    }
    let landed = earlier.restore(&mut records);
    if first_round && deps.control.moves_run_stamps() {
        read_unchanged(batch, &alone, &mut records, &mut known, replayed, open_runs);
    }
    let plan = plan_batch(
        batch.iter().zip(known).map(|(p, known)| PlanEvent {
            enriched: &p.enriched,
            key: &p.key,
            hash: &p.hash,
            print: p.print,
            replayed: replayed(p),
            known,
            open_runs: open_runs(p),
        }),
        records,
        &landed,
        |key, hash| deps.content.content_ref(key, hash),
        Utc::now(),
    );
    apply(deps, plan, earlier).await
}

/// The writes of a batch's run-event markers ([`RunEvent`]) that are not there yet. Rare (a
/// stale or repeated event of a run, a run moved on before its completion): read first, so
/// that an event delivered again counts once. An event marker is not written where the
/// asset's moved-on marker already stands for its event (the move counted it); a moved-on
/// marker is written over the asset's last one, unless that stands for the same event.
async fn new_markers(
    deps: &DecisorDeps,
    run_events: Vec<(String, ControlRecord)>,
    moved: Vec<ControlRecord>,
) -> Result<Vec<RecordWrite>, BackendError> {
    let key = |r: &ControlRecord| RecordKey { source: r.source.clone(), asset_key: r.asset_key.clone() };
    // Each key once: two stale events of an asset share its moved-on marker, and a store may
    // refuse a read that names a key twice (DynamoDB's BatchGetItem does).
    let mut seen: HashSet<RecordKey> = HashSet::new();
    let keys: Vec<RecordKey> = run_events
        .iter()
        .flat_map(|(asset, r)| {
            [key(r), RecordKey { source: r.source.clone(), asset_key: RunEvent::moved_key(&r.source, asset) }]
        })
        .chain(moved.iter().map(key))
        .filter(|k| seen.insert(k.clone()))
        .collect();
    let there = deps.calls.call("control store", "get", || deps.control.get_many(&keys)).await?;
    let mut writes = Vec::new();
    // The moved-on markers as they will be: those of this batch over those there.
    let mut slots: HashMap<&str, &ControlRecord> = there.iter().map(|(k, r)| (k.as_str(), r)).collect();
    for m in &moved {
        let old = there.get(&m.asset_key);
        if old.is_some_and(|o| RunEvent::same_event(o, m)) {
            continue;
        }
        let version = old.map_or(0, |o| o.version);
        writes.push(RecordWrite::new(ControlRecord { version: version + 1, ..m.clone() }, version));
        slots.insert(m.asset_key.as_str(), m);
    }
    let mut new: HashSet<String> = HashSet::new();
    for (asset, r) in run_events {
        let counted_by_move =
            slots.get(RunEvent::moved_key(&r.source, &asset).as_str()).is_some_and(|m| RunEvent::same_event(m, &r));
        if !there.contains_key(&r.asset_key) && !counted_by_move && new.insert(r.asset_key.clone()) {
            writes.push(RecordWrite::new(r, 0));
        }
    }
    Ok(writes)
}

/// Applies a plan outward first: content, then upserts (an upsert must never point at content
/// that is not there), and beside them history; then, once all three are durable, the control
/// records, returning once they are written (and seen by every later read) with their sync
/// still to come where the store allows it. Returns the rows written and that [`Durable`].
///
/// History goes before the control records because the records are what a delivery of the
/// same events again decides against: with the records written and the rows not (a crash in
/// between), that delivery would find its own writes, call the assets `unchanged`, and the
/// decisions already published would have no row (EVENTS.md §6). The upserts go before them
/// for the same reason: with the records written and the upserts not, the upserts would be
/// lost. In this order a delivery again decides exactly as the first did and writes the same
/// rows and outputs again, with the same ids (§7).
///
/// Nothing orders history against content and upserts, so they are written side by side: each
/// is a durable write of its own (a sync each), and a shard waits for the longer of the two
/// rather than their sum. Where syncs are slow against the cores (a virtual disk, many shards)
/// that wait is what a shard spends most of its time on (benches/analysis.md).
async fn apply(
    deps: &DecisorDeps,
    plan: BatchPlan<'_>,
    earlier: &mut EarlierRound,
) -> Result<(usize, Durable), (Stage, BackendError)> {
    let BatchPlan { rows, outcomes, contents, upserts, mut writes, touches, landed, priors, run_events, moved } = plan;
    if !run_events.is_empty() || !moved.is_empty() {
        // Ahead of the records: where a store writes them one by one, a crash in between
        // leaves a marker without its move (written again as the same, not counted twice),
        // never a move without its marker.
        let markers = new_markers(deps, run_events, moved).await.map_err(|e| (Stage::Decide, e))?;
        writes.splice(0..0, markers);
    }
    let outputs = async {
        if !contents.is_empty() {
            // The shard's own write: work, though history may be under way beside it.
            let _working = deps.metrics.working(ActorName::Decisor);
            deps.calls
                .call("content store", "put", || deps.content.put_many(&contents))
                .await
                .map_err(|e| (Stage::Decide, e))?;
            deps.metrics.sent(Flow::DecisorContent, contents.len() as u64);
        }
        if !upserts.is_empty() {
            let n = upserts.len() as u64;
            deps.metrics.sent(Flow::DecisorUpsert, n);
            deps.upserts
                .send(Publish(upserts))
                .await
                .unwrap_or_else(|_| Err(stopped("upsert producer")))
                .map_err(|e| (Stage::Publish, e))?;
            Metrics::add(&deps.metrics.upserts_published, n);
        }
        Ok(())
    };
    let n = rows.len();
    let history = async { send_history(deps, rows).await.map_err(|e| (Stage::History, e)) };
    // Both run to the end even when one fails: neither is cut short half-written. The shard
    // counts as waiting for the later stages throughout, but for its own content write.
    let (outputs, history) = {
        let _waiting = deps.metrics.waiting(ActorName::Decisor);
        tokio::join!(outputs, history)
    };
    outputs?;
    history?;
    let mut durable = Durable::now();
    if !writes.is_empty() || !touches.is_empty() {
        let put = deps.calls.call("control store", "put", || deps.control.put_with_touches_deferred(&writes, &touches));
        match put.await {
            Ok(sync) => durable = sync,
            Err(e) => {
                if e.kind == FailureKind::Conflict {
                    earlier.read = priors.into_iter().collect();
                    let wrote = writes.into_iter().map(|w| w.record).chain(landed);
                    earlier.wrote = wrote.map(|r| (r.asset_key.clone(), r)).collect();
                }
                return Err((Stage::Decide, e));
            }
        }
        deps.metrics.sent(Flow::DecisorControl, (writes.len() + touches.len()) as u64);
    }
    for (o, n) in outcomes {
        deps.metrics.outcome(o, n);
    }
    Ok((n, durable))
}

/// Sends `rows` to the history writer and waits until they are durable.
async fn write_history(deps: &DecisorDeps, rows: Vec<HistoryRow>) -> BackendResult<()> {
    waiting(deps, send_history(deps, rows)).await
}

/// [`write_history`], for a caller that counts its own waiting.
async fn send_history(deps: &DecisorDeps, rows: Vec<HistoryRow>) -> BackendResult<()> {
    deps.metrics.sent(Flow::DecisorHistory, rows.len() as u64);
    deps.history.send(Record(rows)).await.unwrap_or_else(|_| Err(stopped("history")))
}

async fn dead_letter_all(deps: &DecisorDeps, batch: Vec<Pending>, stage: Stage, kind: &str, error: &BackendError) {
    let letters = batch
        .into_iter()
        .map(|p| {
            let mut dl = DeadLetter::new(
                stage,
                kind,
                error.to_string(),
                &p.env.raw,
                Some(p.enriched.event.event_id.clone()),
                p.env.origin.clone(),
                p.env.attempts,
            )
            .of_event(&p.enriched.event);
            dl.asset_key = Some(p.key);
            (dl, p.env.ack)
        })
        .collect::<Vec<_>>();
    if {
        deps.metrics.sent(Flow::DecisorHistory, letters.len() as u64);
        deps.history.send(DeadLetters(letters))
    }
    .await
    .is_err()
    {
        tracing::error!("history writer stopped; dead letters left unacknowledged for re-delivery");
    }
}

/// Applies the drops a completion sweep assigned to this shard.
async fn apply_drops(deps: &DecisorDeps, cmd: ApplyDrops) -> BackendResult<usize> {
    let mut round = 0;
    loop {
        round += 1;
        match try_apply_drops(deps, &cmd).await {
            Err(e) if e.kind == FailureKind::Conflict && round < CONFLICT_ROUNDS => continue,
            other => return other,
        }
    }
}

async fn try_apply_drops(deps: &DecisorDeps, cmd: &ApplyDrops) -> BackendResult<usize> {
    let keys: Vec<RecordKey> =
        cmd.keys.iter().map(|k| RecordKey { source: cmd.source.clone(), asset_key: k.clone() }).collect();
    let records = deps.calls.call("control store", "get", || deps.control.get_many(&keys)).await?;
    let now = Utc::now();
    let mut outputs = Vec::new();
    let mut changed = Vec::new();
    let mut rows = Vec::new();
    for key in &cmd.keys {
        let Some(r) = records.get(key) else { continue };
        // A record touched by news newer than the completion (the next run, decided by a
        // process that took the partition over while this one still swept) is not this
        // completion's to drop: older news never overwrites newer.
        if !r.is_live() || r.last_seen_run == cmd.run_id || r.source != cmd.source || r.last_seen_at > cmd.emitted_at {
            continue;
        }
        let business = match deps.lookup_keys.params_for_asset(&r.source, &r.name) {
            Some(params) => deps.lookup.get(&params).await?,
            None => None,
        };
        let id = decision_id(&cmd.event_id, key, "drop", &prior_state(Some(r)));
        outputs.push(sink_record(&Decision::Drop(DropDecision {
            decision_id: id.clone(),
            asset_key: key.clone(),
            source: r.source.clone(),
            run_id: cmd.run_id.clone(),
            event_id: cmd.event_id.clone(),
            last_seen_run: r.last_seen_run.clone(),
            hash: r.hash.clone(),
            business,
            decided_at: now,
        })));
        rows.push(HistoryRow {
            asset_key: Some(key.clone()),
            source: Some(r.source.clone()),
            event_id: Some(cmd.event_id.clone()),
            run_id: Some(cmd.run_id.clone()),
            outcome: Outcome::Dropped,
            hash: Some(r.hash.clone()),
            decision_id: id,
            at: now,
        });
        let mut next = r.clone();
        next.status = RecordStatus::Dropped;
        next.dropped_at = Some(cmd.emitted_at);
        next.version += 1;
        changed.push(RecordWrite::new(next, r.version));
    }
    if outputs.is_empty() {
        return Ok(0);
    }
    let n = outputs.len();
    waiting(deps, {
        deps.metrics.sent(Flow::DecisorDrop, n as u64);
        deps.drops.send(Publish(outputs))
    })
    .await
    .unwrap_or_else(|_| Err(stopped("drop producer")))?;
    Metrics::add(&deps.metrics.drops_published, n as u64);
    // The rows before the records, as for a batch of events ([`apply`]): a completion swept
    // again finds the assets whose records were written dropped, and drops them no more.
    write_history(deps, rows).await?;
    deps.calls.call("control store", "put", || deps.control.put_many(&changed)).await?;
    deps.metrics.sent(Flow::DecisorControl, changed.len() as u64);
    deps.metrics.outcome(Outcome::Dropped, n as u64);
    Ok(n)
}

impl Handler<crate::forward::Ping> for Decisor {
    type Result = ();
    fn handle(&mut self, _: crate::forward::Ping, _: &mut Context<Self>) {}
}
