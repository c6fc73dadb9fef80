//! The `dynamodb` control store. Table layout: partition key `source`, sort key `asset_key`,
//! so a completion sweep is a Query on one source, never a Scan. A shard's micro-batch is read
//! with BatchGetItem (100 keys a call, unprocessed keys retried) and written with
//! TransactWriteItems (100 items a call), each item conditional on the version it was read at:
//! BatchWriteItem cannot carry conditions, and conditions are what keep two processes honest.
//! Source checkpoints (Kinesis) live in the same table under the partition `#checkpoints`.

use std::collections::HashMap;
use std::time::Duration;

use assetflow_actors::event::AssetName;
use assetflow_actors::ports::{BackendError, BackendResult, ControlStore, FailureKind, RecordKey, RecordWrite};
use assetflow_actors::record::{ControlRecord, RecordStatus, RunEvent};
use async_trait::async_trait;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, Delete, KeySchemaElement, KeyType, KeysAndAttributes, Put,
    ScalarAttributeType, TransactWriteItem,
};
use chrono::{DateTime, Utc};

use super::{Aws, RequestCounter, build_error, sdk_error};

const SVC: &str = "dynamodb";
/// BatchGetItem takes at most 100 keys, TransactWriteItems at most 100 items.
const BATCH: usize = 100;
const CHECKPOINTS: &str = "#checkpoints";

type Item = HashMap<String, AttributeValue>;

#[derive(Clone)]
pub struct DynamoControl {
    client: aws_sdk_dynamodb::Client,
    table: String,
    requests: RequestCounter,
}

fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.to_owned())
}

fn get_s(item: &Item, k: &str) -> Option<String> {
    item.get(k).and_then(|v| v.as_s().ok()).cloned()
}

fn to_item(r: &ControlRecord) -> Item {
    let mut item = Item::new();
    item.insert("source".into(), s(&r.source));
    item.insert("asset_key".into(), s(&r.asset_key));
    item.insert("database".into(), s(&r.name.database));
    item.insert("schema".into(), s(&r.name.schema));
    item.insert("table".into(), s(&r.name.table));
    item.insert("hash".into(), s(&r.hash));
    item.insert("last_seen_run".into(), s(&r.last_seen_run));
    item.insert("last_seen_at".into(), s(&r.last_seen_at.to_rfc3339()));
    item.insert("status".into(), s(r.status.as_str()));
    if let Some(t) = r.dropped_at {
        item.insert("dropped_at".into(), s(&t.to_rfc3339()));
    }
    if let Some(c) = &r.content_ref {
        item.insert("content_ref".into(), s(c));
    }
    item.insert("version".into(), AttributeValue::N(r.version.to_string()));
    item
}

/// The table key of a record: its partition (`source`) and sort key (`asset_key`).
fn item_key(k: &RecordKey) -> Item {
    HashMap::from([("source".to_string(), s(&k.source)), ("asset_key".to_string(), s(&k.asset_key))])
}

fn from_item(item: &Item) -> BackendResult<ControlRecord> {
    let bad = |what: &str| BackendError::permanent(SVC, "decode record", format!("item has no valid `{what}`"));
    let time =
        |k: &str| get_s(item, k).and_then(|t| DateTime::parse_from_rfc3339(&t).ok()).map(|t| t.with_timezone(&Utc));
    Ok(ControlRecord {
        asset_key: get_s(item, "asset_key").ok_or_else(|| bad("asset_key"))?,
        source: get_s(item, "source").ok_or_else(|| bad("source"))?,
        name: AssetName {
            database: get_s(item, "database").ok_or_else(|| bad("database"))?,
            schema: get_s(item, "schema").ok_or_else(|| bad("schema"))?,
            table: get_s(item, "table").ok_or_else(|| bad("table"))?,
        },
        hash: get_s(item, "hash").ok_or_else(|| bad("hash"))?,
        last_seen_run: get_s(item, "last_seen_run").ok_or_else(|| bad("last_seen_run"))?,
        last_seen_at: time("last_seen_at").ok_or_else(|| bad("last_seen_at"))?,
        status: match get_s(item, "status").as_deref() {
            Some("live") => RecordStatus::Live,
            Some("dropped") => RecordStatus::Dropped,
            _ => return Err(bad("status")),
        },
        dropped_at: time("dropped_at"),
        content_ref: get_s(item, "content_ref"),
        version: item
            .get("version")
            .and_then(|v| v.as_n().ok())
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| bad("version"))?,
    })
}

impl DynamoControl {
    pub fn new(aws: &Aws, table: &str) -> Self {
        DynamoControl {
            client: aws_sdk_dynamodb::Client::new(&aws.sdk),
            table: table.to_owned(),
            requests: aws.requests.clone(),
        }
    }

    /// Creates the table (on-demand capacity) unless it exists, and waits until it is active.
    pub async fn ensure_table(&self) -> BackendResult<()> {
        ensure_table(&self.client, &self.requests, &self.table, "source", Some("asset_key")).await
    }

    /// A source checkpoint (Kinesis sequence number) stored beside the records.
    pub async fn checkpoint(&self, key: &str) -> BackendResult<Option<String>> {
        self.requests.hit(SVC, "GetItem");
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("source", s(CHECKPOINTS))
            .key("asset_key", s(key))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| sdk_error(SVC, "GetItem", e))?;
        Ok(out.item().and_then(|i| get_s(i, "position")))
    }

    pub async fn set_checkpoint(&self, key: &str, position: &str) -> BackendResult<()> {
        self.requests.hit(SVC, "PutItem");
        self.client
            .put_item()
            .table_name(&self.table)
            .item("source", s(CHECKPOINTS))
            .item("asset_key", s(key))
            .item("position", s(position))
            .send()
            .await
            .map_err(|e| sdk_error(SVC, "PutItem", e))?;
        Ok(())
    }
}

#[async_trait]
impl ControlStore for DynamoControl {
    async fn get_many(&self, keys: &[RecordKey]) -> BackendResult<HashMap<String, ControlRecord>> {
        let mut out = HashMap::with_capacity(keys.len());
        for chunk in keys.chunks(BATCH) {
            let mut pending: Vec<Item> = chunk.iter().map(item_key).collect();
            let mut rounds = 0;
            while !pending.is_empty() {
                rounds += 1;
                if rounds > 10 {
                    return Err(BackendError::transient(
                        SVC,
                        "BatchGetItem",
                        "keys stayed unprocessed after 10 rounds",
                    ));
                }
                let ka = KeysAndAttributes::builder()
                    .set_keys(Some(std::mem::take(&mut pending)))
                    .consistent_read(true)
                    .build()
                    .map_err(|e| build_error(SVC, "BatchGetItem", e))?;
                self.requests.hit(SVC, "BatchGetItem");
                let resp = self
                    .client
                    .batch_get_item()
                    .request_items(&self.table, ka)
                    .send()
                    .await
                    .map_err(|e| sdk_error(SVC, "BatchGetItem", e))?;
                for item in resp.responses().and_then(|r| r.get(&self.table)).into_iter().flatten() {
                    let r = from_item(item)?;
                    out.insert(r.asset_key.clone(), r);
                }
                if let Some(left) = resp.unprocessed_keys().and_then(|u| u.get(&self.table)) {
                    pending = left.keys().to_vec();
                    if !pending.is_empty() {
                        // Throttled part of the batch: back off a little before asking again.
                        tokio::time::sleep(Duration::from_millis(20 * rounds)).await;
                    }
                }
            }
        }
        Ok(out)
    }

    /// 250 events: three BatchGetItem reads (with up to 50 sources' completion marks) and three
    /// transactions at most a batch.
    fn max_batch(&self) -> usize {
        250
    }

    async fn put_many(&self, writes: &[RecordWrite]) -> BackendResult<()> {
        // Each chunk is atomic; a conflict in a later chunk leaves earlier ones applied, which is
        // safe: those records carry decisions whose effects (outputs) are already out.
        for chunk in writes.chunks(BATCH) {
            let mut items = Vec::with_capacity(chunk.len());
            for w in chunk {
                let mut put = Put::builder().table_name(&self.table).set_item(Some(to_item(&w.record)));
                put = if w.expected_version == 0 {
                    put.condition_expression("attribute_not_exists(asset_key)")
                } else {
                    put.condition_expression("version = :v")
                        .expression_attribute_values(":v", AttributeValue::N(w.expected_version.to_string()))
                };
                let put = put.build().map_err(|e| build_error(SVC, "TransactWriteItems", e))?;
                items.push(TransactWriteItem::builder().put(put).build());
            }
            self.requests.hit(SVC, "TransactWriteItems");
            if let Err(e) = self.client.transact_write_items().set_transact_items(Some(items)).send().await {
                let conflict = e
                    .as_service_error()
                    .and_then(|se| match se {
                        aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError::TransactionCanceledException(tc) => {
                            Some(tc.cancellation_reasons().iter().any(|r| r.code() == Some("ConditionalCheckFailed")))
                        }
                        _ => None,
                    })
                    .unwrap_or(false);
                let mut err = sdk_error(SVC, "TransactWriteItems", e);
                err.kind = if conflict {
                    FailureKind::Conflict
                } else if err.kind == FailureKind::Conflict {
                    // Cancelled for another reason (throttling, a concurrent transaction): retry.
                    FailureKind::Transient
                } else {
                    err.kind
                };
                return Err(err);
            }
        }
        Ok(())
    }

    async fn list_source(&self, source: &str) -> BackendResult<Vec<ControlRecord>> {
        let mut out = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            self.requests.hit(SVC, "Query");
            let resp = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("#s = :s")
                .expression_attribute_names("#s", "source")
                .expression_attribute_values(":s", s(source))
                .consistent_read(true)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| sdk_error(SVC, "Query", e))?;
            for item in resp.items() {
                out.push(from_item(item)?);
            }
            match resp.last_evaluated_key() {
                Some(k) if !k.is_empty() => start = Some(k.clone()),
                _ => return Ok(out),
            }
        }
    }

    /// The keys' items read first (BatchGetItem), then those that are markers removed with
    /// TransactWriteItems of Deletes, 100 a call, each conditional on the item still being a
    /// marker (or gone), so nothing else is ever removed.
    async fn remove_markers(&self, keys: &[RecordKey]) -> BackendResult<()> {
        let found = self.get_many(keys).await?;
        let markers: Vec<&RecordKey> =
            keys.iter().filter(|k| found.get(&k.asset_key).is_some_and(|r| r.is_run_event_at(k))).collect();
        for chunk in markers.chunks(BATCH) {
            let mut items = Vec::with_capacity(chunk.len());
            for k in chunk {
                let delete = Delete::builder()
                    .table_name(&self.table)
                    .set_key(Some(item_key(k)))
                    .condition_expression("attribute_not_exists(asset_key) OR (#h = :h AND #st = :st)")
                    .expression_attribute_names("#h", "hash")
                    .expression_attribute_names("#st", "status")
                    .expression_attribute_values(":h", s(RunEvent::HASH))
                    .expression_attribute_values(":st", s(RecordStatus::Dropped.as_str()))
                    .build()
                    .map_err(|e| build_error(SVC, "TransactWriteItems", e))?;
                items.push(TransactWriteItem::builder().delete(delete).build());
            }
            self.requests.hit(SVC, "TransactWriteItems");
            self.client
                .transact_write_items()
                .set_transact_items(Some(items))
                .send()
                .await
                .map_err(|e| sdk_error(SVC, "TransactWriteItems", e))?;
        }
        Ok(())
    }

    /// A Scan of the whole table, page by page: `assetflow assets` is the only caller, never
    /// the pipeline. Checkpoint items share the table and are skipped.
    async fn list_all(&self) -> BackendResult<Vec<ControlRecord>> {
        let mut out = Vec::new();
        scan_all(&self.client, &self.requests, &self.table, |item| {
            if get_s(item, "source").as_deref() != Some(CHECKPOINTS) {
                out.push(from_item(item)?);
            }
            Ok(())
        })
        .await?;
        Ok(out)
    }
}

/// Creates `table` (on-demand capacity, string keys `hash` and `range`, if any) unless it
/// exists, and waits until it is active. Two processes creating it at once is fine: one gets
/// `ResourceInUse`, and both wait.
pub(super) async fn ensure_table(
    client: &aws_sdk_dynamodb::Client,
    requests: &RequestCounter,
    table: &str,
    hash: &str,
    range: Option<&str>,
) -> BackendResult<()> {
    requests.hit(SVC, "DescribeTable");
    if client.describe_table().table_name(table).send().await.is_ok() {
        return Ok(());
    }
    let attr =
        |n: &str| AttributeDefinition::builder().attribute_name(n).attribute_type(ScalarAttributeType::S).build();
    let key = |n: &str, t| KeySchemaElement::builder().attribute_name(n).key_type(t).build();
    let err = |e| build_error(SVC, "CreateTable", e);
    requests.hit(SVC, "CreateTable");
    let mut create = client
        .create_table()
        .table_name(table)
        .attribute_definitions(attr(hash).map_err(err)?)
        .key_schema(key(hash, KeyType::Hash).map_err(err)?);
    if let Some(range) = range {
        create = create
            .attribute_definitions(attr(range).map_err(err)?)
            .key_schema(key(range, KeyType::Range).map_err(err)?);
    }
    let created = create.billing_mode(BillingMode::PayPerRequest).send().await;
    if let Err(e) = created {
        let err = sdk_error(SVC, "CreateTable", e);
        if !err.message.contains("ResourceInUse") {
            return Err(err);
        }
    }
    for _ in 0..100 {
        requests.hit(SVC, "DescribeTable");
        let d =
            client.describe_table().table_name(table).send().await.map_err(|e| sdk_error(SVC, "DescribeTable", e))?;
        if d.table().and_then(|t| t.table_status()).map(|s| s.as_str() == "ACTIVE").unwrap_or(false) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(BackendError::transient(SVC, "CreateTable", format!("table {table} did not become ACTIVE")))
}

/// Fails unless `table` exists: a start-up check when it is not created on demand.
pub(super) async fn check_table(
    client: &aws_sdk_dynamodb::Client,
    requests: &RequestCounter,
    table: &str,
) -> BackendResult<()> {
    requests.hit(SVC, "DescribeTable");
    client.describe_table().table_name(table).send().await.map(drop).map_err(|e| sdk_error(SVC, "DescribeTable", e))
}

/// Every item of `table`, read consistently page by page, handed to `each`.
pub(super) async fn scan_all(
    client: &aws_sdk_dynamodb::Client,
    requests: &RequestCounter,
    table: &str,
    mut each: impl FnMut(&Item) -> BackendResult<()>,
) -> BackendResult<()> {
    let mut start: Option<Item> = None;
    loop {
        requests.hit(SVC, "Scan");
        let resp = client
            .scan()
            .table_name(table)
            .consistent_read(true)
            .set_exclusive_start_key(start.take())
            .send()
            .await
            .map_err(|e| sdk_error(SVC, "Scan", e))?;
        for item in resp.items() {
            each(item)?;
        }
        match resp.last_evaluated_key() {
            Some(k) if !k.is_empty() => start = Some(k.clone()),
            _ => return Ok(()),
        }
    }
}
