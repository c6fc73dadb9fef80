//! The decision rules of EVENTS.md §3 as pure functions, free of actors and I/O.

use chrono::{DateTime, Utc};

use crate::decision::Outcome;
use crate::record::{ControlRecord, RunEvent};

/// Applies §3.1 to the record of an asset (if any) and an event with hash `hash` emitted at
/// `at`, first match wins:
/// - [`Outcome::Stale`]: the record has newer news; nothing changes;
/// - [`Outcome::Created`]: a new asset, or one that had been dropped: an upsert;
/// - [`Outcome::Updated`]: a live asset whose content hash changed: an upsert;
/// - [`Outcome::Unchanged`]: a live asset, same hash: only `last_seen_*` moves.
pub fn judge(record: Option<&ControlRecord>, hash: &str, at: DateTime<Utc>) -> Outcome {
    match record {
        Some(r) if r.last_seen_at > at => Outcome::Stale,
        None => Outcome::Created,
        Some(r) if !r.is_live() => Outcome::Created,
        Some(r) if r.hash != hash => Outcome::Updated,
        Some(_) => Outcome::Unchanged,
    }
}

/// What a completion's sweep asks of a control store (EVENTS.md §3.2).
#[derive(Debug, Clone, Copy)]
pub struct SweepQuery<'a> {
    pub source: &'a str,
    /// The completed run.
    pub run: &'a str,
    /// When the completion was emitted: a record touched by a newer event is not its to drop.
    pub emitted_at: DateTime<Utc>,
    pub max_drop_fraction: f64,
    /// Whether the plan's `seen_in_run` must count every applied run event (§3.3: the
    /// completion names `expected_assets`). Without it a store may leave out those its records
    /// do not show as live (run-event markers), and plan from what it keeps in memory.
    pub count_run_events: bool,
}

/// What a completion of run `run` would do to its source's records (EVENTS.md §3.2).
#[derive(Debug, Clone, PartialEq)]
pub struct SweepPlan {
    /// Live records of the source before the sweep.
    pub live: usize,
    /// The completed run's applied `running` events (what `expected_assets` counts): records
    /// whose `last_seen_run` is the run, and its run-event markers ([`crate::record::RunEvent`]).
    pub seen_in_run: usize,
    /// Asset keys of live records not seen in the run nor touched after the completion was
    /// emitted, in key order.
    pub to_drop: Vec<String>,
    /// The drop guard holds: dropping `to_drop` would remove more than the allowed fraction.
    pub guarded: bool,
    /// Keys of the event markers ([`RunEvent::event_key_prefix`]) that no completion still to
    /// come counts once this one is applied: the run's own, whose completion its mark decides
    /// from then on (§3.2), and any emitted no later than the completion, whose runs came
    /// before it (a source's runs follow one another), so that their completions are older news
    /// than its mark. Found only where the store listed the source's records; the sweep removes
    /// them once the completion is applied, so that a source's markers do not pile up run after
    /// run. A marker removed too early could only make a count short (an `incomplete_run`),
    /// never a drop early.
    pub spent_markers: Vec<String>,
}

/// Plans the sweep `q` over all records of its source.
pub fn plan_sweep<'a>(records: impl IntoIterator<Item = &'a ControlRecord>, q: SweepQuery<'_>) -> SweepPlan {
    let mut planner = SweepPlanner::new(q);
    for r in records {
        planner.add(&r.asset_key, r.is_live(), &r.last_seen_run, r.last_seen_at);
    }
    planner.finish()
}

/// Builds a [`SweepPlan`] one record at a time, so a store can stream a source's records
/// through it instead of holding them all.
#[derive(Debug)]
pub struct SweepPlanner<'q> {
    q: SweepQuery<'q>,
    /// [`RunEvent::event_key_prefix`] of the source.
    markers: String,
    live: usize,
    seen_in_run: usize,
    to_drop: Vec<String>,
    spent_markers: Vec<String>,
    /// Event markers of the source seen, spent or not.
    event_markers: usize,
}

impl<'q> SweepPlanner<'q> {
    /// The planner of the sweep `q`.
    pub fn new(q: SweepQuery<'q>) -> Self {
        let markers = RunEvent::event_key_prefix(q.source);
        SweepPlanner {
            q,
            markers,
            live: 0,
            seen_in_run: 0,
            to_drop: Vec::new(),
            spent_markers: Vec::new(),
            event_markers: 0,
        }
    }

    /// Counts one record of the source: its key, whether it is live, the run that last saw it
    /// and when. A live record an event newer than the completion touched (the next run,
    /// read before a late completion) counts as live but is not dropped, nor counted against
    /// the drop guard: the guard weighs what the sweep would do.
    pub fn add(&mut self, asset_key: &str, live: bool, last_seen_run: &str, last_seen_at: DateTime<Utc>) {
        let in_run = last_seen_run == self.q.run;
        if in_run {
            self.seen_in_run += 1;
        }
        if live {
            self.live += 1;
            if !in_run && last_seen_at <= self.q.emitted_at {
                self.to_drop.push(asset_key.to_owned());
            }
        } else if is_event_marker(asset_key, &self.markers) {
            self.event_markers += 1;
            if in_run || last_seen_at <= self.q.emitted_at {
                self.spent_markers.push(asset_key.to_owned());
            }
        }
    }

    /// How many of the records added were event markers, spent or not.
    pub fn event_markers(&self) -> usize {
        self.event_markers
    }

    /// Counts `n` live records of the source seen in the run, whose keys the plan does not need.
    pub fn add_seen(&mut self, n: usize) {
        self.live += n;
        self.seen_in_run += n;
    }

    pub fn finish(mut self) -> SweepPlan {
        self.to_drop.sort_unstable();
        let dropping = self.to_drop.len();
        let guarded = dropping > 0 && (dropping as f64) > self.q.max_drop_fraction * (self.live as f64);
        SweepPlan {
            live: self.live,
            seen_in_run: self.seen_in_run,
            to_drop: self.to_drop,
            guarded,
            spent_markers: self.spent_markers,
        }
    }
}

/// Whether `key` is the key of an event marker of the source whose
/// [`RunEvent::event_key_prefix`] is `prefix`: an asset's key starts with its source and a `/`,
/// so none does.
fn is_event_marker(key: &str, prefix: &str) -> bool {
    key.starts_with(prefix)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::AssetName;
    use crate::record::RecordStatus;

    fn rec(key: &str, hash: &str, run: &str, at: &str, status: RecordStatus) -> ControlRecord {
        ControlRecord {
            asset_key: key.into(),
            source: "s".into(),
            name: AssetName { database: "d".into(), schema: "s".into(), table: key.into() },
            hash: hash.into(),
            last_seen_run: run.into(),
            last_seen_at: at.parse().unwrap(),
            status,
            dropped_at: None,
            content_ref: None,
            version: 1,
        }
    }

    fn query(run: &str, emitted_at: DateTime<Utc>, max_drop_fraction: f64) -> SweepQuery<'_> {
        SweepQuery { source: "s", run, emitted_at, max_drop_fraction, count_run_events: true }
    }

    #[test]
    fn first_rule_that_matches_applies() {
        let t = |s: &str| s.parse::<DateTime<Utc>>().unwrap();
        let live = rec("k", "h", "r1", "2026-01-01T10:00:00Z", RecordStatus::Live);
        let dropped = rec("k", "h", "r1", "2026-01-01T10:00:00Z", RecordStatus::Dropped);
        assert_eq!(judge(None, "h", t("2026-01-01T09:00:00Z")), Outcome::Created);
        assert_eq!(judge(Some(&live), "x", t("2026-01-01T09:00:00Z")), Outcome::Stale);
        assert_eq!(judge(Some(&dropped), "h", t("2026-01-01T09:00:00Z")), Outcome::Stale);
        assert_eq!(judge(Some(&dropped), "h", t("2026-01-01T10:00:00Z")), Outcome::Created);
        assert_eq!(judge(Some(&live), "x", t("2026-01-01T10:00:00Z")), Outcome::Updated);
        assert_eq!(judge(Some(&live), "h", t("2026-01-01T10:00:00Z")), Outcome::Unchanged);
    }

    #[test]
    fn drop_guard_allows_exactly_the_fraction() {
        let at = "2026-01-01T10:00:00Z";
        let rs = [
            rec("a", "h", "r2", at, RecordStatus::Live),
            rec("b", "h", "r1", at, RecordStatus::Live),
            rec("c", "h", "r1", at, RecordStatus::Dropped),
        ];
        let t = at.parse().unwrap();
        let plan = plan_sweep(&rs, query("r2", t, 0.5));
        assert_eq!(
            (plan.live, plan.seen_in_run, plan.to_drop.clone(), plan.guarded),
            (2, 1, vec!["b".to_string()], false)
        );
        let plan = plan_sweep(&rs, query("r3", t, 0.5));
        assert!(plan.guarded, "dropping 2 of 2 is over half");
        assert!(!plan_sweep(&rs, query("r3", t, 1.0)).guarded);
    }

    #[test]
    fn records_touched_after_the_completion_are_neither_dropped_nor_weighed_by_the_guard() {
        // r1's completion, emitted at 10:00, is read after r2 refreshed a, b and c at 11:00:
        // only d is r1's to drop, one of four live records, which the guard allows.
        let rs = [
            rec("a", "h", "r2", "2026-01-01T11:00:00Z", RecordStatus::Live),
            rec("b", "h", "r2", "2026-01-01T11:00:00Z", RecordStatus::Live),
            rec("c", "h", "r2", "2026-01-01T11:00:00Z", RecordStatus::Live),
            rec("d", "h", "r0", "2026-01-01T09:00:00Z", RecordStatus::Live),
        ];
        let plan = plan_sweep(&rs, query("r1", "2026-01-01T10:00:00Z".parse().unwrap(), 0.5));
        assert_eq!((plan.live, plan.to_drop.clone(), plan.guarded), (4, vec!["d".to_string()], false));
    }

    #[test]
    fn a_sweep_spends_the_event_markers_of_its_run_and_of_the_runs_before_it() {
        let t = |s: &str| s.parse::<DateTime<Utc>>().unwrap();
        let name = AssetName { database: "d".into(), schema: "p".into(), table: "x".into() };
        let event = |run: &str, at: &str| RunEvent::record("s", &name, run, "s/d/p/x", t(at), "h");
        let own = event("r1", "2026-01-01T11:00:00Z");
        let before = event("r0", "2026-01-01T09:00:00Z");
        let next = event("r2", "2026-01-01T10:30:00Z");
        let asset = rec("s/d/p/x", "h", "r0", "2026-01-01T09:00:00Z", RecordStatus::Dropped);
        let moved = RunEvent::moved(&asset);
        let first = crate::open_runs::first_run_record("s", "r0", t("2026-01-01T09:00:00Z"));
        let rs = [own.clone(), before.clone(), next, asset, moved, first];
        // r1's completion, emitted at 10:00, read after r1's own marker (a second event of x,
        // emitted late) and r2's began.
        let plan = plan_sweep(&rs, query("r1", t("2026-01-01T10:00:00Z"), 0.5));
        let mut spent = plan.spent_markers.clone();
        spent.sort();
        let mut expected = vec![own.asset_key, before.asset_key];
        expected.sort();
        assert_eq!(spent, expected);
        assert_eq!(plan.seen_in_run, 1);
    }
}
