//! The Kinesis lease table against the emulator's DynamoDB: the KCL layout, and every change
//! conditional on the counter last seen, so a worker that lost a lease writes nothing that
//! sticks (its renewal, checkpoint and release are refused as conflicts).

mod common;

use assetflow::adapters::aws::Aws;
use assetflow::adapters::aws::leases::table::{Lease, LeaseTable, SHARD_END, TRIM_HORIZON};
use assetflow::config::AwsConfig;
use assetflow_actors::ports::FailureKind;
use common::aws::*;

fn rt() -> tokio::runtime::Runtime {
    require_emulator();
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

async fn emulator() -> Aws {
    Aws::load(&AwsConfig {
        region: "us-east-1".into(),
        endpoint_url: endpoint(),
        access_key_id: Some("testing".into()),
        secret_access_key: Some("testing".into()),
    })
    .await
}

async fn table() -> (LeaseTable, aws_config::SdkConfig) {
    let t = LeaseTable::new(&emulator().await, &unique("leases"));
    t.ensure_table().await.unwrap();
    (t, sdk_config().await)
}

async fn fresh(t: &LeaseTable, shard: &str) -> Lease {
    t.list().await.unwrap().into_iter().find(|l| l.shard == shard).unwrap()
}

#[test]
fn leases_are_items_in_the_kcl_layout() {
    rt().block_on(async {
        let (t, conf) = table().await;
        assert!(t.create_if_absent("shardId-000000000002", &["shardId-000000000000".into()]).await.unwrap());
        assert!(!t.create_if_absent("shardId-000000000002", &[]).await.unwrap(), "created once");
        let lease = fresh(&t, "shardId-000000000002").await;
        assert_eq!(
            lease,
            Lease {
                shard: "shardId-000000000002".into(),
                owner: None,
                counter: 0,
                checkpoint: TRIM_HORIZON.into(),
                owner_switches: 0,
                parents: vec!["shardId-000000000000".into()],
            }
        );
        t.take(&lease, "worker-a").await.unwrap();
        // Read back as any AWS tool would: the KCL's attribute names and types.
        let item = aws_sdk_dynamodb::Client::new(&conf)
            .get_item()
            .table_name(t.name())
            .key("leaseKey", aws_sdk_dynamodb::types::AttributeValue::S("shardId-000000000002".into()))
            .send()
            .await
            .unwrap()
            .item
            .unwrap();
        let mut names: Vec<&str> = item.keys().map(String::as_str).collect();
        names.sort();
        assert_eq!(
            names,
            [
                "checkpoint",
                "checkpointSubSequenceNumber",
                "leaseCounter",
                "leaseKey",
                "leaseOwner",
                "ownerSwitchesSinceCheckpoint",
                "parentShardIds"
            ]
        );
        assert_eq!(item["leaseOwner"].as_s().unwrap(), "worker-a");
        assert_eq!(item["leaseCounter"].as_n().unwrap(), "1");
        assert_eq!(item["ownerSwitchesSinceCheckpoint"].as_n().unwrap(), "1");
    });
}

#[test]
fn a_worker_whose_lease_was_taken_writes_nothing_that_sticks() {
    rt().block_on(async {
        let (t, _) = table().await;
        t.create_if_absent("s0", &[]).await.unwrap();
        let a = t.take(&fresh(&t, "s0").await, "a").await.unwrap();
        let a = t.renew(&a, "a").await.unwrap();
        let a = t.checkpoint(&a, "a", "100").await.unwrap();
        assert_eq!((a.counter, a.checkpoint.as_str(), a.owner_switches), (3, "100", 0));
        // b takes it (a stopped renewing, say), reading it fresh first.
        let b = t.take(&fresh(&t, "s0").await, "b").await.unwrap();
        assert_eq!((b.owner.as_deref(), b.owner_switches), (Some("b"), 1));
        // a, still holding its copy, is refused everything.
        for (what, r) in [
            ("renew", t.renew(&a, "a").await),
            ("checkpoint", t.checkpoint(&a, "a", "150").await),
            ("release", t.release(&a, "a").await),
        ] {
            assert_eq!(r.unwrap_err().kind, FailureKind::Conflict, "{what}");
        }
        // Even with the current counter, a is not the owner.
        let now = fresh(&t, "s0").await;
        assert_eq!(t.checkpoint(&now, "a", "150").await.unwrap_err().kind, FailureKind::Conflict);
        let after = fresh(&t, "s0").await;
        assert_eq!(
            (after.owner.as_deref(), after.checkpoint.as_str()),
            (Some("b"), "100"),
            "the checkpoint never went back or forward for a"
        );
        // A taker with a stale copy (the Java KCL's stale-counter steal) is refused too: read
        // fresh, then take.
        assert_eq!(t.take(&a, "c").await.unwrap_err().kind, FailureKind::Conflict);
    });
}

#[test]
fn a_released_lease_is_free_at_once_and_keeps_its_checkpoint() {
    rt().block_on(async {
        let (t, _) = table().await;
        t.create_if_absent("s0", &[]).await.unwrap();
        let a = t.take(&fresh(&t, "s0").await, "a").await.unwrap();
        let a = t.checkpoint(&a, "a", SHARD_END).await.unwrap();
        let released = t.release(&a, "a").await.unwrap();
        assert_eq!(released.owner, None);
        assert!(released.is_finished(), "a finished shard stays finished: its children read on");
        let b = t.take(&fresh(&t, "s0").await, "b").await.unwrap();
        assert_eq!((b.owner.as_deref(), b.checkpoint.as_str()), (Some("b"), SHARD_END));
    });
}

/// Not used with leases (positions live in the leases), but the source takes one.
#[derive(Default)]
struct NoCheckpoints;

#[async_trait::async_trait]
impl assetflow::adapters::checkpoints::Checkpoints for NoCheckpoints {
    async fn get(&self, _: &str) -> assetflow_actors::ports::BackendResult<Option<String>> {
        panic!("a leased source reads its positions from its leases")
    }
    async fn set(&self, _: &str, _: &str) -> assetflow_actors::ports::BackendResult<()> {
        panic!("a leased source writes its positions into its leases")
    }
}

/// Pulls `source` (acknowledging and committing as the pipeline would) until `want` new
/// messages came or `limit` passed; returns (shard, payload) of each.
async fn pull_some(
    source: &mut assetflow::adapters::aws::kinesis::KinesisSource,
    want: usize,
    limit: std::time::Duration,
) -> Vec<(String, String)> {
    use assetflow_actors::ports::{Pull, Source};
    let started = std::time::Instant::now();
    let mut out = Vec::new();
    while out.len() < want && started.elapsed() < limit {
        if let Pull::Messages(m) = source.pull(100).await.unwrap() {
            for msg in m {
                out.push((msg.origin.partition.clone(), String::from_utf8_lossy(&msg.bytes).into_owned()));
                msg.ack.done();
            }
        } else {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        source.commit().await.unwrap();
    }
    out
}

#[test]
fn a_worker_whose_lease_was_stolen_stops_reading_that_shard() {
    use assetflow::adapters::aws::kinesis::{KinesisSource, Leasing};
    use std::time::Duration;
    rt().block_on(async {
        let (t, conf) = table().await;
        let aws = emulator().await;
        let stream = unique("stolen");
        create_stream(&conf, &stream, 2).await;
        let lines = |from: usize| -> Vec<String> {
            (from..from + 40).map(|i| format!("{{\"source\":\"src-{}\",\"n\":{i}}}", i % 8)).collect()
        };
        put_lines(&conf, &stream, &lines(0)).await;
        let worker = |me: &str| {
            KinesisSource::new(&aws, "k".into(), &stream, std::sync::Arc::new(NoCheckpoints), true)
                // Two workers take turns on one thread: on a loaded machine one waits out the
                // other's reads and slow emulator calls, and with a failover much shorter than
                // that it sees the other's lease expire and takes it.
                .with_leases(Leasing::new(t.clone(), me.into(), Duration::from_millis(1500)))
        };
        let mut a = worker("a");
        assert_eq!(pull_some(&mut a, 40, Duration::from_secs(30)).await.len(), 40, "a alone reads both shards");
        // b joins: two leases, two workers, a over its share: b steals one.
        let mut b = worker("b");
        let started = std::time::Instant::now();
        while !t.list().await.unwrap().iter().any(|l| l.owner.as_deref() == Some("b")) {
            assert!(started.elapsed() < Duration::from_secs(30), "b never took a lease");
            pull_some(&mut b, 1, Duration::from_millis(100)).await;
        }
        // a learns it on its next lease round (every 500 ms); what comes next is read once,
        // each shard by its one owner.
        tokio::time::sleep(Duration::from_millis(700)).await;
        pull_some(&mut a, 1, Duration::from_millis(300)).await;
        put_lines(&conf, &stream, &lines(40)).await;
        let mut by_a = Vec::new();
        let mut by_b = Vec::new();
        let started = std::time::Instant::now();
        while by_a.len() + by_b.len() < 40 && started.elapsed() < Duration::from_secs(30) {
            by_a.extend(pull_some(&mut a, 40, Duration::from_millis(200)).await);
            by_b.extend(pull_some(&mut b, 40, Duration::from_millis(200)).await);
        }
        let shards = |v: &[(String, String)]| v.iter().map(|m| m.0.clone()).collect::<std::collections::BTreeSet<_>>();
        assert_eq!(by_a.len() + by_b.len(), 40, "each new record read once: a {} b {}", by_a.len(), by_b.len());
        assert!(
            shards(&by_a).is_disjoint(&shards(&by_b)),
            "a read the stolen shard: {:?} {:?}",
            shards(&by_a),
            shards(&by_b)
        );
        assert!(!by_b.is_empty(), "b reads its shard");
    });
}

#[test]
fn a_worker_whose_own_lease_write_landed_unanswered_reads_on() {
    // A renewal or checkpoint whose reply is lost has landed all the same: the lease's counter
    // moved and its owner is still this worker. The write, retried, is refused (the counter it
    // expects is gone). The worker must take its own lease back: nobody else will while it is
    // alone, and with others only after their failover time.
    use assetflow::adapters::aws::kinesis::{KinesisSource, Leasing};
    use std::time::Duration;
    rt().block_on(async {
        let (t, conf) = table().await;
        let aws = emulator().await;
        let stream = unique("landed");
        create_stream(&conf, &stream, 1).await;
        let lines = |from: usize| -> Vec<String> {
            (from..from + 20).map(|i| format!("{{\"source\":\"src-{}\",\"n\":{i}}}", i % 4)).collect()
        };
        put_lines(&conf, &stream, &lines(0)).await;
        let mut a = KinesisSource::new(&aws, "k".into(), &stream, std::sync::Arc::new(NoCheckpoints), true)
            .with_leases(Leasing::new(t.clone(), "a".into(), Duration::from_millis(600)));
        assert_eq!(pull_some(&mut a, 20, Duration::from_secs(30)).await.len(), 20);
        let lease = t.list().await.unwrap().into_iter().next().unwrap();
        t.renew(&lease, "a").await.unwrap();
        // a's next lease round (every 200 ms) finds the counter moved, before anything new.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(pull_some(&mut a, 1, Duration::from_millis(300)).await.is_empty());
        put_lines(&conf, &stream, &lines(20)).await;
        let got: Vec<String> = pull_some(&mut a, 20, Duration::from_secs(10)).await.into_iter().map(|m| m.1).collect();
        assert_eq!(got, lines(20), "a reads what came after its checkpoint, once");
        let lease = t.list().await.unwrap().into_iter().next().unwrap();
        assert_eq!(lease.owner.as_deref(), Some("a"));
    });
}

#[test]
fn a_merged_shard_starts_only_after_both_parents_finished_whoever_holds_them() {
    use assetflow::adapters::aws::kinesis::{KinesisSource, Leasing};
    use assetflow_actors::ports::RawMessage;
    use std::time::{Duration, Instant};
    rt().block_on(async {
        let (t, conf) = table().await;
        let aws = emulator().await;
        let stream = unique("merged");
        create_stream(&conf, &stream, 2).await;
        let lines: Vec<String> = (0..40).map(|i| format!("{{\"source\":\"src-{}\",\"n\":{i}}}", i % 8)).collect();
        put_lines(&conf, &stream, &lines).await;
        let worker = |me: &str| {
            KinesisSource::new(&aws, "k".into(), &stream, std::sync::Arc::new(NoCheckpoints), true)
                // Not shorter, for the reason given in the stolen-lease test.
                .with_leases(Leasing::new(t.clone(), me.into(), Duration::from_millis(1500)))
        };
        let (mut a, mut b) = (worker("a"), worker("b"));
        // Everything read is held unacknowledged until the test says so: the parents stay
        // unfinished however long the workers run.
        let mut held: Vec<RawMessage> = Vec::new();
        let mut child_reads: Vec<(String, String, Vec<Lease>)> = Vec::new();
        let parents = |leases: &[Lease]| -> Vec<Lease> {
            let mut p: Vec<Lease> = leases.iter().filter(|l| l.parents.is_empty()).cloned().collect();
            p.sort_by(|x, y| x.shard.cmp(&y.shard));
            p
        };
        // The two workers share the two shards, one lease each, before the merge.
        let started = Instant::now();
        loop {
            let (got, leases) = round(&t, &mut a, &mut b).await;
            held.extend(got.into_iter().map(|(_, m)| m));
            let owners: std::collections::BTreeSet<Option<String>> =
                parents(&leases).into_iter().map(|l| l.owner).collect();
            if owners.len() == 2 && !owners.contains(&None) {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(30), "the leases never spread: {leases:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let k = aws_sdk_kinesis::Client::new(&conf);
        let listed = k.list_shards().stream_name(&stream).send().await.unwrap();
        let ids: Vec<String> = listed.shards().iter().map(|s| s.shard_id().to_owned()).collect();
        k.merge_shards()
            .stream_name(&stream)
            .shard_to_merge(&ids[0])
            .adjacent_shard_to_merge(&ids[1])
            .send()
            .await
            .unwrap();

        // Four seconds (several lease rounds and shard listings, each every 1.5 s at most)
        // with the parents unacknowledged: the child's lease appears and is taken, but nobody
        // reads the child.
        let until = Instant::now() + Duration::from_secs(4);
        while Instant::now() < until {
            let (got, leases) = round(&t, &mut a, &mut b).await;
            for (who, m) in got {
                if !ids.contains(&m.origin.partition) {
                    child_reads.push((who, m.origin.partition.clone(), leases.clone()));
                }
                held.push(m);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            child_reads.is_empty(),
            "the child was read {} times before its parents finished; first: {:?}",
            child_reads.len(),
            child_reads.first()
        );
        let leases = t.list().await.unwrap();
        let child = leases.iter().find(|l| !l.parents.is_empty()).expect("a lease for the merged shard").clone();
        assert_eq!(child.parents.len(), 2, "{child:?}");
        assert!(child.owner.is_some(), "the child's lease is taken while it waits: {child:?}");

        // Acknowledge everything: the parents finish (each by its own owner) and the child
        // starts, whoever holds it. moto copies the parents' records onto the merged shard
        // (real Kinesis puts only new ones there), which gives the child 40 records to read.
        for m in held.drain(..) {
            m.ack.done();
        }
        let mut from_child = Vec::new();
        let started = Instant::now();
        while from_child.len() < 40 && started.elapsed() < Duration::from_secs(30) {
            let (got, leases) = round(&t, &mut a, &mut b).await;
            for (who, m) in got {
                if !ids.contains(&m.origin.partition) {
                    let p = parents(&leases);
                    assert!(
                        p.iter().all(Lease::is_finished),
                        "{who} read the child before both parents were finished: {p:?}"
                    );
                    from_child.push((who, String::from_utf8_lossy(&m.bytes).into_owned()));
                }
                m.ack.done();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(from_child.len(), 40, "the child is read once its parents finished");
        let readers: std::collections::BTreeSet<&str> = from_child.iter().map(|(w, _)| w.as_str()).collect();
        assert_eq!(readers.len(), 1, "one owner reads the child: {readers:?}");
        // Its parents were held by a and b, so one of them was finished by the other worker.
        let finishers: std::collections::BTreeSet<Option<String>> =
            parents(&t.list().await.unwrap()).into_iter().map(|l| l.owner).collect();
        assert_eq!(finishers.len(), 2, "each parent finished by its own worker: {finishers:?}");
    });
}

/// One pull and commit by each worker, then the lease table as it stands after them.
async fn round(
    t: &LeaseTable,
    a: &mut assetflow::adapters::aws::kinesis::KinesisSource,
    b: &mut assetflow::adapters::aws::kinesis::KinesisSource,
) -> (Vec<(String, assetflow_actors::ports::RawMessage)>, Vec<Lease>) {
    use assetflow_actors::ports::{Pull, Source};
    let mut got = Vec::new();
    for (who, w) in [("a", a), ("b", b)] {
        if let Pull::Messages(m) = w.pull(100).await.unwrap() {
            got.extend(m.into_iter().map(|m| (who.to_owned(), m)));
        }
        w.commit().await.unwrap();
    }
    (got, t.list().await.unwrap())
}

#[test]
fn split_children_held_by_another_worker_start_only_after_the_parent_finished() {
    use assetflow::adapters::aws::kinesis::{KinesisSource, Leasing};
    use assetflow_actors::ports::{Pull, RawMessage, Source};
    use std::time::{Duration, Instant};
    rt().block_on(async {
        let (t, conf) = table().await;
        let stream = unique("split");
        create_stream(&conf, &stream, 1).await;
        let lines: Vec<String> = (0..20).map(|i| format!("{{\"source\":\"src-{}\",\"n\":{i}}}", i % 4)).collect();
        put_lines(&conf, &stream, &lines).await;
        // Each worker counts its own requests: b's GetShardIterator calls say when it starts a shard.
        let (aws_a, aws_b) = (emulator().await, emulator().await);
        let worker = |aws: &Aws, me: &str| {
            KinesisSource::new(aws, "k".into(), &stream, std::sync::Arc::new(NoCheckpoints), true)
                // Not shorter: a's lease rounds come between its reads, and on a loaded
                // emulator a round can take longer than 600 ms, which let b take the parent.
                .with_leases(Leasing::new(t.clone(), me.into(), Duration::from_millis(1500)))
        };
        let mut a = worker(&aws_a, "a");
        let mut held: Vec<RawMessage> = Vec::new();
        let started = Instant::now();
        while held.len() < 20 && started.elapsed() < Duration::from_secs(30) {
            if let Pull::Messages(m) = a.pull(100).await.unwrap() {
                held.extend(m);
            }
        }
        assert_eq!(held.len(), 20, "a reads the parent");
        let k = aws_sdk_kinesis::Client::new(&conf);
        let parent = k.list_shards().stream_name(&stream).send().await.unwrap().shards()[0].shard_id().to_owned();
        k.split_shard()
            .stream_name(&stream)
            .shard_to_split(&parent)
            .new_starting_hash_key("170141183460469231731687303715884105728")
            .send()
            .await
            .unwrap();
        let iterators = |aws: &Aws| aws.requests.snapshot().get("kinesis.GetShardIterator").copied().unwrap_or(0);
        let mut b = worker(&aws_b, "b");
        // At least four seconds of lease rounds (one every 500 ms) with the parent
        // unacknowledged, and until b holds a child (a loaded emulator makes rounds slow): the
        // children's leases are taken, and nobody starts them.
        let a_before = iterators(&aws_a);
        let (since, mut leases) = (Instant::now(), Vec::new());
        let b_holds_a_child =
            |leases: &[Lease]| leases.iter().any(|l| l.parents == [parent.clone()] && l.owner.as_deref() == Some("b"));
        while since.elapsed() < Duration::from_secs(4)
            || (!b_holds_a_child(&leases) && since.elapsed() < Duration::from_secs(30))
        {
            for w in [&mut a, &mut b] {
                if let Pull::Messages(m) = w.pull(100).await.unwrap() {
                    held.extend(m);
                }
                w.commit().await.unwrap();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            leases = t.list().await.unwrap();
        }
        let children: Vec<&Lease> = leases.iter().filter(|l| l.parents == [parent.clone()]).collect();
        assert_eq!(children.len(), 2, "{leases:?}");
        assert!(b_holds_a_child(&leases), "b holds a child: {leases:?}");
        assert_eq!(
            leases.iter().find(|l| l.shard == parent).and_then(|l| l.owner.clone()).as_deref(),
            Some("a"),
            "the parent stays with a"
        );
        assert_eq!(iterators(&aws_b), 0, "b started a child before its parent finished");
        assert_eq!(iterators(&aws_a), a_before, "a started a child before its parent finished");
        // Acknowledged: a finishes the parent, and b starts its children after that.
        for m in held.drain(..) {
            m.ack.done();
        }
        let started = Instant::now();
        while iterators(&aws_b) == 0 && started.elapsed() < Duration::from_secs(30) {
            for w in [&mut a, &mut b] {
                let _ = w.pull(100).await.unwrap();
                w.commit().await.unwrap();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(iterators(&aws_b) > 0, "b never started its child");
        let finished = t.list().await.unwrap().into_iter().find(|l| l.shard == parent).unwrap();
        assert!(finished.is_finished(), "the parent is SHARD_END once a child starts: {finished:?}");
    });
}
