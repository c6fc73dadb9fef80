//! Two processes sharing one Kinesis stream through a lease table (the local emulator): one is
//! SIGKILLed, and the figure is the time until every shard it held has a newer checkpoint in
//! its lease, written by the survivor. That is the failover time (a dead worker's lease is
//! taken once its counter stood still that long) plus a lease round and a read and commit.

use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use assetflow::adapters::aws::Aws;
use assetflow::adapters::aws::leases::table::{Lease, LeaseTable, TRIM_HORIZON};
use assetflow::config::AwsConfig;

use super::scale::pg_url;
use super::{BIN, FILE_SINKS};

const SHARDS: i32 = 4;
/// The default `failover` of a kinesis source (the figure uses the default).
pub const FAILOVER_S: u64 = 10;

fn config(endpoint: &str, stream: &str, leases: &str, tag: &str, worker: &str) -> String {
    let url = pg_url();
    format!(
        r#"[pipeline]
state_dir = "state"
[[sources]]
kind = "kinesis"
stream = "{stream}"
follow = true
lease_table = "{leases}"
create_if_missing = true
worker_id = "{worker}"
[enricher]
kind = "none"
[decisor]
hash_ignore = ["stats.row_count"]
[control]
kind = "postgres"
url = "{url}"
table = "{tag}_control"
create_if_missing = true
[history]
kind = "postgres"
url = "{url}"
table = "{tag}_history"
create_if_missing = true
[content]
kind = "dir"
path = "../content"
{FILE_SINKS}[admin]
listen = ""
[aws]
endpoint_url = "{endpoint}"
access_key_id = "bench"
secret_access_key = "bench"
"#
    )
}

fn spawn(dir: &Path, config: &str) -> Child {
    std::fs::create_dir_all(dir).expect("process dir");
    std::fs::write(dir.join("config.toml"), config).expect("config");
    Command::new(BIN.as_str())
        .args(["run", "--config", "config.toml"])
        .current_dir(dir)
        .env("RUST_LOG", "warn,assetflow::adapters::aws::kinesis=info")
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.join("run.log")).expect("run.log"))
        .spawn()
        .expect("spawn assetflow")
}

/// Puts crawler runs `skip+1..=runs` on the stream (`assetflow gen`, partition key = source);
/// false, said on stderr, if that failed or took over two minutes (a dead emulator).
fn put(dir: &Path, stream: &str, runs: &str, skip: &str) -> bool {
    let out = Command::new("timeout")
        .args(["-k", "10", "120", BIN.as_str()])
        .args(["gen", "--sources", "8", "--assets", "300", "--runs", runs, "--skip-runs", skip])
        .args(["--payload", "512", "--bad", "0", "--kinesis-stream", stream, "--config", "config.toml"])
        .current_dir(dir)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run timeout(1)");
    if !out.status.success() {
        eprintln!("bench: kinesis takeover: gen to Kinesis failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    out.status.success()
}

/// Stops a worker: SIGTERM, then SIGKILL if it has not drained within 30 s.
fn stop(mut child: Child) {
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let asked = Instant::now();
    while matches!(child.try_wait(), Ok(None)) {
        if asked.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Seconds from the SIGKILL of one of two workers to a newer checkpoint, by the other, in every
/// lease the dead one held; None if that never happened within a minute.
pub fn takeover(work: &Path, endpoint: &str) -> Option<f64> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let tag = format!("kbench{}", std::process::id());
    let (stream, lease_name) = (format!("{tag}-events"), format!("{tag}-leases"));
    let root = work.join("kinesis-takeover");
    let aws = rt.block_on(Aws::load(&AwsConfig {
        region: "us-east-1".into(),
        endpoint_url: endpoint.into(),
        access_key_id: Some("bench".into()),
        secret_access_key: Some("bench".into()),
    }));
    // An emulator that went away mid-bench leaves this figure out rather than the whole report.
    let created = rt.block_on(async {
        let k = aws_sdk_kinesis::Client::new(&aws.sdk);
        k.create_stream().stream_name(&stream).shard_count(SHARDS).send().await.map_err(|e| format!("{e:?}"))?;
        for _ in 0..100 {
            let d = k.describe_stream_summary().stream_name(&stream).send().await.map_err(|e| format!("{e:?}"))?;
            if d.stream_description_summary().is_some_and(|s| s.stream_status().as_str() == "ACTIVE") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok::<(), String>(())
    });
    if let Err(e) = created {
        eprintln!("bench: kinesis takeover: could not create the stream: {e}");
        return None;
    }
    let (a_dir, b_dir) = (root.join("a"), root.join("b"));
    let mut a = spawn(&a_dir, &config(endpoint, &stream, &lease_name, &tag, "a"));
    if !put(&a_dir, &stream, "1", "0") {
        stop(a);
        return None;
    }
    let mut b = spawn(&b_dir, &config(endpoint, &stream, &lease_name, &tag, "b"));
    let table = LeaseTable::new(&aws, &lease_name);
    let list = || rt.block_on(table.list()).unwrap_or_default();
    let owned_by = |leases: &[Lease], w: &str| -> Vec<Lease> {
        leases.iter().filter(|l| l.owner.as_deref() == Some(w)).cloned().collect()
    };
    // Both workers hold leases and a has checkpointed in one of its own.
    let started = Instant::now();
    let held = loop {
        let leases = list();
        let mine = owned_by(&leases, "a");
        if !mine.is_empty() && !owned_by(&leases, "b").is_empty() && mine.iter().any(|l| l.checkpoint != TRIM_HORIZON) {
            break mine;
        }
        if started.elapsed() > Duration::from_secs(120) {
            eprintln!("bench: kinesis takeover: the leases never spread ({leases:?})");
            let _ = (a.kill(), b.kill(), a.wait(), b.wait());
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // SAFETY: signalling our own child.
    unsafe { libc::kill(a.id() as i32, libc::SIGKILL) };
    let killed = Instant::now();
    let _ = a.wait();
    // The next run arrives on every shard: the dead worker's shards have news to checkpoint.
    if !put(&a_dir, &stream, "2", "1") {
        stop(b);
        return None;
    }
    let mut result = None;
    while killed.elapsed() < Duration::from_secs(60) {
        let now = list();
        let moved = held.iter().all(|h| {
            now.iter().any(|l| l.shard == h.shard && l.owner.as_deref() == Some("b") && l.checkpoint != h.checkpoint)
        });
        if moved {
            result = Some(killed.elapsed().as_secs_f64());
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    stop(b);
    let shards: Vec<&str> = held.iter().map(|l| l.shard.as_str()).collect();
    eprintln!("bench: kinesis takeover after SIGKILL {result:?} s (shards {shards:?})");
    result
}
