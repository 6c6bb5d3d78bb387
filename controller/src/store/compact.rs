//! Online compaction: gives back the space sled never reclaims from rewritten documents, while
//! the controller keeps serving.
//!
//! sled appends every write to its log and keeps the superseded copies (large values live in
//! blob files that are never reused), so a store whose documents change in place grows without
//! bound. [`Store::compact`] copies every tree into a fresh sled database next to the live one
//! (`state.compact-<ms>`), checking each value as [`Store::verify`] does, while writes go on;
//! the keys written meanwhile are noted. It then pauses every access to the store (the write
//! side of the store's swap guard: every access holds its read side), copies the noted keys
//! again, makes the copy durable, and swaps directories:
//!
//! ```text
//! state.compact-<ms>  --rename-->  state.ready-<ms>      (the copy is complete and durable)
//! state               --rename-->  state.old-<ms>
//! state.ready-<ms>    --rename-->  state                 (reopened; access resumes)
//! state.old-<ms>      removed
//! ```
//!
//! Every name says what its directory holds, so [`recover_interrupted_compaction`] (run
//! before every open) knows what to do after a crash at any point: a `compact-` directory is
//! unfinished and discarded; a `ready-` one is a complete store at least as new as the live
//! one (writes were paused before it was made ready), so the swap is finished; an `old-` one is
//! removed once `state` exists. The pause lasts the copy of the keys written during the bulk
//! copy, two fsyncs, two renames and a sled open: milliseconds for a quiet store.
//!
//! A compaction that fails before the swap (a full disk, a damaged value) removes its copy and
//! leaves the live store as it was, with the reason in [`StoreError::Compaction`]; it never
//! marks the live store as failing (its own writes go to the copy only).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::{AUDIT_MARK, Store, StoreError, open_sled, unframe};

/// When `serve` compacts on its own: checked every store probe interval.
#[derive(Clone, Debug)]
pub struct CompactionPolicy {
    /// Automatic compaction on or off (`certfleet store compact` works either way).
    pub enabled: bool,
    /// Compact when the size on disk exceeds this many times the live bytes.
    pub ratio: u64,
    /// Never compact automatically below this size on disk (sled's own overhead dominates).
    pub min_size_bytes: u64,
    /// At most one automatic compaction per this interval (failed ones included).
    pub interval: Duration,
}

impl Default for CompactionPolicy {
    fn default() -> Self {
        CompactionPolicy {
            enabled: true,
            ratio: 4,
            min_size_bytes: 64 << 20,
            interval: Duration::from_secs(3600),
        }
    }
}

impl CompactionPolicy {
    /// Whether a store of `size_on_disk` holding `live` bytes is worth compacting.
    pub fn wants(&self, size_on_disk: u64, live: u64) -> bool {
        self.enabled
            && size_on_disk >= self.min_size_bytes
            && size_on_disk > live.saturating_mul(self.ratio)
    }
}

/// What one compaction did.
#[derive(Clone, Debug, Serialize)]
pub struct CompactionReport {
    /// Bytes on disk before.
    pub before_bytes: u64,
    /// Bytes on disk after.
    pub after_bytes: u64,
    /// Bytes of keys and values held.
    pub live_bytes: u64,
    /// Documents copied.
    pub documents: u64,
    /// Keys written during the bulk copy and copied again while writes were paused.
    pub recopied: u64,
    /// The whole compaction.
    pub duration: Duration,
    /// How long every access to the store was paused.
    pub pause: Duration,
}

/// Compactions since the process started (for `/metrics`).
#[derive(Clone, Debug, Default)]
pub struct CompactionStats {
    /// Compactions that swapped in a fresh store.
    pub runs: u64,
    /// Compactions that failed.
    pub failures: u64,
    /// Unix time the last compaction (successful or not) ended; 0: none yet.
    pub last_at: i64,
    /// Duration of the last compaction.
    pub last_duration: Duration,
    /// Why the last compaction failed (`None` once one succeeds).
    pub last_error: Option<String>,
}

/// The store's compaction state, shared by its clones.
#[derive(Default)]
pub(super) struct Compaction {
    /// One compaction (or backup snapshot) at a time.
    pub(super) running: std::sync::Mutex<()>,
    /// Fast check for [`Compaction::note`]; set and cleared under the swap guard's write side.
    noting: AtomicBool,
    /// Keys written since the bulk copy began.
    dirty: std::sync::Mutex<BTreeSet<(&'static str, Vec<u8>)>>,
    stats: std::sync::Mutex<CompactionStats>,
}

impl Compaction {
    /// Called by every write, under the swap guard's read side: remembers the key while a
    /// compaction copies.
    pub(super) fn note(&self, tree: &'static str, key: &[u8]) {
        if self.noting.load(Ordering::SeqCst) {
            self.dirty
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert((tree, key.to_vec()));
        }
    }

    pub(super) fn start_noting(&self) {
        self.dirty.lock().unwrap_or_else(|p| p.into_inner()).clear();
        self.noting.store(true, Ordering::SeqCst);
    }

    pub(super) fn stop_noting(&self) -> BTreeSet<(&'static str, Vec<u8>)> {
        self.noting.store(false, Ordering::SeqCst);
        std::mem::take(&mut *self.dirty.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// The test hook: `CERTFLEET_TEST_COMPACT_KILL_AT=<point>` makes the process SIGKILL itself at
/// that point of a compaction, so tests can check that a crash anywhere leaves a store that
/// opens with all its data.
fn crash_point(point: &str) {
    if std::env::var("CERTFLEET_TEST_COMPACT_KILL_AT").is_ok_and(|p| p == point) {
        tracing::warn!(
            point,
            "CERTFLEET_TEST_COMPACT_KILL_AT: killing the controller"
        );
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
}

/// The parent directory and file name of a store directory.
fn split(dir: &Path) -> Option<(PathBuf, String)> {
    let name = dir.file_name()?.to_str()?.to_owned();
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Some((parent, name))
}

fn io_err(what: String) -> impl FnOnce(std::io::Error) -> StoreError {
    move |source| StoreError::Io { what, source }
}

/// fsync of a directory (its entries: renames, new files).
fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    std::fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(io_err(format!("syncing directory {}", dir.display())))
}

fn rename(from: &Path, to: &Path) -> Result<(), StoreError> {
    std::fs::rename(from, to).map_err(io_err(format!(
        "renaming {} to {}",
        from.display(),
        to.display()
    )))
}

/// Sibling directories `<name>.<kind>-<ms>` left by compactions, oldest first.
fn leftovers(parent: &Path, name: &str, kind: &str) -> Vec<PathBuf> {
    let prefix = format!("{name}.{kind}-");
    let mut found: Vec<(u128, PathBuf)> = std::fs::read_dir(parent)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let n = e.file_name().into_string().ok()?;
            let ms = n.strip_prefix(&prefix)?.parse().ok()?;
            Some((ms, e.path()))
        })
        .collect();
    found.sort();
    found.into_iter().map(|(_, p)| p).collect()
}

/// Exclusive lock on `<parent>/<name>.lock` for as long as a [`Store`] has `dir` open: a
/// second process (a `certfleet store export` next to a running controller) must not touch
/// a compaction in progress. Taken before recovery, so recovery never races a live store.
pub(super) fn lock_store_dir(
    dir: &Path,
) -> Result<Option<nix::fcntl::Flock<std::fs::File>>, StoreError> {
    let Some((parent, name)) = split(dir) else {
        return Ok(None);
    };
    std::fs::create_dir_all(&parent).map_err(io_err(format!("creating {}", parent.display())))?;
    let path = parent.join(format!("{name}.lock"));
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io_err(format!("opening {}", path.display())))?;
    match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(Some(lock)),
        Err((_, errno)) => Err(StoreError::Io {
            what: format!(
                "state store {} is in use by another process (a running controller?): locking {}",
                dir.display(),
                path.display()
            ),
            source: std::io::Error::from(errno),
        }),
    }
}

/// Finishes or discards a compaction a crash interrupted (see the module doc); a no-op when
/// none was. Refused while another process has the store open. Run by every open; `serve`
/// also runs it before it checks that the store exists (a crash between the two renames of
/// the swap leaves no `state` directory for a moment).
pub fn recover_interrupted_compaction(dir: &Path) -> Result<(), StoreError> {
    let _lock = lock_store_dir(dir)?;
    recover_locked(dir)
}

/// [`recover_interrupted_compaction`], with the store directory's lock ([`lock_store_dir`])
/// held by the caller.
pub(super) fn recover_locked(dir: &Path) -> Result<(), StoreError> {
    let Some((parent, name)) = split(dir) else {
        return Ok(());
    };
    let mut changed = false;
    for unfinished in leftovers(&parent, &name, "compact") {
        tracing::warn!(store = %dir.display(), copy = %unfinished.display(), "discarding an unfinished compaction");
        std::fs::remove_dir_all(&unfinished)
            .map_err(io_err(format!("removing {}", unfinished.display())))?;
        changed = true;
    }
    let mut ready = leftovers(&parent, &name, "ready");
    if let Some(newest) = ready.pop() {
        for stale in ready {
            std::fs::remove_dir_all(&stale)
                .map_err(io_err(format!("removing {}", stale.display())))?;
        }
        if dir.exists() {
            let ms = newest
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.rsplit('-').next())
                .unwrap_or("0")
                .to_owned();
            rename(dir, &parent.join(format!("{name}.old-{ms}")))?;
        }
        rename(&newest, dir)?;
        tracing::warn!(store = %dir.display(), copy = %newest.display(), "finished a compaction interrupted after its copy was complete");
        changed = true;
    }
    let mut old = leftovers(&parent, &name, "old");
    if !dir.exists() {
        // Not a state any crash of ours leaves (the ready copy is renamed in before the old
        // one is removed), but a complete store is not thrown away.
        if let Some(newest) = old.pop() {
            tracing::warn!(store = %dir.display(), previous = %newest.display(), "no store and no finished compaction: restoring the store it replaced");
            rename(&newest, dir)?;
            changed = true;
        }
    }
    for stale in old {
        std::fs::remove_dir_all(&stale).map_err(io_err(format!("removing {}", stale.display())))?;
        changed = true;
    }
    if changed {
        sync_dir(&parent)?;
    }
    Ok(())
}

/// Checks one value as [`Store::verify`] does.
pub(super) fn check(tree: &str, key: &[u8], value: &[u8]) -> Result<(), String> {
    unframe(value)
        .and_then(|json| {
            serde_json::from_slice::<serde_json::Value>(json)
                .map(|_| ())
                .map_err(|e| format!("undecodable document: {e}"))
        })
        .map_err(|reason| format!("tree {tree}, key {}: {reason}", super::show_key(key)))
}

impl Store {
    /// Compactions so far, for `/metrics`.
    pub fn compaction_stats(&self) -> CompactionStats {
        self.compaction
            .stats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Rewrites the store into a fresh directory and swaps it in while the controller keeps
    /// serving (see the module doc); refused while another compaction runs. Idempotent: every
    /// run copies what is live now; a crash at any point leaves either the old or the new
    /// store, both complete, and the next open cleans up ([`recover_interrupted_compaction`]).
    pub fn compact(&self) -> Result<CompactionReport, StoreError> {
        let _one = self
            .compaction
            .running
            .try_lock()
            .map_err(|_| StoreError::CompactionBusy {
                path: self.path.clone(),
            })?;
        let started = Instant::now();
        let r = self.compact_now(started);
        let mut stats = self
            .compaction
            .stats
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        stats.last_at = certfleet_common::model::now();
        stats.last_duration = started.elapsed();
        match &r {
            Ok(report) => {
                stats.runs += 1;
                stats.last_error = None;
                tracing::info!(
                    store = %self.path.display(),
                    before_bytes = report.before_bytes,
                    after_bytes = report.after_bytes,
                    live_bytes = report.live_bytes,
                    documents = report.documents,
                    recopied = report.recopied,
                    duration_ms = report.duration.as_millis() as u64,
                    pause_ms = report.pause.as_millis() as u64,
                    "state store compacted"
                );
            }
            Err(e) => {
                stats.failures += 1;
                stats.last_error = Some(e.to_string());
                tracing::error!(store = %self.path.display(), error = %e, "state store compaction failed");
            }
        }
        r
    }

    fn compact_now(&self, started: Instant) -> Result<CompactionReport, StoreError> {
        let (parent, name) = split(&self.path).ok_or_else(|| StoreError::Compaction {
            path: self.path.clone(),
            reason: "the store directory has no usable name".into(),
        })?;
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis();
        let building = parent.join(format!("{name}.compact-{ms}"));
        let ready = parent.join(format!("{name}.ready-{ms}"));
        let old = parent.join(format!("{name}.old-{ms}"));
        let before_bytes = self.size_on_disk();
        let failed = |reason: String| StoreError::Compaction {
            path: self.path.clone(),
            reason,
        };
        let discard = |dir: &Path| {
            if let Err(e) = std::fs::remove_dir_all(dir)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(copy = %dir.display(), error = %e, "could not remove a failed compaction's copy");
            }
        };

        // Noting starts with no write in flight, so that every write the bulk copy may miss is
        // noted.
        {
            let _pause = self.db.write();
            self.compaction.start_noting();
        }
        let bulk = self.copy_all(&building);
        crash_point("copied");
        let (fresh, documents) = match bulk {
            Ok(v) => v,
            Err(e) => {
                self.compaction.stop_noting();
                discard(&building);
                return Err(failed(e));
            }
        };

        // Every access waits from here until the swapped store is open.
        let mut live = self.db.write();
        let paused = Instant::now();
        let dirty = self.compaction.stop_noting();
        let recopied = dirty.len() as u64;
        let finish = (|| -> Result<(), String> {
            let db = live
                .as_ref()
                .ok_or_else(|| "the live store is closed".to_owned())?;
            let sled = |what: &str, e: sled::Error| format!("{what}: {e}");
            for (tree, key) in &dirty {
                let src = db.open_tree(tree).map_err(|e| sled("live store", e))?;
                let dst = fresh
                    .open_tree(tree)
                    .map_err(|e| sled(&building.display().to_string(), e))?;
                match src.get(key).map_err(|e| sled("live store", e))? {
                    Some(v) => {
                        check(tree, key, &v)?;
                        dst.insert(key.as_slice(), v)
                            .map_err(|e| sled(&building.display().to_string(), e))?;
                    }
                    None => {
                        dst.remove(key.as_slice())
                            .map_err(|e| sled(&building.display().to_string(), e))?;
                    }
                }
            }
            fresh
                .flush()
                .map_err(|e| sled(&format!("flushing {}", building.display()), e))?;
            let last_audit = fresh
                .open_tree("audit")
                .and_then(|t| t.last())
                .map_err(|e| sled(&building.display().to_string(), e))?
                .and_then(|(k, _)| <[u8; 8]>::try_from(k.as_ref()).ok())
                .map(u64::from_be_bytes)
                .unwrap_or(0);
            drop(fresh);
            let mark = last_audit.max(self.audit_mark.load(Ordering::SeqCst));
            if mark > 0 {
                certfleet_common::atomic::write_file(
                    &building.join(AUDIT_MARK),
                    super::audit_mark_text(mark).as_bytes(),
                    certfleet_common::atomic::PUBLIC,
                )
                .map_err(|e| format!("writing {}: {e}", building.join(AUDIT_MARK).display()))?;
            }
            for d in [building.join("blobs"), building.clone()] {
                if d.exists() {
                    sync_dir(&d).map_err(|e| e.to_string())?;
                }
            }
            crash_point("built");
            rename(&building, &ready).map_err(|e| e.to_string())?;
            sync_dir(&parent).map_err(|e| e.to_string())?;
            crash_point("ready");
            // What the live store holds on disk matters no more (the copy is newer), but a
            // clean close costs little.
            db.flush().map_err(|e| sled("flushing the live store", e))?;
            Ok(())
        })();
        if let Err(reason) = finish {
            drop(live);
            discard(&building);
            discard(&ready);
            return Err(failed(reason));
        }

        // Close the live database (nobody else holds it: every access waits on the guard),
        // move it aside, move the copy in, reopen.
        drop(live.take());
        let swap = rename(&self.path, &old).and_then(|_| {
            crash_point("old");
            rename(&ready, &self.path)?;
            sync_dir(&parent)?;
            crash_point("swapped");
            Ok(())
        });
        if let Err(e) = &swap {
            // Put the old store back (it is complete: it was flushed before it was closed).
            if !self.path.exists() && old.exists() {
                let _ = rename(&old, &self.path);
            }
            discard(&ready);
            tracing::error!(store = %self.path.display(), error = %e, "compaction swap failed; reopening the previous store");
        }
        match open_sled(&self.path) {
            Ok(db) => *live = Some(db),
            Err(e) => {
                // `live` stays empty: every access fails with StoreError::Closed, the store
                // watchdog sees failing writes and the supervisor restarts the controller.
                return Err(failed(format!("reopening after the swap: {e}")));
            }
        }
        let pause = paused.elapsed();
        drop(live);
        swap.map_err(|e| failed(e.to_string()))?;
        if let Err(e) = std::fs::remove_dir_all(&old) {
            tracing::warn!(previous = %old.display(), error = %e, "could not remove the store a compaction replaced (removed at the next start)");
        }
        Ok(CompactionReport {
            before_bytes,
            after_bytes: self.size_on_disk(),
            live_bytes: self.live_bytes(),
            documents,
            recopied,
            duration: started.elapsed(),
            pause,
        })
    }

    /// The bulk copy into a fresh database at `dest`, writes going on meanwhile.
    fn copy_all(&self, dest: &Path) -> Result<(sled::Db, u64), String> {
        let fresh = sled::Config::new()
            .path(dest)
            .cache_capacity(super::SLED_CACHE_BYTES)
            .mode(sled::Mode::LowSpace)
            .flush_every_ms(None)
            .open()
            .map_err(|e| format!("creating {}: {e}", dest.display()))?;
        let dest_err = |e: sled::Error| format!("writing {}: {e}", dest.display());
        let db = self.db().map_err(|e| e.to_string())?;
        let mut documents = 0u64;
        for name in db.tree_names() {
            if name.as_ref() == b"__sled__default" {
                continue;
            }
            let src = db
                .open_tree(&name)
                .map_err(|e| format!("live store: {e}"))?;
            let dst = fresh.open_tree(&name).map_err(dest_err)?;
            let tree = String::from_utf8_lossy(&name).into_owned();
            for kv in src.iter() {
                let (k, v) = kv.map_err(|e| format!("reading tree {tree}: {e}"))?;
                check(&tree, &k, &v)?;
                dst.insert(k, v).map_err(dest_err)?;
                documents += 1;
            }
        }
        drop(db);
        fresh.flush().map_err(dest_err)?;
        Ok((fresh, documents))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store whose one large document was rewritten many times, with small ones around it.
    fn grown_store(dir: &Path) -> Store {
        let s = Store::open(dir).unwrap();
        for i in 0..200 {
            s.put(
                "agents",
                &format!("a{i}"),
                &serde_json::json!({"name": format!("vc{i}")}),
            )
            .unwrap();
        }
        s.append("audit", |seq| serde_json::json!({"seq": seq}))
            .unwrap();
        let big = "x".repeat(100_000);
        for round in 0..300 {
            s.put(
                "inventory",
                "a0",
                &serde_json::json!({"round": round, "certs": big}),
            )
            .unwrap();
        }
        s.flush().unwrap();
        s
    }

    #[test]
    fn compaction_gives_back_rewritten_space_and_keeps_every_document() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("state");
        let s = grown_store(&dir);
        let grown = s.size_on_disk();
        let live = s.live_bytes();
        eprintln!("grown {grown} live {live}");
        assert!(
            grown > 10 * live,
            "the store did not grow: {grown} on disk, {live} live"
        );
        let report = s.compact().unwrap();
        eprintln!("{report:?}");
        let after = s.size_on_disk();
        assert!(after < grown / 5, "{grown} -> {after} bytes (live {live})");
        assert!(
            after < 4 * live + (2 << 20),
            "{after} bytes on disk for {live} live"
        );
        assert_eq!(s.live_bytes(), live);
        // Everything is there, through the same handle and after a reopen.
        let check = |s: &Store| {
            for i in 0..200 {
                let v: serde_json::Value = s.get("agents", &format!("a{i}")).unwrap().unwrap();
                assert_eq!(v["name"], format!("vc{i}"));
            }
            let inv: serde_json::Value = s.get("inventory", "a0").unwrap().unwrap();
            assert_eq!(inv["round"], 299);
            assert_eq!(s.tail::<serde_json::Value>("audit", 5).unwrap().len(), 1);
        };
        check(&s);
        s.put("agents", "late", &1).unwrap();
        s.flush().unwrap();
        drop(s);
        let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n != "state" && n != "state.lock")
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        let s = Store::open(&dir).unwrap();
        check(&s);
        assert_eq!(s.get::<i32>("agents", "late").unwrap(), Some(1));
    }

    /// Writers keep going during a compaction: every write lands in the store swapped in,
    /// whether the bulk copy saw it, missed it, or it came during the pause.
    #[test]
    fn writes_during_a_compaction_all_survive() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("state");
        let s = grown_store(&dir);
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let writers: Vec<_> = (0..2)
            .map(|w| {
                let (s, stop) = (s.clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut n = 0u64;
                    while !stop.load(Ordering::SeqCst) || n < 50 {
                        s.put("tokens", &format!("w{w}-{}", n % 500), &n).unwrap();
                        if n.is_multiple_of(7) {
                            s.remove("agents", &format!("a{}", n % 200)).unwrap();
                        }
                        s.append("audit", |seq| serde_json::json!({"seq": seq}))
                            .unwrap();
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        let report = s.compact().unwrap();
        stop.store(true, Ordering::SeqCst);
        let written: Vec<u64> = writers.into_iter().map(|w| w.join().unwrap()).collect();
        assert!(
            report.recopied > 0,
            "no write overlapped the copy: {report:?}"
        );
        s.flush().unwrap();
        let expect = |s: &Store| {
            for (w, n) in written.iter().enumerate() {
                for i in 0..(*n).min(500) {
                    // The last value written under key i.
                    let last = (0..*n).rev().find(|v| v % 500 == i).unwrap();
                    assert_eq!(
                        s.get::<u64>("tokens", &format!("w{w}-{i}")).unwrap(),
                        Some(last),
                        "writer {w} key {i}"
                    );
                }
            }
            let audit: u64 = written.iter().sum::<u64>() + 1;
            assert_eq!(s.last_audit_seq().unwrap(), audit);
            assert!(s.verify().is_empty());
        };
        expect(&s);
        let live = s.live_bytes();
        drop(s);
        let s = Store::open(&dir).unwrap();
        expect(&s);
        assert_eq!(s.live_bytes(), live, "live bytes were tracked exactly");
    }

    /// Builds a store in `dir` holding one agent named `name`.
    fn store_with(dir: &Path, name: &str) {
        let s = Store::open(dir).unwrap();
        s.put("agents", "a", &name).unwrap();
        s.flush().unwrap();
    }

    fn agent(dir: &Path) -> String {
        Store::open(dir)
            .unwrap()
            .get::<String>("agents", "a")
            .unwrap()
            .unwrap()
    }

    fn names(parent: &Path) -> Vec<String> {
        let mut n: Vec<String> = std::fs::read_dir(parent)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            // (the stores these tests build by hand have lock files of their own)
            .filter(|n| !n.ends_with(".lock"))
            .collect();
        n.sort();
        n
    }

    /// What each crash point of the swap leaves behind opens as a complete store, the right
    /// one, and the leftovers are gone.
    #[test]
    fn every_state_a_crash_leaves_opens_complete() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path();
        let state = p.join("state");
        // Killed during the copy: the unfinished copy is discarded.
        store_with(&state, "old");
        std::fs::create_dir(p.join("state.compact-7")).unwrap();
        std::fs::write(p.join("state.compact-7/db"), b"half").unwrap();
        assert_eq!(agent(&state), "old");
        assert_eq!(names(p), ["state"]);
        // Killed once the copy was ready, before the live store moved: the swap is finished.
        store_with(&p.join("state.ready-8"), "new");
        assert_eq!(agent(&state), "new");
        assert_eq!(names(p), ["state"]);
        // Killed between the two renames: no `state`, the ready copy is moved in.
        std::fs::rename(&state, p.join("state.old-9")).unwrap();
        store_with(&p.join("state.ready-9"), "newer");
        assert_eq!(agent(&state), "newer");
        assert_eq!(names(p), ["state"]);
        // Killed after the swap, before the old store was removed.
        store_with(&p.join("state.old-10"), "stale");
        assert_eq!(agent(&state), "newer");
        assert_eq!(names(p), ["state"]);
    }

    /// A second process must not "recover" a compaction the live store is running.
    #[test]
    fn an_open_store_is_locked_against_a_second_opener() {
        let tmp = tempfile::tempdir().unwrap();
        let state = tmp.path().join("state");
        let s = Store::open(&state).unwrap();
        std::fs::create_dir(tmp.path().join("state.compact-1")).unwrap();
        let err = Store::open_for_salvage(&state).err().unwrap();
        assert!(
            err.to_string().contains("in use by another process"),
            "{err}"
        );
        assert!(tmp.path().join("state.compact-1").exists());
        drop(s);
        Store::open(&state).unwrap();
        assert!(!tmp.path().join("state.compact-1").exists());
    }

    #[test]
    fn the_automatic_trigger_wants_garbage_over_a_floor() {
        let p = CompactionPolicy {
            enabled: true,
            ratio: 4,
            min_size_bytes: 1000,
            interval: Duration::from_secs(1),
        };
        assert!(p.wants(5000, 1000));
        assert!(!p.wants(4000, 1000), "not over the ratio");
        assert!(!p.wants(900, 10), "under the floor");
        assert!(
            !CompactionPolicy {
                enabled: false,
                ..p
            }
            .wants(5000, 1)
        );
    }
}
