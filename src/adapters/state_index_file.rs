//! The index of live records saved at a clean stop (`{state_dir}/state-index`), so the next
//! start loads it instead of scanning every record to fill it again.
//!
//! The scan was ~5% of a steady crawl's CPU (0.2 s per 100k records, benches/analysis.md). A
//! saved index is only good for the store exactly as it was saved: the file carries a token
//! that the store holds too, written after the file, and the next open removes the token from
//! the store (durably) before anything else can write to it. A file whose token the store does
//! not hold is refused, the file is removed once read, and a checksum refuses a file cut short
//! or damaged. Any doubt means a scan: the file only saves time.

use std::io::Write as _;
use std::path::Path;

use assetflow_actors::record::KnownRecord;
use chrono::DateTime;

use super::state_index::IndexKey;

/// The layout's name and version.
const MAGIC: &[u8; 8] = b"afindex1";
/// One entry: key 16, hash 16, run 4, seconds 8, nanoseconds 4, version 8.
const ENTRY: usize = 56;
const HEADER: usize = MAGIC.len() + 8 + 8;
const CHECKSUM: usize = 32;

/// Writes `entries` as the index of the store under `token`, atomically (a temporary file
/// renamed over).
pub fn save(path: &Path, token: u64, entries: &[(IndexKey, KnownRecord)]) -> std::io::Result<()> {
    let mut bytes = Vec::with_capacity(HEADER + entries.len() * ENTRY + CHECKSUM);
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&token.to_le_bytes());
    bytes.extend_from_slice(&(entries.len() as u64).to_le_bytes());
    for (key, k) in entries {
        bytes.extend_from_slice(key);
        bytes.extend_from_slice(&k.hash);
        bytes.extend_from_slice(&k.run.to_le_bytes());
        bytes.extend_from_slice(&k.last_seen_at.timestamp().to_le_bytes());
        bytes.extend_from_slice(&k.last_seen_at.timestamp_subsec_nanos().to_le_bytes());
        bytes.extend_from_slice(&k.version.to_le_bytes());
    }
    let sum = blake3::hash(&bytes);
    bytes.extend_from_slice(sum.as_bytes());
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(&bytes)?;
    drop(file);
    std::fs::rename(&tmp, path)
}

/// The entries saved at `path` under `token`, removing the file; `None` (and the file
/// removed) when there is none, or it is not the one saved under `token`.
pub fn take(path: &Path, token: u64) -> Option<Vec<(IndexKey, KnownRecord)>> {
    let bytes = std::fs::read(path).ok()?;
    discard(path);
    let (body, sum) = bytes.split_at_checked(bytes.len().checked_sub(CHECKSUM)?)?;
    if blake3::hash(body).as_bytes() != sum || body.get(..MAGIC.len())? != MAGIC {
        return None;
    }
    let word = |at: usize| body.get(at..at + 8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes);
    if word(MAGIC.len())? != token {
        return None;
    }
    let count = usize::try_from(word(MAGIC.len() + 8)?).ok()?;
    let entries = body.get(HEADER..)?;
    if entries.len() != count.checked_mul(ENTRY)? {
        return None;
    }
    entries
        .chunks_exact(ENTRY)
        .map(|e| {
            let key: IndexKey = e[..16].try_into().ok()?;
            let hash: [u8; 16] = e[16..32].try_into().ok()?;
            let run = u32::from_le_bytes(e[32..36].try_into().ok()?);
            let secs = i64::from_le_bytes(e[36..44].try_into().ok()?);
            let nanos = u32::from_le_bytes(e[44..48].try_into().ok()?);
            let version = u64::from_le_bytes(e[48..56].try_into().ok()?);
            let last_seen_at = DateTime::from_timestamp(secs, nanos)?;
            Some((key, KnownRecord { hash, run, last_seen_at, version }))
        })
        .collect()
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

    fn entry(i: u8) -> (IndexKey, KnownRecord) {
        let at = DateTime::from_timestamp(1_790_000_000 + i64::from(i), 123_456_789).unwrap();
        ([i; 16], KnownRecord { hash: [i ^ 0xff; 16], run: u32::from(i) * 7, last_seen_at: at, version: u64::from(i) })
    }

    #[test]
    fn an_index_comes_back_once_and_only_for_its_token() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state-index");
        let entries: Vec<_> = (0..40).map(entry).collect();
        save(&path, 77, &entries).unwrap();
        assert_eq!(take(&path, 77), Some(entries.clone()));
        assert_eq!(take(&path, 77), None, "removed once loaded");

        save(&path, 77, &entries).unwrap();
        assert_eq!(take(&path, 78), None, "saved under another token");
        assert!(!path.exists());
    }

    #[test]
    fn a_damaged_or_short_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state-index");
        let entries: Vec<_> = (0..3).map(entry).collect();
        save(&path, 5, &entries).unwrap();
        let good = std::fs::read(&path).unwrap();
        for bad in [good[..good.len() - 1].to_vec(), good[..10].to_vec(), Vec::new(), {
            let mut b = good.clone();
            b[HEADER + 3] ^= 1;
            b
        }] {
            std::fs::write(&path, &bad).unwrap();
            assert_eq!(take(&path, 5), None);
        }
    }
}
