//! Settling: a shard's batches that are written but not yet durable, each acknowledged as soon
//! as it is, while the shard goes on with its next batches.
//!
//! A batch's effects are written outward first (content, upserts and history durable, then the
//! control records); only the control records' sync is left when the shard moves on, and only
//! where the store allows it ([`ControlStore::put_with_touches_deferred`]; the embedded store,
//! when another shard is syncing its journal): a later batch's records can then never be
//! durable before this one's. Nothing the batch carries is
//! acknowledged before its sync, so a crash in between re-delivers it, as any crash before an
//! acknowledgement does; the next batch already decided against its records, which the
//! re-delivery writes again exactly as they were (EVENTS.md §7).
//!
//! [`ControlStore::put_with_touches_deferred`]: crate::ports::ControlStore::put_with_touches_deferred

use std::cell::RefCell;
use std::sync::Arc;

use tokio::task::JoinHandle;

use super::{DecisorDeps, Pending, dead_letter_all};
use crate::decision::Stage;
use crate::ports::Durable;

/// One shard's batches waiting for their control records' sync.
#[derive(Default)]
pub(super) struct Settling {
    pending: RefCell<Vec<JoinHandle<()>>>,
}

impl Settling {
    /// Acknowledges `batch` once `durable` resolves, or dead-letters it (stage `decide`) if the
    /// sync fails, beside whatever the shard does next. Runs on the shard's own thread.
    pub(super) fn settle(&self, deps: Arc<DecisorDeps>, batch: Vec<Pending>, durable: Durable) {
        if durable.is_now() {
            return acknowledge(&deps, batch);
        }
        let started = std::time::Instant::now();
        let task = tokio::task::spawn_local(async move {
            let synced = durable.wait().await;
            deps.metrics.record_call("control store", "sync", started.elapsed(), synced.is_ok());
            match synced {
                Ok(()) => acknowledge(&deps, batch),
                Err(e) => {
                    tracing::error!(error = %e, events = batch.len(), "the control records' sync failed; dead-lettering the batch");
                    dead_letter_all(&deps, batch, Stage::Decide, e.dead_letter_kind(), &e).await;
                }
            }
        });
        let mut pending = self.pending.borrow_mut();
        pending.retain(|t| !t.is_finished());
        pending.push(task);
    }

    /// Returns once every batch handed to [`settle`](Self::settle) so far is acknowledged or
    /// dead-lettered: what "applied" means to a completion's barrier.
    pub(super) async fn all(&self) {
        let pending = std::mem::take(&mut *self.pending.borrow_mut());
        for task in pending {
            // A settling task only ends early if the shard's thread is stopping.
            let _ = task.await;
        }
    }
}

/// Acknowledges a durable batch, recording each event's decision latency.
pub(super) fn acknowledge(deps: &DecisorDeps, batch: Vec<Pending>) {
    // One clock read for the batch: its events are acknowledged together.
    let now = std::time::Instant::now();
    deps.metrics.decision_latency.observe_all(batch.iter().map(|p| now.saturating_duration_since(p.env.read_at)));
    for p in batch {
        p.env.ack.done();
    }
}
