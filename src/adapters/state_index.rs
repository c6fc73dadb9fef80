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

type Map = HashMap<IndexKey, KnownRecord, BuildHasherDefault<DigestHasher>>;

/// One stripe's map, held to [`STRIPE_ENTRIES`] entries and to the table size that takes them.
///
/// Holding the entry count is not enough: a removed key leaves a tombstone in a full table, and
/// once tombstones have used up its free slots, the next new key makes the map double (to
/// ~0.9 MiB a stripe) although it holds no more entries than before. A steady crawl of a large
/// catalog drops and adds assets all the time, so every stripe did: the 1M-asset run held twice
/// the index's bound (heaptrack, benches/analysis.md). At its bound a stripe is rebuilt at the
/// same size instead, which clears the tombstones.
#[derive(Default)]
struct Stripe {
    map: Map,
    /// Whether the table has reached the size that holds [`STRIPE_ENTRIES`]: past that, it must
    /// not grow. Below it, it grows as any map does.
    at_bound: bool,
}

impl Stripe {
    fn insert(&mut self, key: &IndexKey, known: KnownRecord) -> bool {
        if let Some(slot) = self.map.get_mut(key) {
            *slot = known;
            return true;
        }
        if self.map.len() >= STRIPE_ENTRIES {
            return false;
        }
        // `capacity` is what the table takes before it next grows; tombstones count against it.
        if self.at_bound && self.map.len() >= self.map.capacity() {
            // A rebuild costs a pass over the stripe; wait until removals have left room for
            // enough new keys to pay for it, and leave the key unindexed (read) until then.
            if self.map.len() > STRIPE_ENTRIES - STRIPE_ENTRIES / 8 {
                return false;
            }
            let mut fresh = Map::with_capacity_and_hasher(STRIPE_ENTRIES, BuildHasherDefault::default());
            fresh.extend(self.map.drain());
            self.map = fresh;
        }
        self.map.insert(*key, known);
        self.at_bound |= self.map.capacity() >= STRIPE_ENTRIES;
        true
    }
}

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
        self.stripe(key).map.get(key).copied()
    }

    /// Records what a durable write left at `key`: a live record (indexed while its stripe has
    /// room) or not (`None`: dropped, a marker, or no longer known). Returns whether the index
    /// holds the key now.
    pub fn wrote(&self, key: &IndexKey, now: Option<KnownRecord>) -> bool {
        let mut stripe = self.stripe(key);
        match now {
            Some(k) if stripe.insert(key, k) => true,
            _ => {
                stripe.map.remove(key);
                false
            }
        }
    }

    /// Forgets `key`: after a write whose outcome is unknown, the store must be read again.
    pub fn forget(&self, key: &IndexKey) {
        self.stripe(key).map.remove(key);
    }

    /// Every entry, to save at a clean stop (`state_index_file.rs`).
    pub fn entries(&self) -> Vec<(IndexKey, KnownRecord)> {
        let mut out = Vec::with_capacity(self.assets());
        for stripe in &self.stripes {
            let stripe = stripe.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            out.extend(stripe.map.iter().map(|(k, v)| (*k, *v)));
        }
        out
    }

    /// Assets indexed.
    pub fn assets(&self) -> usize {
        self.stripes.iter().map(|s| s.lock().map_or(0, |s| s.map.len())).sum()
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

    /// An index offered 20,000 keys more than its bound (keys `0..n`), and `n`.
    fn offered_more_than_it_holds() -> (RecordIndex, u32) {
        let index = RecordIndex::default();
        let n = (STRIPES * STRIPE_ENTRIES + 20_000) as u32;
        for i in 0..n {
            index.wrote(&key(i), Some(known(1)));
        }
        (index, n)
    }

    #[test]
    fn churn_at_the_bound_keeps_every_stripe_at_its_size() {
        // Assets dropped and others added, crawl after crawl, on a full index: the tombstones
        // the drops leave must not make any stripe's table grow past the bound's size.
        let (index, full) = offered_more_than_it_holds();
        let mut next = full;
        for crawl in 0..40u32 {
            // 1% of the catalog gone, as many new.
            for i in (crawl * 1_200)..(crawl * 1_200 + 1_200) {
                index.wrote(&key(i), None);
            }
            for _ in 0..1_200 {
                index.wrote(&key(next), Some(known(1)));
                next += 1;
            }
        }
        for stripe in &index.stripes {
            let stripe = stripe.lock().unwrap();
            assert!(stripe.map.capacity() <= STRIPE_ENTRIES, "a stripe grew to {} slots", stripe.map.capacity());
        }
        // New assets were still taken in as room was made.
        let held = index.assets();
        assert!(held > STRIPES * STRIPE_ENTRIES * 8 / 10, "{held} entries");
        assert!((full..next).filter(|i| index.get(&key(*i)).is_some()).count() > 20_000);
    }

    #[test]
    fn it_stops_growing_at_its_bound_but_keeps_what_it_holds_current() {
        let (index, n) = offered_more_than_it_holds();
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
