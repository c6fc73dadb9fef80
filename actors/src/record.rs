//! The per-asset control record: what the control table remembers about each asset key.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::event::AssetName;

/// Whether the asset was seen in its source's latest completed run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordStatus {
    Live,
    Dropped,
}

impl RecordStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RecordStatus::Live => "live",
            RecordStatus::Dropped => "dropped",
        }
    }
}

/// One row of the control table, keyed by `asset_key`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ControlRecord {
    pub asset_key: String,
    pub source: String,
    #[serde(flatten)]
    pub name: AssetName,
    pub hash: String,
    pub last_seen_run: String,
    /// The `emitted_at` of the event that last touched the record.
    pub last_seen_at: DateTime<Utc>,
    pub status: RecordStatus,
    pub dropped_at: Option<DateTime<Utc>>,
    pub content_ref: Option<String>,
    /// Bumped on every write; a write expects the stored version to be one less (conditional write).
    pub version: u64,
}

impl ControlRecord {
    pub fn is_live(&self) -> bool {
        self.status == RecordStatus::Live
    }

    /// The record that says which completion of `source` was applied last (see
    /// [`CompletionMark`]). Its key is the source's name: every asset key of the source is
    /// longer (`{source}/{database}/{schema}/{table}`), so it can never name an asset.
    pub fn completion_mark(source: &str, mark: &CompletionMark, version: u64) -> Self {
        ControlRecord {
            asset_key: source.to_owned(),
            source: source.to_owned(),
            name: AssetName::default(),
            // The run lives in `hash`, not `last_seen_run`: `expected_assets` counts records by
            // `last_seen_run`, and this record is no asset of any run.
            hash: mark.run_id.clone(),
            last_seen_run: String::new(),
            last_seen_at: mark.emitted_at,
            status: RecordStatus::Dropped,
            dropped_at: Some(mark.emitted_at),
            content_ref: mark.guarded.then(|| GUARDED.to_owned()),
            version,
        }
    }

    /// Whether this is a source's completion mark rather than an asset.
    pub fn is_completion_mark(&self) -> bool {
        self.asset_key == self.source
    }

    /// The completion this mark records, if it is one.
    pub fn as_completion_mark(&self) -> Option<CompletionMark> {
        self.is_completion_mark().then(|| CompletionMark {
            run_id: self.hash.clone(),
            emitted_at: self.last_seen_at,
            guarded: self.content_ref.as_deref() == Some(GUARDED),
        })
    }
}

/// The last completion applied for a source, kept in the control table beside its assets.
///
/// A completion is applied once and never after a newer one: a process that lost a source's
/// partition while it was sweeping (paused, or slow to learn of the rebalance) finds the new
/// owner's mark and drops nothing, where it would otherwise drop the assets the next run has
/// already refreshed. A crash before the mark is written replays the sweep, which repeats its
/// drops with the same decision ids.
#[derive(Debug, Clone, PartialEq)]
pub struct CompletionMark {
    pub run_id: String,
    pub emitted_at: DateTime<Utc>,
    /// The completion was dead-lettered by the drop guard: a redrive of it may still apply it.
    pub guarded: bool,
}

/// What a guarded mark keeps in its record's `content_ref`.
const GUARDED: &str = "drop_guard";

impl CompletionMark {
    /// Whether the completion `(run_id, emitted_at)` was handled already, or is older news
    /// (EVENTS.md §3.1: older news never overwrites newer). A redrive (`redriven`) of the
    /// completion the drop guard stopped is not covered: that is how an operator applies it.
    pub fn covers(&self, run_id: &str, emitted_at: DateTime<Utc>, redriven: bool) -> bool {
        self.emitted_at > emitted_at
            || (self.emitted_at == emitted_at && self.run_id == run_id && !(self.guarded && redriven))
    }
}
