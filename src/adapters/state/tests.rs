//! Tests of the embedded store: records, stamps and prints, the index and its file, folds,
//! crashes and reopens, sweeps, history.

use super::super::history_log::test_rows::{ids, row};
use super::fold::Folding;
use super::index::STRIPES;
use super::*;

#[tokio::test]
async fn history_reads_one_assets_rows_newest_first() {
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::open(dir.path()).unwrap();
    store.append(&[row("pg/db/s/a", "a-0")]).await.unwrap();
    store.append(&[row("pg/db/s/a", "a-1"), row("pg/db/s/b", "b-1"), row("pg/db/s/a", "a-2")]).await.unwrap();
    assert_eq!(ids(&store.read("pg/db/s/a", 10).await.unwrap()), ["a-2", "a-1", "a-0"]);
    assert_eq!(ids(&store.read("pg/db/s/a", 2).await.unwrap()), ["a-2", "a-1"]);
    assert_eq!(ids(&store.read("pg/db/s/b", 10).await.unwrap()), ["b-1"]);

    // After a clean stop and a reopen, new rows come first.
    store.settle(std::time::Duration::from_secs(10));
    drop(store);
    let store = StateStore::open(dir.path()).unwrap();
    store.append(&[row("pg/db/s/b", "b-2")]).await.unwrap();
    assert_eq!(ids(&store.read("pg/db/s/b", 10).await.unwrap()), ["b-2", "b-1"]);
}

#[tokio::test]
async fn history_rows_an_earlier_version_kept_in_the_store_are_read_after_the_segments() {
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::open(dir.path()).unwrap();
    // Rows as the store wrote them before history moved to segments, and a row of another
    // asset filed under this asset's digest, as a digest collision would.
    for (seq, id) in [(1, "old-0"), (2, "old-1")] {
        let value = layout::encode_history(&row("pg/db/s/a", id)).unwrap();
        store.inner.history.insert(layout::history_key("pg/db/s/a", seq), value).unwrap();
    }
    let stray = layout::encode_history(&row("pg/db/s/zz", "stray")).unwrap();
    store.inner.history.insert(layout::history_key("pg/db/s/a", 3), stray).unwrap();
    store.append(&[row("pg/db/s/a", "new-0"), row("pg/db/s/a", "new-1")]).await.unwrap();

    assert_eq!(ids(&store.read("pg/db/s/a", 10).await.unwrap()), ["new-1", "new-0", "old-1", "old-0"]);
    assert_eq!(ids(&store.read("pg/db/s/a", 3).await.unwrap()), ["new-1", "new-0", "old-1"]);
    assert_eq!(ids(&store.read("pg/db/s/a", 1).await.unwrap()), ["new-1"]);
}

fn record(source: &str, asset_key: &str, run: &str) -> ControlRecord {
    ControlRecord {
        asset_key: asset_key.to_owned(),
        source: source.to_owned(),
        name: assetflow_actors::event::AssetName { database: "db".into(), schema: "s".into(), table: "t".into() },
        hash: "ab".repeat(32),
        last_seen_run: run.to_owned(),
        last_seen_at: chrono::Utc::now(),
        status: assetflow_actors::record::RecordStatus::Live,
        dropped_at: None,
        content_ref: None,
        version: 3,
    }
}

/// `r` seen again, unchanged, an hour later in run `r2`: a touch to version 4, unindexed.
fn seen_in_r2(r: &ControlRecord) -> RecordTouch<'static> {
    RecordTouch {
        source: r.source.clone().into(),
        asset_key: r.asset_key.clone().into(),
        last_seen_run: "r2".into(),
        last_seen_at: r.last_seen_at + chrono::Duration::hours(1),
        version: 4,
        indexed: false,
        print: None,
    }
}

fn keys(of: &[(&str, &str)]) -> Vec<RecordKey> {
    of.iter().map(|(s, k)| RecordKey { source: (*s).to_owned(), asset_key: (*k).to_owned() }).collect()
}

#[tokio::test]
async fn records_are_filed_by_source_and_read_back_after_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::open(dir.path()).unwrap();
    // "pg/x" shares the prefix of nothing in particular, but a sweep must keep sources apart
    // whatever their digests share.
    let mut all: Vec<ControlRecord> = (0..5000).map(|i| record("pg", &format!("pg/db/s/t{i:05}"), "r1")).collect();
    all.push(record("pg/x", "pg/x/db/s/t", "r1"));
    let writes: Vec<RecordWrite> = all.iter().map(|r| RecordWrite::new(r.clone(), 2)).collect();
    store.put_many(&writes).await.unwrap();
    drop(store);

    let store = StateStore::open(dir.path()).unwrap();
    let got = store
        .get_many(&keys(&[("pg", "pg/db/s/t00001"), ("pg", "pg/db/s/t04998"), ("pg/x", "pg/x/db/s/t")]))
        .await
        .unwrap();
    assert_eq!(got["pg/db/s/t00001"], all[1]);
    assert_eq!(got["pg/db/s/t04998"], all[4998]);
    assert_eq!(got["pg/x/db/s/t"], all[5000]);
    // A sweep of "pg" sees exactly its 5,000 records, not those of "pg/x".
    for counted in [false, true] {
        let plan = store.sweep_plan(query("pg", "r2", counted)).await.unwrap();
        assert_eq!((plan.live, plan.to_drop.len()), (5000, 5000));
        assert_eq!(plan.to_drop[0], "pg/db/s/t00000");
    }
    assert_eq!(store.list_source("pg/x").await.unwrap(), vec![all[5000].clone()]);
    // A write replaces the record: one record per asset.
    let mut next = all[1].clone();
    next.version += 1;
    store.put_many(&[RecordWrite::new(next.clone(), 3)]).await.unwrap();
    assert_eq!(store.get_many(&keys(&[("pg", "pg/db/s/t00001")])).await.unwrap()["pg/db/s/t00001"], next);
    assert_eq!(store.list_all().await.unwrap().len(), all.len());
}

#[tokio::test]
async fn a_deferred_write_is_read_at_once_and_there_after_a_reopen_once_durable() {
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::open(dir.path()).unwrap();
    // Eight writers, as eight shards, each writing its next batch before the last is durable.
    let writers = (0..8).map(|w| {
        let store = store.clone();
        tokio::spawn(async move {
            let mut syncs = Vec::new();
            for b in 0..20 {
                let r = record("pg", &format!("pg/db/s/w{w}b{b}"), "r1");
                let write = [RecordWrite::new(r.clone(), 2)];
                syncs.push(store.put_with_touches_deferred(&write, &[]).await.unwrap());
                let read = store.get_many(&keys(&[("pg", &r.asset_key)])).await.unwrap();
                assert_eq!(read.get(&r.asset_key), Some(&r), "a written batch is read before it is durable");
            }
            for sync in syncs {
                sync.wait().await.unwrap();
            }
        })
    });
    for w in writers.collect::<Vec<_>>() {
        w.await.unwrap();
    }
    // No clean stop: what a reopen finds is what the syncs made durable.
    drop(store);
    let store = StateStore::open(dir.path()).unwrap();
    let all = store.list_source("pg").await.unwrap();
    assert_eq!(all.len(), 160, "every batch whose sync resolved is there after a reopen");
}

#[tokio::test]
async fn a_touch_moves_only_the_run_stamp_and_the_index_follows_every_write() {
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::open(dir.path()).unwrap();
    let (a, b) = (record("pg", "pg/db/s/a", "r1"), record("pg", "pg/db/s/b", "r1"));
    let writes = [a.clone(), b.clone()].map(|record| RecordWrite::new(record, 2));
    store.put_many(&writes).await.unwrap();
    let brief = |r: &ControlRecord| match layout::known(r, None) {
        Written::Live(known) => known,
        other => panic!("{other:?}"),
    };
    assert_eq!(store.known("pg", "pg/db/s/a"), Some(brief(&a)));
    assert_eq!(store.known("pg", "pg/db/s/zz"), None);

    let at = a.last_seen_at + chrono::Duration::hours(1);
    let touch = |r: &ControlRecord, version| RecordTouch {
        source: r.source.clone().into(),
        asset_key: r.asset_key.clone().into(),
        last_seen_run: "r2".into(),
        last_seen_at: at,
        version,
        indexed: false,
        print: None,
    };
    store.put_with_touches(&[], &[touch(&a, 4), touch(&b, 4)]).await.unwrap();
    let mut seen = a.clone();
    (seen.last_seen_run, seen.last_seen_at, seen.version) = ("r2".into(), at, 4);
    let get = |key: &str| {
        let keys = keys(&[("pg", key)]);
        let store = store.clone();
        async move { store.get_many(&keys).await.unwrap().remove(&keys[0].asset_key) }
    };
    assert_eq!(get("pg/db/s/a").await, Some(seen.clone()), "the record with its new run stamp");
    assert!(store.list_source("pg").await.unwrap().contains(&seen));
    assert!(store.list_all().await.unwrap().contains(&seen));
    assert_eq!(store.known("pg", "pg/db/s/a"), Some(brief(&seen)));
    // The sweep reads the stamp: seen in r2, not in r3.
    for counted in [false, true] {
        assert!(store.sweep_plan(query("pg", "r2", counted)).await.unwrap().to_drop.is_empty());
        assert_eq!(store.sweep_plan(query("pg", "r3", counted)).await.unwrap().to_drop.len(), 2);
    }

    // A full write supersedes the older stamp; a dropped record is no longer known.
    let mut changed = seen.clone();
    (changed.hash, changed.version) = ("cd".repeat(32), 5);
    store.put_many(&[RecordWrite::new(changed.clone(), 4)]).await.unwrap();
    assert_eq!(get("pg/db/s/a").await, Some(changed.clone()));
    assert_eq!(store.known("pg", "pg/db/s/a"), Some(brief(&changed)));
    let mut dropped = changed.clone();
    (dropped.status, dropped.version) = (assetflow_actors::record::RecordStatus::Dropped, 6);
    store.put_many(&[RecordWrite::new(dropped.clone(), 5)]).await.unwrap();
    assert_eq!(store.known("pg", "pg/db/s/a"), None);

    // Reopened, the index is filled again from records and stamps.
    drop(store);
    let store = StateStore::open(dir.path()).unwrap();
    let mut b_seen = b.clone();
    (b_seen.last_seen_run, b_seen.last_seen_at, b_seen.version) = ("r2".into(), at, 4);
    assert_eq!(store.known("pg", "pg/db/s/b"), Some(brief(&b_seen)));
    assert_eq!(store.known("pg", "pg/db/s/a"), None);
    let mut all = store.list_all().await.unwrap();
    all.sort_by(|x, y| x.asset_key.cmp(&y.asset_key));
    assert_eq!(all, [dropped, b_seen]);
}

/// The index keeps the text print a write or a touch brings with the record's hash, drops
/// it with a write that brings none (the hash may have moved), and keeps it over a clean
/// stop (the saved index) and a crash (an index filled from the rows, which keep it too).
#[tokio::test]
async fn the_index_keeps_a_print_only_beside_the_hash_it_came_with() {
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::open(dir.path()).unwrap();
    let (a, b) = (record("pg", "pg/db/s/a", "r1"), record("pg", "pg/db/s/b", "r1"));
    let printed = |record: &ControlRecord, print| RecordWrite { print, ..RecordWrite::new(record.clone(), 2) };
    store.put_many(&[printed(&a, Some([1; 16])), printed(&b, None)]).await.unwrap();
    let print = |key: &str| store.known("pg", key).and_then(|k| k.print);
    assert_eq!((print("pg/db/s/a"), print("pg/db/s/b")), (Some([1; 16]), None));

    let touch = |r: &ControlRecord, print| RecordTouch { indexed: true, print, ..seen_in_r2(r) };
    store.put_with_touches(&[], &[touch(&a, None), touch(&b, Some([2; 16]))]).await.unwrap();
    assert_eq!((print("pg/db/s/a"), print("pg/db/s/b")), (Some([1; 16]), Some([2; 16])), "a touch keeps or brings one");

    let mut changed = b.clone();
    (changed.hash, changed.version) = ("cd".repeat(32), 5);
    store.put_many(&[RecordWrite::new(changed, 4)]).await.unwrap();
    assert_eq!(print("pg/db/s/b"), None, "a new hash without a print");

    store.settle(std::time::Duration::from_secs(30));
    drop(store);
    let store = StateStore::open(dir.path()).unwrap();
    let known = store.known("pg", "pg/db/s/a").unwrap();
    assert_eq!(
        (known.print, known.hash_hex(), known.version),
        (Some([1; 16]), a.hash.clone(), 4),
        "after a clean stop"
    );

    drop(store);
    let store = StateStore::open(dir.path()).unwrap();
    assert_eq!(store.known("pg", "pg/db/s/a").and_then(|k| k.print), Some([1; 16]), "after a crash");
    assert_eq!(store.known("pg", "pg/db/s/b").and_then(|k| k.print), None, "after a crash");
}

/// A record the index does not hold is read, and comes with the print of the event its
/// hash came from: the write's, or a newer stamp's (a touch moves no hash), never one kept
/// before the hash last moved.
#[tokio::test]
async fn a_record_read_comes_with_the_print_its_hash_came_from() {
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::open(dir.path()).unwrap();
    let (a, b) = (record("pg", "pg/db/s/a", "r1"), record("pg", "pg/db/s/b", "r1"));
    let printed = |record: &ControlRecord, print| RecordWrite { print, ..RecordWrite::new(record.clone(), 2) };
    store.put_many(&[printed(&a, Some([1; 16])), printed(&b, None)]).await.unwrap();
    // Both past the index's bound, as in a catalog larger than it.
    for r in [&a, &b] {
        store.inner.index.forget(&layout::control_key(&r.source, &r.asset_key));
    }
    let both = keys(&[("pg", "pg/db/s/a"), ("pg", "pg/db/s/b")]);
    let prints = |store: &StateStore| {
        let store = store.clone();
        let both = both.clone();
        async move {
            let read = store.get_many_printed(&both).await.unwrap();
            assert_eq!(read.records.len(), 2);
            (read.prints.get("pg/db/s/a").copied(), read.prints.get("pg/db/s/b").copied())
        }
    };
    assert_eq!(prints(&store).await, (Some([1; 16]), None));

    let touch = |r: &ControlRecord, print| RecordTouch { print, ..seen_in_r2(r) };
    store.put_with_touches(&[], &[touch(&a, None), touch(&b, Some([2; 16]))]).await.unwrap();
    assert_eq!(prints(&store).await, (Some([1; 16]), Some([2; 16])), "a stamp keeps the record's or brings one");

    // b's hash moves with no print: the stamp's print is of the hash before.
    let mut changed = b.clone();
    (changed.hash, changed.version) = ("cd".repeat(32), 5);
    store.put_many(&[RecordWrite::new(changed, 4)]).await.unwrap();
    assert_eq!(prints(&store).await, (Some([1; 16]), None), "a new hash without a print");

    drop(store);
    let store = StateStore::open(dir.path()).unwrap();
    assert_eq!(prints(&store).await, (Some([1; 16]), None), "after a crash");
}

#[tokio::test]
async fn a_settled_store_opens_with_nothing_to_replay_and_everything_there() {
    let dir = tempfile::tempdir().unwrap();
    let write = |settle: bool| {
        let path = dir.path().join(if settle { "settled" } else { "not" });
        async move {
            let store = StateStore::open(&path).unwrap();
            let writes: Vec<_> =
                (0..50).map(|i| RecordWrite::new(record("pg", &format!("pg/db/s/t{i:03}"), "r1"), 0)).collect();
            store.put_many(&writes).await.unwrap();
            store.append(&[row("pg/db/s/t001", "d1")]).await.unwrap();
            if settle {
                let written = journals(&path);
                store.settle(std::time::Duration::from_secs(30));
                let after = journals(&path);
                assert!(!written.is_empty(), "the writes went to a journal");
                assert!(written.iter().all(|j| !after.contains(j)), "{written:?} left at the stop ({after:?})");
                assert_eq!(after.len(), 1, "one new journal, empty");
                // What the next open takes is the saved index, not a scan: a ghost added
                // to it (under the same sequence number) is known after the reopen.
                let mut entries = store.inner.index.entries();
                let ghost = layout::control_key("pg", "pg/db/s/ghost");
                entries.push((ghost, entries[0].1));
                let token = store.inner.checkpoints.get(INDEX_TOKEN_KEY).unwrap().unwrap();
                let token = u64::from_le_bytes(token[..].try_into().unwrap());
                let saved = index_file::Saved {
                    entries,
                    complete: true,
                    sources: store.inner.index.sources(),
                    runs: Vec::new(),
                };
                index_file::save(&store.inner.index_file, token, &saved).unwrap();
                std::fs::copy(&store.inner.index_file, path.join("kept")).unwrap();
            }
            drop(store);
            StateStore::open(&path).unwrap()
        }
    };
    // Without a settle, the reopened store has replayed its journal into memtables.
    assert!(write(false).await.inner.db.write_buffer_size() > 4096);
    let store = write(true).await;
    // Only the removal of the saved index's token, at the open.
    assert!(store.inner.db.write_buffer_size() < 512, "nothing replayed into memtables");
    assert_eq!(store.list_all().await.unwrap().len(), 50);
    assert_eq!(ids(&store.read("pg/db/s/t001", 10).await.unwrap()), ["d1"]);
    assert!(store.known("pg", "pg/db/s/t007").is_some(), "the index comes back");
    assert!(store.known("pg", "pg/db/s/ghost").is_some(), "loaded from the file");
    assert!(!dir.path().join("settled/state-index").exists(), "the saved index was loaded, and removed");

    // The same file put back after the store moved on is refused: its token is gone.
    drop(store);
    std::fs::copy(dir.path().join("settled/kept"), dir.path().join("settled/state-index")).unwrap();
    let store = StateStore::open(&dir.path().join("settled")).unwrap();
    assert_eq!(store.known("pg", "pg/db/s/ghost"), None, "scanned, not loaded");
    assert!(store.known("pg", "pg/db/s/t007").is_some());
}

/// The names of the store's journal files.
fn journals(state_dir: &Path) -> Vec<std::ffi::OsString> {
    std::fs::read_dir(state_dir.join("state"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|name| name.to_string_lossy().ends_with(".jnl"))
        .collect()
}

/// Each record of source `pg` as a read gives it back: key, last run, version; in key order.
async fn stamps_of(store: &StateStore) -> Vec<(String, String, u64)> {
    let mut all: Vec<_> =
        store.list_source("pg").await.unwrap().into_iter().map(|r| (r.asset_key, r.last_seen_run, r.version)).collect();
    all.sort();
    all
}

/// What a store gives back of 20 assets, 10 of them touched in r2 after a write in r1: the
/// records, and what a sweep of r2 that reads every record drops.
async fn after_touches(store: &StateStore) -> (Vec<(String, String, u64)>, Vec<String>) {
    let all = stamps_of(store).await;
    let mut to_drop = store.sweep_plan(query("pg", "r2", true)).await.unwrap().to_drop;
    to_drop.sort();
    (all, to_drop)
}

#[tokio::test]
async fn touch_frames_hold_the_stamps_through_a_crash_a_clean_stop_and_a_fold() {
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::open(dir.path()).unwrap();
    let writes: Vec<RecordWrite> =
        (0..20).map(|i| RecordWrite::new(record("pg", &format!("pg/db/s/t{i:02}"), "r1"), 2)).collect();
    store.put_many(&writes).await.unwrap();
    let at = chrono::Utc::now() + chrono::Duration::hours(1);
    let touches: Vec<RecordTouch> = (0..10)
        .map(|i| RecordTouch {
            source: "pg".into(),
            asset_key: format!("pg/db/s/t{i:02}").into(),
            last_seen_run: "r2".into(),
            last_seen_at: at,
            version: 4,
            indexed: false,
            print: None,
        })
        .collect();
    store.put_with_touches(&[], &touches[..6]).await.unwrap();
    store.put_with_touches(&[], &touches[6..]).await.unwrap();
    // Indexed assets: their stamps went into two frames, not into rows.
    assert_eq!(store.inner.touches.iter().count(), 2);
    assert_eq!(store.inner.stamps.iter().count(), 0);

    let expected = {
        let mut all: Vec<_> = (0..20)
            .map(|i| {
                let (run, version) = if i < 10 { ("r2", 4) } else { ("r1", 3) };
                (format!("pg/db/s/t{i:02}"), run.to_owned(), version)
            })
            .collect();
        all.sort();
        (all, (10..20).map(|i| format!("pg/db/s/t{i:02}")).collect::<Vec<_>>())
    };
    assert_eq!(after_touches(&store).await, expected, "reads take the stamps from the index");
    let one = store.get_many(&keys(&[("pg", "pg/db/s/t03")])).await.unwrap().remove("pg/db/s/t03").unwrap();
    assert_eq!((one.last_seen_run.as_str(), one.last_seen_at, one.version), ("r2", at, 4));

    // A crash: no settle, so no saved index; the open replays the frames.
    drop(store);
    let store = StateStore::open(dir.path()).unwrap();
    assert_eq!(after_touches(&store).await, expected, "after a crash");
    assert_eq!(store.known("pg", "pg/db/s/t03").map(|k| k.version), Some(4));

    // A clean stop: the saved index brings the stamps back, and their runs with them.
    store.settle(std::time::Duration::from_secs(30));
    drop(store);
    let store = StateStore::open(dir.path()).unwrap();
    assert!(store.inner.db.write_buffer_size() < 512, "the frames were flushed at the stop, not replayed");
    assert_eq!(after_touches(&store).await, expected, "after a clean stop");

    // A fold writes the stamps as rows and removes the frames; nothing read changes.
    store.inner.fold(&mut store.inner.frames_held()).unwrap();
    assert_eq!(store.inner.touches.iter().count(), 0);
    assert_eq!(store.inner.stamps.iter().count(), 10);
    assert_eq!(after_touches(&store).await, expected, "after a fold");
    drop(store);
    let store = StateStore::open(dir.path()).unwrap();
    assert_eq!(after_touches(&store).await, expected, "after a fold and a crash");
}

/// A fold written a stripe at a time: a batch that lands while it is under way keeps its
/// frame and the run it names, whichever stripes its assets are in, through the fold's end
/// and a crash after it.
#[tokio::test]
async fn a_batch_that_lands_during_a_fold_keeps_its_frame_and_its_run() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = StateStore::open(dir.path()).unwrap();
    // No fold begins by itself: the test begins one.
    Arc::get_mut(&mut store.inner).unwrap().fold_after = 100;
    let key = |i: usize| format!("pg/db/s/t{i:02}");
    let writes: Vec<RecordWrite> = (0..40).map(|i| RecordWrite::new(record("pg", &key(i), "r1"), 2)).collect();
    store.put_many(&writes).await.unwrap();
    let at = chrono::Utc::now() + chrono::Duration::hours(1);
    let touch = |i: usize, run: &'static str, version| RecordTouch {
        source: "pg".into(),
        asset_key: key(i).into(),
        last_seen_run: run.into(),
        last_seen_at: at,
        version,
        indexed: false,
        print: None,
    };
    let r2: Vec<RecordTouch> = (0..40).map(|i| touch(i, "r2", 4)).collect();
    store.put_with_touches(&[], &r2[..20]).await.unwrap();
    store.put_with_touches(&[], &r2[20..]).await.unwrap();
    // A fold of both frames begins, and only half the index's stripes have room.
    let stripes_done = std::cell::Cell::new(0);
    let half = || {
        stripes_done.set(stripes_done.get() + 1);
        stripes_done.get() <= STRIPES / 2
    };
    {
        let mut frames = store.inner.frames_held();
        frames.folding = Some(Folding::from(frames.next));
        store.inner.fold_on(&mut frames, half).unwrap();
        assert_eq!(frames.folding.as_ref().map(|f| f.stripe), Some(STRIPES / 2));
    }
    // A batch of a new run, over assets of every stripe, lands and the fold ends with it.
    let r3: Vec<RecordTouch> = (0..30).map(|i| touch(i, "r3", 5)).collect();
    store.put_with_touches(&[], &r3).await.unwrap();
    assert!(store.inner.frames_held().folding.is_none(), "the fold ended");
    assert_eq!(store.inner.touches.iter().count(), 1, "the new batch's frame stays");
    let want: Vec<_> =
        (0..40).map(|i| if i < 30 { (key(i), "r3".to_owned(), 5) } else { (key(i), "r2".to_owned(), 4) }).collect();
    assert_eq!(stamps_of(&store).await, want, "after the fold");
    drop(store);
    let store = StateStore::open(dir.path()).unwrap();
    assert_eq!(stamps_of(&store).await, want, "after a crash");
}

#[tokio::test]
async fn frames_past_the_bound_are_folded_as_batches_land() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = StateStore::open(dir.path()).unwrap();
    Arc::get_mut(&mut store.inner).unwrap().fold_after = 3;
    let writes: Vec<RecordWrite> =
        (0..4).map(|i| RecordWrite::new(record("pg", &format!("pg/db/s/t{i}"), "r1"), 2)).collect();
    store.put_many(&writes).await.unwrap();
    let touch = |i: usize, run: &str, version| RecordTouch {
        source: "pg".into(),
        asset_key: format!("pg/db/s/t{i}").into(),
        last_seen_run: run.to_owned().into(),
        last_seen_at: chrono::Utc::now(),
        version,
        indexed: false,
        print: None,
    };
    for (i, run) in ["r2", "r3"].iter().enumerate() {
        store.put_with_touches(&[], &[touch(i, run, 4)]).await.unwrap();
    }
    assert_eq!((store.inner.touches.iter().count(), store.inner.stamps.iter().count()), (2, 0));
    // The third frame reaches the bound: all three are folded into rows.
    store.put_with_touches(&[], &[touch(2, "r4", 4)]).await.unwrap();
    assert_eq!((store.inner.touches.iter().count(), store.inner.stamps.iter().count()), (0, 3));
    store.put_with_touches(&[], &[touch(3, "r5", 4)]).await.unwrap();
    drop(store);
    let store = StateStore::open(dir.path()).unwrap();
    let mut runs: Vec<_> = store.list_source("pg").await.unwrap().into_iter().map(|r| r.last_seen_run).collect();
    runs.sort();
    assert_eq!(runs, ["r2", "r3", "r4", "r5"]);
}

#[test]
fn a_new_store_pins_its_blocks_and_one_from_before_keeps_the_larger_cache() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join(PINNED_MARKER);
    let store = StateStore::open(dir.path()).unwrap();
    assert!(marker.exists());
    assert_eq!(store.inner.db.cache_capacity(), CACHE_BYTES);
    for ks in [&store.inner.control, &store.inner.stamps, &store.inner.touches] {
        assert!(ks.config.index_block_pinning_policy.iter().all(|pinned| *pinned));
        assert!(ks.config.filter_block_pinning_policy.iter().all(|pinned| *pinned));
    }
    drop(store);
    let store = StateStore::open(dir.path()).unwrap();
    assert_eq!(store.inner.db.cache_capacity(), CACHE_BYTES, "a marked store reopens with the small cache");
    drop(store);

    // A store an earlier version created has no marker, and keyspaces that go through the
    // cache for those blocks: it keeps the larger cache, and is not marked.
    std::fs::remove_file(&marker).unwrap();
    let store = StateStore::open(dir.path()).unwrap();
    assert_eq!(store.inner.db.cache_capacity(), UNPINNED_CACHE_BYTES);
    drop(store);
    assert!(!marker.exists());
}

/// The last window of a first creation that `unfinished.rs` leaves to fjall: killed inside
/// the meta keyspace's own creation, after fjall's version marker is whole, `keyspaces/0` may
/// hold its `tables` folder and a version file cut short, but no `current` pointer (lsm-tree
/// writes that last, by an atomic rename). lsm-tree makes such a tree again on the next open
/// (it recovers only a tree with a `current`); this holds a fjall upgrade to it, which would
/// otherwise stop every start of a store killed there.
#[tokio::test]
async fn a_meta_keyspace_killed_before_its_current_pointer_is_made_again_on_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state");
    drop(Database::builder(&path).open().unwrap());
    let meta = path.join("keyspaces").join("0");
    std::fs::remove_file(meta.join("current")).unwrap();
    std::fs::write(meta.join("v0"), b"\x01").unwrap();
    let store = StateStore::open(dir.path()).expect("the store opens after a kill there");
    store.put_many(&[RecordWrite::new(record("pg", "pg/db/s/t", "r1"), 2)]).await.unwrap();
    drop(store);
    let store = StateStore::open(dir.path()).unwrap();
    let runs: Vec<_> = store.list_source("pg").await.unwrap().into_iter().map(|r| r.last_seen_run).collect();
    assert_eq!(runs, ["r1"], "what the store took after that start is there after the next");
}

/// Bytes on disk that are not what was written (a disk fault, a copy cut short) stop the start
/// with what to do, not only the engine's words for it.
#[tokio::test]
async fn a_damaged_store_names_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::open(dir.path()).unwrap();
    store.put_many(&[RecordWrite::new(record("pg", "pg/db/s/t", "r1"), 2)]).await.unwrap();
    drop(store);
    let mut damaged = 0;
    for keyspace in std::fs::read_dir(dir.path().join("state/keyspaces")).unwrap() {
        let Ok(tables) = std::fs::read_dir(keyspace.unwrap().path().join("tables")) else { continue };
        for table in tables {
            let path = table.unwrap().path();
            let mut bytes = std::fs::read(&path).unwrap();
            bytes[10..20].fill(0xa5);
            std::fs::write(&path, bytes).unwrap();
            damaged += 1;
        }
    }
    assert!(damaged > 0, "a closed store has tables to damage");
    let Err(e) = StateStore::open(dir.path()) else { panic!("a damaged store opened") };
    assert!(e.contains("is damaged") && e.contains("restore pipeline.state_dir from a backup"), "{e}");
}

/// The table size a keyspace compacts to, as fjall keeps it for the keyspace.
fn table_target(ks: &Keyspace) -> u64 {
    let config = ks.config.compaction_strategy.get_config();
    let (_, value) = config.iter().find(|(key, _)| &**key == b"leveled_target_size").expect("leveled");
    u64::from_le_bytes((&**value).try_into().unwrap())
}

#[test]
fn a_new_store_compacts_its_stamps_to_small_tables_and_keeps_them_after_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    for _ in 0..2 {
        let store = StateStore::open(dir.path()).unwrap();
        assert_eq!(table_target(&store.inner.stamps), STAMPS_TABLE_BYTES);
        assert_eq!(table_target(&store.inner.control), DEFAULT_TABLE_BYTES);
        drop(store);
    }
}

#[tokio::test]
async fn a_fold_leaves_records_written_after_their_frame_as_they_were_written() {
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::open(dir.path()).unwrap();
    let writes: Vec<RecordWrite> =
        (0..3).map(|i| RecordWrite::new(record("pg", &format!("pg/db/s/t{i}"), "r1"), 2)).collect();
    store.put_many(&writes).await.unwrap();
    let touch = |i: usize| RecordTouch {
        source: "pg".into(),
        asset_key: format!("pg/db/s/t{i}").into(),
        last_seen_run: "r2".into(),
        last_seen_at: chrono::Utc::now(),
        version: 4,
        indexed: false,
        print: None,
    };
    store.put_with_touches(&[], &[touch(0), touch(1), touch(2)]).await.unwrap();
    // Later in the same run: t1 changes and t2 is dropped, so the index's entries of the
    // frame's run are one the frame holds (t0), one a record holds (t1), and none for t2.
    let mut changed = record("pg", "pg/db/s/t1", "r2");
    (changed.hash, changed.version) = ("cd".repeat(32), 5);
    let mut dropped = record("pg", "pg/db/s/t2", "r2");
    (dropped.status, dropped.dropped_at, dropped.version) =
        (assetflow_actors::record::RecordStatus::Dropped, Some(chrono::Utc::now()), 5);
    store.put_many(&[RecordWrite::new(changed, 4), RecordWrite::new(dropped, 4)]).await.unwrap();
    async fn read(store: &StateStore) -> Vec<(String, String, u64, String, bool)> {
        let mut all: Vec<_> = store
            .list_source("pg")
            .await
            .unwrap()
            .into_iter()
            .map(|r| (r.asset_key.clone(), r.last_seen_run.clone(), r.version, r.hash.clone(), r.is_live()))
            .collect();
        all.sort();
        all
    }
    let expected = vec![
        ("pg/db/s/t0".to_owned(), "r2".to_owned(), 4, "ab".repeat(32), true),
        ("pg/db/s/t1".to_owned(), "r2".to_owned(), 5, "cd".repeat(32), true),
        ("pg/db/s/t2".to_owned(), "r2".to_owned(), 5, "ab".repeat(32), false),
    ];
    assert_eq!(read(&store).await, expected, "before the fold");
    let rows = store.inner.fold(&mut store.inner.frames_held()).unwrap();
    assert_eq!(rows, 2, "the frame's run has t0 and t1 in the index, and the dropped t2 is not there");
    assert_eq!(store.inner.touches.iter().count(), 0);
    assert_eq!(read(&store).await, expected, "after the fold");
    // A crash: no saved index, so the open reads the rows the fold left.
    drop(store);
    let store = StateStore::open(dir.path()).unwrap();
    assert_eq!(read(&store).await, expected, "after the fold and a crash");
}

/// The sweep of `run` by a completion newer than every record.
fn query<'a>(source: &'a str, run: &'a str, count_run_events: bool) -> SweepQuery<'a> {
    let emitted_at = chrono::DateTime::<chrono::Utc>::MAX_UTC;
    SweepQuery { source, run, emitted_at, max_drop_fraction: 1.0, count_run_events }
}

/// The plan a sweep makes from the index and the one a read of every record makes.
async fn both_plans(store: &StateStore, source: &str, run: &str) -> (SweepPlan, SweepPlan) {
    let fast = store.sweep_plan(query(source, run, false)).await.unwrap();
    let read = store.sweep_plan(query(source, run, true)).await.unwrap();
    (fast, read)
}

fn same_drops(fast: &SweepPlan, read: &SweepPlan) {
    assert_eq!((fast.live, &fast.to_drop, fast.guarded), (read.live, &read.to_drop, read.guarded));
}

#[tokio::test]
async fn a_sweep_from_the_index_drops_what_a_read_of_every_record_drops() {
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::open(dir.path()).unwrap();
    // Seen in r2 by a write, by a touch, not seen (r1), dropped, another source.
    let mut writes: Vec<ControlRecord> = (0..30).map(|i| record("pg", &format!("pg/db/s/t{i:02}"), "r1")).collect();
    writes.extend((30..40).map(|i| record("pg", &format!("pg/db/s/t{i:02}"), "r2")));
    let mut gone = record("pg", "pg/db/s/gone", "r1");
    gone.status = assetflow_actors::record::RecordStatus::Dropped;
    writes.push(gone);
    writes.push(record("my", "my/db/s/t", "r1"));
    let writes: Vec<RecordWrite> = writes.into_iter().map(|record| RecordWrite::new(record, 2)).collect();
    let touches: Vec<RecordTouch> = (0..10)
        .map(|i| RecordTouch {
            source: "pg".into(),
            asset_key: format!("pg/db/s/t{i:02}").into(),
            last_seen_run: "r2".into(),
            last_seen_at: chrono::Utc::now(),
            version: 4,
            indexed: false,
            print: None,
        })
        .collect();
    store.put_many(&writes).await.unwrap();
    store.put_with_touches(&[], &touches).await.unwrap();

    let (fast, read) = both_plans(&store, "pg", "r2").await;
    same_drops(&fast, &read);
    assert_eq!((read.live, read.to_drop.len()), (40, 20));
    assert_eq!((read.seen_in_run, fast.seen_in_run), (20, 20));
    // The same after a clean stop (the saved index) and after a crash (a scan).
    store.settle(std::time::Duration::from_secs(30));
    drop(store);
    let store = StateStore::open(dir.path()).unwrap();
    assert!(store.inner.index.is_complete());
    same_drops(&both_plans(&store, "pg", "r2").await.0, &read);
    drop(store);
    let store = StateStore::open(dir.path()).unwrap();
    assert!(store.inner.index.is_complete(), "scanned to the end");
    same_drops(&both_plans(&store, "pg", "r2").await.0, &read);
}

#[tokio::test]
async fn a_late_completion_leaves_what_newer_events_touched_from_the_index_and_by_reading() {
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::open(dir.path()).unwrap();
    let completed = chrono::Utc::now();
    let later = completed + chrono::Duration::hours(1);
    // r1 saw t0..t3 before its completion; r2 then wrote t0 and touched t1 (a run stamp).
    let mut records: Vec<ControlRecord> = (0..4).map(|i| record("pg", &format!("pg/db/s/t{i}"), "r0")).collect();
    for r in &mut records {
        r.last_seen_at = completed - chrono::Duration::hours(1);
    }
    records[0].last_seen_run = "r2".into();
    records[0].last_seen_at = later;
    let writes: Vec<RecordWrite> = records.into_iter().map(|record| RecordWrite::new(record, 2)).collect();
    store.put_many(&writes).await.unwrap();
    let touch = RecordTouch {
        source: "pg".into(),
        asset_key: "pg/db/s/t1".into(),
        last_seen_run: "r2".into(),
        last_seen_at: later,
        version: 4,
        indexed: false,
        print: None,
    };
    store.put_with_touches(&[], &[touch]).await.unwrap();
    for count_run_events in [false, true] {
        let q = SweepQuery { emitted_at: completed, max_drop_fraction: 0.5, ..query("pg", "r1", count_run_events) };
        let plan = store.sweep_plan(q).await.unwrap();
        assert_eq!(plan.live, 4);
        assert_eq!(plan.to_drop, ["pg/db/s/t2", "pg/db/s/t3"], "counting run events: {count_run_events}");
        assert!(!plan.guarded, "two of four, not the four the run did not see");
    }
}

#[tokio::test]
async fn an_index_that_lost_a_record_or_shares_a_prefix_sweeps_by_reading() {
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::open(dir.path()).unwrap();
    let records: Vec<ControlRecord> = (0..8).map(|i| record("pg", &format!("pg/db/s/t{i}"), "r1")).collect();
    let writes: Vec<RecordWrite> = records.iter().map(|r| RecordWrite::new(r.clone(), 2)).collect();
    store.put_many(&writes).await.unwrap();
    // A write whose outcome is unknown: the index forgets the key, though the record is live.
    store.inner.index.forget(&layout::control_key("pg", "pg/db/s/t3"));
    let (fast, read) = both_plans(&store, "pg", "r2").await;
    same_drops(&fast, &read);
    assert!(fast.to_drop.contains(&"pg/db/s/t3".to_owned()));

    // Two sources whose records share a prefix: run ids are the sources' own, and may be
    // the same; the index cannot tell their records apart.
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::open(dir.path()).unwrap();
    let mut seen = HashMap::new();
    let (a, b) = (0..)
        .map(|i| format!("src-{i}"))
        .find_map(|s| seen.insert(layout::control_prefix(&s), s.clone()).map(|other| (other, s)))
        .unwrap();
    let writes: Vec<RecordWrite> = [record(&a, &format!("{a}/db/s/x"), "r1"), record(&b, &format!("{b}/db/s/y"), "r2")]
        .into_iter()
        .map(|record| RecordWrite::new(record, 2))
        .collect();
    store.put_many(&writes).await.unwrap();
    let (fast, read) = both_plans(&store, &a, "r2").await;
    same_drops(&fast, &read);
    assert_eq!((read.live, read.to_drop.len()), (1, 1), "{a} and {b}");
}

#[tokio::test]
async fn a_source_that_may_hold_event_markers_is_swept_by_reading_until_they_are_spent() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = StateStore::open(dir.path()).unwrap();
    let name = assetflow_actors::event::AssetName { database: "db".into(), schema: "s".into(), table: "t".into() };
    let marker = assetflow_actors::record::RunEvent::record("pg", &name, "r2", "pg/db/s/t0", chrono::Utc::now(), "h");
    let mut records: Vec<ControlRecord> = (0..3).map(|i| record("pg", &format!("pg/db/s/t{i}"), "r1")).collect();
    records.push(record("my", "my/db/s/t", "r1"));
    records.push(marker.clone());
    let writes: Vec<RecordWrite> = records.into_iter().map(|record| RecordWrite::new(record, 2)).collect();
    store.put_many(&writes).await.unwrap();

    // A completion without `expected_assets` would plan from the index, which holds no marker;
    // the source's records are read instead, so the sweep finds the marker it spends. So
    // after a clean stop and a reopen, too.
    for reopened in [false, true] {
        if reopened {
            store.settle(std::time::Duration::from_secs(30));
            drop(store);
            store = StateStore::open(dir.path()).unwrap();
        }
        let plan = store.sweep_plan(query("pg", "r2", false)).await.unwrap();
        assert_eq!(plan.spent_markers, std::slice::from_ref(&marker.asset_key), "reopened: {reopened}");
        assert_eq!(plan.seen_in_run, 1, "the marker counts");
        assert_eq!(store.sweep_plan(query("my", "r2", false)).await.unwrap().spent_markers, Vec::<String>::new());
    }

    assert!(store.inner.with_markers.contains_key("pg").unwrap(), "noted again by the read that found it");

    // Only markers are removed, whatever the keys name.
    store
        .remove_markers(&keys(&[("pg", &marker.asset_key), ("pg", "pg/db/s/t0"), ("pg", "pg#run-event#gone")]))
        .await
        .unwrap();
    let left = store.get_many(&keys(&[("pg", &marker.asset_key), ("pg", "pg/db/s/t0")])).await.unwrap();
    assert_eq!(left.keys().collect::<Vec<_>>(), ["pg/db/s/t0"]);
    // The next sweep reads the source, finds no marker, and clears the source: the one after
    // plans from the index.
    assert!(store.sweep_plan(query("pg", "r2", false)).await.unwrap().spent_markers.is_empty());
    assert!(!store.inner.with_markers.contains_key("pg").unwrap());
    let plan = store.sweep_plan(query("pg", "r2", false)).await.unwrap();
    assert_eq!((plan.live, plan.seen_in_run, plan.to_drop.len()), (3, 0, 3));
}
