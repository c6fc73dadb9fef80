//! Several processes on one Kafka consumer group, with the control table and history in
//! PostgreSQL: whatever joins, dies or stalls, the union of their outputs (de-duplicated by
//! `decision_id`) and the control table are exactly those of one process over the same input.
//!
//! The reference is one process reading the same events from a file: decisions depend only on
//! each source's order, which a source-keyed topic keeps on one partition. For the reference
//! model's streams (`tests/model/`) the reference is the model itself.

mod common;
mod model;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use assetflow::adapters::postgres::control::PgControl;
use assetflow_actors::ports::ControlStore;
use common::kafka::{brokers, create_topic, produce_lines, require_broker};
use common::scale::{assert_same_outputs, control_row, decided, holds_everything, run_reference, shared_config, union};
use common::{Outputs, pg_url};
use serde_json::Value;

/// 12 sources × 600 tables × 5 runs (every third stops half-way and trips the drop guard),
/// with churn, assets missing from runs (drops), re-deliveries and malformed lines.
const GEN: &[&str] =
    &["--sources", "12", "--assets", "600", "--runs", "5", "--halfway-every", "3", "--payload", "200", "--seed", "15"];

fn unique(prefix: &str) -> String {
    format!("{prefix}_{}_{}", std::process::id(), fastrand::u32(..))
}

struct Setup {
    /// Holds every working folder of the test.
    root: tempfile::TempDir,
    topic: String,
    group: String,
    content: PathBuf,
    /// The control table the group's processes share.
    control: String,
    history: String,
    reference: Reference,
}

/// One process over the same input, from a file.
struct Reference {
    outputs: Outputs,
    control: Vec<Value>,
}

fn config(source: &str, control: &str, history: &str, content: &Path) -> String {
    shared_config(source, control, history, content, "[admin]\nlisten = \"\"\n")
}

fn generate(dir: &Path, to: &[&str]) {
    common::scale::generate(dir, GEN, to);
}

/// The control table as [`common::scale::control_row`]s, completion marks included.
fn control_rows(table: &str) -> Vec<Value> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let store = PgControl::new(&pg_url(), table, 2, Duration::from_secs(5)).unwrap();
    let mut rows: Vec<Value> =
        rt.block_on(store.list_all()).expect("list the control table").iter().map(control_row).collect();
    rows.sort_by(|a, b| a["asset_key"].as_str().cmp(&b["asset_key"].as_str()));
    rows
}

fn setup(name: &str) -> Setup {
    require_broker();
    let root = tempfile::tempdir().unwrap();
    let content = root.path().join("content");
    let (topic, group) = (unique(name), unique("group"));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(create_topic(&topic, 6));
    generate(root.path(), &["--kafka-brokers", &brokers(), "--topic", &topic]);

    let (control, history) = (unique("ref_control"), unique("ref_history"));
    let outputs = run_reference(&root.path().join("reference"), GEN, 30_000, |source| {
        config(source, &control, &history, &content)
    });
    let reference = Reference { outputs, control: control_rows(&control) };
    Setup { root, topic, group, content, control: unique("control"), history: unique("history"), reference }
}

/// A member of the group, in its own folder.
struct Member {
    dir: PathBuf,
    child: Child,
}

impl Setup {
    fn start(&self, name: &str) -> Member {
        let dir = self.root.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let source = format!(
            "kind = \"kafka\"\nbrokers = \"{}\"\ntopic = \"{}\"\ngroup = \"{}\"\nsession_timeout_ms = 6000",
            brokers(),
            self.topic,
            self.group
        );
        std::fs::write(dir.join("config.toml"), config(&source, &self.control, &self.history, &self.content)).unwrap();
        let child = common::bin()
            .arg("run")
            .current_dir(&dir)
            .env("RUST_LOG", "warn,assetflow::adapters::kafka=info")
            .env("NO_COLOR", "1")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.join("run.log")).unwrap())
            .spawn()
            .expect("spawn assetflow");
        Member { child, dir }
    }

    fn dirs(members: &[&Member]) -> Vec<std::path::PathBuf> {
        members.iter().map(|m| m.dir.clone()).collect()
    }

    fn upserts_so_far(&self, members: &[&Member]) -> usize {
        decided(&Self::dirs(members)).0
    }

    /// Waits until the union holds as many distinct decisions and dead letters as the
    /// reference (or `limit`).
    fn wait_for_all(&self, members: &[&Member], limit: Duration) {
        let started = Instant::now();
        while started.elapsed() < limit {
            if holds_everything(&Self::dirs(members), &self.reference.outputs) {
                break;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        // Whatever a late member still writes must show in the comparison.
        std::thread::sleep(Duration::from_secs(3));
    }

    /// The union equals the reference exactly; no id names two decisions; same control table.
    fn check(&self, members: &[&Member]) {
        assert_same_outputs(&union(&Self::dirs(members)), &self.reference.outputs);
        assert_eq!(control_rows(&self.control), self.reference.control, "the control table is one process's");
    }
}

impl Member {
    /// The group gave this process partitions at least once.
    fn assigned(&self) -> bool {
        std::fs::read_to_string(self.dir.join("run.log")).is_ok_and(|l| l.contains("partitions assigned"))
    }
}

fn signal(m: &Member, sig: i32) {
    // SAFETY: signalling our own child.
    unsafe { libc::kill(m.child.id() as i32, sig) };
}

fn stop(mut m: Member) -> Member {
    signal(&m, libc::SIGTERM);
    let status = m.child.wait().unwrap();
    assert!(status.success(), "{} stops cleanly on SIGTERM: {status}", m.dir.display());
    m
}

fn wait_until(limit: Duration, mut ok: impl FnMut() -> bool) {
    let started = Instant::now();
    while !ok() && started.elapsed() < limit {
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn three_processes_joining_and_dying_decide_exactly_as_one() {
    let s = setup("scale");
    let total = s.reference.outputs.upserts.len();
    let one = s.start("one");
    wait_until(Duration::from_secs(120), || s.upserts_so_far(&[&one]) >= total / 6);
    let two = s.start("two");
    wait_until(Duration::from_secs(120), || s.upserts_so_far(&[&one, &two]) >= total / 2);
    let mut one = one;
    signal(&one, libc::SIGKILL);
    one.child.wait().unwrap();
    let three = s.start("three");
    s.wait_for_all(&[&one, &two, &three], Duration::from_secs(240));
    let (two, three) = (stop(two), stop(three));
    // Each took part: the first two decided, the third was given partitions (it may find them
    // read to the end already, on a busy machine).
    let decided = |m: &Member| Outputs::read(&m.dir).upserts.len();
    assert!(decided(&one) > 0 && decided(&two) > 0, "{} {}", decided(&one), decided(&two));
    assert!(three.assigned(), "the third process was given partitions");
    s.check(&[&one, &two, &three]);
}

#[test]
fn a_process_stalled_past_its_session_loses_whatever_it_writes_late() {
    let s = setup("stall");
    let total = s.reference.outputs.upserts.len();
    let one = s.start("one");
    wait_until(Duration::from_secs(120), || s.upserts_so_far(&[&one]) >= total / 4);
    // Frozen with messages in flight, past the 6 s session: its partitions move to the next.
    signal(&one, libc::SIGSTOP);
    let two = s.start("two");
    wait_until(Duration::from_secs(120), || s.upserts_so_far(&[&one, &two]) >= total * 3 / 4);
    // Thawed: it finishes what it had in flight against records the new owner has moved on.
    signal(&one, libc::SIGCONT);
    s.wait_for_all(&[&one, &two], Duration::from_secs(240));
    let (one, two) = (stop(one), stop(two));
    let mut by_process = HashMap::new();
    for m in [&one, &two] {
        by_process.insert(m.dir.display().to_string(), Outputs::read(&m.dir).upserts.len());
    }
    assert!(by_process.values().all(|n| *n > 0), "both decided part of the crawl: {by_process:?}");
    s.check(&[&one, &two]);
}

/// The reference model's streams (`tests/model/`) on a topic of three partitions, read by a
/// group whose members join and die ([`model::harness::shared`]). The generated crawl above
/// weighs scale; these weigh the rules across hand-overs: completions waiting for
/// `expected_assets`, read late or twice, re-deliveries and bad lines.
#[test]
fn generated_streams_read_by_a_group_whose_members_join_and_die_decide_as_the_model_says() {
    require_broker();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut rng = fastrand::Rng::with_seed(11);
    let failed = model::harness::each(3000..3002, |seed| {
        let root = tempfile::tempdir().unwrap();
        let topic = |lines: &[String]| {
            let topic = unique("model");
            rt.block_on(create_topic(&topic, 3));
            rt.block_on(produce_lines(&topic, lines));
            let group = unique("group");
            format!(
                "kind = \"kafka\"\nbrokers = \"{}\"\ntopic = \"{topic}\"\ngroup = \"{group}\"\nsession_timeout_ms = 6000",
                brokers()
            )
        };
        let (control, history, content) = (unique("control"), unique("history"), root.path().join("content"));
        let extra = "[enricher]\nkind = \"file\"\npath = \"business.json\"\n[admin]\nlisten = \"\"\n";
        let config = |source: &str| shared_config(source, &control, &history, &content, extra);
        model::harness::shared(seed, &mut rng, &topic, &config)
    });
    assert!(failed.is_empty(), "{}", failed.join("\n\n"));
}
