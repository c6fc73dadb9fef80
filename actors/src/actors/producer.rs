//! Producer: writes one output stream (upserts, drops, enriched events) to its sink, in batches.
//!
//! Several shards publish at once; the producer queues what arrives while a write is under way
//! and sends it all in the next write, so a busy pipeline makes few, large sink calls.

use std::sync::Arc;

use actix::prelude::*;
use tokio::sync::oneshot;

use crate::ports::{BackendError, BackendResult, Sink, SinkRecord};
use crate::retry::RetryPolicy;

/// Publish these records; resolves once they are durable at the sink (or failed for good).
#[derive(Message)]
#[rtype(result = "BackendResult<()>")]
pub struct Publish(pub Vec<SinkRecord>);

#[derive(Message)]
#[rtype(result = "()")]
struct Flush;

pub struct Producer {
    name: &'static str,
    sink: Arc<dyn Sink>,
    retry: RetryPolicy,
    mailbox: usize,
    queue: Vec<SinkRecord>,
    waiting: Vec<oneshot::Sender<BackendResult<()>>>,
    scheduled: bool,
}

impl Producer {
    pub fn new(name: &'static str, sink: Arc<dyn Sink>, retry: RetryPolicy, mailbox: usize) -> Self {
        Producer { name, sink, retry, mailbox, queue: Vec::new(), waiting: Vec::new(), scheduled: false }
    }
}

impl Actor for Producer {
    type Context = Context<Self>;
    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(self.mailbox);
    }
}

impl Handler<Publish> for Producer {
    type Result = ResponseFuture<BackendResult<()>>;
    fn handle(&mut self, msg: Publish, ctx: &mut Context<Self>) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        self.queue.extend(msg.0);
        self.waiting.push(tx);
        if !self.scheduled {
            self.scheduled = true;
            ctx.notify(Flush);
        }
        let name = self.name;
        Box::pin(async move {
            rx.await.unwrap_or_else(|_| {
                Err(BackendError::transient(name, "publish", "producer stopped before the write finished"))
            })
        })
    }
}

impl Handler<Flush> for Producer {
    type Result = ();
    fn handle(&mut self, _: Flush, ctx: &mut Context<Self>) {
        self.scheduled = false;
        let batch = std::mem::take(&mut self.queue);
        let waiting = std::mem::take(&mut self.waiting);
        let (sink, retry) = (self.sink.clone(), self.retry);
        // ctx.wait: one write at a time, in arrival order; what comes meanwhile forms the next batch.
        ctx.wait(actix::fut::wrap_future(async move {
            let result = if batch.is_empty() { Ok(()) } else { retry.run(|| sink.send(&batch)).await };
            if let Err(e) = &result {
                tracing::error!(error = %e, records = batch.len(), "sink write failed after retries");
            }
            for tx in waiting {
                let _ = tx.send(result.clone());
            }
        }));
    }
}
