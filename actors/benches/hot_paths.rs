//! Criterion micro-benchmarks of the per-event hot paths: decode and validate one ~1 KiB event,
//! its canonical content hash, its text print (what a steady crawl computes instead of the hash
//! for an asset sent again as it was), and the decision against a control record (with the decision id
//! that goes with it). `make bench` runs them; `cargo test --all-targets` runs each once.

use assetflow_actors::decision::{decision_id, prior_state};
use assetflow_actors::event::{EventKind, decode};
use assetflow_actors::hash::{HashIgnore, content_hash};
use assetflow_actors::print::text_print;
use assetflow_actors::record::{ControlRecord, RecordStatus};
use assetflow_actors::rules::judge;
use criterion::{Criterion, Throughput, black_box, criterion_group, criterion_main};

/// An event shaped like `assetflow gen --payload 1024` makes.
fn event() -> Vec<u8> {
    let columns: Vec<serde_json::Value> = (0..18)
        .map(|c| serde_json::json!({"name": format!("c{c}"), "type": if c % 2 == 0 { "text" } else { "bigint" }}))
        .collect();
    serde_json::json!({
        "event_id": "src-4-e1", "source": "src-4", "run_id": "src-4-run-0", "status": "running",
        "emitted_at": "2026-11-01T00:00:01Z",
        "asset": {"database": "db2", "schema": "public", "table": "t00044", "comment": "v0",
                  "columns": columns, "stats": {"row_count": 319910}}
    })
    .to_string()
    .into_bytes()
}

fn hot_paths(c: &mut Criterion) {
    let raw = event();
    let ignore = HashIgnore::new(&["stats.row_count"]);
    let parsed = decode(&raw, 1 << 20).expect("a valid event");
    let EventKind::Running { name, body } = &parsed.kind else { unreachable!("a running event") };
    let hash = content_hash(body, &ignore);
    let key = parsed.asset_key().unwrap_or_default();
    let record = ControlRecord {
        asset_key: key.clone(),
        source: parsed.source.clone(),
        name: name.clone(),
        hash: hash.clone(),
        last_seen_run: "src-4-run-0".into(),
        last_seen_at: parsed.emitted_at,
        status: RecordStatus::Live,
        dropped_at: None,
        content_ref: None,
        version: 3,
    };

    let mut g = c.benchmark_group("per_event");
    g.throughput(Throughput::Bytes(raw.len() as u64));
    g.bench_function("decode_and_validate", |b| b.iter(|| decode(black_box(&raw), 1 << 20)));
    g.bench_function("canonical_hash", |b| b.iter(|| content_hash(black_box(body), &ignore)));
    g.bench_function("text_print", |b| b.iter(|| text_print(black_box(body), &ignore)));
    g.bench_function("judge_and_decision_id", |b| {
        b.iter(|| {
            let verdict = judge(Some(black_box(&record)), black_box(&hash), parsed.emitted_at);
            (verdict, decision_id(&parsed.event_id, &key, "unchanged", &prior_state(Some(&record))))
        })
    });
    g.finish();
}

criterion_group!(benches, hot_paths);
criterion_main!(benches);
