//! How the embedded store lays out its rows: control records, history rows and their keys.
//! History rows are written to segment files (`history_log.rs`) in the form [`encode_history`]
//! gives; the history keys here are those of rows earlier versions kept in the database.
//!
//! Values are a tag byte and the fields in postcard (a compact binary serde format). A steady
//! crawl appends a history row per event and a run stamp per unchanged asset, and reads and
//! rewrites the records of the rest (changed assets, and those past the bound of the store's
//! index), so row size is CPU: records that fit the block cache are read without a disk read,
//! and every byte is written to the journal, flushed and compacted. The binary forms are about
//! half the size of the same rows as JSON (no field names, timestamps as two integers).
//!
//! Keys are short digests rather than the asset key itself (see [`control_key`] and
//! [`history_key`]): the memtable is a skiplist of keys compared byte by byte, and asset keys
//! share long prefixes (`source/database/schema/`), so every comparison would read far into two
//! keys kept on the heap. A key of at most 20 bytes is kept inside the skiplist node.
//!
//! The tag byte in front of each value names its layout, so a later layout can be told apart
//! from this one; a value with another tag is reported as unreadable.

use std::borrow::Cow;

use assetflow_actors::decision::{HistoryRow, Outcome};
use assetflow_actors::event::AssetName;
use assetflow_actors::ports::{BackendError, BackendResult};
use assetflow_actors::print::TextPrint;
use assetflow_actors::record::{ControlRecord, KnownRecord, RecordStatus, RecordTouch};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::index::Written;

/// The first byte of a control record: its asset key, then its fields, in postcard.
const RECORD_TAG: u8 = 2;
/// The first byte of a run stamp (see [`encode_stamp`]).
const STAMP_TAG: u8 = 3;
/// The first byte of a control record kept with the text print its hash came from: the
/// [`RECORD_TAG`] layout, then the print's 16 bytes.
const PRINTED_RECORD_TAG: u8 = 4;
/// The first byte of a run stamp kept with the print of the event that moved it: the
/// [`STAMP_TAG`] layout, then the print's 16 bytes.
const PRINTED_STAMP_TAG: u8 = 5;
/// The first byte of a history row's value: its fields in postcard.
const HISTORY_ROW_TAG: u8 = 1;
/// The first byte of a history row's key (see [`history_key`]).
const HISTORY_TAG: u8 = 0xfe;
/// The first byte of a control record's key (see [`control_key`]).
const CONTROL_TAG: u8 = 0xfd;

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

/// `value` in postcard behind the tag of its layout: `plain`, or `printed` with the print's 16
/// bytes after the fields, as [`fields`] reads them back. `room` is what the buffer starts
/// with: a whole row (grown from one byte, a ~300-byte record was reallocated six times).
fn encode_tagged(
    value: &impl Serialize,
    (plain, printed): (u8, u8),
    print: Option<TextPrint>,
    room: usize,
    op: &str,
) -> BackendResult<Vec<u8>> {
    let mut out = Vec::with_capacity(room);
    out.push(if print.is_some() { printed } else { plain });
    let mut out = postcard::to_extend(value, out).map_err(|e| BackendError::permanent(BACKEND, op, e))?;
    out.extend_from_slice(print.as_ref().map_or(&[][..], |p| &p[..]));
    Ok(out)
}

fn corrupt(what: impl std::fmt::Display) -> BackendError {
    BackendError::permanent(BACKEND, "decode record", format!("a stored control record is unreadable: {what}"))
}

fn corrupt_history(what: impl std::fmt::Display) -> BackendError {
    BackendError::permanent(BACKEND, "read history", format!("a stored history row is unreadable: {what}"))
}

/// Control keys: the tag, the first 3 bytes of the BLAKE3 digest of the source, the first 16
/// bytes of the digest of the asset key; 20 bytes. A source's records are adjacent (what a
/// completion's sweep scans, [`control_prefix`]), and no two asset keys of a store share a key
/// in practice (2^-128 a pair); a read still checks the record's own asset key.
pub fn control_key(source: &str, asset_key: &str) -> [u8; 20] {
    key_under(control_prefix(source), asset_key)
}

/// The control key of `asset_key` under its source's `prefix`.
fn key_under(prefix: [u8; 4], asset_key: &str) -> [u8; 20] {
    let mut key = [0u8; 20];
    key[..4].copy_from_slice(&prefix);
    key[4..].copy_from_slice(&blake3::hash(asset_key.as_bytes()).as_bytes()[..16]);
    key
}

/// [`control_key`] for many records in turn, each source's prefix digested once per stretch of
/// its records rather than once per record: a decisor batch is mostly one source's, and the
/// prefix's digest was half the cost of every key.
#[derive(Default)]
pub struct ControlKeys {
    last: Option<(String, [u8; 4])>,
}

impl ControlKeys {
    pub fn key(&mut self, source: &str, asset_key: &str) -> [u8; 20] {
        let prefix = match &self.last {
            Some((last, prefix)) if last == source => *prefix,
            _ => {
                let prefix = control_prefix(source);
                self.last = Some((source.to_owned(), prefix));
                prefix
            }
        };
        key_under(prefix, asset_key)
    }
}

/// The first 4 bytes of the keys of `source`'s records. Sources whose digests share 3 bytes share
/// a prefix: scanners keep the records whose own `source` matches.
pub fn control_prefix(source: &str) -> [u8; 4] {
    let mut prefix = [CONTROL_TAG; 4];
    prefix[1..].copy_from_slice(&blake3::hash(source.as_bytes()).as_bytes()[..3]);
    prefix
}

/// The row value of `r`: its asset key, then the record's fields.
pub fn encode(r: &ControlRecord) -> BackendResult<Vec<u8>> {
    encode_printed(r, None)
}

/// [`encode`], keeping `print`, the text print of the event `r`'s hash came from, after the
/// fields: a read of the record then vouches by print for an event sent as that one was, as
/// the store's index does for the records it holds, and the event is not hashed. Past the
/// index's bound (a catalog of over ~170k assets) that was most of a steady crawl's hashing.
pub fn encode_printed(r: &ControlRecord, print: Option<TextPrint>) -> BackendResult<Vec<u8>> {
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
    let tags = (RECORD_TAG, PRINTED_RECORD_TAG);
    encode_tagged(&(r.asset_key.as_str(), stored), tags, print, 384, "encode record")
}

/// A value's postcard fields and the text print after them, told apart by the tag in front:
/// `plain` carries no print, `printed` one; another tag is another layout (`what` is unreadable).
fn fields<'a>(bytes: &'a [u8], plain: u8, printed: u8, what: &str) -> BackendResult<(&'a [u8], Option<TextPrint>)> {
    match bytes.split_first() {
        Some((&tag, rest)) if tag == plain => Ok((rest, None)),
        Some((&tag, rest)) if tag == printed => {
            let cut =
                rest.len().checked_sub(size_of::<TextPrint>()).ok_or_else(|| corrupt(format!("{what} cut short")))?;
            let (fields, print) = rest.split_at(cut);
            Ok((fields, print.try_into().ok()))
        }
        Some((tag, _)) => Err(corrupt(format!("unknown {what} tag {tag}"))),
        None => Err(corrupt(format!("an empty {what}"))),
    }
}

/// A stored record's asset key and fields, borrowed from the row.
fn stored(bytes: &[u8]) -> BackendResult<(Cow<'_, str>, Stored<'_>)> {
    stored_printed(bytes).map(|(asset_key, s, _)| (asset_key, s))
}

/// [`stored`], and the print kept with the record's hash.
fn stored_printed(bytes: &[u8]) -> BackendResult<(Cow<'_, str>, Stored<'_>, Option<TextPrint>)> {
    let (fields, print) = fields(bytes, RECORD_TAG, PRINTED_RECORD_TAG, "record layout")?;
    let (asset_key, s) = postcard::from_bytes(fields).map_err(corrupt)?;
    Ok((asset_key, s, print))
}

/// A stored control record.
pub fn decode(bytes: &[u8]) -> BackendResult<ControlRecord> {
    let (asset_key, s) = stored(bytes)?;
    record_of(asset_key, s)
}

fn record_of(asset_key: Cow<'_, str>, s: Stored<'_>) -> BackendResult<ControlRecord> {
    Ok(ControlRecord {
        asset_key: asset_key.into_owned(),
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

/// What a completion's sweep reads of a record.
pub struct SweepView<'a> {
    pub asset_key: Cow<'a, str>,
    pub source: Cow<'a, str>,
    pub last_seen_run: Cow<'a, str>,
    pub last_seen_at: DateTime<Utc>,
    pub live: bool,
}

/// The sweep's view of a stored record and its run stamp, borrowed from the rows.
pub fn sweep_view<'a>(bytes: &'a [u8], stamp: Option<&'a [u8]>) -> BackendResult<SweepView<'a>> {
    let (asset_key, s) = stored(bytes)?;
    let (last_seen_run, last_seen_at) = match stamp.map(stored_stamp).transpose()? {
        Some((t, _)) if t.version > s.version => (t.last_seen_run, t.last_seen_at),
        _ => (s.last_seen_run, s.last_seen_at),
    };
    Ok(SweepView { asset_key, source: s.source, last_seen_run, last_seen_at: last_seen_at.time()?, live: s.live })
}

/// A run stamp: what an unchanged asset seen again moves of its record, kept apart from the
/// record (same key, the `stamps` keyspace) so that the record's row is not rewritten, about 40
/// bytes against 150. Of a record and its stamp the one with the higher version holds the run
/// stamp: a full write of the record supersedes an older stamp without deleting it.
#[derive(Serialize, Deserialize)]
struct StoredStamp<'a> {
    #[serde(borrow)]
    last_seen_run: Cow<'a, str>,
    last_seen_at: Instant,
    version: u64,
}

/// The row value of a touch, with its event's print: an unchanged asset's event has the
/// record's hash, so the print goes with that hash as long as the stamp is the newer.
pub fn encode_stamp(t: &RecordTouch) -> BackendResult<Vec<u8>> {
    encode_stamp_of(&t.last_seen_run, t.last_seen_at, t.version, t.print)
}

/// The row value of a run stamp from its parts.
pub fn encode_stamp_of(run: &str, at: DateTime<Utc>, version: u64, print: Option<TextPrint>) -> BackendResult<Vec<u8>> {
    let stamp = StoredStamp { last_seen_run: Cow::Borrowed(run), last_seen_at: at.into(), version };
    encode_tagged(&stamp, (STAMP_TAG, PRINTED_STAMP_TAG), print, 64, "encode run stamp")
}

fn stored_stamp(bytes: &[u8]) -> BackendResult<(StoredStamp<'_>, Option<TextPrint>)> {
    let (fields, print) = fields(bytes, STAMP_TAG, PRINTED_STAMP_TAG, "run stamp")?;
    Ok((postcard::from_bytes(fields).map_err(corrupt)?, print))
}

/// The version of a stored record with its run stamp applied: the higher of the two.
pub fn stamped_version(bytes: &[u8], stamp: Option<&[u8]>) -> BackendResult<u64> {
    let (_, s) = stored(bytes)?;
    let stamp = stamp.map(stored_stamp).transpose()?.map_or(0, |(t, _)| t.version);
    Ok(s.version.max(stamp))
}

/// A stored control record with its run stamp applied, if the stamp is the newer.
pub fn decode_stamped(bytes: &[u8], stamp: Option<&[u8]>) -> BackendResult<ControlRecord> {
    decode_printed(bytes, stamp).map(|(r, _)| r)
}

/// [`decode_stamped`], and the text print that goes with the record's hash, if the store kept
/// one ([`encode_printed`]): the newer stamp's, else the record's own (a stamp moves no hash,
/// so the record's print holds under a newer stamp; an older stamp's may be of an older hash).
pub fn decode_printed(bytes: &[u8], stamp: Option<&[u8]>) -> BackendResult<(ControlRecord, Option<TextPrint>)> {
    let (asset_key, s, mut print) = stored_printed(bytes)?;
    let mut r = record_of(asset_key, s)?;
    if let Some((t, stamp_print)) = stamp.map(stored_stamp).transpose()?
        && t.version > r.version
    {
        r.last_seen_run = t.last_seen_run.into_owned();
        r.last_seen_at = t.last_seen_at.time()?;
        r.version = t.version;
        print = stamp_print.or(print);
    }
    Ok((r, print))
}

/// [`known`] of a stored record and its stamp, read in place (the index is filled from every
/// record at open, so this path copies nothing), with the record's source. `run_brief` gives
/// a run's brief: callers cache it, since a store holds few runs and many records.
pub fn known_stored<'a>(
    bytes: &'a [u8],
    stamp: Option<&[u8]>,
    run_brief: &mut impl FnMut(&str) -> u64,
) -> BackendResult<(Cow<'a, str>, Written)> {
    let (asset_key, s, print) = stored_printed(bytes)?;
    if !s.live || asset_key == s.source {
        return Ok((s.source, Written::NotLive));
    }
    let Some(hash) = KnownRecord::hash_bytes(&s.hash) else { return Ok((s.source, Written::Unknown)) };
    let (run, at, version, print) = match stamp.map(stored_stamp).transpose()? {
        Some((t, stamp_print)) if t.version > s.version => {
            (t.last_seen_run, t.last_seen_at, t.version, stamp_print.or(print))
        }
        _ => (s.last_seen_run, s.last_seen_at, s.version, print),
    };
    let known = KnownRecord { hash, print, run: run_brief(&run), last_seen_at: at.time()?, version };
    Ok((s.source, Written::Live(known)))
}

/// What the store's index keeps of a record written with the text print `print`: a live
/// asset's brief; `Unknown` for a live asset whose hash is not one assetflow writes (64
/// lowercase hex digits), which the index cannot brief.
pub fn known(r: &ControlRecord, print: Option<TextPrint>) -> Written {
    // Run-event markers and completion marks are stored as dropped, so `is_live` leaves them
    // out; `is_asset` would also format a string on every write to tell a marker.
    if !r.is_live() || r.is_completion_mark() {
        return Written::NotLive;
    }
    let Some(hash) = KnownRecord::hash_bytes(&r.hash) else { return Written::Unknown };
    Written::Live(KnownRecord {
        hash,
        print,
        run: KnownRecord::run_brief(&r.last_seen_run),
        last_seen_at: r.last_seen_at,
        version: r.version,
    })
}

/// The first 8 bytes of the BLAKE3 digest of an asset key (of `""` for rows of no asset): what
/// history rows are filed under, in the keys below and in the segments' indexes. Two asset keys
/// may share it: readers keep the rows whose own `asset_key` matches.
pub fn history_digest(asset_key: &str) -> [u8; 8] {
    let mut d = [0u8; 8];
    d.copy_from_slice(&blake3::hash(asset_key.as_bytes()).as_bytes()[..8]);
    d
}

/// History keys (of the rows earlier versions wrote to the database): the tag, the asset's
/// [`history_digest`], the row's sequence number big-endian; 17 bytes, so one asset's rows are
/// adjacent and in order. Short keys with a random prefix keep the memtable's comparisons
/// cheap (keyed by the asset key itself they were a tenth of a steady crawl's CPU). The tag
/// sorts below the store's 0xff counter keys.
pub fn history_key(asset_key: &str, seq: u64) -> [u8; 17] {
    let mut key = [0u8; 17];
    key[0] = HISTORY_TAG;
    key[1..9].copy_from_slice(&history_digest(asset_key));
    key[9..].copy_from_slice(&seq.to_be_bytes());
    key
}

/// The key range holding the asset's rows, oldest first.
pub fn history_range(asset_key: &str) -> std::ops::RangeInclusive<[u8; 17]> {
    history_key(asset_key, 0)..=history_key(asset_key, u64::MAX)
}

/// The stored fields of a history row. The outcome is kept as its name, so reordering the
/// `Outcome` enum can never change what a stored row means.
#[derive(Serialize, Deserialize)]
struct StoredHistory<'a> {
    #[serde(borrow)]
    asset_key: Option<Cow<'a, str>>,
    #[serde(borrow)]
    source: Option<Cow<'a, str>>,
    #[serde(borrow)]
    event_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    run_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    outcome: Cow<'a, str>,
    #[serde(borrow)]
    hash: Option<Cow<'a, str>>,
    #[serde(borrow)]
    decision_id: Cow<'a, str>,
    at: Instant,
}

fn borrowed(s: &Option<String>) -> Option<Cow<'_, str>> {
    s.as_deref().map(Cow::Borrowed)
}

fn owned(s: Option<Cow<'_, str>>) -> Option<String> {
    s.map(Cow::into_owned)
}

/// The row value of `row`.
pub fn encode_history(row: &HistoryRow) -> BackendResult<Vec<u8>> {
    let mut out = Vec::with_capacity(384);
    encode_history_into(row, &mut out)?;
    Ok(out)
}

/// [`encode_history`] appended to `out` (a history segment's batch of frames).
pub fn encode_history_into(row: &HistoryRow, out: &mut Vec<u8>) -> BackendResult<()> {
    let stored = StoredHistory {
        asset_key: borrowed(&row.asset_key),
        source: borrowed(&row.source),
        event_id: borrowed(&row.event_id),
        run_id: borrowed(&row.run_id),
        outcome: Cow::Borrowed(row.outcome.as_str()),
        hash: borrowed(&row.hash),
        decision_id: Cow::Borrowed(&row.decision_id),
        at: row.at.into(),
    };
    out.push(HISTORY_ROW_TAG);
    // postcard extends a collection it owns, so the buffer is lent to it and handed back.
    *out = postcard::to_extend(&stored, std::mem::take(out))
        .map_err(|e| BackendError::permanent(BACKEND, "append history", e))?;
    Ok(())
}

/// A stored history row.
pub fn decode_history(bytes: &[u8]) -> BackendResult<HistoryRow> {
    match bytes.split_first() {
        Some((&HISTORY_ROW_TAG, rest)) => {
            let s: StoredHistory = postcard::from_bytes(rest).map_err(corrupt_history)?;
            let outcome = Outcome::ALL
                .into_iter()
                .find(|o| o.as_str() == s.outcome)
                .ok_or_else(|| corrupt_history(format!("unknown outcome {:?}", s.outcome)))?;
            Ok(HistoryRow {
                asset_key: owned(s.asset_key),
                source: owned(s.source),
                event_id: owned(s.event_id),
                run_id: owned(s.run_id),
                outcome,
                hash: owned(s.hash),
                decision_id: s.decision_id.into_owned(),
                at: s.at.time().map_err(|_| corrupt_history("a timestamp out of range"))?,
            })
        }
        Some((tag, _)) => Err(corrupt_history(format!("unknown layout tag {tag}"))),
        None => Err(corrupt_history("an empty value")),
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
            let key = control_key(&r.source, &r.asset_key);
            let bytes = encode(&r).unwrap();
            assert_eq!(key[..4], control_prefix(&r.source));
            assert_eq!(decode(&bytes).unwrap(), r);
            let view = sweep_view(&bytes, None).unwrap();
            assert_eq!(
                (&*view.asset_key, &*view.source, &*view.last_seen_run, view.live),
                ("pg/db/public/orders", "pg", "run-7", r.is_live())
            );
            let json = serde_json::to_vec(&r).unwrap().len();
            assert!(bytes.len() * 2 < json, "{} bytes against {json} as JSON", bytes.len());
        }
    }

    #[test]
    fn the_index_reads_in_place_what_a_decoded_record_gives() {
        let live = record(RecordStatus::Live);
        let bytes = encode(&live).unwrap();
        let touch = RecordTouch {
            source: live.source.clone().into(),
            asset_key: live.asset_key.clone().into(),
            last_seen_run: "run-8".into(),
            last_seen_at: live.last_seen_at + chrono::Duration::days(1),
            version: 43,
            indexed: false,
            print: None,
        };
        let stamp = encode_stamp(&touch).unwrap();
        let mut brief = KnownRecord::run_brief;
        for stamp in [None, Some(&stamp[..])] {
            let want = known(&decode_stamped(&bytes, stamp).unwrap(), None);
            assert_eq!(known_stored(&bytes, stamp, &mut brief).unwrap(), (Cow::Borrowed("pg"), want));
        }
        let Written::Live(touched) = known_stored(&bytes, Some(&stamp), &mut brief).unwrap().1 else { panic!() };
        assert_eq!(touched.version, 43);
        let dropped = encode(&record(RecordStatus::Dropped)).unwrap();
        assert_eq!(known_stored(&dropped, None, &mut brief).unwrap().1, Written::NotLive);
        let odd = ControlRecord { hash: "not hex".into(), ..live };
        assert_eq!(known_stored(&encode(&odd).unwrap(), None, &mut brief).unwrap().1, Written::Unknown);
    }

    #[test]
    fn a_record_and_its_stamp_keep_the_print_of_the_hash_and_older_rows_still_read() {
        let r = record(RecordStatus::Live);
        let plain = encode(&r).unwrap();
        let printed = encode_printed(&r, Some([3; 16])).unwrap();
        assert_eq!(printed.len(), plain.len() + 16);
        assert_eq!(decode(&printed).unwrap(), r);
        assert_eq!(decode_printed(&plain, None).unwrap(), (r.clone(), None));
        assert_eq!(decode_printed(&printed, None).unwrap(), (r.clone(), Some([3; 16])));

        let stamp = |version, print| encode_stamp_of("run-8", r.last_seen_at, version, print).unwrap();
        let print_under = |bytes: &[u8], stamp: &[u8]| decode_printed(bytes, Some(stamp)).unwrap().1;
        assert_eq!(print_under(&printed, &stamp(43, Some([4; 16]))), Some([4; 16]), "a newer stamp's");
        assert_eq!(print_under(&printed, &stamp(43, None)), Some([3; 16]), "a touch moves no hash");
        assert_eq!(print_under(&plain, &stamp(41, Some([4; 16]))), None, "an older stamp's is of an older hash");
        let (stamped, _) = decode_printed(&plain, Some(&stamp(43, Some([4; 16])))).unwrap();
        assert_eq!(stamped, decode_stamped(&plain, Some(&stamp(43, None))).unwrap());
        assert_eq!(stamped.version, 43);

        // What the index takes at open.
        let mut brief = KnownRecord::run_brief;
        let Written::Live(k) = known_stored(&printed, Some(&stamp(43, Some([4; 16]))), &mut brief).unwrap().1 else {
            panic!("live")
        };
        assert_eq!((k.print, k.version), (Some([4; 16]), 43));
        let Written::Live(k) = known_stored(&printed, Some(&stamp(41, Some([4; 16]))), &mut brief).unwrap().1 else {
            panic!("live")
        };
        assert_eq!((k.print, k.version), (Some([3; 16]), 42));

        for cut in [1, 16, printed.len() - 16, printed.len() - 1] {
            let err = decode(&printed[..cut]).unwrap_err();
            assert!(err.to_string().contains("unreadable"), "{err}");
        }
        let stamp = stamp(43, Some([4; 16]));
        for cut in [1, stamp.len() - 1] {
            let err = decode_stamped(&plain, Some(&stamp[..cut])).unwrap_err();
            assert!(err.to_string().contains("unreadable"), "{err}");
        }
    }

    #[test]
    fn control_keys_are_short_and_grouped_by_source() {
        let a = control_key("pg", "pg/db/s/a");
        assert_eq!(a.len(), 20, "short enough to live inside a skiplist node");
        assert_ne!(a, control_key("pg", "pg/db/s/b"));
        assert_eq!(a[..4], control_prefix("pg"));
        assert_eq!(control_key("pg", "pg/db/s/b")[..4], control_prefix("pg"));
        assert_ne!(control_prefix("pg"), control_prefix("mysql"));
        // Keys made in turn are the same keys, whatever source came before.
        let mut keys = ControlKeys::default();
        for (source, asset_key) in [("pg", "pg/db/s/a"), ("pg", "pg/db/s/b"), ("mysql", "m/a"), ("pg", "pg/db/s/a")] {
            assert_eq!(keys.key(source, asset_key), control_key(source, asset_key));
        }
    }

    fn history_row(outcome: Outcome, asset_key: Option<&str>) -> HistoryRow {
        HistoryRow {
            asset_key: asset_key.map(str::to_owned),
            source: asset_key.map(|_| "pg".to_owned()),
            event_id: Some("e-1".into()),
            run_id: None,
            outcome,
            hash: Some("cd".repeat(32)),
            decision_id: "0123456789abcdef0123456789abcdef".into(),
            at: DateTime::parse_from_rfc3339("2026-11-01T02:46:42.123Z").unwrap().to_utc(),
        }
    }

    #[test]
    fn history_rows_read_back_exactly() {
        for outcome in Outcome::ALL {
            for key in [Some("pg/db/public/orders"), None] {
                let row = history_row(outcome, key);
                let bytes = encode_history(&row).unwrap();
                assert_eq!(decode_history(&bytes).unwrap(), row);
                let json = serde_json::to_vec(&row).unwrap();
                assert!(bytes.len() * 3 < json.len() * 2, "{} bytes against {} as JSON", bytes.len(), json.len());
            }
        }
    }

    #[test]
    fn an_asset_keeps_its_history_keys_apart_from_other_assets() {
        let (a, b) = (history_key("pg/db/s/a", 7), history_key("pg/db/s/b", 7));
        assert_eq!(a.len(), 17);
        assert_ne!(a[..9], b[..9]);
        assert!(history_key("pg/db/s/a", 8) > a, "rows of one asset sort by sequence");
        let range = history_range("pg/db/s/a");
        assert!(range.contains(&a) && !range.contains(&b));
    }

    #[test]
    fn a_damaged_record_is_an_error_not_a_panic() {
        let bytes = encode(&record(RecordStatus::Live)).unwrap();
        for other in [&b""[..], b"{\"asset_key\":\"x\"}", &[9, 1, 2]] {
            let err = decode(other).unwrap_err();
            assert!(err.to_string().contains("unreadable"), "{err}");
        }
        for cut in [1, 5, bytes.len() / 2, bytes.len() - 1] {
            let err = decode(&bytes[..cut]).unwrap_err();
            assert!(err.to_string().contains("unreadable"), "{err}");
        }
        let bytes = encode_history(&history_row(Outcome::Created, Some("k"))).unwrap();
        for cut in [1, 5, bytes.len() / 2, bytes.len() - 1] {
            let err = decode_history(&bytes[..cut]).unwrap_err();
            assert!(err.to_string().contains("unreadable"), "{err}");
        }
    }
}
