//! The status page in a real headless browser (Debian's chromium): it draws exactly the graph
//! `assetflow topology` prints, every edge carries the rate of what flows on it, its numbers
//! move while events flow, a throttled sink is marked as the slowest stage (and its producer's
//! mailbox fills), and screenshots are kept in target/test-artifacts/.

mod common;

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use std::collections::BTreeSet;

use common::{SCENARIO_CONFIG, aws, http_get, proxy};

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
        "--window-size=1500,700",
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

/// Every value of `attr="…"` on elements whose markup starts with `tag` (e.g. `<g`).
fn attrs(dom: &str, tag: &str, attr: &str) -> BTreeSet<String> {
    dom.split(tag)
        .skip(1)
        .filter_map(|el| {
            let el = &el[..el.find('>').unwrap_or(el.len())];
            let at = el.find(&format!("{attr}=\""))? + attr.len() + 2;
            Some(unescape(&el[at..at + el[at..].find('"')?]))
        })
        .collect()
}

/// A dumped DOM escapes `>` inside attribute values.
fn unescape(v: &str) -> String {
    v.replace("&gt;", ">").replace("&lt;", "<").replace("&amp;", "&")
}

/// The rate label of each edge in a rendered page, by `from->to`.
fn rates(dom: &str) -> Vec<(String, String)> {
    dom.split("<text class=\"rate\" data-edge=\"")
        .skip(1)
        .filter_map(|rest| {
            let edge = &rest[..rest.find('"')?];
            let label = &rest[rest.find('>')? + 1..rest.find("</text>")?];
            Some((unescape(edge), label.to_owned()))
        })
        .collect()
}

/// The graph `assetflow topology --format json` prints for the config in `dir`.
fn cli_graph(dir: &std::path::Path) -> serde_json::Value {
    let out = common::assetflow(dir, &["topology", "--format", "json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("topology json")
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
    // Enough runs that the crawler is still writing when the second page is rendered, however
    // long a loaded machine takes to start the browser; it stops when told.
    generate(dir.path(), &["--sources", "2", "--assets", "300", "--runs", "60", "--out", "all.jsonl"]);
    let all: Vec<String> =
        std::fs::read_to_string(dir.path().join("all.jsonl")).unwrap().lines().map(str::to_owned).collect();
    std::fs::write(dir.path().join("events.jsonl"), "").unwrap();
    let mut child = common::spawn_run(dir.path());
    // A crawler writing while the browser watches.
    let path = dir.path().join("events.jsonl");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopped = stop.clone();
    let writer = std::thread::spawn(move || {
        let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
        for chunk in all.chunks(100) {
            if stopped.load(std::sync::atomic::Ordering::Relaxed) {
                break;
            }
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
    let (status_a, flows_a) = flows(port);
    std::thread::sleep(Duration::from_millis(1500));
    let second = render(&url, None);
    let (a, b) = (count(&first, "events in"), count(&second, "events in"));
    assert!(b > a && a > 0, "numbers move: {a} then {b}");

    // The page draws the graph the command line prints: the same nodes, the same edges.
    let graph = cli_graph(dir.path());
    let nodes: BTreeSet<String> =
        graph["nodes"].as_array().unwrap().iter().map(|n| n["id"].as_str().unwrap().to_owned()).collect();
    let edges: BTreeSet<String> = graph["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| format!("{}->{}", e["from"].as_str().unwrap(), e["to"].as_str().unwrap()))
        .collect();
    assert_eq!(attrs(&second, "<g", "data-node"), nodes, "the page's nodes are the graph's");
    assert_eq!(attrs(&second, "<path", "data-edge"), edges, "the page's edges are the graph's");
    // Every edge is labelled with a rate...
    let labels = rates(&second);
    assert_eq!(labels.iter().map(|(e, _)| e.clone()).collect::<BTreeSet<_>>(), edges);
    for (edge, label) in &labels {
        let n = label.strip_suffix("/s").and_then(|n| n.parse::<u64>().ok());
        assert!(n.is_some(), "edge {edge} shows {label:?}, not a rate");
    }
    // ...computed from its own counter, and the counters of the edges events take all move.
    let (status_b, flows_b) = flows(port);
    assert!(status_a == 200 && status_b == 200);
    for e in graph["edges"].as_array().unwrap() {
        let key = e["flow"].as_str().unwrap();
        assert!(flows_b.get(key).is_some(), "no counter `{key}` in /status.json: {flows_b}");
        let on_the_way = [
            "source:",
            "ingest:file:events.jsonl->enricher",
            "enricher->router",
            "router->decisor",
            "decisor->control",
            "decisor->history_writer",
        ];
        if on_the_way.iter().any(|p| key.starts_with(p)) {
            let (x, y) = (flows_a[key].as_u64().unwrap_or(0), flows_b[key].as_u64().unwrap_or(0));
            assert!(y > x, "edge {key} carries events: {x} then {y}");
        }
    }
    let shot = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts/status-page.png");
    std::fs::create_dir_all(shot.parent().unwrap()).unwrap();
    let _ = std::fs::remove_file(&shot);
    render(&url, Some(&shot));
    assert!(std::fs::metadata(&shot).map(|m| m.len() > 10_000).unwrap_or(false), "a screenshot was taken");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    let _ = child.kill();
    let _ = child.wait();
}

/// `/status.json`'s `flows`.
fn flows(port: u16) -> (u16, serde_json::Value) {
    let (status, body) = http_get(port, "/status.json").expect("status.json");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    (status, v["flows"].clone())
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
    // 6,000 upserts: at 100 a call (the SQS sink's bound, ten requests sent together), at
    // least 18 s through the throttle, so the run is still going when the page is read.
    generate(dir.path(), &["--sources", "2", "--assets", "3000", "--runs", "1", "--out", "events.jsonl"]);
    let mut child = common::spawn_run(dir.path());
    // Shards wait on the throttled producer: its mailbox holds their batches meanwhile.
    let mut deepest = 0.0f64;
    let started = std::time::Instant::now();
    // At least 2.5 s, and on until the depth moved (a loaded CI machine starts slower).
    while started.elapsed() < Duration::from_millis(2500)
        || (deepest == 0.0 && started.elapsed() < Duration::from_secs(12))
    {
        if let Some((200, text)) = http_get(port, "/metrics") {
            let depth = text
                .lines()
                .find(|l| l.starts_with("assetflow_actor_mailbox_depth{actor=\"upsert_producer\"}"))
                .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .unwrap_or(0.0);
            deepest = deepest.max(depth);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let url = format!("http://127.0.0.1:{port}/");
    let dom = render(&url, None);
    // What the page drew from, read right after it: if the page ever points elsewhere (it did
    // once in 36 runs), this says whether the data or the drawing was wrong.
    let status = http_get(port, "/status.json").map(|(_, body)| body).unwrap_or_default();
    let shot = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts/status-page-throttled-sink.png");
    std::fs::create_dir_all(shot.parent().unwrap()).unwrap();
    render(&url, Some(&shot));
    let _ = child.kill();
    let _ = child.wait();
    assert!(throttle.requests.load(std::sync::atomic::Ordering::SeqCst) > 0, "the sink went through the throttle");
    assert_eq!(
        slowest(&dom).as_deref(),
        Some("upsert_producer"),
        "the page must point at the throttled sink:\n/status.json just after: {status}\npage: {dom}"
    );
    assert!(dom.contains("◀ slowest stage"), "and say so in words: {dom}");
    assert!(deepest > 0.0, "the upsert producer's mailbox depth moved under load");
}
