//! An input message in flight: its body, its original bytes, and the [`Ack`] that releases it.
//!
//! Acknowledgement is by watermark: every message of a partition gets a sequence number when it
//! is read, and the partition's [`Watermark`] only ever offers for commit the position after the
//! longest prefix of messages that are all done. A message that is still in flight, or was lost
//! to a crash, holds the watermark back, so a restart re-delivers it instead of skipping it.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::decision::Origin;

/// A message moving through the pipeline.
#[derive(Debug)]
pub struct Envelope<T> {
    pub body: T,
    /// The original bytes, verbatim, for dead letters and redrive. The source's own buffer,
    /// shared: an `Arc<[u8]>` would copy every message once more on the way in.
    pub raw: Arc<Vec<u8>>,
    pub origin: Origin,
    /// How many times this message has been through the pipeline (1 for a first delivery).
    pub attempts: u32,
    pub ack: Ack,
    /// When the source handed the message over: decision latency is measured from here.
    pub read_at: std::time::Instant,
}

impl<T> Envelope<T> {
    /// The same message with another body.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Envelope<U> {
        Envelope {
            body: f(self.body),
            raw: self.raw,
            origin: self.origin,
            attempts: self.attempts,
            ack: self.ack,
            read_at: self.read_at,
        }
    }
    /// Splits off the body, keeping the rest of the envelope.
    pub fn split(self) -> (T, Envelope<()>) {
        let rest = Envelope {
            body: (),
            raw: self.raw,
            origin: self.origin,
            attempts: self.attempts,
            ack: self.ack,
            read_at: self.read_at,
        };
        (self.body, rest)
    }
}

/// Whatever tracks acknowledgements for a partition.
pub trait AckSink: Send + Sync + 'static {
    fn done(&self, seq: u64);
}

/// The right to acknowledge one message. Call [`Ack::done`] once every effect of the message is
/// durable; dropping it instead leaves the message unacknowledged, to be re-delivered on restart.
#[must_use = "an Ack that is never done holds its partition's watermark back"]
pub struct Ack {
    target: Option<(Arc<dyn AckSink>, u64)>,
}

impl std::fmt::Debug for Ack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.target {
            Some((_, seq)) => write!(f, "Ack({seq})"),
            None => f.write_str("Ack(none)"),
        }
    }
}

impl Ack {
    pub fn new(sink: Arc<dyn AckSink>, seq: u64) -> Self {
        Ack { target: Some((sink, seq)) }
    }
    /// An ack that tracks nothing (tests, messages whose source has no positions).
    pub fn detached() -> Self {
        Ack { target: None }
    }
    pub fn done(mut self) {
        if let Some((sink, seq)) = self.target.take() {
            sink.done(seq);
        }
    }
}

impl Drop for Ack {
    fn drop(&mut self) {
        if let Some((_, seq)) = &self.target {
            tracing::debug!(seq, "message released without acknowledgement; it will be re-delivered after a restart");
        }
    }
}

/// The acknowledgement watermark of one partition; `P` is the position to resume from.
pub struct Watermark<P> {
    inner: Mutex<Inner<P>>,
}

struct Inner<P> {
    /// Sequence number of `slots[0]`.
    base: u64,
    /// (position after the message, done?) for every message not yet below the watermark.
    slots: VecDeque<(P, bool)>,
    /// The newest position below which everything is done, not yet taken for commit.
    ready: Option<P>,
    /// Messages read and not yet done (`slots` not marked done).
    pending: usize,
}

/// What a message not yet below the watermark counts against the window, against a whole one
/// for a message not yet done: see [`Watermark::outstanding`].
pub const SPAN_PER_WINDOW: usize = 4;

impl<P: Send + 'static> Watermark<P> {
    pub fn new() -> Arc<Self> {
        Arc::new(Watermark { inner: Mutex::new(Inner { base: 0, slots: VecDeque::new(), ready: None, pending: 0 }) })
    }

    fn lock(&self) -> MutexGuard<'_, Inner<P>> {
        // A poisoned lock only means another thread panicked mid-update of plain data.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a message read from the partition; `resume_at` is the position after it.
    pub fn register(self: &Arc<Self>, resume_at: P) -> Ack {
        let mut inner = self.lock();
        let seq = inner.base + inner.slots.len() as u64;
        inner.slots.push_back((resume_at, false));
        inner.pending += 1;
        drop(inner);
        Ack::new(self.clone() as Arc<dyn AckSink>, seq)
    }

    /// The position to commit, if the watermark moved since the last call.
    pub fn take_ready(&self) -> Option<P> {
        self.lock().ready.take()
    }

    /// What counts against a source's window (`pipeline.max_in_flight`): the messages read and
    /// not yet acknowledged, or a [`SPAN_PER_WINDOW`]th of those not yet below the watermark,
    /// whichever is more. Zero exactly when everything read is acknowledged.
    ///
    /// Not the distance from the watermark alone: one slow message (a shard whose batch waits
    /// on a slow sync) would then stop reading for every shard while the messages behind it are
    /// long done, which on a machine whose syncs are slow against its cores is most of the
    /// time. Not the messages in flight alone either: the span is what a restart re-delivers,
    /// so it stays bounded, at [`SPAN_PER_WINDOW`] windows.
    pub fn outstanding(&self) -> usize {
        let inner = self.lock();
        inner.pending.max(inner.slots.len() / SPAN_PER_WINDOW)
    }

    /// Messages read and not yet acknowledged.
    pub fn in_flight(&self) -> usize {
        self.lock().pending
    }

    /// Messages read and not yet below the watermark: what a restart would read again.
    pub fn behind(&self) -> usize {
        self.lock().slots.len()
    }
}

impl<P: Send + 'static> AckSink for Watermark<P> {
    fn done(&self, seq: u64) {
        let mut inner = self.lock();
        let Some(idx) = seq.checked_sub(inner.base) else {
            return;
        };
        if let Some(slot) = inner.slots.get_mut(idx as usize)
            && !slot.1
        {
            slot.1 = true;
            inner.pending -= 1;
        }
        while inner.slots.front().is_some_and(|s| s.1) {
            if let Some((pos, _)) = inner.slots.pop_front() {
                inner.ready = Some(pos);
                inner.base += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_contiguous_prefix_is_committed() {
        let wm = Watermark::<u64>::new();
        let a = wm.register(10);
        let b = wm.register(20);
        let c = wm.register(30);
        b.done();
        assert_eq!(wm.take_ready(), None, "a is still in flight");
        a.done();
        assert_eq!(wm.take_ready(), Some(20));
        assert_eq!(wm.take_ready(), None);
        assert_eq!(wm.outstanding(), 1);
        drop(c);
        assert_eq!(wm.take_ready(), None, "a dropped ack never moves the watermark");
    }

    #[test]
    fn the_window_counts_messages_in_flight_and_a_share_of_the_span() {
        let wm = Watermark::<u64>::new();
        let head = wm.register(0);
        let rest: Vec<Ack> = (1..=12).map(|i| wm.register(i)).collect();
        assert_eq!(wm.outstanding(), 13);
        for ack in rest {
            ack.done();
        }
        // Twelve done behind a head still in flight: one message in flight, thirteen behind.
        assert_eq!((wm.in_flight(), wm.behind()), (1, 13));
        assert_eq!(wm.outstanding(), 13 / SPAN_PER_WINDOW, "the span still counts, a share of it");
        assert_eq!(wm.take_ready(), None);
        head.done();
        assert_eq!((wm.outstanding(), wm.in_flight(), wm.behind()), (0, 0, 0));
        assert_eq!(wm.take_ready(), Some(12));
    }
}
