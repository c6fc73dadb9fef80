//! Several processes on one Kafka consumer group, control table and history in PostgreSQL:
//! events/s with 1, 2 and 3 processes on the same steady crawl, PostgreSQL round trips per
//! 1,000 events, and the time from a SIGKILL to the next commit of the dead process's
//! partitions by their new owner.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use super::{BIN, FILE_SINKS, strip_ansi};

const PARTITIONS: i32 = 6;
const SOURCES: usize = 12;
/// Assets a crawl has (a steady crawl sends each once, less the missing, plus the completions):
/// the size every other section runs. With a quarter of it, a member of three drained its
/// share within a second of its assignment, and a member leaving that soon stalls this broker's
/// group for good (tansu holds a follower's early SyncGroup for a second, and a leave inside it
/// fails that sync; benches/analysis.md, twenty-eighth session).
const ASSETS: usize = 100_000;
/// The session timeout the processes run with: a dead member's partitions wait this long.
const SESSION_MS: u64 = 6000;

pub struct ScaleReport {
    events: u64,
    /// (processes, seconds from start to the last exit, seconds from the first assignment).
    runs: Vec<(usize, f64, f64)>,
    /// PostgreSQL round trips per 1,000 events with one process, by call.
    round_trips: Vec<(String, f64)>,
    /// Seconds from the SIGKILL to the first commit of every partition it held.
    takeover: Option<f64>,
}

/// `ASSETFLOW_TEST_PG_URL`, default the PostgreSQL of `make services`.
pub fn pg_url() -> String {
    std::env::var("ASSETFLOW_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://assetflow:assetflow@127.0.0.1:5432/assetflow".into())
}

fn psql(sql: &str) {
    let status = Command::new("psql").args([&pg_url(), "-q", "-v", "ON_ERROR_STOP=1", "-c", sql]).status();
    assert!(status.is_ok_and(|s| s.success()), "psql: {sql}");
}

fn create_topic(brokers: &str, name: &str) {
    use rdkafka::ClientConfig;
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let admin: AdminClient<DefaultClientContext> =
            ClientConfig::new().set("bootstrap.servers", brokers).create().expect("admin client");
        let topic = NewTopic::new(name, PARTITIONS, TopicReplication::Fixed(1));
        for r in admin.create_topics(&[topic], &AdminOptions::new()).await.expect("create topic") {
            r.expect("topic created");
        }
    });
}

fn config(brokers: &str, topic: &str, group: &str, control: &str, history: &str, follow: bool, admin: &str) -> String {
    let url = pg_url();
    format!(
        r#"[pipeline]
state_dir = "state"
[[sources]]
kind = "kafka"
brokers = "{brokers}"
topic = "{topic}"
group = "{group}"
session_timeout_ms = {SESSION_MS}
follow = {follow}
[enricher]
kind = "none"
[decisor]
hash_ignore = ["stats.row_count"]
[control]
kind = "postgres"
url = "{url}"
table = "{control}"
create_if_missing = true
[history]
kind = "postgres"
url = "{url}"
table = "{history}"
create_if_missing = true
[content]
kind = "dir"
path = "../content"
{FILE_SINKS}[admin]
listen = "{admin}"
"#
    )
}

fn spawn(dir: &Path, config: &str) -> Child {
    std::fs::create_dir_all(dir).expect("process dir");
    std::fs::write(dir.join("config.toml"), config).expect("config");
    Command::new(BIN.as_str())
        .args(["run", "--config", "config.toml", "--summary-json", "summary.json"])
        .current_dir(dir)
        .env("RUST_LOG", "warn,assetflow::adapters::kafka=info")
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.join("run.log")).expect("run.log"))
        .spawn()
        .expect("spawn assetflow")
}

fn summary(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join("summary.json")).expect("summary.json")).expect("summary json")
}

/// Times of the log lines of `dir` that contain `what`, and the lines.
fn log_lines(dir: &Path, what: &str) -> Vec<(chrono::DateTime<chrono::Utc>, String)> {
    let text = std::fs::read_to_string(dir.join("run.log")).unwrap_or_default();
    text.lines()
        .filter(|l| l.contains(what))
        .map(strip_ansi)
        .filter_map(|l| Some((l.split_whitespace().next()?.parse().ok()?, l)))
        .collect()
}

pub fn scale(work: &Path, brokers: &str) -> ScaleReport {
    let tag = format!("scale{}", std::process::id());
    let root = work.join("scale");
    std::fs::create_dir_all(&root).expect("scale dir");
    let assets = (ASSETS / SOURCES).to_string();
    let mut events = 0;
    for (crawl, runs, skip) in [("first", "1", "0"), ("steady", "2", "1")] {
        let topic = format!("{tag}-{crawl}");
        create_topic(brokers, &topic);
        let out = Command::new(BIN.as_str())
            .args(["gen", "--sources", &SOURCES.to_string(), "--assets", &assets, "--runs", runs, "--skip-runs", skip])
            .args(["--churn", "0.02", "--missing", "0.01", "--payload", "1024", "--bad", "0", "--redeliver", "0"])
            .args(["--topic", &topic, "--kafka-brokers", brokers])
            .env("RUST_LOG", "warn")
            .output()
            .expect("gen to kafka");
        assert!(out.status.success(), "gen to Kafka failed");
    }
    // The state a first crawl leaves, once; each measured run starts from a copy of it.
    let base = format!("{tag}_control");
    let first = root.join("first");
    let mut p = spawn(
        &first,
        &config(brokers, &format!("{tag}-first"), &format!("{tag}-first"), &base, &format!("{tag}_history"), false, ""),
    );
    assert!(p.wait().expect("wait").success(), "the first crawl failed: {}", first.display());

    let mut runs = Vec::new();
    let mut round_trips = Vec::new();
    for k in 1..=3usize {
        // A round whose processes do not all finish is run again, once, from a fresh copy of
        // the state and a new group: a group on this broker whose leader left while it held a
        // follower's SyncGroup assigns nothing ever again (see ASSETS).
        let Some(round) = (1..=2).find_map(|attempt| steady_round(&root, brokers, &tag, &base, k, attempt)) else {
            panic!("{k} processes on one group did not finish twice in {ROUND_LIMIT:?}: see {}", root.display());
        };
        let Round { seconds, first_assignment, summaries } = round;
        if k == 1 {
            events = summaries[0]["events_in"].as_u64().unwrap_or(0);
            let calls = summaries[0]["backend_calls"].as_object().cloned().unwrap_or_default();
            for (name, n) in calls {
                if name.starts_with("control store") || name.starts_with("history store") {
                    round_trips.push((name, n.as_f64().unwrap_or(0.0) * 1000.0 / events.max(1) as f64));
                }
            }
        }
        eprintln!("bench: scale {k} processes {:.0} events/s", events as f64 / seconds);
        runs.push((k, seconds, seconds - first_assignment));
    }
    let takeover = takeover(&root, brokers, &tag, &base);
    ScaleReport { events, runs, round_trips, takeover }
}

/// How long the processes of one steady round may take (each takes seconds).
const ROUND_LIMIT: Duration = Duration::from_secs(120);

/// One measured steady round: its seconds, when its first partition was assigned, and each
/// process's summary.
struct Round {
    seconds: f64,
    first_assignment: f64,
    summaries: Vec<serde_json::Value>,
}

/// `k` processes of one group decide the steady crawl over a copy of the first crawl's state;
/// `None` (every process killed) if they have not all exited within [`ROUND_LIMIT`].
fn steady_round(root: &Path, brokers: &str, tag: &str, base: &str, k: usize, attempt: usize) -> Option<Round> {
    let control = format!("{tag}_control_{k}_{attempt}");
    psql(&format!("CREATE TABLE {control} (LIKE {base} INCLUDING ALL); INSERT INTO {control} SELECT * FROM {base}"));
    let group = format!("{tag}-steady-{k}-{attempt}");
    let history = format!("{tag}_history_{k}_{attempt}");
    let started = Instant::now();
    let began = chrono::Utc::now();
    let dirs: Vec<PathBuf> = (0..k).map(|i| root.join(format!("steady-{k}-{i}"))).collect();
    for d in &dirs {
        let _ = std::fs::remove_dir_all(d);
    }
    let mut children: Vec<Child> = dirs
        .iter()
        .map(|d| spawn(d, &config(brokers, &format!("{tag}-steady"), &group, &control, &history, false, "")))
        .collect();
    for (c, d) in children.iter_mut().zip(&dirs) {
        let status = loop {
            if let Some(status) = c.try_wait().expect("wait") {
                break Some(status);
            }
            if started.elapsed() > ROUND_LIMIT {
                break None;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        match status {
            Some(status) => assert!(status.success(), "a steady run failed: {}", d.display()),
            None => {
                eprintln!("bench: scale {k} processes, attempt {attempt}: {} did not finish; killed", d.display());
                for c in &mut children {
                    let _ = c.kill();
                    let _ = c.wait();
                }
                return None;
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let first_assignment = dirs
        .iter()
        .flat_map(|d| log_lines(d, "partitions assigned"))
        .map(|(t, _)| t)
        .min()
        .map_or(0.0, |t| (t - began).as_seconds_f64().max(0.0));
    let summaries = dirs.iter().map(|d| summary(d)).collect();
    Some(Round { seconds, first_assignment, summaries })
}

/// Two processes read the steady crawl; one is killed once both hold partitions. Returns the
/// seconds until every partition it held has a newer committed offset (its new owner's).
fn takeover(root: &Path, brokers: &str, tag: &str, base: &str) -> Option<f64> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::{ClientConfig, Offset, TopicPartitionList};
    let control = format!("{tag}_control_kill");
    psql(&format!("CREATE TABLE {control} (LIKE {base} INCLUDING ALL); INSERT INTO {control} SELECT * FROM {base}"));
    let (topic, group) = (format!("{tag}-steady"), format!("{tag}-kill"));
    let dirs = [root.join("kill-a"), root.join("kill-b")];
    let history = format!("{tag}_history_kill");
    let mut a = spawn(&dirs[0], &config(brokers, &topic, &group, &control, &history, true, ""));
    let mut b = spawn(&dirs[1], &config(brokers, &topic, &group, &control, &history, true, ""));
    // Both members hold partitions, and the group has committed some of A's progress.
    let held = |d: &Path| -> Vec<i32> {
        let lines = log_lines(d, "partitions assigned");
        let Some((_, last)) = lines.last() else { return Vec::new() };
        let Some(list) = last.split("partitions=[").nth(1).and_then(|r| r.split(']').next()) else { return Vec::new() };
        list.split(',').filter_map(|p| p.trim().parse().ok()).collect()
    };
    let started = Instant::now();
    while (held(&dirs[0]).is_empty() || held(&dirs[1]).is_empty()) && started.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    let parts = held(&dirs[0]);
    let reader: BaseConsumer =
        ClientConfig::new().set("bootstrap.servers", brokers).set("group.id", &group).create().expect("offset reader");
    let committed = |parts: &[i32]| -> Vec<i64> {
        let mut tpl = TopicPartitionList::new();
        for p in parts {
            tpl.add_partition(&topic, *p);
        }
        let got = reader.committed_offsets(tpl, Duration::from_secs(5)).expect("committed offsets");
        parts
            .iter()
            .map(|p| match got.find_partition(&topic, *p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => o,
                _ => -1,
            })
            .collect()
    };
    // SAFETY: signalling our own child.
    unsafe { libc::kill(a.id() as i32, libc::SIGKILL) };
    let killed = Instant::now();
    let at_kill = committed(&parts);
    let _ = a.wait();
    // The next crawl arrives meanwhile, on every partition: the dead member's partitions have
    // news for their next owner to commit (the first crawl may be all read already).
    let out = Command::new(BIN.as_str())
        .args(["gen", "--sources", &SOURCES.to_string(), "--assets", "500", "--runs", "3", "--skip-runs", "2"])
        .args(["--payload", "1024", "--bad", "0", "--topic", &topic, "--kafka-brokers", brokers])
        .env("RUST_LOG", "warn")
        .output()
        .expect("gen to kafka");
    assert!(out.status.success(), "gen to Kafka failed");
    // Messages are keyed by source, so with 12 sources on 6 partitions a partition may hold
    // none (src-* never lands on partition 4): its offset can never move, and is not waited for.
    let with_data: Vec<bool> = parts
        .iter()
        .map(|p| reader.fetch_watermarks(&topic, *p, Duration::from_secs(5)).is_ok_and(|(_, high)| high > 0))
        .collect();
    let mut result = None;
    while killed.elapsed() < Duration::from_secs(60) {
        let now = committed(&parts);
        let moved = now.iter().zip(&at_kill).zip(&with_data).all(|((n, k), data)| n > k || !data);
        if with_data.contains(&true) && moved {
            result = Some(killed.elapsed().as_secs_f64());
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // SAFETY: signalling our own child.
    unsafe { libc::kill(b.id() as i32, libc::SIGTERM) };
    let _ = b.wait();
    eprintln!("bench: scale takeover after SIGKILL {result:?} s (partitions {parts:?}, with messages {with_data:?})");
    result
}

impl ScaleReport {
    pub fn write(&self, out: &mut String, brokers: &str) {
        let one = self.runs.first().map_or(1.0, |r| self.events as f64 / r.1);
        let mut table = String::new();
        for (k, seconds, after_join) in &self.runs {
            let rate = self.events as f64 / seconds;
            let _ = writeln!(
                table,
                "| {k} | {rate:.0} | {:.2}x | {:.0} |",
                rate / one,
                self.events as f64 / after_join.max(1e-9)
            );
        }
        let total: f64 = self.round_trips.iter().map(|(_, n)| n).sum();
        let calls: Vec<String> = self.round_trips.iter().map(|(c, n)| format!("{c} {n:.1}")).collect();
        let takeover = self.takeover.map_or("not measured (the partitions were never committed again)".into(), |s| {
            format!("**{s:.1} s** (session timeout {:.0} s)", SESSION_MS as f64 / 1e3)
        });
        let limit = ROUND_LIMIT.as_secs();
        let _ = writeln!(
            out,
            "## Several processes on one Kafka group\n\nThe steady crawl of {SOURCES} sources ({} events, ~1 KiB, a topic of {PARTITIONS} partitions on {brokers}),\nover the state a first crawl left, decided by 1, 2 and 3 processes of one consumer group\n(`follow = false`: each exits once its partitions are read), control table and history in\nPostgreSQL (each run starts from a copy of the same table). Wall time from the start to the\nlast exit, so it includes the group join; all processes share this machine's cores with the\nbroker and the database. A round whose processes have not all exited within {limit} s is killed and\nrun once more, from a fresh copy under a new group (the bench's log says so).\n\n| processes | events/s | vs 1 | events/s after the first assignment |\n|---|---|---|---|\n{table}\nProcesses on the same cores as one, with the broker and the database, add no speed there;\nthe rows show what a group of several costs on them. A member\nthat has read its partitions leaves, the group rebalances, and the members still reading\nare given the partitions it left only after the broker's join (half the session timeout)\nto find them read. More cores, or more machines, is where the group pays.\n\nPostgreSQL round trips per 1,000 events, one process: **{total:.1}** (target: at most 30;\n{}).\n\nTime from a SIGKILL of one of two processes to a newer committed offset on every partition\nit held (its new owner's): {takeover}.\n",
            self.events,
            calls.join(", ")
        );
    }
}
