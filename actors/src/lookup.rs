//! Enrichment lookups: the key an event is looked up by, and the TTL cache in front of a
//! [`Lookup`] port, shared by the Enricher (events) and the Decisor shards (drops).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::calls::Calls;
use crate::decision::Business;
use crate::event::{AssetEvent, AssetName, EventKind};
use crate::ports::{BackendResult, Lookup};

/// Largest number of cached keys; past it, expired entries go, then everything.
const MAX_CACHED: usize = 100_000;

/// The JSON pointers (`enricher.lookup`) whose values are a lookup's parameters, in order.
#[derive(Debug, Clone)]
pub struct LookupKeys {
    pointers: Vec<String>,
}

impl LookupKeys {
    pub fn new(pointers: Vec<String>) -> Self {
        LookupKeys { pointers }
    }

    /// The parameters for an event, or `None` when a pointer finds nothing usable (no match).
    pub fn params(&self, event: &AssetEvent) -> Option<Vec<String>> {
        self.pointers.iter().map(|p| scalar(event.pointer(p)?)).collect()
    }

    /// The parameters for a dropped asset, looked up as if its last event were here again.
    pub fn params_for_asset(&self, source: &str, name: &AssetName) -> Option<Vec<String>> {
        let event = AssetEvent {
            event_id: String::new(),
            source: source.to_owned(),
            run_id: String::new(),
            emitted_at: chrono::DateTime::UNIX_EPOCH,
            kind: EventKind::Running {
                name: name.clone(),
                body: serde_json::value::to_raw_value(
                    &serde_json::json!({"database": name.database, "schema": name.schema, "table": name.table}),
                )
                .ok()?,
            },
            extra: Default::default(),
        };
        self.params(&event)
    }
}

fn scalar(v: Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Counters a cache keeps about itself.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    pub size: usize,
}

/// A [`Lookup`] behind a TTL cache and the retry policy.
pub struct CachedLookup {
    inner: Arc<dyn Lookup>,
    ttl: Duration,
    /// Lookups: retried, timed, counted, the enricher's health reported (for `/readyz`).
    calls: Calls,
    state: Mutex<CacheState>,
}

#[derive(Default)]
struct CacheState {
    entries: HashMap<Vec<String>, (Instant, Business)>,
    hits: u64,
    misses: u64,
}

impl CachedLookup {
    pub fn new(inner: Arc<dyn Lookup>, ttl: Duration, calls: Calls) -> Self {
        CachedLookup { inner, ttl, calls, state: Mutex::default() }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, CacheState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The cached answer for `params`, if fresh.
    pub fn cached(&self, params: &[String]) -> Option<Business> {
        let mut st = self.state();
        let hit = st.entries.get(params).filter(|(at, _)| at.elapsed() < self.ttl).map(|(_, b)| b.clone());
        if hit.is_some() {
            st.hits += 1;
        }
        hit
    }

    /// Looks `params` up (cache first), retrying a failing backend per the policy.
    pub async fn get(&self, params: &[String]) -> BackendResult<Business> {
        if let Some(b) = self.cached(params) {
            return Ok(b);
        }
        self.fetch(params).await
    }

    /// Asks the backend (the caller has already missed the cache), and caches the answer.
    pub async fn fetch(&self, params: &[String]) -> BackendResult<Business> {
        let found = self.calls.call("enricher", "lookup", || self.inner.lookup(params)).await?;
        let business: Business = found.map(Arc::new);
        let mut st = self.state();
        st.misses += 1;
        if st.entries.len() >= MAX_CACHED {
            let ttl = self.ttl;
            st.entries.retain(|_, (at, _)| at.elapsed() < ttl);
            if st.entries.len() >= MAX_CACHED {
                st.entries.clear();
            }
        }
        if !self.ttl.is_zero() {
            st.entries.insert(params.to_vec(), (Instant::now(), business.clone()));
        }
        Ok(business)
    }

    pub fn stats(&self) -> CacheStats {
        let st = self.state();
        CacheStats { hits: st.hits, misses: st.misses, size: st.entries.len() }
    }
}
