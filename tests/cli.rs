//! The command line as a user meets it: bad configs give one clear line and a non-zero exit,
//! `check-config` and `topology` describe the graph, `history` and `assets` read the state.

mod common;

use common::{assetflow, bin, prepare, scenarios};
use serde_json::Value;

fn err_of(dir: &std::path::Path, config: &str) -> (i32, String) {
    std::fs::write(dir.join("bad.toml"), config).unwrap();
    let out = assetflow(dir, &["check-config", "--config", "bad.toml"]);
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// `run` over `config`: it must fail with exit 1 and one clean line, which is returned.
fn run_err(dir: &std::path::Path, config: &str) -> String {
    std::fs::write(dir.join("c.toml"), config).unwrap();
    let out = assetflow(dir, &["run", "--config", "c.toml"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_one_clean_line(&stderr);
    stderr
}

fn assert_one_clean_line(stderr: &str) {
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line expected, got:\n{stderr}");
    assert!(!stderr.contains("panicked") && !stderr.contains("backtrace"), "{stderr}");
}

#[test]
fn a_missing_config_file_is_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = assetflow(dir.path(), &["run", "--config", "nope.toml"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_one_clean_line(&stderr);
    assert!(stderr.contains("nope.toml"), "{stderr}");
}

#[test]
fn a_wrong_type_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let (code, stderr) =
        err_of(dir.path(), "[pipeline]\nshards = \"four\"\n[[sources]]\nkind = \"file\"\npath = \"e.jsonl\"\n");
    assert_eq!(code, 1);
    assert_one_clean_line(&stderr);
    assert!(stderr.contains("bad.toml") && stderr.contains("pipeline.shards"), "{stderr}");
}

#[test]
fn an_unknown_backend_kind_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let (code, stderr) =
        err_of(dir.path(), "[[sources]]\nkind = \"file\"\npath = \"e.jsonl\"\n[control]\nkind = \"cassandra\"\n");
    assert_eq!(code, 1);
    assert_one_clean_line(&stderr);
    assert!(stderr.contains("control.kind") && stderr.contains("cassandra"), "{stderr}");
    let (code, stderr) = err_of(dir.path(), "[[sources]]\nkind = \"pigeon\"\n");
    assert_eq!(code, 1);
    assert!(stderr.contains("sources[0]") && stderr.contains("pigeon"), "{stderr}");
}

#[test]
fn a_missing_input_file_is_reported_at_run() {
    let dir = tempfile::tempdir().unwrap();
    let stderr =
        run_err(dir.path(), "[[sources]]\nkind = \"file\"\npath = \"missing.jsonl\"\n[admin]\nlisten = \"\"\n");
    assert!(stderr.contains("sources[0].path") && stderr.contains("missing.jsonl"), "{stderr}");
}

#[test]
fn secrets_never_reach_check_config() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("c.toml"),
        "[[sources]]\nkind = \"file\"\npath = \"e.jsonl\"\n[enricher]\nkind = \"postgres\"\nurl = \"postgres://app:${PGPASS}@db/x\"\nquery = \"SELECT 1 WHERE $1=$1\"\n",
    )
    .unwrap();
    let out = common::bin()
        .args(["check-config", "--config", "c.toml"])
        .current_dir(dir.path())
        .env("PGPASS", "hunter2")
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
    assert!(text.contains("app:***@db"), "{text}");
}

#[test]
fn topology_draws_every_shard_in_each_format() {
    let dir = prepare(&scenarios()[0]);
    for (format, marker) in [("text", "->"), ("dot", "digraph"), ("mermaid", "flowchart")] {
        let out = assetflow(dir.path(), &["topology", "--format", format]);
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains(marker), "{format}: {text}");
        for i in 0..4 {
            assert!(text.contains(&format!("Decisor[{i}]")), "{format}: {text}");
        }
    }
}

/// `--summary-json` says what a run did and where its time went: the outcomes, every backend
/// call with the seconds spent in it, and each kind of actor's working seconds (what
/// `make bench` reads to tell a stage that computes from one that waits on its store).
#[test]
fn the_summary_json_counts_outcomes_calls_and_the_time_they_took() {
    let scenario = scenarios().into_iter().find(|p| p.ends_with("basics")).expect("basics scenario");
    let dir = prepare(&scenario);
    assert!(assetflow(dir.path(), &["run", "--summary-json", "summary.json"]).status.success());
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("summary.json")).unwrap()).unwrap();
    assert!(summary["events_in"].as_u64().unwrap() > 0, "{summary}");
    assert!(summary["outcomes"]["created"].as_u64().unwrap() > 0, "{summary}");
    let calls = summary["backend_calls"].as_object().expect("backend_calls");
    let seconds = summary["backend_call_seconds"].as_object().expect("backend_call_seconds");
    assert!(calls.contains_key("control store put"), "{summary}");
    assert_eq!(calls.keys().collect::<Vec<_>>(), seconds.keys().collect::<Vec<_>>(), "one time per call kind");
    assert!(seconds.values().all(|s| s.as_f64().is_some_and(|s| s >= 0.0)), "{summary}");
    assert!(seconds["control store put"].as_f64().unwrap() > 0.0, "{summary}");
    let busy = summary["actor_busy_seconds"].as_object().expect("actor_busy_seconds");
    let decisor = busy["decisor"].as_f64().unwrap();
    let elapsed = summary["elapsed_seconds"].as_f64().unwrap();
    // The shards (4 in the scenario's config at most) cannot work longer than they ran.
    assert!(decisor > 0.0 && decisor <= 4.0 * elapsed + 0.5, "decisor busy {decisor} s in a {elapsed} s run");
}

#[test]
fn history_and_assets_read_back_a_run() {
    let scenario = scenarios().into_iter().find(|p| p.ends_with("basics")).expect("basics scenario");
    let dir = prepare(&scenario);
    assert!(assetflow(dir.path(), &["run"]).status.success());
    let out = assetflow(dir.path(), &["history", "pg/sales/public/customers"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let outcomes: Vec<&str> = text.lines().skip(1).filter_map(|l| l.split_whitespace().nth(1)).collect();
    // Newest first: re-created in r5, dropped by r4's completion, ... created in r1.
    assert_eq!(outcomes.first(), Some(&"created"), "{text}");
    assert_eq!(outcomes.get(1), Some(&"dropped"), "{text}");
    assert_eq!(outcomes.last(), Some(&"created"), "{text}");
    assert!(outcomes.contains(&"stale") && outcomes.contains(&"updated"), "{text}");
    let out = assetflow(dir.path(), &["assets", "--status", "live"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("4 assets"), "{text}");
    let out = assetflow(dir.path(), &["assets", "--source", "mysql"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 assets"));

    // For scripts: one whole object per row, the same rows in the same order.
    let out = assetflow(dir.path(), &["history", "pg/sales/public/customers", "--format", "json"]);
    let rows: Vec<Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let json_outcomes: Vec<&str> = rows.iter().map(|r| r["outcome"].as_str().unwrap()).collect();
    assert_eq!(json_outcomes, outcomes);
    assert!(rows.iter().all(|r| r["asset_key"] == "pg/sales/public/customers" && r["decision_id"].is_string()));
    let out = assetflow(dir.path(), &["assets", "--status", "live", "--format", "json"]);
    let rows: Vec<Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 4, "{rows:?}");
    assert!(rows.iter().all(|r| r["status"] == "live" && r["dropped_at"].is_null()), "{rows:?}");
    assert!(rows.iter().all(|r| r["hash"].as_str().is_some_and(|h| h.len() > 16)), "the hash is whole: {rows:?}");

    // A fold writes the run stamps held in touch frames as rows: the assets read the same.
    let before = assetflow(dir.path(), &["assets"]).stdout;
    let out = assetflow(dir.path(), &["fold"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.starts_with("folded ") && !text.starts_with("folded 0 "), "{text}");
    assert_eq!(String::from_utf8_lossy(&assetflow(dir.path(), &["assets"]).stdout), String::from_utf8_lossy(&before));
    let again = assetflow(dir.path(), &["fold"]);
    assert!(String::from_utf8_lossy(&again.stdout).starts_with("folded 0 touch frames"));
}

#[test]
fn reading_before_anything_ran_says_so_and_creates_no_state() {
    // Run from another folder than the service's, a read once created an empty store there,
    // which then looked like the real one.
    let scenario = scenarios().into_iter().find(|p| p.ends_with("basics")).expect("basics scenario");
    let dir = prepare(&scenario);
    for args in [&["assets"][..], &["assets", "--format", "json"], &["history", "pg/sales/public/orders"]] {
        let out = assetflow(dir.path(), args);
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "{args:?}: {stderr}");
        assert!(stderr.contains("nothing has run with this config"), "{args:?}: {stderr}");
        assert!(
            stdout.is_empty() || stdout.contains("0 assets") || stdout.contains("no history"),
            "{args:?}: {stdout}"
        );
    }
    assert!(!dir.path().join("state").exists(), "a read leaves no state dir behind (state_dir = \"state\")");
    assert!(assetflow(dir.path(), &["run"]).status.success());
    let out = assetflow(dir.path(), &["assets"]);
    assert!(!String::from_utf8_lossy(&out.stderr).contains("nothing has run"), "once it ran, it reads");
}

#[test]
fn output_to_a_reader_that_has_gone_is_no_crash() {
    use std::os::fd::{FromRawFd, OwnedFd};
    // stdout is a pipe whose reader has gone, as `assetflow history KEY | head` once `head` has
    // its lines: the write fails with EPIPE, which once panicked ("failed printing to stdout").
    let dir = prepare(&scenarios()[0]);
    let mut fds = [0; 2];
    // SAFETY: pipe(2) fills two new descriptors, each owned once below.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    let (reader, writer) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    drop(reader);
    let out = bin()
        .args(["topology", "--format", "dot"])
        .current_dir(dir.path())
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::from(writer))
        .output()
        .expect("run assetflow");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
