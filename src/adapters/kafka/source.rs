//! The `kafka` source: a consumer group with manual commits. Each partition has its own
//! acknowledgement watermark; a commit carries, per partition, the offset after the longest
//! prefix of done messages, so nothing in flight or failed is ever skipped.
//!
//! The consumer is polled on a thread of its own and hands messages over through a bounded
//! channel: librdkafka runs the rebalance callbacks inside that poll, and a revoke waits there
//! for the partition's in-flight messages (`super::group`), which the actors finish on their
//! own threads meanwhile.
//!
//! A topology whose control table or history is embedded serves one process, so its member
//! must hold every partition of the topic: after each rebalance the member counts what it
//! holds. A member that joins a group another process already reads refuses to read (the run
//! stops, exit 1); a member that held everything and finds itself sharing pauses its
//! partitions, reports why on `/readyz`, and reads again once it holds them all.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use assetflow_actors::decision::Origin;
use assetflow_actors::ports::{BackendError, BackendResult, Pull, RawMessage, Source};
use async_trait::async_trait;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{ClientConfig, Message, Offset};
use tokio::sync::mpsc;

use super::group::{Group, GroupContext, lock};
use super::kafka_error;

/// Messages fetched ahead of the pipeline, beyond librdkafka's own queue.
const HANDOVER: usize = 1024;
/// Longest wait of one poll: how soon the thread notices that the source is gone.
const POLL: Duration = Duration::from_millis(100);

/// Consumer settings beyond the required ones.
#[derive(Debug, Clone)]
pub struct KafkaSourceOptions {
    pub auto_offset_reset: String,
    pub session_timeout_ms: u32,
    /// false: stop once every assigned partition is read to its end.
    pub follow: bool,
    /// The topology keeps state that serves one process (an embedded control table or
    /// history): this member must hold every partition of the topic, or not read.
    pub one_process: bool,
    /// Static membership: a restart within the session timeout keeps its partitions.
    pub group_instance_id: Option<String>,
    /// How long a revoked partition's in-flight messages may take before it moves anyway.
    pub revoke_timeout: Duration,
    pub extra: BTreeMap<String, String>,
}

/// One message on its way from the polling thread to [`KafkaSource::pull`].
struct Fetched {
    part: i32,
    offset: i64,
    /// The partition's epoch when it was fetched (see [`super::group::Held`]).
    epoch: u64,
    payload: Vec<u8>,
}

pub struct KafkaSource {
    name: String,
    group: Arc<Group>,
    consumer: Arc<BaseConsumer<GroupContext>>,
    fetched: mpsc::Receiver<Result<Fetched, KafkaError>>,
    follow: bool,
    poller: Option<std::thread::JoinHandle<()>>,
    /// Read no further than these offsets (per partition): where each ended when a redrive
    /// began, so what it writes waits for the next one.
    ends: Option<std::collections::HashMap<i32, i64>>,
}

impl KafkaSource {
    pub fn new(
        name: String,
        brokers: &str,
        topic: &str,
        group_id: &str,
        opts: &KafkaSourceOptions,
    ) -> Result<Self, String> {
        let mut cfg = ClientConfig::new();
        cfg.set("bootstrap.servers", brokers)
            .set("group.id", group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", &opts.auto_offset_reset)
            .set("session.timeout.ms", opts.session_timeout_ms.to_string())
            // A rebalance moves only the partitions that must move; the rest keep flowing.
            .set("partition.assignment.strategy", "cooperative-sticky")
            .set("enable.partition.eof", "false")
            .set("statistics.interval.ms", "5000");
        if let Some(id) = &opts.group_instance_id {
            cfg.set("group.instance.id", id);
        }
        for (k, v) in &opts.extra {
            cfg.set(k, v);
        }
        let session_timeout = Duration::from_millis(opts.session_timeout_ms.into());
        let group = Arc::new(Group::new(topic, group_id, opts.one_process, opts.revoke_timeout, session_timeout));
        let consumer: BaseConsumer<GroupContext> = cfg
            .create_with_context(GroupContext(group.clone()))
            .map_err(|e| format!("cannot create a Kafka consumer for {brokers}: {e}"))?;
        consumer.subscribe(&[topic]).map_err(|e| format!("cannot subscribe to {topic}: {e}"))?;
        let consumer = Arc::new(consumer);
        let (tx, fetched) = mpsc::channel(HANDOVER);
        let (c, g) = (consumer.clone(), group.clone());
        let poller = std::thread::Builder::new()
            .name(format!("kafka-{name}"))
            .spawn(move || poll_loop(&c, &g, &tx))
            .map_err(|e| format!("cannot start the Kafka polling thread: {e}"))?;
        Ok(KafkaSource { name, group, consumer, fetched, follow: opts.follow, poller: Some(poller), ends: None })
    }

    /// Stops at `ends` (partition → offset): a message at or past its partition's end is left
    /// unread and uncommitted, and the source is drained once every partition reached its end.
    pub fn until(mut self, ends: std::collections::HashMap<i32, i64>) -> Self {
        self.ends = Some(ends);
        self
    }

    /// Admits a fetched message if its partition is still held under the epoch it was fetched
    /// in; a message of a partition revoked since is dropped (its next owner reads it again).
    fn admit(&self, f: Fetched) -> Option<RawMessage> {
        if self.ends.as_ref().is_some_and(|ends| f.offset >= ends.get(&f.part).copied().unwrap_or(0)) {
            return None;
        }
        let ack = {
            let mut a = lock(&self.group.assignment);
            let held = a.held.get_mut(&f.part).filter(|h| h.epoch == f.epoch)?;
            held.received = Some(f.offset + 1);
            held.watermark.register(f.offset + 1)
        };
        let origin = Origin {
            source: self.name.clone(),
            partition: format!("{}/{}", self.group.topic, f.part),
            offset: f.offset.to_string(),
        };
        Some(RawMessage::new(f.payload, origin, ack))
    }

    /// Every held partition read to its end: to the high watermark, from the last message
    /// admitted or, for a partition nothing was read from, from the group's committed offset
    /// (blocking broker calls).
    async fn caught_up(&self) -> BackendResult<bool> {
        let consumer = self.consumer.clone();
        let group = self.group.clone();
        let ends = self.ends.clone();
        tokio::task::spawn_blocking(move || {
            let assignment = consumer.assignment().map_err(|e| kafka_error("assignment", &e))?;
            if assignment.count() == 0 {
                return Ok(false);
            }
            let committed = consumer
                .committed_offsets(assignment.clone(), Duration::from_secs(5))
                .map_err(|e| kafka_error("committed offsets", &e))?;
            let parts: Vec<i32> = assignment.elements().iter().map(|e| e.partition()).collect();
            for (part, marks) in parts.iter().zip(watermarks(&consumer, &group.topic, &parts)) {
                let part = *part;
                let (low, mut high) = marks?;
                if let Some(end) = ends.as_ref().map(|e| e.get(&part).copied().unwrap_or(0)) {
                    high = high.min(end);
                }
                let received = lock(&group.assignment).held.get(&part).and_then(|h| h.received);
                let next = received.unwrap_or_else(|| match committed.find_partition(&group.topic, part) {
                    Some(c) => match c.offset() {
                        Offset::Offset(o) => o,
                        _ => low,
                    },
                    None => low,
                });
                if next < high {
                    return Ok(false);
                }
            }
            Ok(true)
        })
        .await
        .map_err(|e| BackendError::transient("kafka", "watermarks", e))?
    }
}

/// The low and high watermarks of `parts`, asked side by side. A broker answers one
/// connection's requests in order, so each query waits behind the consumer's fetch long poll
/// (`fetch.wait.max.ms`, 500 ms by default): asked one after another, a drained topic of four
/// partitions took ~1.8 s to be found read to its end, twelve would take six.
fn watermarks(consumer: &BaseConsumer<GroupContext>, topic: &str, parts: &[i32]) -> Vec<BackendResult<(i64, i64)>> {
    let query = |part: i32| {
        consumer.fetch_watermarks(topic, part, Duration::from_secs(5)).map_err(|e| kafka_error("fetch watermarks", &e))
    };
    let mut out = Vec::with_capacity(parts.len());
    // A thread a query, a bounded number at a time: a topic may have hundreds of partitions.
    for chunk in parts.chunks(WATERMARK_QUERIES) {
        std::thread::scope(|s| {
            let asked: Vec<_> = chunk.iter().map(|&part| s.spawn(move || query(part))).collect();
            out.extend(asked.into_iter().map(|a| {
                a.join()
                    .unwrap_or_else(|_| Err(BackendError::transient("kafka", "fetch watermarks", "a query panicked")))
            }));
        });
    }
    out
}

/// Watermark queries sent at once by [`watermarks`].
const WATERMARK_QUERIES: usize = 16;

impl Drop for KafkaSource {
    /// Leaves the group before returning: the polling thread stops (within one poll) and this
    /// thread closes the consumer, so a member started right after never waits on this one.
    fn drop(&mut self) {
        self.group.stopping.store(true, Ordering::Relaxed);
        if let Some(poller) = self.poller.take() {
            let _ = poller.join();
        }
    }
}

/// The polling thread: fetches, serves rebalances, and hands messages over, waiting (and so
/// fetching no more) while the pipeline is behind.
fn poll_loop(consumer: &BaseConsumer<GroupContext>, group: &Group, tx: &mpsc::Sender<Result<Fetched, KafkaError>>) {
    while !group.stopping.load(Ordering::Relaxed) {
        let item = match consumer.poll(POLL) {
            None => continue,
            Some(Err(e)) => Err(e),
            Some(Ok(m)) => {
                let (part, offset) = (m.partition(), m.offset());
                if group.is_paused() {
                    // Fetched just before the pause: put the partition back at this message,
                    // so it is read again on resume (or by the next owner), never skipped.
                    let _ = consumer.seek(&group.topic, part, Offset::Offset(offset), Duration::from_secs(5));
                    continue;
                }
                // Not held: revoked between the fetch and now.
                let Some(epoch) = group.epoch_of(part) else { continue };
                Ok(Fetched { part, offset, epoch, payload: m.payload().unwrap_or_default().to_vec() })
            }
        };
        let mut item = item;
        loop {
            match tx.try_send(item) {
                Ok(()) => break,
                Err(mpsc::error::TrySendError::Closed(_)) => return,
                Err(mpsc::error::TrySendError::Full(back)) => {
                    if group.stopping.load(Ordering::Relaxed) {
                        return;
                    }
                    item = back;
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
        }
    }
}

#[async_trait]
impl Source for KafkaSource {
    async fn pull(&mut self, max: usize) -> BackendResult<Pull> {
        if let Some(why) = self.group.refusal() {
            return Ok(Pull::Refused(why));
        }
        let mut out = Vec::new();
        let first = match tokio::time::timeout(Duration::from_millis(200), self.fetched.recv()).await {
            Err(_) => None,
            Ok(None) => return Err(BackendError::transient("kafka", "consume", "the polling thread stopped")),
            Ok(Some(item)) => Some(item),
        };
        let mut next = first;
        while let Some(item) = next.take() {
            match item {
                Ok(f) => out.extend(self.admit(f)),
                Err(e) if out.is_empty() => return Err(kafka_error("consume", &e)),
                Err(e) => {
                    tracing::warn!(source = %self.name, error = %e, "Kafka consumer error");
                    break;
                }
            }
            if out.len() >= max {
                break;
            }
            // After the first message, take only what is already there.
            next = self.fetched.try_recv().ok();
        }
        if !out.is_empty() {
            return Ok(Pull::Messages(out));
        }
        if !self.follow && !self.group.is_paused() && self.outstanding() == 0 && self.caught_up().await? {
            return Ok(Pull::Drained);
        }
        Ok(Pull::Idle)
    }

    async fn commit(&mut self) -> BackendResult<()> {
        let consumer = self.consumer.clone();
        let group = self.group.clone();
        tokio::task::spawn_blocking(move || {
            // Built and sent under one lock, which a revoke takes before its own commit: a
            // partition is never committed after it left.
            let _commits = lock(&group.commits);
            let tpl = group.ready_offsets();
            if tpl.count() == 0 {
                return Ok(());
            }
            consumer.commit(&tpl, CommitMode::Sync).map_err(|e| kafka_error("commit", &e))
        })
        .await
        .map_err(|e| BackendError::transient("kafka", "commit", e))?
    }

    fn outstanding(&self) -> usize {
        lock(&self.group.assignment).held.values().map(|h| h.watermark.outstanding()).sum()
    }

    /// Not ready while reading is paused (the group is shared), or while the group has given
    /// this member no partition of the topic.
    fn not_ready(&self) -> Option<String> {
        if let Some(why) = lock(&self.group.sharing).paused.clone() {
            return Some(why);
        }
        match self.consumer.assignment() {
            Ok(tpl) if tpl.count() > 0 => None,
            Ok(_) => Some(format!(
                "no partition of {} assigned yet (the group is rebalancing, or has more members than partitions)",
                self.group.topic
            )),
            Err(e) => Some(format!("cannot read the assignment: {e}")),
        }
    }

    /// Consumer lag: messages behind the high watermarks of the assigned partitions.
    fn lag(&self) -> Option<u64> {
        Some(self.group.lag.load(Ordering::Relaxed)).filter(|l| *l != u64::MAX)
    }
}
