//! The allocator settings of ratelimitd's binaries.
//!
//! The binaries (and the benchmarks' no-op baseline) use mimalloc: faster than glibc's malloc
//! for the many small, short-lived allocations of a gRPC call. By default it keeps freed pages
//! for a second before returning them to the system, and only returns them when something
//! allocates again, so a burst of keys (or the table copies while the counter map grows) left
//! memory behind: 100 bytes per counter at peak instead of 82, and a third of it kept after
//! the windows ended. Returning freed pages at once costs nothing measurable in the decision
//! benchmark.
//!
//! Transparent huge pages are turned off for the process. mimalloc asks for them on its
//! regions (`MADV_HUGEPAGE`), and giving back the small pages inside a huge one makes the
//! kernel split it: freeing a 100 MB rule file's parse tree (2 GB) then held decisions up to
//! 26 ms, and the load itself took 38 s. Without them the slowest decision during that load is
//! 4.5 ms (the machine's own noise is larger) and the load takes 26 s (`loadgen reload`, docs/performance.md).

/// mimalloc's index of `mi_option_purge_delay`. mimalloc keeps retired options as placeholders
/// so that these indices never move.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// mimalloc's index of `mi_option_allow_thp`.
const MI_OPTION_ALLOW_THP: libmimalloc_sys::mi_option_t = 43;

/// Makes mimalloc return freed memory to the system immediately, and turns transparent huge
/// pages off for the process. Call first thing in `main`.
#[allow(unsafe_code)]
pub fn return_freed_memory_at_once() {
    // SAFETY: `mi_option_set` stores an integer in mimalloc's option table; it has no
    // preconditions and may be called at any time from any thread.
    unsafe {
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0);
        libmimalloc_sys::mi_option_set(MI_OPTION_ALLOW_THP, 0);
    }
    // mimalloc read its option when it started (before `main`): regions it already has were
    // marked for huge pages. Turning them off for the whole process covers those too.
    // SAFETY: `prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0)` only sets a flag of this process; it
    // reads no memory of ours. It fails harmlessly (EINVAL) on kernels without it.
    #[cfg(target_os = "linux")]
    let _ = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    #[test]
    fn huge_pages_are_off_for_the_process() {
        super::return_freed_memory_at_once();
        let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
        let line = status
            .lines()
            .find(|l| l.starts_with("THP_enabled:"))
            .expect("a THP_enabled line (Linux 5.0 or later)");
        assert_eq!(line.split_whitespace().nth(1), Some("0"), "{line}");
    }
}
