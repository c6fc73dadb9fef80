//! Each AWS adapter against the emulator: the happy path, a conditional-write conflict, batches
//! at the service limits, failures retried (a 503 injected by a proxy in front of the emulator).

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use assetflow::adapters::aws::Aws;
use assetflow::adapters::aws::dynamodb::DynamoControl;
use assetflow::adapters::aws::history::DynamoHistory;
use assetflow::adapters::aws::kinesis::KinesisSource;
use assetflow::adapters::aws::s3::S3Content;
use assetflow::adapters::aws::sqs::{SqsSink, SqsSource};
use assetflow::adapters::checkpoints::Checkpoints;
use assetflow::config::AwsConfig;
use assetflow_actors::decision::{HistoryRow, Outcome};
use assetflow_actors::event::AssetName;
use assetflow_actors::ports::*;
use assetflow_actors::record::{ControlRecord, RecordStatus, RunEvent};
use assetflow_actors::retry::RetryPolicy;
use assetflow_actors::rules::SweepQuery;
use async_trait::async_trait;
use common::aws::*;
use common::proxy::FaultProxy;

fn rt() -> tokio::runtime::Runtime {
    require_emulator();
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

async fn aws_at(url: &str) -> Aws {
    Aws::load(&AwsConfig {
        region: "us-east-1".into(),
        endpoint_url: url.into(),
        access_key_id: Some("testing".into()),
        secret_access_key: Some("testing".into()),
    })
    .await
}

fn record(source: &str, i: usize, version: u64) -> ControlRecord {
    ControlRecord {
        asset_key: format!("{source}/db/public/t{i:04}"),
        source: source.into(),
        name: AssetName { database: "db".into(), schema: "public".into(), table: format!("t{i:04}") },
        hash: format!("h{version}"),
        last_seen_run: "r1".into(),
        // Nanoseconds: a record must read back exactly equal, which is how the decisor knows a
        // write of its own landed although its reply was lost.
        last_seen_at: "2026-11-01T10:00:00.123456789Z".parse().unwrap(),
        status: RecordStatus::Live,
        dropped_at: None,
        content_ref: Some("s3://b/k".into()),
        version,
    }
}

fn key(r: &ControlRecord) -> RecordKey {
    RecordKey { source: r.source.clone(), asset_key: r.asset_key.clone() }
}

fn quick_retry() -> RetryPolicy {
    RetryPolicy {
        initial: Duration::from_millis(10),
        max: Duration::from_millis(50),
        attempts: 5,
        timeout: Duration::from_secs(10),
    }
}

#[test]
fn dynamodb_batches_round_trip_and_a_conflict_writes_nothing() {
    rt().block_on(async {
        let aws = aws_at(&endpoint()).await;
        let control = DynamoControl::new(&aws, &unique("control"));
        control.ensure_table().await.unwrap();
        // 150 records: two transactions of at most 100, two BatchGetItems.
        let records: Vec<ControlRecord> = (0..150).map(|i| record("src", i, 1)).collect();
        let writes: Vec<RecordWrite> = records.iter().map(|r| RecordWrite::new(r.clone(), 0)).collect();
        control.put_many(&writes).await.unwrap();
        let got = control.get_many(&records.iter().map(key).collect::<Vec<_>>()).await.unwrap();
        assert_eq!(got.len(), 150);
        assert_eq!(got[&records[7].asset_key], records[7]);
        let counts = aws.requests.snapshot();
        assert_eq!(counts.get("dynamodb.TransactWriteItems"), Some(&2));
        assert_eq!(counts.get("dynamodb.BatchGetItem"), Some(&2));
        // The sweep's query sees exactly its source.
        control.put_many(&[RecordWrite::new(record("other", 1, 1), 0)]).await.unwrap();
        assert_eq!(control.list_source("src").await.unwrap().len(), 150);
        // One stale expectation among five: the whole write is refused as a conflict.
        let mut batch: Vec<RecordWrite> = (0..5).map(|i| RecordWrite::new(record("src", i, 2), 1)).collect();
        batch[3].expected_version = 7;
        let err = control.put_many(&batch).await.unwrap_err();
        assert_eq!(err.kind, FailureKind::Conflict, "{err}");
        let after = control.get_many(&[key(&records[0])]).await.unwrap();
        assert_eq!(after[&records[0].asset_key].version, 1, "a refused transaction writes nothing");
        // Checkpoints live beside the records.
        control.set("kinesis:s:shard-0", "123").await.unwrap();
        assert_eq!(Checkpoints::get(&control, "kinesis:s:shard-0").await.unwrap().as_deref(), Some("123"));
    });
}

#[test]
fn dynamodb_sweeps_list_the_event_markers_they_spend_and_only_markers_are_removed() {
    rt().block_on(async {
        let aws = aws_at(&endpoint()).await;
        let control = DynamoControl::new(&aws, &unique("control"));
        control.ensure_table().await.unwrap();
        let asset = record("src", 0, 1);
        // 120 markers of run r2: two transactions of at most 100.
        let markers: Vec<ControlRecord> = (0..120)
            .map(|i| {
                let at = asset.last_seen_at + chrono::Duration::seconds(i);
                RunEvent::record("src", &asset.name, "r2", &asset.asset_key, at, "h")
            })
            .collect();
        let writes: Vec<RecordWrite> =
            std::iter::once(&asset).chain(&markers).map(|r| RecordWrite::new(r.clone(), 0)).collect();
        control.put_many(&writes).await.unwrap();
        let query = SweepQuery {
            source: "src",
            run: "r2",
            emitted_at: chrono::DateTime::<chrono::Utc>::MAX_UTC,
            max_drop_fraction: 1.0,
            count_run_events: true,
        };
        let mut spent = control.sweep_plan(query).await.unwrap().spent_markers;
        spent.sort();
        let mut expected: Vec<String> = markers.iter().map(|m| m.asset_key.clone()).collect();
        expected.sort();
        assert_eq!(spent, expected);

        let before = aws.requests.snapshot().get("dynamodb.TransactWriteItems").copied().unwrap_or(0);
        let mut keys: Vec<RecordKey> = markers.iter().map(key).collect();
        keys.push(key(&asset));
        control.remove_markers(&keys).await.unwrap();
        let after = aws.requests.snapshot().get("dynamodb.TransactWriteItems").copied().unwrap_or(0);
        assert_eq!(after - before, 2);
        let left = control.list_source("src").await.unwrap();
        assert_eq!(left, [asset], "the asset stays, every marker is gone");
    });
}

fn history_row(asset: Option<&str>, id: &str, second: u32) -> HistoryRow {
    HistoryRow {
        asset_key: asset.map(str::to_owned),
        source: Some("src".into()),
        event_id: Some(format!("e-{id}")),
        run_id: Some("r1".into()),
        outcome: if asset.is_some() { Outcome::Updated } else { Outcome::Completed },
        hash: asset.map(|_| "h".to_owned()),
        decision_id: id.into(),
        at: format!("2026-11-01T10:00:{second:02}.000123Z").parse().unwrap(),
    }
}

#[test]
fn dynamodb_history_reads_one_asset_newest_first_and_appends_in_batches_of_25() {
    rt().block_on(async {
        let aws = aws_at(&endpoint()).await;
        let history = DynamoHistory::new(&aws, &unique("history"));
        history.ensure_table().await.unwrap();
        history.ensure_table().await.unwrap();
        let a = "src/db/public/a";
        // 60 rows of `a` in three appends, two assets interleaved, one completion row.
        for round in 0..3u32 {
            let rows: Vec<HistoryRow> = (0..20u32)
                .flat_map(|i| {
                    let n = round * 20 + i;
                    [
                        history_row(Some(a), &format!("a{n:03}"), n / 2),
                        history_row(Some("src/db/public/b"), &format!("b{n:03}"), n / 2),
                    ]
                })
                .collect();
            history.append(&rows).await.unwrap();
        }
        history.append(&[history_row(None, "done", 59)]).await.unwrap();
        assert_eq!(aws.requests.snapshot().get("dynamodb.BatchWriteItem"), Some(&(3 * 2 + 1)), "40 rows: 25 + 15");
        let newest: Vec<String> = history.read(a, 5).await.unwrap().into_iter().map(|r| r.decision_id).collect();
        // Within one second, later in the batch is newer.
        assert_eq!(newest, ["a059", "a058", "a057", "a056", "a055"]);
        let all = history.read(a, 1000).await.unwrap();
        assert_eq!(all.len(), 60, "only this asset's rows");
        assert_eq!(all[59], history_row(Some(a), "a000", 0), "a row reads back as written");
        // The same row at the same place of a batch (an append sent again after a lost reply)
        // is the same item, not a second row.
        history.append(&[history_row(Some(a), "a000", 0)]).await.unwrap();
        assert_eq!(history.read(a, 1000).await.unwrap().len(), 60);
        let completions = history.read("#source/src", 10).await.unwrap();
        assert_eq!(completions.iter().map(|r| r.decision_id.as_str()).collect::<Vec<_>>(), ["done"]);
        assert_eq!(completions[0].asset_key, None);
        // Without create_if_missing, a missing table is one clear error at start.
        let err = DynamoHistory::new(&aws, &unique("missing")).check_table().await.unwrap_err();
        assert!(err.to_string().contains("DescribeTable"), "{err}");
    });
}

#[test]
fn a_503_from_any_service_is_retried() {
    rt().block_on(async {
        let upstream = endpoint().trim_start_matches("http://").to_owned();
        let proxy = FaultProxy::start(&upstream);
        let direct = aws_at(&endpoint()).await;
        let aws = aws_at(&proxy.url).await;
        let retry = quick_retry();
        // DynamoDB
        let table = unique("control");
        DynamoControl::new(&direct, &table).ensure_table().await.unwrap();
        let control = DynamoControl::new(&aws, &table);
        proxy.fail_next(2);
        let w = [RecordWrite::new(record("src", 1, 1), 0)];
        retry.run(|| control.put_many(&w)).await.unwrap();
        assert_eq!(proxy.failed.load(Ordering::SeqCst), 2);
        // SQS
        let conf = sdk_config().await;
        let url = create_queue(&conf, &unique("q")).await;
        let sink = SqsSink::new(&aws, &url);
        proxy.fail_next(1);
        let recs = vec![SinkRecord {
            key: "k".into(),
            decision_id: "d1".into(),
            event_id: None,
            payload: b"{\"a\":1}".to_vec(),
        }];
        retry.run(|| sink.send(&recs)).await.unwrap();
        assert_eq!(proxy.failed.load(Ordering::SeqCst), 3);
        assert_eq!(drain_queue(&conf, &url).await.len(), 1);
        // S3
        let bucket = unique("bucket");
        S3Content::new(&direct, &bucket, "").ensure_bucket().await.unwrap();
        let content = S3Content::new(&aws, &bucket, "");
        proxy.fail_next(1);
        retry.run(|| content.put("s/d/p/t", "abc", b"{}")).await.unwrap();
        assert_eq!(proxy.failed.load(Ordering::SeqCst), 4);
    });
}

#[test]
fn s3_content_is_one_object_per_key_and_hash() {
    rt().block_on(async {
        let aws = aws_at(&endpoint()).await;
        let bucket = unique("content");
        let content = S3Content::new(&aws, &bucket, "catalog/");
        content.ensure_bucket().await.unwrap();
        content.put("pg/sales/public/orders", "h1", b"{\"v\":1}").await.unwrap();
        content.put("pg/sales/public/orders", "h1", b"{\"v\":1}").await.unwrap();
        assert_eq!(
            content.content_ref("pg/sales/public/orders", "h1"),
            format!("s3://{bucket}/catalog/pg/sales/public/orders/h1.json")
        );
        let s3 = aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::config::Builder::from(&sdk_config().await).force_path_style(true).build(),
        );
        let obj = s3.get_object().bucket(&bucket).key("catalog/pg/sales/public/orders/h1.json").send().await.unwrap();
        assert_eq!(obj.body.collect().await.unwrap().into_bytes().as_ref(), b"{\"v\":1}");
        let listed = s3.list_objects_v2().bucket(&bucket).send().await.unwrap();
        assert_eq!(listed.key_count(), Some(1));
    });
}

#[test]
fn sqs_sink_sends_in_batches_of_ten_with_the_decision_id() {
    rt().block_on(async {
        let aws = aws_at(&endpoint()).await;
        let conf = sdk_config().await;
        let url = create_queue(&conf, &unique("upserts")).await;
        let sink = SqsSink::new(&aws, &url);
        let recs: Vec<SinkRecord> = (0..23)
            .map(|i| SinkRecord {
                key: format!("k{i}"),
                decision_id: format!("d{i}"),
                event_id: Some(format!("e{i}")),
                payload: format!("{{\"i\":{i}}}").into_bytes(),
            })
            .collect();
        sink.send(&recs).await.unwrap();
        assert_eq!(aws.requests.snapshot().get("sqs.SendMessageBatch"), Some(&3));
        let q = aws_sdk_sqs::Client::new(&conf);
        let mut seen = HashMap::new();
        loop {
            let r = q
                .receive_message()
                .queue_url(&url)
                .max_number_of_messages(10)
                .message_attribute_names("All")
                .send()
                .await
                .unwrap();
            if r.messages().is_empty() {
                break;
            }
            for m in r.messages() {
                let id = m
                    .message_attributes()
                    .and_then(|a| a.get("decision_id"))
                    .and_then(|v| v.string_value())
                    .unwrap()
                    .to_owned();
                seen.insert(id, m.body().unwrap().to_owned());
                q.delete_message().queue_url(&url).receipt_handle(m.receipt_handle().unwrap()).send().await.unwrap();
            }
        }
        assert_eq!(seen.len(), 23);
        assert_eq!(seen["d7"], "{\"i\":7}");
        // A FIFO queue de-duplicates by decision id: a replayed decision is delivered once.
        let fifo = q
            .create_queue()
            .queue_name(format!("{}.fifo", unique("fifo")))
            .attributes(aws_sdk_sqs::types::QueueAttributeName::FifoQueue, "true")
            .send()
            .await
            .unwrap()
            .queue_url()
            .unwrap()
            .to_owned();
        let fsink = SqsSink::new(&aws, &fifo);
        fsink.send(&recs[..3]).await.unwrap();
        fsink.send(&recs[..3]).await.unwrap();
        assert_eq!(drain_queue(&conf, &fifo).await.len(), 3);
    });
}

#[test]
fn sqs_source_deletes_only_what_is_acknowledged() {
    rt().block_on(async {
        let aws = aws_at(&endpoint()).await;
        let conf = sdk_config().await;
        let url = create_queue(&conf, &unique("input")).await;
        let q = aws_sdk_sqs::Client::new(&conf);
        for i in 0..15 {
            q.send_message().queue_url(&url).message_body(format!("{{\"n\":{i}}}")).send().await.unwrap();
        }
        let mut source = SqsSource::new(&aws, "sqs".into(), &url, 0, true);
        let mut got = Vec::new();
        while let Pull::Messages(m) = source.pull(10).await.unwrap() {
            got.extend(m);
        }
        assert_eq!(got.len(), 15);
        assert_eq!(source.outstanding(), 15);
        // Acknowledge 12: those are deleted at the next commit; 3 stay in flight.
        let keep: Vec<RawMessage> = got.split_off(12);
        for m in got {
            m.ack.done();
        }
        source.commit().await.unwrap();
        assert_eq!(source.outstanding(), 3);
        assert!(aws.requests.snapshot().get("sqs.DeleteMessageBatch").copied().unwrap_or(0) >= 2);
        let attrs = q
            .get_queue_attributes()
            .queue_url(&url)
            .attribute_names(aws_sdk_sqs::types::QueueAttributeName::All)
            .send()
            .await
            .unwrap();
        let in_flight = attrs
            .attributes()
            .and_then(|a| a.get(&aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessagesNotVisible))
            .cloned();
        assert_eq!(in_flight.as_deref(), Some("3"), "unacknowledged messages stay on the queue");
        drop(keep);
    });
}

/// Checkpoints in memory, to watch a Kinesis source resume.
#[derive(Default)]
struct MemCheckpoints(std::sync::Mutex<HashMap<String, String>>);

#[async_trait]
impl Checkpoints for MemCheckpoints {
    async fn get(&self, key: &str) -> BackendResult<Option<String>> {
        Ok(self.0.lock().unwrap().get(key).cloned())
    }
    async fn set(&self, key: &str, position: &str) -> BackendResult<()> {
        self.0.lock().unwrap().insert(key.into(), position.into());
        Ok(())
    }
}

/// Everything the source gives until it has been idle a while (or says it is drained).
async fn read_all(source: &mut KinesisSource) -> Vec<RawMessage> {
    let mut out = Vec::new();
    let mut idle = 0;
    while idle < 20 {
        match source.pull(100).await.unwrap() {
            Pull::Messages(m) => {
                idle = 0;
                out.extend(m);
            }
            Pull::Drained => break,
            Pull::Refused(why) => panic!("a Kinesis source never refuses: {why}"),
            Pull::Idle => {
                idle += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    out
}

#[test]
fn kinesis_source_reads_every_shard_in_order_and_resumes_after_its_checkpoint() {
    rt().block_on(async {
        let aws = aws_at(&endpoint()).await;
        let conf = sdk_config().await;
        let stream = unique("stream");
        create_stream(&conf, &stream, 2).await;
        let lines: Vec<String> = (0..60).map(|i| format!("{{\"source\":\"src-{}\",\"n\":{i}}}", i % 3)).collect();
        put_lines(&conf, &stream, &lines).await;
        let checkpoints = Arc::new(MemCheckpoints::default());
        let mut first = KinesisSource::new(&aws, "kinesis".into(), &stream, checkpoints.clone(), true);
        let msgs = read_all(&mut first).await;
        assert_eq!(msgs.len(), 60);
        // Per source (one partition key, so one shard), in the order they were put.
        for src in 0..3 {
            let ns: Vec<u64> = msgs
                .iter()
                .filter_map(|m| serde_json::from_slice::<serde_json::Value>(&m.bytes).ok())
                .filter(|v| v["source"] == format!("src-{src}"))
                .map(|v| v["n"].as_u64().unwrap())
                .collect();
            assert!(ns.windows(2).all(|w| w[0] < w[1]), "src-{src} out of order: {ns:?}");
            assert_eq!(ns.len(), 20);
        }
        // Acknowledge the first 40 read (a prefix of each shard), commit, and start over.
        let mut msgs = msgs;
        let rest = msgs.split_off(40);
        let acked: Vec<String> = msgs.iter().map(|m| String::from_utf8_lossy(&m.bytes).into_owned()).collect();
        for m in msgs {
            m.ack.done();
        }
        first.commit().await.unwrap();
        drop(rest);
        let mut second = KinesisSource::new(&aws, "kinesis".into(), &stream, checkpoints.clone(), false);
        let again = read_all(&mut second).await;
        let again: Vec<String> = again.into_iter().map(|m| String::from_utf8_lossy(&m.bytes).into_owned()).collect();
        assert_eq!(again.len(), 20, "exactly the unacknowledged records are read again");
        assert!(again.iter().all(|l| !acked.contains(l)));
    });
}

#[test]
fn a_split_shard_is_finished_before_its_children_start() {
    rt().block_on(async {
        let aws = aws_at(&endpoint()).await;
        let conf = sdk_config().await;
        let stream = unique("resharded");
        create_stream(&conf, &stream, 1).await;
        let first: Vec<String> = (0..10).map(|i| format!("{{\"source\":\"a\",\"n\":{i}}}")).collect();
        put_lines(&conf, &stream, &first).await;
        let k = aws_sdk_kinesis::Client::new(&conf);
        let shards = k.list_shards().stream_name(&stream).send().await.unwrap();
        let parent = shards.shards()[0].shard_id().to_owned();
        k.split_shard()
            .stream_name(&stream)
            .shard_to_split(&parent)
            .new_starting_hash_key("170141183460469231731687303715884105728")
            .send()
            .await
            .unwrap();
        let second: Vec<String> = (10..20).map(|i| format!("{{\"source\":\"a\",\"n\":{i}}}")).collect();
        put_lines(&conf, &stream, &second).await;

        let checkpoints = Arc::new(MemCheckpoints::default());
        let mut source = KinesisSource::new(&aws, "kinesis".into(), &stream, checkpoints.clone(), false);
        let mut order = Vec::new();
        let mut idle = 0;
        while idle < 50 {
            match source.pull(100).await.unwrap() {
                Pull::Messages(m) => {
                    for msg in m {
                        let v: serde_json::Value = serde_json::from_slice(&msg.bytes).unwrap();
                        order.push((v["n"].as_u64().unwrap(), msg.origin.partition.clone()));
                        msg.ack.done();
                    }
                    // Acks are committed as the pipeline would: the parent finishes here.
                    source.commit().await.unwrap();
                }
                Pull::Drained => break,
                Pull::Refused(why) => panic!("a Kinesis source never refuses: {why}"),
                Pull::Idle => {
                    idle += 1;
                    source.commit().await.unwrap();
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
        let ns: Vec<u64> = order.iter().map(|(n, _)| *n).collect();
        assert_eq!(ns, (0..20).collect::<Vec<_>>(), "{order:?}");
        assert!(order[..10].iter().all(|(_, shard)| *shard == parent));
        // Real Kinesis routes records put after the split to the children; moto keeps putting
        // them on the parent, so which shard holds 10..19 is the emulator's business. What is
        // ours: the parent is read to its end and finished before any child is read.
        assert_eq!(
            Checkpoints::get(&*checkpoints, &format!("kinesis:{stream}:{parent}")).await.unwrap().as_deref(),
            Some("SHARD_END")
        );
        // Both children were started (read to their tips) after the parent finished.
        let started = aws.requests.snapshot().get("kinesis.GetShardIterator").copied().unwrap_or(0);
        assert!(started >= 3, "parent and both children get iterators: {started}");
    });
}

/// The events of `lines` by source, in order; lines without a source under "".
fn by_source(lines: impl IntoIterator<Item = String>) -> HashMap<String, Vec<String>> {
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    for l in lines {
        let source = serde_json::from_str::<serde_json::Value>(&l)
            .ok()
            .and_then(|v| v["source"].as_str().map(str::to_owned))
            .unwrap_or_default();
        out.entry(source).or_default().push(l);
    }
    out
}

#[test]
fn gen_puts_the_same_stream_on_kinesis_in_order_per_source() {
    let rt = rt();
    let conf = rt.block_on(sdk_config());
    let stream = unique("gen");
    rt.block_on(create_stream(&conf, &stream, 3));
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("aws.toml"), aws_section()).unwrap();
    // Malformed lines (--bad) have no source and take another partition key; 2,000-odd lines
    // take several PutRecords calls.
    let params = ["--sources", "3", "--assets", "300", "--runs", "2", "--payload", "200", "--bad", "0.02"];
    let file = common::assetflow(dir.path(), &[&["gen"], &params[..], &["--out", "events.jsonl"]].concat());
    assert!(file.status.success(), "{}", String::from_utf8_lossy(&file.stderr));
    let put = common::assetflow(
        dir.path(),
        &[&["gen"], &params[..], &["--kinesis-stream", &stream, "--config", "aws.toml"]].concat(),
    );
    assert!(put.status.success(), "{}", String::from_utf8_lossy(&put.stderr));

    let expected: Vec<String> =
        std::fs::read_to_string(dir.path().join("events.jsonl")).unwrap().lines().map(str::to_owned).collect();
    assert!(expected.len() > 1500, "{} lines", expected.len());
    let got: Vec<String> = rt.block_on(async {
        let aws = aws_at(&endpoint()).await;
        let mut source =
            KinesisSource::new(&aws, "kinesis".into(), &stream, Arc::new(MemCheckpoints::default()), false);
        read_all(&mut source).await.into_iter().map(|m| String::from_utf8_lossy(&m.bytes).into_owned()).collect()
    });
    assert_eq!(got.len(), expected.len(), "every line becomes one record");
    let (mut want, mut have) = (by_source(expected), by_source(got));
    // Each source's events (its runs and their completions) keep their order.
    for (source, lines) in &want {
        if !source.is_empty() {
            assert_eq!(have.get(source), Some(lines), "events of {source} differ or are out of order");
        }
    }
    let (mut bad_want, mut bad_have) = (want.remove("").unwrap_or_default(), have.remove("").unwrap_or_default());
    assert!(!bad_want.is_empty());
    bad_want.sort();
    bad_have.sort();
    assert_eq!(bad_have, bad_want, "malformed lines are put too");
}

#[test]
fn gen_to_a_missing_kinesis_stream_fails_with_a_clear_error() {
    let _rt = rt();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("aws.toml"), aws_section()).unwrap();
    let out = common::assetflow(dir.path(), &["gen", "--kinesis-stream", "no-such-stream", "--config", "aws.toml"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("no-such-stream") && stderr.contains("ResourceNotFound"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
