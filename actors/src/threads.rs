//! Thread names and the decode pool: every thread that does per-event work has a name of its
//! own (`af-router`, `af-shard-3`, `af-decode-0`, ...), so per-thread CPU times (`top -H`,
//! `/proc/<pid>/task/*/stat`, `make bench`) say which stage is the wall.

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

/// Starts rayon's global pool, one thread per core, as the decode pool (`af-decode-N`). Once
/// per process: a second pipeline (tests start many) finds it started and uses it.
pub fn start_decode_pool() {
    let _ = rayon::ThreadPoolBuilder::new().thread_name(|i| format!("af-decode-{i}")).build_global();
}
