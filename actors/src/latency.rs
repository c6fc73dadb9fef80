//! A lock-free latency histogram with log-spaced buckets (each 25% wider than the last, from
//! 50 µs to about two minutes), for decision latency: cheap enough to record every event, and
//! fine enough to read p50/p99 off within a bucket's width.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

const FIRST_BUCKET_SECONDS: f64 = 50e-6;
const GROWTH: f64 = 1.25;
const BUCKETS: usize = 66;

/// Counts of observed durations per bucket; the last bucket takes everything longer.
#[derive(Debug)]
pub struct LatencyHistogram {
    counts: [AtomicU64; BUCKETS],
    sum_micros: AtomicU64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram { counts: std::array::from_fn(|_| AtomicU64::new(0)), sum_micros: AtomicU64::new(0) }
    }
}

/// The upper bound of bucket `i`, in seconds.
pub fn bucket_bound(i: usize) -> f64 {
    FIRST_BUCKET_SECONDS * GROWTH.powi(i as i32)
}

/// The bucket that holds `took`.
fn bucket_of(took: Duration) -> usize {
    let secs = took.as_secs_f64();
    if secs <= FIRST_BUCKET_SECONDS {
        0
    } else {
        (((secs / FIRST_BUCKET_SECONDS).ln() / GROWTH.ln()).ceil() as usize).min(BUCKETS - 1)
    }
}

impl LatencyHistogram {
    pub fn observe(&self, took: Duration) {
        self.counts[bucket_of(took)].fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }

    /// [`observe`](Self::observe) of each duration, counted here first and added to the shared
    /// counts once per bucket: a decisor batch's events, acknowledged together, were two atomic
    /// additions each.
    pub fn observe_all(&self, took: impl IntoIterator<Item = Duration>) {
        let (mut counts, mut sum) = ([0u64; BUCKETS], 0u64);
        for took in took {
            counts[bucket_of(took)] += 1;
            sum += took.as_micros() as u64;
        }
        for (shared, n) in self.counts.iter().zip(counts).filter(|(_, n)| *n > 0) {
            shared.fetch_add(n, Ordering::Relaxed);
        }
        self.sum_micros.fetch_add(sum, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    pub fn sum_seconds(&self) -> f64 {
        self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6
    }

    /// `(upper bound in seconds, count)` per bucket, not cumulative.
    pub fn buckets(&self) -> Vec<(f64, u64)> {
        self.counts.iter().enumerate().map(|(i, c)| (bucket_bound(i), c.load(Ordering::Relaxed))).collect()
    }

    /// The upper bound of the bucket holding quantile `q` (0..=1), in seconds; `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let counts: Vec<u64> = self.counts.iter().map(|c| c.load(Ordering::Relaxed)).collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, n) in counts.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(bucket_bound(i));
            }
        }
        Some(bucket_bound(BUCKETS - 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_land_in_the_right_bucket() {
        let h = LatencyHistogram::default();
        assert_eq!(h.quantile(0.5), None);
        for _ in 0..98 {
            h.observe(Duration::from_millis(2));
        }
        h.observe(Duration::from_millis(400));
        h.observe(Duration::from_secs(1000));
        let p50 = h.quantile(0.5).unwrap();
        assert!((0.002..0.002 * GROWTH).contains(&p50), "p50 {p50}");
        let p99 = h.quantile(0.99).unwrap();
        assert!((0.4..0.4 * GROWTH).contains(&p99), "p99 {p99}");
        assert_eq!(h.quantile(1.0), Some(bucket_bound(BUCKETS - 1)), "beyond the last bound: the last bucket");
        assert_eq!(h.count(), 100);
    }

    #[test]
    fn durations_observed_together_count_as_one_by_one() {
        let took: Vec<Duration> = (0..500u64).map(|i| Duration::from_micros(i * i * 37)).collect();
        let (one_by_one, together) = (LatencyHistogram::default(), LatencyHistogram::default());
        took.iter().for_each(|t| one_by_one.observe(*t));
        together.observe_all(took.iter().copied());
        assert_eq!(together.buckets(), one_by_one.buckets());
        assert_eq!(together.sum_seconds(), one_by_one.sum_seconds());
        assert!(together.buckets().iter().filter(|(_, n)| *n > 0).count() > 10, "spread over buckets");
    }
}
