//! The options jemalloc runs with, shared by the binary and the benchmark's one-thread loop.
//!
//! jemalloc reads them from its `malloc_conf` symbol before `main`; each executable exports one
//! (`src/main.rs`, `benches/pipeline.rs`) pointing here, so that the loop assetflow is compared
//! with allocates exactly as assetflow does. `_RJEM_MALLOC_CONF` in the environment overrides.
//!
//! - `dirty_decay_ms:1000`: freed pages go back to the system after one second rather than ten.
//!   At the default the steady 1M crawl peaked ~20 MiB higher (158 MiB against 137) holding
//!   pages freed minutes' worth of batches ago, for no measurable CPU either way.
//! - `thp:never`: jemalloc's memory in 4 KiB pages, not transparent huge pages. Each arena
//!   (one per thread, up to four per CPU) takes a fresh 2 MiB page at its first allocation,
//!   and a fresh huge page was dear to fault in here (a 100k-asset store's run over an empty
//!   input: 42 against 33 ms of CPU, with outliers of 75 ms). `thp:always`, from the
//!   fourteenth session, had measured 7–15% less CPU on a steady crawl by saving TLB misses;
//!   measured again in the twentieth, alternating runs of the same build: the steady 100k crawl
//!   at 1 shard 9.25 µs per event with it, 8.80 without, and peak memory 6–10 MiB lower
//!   without (benches/analysis.md). `thp:always` in `_RJEM_MALLOC_CONF` turns it back on.
pub const JEMALLOC_CONF: &[u8] = b"dirty_decay_ms:1000,thp:never\0";
