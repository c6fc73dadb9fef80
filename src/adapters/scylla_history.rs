//! The `scylla` history store: one partition per asset key, rows newest first
//! (`CLUSTERING ORDER BY (at DESC, decision_id ASC)`), written with a prepared INSERT at
//! bounded concurrency and read back with a prepared SELECT. The keyspace and table are created
//! if missing. Identifiers cannot be bound in CQL, so the keyspace name is checked to be a plain
//! identifier before it goes into the schema statements; every value is bound.

use std::sync::Arc;

use assetflow_actors::decision::{HistoryRow, Outcome};
use assetflow_actors::ports::{BackendError, BackendResult, HistoryStore};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures_util::stream::{self, StreamExt};
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::response::PagingState;
use scylla::statement::prepared::PreparedStatement;
use scylla::value::CqlTimestamp;

const BACKEND: &str = "scylla";
/// Inserts in flight at once.
const CONCURRENCY: usize = 32;
/// Rows one append carries ([`HistoryStore::max_batch`]): an append is one insert per row, 32 at
/// a time, so a history writer that coalesced a long queue while the cluster was slow would
/// otherwise send thousands inside one attempt's timeout. 16 rounds of inserts; a row's key
/// (asset, time, decision id) does not depend on its append, so splitting writes the same rows.
const MAX_APPEND: usize = CONCURRENCY * 16;

pub struct ScyllaHistory {
    session: Arc<Session>,
    insert: PreparedStatement,
    select: PreparedStatement,
}

/// Is `name` a plain CQL identifier (letters, digits, underscores; at most 48)?
pub fn valid_keyspace(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic())
        && name.len() <= 48
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn err(op: &str, e: impl std::fmt::Display) -> BackendError {
    BackendError::transient(BACKEND, op, e)
}

fn outcome(s: &str) -> Outcome {
    Outcome::ALL.iter().copied().find(|o| o.as_str() == s).unwrap_or(Outcome::DeadLetter)
}

impl ScyllaHistory {
    /// Connects to `nodes` with the driver's production settings.
    pub async fn connect(nodes: &[String], keyspace: &str) -> Result<Self, String> {
        Self::connect_with(SessionBuilder::new().known_nodes(nodes), keyspace).await
    }

    /// Connects with a prepared builder (tests adjust it for an emulator).
    pub async fn connect_with(builder: SessionBuilder, keyspace: &str) -> Result<Self, String> {
        if !valid_keyspace(keyspace) {
            return Err(format!("keyspace {keyspace:?} is not a plain identifier (letters, digits, _)"));
        }
        let session = builder.build().await.map_err(|e| format!("cannot connect to ScyllaDB: {e}"))?;
        session
            .query_unpaged(
                format!("CREATE KEYSPACE IF NOT EXISTS {keyspace} WITH replication = {{'class': 'SimpleStrategy', 'replication_factor': 1}}"),
                &[],
            )
            .await
            .map_err(|e| format!("cannot create keyspace {keyspace}: {e}"))?;
        session
            .query_unpaged(
                format!(
                    "CREATE TABLE IF NOT EXISTS {keyspace}.history (asset_key text, at timestamp, decision_id text, \
                     event_id text, run_id text, source text, outcome text, hash text, \
                     PRIMARY KEY ((asset_key), at, decision_id)) WITH CLUSTERING ORDER BY (at DESC, decision_id ASC)"
                ),
                &[],
            )
            .await
            .map_err(|e| format!("cannot create table {keyspace}.history: {e}"))?;
        let insert = session
            .prepare(format!(
                "INSERT INTO {keyspace}.history (asset_key, at, decision_id, event_id, run_id, source, outcome, hash) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
            ))
            .await
            .map_err(|e| format!("cannot prepare the history insert: {e}"))?;
        let select = session
            .prepare(format!(
                "SELECT asset_key, at, decision_id, event_id, run_id, source, outcome, hash FROM {keyspace}.history \
                 WHERE asset_key = ?"
            ))
            .await
            .map_err(|e| format!("cannot prepare the history select: {e}"))?;
        Ok(ScyllaHistory { session: Arc::new(session), insert, select })
    }
}

type Row = (String, CqlTimestamp, String, Option<String>, Option<String>, Option<String>, String, Option<String>);

#[async_trait]
impl HistoryStore for ScyllaHistory {
    async fn append(&self, rows: &[HistoryRow]) -> BackendResult<()> {
        let values: Vec<_> = rows
            .iter()
            .map(|r| {
                (
                    r.asset_key.clone().unwrap_or_default(),
                    CqlTimestamp(r.at.timestamp_millis()),
                    r.decision_id.clone(),
                    r.event_id.clone(),
                    r.run_id.clone(),
                    r.source.clone(),
                    r.outcome.as_str().to_owned(),
                    r.hash.clone(),
                )
            })
            .collect();
        let session = self.session.clone();
        let insert = self.insert.clone();
        let results: Vec<BackendResult<()>> = stream::iter(values)
            .map(move |v| {
                let (session, insert) = (session.clone(), insert.clone());
                async move { session.execute_unpaged(&insert, v).await.map(|_| ()).map_err(|e| err("insert", e)) }
            })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        results.into_iter().collect()
    }

    fn max_batch(&self) -> usize {
        MAX_APPEND
    }

    async fn read(&self, asset_key: &str, limit: usize) -> BackendResult<Vec<HistoryRow>> {
        // One page of `limit` rows, newest first by the clustering order: a bound LIMIT without
        // a LIMIT clause, which every CQL v4 server pages the same way.
        let mut select = self.select.clone();
        select.set_page_size(limit.clamp(1, 5000) as i32);
        let (result, _) = self
            .session
            .execute_single_page(&select, (asset_key,), PagingState::start())
            .await
            .map_err(|e| err("select", e))?;
        let rows = result.into_rows_result().map_err(|e| err("select", e))?;
        let mut out = Vec::new();
        for row in rows.rows::<Row>().map_err(|e| err("select", e))? {
            let (key, at, decision_id, event_id, run_id, source, outcome_s, hash) =
                row.map_err(|e| err("select", e))?;
            out.push(HistoryRow {
                asset_key: Some(key).filter(|k| !k.is_empty()),
                source,
                event_id,
                run_id,
                outcome: outcome(&outcome_s),
                hash,
                decision_id,
                at: DateTime::<Utc>::from_timestamp_millis(at.0).unwrap_or_default(),
            });
        }
        // The table's clustering order already gives newest first; sorting the page again
        // costs nothing and keeps the promise on servers that ignore clustering order.
        out.sort_by(|a, b| b.at.cmp(&a.at).then_with(|| a.decision_id.cmp(&b.decision_id)));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_plain_identifiers_are_keyspaces() {
        assert!(super::valid_keyspace("assetflow_history"));
        assert!(!super::valid_keyspace("x; DROP KEYSPACE system"));
        assert!(!super::valid_keyspace("1abc"));
        assert!(!super::valid_keyspace(""));
    }
}
