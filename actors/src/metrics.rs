//! Counters the actors bump and the binary reports (summary, and later `/metrics`).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::decision::Outcome;

/// Pipeline-wide counters, shared by every actor through an `Arc`.
#[derive(Debug, Default)]
pub struct Metrics {
    pub events_in: AtomicU64,
    outcomes: [AtomicU64; 8],
    pub upserts_published: AtomicU64,
    pub drops_published: AtomicU64,
    pub enriched_published: AtomicU64,
    /// Times an actor recovered from a panic (its held messages delivered again).
    pub restarts: AtomicU64,
    dead_letters: Mutex<BTreeMap<String, u64>>,
}

fn index(o: Outcome) -> usize {
    Outcome::ALL.iter().position(|x| *x == o).unwrap_or(0)
}

impl Metrics {
    pub fn outcome(&self, o: Outcome, n: u64) {
        self.outcomes[index(o)].fetch_add(n, Ordering::Relaxed);
    }
    pub fn outcomes(&self) -> Vec<(Outcome, u64)> {
        Outcome::ALL.iter().map(|o| (*o, self.outcomes[index(*o)].load(Ordering::Relaxed))).collect()
    }
    pub fn dead_letter(&self, kind: &str) {
        let mut m = self.dead_letters.lock().unwrap_or_else(|e| e.into_inner());
        *m.entry(kind.to_owned()).or_default() += 1;
    }
    /// Dead letters by `error.kind`.
    pub fn dead_letters(&self) -> BTreeMap<String, u64> {
        self.dead_letters.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
    pub fn count(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}
