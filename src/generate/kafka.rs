//! JSON Lines written to a Kafka topic, one message per line keyed by the event's `source` (so
//! a crawler's run and its completion share a partition, as the ordering contract asks):
//! where `assetflow gen --kafka-brokers … --topic …` writes.

use std::io::Write;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

use super::line_buffer::LineBuffer;

pub struct KafkaLines {
    producer: BaseProducer,
    topic: String,
    lines: LineBuffer,
}

#[derive(serde::Deserialize)]
struct SourceOnly<'a> {
    #[serde(borrow)]
    source: Option<&'a str>,
}

impl KafkaLines {
    pub fn new(brokers: &str, topic: &str) -> Result<Self, String> {
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("enable.idempotence", "true")
            .set("linger.ms", "20")
            .create()
            .map_err(|e| format!("cannot create a Kafka producer for {brokers}: {e}"))?;
        Ok(KafkaLines { producer, topic: topic.to_owned(), lines: LineBuffer::default() })
    }

    fn produce(&self, line: &[u8]) -> std::io::Result<()> {
        // A malformed line (the generator makes some on purpose) has no source: key "".
        let key = serde_json::from_slice::<SourceOnly>(line).ok().and_then(|s| s.source).unwrap_or("").to_owned();
        let mut record = BaseRecord::to(&self.topic).key(key.as_str()).payload(line);
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    self.producer.poll(Duration::from_millis(50));
                }
                Err((e, _)) => return Err(std::io::Error::other(format!("produce to {}: {e}", self.topic))),
            }
        }
    }

    /// Waits until every message is acknowledged by the broker.
    pub fn finish(mut self) -> std::io::Result<()> {
        let last = self.lines.rest();
        if !last.is_empty() {
            self.produce(&last)?;
        }
        self.producer.flush(Duration::from_secs(120)).map_err(|e| std::io::Error::other(format!("flush: {e}")))
    }
}

impl Write for KafkaLines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        for line in self.lines.complete(buf).iter() {
            self.produce(line)?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.producer.poll(Duration::ZERO);
        Ok(())
    }
}
