//! PostgreSQL stopped and started again mid-run, as the enricher's database and as the home of
//! the control table and history: calls are retried with back-off, `/readyz` names what is
//! failing, nothing is lost, and the decisions are those of a run without the outage.
//! (Its own test binary: it stops the PostgreSQL of `make services`, which others use.)

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::{Outputs, bin, free_port, http_get as get};

fn url() -> String {
    common::pg_url()
}

fn pg_ctl(action: &str) {
    let version = std::fs::read_dir("/usr/lib/postgresql")
        .expect("Debian's postgresql: run `make services`")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .max_by_key(|v| v.parse::<u32>().unwrap_or(0))
        .expect("a postgresql version");
    let status = std::process::Command::new("pg_ctlcluster")
        .args([&version, "main", action, "-m", "fast"])
        .status()
        .expect("pg_ctlcluster");
    assert!(status.success(), "pg_ctlcluster {action}");
}

/// Polls `path` until `want(status, body)` or 30 s pass.
fn wait_for(port: u16, path: &str, want: impl Fn(u16, &str) -> bool) -> bool {
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(30) {
        if let Some((status, body)) = get(port, path) {
            if want(status, &body) {
                return true;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

fn setup(dir: &std::path::Path) {
    setup_with(dir, false, "");
}

fn setup_with(dir: &std::path::Path, follow: bool, admin: &str) {
    let status = bin()
        .args(["gen", "--sources", "3", "--assets", "150", "--runs", "3", "--out", "events.jsonl"])
        .current_dir(dir)
        .env("RUST_LOG", "warn")
        .status()
        .unwrap();
    assert!(status.success());
    let enricher = format!(
        r#"[enricher]
kind = "postgres"
url = "{url}"
query = "SELECT domain, owner FROM outage_catalog WHERE source = $1 AND database = $2 AND schema_name = $3"
cache_ttl = "0s"
timeout = "1s""#,
        url = url()
    );
    std::fs::write(dir.join("config.toml"), run_config(&enricher, follow, admin)).unwrap();
}

/// A run over `events.jsonl` with `sections` (the enricher, or the control table and history)
/// and retries long enough to ride out a short outage.
fn run_config(sections: &str, follow: bool, admin: &str) -> String {
    format!(
        r#"
[pipeline]
state_dir = "state"
[[sources]]
kind = "file"
path = "events.jsonl"
follow = {follow}
[decisor]
hash_ignore = ["stats.row_count"]
{sections}
[retry]
initial = "100ms"
max = "1s"
attempts = 40
timeout = "2s"
[admin]
listen = "{admin}"
"#
    )
}

/// Runs assetflow in `dir` (admin on `port`) while PostgreSQL goes down for a second, `after`
/// the service is ready: `/readyz` must name `failing` meanwhile and be 200 again after it is
/// back, and all `lines` events must be read and acknowledged. Returns the run's output after
/// a SIGTERM.
fn run_through_an_outage(
    dir: &std::path::Path,
    port: u16,
    lines: u64,
    after: Duration,
    failing: &str,
) -> std::process::Output {
    let child = bin()
        .arg("run")
        .current_dir(dir)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(wait_for(port, "/readyz", |s, _| s == 200), "ready before the outage");
    std::thread::sleep(after);
    pg_ctl("stop");
    let saw_503 = wait_for(port, "/readyz", |s, body| s == 503 && body.contains(failing));
    std::thread::sleep(Duration::from_secs(1));
    pg_ctl("start");
    assert!(saw_503, "/readyz names the failing {failing} while the database is down");
    assert!(wait_for(port, "/readyz", |s, _| s == 200), "/readyz is 200 again once it is back");
    let drained = wait_for(port, "/status.json", |_, body| {
        let v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
        v["events_in"].as_object().map(|o| o.values().filter_map(|n| n.as_u64()).sum::<u64>()) == Some(lines)
            && v["in_flight"].as_object().is_some_and(|o| o.values().all(|n| n == 0))
    });
    assert!(drained, "the whole input was processed");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    child.wait_with_output().unwrap()
}

/// Empties `events.jsonl` and writes its lines back 40 every 100 ms, as a crawler would, so
/// that events certainly arrive during the outage: the whole file at once is decided before the
/// database goes down. Returns the number of lines and the writer.
fn crawl_slowly(dir: &std::path::Path) -> (u64, std::thread::JoinHandle<()>) {
    let path = dir.join("events.jsonl");
    let all: Vec<String> = std::fs::read_to_string(&path).unwrap().lines().map(str::to_owned).collect();
    std::fs::write(&path, "").unwrap();
    let lines = all.len() as u64;
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
        for chunk in all.chunks(40) {
            for l in chunk {
                writeln!(f, "{l}").unwrap();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    (lines, writer)
}

/// Both tests here restart the one PostgreSQL server: one at a time.
static SERVER: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn a_database_outage_mid_run_loses_nothing() {
    let _server = SERVER.lock().unwrap_or_else(|e| e.into_inner());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(&url(), tokio_postgres::NoTls).await.expect("postgres: run `make services`");
        tokio::spawn(conn);
        client
            .batch_execute(
                "DROP TABLE IF EXISTS outage_catalog; \
                 CREATE TABLE outage_catalog (source text, database text, schema_name text, domain text, owner text); \
                 INSERT INTO outage_catalog VALUES ('src-0','db0','public','d0','o0'), ('src-1','db1','public','d1','o1'), ('src-2','db2','public','d2','o2');",
            )
            .await
            .unwrap();
    });
    let clean = tempfile::tempdir().unwrap();
    setup(clean.path());
    let out = bin().arg("run").current_dir(clean.path()).env("RUST_LOG", "warn").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let clean_out = Outputs::read(clean.path());
    assert!(clean_out.upserts.iter().any(|u| u["business"]["domain"] == "d1"));

    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    // Following the file, so the service stays up to be asked whether it is ready.
    setup_with(dir.path(), true, &format!("127.0.0.1:{port}"));
    let (lines, writer) = crawl_slowly(dir.path());
    let out = run_through_an_outage(dir.path(), port, lines, Duration::from_millis(500), "enricher");
    writer.join().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("retrying"), "the outage was seen and retried through: {stderr}");
    let got = Outputs::read(dir.path());
    assert!(got.dead_letters.iter().all(|d| d["error"]["kind"] != "backend"), "no event gave up on the enricher");
    let ids = |v: &[serde_json::Value]| -> std::collections::BTreeSet<String> {
        v.iter().map(|r| format!("{}|{}", r["decision_id"].as_str().unwrap_or_default(), r["business"])).collect()
    };
    assert_eq!(ids(&got.upserts), ids(&clean_out.upserts), "same decisions, same business data");
    assert_eq!(ids(&got.drops), ids(&clean_out.drops));
}

#[test]
fn an_outage_of_the_control_table_and_history_mid_run_loses_nothing() {
    let _server = SERVER.lock().unwrap_or_else(|e| e.into_inner());
    // The same events through the embedded stores: the decisions to expect.
    let clean = tempfile::tempdir().unwrap();
    setup(clean.path());
    std::fs::write(clean.path().join("config.toml"), run_config("", false, "")).unwrap();
    let out = bin().arg("run").current_dir(clean.path()).env("RUST_LOG", "warn").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let clean_out = Outputs::read(clean.path());
    assert!(!clean_out.upserts.is_empty() && !clean_out.drops.is_empty());

    let dir = tempfile::tempdir().unwrap();
    setup(dir.path());
    let port = free_port();
    let suffix = format!("{}_{}", std::process::id(), free_port());
    let stores = format!(
        "[control]\nkind = \"postgres\"\nurl = \"{url}\"\ntable = \"outage_control_{suffix}\"\ncreate_if_missing = true\ntimeout = \"1s\"\n\
         [history]\nkind = \"postgres\"\nurl = \"{url}\"\ntable = \"outage_history_{suffix}\"\ncreate_if_missing = true\ntimeout = \"1s\"",
        url = url()
    );
    std::fs::write(dir.path().join("config.toml"), run_config(&stores, true, &format!("127.0.0.1:{port}"))).unwrap();
    let (lines, writer) = crawl_slowly(dir.path());
    let out = run_through_an_outage(dir.path(), port, lines, Duration::from_millis(500), "store");
    writer.join().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let got = Outputs::read(dir.path());
    assert!(got.dead_letters.iter().all(|d| d["error"]["kind"] != "backend"), "no event gave up: {stderr}");
    let ids = |v: &[serde_json::Value]| -> std::collections::BTreeSet<String> {
        v.iter().map(|r| r["decision_id"].as_str().unwrap_or_default().to_owned()).collect()
    };
    assert_eq!(ids(&got.upserts), ids(&clean_out.upserts), "the same decisions as without the outage");
    assert_eq!(ids(&got.drops), ids(&clean_out.drops));
}
