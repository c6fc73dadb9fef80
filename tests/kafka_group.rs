//! One Kafka consumer group, several processes. A topology that keeps its control table or
//! history in the embedded store serves one process: a second process joining its group
//! refuses to read (exit 1, saying what to change), and the first goes on with every partition
//! once the second has left.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::aws::unique;
use common::kafka::*;
use common::{free_port, http_get};

fn config(topic: &str, group: &str, admin: &str) -> String {
    format!(
        r#"
[pipeline]
shards = 2
state_dir = "state"
[[sources]]
kind = "kafka"
brokers = "{b}"
topic = "{topic}"
group = "{group}"
session_timeout_ms = 6000
[control]
kind = "embedded"
[history]
kind = "embedded"
[admin]
listen = "{admin}"
"#,
        b = brokers()
    )
}

fn lines(path: &Path) -> usize {
    std::fs::read_to_string(path).map(|t| t.lines().count()).unwrap_or(0)
}

#[test]
fn a_second_process_on_a_group_with_embedded_state_refuses_and_the_first_goes_on() {
    require_broker();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (topic, group) = (unique("shared"), unique("group"));
    rt.block_on(create_topic(&topic, 3));
    let all = common::crawl_lines("30", "2");
    let (first, second) = all.split_at(all.len() / 2);
    rt.block_on(produce_lines(&topic, first));

    let port = free_port();
    let a = tempfile::tempdir().unwrap();
    std::fs::write(a.path().join("config.toml"), config(&topic, &group, &format!("127.0.0.1:{port}"))).unwrap();
    let mut first_process = common::spawn_run(a.path());
    assert!(
        common::wait_until(Duration::from_secs(60), || common::events_in(port) == first.len() as u64),
        "the first process reads the topic"
    );

    let b = tempfile::tempdir().unwrap();
    std::fs::write(b.path().join("config.toml"), config(&topic, &group, "")).unwrap();
    let (status, stderr) = common::run_until_it_ends(b.path(), &["run"], Duration::from_secs(60));
    assert_eq!(status.code(), Some(1), "the second process refuses: {stderr}");
    assert!(stderr.contains("embedded store") && stderr.contains("postgres"), "and says what to change: {stderr}");
    let decided_by_b = lines(&b.path().join("out/upsert.jsonl")) + lines(&b.path().join("out/drop.jsonl"));
    assert_eq!(decided_by_b, 0, "the second process decided nothing");

    // The first goes on: once the second has left, it holds every partition again and reads
    // what comes next.
    rt.block_on(produce_lines(&topic, second));
    assert!(
        common::wait_until(Duration::from_secs(60), || common::events_in(port) == all.len() as u64),
        "the first process reads on after the second left"
    );
    // A member that left without a word stays in the group until its session times out, and
    // the group may rebalance more than once meanwhile: readiness comes back within that.
    let started = Instant::now();
    let mut ready = http_get(port, "/readyz");
    while ready.as_ref().map(|r| r.0) != Some(200) && started.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(200));
        ready = http_get(port, "/readyz");
    }
    assert_eq!(ready.as_ref().map(|r| r.0), Some(200), "and is ready again: {ready:?}");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(first_process.id() as i32, libc::SIGTERM) };
    assert!(first_process.wait().unwrap().success());
    let upserts = lines(&a.path().join("out/upsert.jsonl"));
    assert!(upserts >= 90, "the first process decided the whole crawl: {upserts} upserts");
}

#[test]
fn a_lone_process_that_drains_the_topic_leaves_its_group_without_an_error() {
    // Leaving the group revokes every partition; counted as a rebalance, that read as "another
    // process holds them" and logged an error at the end of every clean run.
    require_broker();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (topic, group) = (unique("drained"), unique("group"));
    rt.block_on(create_topic(&topic, 3));
    let all = common::crawl_lines("20", "1");
    let dir = tempfile::tempdir().unwrap();
    rt.block_on(produce_lines(&topic, &all));
    let config =
        config(&topic, &group, "").replace("session_timeout_ms = 6000", "session_timeout_ms = 6000\nfollow = false");
    std::fs::write(dir.path().join("config.toml"), config).unwrap();
    let out = common::bin().arg("run").current_dir(dir.path()).env("RUST_LOG", "warn").output().expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(lines(&dir.path().join("out/upsert.jsonl")), 60, "the whole crawl is decided: {stderr}");
    assert!(!stderr.contains("ERROR") && !stderr.contains("reading paused"), "a clean drain logs no error: {stderr}");
}

/// A process SIGKILLed leaves its member in the group until its session times out. Started
/// again and killed again while its join waits on that member, as in a crash loop under a
/// supervisor, the group holds several such members, and the broker (tansu here) gives the
/// next start only some partitions at first. That start must not take its own predecessors
/// for another process and refuse (exit 1, "reads topic … with another process"): it waits
/// them out, then reads on from the last commit.
#[test]
fn a_process_in_a_crash_loop_waits_out_its_old_members_instead_of_refusing() {
    require_broker();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (topic, group) = (unique("restarted"), unique("group"));
    rt.block_on(create_topic(&topic, 3));
    let all = common::crawl_lines("20", "2");
    let (first, second) = all.split_at(all.len() / 2);
    rt.block_on(produce_lines(&topic, first));

    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.toml"), config(&topic, &group, &format!("127.0.0.1:{port}"))).unwrap();
    let mut killed = common::spawn_run(dir.path());
    assert!(
        common::wait_until(Duration::from_secs(60), || common::events_in(port) == first.len() as u64),
        "the first process reads the topic"
    );
    killed.kill().unwrap();
    killed.wait().unwrap();
    for _ in 0..std::env::var("KILLS").map_or(2, |v| v.parse().unwrap()) {
        let mut again = common::spawn_run(dir.path());
        std::thread::sleep(Duration::from_millis(1500));
        again.kill().unwrap();
        again.wait().unwrap();
    }

    rt.block_on(produce_lines(&topic, second));
    let config =
        config(&topic, &group, "").replace("session_timeout_ms = 6000", "session_timeout_ms = 6000\nfollow = false");
    std::fs::write(dir.path().join("config.toml"), config).unwrap();
    let args = ["run", "--summary-json", "summary.json"];
    let (status, stderr) = common::run_until_it_ends(dir.path(), &args, Duration::from_secs(90));
    assert!(status.success(), "the restarted process reads on: {stderr}");
    assert!(!stderr.contains("with another process"), "{stderr}");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("summary.json")).unwrap()).unwrap();
    let read = summary["events_in"].as_u64().unwrap_or(0);
    assert!(read >= second.len() as u64, "the restarted process read what came after the kill: {read} events");
}
