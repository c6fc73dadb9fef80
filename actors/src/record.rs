//! The per-asset control record: what the control table remembers about each asset key.

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::event::AssetName;
use crate::print::TextPrint;

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

    /// Whether this is the run-event marker stored at `key`: what a store checks before it
    /// removes a record ([`crate::ports::ControlStore::remove_markers`]), so that nothing but a
    /// marker is ever removed.
    pub fn is_run_event_at(&self, key: &crate::ports::RecordKey) -> bool {
        self.source == key.source && self.asset_key == key.asset_key && self.is_run_event()
    }

    /// Whether this is an event marker ([`RunEvent::event_key_prefix`]), which a completion's
    /// sweep spends ([`crate::rules::SweepPlan::spent_markers`]).
    pub fn is_event_marker(&self) -> bool {
        self.hash == RUN_EVENT && self.asset_key.starts_with(&RunEvent::event_key_prefix(&self.source))
    }

    /// An asset of the catalog: neither a completion mark nor a run-event marker.
    pub fn is_asset(&self) -> bool {
        !self.is_completion_mark() && !self.is_run_event()
    }
}

/// A live record as a store that indexes its records in memory knows it
/// ([`crate::ports::ControlStore::known`]): enough to decide an event of the asset whose content
/// did not change, without reading the record. The run is kept in brief; a brief that matches
/// only says "maybe", so callers take the fast path only where the brief proves it safe (a
/// different run).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KnownRecord {
    /// The record's content hash as bytes ([`KnownRecord::hash_bytes`]).
    pub hash: [u8; 32],
    /// The text print ([`crate::print`]) of the text the hash was taken from, where the store
    /// learned it with the write or a later touch: an event with this print has this hash,
    /// and is not hashed again.
    pub print: Option<TextPrint>,
    /// [`KnownRecord::run_brief`] of its `last_seen_run`.
    pub run: u64,
    pub last_seen_at: DateTime<Utc>,
    pub version: u64,
}

impl KnownRecord {
    /// The bytes of a content hash, as [`crate::hash::content_hash`] writes it (64 lowercase
    /// hex digits); `None` for any other hash, which [`KnownRecord::hash_hex`] could not give
    /// back as it was.
    pub fn hash_bytes(hash: &str) -> Option<[u8; 32]> {
        // BLAKE3 reads either case; only lowercase comes back as it was.
        if hash.bytes().any(|b| b.is_ascii_uppercase()) {
            return None;
        }
        blake3::Hash::from_hex(hash).ok().map(|h| *h.as_bytes())
    }

    /// The record's content hash as text.
    pub fn hash_hex(&self) -> String {
        blake3::Hash::from_bytes(self.hash).to_hex().to_string()
    }

    /// Eight bytes of the BLAKE3 digest of a run id: different briefs, different runs; the
    /// same brief, the same run but for a chance of 2^-64 a pair, which a store that sweeps from
    /// its index takes as it takes 2^-128 for a hash.
    pub fn run_brief(run_id: &str) -> u64 {
        let digest = blake3::hash(run_id.as_bytes());
        let mut b = [0u8; 8];
        b.copy_from_slice(&digest.as_bytes()[..8]);
        u64::from_le_bytes(b)
    }

    /// Whether an event of the run with brief `run` at `at` with content `hash` is, against this record, an
    /// unchanged asset seen again: the same content, no newer news, and certainly not already
    /// seen in this run (a run seen again goes the slow way, which counts run events, §3.3).
    pub fn vouches_unchanged(&self, hash: &str, run: u64, at: DateTime<Utc>) -> bool {
        Self::hash_bytes(hash) == Some(self.hash) && self.is_news_of_another_run(run, at)
    }

    /// [`vouches_unchanged`](Self::vouches_unchanged) by the event's text print instead of its
    /// hash, which then need not be taken: the hash is this record's.
    pub fn vouches_print(&self, print: &TextPrint, run: u64, at: DateTime<Utc>) -> bool {
        self.print_matches(print) && self.is_news_of_another_run(run, at)
    }

    /// Whether `print` is the print of the text this record's hash came from, so that an event
    /// with that print has this record's hash, news or not.
    pub fn print_matches(&self, print: &TextPrint) -> bool {
        self.print.as_ref() == Some(print)
    }

    fn is_news_of_another_run(&self, run: u64, at: DateTime<Utc>) -> bool {
        self.last_seen_at <= at && self.run != run
    }
}

/// An unchanged asset seen again: only its run stamp moves (`last_seen_run`, `last_seen_at`,
/// and the version, one past the known one).
///
/// The strings borrow from the batch's events: a steady crawl makes a touch of nearly every
/// event, and each copied three strings the event already holds.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordTouch<'a> {
    pub source: Cow<'a, str>,
    pub asset_key: Cow<'a, str>,
    pub last_seen_run: Cow<'a, str>,
    pub last_seen_at: DateTime<Utc>,
    pub version: u64,
    /// The store's [`known`](crate::ports::ControlStore::known) vouched for the record in this
    /// batch (it was not read): a store that indexes its records still holds this one, since
    /// the key's one shard has not written it since, and need not look it up again.
    pub indexed: bool,
    /// The text print of the event, whose content hash is the record's: what a store that
    /// indexes its records keeps, so the next event sent as this one was is not hashed.
    pub print: Option<TextPrint>,
}

/// The `hash` of a run-event marker.
const RUN_EVENT: &str = "run-event";

/// A `running` event of a run that its asset's record does not show. EVENTS.md §3.3 counts the
/// run's applied `running` events; records count one per asset (the event each shows), so each
/// applied event no record shows leaves a marker beside them: a record that is never live
/// (never dropped, never listed as an asset) whose `last_seen_run` is the run, so a sweep
/// counts it with the run's records. Two kinds:
///
/// - an *event marker*, for a stale event, or the event a record showed before a second event
///   of the asset in the same run replaced it: keyed by what the event was (run, asset, time,
///   content), not by its id, so an event delivered again finds its marker and counts once;
/// - the asset's *moved-on marker*, for the event a record showed before the next run moved it
///   on while that event's run may still complete ([`crate::open_runs`]: its completion read
///   late, or dead-lettered and redriven): one per asset, overwritten by the next such move, so
///   a source that stops completing its runs keeps one per asset, not one per asset per run.
pub struct RunEvent;

impl RunEvent {
    /// The `hash` every marker has (no content hash is ever this text).
    pub const HASH: &'static str = RUN_EVENT;

    /// The control-table key of the event marker of the event of `run_id` that saw `asset_key`
    /// with content `hash` at `at`.
    pub fn key(source: &str, run_id: &str, asset_key: &str, at: DateTime<Utc>, hash: &str) -> String {
        let mut h = blake3::Hasher::new();
        // Each part with its length: no two different events run into one text.
        for part in [run_id, asset_key, hash] {
            h.update(&(part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
        h.update(&at.timestamp().to_le_bytes());
        h.update(&at.timestamp_subsec_nanos().to_le_bytes());
        let digest = h.finalize().to_hex();
        format!("{}{}", Self::event_key_prefix(source), &digest[..32])
    }

    /// How the keys of `source`'s event markers begin (not its moved-on markers'): a sweep
    /// tells them by it ([`crate::rules::SweepPlan::spent_markers`]).
    pub fn event_key_prefix(source: &str) -> String {
        format!("{source}#run-event#")
    }

    /// The control-table key of the moved-on marker of `asset_key`: of a fixed length, so that
    /// a store that bounds its keys (DynamoDB's sort key, 1 KiB) takes it wherever it takes
    /// the asset's own.
    pub fn moved_key(source: &str, asset_key: &str) -> String {
        let digest = blake3::hash(asset_key.as_bytes()).to_hex();
        format!("{source}#moved#{}", &digest[..32])
    }

    /// The event marker of the event of `run_id` that saw the asset `asset_key` (named `name`)
    /// with content `hash` at `at`.
    pub fn record(
        source: &str,
        name: &AssetName,
        run_id: &str,
        asset_key: &str,
        at: DateTime<Utc>,
        hash: &str,
    ) -> ControlRecord {
        Self::marker(Self::key(source, run_id, asset_key, at, hash), source, name, run_id, at, hash)
    }

    /// The moved-on marker of `asset_key` for its record as it was before the move.
    pub fn moved(before: &ControlRecord) -> ControlRecord {
        let key = Self::moved_key(&before.source, &before.asset_key);
        Self::marker(key, &before.source, &before.name, &before.last_seen_run, before.last_seen_at, &before.hash)
    }

    /// Whether two markers stand for the same event: same run, time and content.
    pub fn same_event(a: &ControlRecord, b: &ControlRecord) -> bool {
        a.last_seen_run == b.last_seen_run && a.last_seen_at == b.last_seen_at && a.content_ref == b.content_ref
    }

    /// A record of the marker kind under `key`: never live, counted for `run_id` (for none if
    /// it is empty), keeping `hash` where [`same_event`](Self::same_event) compares it.
    pub(crate) fn marker(
        key: String,
        source: &str,
        name: &AssetName,
        run_id: &str,
        at: DateTime<Utc>,
        hash: &str,
    ) -> ControlRecord {
        ControlRecord {
            asset_key: key,
            source: source.to_owned(),
            name: name.clone(),
            hash: RUN_EVENT.to_owned(),
            last_seen_run: run_id.to_owned(),
            last_seen_at: at,
            status: RecordStatus::Dropped,
            dropped_at: None,
            // The content the event saw: a marker is never an asset, and this field of it is
            // what tells which event it stands for (`same_event`).
            content_ref: Some(hash.to_owned()),
            version: 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_content_hash_is_kept_as_bytes_and_given_back_as_it_was() {
        let hash = crate::hash::content_hash(
            &serde_json::value::RawValue::from_string(r#"{"a":1}"#.into()).unwrap(),
            &crate::hash::HashIgnore::default(),
        );
        let known = KnownRecord {
            hash: KnownRecord::hash_bytes(&hash).unwrap(),
            print: None,
            run: 0,
            last_seen_at: DateTime::<Utc>::MIN_UTC,
            version: 1,
        };
        assert_eq!(known.hash_hex(), hash);
        // Any other text could not be given back as it was: not briefed.
        for other in [hash.to_uppercase(), hash[..62].to_owned(), format!("{}g", &hash[..63]), "h".into()] {
            assert_eq!(KnownRecord::hash_bytes(&other), None, "{other}");
        }
    }
}
