//! The embedded state store: control table and source checkpoints in one fjall database
//! (`{state_dir}/state/`), history in segment files beside it (`{state_dir}/history/`,
//! `history_log.rs`), every write made durable (fsynced) before it returns.
//!
//! fjall is a log-structured merge tree: a batch is one journal append plus memtable inserts,
//! so writing a micro-batch of random asset keys costs a sequential write, not a page rewrite
//! per key as in a B-tree (BENCHMARKS.md has the figures that chose it). How rows and keys are
//! laid out is `state_layout.rs`.
//!
//! An unchanged asset seen again moves only its run stamp, and it is decided from the index of
//! live records this store keeps in memory (`state_index.rs`) without a read. The stamps of a
//! batch's indexed assets go into one touch frame (`state_touches.rs`) and stay in the index,
//! which reads of those records take them from, until a fold writes them as rows of a keyspace
//! of their own (`stamps`, keyed like the records) so the records' tables stay still. One the
//! bounded index does not hold is read, and its stamp written as a row at once. Records and
//! stamps keep the text print of the event their hash came from, so one read is vouched for by
//! print as an indexed one is (`state_layout::encode_printed`), and not hashed.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use assetflow_actors::decision::HistoryRow;
use assetflow_actors::envelope::Watermark;
use assetflow_actors::ports::{
    BackendError, BackendResult, ControlStore, Durable, FailureKind, HistoryStore, PrintedRecords, RecordKey,
    RecordWrite,
};
use assetflow_actors::print::TextPrint;
use assetflow_actors::record::{ControlRecord, KnownRecord, RecordTouch};
use assetflow_actors::rules::{SweepPlan, SweepPlanner, SweepQuery};
use assetflow_actors::threads;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use fjall::compaction::Leveled;
use fjall::config::PinningPolicy;
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};

use super::group_sync::GroupSync;
use super::history_log::HistoryLog;
use super::state_index::{CAPACITY, IndexKey, RecordIndex, STRIPES, Stamped, Written};
use super::state_index_file;
use super::state_index_file::Loaded;
use super::state_layout::{self, ControlKeys};
use super::state_touches::{self, FrameBuilder};

const BACKEND: &str = "embedded store";

/// The block cache of a store whose keyspaces pin their index and filter blocks (every store
/// this version creates). It holds data blocks only, which a steady crawl of a catalog larger
/// than the index reads at random and seldom twice, so 4 MiB decide a 1M-asset crawl as fast
/// as 16 did, with ~11 MiB less at its peak (benches/analysis.md, sixteenth session).
const CACHE_BYTES: u64 = 4 << 20;
/// The block cache of a store created before keyspaces pinned those blocks (no
/// [`PINNED_MARKER`]): fjall keeps the options a keyspace was created with, so the index and
/// filter blocks of its deeper levels still go through the cache, and 8 MiB halved the
/// 1M-asset steady crawl's throughput (fifteenth session).
const UNPINNED_CACHE_BYTES: u64 = 16 << 20;
/// In `pipeline.state_dir`, beside the database: marks a store created pinning its keyspaces'
/// index and filter blocks. Only the cache size reads it; a wrong one costs speed or memory,
/// never a record.
const PINNED_MARKER: &str = "state-pinned";
/// Memtable size of the control keyspace: what is held in memory before a flush.
const MEMTABLE_BYTES: u64 = 4 << 20;
/// Memtable size of the history keyspace, which only holds the rows of stores written before
/// history moved to its segment files (`history_log.rs`); they are still read.
const HISTORY_MEMTABLE_BYTES: u64 = 1 << 20;
/// Memtable size of the run stamps (~40-byte rows).
const STAMPS_MEMTABLE_BYTES: u64 = 2 << 20;
/// Table size the stamps keyspace compacts to (fjall's default is 64 MiB). A compaction holds
/// an 8-byte hash of every key of the table it is writing, for the table's filter, until the
/// table is done: at ~40 bytes a row a 64 MiB table is ~1.6M keys, and that buffer (grown by
/// doubling) was the 1M-asset steady crawl's RSS peak, +18 MiB while the stamps of ~800k assets
/// merged into one table. At 8 MiB a table holds ~200k keys (benches/analysis.md, eighteenth
/// session). The control keyspace keeps the default: its ~330-byte records put ~200k keys in a
/// 64 MiB table already.
const STAMPS_TABLE_BYTES: u64 = 8 << 20;
/// fjall's table size, which every other keyspace compacts to.
const DEFAULT_TABLE_BYTES: u64 = 64 << 20;
/// Memtable size of the touch frames (~20 KiB each).
const TOUCHES_MEMTABLE_BYTES: u64 = 4 << 20;
/// Touch frames kept before a fold begins (`state_touches.rs`): a frame holds a batch's stamps,
/// at most 512, and a fold under way finishes by twice this many, so a crash replays at most
/// about two million stamps (~90 MB); a catalog of 100k assets crawls about ten times between
/// folds.
const FOLD_FRAMES: u64 = 2_048;
/// fjall's background threads, which flush memtables and compact. One: with more, fjall 3.1's
/// first worker hands every compaction request back to the shared queue for another, and
/// takes it straight back while the other is busy, a busy loop that was 7% of a steady crawl's
/// CPU (perf, benches/analysis.md). The crawls' flushes and compactions keep one thread short
/// of busy.
const STORE_WORKERS: usize = 1;
/// Journal kept on disk before fjall flushes the keyspaces holding it back; bounds replay time
/// after a crash.
const JOURNAL_BYTES: u64 = 128 << 20;
/// The checkpoints keyspace's token of the index saved at the last clean stop (see
/// `state_index_file.rs`); absent when there is none good for the store as it is.
const INDEX_TOKEN_KEY: &[u8] = b"\xffindex";

/// The embedded store. Cloning shares the open database.
#[derive(Clone)]
pub struct StateStore {
    inner: Arc<Inner>,
}

struct Inner {
    db: Database,
    control: Keyspace,
    /// Run stamps of unchanged assets, keyed like their records (`state_layout::encode_stamp`).
    stamps: Keyspace,
    /// History rows of stores written before [`HistoryLog`]: read after its rows, never written.
    history: Keyspace,
    checkpoints: Keyspace,
    /// Touch frames (`state_touches.rs`), keyed by sequence number.
    touches: Keyspace,
    history_log: HistoryLog,
    index: RecordIndex,
    /// Where a clean stop saves the index (`state_index_file.rs`).
    index_file: PathBuf,
    /// The run ids of the stamps only frames and the index hold, by brief: the index keeps a
    /// run's brief, a read gives the run.
    runs: RwLock<HashMap<u64, String>>,
    /// The frames on disk. Held while a batch commits and the index learns of it, so that a
    /// fold finds in the index every stamp of the frames it removes.
    frames: Mutex<Frames>,
    /// Frames kept before a fold: [`FOLD_FRAMES`] (tests take fewer).
    fold_after: u64,
    /// A write failed: the database refuses further writes (fjall stops at its first failed
    /// journal write), and reads refuse too, since the index may hold stamps no frame made
    /// durable, or lack some that one did. An open replays the frames.
    failed: AtomicBool,
    /// The decisor batches' journal syncs, shared by the shards committing at the same time.
    syncs: GroupSync,
}

/// The sequence numbers of the touch frames on disk: `first..next`, and the fold under way.
#[derive(Debug, Default)]
struct Frames {
    first: u64,
    next: u64,
    folding: Option<Folding>,
}

/// A fold under way ([`Inner::fold_as_batches_land`]), written a stripe of the index at a time.
#[derive(Debug)]
struct Folding {
    /// The frame it began at: it removes the frames before it.
    until: u64,
    /// The next stripe whose rows it writes.
    stripe: usize,
    rows: usize,
    /// The runs of frames written since it began, whose stamps it may not have written: they
    /// stay in `runs` when it ends.
    later_runs: HashSet<u64>,
}

impl From<u64> for Folding {
    fn from(until: u64) -> Folding {
        Folding { until, stripe: 0, rows: 0, later_runs: HashSet::new() }
    }
}

fn err(op: &str, e: fjall::Error) -> BackendError {
    BackendError::new(BACKEND, op, e, FailureKind::Transient)
}

/// Runs blocking store work where the caller's thread allows it ([`threads::blocking`]).
async fn blocking<T: Send + 'static>(
    op: &'static str,
    f: impl FnOnce() -> BackendResult<T> + Send + 'static,
) -> BackendResult<T> {
    threads::blocking(f).await.map_err(|e| BackendError::transient(BACKEND, op, e))?
}

impl StateStore {
    /// Opens (or creates) the store in `{dir}/state/`.
    pub fn open(dir: &Path) -> Result<StateStore, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create pipeline.state_dir {}: {e}", dir.display()))?;
        let path = dir.join("state");
        let marker = dir.join(PINNED_MARKER);
        let marked = marker.exists();
        let pinned = !path.exists() || marked;
        let db = Database::builder(&path)
            .cache_size(if pinned { CACHE_BYTES } else { UNPINNED_CACHE_BYTES })
            .max_journaling_size(JOURNAL_BYTES)
            .worker_threads(STORE_WORKERS)
            .open()
            .map_err(|e| match e {
                fjall::Error::Locked => format!(
                    "{} is in use by another assetflow process; stop it first (or give this one another pipeline.state_dir)",
                    path.display()
                ),
                other => format!("cannot open the embedded store {}: {other}", path.display()),
            })?;
        // These options take effect where a keyspace is created; an existing one keeps its own.
        // Pinned index and filter blocks (a few bytes per asset, loaded with each table) keep
        // a point read from fetching them through the cache.
        let opened = |name: &str, memtable: u64, table: u64| {
            let options = || {
                KeyspaceCreateOptions::default()
                    .max_memtable_size(memtable)
                    .index_block_pinning_policy(PinningPolicy::all(true))
                    .filter_block_pinning_policy(PinningPolicy::all(true))
                    .compaction_strategy(Arc::new(Leveled::default().with_table_target_size(table)))
            };
            db.keyspace(name, options)
                .map_err(|e| format!("cannot open the embedded store {} ({name}): {e}", path.display()))
        };
        let control = opened("control", MEMTABLE_BYTES, DEFAULT_TABLE_BYTES)?;
        let stamps = opened("stamps", STAMPS_MEMTABLE_BYTES, STAMPS_TABLE_BYTES)?;
        let history = opened("history", HISTORY_MEMTABLE_BYTES, DEFAULT_TABLE_BYTES)?;
        let checkpoints = opened("checkpoints", 1 << 20, DEFAULT_TABLE_BYTES)?;
        let touches = opened("touches", TOUCHES_MEMTABLE_BYTES, DEFAULT_TABLE_BYTES)?;
        if pinned
            && !marked
            && let Err(e) = std::fs::write(&marker, "index and filter blocks pinned\n")
        {
            tracing::warn!(error = %e, path = %marker.display(), "embedded store: could not mark the store as pinned; the next start gives it the larger block cache");
        }
        // Opened after the database, whose lock keeps any other process out of the folder.
        let history_log = HistoryLog::open(&dir.join("history"))?;
        let inner = Inner {
            db,
            control,
            stamps,
            history,
            checkpoints,
            touches,
            history_log,
            index: RecordIndex::default(),
            index_file: dir.join("state-index"),
            runs: RwLock::default(),
            frames: Mutex::default(),
            fold_after: FOLD_FRAMES,
            failed: AtomicBool::new(false),
            syncs: GroupSync::default(),
        };
        let unreadable = |e: BackendError| format!("cannot read the embedded store {}: {e}", path.display());
        match inner.take_saved_index().map_err(unreadable)? {
            Some(saved) => {
                for (prefix, owner) in saved.sources {
                    inner.index.set_source(prefix, owner);
                }
                if !saved.complete {
                    inner.index.not_complete();
                }
                *inner.runs_mut() = saved.runs.into_iter().collect();
            }
            None => {
                inner.fill_index().map_err(unreadable)?;
                inner.replay_frames().map_err(unreadable)?;
            }
        }
        let seq = |g: Option<fjall::Guard>| g.and_then(|g| g.key().ok()).and_then(|k| state_touches::frame_seq(&k));
        let (first, last) = (seq(inner.touches.first_key_value()), seq(inner.touches.last_key_value()));
        *inner.frames_held() = Frames { first: first.unwrap_or(0), next: last.map_or(0, |l| l + 1), folding: None };
        Ok(StateStore { inner: Arc::new(inner) })
    }

    /// Folds the touch frames now (`assetflow fold`): their stamps become rows, as a version
    /// before touch frames reads them. Returns the frames and the rows written.
    pub fn fold_frames(&self) -> BackendResult<(u64, usize)> {
        let mut frames = self.inner.frames_held();
        let count = frames.next - frames.first;
        let rows = self.inner.fold(&mut frames)?;
        Ok((count, rows))
    }

    pub fn checkpoint(&self, key: &str) -> BackendResult<Option<Vec<u8>>> {
        Ok(self.inner.checkpoints.get(key).map_err(|e| err("read checkpoint", e))?.map(|v| v.to_vec()))
    }

    pub async fn set_checkpoint(&self, key: String, value: Vec<u8>) -> BackendResult<()> {
        let inner = self.inner.clone();
        blocking("write checkpoint", move || {
            let mut batch = inner.db.batch().durability(Some(PersistMode::SyncAll));
            batch.insert(&inner.checkpoints, key, value);
            batch.commit().map_err(|e| err("write checkpoint", e))
        })
        .await
    }

    /// A byte-offset checkpoint (file sources, the dead-letter file).
    pub fn offset(&self, key: &str) -> BackendResult<Option<u64>> {
        Ok(self.checkpoint(key)?.and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok()).map(u64::from_be_bytes))
    }

    /// Stores the offset the watermark allows, if it moved.
    pub async fn commit_offset(&self, key: &str, watermark: &Watermark<u64>) -> BackendResult<()> {
        match watermark.take_ready() {
            Some(pos) => self.set_checkpoint(key.to_owned(), pos.to_be_bytes().to_vec()).await,
            None => Ok(()),
        }
    }

    /// Writes what the memtables hold to tables, on a clean stop, and saves the index of live
    /// records for the next open to load instead of scanning the records. Then starts a new
    /// journal, which deletes the old one, every write of it now in tables: an open reads the
    /// whole active journal entry by entry even when all of it was flushed, ~0.1 s for the
    /// 34 MB a 100k-asset first crawl leaves (benches/analysis.md, nineteenth session).
    /// Waits at most `within` for the flushes; a flush that fails or is slow leaves the
    /// journal, which the next open replays as after a crash, and a scan, so nothing depends
    /// on this.
    pub fn settle(&self, within: std::time::Duration) {
        let inner = &self.inner;
        let deadline = std::time::Instant::now() + within;
        let keyspaces = [&inner.control, &inner.stamps, &inner.history, &inner.checkpoints, &inner.touches];
        if !flush(&keyspaces, deadline) {
            return;
        }
        if let Err(e) = inner.save_index() {
            tracing::warn!(error = %e, path = %inner.index_file.display(), "embedded store: could not save the index at stop; the next start scans the records");
        }
        if let Err(e) = inner.history_log.seal() {
            tracing::warn!(error = %e, "embedded store: could not index the history segment at stop; the next start does");
        }
        // The index's token is a write of its own: in tables too, or the old journal stays.
        if flush(&[&inner.checkpoints], deadline)
            && let Err(e) = inner.db.rotate_journal()
        {
            tracing::warn!(error = %e, "embedded store: could not start a new journal at stop; the next start replays the old one");
        }
    }

    /// The newest `limit` rows of the asset, newest first: the segments' rows, then those of
    /// the history keyspace, all older.
    fn read_history(&self, asset_key: &str, limit: usize) -> BackendResult<Vec<HistoryRow>> {
        let mut out = self.inner.history_log.read(asset_key, limit)?;
        for entry in self.inner.history.range(state_layout::history_range(asset_key)).rev() {
            if out.len() >= limit {
                break;
            }
            let value = entry.value().map_err(|e| err("read history", e))?;
            let row = state_layout::decode_history(&value)?;
            // Two asset keys may share the 8-byte digest of the key layout.
            if row.asset_key.as_deref().unwrap_or("") == asset_key {
                out.push(row);
            }
        }
        Ok(out)
    }
}

/// [`KnownRecord::run_brief`] with a cache: a store or a batch holds few runs and many records,
/// and each brief is a BLAKE3 digest.
fn run_briefs() -> impl FnMut(&str) -> u64 {
    let mut runs: HashMap<String, u64> = HashMap::new();
    move |run: &str| match runs.get(run) {
        Some(brief) => *brief,
        None => *runs.entry(run.to_owned()).or_insert_with(|| KnownRecord::run_brief(run)),
    }
}

/// Flushes the keyspaces' memtables to tables and waits for it until `deadline`; false, with a
/// warning, where a flush failed or is still running.
fn flush(keyspaces: &[&Keyspace], deadline: std::time::Instant) -> bool {
    for ks in keyspaces {
        // fjall 3 keeps rotation `#[doc(hidden)]` (its tests use it); the vendored copy pins it.
        if let Err(e) = ks.rotate_memtable() {
            tracing::warn!(error = %e, "embedded store: could not flush at stop; the next start replays its journal");
            return false;
        }
    }
    while keyspaces.iter().any(|ks| ks.sealed_memtable_count() > 0) {
        if std::time::Instant::now() >= deadline {
            tracing::warn!("embedded store: flush at stop still running; the next start replays its journal");
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    true
}

/// The index's key of a control key: all of it.
fn index_key(control_key: &[u8]) -> Option<IndexKey> {
    control_key.try_into().ok()
}

impl Inner {
    /// Calls `each` with the stored record and run stamp of every record filed under `prefix`
    /// (one source's, or all with an empty prefix), in key order. Callers keep the records whose
    /// `source` is what they asked for (sources may share a prefix). The stamp is the newest,
    /// the index's where only a touch frame holds it ([`Inner::overlaid`]).
    fn scan(
        &self,
        prefix: &[u8],
        mut each: impl FnMut(&[u8], &[u8], Option<&[u8]>) -> BackendResult<ControlFlow<()>>,
    ) -> BackendResult<()> {
        self.check_not_failed()?;
        self.scan_rows(prefix, |key, value, stamp| {
            let stamp = self.overlaid(key, value, stamp)?;
            each(key, value, stamp.as_deref())
        })
    }

    /// [`Inner::scan`] of the rows alone: the stamps written as rows, not those only frames hold.
    fn scan_rows(
        &self,
        prefix: &[u8],
        mut each: impl FnMut(&[u8], &[u8], Option<&[u8]>) -> BackendResult<ControlFlow<()>>,
    ) -> BackendResult<()> {
        let failed = |e| err("list records", e);
        // Records and stamps share their keys, so one pass over each, side by side, pairs them.
        let mut stamps = self.stamps.prefix(prefix).map(|g| g.into_inner().map_err(failed)).peekable();
        for entry in self.control.prefix(prefix) {
            let (key, value) = entry.into_inner().map_err(failed)?;
            let mut stamp = None;
            while let Some(next) = stamps.peek() {
                match next {
                    Err(e) => return Err(e.clone()),
                    Ok((k, _)) if k.as_ref() > key.as_ref() => break,
                    Ok(_) => {}
                }
                if let Some(Ok((k, v))) = stamps.next()
                    && k == key
                {
                    stamp = Some(v);
                }
            }
            if each(&key, &value, stamp.as_deref())?.is_break() {
                break;
            }
        }
        Ok(())
    }

    /// Saves the index with a fresh token, then stores the token: the file is good for the
    /// store exactly as long as the store holds the same token ([`Inner::take_saved_index`]).
    fn save_index(&self) -> Result<(), String> {
        let token =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
                ^ (u64::from(std::process::id()) << 40);
        let runs: Vec<(u64, String)> =
            self.runs.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone().into_iter().collect();
        let index = &self.index;
        let entries = |put: &mut dyn FnMut(&IndexKey, &KnownRecord) -> std::io::Result<()>| {
            index.try_for_each_stripe(|_| true, |stripe| stripe.iter().try_for_each(|(key, known)| put(key, known)))
        };
        state_index_file::write_index(
            &self.index_file,
            token,
            index.assets(),
            entries,
            index.is_complete(),
            &index.sources(),
            &runs,
        )
        .map_err(|e| e.to_string())?;
        let mut batch = self.db.batch().durability(Some(PersistMode::SyncAll));
        batch.insert(&self.checkpoints, INDEX_TOKEN_KEY, token.to_le_bytes());
        batch.commit().map_err(|e| e.to_string())
    }

    /// Loads the index a clean stop saved, if the store is still as it was then, and returns the
    /// rest of what it saved; the token goes from the store (durably, before anything else can
    /// be written) and the file from the disk.
    fn take_saved_index(&self) -> BackendResult<Option<Loaded>> {
        let token = self.checkpoints.get(INDEX_TOKEN_KEY).map_err(|e| err("read index token", e))?;
        let token = token.and_then(|t| <[u8; 8]>::try_from(&t[..]).ok()).map(u64::from_le_bytes);
        let Some(token) = token else {
            state_index_file::discard(&self.index_file);
            return Ok(None);
        };
        let saved = state_index_file::take(&self.index_file, token, &self.index);
        let mut batch = self.db.batch().durability(Some(PersistMode::SyncAll));
        batch.remove(&self.checkpoints, INDEX_TOKEN_KEY);
        batch.commit().map_err(|e| err("remove index token", e))?;
        Ok(saved)
    }

    /// Indexes the live records at open, as many as the index holds: the scan stops when it is
    /// nearly full (stripes fill unevenly; reading every record of a large store to place the
    /// last few would cost a second per million), and the index then does not hold them all.
    fn fill_index(&self) -> BackendResult<()> {
        let mut held = 0;
        let mut run_brief = run_briefs();
        let mut stopped = false;
        self.scan_rows(&[], |key, value, stamp| {
            if held >= CAPACITY / 100 * 98 {
                stopped = true;
                return Ok(ControlFlow::Break(()));
            }
            if let Some(k) = index_key(key) {
                let (source, known) = state_layout::known_stored(value, stamp, &mut run_brief)?;
                self.index.saw_source(&k, &source);
                if known != Written::NotLive && self.index.wrote(&k, known) {
                    held += 1;
                }
            }
            Ok(ControlFlow::Continue(()))
        })?;
        if stopped {
            self.index.not_complete();
        }
        Ok(())
    }

    /// The sweep of `run` over `source`'s live records from the index, when it holds them all:
    /// those whose run brief is the run's are counted as seen, only the others are read (about
    /// as many as the sweep drops), so a completion costs a pass over memory instead of a read
    /// of every record of its source, which was a tenth of a steady crawl's CPU
    /// (benches/analysis.md). The run events the index does not count (markers, dropped
    /// records) matter only to `expected_assets`, whose sweeps read every record.
    fn sweep_from_index(&self, source: &str, run: &str, max_drop_fraction: f64) -> BackendResult<Option<SweepPlan>> {
        let prefix = state_layout::control_prefix(source);
        let Some(swept) = self.index.sweep(prefix, source, KnownRecord::run_brief(run)) else { return Ok(None) };
        let mut planner = SweepPlanner::new(run);
        planner.add_seen(swept.seen);
        for key in swept.unseen {
            let Some((value, stamp)) = self.get_stored(&key)? else { continue };
            let r = state_layout::sweep_view(&value, stamp.as_deref())?;
            if r.source == source {
                planner.add(&r.asset_key, r.live, &r.last_seen_run);
            }
        }
        Ok(Some(planner.finish(max_drop_fraction)))
    }

    /// A record with its run stamp applied, and the text print its hash came from if kept.
    fn get_printed(&self, key: &[u8]) -> BackendResult<Option<(ControlRecord, Option<TextPrint>)>> {
        let Some((value, stamp)) = self.get_stored(key)? else { return Ok(None) };
        state_layout::decode_printed(&value, stamp.as_deref()).map(Some)
    }

    /// The stored row of the record at `key` and its newest run stamp, if it has one.
    fn get_stored(&self, key: &[u8]) -> BackendResult<Option<(fjall::UserValue, Option<Vec<u8>>)>> {
        self.check_not_failed()?;
        let Some(value) = self.control.get(key).map_err(|e| err("get records", e))? else {
            return Ok(None);
        };
        let stamp = self.stamps.get(key).map_err(|e| err("get records", e))?;
        let stamp = self.overlaid(key, &value, stamp.as_deref())?.map(Cow::into_owned);
        Ok(Some((value, stamp)))
    }

    /// The run stamp to read with the record `value` at `key`: the index's where it is newer
    /// than the record and its stamp row (a stamp only a touch frame holds), else the row's.
    fn overlaid<'a>(&self, key: &[u8], value: &[u8], stamp: Option<&'a [u8]>) -> BackendResult<Option<Cow<'a, [u8]>>> {
        let framed = match index_key(key).and_then(|k| self.index.get(&k)) {
            Some(known) if known.version > state_layout::stamped_version(value, stamp)? => known,
            _ => return Ok(stamp.map(Cow::Borrowed)),
        };
        let runs = self.runs.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        let Some(run) = runs.get(&framed.run) else {
            return Err(BackendError::permanent(
                BACKEND,
                "read run stamp",
                "a stamp in the index names a run it does not know",
            ));
        };
        state_layout::encode_stamp_of(run, framed.last_seen_at, framed.version, framed.print)
            .map(|s| Some(Cow::Owned(s)))
    }

    fn check_not_failed(&self) -> BackendResult<()> {
        if self.failed.load(Ordering::Acquire) {
            return Err(BackendError::transient(
                BACKEND,
                "read",
                "a write to the store failed earlier and the store refuses further use; restart assetflow so it opens the store again",
            ));
        }
        Ok(())
    }

    fn runs_mut(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<u64, String>> {
        self.runs.write().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn frames_held(&self) -> std::sync::MutexGuard<'_, Frames> {
        // Two counters, consistent between statements: a poisoned lock is still good.
        self.frames.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// After an open that scanned the rows (no saved index, as after a crash): puts the stamps
    /// of the touch frames into the index, and writes as rows those of assets it does not hold
    /// (the scan stops when the index is nearly full). Of two stamps of an asset, the higher
    /// version holds, so frames may be replayed any number of times.
    fn replay_frames(&self) -> BackendResult<()> {
        let mut run_brief = run_briefs();
        let mut runs = HashMap::new();
        let mut unheld: HashMap<IndexKey, (String, DateTime<Utc>, u64)> = HashMap::new();
        for entry in self.touches.iter() {
            let (_, value) = entry.into_inner().map_err(|e| err("read touch frames", e))?;
            state_touches::decode(&value, |t| {
                let brief = run_brief(t.run);
                runs.entry(brief).or_insert_with(|| t.run.to_owned());
                match self.index.get(&t.key) {
                    Some(known) if known.version >= t.version => {}
                    Some(_) => {
                        self.index.touched(&t.key, brief, t.at, t.version);
                    }
                    None => {
                        if unheld.get(&t.key).is_none_or(|(.., v)| *v < t.version) {
                            unheld.insert(t.key, (t.run.to_owned(), t.at, t.version));
                        }
                    }
                }
            })?;
        }
        *self.runs_mut() = runs;
        let mut batch = self.db.batch().durability(Some(PersistMode::SyncAll));
        for (key, (run, at, version)) in unheld {
            let Some((value, stamp)) = self.get_stored(&key)? else { continue };
            if version > state_layout::stamped_version(&value, stamp.as_deref())? {
                batch.insert(&self.stamps, key, state_layout::encode_stamp_of(&run, at, version, None)?);
            }
        }
        batch.commit().map_err(|e| err("write replayed run stamps", e))
    }

    /// Writes as rows the stamps only touch frames hold and removes the frames, with the frames'
    /// lock held so that no batch lands in between: all at once (`assetflow fold`, tests).
    /// Batches fold as they land instead ([`fold_as_batches_land`](Self::fold_as_batches_land)).
    ///
    /// The rows come from the index, not from the frames or a pass over the records: every stamp
    /// a frame holds is the index's (the `frames` lock keeps the two in step), and of a run in
    /// `runs`, which a fold clears. So the index's entries of those runs are all that may need
    /// a row. Some have one already (a record written in such a run, or a row an earlier fold
    /// wrote in the same run: two thirds of them in a 1M-asset crawl); writing it again is
    /// harmless, since a stamp counts only where its version is above the record's. The work is
    /// bounded by the index. Reading every record and stamp instead grew with the store, with
    /// every shard's commit waiting on the `frames` lock (benches/analysis.md).
    fn fold(&self, frames: &mut Frames) -> BackendResult<usize> {
        frames.folding.get_or_insert_with(|| Folding::from(frames.next));
        self.fold_on(frames, || true)
    }

    /// Folds as a batch lands: a fold begins once [`FOLD_FRAMES`] frames are on disk, and
    /// writes the rows of one stripe of the index after another while the stamps' memtable has
    /// room for them, going on at the next batch where it has not. Every stripe's rows at once
    /// (~150k rows in a 1M-asset crawl) outran fjall's one flush thread whenever it was
    /// compacting, and sat in memtables: the peak memory of that crawl (benches/analysis.md).
    /// Twice the bound of frames, it finishes at once, which bounds what a crash replays.
    fn fold_as_batches_land(&self, frames: &mut Frames) -> BackendResult<()> {
        let kept = frames.next - frames.first;
        if frames.folding.is_none() {
            if kept < self.fold_after {
                return Ok(());
            }
            frames.folding = Some(Folding::from(frames.next));
        }
        let hurry = kept >= 2 * self.fold_after;
        self.fold_on(frames, || hurry || self.stamps_have_room()).map(drop)
    }

    /// Whether the stamps' memtable takes another stripe's rows now: none sealed and waiting for
    /// the flush thread, and the active one below its size.
    fn stamps_have_room(&self) -> bool {
        use fjall::AbstractTree;
        self.stamps.sealed_memtable_count() == 0 && self.stamps.tree.active_memtable().size() < STAMPS_MEMTABLE_BYTES
    }

    /// Goes on with the fold under way, a stripe at a time while `may_go`; once every stripe's
    /// rows are written, removes the frames it began with and the runs only they named. Returns
    /// the rows written.
    fn fold_on(&self, frames: &mut Frames, may_go: impl Fn() -> bool) -> BackendResult<usize> {
        let failed = |e| {
            self.failed.store(true, Ordering::Release);
            err("fold touch frames", e)
        };
        let Some(folding) = frames.folding.as_mut() else { return Ok(0) };
        let rows_before = folding.rows;
        {
            let runs = self.runs.read().unwrap_or_else(|poisoned| poisoned.into_inner());
            let mut entries = Vec::new();
            // A stripe's rows (at most `STRIPE_ENTRIES`) go as one batch; the batch that removes
            // the frames syncs the journal they share.
            while folding.stripe < STRIPES {
                if !may_go() {
                    return Ok(folding.rows - rows_before);
                }
                self.index.stripe_entries(folding.stripe, |known| runs.contains_key(&known.run), &mut entries);
                let mut batch = self.db.batch();
                for (key, known) in &entries {
                    let run = runs.get(&known.run).map_or("", String::as_str);
                    batch.insert(
                        &self.stamps,
                        key,
                        state_layout::encode_stamp_of(run, known.last_seen_at, known.version, known.print)?,
                    );
                }
                batch.commit().map_err(failed)?;
                folding.rows += entries.len();
                folding.stripe += 1;
            }
        }
        let mut batch = self.db.batch().durability(Some(PersistMode::SyncAll));
        for seq in frames.first..folding.until {
            batch.remove(&self.touches, state_touches::frame_key(seq));
        }
        batch.commit().map_err(failed)?;
        tracing::debug!(
            rows = folding.rows,
            frames = folding.until - frames.first,
            "embedded store: folded touch frames into stamp rows"
        );
        let rows = folding.rows - rows_before;
        // Every stamp the index holds is a row's now, but for those of frames written since the
        // fold began, whose runs stay known.
        let later = std::mem::take(&mut folding.later_runs);
        frames.first = folding.until;
        frames.folding = None;
        self.runs_mut().retain(|brief, _| later.contains(brief));
        Ok(rows)
    }
}

#[async_trait]
impl ControlStore for StateStore {
    async fn get_many(&self, keys: &[RecordKey]) -> BackendResult<HashMap<String, ControlRecord>> {
        Ok(self.get_many_printed(keys).await?.records)
    }

    async fn get_many_printed(&self, keys: &[RecordKey]) -> BackendResult<PrintedRecords> {
        let inner = self.inner.clone();
        let keys = keys.to_vec();
        blocking("get records", move || {
            let mut out = PrintedRecords { records: HashMap::with_capacity(keys.len()), prints: HashMap::new() };
            let mut control_keys = ControlKeys::default();
            for k in keys {
                let key = control_keys.key(&k.source, &k.asset_key);
                if let Some((record, print)) = inner.get_printed(&key)? {
                    if record.asset_key != k.asset_key {
                        return Err(BackendError::permanent(
                            BACKEND,
                            "get records",
                            format!("asset keys {} and {} share a control key digest", record.asset_key, k.asset_key),
                        ));
                    }
                    if let Some(print) = print {
                        out.prints.insert(k.asset_key.clone(), print);
                    }
                    out.records.insert(k.asset_key, record);
                }
            }
            Ok(out)
        })
        .await
    }

    fn moves_run_stamps(&self) -> bool {
        true
    }

    fn keeps_prints(&self) -> bool {
        true
    }

    fn known(&self, source: &str, asset_key: &str) -> Option<KnownRecord> {
        self.inner.index.get(&state_layout::control_key(source, asset_key))
    }

    fn known_many(&self, keys: &[(&str, &str)]) -> Vec<Option<KnownRecord>> {
        let mut control_keys = ControlKeys::default();
        let keys: Vec<IndexKey> = keys.iter().map(|(source, asset_key)| control_keys.key(source, asset_key)).collect();
        self.inner.index.get_many(&keys)
    }

    async fn put_many(&self, writes: &[RecordWrite]) -> BackendResult<()> {
        self.put_with_touches(writes, &[]).await
    }

    /// Writes the batch whole, without re-reading the stored versions: in this store the
    /// conditional write holds by construction. The database is locked to one process, and in
    /// that process an asset key has exactly one writer, the decisor shard that owns it, which
    /// applies its batches one at a time after reading the records (or the index entries) they
    /// expect (the ordering tests fail if a shard ever runs two batches at once). Re-reading
    /// every key to compare versions was a fifth of the store's CPU on a steady crawl
    /// (BENCHMARKS.md). The index learns what the batch wrote once it is written, and forgets
    /// its keys if the write failed (a failed sync fails the store: `Inner::sync_through`).
    async fn put_with_touches(&self, writes: &[RecordWrite], touches: &[RecordTouch]) -> BackendResult<()> {
        let inner = self.inner.clone();
        let turn = self.write_batch(writes, touches).await?;
        blocking("put records", move || inner.sync_through(turn)).await
    }

    /// Written and visible on return. If no other writer is syncing the journal, this one
    /// syncs it here, as [`put_with_touches`](Self::put_with_touches) does, and returns
    /// durable. If one is, the batch waits for the sync after it on tokio's blocking pool while
    /// the caller goes on to its next batch: with many shards and syncs slow against the cores,
    /// that wait (for the sync under way, then its own) was most of a shard's time
    /// (benches/analysis.md). Not always so: handing every sync to the pool cost a lone shard
    /// two more thread switches a batch and ~5% more CPU, for nothing, as nobody else syncs
    /// then. The journal is synced in the order it was written, so no later batch can be
    /// durable before this one.
    async fn put_with_touches_deferred(
        &self,
        writes: &[RecordWrite],
        touches: &[RecordTouch],
    ) -> BackendResult<Durable> {
        let inner = self.inner.clone();
        let turn = self.write_batch(writes, touches).await?;
        if !inner.syncs.under_way() {
            blocking("put records", move || inner.sync_through(turn)).await?;
            return Ok(Durable::now());
        }
        let sync = tokio::task::spawn_blocking(move || inner.sync_through(turn));
        Ok(Durable::later(async move { sync.await.map_err(|e| BackendError::transient(BACKEND, "sync records", e))? }))
    }

    /// From the index where it can (`Inner::sweep_from_index`); otherwise streams the source's
    /// records through the planner, keeping only the keys to drop.
    async fn sweep_plan(&self, q: SweepQuery<'_>) -> BackendResult<SweepPlan> {
        let inner = self.inner.clone();
        let (source, run, max_drop_fraction) = (q.source.to_owned(), q.run.to_owned(), q.max_drop_fraction);
        let from_index = !q.count_run_events;
        blocking("list source", move || {
            if from_index && let Some(plan) = inner.sweep_from_index(&source, &run, max_drop_fraction)? {
                return Ok(plan);
            }
            let mut planner = SweepPlanner::new(&run);
            inner.scan(&state_layout::control_prefix(&source), |_, value, stamp| {
                let r = state_layout::sweep_view(value, stamp)?;
                if r.source == source {
                    planner.add(&r.asset_key, r.live, &r.last_seen_run);
                }
                Ok(ControlFlow::Continue(()))
            })?;
            Ok(planner.finish(max_drop_fraction))
        })
        .await
    }

    async fn list_all(&self) -> BackendResult<Vec<ControlRecord>> {
        let inner = self.inner.clone();
        blocking("list", move || {
            let mut out = Vec::new();
            inner.scan(&[], |_, value, stamp| {
                out.push(state_layout::decode_stamped(value, stamp)?);
                Ok(ControlFlow::Continue(()))
            })?;
            Ok(out)
        })
        .await
    }

    async fn list_source(&self, source: &str) -> BackendResult<Vec<ControlRecord>> {
        let inner = self.inner.clone();
        let source = source.to_owned();
        blocking("list source", move || {
            let mut out = Vec::new();
            inner.scan(&state_layout::control_prefix(&source), |_, value, stamp| {
                let r = state_layout::decode_stamped(value, stamp)?;
                if r.source == source {
                    out.push(r);
                }
                Ok(ControlFlow::Continue(()))
            })?;
            Ok(out)
        })
        .await
    }
}

impl StateStore {
    /// Writes a control batch and its touches to the journal, unsynced, and lets the index
    /// learn of it; returns its turn for [`Inner::sync_through`].
    async fn write_batch(&self, writes: &[RecordWrite], touches: &[RecordTouch<'_>]) -> BackendResult<u64> {
        let inner = &self.inner;
        // Made durable by the caller, with whatever other shards wrote meanwhile (`GroupSync`).
        let mut batch = inner.db.batch();
        let mut written: Vec<(IndexKey, Written)> = Vec::with_capacity(writes.len());
        let mut control_keys = ControlKeys::default();
        for RecordWrite { record: r, print, .. } in writes {
            let key = control_keys.key(&r.source, &r.asset_key);
            batch.insert(&inner.control, key, state_layout::encode_printed(r, *print)?);
            inner.index.saw_source(&key, &r.source);
            written.push((key, state_layout::known(r, *print)));
        }
        let mut run_brief = run_briefs();
        let mut stamped: Vec<Stamped> = Vec::with_capacity(touches.len());
        let mut frame = FrameBuilder::default();
        for t in touches {
            let key = control_keys.key(&t.source, &t.asset_key);
            // Only an indexed asset's stamp may live in a frame: reads find it in the index.
            // This shard is the key's only writer, so the index still holds it at the commit
            // (and one the index vouched for in this batch needs no second lookup).
            debug_assert!(!t.indexed || inner.index.get(&key).is_some(), "a vouched-for record left the index");
            if t.indexed || inner.index.get(&key).is_some() {
                frame.push(key, &t.last_seen_run, t.last_seen_at, t.version);
            } else {
                batch.insert(&inner.stamps, key, state_layout::encode_stamp(t)?);
            }
            stamped.push(Stamped {
                key,
                run: run_brief(&t.last_seen_run),
                at: t.last_seen_at,
                version: t.version,
                print: t.print,
            });
        }
        let framed = if frame.is_empty() { None } else { Some(frame.encode()?) };
        let frame_runs: Vec<(u64, String)> = frame.runs().iter().map(|r| (run_brief(r), (*r).to_owned())).collect();
        let inner = self.inner.clone();
        blocking("put records", move || {
            let mut frames = inner.frames_held();
            let has_frame = framed.is_some();
            if let Some(bytes) = framed {
                batch.insert(&inner.touches, state_touches::frame_key(frames.next), bytes);
                // Known before the index shows a stamp of theirs, so a read can name them.
                let mut runs = inner.runs_mut();
                for (brief, run) in frame_runs {
                    if let Some(folding) = frames.folding.as_mut() {
                        folding.later_runs.insert(brief);
                    }
                    runs.entry(brief).or_insert(run);
                }
            }
            let committed = batch.commit().map_err(|e| err("put records", e));
            let keys = written.iter().map(|(key, _)| key).chain(stamped.iter().map(|s| &s.key));
            match committed {
                Ok(()) => {
                    for (key, known) in &written {
                        inner.index.wrote(key, *known);
                    }
                    inner.index.touched_many(&stamped);
                }
                Err(_) => {
                    inner.failed.store(true, Ordering::Release);
                    keys.for_each(|key| inner.index.forget(key));
                }
            }
            committed?;
            let turn = inner.syncs.wrote();
            if has_frame {
                frames.next += 1;
            }
            if let Err(e) = inner.fold_as_batches_land(&mut frames) {
                // The batch is committed either way; its frame stays until a fold succeeds.
                tracing::warn!(error = %e, "embedded store: could not fold its touch frames");
            }
            drop(frames);
            Ok(turn)
        })
        .await
    }
}

impl Inner {
    /// Returns once every batch through `turn` is durable (`GroupSync`). A batch is visible,
    /// and in the index, before that: nothing else reads its keys before its events are
    /// acknowledged (one shard owns each, and acknowledges only after this), a sweep reads a
    /// source only past a barrier that waits for this, and a failed sync fails the store
    /// (reads refuse, the next open replays the frames), as a failed commit does.
    fn sync_through(&self, turn: u64) -> BackendResult<()> {
        self.syncs.sync_through(turn, || self.db.persist(PersistMode::SyncAll)).map_err(|e| {
            self.failed.store(true, Ordering::Release);
            err("put records", e)
        })
    }
}

#[async_trait]
impl HistoryStore for StateStore {
    async fn append(&self, rows: &[HistoryRow]) -> BackendResult<()> {
        if rows.is_empty() {
            return Ok(());
        }
        // The frames are encoded here, so the rows are not copied to move them to the blocking
        // thread that writes.
        let mut frames = self.inner.history_log.buffer();
        super::history_log::frames_into(rows, &mut frames)?;
        let inner = self.inner.clone();
        blocking("append history", move || inner.history_log.append_frames(frames)).await
    }

    async fn read(&self, asset_key: &str, limit: usize) -> BackendResult<Vec<HistoryRow>> {
        let me = self.clone();
        let key = asset_key.to_owned();
        blocking("read history", move || me.read_history(&key, limit)).await
    }
}

#[cfg(test)]
mod tests {
    use super::super::history_log::test_rows::{ids, row};
    use super::*;

    #[tokio::test]
    async fn history_reads_one_assets_rows_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        store.append(&[row("pg/db/s/a", "a-0")]).await.unwrap();
        store.append(&[row("pg/db/s/a", "a-1"), row("pg/db/s/b", "b-1"), row("pg/db/s/a", "a-2")]).await.unwrap();
        assert_eq!(ids(&store.read("pg/db/s/a", 10).await.unwrap()), ["a-2", "a-1", "a-0"]);
        assert_eq!(ids(&store.read("pg/db/s/a", 2).await.unwrap()), ["a-2", "a-1"]);
        assert_eq!(ids(&store.read("pg/db/s/b", 10).await.unwrap()), ["b-1"]);

        // After a clean stop and a reopen, new rows come first.
        store.settle(std::time::Duration::from_secs(10));
        drop(store);
        let store = StateStore::open(dir.path()).unwrap();
        store.append(&[row("pg/db/s/b", "b-2")]).await.unwrap();
        assert_eq!(ids(&store.read("pg/db/s/b", 10).await.unwrap()), ["b-2", "b-1"]);
    }

    #[tokio::test]
    async fn history_rows_an_earlier_version_kept_in_the_store_are_read_after_the_segments() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        // Rows as the store wrote them before history moved to segments, and a row of another
        // asset filed under this asset's digest, as a digest collision would.
        for (seq, id) in [(1, "old-0"), (2, "old-1")] {
            let value = state_layout::encode_history(&row("pg/db/s/a", id)).unwrap();
            store.inner.history.insert(state_layout::history_key("pg/db/s/a", seq), value).unwrap();
        }
        let stray = state_layout::encode_history(&row("pg/db/s/zz", "stray")).unwrap();
        store.inner.history.insert(state_layout::history_key("pg/db/s/a", 3), stray).unwrap();
        store.append(&[row("pg/db/s/a", "new-0"), row("pg/db/s/a", "new-1")]).await.unwrap();

        assert_eq!(ids(&store.read("pg/db/s/a", 10).await.unwrap()), ["new-1", "new-0", "old-1", "old-0"]);
        assert_eq!(ids(&store.read("pg/db/s/a", 3).await.unwrap()), ["new-1", "new-0", "old-1"]);
        assert_eq!(ids(&store.read("pg/db/s/a", 1).await.unwrap()), ["new-1"]);
    }

    fn record(source: &str, asset_key: &str, run: &str) -> ControlRecord {
        ControlRecord {
            asset_key: asset_key.to_owned(),
            source: source.to_owned(),
            name: assetflow_actors::event::AssetName { database: "db".into(), schema: "s".into(), table: "t".into() },
            hash: "ab".repeat(32),
            last_seen_run: run.to_owned(),
            last_seen_at: chrono::Utc::now(),
            status: assetflow_actors::record::RecordStatus::Live,
            dropped_at: None,
            content_ref: None,
            version: 3,
        }
    }

    /// `r` seen again, unchanged, an hour later in run `r2`: a touch to version 4, unindexed.
    fn seen_in_r2(r: &ControlRecord) -> RecordTouch<'static> {
        RecordTouch {
            source: r.source.clone().into(),
            asset_key: r.asset_key.clone().into(),
            last_seen_run: "r2".into(),
            last_seen_at: r.last_seen_at + chrono::Duration::hours(1),
            version: 4,
            indexed: false,
            print: None,
        }
    }

    fn keys(of: &[(&str, &str)]) -> Vec<RecordKey> {
        of.iter().map(|(s, k)| RecordKey { source: (*s).to_owned(), asset_key: (*k).to_owned() }).collect()
    }

    #[tokio::test]
    async fn records_are_filed_by_source_and_read_back_after_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        // "pg/x" shares the prefix of nothing in particular, but a sweep must keep sources apart
        // whatever their digests share.
        let mut all: Vec<ControlRecord> = (0..5000).map(|i| record("pg", &format!("pg/db/s/t{i:05}"), "r1")).collect();
        all.push(record("pg/x", "pg/x/db/s/t", "r1"));
        let writes: Vec<RecordWrite> = all.iter().map(|r| RecordWrite::new(r.clone(), 2)).collect();
        store.put_many(&writes).await.unwrap();
        drop(store);

        let store = StateStore::open(dir.path()).unwrap();
        let got = store
            .get_many(&keys(&[("pg", "pg/db/s/t00001"), ("pg", "pg/db/s/t04998"), ("pg/x", "pg/x/db/s/t")]))
            .await
            .unwrap();
        assert_eq!(got["pg/db/s/t00001"], all[1]);
        assert_eq!(got["pg/db/s/t04998"], all[4998]);
        assert_eq!(got["pg/x/db/s/t"], all[5000]);
        // A sweep of "pg" sees exactly its 5,000 records, not those of "pg/x".
        for counted in [false, true] {
            let plan = store.sweep_plan(query("pg", "r2", counted)).await.unwrap();
            assert_eq!((plan.live, plan.to_drop.len()), (5000, 5000));
            assert_eq!(plan.to_drop[0], "pg/db/s/t00000");
        }
        assert_eq!(store.list_source("pg/x").await.unwrap(), vec![all[5000].clone()]);
        // A write replaces the record: one record per asset.
        let mut next = all[1].clone();
        next.version += 1;
        store.put_many(&[RecordWrite::new(next.clone(), 3)]).await.unwrap();
        assert_eq!(store.get_many(&keys(&[("pg", "pg/db/s/t00001")])).await.unwrap()["pg/db/s/t00001"], next);
        assert_eq!(store.list_all().await.unwrap().len(), all.len());
    }

    #[tokio::test]
    async fn a_deferred_write_is_read_at_once_and_there_after_a_reopen_once_durable() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        // Eight writers, as eight shards, each writing its next batch before the last is durable.
        let writers = (0..8).map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut syncs = Vec::new();
                for b in 0..20 {
                    let r = record("pg", &format!("pg/db/s/w{w}b{b}"), "r1");
                    let write = [RecordWrite::new(r.clone(), 2)];
                    syncs.push(store.put_with_touches_deferred(&write, &[]).await.unwrap());
                    let read = store.get_many(&keys(&[("pg", &r.asset_key)])).await.unwrap();
                    assert_eq!(read.get(&r.asset_key), Some(&r), "a written batch is read before it is durable");
                }
                for sync in syncs {
                    sync.wait().await.unwrap();
                }
            })
        });
        for w in writers.collect::<Vec<_>>() {
            w.await.unwrap();
        }
        // No clean stop: what a reopen finds is what the syncs made durable.
        drop(store);
        let store = StateStore::open(dir.path()).unwrap();
        let all = store.list_source("pg").await.unwrap();
        assert_eq!(all.len(), 160, "every batch whose sync resolved is there after a reopen");
    }

    #[tokio::test]
    async fn a_touch_moves_only_the_run_stamp_and_the_index_follows_every_write() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        let (a, b) = (record("pg", "pg/db/s/a", "r1"), record("pg", "pg/db/s/b", "r1"));
        let writes = [a.clone(), b.clone()].map(|record| RecordWrite::new(record, 2));
        store.put_many(&writes).await.unwrap();
        let brief = |r: &ControlRecord| match state_layout::known(r, None) {
            Written::Live(known) => known,
            other => panic!("{other:?}"),
        };
        assert_eq!(store.known("pg", "pg/db/s/a"), Some(brief(&a)));
        assert_eq!(store.known("pg", "pg/db/s/zz"), None);

        let at = a.last_seen_at + chrono::Duration::hours(1);
        let touch = |r: &ControlRecord, version| RecordTouch {
            source: r.source.clone().into(),
            asset_key: r.asset_key.clone().into(),
            last_seen_run: "r2".into(),
            last_seen_at: at,
            version,
            indexed: false,
            print: None,
        };
        store.put_with_touches(&[], &[touch(&a, 4), touch(&b, 4)]).await.unwrap();
        let mut seen = a.clone();
        (seen.last_seen_run, seen.last_seen_at, seen.version) = ("r2".into(), at, 4);
        let get = |key: &str| {
            let keys = keys(&[("pg", key)]);
            let store = store.clone();
            async move { store.get_many(&keys).await.unwrap().remove(&keys[0].asset_key) }
        };
        assert_eq!(get("pg/db/s/a").await, Some(seen.clone()), "the record with its new run stamp");
        assert!(store.list_source("pg").await.unwrap().contains(&seen));
        assert!(store.list_all().await.unwrap().contains(&seen));
        assert_eq!(store.known("pg", "pg/db/s/a"), Some(brief(&seen)));
        // The sweep reads the stamp: seen in r2, not in r3.
        for counted in [false, true] {
            assert!(store.sweep_plan(query("pg", "r2", counted)).await.unwrap().to_drop.is_empty());
            assert_eq!(store.sweep_plan(query("pg", "r3", counted)).await.unwrap().to_drop.len(), 2);
        }

        // A full write supersedes the older stamp; a dropped record is no longer known.
        let mut changed = seen.clone();
        (changed.hash, changed.version) = ("cd".repeat(32), 5);
        store.put_many(&[RecordWrite::new(changed.clone(), 4)]).await.unwrap();
        assert_eq!(get("pg/db/s/a").await, Some(changed.clone()));
        assert_eq!(store.known("pg", "pg/db/s/a"), Some(brief(&changed)));
        let mut dropped = changed.clone();
        (dropped.status, dropped.version) = (assetflow_actors::record::RecordStatus::Dropped, 6);
        store.put_many(&[RecordWrite::new(dropped.clone(), 5)]).await.unwrap();
        assert_eq!(store.known("pg", "pg/db/s/a"), None);

        // Reopened, the index is filled again from records and stamps.
        drop(store);
        let store = StateStore::open(dir.path()).unwrap();
        let mut b_seen = b.clone();
        (b_seen.last_seen_run, b_seen.last_seen_at, b_seen.version) = ("r2".into(), at, 4);
        assert_eq!(store.known("pg", "pg/db/s/b"), Some(brief(&b_seen)));
        assert_eq!(store.known("pg", "pg/db/s/a"), None);
        let mut all = store.list_all().await.unwrap();
        all.sort_by(|x, y| x.asset_key.cmp(&y.asset_key));
        assert_eq!(all, [dropped, b_seen]);
    }

    /// The index keeps the text print a write or a touch brings with the record's hash, drops
    /// it with a write that brings none (the hash may have moved), and keeps it over a clean
    /// stop (the saved index) and a crash (an index filled from the rows, which keep it too).
    #[tokio::test]
    async fn the_index_keeps_a_print_only_beside_the_hash_it_came_with() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        let (a, b) = (record("pg", "pg/db/s/a", "r1"), record("pg", "pg/db/s/b", "r1"));
        let printed = |record: &ControlRecord, print| RecordWrite { print, ..RecordWrite::new(record.clone(), 2) };
        store.put_many(&[printed(&a, Some([1; 16])), printed(&b, None)]).await.unwrap();
        let print = |key: &str| store.known("pg", key).and_then(|k| k.print);
        assert_eq!((print("pg/db/s/a"), print("pg/db/s/b")), (Some([1; 16]), None));

        let touch = |r: &ControlRecord, print| RecordTouch { indexed: true, print, ..seen_in_r2(r) };
        store.put_with_touches(&[], &[touch(&a, None), touch(&b, Some([2; 16]))]).await.unwrap();
        assert_eq!(
            (print("pg/db/s/a"), print("pg/db/s/b")),
            (Some([1; 16]), Some([2; 16])),
            "a touch keeps or brings one"
        );

        let mut changed = b.clone();
        (changed.hash, changed.version) = ("cd".repeat(32), 5);
        store.put_many(&[RecordWrite::new(changed, 4)]).await.unwrap();
        assert_eq!(print("pg/db/s/b"), None, "a new hash without a print");

        store.settle(std::time::Duration::from_secs(30));
        drop(store);
        let store = StateStore::open(dir.path()).unwrap();
        let known = store.known("pg", "pg/db/s/a").unwrap();
        assert_eq!(
            (known.print, known.hash_hex(), known.version),
            (Some([1; 16]), a.hash.clone(), 4),
            "after a clean stop"
        );

        drop(store);
        let store = StateStore::open(dir.path()).unwrap();
        assert_eq!(store.known("pg", "pg/db/s/a").and_then(|k| k.print), Some([1; 16]), "after a crash");
        assert_eq!(store.known("pg", "pg/db/s/b").and_then(|k| k.print), None, "after a crash");
    }

    /// A record the index does not hold is read, and comes with the print of the event its
    /// hash came from: the write's, or a newer stamp's (a touch moves no hash), never one kept
    /// before the hash last moved.
    #[tokio::test]
    async fn a_record_read_comes_with_the_print_its_hash_came_from() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        let (a, b) = (record("pg", "pg/db/s/a", "r1"), record("pg", "pg/db/s/b", "r1"));
        let printed = |record: &ControlRecord, print| RecordWrite { print, ..RecordWrite::new(record.clone(), 2) };
        store.put_many(&[printed(&a, Some([1; 16])), printed(&b, None)]).await.unwrap();
        // Both past the index's bound, as in a catalog larger than it.
        for r in [&a, &b] {
            store.inner.index.forget(&state_layout::control_key(&r.source, &r.asset_key));
        }
        let both = keys(&[("pg", "pg/db/s/a"), ("pg", "pg/db/s/b")]);
        let prints = |store: &StateStore| {
            let store = store.clone();
            let both = both.clone();
            async move {
                let read = store.get_many_printed(&both).await.unwrap();
                assert_eq!(read.records.len(), 2);
                (read.prints.get("pg/db/s/a").copied(), read.prints.get("pg/db/s/b").copied())
            }
        };
        assert_eq!(prints(&store).await, (Some([1; 16]), None));

        let touch = |r: &ControlRecord, print| RecordTouch { print, ..seen_in_r2(r) };
        store.put_with_touches(&[], &[touch(&a, None), touch(&b, Some([2; 16]))]).await.unwrap();
        assert_eq!(prints(&store).await, (Some([1; 16]), Some([2; 16])), "a stamp keeps the record's or brings one");

        // b's hash moves with no print: the stamp's print is of the hash before.
        let mut changed = b.clone();
        (changed.hash, changed.version) = ("cd".repeat(32), 5);
        store.put_many(&[RecordWrite::new(changed, 4)]).await.unwrap();
        assert_eq!(prints(&store).await, (Some([1; 16]), None), "a new hash without a print");

        drop(store);
        let store = StateStore::open(dir.path()).unwrap();
        assert_eq!(prints(&store).await, (Some([1; 16]), None), "after a crash");
    }

    #[tokio::test]
    async fn a_settled_store_opens_with_nothing_to_replay_and_everything_there() {
        let dir = tempfile::tempdir().unwrap();
        let write = |settle: bool| {
            let path = dir.path().join(if settle { "settled" } else { "not" });
            async move {
                let store = StateStore::open(&path).unwrap();
                let writes: Vec<_> =
                    (0..50).map(|i| RecordWrite::new(record("pg", &format!("pg/db/s/t{i:03}"), "r1"), 0)).collect();
                store.put_many(&writes).await.unwrap();
                store.append(&[row("pg/db/s/t001", "d1")]).await.unwrap();
                if settle {
                    let written = journals(&path);
                    store.settle(std::time::Duration::from_secs(30));
                    let after = journals(&path);
                    assert!(!written.is_empty(), "the writes went to a journal");
                    assert!(written.iter().all(|j| !after.contains(j)), "{written:?} left at the stop ({after:?})");
                    assert_eq!(after.len(), 1, "one new journal, empty");
                    // What the next open takes is the saved index, not a scan: a ghost added
                    // to it (under the same sequence number) is known after the reopen.
                    let mut entries = store.inner.index.entries();
                    let ghost = state_layout::control_key("pg", "pg/db/s/ghost");
                    entries.push((ghost, entries[0].1));
                    let token = store.inner.checkpoints.get(INDEX_TOKEN_KEY).unwrap().unwrap();
                    let token = u64::from_le_bytes(token[..].try_into().unwrap());
                    let saved = state_index_file::Saved {
                        entries,
                        complete: true,
                        sources: store.inner.index.sources(),
                        runs: Vec::new(),
                    };
                    state_index_file::save(&store.inner.index_file, token, &saved).unwrap();
                    std::fs::copy(&store.inner.index_file, path.join("kept")).unwrap();
                }
                drop(store);
                StateStore::open(&path).unwrap()
            }
        };
        // Without a settle, the reopened store has replayed its journal into memtables.
        assert!(write(false).await.inner.db.write_buffer_size() > 4096);
        let store = write(true).await;
        // Only the removal of the saved index's token, at the open.
        assert!(store.inner.db.write_buffer_size() < 512, "nothing replayed into memtables");
        assert_eq!(store.list_all().await.unwrap().len(), 50);
        assert_eq!(ids(&store.read("pg/db/s/t001", 10).await.unwrap()), ["d1"]);
        assert!(store.known("pg", "pg/db/s/t007").is_some(), "the index comes back");
        assert!(store.known("pg", "pg/db/s/ghost").is_some(), "loaded from the file");
        assert!(!dir.path().join("settled/state-index").exists(), "the saved index was loaded, and removed");

        // The same file put back after the store moved on is refused: its token is gone.
        drop(store);
        std::fs::copy(dir.path().join("settled/kept"), dir.path().join("settled/state-index")).unwrap();
        let store = StateStore::open(&dir.path().join("settled")).unwrap();
        assert_eq!(store.known("pg", "pg/db/s/ghost"), None, "scanned, not loaded");
        assert!(store.known("pg", "pg/db/s/t007").is_some());
    }

    /// The names of the store's journal files.
    fn journals(state_dir: &Path) -> Vec<std::ffi::OsString> {
        std::fs::read_dir(state_dir.join("state"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|name| name.to_string_lossy().ends_with(".jnl"))
            .collect()
    }

    /// Each record of source `pg` as a read gives it back: key, last run, version; in key order.
    async fn stamps_of(store: &StateStore) -> Vec<(String, String, u64)> {
        let mut all: Vec<_> = store
            .list_source("pg")
            .await
            .unwrap()
            .into_iter()
            .map(|r| (r.asset_key, r.last_seen_run, r.version))
            .collect();
        all.sort();
        all
    }

    /// What a store gives back of 20 assets, 10 of them touched in r2 after a write in r1: the
    /// records, and what a sweep of r2 that reads every record drops.
    async fn after_touches(store: &StateStore) -> (Vec<(String, String, u64)>, Vec<String>) {
        let all = stamps_of(store).await;
        let mut to_drop = store.sweep_plan(query("pg", "r2", true)).await.unwrap().to_drop;
        to_drop.sort();
        (all, to_drop)
    }

    #[tokio::test]
    async fn touch_frames_hold_the_stamps_through_a_crash_a_clean_stop_and_a_fold() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        let writes: Vec<RecordWrite> =
            (0..20).map(|i| RecordWrite::new(record("pg", &format!("pg/db/s/t{i:02}"), "r1"), 2)).collect();
        store.put_many(&writes).await.unwrap();
        let at = chrono::Utc::now() + chrono::Duration::hours(1);
        let touches: Vec<RecordTouch> = (0..10)
            .map(|i| RecordTouch {
                source: "pg".into(),
                asset_key: format!("pg/db/s/t{i:02}").into(),
                last_seen_run: "r2".into(),
                last_seen_at: at,
                version: 4,
                indexed: false,
                print: None,
            })
            .collect();
        store.put_with_touches(&[], &touches[..6]).await.unwrap();
        store.put_with_touches(&[], &touches[6..]).await.unwrap();
        // Indexed assets: their stamps went into two frames, not into rows.
        assert_eq!(store.inner.touches.iter().count(), 2);
        assert_eq!(store.inner.stamps.iter().count(), 0);

        let expected = {
            let mut all: Vec<_> = (0..20)
                .map(|i| {
                    let (run, version) = if i < 10 { ("r2", 4) } else { ("r1", 3) };
                    (format!("pg/db/s/t{i:02}"), run.to_owned(), version)
                })
                .collect();
            all.sort();
            (all, (10..20).map(|i| format!("pg/db/s/t{i:02}")).collect::<Vec<_>>())
        };
        assert_eq!(after_touches(&store).await, expected, "reads take the stamps from the index");
        let one = store.get_many(&keys(&[("pg", "pg/db/s/t03")])).await.unwrap().remove("pg/db/s/t03").unwrap();
        assert_eq!((one.last_seen_run.as_str(), one.last_seen_at, one.version), ("r2", at, 4));

        // A crash: no settle, so no saved index; the open replays the frames.
        drop(store);
        let store = StateStore::open(dir.path()).unwrap();
        assert_eq!(after_touches(&store).await, expected, "after a crash");
        assert_eq!(store.known("pg", "pg/db/s/t03").map(|k| k.version), Some(4));

        // A clean stop: the saved index brings the stamps back, and their runs with them.
        store.settle(std::time::Duration::from_secs(30));
        drop(store);
        let store = StateStore::open(dir.path()).unwrap();
        assert!(store.inner.db.write_buffer_size() < 512, "the frames were flushed at the stop, not replayed");
        assert_eq!(after_touches(&store).await, expected, "after a clean stop");

        // A fold writes the stamps as rows and removes the frames; nothing read changes.
        store.inner.fold(&mut store.inner.frames_held()).unwrap();
        assert_eq!(store.inner.touches.iter().count(), 0);
        assert_eq!(store.inner.stamps.iter().count(), 10);
        assert_eq!(after_touches(&store).await, expected, "after a fold");
        drop(store);
        let store = StateStore::open(dir.path()).unwrap();
        assert_eq!(after_touches(&store).await, expected, "after a fold and a crash");
    }

    /// A fold written a stripe at a time: a batch that lands while it is under way keeps its
    /// frame and the run it names, whichever stripes its assets are in, through the fold's end
    /// and a crash after it.
    #[tokio::test]
    async fn a_batch_that_lands_during_a_fold_keeps_its_frame_and_its_run() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = StateStore::open(dir.path()).unwrap();
        // No fold begins by itself: the test begins one.
        Arc::get_mut(&mut store.inner).unwrap().fold_after = 100;
        let key = |i: usize| format!("pg/db/s/t{i:02}");
        let writes: Vec<RecordWrite> = (0..40).map(|i| RecordWrite::new(record("pg", &key(i), "r1"), 2)).collect();
        store.put_many(&writes).await.unwrap();
        let at = chrono::Utc::now() + chrono::Duration::hours(1);
        let touch = |i: usize, run: &'static str, version| RecordTouch {
            source: "pg".into(),
            asset_key: key(i).into(),
            last_seen_run: run.into(),
            last_seen_at: at,
            version,
            indexed: false,
            print: None,
        };
        let r2: Vec<RecordTouch> = (0..40).map(|i| touch(i, "r2", 4)).collect();
        store.put_with_touches(&[], &r2[..20]).await.unwrap();
        store.put_with_touches(&[], &r2[20..]).await.unwrap();
        // A fold of both frames begins, and only half the index's stripes have room.
        let stripes_done = std::cell::Cell::new(0);
        let half = || {
            stripes_done.set(stripes_done.get() + 1);
            stripes_done.get() <= STRIPES / 2
        };
        {
            let mut frames = store.inner.frames_held();
            frames.folding = Some(Folding::from(frames.next));
            store.inner.fold_on(&mut frames, half).unwrap();
            assert_eq!(frames.folding.as_ref().map(|f| f.stripe), Some(STRIPES / 2));
        }
        // A batch of a new run, over assets of every stripe, lands and the fold ends with it.
        let r3: Vec<RecordTouch> = (0..30).map(|i| touch(i, "r3", 5)).collect();
        store.put_with_touches(&[], &r3).await.unwrap();
        assert!(store.inner.frames_held().folding.is_none(), "the fold ended");
        assert_eq!(store.inner.touches.iter().count(), 1, "the new batch's frame stays");
        let want: Vec<_> =
            (0..40).map(|i| if i < 30 { (key(i), "r3".to_owned(), 5) } else { (key(i), "r2".to_owned(), 4) }).collect();
        assert_eq!(stamps_of(&store).await, want, "after the fold");
        drop(store);
        let store = StateStore::open(dir.path()).unwrap();
        assert_eq!(stamps_of(&store).await, want, "after a crash");
    }

    #[tokio::test]
    async fn frames_past_the_bound_are_folded_as_batches_land() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = StateStore::open(dir.path()).unwrap();
        Arc::get_mut(&mut store.inner).unwrap().fold_after = 3;
        let writes: Vec<RecordWrite> =
            (0..4).map(|i| RecordWrite::new(record("pg", &format!("pg/db/s/t{i}"), "r1"), 2)).collect();
        store.put_many(&writes).await.unwrap();
        let touch = |i: usize, run: &str, version| RecordTouch {
            source: "pg".into(),
            asset_key: format!("pg/db/s/t{i}").into(),
            last_seen_run: run.to_owned().into(),
            last_seen_at: chrono::Utc::now(),
            version,
            indexed: false,
            print: None,
        };
        for (i, run) in ["r2", "r3"].iter().enumerate() {
            store.put_with_touches(&[], &[touch(i, run, 4)]).await.unwrap();
        }
        assert_eq!((store.inner.touches.iter().count(), store.inner.stamps.iter().count()), (2, 0));
        // The third frame reaches the bound: all three are folded into rows.
        store.put_with_touches(&[], &[touch(2, "r4", 4)]).await.unwrap();
        assert_eq!((store.inner.touches.iter().count(), store.inner.stamps.iter().count()), (0, 3));
        store.put_with_touches(&[], &[touch(3, "r5", 4)]).await.unwrap();
        drop(store);
        let store = StateStore::open(dir.path()).unwrap();
        let mut runs: Vec<_> = store.list_source("pg").await.unwrap().into_iter().map(|r| r.last_seen_run).collect();
        runs.sort();
        assert_eq!(runs, ["r2", "r3", "r4", "r5"]);
    }

    #[test]
    fn a_new_store_pins_its_blocks_and_one_from_before_keeps_the_larger_cache() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join(PINNED_MARKER);
        let store = StateStore::open(dir.path()).unwrap();
        assert!(marker.exists());
        assert_eq!(store.inner.db.cache_capacity(), CACHE_BYTES);
        for ks in [&store.inner.control, &store.inner.stamps, &store.inner.touches] {
            assert!(ks.config.index_block_pinning_policy.iter().all(|pinned| *pinned));
            assert!(ks.config.filter_block_pinning_policy.iter().all(|pinned| *pinned));
        }
        drop(store);
        let store = StateStore::open(dir.path()).unwrap();
        assert_eq!(store.inner.db.cache_capacity(), CACHE_BYTES, "a marked store reopens with the small cache");
        drop(store);

        // A store an earlier version created has no marker, and keyspaces that go through the
        // cache for those blocks: it keeps the larger cache, and is not marked.
        std::fs::remove_file(&marker).unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        assert_eq!(store.inner.db.cache_capacity(), UNPINNED_CACHE_BYTES);
        drop(store);
        assert!(!marker.exists());
    }

    /// The table size a keyspace compacts to, as fjall keeps it for the keyspace.
    fn table_target(ks: &Keyspace) -> u64 {
        let config = ks.config.compaction_strategy.get_config();
        let (_, value) = config.iter().find(|(key, _)| &**key == b"leveled_target_size").expect("leveled");
        u64::from_le_bytes((&**value).try_into().unwrap())
    }

    #[test]
    fn a_new_store_compacts_its_stamps_to_small_tables_and_keeps_them_after_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        for _ in 0..2 {
            let store = StateStore::open(dir.path()).unwrap();
            assert_eq!(table_target(&store.inner.stamps), STAMPS_TABLE_BYTES);
            assert_eq!(table_target(&store.inner.control), DEFAULT_TABLE_BYTES);
            drop(store);
        }
    }

    #[tokio::test]
    async fn a_fold_leaves_records_written_after_their_frame_as_they_were_written() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        let writes: Vec<RecordWrite> =
            (0..3).map(|i| RecordWrite::new(record("pg", &format!("pg/db/s/t{i}"), "r1"), 2)).collect();
        store.put_many(&writes).await.unwrap();
        let touch = |i: usize| RecordTouch {
            source: "pg".into(),
            asset_key: format!("pg/db/s/t{i}").into(),
            last_seen_run: "r2".into(),
            last_seen_at: chrono::Utc::now(),
            version: 4,
            indexed: false,
            print: None,
        };
        store.put_with_touches(&[], &[touch(0), touch(1), touch(2)]).await.unwrap();
        // Later in the same run: t1 changes and t2 is dropped, so the index's entries of the
        // frame's run are one the frame holds (t0), one a record holds (t1), and none for t2.
        let mut changed = record("pg", "pg/db/s/t1", "r2");
        (changed.hash, changed.version) = ("cd".repeat(32), 5);
        let mut dropped = record("pg", "pg/db/s/t2", "r2");
        (dropped.status, dropped.dropped_at, dropped.version) =
            (assetflow_actors::record::RecordStatus::Dropped, Some(chrono::Utc::now()), 5);
        store.put_many(&[RecordWrite::new(changed, 4), RecordWrite::new(dropped, 4)]).await.unwrap();
        async fn read(store: &StateStore) -> Vec<(String, String, u64, String, bool)> {
            let mut all: Vec<_> = store
                .list_source("pg")
                .await
                .unwrap()
                .into_iter()
                .map(|r| (r.asset_key.clone(), r.last_seen_run.clone(), r.version, r.hash.clone(), r.is_live()))
                .collect();
            all.sort();
            all
        }
        let expected = vec![
            ("pg/db/s/t0".to_owned(), "r2".to_owned(), 4, "ab".repeat(32), true),
            ("pg/db/s/t1".to_owned(), "r2".to_owned(), 5, "cd".repeat(32), true),
            ("pg/db/s/t2".to_owned(), "r2".to_owned(), 5, "ab".repeat(32), false),
        ];
        assert_eq!(read(&store).await, expected, "before the fold");
        let rows = store.inner.fold(&mut store.inner.frames_held()).unwrap();
        assert_eq!(rows, 2, "the frame's run has t0 and t1 in the index, and the dropped t2 is not there");
        assert_eq!(store.inner.touches.iter().count(), 0);
        assert_eq!(read(&store).await, expected, "after the fold");
        // A crash: no saved index, so the open reads the rows the fold left.
        drop(store);
        let store = StateStore::open(dir.path()).unwrap();
        assert_eq!(read(&store).await, expected, "after the fold and a crash");
    }

    fn query<'a>(source: &'a str, run: &'a str, count_run_events: bool) -> SweepQuery<'a> {
        SweepQuery { source, run, max_drop_fraction: 1.0, count_run_events }
    }

    /// The plan a sweep makes from the index and the one a read of every record makes.
    async fn both_plans(store: &StateStore, source: &str, run: &str) -> (SweepPlan, SweepPlan) {
        let fast = store.sweep_plan(query(source, run, false)).await.unwrap();
        let read = store.sweep_plan(query(source, run, true)).await.unwrap();
        (fast, read)
    }

    fn same_drops(fast: &SweepPlan, read: &SweepPlan) {
        assert_eq!((fast.live, &fast.to_drop, fast.guarded), (read.live, &read.to_drop, read.guarded));
    }

    #[tokio::test]
    async fn a_sweep_from_the_index_drops_what_a_read_of_every_record_drops() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        // Seen in r2 by a write, by a touch, not seen (r1), dropped, another source, a marker.
        let mut writes: Vec<ControlRecord> = (0..30).map(|i| record("pg", &format!("pg/db/s/t{i:02}"), "r1")).collect();
        writes.extend((30..40).map(|i| record("pg", &format!("pg/db/s/t{i:02}"), "r2")));
        let mut gone = record("pg", "pg/db/s/gone", "r1");
        gone.status = assetflow_actors::record::RecordStatus::Dropped;
        writes.push(gone);
        writes.push(record("my", "my/db/s/t", "r1"));
        let name = assetflow_actors::event::AssetName { database: "db".into(), schema: "s".into(), table: "t".into() };
        writes.push(assetflow_actors::record::RunEvent::record("pg", &name, "r2", "e-9", chrono::Utc::now()));
        let writes: Vec<RecordWrite> = writes.into_iter().map(|record| RecordWrite::new(record, 2)).collect();
        let touches: Vec<RecordTouch> = (0..10)
            .map(|i| RecordTouch {
                source: "pg".into(),
                asset_key: format!("pg/db/s/t{i:02}").into(),
                last_seen_run: "r2".into(),
                last_seen_at: chrono::Utc::now(),
                version: 4,
                indexed: false,
                print: None,
            })
            .collect();
        store.put_many(&writes).await.unwrap();
        store.put_with_touches(&[], &touches).await.unwrap();

        let (fast, read) = both_plans(&store, "pg", "r2").await;
        same_drops(&fast, &read);
        assert_eq!((read.live, read.to_drop.len()), (40, 20));
        assert_eq!(read.seen_in_run, 21, "20 records and the marker");
        assert_eq!(fast.seen_in_run, 20, "the index does not count the marker");
        // The same after a clean stop (the saved index) and after a crash (a scan).
        store.settle(std::time::Duration::from_secs(30));
        drop(store);
        let store = StateStore::open(dir.path()).unwrap();
        assert!(store.inner.index.is_complete());
        same_drops(&both_plans(&store, "pg", "r2").await.0, &read);
        drop(store);
        let store = StateStore::open(dir.path()).unwrap();
        assert!(store.inner.index.is_complete(), "scanned to the end");
        same_drops(&both_plans(&store, "pg", "r2").await.0, &read);
    }

    #[tokio::test]
    async fn an_index_that_lost_a_record_or_shares_a_prefix_sweeps_by_reading() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        let records: Vec<ControlRecord> = (0..8).map(|i| record("pg", &format!("pg/db/s/t{i}"), "r1")).collect();
        let writes: Vec<RecordWrite> = records.iter().map(|r| RecordWrite::new(r.clone(), 2)).collect();
        store.put_many(&writes).await.unwrap();
        // A write whose outcome is unknown: the index forgets the key, though the record is live.
        store.inner.index.forget(&state_layout::control_key("pg", "pg/db/s/t3"));
        let (fast, read) = both_plans(&store, "pg", "r2").await;
        same_drops(&fast, &read);
        assert!(fast.to_drop.contains(&"pg/db/s/t3".to_owned()));

        // Two sources whose records share a prefix: run ids are the sources' own, and may be
        // the same; the index cannot tell their records apart.
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        let mut seen = HashMap::new();
        let (a, b) = (0..)
            .map(|i| format!("src-{i}"))
            .find_map(|s| seen.insert(state_layout::control_prefix(&s), s.clone()).map(|other| (other, s)))
            .unwrap();
        let writes: Vec<RecordWrite> =
            [record(&a, &format!("{a}/db/s/x"), "r1"), record(&b, &format!("{b}/db/s/y"), "r2")]
                .into_iter()
                .map(|record| RecordWrite::new(record, 2))
                .collect();
        store.put_many(&writes).await.unwrap();
        let (fast, read) = both_plans(&store, &a, "r2").await;
        same_drops(&fast, &read);
        assert_eq!((read.live, read.to_drop.len()), (1, 1), "{a} and {b}");
    }
}
