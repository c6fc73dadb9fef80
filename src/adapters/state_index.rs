//! The embedded store's index of live records in memory: per asset, its hash, run and version
//! in brief ([`KnownRecord`]), so that a decisor shard decides an unchanged asset seen again
//! without reading its record.
//!
//! A steady crawl's events are nearly all unchanged assets, and reading each one's record was a
//! fifth of the CPU of such a crawl (BENCHMARKS.md). The index can vouch for records because
//! nothing writes the store behind its back: the database is locked to this process, and every
//! write to it passes through [`RecordIndex::wrote`] after it is durable. It is filled by a scan
//! of the store at open and bounded: past [`STRIPE_ENTRIES`] per stripe, further assets are not
//! indexed and are read as before, so memory stays flat however large the catalog grows.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Mutex, MutexGuard};

use assetflow_actors::record::KnownRecord;

/// Stripes, each under its own lock: the shards look keys up and update them concurrently.
const STRIPES: usize = 16;
/// Assets indexed per stripe: 7/8 of 2^13, the most a table of 2^13 slots holds before it
/// doubles, so the index never takes more than 16 × 2^13 slots of 57 bytes (~7.5 MiB) and
/// covers about 115,000 assets. Twice that was measured: the 1M-asset run's peak memory then
/// grew past 1.5x the 100k run's (BENCHMARKS.md), the bound `make bench` holds it to.
pub const STRIPE_ENTRIES: usize = 7_168;
/// Assets the index can hold.
pub const CAPACITY: usize = STRIPES * STRIPE_ENTRIES;

/// An asset's place in the index: the 16 bytes of its control key that digest the asset key
/// (`state_layout::control_key`), already uniformly random.
pub type IndexKey = [u8; 16];

/// Hashes an [`IndexKey`] by taking its first eight bytes: they are a BLAKE3 digest already.
#[derive(Default)]
pub struct DigestHasher(u64);

impl Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // An array hashes its length first, then its bytes; the bytes are what count.
        for (i, b) in bytes.iter().take(8).enumerate() {
            self.0 ^= u64::from(*b) << (8 * i);
        }
        self.0 = self.0.rotate_left(29);
    }
}

type Stripe = HashMap<IndexKey, KnownRecord, BuildHasherDefault<DigestHasher>>;

/// The index. Lookups and updates of one key come from the one shard that owns it.
pub struct RecordIndex {
    stripes: Vec<Mutex<Stripe>>,
}

impl Default for RecordIndex {
    fn default() -> Self {
        RecordIndex { stripes: (0..STRIPES).map(|_| Mutex::new(Stripe::default())).collect() }
    }
}

impl RecordIndex {
    fn stripe(&self, key: &IndexKey) -> MutexGuard<'_, Stripe> {
        let i = usize::from(key[15]) % STRIPES;
        // A stripe only holds plain data, left whole by any panic: a poisoned lock is still good.
        self.stripes[i].lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// What is known of the live record at `key`.
    pub fn get(&self, key: &IndexKey) -> Option<KnownRecord> {
        self.stripe(key).get(key).copied()
    }

    /// Records what a durable write left at `key`: a live record (indexed while its stripe has
    /// room) or not (`None`: dropped, a marker, or no longer known). Returns whether the index
    /// holds the key now.
    pub fn wrote(&self, key: &IndexKey, now: Option<KnownRecord>) -> bool {
        let mut stripe = self.stripe(key);
        match now {
            Some(k) if stripe.len() < STRIPE_ENTRIES || stripe.contains_key(key) => {
                stripe.insert(*key, k);
                true
            }
            _ => {
                stripe.remove(key);
                false
            }
        }
    }

    /// Forgets `key`: after a write whose outcome is unknown, the store must be read again.
    pub fn forget(&self, key: &IndexKey) {
        self.stripe(key).remove(key);
    }

    /// Every entry, to save at a clean stop (`state_index_file.rs`).
    pub fn entries(&self) -> Vec<(IndexKey, KnownRecord)> {
        let mut out = Vec::with_capacity(self.assets());
        for stripe in &self.stripes {
            let stripe = stripe.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            out.extend(stripe.iter().map(|(k, v)| (*k, *v)));
        }
        out
    }

    /// Assets indexed.
    pub fn assets(&self) -> usize {
        self.stripes.iter().map(|s| s.lock().map_or(0, |s| s.len())).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known(version: u64) -> KnownRecord {
        let at = chrono::DateTime::from_timestamp(1_790_000_000, 5).unwrap();
        KnownRecord { hash: [7; 16], run: 1, last_seen_at: at, version }
    }

    fn key(n: u32) -> IndexKey {
        let digest = blake3::hash(&n.to_le_bytes());
        digest.as_bytes()[..16].try_into().unwrap()
    }

    #[test]
    fn a_write_updates_or_removes_what_is_known() {
        let index = RecordIndex::default();
        index.wrote(&key(1), Some(known(1)));
        assert_eq!(index.get(&key(1)), Some(known(1)));
        index.wrote(&key(1), Some(known(2)));
        assert_eq!(index.get(&key(1)).map(|k| k.version), Some(2));
        index.wrote(&key(1), None);
        assert_eq!(index.get(&key(1)), None);
        index.wrote(&key(2), Some(known(1)));
        index.forget(&key(2));
        assert_eq!(index.get(&key(2)), None);
    }

    #[test]
    fn it_stops_growing_at_its_bound_but_keeps_what_it_holds_current() {
        let index = RecordIndex::default();
        let n = (STRIPES * STRIPE_ENTRIES + 20_000) as u32;
        for i in 0..n {
            index.wrote(&key(i), Some(known(1)));
        }
        let held = index.assets();
        assert!(held <= STRIPES * STRIPE_ENTRIES, "{held} entries");
        assert!(held > STRIPES * STRIPE_ENTRIES * 9 / 10, "stripes fill evenly: {held}");
        // A key it holds still moves; one it could not take stays unknown (read from the store).
        let (inside, outside) = ((0..n).find(|i| index.get(&key(*i)).is_some()).unwrap(), {
            (0..n).find(|i| index.get(&key(*i)).is_none()).unwrap()
        });
        index.wrote(&key(inside), Some(known(9)));
        assert_eq!(index.get(&key(inside)).map(|k| k.version), Some(9));
        index.wrote(&key(outside), Some(known(9)));
        assert_eq!(index.get(&key(outside)), None);
    }
}
