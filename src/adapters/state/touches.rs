//! Touch frames: the run stamps of one batch's unchanged assets, written as one row of the
//! embedded store's `touches` keyspace instead of a `stamps` row per asset.
//!
//! A stamp row per unchanged asset was 10–25% of a steady crawl's CPU (benches/analysis.md),
//! most of it inserting random keys into the stamps memtable, a skiplist: each insert misses
//! the cache on the way down. A frame is one insert per batch, at the end of its keyspace (its
//! key is a sequence number). The store's index holds each indexed asset's latest stamp in
//! memory and reads take it from there; the frames are what makes those stamps durable. An open
//! after a crash replays them into the index, and once they pass a bound (`FOLD_FRAMES` in
//! `fold.rs`) a fold writes the index's stamps of the frames' runs as `stamps` rows and
//! removes the frames.
//!
//! A frame holds the batch's run ids once and, per asset, its control key, the run's place in
//! that list, the time and the version, in postcard behind a tag byte (as `layout.rs`).
//! Replaying keeps, per asset, the stamp of the highest version, so frames may be applied in
//! any order and more than once.

use std::borrow::Cow;

use assetflow_actors::ports::{BackendError, BackendResult};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::index::IndexKey;

/// The first byte of a frame.
const FRAME_TAG: u8 = 4;

const BACKEND: &str = "embedded store";

#[derive(Deserialize)]
struct StoredFrame<'a> {
    #[serde(borrow)]
    runs: Vec<Cow<'a, str>>,
    touches: Vec<StoredTouch>,
}

/// [`StoredFrame`] as written: the builder's lists, borrowed (the same postcard form).
#[derive(Serialize)]
struct FrameOut<'b> {
    runs: &'b [&'b str],
    touches: &'b [StoredTouch],
}

#[derive(Serialize, Deserialize)]
struct StoredTouch {
    key: IndexKey,
    /// The run's place in the frame's `runs`.
    run: u32,
    seconds: i64,
    nanos: u32,
    version: u64,
}

/// One asset's stamp in a frame.
#[derive(Debug, Clone, PartialEq)]
pub struct Touch<'a> {
    pub key: IndexKey,
    pub run: &'a str,
    pub at: DateTime<Utc>,
    pub version: u64,
}

/// A frame being built from a batch's touches.
#[derive(Default)]
pub struct FrameBuilder<'a> {
    runs: Vec<&'a str>,
    touches: Vec<StoredTouch>,
}

impl<'a> FrameBuilder<'a> {
    pub fn push(&mut self, key: IndexKey, run: &'a str, at: DateTime<Utc>, version: u64) {
        // A batch holds a few runs (one per source crawling), so a scan beats a map.
        let place = match self.runs.iter().position(|r| *r == run) {
            Some(i) => i,
            None => {
                self.runs.push(run);
                self.runs.len() - 1
            }
        };
        let (seconds, nanos) = (at.timestamp(), at.timestamp_subsec_nanos());
        self.touches.push(StoredTouch { key, run: place as u32, seconds, nanos, version });
    }

    pub fn is_empty(&self) -> bool {
        self.touches.is_empty()
    }

    /// The runs the frame names.
    pub fn runs(&self) -> &[&'a str] {
        &self.runs
    }

    pub fn encode(&self) -> BackendResult<Vec<u8>> {
        let frame = FrameOut { runs: &self.runs, touches: &self.touches };
        let mut out = Vec::with_capacity(16 + self.touches.len() * 40);
        out.push(FRAME_TAG);
        postcard::to_extend(&frame, out).map_err(|e| BackendError::permanent(BACKEND, "encode touch frame", e))
    }
}

/// Calls `each` with every stamp of the frame `bytes`.
pub fn decode(bytes: &[u8], mut each: impl FnMut(Touch<'_>)) -> BackendResult<()> {
    let corrupt = |what: String| BackendError::permanent(BACKEND, "read touch frame", what);
    let frame: StoredFrame<'_> = match bytes.split_first() {
        Some((&FRAME_TAG, rest)) => postcard::from_bytes(rest).map_err(|e| corrupt(e.to_string()))?,
        Some((tag, _)) => return Err(corrupt(format!("unknown touch frame tag {tag}"))),
        None => return Err(corrupt("an empty touch frame".into())),
    };
    for t in &frame.touches {
        let run = frame.runs.get(t.run as usize).ok_or_else(|| corrupt(format!("no run {} in its frame", t.run)))?;
        let at = DateTime::from_timestamp(t.seconds, t.nanos).ok_or_else(|| corrupt("a time out of range".into()))?;
        each(Touch { key: t.key, run, at, version: t.version });
    }
    Ok(())
}

/// The key of the frame with sequence number `seq`: big-endian, so keys sort as frames came.
pub fn frame_key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

/// The sequence number of a frame's key.
pub fn frame_seq(key: &[u8]) -> Option<u64> {
    key.try_into().ok().map(u64::from_be_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_gives_back_its_stamps_with_their_runs() {
        let at = |s: i64| DateTime::from_timestamp(1_790_000_000 + s, 7).unwrap();
        let mut f = FrameBuilder::default();
        assert!(f.is_empty());
        f.push([1; 20], "r1", at(1), 5);
        f.push([2; 20], "r2", at(2), 9);
        f.push([3; 20], "r1", at(3), 1);
        assert_eq!(f.runs(), ["r1", "r2"]);
        let bytes = f.encode().unwrap();
        let mut back = Vec::new();
        decode(&bytes, |t| back.push((t.key, t.run.to_owned(), t.at, t.version))).unwrap();
        assert_eq!(
            back,
            [([1; 20], "r1".into(), at(1), 5), ([2; 20], "r2".into(), at(2), 9), ([3; 20], "r1".into(), at(3), 1)]
        );
        assert!(decode(&bytes[..bytes.len() - 1], |_| {}).is_err(), "a frame cut short");
        assert!(decode(&[9, 0], |_| {}).is_err(), "another tag");
        assert_eq!(frame_seq(&frame_key(258)), Some(258));
        assert!(frame_key(2) < frame_key(256), "keys sort as frames came");
    }
}
