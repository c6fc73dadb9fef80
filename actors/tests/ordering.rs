//! Per-asset order: events of one key are decided one at a time, in input order, even with
//! many shards and a slow control store that would expose any interleaving of batches.

mod support;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use assetflow_actors::pipeline::Settings;

use support::*;

#[test]
fn each_key_sees_its_events_in_input_order_under_eight_shards() {
    interleaved_keys_in_input_order(settings(8), 120);
}

/// The same with no enricher: each ingest hands its batches to the Router itself. Three keys,
/// so that every batch read holds several versions of each and the hop must keep their order
/// within a batch as well as across batches.
#[test]
fn each_key_sees_its_events_in_input_order_when_the_ingests_route_them() {
    interleaved_keys_in_input_order(Settings { enricher: false, ..settings(8) }, 3);
}

/// Pulled batches that decode on the pool at the same time go on in the order they were
/// pulled: a first batch slow to decode (large events) must not be overtaken by the small
/// batches pulled while it decodes. Handed on as each decode finished, the later versions of
/// the key would be decided first, and the earlier ones then taken for stale.
#[test]
fn batches_decoding_at_once_go_on_in_the_order_they_were_pulled() {
    const PULL: usize = 40;
    let large = "x".repeat(100_000);
    let lines: Vec<String> = (0..PULL * 4)
        .map(|v| {
            // The first pull's events are large; every later one is small.
            let content = if v < PULL { format!("{large}{v}") } else { format!("v{v}") };
            running(&format!("e{v:06}"), "src", "r1", "t000", v as u32, &content)
        })
        .collect();
    for enricher in [true, false] {
        let control = MemControl::slow(Duration::ZERO);
        let settings = Settings { enricher, ..settings(2) };
        let source = VecSource::new(lines.clone()).in_pulls_of(PULL);
        let out = run_with(settings, Box::new(source), Backends { control: control.clone(), ..Backends::default() });
        assert!(out.dead_letters.is_empty(), "{:?}", out.dead_letters);
        let ids: Vec<&str> = out.upserts.iter().map(|u| u["event_id"].as_str().unwrap()).collect();
        assert_eq!(ids.len(), PULL * 4, "enricher {enricher}: one upsert per version, none taken for stale");
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "enricher {enricher}: upserts out of input order: {ids:?}");
    }
}

/// Versions of `key_count` keys, interleaved, through `settings`: every key's upserts in input order.
fn interleaved_keys_in_input_order(settings: Settings, key_count: usize) {
    const VERSIONS: usize = 30;
    // Interleave: version v of every key, keys shuffled within each round.
    let mut lines = Vec::new();
    let mut n = 0;
    for v in 0..VERSIONS {
        let mut keys: Vec<usize> = (0..key_count).collect();
        keys.rotate_left((v * 37) % key_count);
        if v % 2 == 1 {
            keys.reverse();
        }
        for k in keys {
            n += 1;
            lines.push(running(
                &format!("e{n:06}"),
                "src",
                "r1",
                &format!("t{k:03}"),
                (v * 10) as u32,
                &format!("v{v}"),
            ));
        }
    }
    let control = MemControl::slow(Duration::from_millis(2));
    let out = run(settings, lines, control.clone());

    assert_eq!(control.conflicts.load(Ordering::SeqCst), 0, "a shard ran two batches at once: their writes conflicted");
    assert!(out.dead_letters.is_empty(), "{:?}", out.dead_letters);
    let mut by_key: HashMap<String, Vec<&serde_json::Value>> = HashMap::new();
    for u in &out.upserts {
        by_key.entry(u["asset_key"].as_str().unwrap().to_owned()).or_default().push(u);
    }
    assert_eq!(by_key.len(), key_count);
    for (key, ups) in by_key {
        assert_eq!(ups.len(), VERSIONS, "{key}: one upsert per version");
        assert_eq!(ups[0]["change"], "created", "{key}");
        for w in ups.windows(2) {
            assert!(w[0]["event_id"].as_str() < w[1]["event_id"].as_str(), "{key}: upserts out of input order");
            assert_eq!(w[1]["change"], "updated", "{key}");
            assert_eq!(w[1]["previous_hash"], w[0]["hash"], "{key}: an update must follow the one before it");
        }
        let last = ups.last().unwrap();
        assert_eq!(
            control.record(&key).unwrap().hash,
            last["hash"].as_str().unwrap(),
            "{key}: final record is the last event's"
        );
    }
}

/// The same order when unchanged assets are decided from what the store knows of them
/// (`ControlStore::known`, the embedded store's index) rather than from a read: a shard that
/// ran two batches at once would vouch from a version its other batch is moving, and the
/// store's version check would count the conflict.
#[test]
fn each_key_sees_its_events_in_input_order_when_unchanged_assets_skip_the_read() {
    unchanged_assets_in_input_order(
        MemControl::indexed(Duration::from_millis(2)),
        "no event took the known-record path",
    );
}

/// The same order when unchanged assets that were read move only their run stamp (a store
/// whose index does not hold them, `ControlStore::moves_run_stamps`): the touch is checked
/// against the version read, so a shard that ran two batches at once would count a conflict.
#[test]
fn each_key_sees_its_events_in_input_order_when_read_unchanged_assets_move_only_their_stamp() {
    unchanged_assets_in_input_order(
        MemControl::stamped(Duration::from_millis(2)),
        "no read unchanged asset moved only its stamp",
    );
}

/// The same order when a shard goes on to its next batch while the last one's records are
/// still syncing (`ControlStore::put_with_touches_deferred`, the embedded store's journal): the
/// next batch must decide from those records as written, not from what is durable.
#[test]
fn each_key_sees_its_events_in_input_order_while_earlier_batches_are_still_syncing() {
    let control = MemControl::syncing_later(Duration::from_millis(3));
    unchanged_assets_in_input_order(control.clone(), "no event moved only its stamp");
    assert!(control.syncs.overlapped.load(Ordering::SeqCst) > 0, "no batch was written while an earlier one synced");
}

/// An asset seen unchanged and then changed within one batch: its second event must see the
/// first one's record, so a key with two events in the batch is never taken for a stamp alone
/// (it would be decided from the record read before the batch, and its change missed).
#[test]
fn an_asset_unchanged_then_changed_in_one_batch_is_upserted() {
    let control = MemControl::stamped(Duration::from_millis(5));
    let first = run(settings(1), vec![running("e1", "src", "r1", "a", 10, "v1")], control.clone());
    assert_eq!(first.upsert_changes("src/db/public/a"), vec!["created"]);
    // One shard, everything in flight: the two events of `a` are pulled into the same batch.
    let lines = vec![
        running("e2", "src", "r2", "a", 20, "v1"),
        running("e3", "src", "r3", "a", 30, "v2"),
        running("e4", "src", "r3", "b", 30, "v1"),
    ];
    let out = run(settings(1), lines, control.clone());
    assert_eq!(
        out.upsert_changes("src/db/public/a"),
        vec!["updated"],
        "the change after an unchanged event was missed"
    );
    let r = control.record("src/db/public/a").unwrap();
    assert_eq!((r.last_seen_run.as_str(), r.version), ("r3", 3));
}

const KEYS: usize = 60;
const RUNS: usize = 20;

/// A run per round over the same keys; the content changes every other run, so half the events
/// are an unchanged asset seen again.
fn runs_of_unchanged_assets() -> Vec<String> {
    let mut lines = Vec::new();
    let mut n = 0;
    for v in 0..RUNS {
        let mut keys: Vec<usize> = (0..KEYS).collect();
        keys.rotate_left((v * 17) % KEYS);
        for k in keys {
            n += 1;
            let (run, content) = (format!("r{v:02}"), format!("c{}", v / 2));
            lines.push(running(&format!("e{n:06}"), "src", &run, &format!("t{k:03}"), (v * 10) as u32, &content));
        }
    }
    lines
}

/// Runs [`runs_of_unchanged_assets`] over `control` and checks each key's events were decided
/// in input order, once each, and that some moved only a run stamp (else `no_touch`).
fn unchanged_assets_in_input_order(control: std::sync::Arc<MemControl>, no_touch: &str) {
    // Few events in flight: a key's events of two runs then rarely share a batch, so most can
    // move only a stamp (a key with two events in a batch is read and written, by design).
    // With the defaults the whole stream could be in flight at once, and whether any event took
    // that path depended on how it happened to be batched.
    let out =
        run(Settings { max_in_flight: 16, pull_batch: 8, ..settings(8) }, runs_of_unchanged_assets(), control.clone());
    assert!(control.touches.load(Ordering::SeqCst) > 0, "{no_touch}");
    each_key_in_input_order_once_per_event(&out, &control);
}

fn each_key_in_input_order_once_per_event(out: &Run, control: &MemControl) {
    assert_eq!(control.conflicts.load(Ordering::SeqCst), 0, "a shard ran two batches at once: their writes conflicted");
    assert!(out.dead_letters.is_empty(), "{:?}", out.dead_letters);
    for k in 0..KEYS {
        let key = format!("src/db/public/t{k:03}");
        let ups = out.upserts.iter().filter(|u| u["asset_key"] == key.as_str()).collect::<Vec<_>>();
        assert_eq!(ups.len(), RUNS / 2, "{key}: one upsert per change");
        for w in ups.windows(2) {
            assert!(w[0]["event_id"].as_str() < w[1]["event_id"].as_str(), "{key}: upserts out of input order");
            assert_eq!(w[1]["previous_hash"], w[0]["hash"], "{key}: an update must follow the one before it");
        }
        let unchanged = out
            .history
            .iter()
            .filter(|h| h.asset_key.as_deref() == Some(key.as_str()) && h.outcome.as_str() == "unchanged");
        assert_eq!(unchanged.count(), RUNS / 2, "{key}");
        let r = control.record(&key).unwrap();
        assert_eq!(
            (r.last_seen_run.as_str(), r.version),
            ("r19", RUNS as u64),
            "{key}: every event moved the record once"
        );
    }
}

#[test]
fn stale_events_change_nothing_and_emit_nothing() {
    let lines = vec![
        running("e1", "s", "r1", "a", 100, "new"),
        running("e0", "s", "r0", "a", 50, "old"),
        running("e2", "s", "r1", "a", 100, "new"),
    ];
    let control = MemControl::slow(Duration::ZERO);
    let out = run(settings(2), lines, control.clone());
    assert_eq!(out.upsert_changes("s/db/public/a"), vec!["created"]);
    let r = control.record("s/db/public/a").unwrap();
    assert_eq!(r.last_seen_run, "r1", "older news must not overwrite newer");
    let outcomes: Vec<&str> = out.history.iter().map(|h| h.outcome.as_str()).collect();
    assert!(outcomes.contains(&"stale") && outcomes.contains(&"unchanged"), "{outcomes:?}");
}
