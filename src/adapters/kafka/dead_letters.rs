//! The Kafka failure topic (a `kafka` dead-letter sink) read back for redrive: its own consumer
//! group (`redrive.group`), committing each partition's acknowledged prefix as it goes, so a
//! redrive takes up where the last one stopped, and reading no further than where each
//! partition ended when it began (what it writes itself waits for the next redrive). Parked dead letters are produced to a topic of
//! their own (`redrive.parked_topic`, default `<topic>.parked`, created when missing) before
//! they are acknowledged, and listed from it without joining any group.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use assetflow_actors::decision::DeadLetter;
use assetflow_actors::envelope::Ack;
use assetflow_actors::ports::{BackendError, BackendResult, DeadLetterStore, Pull, Sink, SinkRecord, Source};
use async_trait::async_trait;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use super::kafka_error;
use super::sink::KafkaSink;
use super::source::{KafkaSource, KafkaSourceOptions};

/// The parking topic of a failure topic.
pub fn parked_topic(topic: &str) -> String {
    format!("{topic}.parked")
}

pub struct KafkaDeadLetters {
    source: KafkaSource,
    brokers: String,
    options: BTreeMap<String, String>,
    parked_topic: String,
    parked: KafkaSink,
}

impl KafkaDeadLetters {
    /// Joins `group` on `topic`, and makes sure the parking topic exists.
    pub async fn open(
        brokers: &str,
        topic: &str,
        group: &str,
        parked: Option<&str>,
        options: &BTreeMap<String, String>,
    ) -> Result<Self, String> {
        let parked_topic = parked.map_or_else(|| parked_topic(topic), str::to_owned);
        ensure_topic(brokers, &parked_topic, options).await?;
        let opts = KafkaSourceOptions {
            auto_offset_reset: "earliest".into(),
            session_timeout_ms: 6000,
            follow: false,
            one_process: false,
            group_instance_id: None,
            revoke_timeout: Duration::from_secs(10),
            extra: options.clone(),
        };
        let ends = end_offsets(brokers, topic, options).await?;
        let source = KafkaSource::new("redrive".into(), brokers, topic, group, &opts)?.until(ends);
        let parked = KafkaSink::new(brokers, &parked_topic, options)?;
        Ok(KafkaDeadLetters { source, brokers: brokers.to_owned(), options: options.clone(), parked_topic, parked })
    }
}

/// Each partition's high watermark now.
async fn end_offsets(
    brokers: &str,
    topic: &str,
    options: &BTreeMap<String, String>,
) -> Result<std::collections::HashMap<i32, i64>, String> {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", brokers).set("group.id", "assetflow-redrive-ends");
    for (k, v) in options {
        cfg.set(k, v);
    }
    let consumer: BaseConsumer =
        cfg.create().map_err(|e| format!("cannot create a Kafka consumer for {brokers}: {e}"))?;
    let name = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let topic = name;
        let timeout = Duration::from_secs(10);
        let meta = consumer.fetch_metadata(Some(&topic), timeout).map_err(|e| format!("cannot read {topic}: {e}"))?;
        let mut ends = std::collections::HashMap::new();
        for p in meta.topics().iter().flat_map(|t| t.partitions()) {
            let (_, high) =
                consumer.fetch_watermarks(&topic, p.id(), timeout).map_err(|e| format!("cannot read {topic}: {e}"))?;
            ends.insert(p.id(), high);
        }
        Ok(ends)
    })
    .await
    .map_err(|e| format!("reading the end offsets of {topic}: {e}"))?
}

/// Creates `topic` (one partition) unless it is there.
async fn ensure_topic(brokers: &str, topic: &str, options: &BTreeMap<String, String>) -> Result<(), String> {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", brokers);
    for (k, v) in options {
        cfg.set(k, v);
    }
    let admin: AdminClient<DefaultClientContext> =
        cfg.create().map_err(|e| format!("cannot create a Kafka admin client for {brokers}: {e}"))?;
    let created = admin
        .create_topics(&[NewTopic::new(topic, 1, TopicReplication::Fixed(1))], &AdminOptions::new())
        .await
        .map_err(|e| format!("cannot create the parking topic {topic}: {e}"))?;
    for r in created {
        match r {
            Ok(_) => tracing::info!(topic, "created the parking topic"),
            Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((_, code)) => return Err(format!("cannot create the parking topic {topic}: {code}")),
        }
    }
    Ok(())
}

#[async_trait]
impl DeadLetterStore for KafkaDeadLetters {
    async fn next(&mut self, max: usize) -> BackendResult<Option<Vec<(DeadLetter, Ack)>>> {
        match self.source.pull(max).await? {
            Pull::Messages(msgs) => {
                let mut out = Vec::with_capacity(msgs.len());
                for m in msgs {
                    match serde_json::from_slice::<DeadLetter>(&m.bytes) {
                        Ok(dl) => out.push((dl, m.ack)),
                        Err(e) => {
                            tracing::warn!(origin = %m.origin.partition, offset = %m.origin.offset, "skipping a message that is not a dead letter: {e}");
                            m.ack.done();
                        }
                    }
                }
                Ok(Some(out))
            }
            Pull::Idle => {
                // The group is joining, or the fetch is on its way: ask again shortly.
                tokio::time::sleep(Duration::from_millis(50)).await;
                Ok(Some(Vec::new()))
            }
            Pull::Drained => Ok(None),
            Pull::Refused(why) => Err(BackendError::permanent("kafka", "redrive", why)),
        }
    }

    async fn commit(&mut self) -> BackendResult<()> {
        self.source.commit().await
    }

    fn outstanding(&self) -> usize {
        self.source.outstanding()
    }

    async fn park(&mut self, letter: &DeadLetter) -> BackendResult<()> {
        let record = SinkRecord {
            key: letter.event_id.clone().unwrap_or_default(),
            decision_id: letter.decision_id.clone(),
            event_id: letter.event_id.clone(),
            payload: serde_json::to_vec(letter).map_err(|e| BackendError::permanent("kafka", "park", e))?,
        };
        self.parked.send(&[record]).await
    }

    /// Reads the parking topic from its start to its end, assigned (no group, no commit).
    async fn parked(&mut self) -> BackendResult<Vec<DeadLetter>> {
        let mut cfg = ClientConfig::new();
        cfg.set("bootstrap.servers", &self.brokers)
            .set("group.id", "assetflow-parked-listing")
            .set("enable.auto.commit", "false");
        for (k, v) in &self.options {
            cfg.set(k, v);
        }
        let consumer: BaseConsumer = cfg.create().map_err(|e| kafka_error("list parked", &e))?;
        let topic = self.parked_topic.clone();
        tokio::task::spawn_blocking(move || read_to_end(&consumer, &topic))
            .await
            .map_err(|e| BackendError::transient("kafka", "list parked", e))?
    }
}

/// Every message of `topic`, partition by partition, up to the end each had when asked.
fn read_to_end(consumer: &BaseConsumer, topic: &str) -> BackendResult<Vec<DeadLetter>> {
    let timeout = Duration::from_secs(10);
    let meta = consumer.fetch_metadata(Some(topic), timeout).map_err(|e| kafka_error("list parked", &e))?;
    let partitions: Vec<i32> =
        meta.topics().iter().flat_map(|t| t.partitions().iter().map(|p| p.id())).collect::<Vec<_>>();
    let mut ends = BTreeMap::new();
    let mut tpl = TopicPartitionList::new();
    for p in partitions {
        let (low, high) = consumer.fetch_watermarks(topic, p, timeout).map_err(|e| kafka_error("list parked", &e))?;
        if high > low {
            ends.insert(p, high);
            tpl.add_partition_offset(topic, p, Offset::Offset(low)).map_err(|e| kafka_error("list parked", &e))?;
        }
    }
    if ends.is_empty() {
        return Ok(Vec::new());
    }
    consumer.assign(&tpl).map_err(|e| kafka_error("list parked", &e))?;
    let mut out = Vec::new();
    let started = Instant::now();
    while !ends.is_empty() && started.elapsed() < Duration::from_secs(60) {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                if let Ok(dl) = serde_json::from_slice(m.payload().unwrap_or_default()) {
                    out.push(dl);
                }
                if ends.get(&m.partition()).is_some_and(|end| m.offset() + 1 >= *end) {
                    ends.remove(&m.partition());
                }
            }
            Some(Err(e)) => return Err(kafka_error("list parked", &e)),
            None => {}
        }
    }
    Ok(out)
}
