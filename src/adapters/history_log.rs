//! The embedded store's history: rows appended to segment files, one write and one `fdatasync`
//! per batch, and read back per asset, newest first, through each closed segment's index.
//!
//! Why not rows in the LSM store beside the control records: history is written once per event
//! and read almost never (`assetflow history`), yet as LSM rows keyed for per-asset reads every
//! row was a journal entry, a memtable insert, a flush and then compactions rewriting it among
//! rows of other assets. On a steady crawl that was about a sixth of the CPU, a journal the next
//! start replays, and 8 MiB of memtable (benches/analysis.md). Here a batch is one sequential
//! write, and the per-asset order is built once per segment, when it closes.
//!
//! Layout, in `{state_dir}/history/`:
//! - `{n:010}.hlog`, a segment: frames, each `len` (u32 LE: the bytes after the header), `crc`
//!   (u32 LE, CRC-32 of those bytes), then the asset key's 8-byte digest
//!   (`layout::history_digest`) and the row as `layout::encode_history` writes it.
//!   Segments are numbered in the order they were started; a process only ever appends to a
//!   segment it started, and starts a new one past [`SEGMENT_BYTES`], so a frame torn by a crash
//!   is the last of its segment, and readers stop at the first frame that does not check.
//! - `{n:010}.hidx`, the index of a closed segment: [`INDEX_MAGIC`], the entry count (u64 LE),
//!   then per row its digest and frame offset (u64 LE), sorted, so one asset's rows are found by
//!   a binary search. It is written when the segment closes (full, or at a clean stop) and, for
//!   a segment a crash left without one, by the next open. It can always be built again from the
//!   segment; a segment without one is read by scanning it.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use assetflow_actors::decision::HistoryRow;
use assetflow_actors::ports::{BackendError, BackendResult};

use super::state::layout::{self, history_digest};

/// A segment past this size is closed (indexed) and the next batch starts a new one. The
/// segment being written keeps its index in memory until it closes (16 bytes a row, ~3 MiB
/// here), and a read visits every segment, so this trades memory against read cost.
pub const SEGMENT_BYTES: u64 = 32 << 20;
/// The first bytes of an index file.
pub const INDEX_MAGIC: &[u8; 8] = b"AFHIDX01";
const FRAME_HEADER: usize = 8;
/// Bytes of an index entry: digest and offset.
const ENTRY: u64 = 16;
const BACKEND: &str = "embedded store (history)";

/// The history segments of one store. The store's lock (fjall's, on `{state_dir}/state`) keeps
/// other processes out, so segment numbers and files are this process's alone.
pub struct HistoryLog {
    dir: PathBuf,
    segment_bytes: u64,
    writer: Mutex<Writer>,
    /// The buffer the last batch's frames were in, emptied, for the next ([`Self::buffer`]).
    spare: Mutex<Vec<u8>>,
}

/// The largest frames buffer kept for the next batch; a larger one is let go.
const SPARE_BYTES: usize = 1 << 20;

struct Writer {
    /// The number the next segment takes.
    next: u64,
    /// The segment appends go to; `None` until the first append (a store opened to be read
    /// starts none) and after one closes.
    current: Option<Segment>,
}

struct Segment {
    n: u64,
    file: File,
    bytes: u64,
    /// Each durable frame's digest and offset, in order: the segment's index once sorted, kept
    /// as the frames are appended (16 bytes a row, what closing would read back anyway), so
    /// that closing writes it without reading the segment back and checking every frame, which
    /// was a sixth of a clean stop after a 100k-event crawl (benches/analysis.md).
    index: Vec<([u8; 8], u64)>,
}

fn fail(op: &str, e: impl std::fmt::Display) -> BackendError {
    BackendError::transient(BACKEND, op, e)
}

fn corrupt(path: &Path, what: impl std::fmt::Display) -> BackendError {
    BackendError::permanent(BACKEND, "read history", format!("{}: {what}", path.display()))
}

impl HistoryLog {
    /// Opens `{dir}` (creating it), indexing any segment a crash left without an index.
    pub fn open(dir: &Path) -> Result<HistoryLog, String> {
        Self::open_with(dir, SEGMENT_BYTES)
    }

    /// [`HistoryLog::open`] with segments closed at `segment_bytes` (tests use small ones).
    pub fn open_with(dir: &Path, segment_bytes: u64) -> Result<HistoryLog, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create the history folder {}: {e}", dir.display()))?;
        let segments = segments(dir).map_err(|e| e.to_string())?;
        let next = segments.last().map_or(1, |n| n + 1);
        let log = HistoryLog {
            dir: dir.to_owned(),
            segment_bytes,
            writer: Mutex::new(Writer { next, current: None }),
            spare: Mutex::default(),
        };
        for &n in &segments {
            if !log.index_path(n).exists() {
                tracing::info!(segment = %log.segment_path(n).display(), "embedded store: indexing a history segment a crash left open");
                log.close(n, None).map_err(|e| e.to_string())?;
            }
        }
        Ok(log)
    }

    fn segment_path(&self, n: u64) -> PathBuf {
        segment_file(&self.dir, n, "hlog")
    }

    fn index_path(&self, n: u64) -> PathBuf {
        segment_file(&self.dir, n, "hidx")
    }

    /// Appends the rows as one write and makes them durable before returning.
    pub fn append(&self, rows: &[HistoryRow]) -> BackendResult<()> {
        let mut buf = self.buffer();
        frames_into(rows, &mut buf)?;
        self.append_frames(buf)
    }

    /// An empty buffer for a batch's frames ([`frames_into`]), the last batch's where it is
    /// back: a batch's frames (~100 KB for 512 rows) in a fresh allocation each time went back
    /// to the system and were faulted in again.
    pub fn buffer(&self) -> Vec<u8> {
        std::mem::take(&mut *self.spare.lock().unwrap_or_else(|poisoned| poisoned.into_inner()))
    }

    /// Appends a batch's frames ([`frames_into`]) as one write and makes them durable before
    /// returning; keeps their buffer for the next batch.
    pub fn append_frames(&self, mut frames: Vec<u8>) -> BackendResult<()> {
        let appended = self.append_frames_in(&frames);
        if frames.capacity() <= SPARE_BYTES {
            frames.clear();
            *self.spare.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = frames;
        }
        appended
    }

    fn append_frames_in(&self, frames: &[u8]) -> BackendResult<()> {
        if frames.is_empty() {
            return Ok(());
        }
        let mut w = self.writer.lock().map_err(|e| fail("append history", e))?;
        let mut segment = match w.current.take() {
            Some(segment) => segment,
            None => {
                let n = w.next;
                w.next = n + 1;
                self.start(n)?
            }
        };
        let end = segment.bytes;
        let written = segment.file.write_all(frames).and_then(|()| segment.file.sync_data());
        if let Err(e) = written {
            // A part-written batch must not be followed by the next one in this segment, where
            // readers would stop at it: cut it off, or leave the segment for the next append to
            // start another (the next open indexes what it holds).
            if segment.file.set_len(end).is_ok() {
                w.current = Some(segment);
            }
            return Err(fail("append history", e));
        }
        index_frames(frames, end, &mut segment.index);
        segment.bytes += frames.len() as u64;
        if segment.bytes < self.segment_bytes {
            w.current = Some(segment);
        } else if let Err(e) = self.close(segment.n, Some(segment.index)) {
            // The rows are durable; without its index the segment is scanned when read, until
            // the next open indexes it.
            tracing::warn!(error = %e, "embedded store: could not index a full history segment");
        }
        Ok(())
    }

    /// Creates segment `n`, its name made durable (the folder synced) before any row is in it.
    fn start(&self, n: u64) -> BackendResult<Segment> {
        let path = self.segment_path(n);
        let file = OpenOptions::new().create_new(true).write(true).open(&path).map_err(|e| fail("start segment", e))?;
        File::open(&self.dir).and_then(|d| d.sync_all()).map_err(|e| fail("start segment", e))?;
        Ok(Segment { n, file, bytes: 0, index: Vec::new() })
    }

    /// Closes the segment appends go to, if any, writing its index: at a clean stop, so the
    /// next start finds every segment indexed.
    pub fn seal(&self) -> BackendResult<()> {
        let mut w = self.writer.lock().map_err(|e| fail("close segment", e))?;
        match w.current.take() {
            Some(segment) => self.close(segment.n, Some(segment.index)),
            None => Ok(()),
        }
    }

    /// Writes segment `n`'s index from `entries`, the digest and offset of each of its frames
    /// as this process appended them, or, for a segment a crash left open (`None`), from a scan
    /// of its frames: to a temporary name, synced, then renamed, so an index file is either whole
    /// or absent.
    fn close(&self, n: u64, entries: Option<Vec<([u8; 8], u64)>>) -> BackendResult<()> {
        let mut entries = match entries {
            Some(entries) => entries,
            None => {
                let mut entries = Vec::new();
                scan(&self.segment_path(n), |offset, digest| entries.push((digest, offset)))?;
                entries
            }
        };
        entries.sort_unstable();
        let tmp = segment_file(&self.dir, n, "hidx.tmp");
        let write = || -> std::io::Result<()> {
            let mut out = BufWriter::new(File::create(&tmp)?);
            out.write_all(INDEX_MAGIC)?;
            out.write_all(&(entries.len() as u64).to_le_bytes())?;
            for (digest, offset) in &entries {
                out.write_all(digest)?;
                out.write_all(&offset.to_le_bytes())?;
            }
            out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
            std::fs::rename(&tmp, self.index_path(n))
        };
        write().map_err(|e| fail("index segment", e))
    }

    /// The asset's newest `limit` rows, newest first: segments newest first, each through its
    /// index (or scanned, the one being written and any not indexed yet).
    pub fn read(&self, asset_key: &str, limit: usize) -> BackendResult<Vec<HistoryRow>> {
        let wanted = history_digest(asset_key);
        let mut out = Vec::new();
        for n in segments(&self.dir)?.into_iter().rev() {
            if out.len() >= limit {
                break;
            }
            let path = self.segment_path(n);
            let offsets = match Index::open(&self.index_path(n))? {
                Some(index) => index.offsets(wanted)?,
                None => {
                    let mut offsets = Vec::new();
                    scan(&path, |offset, digest| {
                        if digest == wanted {
                            offsets.push(offset);
                        }
                    })?;
                    offsets
                }
            };
            if offsets.is_empty() {
                continue;
            }
            let file = File::open(&path).map_err(|e| fail("read history", e))?;
            let size = file.metadata().map_err(|e| fail("read history", e))?.len();
            for offset in offsets.into_iter().rev() {
                if out.len() >= limit {
                    break;
                }
                let row = layout::decode_history(&read_frame(&file, size, &path, offset)?)?;
                if row.asset_key.as_deref().unwrap_or("") == asset_key {
                    out.push(row);
                }
            }
        }
        Ok(out)
    }
}

/// Segment `n`'s file in `dir` with extension `ext` (`hlog`, `hidx`).
fn segment_file(dir: &Path, n: u64, ext: &str) -> PathBuf {
    dir.join(format!("{n:010}.{ext}"))
}

/// The segment numbers in `dir`, oldest first.
fn segments(dir: &Path) -> BackendResult<Vec<u64>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| fail("list segments", e))? {
        let name = entry.map_err(|e| fail("list segments", e))?.file_name();
        let name = name.to_string_lossy();
        if let Some(n) = name.strip_suffix(".hlog").and_then(|n| n.parse::<u64>().ok()) {
            out.push(n);
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// A batch's frames in a buffer of their own (tests; the store reuses one, [`frames_into`]).
#[cfg(test)]
pub fn frames(rows: &[HistoryRow]) -> BackendResult<Vec<u8>> {
    let mut out = Vec::new();
    frames_into(rows, &mut out)?;
    Ok(out)
}

/// A batch's frames, back to back, appended to `out`.
pub fn frames_into(rows: &[HistoryRow], out: &mut Vec<u8>) -> BackendResult<()> {
    out.reserve(rows.len() * 192);
    for row in rows {
        let start = out.len();
        out.extend_from_slice(&[0; FRAME_HEADER]);
        out.extend_from_slice(&history_digest(row.asset_key.as_deref().unwrap_or("")));
        layout::encode_history_into(row, out)?;
        let body = &out[start + FRAME_HEADER..];
        let len = u32::try_from(body.len()).map_err(|e| fail("append history", e))?;
        let crc = crc32fast::hash(body);
        out[start..start + 4].copy_from_slice(&len.to_le_bytes());
        out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    }
    Ok(())
}

/// Adds the digest and offset of each frame of `frames` (as [`frames_into`] lays them out), written
/// at `base` in its segment, to `index`.
fn index_frames(frames: &[u8], base: u64, index: &mut Vec<([u8; 8], u64)>) {
    let mut at = 0;
    while let Some(header) = frames.get(at..at + FRAME_HEADER).and_then(|h| <&[u8; FRAME_HEADER]>::try_from(h).ok()) {
        let (len, _) = frame_header(header);
        let Some(digest) = frames.get(at + FRAME_HEADER..at + FRAME_HEADER + 8).and_then(|d| d.try_into().ok()) else {
            return;
        };
        index.push((digest, base + at as u64));
        at += FRAME_HEADER + len;
    }
}

/// Calls `each` with the offset and digest of every frame of the segment, in order, up to the
/// first that is short or does not check (where a crash tore the last write).
fn scan(path: &Path, mut each: impl FnMut(u64, [u8; 8])) -> BackendResult<()> {
    let file = File::open(path).map_err(|e| fail("read history", e))?;
    let size = file.metadata().map_err(|e| fail("read history", e))?.len();
    let mut reader = BufReader::with_capacity(1 << 16, file);
    let mut offset = 0u64;
    let mut body = Vec::new();
    loop {
        let mut header = [0u8; FRAME_HEADER];
        if reader.read_exact(&mut header).is_err() {
            return Ok(());
        }
        let (len, crc) = frame_header(&header);
        // A damaged length must not make the reader allocate what the file does not hold.
        if len < 8 || offset + (FRAME_HEADER + len) as u64 > size {
            return Ok(());
        }
        body.resize(len, 0);
        if reader.read_exact(&mut body).is_err() || crc32fast::hash(&body) != crc {
            return Ok(());
        }
        let mut d = [0u8; 8];
        d.copy_from_slice(&body[..8]);
        each(offset, d);
        offset += (FRAME_HEADER + len) as u64;
    }
}

fn frame_header(header: &[u8; FRAME_HEADER]) -> (usize, u32) {
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    (len, crc)
}

/// The row bytes of the frame at `offset` of a segment of `size` bytes, checked.
fn read_frame(file: &File, size: u64, path: &Path, offset: u64) -> BackendResult<Vec<u8>> {
    let mut header = [0u8; FRAME_HEADER];
    file.read_exact_at(&mut header, offset).map_err(|e| corrupt(path, format!("frame at {offset}: {e}")))?;
    let (len, crc) = frame_header(&header);
    if len < 8 || offset + (FRAME_HEADER + len) as u64 > size {
        return Err(corrupt(path, format!("the frame at {offset} runs past the end of the segment")));
    }
    let mut body = vec![0u8; len];
    file.read_exact_at(&mut body, offset + FRAME_HEADER as u64)
        .map_err(|e| corrupt(path, format!("frame at {offset}: {e}")))?;
    if crc32fast::hash(&body) != crc {
        return Err(corrupt(path, format!("the frame at {offset} does not match its checksum")));
    }
    body.drain(..8);
    Ok(body)
}

/// A closed segment's index, searched in place.
struct Index {
    file: File,
    path: PathBuf,
    count: u64,
}

impl Index {
    /// The index at `path`; `None` if there is none, or it is not whole (then the segment is
    /// scanned instead).
    fn open(path: &Path) -> BackendResult<Option<Index>> {
        let Ok(file) = File::open(path) else { return Ok(None) };
        let mut header = [0u8; 16];
        if file.read_exact_at(&mut header, 0).is_err() || &header[..8] != INDEX_MAGIC {
            return Ok(None);
        }
        let count = u64::from_le_bytes(header[8..].try_into().unwrap_or_default());
        let len = file.metadata().map_err(|e| fail("read history", e))?.len();
        // A damaged count must not overflow: the file's length is what says it is whole.
        if count.checked_mul(ENTRY).and_then(|entries| entries.checked_add(16)) != Some(len) {
            return Ok(None);
        }
        Ok(Some(Index { file, path: path.to_owned(), count }))
    }

    fn entry(&self, i: u64) -> BackendResult<([u8; 8], u64)> {
        let mut e = [0u8; ENTRY as usize];
        self.file.read_exact_at(&mut e, 16 + i * ENTRY).map_err(|e| corrupt(&self.path, e))?;
        let mut d = [0u8; 8];
        d.copy_from_slice(&e[..8]);
        Ok((d, u64::from_le_bytes(e[8..].try_into().unwrap_or_default())))
    }

    /// The frame offsets filed under `digest`, oldest first.
    fn offsets(&self, digest: [u8; 8]) -> BackendResult<Vec<u64>> {
        let (mut lo, mut hi) = (0, self.count);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.entry(mid)?.0 < digest {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        let mut out = Vec::new();
        for i in lo..self.count {
            let (d, offset) = self.entry(i)?;
            if d != digest {
                break;
            }
            out.push(offset);
        }
        Ok(out)
    }
}

/// History rows for the embedded history's tests (here and in `state/tests.rs`).
#[cfg(test)]
pub(crate) mod test_rows {
    use assetflow_actors::decision::{HistoryRow, Outcome};

    pub fn row(asset_key: &str, decision_id: &str) -> HistoryRow {
        HistoryRow {
            asset_key: Some(asset_key.to_owned()),
            source: Some("pg".to_owned()),
            event_id: Some("e".to_owned()),
            run_id: Some("r".to_owned()),
            outcome: Outcome::Unchanged,
            hash: Some("ab".repeat(32)),
            decision_id: decision_id.to_owned(),
            at: chrono::Utc::now(),
        }
    }

    /// The rows' decision ids, in order.
    pub fn ids(rows: &[HistoryRow]) -> Vec<&str> {
        rows.iter().map(|r| r.decision_id.as_str()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::test_rows::{ids, row};
    use super::*;

    fn files(dir: &Path, ext: &str) -> usize {
        std::fs::read_dir(dir).unwrap().filter(|e| e.as_ref().unwrap().path().extension() == Some(ext.as_ref())).count()
    }

    #[test]
    fn rows_read_back_newest_first_across_segments_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        // Segments close after ~2 rows, so the asset's rows span several, indexed and not.
        let log = HistoryLog::open_with(dir.path(), 300).unwrap();
        for i in 0..7 {
            log.append(&[row("pg/db/s/a", &format!("a-{i}")), row("pg/db/s/b", &format!("b-{i}"))]).unwrap();
        }
        assert!(files(dir.path(), "hidx") >= 3, "full segments are indexed");
        let want: Vec<String> = (0..7).rev().map(|i| format!("a-{i}")).collect();
        assert_eq!(ids(&log.read("pg/db/s/a", 100).unwrap()), want);
        assert_eq!(ids(&log.read("pg/db/s/a", 3).unwrap()), ["a-6", "a-5", "a-4"]);
        assert!(log.read("pg/db/s/none", 10).unwrap().is_empty());

        log.seal().unwrap();
        drop(log);
        let log = HistoryLog::open_with(dir.path(), 300).unwrap();
        log.append(&[row("pg/db/s/a", "a-7")]).unwrap();
        assert_eq!(ids(&log.read("pg/db/s/a", 2).unwrap()), ["a-7", "a-6"], "a reopened log appends after");
        assert_eq!(files(dir.path(), "hlog"), files(dir.path(), "hidx") + 1, "only the open segment is unindexed");
    }

    // A closing segment's index comes from what the appends noted, not from reading the
    // segment: it must be the index a scan of the segment builds, byte for byte.
    #[test]
    fn the_index_a_segment_closes_with_is_the_one_a_scan_of_it_builds() {
        let dir = tempfile::tempdir().unwrap();
        let log = HistoryLog::open(dir.path()).unwrap();
        for batch in 0..5 {
            let rows: Vec<_> =
                (0..7).map(|i| row(&format!("pg/db/s/t{}", (i * 3 + batch) % 11), &format!("{batch}-{i}"))).collect();
            log.append(&rows).unwrap();
        }
        log.seal().unwrap();
        drop(log);
        let index = segment_file(dir.path(), 1, "hidx");
        let noted = std::fs::read(&index).unwrap();
        std::fs::remove_file(&index).unwrap();
        let log = HistoryLog::open(dir.path()).unwrap();
        assert_eq!(std::fs::read(&index).unwrap(), noted, "the open's scan indexes the segment the same");
        assert_eq!(ids(&log.read("pg/db/s/t0", 10).unwrap()), ["4-6", "2-3", "0-0"]);
    }

    #[test]
    fn a_batch_torn_by_a_crash_hides_nothing_before_it_and_the_next_open_indexes_the_segment() {
        let dir = tempfile::tempdir().unwrap();
        let log = HistoryLog::open(dir.path()).unwrap();
        log.append(&[row("pg/db/s/a", "a-0"), row("pg/db/s/b", "b-0")]).unwrap();
        log.append(&[row("pg/db/s/a", "a-1")]).unwrap();
        // A crash: no seal, and the last batch only part-written.
        drop(log);
        let segment = segment_file(dir.path(), 1, "hlog");
        let torn = frames(&[row("pg/db/s/a", "a-torn")]).unwrap();
        OpenOptions::new().append(true).open(&segment).unwrap().write_all(&torn[..torn.len() - 5]).unwrap();

        let log = HistoryLog::open(dir.path()).unwrap();
        assert!(segment_file(dir.path(), 1, "hidx").exists(), "open indexes what the crash left");
        assert_eq!(ids(&log.read("pg/db/s/a", 10).unwrap()), ["a-1", "a-0"]);
        log.append(&[row("pg/db/s/a", "a-2")]).unwrap();
        assert_eq!(ids(&log.read("pg/db/s/a", 10).unwrap()), ["a-2", "a-1", "a-0"], "new rows go to a new segment");
    }

    #[test]
    fn a_frame_that_does_not_check_ends_the_segment_for_readers() {
        let dir = tempfile::tempdir().unwrap();
        let log = HistoryLog::open(dir.path()).unwrap();
        log.append(&[row("k", "0"), row("k", "1"), row("k", "2")]).unwrap();
        drop(log);
        // Flip a byte inside the second frame's row: its checksum no longer matches.
        let segment = segment_file(dir.path(), 1, "hlog");
        let mut bytes = std::fs::read(&segment).unwrap();
        let first = FRAME_HEADER + frame_header(bytes[..FRAME_HEADER].try_into().unwrap()).0;
        bytes[first + FRAME_HEADER + 12] ^= 0xff;
        std::fs::write(&segment, bytes).unwrap();
        let log = HistoryLog::open(dir.path()).unwrap();
        assert_eq!(ids(&log.read("k", 10).unwrap()), ["0"]);
    }

    #[test]
    fn a_damaged_length_ends_the_segment() {
        let dir = tempfile::tempdir().unwrap();
        let log = HistoryLog::open(dir.path()).unwrap();
        log.append(&[row("k", "0")]).unwrap();
        drop(log);
        // A last frame whose length claims 4 GiB, more than the segment holds: readers stop
        // there (and allocate nothing for it) and the open indexes the rows before it.
        let segment = segment_file(dir.path(), 1, "hlog");
        let mut header = [0u8; FRAME_HEADER];
        header[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        OpenOptions::new().append(true).open(&segment).unwrap().write_all(&header).unwrap();
        let log = HistoryLog::open(dir.path()).unwrap();
        assert_eq!(ids(&log.read("k", 10).unwrap()), ["0"]);
    }

    #[test]
    fn rows_of_another_asset_under_the_same_digest_are_left_out() {
        let dir = tempfile::tempdir().unwrap();
        let log = HistoryLog::open(dir.path()).unwrap();
        log.append(&[row("pg/db/s/a", "a-0")]).unwrap();
        // A frame filed under a's digest holding another asset's row, as a collision would.
        let mut stray = frames(&[row("pg/db/s/zz", "stray")]).unwrap();
        stray[FRAME_HEADER..FRAME_HEADER + 8].copy_from_slice(&history_digest("pg/db/s/a"));
        let crc = crc32fast::hash(&stray[FRAME_HEADER..]);
        stray[4..8].copy_from_slice(&crc.to_le_bytes());
        {
            let mut w = log.writer.lock().unwrap();
            let segment = w.current.as_mut().unwrap();
            segment.file.write_all(&stray).unwrap();
            segment.bytes += stray.len() as u64;
        }
        log.append(&[row("pg/db/s/a", "a-1")]).unwrap();
        assert_eq!(ids(&log.read("pg/db/s/a", 10).unwrap()), ["a-1", "a-0"], "scanned");
        log.seal().unwrap();
        assert_eq!(ids(&log.read("pg/db/s/a", 10).unwrap()), ["a-1", "a-0"], "through the index");
        assert_eq!(ids(&log.read("pg/db/s/zz", 10).unwrap()), Vec::<&str>::new());
    }

    #[test]
    fn a_damaged_index_is_not_used() {
        let dir = tempfile::tempdir().unwrap();
        let log = HistoryLog::open(dir.path()).unwrap();
        log.append(&[row("k", "0"), row("k", "1")]).unwrap();
        log.seal().unwrap();
        let index = segment_file(dir.path(), 1, "hidx");
        let len = std::fs::metadata(&index).unwrap().len();
        OpenOptions::new().write(true).open(&index).unwrap().set_len(len - 3).unwrap();
        assert_eq!(ids(&log.read("k", 10).unwrap()), ["1", "0"], "the segment is scanned instead");
        // A count so large that the length it implies overflows (a read panicked on it).
        std::fs::write(&index, [&INDEX_MAGIC[..], &u64::MAX.to_le_bytes()].concat()).unwrap();
        assert_eq!(ids(&log.read("k", 10).unwrap()), ["1", "0"], "a damaged count is scanned past");
    }
}
