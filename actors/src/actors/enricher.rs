//! Enricher: attaches business data to each running event, looked up by the configured
//! pointers through the cached [`Lookup`](crate::ports::Lookup); completions pass untouched.
//!
//! A cache miss pauses the enricher (`ctx.wait`) until the lookup is back, so events leave in the
//! order they came. A lookup that still fails after the retries dead-letters its event (stage
//! `enrich`, kind `backend`); a key that finds nothing is `business: null`, not an error.

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
use crate::ports::BackendError;
use crate::supervise::{Panicked, Supervisor};

/// Enrich this event.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Enrich(pub Envelope<AssetEvent>);

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

    fn panicked(&mut self, env: Envelope<AssetEvent>, why: Panicked, ctx: &mut Context<Self>) {
        self.dead_letter(env, "panic", why.to_string(), ctx);
    }

    fn pass(&mut self, env: Envelope<AssetEvent>, business: Business, ctx: &mut Context<Self>) {
        let env = env.map(|event| Enriched { event, business, enriched_at: Utc::now() });
        match &self.next {
            Next::Decide(router) => {
                self.metrics.sent(Flow::EnricherRouter, 1);
                forward_from::<Self, _, _>(ctx, router, Route(env))
            }
            Next::Publish(producer) => {
                self.metrics.sent(Flow::EnricherEnriched, 1);
                forward_from::<Self, _, _>(ctx, producer, Deliver(env))
            }
        }
    }

    fn fail(&mut self, env: Envelope<AssetEvent>, error: BackendError, ctx: &mut Context<Self>) {
        self.dead_letter(env, "backend", error.to_string(), ctx);
    }

    fn dead_letter(&mut self, env: Envelope<AssetEvent>, kind: &str, message: String, ctx: &mut Context<Self>) {
        let mut dl = DeadLetter::new(
            Stage::Enrich,
            kind,
            message,
            &env.raw,
            Some(env.body.event_id.clone()),
            env.origin.clone(),
            env.attempts,
        );
        dl = dl.of_event(&env.body);
        self.metrics.sent(Flow::EnricherHistory, 1);
        forward_from::<Self, _, _>(ctx, &self.history, DeadLetters(vec![(dl, env.ack)]));
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
        let env = msg.0;
        let params = match self.supervisor.twice_now("enricher", "enrich", || self.step(&env.body)) {
            Ok(Step::Pass(business)) => return self.pass(env, business, ctx),
            Ok(Step::Fetch(params)) => params,
            Err(why) => return self.panicked(env, why, ctx),
        };
        let lookup = self.lookup.clone();
        let metrics = self.metrics.clone();
        let supervisor = self.supervisor.clone();
        // ctx.wait: the next event waits for this lookup, so events leave in the order they came.
        ctx.wait(
            actix::fut::wrap_future::<_, Self>(async move {
                let _working = metrics.working(ActorName::Enricher);
                supervisor
                    .twice("enricher", "lookup", || async {
                        crate::failpoint!("enricher.lookup");
                        lookup.fetch(&params).await
                    })
                    .await
            })
            .map(move |result, act, ctx| match result {
                Ok(Ok(business)) => act.pass(env, business, ctx),
                Ok(Err(e)) => act.fail(env, e, ctx),
                Err(why) => act.panicked(env, why, ctx),
            }),
        );
    }
}

impl Handler<Ping> for Enricher {
    type Result = ();
    fn handle(&mut self, _: Ping, _: &mut Context<Self>) {}
}
