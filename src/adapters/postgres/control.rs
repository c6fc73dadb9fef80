//! The `postgres` control table, one table shared by every process of a topology: one row per
//! asset, primary key `(source, asset_key)`. A shard's micro-batch is read in one round trip and
//! written in one statement in which every row is conditional on the version it was read at,
//! checked by PostgreSQL, so a process that lost a partition cannot overwrite what the new
//! owner wrote. A completion's sweep reads the source's records in keyset pages.

use std::collections::HashMap;
use std::time::Duration;

use assetflow_actors::event::AssetName;
use assetflow_actors::ports::{BackendError, BackendResult, ControlStore, FailureKind, RecordKey, RecordWrite};
use assetflow_actors::record::{ControlRecord, RecordStatus, RunEvent};
use assetflow_actors::rules::{SweepPlan, SweepPlanner, SweepQuery};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use tokio_postgres::Row;

use super::{BACKEND, connect_error, create_once, pg_error, pool_for_table};

/// The columns of a record, in the order every statement here reads and writes them.
const COLUMNS: &str = "source, asset_key, database_name, schema_name, table_name, hash, last_seen_run, \
                       last_seen_at, status, dropped_at, content_ref, version";

/// Records a sweep reads per round trip.
const PAGE: i64 = 2000;

pub struct PgControl {
    pool: Pool,
    label: String,
    /// The table name, checked to be a plain identifier, quoted.
    table: String,
    page: i64,
}

impl PgControl {
    pub fn new(url: &str, table: &str, pool_size: usize, timeout: Duration) -> Result<Self, String> {
        let (pool, label) = pool_for_table(url, table, pool_size, timeout)?;
        Ok(PgControl { pool, label, table: format!("\"{table}\""), page: PAGE })
    }

    /// Reads sweeps `n` records per round trip (tests use small pages to cross page bounds).
    pub fn with_page_size(mut self, n: i64) -> Self {
        self.page = n.max(1);
        self
    }

    async fn client(&self) -> BackendResult<deadpool_postgres::Object> {
        self.pool.get().await.map_err(|e| connect_error(&self.label, e))
    }

    fn err(&self, op: &str, e: &tokio_postgres::Error) -> BackendError {
        pg_error(&self.label, op, e)
    }

    /// Creates the table if it does not exist (`create_if_missing`).
    pub async fn ensure_table(&self) -> BackendResult<()> {
        let sql = format!(
            "CREATE TABLE IF NOT EXISTS {t} (
               source text NOT NULL, asset_key text NOT NULL,
               database_name text NOT NULL, schema_name text NOT NULL, table_name text NOT NULL,
               hash text NOT NULL, last_seen_run text NOT NULL, last_seen_at timestamptz NOT NULL,
               status text NOT NULL, dropped_at timestamptz, content_ref text, version bigint NOT NULL,
               PRIMARY KEY (source, asset_key))",
            t = self.table
        );
        let mut client = self.client().await?;
        create_once(&mut client, &self.table, &sql).await.map_err(|e| self.err("create table", &e))
    }

    /// Fails, naming the table, unless it exists: a start-up check, so that a missing table is
    /// one clear error rather than a dead letter per batch.
    pub async fn check_table(&self) -> BackendResult<()> {
        let sql = format!("SELECT {COLUMNS} FROM {t} LIMIT 0", t = self.table);
        self.client().await?.execute(&sql, &[]).await.map(drop).map_err(|e| self.err("check table", &e))
    }

    /// One page of records after `after` (a `(source, asset_key)` position), `source` alone or
    /// every source.
    async fn page(&self, source: Option<&str>, after: &(String, String)) -> BackendResult<Vec<ControlRecord>> {
        let client = self.client().await?;
        let rows = match source {
            Some(s) => {
                let sql = format!(
                    "SELECT {COLUMNS} FROM {t} WHERE source = $1 AND asset_key > $2 ORDER BY asset_key LIMIT $3",
                    t = self.table
                );
                client.query(&sql, &[&s, &after.1, &self.page]).await
            }
            None => {
                let sql = format!(
                    "SELECT {COLUMNS} FROM {t} WHERE (source, asset_key) > ($1, $2) ORDER BY source, asset_key LIMIT $3",
                    t = self.table
                );
                client.query(&sql, &[&after.0, &after.1, &self.page]).await
            }
        }
        .map_err(|e| self.err("list", &e))?;
        rows.iter().map(from_row).collect()
    }

    /// Calls `each` with every record of `source` (or of every source), a page at a time.
    async fn scan(&self, source: Option<&str>, mut each: impl FnMut(ControlRecord)) -> BackendResult<()> {
        let mut after = (String::new(), String::new());
        loop {
            let page = self.page(source, &after).await?;
            let full = page.len() as i64 == self.page;
            if let Some(last) = page.last() {
                after = (last.source.clone(), last.asset_key.clone());
            }
            page.into_iter().for_each(&mut each);
            if !full {
                return Ok(());
            }
        }
    }
}

fn from_row(row: &Row) -> BackendResult<ControlRecord> {
    let bad = |e: tokio_postgres::Error| BackendError::permanent(BACKEND, "decode record", e);
    let status: String = row.try_get(8).map_err(bad)?;
    Ok(ControlRecord {
        source: row.try_get(0).map_err(bad)?,
        asset_key: row.try_get(1).map_err(bad)?,
        name: AssetName {
            database: row.try_get(2).map_err(bad)?,
            schema: row.try_get(3).map_err(bad)?,
            table: row.try_get(4).map_err(bad)?,
        },
        hash: row.try_get(5).map_err(bad)?,
        last_seen_run: row.try_get(6).map_err(bad)?,
        last_seen_at: row.try_get(7).map_err(bad)?,
        status: if status == RecordStatus::Dropped.as_str() { RecordStatus::Dropped } else { RecordStatus::Live },
        dropped_at: row.try_get(9).map_err(bad)?,
        content_ref: row.try_get(10).map_err(bad)?,
        version: row.try_get::<_, i64>(11).map_err(bad)? as u64,
    })
}

#[async_trait]
impl ControlStore for PgControl {
    async fn get_many(&self, keys: &[RecordKey]) -> BackendResult<HashMap<String, ControlRecord>> {
        if keys.is_empty() {
            return Ok(HashMap::new());
        }
        let sources: Vec<&str> = keys.iter().map(|k| k.source.as_str()).collect();
        let assets: Vec<&str> = keys.iter().map(|k| k.asset_key.as_str()).collect();
        let sql = format!(
            "SELECT {COLUMNS} FROM {t} WHERE (source, asset_key) IN (SELECT * FROM unnest($1::text[], $2::text[]))",
            t = self.table
        );
        let client = self.client().await?;
        let stmt = client.prepare_cached(&sql).await.map_err(|e| self.err("prepare", &e))?;
        let rows = client.query(&stmt, &[&sources, &assets]).await.map_err(|e| self.err("get records", &e))?;
        rows.iter().map(|r| from_row(r).map(|rec| (rec.asset_key.clone(), rec))).collect()
    }

    /// One statement: every row is applied only if every row still has the version it was
    /// read at (0: no row). Should another process change one of them between the check and
    /// the write, PostgreSQL skips that row's write, and the call reports a conflict naming how
    /// many rows landed; the decisor recognises its own landed records on the next round.
    async fn put_many(&self, writes: &[RecordWrite]) -> BackendResult<()> {
        if writes.is_empty() {
            return Ok(());
        }
        let col = |f: fn(&ControlRecord) -> &str| writes.iter().map(|w| f(&w.record)).collect::<Vec<&str>>();
        let sources = col(|r| &r.source);
        let assets = col(|r| &r.asset_key);
        let databases = col(|r| &r.name.database);
        let schemas = col(|r| &r.name.schema);
        let tables = col(|r| &r.name.table);
        let hashes = col(|r| &r.hash);
        let runs = col(|r| &r.last_seen_run);
        let statuses = col(|r| r.status.as_str());
        let seen: Vec<DateTime<Utc>> = writes.iter().map(|w| w.record.last_seen_at).collect();
        let dropped: Vec<Option<DateTime<Utc>>> = writes.iter().map(|w| w.record.dropped_at).collect();
        let content: Vec<Option<&str>> = writes.iter().map(|w| w.record.content_ref.as_deref()).collect();
        let versions: Vec<i64> = writes.iter().map(|w| w.record.version as i64).collect();
        let expected: Vec<i64> = writes.iter().map(|w| w.expected_version as i64).collect();
        let n = writes.len() as i64;
        let sql = format!(
            "WITH w AS (
               SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                                    $7::text[], $8::timestamptz[], $9::text[], $10::timestamptz[], $11::text[],
                                    $12::int8[], $13::int8[])
                 AS w(source, asset_key, database_name, schema_name, table_name, hash, last_seen_run,
                      last_seen_at, status, dropped_at, content_ref, version, expected)),
             ok AS (
               SELECT count(*) = $14 AS all_hold FROM w LEFT JOIN {t} c
                 ON c.source = w.source AND c.asset_key = w.asset_key
               WHERE (w.expected = 0 AND c.asset_key IS NULL) OR (w.expected > 0 AND c.version = w.expected)),
             updated AS (
               UPDATE {t} AS c SET database_name = w.database_name, schema_name = w.schema_name,
                 table_name = w.table_name, hash = w.hash, last_seen_run = w.last_seen_run,
                 last_seen_at = w.last_seen_at, status = w.status, dropped_at = w.dropped_at,
                 content_ref = w.content_ref, version = w.version
               FROM w, ok
               WHERE ok.all_hold AND w.expected > 0 AND c.source = w.source AND c.asset_key = w.asset_key
                 AND c.version = w.expected
               RETURNING 1),
             inserted AS (
               INSERT INTO {t} ({COLUMNS})
               SELECT w.source, w.asset_key, w.database_name, w.schema_name, w.table_name, w.hash,
                      w.last_seen_run, w.last_seen_at, w.status, w.dropped_at, w.content_ref, w.version
               FROM w, ok WHERE ok.all_hold AND w.expected = 0
               ON CONFLICT (source, asset_key) DO NOTHING
               RETURNING 1)
             SELECT (SELECT count(*) FROM updated) + (SELECT count(*) FROM inserted)",
            t = self.table
        );
        let client = self.client().await?;
        let stmt = client.prepare_cached(&sql).await.map_err(|e| self.err("prepare", &e))?;
        let row = client
            .query_one(
                &stmt,
                &[
                    &sources, &assets, &databases, &schemas, &tables, &hashes, &runs, &seen, &statuses, &dropped,
                    &content, &versions, &expected, &n,
                ],
            )
            .await
            .map_err(|e| self.err("put records", &e))?;
        let applied: i64 = row.try_get(0).map_err(|e| self.err("put records", &e))?;
        if applied == n {
            return Ok(());
        }
        Err(BackendError::new(
            format!("{BACKEND} {}", self.label),
            "put records",
            format!("{applied} of {n} records written: the others changed since they were read"),
            FailureKind::Conflict,
        ))
    }

    async fn list_source(&self, source: &str) -> BackendResult<Vec<ControlRecord>> {
        let mut out = Vec::new();
        self.scan(Some(source), |r| out.push(r)).await?;
        Ok(out)
    }

    /// Streams the source's records through the planner a page at a time: only the keys to
    /// drop are kept. It reads every record, so it counts every run event.
    async fn sweep_plan(&self, q: SweepQuery<'_>) -> BackendResult<SweepPlan> {
        let mut planner = SweepPlanner::new(q);
        self.scan(Some(q.source), |r| planner.add(&r.asset_key, r.is_live(), &r.last_seen_run, r.last_seen_at)).await?;
        Ok(planner.finish())
    }

    /// One statement, which leaves any row that is not a run-event marker.
    async fn remove_markers(&self, keys: &[RecordKey]) -> BackendResult<()> {
        if keys.is_empty() {
            return Ok(());
        }
        let sources: Vec<&str> = keys.iter().map(|k| k.source.as_str()).collect();
        let assets: Vec<&str> = keys.iter().map(|k| k.asset_key.as_str()).collect();
        let sql = format!(
            "DELETE FROM {t} WHERE (source, asset_key) IN (SELECT * FROM unnest($1::text[], $2::text[]))
               AND hash = $3 AND status = $4",
            t = self.table
        );
        let client = self.client().await?;
        let stmt = client.prepare_cached(&sql).await.map_err(|e| self.err("prepare", &e))?;
        let marker = (RunEvent::HASH, RecordStatus::Dropped.as_str());
        client
            .execute(&stmt, &[&sources, &assets, &marker.0, &marker.1])
            .await
            .map_err(|e| self.err("remove markers", &e))?;
        Ok(())
    }

    async fn list_all(&self) -> BackendResult<Vec<ControlRecord>> {
        let mut out = Vec::new();
        self.scan(None, |r| out.push(r)).await?;
        Ok(out)
    }
}
