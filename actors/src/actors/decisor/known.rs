//! What a shard knows of a batch before it decides: which events the store vouches are
//! unchanged assets seen again (by the text print it keeps, else by hash), which events take
//! their record's hash from their print, and which must be hashed.

use std::collections::HashMap;

use foldhash::{HashMap as FastMap, HashMapExt as _};

use super::plan::Unchanged;
use super::{DecisorDeps, Pending};
use crate::event::EventKind;
use crate::hash::content_hash;
use crate::metrics::Metrics;
use crate::open_runs::OpenRuns;
use crate::ports::RecordKey;
use crate::print::TextPrint;
use crate::record::{ControlRecord, KnownRecord};

/// The batch's events that the store vouches are unchanged assets seen again
/// ([`KnownRecord::vouches_unchanged`]), by place in the batch: they are decided without
/// reading their records. A key with more than one event in the batch is read, so that its
/// events see each other as usual.
///
/// An event whose text print is the one the store keeps for its record takes the record's
/// hash and is not hashed, whether or not it is vouched for ([`KnownRecord::print_matches`]):
/// on a steady crawl, nearly every event, and also a re-delivery or a key's second event in a
/// batch, which are read. The others are hashed here and vouched for by hash, as before.
pub(super) fn known_unchanged(deps: &DecisorDeps, batch: &mut [Pending], alone: &[bool]) -> Vec<Option<Unchanged>> {
    let mut known = vec![None; batch.len()];
    let keys: Vec<(&str, &str)> = batch.iter().map(|p| (p.enriched.event.source.as_str(), p.key.as_str())).collect();
    let answers = deps.control.known_many(&keys);
    // The run in brief of each event the store knows, taken once per run, before the events
    // are hashed in place.
    let mut briefs: FastMap<&str, u64> = FastMap::new();
    let runs: Vec<Option<u64>> = batch
        .iter()
        .zip(&answers)
        .map(|(p, k)| {
            let run_id = p.enriched.event.run_id.as_str();
            k.map(|_| *briefs.entry(run_id).or_insert_with(|| KnownRecord::run_brief(run_id)))
        })
        .collect();
    let mut hashed = 0;
    for (((i, p), k), run) in batch.iter_mut().enumerate().zip(answers).zip(runs) {
        let (Some(k), Some(run)) = (k, run) else { continue };
        let at = p.enriched.event.emitted_at;
        let vouched = match &p.print {
            Some(print) if k.print_matches(print) => {
                p.hash = k.hash_hex();
                k.vouches_print(print, run, at)
            }
            _ if alone[i] => {
                hashed += u64::from(hash_event(deps, p));
                k.vouches_unchanged(&p.hash, run, at)
            }
            _ => false,
        };
        if alone[i] && vouched {
            known[i] = Some(Unchanged { known: k, indexed: true });
        }
    }
    Metrics::add(&deps.metrics.hashed, hashed);
    known
}

/// Gives each event of the batch that has no hash yet its record's, where the record was read
/// with the text print its hash came from and the event has that print
/// ([`ControlStore::get_many_printed`](crate::ports::ControlStore::get_many_printed)): past the bound of the store's index, a steady crawl's
/// unchanged assets are read, and each was hashed to be compared.
pub(super) fn hash_from_prints(
    batch: &mut [Pending],
    records: &HashMap<String, ControlRecord>,
    prints: &HashMap<String, TextPrint>,
) {
    if prints.is_empty() {
        return;
    }
    for p in batch.iter_mut().filter(|p| p.hash.is_empty()) {
        if let (Some(print), Some(kept), Some(r)) = (&p.print, prints.get(&p.key), records.get(&p.key))
            && print == kept
        {
            p.hash.clone_from(&r.hash);
        }
    }
}

/// Takes the content hash of each event of the batch that has none yet.
pub(super) fn hash_batch(deps: &DecisorDeps, batch: &mut [Pending]) {
    let hashed = batch.iter_mut().map(|p| u64::from(hash_event(deps, p))).sum();
    Metrics::add(&deps.metrics.hashed, hashed);
}

/// Takes `p`'s content hash if it has none yet; returns whether it did.
fn hash_event(deps: &DecisorDeps, p: &mut Pending) -> bool {
    if p.hash.is_empty()
        && let EventKind::Running { body, .. } = &p.enriched.event.kind
    {
        p.hash = content_hash(body, &deps.ignore);
        return true;
    }
    false
}

/// Whether each event of the batch is its key's only one: a key with more than one is read and
/// written, so that its events see each other. By place in the batch, so that later steps look
/// no key up again.
pub(super) fn alone_in_batch(batch: &[Pending]) -> Vec<bool> {
    let mut events_of: FastMap<&str, usize> = FastMap::with_capacity(batch.len());
    for p in batch {
        *events_of.entry(p.key.as_str()).or_default() += 1;
    }
    batch.iter().map(|p| events_of[p.key.as_str()] == 1).collect()
}

/// Moves the batch's events whose records were read and show an unchanged asset seen again
/// into `known`, their records out of `records`, so that they too move only their run stamp: on
/// a catalog larger than the store's index, most of a steady crawl's assets are read, and
/// rewriting each one's whole record filled the control keyspace's memtables with copies of
/// records that had not changed. The test is [`judge`]'s `unchanged` plus what
/// [`known_unchanged`] asks: one event of the key in the batch, not a replay, not of the run
/// the record was last seen in, nor of a run that may still have a completion to count for
/// ([`crate::open_runs`]; those go the slow way, which counts run events, §3.3).
///
/// [`judge`]: crate::rules::judge
pub(super) fn read_unchanged<'m>(
    batch: &[Pending],
    alone: &[bool],
    records: &mut HashMap<String, ControlRecord>,
    known: &mut [Option<Unchanged>],
    replayed: impl Fn(&Pending) -> bool,
    open_runs: impl Fn(&Pending) -> OpenRuns<'m>,
) {
    for (i, p) in batch.iter().enumerate() {
        if known[i].is_some() || !alone[i] {
            continue;
        }
        let ev = &p.enriched.event;
        let Some(r) = records.get(&p.key) else { continue };
        let unchanged = r.is_live()
            && r.hash == p.hash
            && r.last_seen_at <= ev.emitted_at
            && r.last_seen_run != ev.run_id
            && !open_runs(p).includes(&r.last_seen_run)
            && !replayed(p);
        let Some(hash) = KnownRecord::hash_bytes(&r.hash).filter(|_| unchanged) else { continue };
        let run = KnownRecord::run_brief(&r.last_seen_run);
        let k = KnownRecord { hash, print: None, run, last_seen_at: r.last_seen_at, version: r.version };
        known[i] = Some(Unchanged { known: k, indexed: false });
        records.remove(&p.key);
    }
}

/// Takes out of `known` each event whose record's run (in brief) may still have a completion
/// to count for ([`OpenRuns::may_include`]), and returns their keys to be read: such a record
/// leaves a moved-on marker when it moves on (§3.3), which only the slow way writes.
pub(super) fn spent_count_unproven<'m>(
    batch: &[Pending],
    known: &mut [Option<Unchanged>],
    open_runs: impl Fn(&Pending) -> OpenRuns<'m>,
) -> Vec<RecordKey> {
    let mut briefs: FastMap<&str, u64> = FastMap::new();
    let mut unproven = Vec::new();
    for (p, k) in batch.iter().zip(known.iter_mut()) {
        let Some(Unchanged { known: record, .. }) = k else { continue };
        let brief_of = |run: &'m str| *briefs.entry(run).or_insert_with(|| KnownRecord::run_brief(run));
        if open_runs(p).may_include(record.run, brief_of) {
            *k = None;
            unproven.push(RecordKey { source: p.enriched.event.source.clone(), asset_key: p.key.clone() });
        }
    }
    unproven
}
