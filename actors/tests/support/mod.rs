//! In-memory ports and a harness that runs the real actors over them.
#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use assetflow_actors::decision::{HistoryRow, Origin};
use assetflow_actors::envelope::Watermark;
use assetflow_actors::metrics::Metrics;
use assetflow_actors::pipeline::{DecisionPorts, Downstream, Pipeline, Ports, Settings};
use assetflow_actors::ports::*;
use assetflow_actors::print::TextPrint;
use assetflow_actors::record::{ControlRecord, KnownRecord, RecordTouch};
use async_trait::async_trait;
use serde_json::{Map, Value, json};

/// What a faulty port does on its Nth call (counting from 1).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FaultMode {
    Error,
    Panic,
    Hang,
    /// Fails every call from the Nth on.
    ErrorForever,
    /// Fails this many calls from the Nth on (an outage that outlasts the retries, then ends).
    ErrorFor(u64),
    /// The Nth call does its work, then fails as if its reply were lost (a timeout after the
    /// backend committed). Only ports that write honour it; elsewhere it is `Error`.
    LostReply,
}

/// A fault to inject into one port.
pub struct Fault {
    pub mode: FaultMode,
    pub nth: u64,
    calls: AtomicU64,
}

impl Fault {
    pub fn new(mode: FaultMode, nth: u64) -> Arc<Self> {
        Arc::new(Fault { mode, nth, calls: AtomicU64::new(0) })
    }
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }
    /// Counts a call; is this the one (or one of those) that fails?
    pub fn fires(&self) -> bool {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        match self.mode {
            FaultMode::ErrorForever => n >= self.nth,
            FaultMode::ErrorFor(len) => n >= self.nth && n < self.nth + len,
            _ => n == self.nth,
        }
    }

    /// Called at the start of every call of the faulty port.
    pub async fn hit(&self, port: &str) -> BackendResult<()> {
        if !self.fires() {
            return Ok(());
        }
        match self.mode {
            FaultMode::Error | FaultMode::ErrorForever | FaultMode::ErrorFor(_) | FaultMode::LostReply => {
                Err(BackendError::transient(port, "call", "injected failure"))
            }
            FaultMode::Panic => panic!("injected panic in {port}"),
            FaultMode::Hang => {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Ok(())
            }
        }
    }
}

async fn maybe(fault: &Option<Arc<Fault>>, port: &str) -> BackendResult<()> {
    match fault {
        Some(f) => f.hit(port).await,
        None => Ok(()),
    }
}

/// A control table in memory; `delay` slows reads and writes of records (not listing),
/// `conflicts` counts lost conditional writes.
#[derive(Default)]
pub struct MemControl {
    pub records: Mutex<HashMap<String, ControlRecord>>,
    pub delay: Duration,
    pub conflicts: AtomicU64,
    pub fault: Option<Arc<Fault>>,
    /// Answers `known` from its records, as the embedded store answers from its index, and
    /// takes touches (checked against the stored version like any write).
    pub indexed: bool,
    /// Moves run stamps alone (`moves_run_stamps`) for records it was read for, without
    /// answering `known`: every unchanged asset takes the read path.
    pub stamped: bool,
    /// Keeps prints and gives them with the records it reads (`get_many_printed`), as the
    /// embedded store does for records its index does not hold.
    pub printed: bool,
    pub touches: AtomicU64,
    /// What `max_batch` says (0: no bound).
    pub max_batch: usize,
    /// The number of keys of every `get_many`, in order.
    pub reads: Mutex<Vec<usize>>,
    /// When not zero, writes are visible at once and durable this much later, in the order
    /// they were written, as the embedded store's journal is (`put_with_touches_deferred`).
    pub sync_delay: Duration,
    pub syncs: Arc<Syncs>,
    /// The text print each written or touched asset came with, which `known` answers, as
    /// the embedded store's index keeps it.
    pub prints: Mutex<HashMap<String, TextPrint>>,
}

/// The deferred syncs of a [`MemControl`]: which write each key was last in, and how far
/// writes are durable.
#[derive(Default)]
pub struct Syncs {
    pub written: AtomicU64,
    pub durable: AtomicU64,
    /// The write each asset key was last written or touched in.
    pub turn_of: Mutex<HashMap<String, u64>>,
    /// Writes that began while an earlier one was not durable yet.
    pub overlapped: AtomicU64,
    /// Lists of a source (a sweep) made while a write was not durable yet.
    pub listed_undurable: AtomicU64,
}

impl Syncs {
    /// Whether the last write of `asset_key` is durable.
    pub fn is_durable(&self, asset_key: &str) -> bool {
        let turn = self.turn_of.lock().unwrap().get(asset_key).copied();
        turn.is_some_and(|t| t <= self.durable.load(Ordering::SeqCst))
    }
    fn pending(&self) -> bool {
        self.durable.load(Ordering::SeqCst) < self.written.load(Ordering::SeqCst)
    }
}

impl MemControl {
    pub fn slow(delay: Duration) -> Arc<Self> {
        Arc::new(MemControl { delay, ..Default::default() })
    }
    pub fn indexed(delay: Duration) -> Arc<Self> {
        Arc::new(MemControl { delay, indexed: true, stamped: true, ..Default::default() })
    }
    pub fn stamped(delay: Duration) -> Arc<Self> {
        Arc::new(MemControl { delay, stamped: true, ..Default::default() })
    }
    /// [`stamped`](Self::stamped), and keeping prints with its records ([`MemControl::printed`]).
    pub fn printed(delay: Duration) -> Arc<Self> {
        Arc::new(MemControl { delay, stamped: true, printed: true, ..Default::default() })
    }
    /// [`indexed`](Self::indexed), its writes durable `sync_delay` after they return.
    pub fn syncing_later(sync_delay: Duration) -> Arc<Self> {
        Arc::new(MemControl { indexed: true, stamped: true, sync_delay, ..Default::default() })
    }
    async fn pause(&self) {
        if !self.delay.is_zero() {
            // Jitter, so that concurrent callers (if the actors let them be) finish out of order.
            let d = self.delay.mul_f64(0.5 + fastrand_f64());
            tokio::time::sleep(d).await;
        }
    }
    pub fn record(&self, key: &str) -> Option<ControlRecord> {
        self.records.lock().unwrap().get(key).cloned()
    }
    /// Keeps the prints of a batch that landed: a write's (or none), a touch's where it has one.
    fn keep_prints(&self, writes: &[RecordWrite], touches: &[RecordTouch]) {
        let mut prints = self.prints.lock().unwrap();
        for w in writes {
            match w.print {
                Some(p) => prints.insert(w.record.asset_key.clone(), p),
                None => prints.remove(&w.record.asset_key),
            };
        }
        for t in touches {
            if let Some(p) = t.print {
                prints.insert(t.asset_key.to_string(), p);
            }
        }
    }
}

fn fastrand_f64() -> f64 {
    use std::hash::{BuildHasher, RandomState};
    (RandomState::new().hash_one(std::time::Instant::now()) % 1000) as f64 / 1000.0
}

#[async_trait]
impl ControlStore for MemControl {
    async fn get_many(&self, keys: &[RecordKey]) -> BackendResult<HashMap<String, ControlRecord>> {
        self.reads.lock().unwrap().push(keys.len());
        // As DynamoDB's BatchGetItem does: a read that names a key twice is refused.
        let distinct: HashSet<&RecordKey> = keys.iter().collect();
        if distinct.len() < keys.len() {
            return Err(BackendError::permanent("mem", "get", "a key named twice in one read"));
        }
        maybe(&self.fault, "control").await?;
        self.pause().await;
        let m = self.records.lock().unwrap();
        Ok(keys.iter().filter_map(|k| m.get(&k.asset_key).map(|r| (k.asset_key.clone(), r.clone()))).collect())
    }
    async fn get_many_printed(&self, keys: &[RecordKey]) -> BackendResult<PrintedRecords> {
        let records = self.get_many(keys).await?;
        let prints = self.prints.lock().unwrap();
        let prints = match self.printed {
            true => records.keys().filter_map(|k| prints.get(k).map(|p| (k.clone(), *p))).collect(),
            false => HashMap::new(),
        };
        Ok(PrintedRecords { records, prints })
    }
    async fn put_many(&self, writes: &[RecordWrite]) -> BackendResult<()> {
        let lost_reply = match &self.fault {
            Some(f) if f.mode == FaultMode::LostReply => f.fires(),
            _ => false,
        };
        if !lost_reply {
            maybe(&self.fault, "control").await?;
        }
        self.pause().await;
        let mut m = self.records.lock().unwrap();
        for w in writes {
            let stored = m.get(&w.record.asset_key).map_or(0, |r| r.version);
            if stored != w.expected_version {
                self.conflicts.fetch_add(1, Ordering::SeqCst);
                return Err(BackendError::new("mem", "put", "version moved", FailureKind::Conflict));
            }
        }
        for w in writes {
            m.insert(w.record.asset_key.clone(), w.record.clone());
        }
        self.keep_prints(writes, &[]);
        if lost_reply {
            return Err(BackendError::transient("control", "put", "injected lost reply (the write landed)"));
        }
        Ok(())
    }
    fn moves_run_stamps(&self) -> bool {
        self.stamped
    }
    fn keeps_prints(&self) -> bool {
        self.indexed || self.printed
    }
    fn max_batch(&self) -> usize {
        if self.max_batch == 0 { usize::MAX } else { self.max_batch }
    }
    fn known(&self, _source: &str, asset_key: &str) -> Option<KnownRecord> {
        let m = self.records.lock().unwrap();
        let r = m.get(asset_key).filter(|r| self.indexed && r.is_live())?;
        Some(KnownRecord {
            hash: KnownRecord::hash_bytes(&r.hash)?,
            print: self.prints.lock().unwrap().get(asset_key).copied(),
            run: KnownRecord::run_brief(&r.last_seen_run),
            last_seen_at: r.last_seen_at,
            version: r.version,
        })
    }
    async fn put_with_touches(&self, writes: &[RecordWrite], touches: &[RecordTouch]) -> BackendResult<()> {
        if touches.is_empty() {
            return self.put_many(writes).await;
        }
        assert!(self.stamped, "touches for a store that keeps no run stamps");
        maybe(&self.fault, "control").await?;
        self.pause().await;
        let mut m = self.records.lock().unwrap();
        let stored = |key: &str| m.get(key).map_or(0, |r| r.version);
        let moved = writes.iter().any(|w| stored(&w.record.asset_key) != w.expected_version)
            || touches.iter().any(|t| stored(&t.asset_key) + 1 != t.version);
        if moved {
            self.conflicts.fetch_add(1, Ordering::SeqCst);
            return Err(BackendError::new("mem", "put", "version moved", FailureKind::Conflict));
        }
        for w in writes {
            m.insert(w.record.asset_key.clone(), w.record.clone());
        }
        for t in touches {
            let r = m.get_mut(t.asset_key.as_ref()).expect("a touched record exists");
            (r.last_seen_run, r.last_seen_at, r.version) = (t.last_seen_run.to_string(), t.last_seen_at, t.version);
        }
        self.keep_prints(writes, touches);
        self.touches.fetch_add(touches.len() as u64, Ordering::SeqCst);
        Ok(())
    }
    async fn put_with_touches_deferred(
        &self,
        writes: &[RecordWrite],
        touches: &[RecordTouch],
    ) -> BackendResult<Durable> {
        if self.sync_delay.is_zero() {
            return self.put_with_touches(writes, touches).await.map(|()| Durable::now());
        }
        if self.syncs.pending() {
            self.syncs.overlapped.fetch_add(1, Ordering::SeqCst);
        }
        self.put_with_touches(writes, touches).await?;
        let turn = self.syncs.written.fetch_add(1, Ordering::SeqCst) + 1;
        let mut turn_of = self.syncs.turn_of.lock().unwrap();
        for key in
            writes.iter().map(|w| w.record.asset_key.as_str()).chain(touches.iter().map(|t| t.asset_key.as_ref()))
        {
            turn_of.insert(key.to_owned(), turn);
        }
        drop(turn_of);
        let (syncs, delay) = (self.syncs.clone(), self.sync_delay);
        // Under way at once, and durable in write order (each waits the same delay).
        let sync = tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            syncs.durable.fetch_max(turn, Ordering::SeqCst);
        });
        Ok(Durable::later(async move { sync.await.map_err(|e| BackendError::transient("mem", "sync", e)) }))
    }
    async fn list_source(&self, source: &str) -> BackendResult<Vec<ControlRecord>> {
        if self.syncs.pending() {
            self.syncs.listed_undurable.fetch_add(1, Ordering::SeqCst);
        }
        // Not slowed: a sweep that did not wait behind the barrier would list at once and see
        // records the slow shards have not written yet.
        Ok(self.records.lock().unwrap().values().filter(|r| r.source == source).cloned().collect())
    }
    async fn list_all(&self) -> BackendResult<Vec<ControlRecord>> {
        Ok(self.records.lock().unwrap().values().cloned().collect())
    }
    async fn remove_markers(&self, keys: &[RecordKey]) -> BackendResult<()> {
        maybe(&self.fault, "control").await?;
        let mut m = self.records.lock().unwrap();
        for k in keys {
            if m.get(&k.asset_key).is_some_and(|r| r.is_run_event_at(k)) {
                m.remove(&k.asset_key);
            }
        }
        Ok(())
    }
}

#[derive(Default)]
pub struct MemContent {
    pub objects: Mutex<HashMap<String, Vec<u8>>>,
    pub fault: Option<Arc<Fault>>,
    /// `content_ref` panics on its Nth call (a fault outside any retried backend call).
    pub ref_panic: Option<Arc<Fault>>,
    /// `content_ref` panics for this asset key, always: a poison message.
    pub poison_key: Option<String>,
}

#[async_trait]
impl ContentStore for MemContent {
    fn content_ref(&self, asset_key: &str, hash: &str) -> String {
        if self.ref_panic.as_ref().is_some_and(|f| f.fires()) || self.poison_key.as_deref() == Some(asset_key) {
            panic!("injected panic in content_ref for {asset_key}");
        }
        format!("mem://{asset_key}/{hash}")
    }
    async fn put(&self, asset_key: &str, hash: &str, body: &[u8]) -> BackendResult<()> {
        maybe(&self.fault, "content").await?;
        // Not through content_ref: its injected panics are for the decisor, not for this call.
        self.objects.lock().unwrap().insert(format!("mem://{asset_key}/{hash}"), body.to_vec());
        Ok(())
    }
}

#[derive(Default)]
pub struct MemHistory {
    pub rows: Mutex<Vec<HistoryRow>>,
    pub fault: Option<Arc<Fault>>,
    /// Every append that holds a row with one of these outcomes fails: a process that stops
    /// before a decision's history row is written.
    pub refused: Mutex<Vec<&'static str>>,
    /// Pause per row appended: a slow store.
    pub per_row: Duration,
    /// What `max_batch` says (0: no bound).
    pub max_batch: usize,
    /// The size of every append, in order.
    pub calls: Mutex<Vec<usize>>,
}

#[async_trait]
impl HistoryStore for MemHistory {
    async fn append(&self, rows: &[HistoryRow]) -> BackendResult<()> {
        self.calls.lock().unwrap().push(rows.len());
        maybe(&self.fault, "history").await?;
        if !self.per_row.is_zero() {
            tokio::time::sleep(self.per_row * rows.len() as u32).await;
        }
        let refused = self.refused.lock().unwrap();
        if rows.iter().any(|r| refused.contains(&r.outcome.as_str())) {
            return Err(BackendError::permanent("history", "append", "injected: rows refused"));
        }
        drop(refused);
        self.rows.lock().unwrap().extend_from_slice(rows);
        Ok(())
    }
    async fn read(&self, asset_key: &str, limit: usize) -> BackendResult<Vec<HistoryRow>> {
        let rows = self.rows.lock().unwrap();
        Ok(rows.iter().rev().filter(|r| r.asset_key.as_deref() == Some(asset_key)).take(limit).cloned().collect())
    }
    fn max_batch(&self) -> usize {
        if self.max_batch == 0 { usize::MAX } else { self.max_batch }
    }
}

/// Collects what is sent, parsed back to JSON.
#[derive(Default)]
pub struct MemSink {
    pub records: Mutex<Vec<Value>>,
    pub fault: Option<Arc<Fault>>,
    /// Pause per record sent: a slow consumer.
    pub per_record: Duration,
    /// What `max_batch` says (0: no bound).
    pub max_batch: usize,
    /// The size of every call, in order.
    pub calls: Mutex<Vec<usize>>,
}

impl MemSink {
    pub fn all(&self) -> Vec<Value> {
        self.records.lock().unwrap().clone()
    }
}

#[async_trait]
impl Sink for MemSink {
    async fn send(&self, batch: &[SinkRecord]) -> BackendResult<()> {
        self.calls.lock().unwrap().push(batch.len());
        maybe(&self.fault, "sink").await?;
        if !self.per_record.is_zero() {
            tokio::time::sleep(self.per_record * batch.len() as u32).await;
        }
        let mut v = self.records.lock().unwrap();
        for r in batch {
            v.push(serde_json::from_slice(&r.payload).expect("sink payload is JSON"));
        }
        Ok(())
    }
    fn max_batch(&self) -> usize {
        if self.max_batch == 0 { usize::MAX } else { self.max_batch }
    }
}

/// Business rows by (source, database, schema).
#[derive(Default)]
pub struct MemLookup {
    pub rows: HashMap<Vec<String>, Map<String, Value>>,
    pub fault: Option<Arc<Fault>>,
}

#[async_trait]
impl Lookup for MemLookup {
    async fn lookup(&self, params: &[String]) -> BackendResult<Option<Map<String, Value>>> {
        maybe(&self.fault, "lookup").await?;
        Ok(self.rows.get(params).cloned())
    }
}

/// A finite source over lines, in small pulls so the pipeline sees many batches.
pub struct VecSource {
    /// (offset, partition, line), in the order they are read.
    lines: std::vec::IntoIter<(u64, String, String)>,
    watermark: Arc<Watermark<u64>>,
    /// Lines per pull, at most.
    pull: usize,
}

impl VecSource {
    pub fn new(lines: Vec<String>) -> Self {
        Self::at_positions(lines.into_iter().zip(1..).map(|(l, p)| (p, l)).collect())
    }

    /// Lines read at the given offsets: an offset seen before is the same message read again
    /// (a replay after a crash, or by the partition's next owner).
    pub fn at_positions(lines: Vec<(u64, String)>) -> Self {
        let lines = lines.into_iter().map(|(pos, l)| (pos, "0".to_string(), l)).collect::<Vec<_>>();
        VecSource { lines: lines.into_iter(), watermark: Watermark::new(), pull: 16 }
    }

    /// Lines read in this order from the named partitions (offsets count on across them).
    pub fn across_partitions(lines: Vec<(&str, String)>) -> Self {
        let lines = lines.into_iter().zip(1..).map(|((part, l), pos)| (pos, part.to_string(), l)).collect::<Vec<_>>();
        VecSource { lines: lines.into_iter(), watermark: Watermark::new(), pull: 16 }
    }

    /// Pulls of up to `n` lines (16 by default: under the size the Ingest decodes on the pool).
    pub fn in_pulls_of(mut self, n: usize) -> Self {
        self.pull = n;
        self
    }
}

#[async_trait]
impl Source for VecSource {
    async fn pull(&mut self, max: usize) -> BackendResult<Pull> {
        let mut out = Vec::new();
        for (pos, partition, line) in self.lines.by_ref().take(max.min(self.pull)) {
            let ack = self.watermark.register(pos);
            out.push(RawMessage::new(
                line.into_bytes(),
                Origin { source: "test".into(), partition, offset: pos.to_string() },
                ack,
            ));
        }
        Ok(if out.is_empty() { Pull::Drained } else { Pull::Messages(out) })
    }
    async fn commit(&mut self) -> BackendResult<()> {
        let _ = self.watermark.take_ready();
        Ok(())
    }
    fn outstanding(&self) -> usize {
        self.watermark.outstanding()
    }
}

/// Everything a run produced.
pub struct Run {
    pub control: Arc<MemControl>,
    pub upserts: Vec<Value>,
    pub drops: Vec<Value>,
    pub dead_letters: Vec<Value>,
    pub history: Vec<HistoryRow>,
    /// Events the decisor took the content hash of (`Metrics::hashed`).
    pub hashed: u64,
}

impl Run {
    pub fn upsert_changes(&self, key: &str) -> Vec<String> {
        self.upserts
            .iter()
            .filter(|u| u["asset_key"] == key)
            .map(|u| u["change"].as_str().unwrap_or_default().to_owned())
            .collect()
    }
    pub fn dropped_keys(&self) -> Vec<String> {
        let mut v: Vec<String> =
            self.drops.iter().map(|d| d["asset_key"].as_str().unwrap_or_default().to_owned()).collect();
        v.sort();
        v
    }
    pub fn dead_letter_kinds(&self) -> Vec<String> {
        self.dead_letters.iter().map(|d| d["error"]["kind"].as_str().unwrap_or_default().to_owned()).collect()
    }
}

pub fn settings(shards: usize) -> Settings {
    Settings { shards, mailbox: 64, ..Settings::default() }
}

/// [`settings`] with retries that give up within milliseconds, and no lookup cache (every
/// event looks its business up, so lookup faults fire on the Nth event).
pub fn quick_retries(shards: usize, attempts: u32) -> Settings {
    let mut s = settings(shards);
    s.retry = assetflow_actors::retry::RetryPolicy {
        initial: Duration::from_millis(1),
        max: Duration::from_millis(5),
        attempts,
        timeout: Duration::from_millis(300),
    };
    s.cache_ttl = Duration::ZERO;
    s
}

/// The in-memory backends of one run; replace any to inject faults or slowness.
pub struct Backends {
    pub control: Arc<MemControl>,
    pub content: Arc<MemContent>,
    pub history: Arc<MemHistory>,
    pub lookup: Arc<MemLookup>,
    pub upserts: Arc<MemSink>,
    pub drops: Arc<MemSink>,
    pub dead: Arc<MemSink>,
}

impl Default for Backends {
    fn default() -> Self {
        Backends {
            control: Arc::new(MemControl::default()),
            content: Arc::default(),
            history: Arc::default(),
            lookup: Arc::default(),
            upserts: Arc::default(),
            drops: Arc::default(),
            dead: Arc::default(),
        }
    }
}

/// Runs the pipeline over `lines` until drained.
pub fn run(settings: Settings, lines: Vec<String>, control: Arc<MemControl>) -> Run {
    run_with(settings, Box::new(VecSource::new(lines)), Backends { control, ..Backends::default() })
}

/// Runs the pipeline with `upserts` as the upsert sink (history and control in memory).
pub fn run_dyn_sink(settings: Settings, source: Box<dyn Source>, upserts: Arc<dyn Sink>) -> Run {
    let b = Backends::default();
    let ports = Ports {
        redrive: None,
        sources: vec![("test".into(), source)],
        lookup: b.lookup,
        history: Arc::new(NullHistory),
        dead_letter_sink: b.dead.clone(),
        downstream: Downstream::Decide(DecisionPorts {
            control: b.control.clone(),
            content: Arc::new(NullContent),
            upsert_sink: upserts,
            drop_sink: b.drops.clone(),
        }),
    };
    let hashed = actix_rt::System::new().block_on(async move {
        let mut p = Pipeline::start(settings, ports);
        tokio::time::timeout(Duration::from_secs(600), p.drained()).await.expect("pipeline drains");
        let hashed = Metrics::count(&p.metrics.hashed);
        p.shutdown();
        hashed
    });
    Run {
        control: b.control,
        upserts: Vec::new(),
        drops: b.drops.all(),
        dead_letters: b.dead.all(),
        history: Vec::new(),
        hashed,
    }
}

/// Keeps nothing: for runs whose memory is measured.
pub struct NullContent;

#[async_trait]
impl ContentStore for NullContent {
    fn content_ref(&self, asset_key: &str, hash: &str) -> String {
        format!("null://{asset_key}/{hash}")
    }
    async fn put(&self, _: &str, _: &str, _: &[u8]) -> BackendResult<()> {
        Ok(())
    }
}

/// Keeps nothing: for runs whose memory is measured.
pub struct NullHistory;

#[async_trait]
impl HistoryStore for NullHistory {
    async fn append(&self, _: &[HistoryRow]) -> BackendResult<()> {
        Ok(())
    }
    async fn read(&self, _: &str, _: usize) -> BackendResult<Vec<HistoryRow>> {
        Ok(Vec::new())
    }
}

/// Runs the pipeline over `source` with `b` until drained.
pub fn run_with(settings: Settings, source: Box<dyn Source>, b: Backends) -> Run {
    let (upserts, drops, dead, history, control) = (b.upserts, b.drops, b.dead, b.history, b.control);
    let ports = Ports {
        redrive: None,
        sources: vec![("test".into(), source)],
        lookup: b.lookup,
        history: history.clone(),
        dead_letter_sink: dead.clone(),
        downstream: Downstream::Decide(DecisionPorts {
            control: control.clone(),
            content: b.content,
            upsert_sink: upserts.clone(),
            drop_sink: drops.clone(),
        }),
    };
    let hashed = actix_rt::System::new().block_on(async move {
        let mut p = Pipeline::start(settings, ports);
        tokio::time::timeout(Duration::from_secs(120), p.drained()).await.expect("pipeline drains within 2 minutes");
        let hashed = Metrics::count(&p.metrics.hashed);
        p.shutdown();
        hashed
    });
    let history = history.rows.lock().unwrap().clone();
    Run { control, upserts: upserts.all(), drops: drops.all(), dead_letters: dead.all(), history, hashed }
}

/// A `running` event for table `table` of `source`, emitted `t` seconds into the day.
pub fn running(id: &str, source: &str, run: &str, table: &str, t: u32, content: &str) -> String {
    json!({
        "event_id": id, "source": source, "run_id": run, "status": "running",
        "emitted_at": at(t),
        "asset": {"database": "db", "schema": "public", "table": table, "comment": content}
    })
    .to_string()
}

pub fn completed(id: &str, source: &str, run: &str, t: u32, expected: Option<u64>) -> String {
    let mut v = json!({"event_id": id, "source": source, "run_id": run, "status": "completed", "emitted_at": at(t)});
    if let Some(n) = expected {
        v["expected_assets"] = json!(n);
    }
    v.to_string()
}

pub fn at(t: u32) -> String {
    format!("2026-11-01T{:02}:{:02}:{:02}Z", t / 3600, (t / 60) % 60, t % 60)
}
