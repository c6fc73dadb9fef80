//! The `kafka` sink: an idempotent producer (acks from all in-sync replicas, no duplicates from
//! producer retries), the asset key as message key, `decision_id` and `event_id` as headers.
//! `send` returns once every delivery report of the batch is in.

use std::collections::BTreeMap;
use std::time::Duration;

use assetflow_actors::ports::{BackendError, BackendResult, Sink, SinkRecord};
use async_trait::async_trait;
use futures_util::future::join_all;
use rdkafka::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

use super::kafka_error;

pub struct KafkaSink {
    producer: FutureProducer,
    topic: String,
    timeout: Duration,
}

impl KafkaSink {
    pub fn new(brokers: &str, topic: &str, options: &BTreeMap<String, String>) -> Result<Self, String> {
        let mut cfg = ClientConfig::new();
        cfg.set("bootstrap.servers", brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            .set("message.timeout.ms", "30000");
        for (k, v) in options {
            cfg.set(k, v);
        }
        let producer: FutureProducer =
            cfg.create().map_err(|e| format!("cannot create a Kafka producer for {brokers}: {e}"))?;
        Ok(KafkaSink { producer, topic: topic.to_owned(), timeout: Duration::from_secs(30) })
    }
}

#[async_trait]
impl Sink for KafkaSink {
    async fn send(&self, batch: &[SinkRecord]) -> BackendResult<()> {
        let sends = batch.iter().map(|r| {
            let mut headers =
                OwnedHeaders::new().insert(Header { key: "decision_id", value: Some(r.decision_id.as_bytes()) });
            if let Some(e) = &r.event_id {
                headers = headers.insert(Header { key: "event_id", value: Some(e.as_bytes()) });
            }
            let record = FutureRecord::to(&self.topic).key(r.key.as_bytes()).payload(&r.payload).headers(headers);
            self.producer.send(record, self.timeout)
        });
        for result in join_all(sends).await {
            if let Err((e, _)) = result {
                let mut err: BackendError = kafka_error("produce", &e);
                err.operation = format!("produce to {}", self.topic);
                return Err(err);
            }
        }
        Ok(())
    }
}
