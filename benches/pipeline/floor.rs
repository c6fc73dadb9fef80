//! The durable floor: the one-thread loop plus the writes the embedded store makes for each
//! event of a steady crawl, through the same store, in the decisor's batches, with no actors.
//!
//! It answers how much of assetflow's CPU per event is the durable state the contract asks for
//! (a run stamp per unchanged asset, a record per changed one, a history row per event, fsync'd
//! per batch; EVENTS.md §6 and §7) and how much is the pipeline around it. It leaves out what a
//! lower bound may leave out: sweeps at completion (drops), content, outputs to sinks, the
//! source's offsets, enrichment. CPU is the whole bench process's (the store's fsyncs and
//! flushes run on its own threads), which is otherwise idle while this runs.

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::BufRead;
use std::path::Path;
use std::time::{Duration, Instant};

use assetflow::adapters::state::StateStore;
use assetflow_actors::decision::{HistoryRow, Outcome, decision_id, live_decision_id};
use assetflow_actors::event::{AssetEvent, EventKind, decode};
use assetflow_actors::hash::{HashIgnore, content_hash};
use assetflow_actors::ports::{ControlStore, HistoryStore, RecordKey, RecordWrite};
use assetflow_actors::record::{ControlRecord, KnownRecord, RecordStatus, RecordTouch};

/// Events per store batch: the decisor's default `max_batch`.
const BATCH: usize = 512;

/// What the floor measured over a steady crawl: events, seconds, CPU seconds (process-wide,
/// store open and the settle at the end included, as in an `assetflow run`).
pub struct Floor {
    pub events: u64,
    pub seconds: f64,
    pub cpu_seconds: f64,
    /// Of `cpu_seconds`, opening the store (its journal replayed) and settling it at the end.
    pub open_and_settle_cpu_seconds: f64,
    pub unchanged: u64,
}

/// Runs `input` (a steady crawl) over the embedded store in `state_dir`, which a first crawl
/// by `assetflow run` left.
pub fn run(state_dir: &Path, input: &Path) -> Floor {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let ignore = HashIgnore::new(&["stats.row_count"]);
    super::quiet_disk();
    let cpu_before = process_cpu_seconds();
    let started = Instant::now();
    let store = StateStore::open(state_dir).expect("open the embedded store");
    let mut open_and_settle = process_cpu_seconds() - cpu_before;
    let lines =
        std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(input).expect("open input")).split(b'\n');
    let (mut events, mut unchanged) = (0u64, 0u64);
    let mut batch: Vec<(AssetEvent, String, String)> = Vec::with_capacity(BATCH);
    for line in lines {
        let Ok(event) = decode(&line.expect("read"), 1 << 20) else { continue };
        events += 1;
        let EventKind::Running { body, .. } = &event.kind else { continue };
        let hash = content_hash(body, &ignore);
        let key = event.asset_key().unwrap_or_default();
        batch.push((event, key, hash));
        if batch.len() == BATCH {
            unchanged += rt.block_on(apply(&store, &mut batch));
        }
    }
    unchanged += rt.block_on(apply(&store, &mut batch));
    let settling = process_cpu_seconds();
    store.settle(Duration::from_secs(30));
    drop(store);
    let seconds = started.elapsed().as_secs_f64();
    let cpu_after = process_cpu_seconds();
    open_and_settle += cpu_after - settling;
    Floor {
        events,
        seconds,
        cpu_seconds: cpu_after - cpu_before,
        open_and_settle_cpu_seconds: open_and_settle,
        unchanged,
    }
}

/// Decides one batch against the store (its index first, a read for the rest) and writes what
/// the decisor would: stamps of unchanged assets and changed records in one durable batch, then
/// the history rows in another. Returns how many were unchanged.
async fn apply(store: &StateStore, batch: &mut Vec<(AssetEvent, String, String)>) -> u64 {
    let known: Vec<Option<KnownRecord>> = batch.iter().map(|(e, key, _)| store.known(&e.source, key)).collect();
    let keys: Vec<RecordKey> = batch
        .iter()
        .zip(&known)
        .filter(|(_, k)| k.is_none())
        .map(|((e, key, _), _)| RecordKey { source: e.source.clone(), asset_key: key.clone() })
        .collect();
    let read: HashMap<String, ControlRecord> = store.get_many(&keys).await.expect("read records");
    let (mut writes, mut touches, mut decided) = (Vec::new(), Vec::new(), Vec::with_capacity(batch.len()));
    for ((event, key, hash), known) in batch.iter().zip(known) {
        let record = read.get(key);
        let (same, version) = match (&known, record) {
            (Some(k), _) => (KnownRecord::hash_bytes(hash) == Some(k.hash), k.version),
            (None, Some(r)) => (r.is_live() && r.hash == *hash, r.version),
            (None, None) => (false, 0),
        };
        let outcome = match (same, version) {
            (true, _) => Outcome::Unchanged,
            (false, 0) => Outcome::Created,
            (false, _) => Outcome::Updated,
        };
        // The decisor's prior of an updated asset names its old hash, which the index does not
        // keep; the new one costs the same to hash into the id.
        let id = if version == 0 {
            decision_id(&event.event_id, key, outcome.decision_kind(), "")
        } else {
            live_decision_id(&event.event_id, key, outcome.decision_kind(), hash)
        };
        decided.push((outcome, id));
        if same {
            touches.push(RecordTouch {
                source: Cow::Borrowed(&event.source),
                asset_key: Cow::Borrowed(key),
                last_seen_run: Cow::Borrowed(&event.run_id),
                last_seen_at: event.emitted_at,
                version: version + 1,
                indexed: known.is_some(),
                // The floor hashes every event, as the loop does: no text prints.
                print: None,
            });
        } else {
            let EventKind::Running { name, .. } = &event.kind else { continue };
            writes.push(RecordWrite {
                record: ControlRecord {
                    asset_key: key.clone(),
                    source: event.source.clone(),
                    name: name.clone(),
                    hash: hash.clone(),
                    last_seen_run: event.run_id.clone(),
                    last_seen_at: event.emitted_at,
                    status: RecordStatus::Live,
                    dropped_at: None,
                    content_ref: None,
                    version: version + 1,
                },
                expected_version: version,
                print: None,
            });
        }
    }
    let unchanged = touches.len() as u64;
    store.put_with_touches(&writes, &touches).await.expect("write records and stamps");
    drop(touches);
    // The rows take the events' strings (the decisor copies them: its events outlive the batch).
    let rows: Vec<HistoryRow> = batch
        .drain(..)
        .zip(decided)
        .map(|((event, key, hash), (outcome, id))| HistoryRow {
            asset_key: Some(key),
            source: Some(event.source),
            event_id: Some(event.event_id),
            run_id: Some(event.run_id),
            outcome,
            hash: Some(hash),
            decision_id: id,
            at: chrono::Utc::now(),
        })
        .collect();
    store.append(&rows).await.expect("append history");
    unchanged
}

/// CPU seconds (user and system) of every thread of this process so far.
fn process_cpu_seconds() -> f64 {
    super::cpu_seconds(libc::RUSAGE_SELF)
}
