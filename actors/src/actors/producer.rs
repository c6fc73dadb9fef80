//! The producers: [`UpsertProducer`], [`DropProducer`] and [`EnrichedProducer`], each writing
//! one output stream to its sink, in batches. They are one [`Producer`] told its stream by a
//! type ([`Output`]), so each is its own actor type with its own address.
//!
//! Several shards publish at once; the producer queues what arrives while a write is under way
//! and sends it all in the next write, so a busy pipeline makes few, large sink calls.

use std::sync::Arc;

use actix::prelude::*;
use tokio::sync::oneshot;

use super::Enriched;
use super::history::{DeadLetters, HistoryWriter, Record};
use crate::calls::Calls;
use crate::decision::{DeadLetter, HistoryRow, Outcome, Stage, decision_id, rfc3339};
use crate::envelope::Envelope;
use crate::metrics::{ActorName, Flow, Metrics};
use crate::ports::{BackendError, BackendResult, Sink, SinkRecord};
use crate::supervise::Supervisor;

/// Publish these enriched events (the enrich-only topology) and acknowledge each once durable;
/// if the sink keeps failing, dead-letter them instead.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Deliver(pub Vec<Envelope<Enriched>>);

/// What a delivered event needs after the write: its ack, or what a dead letter needs.
struct Delivery {
    env: Envelope<()>,
    event_id: String,
    asset_key: Option<String>,
    source: String,
    run_id: String,
    decision_id: String,
}

/// The enriched output: the input event as received, plus `business` and `enriched_at`.
fn enriched_record(env: &Envelope<Enriched>) -> (SinkRecord, String) {
    let ev = &env.body.event;
    let mut doc: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&env.raw).unwrap_or_default();
    doc.insert(
        "business".into(),
        env.body.business.as_ref().map(|b| serde_json::Value::Object((**b).clone())).unwrap_or_default(),
    );
    doc.insert("enriched_at".into(), rfc3339(env.body.enriched_at).into());
    let key = ev.asset_key().unwrap_or_else(|| ev.source.clone());
    let id = decision_id(&ev.event_id, &key, "enriched", "");
    let record = SinkRecord {
        key,
        decision_id: id.clone(),
        event_id: Some(ev.event_id.clone()),
        payload: SinkRecord::payload_of(&doc),
    };
    (record, id)
}

/// Publish these records; resolves once they are durable at the sink (or failed for good).
#[derive(Message)]
#[rtype(result = "BackendResult<()>")]
pub struct Publish(pub Vec<SinkRecord>);

#[derive(Message)]
#[rtype(result = "()")]
struct Flush;

/// Which output stream a producer writes.
pub trait Output: Unpin + 'static {
    /// The actor, as metrics and supervision name it.
    const ACTOR: ActorName;
    /// Its sink, as health and backend-call statistics name it (`upsert sink`).
    const SINK: &'static str;
    /// Where tests inject a panic into its writes.
    #[cfg_attr(not(feature = "failpoints"), allow(dead_code))]
    const FAILPOINT: &'static str;
}

/// Upserts, to the `upsert` sink.
pub struct Upserts;
/// Drops, to the `drop` sink.
pub struct Drops;
/// Enriched events, to the `enriched` sink (the enrich-only topology).
pub struct EnrichedEvents;

impl Output for Upserts {
    const ACTOR: ActorName = ActorName::UpsertProducer;
    const SINK: &'static str = "upsert sink";
    const FAILPOINT: &'static str = "upsert_producer.publish";
}
impl Output for Drops {
    const ACTOR: ActorName = ActorName::DropProducer;
    const SINK: &'static str = "drop sink";
    const FAILPOINT: &'static str = "drop_producer.publish";
}
impl Output for EnrichedEvents {
    const ACTOR: ActorName = ActorName::EnrichedProducer;
    const SINK: &'static str = "enriched sink";
    const FAILPOINT: &'static str = "enriched_producer.publish";
}

/// Publishes the decisors' upserts.
pub type UpsertProducer = Producer<Upserts>;
/// Publishes the sweeps' drops.
pub type DropProducer = Producer<Drops>;
/// Publishes enriched events and acknowledges them ([`Deliver`]).
pub type EnrichedProducer = Producer<EnrichedEvents>;

pub struct Producer<O: Output> {
    sink: Arc<dyn Sink>,
    /// Sink writes: retried, timed, counted, the sink's health reported (for `/readyz`).
    calls: Calls,
    mailbox: usize,
    queue: Vec<SinkRecord>,
    waiting: Vec<oneshot::Sender<BackendResult<()>>>,
    deliveries: Vec<Delivery>,
    delivered: Vec<SinkRecord>,
    /// Where deliveries leave history and, when they fail, dead letters.
    history: Option<Addr<HistoryWriter>>,
    supervisor: Supervisor,
    scheduled: bool,
    output: std::marker::PhantomData<O>,
}

impl<O: Output> Producer<O> {
    /// The producer of the `O` stream, writing to `sink`.
    pub fn new(sink: Arc<dyn Sink>, calls: Calls, supervisor: Supervisor, mailbox: usize) -> Self {
        Producer {
            sink,
            calls,
            mailbox,
            queue: Vec::new(),
            waiting: Vec::new(),
            deliveries: Vec::new(),
            delivered: Vec::new(),
            history: None,
            supervisor,
            scheduled: false,
            output: std::marker::PhantomData,
        }
    }

    fn schedule(&mut self, ctx: &mut Context<Self>) {
        if !self.scheduled {
            self.scheduled = true;
            ctx.notify(Flush);
        }
    }
}

impl EnrichedProducer {
    /// Deliveries ([`Deliver`]) leave history here, and dead letters when they fail.
    pub fn delivering(mut self, history: Addr<HistoryWriter>) -> Self {
        self.history = Some(history);
        self
    }
}

impl Handler<Deliver> for EnrichedProducer {
    type Result = ();
    fn handle(&mut self, msg: Deliver, ctx: &mut Context<Self>) {
        self.calls.metrics().handled(EnrichedEvents::ACTOR);
        for env in msg.0 {
            let (record, id) = enriched_record(&env);
            let ev = &env.body.event;
            let (event_id, asset_key, source, run_id) =
                (ev.event_id.clone(), ev.asset_key(), ev.source.clone(), ev.run_id.clone());
            let (_, env) = env.split();
            self.delivered.push(record);
            self.deliveries.push(Delivery { env, event_id, asset_key, source, run_id, decision_id: id });
        }
        self.schedule(ctx);
    }
}

impl<O: Output> Handler<crate::forward::Ping> for Producer<O> {
    type Result = ();
    fn handle(&mut self, _: crate::forward::Ping, _: &mut Context<Self>) {}
}

impl<O: Output> Actor for Producer<O> {
    type Context = Context<Self>;
    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(self.mailbox);
    }
}

impl<O: Output> Handler<Publish> for Producer<O> {
    type Result = ResponseFuture<BackendResult<()>>;
    fn handle(&mut self, msg: Publish, ctx: &mut Context<Self>) -> Self::Result {
        self.calls.metrics().handled(O::ACTOR);
        let (tx, rx) = oneshot::channel();
        self.queue.extend(msg.0);
        self.waiting.push(tx);
        self.schedule(ctx);
        let name = O::SINK;
        Box::pin(async move {
            rx.await.unwrap_or_else(|_| {
                Err(BackendError::transient(name, "publish", "producer stopped before the write finished"))
            })
        })
    }
}

impl<O: Output> Handler<Flush> for Producer<O> {
    type Result = ();
    fn handle(&mut self, _: Flush, ctx: &mut Context<Self>) {
        self.scheduled = false;
        let batch = std::mem::take(&mut self.queue);
        let waiting = std::mem::take(&mut self.waiting);
        let delivered = std::mem::take(&mut self.delivered);
        let deliveries = std::mem::take(&mut self.deliveries);
        let (sink, calls, history, name) = (self.sink.clone(), self.calls.clone(), self.history.clone(), O::SINK);
        let (actor, supervisor) = (O::ACTOR, self.supervisor.clone());
        // Each write runs under supervision: a panic restarts the producer (it holds no state
        // but its queue, which the write still has) and the write is tried once more; a second
        // panic fails the write (kind `panic`), and its senders dead-letter what it carried.
        let write = move |records: Vec<SinkRecord>| {
            let (sink, calls, supervisor) = (sink.clone(), calls.clone(), supervisor.clone());
            async move {
                if records.is_empty() {
                    return Ok(());
                }
                let _working = calls.metrics().working(actor);
                supervisor
                    .twice(actor.as_str(), "publish", || async {
                        crate::failpoint!(O::FAILPOINT);
                        calls.call_chunked(name, "send", &records, sink.max_batch(), |chunk| sink.send(chunk)).await
                    })
                    .await
                    .unwrap_or_else(|why| Err(BackendError::panicked(name, "send", why)))
            }
        };
        let metrics = self.calls.metrics().clone();
        // ctx.wait: one write at a time, in arrival order; what comes meanwhile forms the next batch.
        ctx.wait(actix::fut::wrap_future(async move {
            let records = batch.len();
            let result = write(batch).await;
            if let Err(e) = &result {
                tracing::error!(error = %e, records, "sink write failed after retries");
            }
            for tx in waiting {
                let _ = tx.send(result.clone());
            }
            if deliveries.is_empty() {
                return;
            }
            let result = write(delivered).await;
            finish_deliveries(history, &metrics, deliveries, result).await;
        }));
    }
}

/// After a delivery write: history rows and acks, or dead letters (stage `publish` when the
/// write failed, `history` when its history rows did: an event is acknowledged only once both
/// are durable, as in the decision topology).
async fn finish_deliveries(
    history: Option<Addr<HistoryWriter>>,
    metrics: &Metrics,
    deliveries: Vec<Delivery>,
    result: BackendResult<()>,
) {
    let Some(history) = history else {
        tracing::error!("a producer without a history writer got deliveries; leaving them unacknowledged");
        return;
    };
    let failed = match result {
        Ok(()) => {
            let now = chrono::Utc::now();
            let rows = deliveries
                .iter()
                .map(|d| HistoryRow {
                    asset_key: d.asset_key.clone(),
                    source: Some(d.source.clone()),
                    event_id: Some(d.event_id.clone()),
                    run_id: Some(d.run_id.clone()),
                    outcome: Outcome::Enriched,
                    hash: None,
                    decision_id: d.decision_id.clone(),
                    at: now,
                })
                .collect();
            Metrics::add(&metrics.enriched_published, deliveries.len() as u64);
            metrics.sent(Flow::EnrichedHistory, deliveries.len() as u64);
            match history
                .send(Record(rows))
                .await
                .unwrap_or_else(|_| Err(BackendError::transient("history", "send", "stopped")))
            {
                Ok(()) => {
                    metrics.outcome(Outcome::Enriched, deliveries.len() as u64);
                    for d in deliveries {
                        d.env.ack.done();
                    }
                    return;
                }
                Err(e) => (Stage::History, e),
            }
        }
        Err(e) => (Stage::Publish, e),
    };
    let (stage, e) = failed;
    let letters: Vec<_> = deliveries
        .into_iter()
        .map(|d| {
            let mut dl = DeadLetter::new(
                stage,
                e.dead_letter_kind(),
                e.to_string(),
                &d.env.raw,
                Some(d.event_id),
                d.env.origin.clone(),
                d.env.attempts,
            );
            dl.asset_key = d.asset_key;
            dl.source = Some(d.source);
            dl.run_id = Some(d.run_id);
            (dl, d.env.ack)
        })
        .collect();
    if {
        metrics.sent(Flow::EnrichedHistory, letters.len() as u64);
        history.send(DeadLetters(letters))
    }
    .await
    .is_err()
    {
        tracing::error!("history writer stopped; enriched events left unacknowledged for re-delivery");
    }
}
