//! HistoryWriter: appends history rows, and writes dead letters to the dead-letter sink.
//!
//! Rows and dead letters from every shard queue up while a write is under way and go out
//! together in the next one. A dead letter is acknowledged only once it is durable at the
//! dead-letter sink and its history row is written; until then the writer keeps retrying, since
//! a dead letter is the last place a message can go. Every write runs under the supervisor.

use std::sync::Arc;

use actix::prelude::*;
use tokio::sync::oneshot;

use crate::calls::Calls;
use crate::decision::{DeadLetter, HistoryRow};
use crate::envelope::Ack;
use crate::metrics::ActorName;
use crate::ports::{BackendError, BackendResult, HistoryStore, Sink, SinkRecord};
use crate::supervise::Supervisor;

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
    supervisor: Supervisor,
    scheduled: bool,
}

impl HistoryWriter {
    pub fn new(
        store: Arc<dyn HistoryStore>,
        dead_letter_sink: Arc<dyn Sink>,
        calls: Calls,
        supervisor: Supervisor,
        mailbox: usize,
    ) -> Self {
        HistoryWriter {
            store,
            dead_letter_sink,
            calls,
            mailbox,
            rows: Vec::new(),
            waiting: Vec::new(),
            letters: Vec::new(),
            supervisor,
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
        if self.supervisor.given_up() {
            // The process is stopping because a stage keeps failing: these messages stay
            // unacknowledged and are read again after the restart, not dead-lettered now.
            tracing::warn!(messages = msg.0.len(), "stopping: not dead-lettering; the messages will be re-delivered");
            return;
        }
        self.letters.extend(msg.0);
        self.schedule(ctx);
    }
}

/// Calls `op` per the policy, and then again and again: for writes that must not give up. Each
/// try runs under supervision; a write that keeps panicking counts restarts until the process
/// stops, with the messages unacknowledged.
async fn persist<F, Fut>(calls: &Calls, supervisor: &Supervisor, backend: &str, operation: &str, op: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = BackendResult<()>>,
{
    loop {
        let attempt = supervisor
            .twice("history_writer", operation, || {
                let op = &op;
                async move {
                    crate::failpoint!("history_writer.dead_letters");
                    calls.call(backend, operation, op).await
                }
            })
            .await;
        match attempt {
            Ok(Ok(())) => return,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "{backend} {operation} failed after retries; will keep trying, the messages stay unacknowledged");
                tokio::time::sleep(calls.policy().max).await;
            }
            Err(why) => {
                tracing::error!("{backend} {operation} {why}; will keep trying, the messages stay unacknowledged");
                tokio::time::sleep(calls.policy().max).await;
            }
        }
    }
}

impl Handler<Flush> for HistoryWriter {
    type Result = ();
    fn handle(&mut self, _: Flush, ctx: &mut Context<Self>) {
        self.scheduled = false;
        let rows = std::mem::take(&mut self.rows);
        let waiting = std::mem::take(&mut self.waiting);
        let letters = std::mem::take(&mut self.letters);
        let (store, sink, calls) = (self.store.clone(), self.dead_letter_sink.clone(), self.calls.clone());
        let supervisor = self.supervisor.clone();
        let metrics = calls.metrics().clone();
        ctx.wait(actix::fut::wrap_future(async move {
            let working = metrics.working(ActorName::HistoryWriter);
            // Decision rows first: their senders wait on the answer (and dead-letter their
            // events if it is a failure).
            let result = if rows.is_empty() {
                Ok(())
            } else {
                supervisor
                    .twice("history_writer", "append", || async {
                        crate::failpoint!("history_writer.append");
                        calls.call_chunked("history store", "append", &rows, store.max_batch(), |chunk| store.append(chunk)).await
                    })
                    .await
                    .unwrap_or_else(|why| Err(BackendError::panicked("history store", "append", why)))
            };
            if let Err(e) = &result {
                tracing::error!(error = %e, rows = rows.len(), "history write failed after retries");
            }
            for tx in waiting {
                let _ = tx.send(result.clone());
            }
            // Dead letters are the last place a message can go: each is acknowledged only once
            // it is durable at the dead-letter sink and its history row is written.
            if !letters.is_empty() && !supervisor.given_up() {
                let mut records = Vec::with_capacity(letters.len());
                let mut letter_rows = Vec::with_capacity(letters.len());
                let mut acks = Vec::with_capacity(letters.len());
                for (dl, ack) in letters {
                    letter_rows.push(HistoryRow::for_dead_letter(&dl));
                    metrics.dead_letter(dl.stage.as_str(), &dl.error.kind);
                    tracing::warn!(stage = dl.stage.as_str(), kind = %dl.error.kind, event_id = dl.event_id.as_deref().unwrap_or("-"), "dead letter: {}", dl.error.message);
                    records.push(SinkRecord {
                        key: dl.event_id.clone().unwrap_or_default(),
                        decision_id: dl.decision_id.clone(),
                        event_id: dl.event_id.clone(),
                        payload: SinkRecord::payload_of(&dl),
                    });
                    acks.push(ack);
                }
                for chunk in records.chunks(sink.max_batch().max(1)) {
                    persist(&calls, &supervisor, "dead-letter sink", "send", || sink.send(chunk)).await;
                }
                for chunk in letter_rows.chunks(store.max_batch().max(1)) {
                    persist(&calls, &supervisor, "history store", "append", || store.append(chunk)).await;
                }
                for ack in acks {
                    ack.done();
                }
            }
            drop(working);
        }));
    }
}

impl Handler<crate::forward::Ping> for HistoryWriter {
    type Result = ();
    fn handle(&mut self, _: crate::forward::Ping, _: &mut Context<Self>) {}
}
