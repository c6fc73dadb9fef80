//! How the embedded store writes a control record: a tag byte and the record's fields in
//! postcard (a compact binary serde format), the asset key left out because it is the row's key.
//!
//! A steady crawl reads and rewrites every record it sees, and records that fit the block cache
//! are read without a disk read: the binary form is about half the size of the JSON the first
//! layout stored (field names, RFC 3339 timestamps, the key repeated). Rows of that first
//! layout (JSON, always starting with `{`) are still read; they are rewritten in the binary form
//! the next time their asset is seen.

use std::borrow::Cow;

use assetflow_actors::event::AssetName;
use assetflow_actors::ports::{BackendError, BackendResult};
use assetflow_actors::record::{ControlRecord, RecordStatus};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The first byte of a record in the binary layout. JSON text never starts with it.
const BINARY_TAG: u8 = 1;

const BACKEND: &str = "embedded store";

/// A point in time as whole seconds and nanoseconds since the Unix epoch: exact, and 12 bytes
/// at most in postcard against 24 or more as RFC 3339 text.
#[derive(Serialize, Deserialize)]
struct Instant(i64, u32);

impl From<DateTime<Utc>> for Instant {
    fn from(t: DateTime<Utc>) -> Self {
        Instant(t.timestamp(), t.timestamp_subsec_nanos())
    }
}

impl Instant {
    fn time(&self) -> BackendResult<DateTime<Utc>> {
        DateTime::from_timestamp(self.0, self.1).ok_or_else(|| corrupt("a timestamp out of range"))
    }
}

/// The stored fields, borrowed from the row on read.
#[derive(Serialize, Deserialize)]
struct Stored<'a> {
    #[serde(borrow)]
    source: Cow<'a, str>,
    #[serde(borrow)]
    database: Cow<'a, str>,
    #[serde(borrow)]
    schema: Cow<'a, str>,
    #[serde(borrow)]
    table: Cow<'a, str>,
    #[serde(borrow)]
    hash: Cow<'a, str>,
    #[serde(borrow)]
    last_seen_run: Cow<'a, str>,
    last_seen_at: Instant,
    live: bool,
    dropped_at: Option<Instant>,
    #[serde(borrow)]
    content_ref: Option<Cow<'a, str>>,
    version: u64,
}

fn corrupt(what: impl std::fmt::Display) -> BackendError {
    BackendError::permanent(BACKEND, "decode record", format!("a stored control record is unreadable: {what}"))
}

/// The row value of `r`.
pub fn encode(r: &ControlRecord) -> BackendResult<Vec<u8>> {
    let stored = Stored {
        source: Cow::Borrowed(&r.source),
        database: Cow::Borrowed(&r.name.database),
        schema: Cow::Borrowed(&r.name.schema),
        table: Cow::Borrowed(&r.name.table),
        hash: Cow::Borrowed(&r.hash),
        last_seen_run: Cow::Borrowed(&r.last_seen_run),
        last_seen_at: r.last_seen_at.into(),
        live: r.is_live(),
        dropped_at: r.dropped_at.map(Instant::from),
        content_ref: r.content_ref.as_deref().map(Cow::Borrowed),
        version: r.version,
    };
    postcard::to_extend(&stored, vec![BINARY_TAG]).map_err(|e| BackendError::permanent(BACKEND, "encode record", e))
}

/// The record stored under `asset_key`.
pub fn decode(asset_key: &str, bytes: &[u8]) -> BackendResult<ControlRecord> {
    match bytes.split_first() {
        Some((&BINARY_TAG, rest)) => {
            let s: Stored = postcard::from_bytes(rest).map_err(corrupt)?;
            Ok(ControlRecord {
                asset_key: asset_key.to_owned(),
                source: s.source.into_owned(),
                name: AssetName {
                    database: s.database.into_owned(),
                    schema: s.schema.into_owned(),
                    table: s.table.into_owned(),
                },
                hash: s.hash.into_owned(),
                last_seen_run: s.last_seen_run.into_owned(),
                last_seen_at: s.last_seen_at.time()?,
                status: if s.live { RecordStatus::Live } else { RecordStatus::Dropped },
                dropped_at: s.dropped_at.as_ref().map(Instant::time).transpose()?,
                content_ref: s.content_ref.map(Cow::into_owned),
                version: s.version,
            })
        }
        _ => serde_json::from_slice(bytes).map_err(corrupt),
    }
}

/// What a completion's sweep reads of a record.
pub struct SweepView<'a> {
    pub source: Cow<'a, str>,
    pub last_seen_run: Cow<'a, str>,
    pub live: bool,
}

/// The fields of a first-layout (JSON) record a sweep reads; the rest are skipped unparsed.
#[derive(Deserialize)]
struct JsonSweepFields<'a> {
    #[serde(borrow)]
    source: Cow<'a, str>,
    #[serde(borrow)]
    last_seen_run: Cow<'a, str>,
    status: RecordStatus,
}

/// The sweep's view of a stored record, borrowed from the row.
pub fn sweep_view(bytes: &[u8]) -> BackendResult<SweepView<'_>> {
    match bytes.split_first() {
        Some((&BINARY_TAG, rest)) => {
            let s: Stored = postcard::from_bytes(rest).map_err(corrupt)?;
            Ok(SweepView { source: s.source, last_seen_run: s.last_seen_run, live: s.live })
        }
        _ => {
            let j: JsonSweepFields = serde_json::from_slice(bytes).map_err(corrupt)?;
            Ok(SweepView { source: j.source, last_seen_run: j.last_seen_run, live: j.status == RecordStatus::Live })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(status: RecordStatus) -> ControlRecord {
        ControlRecord {
            asset_key: "pg/db/public/orders".into(),
            source: "pg".into(),
            name: AssetName { database: "db".into(), schema: "public".into(), table: "orders".into() },
            hash: "ab".repeat(32),
            last_seen_run: "run-7".into(),
            last_seen_at: DateTime::parse_from_rfc3339("2026-11-01T02:46:42.123456789Z").unwrap().to_utc(),
            status,
            dropped_at: (status == RecordStatus::Dropped)
                .then(|| DateTime::parse_from_rfc3339("2026-11-02T00:00:00Z").unwrap().to_utc()),
            content_ref: Some("file:///content/pg/db/public/orders.abab.json".into()),
            version: 42,
        }
    }

    #[test]
    fn a_record_reads_back_exactly_and_is_smaller_than_its_json() {
        for status in [RecordStatus::Live, RecordStatus::Dropped] {
            let r = record(status);
            let bytes = encode(&r).unwrap();
            assert_eq!(decode(&r.asset_key, &bytes).unwrap(), r);
            let view = sweep_view(&bytes).unwrap();
            assert_eq!((&*view.source, &*view.last_seen_run, view.live), ("pg", "run-7", r.is_live()));
            let json = serde_json::to_vec(&r).unwrap().len();
            assert!(bytes.len() * 2 < json, "{} bytes against {json} as JSON", bytes.len());
        }
    }

    #[test]
    fn records_of_the_first_layout_still_read() {
        let r = record(RecordStatus::Dropped);
        let json = serde_json::to_vec(&r).unwrap();
        assert_eq!(decode(&r.asset_key, &json).unwrap(), r);
        let view = sweep_view(&json).unwrap();
        assert_eq!((&*view.source, &*view.last_seen_run, view.live), ("pg", "run-7", false));
    }

    #[test]
    fn a_damaged_record_is_an_error_not_a_panic() {
        let bytes = encode(&record(RecordStatus::Live)).unwrap();
        for cut in [1, 5, bytes.len() / 2, bytes.len() - 1] {
            let err = decode("k", &bytes[..cut]).unwrap_err();
            assert!(err.to_string().contains("unreadable"), "{err}");
        }
    }
}
