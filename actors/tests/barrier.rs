//! The completion barrier: a completion never overtakes a running event of its source on any
//! shard, and the next run's events wait for the sweep.

mod support;

use std::time::Duration;

use support::*;

fn run_of(run: &str, tables: impl Iterator<Item = usize>, t: u32, n: &mut u32) -> Vec<String> {
    tables
        .map(|k| {
            *n += 1;
            running(&format!("e{n:05}"), "src", run, &format!("t{k:03}"), t, "same")
        })
        .collect()
}

#[test]
fn a_completion_sees_every_earlier_event_of_its_run() {
    let mut n = 0;
    let mut lines = run_of("r0", 0..200, 10, &mut n);
    lines.push(completed("c0", "src", "r0", 11, None));
    // r1 sees every asset again: if the sweep overtook any of these on a slow shard, that asset
    // would still be at r0 and would be dropped.
    lines.extend(run_of("r1", (0..200).rev(), 20, &mut n));
    lines.push(completed("c1", "src", "r1", 21, None));
    // r2 sees 180: exactly the 20 others go.
    lines.extend(run_of("r2", 20..200, 30, &mut n));
    lines.push(completed("c2", "src", "r2", 31, None));
    // r3's events come right behind r2's completion: they must not be applied before its sweep,
    // or t000..t019 (re-seen in r3) would escape r2's drops.
    lines.extend(run_of("r3", 0..200, 40, &mut n));
    lines.push(completed("c3", "src", "r3", 41, None));

    // The guard at one half makes a premature sweep visible: listing before the shards applied
    // r1 would count most assets as unseen and trip it (the shards' own re-check would
    // otherwise hide a missing barrier from the drops themselves).
    let mut s = settings(8);
    s.max_drop_fraction = 0.5;
    let out = run(s, lines, MemControl::slow(Duration::from_millis(3)));
    assert!(out.dead_letters.is_empty(), "{:?}", out.dead_letters);
    let expected: Vec<String> = (0..20).map(|k| format!("src/db/public/t{k:03}")).collect();
    assert_eq!(out.dropped_keys(), expected);
    for k in 0..20 {
        assert_eq!(
            out.upsert_changes(&format!("src/db/public/t{k:03}")),
            vec!["created", "created"],
            "dropped in r2, back in r3"
        );
    }
    let completed = out.history.iter().filter(|h| h.outcome.as_str() == "completed").count();
    assert_eq!(completed, 4);
}

#[test]
fn other_sources_are_never_touched_by_a_sweep() {
    let mut lines = vec![running("a1", "a", "ra", "x", 1, "c"), running("b1", "b", "rb", "y", 1, "c")];
    lines.push(completed("a2", "a", "ra2", 2, None));
    let mut s = settings(4);
    s.max_drop_fraction = 1.0;
    let out = run(s, lines, MemControl::slow(Duration::ZERO));
    assert_eq!(out.dropped_keys(), vec!["a/db/public/x".to_string()]);
    assert!(out.control.record("b/db/public/y").unwrap().is_live());
}
