//! The options jemalloc runs with, shared by the binary and the benchmark's one-thread loop.
//!
//! jemalloc reads them from its `malloc_conf` symbol before `main`; each executable exports one
//! (`src/main.rs`, `benches/pipeline.rs`) pointing here, so that the loop assetflow is compared
//! with allocates exactly as assetflow does. `_RJEM_MALLOC_CONF` in the environment overrides.
//!
//! - `dirty_decay_ms:1000`: freed pages go back to the system after one second rather than ten.
//!   At the default the steady 1M crawl peaked ~20 MiB higher (158 MiB against 137) holding
//!   pages freed minutes' worth of batches ago, for no measurable CPU either way.
//! - `thp:always`: jemalloc's memory in transparent huge pages (where the kernel offers them
//!   on request, as Debian's `madvise` default does). A steady crawl's work is lookups at
//!   random keys across megabytes (the record index, the memtables' skiplists, the hash maps
//!   of a batch); with 4 KiB pages each one missed the TLB as well as the cache, and in a
//!   virtual machine a TLB miss walks two page tables. The steady 100k crawl took 7–15% less
//!   CPU in alternating runs, for 6–9 MiB more peak memory (a run over an empty input: 47 →
//!   67 MiB, each arena's first huge page). `thp:never` in `_RJEM_MALLOC_CONF` turns it off.
pub const JEMALLOC_CONF: &[u8] = b"dirty_decay_ms:1000,thp:always\0";
