//! Acknowledgement waits for durability: where the control store lets a shard go on before a
//! batch's records are synced (the embedded store's journal), nothing that batch carries is
//! acknowledged until they are, and a completion's sweep reads only durable records. The shard
//! does go on meanwhile: that is what the deferral is for.

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use assetflow_actors::decision::Origin;
use assetflow_actors::envelope::{Ack, AckSink};
use assetflow_actors::ports::*;
use async_trait::async_trait;
use support::*;

/// Checks, as each message is acknowledged, that its asset's last control write is durable.
struct Checked {
    control: Arc<MemControl>,
    /// The asset key of each message that has one, by position.
    keys: HashMap<u64, String>,
    acked: AtomicU64,
    /// Messages acknowledged while their asset's record was not durable yet.
    early: AtomicU64,
}

impl AckSink for Checked {
    fn done(&self, seq: u64) {
        if let Some(key) = self.keys.get(&seq)
            && !self.control.syncs.is_durable(key)
        {
            self.early.fetch_add(1, Ordering::SeqCst);
        }
        self.acked.fetch_add(1, Ordering::SeqCst);
    }
}

/// Lines in small pulls, each message's ack checked by [`Checked`].
struct CheckedSource {
    lines: std::vec::IntoIter<(u64, String)>,
    checked: Arc<Checked>,
    pulled: u64,
}

#[async_trait]
impl Source for CheckedSource {
    async fn pull(&mut self, max: usize) -> BackendResult<Pull> {
        let mut out = Vec::new();
        for (pos, line) in self.lines.by_ref().take(max.min(16)) {
            self.pulled += 1;
            let ack = Ack::new(self.checked.clone(), pos);
            let origin = Origin { source: "test".into(), partition: "0".into(), offset: pos.to_string() };
            out.push(RawMessage::new(line.into_bytes(), origin, ack));
        }
        Ok(if out.is_empty() { Pull::Drained } else { Pull::Messages(out) })
    }
    async fn commit(&mut self) -> BackendResult<()> {
        Ok(())
    }
    fn outstanding(&self) -> usize {
        (self.pulled - self.checked.acked.load(Ordering::SeqCst)) as usize
    }
}

/// Two runs of one source: 200 tables, then 150 of them (50 dropped), each run completed. Each
/// key is written once a run, and a run's writes come after the last run's completion, so a
/// key's last write is the one its message's acknowledgement waits for ([`Checked`]).
fn stream() -> Vec<(String, Option<String>)> {
    let mut lines = Vec::new();
    for (run, tables, t0) in [("r1", 200, 0), ("r2", 150, 1000)] {
        for i in 0..tables {
            let line = running(&format!("{run}-{i}"), "s", run, &format!("t{i}"), t0 + i, "c");
            lines.push((line, Some(format!("s/db/public/t{i}"))));
        }
        lines.push((completed(&format!("{run}-done"), "s", run, t0 + 500, None), None));
    }
    lines
}

#[test]
fn nothing_is_acknowledged_before_its_records_are_durable_and_the_shard_goes_on_meanwhile() {
    // Batches of at most 20 events: a shard then writes one batch after another out of what
    // is queued, whatever the timing, and each sync outlasts the next batch's write.
    let control = Arc::new(MemControl {
        indexed: true,
        stamped: true,
        sync_delay: Duration::from_millis(50),
        max_batch: 20,
        ..Default::default()
    });
    let lines = stream();
    let checked = Arc::new(Checked {
        control: control.clone(),
        keys: lines.iter().zip(1..).filter_map(|((_, key), pos)| key.clone().map(|k| (pos, k))).collect(),
        acked: AtomicU64::new(0),
        early: AtomicU64::new(0),
    });
    let source = CheckedSource {
        lines: lines.into_iter().zip(1..).map(|((line, _), pos)| (pos, line)).collect::<Vec<_>>().into_iter(),
        checked: checked.clone(),
        pulled: 0,
    };
    let out = run_with(settings(1), Box::new(source), Backends { control: control.clone(), ..Backends::default() });

    assert_eq!(checked.acked.load(Ordering::SeqCst), 352, "every message acknowledged once drained");
    assert_eq!(
        checked.early.load(Ordering::SeqCst),
        0,
        "messages acknowledged before their control records were durable"
    );
    assert_eq!(
        control.syncs.listed_undurable.load(Ordering::SeqCst),
        0,
        "a completion's sweep read records that were not durable yet"
    );
    assert!(
        control.syncs.overlapped.load(Ordering::SeqCst) > 0,
        "the shard never wrote a batch while an earlier one was syncing: it waited for every sync"
    );
    assert_eq!(out.dropped_keys().len(), 50, "the second run drops the 50 tables it did not see");
    assert!(out.dead_letters.is_empty(), "{:?}", out.dead_letters);
}
