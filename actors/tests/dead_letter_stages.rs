//! A dead letter at each stage past validation: an outage of the enricher's lookup, of the
//! upsert sink, or of the history store that outlasts the retries dead-letters what it blocks,
//! at its stage (`enrich`, `publish`, `history`), with its source and run. Every event is
//! decided or dead-lettered, and each dead letter has its history row: it is acknowledged only
//! once both are durable.

mod support;

use std::collections::BTreeSet;
use std::sync::Arc;

use serde_json::Value;
use support::*;

fn stream() -> Vec<String> {
    let mut lines = Vec::new();
    for run in 0..2u32 {
        for k in 0..30 {
            let content = if k % 5 == run as usize { format!("v{run}") } else { "v".into() };
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

const ATTEMPTS: u64 = 3;

/// Runs the stream with one port out for one call's retries, from its `nth` call.
fn outage(port: &str, nth: u64) -> Run {
    let fault = Fault::new(FaultMode::ErrorFor(ATTEMPTS), nth);
    let mut b = Backends::default();
    match port {
        "lookup" => b.lookup = Arc::new(MemLookup { fault: Some(fault.clone()), ..Default::default() }),
        "upsert sink" => b.upserts = Arc::new(MemSink { fault: Some(fault.clone()), ..Default::default() }),
        "history" => b.history = Arc::new(MemHistory { fault: Some(fault.clone()), ..Default::default() }),
        other => panic!("no port {other}"),
    }
    let mut settings = quick_retries(2, ATTEMPTS as u32);
    // A lookup per asset: the Enricher looks a batch's distinct keys up once each, and with
    // the table in the key the outage hits exactly one event.
    settings.lookup_pointers.push("/asset/table".into());
    let out = run_with(settings, Box::new(VecSource::new(stream())), b);
    // Calls nth to nth + ATTEMPTS - 1 fail (`FaultMode::ErrorFor`): the outage happened once the
    // last of them was made. Asking for one call more failed whenever the whole stream was
    // published in two batches (the second one's three attempts being the last calls).
    let last_failing = nth + ATTEMPTS - 1;
    assert!(fault.calls() >= last_failing, "{port}: the outage never happened ({} calls)", fault.calls());
    out
}

/// The dead letters of `stage`, checked: kind `backend`, the backend named, source and run
/// kept; every event decided or dead-lettered; every dead letter in history.
fn dead_at(out: &Run, stage: &str, backend: &str) -> Vec<Value> {
    let letters: Vec<Value> = out.dead_letters.iter().filter(|d| d["stage"] == stage).cloned().collect();
    assert!(!letters.is_empty(), "no dead letter at {stage}: {:?}", out.dead_letters);
    for d in &letters {
        assert_eq!(d["error"]["kind"], "backend", "{d}");
        assert!(d["error"]["message"].as_str().unwrap_or_default().contains(backend), "{d}");
        assert_eq!(
            (d["source"].as_str(), d["run_id"].as_str().map(|r| r.starts_with('r'))),
            (Some("s"), Some(true)),
            "{d}"
        );
    }
    let decided: BTreeSet<String> =
        out.history.iter().filter(|h| h.outcome.as_str() != "dead_letter").filter_map(|h| h.event_id.clone()).collect();
    let dead: BTreeSet<String> =
        out.dead_letters.iter().filter_map(|d| d["event_id"].as_str().map(str::to_owned)).collect();
    assert_eq!(decided.union(&dead).count(), stream().len(), "every event is decided or dead-lettered");
    for d in &out.dead_letters {
        let row = out.history.iter().find(|h| h.decision_id == d["decision_id"].as_str().unwrap_or_default());
        let row = row.unwrap_or_else(|| panic!("dead letter without its history row: {d}"));
        assert_eq!((row.outcome.as_str(), row.source.as_deref()), ("dead_letter", Some("s")));
    }
    letters
}

#[test]
fn a_lookup_outage_dead_letters_at_enrich() {
    let letters = dead_at(&outage("lookup", 5), "enrich", "lookup");
    assert_eq!(letters.len(), 1, "one event's lookup outlasted its retries: {letters:?}");
}

#[test]
fn an_upsert_sink_outage_dead_letters_at_publish() {
    dead_at(&outage("upsert sink", 2), "publish", "sink");
}

#[test]
fn a_history_outage_dead_letters_at_history() {
    dead_at(&outage("history", 2), "history", "history");
}
