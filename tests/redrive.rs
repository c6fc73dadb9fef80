//! `assetflow redrive`: dead letters go through the pipeline again with `attempts` one higher,
//! are parked past `redrive.max_attempts`, and are never replayed twice by redrive itself.

mod common;

use common::{Outputs, assetflow, bin, prepare, scenarios};

fn basics() -> tempfile::TempDir {
    let scenario = scenarios().into_iter().find(|p| p.ends_with("basics")).expect("basics scenario");
    let dir = prepare(&scenario);
    assert!(assetflow(dir.path(), &["run"]).status.success());
    dir
}

fn redrive(dir: &std::path::Path, env: &[(&str, &str)], extra: &[&str]) -> String {
    let mut cmd = bin();
    cmd.arg("redrive").args(extra).current_dir(dir).env("RUST_LOG", "warn");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    stderr
}

/// Runs the scenario config (no business data, `completion_timeout` as given) over `lines` in
/// a directory of its own, and returns it.
fn stream_run(lines: &[String], completion_timeout: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let timeout = format!("max_drop_fraction = 0.5\ncompletion_timeout = \"{completion_timeout}\"");
    let config = common::SCENARIO_CONFIG.replace("max_drop_fraction = 0.5", &timeout);
    std::fs::write(dir.path().join("config.toml"), config).unwrap();
    std::fs::write(dir.path().join("business.json"), "[]").unwrap();
    std::fs::write(dir.path().join("events.jsonl"), lines.join("\n") + "\n").unwrap();
    assert!(assetflow(dir.path(), &["run"]).status.success());
    dir
}

/// A `running` event of table `table` of source `s`, emitted `second` seconds into the day.
fn running(id: &str, run: &str, table: &str, second: u32) -> String {
    format!(
        r#"{{"event_id":"{id}","source":"s","run_id":"{run}","status":"running","emitted_at":"2026-11-01T00:00:{second:02}Z","asset":{{"database":"d","schema":"p","table":"{table}"}}}}"#
    )
}

/// The completion of run `run` of source `s`, counting its assets where `expected` says.
fn completed(id: &str, run: &str, second: u32, expected: Option<u64>) -> String {
    let expected = expected.map(|n| format!(r#","expected_assets":{n}"#)).unwrap_or_default();
    format!(
        r#"{{"event_id":"{id}","source":"s","run_id":"{run}","status":"completed","emitted_at":"2026-11-01T00:00:{second:02}Z"{expected}}}"#
    )
}

#[test]
fn a_guarded_completion_redriven_with_the_guard_lifted_drops() {
    let dir = basics();
    let before = Outputs::read(dir.path());
    assert_eq!(before.drops.len(), 2);
    // The operator checked the half-way crawl and accepts its drops.
    let report = redrive(dir.path(), &[("ASSETFLOW__DECISOR__MAX_DROP_FRACTION", "1.0")], &[]);
    assert!(report.contains("2 replayed"), "{report}");
    let after = Outputs::read(dir.path());
    let mut new_drops: Vec<&str> = after.drops[2..].iter().map(|d| d["asset_key"].as_str().unwrap()).collect();
    new_drops.sort();
    assert_eq!(new_drops, vec!["pg/hr/public/staff", "pg/sales/public/customers"]);
    assert!(after.drops[2..].iter().all(|d| d["event_id"] == "b20"));
    // The bad line failed again, one attempt later.
    let last = after.dead_letters.last().unwrap();
    assert_eq!(last["error"]["kind"], "invalid_json");
    assert_eq!(last["attempts"], 2);
    assert_eq!(after.dead_letters.len(), 3);
}

#[test]
fn a_guarded_completion_counting_its_assets_is_redriven_after_the_next_run_moved_them_on() {
    // r2 saw one asset of four and said so (expected_assets 1): the guard stopped it. r3 then
    // refreshed that asset, so no record says r2 any more; the count r2's completion waited
    // for was met when it was first read, and its redrive applies it at once.
    let mut lines: Vec<String> = (0..4).map(|i| running(&format!("a{i}"), "r1", &format!("t{i}"), i)).collect();
    lines.push(completed("c1", "r1", 5, None));
    lines.push(running("b0", "r2", "t0", 10));
    lines.push(completed("c2", "r2", 11, Some(1)));
    lines.push(running("x0", "r3", "t0", 20));
    lines.push(running("x1", "r3", "t1", 21));
    let dir = stream_run(&lines, "3s");
    let first = Outputs::read(dir.path());
    assert_eq!(first.dead_letters.len(), 1);
    assert_eq!(first.dead_letters[0]["error"]["kind"], "drop_guard");

    let report = redrive(dir.path(), &[("ASSETFLOW__DECISOR__MAX_DROP_FRACTION", "1.0")], &[]);
    assert!(report.contains("1 replayed"), "{report}");
    let after = Outputs::read(dir.path());
    assert_eq!(after.dead_letters.len(), 1, "no incomplete_run: {:?}", after.dead_letters);
    // t1 was refreshed by r3 after c2 was emitted: not c2's to drop.
    let mut dropped: Vec<&str> = after.drops.iter().map(|d| d["asset_key"].as_str().unwrap()).collect();
    dropped.sort();
    assert_eq!(dropped, vec!["s/d/p/t2", "s/d/p/t3"]);
    assert!(after.drops.iter().all(|d| d["event_id"] == "c2"));
}

#[test]
fn an_incomplete_run_redriven_after_the_next_run_moved_its_assets_on_is_applied() {
    // r1 said four assets; its fourth came after its completion had timed out (behind r2's
    // first event, which waited for it), then r2 refreshed all four. Redriven once the operator sees the
    // run was whole, the completion finds its four events counted (no record says r1 any
    // more: each left a marker as r2 moved it on) and is applied at once: it drops t9, which
    // r1 did not see, and nothing r2 refreshed after it.
    let mut lines = vec![running("z9", "r0", "t9", 0), completed("c0", "r0", 1, None)];
    lines.extend((0..3).map(|i| running(&format!("a{i}"), "r1", &format!("t{i}"), 2 + i)));
    lines.push(completed("c1", "r1", 8, Some(4)));
    // r2's first event waits behind the waiting completion, and a3 behind it (§3.3).
    lines.push(running("b0", "r2", "t0", 10));
    lines.push(running("a3", "r1", "t3", 5));
    lines.extend((1..4).map(|i| running(&format!("b{i}"), "r2", &format!("t{i}"), 10 + i)));
    let dir = stream_run(&lines, "2s");
    let first = Outputs::read(dir.path());
    assert_eq!(first.dead_letters.len(), 1);
    assert_eq!(first.dead_letters[0]["error"]["kind"], "incomplete_run");
    assert!(first.drops.is_empty());

    let report = redrive(dir.path(), &[], &[]);
    assert!(report.contains("1 replayed"), "{report}");
    let after = Outputs::read(dir.path());
    assert_eq!(after.dead_letters.len(), 1, "applied, not timed out again: {:?}", after.dead_letters);
    let dropped: Vec<(&str, &str)> =
        after.drops.iter().map(|d| (d["asset_key"].as_str().unwrap(), d["event_id"].as_str().unwrap())).collect();
    assert_eq!(dropped, vec![("s/d/p/t9", "c1")]);
}

#[test]
fn past_max_attempts_a_dead_letter_is_parked_and_kept() {
    let dir = basics();
    let env = [("ASSETFLOW__REDRIVE__MAX_ATTEMPTS", "2")];
    // attempts 1 -> replayed (fails as attempts 2); the guard fails again as attempts 2 too.
    let r1 = redrive(dir.path(), &env, &[]);
    assert!(r1.contains("2 replayed, 0 parked"), "{r1}");
    // Only the two new dead letters are read: both at attempts 2, both parked.
    let r2 = redrive(dir.path(), &env, &[]);
    assert!(r2.contains("0 replayed, 2 parked"), "{r2}");
    let r3 = redrive(dir.path(), &env, &[]);
    assert!(r3.contains("0 replayed, 0 parked"), "{r3}");
    let out = Outputs::read(dir.path());
    assert_eq!(out.dead_letters.len(), 4, "parked dead letters stay in the store");
    // ... and are kept, durably, where `redrive --parked` lists them.
    let parked = common::read_lines(&dir.path().join("out/dead-letter.parked.jsonl"));
    assert_eq!(parked.len(), 2);
    assert!(parked.iter().all(|d| d["attempts"] == 2));
    let listed = bin().args(["redrive", "--parked"]).current_dir(dir.path()).env("RUST_LOG", "warn").output().unwrap();
    assert!(listed.status.success());
    let listed: Vec<serde_json::Value> =
        String::from_utf8_lossy(&listed.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(listed, parked);
}

#[test]
fn with_redrive_interval_the_running_service_redrives_until_it_parks() {
    let dir = basics();
    // The service follows its input and redrives every 200 ms; a dead letter that fails every
    // time goes round until redrive.max_attempts, then is parked, while the service runs on.
    let mut config = std::fs::read_to_string(dir.path().join("config.toml")).unwrap();
    config = config.replace("follow = false", "follow = true");
    config.push_str("\n[redrive]\ninterval = \"200ms\"\nmax_attempts = 3\n");
    std::fs::write(dir.path().join("config.toml"), config).unwrap();
    let child = bin()
        .args(["run"])
        .current_dir(dir.path())
        .env("RUST_LOG", "warn")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let parked = dir.path().join("out/dead-letter.parked.jsonl");
    let started = std::time::Instant::now();
    while common::read_lines(&parked).len() < 2 && started.elapsed() < std::time::Duration::from_secs(60) {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let parked = common::read_lines(&parked);
    assert_eq!(parked.len(), 2, "the bad line and the guarded completion, each parked once: {parked:?}");
    assert!(parked.iter().all(|d| d["attempts"] == 3));
    let letters = Outputs::read(dir.path()).dead_letters;
    let mut attempts: Vec<u64> = letters.iter().map(|d| d["attempts"].as_u64().unwrap()).collect();
    attempts.sort();
    assert_eq!(attempts, vec![1, 1, 2, 2, 3, 3], "each tried three times, never a fourth");
}

#[test]
fn max_limits_how_many_are_replayed() {
    let dir = basics();
    let r = redrive(dir.path(), &[], &["--max", "1"]);
    assert!(r.contains("1 replayed"), "{r}");
    let r = redrive(dir.path(), &[], &["--max", "5"]);
    // The one left from the first batch, and the one the first redrive wrote.
    assert!(r.contains("2 replayed"), "{r}");
}

#[test]
fn a_line_that_is_not_utf8_round_trips_through_dead_letter_and_redrive_byte_for_byte() {
    use base64::Engine as _;
    let dir = tempfile::tempdir().unwrap();
    // Latin-1 bytes and a lone continuation byte: a lossy decoding would change them, and
    // `\xef\xbf\xbd` (the replacement character) would then be valid UTF-8.
    let bad: &[u8] = b"{\"source\":\"caf\xe9\",\"x\":\"\x80\"}";
    let good = br#"{"event_id":"e1","source":"s","run_id":"r1","status":"running","emitted_at":"2026-11-22T10:00:00Z","asset":{"database":"d","schema":"p","table":"t"}}"#;
    let mut input = bad.to_vec();
    input.push(b'\n');
    input.extend_from_slice(good);
    input.push(b'\n');
    std::fs::write(dir.path().join("events.jsonl"), &input).unwrap();
    std::fs::write(
        dir.path().join("config.toml"),
        "[pipeline]\nstate_dir = \"state\"\n[[sources]]\nkind = \"file\"\npath = \"events.jsonl\"\nfollow = false\n[enricher]\nkind = \"none\"\n[sinks.upsert]\nkind = \"file\"\npath = \"out/upsert.jsonl\"\n[sinks.drop]\nkind = \"file\"\npath = \"out/drop.jsonl\"\n[sinks.dead_letter]\nkind = \"file\"\npath = \"out/dead-letter.jsonl\"\n[admin]\nlisten = \"\"\n",
    )
    .unwrap();
    assert!(assetflow(dir.path(), &["run"]).status.success());
    let first = Outputs::read(dir.path());
    assert_eq!(first.upserts.len(), 1);
    let dl = &first.dead_letters[0];
    assert_eq!(dl["error"]["kind"], "invalid_json");
    assert!(dl.get("payload").is_none(), "bytes that are not UTF-8 are not given as text: {dl}");
    let bytes = base64::prelude::BASE64_STANDARD.decode(dl["payload_base64"].as_str().unwrap()).unwrap();
    assert_eq!(bytes, bad, "the dead letter keeps the exact bytes");
    // Redrive replays exactly those bytes: they fail the same way, one attempt later, and the
    // new dead letter carries the same bytes again.
    let report = redrive(dir.path(), &[], &[]);
    assert!(report.contains("1 replayed"), "{report}");
    let after = Outputs::read(dir.path());
    let again = after.dead_letters.last().unwrap();
    assert_eq!(again["attempts"], 2);
    assert_eq!(again["error"]["kind"], "invalid_json");
    assert_eq!(again["payload_base64"], dl["payload_base64"]);
}
