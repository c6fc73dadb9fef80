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

    /// Whether this is a source's completion mark ([`crate::mark`]) rather than an asset.
    pub fn is_completion_mark(&self) -> bool {
        self.asset_key == self.source
    }

    /// Whether this is a [`RunEvent`] marker rather than an asset.
    pub fn is_run_event(&self) -> bool {
        self.hash == RUN_EVENT && self.asset_key.starts_with(&format!("{}#", self.source))
    }

    /// An asset of the catalog: neither a completion mark nor a run-event marker.
    pub fn is_asset(&self) -> bool {
        !self.is_completion_mark() && !self.is_run_event()
    }
}

/// The `hash` of a run-event marker.
const RUN_EVENT: &str = "run-event";

/// A `running` event of a run that its asset's record does not show: a second event of the same
/// asset in the run, or a stale one. EVENTS.md §3.3 counts the run's applied `running` events;
/// records count one per asset, so each such event leaves a marker beside them: a record that
/// is never live (never dropped, never listed as an asset) whose `last_seen_run` is the run, so
/// a sweep counts it with the run's records. Keyed by the event id: a re-delivery counts once.
pub struct RunEvent;

impl RunEvent {
    pub fn key(source: &str, event_id: &str) -> String {
        format!("{source}#run-event#{event_id}")
    }

    pub fn record(source: &str, name: &AssetName, run_id: &str, event_id: &str, at: DateTime<Utc>) -> ControlRecord {
        ControlRecord {
            asset_key: Self::key(source, event_id),
            source: source.to_owned(),
            name: name.clone(),
            hash: RUN_EVENT.to_owned(),
            last_seen_run: run_id.to_owned(),
            last_seen_at: at,
            status: RecordStatus::Dropped,
            dropped_at: None,
            content_ref: None,
            version: 1,
        }
    }
}
