//! Crash safety: the binary killed with SIGKILL at random moments, restarted until drained,
//! must end with exactly the decisions of a clean run (duplicates allowed, with the same
//! `decision_id`); and SIGTERM must stop it cleanly, to resume where it stopped.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use assetflow::adapters::state::StateStore;
use assetflow_actors::ports::HistoryStore;
use common::{Outputs, SCENARIO_CONFIG, bin};
use serde_json::Value;

/// A generated crawl: several sources, churn, re-deliveries, bad lines, half-way runs.
fn make_input(dir: &Path, assets: &str) {
    std::fs::write(dir.join("config.toml"), SCENARIO_CONFIG).unwrap();
    std::fs::write(
        dir.join("business.json"),
        r#"[{"source":"src-0","database":"db0","schema":"public","domain":"d0"}]"#,
    )
    .unwrap();
    let status = bin()
        .args([
            "gen",
            "--sources",
            "4",
            "--assets",
            assets,
            "--runs",
            "6",
            "--halfway-every",
            "4",
            "--out",
            "events.jsonl",
        ])
        .current_dir(dir)
        .env("RUST_LOG", "warn")
        .status()
        .unwrap();
    assert!(status.success());
}

fn start(dir: &Path) -> Child {
    bin()
        .args(["run", "--config", "config.toml"])
        .current_dir(dir)
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// The fields that make a decision what it is (not when it was made, nor where content lives).
fn essence(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(o) = v.as_object_mut() {
        for k in ["decided_at", "content_ref", "failed_at"] {
            o.remove(k);
        }
    }
    v
}

/// Every decision id of `all` names one decision only; returns them by id.
fn by_id(all: &[Value], what: &str) -> HashMap<String, Value> {
    let mut m: HashMap<String, Value> = HashMap::new();
    for r in all {
        let id = r["decision_id"].as_str().unwrap_or_default().to_owned();
        let e = essence(r);
        if let Some(prev) = m.get(&id) {
            assert_eq!(prev, &e, "{what}: decision id {id} names two different decisions");
        }
        m.insert(id, e);
    }
    m
}

fn assert_same_decisions(clean: &Outputs, crashed: &Outputs) {
    for (what, a, b) in [
        ("upserts", &clean.upserts, &crashed.upserts),
        ("drops", &clean.drops, &crashed.drops),
        ("dead letters", &clean.dead_letters, &crashed.dead_letters),
    ] {
        let (a, b) = (by_id(a, what), by_id(b, what));
        let mut missing: Vec<&String> = a.keys().filter(|k| !b.contains_key(*k)).collect();
        let mut extra: Vec<&String> = b.keys().filter(|k| !a.contains_key(*k)).collect();
        missing.sort();
        extra.sort();
        assert!(missing.is_empty() && extra.is_empty(), "{what}: lost {missing:?}; never in a clean run {extra:?}");
        for (id, v) in &a {
            assert_eq!(Some(v), b.get(id), "{what}: {id} differs");
        }
    }
}

/// Each asset's history as decisions: (event id, outcome, decision id), read from the run
/// folder's embedded store.
fn history_decisions(dir: &Path, keys: &BTreeSet<&str>) -> HashMap<String, BTreeSet<(String, String, String)>> {
    let store = StateStore::open(&dir.join("state")).expect("open the store");
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    keys.iter()
        .map(|key| {
            let rows = rt.block_on(store.read(key, usize::MAX)).expect("read history");
            let decisions = rows
                .into_iter()
                .map(|r| (r.event_id.unwrap_or_default(), r.outcome.as_str().to_owned(), r.decision_id));
            (key.to_string(), decisions.collect())
        })
        .collect()
}

/// EVENTS.md §6: every decision leaves a history row. A crash may add rows (an event delivered
/// again after its effects were durable) but never lose one, so every decision in an asset's
/// history after the clean run is in it after the crashed one, outcome and id alike, whose rows
/// are spread over segments that SIGKILLs left open. That holds only because a batch's rows are
/// durable before its control records: the other way round, a kill between the two leaves
/// records that the events, delivered again, find as their own writes (`unchanged`, new ids),
/// and the rows of what was published are never written.
fn assert_history_kept(clean: &Path, crashed: &Path, outputs: &Outputs) {
    let keys: BTreeSet<&str> = outputs.upserts.iter().filter_map(|u| u["asset_key"].as_str()).collect();
    let (want, got) = (history_decisions(clean, &keys), history_decisions(crashed, &keys));
    for (key, decisions) in &want {
        assert!(!decisions.is_empty(), "{key} has history in the clean run");
        let lost: Vec<_> = decisions.difference(&got[key]).collect();
        assert!(lost.is_empty(), "{key}: the crashed run's history lost decisions {lost:?}");
    }
}

/// Runs the input of `dir` to the end in one clean run; returns its outputs.
fn run_clean(dir: &Path) -> Outputs {
    let out = bin().args(["run"]).current_dir(dir).env("RUST_LOG", "error").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    Outputs::read(dir)
}

/// Starts the binary on `dir` and SIGKILLs it after a random delay in `delay_ms`, up to `kills`
/// times or until a run drains the input first; then runs it to the end. Returns the kills.
fn kill_repeatedly(dir: &Path, kills: usize, delay_ms: std::ops::Range<u64>, seed: u64) -> usize {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut landed = 0;
    let started = Instant::now();
    while landed < kills {
        assert!(started.elapsed() < Duration::from_secs(300), "the crash loop made no progress");
        let mut child = start(dir);
        std::thread::sleep(Duration::from_millis(rng.u64(delay_ms.clone())));
        if child.try_wait().unwrap().is_some() {
            // Drained before the kill: the input is used up, the kills so far must do.
            break;
        }
        child.kill().unwrap();
        child.wait().unwrap();
        landed += 1;
    }
    run_clean(dir);
    landed
}

#[test]
fn sigkill_at_random_moments_loses_nothing() {
    let clean = tempfile::tempdir().unwrap();
    make_input(clean.path(), "1200");
    let lines = std::fs::read_to_string(clean.path().join("events.jsonl")).unwrap().lines().count();
    assert!(lines >= 20_000, "the stream has {lines} events");
    let clean_out = run_clean(clean.path());
    assert!(clean_out.duplicate_ids().is_empty());
    assert!(!clean_out.drops.is_empty() && !clean_out.dead_letters.is_empty());

    let crashed = tempfile::tempdir().unwrap();
    make_input(crashed.path(), "1200");
    let kills = kill_repeatedly(crashed.path(), 20, 30..300, 7);
    assert!(kills >= 20, "only {kills} kills landed before the input was drained");
    assert_same_decisions(&clean_out, &Outputs::read(crashed.path()));
    assert_history_kept(clean.path(), crashed.path(), &clean_out);
}

/// History across SIGKILLs that land after the source has committed (its position is saved
/// every 200 ms): rows acknowledged by a killed process are only in the segments it left open,
/// which the next start must index, and readers must read.
#[test]
fn sigkill_after_commits_keeps_every_events_history() {
    let clean = tempfile::tempdir().unwrap();
    make_input(clean.path(), "1200");
    let clean_out = run_clean(clean.path());

    let crashed = tempfile::tempdir().unwrap();
    make_input(crashed.path(), "1200");
    let kills = kill_repeatedly(crashed.path(), 6, 500..900, 11);
    assert!(kills >= 2, "only {kills} kills landed before the input was drained");
    assert_same_decisions(&clean_out, &Outputs::read(crashed.path()));
    assert_history_kept(clean.path(), crashed.path(), &clean_out);
}

/// A SIGKILL while the very first start creates the embedded store leaves fjall's first files
/// without its `version` marker, or with the marker created but not yet written (the states
/// below, as kills in the first few milliseconds left them; the second in a soak of the
/// reference model's killed streams); the next start must create the store again, not stop on
/// "File exists" or "InvalidVersion".
#[test]
fn a_sigkill_while_the_store_is_first_created_does_not_stop_the_next_start() {
    let clean = tempfile::tempdir().unwrap();
    make_input(clean.path(), "100");
    let clean_out = run_clean(clean.path());

    for empty_marker in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        make_input(dir.path(), "100");
        let db = dir.path().join("state").join("state");
        std::fs::create_dir_all(db.join("keyspaces")).unwrap();
        std::fs::write(db.join("lock"), b"").unwrap();
        std::fs::write(db.join("0.jnl"), vec![0u8; 1 << 16]).unwrap();
        if empty_marker {
            std::fs::write(db.join("version"), b"").unwrap();
        }
        let out = bin().args(["run"]).current_dir(dir.path()).env("RUST_LOG", "warn").output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "empty marker: {empty_marker}: {stderr}");
        assert!(stderr.contains("creation was cut short"), "the start says what it cleared: {stderr}");
        let resumed = Outputs::read(dir.path());
        assert!(resumed.duplicate_ids().is_empty());
        assert_same_decisions(&clean_out, &resumed);
    }
}

#[test]
fn sigterm_stops_cleanly_and_a_restart_resumes() {
    let clean = tempfile::tempdir().unwrap();
    make_input(clean.path(), "800");
    assert!(bin().args(["run"]).current_dir(clean.path()).env("RUST_LOG", "error").status().unwrap().success());
    let clean_out = Outputs::read(clean.path());

    let dir = tempfile::tempdir().unwrap();
    make_input(dir.path(), "800");
    let child = bin()
        .args(["run"])
        .current_dir(dir.path())
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(400));
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let t = Instant::now();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(t.elapsed() < Duration::from_secs(30), "shutdown took {:?}", t.elapsed());
    assert!(stderr.contains("stopped after"), "a stopped run says so: {stderr}");
    let partial = Outputs::read(dir.path());
    assert!(partial.upserts.len() < clean_out.upserts.len(), "the run was stopped before the end");
    // The restart takes up where the stop left off: together, exactly a clean run, no repeats.
    assert!(bin().args(["run"]).current_dir(dir.path()).env("RUST_LOG", "error").status().unwrap().success());
    let resumed = Outputs::read(dir.path());
    assert!(resumed.duplicate_ids().is_empty(), "a clean stop acknowledges all it did: nothing is repeated");
    assert_same_decisions(&clean_out, &resumed);
}

/// The value of one sample of the Prometheus text `metrics`, by its name and labels as written.
fn metric(metrics: &str, sample: &str) -> Option<f64> {
    metrics.lines().find_map(|l| l.strip_prefix(sample)?.trim().parse().ok())
}

/// Unchanged assets seen again keep their run stamps in memory and in touch frames until a fold
/// (`src/adapters/state/touches.rs`): a SIGKILL after their events are acknowledged, before the
/// run's completion, must not lose them. The completion, read by the next process, must drop
/// only the assets the run did not see; with the stamps lost it would find none of the 50 seen
/// and refuse to drop them all (the drop guard).
#[test]
fn a_sigkill_between_a_crawl_and_its_completion_keeps_the_crawls_run_stamps() {
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let config = |follow: bool| {
        SCENARIO_CONFIG
            .replace("follow = false", &format!("follow = {follow}"))
            .replace("listen = \"\"", &format!("listen = \"127.0.0.1:{port}\""))
    };
    std::fs::write(dir.path().join("config.toml"), config(true)).unwrap();
    std::fs::write(dir.path().join("business.json"), "[]").unwrap();
    let event = |id: &str, run: &str, table: Option<usize>, minute: usize| {
        let asset = table.map_or(String::new(), |t| {
            format!(r#","asset":{{"database":"db","schema":"s","table":"t{t:02}","columns":[{{"name":"id","type":"int"}}]}}"#)
        });
        let status = if table.is_some() { "running" } else { "completed" };
        format!(
            r#"{{"event_id":"{id}","source":"pg","run_id":"{run}","status":"{status}","emitted_at":"2026-11-01T10:{:02}:{:02}Z"{asset}}}"#,
            minute / 60,
            minute % 60
        ) + "\n"
    };
    let mut input = String::new();
    for t in 0..50 {
        input += &event(&format!("a{t}"), "r1", Some(t), t);
    }
    input += &event("a-done", "r1", None, 50);
    for t in 0..40 {
        input += &event(&format!("b{t}"), "r2", Some(t), 100 + t);
    }
    std::fs::write(dir.path().join("events.jsonl"), &input).unwrap();

    let mut child = common::spawn_run(dir.path());
    let started = Instant::now();
    loop {
        assert!(started.elapsed() < Duration::from_secs(60), "the crawl was never decided");
        std::thread::sleep(Duration::from_millis(100));
        let Some((200, text)) = common::http_get(port, "/metrics") else { continue };
        if metric(&text, r#"assetflow_decisions_total{outcome="unchanged"}"#) == Some(40.0) {
            break;
        }
    }
    // The file source saves its position every 200 ms: past it, the events are not read again.
    std::thread::sleep(Duration::from_millis(800));
    child.kill().unwrap();
    child.wait().unwrap();

    input += &event("b-done", "r2", None, 150);
    std::fs::write(dir.path().join("events.jsonl"), &input).unwrap();
    std::fs::write(dir.path().join("config.toml"), config(false)).unwrap();
    let out = bin().arg("run").current_dir(dir.path()).env("RUST_LOG", "warn").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut dropped: Vec<String> =
        Outputs::read(dir.path()).drops.iter().map(|d| d["asset_key"].as_str().unwrap_or("").to_owned()).collect();
    dropped.sort();
    let expected: Vec<String> = (40..50).map(|t| format!("pg/db/s/t{t:02}")).collect();
    assert_eq!(dropped, expected, "only the assets r2 did not see");
}
