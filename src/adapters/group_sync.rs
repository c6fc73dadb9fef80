//! A group commit: batches written to a journal without a sync each, then made durable by one
//! `fsync` for every writer waiting at that moment.
//!
//! Each decisor shard commits its own batches. Synced one by one, every batch paid a whole
//! `fsync` of the shared journal, and more shards (or faster cores) meant smaller batches and
//! more `fsync`s per event: at 4 shards a steady crawl's shards spent four times as long in
//! them per event as at one (benches/analysis.md). Here a writer that finds a sync under way
//! waits for it and, if its batch was written after that sync began, joins the next one, which
//! covers everyone who came in the meantime. The embedded store's journal and each content
//! pack (`content_pack.rs`) sync this way.

use std::sync::{Condvar, Mutex, MutexGuard};

/// Turns of batches written and synced; see the module docs.
#[derive(Debug, Default)]
pub struct GroupSync {
    state: Mutex<State>,
    done: Condvar,
}

#[derive(Debug, Default)]
struct State {
    /// Batches written so far (the last one's turn).
    written: u64,
    /// Every batch up to this turn is durable.
    synced: u64,
    /// A writer is syncing.
    syncing: bool,
}

impl GroupSync {
    fn state(&self) -> MutexGuard<'_, State> {
        // The state is three plain numbers, whole after any panic.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Notes a batch fully written to the journal; returns its turn, for
    /// [`sync_through`](Self::sync_through).
    pub fn wrote(&self) -> u64 {
        let mut state = self.state();
        state.written += 1;
        state.written
    }

    /// Returns once every batch through `turn` is durable: at once if a sync already covered it,
    /// after the sync under way if that one does, else after calling `sync` (which must make
    /// everything written so far durable) on behalf of every batch written by then. An error of
    /// `sync` goes to the writer that called it; the others wait on and try again themselves.
    pub fn sync_through<E>(&self, turn: u64, sync: impl FnOnce() -> Result<(), E>) -> Result<(), E> {
        let mut state = self.state();
        while state.syncing && state.synced < turn {
            state = self.done.wait(state).unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        if state.synced >= turn {
            return Ok(());
        }
        state.syncing = true;
        let through = state.written;
        drop(state);
        let synced = sync();
        let mut state = self.state();
        state.syncing = false;
        if synced.is_ok() {
            state.synced = state.synced.max(through);
        }
        drop(state);
        self.done.notify_all();
        synced
    }

    /// Whether a writer is syncing now (a hint: it may end the next moment).
    pub fn under_way(&self) -> bool {
        self.state().syncing
    }

    /// Every batch through this turn is durable.
    #[cfg(test)]
    fn synced(&self) -> u64 {
        self.state().synced
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    use super::*;

    #[test]
    fn every_writer_returns_durable_and_concurrent_writers_share_syncs() {
        let group = Arc::new(GroupSync::default());
        let syncs = Arc::new(AtomicU64::new(0));
        let writers: Vec<_> = (0..8)
            .map(|_| {
                let (group, syncs) = (group.clone(), syncs.clone());
                std::thread::spawn(move || {
                    for _ in 0..50 {
                        let turn = group.wrote();
                        group
                            .sync_through(turn, || {
                                // As an fsync: long enough for other writers to come in.
                                std::thread::sleep(Duration::from_millis(1));
                                syncs.fetch_add(1, Ordering::SeqCst);
                                Ok::<(), ()>(())
                            })
                            .unwrap();
                        assert!(group.synced() >= turn, "returned before a sync covered turn {turn}");
                    }
                })
            })
            .collect();
        writers.into_iter().for_each(|w| w.join().unwrap());
        let syncs = syncs.load(Ordering::SeqCst);
        assert!(syncs < 400, "400 batches, {syncs} syncs: writers waiting together should share one");
        assert_eq!(group.synced(), 400);
    }

    #[test]
    fn a_sync_is_under_way_only_while_a_writer_runs_it() {
        let group = Arc::new(GroupSync::default());
        assert!(!group.under_way());
        let (started, release) = (Arc::new(std::sync::Barrier::new(2)), Arc::new(std::sync::Barrier::new(2)));
        let writer = {
            let (group, started, release) = (group.clone(), started.clone(), release.clone());
            std::thread::spawn(move || {
                let turn = group.wrote();
                group.sync_through(turn, || {
                    started.wait();
                    release.wait();
                    Ok::<(), ()>(())
                })
            })
        };
        started.wait();
        assert!(group.under_way(), "a writer is inside its sync");
        release.wait();
        writer.join().unwrap().unwrap();
        assert!(!group.under_way());
    }

    #[test]
    fn a_failed_sync_covers_nothing_and_the_next_writer_syncs_again() {
        let group = GroupSync::default();
        let first = group.wrote();
        assert_eq!(group.sync_through(first, || Err("disk full")), Err("disk full"));
        assert_eq!(group.synced(), 0);
        let second = group.wrote();
        let syncs = std::cell::Cell::new(0);
        let counted = || {
            syncs.set(syncs.get() + 1);
            Ok::<(), ()>(())
        };
        group.sync_through(first, counted).unwrap();
        assert_eq!(syncs.get(), 1, "the failed turn is synced again, not taken as done");
        assert!(group.synced() >= second, "a sync covers everything written before it began");
        group.sync_through(second, counted).unwrap();
        assert_eq!(syncs.get(), 1, "a turn already covered needs no sync");
    }
}
