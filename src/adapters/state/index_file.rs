//! The index of live records saved at a clean stop (`{state_dir}/state-index`), so the next
//! start loads it instead of scanning every record to fill it again.
//!
//! The scan was ~5% of a steady crawl's CPU (0.2 s per 100k records, benches/analysis.md). A
//! saved index is only good for the store exactly as it was saved: the file carries a token
//! that the store holds too, written after the file, and the next open removes the token from
//! the store (durably) before anything else can write to it. A file whose token the store does
//! not hold is refused, the file is removed once read, and a checksum refuses a file cut short
//! or damaged. Any doubt means a scan: the file only saves time.

use std::io::{Read as _, Write as _};
use std::path::Path;

use assetflow_actors::record::KnownRecord;
use chrono::DateTime;

use super::index::{IndexKey, PrefixOwner, RecordIndex, SourcePrefix};

/// The layout's name and version: an older file is refused, and the store scanned.
const MAGIC: &[u8; 8] = b"afindex4";
/// One entry: key 20, hash 32, text print 16 (zeros: none), run 8, seconds 8, nanoseconds 4,
/// version 8.
const ENTRY: usize = 96;
/// Magic, token, entries, whether the index held every live record, source prefixes, runs.
const HEADER: usize = MAGIC.len() + 8 + 8 + 8 + 8 + 8;
const CHECKSUM: usize = 32;
/// A prefix owned by more than one source, in place of a name.
const SHARED: u16 = u16::MAX;

/// Entries read from the file per read: 96 KiB.
const ENTRIES_PER_READ: usize = 1024;

/// What a saved index holds besides its entries, which [`take`] puts into the index itself.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded {
    /// Whether the entries are every live record of the store.
    pub complete: bool,
    pub sources: Vec<(SourcePrefix, PrefixOwner)>,
    /// The runs of the stamps that only touch frames hold, by brief (`touches.rs`).
    pub runs: Vec<(u64, String)>,
}

/// An index as a clean stop saved it (tests, which make one to load).
#[cfg(test)]
#[derive(Debug, Clone, PartialEq)]
pub struct Saved {
    pub entries: Vec<(IndexKey, KnownRecord)>,
    pub complete: bool,
    pub sources: Vec<(SourcePrefix, PrefixOwner)>,
    pub runs: Vec<(u64, String)>,
}

/// Writes `saved` as the index of the store under `token` ([`write_index`]): tests, which make
/// an index to load; a stop writes the store's own from its stripes.
#[cfg(test)]
pub fn save(path: &Path, token: u64, saved: &Saved) -> std::io::Result<()> {
    let entries = |put: &mut dyn FnMut(&IndexKey, &KnownRecord) -> std::io::Result<()>| {
        saved.entries.iter().try_for_each(|(key, known)| put(key, known))
    };
    write_index(path, token, saved.entries.len(), entries, saved.complete, &saved.sources, &saved.runs)
}

/// Writes an index of `count` entries, which `entries` hands to the writer it is given, as
/// the index of the store under `token`, atomically (a temporary file renamed over).
///
/// Streamed through a small buffer and hashed as it goes: building the file in memory first
/// (and a list of the entries before that) touched ~15 MB of fresh pages per 100k assets at
/// every stop, and fresh pages are dear on some machines (benches/analysis.md).
pub fn write_index(
    path: &Path,
    token: u64,
    count: usize,
    entries: impl FnOnce(&mut dyn FnMut(&IndexKey, &KnownRecord) -> std::io::Result<()>) -> std::io::Result<()>,
    complete: bool,
    sources: &[(SourcePrefix, PrefixOwner)],
    runs: &[(u64, String)],
) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let written = (|| -> std::io::Result<()> {
        let mut out = Summed {
            out: std::fs::File::create(&tmp)?,
            buf: Vec::with_capacity(WRITE_BUF),
            sum: blake3::Hasher::new(),
        };
        out.put(MAGIC)?;
        out.put(&token.to_le_bytes())?;
        out.put(&(count as u64).to_le_bytes())?;
        out.put(&u64::from(complete).to_le_bytes())?;
        out.put(&(sources.len() as u64).to_le_bytes())?;
        out.put(&(runs.len() as u64).to_le_bytes())?;
        let mut written = 0usize;
        entries(&mut |key, k| {
            written += 1;
            let mut entry = [0u8; ENTRY];
            entry[..20].copy_from_slice(key);
            entry[20..52].copy_from_slice(&k.hash);
            entry[52..68].copy_from_slice(&k.print.unwrap_or_default());
            entry[68..76].copy_from_slice(&k.run.to_le_bytes());
            entry[76..84].copy_from_slice(&k.last_seen_at.timestamp().to_le_bytes());
            entry[84..88].copy_from_slice(&k.last_seen_at.timestamp_subsec_nanos().to_le_bytes());
            entry[88..96].copy_from_slice(&k.version.to_le_bytes());
            out.put(&entry)
        })?;
        if written != count {
            // The header says how many follow; an index that changed while it was written is not
            // saved (the next open scans).
            return Err(std::io::Error::other(format!(
                "the index changed while it was saved ({count} then {written} entries)"
            )));
        }
        for (prefix, owner) in sources {
            out.put(prefix)?;
            match owner {
                // A source id is at most a few hundred characters (EVENTS.md §1); a longer one
                // is saved as shared, which only costs its sweeps a scan.
                PrefixOwner::One(name) if name.len() < usize::from(SHARED) => {
                    out.put(&(name.len() as u16).to_le_bytes())?;
                    out.put(name.as_bytes())?;
                }
                _ => out.put(&SHARED.to_le_bytes())?,
            }
        }
        for (brief, run) in runs {
            // A run id this long cannot be saved; the index is not, and the next open replays the
            // touch frames instead.
            let len = u32::try_from(run.len()).map_err(|_| std::io::Error::other("a run id over 4 GiB"))?;
            out.put(&brief.to_le_bytes())?;
            out.put(&len.to_le_bytes())?;
            out.put(run.as_bytes())?;
        }
        out.finish()
    })();
    if written.is_err() {
        // Nothing half-written is left behind; the next open scans.
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    std::fs::rename(&tmp, path)
}

/// Bytes [`Summed`] gathers before it hashes and writes them.
const WRITE_BUF: usize = 1 << 16;

/// A file being written and the checksum of what went into it.
///
/// Bytes are hashed a buffer at a time, not as they are put: BLAKE3 hashes the 1 KiB chunks of
/// one `update` side by side (SIMD), but a 64-byte entry at a time one block after another,
/// which made the checksum of a 100k-entry index ~4x dearer at every stop.
struct Summed {
    out: std::fs::File,
    buf: Vec<u8>,
    sum: blake3::Hasher,
}

impl Summed {
    fn put(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if self.buf.len() + bytes.len() > WRITE_BUF {
            self.drain()?;
        }
        self.buf.extend_from_slice(bytes);
        Ok(())
    }

    fn drain(&mut self) -> std::io::Result<()> {
        self.sum.update(&self.buf);
        self.out.write_all(&self.buf)?;
        self.buf.clear();
        Ok(())
    }

    /// Writes what is left and the checksum of all of it.
    fn finish(mut self) -> std::io::Result<()> {
        self.drain()?;
        let sum = self.sum.finalize();
        self.out.write_all(sum.as_bytes())
    }
}

/// Loads the index saved at `path` under `token` into `index`, which must be empty, and
/// removes the file. Returns what the file holds besides the entries, or `None` (with `index`
/// empty again and the file removed) when there is none, or it is not the one saved under
/// `token`.
///
/// The entries go straight from a small buffer into the index's tables, sized once from the
/// header: reading the whole file, then a list of its entries, then the tables grown by
/// doubling touched ~20 MB of fresh pages per 100k assets at every start, ~0.4 us per event of
/// a steady crawl of that catalog (benches/analysis.md). So the checksum is only known once
/// the entries are in, and a file it refuses leaves the index to be emptied.
pub fn take(path: &Path, token: u64, index: &RecordIndex) -> Option<Loaded> {
    let mut file = std::fs::File::open(path).ok()?;
    discard(path);
    let loaded = read(&mut file, token, index);
    if loaded.is_none() {
        index.clear();
    }
    loaded
}

fn read(file: &mut std::fs::File, token: u64, index: &RecordIndex) -> Option<Loaded> {
    let len = usize::try_from(file.metadata().ok()?.len()).ok()?;
    let mut sum = blake3::Hasher::new();
    let mut header = [0u8; HEADER];
    file.read_exact(&mut header).ok()?;
    sum.update(&header);
    let word = |at: usize| header.get(at..at + 8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes);
    if header[..MAGIC.len()] != MAGIC[..] || word(MAGIC.len())? != token {
        return None;
    }
    let count = usize::try_from(word(MAGIC.len() + 8)?).ok()?;
    let complete = word(MAGIC.len() + 16)? == 1;
    let source_count = usize::try_from(word(MAGIC.len() + 24)?).ok()?;
    let run_count = usize::try_from(word(MAGIC.len() + 32)?).ok()?;
    let tail = len.checked_sub(HEADER)?.checked_sub(count.checked_mul(ENTRY)?)?.checked_sub(CHECKSUM)?;
    index.reserve(count);
    let mut buf = vec![0u8; ENTRY * ENTRIES_PER_READ];
    let mut entries = Vec::with_capacity(ENTRIES_PER_READ);
    let mut left = count;
    while left > 0 {
        let chunk = &mut buf[..left.min(ENTRIES_PER_READ) * ENTRY];
        file.read_exact(chunk).ok()?;
        sum.update(chunk);
        entries.clear();
        for e in chunk.chunks_exact(ENTRY) {
            entries.push(parse_entry(e)?);
        }
        index.wrote_live(&entries);
        left -= chunk.len() / ENTRY;
    }
    let mut rest = vec![0u8; tail + CHECKSUM];
    file.read_exact(&mut rest).ok()?;
    let (mut rest, expected) = rest.split_at(tail);
    if sum.update(rest).finalize().as_bytes() != expected {
        return None;
    }
    let mut sources = Vec::with_capacity(source_count.min(rest.len()));
    for _ in 0..source_count {
        let prefix: SourcePrefix = rest.get(..4)?.try_into().ok()?;
        let len = u16::from_le_bytes(rest.get(4..6)?.try_into().ok()?);
        rest = &rest[6..];
        let owner = if len == SHARED {
            PrefixOwner::Shared
        } else {
            let (name, after) = rest.split_at_checked(usize::from(len))?;
            rest = after;
            PrefixOwner::One(std::str::from_utf8(name).ok()?.to_owned())
        };
        sources.push((prefix, owner));
    }
    let mut runs = Vec::with_capacity(run_count.min(rest.len()));
    for _ in 0..run_count {
        let brief = u64::from_le_bytes(rest.get(..8)?.try_into().ok()?);
        let len = usize::try_from(u32::from_le_bytes(rest.get(8..12)?.try_into().ok()?)).ok()?;
        let (run, after) = rest.get(12..)?.split_at_checked(len)?;
        runs.push((brief, std::str::from_utf8(run).ok()?.to_owned()));
        rest = after;
    }
    rest.is_empty().then_some(Loaded { complete, sources, runs })
}

/// One entry as [`write_index`] lays it out.
fn parse_entry(e: &[u8]) -> Option<(IndexKey, KnownRecord)> {
    let key: IndexKey = e.get(..20)?.try_into().ok()?;
    let hash: [u8; 32] = e.get(20..52)?.try_into().ok()?;
    // A print of all zeros stands for none (a real one is that by a chance of 2^-128, and
    // would only cost its asset a hash).
    let print: [u8; 16] = e.get(52..68)?.try_into().ok()?;
    let print = (print != [0; 16]).then_some(print);
    let word = |at: usize| e.get(at..at + 8).and_then(|b| b.try_into().ok());
    let run = u64::from_le_bytes(word(68)?);
    let secs = i64::from_le_bytes(word(76)?);
    let nanos = u32::from_le_bytes(e.get(84..88)?.try_into().ok()?);
    let version = u64::from_le_bytes(word(88)?);
    let last_seen_at = DateTime::from_timestamp(secs, nanos)?;
    Some((key, KnownRecord { hash, print, run, last_seen_at, version }))
}

/// Removes a saved index, if there is one.
pub fn discard(path: &Path) {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        // Its token is gone from the store, so it would be refused; say so and go on.
        Err(e) => tracing::warn!(path = %path.display(), error = %e, "could not remove the saved index"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// [`take`] into a new index, and the entries it put there in key order; a refused file
    /// must leave the index as empty as it found it.
    fn taken(path: &Path, token: u64) -> Option<Saved> {
        let index = RecordIndex::default();
        let Some(loaded) = take(path, token, &index) else {
            assert_eq!(index.assets(), 0, "a refused file leaves nothing in the index");
            assert!(index.sources().is_empty() && index.is_complete());
            return None;
        };
        let mut entries = index.entries();
        entries.sort_by_key(|(key, _)| *key);
        Some(Saved { entries, complete: loaded.complete, sources: loaded.sources, runs: loaded.runs })
    }

    fn entry(i: u8) -> (IndexKey, KnownRecord) {
        let at = DateTime::from_timestamp(1_790_000_000 + i64::from(i), 123_456_789).unwrap();
        (
            [i; 20],
            KnownRecord {
                hash: [i ^ 0xff; 32],
                print: (i % 2 == 0).then_some([i | 1; 16]),
                run: u64::from(i) << 40,
                last_seen_at: at,
                version: u64::from(i),
            },
        )
    }

    fn saved(n: u8) -> Saved {
        Saved {
            // In key order, as [`taken`] lists them.
            entries: (0..n).map(entry).collect(),
            complete: n % 2 == 0,
            sources: vec![([1, 2, 3, 4], PrefixOwner::One("pg".into())), ([9, 9, 9, 9], PrefixOwner::Shared)],
            runs: (0..n % 3).map(|i| (u64::from(i) * 77, format!("run-{i}"))).collect(),
        }
    }

    #[test]
    fn an_index_comes_back_once_and_only_for_its_token() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state-index");
        let entries = saved(40);
        save(&path, 77, &entries).unwrap();
        assert_eq!(taken(&path, 77), Some(entries.clone()));
        assert_eq!(taken(&path, 77), None, "removed once loaded");
        let odd = saved(3);
        save(&path, 77, &odd).unwrap();
        assert_eq!(taken(&path, 77), Some(odd));

        save(&path, 77, &entries).unwrap();
        assert_eq!(taken(&path, 78), None, "saved under another token");
        assert!(!path.exists());
    }

    // The header's count is written before the entries: an index that gained or lost an entry
    // meanwhile must not leave a file that the next open would take.
    #[test]
    fn an_index_that_changed_while_it_was_written_is_not_saved() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state-index");
        let s = saved(4);
        for count in [3, 5] {
            let entries = |put: &mut dyn FnMut(&IndexKey, &KnownRecord) -> std::io::Result<()>| {
                s.entries.iter().try_for_each(|(key, known)| put(key, known))
            };
            assert!(write_index(&path, 9, count, entries, s.complete, &s.sources, &s.runs).is_err());
            assert!(!path.exists());
            assert!(!path.with_extension("tmp").exists(), "nothing half-written left behind");
            assert_eq!(taken(&path, 9), None);
        }
    }

    #[test]
    fn a_damaged_or_short_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state-index");
        save(&path, 5, &saved(3)).unwrap();
        let good = std::fs::read(&path).unwrap();
        for bad in [good[..good.len() - 1].to_vec(), good[..10].to_vec(), Vec::new(), {
            let mut b = good.clone();
            b[HEADER + 3] ^= 1;
            b
        }] {
            std::fs::write(&path, &bad).unwrap();
            assert_eq!(taken(&path, 5), None);
        }
    }
}
