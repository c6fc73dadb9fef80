//! Fault injection on every port: an error on the Nth call, a panic, a hang past the call
//! timeout. Transient faults are retried away (same decisions as a clean run, no dead letter);
//! a backend that stays down dead-letters what it blocks, and nothing is lost either way. A
//! slow backend that bounds its calls gets batches split to that bound, so that a batch grown
//! while it was slow never needs longer than one attempt's timeout.

mod support;

use std::collections::BTreeSet;
use std::sync::Arc;

use serde_json::Value;
use support::*;

fn stream() -> Vec<String> {
    let mut lines = Vec::new();
    for run in 0..3u32 {
        for k in 0..40 {
            if run == 2 && k % 10 == 0 {
                continue; // dropped by run 2's completion
            }
            let content = if k % 7 == run as usize { format!("v{run}") } else { "v".into() };
            lines.push(running(
                &format!("r{run}-e{k}"),
                "s",
                &format!("r{run}"),
                &format!("t{k:02}"),
                run * 100 + 1,
                &content,
            ));
        }
        lines.push(completed(&format!("r{run}-done"), "s", &format!("r{run}"), run * 100 + 50, None));
    }
    lines
}

fn fast_settings() -> assetflow_actors::pipeline::Settings {
    quick_retries(4, 4)
}

fn ids(v: &[Value]) -> BTreeSet<String> {
    v.iter().map(|r| r["decision_id"].as_str().unwrap_or_default().to_owned()).collect()
}

fn faulty(port: &str, fault: Arc<Fault>) -> Backends {
    let mut b = Backends::default();
    match port {
        "control" => b.control = Arc::new(MemControl { fault: Some(fault), ..Default::default() }),
        "content" => b.content = Arc::new(MemContent { fault: Some(fault), ..Default::default() }),
        "history" => b.history = Arc::new(MemHistory { fault: Some(fault), ..Default::default() }),
        "lookup" => b.lookup = Arc::new(MemLookup { fault: Some(fault), ..Default::default() }),
        "upsert sink" => b.upserts = Arc::new(MemSink { fault: Some(fault), ..Default::default() }),
        "drop sink" => b.drops = Arc::new(MemSink { fault: Some(fault), ..Default::default() }),
        other => panic!("no port {other}"),
    }
    b
}

#[test]
fn transient_faults_on_any_port_change_nothing() {
    let clean = run_with(fast_settings(), Box::new(VecSource::new(stream())), Backends::default());
    assert!(!clean.drops.is_empty() && clean.upserts.len() > 40);
    for port in ["control", "content", "history", "lookup", "upsert sink", "drop sink"] {
        for mode in [FaultMode::Error, FaultMode::Panic, FaultMode::Hang] {
            // The drop producer may coalesce a completion's drops into one call: fail the first.
            let nth = if port == "drop sink" { 1 } else { 2 };
            let fault = Fault::new(mode, nth);
            let out = run_with(fast_settings(), Box::new(VecSource::new(stream())), faulty(port, fault.clone()));
            let what = format!("{mode:?} on call {nth} of {port}");
            assert!(fault.calls() >= nth, "{what}: the fault never fired");
            assert!(out.dead_letters.is_empty(), "{what}: {:?}", out.dead_letters);
            assert_eq!(ids(&out.upserts), ids(&clean.upserts), "{what}: upserts differ");
            assert_eq!(ids(&out.drops), ids(&clean.drops), "{what}: drops differ");
        }
    }
}

/// Each event's decision as history records it: (event, outcome, decision id).
fn decisions(out: &Run) -> BTreeSet<(String, String, String)> {
    out.history
        .iter()
        .map(|h| (h.event_id.clone().unwrap_or_default(), h.outcome.as_str().to_owned(), h.decision_id.clone()))
        .collect()
}

#[test]
fn a_control_write_whose_reply_is_lost_is_recognised_as_landed() {
    // The write lands and its reply is lost; the retry then finds the versions moved. Deciding
    // the batch again against what is now stored would call its own writes "unchanged", after
    // their upserts went out as "created": history must still say what was published.
    let clean = run_with(fast_settings(), Box::new(VecSource::new(stream())), Backends::default());
    for nth in [1, 2, 5] {
        let fault = Fault::new(FaultMode::LostReply, nth);
        let out = run_with(fast_settings(), Box::new(VecSource::new(stream())), faulty("control", fault.clone()));
        assert!(fault.calls() >= nth, "the fault never fired");
        assert!(out.dead_letters.is_empty(), "{:?}", out.dead_letters);
        assert_eq!(ids(&out.upserts), ids(&clean.upserts), "lost reply on write {nth}: upserts differ");
        assert_eq!(ids(&out.drops), ids(&clean.drops), "lost reply on write {nth}: drops differ");
        assert_eq!(decisions(&out), decisions(&clean), "lost reply on write {nth}: history differs");
    }
}

#[test]
fn a_backend_that_stays_down_dead_letters_and_loses_nothing() {
    // The control store fails for good from its 5th call: whatever it blocks is dead-lettered
    // with stage and kind, every event is either decided or dead-lettered, and the run drains.
    let fault = Fault::new(FaultMode::ErrorForever, 5);
    let lines = stream();
    let total = lines.len();
    let out = run_with(fast_settings(), Box::new(VecSource::new(lines)), faulty("control", fault));
    let backend: Vec<&Value> = out.dead_letters.iter().filter(|d| d["error"]["kind"] == "backend").collect();
    assert!(!backend.is_empty());
    for d in &backend {
        assert_eq!(d["stage"], "decide", "{d}");
        assert!(d["error"]["message"].as_str().unwrap_or_default().contains("control"), "{d}");
    }
    // With the assets of a run dead-lettered, its completion may trip the guard: that is right.
    assert!(out.dead_letters.iter().all(|d| d["error"]["kind"] == "backend" || d["error"]["kind"] == "drop_guard"));
    let decided: BTreeSet<String> =
        out.history.iter().filter(|h| h.outcome.as_str() != "dead_letter").filter_map(|h| h.event_id.clone()).collect();
    let dead: BTreeSet<String> =
        out.dead_letters.iter().filter_map(|d| d["event_id"].as_str().map(str::to_owned)).collect();
    let accounted = decided.union(&dead).count();
    assert_eq!(accounted, total, "every event is decided or dead-lettered");
}

#[test]
fn a_panicking_batch_is_delivered_again_not_dropped() {
    // A panic outside any retried call takes down a whole micro-batch; the shard recovers and
    // delivers the batch's events again, one by one: same decisions as a clean run.
    let clean = run_with(fast_settings(), Box::new(VecSource::new(stream())), Backends::default());
    let fault = Fault::new(FaultMode::Panic, 3);
    let content = Arc::new(MemContent { ref_panic: Some(fault.clone()), ..Default::default() });
    let out =
        run_with(fast_settings(), Box::new(VecSource::new(stream())), Backends { content, ..Backends::default() });
    assert!(fault.calls() >= 3, "the panic never fired");
    assert!(out.dead_letters.is_empty(), "{:?}", out.dead_letters);
    assert_eq!(ids(&out.upserts), ids(&clean.upserts));
    assert_eq!(ids(&out.drops), ids(&clean.drops));
}

#[test]
fn a_poison_event_is_dead_lettered_and_the_rest_go_on() {
    let poison = "s/db/public/t05".to_string();
    let content = Arc::new(MemContent { poison_key: Some(poison.clone()), ..Default::default() });
    let out =
        run_with(fast_settings(), Box::new(VecSource::new(stream())), Backends { content, ..Backends::default() });
    let panics: Vec<&Value> = out.dead_letters.iter().filter(|d| d["error"]["kind"] == "panic").collect();
    assert!(!panics.is_empty());
    assert!(panics.iter().all(|d| d["asset_key"] == poison.as_str() && d["stage"] == "decide"), "{panics:?}");
    // Every other asset was created.
    let created: BTreeSet<String> = out
        .upserts
        .iter()
        .filter(|u| u["change"] == "created")
        .map(|u| u["asset_key"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(created.len(), 39, "{created:?}");
}

#[test]
fn a_completion_whose_dropped_rows_failed_drops_again_with_the_same_ids() {
    // The first delivery of r2's completion publishes its drops, then cannot write their
    // history rows (as a process killed just then). Delivered again, it must not find those
    // assets dropped already (their rows would then never be written): it drops them again,
    // with the ids the first drops went out with, and writes their rows.
    let b = Backends::default();
    *b.history.refused.lock().unwrap() = vec!["dropped"];
    let (control, history) = (b.control.clone(), b.history.clone());
    let first = run_with(fast_settings(), Box::new(VecSource::new(stream())), b);
    let dropped = ids(&first.drops);
    assert_eq!(dropped.len(), 4, "r2's completion drops t00, t10, t20, t30: {:?}", first.drops);
    assert!(first.dead_letters.iter().any(|d| d["event_id"] == "r2-done"), "{:?}", first.dead_letters);
    assert!(first.history.iter().all(|h| h.outcome.as_str() != "dropped"));

    history.refused.lock().unwrap().clear();
    let again = vec![stream().pop().expect("the stream ends with r2's completion")];
    let b = Backends { control: control.clone(), history: history.clone(), ..Backends::default() };
    let second = run_with(fast_settings(), Box::new(VecSource::new(again)), b);
    assert!(second.dead_letters.is_empty(), "{:?}", second.dead_letters);
    assert_eq!(ids(&second.drops), dropped, "the same drops, with the same ids");
    let rows: BTreeSet<String> =
        second.history.iter().filter(|h| h.outcome.as_str() == "dropped").map(|h| h.decision_id.clone()).collect();
    assert_eq!(rows, dropped, "each drop's row, with the id its drop was published with");
    assert!(second.history.iter().any(|h| h.outcome.as_str() == "completed"));
    // Applied now: a third delivery is covered and writes nothing more.
    let b = Backends { control, history, ..Backends::default() };
    let third = run_with(fast_settings(), Box::new(VecSource::new(vec![stream().pop().unwrap()])), b);
    assert!(third.drops.is_empty());
    assert_eq!(third.history.iter().filter(|h| h.outcome.as_str() == "dropped").count(), 4);
}

#[test]
fn a_batch_whose_history_failed_leaves_its_published_decisions_in_history_when_delivered_again() {
    // The first run's history is down: every batch publishes its upserts, then cannot write its
    // rows (as a process killed just then), and is dead-lettered. Delivered again, each event
    // must leave the row of the decision that went out, with its id, not a second opinion
    // formed against records the first delivery wrote.
    let lines: Vec<String> = stream().into_iter().take(40).collect();
    let b = Backends::default();
    *b.history.refused.lock().unwrap() = vec!["created"];
    let (control, content) = (b.control.clone(), b.content.clone());
    let first = run_with(fast_settings(), Box::new(VecSource::new(lines.clone())), b);
    assert_eq!(first.upserts.len(), 40, "every asset is new");
    assert_eq!(first.dead_letters.len(), 40, "{:?}", first.dead_letters);
    assert!(first.dead_letters.iter().all(|d| d["stage"] == "history"), "{:?}", first.dead_letters);

    let b = Backends { control, content, ..Backends::default() };
    let second = run_with(fast_settings(), Box::new(VecSource::new(lines)), b);
    assert!(second.dead_letters.is_empty(), "{:?}", second.dead_letters);
    let rows: BTreeSet<String> = second.history.iter().map(|h| h.decision_id.clone()).collect();
    let published = ids(&first.upserts);
    let missing: Vec<&String> = published.difference(&rows).collect();
    assert!(missing.is_empty(), "published upserts with no history row: {missing:?}");
}

#[test]
fn a_slow_sink_and_history_get_calls_no_larger_than_they_take() {
    // 20 ms a record against a 300 ms timeout per attempt: a call of more than 15 records can
    // never answer in time. Both ports say 5; while one write is out the producer's and the
    // history writer's queues grow past that. Unsplit, every attempt of such a write times out:
    // its events are dead-lettered, and the dead letters' own writes, which never give up,
    // time out too, so the run never drains (tried: `run_with`'s two minutes run out).
    let clean = run_with(fast_settings(), Box::new(VecSource::new(stream())), Backends::default());
    let slow = std::time::Duration::from_millis(20);
    let b = Backends {
        upserts: Arc::new(MemSink { per_record: slow, max_batch: 5, ..Default::default() }),
        history: Arc::new(MemHistory { per_row: slow, max_batch: 5, ..Default::default() }),
        ..Backends::default()
    };
    let (upserts, history) = (b.upserts.clone(), b.history.clone());
    let out = run_with(fast_settings(), Box::new(VecSource::new(stream())), b);
    assert!(out.dead_letters.is_empty(), "{:?}", out.dead_letters);
    assert_eq!(ids(&out.upserts), ids(&clean.upserts));
    assert_eq!(decisions(&out), decisions(&clean));
    let (sends, appends) = (upserts.calls.lock().unwrap().clone(), history.calls.lock().unwrap().clone());
    assert!(sends.iter().all(|&n| n <= 5) && appends.iter().all(|&n| n <= 5), "{sends:?} {appends:?}");
}

#[test]
fn a_control_store_that_bounds_its_batches_is_read_and_written_within_the_bound() {
    // A slow store: the shard's queue grows past the bound while a batch is out. Batches are
    // cut at the bound, in order, and decide what one unbounded batch would.
    let clean = run_with(fast_settings(), Box::new(VecSource::new(stream())), Backends::default());
    let control =
        Arc::new(MemControl { delay: std::time::Duration::from_millis(20), max_batch: 4, ..Default::default() });
    let b = Backends { control: control.clone(), ..Backends::default() };
    // One shard, so that its queue has every event behind the batch that is out.
    let out = run_with(quick_retries(1, 4), Box::new(VecSource::new(stream())), b);
    assert!(out.dead_letters.is_empty(), "{:?}", out.dead_letters);
    assert_eq!(decisions(&out), decisions(&clean));
    // Each read also asks for the source's completion mark and first run: four records, the
    // mark and the first run.
    let reads = control.reads.lock().unwrap().clone();
    assert!(reads.iter().all(|&n| n <= 6), "{reads:?}");
}
