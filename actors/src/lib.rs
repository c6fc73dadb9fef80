//! assetflow's core: the domain, the ports and the actors, with no AWS, Kafka or SQL code.
//!
//! A map of the crate, outside in:
//!
//! - [`event`]: the input contract. Raw bytes become an [`event::AssetEvent`] or a
//!   [`event::Rejection`] that says which check failed (`too_large`, `invalid_json`,
//!   `invalid_event`); [`event::sorted_members`] splits an object into its members.
//! - [`hash`]: the canonical form of an asset and its content hash (BLAKE3 over canonical JSON).
//! - [`print`](mod@print): the text print of an asset, a cheap fingerprint of its received text that a
//!   store keeps beside a record's hash, so an asset sent again byte for byte is not hashed.
//! - [`record`]: the per-asset [`record::ControlRecord`] kept in the control table.
//! - [`mark`]: each source's [`mark::CompletionMark`], kept beside its records: a completion
//!   is swept once and never after a newer one, and an event read again from before it (by a
//!   process that lost the partition, or after a crash) changes nothing.
//! - [`open_runs`]: which runs of a source may still have a completion to count for, so that
//!   their records leave a moved-on marker as the next run moves them on (§3.3).
//! - [`rules`]: the decision rules of EVENTS.md as pure functions: [`rules::judge`] gives a
//!   `running` event's [`decision::Outcome`], [`rules::plan_sweep`] a completion's drops and
//!   its drop guard.
//! - [`decision`]: what is decided and written: [`decision::Outcome`] (the one outcome type),
//!   [`decision::Decision`] (an upsert or a drop), [`decision::DeadLetter`],
//!   [`decision::HistoryRow`], and their deterministic ids.
//! - [`envelope`]: an input message in flight, with its [`envelope::Ack`] handle and the
//!   per-partition watermark that decides what a source may commit.
//! - [`ports`]: the traits through which actors reach the world (`Source`, `Sink`,
//!   `ControlStore`, `ContentStore`, `HistoryStore`, `Lookup`).
//! - [`lookup`]: building lookup keys from JSON pointers, and the TTL cache in front of a `Lookup`.
//! - [`retry`]: exponential back-off with jitter; [`calls`]: the one instrumented layer every
//!   backend call of an actor goes through (retry, timeout, panic, statistics, health).
//! - [`metrics`]: lock-free counters the actors bump and the binary reports; `latency`: the
//!   decision-latency histogram among them ([`LatencyHistogram`]).
//! - `forward` (private): sending into a bounded mailbox without losing order or the bound.
//! - `actors` (private, started by [`pipeline`]): Ingest, Enricher, Router (with the completion
//!   sweep), Decisor (its batch planning in `decisor/plan.rs`, pure), Producer (upsert, drop,
//!   enriched), HistoryWriter.
//! - [`redrive`]: dead letters fed back to the pipeline as a source, parked past `max_attempts`.
//! - [`supervise`]: the [`supervise::Supervisor`] every actor runs under: a panic is caught,
//!   counted and retried once, a second one dead-letters the message (kind `panic`), and an
//!   actor past its restart budget stops the process.
//! - [`pipeline`]: wiring the actors into a running topology; [`threads`]: the names of the
//!   threads it starts (one per stage and shard) and the decode pool the Ingests share.

mod actors;
pub mod calls;
pub mod decision;
pub mod envelope;
pub mod event;
mod forward;
pub mod hash;
mod latency;
pub mod lookup;
pub mod mark;
pub mod metrics;
pub mod open_runs;
pub mod pipeline;
pub mod ports;
pub mod print;
pub mod record;
pub mod redrive;
pub mod retry;
pub mod rules;
pub mod supervise;
pub mod threads;

pub use latency::LatencyHistogram;
