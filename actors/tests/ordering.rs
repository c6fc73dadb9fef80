//! Per-asset order: events of one key are decided one at a time, in input order, even with
//! many shards and a slow control store that would expose any interleaving of batches.

mod support;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use support::*;

#[test]
fn each_key_sees_its_events_in_input_order_under_eight_shards() {
    const KEYS: usize = 120;
    const VERSIONS: usize = 30;
    // Interleave: version v of every key, keys shuffled within each round.
    let mut lines = Vec::new();
    let mut n = 0;
    for v in 0..VERSIONS {
        let mut keys: Vec<usize> = (0..KEYS).collect();
        keys.rotate_left((v * 37) % KEYS);
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
    let out = run(settings(8), lines, control.clone());

    assert_eq!(control.conflicts.load(Ordering::SeqCst), 0, "a shard ran two batches at once: their writes conflicted");
    assert!(out.dead_letters.is_empty(), "{:?}", out.dead_letters);
    let mut by_key: HashMap<String, Vec<&serde_json::Value>> = HashMap::new();
    for u in &out.upserts {
        by_key.entry(u["asset_key"].as_str().unwrap().to_owned()).or_default().push(u);
    }
    assert_eq!(by_key.len(), KEYS);
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
