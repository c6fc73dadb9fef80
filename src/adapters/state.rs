//! The embedded state store: control table, history and source checkpoints in one redb file
//! (`{state_dir}/state.redb`), every write a durable (fsynced) transaction.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use assetflow_actors::decision::HistoryRow;
use assetflow_actors::envelope::Watermark;
use assetflow_actors::ports::{
    BackendError, BackendResult, ControlStore, FailureKind, HistoryStore, RecordKey, RecordWrite,
};
use assetflow_actors::record::ControlRecord;
use async_trait::async_trait;
use redb::{Database, ReadableTable, TableDefinition};

const CONTROL: TableDefinition<&str, &[u8]> = TableDefinition::new("control");
/// Key: asset key (empty for rows of no asset), a 0 byte, the row's sequence number big-endian.
const HISTORY: TableDefinition<&[u8], &[u8]> = TableDefinition::new("history");
const CHECKPOINTS: TableDefinition<&str, &[u8]> = TableDefinition::new("checkpoints");
/// Small counters; `history_seq` is the last history sequence number used.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

const BACKEND: &str = "embedded store";

/// redb's page cache. Its default (1 GiB) let the resident set grow with the store, to 600 MiB
/// over 100k assets; bounded, memory stays flat as the input grows (see BENCHMARKS.md).
const CACHE_BYTES: usize = 32 << 20;

/// The embedded store. Cloning shares the open database.
#[derive(Clone)]
pub struct StateStore {
    db: Arc<Database>,
    history_seq: Arc<AtomicU64>,
}

fn err(op: &str, e: impl Into<redb::Error>) -> BackendError {
    let e: redb::Error = e.into();
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
    /// Opens (or creates) `{dir}/state.redb`.
    pub fn open(dir: &Path) -> Result<StateStore, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create pipeline.state_dir {}: {e}", dir.display()))?;
        let path = dir.join("state.redb");
        let db = redb::Builder::new().set_cache_size(CACHE_BYTES).create(&path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => format!(
                "{} is in use by another assetflow process; stop it first (or give this one another pipeline.state_dir)",
                path.display()
            ),
            other => format!("cannot open the embedded store {}: {other}", path.display()),
        })?;
        let seq =
            init_tables(&db).map_err(|e| format!("cannot initialise the embedded store {}: {e}", path.display()))?;
        Ok(StateStore { db: Arc::new(db), history_seq: Arc::new(AtomicU64::new(seq)) })
    }

    pub fn checkpoint(&self, key: &str) -> BackendResult<Option<Vec<u8>>> {
        let tx = self.db.begin_read().map_err(|e| err("read checkpoint", e))?;
        let t = tx.open_table(CHECKPOINTS).map_err(|e| err("read checkpoint", e))?;
        Ok(t.get(key).map_err(|e| err("read checkpoint", e))?.map(|v| v.value().to_vec()))
    }

    pub async fn set_checkpoint(&self, key: String, value: Vec<u8>) -> BackendResult<()> {
        let db = self.db.clone();
        blocking("write checkpoint", move || {
            let tx = db.begin_write().map_err(|e| err("write checkpoint", e))?;
            {
                let mut t = tx.open_table(CHECKPOINTS).map_err(|e| err("write checkpoint", e))?;
                t.insert(key.as_str(), value.as_slice()).map_err(|e| err("write checkpoint", e))?;
            }
            tx.commit().map_err(|e| err("write checkpoint", e))
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
        let tx = self.db.begin_read().map_err(|e| err("list", e))?;
        let t = tx.open_table(CONTROL).map_err(|e| err("list", e))?;
        let mut out = Vec::new();
        for entry in t.iter().map_err(|e| err("list", e))? {
            let (_, v) = entry.map_err(|e| err("list", e))?;
            out.push(decode_record(v.value())?);
        }
        Ok(out)
    }

    fn read_history(&self, asset_key: &str, limit: usize) -> BackendResult<Vec<HistoryRow>> {
        let tx = self.db.begin_read().map_err(|e| err("read history", e))?;
        let t = tx.open_table(HISTORY).map_err(|e| err("read history", e))?;
        let (lo, hi) = history_range(asset_key);
        let mut out = Vec::new();
        for entry in t.range(lo.as_slice()..=hi.as_slice()).map_err(|e| err("read history", e))?.rev() {
            let (_, v) = entry.map_err(|e| err("read history", e))?;
            out.push(
                serde_json::from_slice(v.value()).map_err(|e| BackendError::permanent(BACKEND, "read history", e))?,
            );
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }
}

/// Creates the tables on first use; returns the last history sequence number.
fn init_tables(db: &Database) -> Result<u64, Box<redb::Error>> {
    let boxed = |e: redb::Error| Box::new(e);
    let tx = db.begin_write().map_err(|e| boxed(e.into()))?;
    tx.open_table(CONTROL).map_err(|e| boxed(e.into()))?;
    tx.open_table(CHECKPOINTS).map_err(|e| boxed(e.into()))?;
    tx.open_table(HISTORY).map_err(|e| boxed(e.into()))?;
    let meta = tx.open_table(META).map_err(|e| boxed(e.into()))?;
    let seq = meta.get("history_seq").map_err(|e| boxed(e.into()))?.map(|v| v.value()).unwrap_or(0);
    drop(meta);
    tx.commit().map_err(|e| boxed(e.into()))?;
    Ok(seq)
}

fn history_range(asset_key: &str) -> (Vec<u8>, Vec<u8>) {
    let mut lo = asset_key.as_bytes().to_vec();
    lo.push(0);
    let mut hi = lo.clone();
    lo.extend_from_slice(&[0u8; 8]);
    hi.extend_from_slice(&[0xffu8; 8]);
    (lo, hi)
}

fn decode_record(bytes: &[u8]) -> BackendResult<ControlRecord> {
    serde_json::from_slice(bytes).map_err(|e| BackendError::permanent(BACKEND, "decode record", e))
}

#[async_trait]
impl ControlStore for StateStore {
    async fn get_many(&self, keys: &[RecordKey]) -> BackendResult<HashMap<String, ControlRecord>> {
        let db = self.db.clone();
        let keys = keys.to_vec();
        blocking("get records", move || {
            let tx = db.begin_read().map_err(|e| err("get records", e))?;
            let t = tx.open_table(CONTROL).map_err(|e| err("get records", e))?;
            let mut out = HashMap::with_capacity(keys.len());
            for k in keys {
                if let Some(v) = t.get(k.asset_key.as_str()).map_err(|e| err("get records", e))? {
                    out.insert(k.asset_key, decode_record(v.value())?);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn put_many(&self, writes: &[RecordWrite]) -> BackendResult<()> {
        let db = self.db.clone();
        let writes = writes.to_vec();
        blocking("put records", move || {
            let tx = db.begin_write().map_err(|e| err("put records", e))?;
            {
                let mut t = tx.open_table(CONTROL).map_err(|e| err("put records", e))?;
                for RecordWrite { record: r, expected_version } in &writes {
                    let stored = match t.get(r.asset_key.as_str()).map_err(|e| err("put records", e))? {
                        Some(v) => decode_record(v.value())?.version,
                        None => 0,
                    };
                    if stored != *expected_version {
                        // Dropping the transaction unwritten aborts it.
                        return Err(BackendError::new(
                            BACKEND,
                            "put records",
                            format!("record {} is at version {stored}, expected {expected_version}", r.asset_key),
                            FailureKind::Conflict,
                        ));
                    }
                    let bytes =
                        serde_json::to_vec(r).map_err(|e| BackendError::permanent(BACKEND, "put records", e))?;
                    t.insert(r.asset_key.as_str(), bytes.as_slice()).map_err(|e| err("put records", e))?;
                }
            }
            tx.commit().map_err(|e| err("put records", e))
        })
        .await
    }

    async fn list_source(&self, source: &str) -> BackendResult<Vec<ControlRecord>> {
        let db = self.db.clone();
        let source = source.to_owned();
        blocking("list source", move || {
            let tx = db.begin_read().map_err(|e| err("list source", e))?;
            let t = tx.open_table(CONTROL).map_err(|e| err("list source", e))?;
            // Asset keys start with "{source}/": scan that range, then keep exact source matches
            // (a source may itself contain '/').
            let lo = format!("{source}/");
            let hi = format!("{source}0");
            let mut out = Vec::new();
            for entry in t.range(lo.as_str()..hi.as_str()).map_err(|e| err("list source", e))? {
                let (_, v) = entry.map_err(|e| err("list source", e))?;
                let r = decode_record(v.value())?;
                if r.source == source {
                    out.push(r);
                }
            }
            Ok(out)
        })
        .await
    }
}

#[async_trait]
impl HistoryStore for StateStore {
    async fn append(&self, rows: &[HistoryRow]) -> BackendResult<()> {
        let db = self.db.clone();
        let seq = self.history_seq.clone();
        let rows = rows.to_vec();
        blocking("append history", move || {
            let tx = db.begin_write().map_err(|e| err("append history", e))?;
            {
                let mut t = tx.open_table(HISTORY).map_err(|e| err("append history", e))?;
                for row in &rows {
                    let n = seq.fetch_add(1, Ordering::Relaxed) + 1;
                    let mut key = row.asset_key.as_deref().unwrap_or("").as_bytes().to_vec();
                    key.push(0);
                    key.extend_from_slice(&n.to_be_bytes());
                    let bytes =
                        serde_json::to_vec(row).map_err(|e| BackendError::permanent(BACKEND, "append history", e))?;
                    t.insert(key.as_slice(), bytes.as_slice()).map_err(|e| err("append history", e))?;
                }
                let mut meta = tx.open_table(META).map_err(|e| err("append history", e))?;
                let last = seq.load(Ordering::Relaxed);
                let stored =
                    meta.get("history_seq").map_err(|e| err("append history", e))?.map(|v| v.value()).unwrap_or(0);
                meta.insert("history_seq", last.max(stored)).map_err(|e| err("append history", e))?;
            }
            tx.commit().map_err(|e| err("append history", e))
        })
        .await
    }

    async fn read(&self, asset_key: &str, limit: usize) -> BackendResult<Vec<HistoryRow>> {
        let me = self.clone();
        let key = asset_key.to_owned();
        blocking("read history", move || me.read_history(&key, limit)).await
    }
}
