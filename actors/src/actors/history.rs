//! HistoryWriter: appends history rows, and writes dead letters to the dead-letter sink.
//!
//! Rows and dead letters from every shard queue up while a write is under way and go out
//! together in the next one. A dead letter is acknowledged only once it is durable at the
//! dead-letter sink and its history row is written; until then the writer keeps retrying, since
//! a dead letter is the last place a message can go.

use std::sync::Arc;

use actix::prelude::*;
use tokio::sync::oneshot;

use crate::calls::Calls;
use crate::decision::{DeadLetter, HistoryRow};
use crate::envelope::Ack;
use crate::metrics::ActorName;
use crate::ports::{BackendError, BackendResult, HistoryStore, Sink, SinkRecord};

/// Append these rows; resolves once they are durable.
#[derive(Message)]
#[rtype(result = "BackendResult<()>")]
pub struct Record(pub Vec<HistoryRow>);

/// Dead-letter these messages, then acknowledge them.
#[derive(Message)]
#[rtype(result = "()")]
pub struct DeadLetters(pub Vec<(DeadLetter, Ack)>);

#[derive(Message)]
#[rtype(result = "()")]
struct Flush;

pub struct HistoryWriter {
    store: Arc<dyn HistoryStore>,
    dead_letter_sink: Arc<dyn Sink>,
    /// Store and sink writes: retried, timed, counted, health reported.
    calls: Calls,
    mailbox: usize,
    rows: Vec<HistoryRow>,
    waiting: Vec<oneshot::Sender<BackendResult<()>>>,
    letters: Vec<(DeadLetter, Ack)>,
    scheduled: bool,
}

impl HistoryWriter {
    pub fn new(store: Arc<dyn HistoryStore>, dead_letter_sink: Arc<dyn Sink>, calls: Calls, mailbox: usize) -> Self {
        HistoryWriter {
            store,
            dead_letter_sink,
            calls,
            mailbox,
            rows: Vec::new(),
            waiting: Vec::new(),
            letters: Vec::new(),
            scheduled: false,
        }
    }

    fn schedule(&mut self, ctx: &mut Context<Self>) {
        if !self.scheduled {
            self.scheduled = true;
            ctx.notify(Flush);
        }
    }
}

impl Actor for HistoryWriter {
    type Context = Context<Self>;
    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(self.mailbox);
    }
}

impl Handler<Record> for HistoryWriter {
    type Result = ResponseFuture<BackendResult<()>>;
    fn handle(&mut self, msg: Record, ctx: &mut Context<Self>) -> Self::Result {
        self.calls.metrics().handled(ActorName::HistoryWriter);
        let (tx, rx) = oneshot::channel();
        self.rows.extend(msg.0);
        self.waiting.push(tx);
        self.schedule(ctx);
        Box::pin(async move {
            rx.await.unwrap_or_else(|_| Err(BackendError::transient("history", "append", "history writer stopped")))
        })
    }
}

impl Handler<DeadLetters> for HistoryWriter {
    type Result = ();
    fn handle(&mut self, msg: DeadLetters, ctx: &mut Context<Self>) {
        self.calls.metrics().handled(ActorName::HistoryWriter);
        self.letters.extend(msg.0);
        self.schedule(ctx);
    }
}

/// Calls `op` per the policy, and then again and again: for writes that must not give up.
async fn persist<F, Fut>(calls: &Calls, backend: &str, operation: &str, mut op: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = BackendResult<()>>,
{
    loop {
        match calls.call(backend, operation, &mut op).await {
            Ok(()) => return,
            Err(e) => {
                tracing::error!(error = %e, "{backend} {operation} failed after retries; will keep trying, the messages stay unacknowledged");
                tokio::time::sleep(calls.policy().max).await;
            }
        }
    }
}

impl Handler<Flush> for HistoryWriter {
    type Result = ();
    fn handle(&mut self, _: Flush, ctx: &mut Context<Self>) {
        self.scheduled = false;
        let mut rows = std::mem::take(&mut self.rows);
        let waiting = std::mem::take(&mut self.waiting);
        let letters = std::mem::take(&mut self.letters);
        let (store, sink, calls) = (self.store.clone(), self.dead_letter_sink.clone(), self.calls.clone());
        let metrics = calls.metrics().clone();
        ctx.wait(actix::fut::wrap_future(async move {
            let working = metrics.working(ActorName::HistoryWriter);
            let mut acks = Vec::with_capacity(letters.len());
            if !letters.is_empty() {
                let mut records = Vec::with_capacity(letters.len());
                for (dl, ack) in letters {
                    rows.push(HistoryRow::for_dead_letter(&dl));
                    metrics.dead_letter(dl.stage.as_str(), &dl.error.kind);
                    tracing::warn!(stage = dl.stage.as_str(), kind = %dl.error.kind, event_id = dl.event_id.as_deref().unwrap_or("-"), "dead letter: {}", dl.error.message);
                    records.push(SinkRecord {
                        key: dl.event_id.clone().unwrap_or_default(),
                        decision_id: dl.decision_id.clone(),
                        event_id: dl.event_id.clone(),
                        payload: serde_json::to_vec(&dl).unwrap_or_default(),
                    });
                    acks.push(ack);
                }
                persist(&calls, "dead-letter sink", "send", || sink.send(&records)).await;
            }
            let result =
                if rows.is_empty() { Ok(()) } else { calls.call("history store", "append", || store.append(&rows)).await };
            if let Err(e) = &result {
                tracing::error!(error = %e, rows = rows.len(), "history write failed after retries");
            }
            drop(working);
            for tx in waiting {
                let _ = tx.send(result.clone());
            }
            // A dead letter is durable at its sink even if its history row failed: ack it.
            for ack in acks {
                ack.done();
            }
        }));
    }
}

impl Handler<crate::forward::Ping> for HistoryWriter {
    type Result = ();
    fn handle(&mut self, _: crate::forward::Ping, _: &mut Context<Self>) {}
}
