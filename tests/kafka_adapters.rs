//! The Kafka adapters against a real Kafka-protocol broker: a consumer group commits only what
//! is acknowledged and resumes there; two members split the partitions; the producer's
//! delivery reports and headers.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use assetflow::adapters::kafka::sink::KafkaSink;
use assetflow::adapters::kafka::source::{KafkaSource, KafkaSourceOptions};
use assetflow_actors::ports::{Pull, RawMessage, Sink, SinkRecord, Source};
use common::aws::unique;
use common::kafka::*;

fn rt() -> tokio::runtime::Runtime {
    require_broker();
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

fn opts(follow: bool) -> KafkaSourceOptions {
    KafkaSourceOptions {
        auto_offset_reset: "earliest".into(),
        session_timeout_ms: 6000,
        follow,
        // These members share a group on purpose: their state is the test's, not one process's.
        one_process: false,
        group_instance_id: None,
        revoke_timeout: std::time::Duration::from_secs(10),
        extra: Default::default(),
    }
}

fn lines(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{{\"source\":\"src-{}\",\"n\":{i}}}", i % 5)).collect()
}

fn n_of(m: &RawMessage) -> u64 {
    serde_json::from_slice::<serde_json::Value>(&m.bytes).unwrap()["n"].as_u64().unwrap()
}

/// Pulls until `want` messages arrived or `limit` passed.
async fn pull_until(source: &mut KafkaSource, want: usize, limit: Duration) -> Vec<RawMessage> {
    let started = Instant::now();
    let mut out = Vec::new();
    while out.len() < want && started.elapsed() < limit {
        if let Pull::Messages(m) = source.pull(100).await.unwrap() {
            out.extend(m);
        }
    }
    out
}

#[test]
fn a_group_commits_the_acknowledged_prefix_and_resumes_after_it() {
    rt().block_on(async {
        let topic = unique("commits");
        create_topic(&topic, 2).await;
        produce_lines(&topic, &lines(40)).await;
        let group = unique("group");
        let mut first = KafkaSource::new("k".into(), &brokers(), &topic, &group, &opts(true)).unwrap();
        // Not ready (503 at /readyz) until the group gives this member partitions.
        assert!(first.not_ready().is_some_and(|why| why.contains("no partition")), "unassigned is not ready");
        let mut got = pull_until(&mut first, 40, Duration::from_secs(30)).await;
        assert_eq!(got.len(), 40);
        assert_eq!(first.not_ready(), None, "assigned partitions make the source ready");
        // Ack all but the last 5 of each partition, out of order: only prefixes count.
        let mut per_part: HashMap<String, Vec<RawMessage>> = HashMap::new();
        for m in got.drain(..) {
            per_part.entry(m.origin.partition.clone()).or_default().push(m);
        }
        let mut unacked = BTreeSet::new();
        let mut held = Vec::new();
        for (_, mut msgs) in per_part {
            let tail = msgs.split_off(msgs.len().saturating_sub(5));
            unacked.extend(tail.iter().map(n_of));
            // One in the middle of the tail is done early: it must not move the commit.
            let mut tail = tail.into_iter();
            let early = tail.nth(2);
            held.extend(tail);
            for m in msgs.into_iter().rev() {
                m.ack.done();
            }
            if let Some(m) = early {
                m.ack.done();
            }
        }
        first.commit().await.unwrap();
        drop(held);
        drop(first);
        let mut second = KafkaSource::new("k".into(), &brokers(), &topic, &group, &opts(false)).unwrap();
        let again = pull_until(&mut second, 10, Duration::from_secs(30)).await;
        let again: BTreeSet<u64> = again.iter().map(n_of).collect();
        assert_eq!(again, unacked, "exactly the unacknowledged tail is read again");
    });
}

#[test]
fn two_members_split_the_partitions() {
    rt().block_on(async {
        let topic = unique("split");
        create_topic(&topic, 4).await;
        produce_lines(&topic, &lines(200)).await;
        let group = unique("group");
        let mut a = KafkaSource::new("a".into(), &brokers(), &topic, &group, &opts(true)).unwrap();
        let mut b = KafkaSource::new("b".into(), &brokers(), &topic, &group, &opts(true)).unwrap();
        let mut seen_a: HashMap<u64, String> = HashMap::new();
        let mut seen_b: HashMap<u64, String> = HashMap::new();
        let started = Instant::now();
        while seen_a.len() + seen_b.len() < 200 && started.elapsed() < Duration::from_secs(60) {
            for (src, seen) in [(&mut a, &mut seen_a), (&mut b, &mut seen_b)] {
                if let Pull::Messages(m) = src.pull(50).await.unwrap() {
                    for msg in m {
                        seen.insert(n_of(&msg), msg.origin.partition.clone());
                        msg.ack.done();
                    }
                    src.commit().await.unwrap();
                }
            }
        }
        let all: BTreeSet<u64> = seen_a.keys().chain(seen_b.keys()).copied().collect();
        assert_eq!(all.len(), 200, "every message read by one member or the other");
        let parts_a: BTreeSet<&String> = seen_a.values().collect();
        let parts_b: BTreeSet<&String> = seen_b.values().collect();
        assert!(!parts_a.is_empty() && !parts_b.is_empty(), "both members got partitions: {parts_a:?} {parts_b:?}");
        // A partition may move once, during the join; messages read twice stay few.
        let twice = seen_a.keys().filter(|k| seen_b.contains_key(k)).count();
        assert!(twice <= 100, "{twice} messages were read by both members");
    });
}

#[test]
fn a_revoked_partition_finishes_its_messages_in_flight_and_commits_them_before_it_moves() {
    rt().block_on(async {
        let topic = unique("handover");
        create_topic(&topic, 4).await;
        produce_lines(&topic, &lines(200)).await;
        let group = unique("group");
        let mut a_opts = opts(true);
        a_opts.revoke_timeout = Duration::from_secs(30);
        let mut a = KafkaSource::new("a".into(), &brokers(), &topic, &group, &a_opts).unwrap();
        let in_flight = pull_until(&mut a, 200, Duration::from_secs(30)).await;
        assert_eq!(in_flight.len(), 200);
        assert_eq!(a.outstanding(), 200);
        // Nothing is committed yet. B joins (a few seconds on the local broker); the partitions
        // it takes are revoked from A, whose revoke waits for their messages, which finish
        // only after eight seconds: without that wait B would get them uncommitted and read
        // them again.
        let mut b = KafkaSource::new("b".into(), &brokers(), &topic, &group, &opts(true)).unwrap();
        let started = Instant::now();
        let mut in_flight = Some(in_flight);
        let mut read_by_b = Vec::new();
        while started.elapsed() < Duration::from_secs(30) {
            if started.elapsed() > Duration::from_secs(8)
                && let Some(msgs) = in_flight.take()
            {
                msgs.into_iter().for_each(|m| m.ack.done());
            }
            if let Pull::Messages(m) = b.pull(50).await.unwrap() {
                read_by_b.extend(m.iter().map(n_of));
            }
            let _ = a.pull(50).await.unwrap();
            if b.not_ready().is_none() && in_flight.is_none() && started.elapsed() > Duration::from_secs(14) {
                break;
            }
        }
        assert_eq!(b.not_ready(), None, "B was given partitions");
        assert_eq!(read_by_b, Vec::<u64>::new(), "B re-read messages A had finished before handing over");
        // What comes next is read once, by one member or the other.
        produce_lines(&topic, &(200..240).map(|i| format!("{{\"source\":\"s\",\"n\":{i}}}")).collect::<Vec<_>>()).await;
        let mut next = BTreeSet::new();
        let started = Instant::now();
        while next.len() < 40 && started.elapsed() < Duration::from_secs(30) {
            for src in [&mut a, &mut b] {
                if let Pull::Messages(m) = src.pull(50).await.unwrap() {
                    for msg in m {
                        assert!(next.insert(n_of(&msg)), "message {} read twice", n_of(&msg));
                        msg.ack.done();
                    }
                }
            }
        }
        assert_eq!(next, (200..240).collect::<BTreeSet<u64>>());
    });
}

#[test]
fn the_producer_awaits_delivery_and_sets_key_and_headers() {
    rt().block_on(async {
        let topic = unique("out");
        create_topic(&topic, 1).await;
        let sink = KafkaSink::new(&brokers(), &topic, &Default::default()).unwrap();
        let recs: Vec<SinkRecord> = (0..30)
            .map(|i| SinkRecord {
                key: format!("src/db/public/t{i}"),
                decision_id: format!("d{i}"),
                event_id: Some(format!("e{i}")),
                payload: format!("{{\"i\":{i}}}").into_bytes(),
            })
            .collect();
        sink.send(&recs).await.unwrap();
        let read = tokio::task::spawn_blocking(move || read_topic(&topic)).await.unwrap();
        assert_eq!(read.len(), 30, "delivered before send returned");
        let r7 = read.iter().find(|r| r.value["i"] == 7).unwrap();
        assert_eq!(r7.key, "src/db/public/t7");
        assert!(r7.headers.contains(&("decision_id".to_string(), "d7".to_string())));
        assert!(r7.headers.contains(&("event_id".to_string(), "e7".to_string())));
        let ordered: Vec<u64> = read.iter().map(|r| r.value["i"].as_u64().unwrap()).collect();
        assert_eq!(ordered, (0..30).collect::<Vec<_>>(), "one partition keeps the batch's order");
    });
}
