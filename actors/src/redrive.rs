//! Redrive: dead letters read back from their store and fed to the pipeline again, as a
//! [`Source`], so they take exactly the path of a first delivery (decode, validate, enrich,
//! decide) with `attempts` one higher. Every earlier stage is deterministic and idempotent, so
//! replaying from the start is replaying at the stage that failed.
//!
//! A dead letter already tried `max_attempts` times is parked: written where the store keeps
//! parked letters (durable, listable with `assetflow redrive --parked`) before it is
//! acknowledged, reported, never replayed again. Redrive is crash-safe because its position in the store moves only
//! with the acknowledgement watermark: a crash replays some dead letters again, and the
//! decisions they produce carry the same ids.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;

use crate::ports::{BackendResult, DeadLetterStore, Pull, RawMessage, Source};

/// What a redrive did.
#[derive(Debug, Default)]
pub struct RedriveStats {
    pub replayed: AtomicU64,
    pub parked: AtomicU64,
}

impl RedriveStats {
    pub fn replayed(&self) -> u64 {
        self.replayed.load(Ordering::Relaxed)
    }
    pub fn parked(&self) -> u64 {
        self.parked.load(Ordering::Relaxed)
    }
}

/// A [`Source`] over a [`DeadLetterStore`].
pub struct RedriveSource<S> {
    store: S,
    max_attempts: u32,
    /// Replay at most this many (`--max N`).
    limit: Option<u64>,
    stats: Arc<RedriveStats>,
}

impl<S: DeadLetterStore> RedriveSource<S> {
    pub fn new(store: S, max_attempts: u32, limit: Option<u64>, stats: Arc<RedriveStats>) -> Self {
        RedriveSource { store, max_attempts, limit, stats }
    }
}

#[async_trait]
impl<S: DeadLetterStore> Source for RedriveSource<S> {
    async fn pull(&mut self, max: usize) -> BackendResult<Pull> {
        let room = match self.limit {
            Some(limit) => limit.saturating_sub(self.stats.replayed()) as usize,
            None => max,
        };
        if room == 0 {
            return Ok(Pull::Drained);
        }
        let Some(letters) = self.store.next(max.min(room)).await? else { return Ok(Pull::Drained) };
        let mut out = Vec::with_capacity(letters.len());
        for (dl, ack) in letters {
            if dl.attempts >= self.max_attempts {
                tracing::warn!(
                    event_id = dl.event_id.as_deref().unwrap_or("-"),
                    kind = %dl.error.kind,
                    attempts = dl.attempts,
                    "dead letter parked: tried {} times (redrive.max_attempts = {}); `assetflow redrive --parked` lists it",
                    dl.attempts,
                    self.max_attempts
                );
                // Parked before it is acknowledged: a failure here leaves it in the store.
                self.store.park(&dl).await?;
                self.stats.parked.fetch_add(1, Ordering::Relaxed);
                ack.done();
                continue;
            }
            self.stats.replayed.fetch_add(1, Ordering::Relaxed);
            let mut msg = RawMessage::new(dl.original(), dl.origin, ack);
            msg.attempts = dl.attempts + 1;
            out.push(msg);
        }
        Ok(Pull::Messages(out))
    }

    async fn commit(&mut self) -> BackendResult<()> {
        self.store.commit().await
    }

    fn outstanding(&self) -> usize {
        self.store.outstanding()
    }
}
