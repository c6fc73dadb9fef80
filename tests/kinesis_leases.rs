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

async fn table() -> (LeaseTable, aws_config::SdkConfig) {
    let aws = Aws::load(&AwsConfig {
        region: "us-east-1".into(),
        endpoint_url: endpoint(),
        access_key_id: Some("testing".into()),
        secret_access_key: Some("testing".into()),
    })
    .await;
    let t = LeaseTable::new(&aws, &unique("leases"));
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
