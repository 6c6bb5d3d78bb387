//! Giving freed heap back to the system, for both daemons.
//!
//! glibc's malloc keeps what a burst freed in its arenas for reuse, so a process's RSS stays at
//! the height of its largest burst: the controller's when the fleet reconnects, the agent's
//! when it scans and reports 10,000 certificates (issue 10: 42 MB held after a report that
//! peaked there). [`trim`] hands the free pages back; [`one_arena`] keeps every thread on one
//! arena, so memory one thread freed is reused by the next (an agent's scan runs on a blocking
//! thread and its records are encoded on the runtime's). Other C libraries (musl) keep no such
//! cache and have no arenas: there both are no-ops.
//!
//! The unsafe calls below are the workspace's only ones, each allowed on its function alone.

/// The resident set size, in bytes (`/proc/self/statm`; 0 where it cannot be read).
pub fn rss_bytes() -> u64 {
    let pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0);
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .and_then(|p| u64::try_from(p).ok())
        .unwrap_or(4096);
    pages * page
}

/// Returns the heap's free memory to the system; true when some was.
#[allow(unsafe_code)]
pub fn trim() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim only walks and releases malloc's own free lists; it takes the
        // arenas' locks like any malloc call and has no preconditions.
        unsafe { libc::malloc_trim(0) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// Makes every thread allocate from malloc's main arena. For a process with one busy thread at
/// a time (the agent): glibc otherwise gives each new thread an arena of its own, and a block
/// freed on another thread goes back to the arena it came from, where only that arena's
/// threads reuse it. Call it first thing in `main`, before any thread starts.
pub fn one_arena() {
    limit_arenas(1);
}

/// At most one malloc arena per core, for a process whose threads are mostly busy at once (the
/// controller: its runtime's workers, and blocking threads applying reports and answering
/// queries). glibc allows eight per core; a burst spread over more arenas leaves more of each
/// half-used, which a trim cannot hand back. Measured with `certfleet-loadgen` at 10,000 agents
/// × 10 certificates on 2 cores (one run without, two with): steady RSS 1,095 → 996–1,023 MiB,
/// peak 1,282 → 1,154–1,159 MiB. Call it
/// first thing in `main`, before any thread starts.
pub fn arena_per_core() {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    limit_arenas(i32::try_from(cores).unwrap_or(i32::MAX));
}

/// Caps malloc's arenas at `n`, unless the operator set `MALLOC_ARENA_MAX` (theirs wins).
#[allow(unsafe_code)]
fn limit_arenas(n: i32) {
    if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only sets a malloc parameter; M_ARENA_MAX is read when a thread
        // first needs an arena, and any value >= 1 is valid.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, n.max(1));
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = n;
}
