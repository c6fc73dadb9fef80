//! The completion sweep (EVENTS.md §3.2, §3.3), a task the Router spawns per completion (no
//! actor of its own): barrier, wait for expected assets, drop guard, drops applied by the
//! shards that own them, and the `completed` history row.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use chrono::Utc;
use futures_util::future::join_all;

use super::super::Enriched;
use super::super::decisor::{ApplyDrops, Barrier, Decisor};
use super::super::history::{DeadLetters, HistoryWriter, Record};
use crate::calls::Calls;
use crate::decision::{DeadLetter, HistoryRow, Outcome, Stage, decision_id};
use crate::envelope::Envelope;
use crate::event::{AssetEvent, EventKind};
use crate::mark::{CompletionMark, MarkState, mark_key};
use crate::metrics::{Flow, Metrics};
use crate::ports::{BackendResult, ControlStore, FailureKind, RecordKey, RecordWrite};
use crate::rules::{SweepPlan, SweepQuery};
use crate::supervise::Supervisor;

/// Longest pause between two checks of a run that has not yet seen its expected assets.
const EXPECTED_POLL: Duration = Duration::from_millis(200);

/// What a sweep needs.
pub struct SweepDeps {
    pub shards: Vec<Addr<Decisor>>,
    pub control: Arc<dyn ControlStore>,
    pub history: Addr<HistoryWriter>,
    pub calls: Calls,
    pub max_drop_fraction: f64,
    pub completion_timeout: Duration,
    pub metrics: Arc<Metrics>,
    /// One source scanned at a time: completions of many sources arriving together (the end
    /// of a first crawl) otherwise scan, and with listing stores hold, every table at once.
    pub scans: Arc<tokio::sync::Semaphore>,
    pub supervisor: Supervisor,
}

/// How a sweep ends for its completion message.
enum Finish {
    /// Every effect is durable: acknowledge.
    Ack,
    Dead(Box<DeadLetter>),
    /// The history writer is gone: leave it unacknowledged, to be read again.
    Leave,
}

/// Runs the sweep of one completion and acknowledges it once every effect is durable. The
/// sweep runs under supervision: one that panics is run again from the start (its marks make
/// that safe: drops already applied are not live any more), a second panic dead-letters the
/// completion (kind `panic`).
pub async fn run(deps: &SweepDeps, env: Envelope<Enriched>) {
    let (enriched, env) = env.split();
    let ev = &enriched.event;
    let finish = deps.supervisor.twice("router", "sweep", || sweep(deps, ev, &env)).await.unwrap_or_else(|why| {
        Finish::Dead(Box::new(
            DeadLetter::new(
                Stage::Decide,
                "panic",
                format!("completion of run `{}`: {why}", ev.run_id),
                &env.raw,
                Some(ev.event_id.clone()),
                env.origin.clone(),
                env.attempts,
            )
            .of_event(ev),
        ))
    });
    match finish {
        Finish::Ack => env.ack.done(),
        Finish::Dead(dl) => finish_dead(deps, *dl, env.ack).await,
        Finish::Leave => tracing::error!("completion left unacknowledged for re-delivery (the process is stopping)"),
    }
}

async fn sweep(deps: &SweepDeps, ev: &AssetEvent, env: &Envelope<()>) -> Finish {
    crate::failpoint!("router.sweep");
    let expected = match ev.kind {
        EventKind::Completed { expected_assets } => expected_assets,
        EventKind::Running { .. } => None,
    };
    let dead = |kind: &str, stage: Stage, message: String| {
        DeadLetter::new(stage, kind, message, &env.raw, Some(ev.event_id.clone()), env.origin.clone(), env.attempts)
            .of_event(ev)
    };
    // A first delivery is attempt 1; a redrive counts on from the dead letter.
    let redriven = env.attempts > 1;
    let started = Instant::now();
    let plan: SweepPlan = loop {
        // Every message sent to a shard before this barrier is applied once it returns.
        join_all(deps.shards.iter().map(|s| s.send(Barrier))).await;
        let plan = {
            // A closed semaphore cannot happen (it is never closed); scanning anyway is safe.
            let _scan = deps.scans.acquire().await.ok();
            let query = SweepQuery {
                source: &ev.source,
                run: &ev.run_id,
                emitted_at: ev.emitted_at,
                max_drop_fraction: deps.max_drop_fraction,
                count_run_events: expected.is_some(),
            };
            let plan = || deps.control.sweep_plan(query);
            match deps.calls.call("control store", "list", plan).await {
                Ok(plan) => plan,
                Err(e) => {
                    let dl = dead("backend", Stage::Decide, format!("completion of run `{}`: {e}", ev.run_id));
                    return Finish::Dead(Box::new(dl));
                }
            }
        };
        match expected {
            Some(n) if (plan.seen_in_run as u64) < n => {
                // This completion read again (a replay after a crash, or a redrive of one the
                // guard stopped) when its mark says its count was met then, or older than the
                // last one applied: the run's records may have moved on to the next run, so the
                // count may never come again. The mark decides it below, as it would have once
                // the count came.
                if read_mark(deps, &ev.source).await.ok().flatten().is_some_and(|m| {
                    m.names(&ev.run_id, ev.emitted_at) || m.covers(&ev.run_id, ev.emitted_at, redriven)
                }) {
                    break plan;
                }
                let waited = started.elapsed();
                if waited >= deps.completion_timeout {
                    let msg = format!(
                        "completion of run `{}` of source `{}` expected {n} running events (expected_assets) but {} were applied within decisor.completion_timeout ({:?}); nothing dropped",
                        ev.run_id, ev.source, plan.seen_in_run, deps.completion_timeout
                    );
                    return Finish::Dead(Box::new(dead("incomplete_run", Stage::Decide, msg)));
                }
                tokio::time::sleep(EXPECTED_POLL.min(deps.completion_timeout - waited)).await;
            }
            _ => break plan,
        }
    };
    // The process is stopping because a stage keeps failing: an earlier event of this run may
    // have been left unacknowledged rather than applied, so the barrier proves nothing. Drop
    // nothing; the completion is read again after the restart.
    if deps.supervisor.given_up() {
        return Finish::Leave;
    }
    let marked = |state| CompletionMark::new(&ev.run_id, ev.emitted_at, state, &env.origin);
    let stored = match read_mark(deps, &ev.source).await {
        Ok(mark) => mark,
        Err(e) => {
            let dl = dead("backend", Stage::Decide, format!("completion of run `{}`: {e}", ev.run_id));
            return Finish::Dead(Box::new(dl));
        }
    };
    let guard_message = || {
        format!(
            "completion of run `{}` of source `{}` would drop {} of {} live assets, over decisor.max_drop_fraction = {}; nothing dropped",
            ev.run_id,
            ev.source,
            plan.to_drop.len(),
            plan.live,
            deps.max_drop_fraction
        )
    };
    let guard_letter = |msg: String| Finish::Dead(Box::new(dead("drop_guard", Stage::Decide, msg)));
    // The guard stopped this very completion before, and it is delivered again: it was never
    // acknowledged, and its dead letter may never have become durable (the mark goes in
    // first, and a process can die between the two). Decided as then: the same dead letter,
    // with the same decision id and the mark's message (the store may have moved on since:
    // events after the completion, applied before the crash), again. A redrive sweeps it
    // instead (`covers`). A mark written before marks kept the message has it recomputed.
    if !redriven && let Some(mark) = stored.as_ref().filter(|m| m.guarded(&ev.run_id, ev.emitted_at)) {
        return guard_letter(mark.guard_message.clone().unwrap_or_else(guard_message));
    }
    // Checked after the plan was read: a mark written before that read means another process
    // (or this one, before a crash) already applied this completion or a newer one, and the
    // records read may already carry the next run.
    let covered = stored.as_ref().is_some_and(|m| m.covers(&ev.run_id, ev.emitted_at, redriven));
    // The `sweeping` mark goes in before the first drop (false: a newer mark is there).
    let sweeps = if covered { Ok(false) } else { write_mark(deps, &ev.source, &marked(MarkState::Sweeping)).await };
    match sweeps {
        Ok(true) => {}
        Ok(false) => {
            tracing::info!(source = %ev.source, run_id = %ev.run_id, "completion already applied, or older than the last one applied; nothing to drop");
            return Finish::Ack;
        }
        Err(e) => {
            let dl = dead("backend", Stage::Decide, format!("completion mark of run `{}`: {e}", ev.run_id));
            return Finish::Dead(Box::new(dl));
        }
    }
    if plan.guarded {
        let msg = guard_message();
        let mark = marked(MarkState::Guarded).with_guard_message(&msg);
        if let Err(e) = write_mark(deps, &ev.source, &mark).await {
            tracing::warn!(source = %ev.source, error = %e, "cannot write the completion mark; a late process may sweep this run again");
        }
        return guard_letter(msg);
    }
    if deps.supervisor.given_up() {
        return Finish::Leave;
    }
    let spent_markers = plan.spent_markers;
    let n = deps.shards.len();
    let mut per_shard: Vec<Vec<String>> = vec![Vec::new(); n];
    for key in plan.to_drop {
        per_shard[super::shard_of(&key, n)].push(key);
    }
    let calls = per_shard.into_iter().enumerate().filter(|(_, keys)| !keys.is_empty()).map(|(i, keys)| {
        deps.shards[i].send(ApplyDrops {
            source: ev.source.clone(),
            run_id: ev.run_id.clone(),
            event_id: ev.event_id.clone(),
            emitted_at: ev.emitted_at,
            keys,
        })
    });
    for result in join_all(calls).await {
        let result =
            result.unwrap_or_else(|_| Err(crate::ports::BackendError::transient("decisor", "drop", "shard stopped")));
        if let Err(e) = result {
            let dl = dead("backend", Stage::Decide, format!("drops of run `{}`: {e}", ev.run_id));
            return Finish::Dead(Box::new(dl));
        }
    }
    let row = HistoryRow {
        asset_key: None,
        source: Some(ev.source.clone()),
        event_id: Some(ev.event_id.clone()),
        run_id: Some(ev.run_id.clone()),
        outcome: Outcome::Completed,
        hash: None,
        decision_id: decision_id(&ev.event_id, &ev.source, "completed", &ev.run_id),
        at: Utc::now(),
    };
    match {
        deps.metrics.sent(Flow::RouterHistory, 1);
        deps.history.send(Record(vec![row]))
    }
    .await
    {
        Ok(Ok(())) => match write_mark(deps, &ev.source, &marked(MarkState::Applied)).await {
            Ok(_) => {
                deps.metrics.outcome(Outcome::Completed, 1);
                remove_spent_markers(deps, &ev.source, spent_markers).await;
                Finish::Ack
            }
            Err(e) => Finish::Dead(Box::new(dead("backend", Stage::Decide, format!("completion mark: {e}")))),
        },
        Ok(Err(e)) => Finish::Dead(Box::new(dead("backend", Stage::History, e.to_string()))),
        Err(_) => Finish::Leave,
    }
}

/// Removes the event markers an applied completion spent ([`SweepPlan::spent_markers`]), so
/// that they do not pile up run after run. Tidying only: one that stays (the store failed, or
/// the process stopped) is spent again by the source's next sweep.
async fn remove_spent_markers(deps: &SweepDeps, source: &str, keys: Vec<String>) {
    if keys.is_empty() {
        return;
    }
    let keys: Vec<RecordKey> =
        keys.into_iter().map(|asset_key| RecordKey { source: source.to_owned(), asset_key }).collect();
    let removed = deps.calls.call("control store", "remove markers", || deps.control.remove_markers(&keys)).await;
    match removed {
        Ok(()) => tracing::debug!(source, markers = keys.len(), "spent run-event markers removed"),
        Err(e) => {
            tracing::warn!(source, error = %e, "cannot remove spent run-event markers; the next sweep tries again")
        }
    }
}

async fn read_mark(deps: &SweepDeps, source: &str) -> BackendResult<Option<CompletionMark>> {
    let key = [mark_key(source)];
    let found = deps.calls.call("control store", "get", || deps.control.get_many(&key)).await?;
    Ok(found.get(source).and_then(CompletionMark::from_record))
}

/// Records `mark` as the source's last completion, unless a newer one is there (then `false`).
async fn write_mark(deps: &SweepDeps, source: &str, mark: &CompletionMark) -> BackendResult<bool> {
    let key = [mark_key(source)];
    let mut round = 0;
    loop {
        round += 1;
        let found = deps.calls.call("control store", "get", || deps.control.get_many(&key)).await?;
        let stored = found.get(source);
        if stored.and_then(CompletionMark::from_record).is_some_and(|m| m.emitted_at > mark.emitted_at) {
            return Ok(false);
        }
        let version = stored.map_or(0, |r| r.version);
        let write = [RecordWrite::new(mark.to_record(source, version + 1), version)];
        match deps.calls.call("control store", "put", || deps.control.put_many(&write)).await {
            // Another process wrote the mark between the read and the write: read it again.
            Err(e) if e.kind == FailureKind::Conflict && round < 3 => continue,
            Err(e) => return Err(e),
            Ok(()) => return Ok(true),
        }
    }
}

async fn finish_dead(deps: &SweepDeps, dl: DeadLetter, ack: crate::envelope::Ack) {
    if {
        deps.metrics.sent(Flow::RouterHistory, 1);
        deps.history.send(DeadLetters(vec![(dl, ack)]))
    }
    .await
    .is_err()
    {
        tracing::error!("history writer stopped; completion left unacknowledged for re-delivery");
    }
}
