//! Text prints: an unchanged asset sent again as it was (only ignored values moved) is decided
//! from the print the store keeps beside its record's hash, without being hashed; any other
//! event is hashed, and a print never vouches for a record whose content has moved on.

mod support;

use std::sync::Arc;
use std::time::Duration;

use assetflow_actors::decision::Outcome;
use assetflow_actors::pipeline::Settings;
use serde_json::json;

use support::*;

const ASSETS: usize = 20;

fn ignoring_row_counts(shards: usize) -> Settings {
    Settings { hash_ignore: vec!["stats.row_count".into()], ..settings(shards) }
}

/// A `running` event of table `table` whose asset carries `content` and a row count.
fn counted(id: &str, run: &str, table: &str, t: u32, content: &str, rows: u64) -> String {
    json!({
        "event_id": id, "source": "src", "run_id": run, "status": "running", "emitted_at": at(t),
        "asset": {"database": "db", "schema": "public", "table": table, "comment": content, "stats": {"row_count": rows}}
    })
    .to_string()
}

/// A run over every asset, each with `content(i)` and a row count that moves every run.
fn crawl(run: u32, content: impl Fn(usize) -> String) -> Vec<String> {
    (0..ASSETS)
        .map(|i| {
            counted(
                &format!("r{run}-e{i}"),
                &format!("r{run}"),
                &format!("t{i:02}"),
                run * 100 + i as u32,
                &content(i),
                u64::from(run) * 1000 + i as u64,
            )
        })
        .collect()
}

fn outcomes(run: &Run) -> Vec<Outcome> {
    run.history.iter().map(|r| r.outcome).collect()
}

/// Three crawls over `control`: every asset new (each hashed), every asset sent again as it
/// was but for its row count (none hashed, and the rows carry the record's hash), one asset
/// changed (it alone hashed). Returns the third.
fn only_what_changed_is_hashed(control: &Arc<MemControl>) -> Run {
    let first = run(ignoring_row_counts(2), crawl(1, |_| "v1".into()), control.clone());
    assert_eq!(first.hashed, ASSETS as u64, "a new asset is hashed");
    assert!(outcomes(&first).iter().all(|o| *o == Outcome::Created));

    let second = run(ignoring_row_counts(2), crawl(2, |_| "v1".into()), control.clone());
    assert!(outcomes(&second).iter().all(|o| *o == Outcome::Unchanged), "{:?}", outcomes(&second));
    assert_eq!(second.hashed, 0, "only row counts moved: every asset is known by its print");
    for row in &second.history {
        let key = row.asset_key.as_deref().unwrap();
        assert_eq!(row.hash.as_deref(), Some(control.record(key).unwrap().hash.as_str()));
    }

    let third =
        run(ignoring_row_counts(2), crawl(3, |i| if i == 7 { "v2".into() } else { "v1".into() }), control.clone());
    assert_eq!(third.hashed, 1, "only the changed asset is hashed");
    assert_eq!(third.upsert_changes("src/db/public/t07"), vec!["updated"]);
    third
}

#[test]
fn an_asset_sent_again_as_it_was_is_decided_unchanged_without_being_hashed() {
    let third = only_what_changed_is_hashed(&MemControl::indexed(Duration::ZERO));
    assert_eq!(outcomes(&third).iter().filter(|o| **o == Outcome::Unchanged).count(), ASSETS - 1);
}

/// Past the bound of the embedded store's index, a steady crawl's records are read, not known:
/// the print kept with each record read vouches for the event as the index's does.
#[test]
fn an_asset_whose_record_is_read_is_known_by_the_print_kept_with_it() {
    let control = MemControl::printed(Duration::ZERO);
    only_what_changed_is_hashed(&control);
    assert!(control.reads.lock().unwrap().iter().sum::<usize>() >= 3 * ASSETS, "every event's record was read");
    // The changed asset was written with its new print; its old one vouches no more.
    let back = run(ignoring_row_counts(2), crawl(4, |_| "v1".into()), control.clone());
    assert_eq!(back.hashed, 1, "the asset changed back is hashed");
    assert_eq!(back.upsert_changes("src/db/public/t07"), vec!["updated"]);
}

/// A, A, B, A: the second crawl's touches keep A's print with A's hash; B's write must take
/// it away (or bring B's), or the last crawl would find A's print and call the asset unchanged
/// at B's hash.
#[test]
fn a_print_never_vouches_for_content_that_moved_on() {
    let control = MemControl::indexed(Duration::ZERO);
    let a = |_: usize| "a".to_string();
    run(ignoring_row_counts(2), crawl(1, a), control.clone());
    let again = run(ignoring_row_counts(2), crawl(2, a), control.clone());
    assert_eq!((again.hashed, control.prints.lock().unwrap().len()), (0, ASSETS));
    let b = run(ignoring_row_counts(2), crawl(3, |_| "b".into()), control.clone());
    assert!(outcomes(&b).iter().all(|o| *o == Outcome::Updated));
    let back = run(ignoring_row_counts(2), crawl(4, a), control.clone());
    assert!(outcomes(&back).iter().all(|o| *o == Outcome::Updated), "{:?}", outcomes(&back));
    assert_eq!(back.hashed, ASSETS as u64);
    for u in &back.upserts {
        assert_eq!(control.record(u["asset_key"].as_str().unwrap()).unwrap().hash, u["hash"].as_str().unwrap());
    }
}

/// A re-delivery (the same event again, in the same run) is not vouched for by the index: it
/// is read and counted as the run's event it is. Its print still names its hash, so neither
/// copy is hashed, whether the two share a batch (a key's second event there is read too) or
/// not, and each row carries the record's hash.
#[test]
fn a_redelivered_event_takes_its_hash_from_its_print() {
    let control = MemControl::indexed(Duration::ZERO);
    run(ignoring_row_counts(2), crawl(1, |_| "v1".into()), control.clone());
    let twice: Vec<String> = crawl(2, |_| "v1".into()).into_iter().flat_map(|e| [e.clone(), e]).collect();
    let second = run(ignoring_row_counts(2), twice.clone(), control.clone());
    assert_eq!(second.history.len(), 2 * ASSETS);
    assert!(outcomes(&second).iter().all(|o| *o == Outcome::Unchanged), "{:?}", outcomes(&second));
    assert_eq!(second.hashed, 0, "a re-delivery was hashed though its print is the record's");
    for row in &second.history {
        let key = row.asset_key.as_deref().unwrap();
        assert_eq!(row.hash.as_deref(), Some(control.record(key).unwrap().hash.as_str()));
    }
    // The same crawl with one asset changed: both its copies are hashed, nothing else.
    let third: Vec<String> =
        crawl(3, |i| if i == 4 { "v2".into() } else { "v1".into() }).into_iter().flat_map(|e| [e.clone(), e]).collect();
    let third = run(ignoring_row_counts(2), third, control.clone());
    assert_eq!(third.upsert_changes("src/db/public/t04"), vec!["updated"]);
    // Its second copy is hashed only where it shared the first's batch (before the write that
    // brought the new print).
    assert!((1..=2).contains(&third.hashed), "only the changed asset's copies are hashed: {}", third.hashed);
}

/// Key order is not content, but it is text: the print differs, so the asset is hashed, and
/// found unchanged by its hash (and its print kept from then on).
#[test]
fn text_written_differently_is_hashed_and_found_unchanged() {
    let control = MemControl::indexed(Duration::ZERO);
    run(ignoring_row_counts(1), crawl(1, |_| "v1".into()), control.clone());
    // Written by hand: `json!` writes keys in sorted order, as the first crawl's were.
    let reordered: Vec<String> = (0..ASSETS)
        .map(|i| {
            format!(
                r#"{{"event_id":"r2-e{i}","source":"src","run_id":"r2","status":"running","emitted_at":"{}","asset":{{"table":"t{i:02}","stats":{{"row_count":5}},"comment":"v1","schema":"public","database":"db"}}}}"#,
                at(200 + i as u32)
            )
        })
        .collect();
    let second = run(ignoring_row_counts(1), reordered.clone(), control.clone());
    assert!(outcomes(&second).iter().all(|o| *o == Outcome::Unchanged));
    assert_eq!(second.hashed, ASSETS as u64);
    let third =
        run(ignoring_row_counts(1), reordered.into_iter().map(|l| l.replace("\"r2", "\"r3")).collect(), control);
    assert!(outcomes(&third).iter().all(|o| *o == Outcome::Unchanged));
    assert_eq!(third.hashed, 0, "the print the hashed event brought is kept");
}

/// A store without an index (DynamoDB, PostgreSQL) keeps no prints: every event is hashed,
/// and no print is taken for it.
#[test]
fn a_store_that_keeps_no_prints_hashes_every_event() {
    let control = MemControl::slow(Duration::ZERO);
    run(ignoring_row_counts(2), crawl(1, |_| "v1".into()), control.clone());
    let second = run(ignoring_row_counts(2), crawl(2, |_| "v1".into()), control.clone());
    assert!(outcomes(&second).iter().all(|o| *o == Outcome::Unchanged));
    assert_eq!(second.hashed, ASSETS as u64);
    assert!(control.prints.lock().unwrap().is_empty(), "prints were taken for a store that keeps none");
}
