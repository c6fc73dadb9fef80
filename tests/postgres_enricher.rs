//! The PostgreSQL enricher against a real server (`make services`): hit, miss, types, cache
//! expiry, SQL injection looked up as data, and an outage survived without loss.

mod common;

use std::sync::Arc;
use std::time::Duration;

use assetflow::adapters::postgres::lookup::PgLookup;
use assetflow_actors::calls::Calls;
use assetflow_actors::lookup::CachedLookup;
use assetflow_actors::metrics::Metrics;
use assetflow_actors::ports::Lookup;
use assetflow_actors::retry::RetryPolicy;

fn url() -> String {
    common::pg_url()
}

const QUERY: &str = "SELECT domain, owner, criticality, tags, retention_days, updated_at FROM business_catalog \
                     WHERE source = $1 AND database = $2 AND schema_name = $3";

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

fn params(p: &[&str]) -> Vec<String> {
    p.iter().map(|s| s.to_string()).collect()
}

/// A table of its own, so tests can change rows without disturbing each other.
async fn private_table(name: &str) {
    let (client, conn) =
        tokio_postgres::connect(&url(), tokio_postgres::NoTls).await.expect("postgres: run `make services`");
    tokio::spawn(conn);
    client
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS {name}; CREATE TABLE {name} (source text, database text, schema_name text, domain text); \
             INSERT INTO {name} VALUES ('s', 'd', 'p', 'first');"
        ))
        .await
        .unwrap();
}

async fn set_domain(table: &str, domain: &str) {
    let (client, conn) = tokio_postgres::connect(&url(), tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    client.execute(&format!("UPDATE {table} SET domain = $1"), &[&domain]).await.unwrap();
}

#[test]
fn a_hit_maps_sql_types_to_json_and_a_miss_is_none() {
    rt().block_on(async {
        let pg = PgLookup::new(&url(), QUERY, 2, Duration::from_secs(5)).unwrap();
        let hit = pg.lookup(&params(&["pg-prod", "sales", "public"])).await.unwrap().expect("a row");
        assert_eq!(hit["domain"], "commerce");
        assert_eq!(hit["tags"], serde_json::json!(["pii"]));
        assert_eq!(hit["retention_days"], 365);
        assert!(hit["updated_at"].as_str().unwrap().ends_with('Z'));
        let nulls = pg.lookup(&params(&["mysql", "shop", "main"])).await.unwrap().unwrap();
        assert!(nulls["criticality"].is_null() && nulls["tags"].is_null());
        assert!(pg.lookup(&params(&["nope", "x", "y"])).await.unwrap().is_none());
    });
}

#[test]
fn values_from_events_are_data_never_sql() {
    rt().block_on(async {
        let pg = PgLookup::new(&url(), QUERY, 2, Duration::from_secs(5)).unwrap();
        for evil in ["pg-prod' OR '1'='1", "x'; DROP TABLE business_catalog; --", "pg-prod\\' OR 1=1 --"] {
            assert!(pg.lookup(&params(&[evil, "sales", "public"])).await.unwrap().is_none(), "{evil}");
        }
        // The table is still there and intact.
        assert!(pg.lookup(&params(&["pg-prod", "sales", "public"])).await.unwrap().is_some());
    });
}

#[test]
fn the_cache_serves_until_its_ttl_then_asks_again() {
    rt().block_on(async {
        let table = "enricher_cache_test";
        private_table(table).await;
        let q = format!("SELECT domain FROM {table} WHERE source = $1 AND database = $2 AND schema_name = $3");
        let pg: Arc<dyn Lookup> = Arc::new(PgLookup::new(&url(), &q, 2, Duration::from_secs(5)).unwrap());
        let calls = Calls::new(RetryPolicy::default(), Arc::new(Metrics::default()));
        let cache = CachedLookup::new(pg, Duration::from_millis(300), calls);
        let key = params(&["s", "d", "p"]);
        assert_eq!(cache.get(&key).await.unwrap().unwrap()["domain"], "first");
        set_domain(table, "second").await;
        assert_eq!(cache.get(&key).await.unwrap().unwrap()["domain"], "first", "within the TTL: cached");
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(cache.get(&key).await.unwrap().unwrap()["domain"], "second", "past the TTL: asked again");
        let stats = cache.stats();
        assert_eq!((stats.hits, stats.misses), (1, 2));
    });
}

#[test]
fn a_bad_query_is_a_permanent_error_naming_the_backend() {
    rt().block_on(async {
        let pg =
            PgLookup::new(&url(), "SELECT nope FROM business_catalog WHERE source = $1", 1, Duration::from_secs(5))
                .unwrap();
        let err = pg.lookup(&params(&["x"])).await.unwrap_err();
        assert_eq!(err.kind, assetflow_actors::ports::FailureKind::Permanent);
        assert!(err.backend.starts_with("postgres") && !err.backend.contains("assetflow:assetflow"), "{err}");
    });
}
