//! The `dynamodb` history: one table that every process of a topology appends to. Partition key
//! `asset_key` (rows with no asset, a completion or an unreadable dead letter, go under
//! `#source/{source}`), sort key `at_id` = the row's time (microseconds, UTC), its place in its
//! append and its decision id, so an asset's rows read newest first with one Query (rows of one
//! decisor batch share a time), and an append sent again after a lost reply writes the same
//! items. Appends go out with BatchWriteItem, 25 items a request and up to `TOGETHER`
//! requests at a time, unprocessed items sent again.

use std::collections::HashMap;
use std::time::Duration;

use assetflow_actors::decision::{HistoryRow, Outcome};
use assetflow_actors::ports::{BackendError, BackendResult, HistoryStore};
use async_trait::async_trait;
use aws_sdk_dynamodb::types::{AttributeValue, PutRequest, WriteRequest};
use chrono::{DateTime, Utc};
use futures_util::{StreamExt, TryStreamExt};

use super::dynamodb::{check_table, ensure_table};
use super::{Aws, RequestCounter, build_error, sdk_error};

const SVC: &str = "dynamodb";
/// BatchWriteItem takes at most 25 items.
const BATCH: usize = 25;
/// BatchWriteItem requests of one append in flight at once. An append is not split by the
/// history writer (a row's place in it is part of its key), so its requests go out together:
/// one that grew while the table was slow takes about as long as a small one.
const TOGETHER: usize = 16;
/// Rounds of unprocessed items (throttling) before the append fails and is retried whole.
const ROUNDS: u64 = 10;

type Item = HashMap<String, AttributeValue>;

pub struct DynamoHistory {
    client: aws_sdk_dynamodb::Client,
    table: String,
    requests: RequestCounter,
}

/// The partition a row goes to.
fn partition(r: &HistoryRow) -> String {
    match (&r.asset_key, &r.source) {
        (Some(k), _) => k.clone(),
        (None, Some(s)) => format!("#source/{s}"),
        (None, None) => "#none".into(),
    }
}

fn to_item(r: &HistoryRow, n: usize) -> Item {
    let s = |v: &str| AttributeValue::S(v.to_owned());
    let at = r.at.format("%Y-%m-%dT%H:%M:%S%.6fZ");
    let mut item = Item::new();
    item.insert("asset_key".into(), s(&partition(r)));
    item.insert("at_id".into(), s(&format!("{at}#{n:05}#{}", r.decision_id)));
    item.insert("outcome".into(), s(r.outcome.as_str()));
    item.insert("decision_id".into(), s(&r.decision_id));
    item.insert("at".into(), s(&at.to_string()));
    for (k, v) in [
        ("asset", &r.asset_key),
        ("source", &r.source),
        ("event_id", &r.event_id),
        ("run_id", &r.run_id),
        ("hash", &r.hash),
    ] {
        if let Some(v) = v {
            item.insert(k.into(), s(v));
        }
    }
    item
}

fn from_item(item: &Item) -> BackendResult<HistoryRow> {
    let get = |k: &str| item.get(k).and_then(|v| v.as_s().ok()).cloned();
    let bad = |what: &str| BackendError::permanent(SVC, "decode history", format!("item has no valid `{what}`"));
    let outcome = get("outcome").ok_or_else(|| bad("outcome"))?;
    Ok(HistoryRow {
        asset_key: get("asset"),
        source: get("source"),
        event_id: get("event_id"),
        run_id: get("run_id"),
        outcome: Outcome::ALL.into_iter().find(|o| o.as_str() == outcome).ok_or_else(|| bad("outcome"))?,
        hash: get("hash"),
        decision_id: get("decision_id").ok_or_else(|| bad("decision_id"))?,
        at: get("at")
            .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
            .map(|t| t.with_timezone(&Utc))
            .ok_or_else(|| bad("at"))?,
    })
}

impl DynamoHistory {
    pub fn new(aws: &Aws, table: &str) -> Self {
        DynamoHistory {
            client: aws_sdk_dynamodb::Client::new(&aws.sdk),
            table: table.to_owned(),
            requests: aws.requests.clone(),
        }
    }

    /// One BatchWriteItem, and again with what came back unprocessed.
    async fn write_all(&self, mut pending: Vec<WriteRequest>) -> BackendResult<()> {
        let mut round = 0;
        while !pending.is_empty() {
            round += 1;
            if round > ROUNDS {
                return Err(BackendError::transient(SVC, "BatchWriteItem", "items stayed unprocessed after 10 rounds"));
            }
            self.requests.hit(SVC, "BatchWriteItem");
            let resp = self
                .client
                .batch_write_item()
                .request_items(&self.table, std::mem::take(&mut pending))
                .send()
                .await
                .map_err(|e| sdk_error(SVC, "BatchWriteItem", e))?;
            if let Some(left) = resp.unprocessed_items().and_then(|u| u.get(&self.table)) {
                pending = left.clone();
                if !pending.is_empty() {
                    // Throttled: back off a little before sending the rest again. Writing a
                    // row twice is harmless: same key, same item.
                    tokio::time::sleep(Duration::from_millis(20 * round)).await;
                }
            }
        }
        Ok(())
    }

    /// Creates the table (on-demand capacity) unless it exists (`create_if_missing`).
    pub async fn ensure_table(&self) -> BackendResult<()> {
        ensure_table(&self.client, &self.requests, &self.table, "asset_key", Some("at_id")).await
    }

    /// Fails unless the table exists.
    pub async fn check_table(&self) -> BackendResult<()> {
        check_table(&self.client, &self.requests, &self.table).await
    }
}

#[async_trait]
impl HistoryStore for DynamoHistory {
    async fn append(&self, rows: &[HistoryRow]) -> BackendResult<()> {
        // Built first, then driven: a lazy `map` over the chunks is not `Send` enough for
        // async_trait's boxed future.
        let requests: Vec<_> = rows
            .chunks(BATCH)
            .enumerate()
            .map(|(c, chunk)| async move {
                let mut pending = Vec::with_capacity(chunk.len());
                for (i, r) in chunk.iter().enumerate() {
                    let put = PutRequest::builder()
                        .set_item(Some(to_item(r, c * BATCH + i)))
                        .build()
                        .map_err(|e| build_error(SVC, "BatchWriteItem", e))?;
                    pending.push(WriteRequest::builder().put_request(put).build());
                }
                self.write_all(pending).await
            })
            .collect();
        futures_util::stream::iter(requests).buffer_unordered(TOGETHER).try_collect::<Vec<()>>().await?;
        Ok(())
    }

    async fn read(&self, asset_key: &str, limit: usize) -> BackendResult<Vec<HistoryRow>> {
        let mut out = Vec::new();
        let mut start: Option<Item> = None;
        while out.len() < limit {
            self.requests.hit(SVC, "Query");
            let resp = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("asset_key = :k")
                .expression_attribute_values(":k", AttributeValue::S(asset_key.to_owned()))
                .scan_index_forward(false)
                .limit(i32::try_from(limit - out.len()).unwrap_or(i32::MAX))
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| sdk_error(SVC, "Query", e))?;
            for item in resp.items() {
                out.push(from_item(item)?);
            }
            match resp.last_evaluated_key() {
                Some(k) if !k.is_empty() => start = Some(k.clone()),
                _ => break,
            }
        }
        out.truncate(limit);
        Ok(out)
    }
}
