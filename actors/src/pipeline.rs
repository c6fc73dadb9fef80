//! Wiring: starts the actors of a topology on their arbiters and hands back a [`Pipeline`] to
//! wait on and stop.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use tokio::sync::{oneshot, watch};

use crate::actors::decisor::DecisorDeps;
use crate::actors::enricher::Next;
use crate::actors::ingest::{Feed, IngestSettings, Onward};
use crate::actors::redrive::REDRIVE;
use crate::actors::router::SweepDeps;
use crate::actors::{Decisor, Enricher, HistoryWriter, Ingest, Redrive, Router};
use crate::actors::{DropProducer, EnrichedProducer, UpsertProducer};
use crate::calls::Calls;
use crate::hash::HashIgnore;
use crate::lookup::{CachedLookup, LookupKeys};
use crate::metrics::Metrics;
use crate::ports::{ContentStore, ControlStore, HistoryStore, Lookup, Sink, Source};
use crate::retry::RetryPolicy;
use crate::supervise::{Fatal, SupervisionPolicy, Supervisor, setup_failpoints};

/// The knobs of a topology, resolved from the config.
#[derive(Debug, Clone)]
pub struct Settings {
    pub shards: usize,
    pub mailbox: usize,
    pub max_event_bytes: usize,
    pub hash_ignore: Vec<String>,
    pub max_drop_fraction: f64,
    pub completion_timeout: Duration,
    pub retry: RetryPolicy,
    pub lookup_pointers: Vec<String>,
    pub cache_ttl: Duration,
    /// Whether the pipeline has an Enricher. Without one (a pipeline that decides, with nothing
    /// to look up) each Ingest routes its events itself; enrich-only always has one.
    pub enricher: bool,
    pub pull_batch: usize,
    /// Per source: messages read and not yet acknowledged past which reading pauses. It bounds
    /// memory by what is in flight, whatever the mailboxes, shards and batches add up to.
    pub max_in_flight: usize,
    pub commit_interval: Duration,
    pub drain_timeout: Duration,
    pub supervision: SupervisionPolicy,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            shards: 4,
            mailbox: 1024,
            max_event_bytes: 1 << 20,
            hash_ignore: Vec::new(),
            max_drop_fraction: 0.5,
            completion_timeout: Duration::from_secs(300),
            retry: RetryPolicy::default(),
            lookup_pointers: vec!["/source".into(), "/asset/database".into(), "/asset/schema".into()],
            cache_ttl: Duration::from_secs(60),
            enricher: true,
            pull_batch: 256,
            max_in_flight: default_max_in_flight(),
            commit_interval: Duration::from_millis(200),
            drain_timeout: Duration::from_secs(30),
            supervision: SupervisionPolicy::default(),
        }
    }
}

/// Messages in flight per source, by default: 2048 per core this process may run on, 4096 at
/// the least. What a source keeps in flight is its throughput times the time an event takes
/// to be acknowledged (Little's law), and the throughput grows with the cores while that time
/// does not; a window fixed at two cores' size would cap a bigger machine at two cores' rate.
/// A process pinned to two cores (`taskset`) gets two cores' window.
pub fn default_max_in_flight() -> usize {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    2048 * cores.max(2)
}

pub use crate::actors::redrive::RedrivePlan;

/// The backends of a topology, one per port.
pub struct Ports {
    pub sources: Vec<(String, Box<dyn Source>)>,
    /// Dead letters replayed: the only input of `assetflow redrive`, or every
    /// `redrive.interval` beside the sources.
    pub redrive: Option<RedrivePlan>,
    pub lookup: Arc<dyn Lookup>,
    pub history: Arc<dyn HistoryStore>,
    pub dead_letter_sink: Arc<dyn Sink>,
    /// What enriched events go on to.
    pub downstream: Downstream,
}

/// What comes after enrichment: the decision stage and its backends, or, in the enrich-only
/// topology, the enriched sink alone.
pub enum Downstream {
    Decide(DecisionPorts),
    /// Enriched events are published here; nothing is decided.
    PublishEnriched(Arc<dyn Sink>),
}

/// The backends of the decision stage.
pub struct DecisionPorts {
    pub control: Arc<dyn ControlStore>,
    pub content: Arc<dyn ContentStore>,
    pub upsert_sink: Arc<dyn Sink>,
    pub drop_sink: Arc<dyn Sink>,
}

/// Where the actor on an [`own_thread`] runs its adapters' blocking I/O.
#[derive(Clone, Copy)]
enum Io {
    /// On its own thread ([`crate::threads::io_in_place`]): the actor waits for each I/O it
    /// starts anyway (the shards, the producers, the history writer).
    InPlace,
    /// On tokio's blocking pool: the actor must go on while I/O runs (the router, whose sweeps
    /// scan a source while it routes the others' events; the enricher).
    Handed,
}

/// A new arbiter (a thread with its own event loop) named `name`, kept in `arbiters` to be
/// stopped with the pipeline; returns its handle to start an actor on.
fn own_thread(arbiters: &mut Vec<Arbiter>, name: String, io: Io) -> ArbiterHandle {
    let arbiter = Arbiter::new();
    let handle = arbiter.handle();
    arbiter.spawn_fn(move || {
        crate::threads::name_this_thread(&name);
        if matches!(io, Io::InPlace) {
            crate::threads::io_in_place();
        }
    });
    arbiters.push(arbiter);
    handle
}

/// A running topology.
pub struct Pipeline {
    pub metrics: Arc<Metrics>,
    pub lookup: Arc<CachedLookup>,
    supervisor: Supervisor,
    drained: Vec<oneshot::Receiver<()>>,
    /// What runs until stopped (redrive every interval): stopped once the sources drained.
    background: Vec<oneshot::Receiver<()>>,
    stop: watch::Sender<bool>,
    arbiters: Vec<Arbiter>,
}

impl Pipeline {
    /// Starts every actor. Call from inside a running actix `System`.
    pub fn start(settings: Settings, ports: Ports) -> Pipeline {
        setup_failpoints();
        crate::threads::start_decode_pool();
        let metrics = Arc::new(Metrics::default());
        let supervisor = Supervisor::new(settings.supervision, metrics.clone());
        let mailbox = settings.mailbox.max(1);
        let calls = Calls::new(settings.retry, metrics.clone());
        let lookup = Arc::new(CachedLookup::new(ports.lookup.clone(), settings.cache_ttl, calls.clone()));
        let keys = LookupKeys::new(settings.lookup_pointers.clone());

        // Every actor but the Ingests (on the System's thread, with the sources) runs on an
        // arbiter (thread) of its own: the Enricher, the Router, each shard, each producer and
        // the HistoryWriter, so no two stages that every event passes through share a thread.
        let mut arbiters = Vec::new();
        let history = {
            let (store, sink, calls) = (ports.history.clone(), ports.dead_letter_sink.clone(), calls.clone());
            let sup = supervisor.clone();
            HistoryWriter::start_in_arbiter(&own_thread(&mut arbiters, "af-history".into(), Io::InPlace), move |_| {
                HistoryWriter::new(store, sink, calls, sup, mailbox)
            })
        };
        let next = match &ports.downstream {
            Downstream::PublishEnriched(sink) => {
                // Enrich only: enriched events go straight to their sink.
                let (sink, h, calls, sup) = (sink.clone(), history.clone(), calls.clone(), supervisor.clone());
                Next::Publish(EnrichedProducer::start_in_arbiter(
                    &own_thread(&mut arbiters, "af-enriched".into(), Io::InPlace),
                    move |_| EnrichedProducer::new(sink, calls, sup, mailbox).delivering(h),
                ))
            }
            Downstream::Decide(decision) => Next::Decide(Self::start_decision_stage(
                &settings,
                decision,
                &mut arbiters,
                &history,
                &lookup,
                &keys,
                &metrics,
                &supervisor,
            )),
        };
        let onward = match next {
            // Nothing to look up: the events go from each Ingest to the Router.
            Next::Decide(router) if !settings.enricher => Onward::Route(router),
            next => {
                let (lookup, history, metrics, sup) =
                    (lookup.clone(), history.clone(), metrics.clone(), supervisor.clone());
                Onward::Enrich(Enricher::start_in_arbiter(
                    &own_thread(&mut arbiters, "af-enricher".into(), Io::Handed),
                    move |_| Enricher::new(lookup, keys, next, history, mailbox, metrics, sup),
                ))
            }
        };
        let (stop, stop_rx) = watch::channel(false);
        let ingest_settings = IngestSettings {
            max_event_bytes: settings.max_event_bytes,
            pull_batch: settings.pull_batch,
            max_in_flight: settings.max_in_flight,
            commit_interval: settings.commit_interval,
            drain_timeout: settings.drain_timeout,
        };
        let feed = Feed {
            onward,
            history,
            settings: ingest_settings,
            metrics: metrics.clone(),
            supervisor: supervisor.clone(),
            stop: stop_rx,
        };
        let mut drained = Vec::new();
        for (name, source) in ports.sources {
            metrics.add_source(&name);
            let (tx, rx) = oneshot::channel();
            drained.push(rx);
            Ingest::new(name, source, feed.clone(), tx).start();
        }
        let mut background = Vec::new();
        if let Some(plan) = ports.redrive {
            metrics.add_source(REDRIVE);
            let (tx, rx) = oneshot::channel();
            if plan.interval.is_some() {
                background.push(rx)
            } else {
                drained.push(rx)
            }
            Redrive::new(plan, feed, tx).start();
        }
        Pipeline { metrics, lookup, supervisor, drained, background, stop, arbiters }
    }

    /// The decision stage: upsert and drop producers, the shards (each on its own arbiter), and
    /// the router in front of them.
    #[allow(clippy::too_many_arguments)]
    fn start_decision_stage(
        settings: &Settings,
        ports: &DecisionPorts,
        arbiters: &mut Vec<Arbiter>,
        history: &Addr<HistoryWriter>,
        lookup: &Arc<CachedLookup>,
        keys: &LookupKeys,
        metrics: &Arc<Metrics>,
        supervisor: &Supervisor,
    ) -> Addr<Router> {
        let mailbox = settings.mailbox.max(1);
        let calls = Calls::new(settings.retry, metrics.clone());
        let upserts = {
            let (sink, calls, sup) = (ports.upsert_sink.clone(), calls.clone(), supervisor.clone());
            UpsertProducer::start_in_arbiter(&own_thread(arbiters, "af-upserts".into(), Io::InPlace), move |_| {
                UpsertProducer::new(sink, calls, sup, mailbox)
            })
        };
        let drops = {
            let (sink, calls, sup) = (ports.drop_sink.clone(), calls.clone(), supervisor.clone());
            DropProducer::start_in_arbiter(&own_thread(arbiters, "af-drops".into(), Io::InPlace), move |_| {
                DropProducer::new(sink, calls, sup, mailbox)
            })
        };
        let deps = Arc::new(DecisorDeps {
            control: ports.control.clone(),
            content: ports.content.clone(),
            upserts,
            drops,
            history: history.clone(),
            lookup: lookup.clone(),
            lookup_keys: keys.clone(),
            ignore: HashIgnore::new(&settings.hash_ignore),
            calls: calls.clone(),
            metrics: metrics.clone(),
            supervisor: supervisor.clone(),
        });
        let mut shards = Vec::with_capacity(settings.shards.max(1));
        for i in 0..settings.shards.max(1) {
            let d = deps.clone();
            shards.push(Decisor::start_in_arbiter(
                &own_thread(arbiters, format!("af-shard-{i}"), Io::InPlace),
                move |_| Decisor::new(i, d, mailbox),
            ));
        }
        let sweep = Arc::new(SweepDeps {
            shards,
            control: ports.control.clone(),
            history: history.clone(),
            calls,
            max_drop_fraction: settings.max_drop_fraction,
            completion_timeout: settings.completion_timeout,
            metrics: metrics.clone(),
            scans: Arc::new(tokio::sync::Semaphore::new(1)),
            supervisor: supervisor.clone(),
        });
        let sup = supervisor.clone();
        Router::start_in_arbiter(&own_thread(arbiters, "af-router".into(), Io::Handed), move |_| {
            Router::new(sweep, sup, mailbox)
        })
    }

    /// Resolves once every source is drained (or stopped) and what it read is acknowledged;
    /// then what runs in the background (redrive rounds) is stopped and waited for too.
    /// Cancel-safe: a receiver is only removed once it has resolved.
    pub async fn drained(&mut self) {
        while let Some(rx) = self.drained.last_mut() {
            let _ = rx.await;
            self.drained.pop();
        }
        if !self.background.is_empty() {
            self.stop();
        }
        while let Some(rx) = self.background.last_mut() {
            let _ = rx.await;
            self.background.pop();
        }
    }

    /// Why the process must stop, once it must: an actor past its restart budget, or an
    /// ingest that ended without draining. Until then, `None`.
    pub fn fatal(&self) -> tokio::sync::watch::Receiver<Fatal> {
        self.supervisor.fatal()
    }

    /// Stops reading: sources finish what is in flight, commit, and report drained.
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }

    /// Stops the shard and output arbiters; call after [`Pipeline::drained`].
    pub fn shutdown(self) {
        for a in self.arbiters {
            a.stop();
        }
    }
}
