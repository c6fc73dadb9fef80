//! The ScyllaDB history writer. Smoke tests run against the in-memory CQL v4 emulator
//! (`kassandra`, served by `common::cql`): schema creation, bound inserts, reads by partition
//! key, newest first. With `SCYLLA_NODES` set (e.g. `127.0.0.1:9042`) the same checks also run
//! against a real node, with the driver's production settings.

mod common;

use assetflow::adapters::scylla_history::ScyllaHistory;
use assetflow_actors::decision::{HistoryRow, Outcome};
use assetflow_actors::ports::HistoryStore;
use chrono::{Duration, Utc};
use scylla::client::session_builder::SessionBuilder;

fn row(key: &str, n: i64, outcome: Outcome) -> HistoryRow {
    HistoryRow {
        asset_key: Some(key.into()),
        source: Some("pg".into()),
        event_id: Some(format!("e{n}")),
        run_id: Some(format!("r{n}")),
        outcome,
        hash: Some(format!("h{n}")),
        decision_id: format!("d{n}"),
        at: Utc::now() - Duration::seconds(100 - n),
    }
}

async fn exercise(history: &ScyllaHistory) {
    let key = format!("pg/sales/public/orders-{}", fastrand::u32(..));
    let rows = vec![
        row(&key, 1, Outcome::Created),
        row(&key, 2, Outcome::Unchanged),
        row(&key, 3, Outcome::Updated),
        row("other/db/s/t", 4, Outcome::Created),
    ];
    history.append(&rows).await.expect("append");
    let back = history.read(&key, 10).await.expect("read");
    let outcomes: Vec<Outcome> = back.iter().map(|r| r.outcome).collect();
    assert_eq!(outcomes, vec![Outcome::Updated, Outcome::Unchanged, Outcome::Created], "newest first, one partition");
    assert_eq!(back[0].event_id.as_deref(), Some("e3"));
    assert_eq!(back[0].hash.as_deref(), Some("h3"));
    assert_eq!(history.read(&key, 1).await.unwrap().len(), 1, "the limit is bound");
    // Values with quotes are data, bound, never spliced into CQL.
    let odd = "x'); DROP TABLE history; --";
    history.append(&[row(odd, 5, Outcome::Stale)]).await.expect("append odd key");
    assert_eq!(history.read(odd, 10).await.unwrap().len(), 1);
    assert_eq!(history.read(&key, 10).await.unwrap().len(), 3);
    // An append is one insert per row: the history writer is told to send no more than a few
    // rounds of them in one call, so that a long queue is never one call past its timeout.
    let most = history.max_batch();
    assert!((32..=1024).contains(&most), "an append carries a bounded number of rows: {most}");
}

#[test]
fn the_writer_against_the_cql_emulator() {
    let addr = common::cql::serve();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        // Test-only settings: the emulator has no schema-agreement or schema-metadata tables.
        let builder = SessionBuilder::new()
            .known_node(addr.to_string())
            .auto_await_schema_agreement(false)
            .fetch_schema_metadata(false);
        let history = ScyllaHistory::connect_with(builder, "assetflow_test").await.expect("connect");
        exercise(&history).await;
    });
}

#[test]
fn the_writer_against_a_real_node_when_one_is_given() {
    let Ok(nodes) = std::env::var("SCYLLA_NODES") else {
        eprintln!("SCYLLA_NODES is not set: no real ScyllaDB here; the emulator test covers the writer");
        return;
    };
    let nodes: Vec<String> = nodes.split(',').map(str::to_owned).collect();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let history = ScyllaHistory::connect(&nodes, "assetflow_test").await.expect("connect");
        exercise(&history).await;
        // What the emulator cannot check: the table's clustering order, so that a limited read
        // returns the newest rows, not just some rows sorted.
        let key = format!("pg/x/y/limit-{}", fastrand::u32(..));
        history.append(&[row(&key, 1, Outcome::Created), row(&key, 2, Outcome::Updated)]).await.unwrap();
        assert_eq!(history.read(&key, 1).await.unwrap()[0].outcome, Outcome::Updated);
    });
}
