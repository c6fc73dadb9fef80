//! Router: sends each running event to the shard that owns its asset key, and turns each
//! completion into a sweep that waits behind a barrier on every shard.
//!
//! While a source's completion is being swept, that source's later events are held here (in
//! order, up to the mailbox bound) so that a run's drops are decided before the next run's
//! events; other sources keep flowing. When a completion says how many assets its run has
//! (`expected_assets`), that run's own late events still pass, since the sweep waits for them,
//! but only until an event of their partition is held: one read after a held event (the next
//! run's completion, say) waits behind it, as input order on a partition asks.
//!
//! Before a source's first `running` event is routed it also sees to its first run being kept,
//! for `expected_assets` of a completion read late (`first_run.rs`).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use actix::prelude::*;
use tokio::sync::watch;

use super::Enriched;
use super::decisor::{Decide, Decisor};
mod first_run;
mod sweep;

use crate::decision::{DeadLetter, Stage};
use crate::envelope::Envelope;
use crate::event::EventKind;
use crate::forward::{Ping, forward_from};
use crate::metrics::{ActorName, Flow};
use crate::supervise::Supervisor;
pub use sweep::SweepDeps;

/// Route these events, in order.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Route(pub Vec<Envelope<Enriched>>);

#[derive(Message)]
#[rtype(result = "()")]
struct SweepDone {
    source: String,
    generation: u64,
}

struct PendingSweep {
    source: String,
    generation: u64,
    run_id: String,
    /// The completion waits for its run's assets: let that run's events through.
    passes_run: bool,
    held: VecDeque<Envelope<Enriched>>,
    /// The partitions (configured source, partition) with an event in `held`: nothing more of
    /// theirs passes, or it would overtake that event. A handful, so a list.
    blocked: Vec<(String, String)>,
    done: watch::Receiver<bool>,
}

pub struct Router {
    shards: Vec<Addr<Decisor>>,
    sweep: Arc<SweepDeps>,
    supervisor: Supervisor,
    mailbox: usize,
    pending: HashMap<String, PendingSweep>,
    generation: u64,
    /// Per shard, the events routed to it and not yet sent: each shard gets one message per
    /// batch routed. Always sent before a sweep starts, so a barrier comes after them.
    outbox: Vec<Vec<Envelope<Enriched>>>,
    /// The sources whose first run this process has seen to being kept ([`first_run`]).
    first_runs_kept: HashSet<String>,
}

impl Router {
    pub fn new(sweep: Arc<SweepDeps>, supervisor: Supervisor, mailbox: usize) -> Self {
        let outbox = sweep.shards.iter().map(|_| Vec::new()).collect();
        Router {
            shards: sweep.shards.clone(),
            sweep,
            supervisor,
            mailbox,
            pending: HashMap::new(),
            generation: 0,
            outbox,
            first_runs_kept: HashSet::new(),
        }
    }

    /// Which shard owns the event's key (a completion has none: any answer will do); it
    /// leaves the event whole, so a panic here can be retried with the same message.
    fn shard_for(&self, env: &Envelope<Enriched>) -> usize {
        crate::failpoint!("router.route");
        let ev = &env.body.event;
        match ev.kind {
            // One shard owns every key: no key to build and hash per event.
            EventKind::Running { .. } if self.shards.len() == 1 => 0,
            EventKind::Running { .. } => shard_of(&ev.asset_key().unwrap_or_default(), self.shards.len()),
            EventKind::Completed { .. } => 0,
        }
    }

    fn route(&mut self, env: Envelope<Enriched>, ctx: &mut Context<Self>) {
        let shard = match self.supervisor.twice_now("router", "route", || self.shard_for(&env)) {
            Ok(shard) => shard,
            Err(why) => {
                let ev = &env.body.event;
                let mut dl = DeadLetter::new(
                    Stage::Decide,
                    "panic",
                    why.to_string(),
                    &env.raw,
                    Some(ev.event_id.clone()),
                    env.origin.clone(),
                    env.attempts,
                );
                dl = dl.of_event(ev);
                let (_, env) = env.split();
                self.sweep.metrics.sent(Flow::RouterHistory, 1);
                return forward_from::<Self, _, _>(
                    ctx,
                    &self.sweep.history,
                    super::history::DeadLetters(vec![(dl, env.ack)]),
                );
            }
        };
        let ev = &env.body.event;
        if let Some(p) = self.pending.get_mut(&ev.source) {
            let origin = &env.origin;
            let blocked = p.blocked.iter().any(|(s, part)| *s == origin.source && *part == origin.partition);
            let passes =
                p.passes_run && ev.run_id == p.run_id && matches!(ev.kind, EventKind::Running { .. }) && !blocked;
            if !passes {
                if !blocked {
                    p.blocked.push((origin.source.clone(), origin.partition.clone()));
                }
                p.held.push_back(env);
                if p.held.len() >= self.mailbox {
                    // Held events are at their bound: stop taking anything until the sweep ends.
                    let mut done = p.done.clone();
                    let (source, generation) = (p.source.clone(), p.generation);
                    ctx.wait(
                        actix::fut::wrap_future::<_, Self>(async move {
                            let _ = done.wait_for(|d| *d).await;
                        })
                        .map(move |_, act, ctx| act.release(&source, generation, ctx)),
                    );
                }
                return;
            }
        }
        match ev.kind {
            EventKind::Running { .. } => self.outbox[shard].push(env),
            EventKind::Completed { expected_assets } => {
                self.send_routed(ctx);
                self.start_sweep(env, expected_assets.is_some(), ctx)
            }
        }
    }

    /// Sends each shard the events routed to it so far, as one message.
    fn send_routed(&mut self, ctx: &mut Context<Self>) {
        for (shard, events) in self.outbox.iter_mut().enumerate() {
            if events.is_empty() {
                continue;
            }
            let events = std::mem::take(events);
            self.sweep.metrics.sent(Flow::RouterDecisor, events.len() as u64);
            forward_from::<Self, _, _>(ctx, &self.shards[shard], Decide(events));
        }
    }

    fn start_sweep(&mut self, env: Envelope<Enriched>, passes_run: bool, ctx: &mut Context<Self>) {
        self.generation += 1;
        let generation = self.generation;
        let (tx, rx) = watch::channel(false);
        let source = env.body.event.source.clone();
        self.pending.insert(
            source.clone(),
            PendingSweep {
                source: source.clone(),
                generation,
                run_id: env.body.event.run_id.clone(),
                passes_run,
                held: VecDeque::new(),
                blocked: Vec::new(),
                done: rx,
            },
        );
        let deps = self.sweep.clone();
        let me = ctx.address();
        actix_rt::spawn(async move {
            sweep::run(&deps, env).await;
            let _ = tx.send(true);
            me.do_send(SweepDone { source, generation });
        });
    }

    /// Ends a sweep: its held events are routed again, in order (one may start the next sweep).
    fn release(&mut self, source: &str, generation: u64, ctx: &mut Context<Self>) {
        if self.pending.get(source).map(|p| p.generation) != Some(generation) {
            return;
        }
        let Some(p) = self.pending.remove(source) else {
            return;
        };
        for env in p.held {
            self.route(env, ctx);
        }
        self.send_routed(ctx);
    }
}

/// The shard that owns an asset key: stable for the life of the process.
pub fn shard_of(asset_key: &str, shards: usize) -> usize {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    (BuildHasherDefault::<DefaultHasher>::default().hash_one(asset_key) % shards.max(1) as u64) as usize
}

impl Actor for Router {
    type Context = Context<Self>;
    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(self.mailbox);
    }
}

impl Router {
    /// Routes a batch of events, in order.
    fn route_batch(&mut self, batch: Vec<Envelope<Enriched>>, ctx: &mut Context<Self>) {
        let metrics = self.sweep.metrics.clone();
        let _working = metrics.working(ActorName::Router);
        // Each shard's share of the batch, room made once rather than by doubling.
        let share = batch.len().div_ceil(self.outbox.len().max(1));
        for events in &mut self.outbox {
            events.reserve(share);
        }
        for env in batch {
            self.route(env, ctx);
        }
        self.send_routed(ctx);
    }

    /// The sources of `batch` this process has not seen before, each with the run and time of
    /// its first `running` event there; marked as seen.
    fn first_seen(&mut self, batch: &[Envelope<Enriched>]) -> Vec<first_run::FirstSeen> {
        let mut seen = Vec::new();
        // A source's events come in runs: its name is looked up once per run of them.
        let mut last: Option<&str> = None;
        for env in batch {
            let ev = &env.body.event;
            if !matches!(ev.kind, EventKind::Running { .. }) || last == Some(ev.source.as_str()) {
                continue;
            }
            last = Some(ev.source.as_str());
            if !self.first_runs_kept.contains(&ev.source) {
                self.first_runs_kept.insert(ev.source.clone());
                seen.push((ev.source.clone(), ev.run_id.clone(), ev.emitted_at));
            }
        }
        seen
    }
}

impl Handler<Route> for Router {
    type Result = ();
    fn handle(&mut self, msg: Route, ctx: &mut Context<Self>) {
        self.sweep.metrics.handled(ActorName::Router);
        let seen = self.first_seen(&msg.0);
        if seen.is_empty() {
            return self.route_batch(msg.0, ctx);
        }
        // New sources (once each per process): their first runs kept before any of their
        // events is routed, the Router waiting meanwhile so that the input stays in order.
        let keep = first_run::keep(self.sweep.clone(), seen);
        ctx.wait(actix::fut::wrap_future::<_, Self>(keep).map(move |_, act, ctx| act.route_batch(msg.0, ctx)));
    }
}

impl Handler<SweepDone> for Router {
    type Result = ();
    fn handle(&mut self, msg: SweepDone, ctx: &mut Context<Self>) {
        self.release(&msg.source, msg.generation, ctx);
    }
}

impl Handler<Ping> for Router {
    type Result = ();
    fn handle(&mut self, _: Ping, _: &mut Context<Self>) {}
}
