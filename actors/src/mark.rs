//! Completion marks: the last completion applied to a source, kept in the control table beside
//! its assets, which fences what a process that lost a partition still does late.
//!
//! A completion is applied once and never after a newer one: a process that lost a source's
//! partition while it swept (paused, or slow to learn of the rebalance) finds the new owner's
//! mark and drops nothing, where it would otherwise drop what the next run already refreshed.
//! The mark also holds the completion's place in its partition, and every event before that
//! place was applied before the sweep began (the barrier): an event read again from there (by
//! a process that lost the partition, or after a crash) is a replay and changes nothing, where
//! it would otherwise bring back an asset the completion dropped.
//!
//! The sweep writes the mark twice: `sweeping` before its first drop (so a process reading a
//! dropped record in the same snapshot also reads the mark that explains it), `applied` once
//! every effect is durable. Only an `applied` mark (or a `guarded` one, but for a redrive)
//! stops the same completion from being swept again, so a crash mid-sweep repeats the sweep.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::decision::Origin;
use crate::event::AssetName;
use crate::ports::RecordKey;
use crate::record::{ControlRecord, RecordStatus};

/// How far the marked completion got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MarkState {
    /// Its drops are being written.
    Sweeping,
    /// Every drop and its history row are durable.
    Applied,
    /// The drop guard stopped it: dead-lettered, nothing dropped.
    Guarded,
}

/// A source's last completion.
#[derive(Debug, Clone, PartialEq)]
pub struct CompletionMark {
    pub run_id: String,
    pub emitted_at: DateTime<Utc>,
    pub state: MarkState,
    /// Where the completion was read.
    pub partition: String,
    pub offset: String,
    /// A `guarded` mark's dead-letter message, as first written: a re-delivery of the
    /// completion gives the same dead letter, though the store may have moved on since.
    pub guard_message: Option<String>,
}

/// What a mark keeps in its record's `content_ref`.
#[derive(Serialize, Deserialize)]
struct Details {
    state: MarkState,
    partition: String,
    offset: String,
    /// Absent in marks written before it was kept, and in every mark but a `guarded` one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    guard_message: Option<String>,
}

/// The control-table key of `source`'s mark: the source's own name, which no asset key of it
/// can be (`{source}/{database}/{schema}/{table}` is always longer).
pub fn mark_key(source: &str) -> RecordKey {
    RecordKey { source: source.to_owned(), asset_key: source.to_owned() }
}

impl CompletionMark {
    pub fn new(run_id: &str, emitted_at: DateTime<Utc>, state: MarkState, origin: &Origin) -> Self {
        CompletionMark {
            run_id: run_id.to_owned(),
            emitted_at,
            state,
            partition: origin.partition.clone(),
            offset: origin.offset.clone(),
            guard_message: None,
        }
    }

    /// The mark with a `guarded` mark's dead-letter message.
    pub fn with_guard_message(self, message: &str) -> Self {
        CompletionMark { guard_message: Some(message.to_owned()), ..self }
    }

    /// The mark as a control record of `source` (a `dropped` one: never live, never swept).
    pub fn to_record(&self, source: &str, version: u64) -> ControlRecord {
        let details = Details {
            state: self.state,
            partition: self.partition.clone(),
            offset: self.offset.clone(),
            guard_message: self.guard_message.clone(),
        };
        ControlRecord {
            asset_key: source.to_owned(),
            source: source.to_owned(),
            name: AssetName::default(),
            // The run lives in `hash`, not `last_seen_run`: `expected_assets` counts records by
            // `last_seen_run`, and this record is no asset of any run.
            hash: self.run_id.clone(),
            last_seen_run: String::new(),
            last_seen_at: self.emitted_at,
            status: RecordStatus::Dropped,
            dropped_at: Some(self.emitted_at),
            content_ref: serde_json::to_string(&details).ok(),
            version,
        }
    }

    /// The mark a control record holds, if it is one.
    pub fn from_record(r: &ControlRecord) -> Option<Self> {
        if !r.is_completion_mark() {
            return None;
        }
        let d: Details = serde_json::from_str(r.content_ref.as_deref()?).ok()?;
        Some(CompletionMark {
            run_id: r.hash.clone(),
            emitted_at: r.last_seen_at,
            state: d.state,
            partition: d.partition,
            offset: d.offset,
            guard_message: d.guard_message,
        })
    }

    /// Whether the completion `(run_id, emitted_at)` needs no sweep: it is older news than
    /// this mark (EVENTS.md §3.1: older news never overwrites newer), or this very completion,
    /// applied. A redrive (`redriven`) of a completion the drop guard stopped is swept again:
    /// that is how an operator applies it.
    pub fn covers(&self, run_id: &str, emitted_at: DateTime<Utc>, redriven: bool) -> bool {
        if self.emitted_at != emitted_at || self.run_id != run_id {
            return self.emitted_at > emitted_at;
        }
        match self.state {
            MarkState::Sweeping => false,
            MarkState::Applied => true,
            MarkState::Guarded => !redriven,
        }
    }

    /// Whether the drop guard stopped this very completion `(run_id, emitted_at)`.
    pub fn guarded(&self, run_id: &str, emitted_at: DateTime<Utc>) -> bool {
        self.state == MarkState::Guarded && self.names(run_id, emitted_at)
    }

    /// Whether this is the mark of the completion `(run_id, emitted_at)`, in any state. A mark
    /// is written only once its completion stopped waiting for `expected_assets`, so it also
    /// says that the run's events were all applied then, when the records that counted them
    /// may since have moved on to the next run.
    pub fn names(&self, run_id: &str, emitted_at: DateTime<Utc>) -> bool {
        self.run_id == run_id && self.emitted_at == emitted_at
    }

    /// Whether an event read at `origin`, emitted at `at`, came before this completion on the
    /// same partition: it was applied before the sweep, and reading it again changes nothing.
    /// Positions compare only as numbers on one partition (Kafka offsets, file offsets,
    /// Kinesis sequence numbers); a redriven event is never a replay, nor one from standard
    /// input, whose line numbers start again with every run.
    pub fn precedes(&self, origin: &Origin, at: DateTime<Utc>, redriven: bool) -> bool {
        if redriven || origin.partition != self.partition || at > self.emitted_at || origin.partition == "stdin" {
            return false;
        }
        match (origin.offset.parse::<u128>(), self.offset.parse::<u128>()) {
            (Ok(event), Ok(completion)) => event < completion,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: u32) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + i64::from(s), 0).unwrap()
    }

    fn origin(partition: &str, offset: &str) -> Origin {
        Origin { source: "k".into(), partition: partition.into(), offset: offset.into() }
    }

    #[test]
    fn a_mark_round_trips_through_its_record() {
        let m = CompletionMark::new("r1", t(5), MarkState::Guarded, &origin("topic/2", "41"));
        let r = m.to_record("src", 3);
        assert!(r.is_completion_mark() && !r.is_live() && r.last_seen_run.is_empty());
        assert_eq!(CompletionMark::from_record(&r), Some(m));
    }

    #[test]
    fn a_guarded_mark_keeps_its_dead_letters_message() {
        let o = origin("topic/2", "41");
        let m = CompletionMark::new("r1", t(5), MarkState::Guarded, &o).with_guard_message("would drop 6 of 10");
        let read = CompletionMark::from_record(&m.to_record("src", 3)).unwrap();
        assert!(read.guarded("r1", t(5)));
        assert_eq!(read.guard_message.as_deref(), Some("would drop 6 of 10"));
        assert!(!read.guarded("r2", t(6)), "another completion");
        // A guarded mark written before messages were kept: guarded, message unknown.
        let mut old = m.to_record("src", 3);
        old.content_ref = Some(r#"{"state":"guarded","partition":"topic/2","offset":"41"}"#.into());
        let old = CompletionMark::from_record(&old).unwrap();
        assert!(old.guarded("r1", t(5)) && old.guard_message.is_none());
        let applied = CompletionMark::new("r1", t(5), MarkState::Applied, &o);
        assert!(!applied.guarded("r1", t(5)));
    }

    #[test]
    fn only_an_applied_mark_covers_its_own_completion() {
        let o = origin("topic/2", "41");
        let sweeping = CompletionMark::new("r1", t(5), MarkState::Sweeping, &o);
        assert!(!sweeping.covers("r1", t(5), false), "a crash mid-sweep sweeps again");
        assert!(sweeping.covers("r0", t(4), false), "an older completion is covered by any");
        assert!(!sweeping.covers("r2", t(6), false));
        let applied = CompletionMark { state: MarkState::Applied, ..sweeping.clone() };
        assert!(applied.covers("r1", t(5), false) && applied.covers("r1", t(5), true));
        assert!(!applied.covers("r9", t(5), false), "another run of the same second is not this one");
        let guarded = CompletionMark { state: MarkState::Guarded, ..sweeping };
        assert!(guarded.covers("r1", t(5), false) && !guarded.covers("r1", t(5), true));
    }

    #[test]
    fn an_event_precedes_a_completion_only_earlier_on_its_partition() {
        let m = CompletionMark::new("r1", t(5), MarkState::Applied, &origin("topic/2", "100"));
        assert!(m.precedes(&origin("topic/2", "99"), t(5), false));
        assert!(!m.precedes(&origin("topic/2", "99"), t(5), true), "a redrive is not a replay");
        assert!(!m.precedes(&origin("topic/2", "101"), t(4), false), "after it on the partition");
        assert!(!m.precedes(&origin("topic/3", "5"), t(4), false), "another partition");
        assert!(!m.precedes(&origin("topic/2", "5"), t(6), false), "newer news (a topic made anew)");
        let sqs = CompletionMark::new("r1", t(5), MarkState::Applied, &origin("queue", "a-b-c"));
        assert!(!sqs.precedes(&origin("queue", "a-b-b"), t(4), false), "ids that are no positions");
        let stdin = CompletionMark::new("r1", t(5), MarkState::Applied, &origin("stdin", "100"));
        assert!(!stdin.precedes(&origin("stdin", "3"), t(4), false), "line numbers of another run");
    }
}
