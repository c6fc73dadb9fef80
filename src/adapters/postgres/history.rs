//! The `postgres` history, one append-only table shared by every process of a topology: a row
//! per decision, appended a batch per statement, read back per asset newest first through an
//! index on `(asset_key, at, seq)`.

use std::time::Duration;

use assetflow_actors::decision::{HistoryRow, Outcome};
use assetflow_actors::ports::{BackendError, BackendResult, HistoryStore};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;

use super::{BACKEND, connect_error, create_once, pg_error, pool_for_table};

pub struct PgHistory {
    pool: Pool,
    label: String,
    /// The table name, checked to be a plain identifier; quoted where it is used.
    table: String,
}

impl PgHistory {
    pub fn new(url: &str, table: &str, pool_size: usize, timeout: Duration) -> Result<Self, String> {
        let (pool, label) = pool_for_table(url, table, pool_size, timeout)?;
        Ok(PgHistory { pool, label, table: table.to_owned() })
    }

    async fn client(&self) -> BackendResult<deadpool_postgres::Object> {
        self.pool.get().await.map_err(|e| connect_error(&self.label, e))
    }

    /// Creates the table and its index if they do not exist (`create_if_missing`).
    pub async fn ensure_table(&self) -> BackendResult<()> {
        let sql = format!(
            "CREATE TABLE IF NOT EXISTS \"{t}\" (
               seq bigserial PRIMARY KEY, asset_key text, source text, event_id text, run_id text,
               outcome text NOT NULL, hash text, decision_id text NOT NULL, at timestamptz NOT NULL);
             CREATE INDEX IF NOT EXISTS \"{t}_by_asset\" ON \"{t}\" (asset_key, at DESC, seq DESC);",
            t = self.table
        );
        let mut client = self.client().await?;
        create_once(&mut client, &self.table, &sql).await.map_err(|e| pg_error(&self.label, "create table", &e))
    }

    /// Fails, naming the table, unless it exists.
    pub async fn check_table(&self) -> BackendResult<()> {
        let sql = format!("SELECT asset_key, outcome, decision_id, at FROM \"{}\" LIMIT 0", self.table);
        self.client().await?.execute(&sql, &[]).await.map(drop).map_err(|e| pg_error(&self.label, "check table", &e))
    }
}

#[async_trait]
impl HistoryStore for PgHistory {
    async fn append(&self, rows: &[HistoryRow]) -> BackendResult<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let col = |f: fn(&HistoryRow) -> Option<&str>| rows.iter().map(f).collect::<Vec<Option<&str>>>();
        let assets = col(|r| r.asset_key.as_deref());
        let sources = col(|r| r.source.as_deref());
        let events = col(|r| r.event_id.as_deref());
        let runs = col(|r| r.run_id.as_deref());
        let hashes = col(|r| r.hash.as_deref());
        let outcomes: Vec<&str> = rows.iter().map(|r| r.outcome.as_str()).collect();
        let ids: Vec<&str> = rows.iter().map(|r| r.decision_id.as_str()).collect();
        let at: Vec<DateTime<Utc>> = rows.iter().map(|r| r.at).collect();
        // `WITH ORDINALITY`: rows of one batch keep their order in `seq`.
        let sql = format!(
            "INSERT INTO \"{t}\" (asset_key, source, event_id, run_id, outcome, hash, decision_id, at)
             SELECT asset_key, source, event_id, run_id, outcome, hash, decision_id, at
             FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
                         $8::timestamptz[]) WITH ORDINALITY
               AS r(asset_key, source, event_id, run_id, outcome, hash, decision_id, at, n)
             ORDER BY n",
            t = self.table
        );
        let client = self.client().await?;
        let stmt = client.prepare_cached(&sql).await.map_err(|e| pg_error(&self.label, "prepare", &e))?;
        client
            .execute(&stmt, &[&assets, &sources, &events, &runs, &outcomes, &hashes, &ids, &at])
            .await
            .map(drop)
            .map_err(|e| pg_error(&self.label, "append history", &e))
    }

    async fn read(&self, asset_key: &str, limit: usize) -> BackendResult<Vec<HistoryRow>> {
        let sql = format!(
            "SELECT asset_key, source, event_id, run_id, outcome, hash, decision_id, at FROM \"{t}\"
             WHERE asset_key = $1 ORDER BY at DESC, seq DESC LIMIT $2",
            t = self.table
        );
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .client()
            .await?
            .query(&sql, &[&asset_key, &limit])
            .await
            .map_err(|e| pg_error(&self.label, "read history", &e))?;
        let bad = |e: tokio_postgres::Error| BackendError::permanent(BACKEND, "read history", e);
        rows.iter()
            .map(|r| {
                let outcome: String = r.try_get(4).map_err(bad)?;
                Ok(HistoryRow {
                    asset_key: r.try_get(0).map_err(bad)?,
                    source: r.try_get(1).map_err(bad)?,
                    event_id: r.try_get(2).map_err(bad)?,
                    run_id: r.try_get(3).map_err(bad)?,
                    outcome: Outcome::ALL.into_iter().find(|o| o.as_str() == outcome).ok_or_else(|| {
                        BackendError::permanent(BACKEND, "read history", format!("unknown outcome {outcome:?}"))
                    })?,
                    hash: r.try_get(5).map_err(bad)?,
                    decision_id: r.try_get(6).map_err(bad)?,
                    at: r.try_get(7).map_err(bad)?,
                })
            })
            .collect()
    }
}
