//! The embedded state store: control table, history and source checkpoints in one fjall
//! database (`{state_dir}/state/`), every write batch made durable (fsynced) before it returns.
//!
//! fjall is a log-structured merge tree: a batch is one journal append plus memtable inserts,
//! so writing a micro-batch of random asset keys costs a sequential write, not a page rewrite
//! per key as in a B-tree (BENCHMARKS.md has the figures that chose it).

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use assetflow_actors::decide::{SweepPlan, SweepPlanner};
use assetflow_actors::decision::HistoryRow;
use assetflow_actors::envelope::Watermark;
use assetflow_actors::ports::{
    BackendError, BackendResult, ControlStore, FailureKind, HistoryStore, RecordKey, RecordWrite,
};
use assetflow_actors::record::{ControlRecord, RecordStatus};
use async_trait::async_trait;
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};

const BACKEND: &str = "embedded store";

/// The block cache. Bounded so memory stays flat as the store grows (see BENCHMARKS.md).
const CACHE_BYTES: u64 = 16 << 20;
/// Memtable size of the control and history keyspaces: what is held in memory before a flush.
const MEMTABLE_BYTES: u64 = 16 << 20;
/// Journal kept on disk before fjall flushes the keyspaces holding it back; bounds replay time
/// after a crash.
const JOURNAL_BYTES: u64 = 128 << 20;
/// The history keyspace's counter of the last sequence number used. Asset keys are UTF-8, so a
/// key starting with 0xff can never name an asset.
const HISTORY_SEQ_KEY: &[u8] = b"\xffseq";

/// The embedded store. Cloning shares the open database.
#[derive(Clone)]
pub struct StateStore {
    inner: Arc<Inner>,
}

struct Inner {
    db: Database,
    control: Keyspace,
    history: Keyspace,
    checkpoints: Keyspace,
    history_seq: AtomicU64,
    /// Serialises conditional control writes: a read-compare-write must not interleave with
    /// another writer's.
    control_writer: Mutex<()>,
}

fn err(op: &str, e: fjall::Error) -> BackendError {
    BackendError::new(BACKEND, op, e, FailureKind::Transient)
}

/// Runs blocking store work off the async threads.
async fn blocking<T: Send + 'static>(
    op: &'static str,
    f: impl FnOnce() -> BackendResult<T> + Send + 'static,
) -> BackendResult<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| BackendError::transient(BACKEND, op, e))?
}

impl StateStore {
    /// Opens (or creates) the store in `{dir}/state/`.
    pub fn open(dir: &Path) -> Result<StateStore, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create pipeline.state_dir {}: {e}", dir.display()))?;
        let old = dir.join("state.redb");
        if old.exists() {
            return Err(format!(
                "{} was written by an earlier assetflow (a redb file); this version keeps its state in {}. \
                 Move the old file away (every asset is then new again) or use another pipeline.state_dir",
                old.display(),
                dir.join("state").display()
            ));
        }
        let path = dir.join("state");
        let db = Database::builder(&path)
            .cache_size(CACHE_BYTES)
            .max_journaling_size(JOURNAL_BYTES)
            .open()
            .map_err(|e| match e {
                fjall::Error::Locked => format!(
                    "{} is in use by another assetflow process; stop it first (or give this one another pipeline.state_dir)",
                    path.display()
                ),
                other => format!("cannot open the embedded store {}: {other}", path.display()),
            })?;
        let opened = |name: &str, memtable: u64| {
            db.keyspace(name, || KeyspaceCreateOptions::default().max_memtable_size(memtable))
                .map_err(|e| format!("cannot open the embedded store {} ({name}): {e}", path.display()))
        };
        let control = opened("control", MEMTABLE_BYTES)?;
        let history = opened("history", MEMTABLE_BYTES)?;
        let checkpoints = opened("checkpoints", 1 << 20)?;
        let seq = history
            .get(HISTORY_SEQ_KEY)
            .map_err(|e| format!("cannot read the embedded store {}: {e}", path.display()))?
            .and_then(|v| <[u8; 8]>::try_from(&v[..]).ok())
            .map(u64::from_be_bytes)
            .unwrap_or(0);
        Ok(StateStore {
            inner: Arc::new(Inner {
                db,
                control,
                history,
                checkpoints,
                history_seq: AtomicU64::new(seq),
                control_writer: Mutex::new(()),
            }),
        })
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

    /// Every control record, for `assetflow assets`.
    pub fn all_records(&self) -> BackendResult<Vec<ControlRecord>> {
        let mut out = Vec::new();
        for entry in self.inner.control.iter() {
            let value = entry.value().map_err(|e| err("list", e))?;
            out.push(decode_record(&value)?);
        }
        Ok(out)
    }

    fn read_history(&self, asset_key: &str, limit: usize) -> BackendResult<Vec<HistoryRow>> {
        let (lo, hi) = history_range(asset_key);
        let mut out = Vec::new();
        for entry in self.inner.history.range(lo..=hi).rev().take(limit) {
            let value = entry.value().map_err(|e| err("read history", e))?;
            out.push(serde_json::from_slice(&value).map_err(|e| BackendError::permanent(BACKEND, "read history", e))?);
        }
        Ok(out)
    }
}

/// History keys: asset key (empty for rows of no asset), a 0 byte, the row's sequence number
/// big-endian, so one asset's rows are adjacent and in order.
fn history_key(asset_key: &str, seq: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(asset_key.len() + 9);
    key.extend_from_slice(asset_key.as_bytes());
    key.push(0);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

fn history_range(asset_key: &str) -> (Vec<u8>, Vec<u8>) {
    (history_key(asset_key, 0), history_key(asset_key, u64::MAX))
}

/// The fields of a stored [`ControlRecord`] a sweep reads; the rest are skipped unparsed.
#[derive(serde::Deserialize)]
struct SweepFields<'a> {
    #[serde(borrow)]
    asset_key: Cow<'a, str>,
    #[serde(borrow)]
    source: Cow<'a, str>,
    #[serde(borrow)]
    last_seen_run: Cow<'a, str>,
    status: RecordStatus,
}

/// The version of a stored [`ControlRecord`], for the conditional write's check.
#[derive(serde::Deserialize)]
struct VersionField {
    version: u64,
}

/// A stored control record, or the part of it `T` names.
fn decode<'a, T: serde::Deserialize<'a>>(bytes: &'a [u8]) -> BackendResult<T> {
    serde_json::from_slice(bytes).map_err(|e| BackendError::permanent(BACKEND, "decode record", e))
}

fn decode_record(bytes: &[u8]) -> BackendResult<ControlRecord> {
    decode(bytes)
}

impl Inner {
    /// Calls `each` with the stored record of every asset key under `{source}/`. Callers keep
    /// the records whose `source` is exactly `source` (a source may itself contain '/').
    fn scan_source(&self, source: &str, mut each: impl FnMut(&[u8]) -> BackendResult<()>) -> BackendResult<()> {
        for entry in self.control.prefix(format!("{source}/")) {
            each(&entry.value().map_err(|e| err("list source", e))?)?;
        }
        Ok(())
    }
}

#[async_trait]
impl ControlStore for StateStore {
    async fn get_many(&self, keys: &[RecordKey]) -> BackendResult<HashMap<String, ControlRecord>> {
        let inner = self.inner.clone();
        let keys = keys.to_vec();
        blocking("get records", move || {
            let mut out = HashMap::with_capacity(keys.len());
            for k in keys {
                if let Some(v) = inner.control.get(k.asset_key.as_bytes()).map_err(|e| err("get records", e))? {
                    out.insert(k.asset_key, decode_record(&v)?);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn put_many(&self, writes: &[RecordWrite]) -> BackendResult<()> {
        let inner = self.inner.clone();
        let writes = writes.to_vec();
        blocking("put records", move || {
            // A poisoned lock only means another writer panicked between its check and its
            // commit; the store itself is consistent (a batch commits whole or not at all).
            let _writer = inner.control_writer.lock().unwrap_or_else(|p| p.into_inner());
            let mut batch = inner.db.batch().durability(Some(PersistMode::SyncAll));
            for RecordWrite { record: r, expected_version } in &writes {
                let stored = match inner.control.get(r.asset_key.as_bytes()).map_err(|e| err("put records", e))? {
                    // Only the version is compared: the rest of the record is skipped unparsed.
                    Some(v) => decode::<VersionField>(&v)?.version,
                    None => 0,
                };
                if stored != *expected_version {
                    // The batch is dropped uncommitted: nothing of it is written.
                    return Err(BackendError::new(
                        BACKEND,
                        "put records",
                        format!("record {} is at version {stored}, expected {expected_version}", r.asset_key),
                        FailureKind::Conflict,
                    ));
                }
                let bytes = serde_json::to_vec(r).map_err(|e| BackendError::permanent(BACKEND, "put records", e))?;
                batch.insert(&inner.control, r.asset_key.as_bytes(), bytes);
            }
            batch.commit().map_err(|e| err("put records", e))
        })
        .await
    }

    /// Streams the source's records through the planner: only the keys to drop are kept.
    async fn sweep_plan(&self, source: &str, run: &str, max_drop_fraction: f64) -> BackendResult<SweepPlan> {
        let inner = self.inner.clone();
        let source = source.to_owned();
        let run = run.to_owned();
        blocking("list source", move || {
            let mut planner = SweepPlanner::new(&run);
            inner.scan_source(&source, |value| {
                let r: SweepFields = decode(value)?;
                if r.source == source {
                    planner.add(&r.asset_key, r.status == RecordStatus::Live, &r.last_seen_run);
                }
                Ok(())
            })?;
            Ok(planner.finish(max_drop_fraction))
        })
        .await
    }

    async fn list_source(&self, source: &str) -> BackendResult<Vec<ControlRecord>> {
        let inner = self.inner.clone();
        let source = source.to_owned();
        blocking("list source", move || {
            let mut out = Vec::new();
            inner.scan_source(&source, |value| {
                let r = decode_record(value)?;
                if r.source == source {
                    out.push(r);
                }
                Ok(())
            })?;
            Ok(out)
        })
        .await
    }
}

#[async_trait]
impl HistoryStore for StateStore {
    async fn append(&self, rows: &[HistoryRow]) -> BackendResult<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let inner = self.inner.clone();
        let rows = rows.to_vec();
        blocking("append history", move || {
            let mut batch = inner.db.batch().durability(Some(PersistMode::SyncAll));
            // Sequence numbers are taken as a block, so concurrent appends never share one; the
            // stored counter only ever moves forward (a batch that fails leaves a gap, harmless).
            let first = inner.history_seq.fetch_add(rows.len() as u64, Ordering::Relaxed) + 1;
            for (n, row) in (first..).zip(&rows) {
                let bytes =
                    serde_json::to_vec(row).map_err(|e| BackendError::permanent(BACKEND, "append history", e))?;
                batch.insert(&inner.history, history_key(row.asset_key.as_deref().unwrap_or(""), n), bytes);
            }
            let last = first + rows.len() as u64 - 1;
            batch.insert(
                &inner.history,
                HISTORY_SEQ_KEY,
                last.max(inner.history_seq.load(Ordering::Relaxed)).to_be_bytes(),
            );
            batch.commit().map_err(|e| err("append history", e))
        })
        .await
    }

    async fn read(&self, asset_key: &str, limit: usize) -> BackendResult<Vec<HistoryRow>> {
        let me = self.clone();
        let key = asset_key.to_owned();
        blocking("read history", move || me.read_history(&key, limit)).await
    }
}
