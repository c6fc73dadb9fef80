//! One Kinesis lease table, several processes, and a topology that keeps its control table and
//! history in the embedded store, which serves one process: a second worker refuses to read
//! (exit 1, saying what to change) and the first goes on; a worker killed and started again
//! waits for its predecessor's leases to expire, then reads on from their checkpoints.

mod common;

use std::time::Duration;

use common::aws::*;
use common::free_port;

fn config(stream: &str, leases: &str, admin: &str, follow: bool) -> String {
    format!(
        r#"
[pipeline]
shards = 2
state_dir = "state"
[[sources]]
kind = "kinesis"
stream = "{stream}"
lease_table = "{leases}"
create_if_missing = true
failover = "2s"
follow = {follow}
[control]
kind = "embedded"
[history]
kind = "embedded"
[admin]
listen = "{admin}"
{aws}"#,
        aws = aws_section()
    )
}

#[test]
fn a_second_worker_on_a_lease_table_with_embedded_state_refuses_and_the_first_goes_on() {
    require_emulator();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let conf = rt.block_on(sdk_config());
    let (stream, leases) = (unique("one-worker"), unique("leases"));
    rt.block_on(create_stream(&conf, &stream, 3));
    let all = common::crawl_lines("20", "2");
    let (first, second) = all.split_at(all.len() / 2);
    rt.block_on(put_lines(&conf, &stream, first));

    let port = free_port();
    let a = tempfile::tempdir().unwrap();
    std::fs::write(a.path().join("config.toml"), config(&stream, &leases, &format!("127.0.0.1:{port}"), true)).unwrap();
    let mut first_worker = common::spawn_run(a.path());
    assert!(
        common::wait_until(Duration::from_secs(60), || common::events_in(port) == first.len() as u64),
        "the first worker reads the stream"
    );

    // A live worker renews its leases: the second waits twice the failover time (4 s), then
    // refuses, having read nothing.
    let b = tempfile::tempdir().unwrap();
    std::fs::write(b.path().join("config.toml"), config(&stream, &leases, "", true)).unwrap();
    let (status, stderr) = common::run_until_it_ends(b.path(), &["run"], Duration::from_secs(60));
    assert_eq!(status.code(), Some(1), "the second worker refuses: {stderr}");
    assert!(
        stderr.contains("embedded store") && stderr.contains("DynamoDB or PostgreSQL"),
        "and says what to change: {stderr}"
    );
    let decided = ["upsert", "drop"].map(|s| std::fs::read_to_string(b.path().join(format!("out/{s}.jsonl"))));
    assert!(decided.iter().all(|t| t.as_ref().is_ok_and(String::is_empty) || t.is_err()), "the second decided nothing");

    rt.block_on(put_lines(&conf, &stream, second));
    assert!(
        common::wait_until(Duration::from_secs(60), || common::events_in(port) == all.len() as u64),
        "the first worker reads on, every shard still its own"
    );
    // SAFETY: signalling our own child.
    unsafe { libc::kill(first_worker.id() as i32, libc::SIGTERM) };
    assert!(first_worker.wait().unwrap().success());
}

/// A worker SIGKILLed leaves its leases in its name until they expire; started again (a new
/// worker id), it must neither refuse nor, with `follow = false`, take the dead worker's
/// shards for someone else's and stop at once having read nothing: it waits them out, takes
/// them, and reads on from their checkpoints.
#[test]
fn a_worker_killed_and_started_again_waits_out_its_old_leases_and_reads_on() {
    require_emulator();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let conf = rt.block_on(sdk_config());
    let (stream, leases) = (unique("restarted"), unique("leases"));
    rt.block_on(create_stream(&conf, &stream, 3));
    let all = common::crawl_lines("20", "2");
    let (first, second) = all.split_at(all.len() / 2);
    rt.block_on(put_lines(&conf, &stream, first));

    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.toml"), config(&stream, &leases, &format!("127.0.0.1:{port}"), true))
        .unwrap();
    let mut killed = common::spawn_run(dir.path());
    assert!(
        common::wait_until(Duration::from_secs(60), || common::events_in(port) == first.len() as u64),
        "the first start reads the stream"
    );
    // Its checkpoints written (a commit follows the events within a second or so).
    std::thread::sleep(Duration::from_secs(2));
    killed.kill().unwrap();
    killed.wait().unwrap();

    rt.block_on(put_lines(&conf, &stream, second));
    std::fs::write(dir.path().join("config.toml"), config(&stream, &leases, "", false)).unwrap();
    let (status, stderr) =
        common::run_until_it_ends(dir.path(), &["run", "--summary-json", "summary.json"], Duration::from_secs(60));
    assert!(status.success(), "the restarted worker reads on: {stderr}");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("summary.json")).unwrap()).unwrap();
    let read = summary["events_in"].as_u64().unwrap_or(0);
    assert!(read >= second.len() as u64, "it read what came after the kill: {read} events; {stderr}");
}
