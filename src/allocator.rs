//! The allocator settings of ratelimitd's binaries.
//!
//! The binaries (and the benchmarks' no-op baseline) use mimalloc: faster than glibc's malloc
//! for the many small, short-lived allocations of a gRPC call. By default it keeps freed pages
//! for a second before returning them to the system, and only returns them when something
//! allocates again, so a burst of keys (or the table copies while the counter map grows) left
//! memory behind: 100 bytes per counter at peak instead of 82, and a third of it kept after
//! the windows ended. Returning freed pages at once costs nothing measurable in the decision
//! benchmark.

/// mimalloc's index of `mi_option_purge_delay`. mimalloc keeps retired options as placeholders
/// so that these indices never move.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Makes mimalloc return freed memory to the system immediately. Call first thing in `main`.
#[allow(unsafe_code)]
pub fn return_freed_memory_at_once() {
    // SAFETY: `mi_option_set` stores an integer in mimalloc's option table; it has no
    // preconditions and may be called at any time from any thread.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0) }
}
