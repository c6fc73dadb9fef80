//! The consumer group side of the `kafka` source: what this member holds, and what it does when
//! a rebalance moves partitions (the callbacks librdkafka runs on the source's polling thread).
//!
//! A revoked partition stops being admitted at once (messages of it already fetched are dropped
//! on their way in), its in-flight messages get `revoke_timeout` to finish, what is done is
//! committed, and only then does the partition move. A partition is never committed after it
//! left: commits hold one lock, and a revoked partition's acknowledgements go to a watermark
//! nothing reads any more. What did not finish in time still completes here, and its writes lose
//! to the new owner's (the stores' version conditions, the stale rule, the completion mark).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use assetflow_actors::envelope::Watermark;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, RebalanceProtocol};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

/// One partition this member holds.
pub(super) struct Held {
    /// Which assignment of the partition this is: messages fetched under an earlier one (before
    /// a revoke and a re-assign) are dropped rather than admitted twice.
    pub epoch: u64,
    pub watermark: Arc<Watermark<i64>>,
    /// The offset after the last message admitted.
    pub received: Option<i64>,
}

#[derive(Default)]
pub(super) struct Assignment {
    pub held: HashMap<i32, Held>,
    next_epoch: u64,
}

/// Whether this member may read, when its topology's state serves one process.
#[derive(Default)]
pub(super) struct Sharing {
    /// Every partition of the topic was assigned here at least once since the start.
    held_all: bool,
    /// Why reading is paused: another member holds some partitions.
    pub paused: Option<String>,
    /// A newcomer that has not yet held every partition: since when, and why it would refuse
    /// once [`Group::grace`] has passed without it holding them all.
    waiting: Option<(Instant, String)>,
    /// Why this member will not read at all: it joined a group another process reads.
    pub refused: Option<String>,
}

/// State the polling thread, the rebalance callbacks and the source share.
pub(super) struct Group {
    pub topic: String,
    pub group: String,
    /// The topology keeps state that serves one process (an embedded control table or history).
    pub one_process: bool,
    /// How long a revoked partition's in-flight messages may take before it moves anyway.
    pub revoke_timeout: Duration,
    /// How long a newcomer that holds only some partitions waits before it refuses: a member
    /// that left without a word (this process's own predecessor, killed and restarted) stays
    /// in the group until its session times out, and the rebalance after that gives the
    /// newcomer everything. Twice the session timeout, which leaves a heartbeat's time for the
    /// newcomer to hear of that rebalance.
    pub grace: Duration,
    pub assignment: Mutex<Assignment>,
    /// Held around building and sending every commit.
    pub commits: Mutex<()>,
    pub sharing: Mutex<Sharing>,
    /// Messages behind the partitions' high watermarks, from librdkafka's statistics (every
    /// few seconds, no extra broker calls); `u64::MAX` until the first report.
    pub lag: AtomicU64,
    /// The source is going away: stop polling, and wait for nothing on revoke.
    pub stopping: AtomicBool,
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Group {
    pub fn new(
        topic: &str,
        group: &str,
        one_process: bool,
        revoke_timeout: Duration,
        session_timeout: Duration,
    ) -> Self {
        Group {
            topic: topic.to_owned(),
            group: group.to_owned(),
            one_process,
            revoke_timeout,
            grace: session_timeout * 2,
            assignment: Mutex::default(),
            commits: Mutex::default(),
            sharing: Mutex::default(),
            lag: AtomicU64::new(u64::MAX),
            stopping: AtomicBool::new(false),
        }
    }

    /// The current epoch of `part`, if this member holds it.
    pub fn epoch_of(&self, part: i32) -> Option<u64> {
        lock(&self.assignment).held.get(&part).map(|h| h.epoch)
    }

    pub fn is_paused(&self) -> bool {
        lock(&self.sharing).paused.is_some()
    }

    /// Why this member will not read at all, if it will not: a newcomer still short of some
    /// partitions once [`Group::grace`] has passed refuses (another process reads the group).
    pub fn refusal(&self) -> Option<String> {
        let mut s = lock(&self.sharing);
        if s.refused.is_none()
            && let Some((since, why)) = s.waiting.take_if(|(since, _)| since.elapsed() >= self.grace)
        {
            let waited = since.elapsed().as_secs();
            s.refused = Some(format!(
                "{why} (waited {waited} s, twice the session timeout, for a member that left without a word to time out)"
            ));
        }
        s.refused.clone()
    }

    /// The done prefix of every held partition, as a commit list.
    pub fn ready_offsets(&self) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        for (part, h) in &lock(&self.assignment).held {
            if let Some(pos) = h.watermark.take_ready() {
                let _ = tpl.add_partition_offset(&self.topic, *part, Offset::Offset(pos));
            }
        }
        tpl
    }

    fn assigned(&self, parts: &[i32]) {
        let mut a = lock(&self.assignment);
        for part in parts {
            a.next_epoch += 1;
            let epoch = a.next_epoch;
            a.held.insert(*part, Held { epoch, watermark: Watermark::new(), received: None });
        }
    }

    /// Hands `parts` over: no more admitted, in-flight given `revoke_timeout`, done committed.
    fn revoked(&self, consumer: &BaseConsumer<GroupContext>, parts: &[i32]) {
        let started = Instant::now();
        let gone: Vec<(i32, Arc<Watermark<i64>>)> = {
            let mut a = lock(&self.assignment);
            parts.iter().filter_map(|p| a.held.remove(p).map(|h| (*p, h.watermark))).collect()
        };
        // Lost (the session expired): the partitions already belong to someone else, and a
        // commit now would be refused or, worse, overwrite the new owner's.
        let lost = consumer.assignment_lost();
        let waits = || !lost && !self.stopping.load(Ordering::Relaxed);
        let in_flight = || gone.iter().map(|(_, w)| w.outstanding()).sum::<usize>();
        while waits() && in_flight() > 0 && started.elapsed() < self.revoke_timeout {
            std::thread::sleep(Duration::from_millis(5));
        }
        if !lost {
            let _commits = lock(&self.commits);
            let mut tpl = TopicPartitionList::new();
            for (part, w) in &gone {
                if let Some(pos) = w.take_ready() {
                    let _ = tpl.add_partition_offset(&self.topic, *part, Offset::Offset(pos));
                }
            }
            if tpl.count() > 0
                && let Err(e) = consumer.commit(&tpl, CommitMode::Sync)
            {
                tracing::warn!(topic = %self.topic, error = %e, "commit on revoke failed; the next owner re-reads from the last commit");
            }
        }
        let left = in_flight();
        if left > 0 {
            tracing::warn!(topic = %self.topic, partitions = ?parts, left, lost, "partitions revoked with messages still in flight; the new owner reads them again");
        } else {
            tracing::info!(topic = %self.topic, partitions = ?parts, lost, took_ms = started.elapsed().as_millis() as u64, "partitions revoked");
        }
    }

    /// Counts the partitions this member holds after a rebalance and pauses them, or resumes
    /// them, as [`Sharing`] says.
    fn check_sharing(&self, consumer: &BaseConsumer<GroupContext>) {
        let Ok(mine) = consumer.assignment() else { return };
        let held = mine.elements().iter().filter(|e| e.topic() == self.topic).count();
        let total = match consumer.fetch_metadata(Some(&self.topic), Duration::from_secs(5)) {
            Ok(md) => md.topics().iter().find(|t| t.name() == self.topic).map_or(0, |t| t.partitions().len()),
            Err(e) => {
                tracing::warn!(topic = %self.topic, error = %e, "cannot count the topic's partitions; sharing not checked");
                return;
            }
        };
        let mut s = lock(&self.sharing);
        if total > 0 && held >= total {
            if s.paused.take().is_some() {
                match s.waiting.take() {
                    Some((since, _)) => {
                        tracing::info!(topic = %self.topic, waited_ms = since.elapsed().as_millis() as u64, "this process holds every partition now; reading begins")
                    }
                    None => {
                        tracing::info!(topic = %self.topic, "this process holds every partition again; reading resumes")
                    }
                }
                if let Err(e) = consumer.resume(&mine) {
                    tracing::warn!(error = %e, "resuming the partitions failed");
                }
            }
            s.held_all = true;
            return;
        }
        let why = format!(
            "the consumer group `{group}` reads topic `{topic}` with another process (this one holds {held} of its \
             {total} partitions), but this topology keeps its control table or history in the embedded store, which \
             serves one process: a source whose partition moved would be decided without its records. Run one \
             process per group, or keep control and history in PostgreSQL (control.kind and history.kind = \
             \"postgres\", docs/CONFIG.md)",
            group = self.group,
            topic = self.topic
        );
        if held > 0
            && let Err(e) = consumer.pause(&mine)
        {
            tracing::warn!(error = %e, "pausing the partitions failed");
        }
        if s.held_all {
            if s.paused.is_none() {
                tracing::error!("reading paused: {why}");
            }
            s.paused = Some(why);
        } else if s.refused.is_none() {
            // A newcomer reads nothing until it holds every partition, and refuses if another
            // process still holds some once the grace has passed ([`Group::refusal`]).
            let since = match s.waiting.take() {
                Some((since, _)) => since,
                None => {
                    tracing::warn!(
                        topic = %self.topic,
                        held,
                        total,
                        grace_s = self.grace.as_secs(),
                        "this process holds only some partitions of its topic; it waits for a member that left without \
                         a word (a process killed before this start) to time out, and stops if another process still \
                         holds them then"
                    );
                    Instant::now()
                }
            };
            s.paused = Some(format!("waiting to hold every partition of {}: {why}", self.topic));
            s.waiting = Some((since, why));
        }
    }
}

pub struct GroupContext(pub(super) Arc<Group>);

impl ClientContext for GroupContext {
    fn stats(&self, statistics: rdkafka::Statistics) {
        let Some(topic) = statistics.topics.get(&self.0.topic) else { return };
        // Partition -1 is librdkafka's internal "unassigned" one; -1 lag means "not known yet".
        let lag: i64 = topic.partitions.values().filter(|p| p.partition >= 0).map(|p| p.consumer_lag.max(0)).sum();
        self.0.lag.store(lag as u64, Ordering::Relaxed);
    }
}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let g = &self.0;
        let ours = |tpl: &TopicPartitionList| -> Vec<i32> {
            tpl.elements().iter().filter(|e| e.topic() == g.topic).map(|e| e.partition()).collect()
        };
        match rebalance {
            // Before librdkafka starts fetching them, so the first message finds its epoch.
            Rebalance::Assign(tpl) => {
                let parts = ours(tpl);
                tracing::info!(topic = %g.topic, partitions = ?parts, "partitions assigned");
                g.assigned(&parts);
            }
            Rebalance::Revoke(tpl) => g.revoked(consumer, &ours(tpl)),
            Rebalance::Error(e) => tracing::warn!(topic = %g.topic, error = %e, "rebalance failed"),
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        // An eager rebalance revokes everything for a moment before assigning anew: count only
        // after an assignment there. A cooperative one may only take partitions away.
        let counts = match rebalance {
            Rebalance::Assign(_) => true,
            Rebalance::Revoke(_) => matches!(consumer.rebalance_protocol(), RebalanceProtocol::Cooperative),
            Rebalance::Error(_) => false,
        };
        // Leaving the group (the source is dropped after a drain or a stop) revokes every
        // partition: this process going away, not another one taking them.
        let leaving = self.0.stopping.load(Ordering::Relaxed);
        if self.0.one_process && counts && !leaving {
            self.0.check_sharing(consumer);
        }
    }
}
