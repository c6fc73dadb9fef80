//! PostgreSQL, through deadpool-postgres pools: the `postgres` enricher ([`lookup`]), the
//! `postgres` control table ([`control`]) and the `postgres` history ([`history`]). Values are
//! always bound as parameters; the only names spliced into SQL are table names, which must be
//! plain identifiers ([`valid_table`]) and are quoted.

pub mod control;
pub mod history;
pub mod lookup;

use std::time::Duration;

use assetflow_actors::ports::{BackendError, FailureKind};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;

const BACKEND: &str = "postgres";

/// A pool of at most `size` connections to `url`, and the URL without its password for
/// messages. Connections are opened on first use, so a server that is down fails the first
/// call (and is retried), not the start.
pub fn pool(url: &str, size: usize, timeout: Duration) -> Result<(Pool, String), String> {
    let label = crate::config::redact_url(url);
    let pg: tokio_postgres::Config = url.parse().map_err(|e| format!("not a PostgreSQL URL ({label}): {e}"))?;
    let manager = Manager::from_config(pg, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
    let pool = Pool::builder(manager)
        .max_size(size.max(1))
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(timeout))
        .create_timeout(Some(timeout))
        .recycle_timeout(Some(timeout))
        .build()
        .map_err(|e| format!("cannot build the connection pool for {label}: {e}"))?;
    Ok((pool, label))
}

/// A failed statement. A server-side error with an SQLSTATE in class 42 (syntax, undefined
/// table or column...) or 22 (data exception) will fail again; anything else (connection lost,
/// server restarting) may not.
pub fn pg_error(label: &str, op: &str, e: &tokio_postgres::Error) -> BackendError {
    let permanent = e.code().map(|c| c.code().starts_with("42") || c.code().starts_with("22")).unwrap_or(false);
    let kind = if permanent { FailureKind::Permanent } else { FailureKind::Transient };
    // The error's own text is only "db error": the server's message is what names the table.
    let message = match e.as_db_error() {
        Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
        None => e.to_string(),
    };
    BackendError::new(format!("{BACKEND} {label}"), op, message, kind)
}

/// A pool for a store that keeps its rows in `table`, which must be a plain identifier since
/// it is spliced into SQL; and the URL without its password.
pub fn pool_for_table(url: &str, table: &str, size: usize, timeout: Duration) -> Result<(Pool, String), String> {
    if !valid_table(table) {
        return Err(format!("expected a plain table name (letters, digits, _), got {table:?}"));
    }
    pool(url, size, timeout)
}

/// No connection could be had from the pool.
pub fn connect_error(label: &str, e: impl ToString) -> BackendError {
    BackendError::transient(format!("{BACKEND} {label}"), "connect", e)
}

/// A table name that can stand in SQL as it is: letters, digits and `_`, not starting with a
/// digit, at most 63 bytes (PostgreSQL's limit).
pub fn valid_table(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !name.as_bytes()[0].is_ascii_digit()
}

/// Runs `ddl` (`CREATE … IF NOT EXISTS`) under a transaction-scoped advisory lock named after
/// `table`. `IF NOT EXISTS` does not guard against itself: two processes of a group starting
/// together both create, and one fails on a unique index of the catalog.
pub async fn create_once(
    client: &mut deadpool_postgres::Object,
    table: &str,
    ddl: &str,
) -> Result<(), tokio_postgres::Error> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[&format!("assetflow create {table}")]).await?;
    tx.batch_execute(ddl).await?;
    tx.commit().await
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_plain_identifiers_are_table_names() {
        for ok in ["asset_control", "t1", "_x"] {
            assert!(super::valid_table(ok), "{ok}");
        }
        for bad in ["", "1t", "a-b", "a;drop table x", "a\"b", "schema.table", &"x".repeat(64)] {
            assert!(!super::valid_table(bad), "{bad}");
        }
    }
}
