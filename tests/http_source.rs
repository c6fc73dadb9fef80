//! The `http` source through the binary: every shared scenario POSTed line by line gives the
//! scenario's expected outputs, a body that is not JSON is answered 400 and kept as a dead
//! letter, a 200 is only sent once the request's events are durable, and a request the
//! pipeline stops before making durable is answered 503 so the crawler sends it again.

mod common;

use std::time::{Duration, Instant};

use assetflow::adapters::http_source::HttpSource;
use assetflow_actors::ports::{Pull, Source};
use common::{Outputs, SCENARIO_CONFIG, compare, free_port, http_request, read_lines, scenarios, spawn_run};

/// The scenario config with the file source swapped for an http one on `port`.
fn http_config(port: u16) -> String {
    SCENARIO_CONFIG.replace(
        "kind = \"file\"\npath = \"events.jsonl\"\nfollow = false",
        &format!("kind = \"http\"\nlisten = \"127.0.0.1:{port}\""),
    )
}

fn wait_listening(port: u16) {
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(started.elapsed() < Duration::from_secs(30), "the http source never listened on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn stop(child: &mut std::process::Child) {
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().expect("wait");
    assert!(status.success(), "SIGTERM must stop the service cleanly, got {status}");
}

#[test]
fn every_scenario_posted_line_by_line_gives_its_expected_outputs() {
    for scenario in scenarios() {
        let dir = common::prepare(&scenario);
        let port = free_port();
        assert!(http_config(port).contains("kind = \"http\""), "the config swap must apply");
        std::fs::write(dir.path().join("config.toml"), http_config(port)).unwrap();
        let mut child = spawn_run(dir.path());
        wait_listening(port);
        let events = std::fs::read(scenario.join("events.jsonl")).unwrap();
        for line in events.split(|b| *b == b'\n').filter(|l| !l.iter().all(u8::is_ascii_whitespace)) {
            // Each line as a one-element array: a line that is itself an array is one (invalid)
            // event in a file, and must stay one here rather than become a batch.
            let wrapped = [b"[".as_slice(), line, b"]"].concat();
            let (status, body) = http_request(port, "POST", "/events", &wrapped).expect("POST /events");
            let is_json = serde_json::from_slice::<serde_json::Value>(line).is_ok();
            if is_json {
                assert_eq!(status, 200, "{}: a JSON line is accepted once durable: {body}", scenario.display());
                assert_eq!(serde_json::from_str::<serde_json::Value>(&body).unwrap()["accepted"], 1);
            } else {
                assert_eq!(status, 400, "{}: a line that is not JSON is refused: {body}", scenario.display());
            }
        }
        stop(&mut child);
        let got = Outputs::read(dir.path());
        if let Err(why) = compare(&scenario.join("expected.json"), &got) {
            panic!("{} through the http source:\n{why}", scenario.display());
        }
    }
}

#[test]
fn an_array_is_one_request_and_a_body_that_is_not_json_is_a_dead_letter() {
    let scenario = scenarios().into_iter().find(|p| p.ends_with("basics")).expect("basics");
    let dir = common::prepare(&scenario);
    let port = free_port();
    std::fs::write(dir.path().join("config.toml"), http_config(port)).unwrap();
    let mut child = spawn_run(dir.path());
    wait_listening(port);
    let two = br#"[{"event_id":"a1","source":"pg","run_id":"r1","status":"running","emitted_at":"2026-11-22T10:00:00Z","asset":{"database":"d","schema":"s","table":"t1"}},
                  {"event_id":"a2","source":"pg","run_id":"r1","status":"running","emitted_at":"2026-11-22T10:00:01Z","asset":{"database":"d","schema":"s","table":"t2"}}]"#;
    let (status, body) = http_request(port, "POST", "/events", two).unwrap();
    assert_eq!((status, body.as_str()), (200, r#"{"accepted":2}"#));
    // Durable before the answer: the upserts are in the sink file when the 200 arrives.
    assert_eq!(read_lines(&dir.path().join("out/upsert.jsonl")).len(), 2);

    let (status, body) = http_request(port, "POST", "/events", b"{\"event_id\": \"x\", ").unwrap();
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("not JSON"), "{body}");
    let letters = read_lines(&dir.path().join("out/dead-letter.jsonl"));
    assert_eq!(letters.len(), 1, "the refused body is kept: {letters:?}");
    assert_eq!(letters[0]["error"]["kind"], "invalid_json");
    assert_eq!(letters[0]["origin"]["source"], format!("http:127.0.0.1:{port}"));
    stop(&mut child);
}

#[test]
fn a_request_not_durable_when_the_pipeline_stops_is_answered_503_to_send_again() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mut source = HttpSource::bind("http:test".into(), "127.0.0.1:0").await.unwrap();
        let port = source.local_addr().port();
        let event: &[u8] = br#"[{"event_id":"a1","source":"pg","run_id":"r1","status":"running","emitted_at":"2026-11-22T10:00:00Z","asset":{"database":"d","schema":"s","table":"t1"}}]"#;
        let post = move || tokio::task::spawn_blocking(move || http_request(port, "POST", "/events", event));

        // The request is read into the pipeline, which stops and releases its event unacknowledged.
        let client = post();
        let pulled = loop {
            if let Pull::Messages(m) = source.pull(10).await.unwrap() {
                break m;
            }
        };
        assert_eq!((pulled.len(), source.outstanding()), (1, 1));
        drop(pulled);
        let (status, body) = client.await.unwrap().expect("an answer");
        assert_eq!(status, 503, "{body}");
        assert!(body.contains("before these events were durable") && body.contains("send the request again"), "{body}");
        assert_eq!(source.outstanding(), 0, "a released request is no longer in flight");

        // Once the source is gone (the pipeline no longer reads), a new request is refused the same way.
        drop(source);
        let (status, body) = post().await.unwrap().expect("an answer");
        assert_eq!(status, 503, "{body}");
        assert!(body.contains("shutting down"), "{body}");
    });
}
