//! Kafka test helpers: the broker of `make services` (tansu), topics, producing lines keyed by
//! `source`, reading a topic back with its headers.
#![allow(dead_code)]

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message};
use serde_json::Value;

/// `ASSETFLOW_TEST_KAFKA`, default the broker of `make services`.
pub fn brokers() -> String {
    std::env::var("ASSETFLOW_TEST_KAFKA").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

pub fn require_broker() {
    let b = brokers();
    let addr = b.split(',').next().unwrap_or_default().to_owned();
    if std::net::TcpStream::connect_timeout(&addr.parse().expect("broker host:port"), Duration::from_secs(2)).is_err() {
        panic!("no Kafka broker at {b}: run `make services` (or set ASSETFLOW_TEST_KAFKA)");
    }
}

pub async fn create_topic(name: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", brokers()).create().expect("admin client");
    let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    let res = admin.create_topics(&[topic], &AdminOptions::new()).await.expect("create topics");
    for r in res {
        r.expect("topic created");
    }
}

/// Produces each line with key = its `source` (or "unkeyed"), in order, and waits for them all.
pub async fn produce_lines(topic: &str, lines: &[String]) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("enable.idempotence", "true")
        .set("message.max.bytes", "2000000")
        .create()
        .expect("producer");
    for l in lines {
        let key = serde_json::from_str::<Value>(l)
            .ok()
            .and_then(|v| v["source"].as_str().map(str::to_owned))
            .unwrap_or_else(|| "unkeyed".into());
        producer
            .send(FutureRecord::to(topic).key(&key).payload(l.as_bytes()), Duration::from_secs(10))
            .await
            .expect("delivered");
    }
}

/// A message read back: its JSON value, key and headers.
#[derive(Debug, Clone)]
pub struct Read {
    pub value: Value,
    pub key: String,
    pub headers: Vec<(String, String)>,
    pub partition: i32,
}

/// Everything on `topic`, read by a fresh group until the topic has been quiet for a while.
pub fn read_topic(topic: &str) -> Vec<Read> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", format!("reader-{}-{}", topic, fastrand::u32(..)))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("session.timeout.ms", "6000")
        .create()
        .expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let mut out = Vec::new();
    let started = std::time::Instant::now();
    let mut quiet = std::time::Instant::now();
    // A group join takes a few seconds on this broker; then stop after 2 s without messages.
    while started.elapsed() < Duration::from_secs(60) {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                quiet = std::time::Instant::now();
                let headers = m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|x| {
                                (x.key.to_owned(), String::from_utf8_lossy(x.value.unwrap_or_default()).into_owned())
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                out.push(Read {
                    value: serde_json::from_slice(m.payload().unwrap_or_default()).expect("JSON"),
                    key: String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
                    headers,
                    partition: m.partition(),
                });
            }
            Some(Err(e)) => panic!("consume {topic}: {e}"),
            None => {
                let assigned = !consumer.assignment().map(|a| a.count() == 0).unwrap_or(true);
                if !assigned {
                    // The quiet period counts from the moment partitions are ours.
                    quiet = std::time::Instant::now();
                } else if quiet.elapsed() > Duration::from_secs(2) {
                    break;
                }
            }
        }
    }
    out
}
