//! Threads for work that must never hold a decision: loading rules, sweeping ended windows.
//!
//! Each runs on a thread of its own, not on a runtime worker (a worker busy for 60 ms holds
//! every decision queued on it for as long), at the lowest priority of the normal policy
//! (nice 19), so that the deciding threads preempt it: where ratelimitd has one core (a CPU
//! limit of 1, or pinned), such work otherwise shares that core with them in time slices, and
//! decisions waited up to a slice (p99 3 ms, max 13 ms during a 10 MB rule load). Not
//! `SCHED_IDLE`: that starves the work for as long as the machine is busy (reloads stalled
//! under it while the test suite ran).

/// Starts `work` on a thread named `name` with a stack of `stack` bytes, at the lowest priority;
/// the thread's error if none could be started.
pub fn spawn(
    name: &str,
    stack: usize,
    work: impl FnOnce() + Send + 'static,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name(name.into())
        .stack_size(stack)
        .spawn(move || {
            lower_this_thread();
            work();
        })
}

/// Gives the calling thread nice 19; a thread that cannot be lowered runs at normal priority.
fn lower_this_thread() {
    use thread_priority::{
        NormalThreadSchedulePolicy, ThreadPriority, ThreadSchedulePolicy,
        set_thread_priority_and_policy, thread_native_id,
    };
    let normal = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Other);
    if let Err(error) =
        set_thread_priority_and_policy(thread_native_id(), ThreadPriority::Min, normal)
    {
        tracing::debug!(?error, "a background thread runs at the normal priority");
    }
}
