//! The admin HTTP server (`admin.listen`, 127.0.0.1 by default): `/healthz`, `/readyz`,
//! `/metrics` (Prometheus text format), `/status.json`, and `/`, a live status page served by
//! the binary itself (no build step, no external assets).

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use assetflow_actors::envelope::SPAN_PER_WINDOW;
use assetflow_actors::lookup::CachedLookup;
use assetflow_actors::metrics::Metrics;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use serde_json::json;

use crate::adapters::aws::RequestCounter;
use crate::topology::Graph;

/// What the admin endpoints read.
#[derive(Clone)]
pub struct AdminState {
    pub metrics: Arc<Metrics>,
    pub lookup: Arc<CachedLookup>,
    /// True while the pipeline runs and takes input; false before start and once stopping.
    pub ready: Arc<AtomicBool>,
    pub aws: Option<RequestCounter>,
    pub started: Instant,
    /// What runs: the page draws exactly these nodes and edges.
    pub graph: Arc<Graph>,
    /// Set while `assetflow redrive` runs: dead letters replayed and parked so far.
    pub redrive: Option<Arc<assetflow_actors::redrive::RedriveStats>>,
}

/// Binds `listen` and serves until the process ends.
pub async fn serve(listen: &str, state: AdminState) -> Result<(), String> {
    let listener =
        tokio::net::TcpListener::bind(listen).await.map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let app = Router::new()
        .route("/", get(page))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/status.json", get(status))
        .route("/graph.json", get(graph))
        .with_state(state);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "admin server stopped");
        }
    });
    Ok(())
}

/// 200 while the pipeline takes input and no backend's last call failed; 503 with the reasons.
async fn readyz(State(s): State<AdminState>) -> impl IntoResponse {
    if !s.ready.load(Ordering::Relaxed) {
        return (StatusCode::SERVICE_UNAVAILABLE, "not ready: the pipeline is starting or stopping\n".to_string());
    }
    let failing = s.metrics.unhealthy();
    if failing.is_empty() {
        return (StatusCode::OK, "ready\n".to_string());
    }
    let mut body = String::from("not ready:\n");
    for (backend, why) in failing {
        let _ = writeln!(body, "  {backend}: {why}");
    }
    (StatusCode::SERVICE_UNAVAILABLE, body)
}

/// The samples of one Prometheus histogram series, each name suffix with its labels: a cumulative
/// `_bucket` per `(upper bound, count in that bucket)`, then `+Inf`, `_sum` and `_count`.
/// `labels` (`a="b",...`, or empty) go on every sample.
fn histogram_series(
    labels: &str,
    buckets: impl IntoIterator<Item = (String, u64)>,
    sum: f64,
    count: u64,
) -> Vec<(String, f64)> {
    let with =
        |le: &str| if labels.is_empty() { format!("{{le=\"{le}\"}}") } else { format!("{{{labels},le=\"{le}\"}}") };
    let own = if labels.is_empty() { String::new() } else { format!("{{{labels}}}") };
    let mut out = Vec::new();
    let mut cumulative = 0;
    for (bound, n) in buckets {
        cumulative += n;
        out.push((format!("_bucket{}", with(&bound)), cumulative as f64));
    }
    out.push((format!("_bucket{}", with("+Inf")), count as f64));
    out.push((format!("_sum{own}"), sum));
    out.push((format!("_count{own}"), count as f64));
    out
}

fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// The Prometheus text exposition of every counter and gauge.
pub fn render(s: &AdminState) -> String {
    let m = &s.metrics;
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, samples: Vec<(String, f64)>| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, v) in samples {
            let _ = writeln!(out, "{name}{labels} {v}");
        }
    };
    family(
        "assetflow_events_in_total",
        "counter",
        "Messages read, by source.",
        m.events_by_source().into_iter().map(|(k, v)| (format!("{{source=\"{}\"}}", label(&k)), v as f64)).collect(),
    );
    family(
        "assetflow_in_flight",
        "gauge",
        &format!(
            "What counts against pipeline.max_in_flight, by source: messages read and not yet acknowledged, or one in {SPAN_PER_WINDOW} of those not yet committed if more."
        ),
        m.in_flight().into_iter().map(|(k, v)| (format!("{{source=\"{}\"}}", label(&k)), v as f64)).collect(),
    );
    family(
        "assetflow_source_lag",
        "gauge",
        "How far behind its input's end a source is: bytes for a file, milliseconds for Kinesis.",
        m.lag().into_iter().map(|(k, v)| (format!("{{source=\"{}\"}}", label(&k)), v as f64)).collect(),
    );
    family(
        "assetflow_decisions_total",
        "counter",
        "Decisions by outcome.",
        m.outcomes().into_iter().map(|(o, v)| (format!("{{outcome=\"{}\"}}", o.as_str()), v as f64)).collect(),
    );
    family(
        "assetflow_dead_letters_total",
        "counter",
        "Dead letters by stage and error kind.",
        m.dead_letters_by_stage()
            .into_iter()
            .map(|((stage, kind), v)| (format!("{{stage=\"{}\",kind=\"{}\"}}", label(&stage), label(&kind)), v as f64))
            .collect(),
    );
    let actors = m.actors();
    family(
        "assetflow_actor_messages_handled_total",
        "counter",
        "Messages each actor has handled (shards together).",
        actors.iter().map(|(a, h, _)| (format!("{{actor=\"{}\"}}", a.as_str()), *h as f64)).collect(),
    );
    if let Some(r) = &s.redrive {
        family(
            "assetflow_redrive_dead_letters_total",
            "counter",
            "Dead letters read back by `assetflow redrive`: replayed through the pipeline, or parked past redrive.max_attempts.",
            vec![
                ("{result=\"replayed\"}".into(), r.replayed() as f64),
                ("{result=\"parked\"}".into(), r.parked() as f64),
            ],
        );
    }
    family(
        "assetflow_actor_busy_seconds_total",
        "counter",
        "Seconds each actor spent on its own work, not waiting for the next stage (shards together): its rate is how busy the stage is.",
        m.busy_seconds().into_iter().map(|(a, v)| (format!("{{actor=\"{}\"}}", a.as_str()), v)).collect(),
    );
    family(
        "assetflow_actor_mailbox_depth",
        "gauge",
        "Messages sent to an actor and not yet handled (shards together).",
        actors.iter().map(|(a, _, d)| (format!("{{actor=\"{}\"}}", a.as_str()), *d as f64)).collect(),
    );
    family(
        "assetflow_published_total",
        "counter",
        "Output events written, by sink.",
        vec![
            ("{sink=\"upsert\"}".into(), Metrics::count(&m.upserts_published) as f64),
            ("{sink=\"drop\"}".into(), Metrics::count(&m.drops_published) as f64),
            ("{sink=\"enriched\"}".into(), Metrics::count(&m.enriched_published) as f64),
        ],
    );
    family(
        "assetflow_decisor_batches_total",
        "counter",
        "Decisor micro-batches applied.",
        vec![(String::new(), Metrics::count(&m.batches) as f64)],
    );
    family(
        "assetflow_decisor_batch_events_total",
        "counter",
        "Events in decisor micro-batches (divide by batches for the mean batch size).",
        vec![(String::new(), Metrics::count(&m.batch_events) as f64)],
    );
    family(
        "assetflow_decisor_hashed_events_total",
        "counter",
        "Of those events, the ones whose content hash was taken; the others were unchanged assets sent again as they were, known by their text print.",
        vec![(String::new(), Metrics::count(&m.hashed) as f64)],
    );
    family(
        "assetflow_actor_restarts_total",
        "counter",
        "Times an actor recovered from a panic: it went on from re-read state and the message in hand was tried once more.",
        {
            // Every actor from 0, so a first restart is an increase an alert sees.
            let mut restarts: std::collections::BTreeMap<String, u64> =
                assetflow_actors::supervise::ACTORS.iter().map(|a| ((*a).to_owned(), 0)).collect();
            restarts.extend(m.restarts());
            restarts.into_iter().map(|(a, n)| (format!("{{actor=\"{a}\"}}"), n as f64)).collect()
        },
    );
    let cache = s.lookup.stats();
    family(
        "assetflow_lookup_cache_hits_total",
        "counter",
        "Enrichment lookups answered by the cache.",
        vec![(String::new(), cache.hits as f64)],
    );
    family(
        "assetflow_lookup_cache_misses_total",
        "counter",
        "Enrichment lookups sent to the backend.",
        vec![(String::new(), cache.misses as f64)],
    );
    family(
        "assetflow_lookup_cache_size",
        "gauge",
        "Enrichment cache entries.",
        vec![(String::new(), cache.size as f64)],
    );
    if let Some(aws) = &s.aws {
        family(
            "assetflow_aws_requests_total",
            "counter",
            "AWS requests, by service and operation.",
            aws.snapshot().into_iter().map(|(k, v)| (format!("{{operation=\"{}\"}}", label(&k)), v as f64)).collect(),
        );
    }
    family(
        "assetflow_backend_up",
        "gauge",
        "0 for a backend whose last call failed.",
        s.metrics.unhealthy().into_keys().map(|b| (format!("{{backend=\"{}\"}}", label(&b)), 0.0)).collect(),
    );
    let calls = m.calls();
    family(
        "assetflow_backend_errors_total",
        "counter",
        "Failed backend call attempts, by backend and operation.",
        calls
            .iter()
            .map(|((b, o), c)| (format!("{{backend=\"{}\",operation=\"{}\"}}", label(b), label(o)), c.errors as f64))
            .collect(),
    );
    let mut hist = Vec::new();
    for ((b, o), c) in &calls {
        let l = format!("backend=\"{}\",operation=\"{}\"", label(b), label(o));
        let buckets = assetflow_actors::metrics::CALL_BUCKETS.iter().zip(c.buckets).map(|(b, n)| (b.to_string(), n));
        hist.extend(histogram_series(&l, buckets, c.sum_seconds, c.count));
    }
    // Histogram samples carry their own `_bucket`/`_sum`/`_count` suffix before the labels.
    family("assetflow_backend_call_duration_seconds", "histogram", "Backend call attempts by latency.", hist);
    // Every fourth bound of the fine internal histogram (each ~2.4x the last) keeps the family short.
    let lat = &m.decision_latency;
    let fine = lat.buckets();
    // Merge each run of four fine buckets into one, labelled with the run's last bound.
    let buckets =
        fine.chunks(4).filter(|c| c.len() == 4).map(|c| (format!("{:.6}", c[3].0), c.iter().map(|b| b.1).sum()));
    let hist = histogram_series("", buckets, lat.sum_seconds(), lat.count());
    family(
        "assetflow_decision_latency_seconds",
        "histogram",
        "From reading an event to its decision being durable and acknowledged.",
        hist,
    );
    family(
        "assetflow_ready",
        "gauge",
        "1 while the pipeline takes input.",
        vec![(String::new(), f64::from(u8::from(s.ready.load(Ordering::Relaxed))))],
    );
    family(
        "assetflow_uptime_seconds",
        "gauge",
        "Seconds since start.",
        vec![(String::new(), s.started.elapsed().as_secs_f64())],
    );
    out
}

async fn metrics(State(s): State<AdminState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], render(&s))
}

async fn status(State(s): State<AdminState>) -> impl IntoResponse {
    let m = &s.metrics;
    let outcomes: serde_json::Map<String, serde_json::Value> =
        m.outcomes().into_iter().map(|(o, v)| (o.as_str().to_owned(), v.into())).collect();
    let body = json!({
        "uptime": s.started.elapsed().as_secs_f64(),
        "ready": s.ready.load(Ordering::Relaxed),
        "flows": m.flows(),
        "events_in": m.events_by_source(),
        "in_flight": m.in_flight(),
        "lag": m.lag(),
        "queues": m.actors().into_iter().map(|(a, _, d)| (a.as_str().to_owned(), d)).collect::<std::collections::BTreeMap<_, _>>(),
        "busy": m.busy_seconds().into_iter().map(|(a, v)| (a.as_str().to_owned(), v)).collect::<std::collections::BTreeMap<_, _>>(),
        "outcomes": outcomes,
        "dead_letters": m.dead_letters(),
        "upserts": Metrics::count(&m.upserts_published),
        "drops": Metrics::count(&m.drops_published),
        "enriched": Metrics::count(&m.enriched_published),
        "batches": Metrics::count(&m.batches),
        "batch_events": Metrics::count(&m.batch_events),
        "hashed_events": Metrics::count(&m.hashed),
        "restarts": m.restarts().values().sum::<u64>(),
        "aws_requests": s.aws.as_ref().map(|a| a.total()),
        "cache": {"hits": s.lookup.stats().hits, "misses": s.lookup.stats().misses, "size": s.lookup.stats().size},
        "unhealthy": m.unhealthy(),
    });
    ([(header::CONTENT_TYPE, "application/json")], body.to_string())
}

/// The topology graph the page draws.
async fn graph(State(s): State<AdminState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], s.graph.draw("json"))
}

async fn page() -> Html<&'static str> {
    Html(include_str!("status.html"))
}
