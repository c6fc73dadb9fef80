//! The ports: the traits through which actors reach the world. Adapters in the `assetflow`
//! binary implement them for real backends; tests implement them in memory.

use std::collections::HashMap;

use async_trait::async_trait;
use serde_json::{Map, Value};

use crate::decision::{HistoryRow, Origin};
use crate::envelope::Ack;
use crate::print::TextPrint;
use crate::record::{ControlRecord, KnownRecord, RecordTouch};
use crate::rules::{SweepPlan, SweepQuery, plan_sweep};

/// How a backend call failed, which decides whether it is worth retrying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// Timeouts, throttling, connection loss: retry with back-off.
    Transient,
    /// A conditional write lost to another writer: re-read and decide again.
    Conflict,
    /// The request itself is wrong (too large, bad credentials): retrying will not help.
    Permanent,
    /// The actor doing the call panicked, and again after its restart: the message it carried
    /// is a dead letter of kind `panic`.
    Panic,
}

/// A failed call to a backend, naming the backend and the operation.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{backend} {operation}: {message}")]
pub struct BackendError {
    pub backend: String,
    pub operation: String,
    pub message: String,
    pub kind: FailureKind,
}

impl BackendError {
    pub fn new(
        backend: impl Into<String>,
        operation: impl Into<String>,
        message: impl ToString,
        kind: FailureKind,
    ) -> Self {
        BackendError { backend: backend.into(), operation: operation.into(), message: message.to_string(), kind }
    }
    pub fn transient(backend: impl Into<String>, operation: impl Into<String>, message: impl ToString) -> Self {
        Self::new(backend, operation, message, FailureKind::Transient)
    }
    pub fn permanent(backend: impl Into<String>, operation: impl Into<String>, message: impl ToString) -> Self {
        Self::new(backend, operation, message, FailureKind::Permanent)
    }
    pub fn panicked(backend: impl Into<String>, operation: impl Into<String>, why: impl ToString) -> Self {
        Self::new(backend, operation, why, FailureKind::Panic)
    }
    /// The `error.kind` of the dead letter this failure makes: `panic` or `backend`.
    pub fn dead_letter_kind(&self) -> &'static str {
        if self.kind == FailureKind::Panic { "panic" } else { "backend" }
    }
}

pub type BackendResult<T> = Result<T, BackendError>;

/// A control write's durability, still to come or already there
/// ([`ControlStore::put_with_touches_deferred`]).
#[must_use = "nothing the write carries may be acknowledged before it is durable"]
pub struct Durable(Option<std::pin::Pin<Box<dyn std::future::Future<Output = BackendResult<()>> + Send>>>);

impl Durable {
    /// Durable already.
    pub fn now() -> Self {
        Durable(None)
    }
    /// Durable once `sync` resolves `Ok`; `sync` must already be under way (not wait to be
    /// polled), so that a caller who goes on first loses no time.
    pub fn later(sync: impl std::future::Future<Output = BackendResult<()>> + Send + 'static) -> Self {
        Durable(Some(Box::pin(sync)))
    }
    /// Whether there is nothing to wait for.
    pub fn is_now(&self) -> bool {
        self.0.is_none()
    }
    /// Resolves once durable, or with why it cannot be.
    pub async fn wait(self) -> BackendResult<()> {
        match self.0 {
            None => Ok(()),
            Some(sync) => sync.await,
        }
    }
}

/// The control table: one [`ControlRecord`] per asset key.
#[async_trait]
pub trait ControlStore: Send + Sync + 'static {
    /// The records that exist among `keys`, by asset key.
    async fn get_many(&self, keys: &[RecordKey]) -> BackendResult<HashMap<String, ControlRecord>>;
    /// [`get_many`](Self::get_many), with the text print each record's hash came from where
    /// the store keeps one ([`keeps_prints`](Self::keeps_prints)): an event with that print
    /// has that hash, and is not hashed. Others give no prints (the default).
    async fn get_many_printed(&self, keys: &[RecordKey]) -> BackendResult<PrintedRecords> {
        Ok(PrintedRecords { records: self.get_many(keys).await?, prints: HashMap::new() })
    }
    /// Writes all records or none; each must find the stored record still at the version it
    /// was read at (0: no record), else the call fails with [`FailureKind::Conflict`].
    ///
    /// A store shared by several processes must check that condition itself: it is what stops
    /// a process that lost a partition from overwriting its new owner's records. A store that
    /// only one process can open (the embedded one) may take it as given, because inside one
    /// process each key has one writer, the decisor shard that owns it, applying one batch at a
    /// time after reading the versions it expects (`actors/tests/ordering.rs` proves that).
    async fn put_many(&self, writes: &[RecordWrite]) -> BackendResult<()>;
    /// The most events a shard decides in one batch against this store (see
    /// [`Sink::max_batch`]): a store that reads and writes a batch in several requests (the
    /// DynamoDB table: 100 keys a BatchGetItem, 100 items a transaction) bounds it (a batch's
    /// read also asks for its sources' completion marks), so that a
    /// shard queue that grew while the store was slow never needs longer than one attempt.
    fn max_batch(&self) -> usize {
        usize::MAX
    }
    /// What the store knows of the live record of `asset_key` without reading it, if it keeps
    /// its records indexed in memory. Only a store that no other process writes can (the
    /// embedded one): its index cannot go stale behind its back. Others know nothing (the
    /// default), and every event's record is read.
    fn known(&self, _source: &str, _asset_key: &str) -> Option<KnownRecord> {
        None
    }
    /// [`known`](Self::known) of each `(source, asset_key)`, in order: a batch's keys in one
    /// call, which the embedded store answers taking each lock of its index once.
    fn known_many(&self, keys: &[(&str, &str)]) -> Vec<Option<KnownRecord>> {
        keys.iter().map(|(source, asset_key)| self.known(source, asset_key)).collect()
    }
    /// Whether the store keeps run stamps apart from records, so that an unchanged asset seen
    /// again can move its stamp alone ([`RecordTouch`]) instead of rewriting its record. The
    /// embedded store does (and its index vouches for records without a read, [`known`](Self::known));
    /// others rewrite the record (the default).
    fn moves_run_stamps(&self) -> bool {
        false
    }
    /// Whether the store keeps the text prints that writes and touches bring
    /// ([`KnownRecord::print`]), so that the decisor takes each event's print for it. Stores
    /// that do not (the default) have every event hashed, and no print taken.
    fn keeps_prints(&self) -> bool {
        false
    }
    /// [`put_many`](Self::put_many) and, in the same durable batch, the run stamps of unchanged
    /// records, whether [`known`](Self::known) vouched for them or they were read. Touches only
    /// come to stores that [`move run stamps`](Self::moves_run_stamps); the default writes the
    /// records and refuses touches.
    async fn put_with_touches(&self, writes: &[RecordWrite], touches: &[RecordTouch]) -> BackendResult<()> {
        if !touches.is_empty() {
            return Err(BackendError::permanent(
                "control store",
                "touch records",
                "this store keeps no index of its records, so it cannot move a run stamp alone",
            ));
        }
        self.put_many(writes).await
    }
    /// [`put_with_touches`](Self::put_with_touches), returning as soon as the batch is written
    /// and every later read sees it, with what makes it durable still under way: the
    /// [`Durable`] resolves once it is. The caller acknowledges nothing the batch carries before
    /// then, but may go on to its next batch meanwhile. Only a store whose later writes cannot
    /// become durable before this one's may return early (the embedded store: one journal,
    /// synced in the order it was written); the default is durable on return.
    async fn put_with_touches_deferred(
        &self,
        writes: &[RecordWrite],
        touches: &[RecordTouch],
    ) -> BackendResult<Durable> {
        self.put_with_touches(writes, touches).await.map(|()| Durable::now())
    }
    /// Every record of one source (live and dropped).
    async fn list_source(&self, source: &str) -> BackendResult<Vec<ControlRecord>>;
    /// Every record of every source (live and dropped), for `assetflow assets`; not used by the
    /// pipeline.
    async fn list_all(&self) -> BackendResult<Vec<ControlRecord>>;
    /// The sweep of a completed run over the records of its source (EVENTS.md §3.2). This
    /// lists them all (so it counts every run event); a store that can stream its records
    /// overrides it, so that a sweep's memory does not grow with the size of the source.
    async fn sweep_plan(&self, q: SweepQuery<'_>) -> BackendResult<SweepPlan> {
        Ok(plan_sweep(&self.list_source(q.source).await?, q))
    }
    /// Removes the run-event markers at `keys` ([`SweepPlan::spent_markers`]), which no
    /// completion still to come counts. A key whose record is not a run-event marker is left
    /// as it is, so that nothing but a marker is ever removed; a key with no record is no error.
    async fn remove_markers(&self, keys: &[RecordKey]) -> BackendResult<()>;
}

/// Where a control record lives: its source (the partition of keyed stores) and asset key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RecordKey {
    pub source: String,
    pub asset_key: String,
}

/// Records read with the text prints of their hashes ([`ControlStore::get_many_printed`]).
#[derive(Debug, Default)]
pub struct PrintedRecords {
    /// By asset key, as [`ControlStore::get_many`] gives them.
    pub records: HashMap<String, ControlRecord>,
    /// By asset key: the print of the text the record's hash was taken from, where kept.
    pub prints: HashMap<String, TextPrint>,
}

/// A conditional write of one control record.
#[derive(Debug, Clone)]
pub struct RecordWrite {
    pub record: ControlRecord,
    /// The version the record had when it was read (0: it did not exist).
    pub expected_version: u64,
    /// The text print of the event whose content gave the record its hash, where the batch
    /// knows it: a store that indexes its records keeps it ([`KnownRecord::print`]).
    pub print: Option<TextPrint>,
}

impl RecordWrite {
    /// A write with no text print: the store will not vouch for the next event by print.
    pub fn new(record: ControlRecord, expected_version: u64) -> Self {
        Self { record, expected_version, print: None }
    }
}

/// The content bucket: one object per asset key and content hash, written idempotently.
#[async_trait]
pub trait ContentStore: Send + Sync + 'static {
    /// Where the content of `asset_key` at `hash` lives (the `content_ref` of records and upserts).
    fn content_ref(&self, asset_key: &str, hash: &str) -> String;
    /// Stores the content; putting the same key and hash twice is harmless.
    async fn put(&self, asset_key: &str, hash: &str, body: &[u8]) -> BackendResult<()>;
    /// Stores a batch (a decisor micro-batch's new content): durable when this returns, its
    /// puts [`CONTENT_PUTS_TOGETHER`] at a time. Stores that can make many writes durable at
    /// once (one sync for a folder) override it.
    async fn put_many(&self, items: &[ContentPut]) -> BackendResult<()> {
        use futures_util::{StreamExt, TryStreamExt};
        // Built first, then driven: a lazy `map` is not `Send` enough for async_trait.
        let puts: Vec<_> = items.iter().map(|c| self.put(&c.asset_key, &c.hash, &c.body)).collect();
        futures_util::stream::iter(puts).buffer_unordered(CONTENT_PUTS_TOGETHER).try_collect::<Vec<()>>().await?;
        Ok(())
    }
}

/// Content puts of one batch in flight at once (S3: requests). A first crawl's batch is
/// hundreds of new assets; all at once, against a slow store, every request waits behind all
/// the others and the whole batch outlives its attempt's timeout.
pub const CONTENT_PUTS_TOGETHER: usize = 32;

/// One asset's content at one hash, to store.
#[derive(Debug, Clone)]
pub struct ContentPut {
    pub asset_key: String,
    pub hash: String,
    /// The asset's JSON text.
    pub body: Vec<u8>,
    /// Where the decisor said it is stored ([`ContentStore::content_ref`] when it planned the
    /// batch): stores whose refs are not a pure function of key and hash write it there.
    pub content_ref: String,
}

/// Where history rows go, and are read back newest first.
#[async_trait]
pub trait HistoryStore: Send + Sync + 'static {
    async fn append(&self, rows: &[HistoryRow]) -> BackendResult<()>;
    async fn read(&self, asset_key: &str, limit: usize) -> BackendResult<Vec<HistoryRow>>;
    /// The most rows one `append` should carry (see [`Sink::max_batch`]). ScyllaDB's bounds it
    /// (one insert per row); PostgreSQL's sends an append as one statement, and DynamoDB's keys
    /// a row by its place in its append and sends the append's requests together instead.
    fn max_batch(&self) -> usize {
        usize::MAX
    }
}

/// One output message, serialized, with what transports want as key and headers.
#[derive(Debug, Clone)]
pub struct SinkRecord {
    /// The asset key (or event id): the partition key of keyed transports.
    pub key: String,
    pub decision_id: String,
    pub event_id: Option<String>,
    pub payload: Vec<u8>,
}

impl SinkRecord {
    /// `value` as a JSON payload, into a buffer sized for an output line up front: grown from
    /// empty, a ~1.5 KB upsert was reallocated and copied about eight times.
    pub fn payload_of(value: &impl serde::Serialize) -> Vec<u8> {
        let mut out = Vec::with_capacity(2048);
        // Serializing plain data with string keys into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut out, value);
        out
    }
}

/// An output: upserts, drops, enriched events or dead letters.
#[async_trait]
pub trait Sink: Send + Sync + 'static {
    /// Sends the batch; when this returns `Ok`, every record is durable at the sink.
    async fn send(&self, batch: &[SinkRecord]) -> BackendResult<()>;
    /// The most records one `send` should carry. Each call is one attempt under `[retry]`'s
    /// timeout, so a sink that needs a request per few records (SQS: ten) bounds its calls, and
    /// callers split a larger batch ([`crate::calls::Calls::call_chunked`]): a batch that grew
    /// while the backend was slow must not need longer than one attempt may take.
    fn max_batch(&self) -> usize {
        usize::MAX
    }
}

/// Business data for an event: one object per lookup key, or none.
#[async_trait]
pub trait Lookup: Send + Sync + 'static {
    /// `params` are the values the `lookup` pointers found in the event, in order.
    async fn lookup(&self, params: &[String]) -> BackendResult<Option<Map<String, Value>>>;
}

/// One message read from a source, registered with its partition's watermark.
#[derive(Debug)]
pub struct RawMessage {
    pub bytes: Vec<u8>,
    pub origin: Origin,
    pub ack: Ack,
    /// 1 for a first delivery; a redriven dead letter's attempts plus one.
    pub attempts: u32,
}

impl RawMessage {
    /// A first delivery.
    pub fn new(bytes: Vec<u8>, origin: Origin, ack: Ack) -> Self {
        RawMessage { bytes, origin, ack, attempts: 1 }
    }
}

/// Where dead letters are read back for redrive: the dead-letter file, an SQS DLQ, a failure
/// topic. Reading is at least once: a dead letter counts as redriven once its ack is done.
#[async_trait]
pub trait DeadLetterStore: Send + 'static {
    /// Up to `max` dead letters not yet redriven, each with its ack; `None` once none are left.
    async fn next(&mut self, max: usize) -> BackendResult<Option<Vec<(crate::decision::DeadLetter, Ack)>>>;
    /// Persists how far redrive has got.
    async fn commit(&mut self) -> BackendResult<()>;
    /// Dead letters handed out but not yet acknowledged.
    fn outstanding(&self) -> usize;
    /// Keeps a dead letter tried `redrive.max_attempts` times somewhere durable and listable;
    /// only then is it acknowledged, which may remove it from the store (an SQS queue).
    async fn park(&mut self, letter: &crate::decision::DeadLetter) -> BackendResult<()>;
    /// The parked dead letters, oldest first (`assetflow redrive --parked`).
    async fn parked(&mut self) -> BackendResult<Vec<crate::decision::DeadLetter>>;
}

/// Opens the dead-letter store afresh: each redrive round reads what was written up to then.
#[async_trait]
pub trait DeadLetterOpener: Send + Sync + 'static {
    async fn open(&self) -> BackendResult<Box<dyn DeadLetterStore>>;
}

/// What a source had to give.
#[derive(Debug)]
pub enum Pull {
    Messages(Vec<RawMessage>),
    /// Nothing right now; ask again later.
    Idle,
    /// A finite source that has nothing more, ever.
    Drained,
    /// The source will not be read, and says why: reading would harm what it feeds (a Kafka
    /// group shared with another process while the state it feeds serves one). The process
    /// finishes what is in flight and stops with a non-zero exit.
    Refused(String),
}

/// An input: reads messages and commits the positions their watermarks allow.
#[async_trait]
pub trait Source: Send + 'static {
    /// Up to `max` messages.
    async fn pull(&mut self, max: usize) -> BackendResult<Pull>;
    /// Persists every partition's watermark that moved (offset commit, checkpoint...).
    async fn commit(&mut self) -> BackendResult<()>;
    /// What counts against `pipeline.max_in_flight`: messages read and not yet acknowledged
    /// (a source that acknowledges by watermark counts as [`Watermark::outstanding`] does, so
    /// one slow message does not stop reading); zero exactly when everything read is.
    ///
    /// [`Watermark::outstanding`]: crate::envelope::Watermark::outstanding
    fn outstanding(&self) -> usize;
    /// How far behind the input's end the source is, in the source's own unit (bytes for a
    /// file, milliseconds for Kinesis), when it can tell cheaply.
    fn lag(&self) -> Option<u64> {
        None
    }
    /// Why the source cannot take input yet (a consumer group with no partitions assigned),
    /// or `None` when it can: `/readyz` answers 503 with this reason.
    fn not_ready(&self) -> Option<String> {
        None
    }
    /// The run is over and everything is committed: hand over what this process held (shard
    /// leases) so that another takes it at once rather than after a failover time.
    async fn close(&mut self) {}
}

#[async_trait]
impl DeadLetterStore for Box<dyn DeadLetterStore> {
    async fn next(&mut self, max: usize) -> BackendResult<Option<Vec<(crate::decision::DeadLetter, Ack)>>> {
        (**self).next(max).await
    }
    async fn commit(&mut self) -> BackendResult<()> {
        (**self).commit().await
    }
    fn outstanding(&self) -> usize {
        (**self).outstanding()
    }
    async fn park(&mut self, letter: &crate::decision::DeadLetter) -> BackendResult<()> {
        (**self).park(letter).await
    }
    async fn parked(&mut self) -> BackendResult<Vec<crate::decision::DeadLetter>> {
        (**self).parked().await
    }
}
