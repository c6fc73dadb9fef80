//! The `http` source: crawlers POST events to `/events` (one JSON object, or an array of them)
//! and get the answer once every event of the request is durable: decided, or dead-lettered.
//!
//! The response is the acknowledgement. `200 {"accepted": n}` means nothing of the request can be
//! lost any more; any other answer (or none, if the service dies first) means send it again —
//! a re-sent event is an exact re-delivery, which the decisor already treats as `unchanged`.
//! A body that is not JSON at all is answered `400` with the parser's message, and kept as a
//! dead letter (stage `decode`) like a malformed line of a file.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use assetflow_actors::decision::Origin;
use assetflow_actors::envelope::{Ack, AckSink};
use assetflow_actors::ports::{BackendResult, Pull, RawMessage, Source};
use async_trait::async_trait;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::routing::post;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

/// Requests accepted but not yet pulled into the pipeline; past this, senders wait (back-pressure).
const QUEUED_REQUESTS: usize = 64;
/// The largest request body: an array of many events (each still bounded by `limits.max_event_bytes`).
const MAX_BODY_BYTES: usize = 64 << 20;
/// How long `pull` waits for a request before reporting the source idle (so positions commit).
const IDLE_AFTER: Duration = Duration::from_millis(200);

/// One request's messages, on their way from the handler to `pull`.
struct Batch {
    acks: Arc<RequestAcks>,
    messages: Vec<RawMessage>,
}

pub struct HttpSource {
    name: String,
    addr: SocketAddr,
    requests: mpsc::Receiver<Batch>,
    /// Messages pulled and not yet acknowledged.
    outstanding: Arc<AtomicUsize>,
    /// Requests queued for `pull`.
    queued: Arc<AtomicUsize>,
}

#[derive(Clone)]
struct Shared {
    name: String,
    tx: mpsc::Sender<Batch>,
    outstanding: Arc<AtomicUsize>,
    queued: Arc<AtomicUsize>,
    request_no: Arc<AtomicU64>,
}

impl HttpSource {
    /// Binds `listen` now (so a taken port is a startup error) and serves `POST /events`.
    pub async fn bind(name: String, listen: &str) -> Result<HttpSource, String> {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|e| format!("cannot listen on {listen}: {e} (is another process using the port?)"))?;
        let addr = listener.local_addr().map_err(|e| format!("cannot listen on {listen}: {e}"))?;
        let (tx, requests) = mpsc::channel(QUEUED_REQUESTS);
        let outstanding = Arc::new(AtomicUsize::new(0));
        let queued = Arc::new(AtomicUsize::new(0));
        let shared = Shared {
            name: name.clone(),
            tx,
            outstanding: outstanding.clone(),
            queued: queued.clone(),
            request_no: Arc::new(AtomicU64::new(0)),
        };
        let app = axum::Router::new()
            .route("/events", post(receive))
            .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
            .with_state(shared);
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(%addr, error = %e, "the http source stopped serving");
            }
        });
        tracing::info!(source = %name, %addr, "http source: POST events to http://{addr}/events");
        Ok(HttpSource { name, addr, requests, outstanding, queued })
    }

    /// Where the source listens (the port is the OS's choice when `listen` ends in `:0`).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

/// Counts a request's acknowledgements down and answers the handler at zero. If the last `Ack`
/// is dropped undone (shutdown, a crash of the stage holding it), the handler's receiver sees the
/// sender go and answers 503, so the client sends again.
struct RequestAcks {
    remaining: AtomicUsize,
    /// The source's count of pulled, unacknowledged messages; this request joins it when pulled.
    outstanding: Arc<AtomicUsize>,
    pulled: std::sync::atomic::AtomicBool,
    done: std::sync::Mutex<Option<oneshot::Sender<()>>>,
}

impl AckSink for RequestAcks {
    fn done(&self, _seq: u64) {
        // Acks only exist in the pipeline once `pull` marked the request pulled.
        self.outstanding.fetch_sub(1, Ordering::Relaxed);
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            let tx = self.done.lock().ok().and_then(|mut g| g.take());
            if let Some(tx) = tx {
                let _ = tx.send(());
            }
        }
    }
}

impl Drop for RequestAcks {
    fn drop(&mut self) {
        if self.pulled.load(Ordering::Relaxed) {
            self.outstanding.fetch_sub(self.remaining.load(Ordering::Relaxed), Ordering::Relaxed);
        }
    }
}

async fn receive(State(s): State<Shared>, body: Bytes) -> Reply {
    let n = s.request_no.fetch_add(1, Ordering::Relaxed) + 1;
    let (items, invalid) = match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Array(items)) => (items.iter().map(|v| v.to_string().into_bytes()).collect::<Vec<_>>(), None),
        Ok(_) => (vec![body.to_vec()], None),
        // Not JSON: still kept, as a dead letter, so nothing a crawler sent is lost.
        Err(e) => (vec![body.to_vec()], Some(e.to_string())),
    };
    if items.is_empty() {
        return reply(StatusCode::OK, json!({"accepted": 0}));
    }
    let count = items.len();
    let (tx, rx) = oneshot::channel();
    let acks = Arc::new(RequestAcks {
        remaining: AtomicUsize::new(count),
        outstanding: s.outstanding.clone(),
        pulled: false.into(),
        done: std::sync::Mutex::new(Some(tx)),
    });
    let messages: Vec<RawMessage> = items
        .into_iter()
        .enumerate()
        .map(|(i, bytes)| {
            let origin = Origin { source: s.name.clone(), partition: "http".into(), offset: format!("{n}.{i}") };
            RawMessage::new(bytes, origin, Ack::new(acks.clone(), i as u64))
        })
        .collect();
    s.queued.fetch_add(1, Ordering::Relaxed);
    if s.tx.send(Batch { acks, messages }).await.is_err() {
        s.queued.fetch_sub(1, Ordering::Relaxed);
        return unavailable("the pipeline is shutting down");
    }
    match (rx.await, invalid) {
        (Ok(()), None) => reply(StatusCode::OK, json!({"accepted": count})),
        (Ok(()), Some(why)) => reply(
            StatusCode::BAD_REQUEST,
            json!({"error": format!("the body is not JSON: {why}"), "dead_lettered": true}),
        ),
        (Err(_), _) => unavailable("the pipeline stopped before these events were durable"),
    }
}

/// A status and a small JSON object.
type Reply = (StatusCode, [(header::HeaderName, &'static str); 1], String);

fn reply(status: StatusCode, body: Value) -> Reply {
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string())
}

fn unavailable(why: &str) -> Reply {
    reply(StatusCode::SERVICE_UNAVAILABLE, json!({"error": format!("{why}; send the request again")}))
}

#[async_trait]
impl Source for HttpSource {
    async fn pull(&mut self, max: usize) -> BackendResult<Pull> {
        let Ok(first) = tokio::time::timeout(IDLE_AFTER, self.requests.recv()).await else {
            return Ok(Pull::Idle);
        };
        // `None`: the server task is gone; nothing more can arrive.
        let Some(first) = first else { return Ok(Pull::Drained) };
        let mut out = Vec::new();
        let mut next = Some(first);
        while let Some(batch) = next.take() {
            self.queued.fetch_sub(1, Ordering::Relaxed);
            self.outstanding.fetch_add(batch.messages.len(), Ordering::Relaxed);
            batch.acks.pulled.store(true, Ordering::Relaxed);
            out.extend(batch.messages);
            if out.len() < max {
                next = self.requests.try_recv().ok();
            }
        }
        Ok(Pull::Messages(out))
    }

    /// Nothing to commit: the response to each request is its acknowledgement.
    async fn commit(&mut self) -> BackendResult<()> {
        Ok(())
    }

    fn outstanding(&self) -> usize {
        self.outstanding.load(Ordering::Relaxed)
    }

    /// Requests waiting to be read into the pipeline.
    fn lag(&self) -> Option<u64> {
        Some(self.queued.load(Ordering::Relaxed) as u64)
    }
}

impl std::fmt::Debug for HttpSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HttpSource({} on {})", self.name, self.addr)
    }
}
