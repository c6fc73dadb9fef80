//! Which leases a worker takes, as the Kinesis Client Library's lease taker decides it, and
//! without the known bugs of it and of its Go port. Pure: the leases as listed and what this
//! worker has observed of them go in, the leases to take come out.
//!
//! - A lease is *expired* when it has no owner, or when its counter has not moved for the
//!   failover time as this worker watched it (its owner stopped renewing). No clocks are
//!   compared across machines, only this worker's own.
//! - The *target* is the unfinished leases over the live workers (owners of unexpired leases,
//!   and this one), rounded up.
//! - Below target, a worker takes expired leases up to the target; if there are none, it
//!   steals **one** lease from the most loaded worker, only if that worker is over the target
//!   (or at it, while this one is two or more short). One steal per round: the Go port could
//!   steal several at once and make workers trade leases back and forth.
//! - Finished leases (`SHARD_END`) are nobody's load and nobody takes them: they only tell the
//!   shard's children that their parent is done.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use super::table::Lease;

/// What this worker has seen of each lease's counter, and since when.
#[derive(Debug, Default)]
pub struct Observations {
    seen: HashMap<String, Seen>,
}

#[derive(Debug)]
struct Seen {
    counter: u64,
    since: Instant,
    /// The counter moved while this worker watched: its owner was alive then.
    moved: bool,
}

impl Observations {
    /// Records a listing made at `now`.
    pub fn observe(&mut self, leases: &[Lease], now: Instant) {
        for l in leases {
            let seen = self.seen.get(&l.shard);
            if seen.is_none_or(|s| s.counter != l.counter) {
                let moved = seen.is_some();
                self.seen.insert(l.shard.clone(), Seen { counter: l.counter, since: now, moved });
            }
        }
        self.seen.retain(|k, _| leases.iter().any(|l| &l.shard == k));
    }

    /// No owner, or an owner that has not renewed within `failover` of what this worker saw.
    pub fn expired(&self, lease: &Lease, now: Instant, failover: Duration) -> bool {
        if lease.owner.is_none() {
            return true;
        }
        match self.seen.get(&lease.shard) {
            Some(s) => s.counter == lease.counter && now.duration_since(s.since) >= failover,
            // Never seen before: give its owner a whole failover time.
            None => false,
        }
    }

    /// This worker has seen the lease's counter move (a renewal or a checkpoint): its owner
    /// was alive since this worker started watching, not a worker killed before it.
    pub fn renewed(&self, lease: &Lease) -> bool {
        self.seen.get(&lease.shard).is_some_and(|s| s.moved)
    }
}

/// The leases `me` should take now (at most one of them stolen), fresh from `leases`.
pub fn leases_to_take(leases: &[Lease], me: &str, expired: impl Fn(&Lease) -> bool) -> Vec<Lease> {
    let open: Vec<&Lease> = leases.iter().filter(|l| !l.is_finished()).collect();
    if open.is_empty() {
        return Vec::new();
    }
    let mut load: BTreeMap<&str, Vec<&Lease>> = BTreeMap::new();
    load.insert(me, Vec::new());
    let mut free = Vec::new();
    for l in &open {
        match (&l.owner, expired(l)) {
            (Some(owner), false) => load.entry(owner.as_str()).or_default().push(l),
            _ => free.push(*l),
        }
    }
    let workers = load.len();
    let target = open.len().div_ceil(workers);
    let mine = load.get(me).map_or(0, Vec::len);
    if mine >= target {
        return Vec::new();
    }
    let short = target - mine;
    if !free.is_empty() {
        free.sort_by(|a, b| a.shard.cmp(&b.shard));
        return free.into_iter().take(short).cloned().collect();
    }
    // The most loaded other worker; ties go to the first by name, so every worker picks alike.
    let Some((_, theirs)) =
        load.iter().filter(|(w, _)| **w != me).max_by(|a, b| a.1.len().cmp(&b.1.len()).then(b.0.cmp(a.0)))
    else {
        return Vec::new();
    };
    if theirs.len() > target || (theirs.len() == target && short > 1) {
        let mut theirs = theirs.clone();
        theirs.sort_by(|a, b| a.shard.cmp(&b.shard));
        return theirs.first().map(|l| vec![(*l).clone()]).unwrap_or_default();
    }
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::aws::leases::table::{SHARD_END, TRIM_HORIZON};

    fn lease(shard: &str, owner: Option<&str>) -> Lease {
        Lease {
            shard: shard.into(),
            owner: owner.map(str::to_owned),
            counter: 1,
            checkpoint: TRIM_HORIZON.into(),
            owner_switches: 0,
            parents: Vec::new(),
        }
    }

    fn shards(v: &[Lease]) -> Vec<&str> {
        v.iter().map(|l| l.shard.as_str()).collect()
    }

    #[test]
    fn a_first_worker_takes_every_free_lease() {
        let leases: Vec<Lease> = (0..4).map(|i| lease(&format!("s{i}"), None)).collect();
        assert_eq!(shards(&leases_to_take(&leases, "a", |_| false)), ["s0", "s1", "s2", "s3"]);
    }

    #[test]
    fn free_leases_are_taken_only_up_to_the_target() {
        let mut leases: Vec<Lease> = (0..4).map(|i| lease(&format!("s{i}"), None)).collect();
        leases[0].owner = Some("b".into());
        // Two workers (a, b), four leases: a's target is two.
        assert_eq!(shards(&leases_to_take(&leases, "a", |l| l.owner.is_none())), ["s1", "s2"]);
    }

    #[test]
    fn a_new_worker_steals_exactly_one_lease_per_round_from_the_most_loaded() {
        let leases: Vec<Lease> = (0..4).map(|i| lease(&format!("s{i}"), Some("b"))).collect();
        let took = leases_to_take(&leases, "a", |_| false);
        assert_eq!(shards(&took), ["s0"], "one steal, though a is two short");
        // After it: b 3, a 1; target 2; b is over: one more, then balanced.
        let mut leases = leases;
        leases[0].owner = Some("a".into());
        assert_eq!(shards(&leases_to_take(&leases, "a", |_| false)), ["s1"]);
        leases[1].owner = Some("a".into());
        assert!(leases_to_take(&leases, "a", |_| false).is_empty());
        assert!(leases_to_take(&leases, "b", |_| false).is_empty(), "and b does not steal back");
    }

    #[test]
    fn nothing_is_stolen_from_a_worker_at_the_target_when_one_short() {
        // Three workers, four leases: target 2. a has 1, b 2, c 1: a is one short and b is at
        // the target. Stealing would only move the imbalance around.
        let leases =
            vec![lease("s0", Some("a")), lease("s1", Some("b")), lease("s2", Some("b")), lease("s3", Some("c"))];
        assert!(leases_to_take(&leases, "a", |_| false).is_empty());
        assert!(leases_to_take(&leases, "c", |_| false).is_empty());
    }

    #[test]
    fn a_dead_workers_expired_leases_are_taken_and_it_no_longer_counts() {
        let leases =
            vec![lease("s0", Some("a")), lease("s1", Some("a")), lease("s2", Some("dead")), lease("s3", Some("dead"))];
        let expired = |l: &Lease| l.owner.as_deref() == Some("dead");
        // Only a is alive: its target is all four.
        assert_eq!(shards(&leases_to_take(&leases, "a", expired)), ["s2", "s3"]);
    }

    #[test]
    fn finished_leases_are_nobodys_load() {
        let mut leases: Vec<Lease> = (0..4).map(|i| lease(&format!("s{i}"), Some("b"))).collect();
        leases[0].checkpoint = SHARD_END.into();
        leases[1].checkpoint = SHARD_END.into();
        leases.push(lease("child", Some("b")));
        // Open: s2, s3, child (all b's); target for two workers is 2: b is over by one.
        assert_eq!(shards(&leases_to_take(&leases, "a", |_| false)), ["child"]);
        let leases = vec![Lease { checkpoint: SHARD_END.into(), ..lease("done", None) }];
        assert!(leases_to_take(&leases, "a", |_| true).is_empty(), "a finished shard is never taken");
    }

    #[test]
    fn a_lease_expires_only_after_its_counter_stood_still_for_the_failover_time() {
        let t0 = Instant::now();
        let failover = Duration::from_secs(10);
        let mut obs = Observations::default();
        let mut l = lease("s0", Some("b"));
        obs.observe(std::slice::from_ref(&l), t0);
        assert!(!obs.expired(&l, t0 + Duration::from_secs(9), failover));
        assert!(obs.expired(&l, t0 + Duration::from_secs(10), failover));
        // Renewed (the counter moved): the clock starts again from when it was seen moving.
        l.counter += 1;
        obs.observe(std::slice::from_ref(&l), t0 + Duration::from_secs(11));
        assert!(!obs.expired(&l, t0 + Duration::from_secs(20), failover));
        assert!(obs.expired(&l, t0 + Duration::from_secs(21), failover));
        // A lease never seen before is given a whole failover time; a free one is free.
        assert!(!obs.expired(&lease("new", Some("c")), t0 + Duration::from_secs(100), failover));
        assert!(obs.expired(&lease("free", None), t0, failover));
    }

    #[test]
    fn a_lease_counts_as_renewed_only_once_its_counter_moved_while_watched() {
        let t0 = Instant::now();
        let mut obs = Observations::default();
        let mut l = lease("s0", Some("b"));
        obs.observe(std::slice::from_ref(&l), t0);
        assert!(!obs.renewed(&l), "first seen: its owner may have died before this worker came");
        obs.observe(std::slice::from_ref(&l), t0 + Duration::from_secs(1));
        assert!(!obs.renewed(&l), "seen again unchanged");
        l.counter += 1;
        obs.observe(std::slice::from_ref(&l), t0 + Duration::from_secs(2));
        assert!(obs.renewed(&l), "its counter moved");
    }
}
