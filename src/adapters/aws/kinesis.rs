//! The `kinesis` source: every shard polled with GetRecords (back-off on throttling and on
//! empty reads), a checkpoint per shard (its sequence number) stored in the control store once
//! the acknowledgement watermark passes it, resumed with AFTER_SEQUENCE_NUMBER. A shard that
//! ends (resharding) is finished — read to its end and fully acknowledged — before its
//! children start, so a source's order survives a split or a merge.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use assetflow_actors::decision::Origin;
use assetflow_actors::envelope::Watermark;
use assetflow_actors::ports::{BackendResult, Pull, RawMessage, Source};
use async_trait::async_trait;
use aws_sdk_kinesis::types::ShardIteratorType;

use super::{Aws, RequestCounter, sdk_error};
use crate::adapters::checkpoints::Checkpoints;

const SVC: &str = "kinesis";
/// Checkpoint value of a shard read to its end and fully acknowledged.
const SHARD_END: &str = "SHARD_END";
/// How often the shard list is read again (new shards after resharding).
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
        }
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
                let key = self.checkpoint_key(s.shard_id());
                let saved = self.checkpoints.get(&key).await?;
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

    /// Shards that may be read now: not finished, and every parent we know of is finished.
    fn ready(&self) -> Vec<String> {
        let finished: HashSet<&str> = self.shards.values().filter(|s| s.finished).map(|s| s.id.as_str()).collect();
        self.shards
            .values()
            .filter(|s| {
                !s.closed && s.parents.iter().all(|p| finished.contains(p.as_str()) || !self.shards.contains_key(p))
            })
            .map(|s| s.id.clone())
            .collect()
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
        !self.follow
            && self.outstanding() == 0
            && self.shards.values().all(|s| s.finished || (s.started && s.caught_up && !s.closed))
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
        if self.listed_at.is_none_or(|t| t.elapsed() >= RELIST) {
            self.list_shards().await?;
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
            let key = self.checkpoint_key(&id);
            let Some(shard) = self.shards.get(&id) else { continue };
            if let Some(pos) = shard.watermark.take_ready() {
                self.checkpoints.set(&key, &pos).await?;
            }
            let Some(shard) = self.shards.get(&id) else { continue };
            if shard.closed && !shard.finished && shard.started && shard.watermark.outstanding() == 0 {
                self.checkpoints.set(&key, SHARD_END).await?;
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
        self.shards.values().map(|s| s.watermark.outstanding()).sum()
    }

    /// Milliseconds behind the tip, the most of any shard being read.
    fn lag(&self) -> Option<u64> {
        self.shards.values().filter(|s| !s.finished).map(|s| s.behind_ms).max()
    }
}
