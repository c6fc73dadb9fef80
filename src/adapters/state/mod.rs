//! The embedded state store: control table and source checkpoints in one fjall database
//! (`{state_dir}/state/`), history in segment files beside it (`{state_dir}/history/`,
//! `history_log.rs`), every write made durable (fsynced) before it returns.
//!
//! fjall is a log-structured merge tree: a batch is one journal append plus memtable inserts,
//! so writing a micro-batch of random asset keys costs a sequential write, not a page rewrite
//! per key as in a B-tree (BENCHMARKS.md has the figures that chose it). How rows and keys are
//! laid out is `layout.rs`.
//!
//! An unchanged asset seen again moves only its run stamp, and it is decided from the index of
//! live records this store keeps in memory (`index.rs`) without a read. The stamps of a
//! batch's indexed assets go into one touch frame (`touches.rs`) and stay in the index,
//! which reads of those records take them from, until a fold writes them as rows of a keyspace
//! of their own (`stamps`, keyed like the records) so the records' tables stay still. One the
//! bounded index does not hold is read, and its stamp written as a row at once. Records and
//! stamps keep the text print of the event their hash came from, so one read is vouched for by
//! print as an indexed one is (`layout::encode_printed`), and not hashed.
//!
//! A completion's sweep takes the source's live records from the index too, unless it must
//! count run events (`expected_assets`) or the source may hold event markers, which the index
//! does not hold and the sweep spends: a write of one notes its source in the
//! `with-markers` keyspace, and such a source's sweep reads its records until a read finds none.
//!
//! Where each part lives, in this folder:
//! - `mod.rs`: the store: opening it, reads, batched writes, sweeps, the ports it implements.
//! - `layout.rs`: how rows and keys are laid out (records, stamps, history rows).
//! - `index.rs`: the in-memory index of live records (hash, text print, run stamp).
//! - `index_file.rs`: that index saved at a clean stop and loaded by the next open.
//! - `touches.rs`: the touch frames, a batch's stamps of indexed assets until a fold.
//! - `fold.rs`: folding the frames into stamp rows, and replaying them after a crash.
//! - `unfinished.rs`: a database whose creation a crash cut short, cleared before the open.
//! - `tests.rs`: the store's tests.

use std::borrow::Cow;
use std::collections::HashMap;
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

use fjall::compaction::Leveled;
use fjall::config::PinningPolicy;
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};

use self::fold::{FOLD_FRAMES, Frames};
use self::index::{CAPACITY, IndexKey, RecordIndex, Stamped, Written};
use self::index_file::Loaded;
use self::layout::ControlKeys;
use self::touches::FrameBuilder;
use super::group_sync::GroupSync;
use super::history_log::HistoryLog;

mod fold;
mod index;
mod index_file;
pub mod layout;
#[cfg(test)]
mod tests;
mod touches;
mod unfinished;

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
/// `index_file.rs`); absent when there is none good for the store as it is.
const INDEX_TOKEN_KEY: &[u8] = b"\xffindex";

/// The embedded store. Cloning shares the open database.
#[derive(Clone)]
pub struct StateStore {
    inner: Arc<Inner>,
}

struct Inner {
    db: Database,
    control: Keyspace,
    /// Run stamps of unchanged assets, keyed like their records (`layout::encode_stamp`).
    stamps: Keyspace,
    /// History rows of stores written before [`HistoryLog`]: read after its rows, never written.
    history: Keyspace,
    checkpoints: Keyspace,
    /// Touch frames (`touches.rs`), keyed by sequence number.
    touches: Keyspace,
    /// The sources whose records may hold event markers
    /// ([`ControlRecord::is_event_marker`]), by name (the value is empty): set by a write of
    /// one, cleared by a sweep that lists the source's records and finds none. A sweep of
    /// another source plans from the index, without listing.
    with_markers: Keyspace,
    history_log: HistoryLog,
    index: RecordIndex,
    /// Where a clean stop saves the index (`index_file.rs`).
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

fn err(op: &str, e: fjall::Error) -> BackendError {
    BackendError::new(BACKEND, op, e, FailureKind::Transient)
}

/// Why the store at `path` (or its keyspace `keyspace`) would not open, and what to do about it.
fn open_error(path: &Path, keyspace: Option<&str>, e: fjall::Error) -> String {
    let store = match keyspace {
        Some(name) => format!("the embedded store {} ({name})", path.display()),
        None => format!("the embedded store {}", path.display()),
    };
    match e {
        fjall::Error::Locked => format!(
            "{} is in use by another assetflow process; stop it first (or give this one another pipeline.state_dir)",
            path.display()
        ),
        fjall::Error::Io(io) | fjall::Error::Storage(fjall::LsmError::Io(io)) => {
            format!("cannot open {store}: {io}; check that this user may read and write its folder and files")
        }
        // A checksum that does not match, a block that does not decode, a journal that does not
        // recover: bytes on disk that are not what was written.
        damaged => format!(
            "{store} is damaged and cannot be opened ({damaged}): restore pipeline.state_dir from a backup, or move \
             it aside to start with empty state (every asset is then new again)"
        ),
    }
}

/// Runs blocking store work where the caller's thread allows it ([`threads::blocking`]).
async fn blocking<T: Send + 'static>(
    op: &'static str,
    f: impl FnOnce() -> BackendResult<T> + Send + 'static,
) -> BackendResult<T> {
    threads::blocking(f).await.map_err(|e| BackendError::transient(BACKEND, op, e))?
}

impl StateStore {
    /// Whether a store has been made in `dir` (a `pipeline.state_dir`): what a command that only
    /// reads asks before [`StateStore::open`], which would make one.
    pub fn exists_in(dir: &Path) -> bool {
        Self::path_in(dir).exists()
    }

    /// Where the store of `dir` keeps its database.
    fn path_in(dir: &Path) -> PathBuf {
        dir.join("state")
    }

    /// Opens (or creates) the store in `{dir}/state/`.
    pub fn open(dir: &Path) -> Result<StateStore, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create pipeline.state_dir {}: {e}", dir.display()))?;
        let path = Self::path_in(dir);
        match unfinished::clear_unfinished_create(&path) {
            Ok(true) => {
                tracing::warn!(path = %path.display(), "the embedded store's creation was cut short (a crash); creating it again")
            }
            Ok(false) => {}
            Err(e) => return Err(format!("cannot look into the embedded store {}: {e}", path.display())),
        }
        let marker = dir.join(PINNED_MARKER);
        let marked = marker.exists();
        let pinned = !path.exists() || marked;
        let db = Database::builder(&path)
            .cache_size(if pinned { CACHE_BYTES } else { UNPINNED_CACHE_BYTES })
            .max_journaling_size(JOURNAL_BYTES)
            .worker_threads(STORE_WORKERS)
            .open()
            .map_err(|e| open_error(&path, None, e))?;
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
            db.keyspace(name, options).map_err(|e| open_error(&path, Some(name), e))
        };
        let control = opened("control", MEMTABLE_BYTES, DEFAULT_TABLE_BYTES)?;
        let stamps = opened("stamps", STAMPS_MEMTABLE_BYTES, STAMPS_TABLE_BYTES)?;
        let history = opened("history", HISTORY_MEMTABLE_BYTES, DEFAULT_TABLE_BYTES)?;
        let checkpoints = opened("checkpoints", 1 << 20, DEFAULT_TABLE_BYTES)?;
        let touches = opened("touches", TOUCHES_MEMTABLE_BYTES, DEFAULT_TABLE_BYTES)?;
        let with_markers = opened("with-markers", 1 << 20, DEFAULT_TABLE_BYTES)?;
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
            with_markers,
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
        let seq = |g: Option<fjall::Guard>| g.and_then(|g| g.key().ok()).and_then(|k| touches::frame_seq(&k));
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
        let keyspaces =
            [&inner.control, &inner.stamps, &inner.history, &inner.checkpoints, &inner.touches, &inner.with_markers];
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
        for entry in self.inner.history.range(layout::history_range(asset_key)).rev() {
            if out.len() >= limit {
                break;
            }
            let value = entry.value().map_err(|e| err("read history", e))?;
            let row = layout::decode_history(&value)?;
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
        index_file::write_index(
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
            index_file::discard(&self.index_file);
            return Ok(None);
        };
        let saved = index_file::take(&self.index_file, token, &self.index);
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
                let (source, known) = layout::known_stored(value, stamp, &mut run_brief)?;
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
    fn sweep_from_index(&self, q: &SweepQuery<'_>) -> BackendResult<Option<SweepPlan>> {
        let (source, run) = (q.source, q.run);
        let prefix = layout::control_prefix(source);
        let Some(swept) = self.index.sweep(prefix, source, KnownRecord::run_brief(run)) else { return Ok(None) };
        let mut planner = SweepPlanner::new(*q);
        planner.add_seen(swept.seen);
        for key in swept.unseen {
            let Some((value, stamp)) = self.get_stored(&key)? else { continue };
            let r = layout::sweep_view(&value, stamp.as_deref())?;
            if r.source == source {
                planner.add(&r.asset_key, r.live, &r.last_seen_run, r.last_seen_at);
            }
        }
        Ok(Some(planner.finish()))
    }

    /// A record with its run stamp applied, and the text print its hash came from if kept.
    fn get_printed(&self, key: &[u8]) -> BackendResult<Option<(ControlRecord, Option<TextPrint>)>> {
        let Some((value, stamp)) = self.get_stored(key)? else { return Ok(None) };
        layout::decode_printed(&value, stamp.as_deref()).map(Some)
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
            Some(known) if known.version > layout::stamped_version(value, stamp)? => known,
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
        layout::encode_stamp_of(run, framed.last_seen_at, framed.version, framed.print).map(|s| Some(Cow::Owned(s)))
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
        self.inner.index.get(&layout::control_key(source, asset_key))
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
        let (source, run) = (q.source.to_owned(), q.run.to_owned());
        blocking("list source", move || {
            // The same query, over the copies this thread owns.
            let q = SweepQuery { source: &source, run: &run, ..q };
            let may_hold_markers = inner.with_markers.contains_key(q.source).map_err(|e| err("list source", e))?;
            if !q.count_run_events
                && !may_hold_markers
                && let Some(plan) = inner.sweep_from_index(&q)?
            {
                return Ok(plan);
            }
            // Cleared before the scan: a marker written during it sets it again.
            if may_hold_markers {
                inner.with_markers.remove(q.source).map_err(|e| err("list source", e))?;
            }
            let mut planner = SweepPlanner::new(q);
            inner.scan(&layout::control_prefix(q.source), |_, value, stamp| {
                let r = layout::sweep_view(value, stamp)?;
                if r.source == q.source {
                    planner.add(&r.asset_key, r.live, &r.last_seen_run, r.last_seen_at);
                }
                Ok(ControlFlow::Continue(()))
            })?;
            // Set again while any is there, spent or not: the sweep removes the spent ones only
            // once its completion is applied, if it is, and the next sweep finds them gone.
            if planner.event_markers() > 0 {
                inner.with_markers.insert(q.source, []).map_err(|e| err("list source", e))?;
            }
            Ok(planner.finish())
        })
        .await
    }

    async fn remove_markers(&self, keys: &[RecordKey]) -> BackendResult<()> {
        let inner = self.inner.clone();
        let keys = keys.to_vec();
        blocking("remove markers", move || {
            inner.check_not_failed()?;
            let mut batch = inner.db.batch();
            for k in &keys {
                let key = layout::control_key(&k.source, &k.asset_key);
                let Some(value) = inner.control.get(key).map_err(|e| err("remove markers", e))? else { continue };
                let r = layout::decode(&value)?;
                if r.is_run_event_at(k) {
                    batch.remove(&inner.control, key);
                    batch.remove(&inner.stamps, key);
                }
            }
            // Not synced: a removal the journal loses leaves a marker the next sweep spends.
            batch.commit().map_err(|e| {
                inner.failed.store(true, Ordering::Release);
                err("remove markers", e)
            })
        })
        .await
    }

    async fn list_all(&self) -> BackendResult<Vec<ControlRecord>> {
        let inner = self.inner.clone();
        blocking("list", move || {
            let mut out = Vec::new();
            inner.scan(&[], |_, value, stamp| {
                out.push(layout::decode_stamped(value, stamp)?);
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
            inner.scan(&layout::control_prefix(&source), |_, value, stamp| {
                let r = layout::decode_stamped(value, stamp)?;
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
        let mut noted: Option<&str> = None;
        for RecordWrite { record: r, print, .. } in writes {
            let key = control_keys.key(&r.source, &r.asset_key);
            batch.insert(&inner.control, key, layout::encode_printed(r, *print)?);
            inner.index.saw_source(&key, &r.source);
            written.push((key, layout::known(r, *print)));
            if noted != Some(r.source.as_str()) && r.is_event_marker() {
                batch.insert(&inner.with_markers, r.source.as_str(), []);
                noted = Some(&r.source);
            }
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
                batch.insert(&inner.stamps, key, layout::encode_stamp(t)?);
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
                batch.insert(&inner.touches, touches::frame_key(frames.next), bytes);
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
