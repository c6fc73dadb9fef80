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
}
