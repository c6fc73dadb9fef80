//! Keeping each source's first run ([`crate::open_runs`]): once per source and process, before
//! the source's first `running` event is routed, unless the source has a completion mark or a
//! first run kept.

use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::SweepDeps;
use crate::mark::mark_key;
use crate::open_runs::{first_run_key, first_run_record};
use crate::ports::{FailureKind, RecordKey, RecordWrite};

/// A source seen for the first time by this process: its name, and the run and time of its
/// first event.
pub type FirstSeen = (String, String, DateTime<Utc>);

/// Keeps each source's run as its first run where the source has neither a completion mark
/// nor a first run kept. Done before the sources' events are routed, so that a batch that
/// moves a first run's record on (the next run's events close behind it) finds it kept. Best
/// effort: a store that keeps failing is logged, and until it is kept the source's runs leave
/// no moved-on markers.
pub async fn keep(deps: Arc<SweepDeps>, seen: Vec<FirstSeen>) {
    let keys: Vec<RecordKey> = seen.iter().flat_map(|(s, _, _)| [mark_key(s), first_run_key(s)]).collect();
    let there = match deps.calls.call("control store", "get", || deps.control.get_many(&keys)).await {
        Ok(there) => there,
        Err(e) => return tracing::warn!(error = %e, "cannot read whether sources' first runs are kept"),
    };
    let writes: Vec<RecordWrite> = seen
        .iter()
        .filter(|(s, _, _)| !there.contains_key(s) && !there.contains_key(&first_run_key(s).asset_key))
        .map(|(s, run, at)| RecordWrite::new(first_run_record(s, run, *at), 0))
        .collect();
    if writes.is_empty() {
        return;
    }
    // Where the writes go together and one lost to another process that kept it first, the
    // others go one by one.
    let put = |writes: Vec<RecordWrite>| {
        let deps = deps.clone();
        async move { deps.calls.call("control store", "put", || deps.control.put_many(&writes)).await }
    };
    let all = writes.len();
    let results = match put(writes.clone()).await {
        Err(e) if e.kind == FailureKind::Conflict && all > 1 => {
            let mut each = Vec::with_capacity(all);
            for w in writes {
                each.push(put(vec![w]).await);
            }
            each
        }
        other => vec![other],
    };
    for r in results {
        match r {
            Ok(()) => {}
            Err(e) if e.kind == FailureKind::Conflict => {}
            Err(e) => tracing::warn!(error = %e, "cannot keep a source's first run"),
        }
    }
}
