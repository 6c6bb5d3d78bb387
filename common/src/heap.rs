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
//! [`release_code_pages`] unmaps the code and read-only data a burst touched (start-up, a scan),
//! which otherwise stays in the process's RSS for as long as it runs.
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

/// Unmaps the resident pages of the process's code and read-only data (its binary's and its
/// shared libraries'), leaving them in the page cache; returns how many bytes were unmapped.
///
/// Why: an idle agent's RSS was 8.2–8.6 MB, of which 0.7 MB heap and 7.5 MB pages of its binary
/// and libc that start-up (enrolment state, TLS, the first scan and report) had touched; the
/// kernel also maps 64 KiB around each page fault in a file. Nothing gives them back while the
/// process runs. What the idle loop (heartbeats over TLS) needs comes back on its next
/// touch as a minor fault from the page cache (measured, issue 10: 3.2–3.6 MB RSS over a
/// minute of heartbeats after a release; the packaged binary 4.4 MB).
///
/// Only mappings of a file that are not writable and hold no private (copy-on-write) page are
/// released: every page in them is the file's content, so reading it again from the file gives
/// the same bytes, and no one can write to them without changing their protection first. The
/// relocated data (RELRO: read-only, but private copies) and everything writable are left
/// alone, as are locked and special mappings and the whole process when a debugger traces it
/// (its breakpoints are private copies made between our reading and our unmapping).
/// A range read from smaps is assumed still to be the same mapping when it is unmapped: the
/// binary and the libraries loaded with it stay mapped for the life of the process, and so do
/// the only ones loaded later (glibc's NSS modules, which it never unloads); nothing in the
/// workspace loads or unloads a library.
/// `MADV_DONTNEED` rather than `MADV_PAGEOUT`: it keeps the pages cached (so the idle loop
/// refaults without reading the disk) and exists on every kernel the agent runs on (EL8's
/// 4.18, Photon 3's 4.19; `MADV_PAGEOUT` came in 5.4).
#[allow(unsafe_code)]
pub fn release_code_pages() -> u64 {
    #[cfg(target_os = "linux")]
    {
        let traced = std::fs::read_to_string("/proc/self/status")
            .map(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("TracerPid:"))
                    .is_none_or(|v| v.trim() != "0")
            })
            .unwrap_or(true);
        if traced {
            return 0;
        }
        let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else {
            return 0;
        };
        let mut released = 0u64;
        for m in releasable(&smaps) {
            // SAFETY: the range is a whole mapping of this process as the kernel listed it,
            // page-aligned, and still that mapping (see above); every page in it is an
            // unmodified page of its file, so dropping it changes no byte any code reads: the
            // next access maps the file's page again. A failure (ENOMEM for a range no longer
            // mapped, EINVAL for one the kernel will not drop) changes nothing and is not
            // counted.
            let r = unsafe {
                libc::madvise(
                    m.start as *mut libc::c_void,
                    m.end - m.start,
                    libc::MADV_DONTNEED,
                )
            };
            if r == 0 {
                released += m.rss_kib * 1024;
            }
        }
        released
    }
    #[cfg(not(target_os = "linux"))]
    {
        0
    }
}

/// A mapping [`release_code_pages`] may unmap.
#[derive(Debug, PartialEq, Eq)]
struct Releasable {
    start: usize,
    end: usize,
    rss_kib: u64,
}

/// The mappings in `smaps` (the text of `/proc/<pid>/smaps`) that are a file's, not writable,
/// private, resident, with no private copy of a page (resident or swapped out), not locked, not
/// I/O, PFN or hugetlb maps. A mapping missing any of the fields read is left alone.
///
/// Not `Private_Dirty`: it also counts pages of the page cache not yet written back, which are
/// the file's content all the same (a binary just installed or linked: its whole code mapping
/// is `Private_Dirty` with no `Anonymous` page for the half minute before writeback); a private
/// copy is always `Anonymous` (resident) or `Swap`.
fn releasable(smaps: &str) -> Vec<Releasable> {
    struct Entry<'a> {
        range: &'a str,
        perms: &'a str,
        path: &'a str,
        rss: Option<u64>,
        anonymous: Option<u64>,
        swap: Option<u64>,
        flags: Option<&'a str>,
    }
    fn take(e: &Entry<'_>) -> Option<Releasable> {
        let p = e.perms.as_bytes();
        let shape = p.len() == 4 && p[0] == b'r' && p[1] == b'-' && p[3] == b'p';
        // A private copy swapped out is not "Anonymous" (that counts resident pages) but
        // "Swap"; dropping its entry would lose it as surely as a resident one.
        let pristine = e.anonymous == Some(0) && e.swap == Some(0);
        if !shape || !e.path.starts_with('/') || !pristine {
            return None;
        }
        let flags = e.flags?;
        if flags
            .split_whitespace()
            .any(|f| matches!(f, "lo" | "io" | "pf" | "ht"))
        {
            return None;
        }
        let rss_kib = e.rss.filter(|&r| r > 0)?;
        let (a, b) = e.range.split_once('-')?;
        let start = usize::from_str_radix(a, 16).ok()?;
        let end = usize::from_str_radix(b, 16).ok()?;
        (end > start).then_some(Releasable {
            start,
            end,
            rss_kib,
        })
    }
    let kib = |v: &str| v.trim().strip_suffix("kB")?.trim().parse::<u64>().ok();
    let mut out = Vec::new();
    let mut cur: Option<Entry<'_>> = None;
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let first = fields.next().unwrap_or("");
        if !first.ends_with(':') {
            // A mapping's header: "start-end perms offset dev inode [path]".
            if let Some(e) = cur.take() {
                out.extend(take(&e));
            }
            let perms = fields.next().unwrap_or("");
            let path = fields.nth(3).unwrap_or("");
            cur = Some(Entry {
                range: first,
                perms,
                path,
                rss: None,
                anonymous: None,
                swap: None,
                flags: None,
            });
            continue;
        }
        let Some(e) = cur.as_mut() else { continue };
        let rest = &line[first.len()..];
        match first {
            "Rss:" => e.rss = kib(rest),
            "Anonymous:" => e.anonymous = kib(rest),
            "Swap:" => e.swap = kib(rest),
            "VmFlags:" => e.flags = Some(rest),
            _ => {}
        }
    }
    if let Some(e) = cur.take() {
        out.extend(take(&e));
    }
    out
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

#[cfg(test)]
mod tests {
    use super::*;

    /// `/proc/<pid>/smaps` of an idle `certfleet-agent` (profile `agent`) on Linux 6.18, eight
    /// of its mappings as the kernel printed them (this project's own process, captured while
    /// measuring issue 10; the binary's path shortened to /usr/bin): the binary's read-only
    /// data, its code, its RELRO (read-only, private copies), its writable data, libc's code,
    /// [vvar], [vdso] and [heap].
    const IDLE_AGENT: &str = include_str!("../tests/data/smaps-idle-agent.txt");

    #[test]
    fn only_unmodified_read_only_file_mappings_are_released() {
        let got = releasable(IDLE_AGENT);
        let starts: Vec<(usize, u64)> = got.iter().map(|r| (r.start, r.rss_kib)).collect();
        assert_eq!(
            starts,
            vec![
                (0x55b9_7597_9000, 256),  // the binary's read-only data
                (0x55b9_75b9_9000, 2164), // the binary's code
                (0x7fa0_23d2_c000, 1232), // libc's code
            ],
            "{got:?}"
        );
        assert_eq!(got[1].end, 0x55b9_760f_6000);
    }

    #[test]
    fn a_private_copy_resident_or_swapped_out_keeps_the_mapping() {
        // The binary's code with one field changed at a time: each would lose bytes no file
        // holds if its pages were dropped.
        let code = IDLE_AGENT
            .split_inclusive('\n')
            .skip_while(|l| !l.contains("r-xp"))
            .take_while(|l| !l.contains(" r--p 0077b000"))
            .collect::<String>();
        assert_eq!(releasable(&code).len(), 1);
        for (field, to) in [
            ("Anonymous:             0 kB", "Anonymous:             4 kB"),
            ("Swap:                  0 kB", "Swap:                  4 kB"),
            ("VmFlags: rd ex mr mw me", "VmFlags: rd ex mr mw me lo"),
            (" r-xp ", " rwxp "),
            (" r-xp ", " r-xs "),
        ] {
            assert!(code.contains(field), "{field}");
            let changed = code.replacen(field, to, 1);
            assert_eq!(releasable(&changed), vec![], "{to}");
        }
        // A mapping missing a field read (an older kernel's smaps, a cut-off read) stays.
        let no_swap: String = code
            .lines()
            .filter(|l| !l.starts_with("Swap:"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(releasable(&no_swap), vec![]);
        assert_eq!(releasable(""), vec![]);
        // A private copy is counted in Anonymous even when dirty (a COW page always is).
        let copied = code
            .replacen(
                "Anonymous:             0 kB",
                "Anonymous:             4 kB",
                1,
            )
            .replacen(
                "Private_Dirty:         0 kB",
                "Private_Dirty:         4 kB",
                1,
            );
        assert_eq!(releasable(&copied), vec![]);
        assert_eq!(releasable("garbage\n: :\n-\nRss: x kB\n"), vec![]);
    }

    /// The code mapping of a binary linked a moment before it ran (a test binary of this crate
    /// on Linux 6.18, its path shortened): every resident page `Private_Dirty` (page cache not
    /// yet written back), none `Anonymous`. Its pages are the file's: it is released. With
    /// `Private_Dirty` read as a private copy, a freshly installed agent kept its start-up's
    /// pages after its first report (the packaged binary measured 7.0 MB idle right after
    /// `build-packages.sh` wrote it, 2.5–2.9 MB in later runs).
    #[test]
    fn page_cache_not_yet_written_back_is_the_file_s_content() {
        let fresh = include_str!("../tests/data/smaps-freshly-linked-code.txt");
        assert!(fresh.contains("Private_Dirty:      1760 kB"));
        assert_eq!(
            releasable(fresh),
            vec![Releasable {
                start: 0x55bc_f2cd_5000,
                end: 0x55bc_f2fd_8000,
                rss_kib: 1760,
            }]
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn released_pages_come_back_from_the_file_unchanged() {
        // Read-only data and code used before and after: the same bytes and results after the
        // release (they are mapped again from the file), and the file-backed RSS went down.
        const K: u64 = 0x9e37_79b9_7f4a_7c15;
        static TABLE: [u64; 512] = {
            let mut t = [0u64; 512];
            let mut i = 0;
            while i < 512 {
                t[i] = (i as u64).wrapping_mul(K);
                i += 1;
            }
            t
        };
        // The table's checksum worked out at compile time: an immediate in the code, not read
        // from the table's pages.
        const EXPECTED: u64 = {
            let (mut a, mut i) = (0u64, 0u64);
            while i < 512 {
                a = a.rotate_left(5) ^ i.wrapping_mul(K);
                i += 1;
            }
            a
        };
        let sum = |t: &[u64]| t.iter().fold(0u64, |a, v| a.rotate_left(5) ^ v);
        let before = sum(std::hint::black_box(&TABLE));
        // Compared mapping by mapping: the other tests of this binary run meanwhile, and a
        // panic's backtrace maps the binary's debug sections anew.
        let resident = || {
            let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
            releasable(&smaps)
        };
        let before_release = resident();
        // The table lies in a mapping the release drops (the binary's read-only data).
        let at = std::ptr::addr_of!(TABLE) as usize;
        assert!(
            before_release
                .iter()
                .any(|r| (r.start..r.end).contains(&at)),
            "the table at {at:#x} is in no releasable mapping: {before_release:?}"
        );
        let largest = before_release
            .into_iter()
            .max_by_key(|r| r.rss_kib)
            .unwrap();
        let released = release_code_pages();
        let after = resident()
            .into_iter()
            .find(|r| r.start == largest.start)
            .map_or(0, |r| r.rss_kib);
        assert!(
            released >= largest.rss_kib * 1024,
            "{released} bytes released"
        );
        assert!(
            after < largest.rss_kib,
            "{} -> {after} KiB",
            largest.rss_kib
        );
        assert_eq!(sum(std::hint::black_box(&TABLE)), before);
        assert_eq!(sum(std::hint::black_box(&TABLE)), EXPECTED);
        assert_eq!(before, EXPECTED);
    }
}
