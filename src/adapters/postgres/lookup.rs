//! The `postgres` enricher: the configured query, prepared once per pooled connection
//! (deadpool-postgres), bound with the values of the `lookup` pointers ($1, $2, ...) — never
//! spliced into SQL. The first row becomes the `business` object: column names as keys, common
//! SQL types mapped to JSON (text, integers, floats, booleans, json/jsonb, timestamps, dates,
//! text and integer arrays; cast anything else to text in the query).

use std::time::Duration;

use assetflow_actors::ports::{BackendResult, Lookup};
use async_trait::async_trait;
use deadpool_postgres::Pool;
use serde_json::{Map, Value};
use tokio_postgres::Row;
use tokio_postgres::types::{ToSql, Type};

use super::{connect_error, pg_error, pool};

pub struct PgLookup {
    pool: Pool,
    query: String,
    /// The URL without its password, for messages.
    label: String,
}

impl PgLookup {
    pub fn new(url: &str, query: &str, pool_size: usize, timeout: Duration) -> Result<Self, String> {
        let (pool, label) = pool(url, pool_size, timeout)?;
        Ok(PgLookup { pool, query: query.to_owned(), label })
    }
}

fn cell(row: &Row, i: usize) -> Value {
    let ty = row.columns()[i].type_().clone();
    macro_rules! get {
        ($t:ty) => {
            row.try_get::<_, Option<$t>>(i).ok().flatten()
        };
    }
    let v: Option<Value> = match ty {
        Type::BOOL => get!(bool).map(Value::from),
        Type::INT2 => get!(i16).map(Value::from),
        Type::INT4 => get!(i32).map(Value::from),
        Type::INT8 => get!(i64).map(Value::from),
        Type::OID => get!(u32).map(Value::from),
        Type::FLOAT4 => get!(f32).map(|f| Value::from(f64::from(f))),
        Type::FLOAT8 => get!(f64).map(Value::from),
        Type::JSON | Type::JSONB => get!(Value),
        Type::TIMESTAMPTZ => {
            get!(chrono::DateTime<chrono::Utc>).map(|t| Value::from(assetflow_actors::decision::rfc3339(t)))
        }
        Type::TIMESTAMP => {
            get!(chrono::NaiveDateTime).map(|t| Value::from(t.format("%Y-%m-%dT%H:%M:%S%.f").to_string()))
        }
        Type::DATE => get!(chrono::NaiveDate).map(|d| Value::from(d.to_string())),
        Type::TEXT_ARRAY | Type::VARCHAR_ARRAY | Type::NAME_ARRAY => get!(Vec<String>).map(Value::from),
        Type::INT4_ARRAY => get!(Vec<i32>).map(Value::from),
        Type::INT8_ARRAY => get!(Vec<i64>).map(Value::from),
        _ => match row.try_get::<_, Option<String>>(i) {
            Ok(s) => s.map(Value::from),
            Err(_) => {
                tracing::warn!(column = row.columns()[i].name(), sql_type = %ty, "column type not mapped to JSON; cast it to text in enricher.query");
                None
            }
        },
    };
    v.unwrap_or(Value::Null)
}

#[async_trait]
impl Lookup for PgLookup {
    async fn lookup(&self, params: &[String]) -> BackendResult<Option<Map<String, Value>>> {
        let client = self.pool.get().await.map_err(|e| connect_error(&self.label, e))?;
        let stmt = client.prepare_cached(&self.query).await.map_err(|e| pg_error(&self.label, "prepare", &e))?;
        let args: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
        let row = client.query_opt(&stmt, &args).await.map_err(|e| pg_error(&self.label, "query", &e))?;
        Ok(row.map(|row| (0..row.len()).map(|i| (row.columns()[i].name().to_owned(), cell(&row, i))).collect()))
    }
}
