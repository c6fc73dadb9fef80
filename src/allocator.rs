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
//! - `percpu_arena:percpu`: one arena per CPU, a thread allocating from the one of the CPU it
//!   runs on, instead of four arenas per CPU, each thread keeping one. Each arena holds its own
//!   huge pages and its own freed pages, so fewer arenas hold less: on 2 CPUs about 3 MiB off
//!   the steady 100k crawl's peak and 5 off the 1M crawl's, at the same CPU per event
//!   (benches/analysis.md, eighteenth session). It still gives every CPU its own arena, so
//!   threads on a larger machine do not queue on a few arenas' locks, and a process pinned to
//!   two CPUs (`taskset`) allocates from two.
pub const JEMALLOC_CONF: &[u8] = b"dirty_decay_ms:1000,thp:always,percpu_arena:percpu\0";
