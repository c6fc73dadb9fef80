//! The admin HTTP server of a running binary: health, readiness, Prometheus metrics whose
//! counters move as a scenario runs, and the status page.

mod common;

use std::time::{Duration, Instant};

use common::{SCENARIO_CONFIG, bin, free_port, http_get as get, scenarios, spawn_run};

fn sample(metrics: &prometheus_parse::Scrape, name: &str, label: (&str, &str)) -> f64 {
    metrics
        .samples
        .iter()
        .filter(|s| s.metric == name && s.labels.get(label.0) == Some(label.1))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => f64::NAN,
        })
        .sum()
}

#[test]
fn metrics_move_as_a_scenario_runs_and_the_page_is_served() {
    let scenario = scenarios().into_iter().find(|p| p.ends_with("basics")).expect("basics");
    let dir = common::prepare(&scenario);
    let port = free_port();
    let config = SCENARIO_CONFIG
        .replace("follow = false", "follow = true")
        .replace("listen = \"\"", &format!("listen = \"127.0.0.1:{port}\""));
    std::fs::write(dir.path().join("config.toml"), config).unwrap();
    let mut child = spawn_run(dir.path());

    let started = Instant::now();
    let scrape = loop {
        assert!(started.elapsed() < Duration::from_secs(30), "metrics never showed the whole scenario");
        std::thread::sleep(Duration::from_millis(200));
        let Some((200, text)) = get(port, "/metrics") else { continue };
        let lines = text.lines().map(|l| Ok(l.to_owned()));
        let scrape = prometheus_parse::Scrape::parse(lines).expect("/metrics parses as Prometheus text");
        if sample(&scrape, "assetflow_decisions_total", ("outcome", "completed")) >= 5.0 {
            break scrape;
        }
    };
    // The basics scenario, counted: 23 lines in, 6 created, 1 updated, 2 stale, 2 dropped...
    assert_eq!(sample(&scrape, "assetflow_events_in_total", ("source", "file:events.jsonl")), 23.0);
    assert_eq!(sample(&scrape, "assetflow_decisions_total", ("outcome", "created")), 6.0);
    assert_eq!(sample(&scrape, "assetflow_decisions_total", ("outcome", "updated")), 1.0);
    assert_eq!(sample(&scrape, "assetflow_decisions_total", ("outcome", "stale")), 2.0);
    assert_eq!(sample(&scrape, "assetflow_decisions_total", ("outcome", "dropped")), 2.0);
    assert_eq!(sample(&scrape, "assetflow_dead_letters_total", ("kind", "invalid_json")), 1.0);
    assert_eq!(sample(&scrape, "assetflow_dead_letters_total", ("kind", "drop_guard")), 1.0);
    assert_eq!(sample(&scrape, "assetflow_published_total", ("sink", "upsert")), 7.0);
    // Backend calls are timed, per backend and operation.
    let timed = |backend: &str| {
        scrape.samples.iter().any(|s| {
            s.metric == "assetflow_backend_call_duration_seconds"
                && s.labels.get("backend") == Some(backend)
                && matches!(&s.value, prometheus_parse::Value::Histogram(h) if h.iter().any(|b| b.count > 0.0))
        })
    };
    assert!(timed("control store") && timed("upsert sink") && timed("history store"), "latency histograms");
    // Every running event went through the router and a shard, in messages that carry batches
    // (one per event at most); queues are empty once idle.
    let decided: f64 = scrape
        .samples
        .iter()
        .filter(|s| s.metric == "assetflow_decisor_batch_events_total")
        .map(|s| {
            if let prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) = s.value {
                v
            } else {
                f64::NAN
            }
        })
        .sum();
    assert_eq!(decided, 16.0);
    let messages = sample(&scrape, "assetflow_actor_messages_handled_total", ("actor", "decisor"));
    assert!((1.0..=16.0).contains(&messages), "{messages} messages to the shards");
    assert_eq!(sample(&scrape, "assetflow_actor_mailbox_depth", ("actor", "decisor")), 0.0);

    assert_eq!(get(port, "/healthz").map(|r| r.0), Some(200));
    assert_eq!(get(port, "/readyz").map(|r| r.0), Some(200));
    let (status, page) = get(port, "/").unwrap();
    assert_eq!(status, 200);
    // Served by the binary itself: no external scripts or styles.
    assert!(page.contains("<svg") && page.contains("/status.json"), "{page}");
    assert!(!page.contains("<script src") && !page.contains("<link"), "no external assets");
    let (_, json) = get(port, "/status.json").unwrap();
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["upserts"], 7);

    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
}

#[test]
fn a_busy_admin_port_is_a_clear_error() {
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = holder.local_addr().unwrap().port();
    let scenario = scenarios().into_iter().next().unwrap();
    let dir = common::prepare(&scenario);
    let config = SCENARIO_CONFIG.replace("listen = \"\"", &format!("listen = \"127.0.0.1:{port}\""));
    std::fs::write(dir.path().join("config.toml"), config).unwrap();
    let out = bin().arg("run").current_dir(dir.path()).env("RUST_LOG", "error").output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("admin.listen"), "{stderr}");
}
