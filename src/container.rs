//! What the container allows this process: its memory limit, read from the cgroup, so that the
//! counters' default budget (`--max-counter-memory`) is a share of it rather than a guess.

/// The counters' budget when the process has no memory limit: 1 GiB, about 8 million counters
/// at the table's worst density (130 bytes each), which is what the default of 10 million keys
/// cost before the budget was counted in bytes.
pub const DEFAULT_COUNTER_MEMORY: usize = 1 << 30;

/// The share of a memory limit the counters get by default: half, leaving the rest to the rule
/// set (a 100 MB rule file takes ~1 GB while it loads), connections and the allocator.
const SHARE_OF_LIMIT: usize = 2;

/// Limits at or above this are "no limit" (cgroup v1 writes 2⁶³ rounded down to a page).
const NO_LIMIT: u64 = 1 << 60;

/// The counters' default budget: half the cgroup's memory limit if there is one, else
/// [`DEFAULT_COUNTER_MEMORY`].
pub fn default_counter_memory() -> usize {
    memory_limit().map_or(DEFAULT_COUNTER_MEMORY, |limit| {
        usize::try_from(limit).unwrap_or(usize::MAX) / SHARE_OF_LIMIT
    })
}

/// The memory limit of this process's cgroup (v2 `memory.max`, else v1
/// `memory.limit_in_bytes`), if it has one.
pub fn memory_limit() -> Option<u64> {
    let read = |path: &str| std::fs::read_to_string(path).ok();
    read("/sys/fs/cgroup/memory.max")
        .or_else(|| read("/sys/fs/cgroup/memory/memory.limit_in_bytes"))
        .and_then(|text| parse_limit(&text))
}

/// A cgroup limit as written: bytes, or `max` for none.
fn parse_limit(text: &str) -> Option<u64> {
    text.trim()
        .parse::<u64>()
        .ok()
        .filter(|&bytes| bytes > 0 && bytes < NO_LIMIT)
}

#[cfg(test)]
mod tests {
    use super::parse_limit;

    #[test]
    fn limits_read_as_cgroups_write_them() {
        assert_eq!(parse_limit("536870912\n"), Some(512 << 20));
        assert_eq!(parse_limit("max\n"), None);
        assert_eq!(parse_limit("9223372036854771712\n"), None, "v1's no limit");
        assert_eq!(parse_limit(""), None);
    }
}
