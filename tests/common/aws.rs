//! AWS test helpers: clients for the local emulator (moto, started by `make services`), unique
//! resource names, and reading queues back.
#![allow(dead_code)]

use std::time::Duration;

use aws_config::{BehaviorVersion, Region};
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;
use serde_json::Value;

/// `ASSETFLOW_TEST_AWS_ENDPOINT`, default the moto of `make services`.
pub fn endpoint() -> String {
    std::env::var("ASSETFLOW_TEST_AWS_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:4566".into())
}

/// Fails with a clear message when the emulator is not running: these tests are never skipped.
pub fn require_emulator() {
    let url = endpoint();
    let hostport = url.trim_start_matches("http://").trim_start_matches("https://").trim_end_matches('/').to_owned();
    if std::net::TcpStream::connect_timeout(&hostport.parse().expect("endpoint host:port"), Duration::from_secs(2))
        .is_err()
    {
        panic!("no AWS emulator at {url}: run `make services` (or set ASSETFLOW_TEST_AWS_ENDPOINT)");
    }
}

pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}-{}", std::process::id(), fastrand::u64(..) % 1_000_000_000)
}

pub async fn sdk_config() -> aws_config::SdkConfig {
    sdk_config_at(&endpoint()).await
}

pub async fn sdk_config_at(url: &str) -> aws_config::SdkConfig {
    use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
    aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(url)
        .http_client(
            aws_smithy_http_client::Builder::new().tls_provider(tls::Provider::Rustls(CryptoMode::Ring)).build_https(),
        )
        .credentials_provider(aws_credential_types::Credentials::from_keys("testing", "testing", None))
        .retry_config(aws_config::retry::RetryConfig::disabled())
        .load()
        .await
}

/// The `[aws]` section a test config uses.
pub fn aws_section() -> String {
    aws_section_at(&endpoint())
}

/// The `[aws]` section for an emulator reached at `url` (a proxy in front of it, say).
pub fn aws_section_at(url: &str) -> String {
    format!(
        "[aws]\nregion = \"us-east-1\"\nendpoint_url = \"{url}\"\naccess_key_id = \"testing\"\nsecret_access_key = \"testing\"\n"
    )
}

pub async fn create_stream(conf: &aws_config::SdkConfig, name: &str, shards: i32) {
    let k = aws_sdk_kinesis::Client::new(conf);
    k.create_stream().stream_name(name).shard_count(shards).send().await.expect("create stream");
    for _ in 0..100 {
        let d = k.describe_stream_summary().stream_name(name).send().await.expect("describe stream");
        if d.stream_description_summary().map(|s| s.stream_status().as_str() == "ACTIVE").unwrap_or(false) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("stream {name} never became active");
}

/// Puts lines on a stream, partition key = the event's `source` (or the line itself when it
/// has none), in order, at most 500 a call.
pub async fn put_lines(conf: &aws_config::SdkConfig, stream: &str, lines: &[String]) {
    let k = aws_sdk_kinesis::Client::new(conf);
    for chunk in lines.chunks(500) {
        let entries: Vec<PutRecordsRequestEntry> = chunk
            .iter()
            .map(|l| {
                let key = serde_json::from_str::<Value>(l)
                    .ok()
                    .and_then(|v| v["source"].as_str().map(str::to_owned))
                    .unwrap_or_else(|| "unkeyed".into());
                PutRecordsRequestEntry::builder()
                    .data(Blob::new(l.as_bytes()))
                    .partition_key(key)
                    .build()
                    .expect("entry")
            })
            .collect();
        let out = k.put_records().stream_name(stream).set_records(Some(entries)).send().await.expect("put records");
        assert_eq!(out.failed_record_count().unwrap_or(0), 0, "records failed");
    }
}

pub async fn create_queue(conf: &aws_config::SdkConfig, name: &str) -> String {
    let q = aws_sdk_sqs::Client::new(conf);
    q.create_queue().queue_name(name).send().await.expect("create queue").queue_url().expect("queue url").to_owned()
}

/// A FIFO queue (`name` gets its `.fifo`).
pub async fn create_fifo_queue(conf: &aws_config::SdkConfig, name: &str) -> String {
    let q = aws_sdk_sqs::Client::new(conf);
    q.create_queue()
        .queue_name(format!("{name}.fifo"))
        .attributes(aws_sdk_sqs::types::QueueAttributeName::FifoQueue, "true")
        .send()
        .await
        .expect("create FIFO queue")
        .queue_url()
        .expect("queue url")
        .to_owned()
}

/// Sends each line to a FIFO queue, in order, its message group its `source` (or "unkeyed") as
/// producers are told to, each with a deduplication id of its own: a line sent twice is a
/// re-delivery the service must see, not one SQS may drop.
pub async fn send_lines_fifo(conf: &aws_config::SdkConfig, url: &str, lines: &[String]) {
    let q = aws_sdk_sqs::Client::new(conf);
    for (i, l) in lines.iter().enumerate() {
        let group = serde_json::from_str::<Value>(l)
            .ok()
            .and_then(|v| v["source"].as_str().map(str::to_owned))
            .unwrap_or_else(|| "unkeyed".into());
        q.send_message()
            .queue_url(url)
            .message_body(l)
            .message_group_id(group)
            .message_deduplication_id(format!("line-{i}"))
            .send()
            .await
            .expect("send to the FIFO queue");
    }
}

/// Every message now on a queue (received, then deleted).
pub async fn drain_queue(conf: &aws_config::SdkConfig, url: &str) -> Vec<Value> {
    let q = aws_sdk_sqs::Client::new(conf);
    let mut out = Vec::new();
    let mut empty = 0;
    while empty < 2 {
        let r = q
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(10)
            .wait_time_seconds(0)
            .send()
            .await
            .expect("receive");
        if r.messages().is_empty() {
            empty += 1;
            continue;
        }
        for m in r.messages() {
            out.push(serde_json::from_str(m.body().unwrap_or("null")).expect("message is JSON"));
            q.delete_message()
                .queue_url(url)
                .receipt_handle(m.receipt_handle().unwrap_or_default())
                .send()
                .await
                .expect("delete");
        }
    }
    out
}
