//! The `kinesis` source: every shard polled with GetRecords (back-off on throttling and on
//! empty reads), a checkpoint per shard (its sequence number) stored in the control store once
//! the acknowledgement watermark passes it, resumed with AFTER_SEQUENCE_NUMBER. A shard that
//! ends (resharding) is finished — read to its end and fully acknowledged — before its
//! children start, so a source's order survives a split or a merge.
//!
//! With a `lease_table`, several processes share the stream as the Kinesis Client Library's
//! workers do: each reads only the shards it holds a lease on ([`super::leases`]), renews them
//! every failover time / 3, takes free or expired ones and balances by stealing one at a time,
//! checkpoints into the lease (refused once the lease moved: a worker that lost a shard stops
//! reading it and its position never moves again), finishes a parent before any worker starts
//! its children, and releases its leases when it stops.
//!
//! A topology whose control table or history is embedded serves one process, so its worker
//! reads every shard or none: it never steals, and while another worker's unexpired lease is
//! in the table it reads nothing; if that lasts twice the failover time (a live worker, not
//! one killed before this start, whose leases would have expired by then), it refuses.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use assetflow_actors::decision::Origin;
use assetflow_actors::envelope::Watermark;
use assetflow_actors::ports::{BackendResult, Pull, RawMessage, Source};
use async_trait::async_trait;
use aws_sdk_kinesis::types::ShardIteratorType;

use super::leases::plan::{Observations, leases_to_take};
use super::leases::table::{Lease, LeaseTable, TRIM_HORIZON};
use super::{Aws, RequestCounter, sdk_error};
use crate::adapters::checkpoints::Checkpoints;
use assetflow_actors::ports::FailureKind;

const SVC: &str = "kinesis";
/// Checkpoint value of a shard read to its end and fully acknowledged.
const SHARD_END: &str = "SHARD_END";
/// How often the shard list is read again (new shards after resharding). With leases, at
/// least every failover time: another worker may have split or merged what this one holds,
/// and an emulator that never ends a closed shard's iterators says so only in the listing.
const RELIST: Duration = Duration::from_secs(30);

struct Shard {
    id: String,
    parents: Vec<String>,
    iterator: Option<String>,
    /// Last sequence number read (to get a fresh iterator after one expires).
    last_read: Option<String>,
    watermark: Arc<Watermark<String>>,
    /// GetRecords said there is no more (the shard was closed by resharding).
    closed: bool,
    /// ListShards gave the shard an ending sequence number: it takes no new records.
    ended: bool,
    /// Closed, fully acknowledged, and `SHARD_END` checkpointed.
    finished: bool,
    /// The last read came back empty at the tip of the stream.
    caught_up: bool,
    /// MillisBehindLatest of the last read.
    behind_ms: u64,
    started: bool,
    /// This worker may read it: always, or (with leases) while it holds the shard's lease.
    held: bool,
}

/// Lease mode: the table, who this worker is, and what it holds.
pub struct Leasing {
    pub table: LeaseTable,
    /// This worker's `leaseOwner`: unique per process.
    pub me: String,
    /// A lease whose counter stands still this long is its owner's no more.
    pub failover: Duration,
    observations: Observations,
    /// This worker's latest copy of each lease it holds (the counter its next write expects).
    held: HashMap<String, Lease>,
    /// Every lease, as last listed: whose parents are finished.
    all: Vec<Lease>,
    cycled_at: Option<Instant>,
    /// The topology keeps state that serves one process (an embedded control table or
    /// history): this worker reads every shard or none.
    one_process: bool,
    /// One process: since when another worker has held an unexpired lease.
    sharing: Option<Instant>,
    /// One process: why this worker will not read at all (another worker reads the stream).
    refused: Option<String>,
}

impl Leasing {
    pub fn new(table: LeaseTable, me: String, failover: Duration) -> Self {
        Leasing {
            table,
            me,
            failover,
            observations: Observations::default(),
            held: HashMap::new(),
            all: Vec::new(),
            cycled_at: None,
            one_process: false,
            sharing: None,
            refused: None,
        }
    }

    /// For a topology whose state serves one process (see the module's documentation).
    pub fn serving_one_process(mut self, one_process: bool) -> Self {
        self.one_process = one_process;
        self
    }
}

pub struct KinesisSource {
    name: String,
    client: aws_sdk_kinesis::Client,
    stream: String,
    checkpoints: Arc<dyn Checkpoints>,
    shards: BTreeMap<String, Shard>,
    listed_at: Option<Instant>,
    next_shard: usize,
    follow: bool,
    requests: RequestCounter,
    leasing: Option<Leasing>,
}

impl KinesisSource {
    pub fn new(aws: &Aws, name: String, stream: &str, checkpoints: Arc<dyn Checkpoints>, follow: bool) -> Self {
        KinesisSource {
            name,
            client: aws_sdk_kinesis::Client::new(&aws.sdk),
            stream: stream.to_owned(),
            checkpoints,
            shards: BTreeMap::new(),
            listed_at: None,
            next_shard: 0,
            follow,
            requests: aws.requests.clone(),
            leasing: None,
        }
    }

    /// Reads only the shards this worker holds a lease on (see the module's documentation).
    pub fn with_leases(mut self, leasing: Leasing) -> Self {
        self.leasing = Some(leasing);
        self
    }

    fn checkpoint_key(&self, shard: &str) -> String {
        format!("kinesis:{}:{shard}", self.stream)
    }

    async fn list_shards(&mut self) -> BackendResult<()> {
        let mut token: Option<String> = None;
        let mut first = true;
        loop {
            self.requests.hit(SVC, "ListShards");
            let mut req = self.client.list_shards();
            req = if first { req.stream_name(&self.stream) } else { req.set_next_token(token.take()) };
            first = false;
            let out = req.send().await.map_err(|e| sdk_error(SVC, "ListShards", e))?;
            for s in out.shards() {
                if let Some(known) = self.shards.get_mut(s.shard_id()) {
                    known.ended |= s.sequence_number_range().and_then(|r| r.ending_sequence_number()).is_some();
                    continue;
                }
                let leased = self.leasing.is_some();
                // With leases, a shard's position is in its lease, read when it is taken.
                let saved =
                    if leased { None } else { self.checkpoints.get(&self.checkpoint_key(s.shard_id())).await? };
                let finished = saved.as_deref() == Some(SHARD_END);
                let parents = [s.parent_shard_id(), s.adjacent_parent_shard_id()]
                    .into_iter()
                    .flatten()
                    .map(str::to_owned)
                    .collect();
                self.shards.insert(
                    s.shard_id().to_owned(),
                    Shard {
                        id: s.shard_id().to_owned(),
                        parents,
                        iterator: None,
                        last_read: saved.filter(|p| p != SHARD_END),
                        watermark: Watermark::new(),
                        closed: finished,
                        ended: s.sequence_number_range().and_then(|r| r.ending_sequence_number()).is_some(),
                        finished,
                        caught_up: false,
                        behind_ms: 0,
                        started: false,
                        held: !leased,
                    },
                );
            }
            match out.next_token() {
                Some(t) => token = Some(t.to_owned()),
                None => break,
            }
        }
        self.listed_at = Some(Instant::now());
        Ok(())
    }

    /// Shards that may be read now: held, not finished, and every parent we know of is
    /// finished (with leases: its lease says `SHARD_END`, whoever held it).
    fn ready(&self) -> Vec<String> {
        if self.leasing.as_ref().is_some_and(|l| l.sharing.is_some()) {
            return Vec::new();
        }
        let mut finished: HashSet<&str> = self.shards.values().filter(|s| s.finished).map(|s| s.id.as_str()).collect();
        if let Some(l) = &self.leasing {
            finished.extend(l.all.iter().filter(|l| l.is_finished()).map(|l| l.shard.as_str()));
        }
        self.shards
            .values()
            .filter(|s| {
                s.held
                    && !s.closed
                    && s.parents.iter().all(|p| finished.contains(p.as_str()) || !self.shards.contains_key(p))
            })
            .map(|s| s.id.clone())
            .collect()
    }

    /// One lease round: leases for new shards, renewals (a lost lease stops its shard), and
    /// leases taken up to this worker's share.
    async fn lease_cycle(&mut self) -> BackendResult<()> {
        let Some(l) = self.leasing.as_mut() else { return Ok(()) };
        if l.cycled_at.is_some_and(|t| t.elapsed() < l.failover / 3) {
            return Ok(());
        }
        // Leases for shards the last listing did not have (all of them, the first time).
        for s in self.shards.values().filter(|s| !l.all.iter().any(|x| x.shard == s.id)) {
            l.table.create_if_absent(&s.id, &s.parents).await?;
        }
        let all = l.table.list().await?;
        let now = Instant::now();
        l.observations.observe(&all, now);
        let mut lost = Vec::new();
        for (shard, mine) in l.held.iter_mut() {
            let current = all.iter().find(|x| &x.shard == shard);
            if current.is_none_or(|c| c.owner.as_deref() != Some(l.me.as_str()) || c.counter != mine.counter) {
                lost.push(shard.clone());
                continue;
            }
            match l.table.renew(mine, &l.me).await {
                Ok(renewed) => *mine = renewed,
                Err(e) if e.kind == FailureKind::Conflict => lost.push(shard.clone()),
                Err(e) => return Err(e),
            }
        }
        let (failover, me) = (l.failover, l.me.clone());
        // Leases in this worker's name that it does not hold: its own renewal or checkpoint
        // landed but the reply was lost, and the retry was refused. Nobody else takes them
        // before the failover time (never, while this worker is alone), so it takes them back.
        let own = all.iter().filter(|x| {
            x.owner.as_deref() == Some(me.as_str())
                && !x.is_finished()
                && (lost.contains(&x.shard) || !l.held.contains_key(&x.shard))
        });
        let mut take: Vec<Lease> = own.cloned().collect();
        let expired = |x: &Lease| l.observations.expired(x, now, failover) && x.owner.as_deref() != Some(me.as_str());
        // One process: the other workers holding an unexpired lease, which this one waits out.
        let mut others: Vec<&str> = if l.one_process {
            all.iter()
                .filter(|x| !x.is_finished() && !expired(x))
                .filter_map(|x| x.owner.as_deref().filter(|o| *o != me))
                .collect()
        } else {
            Vec::new()
        };
        others.sort_unstable();
        others.dedup();
        if others.is_empty() {
            take.extend(leases_to_take(&all, &me, expired));
        }
        let others = others.join(", ");
        let grace = failover * 2;
        match (others.is_empty(), l.sharing) {
            (true, Some(since)) => {
                tracing::info!(stream = %self.stream, waited_ms = now.duration_since(since).as_millis() as u64, "no other worker holds a lease any more; this one reads every shard");
                l.sharing = None;
            }
            (true, None) => {}
            (false, None) => {
                tracing::warn!(
                    stream = %self.stream,
                    workers = %others,
                    grace_s = grace.as_secs(),
                    "another worker holds shard leases; this one reads nothing while it waits for them to expire (a \
                     worker killed before this start), and stops if that worker still renews them then"
                );
                l.sharing = Some(now);
            }
            (false, Some(since)) if l.refused.is_none() && now.duration_since(since) >= grace => {
                l.refused = Some(format!(
                    "the Kinesis stream `{stream}` is read through lease table `{table}` by another worker too \
                     ({others}), but this topology keeps its control table or history in the embedded store, which \
                     serves one process: a shard whose lease moved would be decided without its records. Run one \
                     worker per lease table, or keep control and history in DynamoDB or PostgreSQL (control.kind \
                     and history.kind, docs/CONFIG.md) (waited {waited} s, twice the failover time, for the leases \
                     of a worker that stopped to expire)",
                    stream = self.stream,
                    table = l.table.name(),
                    waited = now.duration_since(since).as_secs()
                ));
            }
            (false, Some(_)) => {}
        }
        let mut taken = Vec::new();
        for lease in take {
            match l.table.take(&lease, &me).await {
                Ok(t) => taken.push(t),
                // Someone else was quicker: next round.
                Err(e) if e.kind == FailureKind::Conflict => {}
                Err(e) => return Err(e),
            }
        }
        l.all = all;
        l.cycled_at = Some(now);
        for shard in lost {
            self.lose(&shard);
        }
        for lease in taken {
            self.hold(lease);
        }
        Ok(())
    }

    /// Starts reading a shard whose lease this worker just took, from the lease's checkpoint.
    fn hold(&mut self, lease: Lease) {
        let Some(l) = self.leasing.as_mut() else { return };
        tracing::info!(stream = %self.stream, shard = %lease.shard, checkpoint = %lease.checkpoint, "took the shard's lease");
        if let Some(s) = self.shards.get_mut(&lease.shard) {
            let finished = lease.is_finished();
            s.held = true;
            s.iterator = None;
            s.last_read = (lease.checkpoint != TRIM_HORIZON && !finished).then(|| lease.checkpoint.clone());
            s.watermark = Watermark::new();
            s.closed = finished;
            s.finished = finished;
            s.caught_up = false;
            s.started = false;
        }
        l.held.insert(lease.shard.clone(), lease);
    }

    /// Stops reading a shard whose lease moved: what is in flight there is left to its new
    /// owner, which reads it again from the lease's checkpoint.
    fn lose(&mut self, shard: &str) {
        tracing::warn!(stream = %self.stream, shard = %shard, "the shard's lease moved to another worker; this one stops reading it");
        if let Some(l) = self.leasing.as_mut() {
            l.held.remove(shard);
        }
        if let Some(s) = self.shards.get_mut(shard) {
            s.held = false;
            s.iterator = None;
            s.watermark = Watermark::new();
        }
    }

    /// Writes a checkpoint: into the lease with leases (refused once it moved), else into the
    /// checkpoint store.
    async fn save(&mut self, shard: &str, position: &str) -> BackendResult<()> {
        let Some(l) = self.leasing.as_mut() else {
            let key = self.checkpoint_key(shard);
            return self.checkpoints.set(&key, position).await;
        };
        let Some(mine) = l.held.get(shard) else { return Ok(()) };
        match l.table.checkpoint(mine, &l.me, position).await {
            Ok(updated) => {
                l.held.insert(shard.to_owned(), updated);
                Ok(())
            }
            Err(e) if e.kind == FailureKind::Conflict => {
                self.lose(shard);
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    async fn iterator_for(&self, shard: &Shard) -> BackendResult<Option<String>> {
        let mut req = self.client.get_shard_iterator().stream_name(&self.stream).shard_id(&shard.id);
        req = match &shard.last_read {
            Some(seq) => req.shard_iterator_type(ShardIteratorType::AfterSequenceNumber).starting_sequence_number(seq),
            None => req.shard_iterator_type(ShardIteratorType::TrimHorizon),
        };
        self.requests.hit(SVC, "GetShardIterator");
        let out = req.send().await.map_err(|e| sdk_error(SVC, "GetShardIterator", e))?;
        Ok(out.shard_iterator().map(str::to_owned))
    }

    /// Without `follow`: every shard is finished, or read to its tip and still open, and all
    /// that was read is acknowledged. A closed shard not yet finished is not drained: its
    /// children come next.
    fn drained(&self) -> bool {
        // With leases: the shards held by other live workers are theirs to drain; a free or
        // expired one is still to be taken, and one whose owner this worker has not yet seen
        // renew it may be a worker killed before this one started (taken once it expires).
        let others_free = self.leasing.as_ref().is_some_and(|l| {
            l.all.iter().any(|x| {
                !x.is_finished()
                    && match x.owner.as_deref() {
                        None => true,
                        Some(owner) => owner != l.me && !l.observations.renewed(x),
                    }
            })
        });
        // One process, waiting out another worker's leases: what they hold is this one's to read.
        let waiting = self.leasing.as_ref().is_some_and(|l| l.sharing.is_some());
        !self.follow
            && !others_free
            && !waiting
            && self.outstanding() == 0
            && self.shards.values().filter(|s| s.held).all(|s| s.finished || (s.started && s.caught_up && !s.closed))
    }

    /// Reads one shard once.
    async fn read(&mut self, id: &str, max: usize) -> BackendResult<Vec<RawMessage>> {
        let Some(shard) = self.shards.get(id) else { return Ok(Vec::new()) };
        let iterator = match &shard.iterator {
            Some(it) => it.clone(),
            None => match self.iterator_for(shard).await? {
                Some(it) => it,
                None => return Ok(Vec::new()),
            },
        };
        self.requests.hit(SVC, "GetRecords");
        let resp = self.client.get_records().shard_iterator(&iterator).limit(max.clamp(1, 10_000) as i32).send().await;
        let out = match resp {
            Ok(out) => out,
            Err(e) => {
                let err = sdk_error(SVC, "GetRecords", e);
                if let Some(s) = self.shards.get_mut(id) {
                    // An expired iterator is renewed from the last record read.
                    if err.message.contains("ExpiredIterator") {
                        s.iterator = None;
                    }
                }
                return Err(err);
            }
        };
        let name = self.name.clone();
        let Some(shard) = self.shards.get_mut(id) else { return Ok(Vec::new()) };
        shard.started = true;
        shard.iterator = out.next_shard_iterator().map(str::to_owned);
        shard.behind_ms = out.millis_behind_latest().unwrap_or(0).max(0) as u64;
        shard.caught_up = out.records().is_empty() && shard.behind_ms == 0;
        // Closed: no next iterator; or (emulators that keep handing one out) an ended shard
        // read to its tip.
        shard.closed = shard.iterator.is_none() || (shard.ended && shard.caught_up);
        let mut msgs = Vec::with_capacity(out.records().len());
        for r in out.records() {
            let seq = r.sequence_number().to_owned();
            shard.last_read = Some(seq.clone());
            let ack = shard.watermark.register(seq.clone());
            let origin = Origin { source: name.clone(), partition: shard.id.clone(), offset: seq };
            msgs.push(RawMessage::new(r.data().as_ref().to_vec(), origin, ack));
        }
        Ok(msgs)
    }
}

#[async_trait]
impl Source for KinesisSource {
    async fn pull(&mut self, max: usize) -> BackendResult<Pull> {
        let relist = self.leasing.as_ref().map_or(RELIST, |l| l.failover.min(RELIST));
        if self.listed_at.is_none_or(|t| t.elapsed() >= relist) {
            self.list_shards().await?;
        }
        self.lease_cycle().await?;
        if let Some(why) = self.leasing.as_ref().and_then(|l| l.refused.clone()) {
            return Ok(Pull::Refused(why));
        }
        let ready = self.ready();
        if ready.is_empty() {
            return Ok(if self.drained() { Pull::Drained } else { Pull::Idle });
        }
        // Round-robin: one GetRecords per call, on the next ready shard.
        let id = ready[self.next_shard % ready.len()].clone();
        self.next_shard = self.next_shard.wrapping_add(1);
        let msgs = self.read(&id, max).await?;
        if !msgs.is_empty() {
            return Ok(Pull::Messages(msgs));
        }
        Ok(if self.drained() { Pull::Drained } else { Pull::Idle })
    }

    async fn commit(&mut self) -> BackendResult<()> {
        let mut relist = false;
        let ids: Vec<String> = self.shards.keys().cloned().collect();
        for id in ids {
            let Some(shard) = self.shards.get(&id).filter(|s| s.held) else { continue };
            if let Some(pos) = shard.watermark.take_ready() {
                self.save(&id, &pos).await?;
            }
            let Some(shard) = self.shards.get(&id).filter(|s| s.held) else { continue };
            if shard.closed && !shard.finished && shard.started && shard.watermark.outstanding() == 0 {
                self.save(&id, SHARD_END).await?;
                if self.shards.get(&id).is_some_and(|s| !s.held) {
                    continue;
                }
                if let Some(s) = self.shards.get_mut(&id) {
                    s.finished = true;
                }
                relist = true;
                tracing::info!(stream = %self.stream, shard = %id, "shard finished; its children may start");
            }
        }
        if relist {
            self.listed_at = None;
        }
        Ok(())
    }

    fn outstanding(&self) -> usize {
        self.shards.values().filter(|s| s.held).map(|s| s.watermark.outstanding()).sum()
    }

    /// Releases every lease this worker holds (after the last commit): others take them at
    /// once instead of after the failover time.
    async fn close(&mut self) {
        let Some(l) = self.leasing.as_mut() else { return };
        for (shard, lease) in l.held.drain() {
            match l.table.release(&lease, &l.me).await {
                Ok(_) => tracing::info!(stream = %self.stream, shard = %shard, "released the shard's lease"),
                Err(e) => {
                    tracing::warn!(stream = %self.stream, shard = %shard, error = %e, "could not release the shard's lease; it expires after the failover time")
                }
            }
        }
    }

    /// Not ready while this worker waits out another's leases (one process).
    fn not_ready(&self) -> Option<String> {
        let l = self.leasing.as_ref().filter(|l| l.sharing.is_some())?;
        Some(format!(
            "waiting for another worker's leases on {} to expire (lease table {})",
            self.stream,
            l.table.name()
        ))
    }

    /// Milliseconds behind the tip, the most of any shard being read.
    fn lag(&self) -> Option<u64> {
        self.shards.values().filter(|s| s.held && !s.finished).map(|s| s.behind_ms).max()
    }
}
