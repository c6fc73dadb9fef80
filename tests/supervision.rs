//! Supervision, end to end: a panic injected into each actor (fail points, compiled into the
//! binary the tests run) on its Nth message. Once, it is caught, counted, the message tried
//! again, and the run's outputs are exactly the clean run's, exit 0. Every time, the process
//! stops with a non-zero exit naming the actor, and the next start completes with nothing lost.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::Outputs;
use common::scale::assert_same_outputs;

/// Four crawlers, three runs each (drops, a run stopped half-way that trips the drop guard),
/// malformed lines and re-deliveries: every actor and the dead-letter path see work.
const GEN: &[&str] = &[
    "--sources",
    "4",
    "--assets",
    "40",
    "--runs",
    "3",
    "--halfway-every",
    "3",
    "--payload",
    "200",
    "--bad",
    "0.02",
    "--seed",
    "17",
];

fn config(max_restarts: u32) -> String {
    let business = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/business.json");
    format!(
        r#"[pipeline]
shards = 2
state_dir = "state"
[[sources]]
kind = "file"
path = "../events.jsonl"
follow = false
[enricher]
kind = "file"
path = "{business}"
[decisor]
hash_ignore = ["stats.row_count"]
max_drop_fraction = 0.5
[content]
kind = "dir"
path = "../content"
{sinks}[retry]
initial = "10ms"
max = "50ms"
[supervision]
max_restarts = {max_restarts}
backoff = "10ms"
[admin]
listen = ""
"#,
        business = business.display(),
        sinks = common::FILE_SINKS
    )
}

/// A run folder beside the shared `events.jsonl`.
fn run_in(root: &Path, name: &str, max_restarts: u32, failpoints: Option<&str>) -> (PathBuf, Output) {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("config.toml"), config(max_restarts)).unwrap();
    let out = again(&dir, failpoints);
    (dir, out)
}

fn again(dir: &Path, failpoints: Option<&str>) -> Output {
    let mut cmd = common::bin();
    cmd.args(["run"]).current_dir(dir).env("RUST_LOG", "warn").env("NO_COLOR", "1");
    match failpoints {
        Some(f) => cmd.env("FAILPOINTS", f),
        None => cmd.env_remove("FAILPOINTS"),
    };
    cmd.output().expect("run assetflow")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The events and the clean run every other run must equal.
fn reference(root: &Path) -> Outputs {
    common::scale::generate(root, GEN, &["--out", "events.jsonl"]);
    let (dir, out) = run_in(root, "clean", 10, None);
    assert!(out.status.success(), "clean run: {}", stderr(&out));
    let outputs = Outputs::read(&dir);
    assert!(!outputs.drops.is_empty() && !outputs.dead_letters.is_empty(), "the input has drops and dead letters");
    outputs
}

/// Where each actor's fail point is, and which message of it panics.
const POINTS: &[(&str, &str, u32)] = &[
    ("ingest", "ingest.decode", 100),
    ("enricher", "enricher.handle", 100),
    ("enricher", "enricher.lookup", 2),
    ("router", "router.route", 100),
    ("router", "router.sweep", 2),
    ("decisor", "decisor.batch", 3),
    ("upsert_producer", "upsert_producer.publish", 2),
    ("drop_producer", "drop_producer.publish", 1),
    ("history_writer", "history_writer.append", 3),
    ("history_writer", "history_writer.dead_letters", 1),
];

#[test]
fn one_panic_in_any_actor_changes_no_output_and_the_run_exits_0() {
    let root = tempfile::tempdir().unwrap();
    let want = reference(root.path());
    for (actor, point, nth) in POINTS {
        let spec = format!("{point}={}*off->1*panic(injected)->off", nth - 1);
        let (dir, out) = run_in(root.path(), &format!("once-{point}"), 10, Some(&spec));
        let log = stderr(&out);
        assert!(out.status.success(), "{point}: a panic that passes on retry fails nothing: {log}");
        // The panic happened and was supervised (otherwise this proves nothing).
        assert!(
            log.contains("actor panicked and was restarted") && log.contains(&format!("actor=\"{actor}\""))
                || log.contains(&format!("actor={actor}")),
            "{point}: no restart of {actor} logged: {log}"
        );
        assert!(log.contains("injected"), "{point}: the injected panic is logged: {log}");
        let got = Outputs::read(&dir);
        assert!(
            got.dead_letters.iter().all(|d| d["error"]["kind"] != "panic"),
            "{point}: the message tried again went through, not to the dead letters"
        );
        assert_same_outputs(&got, &want);
    }
}

#[test]
fn a_panic_every_time_stops_the_process_and_the_next_start_loses_nothing() {
    let root = tempfile::tempdir().unwrap();
    let want = reference(root.path());
    for (actor, point, nth) in POINTS {
        // No restart budget: the first panic stops the process.
        let spec = format!("{point}={}*off->panic(injected)", nth - 1);
        let (dir, out) = run_in(root.path(), &format!("always-{point}"), 0, Some(&spec));
        let log = stderr(&out);
        assert!(!out.status.success(), "{point}: a stage that keeps failing must not exit 0: {log}");
        assert!(log.contains(&format!("actor {actor} panicked")), "{point}: the exit names the actor: {log}");
        // The process stops at once: a sink write it was in the middle of may have left half a
        // line, which the next start cuts off (and writes whole). Read whole lines only.
        let letters = std::fs::read_to_string(dir.join("out/dead-letter.jsonl")).unwrap_or_default();
        let whole: Vec<serde_json::Value> =
            letters.lines().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()).collect();
        assert!(
            whole.iter().all(|d| d["error"]["kind"] != "panic"),
            "{point}: nothing is dead-lettered on the account of a process that gave up"
        );
        // The next start, the fault gone, takes up from what was acknowledged.
        let next = again(&dir, None);
        assert!(next.status.success(), "{point}: the next start: {}", stderr(&next));
        assert_same_outputs(&Outputs::read(&dir), &want);
    }
}

/// A run folder whose config is `config(10)` changed by `edit`.
fn run_edited(root: &Path, name: &str, edit: impl Fn(String) -> String, failpoints: Option<&str>) -> (PathBuf, Output) {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("config.toml"), edit(config(10))).unwrap();
    let out = again(&dir, failpoints);
    (dir, out)
}

#[test]
fn a_panic_in_the_enriched_producer_changes_no_output() {
    let root = tempfile::tempdir().unwrap();
    common::scale::generate(root.path(), GEN, &["--out", "events.jsonl"]);
    let enrich_only = |c: String| {
        c.replace("[pipeline]\n", "[pipeline]\nstages = [\"enrich\"]\n")
            + "[sinks.enriched]\nkind = \"file\"\npath = \"out/enriched.jsonl\"\n"
    };
    let (clean, out) = run_edited(root.path(), "clean", enrich_only, None);
    assert!(out.status.success(), "{}", stderr(&out));
    let spec = "enriched_producer.publish=1*panic(injected)->off";
    let (faulty, out) = run_edited(root.path(), "faulty", enrich_only, Some(spec));
    let log = stderr(&out);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("actor panicked and was restarted") && log.contains("enriched_producer"), "{log}");
    let ids = |dir: &Path| -> std::collections::BTreeSet<String> {
        common::read_lines(&dir.join("out/enriched.jsonl")).iter().map(|v| v["event_id"].to_string()).collect()
    };
    assert!(!ids(&clean).is_empty());
    assert_eq!(ids(&faulty), ids(&clean), "every enriched event published once the write was tried again");
    assert!(Outputs::read(&faulty).dead_letters.iter().all(|d| d["error"]["kind"] != "panic"));
}

#[test]
fn a_panic_in_a_redrive_round_is_retried_and_replays_the_same() {
    let root = tempfile::tempdir().unwrap();
    common::scale::generate(root.path(), GEN, &["--out", "events.jsonl"]);
    let redrive = |dir: &Path, failpoints: Option<&str>| {
        let mut cmd = common::bin();
        cmd.arg("redrive").current_dir(dir).env("RUST_LOG", "warn").env("NO_COLOR", "1");
        if let Some(f) = failpoints {
            cmd.env("FAILPOINTS", f);
        }
        cmd.output().unwrap()
    };
    let mut replayed = Vec::new();
    for (name, failpoints) in [("clean", None), ("faulty", Some("redrive.round=1*panic(injected)->off"))] {
        let (dir, out) = run_in(root.path(), name, 10, None);
        assert!(out.status.success(), "{}", stderr(&out));
        let out = redrive(&dir, failpoints);
        let log = stderr(&out);
        assert!(out.status.success(), "{name}: {log}");
        if failpoints.is_some() {
            assert!(log.contains("actor panicked and was restarted") && log.contains("redrive"), "{log}");
        }
        let line = log.lines().find(|l| l.contains("replayed")).unwrap_or_default().to_owned();
        replayed.push((line, Outputs::read(&dir)));
    }
    assert!(!replayed[0].0.contains(" 0 replayed"), "the clean redrive replayed something: {}", replayed[0].0);
    assert_eq!(replayed[0].0, replayed[1].0, "the same dead letters replayed");
    assert_same_outputs(&replayed[1].1, &replayed[0].1);
}
