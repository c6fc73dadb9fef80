//! `expected_assets`: a completion waits for its run's events, or times out into a dead letter.

mod support;

use std::time::{Duration, Instant};

use support::*;

/// Events `{id}{k}` of run `run` of source `s`, one per table `t{k}` of `tables`, emitted at `t`.
fn seen_in(id: &str, run: &str, tables: std::ops::Range<usize>, t: u32) -> Vec<String> {
    tables.map(|k| running(&format!("{id}{k}"), "s", run, &format!("t{k}"), t, "c")).collect()
}

#[test]
fn the_sweep_waits_for_late_events_of_its_run() {
    let mut lines = seen_in("a", "r1", 0..6, 10);
    lines.push(completed("c1", "s", "r1", 11, None));
    // r2 says 4 assets, but two of them arrive after the completion (another partition, say).
    lines.push(running("b0", "s", "r2", "t0", 20, "c"));
    lines.push(running("b1", "s", "r2", "t1", 20, "c"));
    lines.push(completed("c2", "s", "r2", 21, Some(4)));
    lines.push(running("b2", "s", "r2", "t2", 20, "c"));
    lines.push(running("b3", "s", "r2", "t3", 20, "c"));
    let mut s = settings(4);
    s.completion_timeout = Duration::from_secs(30);
    let out = run(s, lines, MemControl::slow(Duration::ZERO));
    assert!(out.dead_letters.is_empty(), "{:?}", out.dead_letters);
    assert_eq!(out.dropped_keys(), vec!["s/db/public/t4".to_string(), "s/db/public/t5".to_string()]);
}

#[test]
fn a_run_that_never_completes_times_out_and_drops_nothing() {
    let mut lines = seen_in("a", "r1", 0..4, 10);
    lines.push(completed("c1", "s", "r1", 11, Some(4)));
    lines.push(running("b0", "s", "r2", "t0", 20, "c"));
    lines.push(running("b1", "s", "r2", "t1", 20, "c"));
    lines.push(running("b2", "s", "r2", "t2", 20, "c"));
    lines.push(completed("c2", "s", "r2", 21, Some(5)));
    let mut s = settings(2);
    s.completion_timeout = Duration::from_millis(500);
    let started = Instant::now();
    let out = run(s, lines, MemControl::slow(Duration::ZERO));
    assert!(started.elapsed() >= Duration::from_millis(500), "the sweep must wait out the timeout");
    assert!(out.drops.is_empty());
    assert_eq!(out.dead_letter_kinds(), vec!["incomplete_run"]);
}

/// r1 over t0..t3 and its completion, then five events of r2: t0; t1 twice (b1 at 20, then
/// b1x at 25: the record shows only the later); t2 twice in the wrong order (b2 at 26, then
/// b2old at 22: stale).
fn r2_with_a_second_and_a_stale_event() -> Vec<String> {
    let mut lines = seen_in("a", "r1", 0..4, 10);
    lines.push(completed("c1", "s", "r1", 11, None));
    lines.push(running("b0", "s", "r2", "t0", 20, "c"));
    lines.push(running("b1", "s", "r2", "t1", 20, "c"));
    lines.push(running("b1x", "s", "r2", "t1", 25, "c2"));
    lines.push(running("b2", "s", "r2", "t2", 26, "c"));
    lines.push(running("b2old", "s", "r2", "t2", 22, "c"));
    lines
}

#[test]
fn a_stale_or_repeated_event_of_the_run_counts_and_an_exact_redelivery_does_not() {
    // EVENTS.md §3.3 counts the run's running events that were applied. Run r2 emits five
    // over three assets: counting records would wait for five forever; counting events
    // completes at once.
    let mut lines = r2_with_a_second_and_a_stale_event();
    // An exact re-delivery of b0: the same event, counted once.
    lines.push(running("b0", "s", "r2", "t0", 20, "c"));
    lines.push(completed("c2", "s", "r2", 30, Some(5)));
    let mut s = settings(2);
    s.completion_timeout = Duration::from_secs(20);
    let started = Instant::now();
    let out = run(s, lines.clone(), MemControl::slow(Duration::ZERO));
    assert!(out.dead_letters.is_empty(), "{:?}", out.dead_letters);
    assert!(started.elapsed() < Duration::from_secs(10), "completed on time, not at the time-out");
    assert_eq!(out.dropped_keys(), vec!["s/db/public/t3".to_string()]);
    // The markers are not assets: nothing but the four tables is in the catalog.
    let assets: Vec<String> =
        out.control.records.lock().unwrap().values().filter(|r| r.is_asset()).map(|r| r.asset_key.clone()).collect();
    assert_eq!(assets.len(), 4, "{assets:?}");

    // One more than were emitted: the re-delivered b0 does not make up the difference.
    let mut short = lines;
    short.pop();
    short.push(completed("c2", "s", "r2", 30, Some(6)));
    let mut s = settings(2);
    s.completion_timeout = Duration::from_millis(500);
    let out = run(s, short, MemControl::slow(Duration::ZERO));
    assert_eq!(out.dead_letter_kinds(), vec!["incomplete_run"]);
}

#[test]
fn an_event_replaced_in_its_run_and_delivered_again_counts_once() {
    // r2 sees t0 once and t1 twice (b1 at 20, then b1x at 25 with other content): three
    // events; t1's record shows b1x, and a marker stands for b1. b1 delivered again after both
    // is stale, and the event that marker stands for: three events still, never four.
    for (expected, kinds) in [(3, vec![]), (4, vec!["incomplete_run"])] {
        let mut lines = seen_in("a", "r1", 0..2, 10);
        lines.push(completed("c1", "s", "r1", 11, None));
        lines.push(running("b0", "s", "r2", "t0", 20, "c"));
        lines.push(running("b1", "s", "r2", "t1", 20, "c"));
        lines.push(running("b1x", "s", "r2", "t1", 25, "c2"));
        lines.push(running("b1", "s", "r2", "t1", 20, "c"));
        lines.push(completed("c2", "s", "r2", 30, Some(expected)));
        let mut s = settings(2);
        s.completion_timeout = Duration::from_millis(500);
        let out = run(s, lines, MemControl::slow(Duration::ZERO));
        assert_eq!(out.dead_letter_kinds(), kinds, "expected_assets {expected}");
    }
}

#[test]
fn a_late_event_of_the_run_does_not_overtake_the_next_completion() {
    // r1's completion waits for a fourth asset (t3) that its partition delivers only after
    // r2's completion. Read in order, r2's completion is swept before t3 exists: it drops t1
    // and t2, and r1's completion, still short of its count, times out. Let through early, t3
    // would complete r1 and then be dropped by r2, whose sweep comes before it in the input.
    let mut lines = seen_in("a", "r1", 0..3, 10);
    lines.push(completed("c1", "s", "r1", 11, Some(4)));
    lines.push(running("b0", "s", "r2", "t0", 20, "c"));
    lines.push(completed("c2", "s", "r2", 21, None));
    lines.push(running("a3", "s", "r1", "t3", 12, "c"));
    let mut s = settings(2);
    s.max_drop_fraction = 1.0;
    s.completion_timeout = Duration::from_millis(500);
    let out = run(s, lines, MemControl::slow(Duration::ZERO));
    assert_eq!(out.dead_letter_kinds(), vec!["incomplete_run"]);
    assert_eq!(out.dropped_keys(), vec!["s/db/public/t1".to_string(), "s/db/public/t2".to_string()]);
    assert!(out.control.record("s/db/public/t3").unwrap().is_live(), "t3 arrives after both sweeps");
}

#[test]
fn a_late_event_from_another_partition_still_completes_its_run() {
    // The same stream, but t3 comes on a partition of its own: nothing read before it there is
    // held, so it passes, r1 completes with its four assets, and r2's sweep comes after it.
    let mut lines = seen_in("a", "r1", 0..3, 10).into_iter().map(|l| ("0", l)).collect::<Vec<_>>();
    lines.push(("0", completed("c1", "s", "r1", 11, Some(4))));
    lines.push(("0", running("b0", "s", "r2", "t0", 20, "c")));
    lines.push(("0", completed("c2", "s", "r2", 21, None)));
    lines.push(("1", running("a3", "s", "r1", "t3", 12, "c")));
    let mut s = settings(2);
    s.max_drop_fraction = 1.0;
    s.completion_timeout = Duration::from_secs(20);
    let started = Instant::now();
    let out = run_with(s, Box::new(VecSource::across_partitions(lines)), Backends::default());
    assert!(out.dead_letters.is_empty(), "{:?}", out.dead_letters);
    assert!(started.elapsed() < Duration::from_secs(10), "r1 completed on its fourth asset, not at the time-out");
    let expected: Vec<String> = (1..4).map(|k| format!("s/db/public/t{k}")).collect();
    assert_eq!(out.dropped_keys(), expected);
}

#[test]
fn a_completion_read_again_after_its_run_moved_on_is_not_waited_for() {
    // A crash after r2 was applied, before the partition's position passed r1's completion:
    // r1's events and its completion are read again. Every r1 record is r2's now and the
    // replayed events are replays (stale, not counted), so r1's count never comes back; the
    // completion's mark says it was applied, and that is the answer, not a time-out.
    let mut lines = seen_in("a", "r1", 0..4, 10);
    lines.push(completed("c1", "s", "r1", 11, Some(4)));
    lines.extend(seen_in("b", "r2", 0..4, 20));
    let mut positioned: Vec<(u64, String)> = lines.into_iter().zip(1..).map(|(l, p)| (p, l)).collect();
    let replay: Vec<(u64, String)> = positioned[..5].to_vec();
    positioned.extend(replay);
    let mut s = settings(2);
    s.completion_timeout = Duration::from_secs(20);
    let started = Instant::now();
    let out = run_with(s, Box::new(VecSource::at_positions(positioned)), Backends::default());
    assert!(out.dead_letters.is_empty(), "{:?}", out.dead_letters);
    assert!(started.elapsed() < Duration::from_secs(10), "decided by its mark, not at the time-out");
    assert!(out.drops.is_empty());
}

#[test]
fn a_completion_read_after_the_next_run_moved_its_assets_on_still_counts_them() {
    // r1's completion reaches the service late, after r2's events (its crawler's last write
    // was slow, say). Its four events were applied, but two of its records are r2's by then:
    // each left a marker of the r1 event it showed as it moved on, so r1 completes at once.
    // In every kind of store: none of the unchanged assets' fast ways may skip the markers.
    for control in controls() {
        r1_after_a_completed_r0(&control);
        r1_completes_late_and_counts(control);
    }
}

#[test]
fn a_first_runs_completion_read_after_the_next_run_began_still_counts() {
    // The same late completion on a source's first run: it has no completion mark yet, and
    // its first run, kept before its first event was routed, is the run whose records leave
    // markers. In one stream, r2's events close behind r1's (in r1's batches, even).
    for control in controls() {
        let mut lines = seen_in("a", "r1", 0..4, 10);
        lines.extend(seen_in("b", "r2", 0..2, 20));
        lines.push(completed("c1", "s", "r1", 11, Some(4)));
        lines.push(completed("c2", "s", "r2", 21, Some(2)));
        let mut s = settings(2);
        s.completion_timeout = Duration::from_secs(20);
        let started = Instant::now();
        let out = run(s, lines, control.clone());
        assert!(out.dead_letters.is_empty(), "{:?}", out.dead_letters);
        assert!(started.elapsed() < Duration::from_secs(10), "counted at once, not at the time-out");
        assert_eq!(out.dropped_keys(), vec!["s/db/public/t2".to_string(), "s/db/public/t3".to_string()]);
        let kept = control.record("s#first-run").map(|r| r.content_ref);
        assert_eq!(kept, Some(Some("r1".to_owned())), "the first run is kept");
    }
}

#[test]
fn a_source_that_never_completes_leaves_markers_for_its_first_run_alone() {
    // Three runs and no completion: r2 moving r1's records on leaves a marker each (r1's
    // completion may yet come), r3 moving r2's leaves none, and where the store can, r3's
    // unchanged assets move their run stamps alone, as on any steady crawl.
    for control in controls() {
        for (run_id, t) in [("r1", 10), ("r2", 20), ("r3", 30)] {
            let out = run(settings(2), seen_in(run_id, run_id, 0..4, t), control.clone());
            assert!(out.dead_letters.is_empty(), "{:?}", out.dead_letters);
        }
        assert_eq!(markers_of(&control), vec!["r1"; 4]);
        if control.stamped {
            assert_eq!(control.touches.load(std::sync::atomic::Ordering::SeqCst), 4, "r3 moved run stamps alone");
        }
    }
}

#[test]
fn an_event_moved_on_and_delivered_again_counts_once() {
    // As above, but r1's event of t0 comes again after r2 moved t0 on: stale, and the event
    // its moved-on marker counted already. A completion that says five waits for a fifth.
    for control in controls() {
        r1_after_a_completed_r0(&control);
        let mut lines = seen_in("b", "r2", 0..2, 20);
        lines.push(running("a0", "s", "r1", "t0", 10, "c"));
        lines.push(completed("c1", "s", "r1", 11, Some(5)));
        let mut s = settings(2);
        s.completion_timeout = Duration::from_millis(500);
        let out = run(s, lines, control);
        assert_eq!(out.dead_letter_kinds(), vec!["incomplete_run"]);
        assert!(out.drops.is_empty());
    }
}

#[test]
fn a_steady_crawl_after_its_last_completion_leaves_no_markers() {
    // The other side of the markers: a record whose run's completion was applied has been
    // counted, and moving it on writes nothing but its run stamp.
    for control in controls() {
        let mut lines = seen_in("a", "r1", 0..4, 10);
        lines.push(completed("c1", "s", "r1", 11, Some(4)));
        run(settings(2), lines, control.clone());
        let mut lines = seen_in("b", "r2", 0..4, 20);
        lines.push(completed("c2", "s", "r2", 21, Some(4)));
        let out = run(settings(2), lines, control.clone());
        assert!(out.dead_letters.is_empty(), "{:?}", out.dead_letters);
        assert_eq!(markers_of(&out.control), Vec::<String>::new());
        if control.stamped {
            assert_eq!(control.touches.load(std::sync::atomic::Ordering::SeqCst), 4, "r2 moved run stamps alone");
        }
    }
}

#[test]
fn an_applied_completion_removes_the_event_markers_no_completion_still_counts() {
    // r2 leaves two event markers (t1's first event, replaced by a second; t2's stale one), and
    // r1, completed before r2 began, one (its event of t0 read again after r2 moved t0 on).
    // r2's completion counts its two, then removes all three: r2's completion is decided by
    // its mark from then on, and r1's is older news. Kept, they would pile up run after run.
    let mut lines = r2_with_a_second_and_a_stale_event();
    lines.push(running("b3", "s", "r2", "t3", 20, "c"));
    lines.push(running("a0", "s", "r1", "t0", 10, "c"));
    for control in controls() {
        let mut these = lines.clone();
        these.push(completed("c2", "s", "r2", 30, Some(6)));
        let mut s = settings(2);
        s.completion_timeout = Duration::from_secs(20);
        let out = run(s, these, control.clone());
        assert!(out.dead_letters.is_empty(), "{:?}", out.dead_letters);
        assert_eq!(event_markers_of(&control), Vec::<String>::new());
    }
    // A completion that times out is not applied: the markers stay for its redrive to count.
    for control in controls() {
        let mut these = lines.clone();
        these.push(completed("c2", "s", "r2", 30, Some(7)));
        let mut s = settings(2);
        s.completion_timeout = Duration::from_millis(300);
        let out = run(s, these, control.clone());
        assert_eq!(out.dead_letter_kinds(), vec!["incomplete_run"]);
        let mut left = event_markers_of(&control);
        left.sort();
        assert_eq!(left, vec!["r1", "r2", "r2"]);
    }
}

#[test]
fn a_record_dropped_while_it_showed_a_run_to_complete_still_counts_for_it_once_created_again() {
    // r3's events are read before r2's completion, and t0's was emitted no later than it, so
    // r2 drops t0 (§3.2) while its record shows r3's event, which r3 counts as a dropped
    // record does. Then r4 creates t0 again before r3's completion comes (late, counting
    // two): the record no longer shows r3's event, and a moved-on marker must, as it does
    // when a live record moves on. Found by the reference model (seed 30074).
    let mut lines = seen_in("a", "r1", 0..3, 1);
    lines.push(completed("c1", "s", "r1", 3, None));
    lines.push(running("b1", "s", "r2", "t1", 4, "c"));
    lines.push(running("d0", "s", "r3", "t0", 5, "c"));
    lines.push(running("d2", "s", "r3", "t2", 6, "c"));
    lines.push(completed("c2", "s", "r2", 5, None));
    lines.push(running("e1", "s", "r4", "t1", 35, "c"));
    lines.push(running("e0", "s", "r4", "t0", 35, "c"));
    lines.push(completed("c3", "s", "r3", 7, Some(2)));
    for control in controls() {
        let mut s = settings(2);
        s.completion_timeout = Duration::from_millis(500);
        let out = run(s, lines.clone(), control);
        assert!(out.dead_letters.is_empty(), "{:?}", out.dead_letters);
        assert_eq!(out.dropped_keys(), vec!["s/db/public/t0".to_string()]);
    }
}

/// The run of each event marker in `control`.
fn event_markers_of(control: &MemControl) -> Vec<String> {
    let records = control.records.lock().unwrap();
    records.values().filter(|r| r.is_event_marker()).map(|r| r.last_seen_run.clone()).collect()
}

/// A store that rewrites records, one that moves run stamps alone for records it read, and
/// one whose index answers for them without a read.
fn controls() -> [std::sync::Arc<MemControl>; 3] {
    let stamped = MemControl { stamped: true, ..Default::default() };
    [MemControl::slow(Duration::ZERO), std::sync::Arc::new(stamped), MemControl::indexed(Duration::ZERO)]
}

/// Runs r0 of four assets and its completion, then r1 over the same four, without its
/// completion, into `control`: in a run of the service of their own, so that the next run's
/// events are decided in batches of their own, where a store's index answers for them.
fn r1_after_a_completed_r0(control: &std::sync::Arc<MemControl>) {
    let mut lines = seen_in("z", "r0", 0..4, 1);
    lines.push(completed("c0", "s", "r0", 2, Some(4)));
    lines.extend(seen_in("a", "r1", 0..4, 10));
    let first = run(settings(2), lines, control.clone());
    assert!(first.dead_letters.is_empty() && first.drops.is_empty());
}

/// The run of each run-event marker in `control` (not the first-run record, which counts for
/// no run).
fn markers_of(control: &MemControl) -> Vec<String> {
    let records = control.records.lock().unwrap();
    records
        .values()
        .filter(|r| r.is_run_event() && !r.last_seen_run.is_empty())
        .map(|r| r.last_seen_run.clone())
        .collect()
}

/// Two events of r2, then r1's completion (four assets) read late, then r2's (two), into
/// `control`, where r1's four events were applied: r1 completes at once, dropping nothing (r2
/// refreshed two of its assets after it, the other two are its own), and r2 drops the two it
/// did not see.
fn r1_completes_late_and_counts(control: std::sync::Arc<MemControl>) {
    let mut lines = seen_in("b", "r2", 0..2, 20);
    lines.push(completed("c1", "s", "r1", 11, Some(4)));
    lines.push(completed("c2", "s", "r2", 21, Some(2)));
    let mut s = settings(2);
    s.completion_timeout = Duration::from_secs(20);
    let started = Instant::now();
    let out = run(s, lines, control);
    assert!(out.dead_letters.is_empty(), "{:?}", out.dead_letters);
    assert!(started.elapsed() < Duration::from_secs(10), "counted at once, not at the time-out");
    assert_eq!(out.dropped_keys(), vec!["s/db/public/t2".to_string(), "s/db/public/t3".to_string()]);
    assert!(out.drops.iter().all(|d| d["event_id"] == "c2"), "{:?}", out.drops);
}
