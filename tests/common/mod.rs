//! Helpers shared by the system tests: the scenario folders, running the binary, reading and
//! comparing its outputs.
#![allow(dead_code)]

pub mod aws;
pub mod cql;
pub mod kafka;
pub mod proxy;
pub mod scale;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

/// `../shared/scenarios`, or `ASSETFLOW_SCENARIOS`.
pub fn scenarios_dir() -> PathBuf {
    std::env::var_os("ASSETFLOW_SCENARIOS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/scenarios"))
}

/// Every scenario folder, sorted.
pub fn scenarios() -> Vec<PathBuf> {
    let dir = scenarios_dir();
    let mut out: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read scenarios at {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("expected.json").exists())
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no scenarios found in {}", dir.display());
    out
}

/// File sinks in the run folder's `out/`, where [`Outputs::read`] reads them: one text for
/// [`FILE_SINKS`] and [`SCENARIO_CONFIG`].
macro_rules! file_sinks {
    () => {
        r#"[sinks.upsert]
kind = "file"
path = "out/upsert.jsonl"
[sinks.drop]
kind = "file"
path = "out/drop.jsonl"
[sinks.dead_letter]
kind = "file"
path = "out/dead-letter.jsonl"
"#
    };
}

/// The config of the scenarios README.
pub const SCENARIO_CONFIG: &str = concat!(
    r#"
[pipeline]
stages = ["enrich", "decide"]
shards = 4
state_dir = "state"
[[sources]]
kind = "file"
path = "events.jsonl"
follow = false
[enricher]
kind = "file"
path = "business.json"
[decisor]
hash_ignore = ["stats.row_count"]
max_drop_fraction = 0.5
[control]
kind = "embedded"
[content]
kind = "dir"
path = "state/content"
[history]
kind = "embedded"
"#,
    file_sinks!(),
    r#"[admin]
listen = ""
"#
);

/// File sinks in the run folder's `out/`, where [`Outputs::read`] reads them.
pub const FILE_SINKS: &str = file_sinks!();

/// A fresh working folder with a scenario's inputs and the README's config.
pub fn prepare(scenario: &Path) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    for f in ["events.jsonl", "business.json"] {
        std::fs::copy(scenario.join(f), dir.path().join(f)).unwrap_or_else(|e| panic!("copy {f}: {e}"));
    }
    std::fs::write(dir.path().join("config.toml"), SCENARIO_CONFIG).expect("write config");
    dir
}

/// The PostgreSQL `make services` starts (ASSETFLOW_TEST_PG_URL overrides it).
pub fn pg_url() -> String {
    std::env::var("ASSETFLOW_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://assetflow:assetflow@127.0.0.1:5432/assetflow".into())
}

pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_assetflow"))
}

/// Runs `assetflow <args>` in `dir`.
pub fn assetflow(dir: &Path, args: &[&str]) -> Output {
    bin().args(args).current_dir(dir).env("RUST_LOG", "warn").output().expect("run assetflow")
}

/// The JSON lines of a file (none if it does not exist).
pub fn read_lines(path: &Path) -> Vec<Value> {
    parse_lines(path, &std::fs::read_to_string(path).unwrap_or_default())
}

/// The complete JSON lines of a file another process is still writing: a last line without
/// its newline is a write in progress, not a bad line.
pub fn read_lines_so_far(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    parse_lines(path, &text[..text.rfind('\n').map_or(0, |at| at + 1)])
}

/// Each non-blank line of `text` (read from `path`) as JSON; a line that is not is a failure.
fn parse_lines(path: &Path, text: &str) -> Vec<Value> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{}: bad line {l:?}: {e}", path.display())))
        .collect()
}

/// The outputs of a run folder in the shape of `expected.json`.
#[derive(Debug, Default)]
pub struct Outputs {
    pub upserts: Vec<Value>,
    pub drops: Vec<Value>,
    pub dead_letters: Vec<Value>,
}

impl Outputs {
    pub fn read(dir: &Path) -> Outputs {
        Outputs {
            upserts: read_lines(&dir.join("out/upsert.jsonl")),
            drops: read_lines(&dir.join("out/drop.jsonl")),
            dead_letters: read_lines(&dir.join("out/dead-letter.jsonl")),
        }
    }

    /// What a running process has written so far (whole lines only).
    pub fn so_far(dir: &Path) -> Outputs {
        Outputs {
            upserts: read_lines_so_far(&dir.join("out/upsert.jsonl")),
            drops: read_lines_so_far(&dir.join("out/drop.jsonl")),
            dead_letters: read_lines_so_far(&dir.join("out/dead-letter.jsonl")),
        }
    }

    /// Keeps the first record of each `decision_id` (what a de-duplicating consumer sees).
    pub fn dedup(self) -> Outputs {
        fn d(v: Vec<Value>) -> Vec<Value> {
            let mut seen = std::collections::HashSet::new();
            v.into_iter().filter(|r| seen.insert(r["decision_id"].as_str().unwrap_or_default().to_owned())).collect()
        }
        Outputs { upserts: d(self.upserts), drops: d(self.drops), dead_letters: d(self.dead_letters) }
    }

    /// Decision ids that appear more than once.
    pub fn duplicate_ids(&self) -> Vec<String> {
        let mut count: HashMap<&str, usize> = HashMap::new();
        for r in self.upserts.iter().chain(&self.drops).chain(&self.dead_letters) {
            *count.entry(r["decision_id"].as_str().unwrap_or("")).or_default() += 1;
        }
        count.into_iter().filter(|(_, n)| *n > 1).map(|(k, _)| k.to_owned()).collect()
    }
}

/// Upserts per asset key, in order: (change, business.domain).
fn upserts_by_key(list: impl Iterator<Item = (String, String, Value)>) -> BTreeMap<String, Vec<(String, Value)>> {
    let mut m: BTreeMap<String, Vec<(String, Value)>> = BTreeMap::new();
    for (k, change, domain) in list {
        m.entry(k).or_default().push((change, domain));
    }
    m
}

/// Compares outputs with a scenario's `expected.json`, as its README says; `Err` explains.
pub fn compare(expected_path: &Path, got: &Outputs) -> Result<(), String> {
    let expected: Value =
        serde_json::from_str(&std::fs::read_to_string(expected_path).expect("read expected")).expect("parse expected");
    let want_upserts = upserts_by_key(expected["upserts"].as_array().into_iter().flatten().map(|u| {
        (u[0].as_str().unwrap_or_default().to_owned(), u[1].as_str().unwrap_or_default().to_owned(), u[2].clone())
    }));
    let got_upserts = upserts_by_key(got.upserts.iter().map(|u| {
        (
            u["asset_key"].as_str().unwrap_or_default().to_owned(),
            u["change"].as_str().unwrap_or_default().to_owned(),
            u["business"]["domain"].clone(),
        )
    }));
    let mut problems = Vec::new();
    for key in want_upserts.keys().chain(got_upserts.keys()).collect::<std::collections::BTreeSet<_>>() {
        let (w, g) = (want_upserts.get(key), got_upserts.get(key));
        if w != g {
            problems.push(format!("upserts of {key}: expected {w:?}, got {g:?}"));
        }
    }
    let mut want_drops: Vec<String> =
        expected["drops"].as_array().into_iter().flatten().map(|d| d.as_str().unwrap_or_default().to_owned()).collect();
    let mut got_drops: Vec<String> =
        got.drops.iter().map(|d| d["asset_key"].as_str().unwrap_or_default().to_owned()).collect();
    want_drops.sort();
    got_drops.sort();
    if want_drops != got_drops {
        problems.push(format!("drops: expected {want_drops:?}, got {got_drops:?}"));
    }
    let want_dl: BTreeMap<String, u64> = expected["dead_letters"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
        .collect();
    let mut got_dl: BTreeMap<String, u64> = BTreeMap::new();
    for d in &got.dead_letters {
        *got_dl.entry(d["error"]["kind"].as_str().unwrap_or_default().to_owned()).or_default() += 1;
    }
    if want_dl != got_dl {
        problems.push(format!("dead letters: expected {want_dl:?}, got {got_dl:?}"));
    }
    if problems.is_empty() { Ok(()) } else { Err(problems.join("\n")) }
}

/// A scenario's `expected.json` written to `dir`, less the `too_large` dead letters of lines a
/// transport refused before assetflow could see them (Kinesis and Kafka cap a message at 1 MiB).
pub fn expected_without_refused(scenario: &Path, refused: usize, dir: &Path) -> PathBuf {
    let mut want: Value =
        serde_json::from_str(&std::fs::read_to_string(scenario.join("expected.json")).expect("expected"))
            .expect("json");
    if refused > 0 {
        let n = want["dead_letters"]["too_large"].as_u64().unwrap_or(0).saturating_sub(refused as u64);
        want["dead_letters"]["too_large"] = n.into();
        if n == 0 {
            if let Some(o) = want["dead_letters"].as_object_mut() {
                o.remove("too_large");
            }
        }
    }
    let path = dir.join("expected.json");
    std::fs::write(&path, want.to_string()).expect("write expected");
    path
}

/// A free TCP port on 127.0.0.1 (for an admin server).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// A plain HTTP/1.1 GET on 127.0.0.1: (status, body).
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    http_request(port, "GET", path, b"")
}

/// A plain HTTP/1.1 request on 127.0.0.1 with a JSON body: (status, body).
pub fn http_request(port: u16, method: &str, path: &str, body: &[u8]) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(30))).ok()?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .ok()?;
    s.write_all(body).ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let status = buf.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, buf.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default()))
}

/// `assetflow run` in `dir`, in the background, quiet.
/// The lines of `assetflow gen` for 3 sources of `assets` assets each, over `runs` runs.
pub fn crawl_lines(assets: &str, runs: &str) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let out = assetflow(
        dir.path(),
        &["gen", "--sources", "3", "--assets", assets, "--runs", runs, "--bad", "0", "--out", "all.jsonl"],
    );
    assert!(out.status.success());
    std::fs::read_to_string(dir.path().join("all.jsonl")).unwrap().lines().map(str::to_owned).collect()
}

/// Events the service whose admin listens on `port` has read so far (every source's
/// `events_in` in `/status.json`); 0 while it does not answer.
pub fn events_in(port: u16) -> u64 {
    let Some((200, body)) = http_get(port, "/status.json") else { return 0 };
    let v: Value = serde_json::from_str(&body).unwrap_or_default();
    v["events_in"].as_object().map_or(0, |m| m.values().filter_map(Value::as_u64).sum())
}

/// Polls `ok` every 200 ms until it holds or `limit` has passed; whether it held.
pub fn wait_until(limit: std::time::Duration, mut ok: impl FnMut() -> bool) -> bool {
    let started = std::time::Instant::now();
    while started.elapsed() < limit {
        if ok() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    false
}

pub fn spawn_run(dir: &Path) -> std::process::Child {
    bin()
        .arg("run")
        .current_dir(dir)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn assetflow")
}

/// `assetflow` with `args` in `dir` (`RUST_LOG=warn`), its stderr kept, until it ends by
/// itself: its exit status and stderr. Past `limit` it is killed and the test fails: a process
/// that neither ends nor refuses is what these tests are there to catch.
pub fn run_until_it_ends(dir: &Path, args: &[&str], limit: std::time::Duration) -> (std::process::ExitStatus, String) {
    let mut child = bin()
        .args(args)
        .current_dir(dir)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn assetflow");
    // Read while it runs: a full pipe would otherwise stall a process that logs much.
    let mut stderr = child.stderr.take().expect("piped stderr");
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
        text
    });
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("`assetflow {}` neither ended nor refused in {limit:?}: {}", args.join(" "), reader.join().unwrap());
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    (status, reader.join().unwrap())
}
