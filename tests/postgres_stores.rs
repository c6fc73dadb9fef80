//! The `postgres` control table and history against the real PostgreSQL that `make services`
//! starts: batched reads, writes conditional on the version read (all or none), sweeps paged by
//! key, history newest first, a missing table refused at start, and every shared scenario
//! and generated streams of the reference model (clean, SIGKILLed, redriven) through a
//! topology whose control table and history both live in PostgreSQL.

mod common;
mod model;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use assetflow::adapters::postgres::control::PgControl;
use assetflow::adapters::postgres::history::PgHistory;
use assetflow_actors::decision::{HistoryRow, Outcome};
use assetflow_actors::event::AssetName;
use assetflow_actors::ports::{ControlStore, FailureKind, HistoryStore, RecordKey, RecordWrite};
use assetflow_actors::record::{ControlRecord, RecordStatus, RunEvent};
use assetflow_actors::rules::SweepQuery;
use chrono::{DateTime, Utc};
use common::{Outputs, compare, pg_url, scenarios};

/// A table name no other test (or earlier run) uses.
fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    format!("{prefix}_{}_{}_{nanos}", std::process::id(), N.fetch_add(1, Ordering::SeqCst))
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().to_utc()
}

fn record(source: &str, table: &str, run: &str, version: u64) -> ControlRecord {
    ControlRecord {
        asset_key: format!("{source}/db/s/{table}"),
        source: source.into(),
        name: AssetName { database: "db".into(), schema: "s".into(), table: table.into() },
        hash: format!("h-{table}-{version}"),
        last_seen_run: run.into(),
        last_seen_at: t("2026-11-01T10:00:00.123456Z"),
        status: RecordStatus::Live,
        dropped_at: None,
        content_ref: Some(format!("file:///c/{table}")),
        version,
    }
}

fn write(r: &ControlRecord, expected: u64) -> RecordWrite {
    RecordWrite::new(r.clone(), expected)
}

/// The sweep of run `run` over source `pg`, counting every run event, by a completion newer
/// than every record.
fn query(run: &str, max_drop_fraction: f64) -> SweepQuery<'_> {
    SweepQuery { source: "pg", run, emitted_at: DateTime::<Utc>::MAX_UTC, max_drop_fraction, count_run_events: true }
}

fn key(r: &ControlRecord) -> RecordKey {
    RecordKey { source: r.source.clone(), asset_key: r.asset_key.clone() }
}

async fn control(page: i64) -> PgControl {
    let c = PgControl::new(&pg_url(), &unique("control"), 2, Duration::from_secs(5)).unwrap().with_page_size(page);
    c.ensure_table().await.expect("create the table: is PostgreSQL up (make services)?");
    c
}

#[test]
fn batches_are_read_at_once_and_written_only_over_the_version_read() {
    rt().block_on(async {
        let store = control(100).await;
        let (a, b, c) = (record("pg", "a", "r1", 1), record("pg", "b", "r1", 1), record("pg", "c", "r1", 1));
        store.put_many(&[write(&a, 0), write(&b, 0), write(&c, 0)]).await.unwrap();
        let missing = record("pg", "zz", "r1", 1);
        let got = store.get_many(&[key(&a), key(&b), key(&c), key(&missing)]).await.unwrap();
        assert_eq!(
            got,
            HashMap::from([
                (a.asset_key.clone(), a.clone()),
                (b.asset_key.clone(), b.clone()),
                (c.asset_key.clone(), c.clone())
            ])
        );

        // One stale expectation: nothing of the batch is written.
        let mut a2 = a.clone();
        a2.version = 2;
        a2.hash = "changed".into();
        let mut b2 = b.clone();
        b2.version = 6;
        let err = store.put_many(&[write(&a2, 1), write(&b2, 5)]).await.unwrap_err();
        assert_eq!(err.kind, FailureKind::Conflict, "{err}");
        assert_eq!(store.get_many(&[key(&a)]).await.unwrap()[&a.asset_key], a, "all or none");

        // Creating what exists is a conflict too: another process created it first.
        let err = store.put_many(&[write(&c, 0)]).await.unwrap_err();
        assert_eq!(err.kind, FailureKind::Conflict);

        // Over the version read, the write lands; dropped records keep their drop time.
        let mut c2 = c.clone();
        c2.version = 2;
        c2.status = RecordStatus::Dropped;
        c2.dropped_at = Some(t("2026-11-02T00:00:00Z"));
        c2.content_ref = None;
        store.put_many(&[write(&a2, 1), write(&c2, 1)]).await.unwrap();
        let got = store.get_many(&[key(&a), key(&c)]).await.unwrap();
        assert_eq!((&got[&a.asset_key], &got[&c.asset_key]), (&a2, &c2));
    });
}

#[test]
fn sweeps_and_listings_page_through_a_source_by_key() {
    rt().block_on(async {
        // Pages of 2, so every listing crosses several page bounds.
        let store = control(2).await;
        let mut all: Vec<ControlRecord> =
            (0..5).map(|i| record("pg", &format!("t{i}"), if i < 2 { "r2" } else { "r1" }, 1)).collect();
        all.push(record("pg2", "t0", "r1", 1));
        all.push(record("other", "t0", "r1", 1));
        let writes: Vec<RecordWrite> = all.iter().map(|r| write(r, 0)).collect();
        store.put_many(&writes).await.unwrap();

        let mut of_pg = store.list_source("pg").await.unwrap();
        of_pg.sort_by(|x, y| x.asset_key.cmp(&y.asset_key));
        assert_eq!(of_pg, all[..5].to_vec(), "exactly the source's records, not pg2's");
        let plan = store.sweep_plan(query("r2", 1.0)).await.unwrap();
        assert_eq!((plan.live, plan.seen_in_run), (5, 2));
        assert_eq!(plan.to_drop, ["pg/db/s/t2", "pg/db/s/t3", "pg/db/s/t4"]);
        assert!(store.sweep_plan(query("r2", 0.5)).await.unwrap().guarded, "3 of 5 is over half");
        // A completion emitted before the records were last seen (read late): none is its to
        // drop, and the guard weighs nothing.
        let late = SweepQuery { emitted_at: t("2026-11-01T10:00:00Z"), ..query("r2", 0.5) };
        let plan = store.sweep_plan(late).await.unwrap();
        assert_eq!((plan.live, plan.to_drop.len(), plan.guarded), (5, 0, false));
        assert_eq!(store.list_all().await.unwrap().len(), 7);
    });
}

#[test]
fn a_sweep_lists_the_event_markers_it_spends_and_only_markers_are_removed() {
    rt().block_on(async {
        let store = control(2).await;
        let asset = record("pg", "a", "r1", 1);
        let marker = RunEvent::record("pg", &asset.name, "r2", &asset.asset_key, asset.last_seen_at, "h");
        let writes = [write(&asset, 0), write(&marker, 0), write(&record("pg2", "a", "r2", 1), 0)];
        store.put_many(&writes).await.unwrap();
        let plan = store.sweep_plan(query("r2", 1.0)).await.unwrap();
        assert_eq!(plan.spent_markers, std::slice::from_ref(&marker.asset_key));
        assert_eq!(plan.seen_in_run, 1, "the marker counts for its run");

        store.remove_markers(&[key(&marker), key(&asset)]).await.unwrap();
        let left = store.get_many(&[key(&marker), key(&asset)]).await.unwrap();
        assert_eq!(left.into_keys().collect::<Vec<_>>(), std::slice::from_ref(&asset.asset_key), "the asset stays");
        assert!(store.sweep_plan(query("r2", 1.0)).await.unwrap().spent_markers.is_empty());
    });
}

fn row(asset: Option<&str>, id: &str, at: &str) -> HistoryRow {
    HistoryRow {
        asset_key: asset.map(str::to_owned),
        source: Some("pg".into()),
        event_id: Some(format!("e-{id}")),
        run_id: Some("r1".into()),
        outcome: if asset.is_some() { Outcome::Created } else { Outcome::DeadLetter },
        hash: asset.map(|_| "h".to_owned()),
        decision_id: id.into(),
        at: t(at),
    }
}

#[test]
fn history_reads_one_asset_newest_first() {
    rt().block_on(async {
        let h = PgHistory::new(&pg_url(), &unique("history"), 2, Duration::from_secs(5)).unwrap();
        h.ensure_table().await.expect("create the table");
        let (t1, t2) = ("2026-11-01T10:00:00Z", "2026-11-01T11:00:00Z");
        h.append(&[row(Some("a"), "a-1", t1), row(Some("b"), "b-1", t1), row(None, "dl-1", t1)]).await.unwrap();
        // Two rows of one batch at the same instant keep their order.
        h.append(&[row(Some("a"), "a-2", t2), row(Some("a"), "a-3", t2)]).await.unwrap();
        let ids = |rows: Vec<HistoryRow>| rows.into_iter().map(|r| r.decision_id).collect::<Vec<_>>();
        assert_eq!(ids(h.read("a", 10).await.unwrap()), ["a-3", "a-2", "a-1"]);
        assert_eq!(ids(h.read("a", 2).await.unwrap()), ["a-3", "a-2"]);
        let b = h.read("b", 10).await.unwrap();
        assert_eq!(b, vec![row(Some("b"), "b-1", t1)], "rows read back exactly");
    });
}

/// The scenario config with the control table and history in PostgreSQL.
fn postgres_config(control: &str, history: &str) -> String {
    in_postgres(common::SCENARIO_CONFIG, control, history)
}

/// `config` (the scenario's, or one made from it) with the control table and history in
/// PostgreSQL, in the tables named.
fn in_postgres(config: &str, control: &str, history: &str) -> String {
    let url = pg_url();
    let edited = config
        .replace(
            "[control]\nkind = \"embedded\"",
            &format!(
                "[control]\nkind = \"postgres\"\nurl = \"{url}\"\ntable = \"{control}\"\ncreate_if_missing = true"
            ),
        )
        .replace(
            "[history]\nkind = \"embedded\"",
            &format!(
                "[history]\nkind = \"postgres\"\nurl = \"{url}\"\ntable = \"{history}\"\ncreate_if_missing = true"
            ),
        );
    assert_eq!(edited.matches("kind = \"postgres\"").count(), 2, "both store sections replaced in {config}");
    edited
}

#[test]
fn a_missing_table_is_refused_at_start_naming_the_key() {
    let scenario = scenarios().into_iter().next().unwrap();
    let dir = common::prepare(&scenario);
    let table = unique("never_made");
    let config = postgres_config(&table, "unused").replacen("create_if_missing = true", "create_if_missing = false", 1);
    std::fs::write(dir.path().join("config.toml"), config).unwrap();
    let out = common::assetflow(dir.path(), &["run"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("control.table") && stderr.contains(&table), "{stderr}");
    assert!(
        !stderr.contains("panicked") && !stderr.contains("assetflow:assetflow@"),
        "no panic, no password: {stderr}"
    );
}

/// `reference_model.rs`'s streams, fewer, with the control table and history in PostgreSQL:
/// its marks, conditional writes and paged sweeps under the model's runs, kills and redrives.
#[test]
fn generated_streams_with_control_and_history_in_postgres_decide_as_the_model_says() {
    let stores = |config: String| in_postgres(&config, &unique("control"), &unique("history"));
    let failed = model::harness::through_stores(&stores, 10, 6, 7);
    assert!(failed.is_empty(), "{}", failed.join("\n\n"));
}

#[test]
fn every_shared_scenario_with_control_and_history_in_postgres() {
    let mut failures = Vec::new();
    for scenario in scenarios() {
        let name = scenario.file_name().unwrap().to_string_lossy().into_owned();
        let dir = common::prepare(&scenario);
        std::fs::write(dir.path().join("config.toml"), postgres_config(&unique("control"), &unique("history")))
            .unwrap();
        let out = common::assetflow(dir.path(), &["run"]);
        if !out.status.success() {
            failures.push(format!("{name}: exit {:?}\n{}", out.status.code(), String::from_utf8_lossy(&out.stderr)));
            continue;
        }
        let got = Outputs::read(dir.path());
        if let Err(e) = compare(&scenario.join("expected.json"), &got) {
            failures.push(format!("{name}:\n{e}"));
        }
        // The commands read PostgreSQL too: the same table as the embedded topology's, and
        // each upserted asset's history.
        let embedded = common::prepare(&scenario);
        assert!(common::assetflow(embedded.path(), &["run"]).status.success());
        let assets =
            |d: &std::path::Path| String::from_utf8_lossy(&common::assetflow(d, &["assets"]).stdout).into_owned();
        let (pg, local) = (assets(dir.path()), assets(embedded.path()));
        let rows = |s: &str| -> Vec<String> {
            // asset key, status, last run; `last_seen_at` and hash are the same by construction.
            s.lines().map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" ")).collect()
        };
        if rows(&pg) != rows(&local) {
            failures.push(format!("{name}: assets differ\npostgres:\n{pg}\nembedded:\n{local}"));
        }
        if let Some(u) = got.upserts.first() {
            let key = u["asset_key"].as_str().unwrap();
            let history = common::assetflow(dir.path(), &["history", key]);
            let text = String::from_utf8_lossy(&history.stdout);
            if !text.contains(u["decision_id"].as_str().unwrap()) {
                failures.push(format!("{name}: history of {key} lacks its upsert's decision:\n{text}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
