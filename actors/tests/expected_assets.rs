//! `expected_assets`: a completion waits for its run's events, or times out into a dead letter.

mod support;

use std::time::{Duration, Instant};

use support::*;

#[test]
fn the_sweep_waits_for_late_events_of_its_run() {
    let mut lines = Vec::new();
    for k in 0..6 {
        lines.push(running(&format!("a{k}"), "s", "r1", &format!("t{k}"), 10, "c"));
    }
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
    let mut lines = Vec::new();
    for k in 0..4 {
        lines.push(running(&format!("a{k}"), "s", "r1", &format!("t{k}"), 10, "c"));
    }
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
