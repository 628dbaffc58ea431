//! The allocator settings of ratelimitd's binaries.
//!
//! The binaries (and the benchmarks' no-op baseline) use mimalloc: faster than glibc's malloc
//! for the many small, short-lived allocations of a gRPC call.
//!
//! Freed pages go back to the system 100 ms after they were freed (mimalloc's default is a
//! second), and a background thread asks for that every 100 ms ([`give_back_freed_memory`]):
//! mimalloc itself only returns pages when something allocates again, so a burst of keys (or the
//! table copies while the counter map grows) left a third of the memory behind after the windows
//! ended. Not at once (a delay of 0, which an earlier version set): with Redis, the calls of a
//! batch are all freed together when its answer comes, their pages emptied, were given back and
//! were faulted in again for the next batch, 1.3 page faults per decision, a fifth of the
//! server's CPU (docs/performance.md, "Counting in Redis").
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

/// How long a freed page stays before it goes back to the system, in milliseconds.
const PURGE_DELAY_MS: std::ffi::c_long = 100;

/// Makes mimalloc return freed memory to the system [`PURGE_DELAY_MS`] after it was freed,
/// and turns transparent huge pages off for the process. Call first thing in `main`.
#[allow(unsafe_code)]
pub fn configure() {
    // SAFETY: `mi_option_set` stores an integer in mimalloc's option table; it has no
    // preconditions and may be called at any time from any thread.
    unsafe {
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS);
        libmimalloc_sys::mi_option_set(MI_OPTION_ALLOW_THP, 0);
    }
    // mimalloc read its option when it started (before `main`): regions it already has were
    // marked for huge pages. Turning them off for the whole process covers those too.
    // SAFETY: `prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0)` only sets a flag of this process; it
    // reads no memory of ours. It fails harmlessly (EINVAL) on kernels without it.
    #[cfg(target_os = "linux")]
    let _ = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
}

/// Returns to the system the freed pages whose delay has passed, whichever thread freed them.
/// Cheap when there are none; the sweeper calls it every 100 ms.
#[allow(unsafe_code)]
pub fn give_back_freed_memory() {
    // SAFETY: `mi_collect(false)` tidies mimalloc's own structures for the calling thread and
    // purges expired free ranges of every arena; it may be called from any thread at any time.
    unsafe { libmimalloc_sys::mi_collect(false) }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    #[test]
    fn huge_pages_are_off_for_the_process() {
        super::configure();
        let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
        let line = status
            .lines()
            .find(|l| l.starts_with("THP_enabled:"))
            .expect("a THP_enabled line (Linux 5.0 or later)");
        assert_eq!(line.split_whitespace().nth(1), Some("0"), "{line}");
    }

    const BLOCKS: usize = 16_384;
    const BLOCK: usize = 4096;

    /// How many of `blocks` lie on pages the process has in memory (`mincore`).
    #[allow(unsafe_code)]
    fn resident(blocks: &[*mut u8]) -> usize {
        blocks
            .iter()
            .filter(|&&block| {
                let page = (block as usize) & !(BLOCK - 1);
                let mut in_memory = 0u8;
                // SAFETY: `page` is page-aligned and inside a mapping mimalloc made (it keeps
                // its address space reserved after giving pages back); one page, one byte out.
                let ok = unsafe { libc::mincore(page as *mut libc::c_void, 1, &mut in_memory) };
                ok == 0 && in_memory & 1 == 1
            })
            .count()
    }

    #[test]
    #[allow(unsafe_code)]
    fn freed_pages_stay_for_the_delay_and_go_back_when_asked_after_it() {
        super::configure();
        // 64 MiB in 4 KiB blocks, written to, then freed, all through mimalloc.
        let blocks: Vec<*mut u8> = (0..BLOCKS)
            // SAFETY: a plain allocation; null is checked below.
            .map(|_| unsafe { libmimalloc_sys::mi_malloc(BLOCK) }.cast::<u8>())
            .collect();
        assert!(
            blocks.iter().all(|b| !b.is_null()),
            "mimalloc is out of memory"
        );
        for &block in &blocks {
            // SAFETY: each block is `BLOCK` bytes, allocated above and not freed yet.
            unsafe { std::ptr::write_bytes(block, 1, BLOCK) };
        }
        assert_eq!(resident(&blocks), BLOCKS);
        let freeing = std::time::Instant::now();
        for &block in &blocks {
            // SAFETY: each block was allocated by `mi_malloc` above and is freed once.
            unsafe { libmimalloc_sys::mi_free(block.cast()) };
        }
        super::give_back_freed_memory();
        let freed = resident(&blocks);
        // (A thread held off the core for the whole delay would rightly see them gone.)
        if freeing.elapsed().as_millis() < super::PURGE_DELAY_MS as u128 / 2 {
            assert!(
                freed > BLOCKS * 9 / 10,
                "given back at once: {freed} of {BLOCKS} stayed"
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(
            2 * super::PURGE_DELAY_MS as u64,
        ));
        super::give_back_freed_memory();
        let after = resident(&blocks);
        assert!(
            after < BLOCKS / 10,
            "{after} of {BLOCKS} freed pages stayed after the delay"
        );
    }
}
