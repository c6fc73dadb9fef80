//! The status page in a real headless browser (Debian's chromium): it renders the topology,
//! its numbers move while events flow, a throttled sink is marked as the slowest stage, and
//! screenshots are kept in target/test-artifacts/.

mod common;

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{SCENARIO_CONFIG, aws, proxy};

fn chromium() -> &'static str {
    for c in ["/usr/bin/chromium", "/usr/bin/chromium-browser"] {
        if std::path::Path::new(c).exists() {
            return c;
        }
    }
    panic!("no chromium: run `make services` (it installs Debian's chromium)");
}

/// Loads the page, lets its script run, and returns the DOM it built (and a screenshot).
fn render(url: &str, screenshot: Option<&PathBuf>) -> String {
    let profile = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(chromium());
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1100,700",
        "--virtual-time-budget=2500",
    ])
    .arg(format!("--user-data-dir={}", profile.path().display()));
    match screenshot {
        Some(path) => cmd.arg(format!("--screenshot={}", path.display())),
        None => cmd.arg("--dump-dom"),
    };
    let out = cmd.arg(url).stderr(Stdio::null()).output().expect("run chromium");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The number after `label` in the rendered table.
fn count(dom: &str, label: &str) -> u64 {
    let at =
        dom.find(&format!("<th>{label}</th><td>")).unwrap_or_else(|| panic!("no `{label}` row in the page: {dom}"));
    let rest = &dom[at + label.len() + 13..];
    rest[..rest.find('<').unwrap_or(0)].parse().unwrap_or(0)
}

/// A working folder for a followed run with the admin server on a free port: (folder, port,
/// the scenario config adapted to it, for the test to adjust and write).
fn watched_run_dir() -> (tempfile::TempDir, u16, String) {
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    std::fs::write(dir.path().join("business.json"), "[]").unwrap();
    let config = SCENARIO_CONFIG
        .replace("follow = false", "follow = true")
        .replace("listen = \"\"", &format!("listen = \"127.0.0.1:{port}\""));
    (dir, port, config)
}

/// `assetflow gen <args>` in `dir`.
fn generate(dir: &std::path::Path, args: &[&str]) {
    let out = common::assetflow(dir, &[&["gen"], args].concat());
    assert!(out.status.success(), "assetflow gen failed: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn the_status_page_renders_the_topology_with_moving_numbers() {
    let (dir, port, config) = watched_run_dir();
    std::fs::write(dir.path().join("config.toml"), config).unwrap();
    generate(dir.path(), &["--sources", "2", "--assets", "300", "--runs", "8", "--out", "all.jsonl"]);
    let all: Vec<String> =
        std::fs::read_to_string(dir.path().join("all.jsonl")).unwrap().lines().map(str::to_owned).collect();
    std::fs::write(dir.path().join("events.jsonl"), "").unwrap();
    let mut child = common::spawn_run(dir.path());
    // A crawler writing while the browser watches.
    let path = dir.path().join("events.jsonl");
    let writer = std::thread::spawn(move || {
        let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
        for chunk in all.chunks(100) {
            for l in chunk {
                writeln!(f, "{l}").unwrap();
            }
            std::thread::sleep(Duration::from_millis(150));
        }
    });
    std::thread::sleep(Duration::from_millis(800));
    let url = format!("http://127.0.0.1:{port}/");
    let first = render(&url, None);
    assert!(
        first.contains("Decisor × 4") && first.contains("UpsertProducer") && first.contains("HistoryWriter"),
        "{first}"
    );
    assert!(first.contains("file:events.jsonl"), "the source is drawn: {first}");
    std::thread::sleep(Duration::from_millis(1500));
    let second = render(&url, None);
    let (a, b) = (count(&first, "events in"), count(&second, "events in"));
    assert!(b > a && a > 0, "numbers move: {a} then {b}");
    let shot = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts/status-page.png");
    std::fs::create_dir_all(shot.parent().unwrap()).unwrap();
    let _ = std::fs::remove_file(&shot);
    render(&url, Some(&shot));
    assert!(std::fs::metadata(&shot).map(|m| m.len() > 10_000).unwrap_or(false), "a screenshot was taken");
    writer.join().unwrap();
    let _ = child.kill();
    let _ = child.wait();
}

/// The slowest-stage marker in a rendered page: the `data-actor` of the node marked `slow`.
fn slowest(dom: &str) -> Option<String> {
    let at = dom.find("class=\"node slow\"").or_else(|| dom.find("class=\"node bad slow\""))?;
    let rest = &dom[at..];
    let a = rest.find("data-actor=\"")? + 12;
    Some(rest[a..a + rest[a..].find('"')?].to_owned())
}

#[test]
fn a_throttled_sink_is_marked_as_the_slowest_stage() {
    aws::require_emulator();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let conf = rt.block_on(aws::sdk_config());
    let queue = rt.block_on(aws::create_queue(&conf, &aws::unique("slow-upserts")));
    // Every SQS request of the upsert sink waits 300 ms: the upsert producer is the bottleneck.
    let moto = aws::endpoint().trim_start_matches("http://").trim_end_matches('/').to_owned();
    let throttle = proxy::FaultProxy::start(&moto);
    throttle.delay_each(Duration::from_millis(300));

    let (dir, port, config) = watched_run_dir();
    let config = config.replace(
        "[sinks.upsert]\nkind = \"file\"\npath = \"out/upsert.jsonl\"",
        &format!("[sinks.upsert]\nkind = \"sqs\"\nqueue_url = \"{queue}\""),
    ) + &aws::aws_section_at(&throttle.url);
    assert!(config.contains("kind = \"sqs\""), "the upsert sink is swapped for the throttled queue");
    std::fs::write(dir.path().join("config.toml"), config).unwrap();
    generate(dir.path(), &["--sources", "2", "--assets", "1500", "--runs", "1", "--out", "events.jsonl"]);
    let mut child = common::spawn_run(dir.path());
    std::thread::sleep(Duration::from_millis(2500));
    let url = format!("http://127.0.0.1:{port}/");
    let dom = render(&url, None);
    let shot = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts/status-page-throttled-sink.png");
    std::fs::create_dir_all(shot.parent().unwrap()).unwrap();
    render(&url, Some(&shot));
    let _ = child.kill();
    let _ = child.wait();
    assert!(throttle.requests.load(std::sync::atomic::Ordering::SeqCst) > 0, "the sink went through the throttle");
    assert_eq!(slowest(&dom).as_deref(), Some("upsert_producer"), "the page must point at the throttled sink: {dom}");
    assert!(dom.contains("◀ slowest stage"), "and say so in words: {dom}");
}
