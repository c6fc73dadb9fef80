//! The `kafka` source: a consumer group with manual commits. Each partition has its own
//! acknowledgement watermark; a commit carries, per partition, the offset after the longest
//! prefix of done messages, so nothing in flight or failed is ever skipped. When a rebalance
//! takes a partition away, what is done there is committed at once (synchronously, before the
//! partition moves) and the rest is abandoned to the next owner, which reads it again.
//!
//! A topology whose control table or history is embedded serves one process, so its member
//! must hold every partition of the topic: after each rebalance the member counts what it
//! holds. A member that joins a group another process already reads refuses to read (the run
//! stops, exit 1); a member that held everything and finds itself sharing pauses its
//! partitions, reports why on `/readyz`, and reads again once it holds them all.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use assetflow_actors::decision::Origin;
use assetflow_actors::envelope::Watermark;
use assetflow_actors::ports::{BackendError, BackendResult, Pull, RawMessage, Source};
use async_trait::async_trait;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::{ClientConfig, ClientContext, Message, Offset, TopicPartitionList};

use super::kafka_error;

/// Per partition: its watermark, and the offset after the last message received.
#[derive(Default)]
struct Partitions {
    watermarks: HashMap<i32, Arc<Watermark<i64>>>,
    received: HashMap<i32, i64>,
}

type Shared = Arc<Mutex<Partitions>>;

fn lock(p: &Shared) -> std::sync::MutexGuard<'_, Partitions> {
    p.lock().unwrap_or_else(|e| e.into_inner())
}

/// The done prefix of `partitions` (all if `None`), as a commit list.
fn ready_offsets(p: &Shared, topic: &str, only: Option<&[i32]>) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    let parts = lock(p);
    for (part, wm) in &parts.watermarks {
        if only.is_some_and(|o| !o.contains(part)) {
            continue;
        }
        if let Some(pos) = wm.take_ready() {
            let _ = tpl.add_partition_offset(topic, *part, Offset::Offset(pos));
        }
    }
    tpl
}

/// Whether this member may read, when its topology's state serves one process.
#[derive(Default)]
struct Sharing {
    /// Every partition of the topic was assigned here at least once since the start.
    held_all: bool,
    /// Why reading is paused: another member holds some partitions.
    paused: Option<String>,
    /// Why this member will not read at all: it joined a group another process reads.
    refused: Option<String>,
}

pub struct GroupContext {
    topic: String,
    group: String,
    /// The topology keeps state that serves one process (an embedded control table or history).
    one_process: bool,
    sharing: Arc<Mutex<Sharing>>,
    partitions: Shared,
    /// Messages behind the partitions' high watermarks, from librdkafka's statistics (every
    /// few seconds, no extra broker calls); `u64::MAX` until the first report.
    lag: Arc<std::sync::atomic::AtomicU64>,
}

impl ClientContext for GroupContext {
    fn stats(&self, statistics: rdkafka::Statistics) {
        let Some(topic) = statistics.topics.get(&self.topic) else { return };
        // Partition -1 is librdkafka's internal "unassigned" one; -1 lag means "not known yet".
        let lag: i64 = topic.partitions.values().filter(|p| p.partition >= 0).map(|p| p.consumer_lag.max(0)).sum();
        self.lag.store(lag as u64, std::sync::atomic::Ordering::Relaxed);
    }
}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(revoked) = rebalance {
            let parts: Vec<i32> =
                revoked.elements().iter().filter(|e| e.topic() == self.topic).map(|e| e.partition()).collect();
            let tpl = ready_offsets(&self.partitions, &self.topic, Some(&parts));
            if tpl.count() > 0 {
                if let Err(e) = consumer.commit(&tpl, CommitMode::Sync) {
                    tracing::warn!(topic = %self.topic, error = %e, "commit on revoke failed; the next owner re-reads from the last commit");
                }
            }
            let mut p = lock(&self.partitions);
            for part in &parts {
                // In-flight messages of a revoked partition still finish here, but their acks
                // go to a watermark nobody commits: the new owner re-reads them.
                p.watermarks.remove(part);
                p.received.remove(part);
            }
            tracing::info!(topic = %self.topic, partitions = ?parts, "partitions revoked");
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(assigned) = rebalance {
            let parts: Vec<i32> = assigned.elements().iter().map(|e| e.partition()).collect();
            tracing::info!(topic = %self.topic, partitions = ?parts, "partitions assigned");
        }
        // After an assignment only: an eager rebalance revokes everything for a moment first.
        if self.one_process && matches!(rebalance, Rebalance::Assign(_)) {
            self.check_sharing(consumer);
        }
    }
}

impl GroupContext {
    /// Counts the partitions this member holds after an assignment (the whole assignment, for
    /// eager and cooperative rebalances alike), and pauses them, or resumes them, as
    /// [`Sharing`] says.
    fn check_sharing(&self, consumer: &BaseConsumer<Self>) {
        let Ok(mine) = consumer.assignment() else { return };
        let held = mine.elements().iter().filter(|e| e.topic() == self.topic).count();
        let total = match consumer.fetch_metadata(Some(&self.topic), Duration::from_secs(5)) {
            Ok(md) => md.topics().iter().find(|t| t.name() == self.topic).map_or(0, |t| t.partitions().len()),
            Err(e) => {
                tracing::warn!(topic = %self.topic, error = %e, "cannot count the topic's partitions; sharing not checked");
                return;
            }
        };
        let mut s = lock_sharing(&self.sharing);
        if total > 0 && held >= total {
            if s.paused.take().is_some() {
                tracing::info!(topic = %self.topic, "this process holds every partition again; reading resumes");
                if let Err(e) = consumer.resume(&mine) {
                    tracing::warn!(error = %e, "resuming the partitions failed");
                }
            }
            s.held_all = true;
            return;
        }
        let why = format!(
            "the consumer group `{group}` reads topic `{topic}` with another process (this one holds {held} of its \
             {total} partitions), but this topology keeps its control table or history in the embedded store, which \
             serves one process: a source whose partition moved would be decided without its records. Run one \
             process per group, or keep control and history in PostgreSQL (control.kind and history.kind = \
             \"postgres\", docs/CONFIG.md)",
            group = self.group,
            topic = self.topic
        );
        if let Err(e) = consumer.pause(&mine) {
            tracing::warn!(error = %e, "pausing the partitions failed");
        }
        if s.held_all {
            if s.paused.is_none() {
                tracing::error!("reading paused: {why}");
            }
            s.paused = Some(why);
        } else {
            s.refused = Some(why);
        }
    }
}

fn lock_sharing(s: &Arc<Mutex<Sharing>>) -> std::sync::MutexGuard<'_, Sharing> {
    s.lock().unwrap_or_else(|e| e.into_inner())
}

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
    pub extra: BTreeMap<String, String>,
}

pub struct KafkaSource {
    name: String,
    topic: String,
    consumer: Arc<StreamConsumer<GroupContext>>,
    partitions: Shared,
    follow: bool,
    lag: Arc<std::sync::atomic::AtomicU64>,
    sharing: Arc<Mutex<Sharing>>,
}

impl KafkaSource {
    pub fn new(
        name: String,
        brokers: &str,
        topic: &str,
        group: &str,
        opts: &KafkaSourceOptions,
    ) -> Result<Self, String> {
        let partitions: Shared = Arc::default();
        let mut cfg = ClientConfig::new();
        cfg.set("bootstrap.servers", brokers)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", &opts.auto_offset_reset)
            .set("session.timeout.ms", opts.session_timeout_ms.to_string())
            .set("enable.partition.eof", "false")
            .set("statistics.interval.ms", "5000");
        for (k, v) in &opts.extra {
            cfg.set(k, v);
        }
        let lag = Arc::new(std::sync::atomic::AtomicU64::new(u64::MAX));
        let sharing: Arc<Mutex<Sharing>> = Arc::default();
        let ctx = GroupContext {
            topic: topic.to_owned(),
            group: group.to_owned(),
            one_process: opts.one_process,
            sharing: sharing.clone(),
            partitions: partitions.clone(),
            lag: lag.clone(),
        };
        let consumer: StreamConsumer<GroupContext> =
            cfg.create_with_context(ctx).map_err(|e| format!("cannot create a Kafka consumer for {brokers}: {e}"))?;
        consumer.subscribe(&[topic]).map_err(|e| format!("cannot subscribe to {topic}: {e}"))?;
        Ok(KafkaSource {
            name,
            topic: topic.to_owned(),
            consumer: Arc::new(consumer),
            partitions,
            follow: opts.follow,
            lag,
            sharing,
        })
    }

    fn is_paused(&self) -> bool {
        lock_sharing(&self.sharing).paused.is_some()
    }

    /// Every assigned partition read to its high watermark (blocking broker calls).
    async fn caught_up(&self) -> BackendResult<bool> {
        let consumer = self.consumer.clone();
        let partitions = self.partitions.clone();
        let topic = self.topic.clone();
        tokio::task::spawn_blocking(move || {
            let assignment = consumer.assignment().map_err(|e| kafka_error("assignment", &e))?;
            if assignment.count() == 0 {
                return Ok(false);
            }
            for e in assignment.elements() {
                let (low, high) = consumer
                    .fetch_watermarks(&topic, e.partition(), Duration::from_secs(5))
                    .map_err(|e| kafka_error("fetch watermarks", &e))?;
                let next = lock(&partitions).received.get(&e.partition()).copied();
                let done = match next {
                    Some(n) => n >= high,
                    None => high <= low,
                };
                if !done {
                    return Ok(false);
                }
            }
            Ok(true)
        })
        .await
        .map_err(|e| BackendError::transient("kafka", "watermarks", e))?
    }
}

#[async_trait]
impl Source for KafkaSource {
    async fn pull(&mut self, max: usize) -> BackendResult<Pull> {
        if let Some(why) = lock_sharing(&self.sharing).refused.clone() {
            return Ok(Pull::Refused(why));
        }
        let mut out = Vec::new();
        let mut wait = Duration::from_millis(200);
        while out.len() < max {
            let msg = match tokio::time::timeout(wait, self.consumer.recv()).await {
                Err(_) => break,
                Ok(Err(e)) => {
                    if out.is_empty() {
                        return Err(kafka_error("consume", &e));
                    }
                    break;
                }
                Ok(Ok(m)) => m,
            };
            // After the first message, take only what is already there.
            wait = Duration::from_millis(1);
            let (part, offset) = (msg.partition(), msg.offset());
            if self.is_paused() {
                // Fetched just before the pause: put the partition back at this message, so it
                // is read again on resume (or by the next owner), never skipped.
                let consumer = self.consumer.clone();
                let topic = self.topic.clone();
                let _ = tokio::task::spawn_blocking(move || {
                    consumer.seek(&topic, part, Offset::Offset(offset), Duration::from_secs(5))
                })
                .await;
                break;
            }
            let wm = {
                let mut p = lock(&self.partitions);
                p.received.insert(part, offset + 1);
                p.watermarks.entry(part).or_insert_with(Watermark::new).clone()
            };
            let origin = Origin {
                source: self.name.clone(),
                partition: format!("{}/{part}", self.topic),
                offset: offset.to_string(),
            };
            out.push(RawMessage::new(msg.payload().unwrap_or_default().to_vec(), origin, wm.register(offset + 1)));
        }
        if !out.is_empty() {
            return Ok(Pull::Messages(out));
        }
        if !self.follow && !self.is_paused() && self.outstanding() == 0 && self.caught_up().await? {
            return Ok(Pull::Drained);
        }
        Ok(Pull::Idle)
    }

    async fn commit(&mut self) -> BackendResult<()> {
        let tpl = ready_offsets(&self.partitions, &self.topic, None);
        if tpl.count() == 0 {
            return Ok(());
        }
        let consumer = self.consumer.clone();
        tokio::task::spawn_blocking(move || {
            consumer.commit(&tpl, CommitMode::Sync).map_err(|e| kafka_error("commit", &e))
        })
        .await
        .map_err(|e| BackendError::transient("kafka", "commit", e))?
    }

    fn outstanding(&self) -> usize {
        lock(&self.partitions).watermarks.values().map(|w| w.outstanding()).sum()
    }

    /// Not ready while reading is paused (the group is shared), or while the group has given
    /// this member no partition of the topic.
    fn not_ready(&self) -> Option<String> {
        if let Some(why) = lock_sharing(&self.sharing).paused.clone() {
            return Some(why);
        }
        match self.consumer.assignment() {
            Ok(tpl) if tpl.count() > 0 => None,
            Ok(_) => Some(format!(
                "no partition of {} assigned yet (the group is rebalancing, or has more members than partitions)",
                self.topic
            )),
            Err(e) => Some(format!("cannot read the assignment: {e}")),
        }
    }

    /// Consumer lag: messages behind the high watermarks of the assigned partitions.
    fn lag(&self) -> Option<u64> {
        Some(self.lag.load(std::sync::atomic::Ordering::Relaxed)).filter(|l| *l != u64::MAX)
    }
}
