//! Keeping each source's first run ([`crate::open_runs`]): once per source and process, on the
//! source's first `running` event, unless the source has a completion mark or a first run kept.

use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::SweepDeps;
use crate::mark::mark_key;
use crate::open_runs::{first_run_key, first_run_record};
use crate::ports::{FailureKind, RecordWrite};

/// Keeps `run` as `source`'s first run (its first event seen at `at`) where the source has
/// neither a completion mark nor a first run kept. Best effort, off the Router's path: until it
/// is kept the source's runs leave no moved-on markers, which a failure here only prolongs.
pub async fn keep(deps: Arc<SweepDeps>, source: String, run: String, at: DateTime<Utc>) {
    let keys = [mark_key(&source), first_run_key(&source)];
    let there = match deps.calls.call("control store", "get", || deps.control.get_many(&keys)).await {
        Ok(there) => there,
        Err(e) => {
            return tracing::warn!(source = %source, error = %e, "cannot read whether the source's first run is kept");
        }
    };
    if !there.is_empty() {
        return;
    }
    let write = [RecordWrite::new(first_run_record(&source, &run, at), 0)];
    match deps.calls.call("control store", "put", || deps.control.put_many(&write)).await {
        // Lost to another process that kept it first: as good.
        Ok(()) => {}
        Err(e) if e.kind == FailureKind::Conflict => {}
        Err(e) => tracing::warn!(source = %source, error = %e, "cannot keep the source's first run"),
    }
}
