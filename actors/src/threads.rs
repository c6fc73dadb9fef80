//! Thread names and the decode pool: every thread that does per-event work has a name of its
//! own (`af-router`, `af-shard-3`, `af-decode-0`, ...), so per-thread CPU times (`top -H`,
//! `/proc/<pid>/task/*/stat`, `make bench`) say which stage is the wall. Also where an
//! adapter's blocking I/O runs ([`blocking`]).

use std::cell::Cell;
use std::panic::AssertUnwindSafe;

thread_local! {
    /// Whether this thread belongs to one actor that waits for its own I/O ([`io_in_place`]).
    static IO_IN_PLACE: Cell<bool> = const { Cell::new(false) };
}

/// Names the calling thread (Linux keeps the first 15 bytes); elsewhere, does nothing.
pub fn name_this_thread(name: &str) {
    #[cfg(target_os = "linux")]
    if let Ok(name) = std::ffi::CString::new(name) {
        // SAFETY: PR_SET_NAME reads a NUL-terminated string that lives for the whole call.
        unsafe {
            libc::prctl(libc::PR_SET_NAME, name.as_ptr());
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = name;
}

/// Starts rayon's global pool as the decode pool (`af-decode-N`), [`decode_threads`] threads
/// (`RAYON_NUM_THREADS` overrides). Once per process: a second pipeline (tests start many)
/// finds it started and uses it.
pub fn start_decode_pool() {
    let mut pool = rayon::ThreadPoolBuilder::new().thread_name(|i| format!("af-decode-{i}"));
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        pool = pool.num_threads(decode_threads(std::thread::available_parallelism().map_or(2, |n| n.get())));
    }
    let _ = pool.build_global();
}

/// The decode pool's threads on `cores` cores: one per core up to four, then half the cores.
/// Decoding is a small share of an event's work (a core decodes several hundred thousand
/// events a second), and rayon's idle threads spin before they sleep: on 16 cores a pool of
/// sixteen spent 2.4–3.2 cores decoding what one core could, and a pool of eight decided
/// 350–363k events/s at 19.9 µs of CPU per event against 327–334k at 22.3 µs (#18). On two
/// cores one thread did no better than two.
pub fn decode_threads(cores: usize) -> usize {
    if cores <= 4 { cores.max(1) } else { (cores / 2).max(4) }
}

/// Marks the calling thread as one actor's own, which waits for each I/O it starts (a decisor
/// shard, a producer, the history writer: each applies one batch at a time, under `ctx.wait`):
/// [`blocking`] runs its I/O right here. Not for a thread whose actor must go on while I/O
/// runs (the router, whose sweeps scan a source while it routes the others' events).
pub fn io_in_place() {
    IO_IN_PLACE.with(|c| c.set(true));
}

/// Runs blocking I/O (a file write and its `fdatasync`, a store commit) for an async caller:
/// in place on a thread marked by [`io_in_place`], on tokio's blocking pool elsewhere. Handing
/// the work to the pool costs two thread switches a call, and a steady crawl's decisor batch
/// makes about six such calls: in place, a steady 100k crawl made a quarter fewer context
/// switches and used ~5% less CPU. A panic in `f` comes back as an error either way, with its
/// message. A call in place cannot be cut short by the caller's timeout (a local disk that
/// stalls stalls the actor that waits for it, rather than piling stuck calls on the pool).
pub async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, String> {
    if IO_IN_PLACE.with(Cell::get) {
        std::panic::catch_unwind(AssertUnwindSafe(f)).map_err(|p| crate::retry::panic_message(&p))
    } else {
        tokio::task::spawn_blocking(f).await.map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
    }

    #[test]
    fn io_runs_in_place_only_on_a_marked_thread() {
        // Each test thread is fresh: unmarked until it says so.
        std::thread::spawn(|| {
            let here = std::thread::current().id();
            let rt = runtime();
            let unmarked = rt.block_on(blocking(|| std::thread::current().id())).unwrap();
            assert_ne!(unmarked, here, "an unmarked thread hands its I/O to the blocking pool");
            io_in_place();
            let marked = rt.block_on(blocking(|| std::thread::current().id())).unwrap();
            assert_eq!(marked, here, "a marked thread does its I/O itself");
        })
        .join()
        .unwrap();
    }

    #[test]
    fn the_decode_pool_takes_every_core_up_to_four_then_half() {
        let threads: Vec<usize> = [1, 2, 4, 6, 8, 16, 64].map(decode_threads).into();
        assert_eq!(threads, [1, 2, 4, 4, 4, 8, 32]);
    }

    #[test]
    fn a_panic_in_place_comes_back_as_an_error() {
        std::thread::spawn(|| {
            io_in_place();
            let out: Result<(), String> = runtime().block_on(blocking(|| panic!("disk on fire")));
            assert!(out.unwrap_err().contains("disk on fire"));
        })
        .join()
        .unwrap();
    }
}
