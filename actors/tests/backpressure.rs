//! Back-pressure: with a slow sink, the source is slowed down to the sink's pace. What is in
//! flight stays within what the bounded mailboxes hold, whatever the input size, and memory
//! stays flat.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use assetflow_actors::decision::Origin;
use assetflow_actors::envelope::Watermark;
use assetflow_actors::ports::*;
use async_trait::async_trait;
use support::*;

const EVENTS: usize = 200_000;
const KEYS: usize = 2_000;

/// Generates events on the fly (nothing held in memory) and records the most messages that
/// were ever read but not yet acknowledged, and memory along the way.
struct Firehose {
    next: usize,
    watermark: Arc<Watermark<u64>>,
    peak_in_flight: Arc<AtomicUsize>,
    rss_samples: Arc<Mutex<Vec<(usize, u64)>>>,
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

#[async_trait]
impl Source for Firehose {
    async fn pull(&mut self, max: usize) -> BackendResult<Pull> {
        if self.next >= EVENTS {
            return Ok(Pull::Drained);
        }
        let mut out = Vec::with_capacity(max);
        while out.len() < max && self.next < EVENTS {
            let i = self.next;
            self.next += 1;
            // Every event changes its asset: each one is an upsert the slow sink must take. Each
            // pass over the keys is a run of its own, as a crawler's are (an asset seen twice in
            // one run leaves a run-event marker in the control table, which is state, not flow).
            let run = format!("r{}", i / KEYS);
            let line = running(
                &format!("e{i:07}"),
                "s",
                &run,
                &format!("t{:05}", i % KEYS),
                (i / KEYS) as u32,
                &format!("v{i}"),
            );
            out.push(RawMessage::new(
                line.into_bytes(),
                Origin { source: "firehose".into(), partition: "0".into(), offset: i.to_string() },
                self.watermark.register(i as u64),
            ));
        }
        self.peak_in_flight.fetch_max(self.watermark.outstanding(), Ordering::SeqCst);
        if self.next % 20_000 < max {
            self.rss_samples.lock().unwrap().push((self.next, rss_kib()));
        }
        Ok(Pull::Messages(out))
    }
    async fn commit(&mut self) -> BackendResult<()> {
        let _ = self.watermark.take_ready();
        Ok(())
    }
    fn outstanding(&self) -> usize {
        self.watermark.outstanding()
    }
}

/// Counts what it is sent, slowly, and keeps nothing.
#[derive(Default)]
struct SlowCountingSink {
    count: AtomicUsize,
}

#[async_trait]
impl Sink for SlowCountingSink {
    async fn send(&self, batch: &[SinkRecord]) -> BackendResult<()> {
        // 20 microseconds a record: far slower than deciding in memory.
        tokio::time::sleep(Duration::from_micros(20 * batch.len() as u64)).await;
        self.count.fetch_add(batch.len(), Ordering::SeqCst);
        Ok(())
    }
}

#[test]
fn a_slow_sink_slows_the_source_and_memory_stays_flat() {
    let peak = Arc::new(AtomicUsize::new(0));
    let rss = Arc::new(Mutex::new(Vec::new()));
    let source =
        Firehose { next: 0, watermark: Watermark::new(), peak_in_flight: peak.clone(), rss_samples: rss.clone() };
    let sink = Arc::new(SlowCountingSink::default());
    let mut s = settings(4);
    s.mailbox = 64;
    s.pull_batch = 64;
    // The cap on unacknowledged messages would bound the source on its own: lifted, so that
    // what holds the source back here is the mailboxes.
    s.max_in_flight = EVENTS;
    let upserts: Arc<dyn Sink> = sink.clone();
    let out = run_dyn_sink(s, Box::new(source), upserts);
    assert_eq!(sink.count.load(Ordering::SeqCst), EVENTS, "every event reached the sink");
    assert!(out.dead_letters.is_empty());
    // Mailboxes of 64 messages before the enricher, the router and 4 shards, each message a
    // batch of at most one pull (64 events): at most 6 x 64 x 64 = 24,576 queued, plus what
    // the stages hold while they work (about 14,000 in all, measured). Without back-pressure
    // the source would read far ahead of the sink, up to all 200,000.
    let peak = peak.load(Ordering::SeqCst);
    assert!(peak <= 30_000, "{peak} messages were in flight at once");
    let samples = rss.lock().unwrap().clone();
    let early = samples.iter().find(|(n, _)| *n >= 40_000).map(|s| s.1).unwrap_or(0);
    let late = samples.last().map(|s| s.1).unwrap_or(0);
    assert!(early > 0 && late > 0, "{samples:?}");
    assert!(late < early + 64 * 1024, "memory grew from {early} KiB to {late} KiB: {samples:?}");
}

const WINDOW: usize = 256;
const PULL: usize = 32;

/// Generates `total` events, one asset each, after a first message it keeps in flight itself
/// until `release` passes: a message whose batch waits on a slow sync. Records the most
/// messages ever in flight and ever behind the watermark (what a restart would read again).
struct HeldHead {
    next: usize,
    total: usize,
    watermark: Arc<Watermark<u64>>,
    peaks: Arc<Mutex<(usize, usize)>>,
}

impl HeldHead {
    fn new(total: usize, release: Duration, peaks: Arc<Mutex<(usize, usize)>>) -> Self {
        let watermark = Watermark::new();
        let head = watermark.register(0);
        std::thread::spawn(move || {
            std::thread::sleep(release);
            head.done();
        });
        HeldHead { next: 1, total, watermark, peaks }
    }
}

#[async_trait]
impl Source for HeldHead {
    async fn pull(&mut self, max: usize) -> BackendResult<Pull> {
        if self.next > self.total {
            return Ok(Pull::Drained);
        }
        let mut out = Vec::with_capacity(max);
        while out.len() < max && self.next <= self.total {
            let i = self.next;
            self.next += 1;
            out.push(RawMessage::new(
                running(&format!("e{i}"), "s", "r1", &format!("t{i}"), 1, "v").into_bytes(),
                Origin { source: "held".into(), partition: "0".into(), offset: i.to_string() },
                self.watermark.register(i as u64),
            ));
        }
        let mut peaks = self.peaks.lock().unwrap();
        peaks.0 = peaks.0.max(self.watermark.in_flight());
        peaks.1 = peaks.1.max(self.watermark.behind());
        Ok(Pull::Messages(out))
    }
    async fn commit(&mut self) -> BackendResult<()> {
        let _ = self.watermark.take_ready();
        Ok(())
    }
    fn outstanding(&self) -> usize {
        self.watermark.outstanding()
    }
}

/// The window bounds the messages in flight, not the distance from the oldest of them: while
/// one message is held, the source reads on (its followers are done), until what a restart
/// would read again reaches `SPAN_PER_WINDOW` windows.
#[test]
fn one_slow_message_does_not_stop_reading_until_the_span_bound() {
    let peaks = Arc::new(Mutex::new((0, 0)));
    let total = 8 * WINDOW * assetflow_actors::envelope::SPAN_PER_WINDOW;
    let source = HeldHead::new(total, Duration::from_millis(1500), peaks.clone());
    let sink = Arc::new(MemSink::default());
    let mut s = settings(4);
    s.max_in_flight = WINDOW;
    s.pull_batch = PULL;
    let upserts: Arc<dyn Sink> = sink.clone();
    let out = run_dyn_sink(s, Box::new(source), upserts);
    assert_eq!(sink.all().len(), total, "every event reached the sink");
    assert!(out.dead_letters.is_empty());
    let (in_flight, behind) = *peaks.lock().unwrap();
    // A pull that starts just under the bound may take one more batch.
    assert!(in_flight <= WINDOW + PULL, "{in_flight} messages in flight at once, window {WINDOW}");
    let span = WINDOW * assetflow_actors::envelope::SPAN_PER_WINDOW;
    assert!(behind <= span + PULL, "{behind} messages behind the watermark, bound {span}");
    // Counting the distance from the held message, reading would stop at one window.
    assert!(behind >= span - WINDOW, "reading stopped {behind} messages behind the held one");
}
