//! Planning a decisor batch: the events of a micro-batch and the control records they read go
//! in, everything the batch means to do comes out (history rows, upserts, content to store,
//! control records to write). Pure: no actor, no backend, no clock; the shard applies the plan.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use foldhash::{HashMap as FastMap, HashSet as FastSet};

use super::super::Enriched;
use crate::decision::{Decision, HistoryRow, Outcome, UpsertDecision, decision_id, live_decision_id, prior_state};
use crate::event::EventKind;
use crate::open_runs::OpenRuns;
use crate::ports::{ContentPut, RecordWrite, SinkRecord};
use crate::print::TextPrint;
use crate::record::{ControlRecord, KnownRecord, RecordStatus, RecordTouch, RunEvent};
use crate::rules::judge;

/// An unchanged asset seen again, decided without writing its record: what is known of the
/// record, and whether the store's index vouched for it (`indexed`) or it was read.
#[derive(Debug, Clone, Copy)]
pub struct Unchanged {
    pub known: KnownRecord,
    pub indexed: bool,
}

/// One event of a batch as [`plan_batch`] takes it.
#[derive(Debug, Clone, Copy)]
pub struct PlanEvent<'a> {
    pub enriched: &'a Enriched,
    pub key: &'a str,
    pub hash: &'a str,
    /// The event's text print, where it was taken: kept with the record it leaves, so the
    /// store can vouch for the next event sent as this one was.
    pub print: Option<TextPrint>,
    /// Read again from before its source's last completion ([`crate::mark`]): stale.
    pub replayed: bool,
    /// The store vouched that this is an unchanged asset seen again (see [`plan_batch`]).
    pub known: Option<Unchanged>,
    /// The runs of the event's source whose records leave a moved-on marker as they move on
    /// ([`crate::open_runs`]).
    pub open_runs: OpenRuns<'a>,
}

/// What a batch will do, in the order the shard applies it: content, upserts, control records
/// (and run stamps), history.
#[derive(Debug, Default)]
pub struct BatchPlan<'a> {
    /// One row per event, in batch order.
    pub rows: Vec<HistoryRow>,
    /// How many events had each outcome.
    pub outcomes: FastMap<Outcome, u64>,
    /// New content, one per (asset key, hash), sorted.
    pub contents: Vec<ContentPut>,
    /// Upserts to publish, in batch order.
    pub upserts: Vec<SinkRecord>,
    /// Each changed record once, in the order its key first changed, conditional on the
    /// version read.
    pub writes: Vec<RecordWrite>,
    /// The run stamps of unchanged assets decided from what the store knew of them, without
    /// their records ([`KnownRecord`]), in batch order.
    pub touches: Vec<RecordTouch<'a>>,
    /// Records an earlier round of this batch already wrote: not written again.
    pub landed: Vec<ControlRecord>,
    /// Each changed key with the record it had before the batch (`None`: the asset was new):
    /// what a later round needs if the write loses a conditional check.
    pub priors: Vec<(String, Option<ControlRecord>)>,
    /// Event markers ([`RunEvent::record`]) for events of a run that their asset's record will
    /// not show, each with its asset key; the shard writes those not already there.
    pub run_events: Vec<(String, ControlRecord)>,
    /// Moved-on markers ([`RunEvent::moved`]), the last of each asset: the shard writes those
    /// that do not already stand for the same event.
    pub moved: Vec<ControlRecord>,
}

/// Decides a batch of `running` events against `records` (the stored records of their keys),
/// in order, so that two events of one key see each other. An event marked as a replay (read
/// again from before its source's last completion, [`crate::mark`]) is `stale`. Keys in `landed` were written by an
/// earlier round of the same batch: their records go to [`BatchPlan::landed`], not to the
/// writes. An event with `known` was not read: the store vouched that it is an unchanged
/// asset seen again ([`KnownRecord::vouches_unchanged`], checked by the caller, as is that the
/// key has no other event in the batch), so it moves only its run stamp. `content_ref` names
/// where an asset's content at a hash is stored; `now` is the decision time.
pub fn plan_batch<'a>(
    events: impl IntoIterator<Item = PlanEvent<'a>>,
    mut records: HashMap<String, ControlRecord>,
    landed: &HashSet<String>,
    content_ref: impl Fn(&str, &str) -> String,
    now: DateTime<Utc>,
) -> BatchPlan<'a> {
    let read_versions: FastMap<String, u64> = records.iter().map(|(k, r)| (k.clone(), r.version)).collect();
    let events = events.into_iter();
    let mut plan = BatchPlan::default();
    // Sized once: a batch's rows and stamps grown by doubling were fresh allocations at every
    // step, and fresh pages are dear (benches/analysis.md).
    plan.rows.reserve(events.size_hint().0);
    plan.touches.reserve(events.size_hint().0);
    // Keys in first-change order (the write order), and the same set for O(1) membership.
    let mut changed: Vec<String> = Vec::new();
    let mut changed_set: FastSet<String> = FastSet::default();
    // The print of the event each changed record's hash comes from.
    let mut prints: FastMap<&str, Option<TextPrint>> = FastMap::default();
    for PlanEvent { enriched, key, hash, print, replayed, known, open_runs } in events {
        let ev = &enriched.event;
        let EventKind::Running { name, body } = &ev.kind else {
            continue;
        };
        if let Some(Unchanged { known: k, indexed }) = known {
            // A replay is stale whatever the record says, and its record does not move.
            let outcome = if replayed { Outcome::Stale } else { Outcome::Unchanged };
            let id = live_decision_id(&ev.event_id, key, outcome.decision_kind(), hash);
            plan.rows.push(row(enriched, key, hash, outcome, id, now));
            *plan.outcomes.entry(outcome).or_default() += 1;
            if !replayed {
                plan.touches.push(RecordTouch {
                    source: Cow::Borrowed(&ev.source),
                    asset_key: Cow::Borrowed(key),
                    last_seen_run: Cow::Borrowed(&ev.run_id),
                    last_seen_at: ev.emitted_at,
                    version: k.version + 1,
                    indexed,
                    print,
                });
            }
            continue;
        }
        let prior = records.get(key);
        let outcome = if replayed { Outcome::Stale } else { judge(prior, hash, ev.emitted_at) };
        // Events no record will show are still counted by their run (§3.3), each by a marker:
        // a stale event itself; or, when this event moves the record on, the event it showed,
        // if that was of this run (a second event of the asset in the run), or of a run whose
        // completion may still come (this is the next run, and that run's completion comes
        // late, or is redriven; `open_runs`). An exact re-delivery (same time, same content)
        // is the event already counted; a replay from before the last completion counted
        // before it.
        if !replayed {
            if outcome == Outcome::Stale {
                let marker = RunEvent::record(&ev.source, name, &ev.run_id, key, ev.emitted_at, hash);
                plan.run_events.push((key.to_owned(), marker));
            } else if let Some(r) = prior {
                let exact = r.last_seen_at == ev.emitted_at && r.hash == hash;
                if r.last_seen_run == ev.run_id && !exact {
                    let marker = RunEvent::record(&r.source, &r.name, &r.last_seen_run, key, r.last_seen_at, &r.hash);
                    plan.run_events.push((key.to_owned(), marker));
                } else if r.last_seen_run != ev.run_id && open_runs.includes(&r.last_seen_run) {
                    plan.moved.push(RunEvent::moved(r));
                }
            }
        }
        let id = decision_id(&ev.event_id, key, outcome.decision_kind(), &prior_state(prior));
        let span = tracing::debug_span!("decision", event_id = %ev.event_id, asset_key = %key, decision_id = %id);
        span.in_scope(|| tracing::debug!(outcome = outcome.as_str(), "decided"));
        *plan.outcomes.entry(outcome).or_default() += 1;
        plan.rows.push(row(enriched, key, hash, outcome, id.clone(), now));
        if outcome == Outcome::Stale {
            continue;
        }
        let previous_hash = prior.filter(|r| r.is_live()).map(|r| r.hash.clone());
        let mut stored_at = prior.and_then(|r| r.content_ref.clone());
        if outcome.is_upsert() {
            let cref = content_ref(key, hash);
            plan.contents.push(ContentPut {
                asset_key: key.to_owned(),
                hash: hash.to_owned(),
                body: body.get().as_bytes().to_vec(),
                content_ref: cref.clone(),
            });
            let decision = Decision::Upsert(UpsertDecision {
                decision_id: id,
                change: outcome,
                asset_key: key.to_owned(),
                source: ev.source.clone(),
                run_id: ev.run_id.clone(),
                event_id: ev.event_id.clone(),
                hash: hash.to_owned(),
                previous_hash,
                content_ref: cref.clone(),
                asset: body.clone(),
                business: enriched.business.clone(),
                decided_at: now,
            });
            plan.upserts.push(sink_record(&decision));
            stored_at = Some(cref);
        }
        let record = ControlRecord {
            asset_key: key.to_owned(),
            source: ev.source.clone(),
            name: name.clone(),
            hash: hash.to_owned(),
            last_seen_run: ev.run_id.clone(),
            last_seen_at: ev.emitted_at,
            status: RecordStatus::Live,
            dropped_at: None,
            content_ref: stored_at,
            version: prior.map_or(0, |r| r.version) + 1,
        };
        prints.insert(key, print);
        let before = records.insert(key.to_owned(), record);
        if changed_set.insert(key.to_owned()) {
            changed.push(key.to_owned());
            plan.priors.push((key.to_owned(), before));
        }
    }
    // The last move of each asset is its marker (two in a batch: three runs, two incomplete).
    if plan.moved.len() > 1 {
        let mut seen: FastSet<String> = FastSet::default();
        plan.moved.reverse();
        plan.moved.retain(|m| seen.insert(m.asset_key.clone()));
        plan.moved.reverse();
    }
    plan.contents.sort_by(|a, b| (&a.asset_key, &a.hash).cmp(&(&b.asset_key, &b.hash)));
    plan.contents.dedup_by(|a, b| a.asset_key == b.asset_key && a.hash == b.hash);
    for k in &changed {
        let Some(record) = records.remove(k) else { continue };
        if landed.contains(k) {
            plan.landed.push(record);
        } else {
            let print = prints.get(k.as_str()).copied().flatten();
            plan.writes.push(RecordWrite {
                record,
                expected_version: read_versions.get(k).copied().unwrap_or(0),
                print,
            });
        }
    }
    plan
}

/// The history row of a `running` event's decision.
fn row(enriched: &Enriched, key: &str, hash: &str, outcome: Outcome, id: String, now: DateTime<Utc>) -> HistoryRow {
    let ev = &enriched.event;
    HistoryRow {
        asset_key: Some(key.to_owned()),
        source: Some(ev.source.clone()),
        event_id: Some(ev.event_id.clone()),
        run_id: Some(ev.run_id.clone()),
        outcome,
        hash: Some(hash.to_owned()),
        decision_id: id,
        at: now,
    }
}

/// An output decision as the record a sink sends.
pub fn sink_record(decision: &Decision) -> SinkRecord {
    SinkRecord {
        key: decision.asset_key().to_owned(),
        decision_id: decision.decision_id().to_owned(),
        event_id: Some(decision.event_id().to_owned()),
        payload: SinkRecord::payload_of(decision),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::decode;

    fn event(id: &str, table: &str, at: &str, payload: &str) -> Enriched {
        event_of("r2", id, table, at, payload)
    }

    fn event_of(run: &str, id: &str, table: &str, at: &str, payload: &str) -> Enriched {
        let line = format!(
            r#"{{"event_id":"{id}","source":"pg","run_id":"{run}","status":"running","emitted_at":"{at}","asset":{{"database":"db","schema":"s","table":"{table}","cols":{payload}}}}}"#
        );
        Enriched { event: decode(line.as_bytes(), 1 << 20).unwrap(), business: None, enriched_at: Utc::now() }
    }

    fn record(table: &str, hash: &str, at: &str, status: RecordStatus, version: u64) -> ControlRecord {
        ControlRecord {
            asset_key: format!("pg/db/s/{table}"),
            source: "pg".into(),
            name: crate::event::AssetName { database: "db".into(), schema: "s".into(), table: table.into() },
            hash: hash.into(),
            last_seen_run: "r1".into(),
            last_seen_at: DateTime::parse_from_rfc3339(at).unwrap().to_utc(),
            status,
            dropped_at: None,
            content_ref: Some(format!("old/{table}")),
            version,
        }
    }

    /// The plan of `events` against `records`, whose run `r1` has completed (the usual case).
    fn plan<'a>(
        events: &'a [(Enriched, String, String)],
        records: Vec<ControlRecord>,
        landed: &[&str],
    ) -> BatchPlan<'a> {
        plan_marked(events, records, landed, OpenRuns::AllBut("r1"))
    }

    fn plan_marked<'a>(
        events: &'a [(Enriched, String, String)],
        records: Vec<ControlRecord>,
        landed: &[&str],
        open_runs: OpenRuns<'a>,
    ) -> BatchPlan<'a> {
        let records = records.into_iter().map(|r| (r.asset_key.clone(), r)).collect();
        let landed = landed.iter().map(|k| k.to_string()).collect();
        let now = DateTime::parse_from_rfc3339("2026-11-26T00:00:00Z").unwrap().to_utc();
        plan_batch(
            events.iter().map(|(e, k, h)| PlanEvent {
                enriched: e,
                key: k,
                hash: h,
                print: None,
                replayed: false,
                known: None,
                open_runs,
            }),
            records,
            &landed,
            |k, h| format!("mem://{k}@{h}"),
            now,
        )
    }

    fn with_key(e: Enriched, hash: &str) -> (Enriched, String, String) {
        let key = e.event.asset_key().unwrap();
        (e, key, hash.to_owned())
    }

    #[test]
    fn each_rule_gives_its_outcome_and_only_upserts_store_content() {
        let t1 = "2026-11-01T00:00:00Z";
        let t2 = "2026-11-02T00:00:00Z";
        let events = vec![
            with_key(event("e1", "new", t2, "1"), "h-new"),
            with_key(event("e2", "gone", t2, "1"), "h-gone"),
            with_key(event("e3", "changed", t2, "1"), "h2"),
            with_key(event("e4", "same", t2, "1"), "h1"),
            with_key(event("e5", "newer", t1, "1"), "h9"),
        ];
        let records = vec![
            record("gone", "h-gone", t1, RecordStatus::Dropped, 4),
            record("changed", "h1", t1, RecordStatus::Live, 2),
            record("same", "h1", t1, RecordStatus::Live, 7),
            record("newer", "h1", t2, RecordStatus::Live, 3),
        ];
        let p = plan(&events, records, &[]);
        let outcomes: Vec<Outcome> = p.rows.iter().map(|r| r.outcome).collect();
        use Outcome::*;
        assert_eq!(outcomes, [Created, Created, Updated, Unchanged, Stale]);
        assert_eq!(p.upserts.len(), 3);
        let stored: Vec<&str> = p.contents.iter().map(|c| c.asset_key.as_str()).collect();
        assert_eq!(stored, ["pg/db/s/changed", "pg/db/s/gone", "pg/db/s/new"], "sorted, upserts only");
        // A stale event writes nothing; the rest write once each, conditional on what was read.
        let writes: Vec<(&str, u64, u64)> =
            p.writes.iter().map(|w| (w.record.asset_key.as_str(), w.expected_version, w.record.version)).collect();
        assert_eq!(
            writes,
            [("pg/db/s/new", 0, 1), ("pg/db/s/gone", 4, 5), ("pg/db/s/changed", 2, 3), ("pg/db/s/same", 7, 8)]
        );
        let same = &p.writes[3].record;
        assert_eq!((same.content_ref.as_deref(), same.last_seen_run.as_str()), (Some("old/same"), "r2"));
        assert_eq!(p.writes[2].record.content_ref.as_deref(), Some("mem://pg/db/s/changed@h2"));
    }

    #[test]
    fn a_record_moved_on_before_its_runs_completion_leaves_a_marker_for_that_run() {
        // r2's events move three r1 records on. Once r1's completion is marked, its count is
        // spent and nothing is left behind; while r1 is open (the mark names an earlier run, or
        // r1 is the first run of a source with no mark), each record leaves a moved-on marker
        // of the r1 event it showed, so that a late r1 completion still counts them (§3.3):
        // the dropped one too, which an earlier run's completion read late dropped, and which
        // r1's completion counts until r2 creates it again.
        let (t1, t2) = ("2026-11-01T00:00:00Z", "2026-11-02T00:00:00Z");
        let events = vec![
            with_key(event("e1", "changed", t2, "2"), "h2"),
            with_key(event("e2", "same", t2, "1"), "h1"),
            with_key(event("e3", "gone", t2, "1"), "h1"),
        ];
        let records = || {
            vec![
                record("changed", "h1", t1, RecordStatus::Live, 2),
                record("same", "h1", t1, RecordStatus::Live, 7),
                record("gone", "h1", t1, RecordStatus::Dropped, 4),
            ]
        };
        for open in [OpenRuns::AllBut("r1"), OpenRuns::Only("r0"), OpenRuns::Unknown] {
            let p = plan_marked(&events, records(), &[], open);
            assert!(p.moved.is_empty() && p.run_events.is_empty(), "{open:?}");
        }
        let p = plan_marked(&events, records(), &[], OpenRuns::AllBut("r0"));
        assert_eq!(p.moved.len(), 3);
        let p = plan_marked(&events, records(), &[], OpenRuns::Only("r1"));
        assert!(p.run_events.is_empty());
        let at = DateTime::parse_from_rfc3339(t1).unwrap().to_utc();
        let markers: Vec<(&str, &str, DateTime<Utc>)> =
            p.moved.iter().map(|r| (r.asset_key.as_str(), r.last_seen_run.as_str(), r.last_seen_at)).collect();
        let [changed, same, gone] =
            ["changed", "same", "gone"].map(|t| RunEvent::moved_key("pg", &format!("pg/db/s/{t}")));
        assert_eq!(markers, [(changed.as_str(), "r1", at), (same.as_str(), "r1", at), (gone.as_str(), "r1", at)]);
        assert!(p.moved.iter().all(|r| r.is_run_event() && !r.is_live() && !r.is_asset()));
        // The r1 event of `same` delivered again after the move is stale: its event marker
        // stands for the event the moved-on marker stands for, and the shard writes one.
        let again = vec![with_key(event_of("r1", "a2", "same", t1, "1"), "h1")];
        let mut same = record("same", "h1", t2, RecordStatus::Live, 8);
        same.last_seen_run = "r2".into();
        let stale = plan_marked(&again, vec![same], &[], OpenRuns::AllBut("r0"));
        assert_eq!(stale.rows[0].outcome, Outcome::Stale);
        let [(asset, marker)] = &stale.run_events[..] else { panic!("{:?}", stale.run_events) };
        assert_eq!(asset, "pg/db/s/same");
        assert_eq!(marker.asset_key, RunEvent::key("pg", "r1", "pg/db/s/same", at, "h1"));
        assert!(RunEvent::same_event(marker, &p.moved[1]));
        // Moved on twice in one batch (r1 to r2 to r3, neither completed): the last move is
        // the asset's marker.
        let twice = vec![
            with_key(event("e1", "same", t2, "1"), "h1"),
            with_key(event_of("r3", "f1", "same", "2026-11-03T00:00:00Z", "1"), "h1"),
        ];
        let p = plan_marked(&twice, vec![record("same", "h1", t1, RecordStatus::Live, 7)], &[], OpenRuns::AllBut("r0"));
        assert_eq!(p.moved.iter().map(|r| r.last_seen_run.as_str()).collect::<Vec<_>>(), ["r2"]);
    }

    #[test]
    fn two_events_of_one_key_in_a_batch_see_each_other() {
        let t = "2026-11-02T00:00:00Z";
        let events = vec![
            with_key(event("e1", "a", t, "1"), "h1"),
            with_key(event("e2", "a", t, "2"), "h2"),
            with_key(event("e3", "a", t, "2"), "h2"),
        ];
        let p = plan(&events, vec![], &[]);
        let outcomes: Vec<Outcome> = p.rows.iter().map(|r| r.outcome).collect();
        assert_eq!(outcomes, [Outcome::Created, Outcome::Updated, Outcome::Unchanged]);
        assert_eq!(p.writes.len(), 1, "one write per key, its last state");
        assert_eq!(
            (p.writes[0].expected_version, p.writes[0].record.version, p.writes[0].record.hash.as_str()),
            (0, 3, "h2")
        );
        assert_eq!(p.priors, vec![("pg/db/s/a".to_owned(), None)]);
        let ids: HashSet<&str> = p.rows.iter().map(|r| r.decision_id.as_str()).collect();
        assert_eq!(ids.len(), 3, "each decision has its own id");
    }

    #[test]
    fn a_key_an_earlier_round_wrote_is_not_written_again() {
        let t = "2026-11-02T00:00:00Z";
        let events = vec![with_key(event("e1", "a", t, "1"), "h1"), with_key(event("e2", "b", t, "1"), "h1")];
        let p = plan(&events, vec![], &["pg/db/s/a"]);
        assert_eq!(p.landed.iter().map(|r| r.asset_key.as_str()).collect::<Vec<_>>(), ["pg/db/s/a"]);
        assert_eq!(p.writes.iter().map(|w| w.record.asset_key.as_str()).collect::<Vec<_>>(), ["pg/db/s/b"]);
        assert_eq!(p.upserts.len(), 2, "its upsert is published again, with the same id");
    }

    #[test]
    fn a_known_unchanged_asset_is_decided_as_its_record_would_decide_it_and_only_touched() {
        let (t1, t2) = ("2026-11-01T00:00:00Z", "2026-11-02T00:00:00Z");
        let hash = "ab".repeat(32);
        let events = vec![with_key(event("e1", "same", t2, "1"), &hash), with_key(event("e2", "other", t2, "1"), "h")];
        let read = plan(&events, vec![record("same", &hash, t1, RecordStatus::Live, 7)], &[]);

        let known = KnownRecord {
            hash: KnownRecord::hash_bytes(&hash).unwrap(),
            print: None,
            run: KnownRecord::run_brief("r1"),
            last_seen_at: DateTime::parse_from_rfc3339(t1).unwrap().to_utc(),
            version: 7,
        };
        assert!(known.vouches_unchanged(&hash, KnownRecord::run_brief("r2"), events[0].0.event.emitted_at));
        assert!(!known.vouches_unchanged(&hash, KnownRecord::run_brief("r1"), events[0].0.event.emitted_at));
        assert!(!known.vouches_unchanged(&"cd".repeat(32), KnownRecord::run_brief("r2"), events[0].0.event.emitted_at));
        let now = DateTime::parse_from_rfc3339("2026-11-26T00:00:00Z").unwrap().to_utc();
        // The first event a replay or not.
        let vouched = |replayed: bool| {
            let first = |i: usize| i == 0;
            let events = events.iter().enumerate().map(|(i, (e, k, h))| PlanEvent {
                enriched: e,
                key: k,
                hash: h,
                print: None,
                replayed: replayed && first(i),
                known: first(i).then_some(Unchanged { known, indexed: true }),
                open_runs: OpenRuns::AllBut("r1"),
            });
            plan_batch(events, HashMap::new(), &HashSet::new(), |k, h| format!("mem://{k}@{h}"), now)
        };
        let fast = vouched(false);
        assert_eq!(fast.rows, read.rows, "the same outcomes and decision ids as with the record read");
        assert_eq!(fast.writes.len(), 1, "only the new asset's record is written");
        assert_eq!(
            fast.touches,
            [RecordTouch {
                source: "pg".into(),
                asset_key: "pg/db/s/same".into(),
                last_seen_run: "r2".into(),
                last_seen_at: events[0].0.event.emitted_at,
                version: 8,
                indexed: true,
                print: None,
            }]
        );
        // A replay of it is stale and moves nothing.
        let replay = vouched(true);
        assert_eq!(replay.rows[0].outcome, Outcome::Stale);
        assert!(replay.touches.is_empty());
    }

    #[test]
    fn the_same_batch_planned_twice_gives_the_same_ids() {
        let t = "2026-11-02T00:00:00Z";
        let events = vec![with_key(event("e1", "a", t, "1"), "h1")];
        let ids = |p: BatchPlan| p.rows.into_iter().map(|r| r.decision_id).collect::<Vec<_>>();
        assert_eq!(ids(plan(&events, vec![], &[])), ids(plan(&events, vec![], &[])));
    }
}
