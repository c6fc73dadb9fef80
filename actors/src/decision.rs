//! What the pipeline emits: decisions (upsert, drop), dead letters and history rows.

use std::sync::Arc;

use base64::Engine as _;
use base64::prelude::BASE64_STANDARD;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The business data attached by enrichment, shared between the decisions that carry it.
pub type Business = Option<Arc<Map<String, Value>>>;

/// A deterministic decision id: the same event, asset, kind of decision and prior state of
/// the asset's record always give the same id, so a replay after a crash or a redrive repeats
/// it exactly. The prior state (`prior`, see [`prior_state`]) tells apart two genuinely
/// different decisions of one re-delivered event (a `created` before a drop and another after
/// it). It is the record's status and hash, not its version: a replayed event that finds its
/// own effects already applied is `unchanged`, which moves the version but not the state, so the
/// ids of later decisions stay those of a run without the crash.
pub fn decision_id(event_id: &str, asset_key: &str, kind: &str, prior: &str) -> String {
    id_of([&[event_id], &[asset_key], &[kind], &[prior]])
}

/// [`decision_id`] with the prior state of a live record at `hash` (what [`prior_state`] gives
/// for it), without building that string: a steady crawl asks this for nearly every event.
pub fn live_decision_id(event_id: &str, asset_key: &str, kind: &str, hash: &str) -> String {
    id_of([&[event_id], &[asset_key], &[kind], &[crate::record::RecordStatus::Live.as_str(), ":", hash]])
}

/// The id of four parts, each given in pieces: each part's length, then its bytes.
fn id_of(parts: [&[&str]; 4]) -> String {
    let each = |f: &mut dyn FnMut(&[u8])| {
        for pieces in parts {
            f(&(pieces.iter().map(|p| p.len()).sum::<usize>() as u64).to_le_bytes());
            pieces.iter().for_each(|p| f(p.as_bytes()));
        }
    };
    let total: usize = parts.iter().flat_map(|pieces| pieces.iter()).map(|p| p.len()).sum::<usize>() + 8 * parts.len();
    // Gathered and hashed in one call where it fits (nearly always): a `Hasher` fed eight bytes
    // at a time costs a fifth more for the same digest.
    let digest = if total <= 256 {
        let (mut buf, mut len) = ([0u8; 256], 0);
        each(&mut |bytes| {
            buf[len..len + bytes.len()].copy_from_slice(bytes);
            len += bytes.len();
        });
        blake3::hash(&buf[..len])
    } else {
        let mut hasher = blake3::Hasher::new();
        each(&mut |bytes| {
            hasher.update(bytes);
        });
        hasher.finalize()
    };
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut id = String::with_capacity(32);
    for b in &digest.as_bytes()[..16] {
        id.push(char::from(HEX[usize::from(b >> 4)]));
        id.push(char::from(HEX[usize::from(b & 15)]));
    }
    id
}

/// The part of a record's state a decision id depends on: `""` for no record. A dropped
/// record adds when it was dropped (its completion's time): an event re-delivered after each
/// of two drops of its asset re-creates it twice, two decisions that need two ids. In
/// milliseconds, as every control store keeps it (PostgreSQL keeps microseconds).
pub fn prior_state(record: Option<&crate::record::ControlRecord>) -> String {
    match record {
        Some(r) if !r.is_live() => {
            let at = r.dropped_at.map(rfc3339).unwrap_or_default();
            format!("{}:{}:{at}", r.status.as_str(), r.hash)
        }
        Some(r) => format!("{}:{}", r.status.as_str(), r.hash),
        None => String::new(),
    }
}

/// Timestamps in outputs: RFC 3339, UTC, millisecond precision.
pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// An upsert: the asset is new or changed (EVENTS.md §4.1).
#[derive(Debug, Clone, Serialize)]
pub struct UpsertDecision {
    pub decision_id: String,
    /// [`Outcome::Created`] or [`Outcome::Updated`].
    pub change: Outcome,
    pub asset_key: String,
    pub source: String,
    pub run_id: String,
    pub event_id: String,
    pub hash: String,
    pub previous_hash: Option<String>,
    pub content_ref: String,
    /// The asset object as received.
    pub asset: Box<serde_json::value::RawValue>,
    pub business: Business,
    #[serde(serialize_with = "ser_time")]
    pub decided_at: DateTime<Utc>,
}

/// A drop: a live asset not seen in a completed run of its source (EVENTS.md §4.2).
#[derive(Debug, Clone, Serialize)]
pub struct DropDecision {
    pub decision_id: String,
    pub asset_key: String,
    pub source: String,
    pub run_id: String,
    /// The completion event's id.
    pub event_id: String,
    pub last_seen_run: String,
    pub hash: String,
    pub business: Business,
    #[serde(serialize_with = "ser_time")]
    pub decided_at: DateTime<Utc>,
}

/// A decision that produces an output event.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Decision {
    Upsert(UpsertDecision),
    Drop(DropDecision),
}

impl Decision {
    pub fn decision_id(&self) -> &str {
        match self {
            Decision::Upsert(u) => &u.decision_id,
            Decision::Drop(d) => &d.decision_id,
        }
    }
    pub fn asset_key(&self) -> &str {
        match self {
            Decision::Upsert(u) => &u.asset_key,
            Decision::Drop(d) => &d.asset_key,
        }
    }
    pub fn event_id(&self) -> &str {
        match self {
            Decision::Upsert(u) => &u.event_id,
            Decision::Drop(d) => &d.event_id,
        }
    }
}

fn ser_time<S: serde::Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&rfc3339(*t))
}

/// Where in the pipeline something failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    Decode,
    Validate,
    Enrich,
    Decide,
    Publish,
    History,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Decode => "decode",
            Stage::Validate => "validate",
            Stage::Enrich => "enrich",
            Stage::Decide => "decide",
            Stage::Publish => "publish",
            Stage::History => "history",
        }
    }
}

/// `error` of a dead letter: which check or backend failed, and a message naming it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureReason {
    pub kind: String,
    pub message: String,
}

/// Where a message came from, so that a dead letter can be traced and replayed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    /// The configured source (`sources[0]`, or its `name`).
    pub source: String,
    /// File path, Kafka partition, Kinesis shard...
    pub partition: String,
    /// Byte offset, Kafka offset, sequence number...
    pub offset: String,
}

/// A message that could not be processed, kept verbatim for redrive (EVENTS.md §4.4).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeadLetter {
    #[serde(rename = "type")]
    pub kind: DeadLetterTag,
    pub stage: Stage,
    pub error: FailureReason,
    pub attempts: u32,
    /// The original message verbatim, when it is UTF-8 (EVENTS.md §4.4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<String>,
    /// The original bytes in standard base64, when they are not UTF-8: a JSON string cannot
    /// carry them verbatim, and a lossy decoding would replay something else.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_base64: Option<String>,
    pub event_id: Option<String>,
    #[serde(default)]
    pub asset_key: Option<String>,
    /// The event's `source` and `run_id`, when it got far enough to be read (history keeps them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    #[serde(with = "time_str")]
    pub failed_at: DateTime<Utc>,
    /// Deterministic, like a decision's: a replay of the same failure repeats it.
    pub decision_id: String,
    pub origin: Origin,
}

/// The constant `"dead_letter"` type tag.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeadLetterTag {
    #[default]
    DeadLetter,
}

impl DeadLetter {
    /// Names the event the message decoded to: its asset key, source and run.
    pub fn of_event(mut self, event: &crate::event::AssetEvent) -> Self {
        self.asset_key = event.asset_key();
        self.source = Some(event.source.clone());
        self.run_id = Some(event.run_id.clone());
        self
    }

    /// The original message's bytes, exactly as they were read (what redrive replays).
    pub fn original(&self) -> Vec<u8> {
        match (&self.payload, &self.payload_base64) {
            (Some(text), _) => text.clone().into_bytes(),
            (None, Some(b64)) => BASE64_STANDARD.decode(b64).unwrap_or_else(|_| b64.clone().into_bytes()),
            (None, None) => Vec::new(),
        }
    }

    /// A dead letter for `payload` that failed at `stage`; its id derives from where the
    /// message came from, the failure and the attempt, so a replay after a crash repeats it.
    pub fn new(
        stage: Stage,
        kind: &str,
        message: impl Into<String>,
        payload: &[u8],
        event_id: Option<String>,
        origin: Origin,
        attempts: u32,
    ) -> Self {
        let anchor = format!("{}\u{0}{}\u{0}{}", origin.source, origin.partition, origin.offset);
        let decision_id = decision_id(
            event_id.as_deref().unwrap_or(""),
            &anchor,
            &format!("dead_letter/{}/{kind}", stage.as_str()),
            &attempts.to_string(),
        );
        DeadLetter {
            kind: DeadLetterTag::DeadLetter,
            stage,
            error: FailureReason { kind: kind.to_owned(), message: message.into() },
            attempts,
            payload: std::str::from_utf8(payload).ok().map(str::to_owned),
            payload_base64: std::str::from_utf8(payload).is_err().then(|| BASE64_STANDARD.encode(payload)),
            event_id,
            asset_key: None,
            source: None,
            run_id: None,
            failed_at: Utc::now(),
            decision_id,
            origin,
        }
    }
}

mod time_str {
    use chrono::{DateTime, Utc};
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::rfc3339(*t))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let s = String::deserialize(d)?;
        DateTime::parse_from_rfc3339(&s).map(|t| t.with_timezone(&Utc)).map_err(serde::de::Error::custom)
    }
}

/// What happened to an event, as history records it (EVENTS.md §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Created,
    Updated,
    Unchanged,
    Stale,
    Dropped,
    Completed,
    DeadLetter,
    /// The enrich-only topology published the event, enriched.
    Enriched,
}

impl Outcome {
    pub const ALL: [Outcome; 8] = [
        Outcome::Created,
        Outcome::Updated,
        Outcome::Unchanged,
        Outcome::Stale,
        Outcome::Dropped,
        Outcome::Completed,
        Outcome::DeadLetter,
        Outcome::Enriched,
    ];
    /// Does this outcome publish an upsert?
    pub fn is_upsert(self) -> bool {
        matches!(self, Outcome::Created | Outcome::Updated)
    }

    /// The kind of decision a decision id is derived from: `upsert` for both kinds of upsert,
    /// else the outcome's name.
    pub fn decision_kind(self) -> &'static str {
        if self.is_upsert() { "upsert" } else { self.as_str() }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Created => "created",
            Outcome::Updated => "updated",
            Outcome::Unchanged => "unchanged",
            Outcome::Stale => "stale",
            Outcome::Dropped => "dropped",
            Outcome::Completed => "completed",
            Outcome::DeadLetter => "dead_letter",
            Outcome::Enriched => "enriched",
        }
    }
}

/// One history row: one decision about one asset (or none, for completions and dead letters).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryRow {
    pub asset_key: Option<String>,
    pub source: Option<String>,
    pub event_id: Option<String>,
    pub run_id: Option<String>,
    pub outcome: Outcome,
    pub hash: Option<String>,
    pub decision_id: String,
    #[serde(with = "time_str")]
    pub at: DateTime<Utc>,
}

impl HistoryRow {
    pub fn for_dead_letter(dl: &DeadLetter) -> Self {
        HistoryRow {
            asset_key: dl.asset_key.clone(),
            source: dl.source.clone(),
            event_id: dl.event_id.clone(),
            run_id: dl.run_id.clone(),
            outcome: Outcome::DeadLetter,
            hash: None,
            decision_id: dl.decision_id.clone(),
            at: dl.failed_at,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_deterministic_and_distinct() {
        let a = decision_id("e1", "s/d/s/t", "upsert", "");
        assert_eq!(a, decision_id("e1", "s/d/s/t", "upsert", ""));
        assert_ne!(a, decision_id("e1", "s/d/s/t", "drop", ""));
        assert_ne!(a, decision_id("e1", "s/d/s/t", "upsert", "dropped:abc"));
        // Length-prefixing keeps ("ab","c") and ("a","bc") apart.
        assert_ne!(decision_id("ab", "c", "x", ""), decision_id("a", "bc", "x", ""));
        let hash = "ab".repeat(32);
        assert_eq!(
            live_decision_id("e1", "k", "unchanged", &hash),
            decision_id("e1", "k", "unchanged", &format!("live:{hash}"))
        );
    }

    /// Ids are stored (history) and published: a new build must give the ids an older one gave
    /// for the same decisions, or a replay across an upgrade would publish them again under new
    /// ids. Pinned from the first implementation (each part hashed as it came).
    #[test]
    fn ids_are_those_earlier_builds_gave() {
        assert_eq!(decision_id("e1", "s/d/s/t", "upsert", ""), "5be5790568fdcd81859e85bfd7792883");
        // Parts longer than what is gathered before hashing.
        let (long, hash) = ("k".repeat(300), "ab".repeat(32));
        assert_eq!(live_decision_id("e1", &long, "unchanged", &hash), "79a51d19fa8893facdc7d408a65035f5");
    }

    #[test]
    fn decisions_serialize_with_their_type() {
        let d = Decision::Drop(DropDecision {
            decision_id: "x".into(),
            asset_key: "k".into(),
            source: "s".into(),
            run_id: "r".into(),
            event_id: "e".into(),
            last_seen_run: "r0".into(),
            hash: "h".into(),
            business: None,
            decided_at: "2026-01-01T00:00:00Z".parse().unwrap(),
        });
        let v: Value = serde_json::to_value(&d).unwrap();
        assert_eq!(v["type"], "drop");
        assert_eq!(v["decided_at"], "2026-01-01T00:00:00.000Z");
        assert!(v["business"].is_null());
    }
}
