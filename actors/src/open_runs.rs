//! Which of a source's runs may still have a completion to count for (EVENTS.md §3.3), and the
//! record that keeps a source's first run until it has a completion mark.
//!
//! A record of such a run that the next run moves on leaves a moved-on marker
//! ([`crate::record::RunEvent::moved`]), so a late completion of the run still counts its
//! event. Once a source has a completion mark ([`crate::mark`]), that is every run but the one
//! the mark names. Before, it is the source's first run alone: a source with no completion yet
//! may never send one, and every unchanged asset of every one of its runs would then be read and
//! rewritten with a marker instead of moving its run stamp.

use chrono::{DateTime, Utc};

use crate::event::AssetName;
use crate::ports::RecordKey;
use crate::record::{ControlRecord, RunEvent};

/// The runs of a source whose records leave a moved-on marker as they move on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenRuns<'a> {
    /// Every run but the one the source's completion mark names.
    AllBut(&'a str),
    /// The source has no mark: its first run alone.
    Only(&'a str),
    /// Not known yet (the batch that keeps the source's first run): none.
    Unknown,
}

impl<'a> OpenRuns<'a> {
    /// Whether a record of `run` leaves a moved-on marker as it moves on.
    pub fn includes(self, run: &str) -> bool {
        match self {
            OpenRuns::AllBut(marked) => run != marked,
            OpenRuns::Only(first) => run == first,
            OpenRuns::Unknown => false,
        }
    }

    /// Whether a record whose run has brief `brief` ([`crate::record::KnownRecord::run_brief`])
    /// may leave one: a brief that matches only says "maybe", so this errs towards yes (the
    /// record is then read, and [`includes`](Self::includes) decides).
    pub fn may_include(self, brief: u64, brief_of: impl FnOnce(&'a str) -> u64) -> bool {
        match self {
            OpenRuns::AllBut(marked) => brief_of(marked) != brief,
            OpenRuns::Only(first) => brief_of(first) == brief,
            OpenRuns::Unknown => false,
        }
    }
}

/// The control-table key of the record of `source`'s first run.
pub fn first_run_key(source: &str) -> RecordKey {
    RecordKey { source: source.to_owned(), asset_key: format!("{source}#first-run") }
}

/// The record of `source`'s first run `run`, first seen at `at`: never live, never counted by a
/// sweep (no `last_seen_run`), never listed as an asset (a run-event kind of record); the run
/// lives in `content_ref`.
pub fn first_run_record(source: &str, run: &str, at: DateTime<Utc>) -> ControlRecord {
    RunEvent::marker(first_run_key(source).asset_key, source, &AssetName::default(), "", at, run)
}

/// The first run a record keeps, if it is `source`'s first-run record.
pub fn first_run_of(source: &str, r: &ControlRecord) -> Option<String> {
    (r.asset_key == first_run_key(source).asset_key && r.is_run_event()).then(|| r.content_ref.clone()).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::KnownRecord;

    fn brief(run: &str) -> u64 {
        KnownRecord::run_brief(run)
    }

    #[test]
    fn a_mark_opens_every_other_run_and_a_first_run_only_itself() {
        assert!(OpenRuns::AllBut("r2").includes("r1") && !OpenRuns::AllBut("r2").includes("r2"));
        assert!(OpenRuns::Only("r1").includes("r1") && !OpenRuns::Only("r1").includes("r2"));
        assert!(!OpenRuns::Unknown.includes("r1"));
        assert!(OpenRuns::AllBut("r2").may_include(brief("r1"), brief));
        assert!(!OpenRuns::AllBut("r2").may_include(brief("r2"), brief));
        assert!(OpenRuns::Only("r1").may_include(brief("r1"), brief));
        assert!(!OpenRuns::Only("r1").may_include(brief("r2"), brief));
    }

    #[test]
    fn a_first_run_record_is_neither_an_asset_nor_counted() {
        let r = first_run_record("pg", "r1", Utc::now());
        assert_eq!(first_run_of("pg", &r).as_deref(), Some("r1"));
        assert_eq!(first_run_of("my", &r), None);
        assert!(!r.is_asset() && !r.is_live() && r.last_seen_run.is_empty());
        let q = crate::rules::SweepQuery {
            source: "pg",
            run: "r1",
            emitted_at: Utc::now(),
            max_drop_fraction: 0.5,
            count_run_events: true,
        };
        let plan = crate::rules::plan_sweep([&r], q);
        assert_eq!((plan.live, plan.seen_in_run, plan.spent_markers.len()), (0, 0, 0));
    }
}
