//! A completion that arrives after newer news of its source (a process that swept a partition
//! it had already lost, or a late re-delivery) drops nothing the newer news refreshed, and an
//! event read again from before an applied completion (a replay) brings back nothing it dropped.

mod support;

use std::time::Duration;

use support::*;

fn run_of(run: &str, tables: std::ops::Range<usize>, t: u32, first: usize) -> Vec<String> {
    tables
        .enumerate()
        .map(|(i, k)| running(&format!("{run}-e{:04}", first + i), "src", run, &format!("t{k:03}"), t, run))
        .collect()
}

fn all_settings() -> assetflow_actors::pipeline::Settings {
    let mut s = settings(4);
    s.max_drop_fraction = 1.0;
    s
}

#[test]
fn a_completion_applied_again_after_the_next_run_drops_nothing() {
    let mut lines = run_of("r0", 0..10, 10, 0);
    lines.push(completed("c0", "src", "r0", 11, None));
    // r1 refreshes half of the assets; its completion has not come yet.
    lines.extend(run_of("r1", 0..5, 20, 100));
    // The same completion again: every r1 asset has last_seen_run r1, so a second sweep of r0
    // would drop t000..t004, which r1 has just seen.
    lines.push(completed("c0", "src", "r0", 11, None));
    let out = run(all_settings(), lines, MemControl::slow(Duration::ZERO));
    assert_eq!(out.dropped_keys(), Vec::<String>::new());
    for k in 0..10 {
        assert!(out.control.record(&format!("src/db/public/t{k:03}")).unwrap().is_live(), "t{k:03}");
    }
    let completed = out.history.iter().filter(|h| h.outcome.as_str() == "completed").count();
    assert_eq!(completed, 1, "the second delivery is not a second completion");
}

#[test]
fn an_older_completion_leaves_assets_touched_after_it() {
    // r0's completion is emitted before r1 refreshes t000..t004 but arrives after it: only the
    // records nothing newer touched are its to drop, and here every one was seen in r0 or later.
    let mut lines = run_of("r0", 0..10, 10, 0);
    lines.extend(run_of("r1", 0..5, 20, 100));
    lines.push(completed("c0", "src", "r0", 11, None));
    let out = run(all_settings(), lines, MemControl::slow(Duration::ZERO));
    assert_eq!(out.dropped_keys(), Vec::<String>::new());
}

#[test]
fn the_drop_guard_weighs_only_what_a_late_completion_drops() {
    // r1 saw t000..t007; its completion is read after r2 refreshed t000..t005. It drops t008
    // and t009, two of ten live assets, which the default guard (half) allows: the six r2
    // refreshed are newer news, neither dropped nor counted as drops.
    let mut lines = run_of("r0", 0..10, 10, 0);
    lines.push(completed("c0", "src", "r0", 11, None));
    lines.extend(run_of("r1", 0..8, 20, 100));
    lines.extend(run_of("r2", 0..6, 30, 200));
    lines.push(completed("c1", "src", "r1", 21, None));
    let out = run(settings(4), lines, MemControl::slow(Duration::ZERO));
    assert!(out.dead_letters.is_empty(), "{:?}", out.dead_letters);
    assert_eq!(out.dropped_keys(), vec!["src/db/public/t008".to_string(), "src/db/public/t009".to_string()]);
}

#[test]
fn a_newer_completion_still_drops_after_an_older_one() {
    let mut lines = run_of("r0", 0..10, 10, 0);
    lines.push(completed("c0", "src", "r0", 11, None));
    lines.extend(run_of("r1", 0..6, 20, 100));
    lines.push(completed("c1", "src", "r1", 21, None));
    let out = run(all_settings(), lines, MemControl::slow(Duration::ZERO));
    let expected: Vec<String> = (6..10).map(|k| format!("src/db/public/t{k:03}")).collect();
    assert_eq!(out.dropped_keys(), expected);
}

/// r0 sees t000..t009, r1 only t000..t004: r1's completion drops t005..t009.
fn two_runs() -> Vec<(u64, String)> {
    let mut lines = run_of("r0", 0..10, 10, 0);
    lines.push(completed("c0", "src", "r0", 11, None));
    lines.extend(run_of("r1", 0..5, 20, 100));
    lines.push(completed("c1", "src", "r1", 21, None));
    lines.into_iter().zip(1..).map(|(l, p)| (p, l)).collect()
}

#[test]
fn an_event_read_again_from_before_the_completion_that_dropped_its_asset_is_a_replay() {
    let mut lines = two_runs();
    // r0's event of t005 at its own offset: the partition read again from an old commit.
    let replay = lines[5].clone();
    assert_eq!(replay.0, 6);
    lines.push(replay);
    let out = run_with(all_settings(), Box::new(VecSource::at_positions(lines)), Backends::default());
    assert_eq!(out.upsert_changes("src/db/public/t005"), vec!["created"], "not created again by the replay");
    assert!(!out.control.record("src/db/public/t005").unwrap().is_live(), "it stays dropped");
    assert_eq!(out.dropped_keys().len(), 5);
}

#[test]
fn the_same_event_delivered_again_later_on_the_partition_brings_the_asset_back() {
    // EVENTS.md as written: a dropped record whose last_seen_at is not later than the event's
    // time is created again; a later re-delivery is news, unlike a replay.
    let mut lines = two_runs();
    let (_, line) = lines[5].clone();
    lines.push((lines.len() as u64 + 1, line));
    let out = run_with(all_settings(), Box::new(VecSource::at_positions(lines)), Backends::default());
    assert_eq!(out.upsert_changes("src/db/public/t005"), vec!["created", "created"]);
    assert!(out.control.record("src/db/public/t005").unwrap().is_live());
}

#[test]
fn an_event_that_brings_its_asset_back_after_each_of_two_drops_decides_twice_under_two_ids() {
    // r0's event of t005, delivered again after r1's completion dropped t005 and again after
    // r2's dropped it once more: two `created` decisions, from the same event and the same
    // dropped hash, which only the drop they follow tells apart.
    let mut lines = two_runs();
    let (_, t005) = lines[5].clone();
    let mut more = vec![t005.clone()];
    more.extend(run_of("r2", 0..5, 30, 300));
    more.push(completed("c2", "src", "r2", 31, None));
    more.push(t005);
    for line in more {
        lines.push((lines.len() as u64 + 1, line));
    }
    let out = run_with(all_settings(), Box::new(VecSource::at_positions(lines)), Backends::default());
    assert_eq!(out.upsert_changes("src/db/public/t005"), vec!["created", "created", "created"]);
    let mut ids: Vec<&str> = out.upserts.iter().chain(&out.drops).filter_map(|d| d["decision_id"].as_str()).collect();
    let all = ids.len();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), all, "every decision has an id of its own");
}
