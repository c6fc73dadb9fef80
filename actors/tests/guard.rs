//! The drop guard: a completion that would drop more than `max_drop_fraction` of its source's
//! live assets drops nothing and is dead-lettered instead.

mod support;

use std::time::Duration;

use assetflow_actors::pipeline::Settings;
use support::*;

fn crawl(seen_second_time: usize, fraction: f64) -> Run {
    run(guarded_at(fraction), crawl_lines(seen_second_time), MemControl::slow(Duration::ZERO))
}

/// Four shards, the guard at `fraction`.
fn guarded_at(fraction: f64) -> Settings {
    let mut s = settings(4);
    s.max_drop_fraction = fraction;
    s
}

/// Ten assets seen by a first run, `seen_second_time` of them by the second.
fn crawl_lines(seen_second_time: usize) -> Vec<String> {
    let mut lines = Vec::new();
    for k in 0..10 {
        lines.push(running(&format!("a{k}"), "s", "r1", &format!("t{k}"), 10, "c"));
    }
    lines.push(completed("c1", "s", "r1", 11, None));
    for k in 0..seen_second_time {
        lines.push(running(&format!("b{k}"), "s", "r2", &format!("t{k}"), 20, "c"));
    }
    lines.push(completed("c2", "s", "r2", 21, None));
    lines
}

#[test]
fn exactly_the_fraction_is_allowed() {
    let out = crawl(5, 0.5);
    assert_eq!(out.drops.len(), 5);
    assert!(out.dead_letters.is_empty());
}

#[test]
fn over_the_fraction_drops_nothing() {
    let out = crawl(4, 0.5);
    assert!(out.drops.is_empty(), "{:?}", out.drops);
    assert_eq!(out.dead_letter_kinds(), vec!["drop_guard"]);
    assert_eq!(out.dead_letters[0]["event_id"], "c2");
    assert!(out.control.record("s/db/public/t9").unwrap().is_live());
}

#[test]
fn one_turns_the_guard_off() {
    let out = crawl(0, 1.0);
    assert_eq!(out.drops.len(), 10);
}

/// A process can die after the `guarded` completion mark is durable and before the guard's
/// dead letter is: the completion, never acknowledged, is delivered again, and the mark must
/// not make it pass silently. The second delivery here reads the same input from the start
/// over the first one's store (its mark) but not its dead letters, as a restart after such a
/// crash does; events after the completion, applied before the crash, have moved the store
/// on (five new assets), yet the dead letter must read as the first one did.
#[test]
fn a_guarded_completion_delivered_again_is_dead_lettered_again() {
    let first = crawl(4, 0.5);
    assert_eq!(first.dead_letter_kinds(), vec!["drop_guard"]);
    let s = guarded_at(0.5);
    let later = (0..5).map(|k| running(&format!("n{k}"), "s", "r3", &format!("u{k}"), 30, "c")).collect();
    let moved_on = run(s.clone(), later, first.control.clone());
    assert_eq!(moved_on.upserts.len(), 5);
    let again = run(s, crawl_lines(4), first.control.clone());
    assert!(again.drops.is_empty(), "{:?}", again.drops);
    assert_eq!(again.dead_letter_kinds(), vec!["drop_guard"]);
    assert_eq!(again.dead_letters[0]["decision_id"], first.dead_letters[0]["decision_id"]);
    assert_eq!(again.dead_letters[0]["error"], first.dead_letters[0]["error"]);
}
