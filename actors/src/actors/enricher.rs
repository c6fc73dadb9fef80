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
use super::producer::{Deliver, Producer};
use super::router::{Route, Router};
use crate::decision::{Business, DeadLetter, Stage};
use crate::envelope::Envelope;
use crate::event::{AssetEvent, EventKind};
use crate::forward::{Ping, forward_from};
use crate::lookup::{CachedLookup, LookupKeys};
use crate::metrics::{ActorName, Flow, Metrics};
use crate::ports::BackendError;

/// Enrich this event.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Enrich(pub Envelope<AssetEvent>);

/// Where enriched events go: to the decision stage, or (enrich-only) straight to their sink.
pub enum Next {
    Decide(Addr<Router>),
    Publish(Addr<Producer>),
}

pub struct Enricher {
    lookup: Arc<CachedLookup>,
    keys: LookupKeys,
    next: Next,
    history: Addr<HistoryWriter>,
    mailbox: usize,
    metrics: Arc<Metrics>,
}

impl Enricher {
    pub fn new(
        lookup: Arc<CachedLookup>,
        keys: LookupKeys,
        next: Next,
        history: Addr<HistoryWriter>,
        mailbox: usize,
        metrics: Arc<Metrics>,
    ) -> Self {
        Enricher { lookup, keys, next, history, mailbox, metrics }
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
        let mut dl = DeadLetter::new(
            Stage::Enrich,
            "backend",
            error.to_string(),
            &env.raw,
            Some(env.body.event_id.clone()),
            env.origin.clone(),
            env.attempts,
        );
        dl.asset_key = env.body.asset_key();
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
        if matches!(env.body.kind, EventKind::Completed { .. }) {
            return self.pass(env, None, ctx);
        }
        let Some(params) = self.keys.params(&env.body) else {
            return self.pass(env, None, ctx);
        };
        if let Some(business) = self.lookup.cached(&params) {
            return self.pass(env, business, ctx);
        }
        let lookup = self.lookup.clone();
        let metrics = self.metrics.clone();
        ctx.wait(
            actix::fut::wrap_future::<_, Self>(async move {
                let _working = metrics.working(ActorName::Enricher);
                lookup.fetch(&params).await
            })
            .map(move |result, act, ctx| match result {
                Ok(business) => act.pass(env, business, ctx),
                Err(e) => act.fail(env, e, ctx),
            }),
        );
    }
}

impl Handler<Ping> for Enricher {
    type Result = ();
    fn handle(&mut self, _: Ping, _: &mut Context<Self>) {}
}
