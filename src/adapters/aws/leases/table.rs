//! The lease table, laid out as the Kinesis Client Library lays it out, so that an AWS user reads
//! it with the tools they know: one item per shard, partition key `leaseKey` (the shard id),
//! `leaseOwner` (absent while free), `leaseCounter`, `checkpoint`,
//! `checkpointSubSequenceNumber`, `ownerSwitchesSinceCheckpoint`, `parentShardIds`.
//!
//! Every change is an UpdateItem conditional on the counter the caller last saw (and, for the
//! owner's own writes, on still being the owner), and bumps the counter: a worker that lost a
//! lease finds its next renewal or checkpoint refused ([`FailureKind::Conflict`]), never
//! written over the new owner's.

use std::collections::HashMap;

use assetflow_actors::ports::{BackendError, BackendResult, FailureKind};
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue};

use super::super::dynamodb::{ensure_table, scan_all};
use super::super::{Aws, RequestCounter, sdk_error};

const SVC: &str = "dynamodb";
/// Where a new lease starts reading: the oldest record the shard still holds.
pub const TRIM_HORIZON: &str = "TRIM_HORIZON";
/// The checkpoint of a shard read to its end, every record acknowledged.
pub const SHARD_END: &str = "SHARD_END";

type Item = HashMap<String, AttributeValue>;

/// One shard's lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub shard: String,
    pub owner: Option<String>,
    pub counter: u64,
    /// A sequence number, [`TRIM_HORIZON`] or [`SHARD_END`].
    pub checkpoint: String,
    pub owner_switches: u64,
    pub parents: Vec<String>,
}

impl Lease {
    pub fn is_finished(&self) -> bool {
        self.checkpoint == SHARD_END
    }
}

fn n(v: u64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.to_owned())
}

fn from_item(item: &Item) -> BackendResult<Lease> {
    let bad = |what: &str| BackendError::permanent(SVC, "decode lease", format!("lease item has no valid `{what}`"));
    let num = |k: &str| item.get(k).and_then(|v| v.as_n().ok()).and_then(|v| v.parse::<u64>().ok());
    Ok(Lease {
        shard: item.get("leaseKey").and_then(|v| v.as_s().ok()).cloned().ok_or_else(|| bad("leaseKey"))?,
        owner: item.get("leaseOwner").and_then(|v| v.as_s().ok()).cloned(),
        counter: num("leaseCounter").ok_or_else(|| bad("leaseCounter"))?,
        checkpoint: item.get("checkpoint").and_then(|v| v.as_s().ok()).cloned().ok_or_else(|| bad("checkpoint"))?,
        owner_switches: num("ownerSwitchesSinceCheckpoint").unwrap_or(0),
        parents: item.get("parentShardIds").and_then(|v| v.as_ss().ok()).cloned().unwrap_or_default(),
    })
}

/// A lost conditional check says who changed the lease meanwhile: another worker.
fn lost(e: BackendError, shard: &str, what: &str) -> BackendError {
    if e.kind == FailureKind::Conflict {
        BackendError::new(
            SVC,
            what,
            format!("the lease of {shard} moved on (another worker took it)"),
            FailureKind::Conflict,
        )
    } else {
        e
    }
}

#[derive(Clone)]
pub struct LeaseTable {
    client: aws_sdk_dynamodb::Client,
    table: String,
    requests: RequestCounter,
}

impl LeaseTable {
    pub fn new(aws: &Aws, table: &str) -> Self {
        LeaseTable {
            client: aws_sdk_dynamodb::Client::new(&aws.sdk),
            table: table.to_owned(),
            requests: aws.requests.clone(),
        }
    }

    pub fn name(&self) -> &str {
        &self.table
    }

    /// Creates the table unless it exists (`create_if_missing`).
    pub async fn ensure_table(&self) -> BackendResult<()> {
        ensure_table(&self.client, &self.requests, &self.table, "leaseKey", None).await
    }

    /// Fails unless the table exists: a start-up check when it is not created on demand.
    pub async fn check_table(&self) -> BackendResult<()> {
        super::super::dynamodb::check_table(&self.client, &self.requests, &self.table).await
    }

    /// Every lease, read consistently (a Scan: one item per shard).
    pub async fn list(&self) -> BackendResult<Vec<Lease>> {
        let mut out = Vec::new();
        scan_all(&self.client, &self.requests, &self.table, |item| {
            out.push(from_item(item)?);
            Ok(())
        })
        .await?;
        Ok(out)
    }

    /// A free lease for a shard that has none, starting at [`TRIM_HORIZON`]. `false`: it had one.
    pub async fn create_if_absent(&self, shard: &str, parents: &[String]) -> BackendResult<bool> {
        let mut put = self
            .client
            .put_item()
            .table_name(&self.table)
            .item("leaseKey", s(shard))
            .item("leaseCounter", n(0))
            .item("checkpoint", s(TRIM_HORIZON))
            .item("checkpointSubSequenceNumber", n(0))
            .item("ownerSwitchesSinceCheckpoint", n(0))
            .condition_expression("attribute_not_exists(leaseKey)");
        if !parents.is_empty() {
            put = put.item("parentShardIds", AttributeValue::Ss(parents.to_vec()));
        }
        self.requests.hit(SVC, "PutItem");
        match put.send().await.map_err(|e| sdk_error(SVC, "PutItem", e)) {
            Ok(_) => Ok(true),
            Err(e) if e.kind == FailureKind::Conflict => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// One conditional UpdateItem of `lease`, returning the lease as it now is.
    async fn update(
        &self,
        lease: &Lease,
        what: &str,
        update: &str,
        condition: &str,
        values: Vec<(&str, AttributeValue)>,
    ) -> BackendResult<Lease> {
        let mut req = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("leaseKey", s(&lease.shard))
            .update_expression(update)
            .condition_expression(condition)
            .expression_attribute_values(":c", n(lease.counter))
            .expression_attribute_values(":one", n(1))
            .return_values(ReturnValue::AllNew);
        for (k, v) in values {
            req = req.expression_attribute_values(k, v);
        }
        self.requests.hit(SVC, "UpdateItem");
        let resp = req.send().await.map_err(|e| lost(sdk_error(SVC, "UpdateItem", e), &lease.shard, what))?;
        let item = resp.attributes().ok_or_else(|| BackendError::transient(SVC, what, "no attributes returned"))?;
        from_item(item)
    }

    /// Takes `lease` for `me`, as last seen: refused if anyone changed it since (a renewal by
    /// its owner, another taker), so read it fresh before taking.
    pub async fn take(&self, lease: &Lease, me: &str) -> BackendResult<Lease> {
        let switches = if lease.owner.as_deref() == Some(me) {
            ""
        } else {
            ", ownerSwitchesSinceCheckpoint = ownerSwitchesSinceCheckpoint + :one"
        };
        self.update(
            lease,
            "take lease",
            &format!("SET leaseOwner = :me, leaseCounter = leaseCounter + :one{switches}"),
            "leaseCounter = :c",
            vec![(":me", s(me))],
        )
        .await
    }

    /// Renews `me`'s lease: refused once another worker took it.
    pub async fn renew(&self, lease: &Lease, me: &str) -> BackendResult<Lease> {
        self.update(
            lease,
            "renew lease",
            "SET leaseCounter = leaseCounter + :one",
            "leaseCounter = :c AND leaseOwner = :me",
            vec![(":me", s(me))],
        )
        .await
    }

    /// Records `checkpoint` in `me`'s lease: refused once another worker took it, so a worker
    /// that lost a shard never moves its position.
    pub async fn checkpoint(&self, lease: &Lease, me: &str, checkpoint: &str) -> BackendResult<Lease> {
        self.update(
            lease,
            "checkpoint",
            "SET checkpoint = :cp, checkpointSubSequenceNumber = :zero, ownerSwitchesSinceCheckpoint = :zero, \
             leaseCounter = leaseCounter + :one",
            "leaseCounter = :c AND leaseOwner = :me",
            vec![(":me", s(me)), (":cp", s(checkpoint)), (":zero", n(0))],
        )
        .await
    }

    /// Gives `me`'s lease up (on shutdown): free at once for any worker.
    pub async fn release(&self, lease: &Lease, me: &str) -> BackendResult<Lease> {
        self.update(
            lease,
            "release lease",
            "REMOVE leaseOwner SET leaseCounter = leaseCounter + :one",
            "leaseCounter = :c AND leaseOwner = :me",
            vec![(":me", s(me))],
        )
        .await
    }
}
