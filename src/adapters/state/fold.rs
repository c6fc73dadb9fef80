//! Folding the touch frames into stamp rows: the frames on disk, the fold under way a stripe of
//! the index at a time, and the replay of frames after an open that scanned the rows.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;

use assetflow_actors::ports::BackendResult;
use chrono::{DateTime, Utc};
use fjall::PersistMode;

use super::index::{IndexKey, STRIPES};
use super::{Inner, STAMPS_MEMTABLE_BYTES, err, layout, run_briefs, touches};

/// Touch frames kept before a fold begins (`touches.rs`): a frame holds a batch's stamps,
/// at most 512, and a fold under way finishes by twice this many, so a crash replays at most
/// about two million stamps (~90 MB); a catalog of 100k assets crawls about ten times between
/// folds.
pub(super) const FOLD_FRAMES: u64 = 2_048;

/// The sequence numbers of the touch frames on disk: `first..next`, and the fold under way.
#[derive(Debug, Default)]
pub(super) struct Frames {
    pub(super) first: u64,
    pub(super) next: u64,
    pub(super) folding: Option<Folding>,
}

/// A fold under way ([`Inner::fold_as_batches_land`]), written a stripe of the index at a time.
#[derive(Debug)]
pub(super) struct Folding {
    /// The frame it began at: it removes the frames before it.
    pub(super) until: u64,
    /// The next stripe whose rows it writes.
    pub(super) stripe: usize,
    rows: usize,
    /// The runs of frames written since it began, whose stamps it may not have written: they
    /// stay in `runs` when it ends.
    pub(super) later_runs: HashSet<u64>,
}

impl From<u64> for Folding {
    fn from(until: u64) -> Folding {
        Folding { until, stripe: 0, rows: 0, later_runs: HashSet::new() }
    }
}

impl Inner {
    /// After an open that scanned the rows (no saved index, as after a crash): puts the stamps
    /// of the touch frames into the index, and writes as rows those of assets it does not hold
    /// (the scan stops when the index is nearly full). Of two stamps of an asset, the higher
    /// version holds, so frames may be replayed any number of times.
    pub(super) fn replay_frames(&self) -> BackendResult<()> {
        let mut run_brief = run_briefs();
        let mut runs = HashMap::new();
        let mut unheld: HashMap<IndexKey, (String, DateTime<Utc>, u64)> = HashMap::new();
        for entry in self.touches.iter() {
            let (_, value) = entry.into_inner().map_err(|e| err("read touch frames", e))?;
            touches::decode(&value, |t| {
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
            if version > layout::stamped_version(&value, stamp.as_deref())? {
                batch.insert(&self.stamps, key, layout::encode_stamp_of(&run, at, version, None)?);
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
    pub(super) fn fold(&self, frames: &mut Frames) -> BackendResult<usize> {
        frames.folding.get_or_insert_with(|| Folding::from(frames.next));
        self.fold_on(frames, || true)
    }

    /// Folds as a batch lands: a fold begins once [`FOLD_FRAMES`] frames are on disk, and
    /// writes the rows of one stripe of the index after another while the stamps' memtable has
    /// room for them, going on at the next batch where it has not. Every stripe's rows at once
    /// (~150k rows in a 1M-asset crawl) outran fjall's one flush thread whenever it was
    /// compacting, and sat in memtables: the peak memory of that crawl (benches/analysis.md).
    /// Twice the bound of frames, it finishes at once, which bounds what a crash replays.
    pub(super) fn fold_as_batches_land(&self, frames: &mut Frames) -> BackendResult<()> {
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
    pub(super) fn fold_on(&self, frames: &mut Frames, may_go: impl Fn() -> bool) -> BackendResult<usize> {
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
                        layout::encode_stamp_of(run, known.last_seen_at, known.version, known.print)?,
                    );
                }
                batch.commit().map_err(failed)?;
                folding.rows += entries.len();
                folding.stripe += 1;
            }
        }
        let mut batch = self.db.batch().durability(Some(PersistMode::SyncAll));
        for seq in frames.first..folding.until {
            batch.remove(&self.touches, touches::frame_key(seq));
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
