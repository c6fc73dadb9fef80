//! Enricher: attaches business data to each running event, looked up by the configured
//! pointers through the cached [`Lookup`](crate::ports::Lookup); completions pass untouched.
//!
//! Events come and go in batches, in input order. A batch with cache misses pauses the enricher
//! (`ctx.wait`) until its lookups are back (each distinct key once), so events leave in the order
//! they came. A lookup that still fails after the retries dead-letters its event (stage
//! `enrich`, kind `backend`); a key that finds nothing is `business: null`, not an error.

use std::collections::HashMap;
use std::sync::Arc;

use actix::prelude::*;
use chrono::Utc;

use super::Enriched;
use super::history::{DeadLetters, HistoryWriter};
use super::producer::{Deliver, EnrichedProducer};
use super::router::{Route, Router};
use crate::decision::{Business, DeadLetter, Stage};
use crate::envelope::Envelope;
use crate::event::{AssetEvent, EventKind};
use crate::forward::{Ping, forward_from};
use crate::lookup::{CachedLookup, LookupKeys};
use crate::metrics::{ActorName, Flow, Metrics};
use crate::ports::BackendResult;
use crate::supervise::{Panicked, Supervisor};

/// Enrich these events, in order.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Enrich(pub Vec<Envelope<AssetEvent>>);

/// Where enriched events go: to the decision stage, or (enrich-only) straight to their sink.
pub enum Next {
    Decide(Addr<Router>),
    Publish(Addr<EnrichedProducer>),
}

pub struct Enricher {
    lookup: Arc<CachedLookup>,
    keys: LookupKeys,
    next: Next,
    history: Addr<HistoryWriter>,
    mailbox: usize,
    metrics: Arc<Metrics>,
    supervisor: Supervisor,
}

/// What an event needs before it can go on.
enum Step {
    /// Nothing to look up, or the answer is cached.
    Pass(Business),
    /// A lookup with these parameters.
    Fetch(Vec<String>),
}

impl Enricher {
    pub fn new(
        lookup: Arc<CachedLookup>,
        keys: LookupKeys,
        next: Next,
        history: Addr<HistoryWriter>,
        mailbox: usize,
        metrics: Arc<Metrics>,
        supervisor: Supervisor,
    ) -> Self {
        Enricher { lookup, keys, next, history, mailbox, metrics, supervisor }
    }

    /// The part of handling that reads the event and the cache; it leaves the event whole, so
    /// a panic here can be retried with the same message.
    fn step(&self, event: &AssetEvent) -> Step {
        crate::failpoint!("enricher.handle");
        if matches!(event.kind, EventKind::Completed { .. }) {
            return Step::Pass(None);
        }
        let Some(params) = self.keys.params(event) else {
            return Step::Pass(None);
        };
        match self.lookup.cached(&params) {
            Some(business) => Step::Pass(business),
            None => Step::Fetch(params),
        }
    }

    fn dead_letter(
        &self,
        env: Envelope<AssetEvent>,
        kind: &str,
        message: String,
    ) -> (DeadLetter, crate::envelope::Ack) {
        let dl = DeadLetter::new(
            Stage::Enrich,
            kind,
            message,
            &env.raw,
            Some(env.body.event_id.clone()),
            env.origin.clone(),
            env.attempts,
        )
        .of_event(&env.body);
        (dl, env.ack)
    }
}

impl Actor for Enricher {
    type Context = Context<Self>;
    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(self.mailbox);
    }
}

impl Handler<Enrich> for Enricher {
    type Result = ();
    fn handle(&mut self, msg: Enrich, ctx: &mut Context<Self>) {
        self.metrics.handled(ActorName::Enricher);
        let metrics = self.metrics.clone();
        let _working = metrics.working(ActorName::Enricher);
        let mut steps = Vec::with_capacity(msg.0.len());
        let mut misses: Vec<Vec<String>> = Vec::new();
        for env in msg.0 {
            let step = self.supervisor.twice_now("enricher", "enrich", || self.step(&env.body));
            if let Ok(Step::Fetch(params)) = &step
                && !misses.contains(params)
            {
                misses.push(params.clone());
            }
            steps.push((env, step));
        }
        if misses.is_empty() {
            return self.finish(steps, HashMap::new(), ctx);
        }
        let lookup = self.lookup.clone();
        let metrics = self.metrics.clone();
        let supervisor = self.supervisor.clone();
        // ctx.wait: the next batch waits for these lookups, so events leave in the order they
        // came. The batch's distinct misses are looked up in turn, each once: a batch has few
        // (a source's events share their database and schema), and in turn a backend outage
        // meets each key's retries one after another, as when events were looked up one by one.
        ctx.wait(
            actix::fut::wrap_future::<_, Self>(async move {
                let _working = metrics.working(ActorName::Enricher);
                let mut fetched = Fetched::new();
                for params in misses {
                    let found = supervisor
                        .twice("enricher", "lookup", || async {
                            crate::failpoint!("enricher.lookup");
                            lookup.fetch(&params).await
                        })
                        .await;
                    fetched.insert(params, found);
                }
                fetched
            })
            .map(move |fetched, act, ctx| act.finish(steps, fetched, ctx)),
        );
    }
}

/// What looking up a batch's misses gave, by lookup parameters.
type Fetched = HashMap<Vec<String>, Result<BackendResult<Business>, Panicked>>;

impl Enricher {
    /// Sends a batch on, in order, once each event's business data is known: the enriched ones
    /// as one message to the next stage, the failed ones as dead letters.
    fn finish(
        &mut self,
        steps: Vec<(Envelope<AssetEvent>, Result<Step, Panicked>)>,
        fetched: Fetched,
        ctx: &mut Context<Self>,
    ) {
        let mut out = Vec::with_capacity(steps.len());
        let mut letters = Vec::new();
        for (env, step) in steps {
            let found = match step {
                Ok(Step::Pass(business)) => Ok(business),
                Ok(Step::Fetch(params)) => match fetched.get(&params) {
                    Some(Ok(Ok(business))) => Ok(business.clone()),
                    Some(Ok(Err(e))) => Err(("backend", e.to_string())),
                    Some(Err(why)) => Err(("panic", why.to_string())),
                    None => Err(("backend", "the lookup was not made".to_owned())),
                },
                Err(why) => Err(("panic", why.to_string())),
            };
            match found {
                Ok(business) => out.push(env.map(|event| Enriched { event, business, enriched_at: Utc::now() })),
                Err((kind, message)) => letters.push(self.dead_letter(env, kind, message)),
            }
        }
        if !letters.is_empty() {
            self.metrics.sent(Flow::EnricherHistory, letters.len() as u64);
            forward_from::<Self, _, _>(ctx, &self.history, DeadLetters(letters));
        }
        if out.is_empty() {
            return;
        }
        match &self.next {
            Next::Decide(router) => {
                self.metrics.sent(Flow::EnricherRouter, out.len() as u64);
                forward_from::<Self, _, _>(ctx, router, Route(out))
            }
            Next::Publish(producer) => {
                self.metrics.sent(Flow::EnricherEnriched, out.len() as u64);
                forward_from::<Self, _, _>(ctx, producer, Deliver(out))
            }
        }
    }
}

impl Handler<Ping> for Enricher {
    type Result = ();
    fn handle(&mut self, _: Ping, _: &mut Context<Self>) {}
}
