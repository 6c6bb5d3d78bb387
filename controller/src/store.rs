//! The controller's durable state, behind one small type so sled stays replaceable.
//!
//! sled 0.34 is the store the design card chose. Its weak spots (space amplification, reports
//! of corruption after abrupt stops) are contained here: values are JSON documents in named
//! trees, the schema version is checked on open, every state transition that must survive a
//! crash is followed by [`Store::flush`], and [`Store::export`] / [`Store::import`] move the
//! whole state to a fresh directory (JSON lines) when sled's files misbehave.
//!
//! Damage is found when the store opens, not later: every value carries a checksum (schema 2;
//! values written by schema 1 are migrated on open), and [`Store::open`] reads and checks every
//! value of every tree, refusing a damaged store with what to do about it. sled itself, when it
//! meets a damaged record in its log, silently drops it and everything after it; to notice,
//! every flush that made a new audit entry durable records that entry's number in a file next
//! to sled's (`certfleet.audit-seq`), and a store whose audit log ends before it is refused. [`Store::export`]
//! salvages what is readable from a damaged store and lists what is not. A store whose writes
//! fail (a full disk: sled keeps failing even after space is freed) is reported by
//! [`Store::failure`]; the server reports it on `/healthz` and `/readyz` and exits so that its
//! supervisor restarts it on a fresh handle.
//!
//! Heartbeats are *not* written here (no fsync per heartbeat): the registry keeps `last_seen`
//! in memory and persists it in batches, to `agent_seen` (id → Unix time), not into the agent
//! records: 10,000 heartbeat times every 30 s would rewrite 10,000 records (sled keeps the space
//! of rewritten values until it cleans their segments) and leave every cache of the records
//! stale.

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;

mod compact;
pub use compact::{
    CompactionPolicy, CompactionReport, CompactionStats, recover_interrupted_compaction,
};
pub mod backup;

/// Current on-disk schema. Bump with a migration in [`Store::open`].
///
/// - 1: values are JSON documents.
/// - 2: values are [`FRAME_MAGIC`], the first 8 bytes of the SHA-256 of the JSON, the JSON.
/// - 3: a plan is many small documents: its header in `plans` (or `dry_runs` for a dry run),
///   each step in `plan_steps` under [`plan_step_key`], and each dispatched step indexed in
///   `steps_in_flight` under [`in_flight_key`]; agents are indexed by name in `agent_names`.
///   A step result rewrites one step, not the whole plan (sled never gives back the space of
///   rewritten large values), and an agent connect reads its own in-flight entries only.
///   Added later without a bump (older certfleets ignore it and read the records' own, older
///   `last_seen`): `agent_seen`, each agent's persisted heartbeat time by id.
pub const SCHEMA_VERSION: u32 = 3;

/// First byte of a checksummed value (never the first byte of a JSON document).
const FRAME_MAGIC: u8 = 0x02;
/// Bytes of the SHA-256 kept as a value's checksum.
const CHECKSUM_LEN: usize = 8;

/// Wraps a JSON document with its checksum.
fn frame(json: &[u8]) -> Vec<u8> {
    let digest = ring::digest::digest(&ring::digest::SHA256, json);
    let mut out = Vec::with_capacity(1 + CHECKSUM_LEN + json.len());
    out.push(FRAME_MAGIC);
    out.extend_from_slice(&digest.as_ref()[..CHECKSUM_LEN]);
    out.extend_from_slice(json);
    out
}

/// The JSON inside a checksummed value, or why it is damaged.
fn unframe(v: &[u8]) -> Result<&[u8], String> {
    match v.split_first() {
        Some((&FRAME_MAGIC, rest)) if rest.len() >= CHECKSUM_LEN => {
            let (sum, json) = rest.split_at(CHECKSUM_LEN);
            let digest = ring::digest::digest(&ring::digest::SHA256, json);
            if &digest.as_ref()[..CHECKSUM_LEN] == sum {
                Ok(json)
            } else {
                Err("checksum mismatch (the value changed on disk)".into())
            }
        }
        Some((&FRAME_MAGIC, _)) => Err("truncated value".into()),
        Some(_) => Err("value without checksum".into()),
        None => Err("empty value".into()),
    }
}

const TREES: &[&str] = &[
    "meta",
    "agents",
    "tokens",
    "operators",
    "audit",
    "inventory",
    "plans",
    "policies",
    "revoked_certs",
    "dry_runs",
    "plan_steps",
    "steps_in_flight",
    "agent_names",
    "agent_seen",
];

/// Key of step number `index` (0-based, dispatch order) of plan `plan` in `plan_steps`: zero
/// padded so that key order is step order, and a plan's steps share the prefix `"<plan>/"`.
pub fn plan_step_key(plan: &str, index: usize) -> String {
    format!("{plan}/{index:08}")
}

/// Key of a dispatched step in `steps_in_flight` (value: the plan id): an agent's entries share
/// the prefix `"<agent>/"`.
pub fn in_flight_key(agent: &str, step_id: &str) -> String {
    format!("{agent}/{step_id}")
}

/// A store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// sled reported an error.
    #[error("state store {path}: {source}")]
    Sled {
        /// Store directory.
        path: PathBuf,
        /// sled's error.
        #[source]
        source: sled::Error,
    },
    /// A stored document did not decode.
    #[error("state store {path}: tree {tree}, key {key}: undecodable document: {reason}")]
    Corrupt {
        /// Store directory.
        path: PathBuf,
        /// Tree.
        tree: &'static str,
        /// Key.
        key: String,
        /// Decoder's reason.
        reason: String,
    },
    /// The store was written by a newer certfleet.
    #[error(
        "state store {path} has schema version {found}; this certfleet understands up to {SCHEMA_VERSION}"
    )]
    Schema {
        /// Store directory.
        path: PathBuf,
        /// Version found.
        found: u32,
    },
    /// Values failed their checksum or did not decode when the store was opened.
    #[error(
        "state store {path} is damaged: {} value(s) cannot be read ({}{}). Refusing to serve from it. \
         Stop the controller, salvage what is readable with `certfleet store export --data-dir DIR --out FILE` \
         (it lists what it skips), move {path} aside, then `certfleet store import --data-dir DIR --in FILE` \
         and start again",
        problems.len(),
        problems.iter().take(5).cloned().collect::<Vec<_>>().join("; "),
        if problems.len() > 5 { "; …" } else { "" }
    )]
    Damaged {
        /// Store directory.
        path: PathBuf,
        /// One line per unreadable value: tree, key, reason.
        problems: Vec<String>,
    },
    /// The store is closed: reopening it after a compaction's swap failed. The data is on
    /// disk; a restart opens it (and finishes or discards the compaction).
    #[error(
        "state store {path} is closed: reopening it after a compaction failed; restart the controller"
    )]
    Closed {
        /// Store directory.
        path: PathBuf,
    },
    /// A compaction failed; the live store was left as it was.
    #[error("compacting state store {path}: {reason}; the live store is unchanged")]
    Compaction {
        /// Store directory.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// A compaction was asked for while another one runs.
    #[error("state store {path}: a compaction is already running")]
    CompactionBusy {
        /// Store directory.
        path: PathBuf,
    },
    /// Import/export I/O.
    #[error("{what}: {source}")]
    Io {
        /// What was being read or written.
        what: String,
        /// OS error.
        #[source]
        source: std::io::Error,
    },
}

/// The controller's state.
#[derive(Clone)]
pub struct Store {
    /// The open sled database. Every access holds a read guard for its whole duration;
    /// [`Store::compact`] takes the write guard to pause everyone while it swaps directories
    /// (`None` only if reopening after a swap failed: every access then fails with
    /// [`StoreError::Closed`]).
    db: std::sync::Arc<parking_lot::RwLock<Option<sled::Db>>>,
    /// Bytes of keys and values held (what the store would take with no garbage), kept up to
    /// date by every write; counted on open by [`Store::verify`].
    live_bytes: std::sync::Arc<std::sync::atomic::AtomicI64>,
    /// Online compaction: keys written while it copies, its statistics.
    compaction: std::sync::Arc<compact::Compaction>,
    /// Held while the store is open (see [`compact::lock_store_dir`]).
    _dir_lock: std::sync::Arc<Option<nix::fcntl::Flock<std::fs::File>>>,
    path: PathBuf,
    append_lock: std::sync::Arc<std::sync::Mutex<()>>,
    /// The last write failure, until a write succeeds again.
    failure: std::sync::Arc<std::sync::Mutex<Option<String>>>,
    write_errors: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// The audit sequence number last recorded in [`AUDIT_MARK`].
    audit_mark: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// One writer of [`AUDIT_MARK`] at a time (it is rewritten in place).
    mark_lock: std::sync::Arc<std::sync::Mutex<()>>,
    /// See [`Store::bytes_written`].
    bytes_written: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// See [`Store::generation`].
    generations: std::sync::Arc<std::sync::Mutex<HashMap<&'static str, u64>>>,
}

/// File in the store directory holding the number of the newest audit entry known durable.
const AUDIT_MARK: &str = "certfleet.audit-seq";

/// Exit status of `certfleet store export` when it had to skip unreadable values: the export
/// file holds everything else (a partial salvage), and the skipped values are listed on
/// stderr. Distinct from 1 (nothing usable written: the export failed), 2 (usage) and the
/// other codes of `certfleet --help`.
pub const PARTIAL_EXPORT_EXIT: u8 = 6;

/// `certfleet store export` wrote what it could but skipped unreadable values (exit status
/// [`PARTIAL_EXPORT_EXIT`]).
#[derive(Debug, thiserror::Error)]
#[error(
    "partial export: {skipped} unreadable value(s) skipped (listed above); {out} holds the {written} \
     readable document(s)"
)]
pub struct PartialExport {
    /// The export file.
    pub out: PathBuf,
    /// Documents written.
    pub written: usize,
    /// Values skipped.
    pub skipped: usize,
}

/// A document's stored bytes, as read by [`Store::get_for_swap`].
#[derive(Clone, Debug)]
pub struct Stored(Vec<u8>);

/// What [`Store::export`] wrote and what it had to skip.
#[derive(Debug, Default)]
pub struct ExportSummary {
    /// Documents written.
    pub written: usize,
    /// Unreadable values, one line each (tree, key, reason).
    pub skipped: Vec<String>,
}

impl Store {
    /// Opens (or creates) the store in `dir`: checks the schema version, migrates older
    /// schemas, and reads every value of every tree, refusing a damaged store
    /// ([`StoreError::Damaged`]).
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let store = Self::open_unchecked(dir)?;
        store.migrate()?;
        let mut problems = store.verify();
        let last = store.last_audit_seq()?;
        let mark = store.audit_mark.load(std::sync::atomic::Ordering::SeqCst);
        if last < mark {
            problems.push(format!(
                "the audit log ends at entry {last} but entry {mark} was made durable: sled dropped its newest writes (a damaged record in its log)"
            ));
        }
        if !problems.is_empty() {
            return Err(StoreError::Damaged {
                path: dir.to_path_buf(),
                problems,
            });
        }
        Ok(store)
    }

    /// Creates the store in `dir` (which must not hold one) from an export of a store at
    /// `schema_version` ([`Store::export`] or [`Store::snapshot`] lines), then opens it as the
    /// controller does: an older schema is migrated, every value verified. Returns the open
    /// store and the number of documents imported. Used by `certfleet restore`, which builds
    /// the directory aside and renames it into place (so a failure here leaves nothing).
    pub fn import_fresh(
        dir: &Path,
        schema_version: u32,
        input: &mut dyn BufRead,
    ) -> Result<(Self, usize), StoreError> {
        if schema_version > SCHEMA_VERSION {
            return Err(StoreError::Schema {
                path: dir.to_path_buf(),
                found: schema_version,
            });
        }
        let n = {
            let s = Self::open_unchecked(dir)?;
            if s.schema_version()?.is_some() {
                return Err(StoreError::Io {
                    what: format!("importing into {}", dir.display()),
                    source: std::io::Error::new(
                        std::io::ErrorKind::AlreadyExists,
                        "a store is already there",
                    ),
                });
            }
            // The export's schema, so that opening migrates what it holds.
            s.put("meta", "schema_version", &schema_version)?;
            s.import(input)?
        };
        Ok((Self::open(dir)?, n))
    }

    /// The store's directory (`DATA_DIR/state`).
    pub fn dir(&self) -> &Path {
        &self.path
    }

    /// Opens the store without migrating or verifying it, for salvage ([`Store::export`]).
    pub fn open_for_salvage(dir: &Path) -> Result<Self, StoreError> {
        if !dir.exists() {
            return Err(StoreError::Io {
                what: format!("state store {}", dir.display()),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such directory"),
            });
        }
        Self::open_unchecked(dir)
    }

    fn open_unchecked(dir: &Path) -> Result<Self, StoreError> {
        let dir_lock = compact::lock_store_dir(dir)?;
        compact::recover_locked(dir)?;
        let db = open_sled(dir)?;
        Ok(Store {
            db: std::sync::Arc::new(parking_lot::RwLock::new(Some(db))),
            _dir_lock: std::sync::Arc::new(dir_lock),
            live_bytes: Default::default(),
            compaction: Default::default(),
            path: dir.to_path_buf(),
            append_lock: Default::default(),
            failure: Default::default(),
            write_errors: Default::default(),
            bytes_written: Default::default(),
            generations: Default::default(),
            // Read before anything is flushed, so that a lower number never overwrites it.
            audit_mark: std::sync::Arc::new(std::sync::atomic::AtomicU64::new(
                recorded_audit_mark(dir),
            )),
            mark_lock: Default::default(),
        })
    }

    /// Number of the newest audit entry (0: none).
    fn last_audit_seq(&self) -> Result<u64, StoreError> {
        Ok(self
            .tree("audit")?
            .last()
            .map_err(self.sled_err())?
            .and_then(|(k, _)| <[u8; 8]>::try_from(k.as_ref()).ok())
            .map(u64::from_be_bytes)
            .unwrap_or(0))
    }

    /// After a successful flush: records the newest durable audit entry, if it moved.
    fn record_audit_mark(&self) -> Result<(), StoreError> {
        use std::sync::atomic::Ordering::SeqCst;
        let last = self.last_audit_seq()?;
        if last <= self.audit_mark.load(SeqCst) {
            return Ok(());
        }
        let _one = self.mark_lock.lock().unwrap_or_else(|p| p.into_inner());
        // A flush that ran meanwhile may have recorded a later entry: the mark never goes back.
        if last <= self.audit_mark.load(SeqCst) {
            return Ok(());
        }
        write_audit_mark(&self.path, last)?;
        self.audit_mark.fetch_max(last, SeqCst);
        Ok(())
    }

    /// The stored schema version; schema 1 stored it without a checksum.
    fn schema_version(&self) -> Result<Option<u32>, StoreError> {
        let Some(v) = self
            .tree("meta")?
            .get("schema_version")
            .map_err(self.sled_err())?
        else {
            return Ok(None);
        };
        let json = unframe(&v).unwrap_or(&v);
        serde_json::from_slice(json)
            .map(Some)
            .map_err(|e| StoreError::Corrupt {
                path: self.path.clone(),
                tree: "meta",
                key: "schema_version".into(),
                reason: e.to_string(),
            })
    }

    /// Brings an older store to [`SCHEMA_VERSION`]; a new store gets it written.
    fn migrate(&self) -> Result<(), StoreError> {
        match self.schema_version()? {
            None if self
                .tree_names()
                .iter()
                .all(|t| self.open_tree(t).map(|t| t.is_empty()).unwrap_or(false)) =>
            {
                self.put("meta", "schema_version", &SCHEMA_VERSION)?;
                self.flush()?;
            }
            None => {
                return Err(StoreError::Corrupt {
                    path: self.path.clone(),
                    tree: "meta",
                    key: "schema_version".into(),
                    reason: "missing, although the store holds data".into(),
                });
            }
            Some(v) if v > SCHEMA_VERSION => {
                return Err(StoreError::Schema {
                    path: self.path.clone(),
                    found: v,
                });
            }
            Some(mut v) => {
                if v == 1 {
                    self.migrate_1_to_2()?;
                    v = 2;
                }
                if v == 2 {
                    self.migrate_2_to_3()?;
                }
            }
        }
        Ok(())
    }

    /// Schema 1 → 2: every value gets its checksum. Values that are not JSON are left as they
    /// are, so that verification reports them.
    fn migrate_1_to_2(&self) -> Result<(), StoreError> {
        let mut n = 0usize;
        for name in self.tree_names() {
            let t = self.open_tree(&name)?;
            for kv in t.iter() {
                let (k, v) = kv.map_err(self.sled_err())?;
                if v.first() != Some(&FRAME_MAGIC)
                    && serde_json::from_slice::<serde_json::Value>(&v).is_ok()
                {
                    t.insert(k, frame(&v)).map_err(self.sled_err())?;
                    n += 1;
                }
            }
        }
        self.put("meta", "schema_version", &2u32)?;
        self.flush()?;
        tracing::info!(store = %self.path.display(), values = n, "state store migrated from schema 1 to 2 (checksums)");
        Ok(())
    }

    /// Schema 2 → 3: each plan document is split into its header and one document per step
    /// (dry runs move to `dry_runs`), dispatched steps are indexed by agent, agents by name.
    /// Idempotent: a migration interrupted by a crash runs again from the start (the schema
    /// version is written last), and a plan already split has no `steps` left to move.
    fn migrate_2_to_3(&self) -> Result<(), StoreError> {
        let plans = self.tree("plans")?;
        let mut moved = 0usize;
        for kv in plans.iter() {
            let (k, v) = kv.map_err(self.sled_err())?;
            let mut doc: serde_json::Value = self.decode("plans", &k, &v)?;
            let id = doc["id"].as_str().unwrap_or_default().to_owned();
            let steps = match doc.get_mut("steps").map(serde_json::Value::take) {
                Some(serde_json::Value::Array(steps)) => steps,
                _ => Vec::new(),
            };
            if let Some(m) = doc.as_object_mut() {
                m.remove("steps");
            }
            for (i, step) in steps.iter().enumerate() {
                self.put("plan_steps", &plan_step_key(&id, i), step)?;
                if step["state"] == "dispatched" {
                    let agent = step["agent_id"].as_str().unwrap_or_default();
                    let sid = step["id"].as_str().unwrap_or_default();
                    self.put("steps_in_flight", &in_flight_key(agent, sid), &id)?;
                }
            }
            let key = String::from_utf8_lossy(&k).into_owned();
            if doc["state"] == "dry_run" {
                self.put("dry_runs", &key, &doc)?;
                self.remove("plans", &key)?;
            } else {
                self.put("plans", &key, &doc)?;
            }
            moved += steps.len();
        }
        for kv in self.tree("agents")?.iter() {
            let (k, v) = kv.map_err(self.sled_err())?;
            let doc: serde_json::Value = self.decode("agents", &k, &v)?;
            if let (Some(name), Some(id)) = (doc["name"].as_str(), doc["id"].as_str()) {
                // A revoked agent's name is free again; an active one wins over it.
                let keep = match self.get::<String>("agent_names", name)? {
                    Some(other) if other != id => doc["state"] == "revoked",
                    _ => false,
                };
                if !keep {
                    self.put("agent_names", name, &id)?;
                }
            }
        }
        self.put("meta", "schema_version", &3u32)?;
        self.flush()?;
        tracing::info!(store = %self.path.display(), steps = moved, "state store migrated from schema 2 to 3 (plans as one document per step)");
        Ok(())
    }

    /// Names of the trees that hold data (sled's default tree excluded).
    fn tree_names(&self) -> Vec<String> {
        let Ok(db) = self.db() else {
            return Vec::new();
        };
        db.tree_names()
            .into_iter()
            .filter(|n| n.as_ref() != b"__sled__default")
            .map(|n| String::from_utf8_lossy(&n).into_owned())
            .collect()
    }

    /// Reads every value of every tree; one line per value that cannot be read. Also counts
    /// the live bytes ([`Store::live_bytes`]).
    pub fn verify(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let mut live = 0usize;
        for name in self.tree_names() {
            let t = match self.open_tree(&name) {
                Ok(t) => t,
                Err(e) => {
                    problems.push(format!("tree {name}: {e}"));
                    continue;
                }
            };
            for kv in t.iter() {
                match kv {
                    Ok((k, v)) => {
                        live += k.len() + v.len();
                        if let Err(reason) = unframe(&v).and_then(|json| {
                            serde_json::from_slice::<serde_json::Value>(json)
                                .map(|_| ())
                                .map_err(|e| format!("undecodable document: {e}"))
                        }) {
                            problems.push(format!("tree {name}, key {}: {reason}", show_key(&k)));
                        }
                    }
                    Err(e) => problems.push(format!("tree {name}: {e}")),
                }
            }
        }
        self.live_bytes.store(
            i64::try_from(live).unwrap_or(i64::MAX),
            std::sync::atomic::Ordering::Relaxed,
        );
        problems
    }

    /// The store's last write failure, until [`Store::clear_failure`] (`None` when healthy).
    pub fn failure(&self) -> Option<String> {
        self.failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Write errors since the process started.
    pub fn write_errors(&self) -> u64 {
        self.write_errors.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Writes and flushes a probe value: the health check of a store that might have failed.
    pub fn probe(&self) -> Result<(), StoreError> {
        self.put("meta", "probe", &certfleet_common::model::now())?;
        self.flush()
    }

    /// Forgets the recorded failure: called by the server's watchdog once a whole probe
    /// interval passed without a write error (one small write succeeding proves little: on a
    /// full disk sled still fits small writes into space it already holds).
    pub fn clear_failure(&self) {
        *self.failure.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Records a failed write, so that a failing store is reported until cleared.
    fn written<T>(&self, r: Result<T, StoreError>) -> Result<T, StoreError> {
        let mut failure = self.failure.lock().unwrap_or_else(|p| p.into_inner());
        match &r {
            Ok(_) => {}
            Err(e) => {
                self.write_errors
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if failure.is_none() {
                    tracing::error!(store = %self.path.display(), error = %e, "state store write failed");
                }
                *failure = Some(e.to_string());
            }
        }
        r
    }

    fn sled_err(&self) -> impl Fn(sled::Error) -> StoreError + '_ {
        |source| StoreError::Sled {
            path: self.path.clone(),
            source,
        }
    }

    /// The open database, held (see [`Store::db`]'s field doc) until the guard drops.
    fn db(&self) -> Result<DbGuard<'_>, StoreError> {
        parking_lot::RwLockReadGuard::try_map(self.db.read_recursive(), Option::as_ref).map_err(
            |_| StoreError::Closed {
                path: self.path.clone(),
            },
        )
    }

    /// A tree by name, with the database held while it is used.
    fn open_tree(&self, name: &str) -> Result<HeldTree<'_>, StoreError> {
        let db = self.db()?;
        let tree = db.open_tree(name).map_err(self.sled_err())?;
        Ok(HeldTree { tree, _db: db })
    }

    fn tree(&self, name: &'static str) -> Result<HeldTree<'_>, StoreError> {
        self.open_tree(name)
    }

    /// Books a write done to `tree` that replaced `old` by `new` under a key of `key_len`
    /// bytes: keeps [`Store::live_bytes`] current and counts the write for
    /// [`Store::generation`] (after it happened). Every write path calls it once it succeeded.
    fn account(&self, tree: &'static str, key_len: usize, old: Option<usize>, new: Option<usize>) {
        let size = |v: Option<usize>| v.map_or(0, |n| (n + key_len) as i64);
        self.live_bytes
            .fetch_add(size(new) - size(old), std::sync::atomic::Ordering::Relaxed);
        *self
            .generations
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(tree)
            .or_default() += 1;
    }

    /// How many writes `tree` has had since the store was opened. A cache of a tree's documents
    /// reads this *before* reading the tree and is current while it is unchanged (a write is
    /// counted once it is done, so one racing the read makes the next look read again).
    pub fn generation(&self, tree: &'static str) -> u64 {
        self.generations
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(tree)
            .copied()
            .unwrap_or(0)
    }

    /// Bytes of keys and values the store holds: what it would take on disk without garbage.
    pub fn live_bytes(&self) -> u64 {
        u64::try_from(self.live_bytes.load(std::sync::atomic::Ordering::Relaxed)).unwrap_or(0)
    }

    fn decode<T: DeserializeOwned>(
        &self,
        tree: &'static str,
        key: &[u8],
        v: &[u8],
    ) -> Result<T, StoreError> {
        let corrupt = |reason: String| StoreError::Corrupt {
            path: self.path.clone(),
            tree,
            key: show_key(key),
            reason,
        };
        let json = unframe(v).map_err(corrupt)?;
        serde_json::from_slice(json).map_err(|e| corrupt(format!("undecodable document: {e}")))
    }

    /// Reads one document.
    pub fn get<T: DeserializeOwned>(
        &self,
        tree: &'static str,
        key: &str,
    ) -> Result<Option<T>, StoreError> {
        match self.tree(tree)?.get(key).map_err(self.sled_err())? {
            Some(v) => Ok(Some(self.decode(tree, key.as_bytes(), &v)?)),
            None => Ok(None),
        }
    }

    /// Writes one document (not yet durable: call [`Store::flush`] for transitions that must
    /// survive a crash).
    pub fn put<T: Serialize>(
        &self,
        tree: &'static str,
        key: &str,
        value: &T,
    ) -> Result<(), StoreError> {
        let bytes = frame(&serde_json::to_vec(value).expect("state documents serialize"));
        self.bytes_written
            .fetch_add(bytes.len() as u64, std::sync::atomic::Ordering::Relaxed);
        let len = bytes.len();
        let r = self.tree(tree).and_then(|t| {
            self.compaction.note(tree, key.as_bytes());
            t.insert(key, bytes).map_err(self.sled_err())
        });
        let old = self.written(r)?;
        self.account(tree, key.len(), old.map(|o| o.len()), Some(len));
        Ok(())
    }

    /// Removes one document.
    pub fn remove(&self, tree: &'static str, key: &str) -> Result<(), StoreError> {
        let r = self.tree(tree).and_then(|t| {
            self.compaction.note(tree, key.as_bytes());
            t.remove(key).map_err(self.sled_err())
        });
        let old = self.written(r)?;
        self.account(tree, key.len(), old.map(|o| o.len()), None);
        Ok(())
    }

    /// Atomically replaces `key` if it still holds `expected` (single-use tokens).
    pub fn compare_and_swap<T: Serialize>(
        &self,
        tree: &'static str,
        key: &str,
        expected: &T,
        new: &T,
    ) -> Result<bool, StoreError> {
        let old = frame(&serde_json::to_vec(expected).expect("serialize"));
        let new = frame(&serde_json::to_vec(new).expect("serialize"));
        let (old_len, new_len) = (old.len(), new.len());
        let r = self.tree(tree).and_then(|t| {
            self.compaction.note(tree, key.as_bytes());
            t.compare_and_swap(key, Some(old), Some(new))
                .map_err(self.sled_err())
        });
        let swapped = self.written(r)?.is_ok();
        if swapped {
            self.account(tree, key.len(), Some(old_len), Some(new_len));
        }
        Ok(swapped)
    }

    /// Reads a document with what [`Store::swap`] needs to replace it only if it is unchanged
    /// (its stored bytes: a document written by an older certfleet, without fields added since,
    /// still swaps).
    pub fn get_for_swap<T: DeserializeOwned>(
        &self,
        tree: &'static str,
        key: &str,
    ) -> Result<Option<(T, Stored)>, StoreError> {
        match self.tree(tree)?.get(key).map_err(self.sled_err())? {
            Some(v) => Ok(Some((
                self.decode(tree, key.as_bytes(), &v)?,
                Stored(v.to_vec()),
            ))),
            None => Ok(None),
        }
    }

    /// Atomically replaces `key` with `new` if it still holds what [`Store::get_for_swap`] read;
    /// false when another writer got there first.
    pub fn swap<T: Serialize>(
        &self,
        tree: &'static str,
        key: &str,
        read: &Stored,
        new: &T,
    ) -> Result<bool, StoreError> {
        let new = frame(&serde_json::to_vec(new).expect("serialize"));
        let new_len = new.len();
        let r = self.tree(tree).and_then(|t| {
            self.compaction.note(tree, key.as_bytes());
            t.compare_and_swap(key, Some(read.0.as_slice()), Some(new))
                .map_err(self.sled_err())
        });
        let swapped = self.written(r)?.is_ok();
        if swapped {
            self.account(tree, key.len(), Some(read.0.len()), Some(new_len));
        }
        Ok(swapped)
    }

    /// Every document of a tree, in key order.
    pub fn list<T: DeserializeOwned>(&self, tree: &'static str) -> Result<Vec<T>, StoreError> {
        let t = self.tree(tree)?;
        let mut out = Vec::new();
        for kv in t.iter() {
            let (k, v) = kv.map_err(self.sled_err())?;
            out.push(self.decode(tree, &k, &v)?);
        }
        Ok(out)
    }

    /// Every `(key, document)` of a tree whose key starts with `prefix`, in key order.
    pub fn scan_prefix<T: DeserializeOwned>(
        &self,
        tree: &'static str,
        prefix: &str,
    ) -> Result<Vec<(String, T)>, StoreError> {
        let t = self.tree(tree)?;
        let mut out = Vec::new();
        for kv in t.scan_prefix(prefix) {
            let (k, v) = kv.map_err(self.sled_err())?;
            let doc = self.decode(tree, &k, &v)?;
            out.push((String::from_utf8_lossy(&k).into_owned(), doc));
        }
        Ok(out)
    }

    /// Removes every document of a tree whose key starts with `prefix`; returns how many.
    pub fn remove_prefix(&self, tree: &'static str, prefix: &str) -> Result<usize, StoreError> {
        let t = self.tree(tree)?;
        let mut n = 0;
        for k in t.scan_prefix(prefix).keys() {
            let k = k.map_err(self.sled_err())?;
            self.compaction.note(tree, &k);
            let r = t.remove(&k).map_err(self.sled_err());
            let old = self.written(r)?;
            self.account(tree, k.len(), old.map(|o| o.len()), None);
            n += 1;
        }
        Ok(n)
    }

    /// Bytes of documents written since the store was opened (framing included): what a
    /// transition costs, for tests and the load generator.
    pub fn bytes_written(&self) -> u64 {
        self.bytes_written
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Appends to an append-only tree (audit); returns the sequence number.
    pub fn append<T: Serialize>(
        &self,
        tree: &'static str,
        make: impl FnOnce(u64) -> T,
    ) -> Result<u64, StoreError> {
        // Dense sequence numbers (sled's generate_id jumps after a restart); appends are rare,
        // so one lock is enough.
        let _guard = self.append_lock.lock().unwrap_or_else(|p| p.into_inner());
        let t = self.tree(tree)?;
        let last = t.last().map_err(self.sled_err())?;
        let seq = last
            .and_then(|(k, _)| <[u8; 8]>::try_from(k.as_ref()).ok())
            .map(u64::from_be_bytes)
            .unwrap_or(0)
            + 1;
        let bytes = frame(&serde_json::to_vec(&make(seq)).expect("serialize"));
        let len = bytes.len();
        self.compaction.note(tree, &seq.to_be_bytes());
        let r = t.insert(seq.to_be_bytes(), bytes).map_err(self.sled_err());
        let old = self.written(r)?;
        self.account(tree, 8, old.map(|o| o.len()), Some(len));
        Ok(seq)
    }

    /// The last `limit` entries of an append-only tree, oldest first.
    pub fn tail<T: DeserializeOwned>(
        &self,
        tree: &'static str,
        limit: usize,
    ) -> Result<Vec<T>, StoreError> {
        let t = self.tree(tree)?;
        let mut out = Vec::new();
        for kv in t.iter().rev().take(limit) {
            let (k, v) = kv.map_err(self.sled_err())?;
            out.push(self.decode(tree, &k, &v)?);
        }
        out.reverse();
        Ok(out)
    }

    /// Makes everything written so far durable.
    pub fn flush(&self) -> Result<(), StoreError> {
        let r = self
            .db()
            .and_then(|db| db.flush().map_err(self.sled_err()))
            .and_then(|_| self.record_audit_mark());
        self.written(r).map(|_| ())
    }

    /// Bytes used on disk (exported as a metric: sled amplifies space).
    pub fn size_on_disk(&self) -> u64 {
        self.db()
            .ok()
            .and_then(|db| db.size_on_disk().ok())
            .unwrap_or(0)
    }

    /// Writes every tree as JSON lines `{"tree":…,"key":…(hex),"value":…}`. Values that cannot
    /// be read (checksum, decoding, sled errors) are skipped and listed in the summary, so a
    /// damaged store gives up what is still readable.
    pub fn export(&self, out: &mut dyn Write) -> Result<ExportSummary, StoreError> {
        let io = |source| StoreError::Io {
            what: "writing export".into(),
            source,
        };
        let mut summary = ExportSummary::default();
        for name in self.tree_names() {
            let t = match self.open_tree(&name) {
                Ok(t) => t,
                Err(e) => {
                    summary.skipped.push(format!("tree {name}: {e}"));
                    continue;
                }
            };
            for kv in t.iter() {
                let (k, v) = match kv {
                    Ok(kv) => kv,
                    Err(e) => {
                        summary.skipped.push(format!("tree {name}: {e}"));
                        continue;
                    }
                };
                // A schema-1 store (not yet migrated) holds bare JSON.
                let json = match unframe(&v) {
                    Ok(j) => j,
                    Err(_) if v.first() != Some(&FRAME_MAGIC) && name == "meta" => &v[..],
                    Err(reason) => {
                        summary
                            .skipped
                            .push(format!("tree {name}, key {}: {reason}", show_key(&k)));
                        continue;
                    }
                };
                let value: serde_json::Value = match serde_json::from_slice(json) {
                    Ok(v) => v,
                    Err(e) => {
                        summary.skipped.push(format!(
                            "tree {name}, key {}: undecodable document: {e}",
                            show_key(&k)
                        ));
                        continue;
                    }
                };
                let line =
                    serde_json::json!({"tree": name, "key": hex::encode(&k), "value": value});
                writeln!(out, "{line}").map_err(io)?;
                summary.written += 1;
            }
        }
        out.flush().map_err(io)?;
        Ok(summary)
    }

    /// Loads an export into this (fresh) store, then flushes.
    pub fn import(&self, input: &mut dyn BufRead) -> Result<usize, StoreError> {
        let mut n = 0;
        for (i, line) in input.lines().enumerate() {
            let line = line.map_err(|source| StoreError::Io {
                what: format!("reading import line {}", i + 1),
                source,
            })?;
            if line.trim().is_empty() {
                continue;
            }
            let bad = |reason: String| StoreError::Corrupt {
                path: self.path.clone(),
                tree: "import",
                key: format!("line {}", i + 1),
                reason,
            };
            let doc: serde_json::Value =
                serde_json::from_str(&line).map_err(|e| bad(e.to_string()))?;
            let tree = doc["tree"].as_str().ok_or_else(|| bad("no tree".into()))?;
            let tree = TREES
                .iter()
                .find(|t| **t == tree)
                .ok_or_else(|| bad(format!("unknown tree {tree}")))?;
            let key =
                hex::decode(doc["key"].as_str().unwrap_or("")).map_err(|e| bad(e.to_string()))?;
            if *tree == "meta" && key == b"schema_version" {
                // This store's own schema stays: values are written in its format.
                continue;
            }
            let value = frame(&serde_json::to_vec(&doc["value"]).expect("serialize"));
            let len = value.len();
            let r = self.tree(tree).and_then(|t| {
                self.compaction.note(tree, &key);
                t.insert(key.as_slice(), value).map_err(self.sled_err())
            });
            let old = self.written(r)?;
            self.account(tree, key.len(), old.map(|o| o.len()), Some(len));
            n += 1;
        }
        self.flush()?;
        Ok(n)
    }
}

/// The open database, read-locked (see [`Store`]'s `db` field).
type DbGuard<'a> = parking_lot::MappedRwLockReadGuard<'a, sled::Db>;

/// A tree and the read guard that keeps its database from being swapped while it is used.
struct HeldTree<'a> {
    tree: sled::Tree,
    _db: DbGuard<'a>,
}

impl std::ops::Deref for HeldTree<'_> {
    type Target = sled::Tree;
    fn deref(&self) -> &sled::Tree {
        &self.tree
    }
}

/// sled's page cache. Its default is 1 GiB, and it fills: at 10,000 agents it held most of the
/// store in the controller's heap (RSS past 1 GiB). The hot reads are answered elsewhere (the
/// inventory index, the engine's plans); what sled reads past its cache comes from the kernel's
/// page cache, which is not the controller's RSS.
pub(crate) const SLED_CACHE_BYTES: u64 = 32 << 20;

/// How long [`open_sled`] waits for sled's own file lock (see [`open_sled_waiting`]). Bounded:
/// a compaction holds every store access while it reopens.
const SLED_LOCK_WAIT: Duration = Duration::from_secs(10);

/// Opens sled in `dir` the way the controller always does.
fn open_sled(dir: &Path) -> Result<sled::Db, StoreError> {
    open_sled_waiting(dir, SLED_LOCK_WAIT)
}

/// Opens sled at `dir`, waiting up to `wait` for sled's lock on `dir/db`.
///
/// Every caller holds the store directory's own lock ([`compact::lock_store_dir`]), so no other
/// process can hold sled's: a held lock here is the previous handle of this process, whose
/// background threads drop their copy of the locked file some milliseconds after the last `Db`
/// is dropped (sled 0.34 does not join them: spacejam/sled#1234, #1289). A compaction reopens
/// right after the swap and once failed on this under CI load. sled reports the lock as
/// `ErrorKind::Other` with the errno only in its text, so the lock is probed with the same
/// `flock` sled takes (fs2 on Linux) rather than by matching that text. Any other error, and a
/// lock still held after `wait`, is returned as is.
fn open_sled_waiting(dir: &Path, wait: Duration) -> Result<sled::Db, StoreError> {
    let config = sled::Config::new()
        .path(dir)
        .cache_capacity(SLED_CACHE_BYTES)
        .mode(sled::Mode::LowSpace)
        .flush_every_ms(Some(500));
    let deadline = Instant::now() + wait;
    let mut pause = Duration::from_millis(5);
    loop {
        let err = match sled_lock_held(dir) {
            true => None,
            false => match config.open() {
                Ok(db) => return Ok(db),
                // Taken between the probe and the open: probe again.
                Err(e) if sled_lock_held(dir) => Some(e),
                Err(source) => {
                    return Err(StoreError::Sled {
                        path: dir.to_path_buf(),
                        source,
                    });
                }
            },
        };
        let now = Instant::now();
        if now >= deadline {
            let source = err.unwrap_or_else(|| {
                sled::Error::Io(std::io::Error::new(
                    std::io::ErrorKind::WouldBlock,
                    format!(
                        "{} is still locked after {} s (another handle of this store?)",
                        dir.join("db").display(),
                        wait.as_secs()
                    ),
                ))
            });
            return Err(StoreError::Sled {
                path: dir.to_path_buf(),
                source,
            });
        }
        std::thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

/// Whether something holds sled's exclusive `flock` on `dir/db` now (false when there is no
/// such file yet, or it cannot be opened: [`sled::Config::open`] then says why).
fn sled_lock_held(dir: &Path) -> bool {
    let Ok(file) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(dir.join("db"))
    else {
        return false;
    };
    match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(_unlocked_on_drop) => false,
        Err((_, errno)) => errno == nix::errno::Errno::EWOULDBLOCK,
    }
}

/// The text of [`AUDIT_MARK`] for entry `seq`: the number, zero-padded to a fixed width, and
/// the first 4 bytes of its SHA-256 in hex. Always 30 bytes: rewritten in place, the file keeps
/// its length, so one `fdatasync` makes it durable.
pub(crate) fn audit_mark_text(seq: u64) -> String {
    let number = format!("{seq:020}");
    let digest = ring::digest::digest(&ring::digest::SHA256, number.as_bytes());
    format!("{number} {}\n", hex::encode(&digest.as_ref()[..4]))
}

/// Records `seq` in `dir`'s [`AUDIT_MARK`]. Every flush that made a new audit entry durable
/// does, so it is on the path of every step dispatched and every result: rewritten in place with
/// one `fdatasync`, where an atomic replacement (a temporary file, its fsync, a rename, the
/// directory's fsync) was 20 % of the controller's time in a 1,000-agent plan (issue 10). A
/// crash in the middle of the write leaves the old number, the new one, or (on a device that
/// tears a 30-byte write) text whose checksum fails, which reads as no mark: never as a later
/// entry than was made durable. The first mark (or one of the older, shorter format) is
/// written atomically.
fn write_audit_mark(dir: &Path, seq: u64) -> Result<(), StoreError> {
    use std::os::unix::fs::FileExt as _;
    let path = dir.join(AUDIT_MARK);
    let text = audit_mark_text(seq);
    let io = |source| StoreError::Io {
        what: format!("writing {}", path.display()),
        source,
    };
    match std::fs::OpenOptions::new().write(true).open(&path) {
        Ok(f) if f.metadata().map_err(io)?.len() == text.len() as u64 => {
            f.write_all_at(text.as_bytes(), 0).map_err(io)?;
            f.sync_data().map_err(io)
        }
        Ok(_) => replace_audit_mark(&path, &text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => replace_audit_mark(&path, &text),
        Err(e) => Err(io(e)),
    }
}

/// Writes [`AUDIT_MARK`] whole, atomically (a new mark file, or one of the older format).
fn replace_audit_mark(path: &Path, text: &str) -> Result<(), StoreError> {
    certfleet_common::atomic::write_file(path, text.as_bytes(), certfleet_common::atomic::PUBLIC)
        .map_err(|e| StoreError::Io {
            what: format!("writing {}", path.display()),
            source: std::io::Error::other(e.to_string()),
        })
}

/// What [`AUDIT_MARK`] in `dir` says (0 when absent or unreadable: an older store, or a write
/// torn by a crash). Reads both the checksummed form and the bare number older versions wrote.
fn recorded_audit_mark(dir: &Path) -> u64 {
    let Ok(text) = std::fs::read_to_string(dir.join(AUDIT_MARK)) else {
        return 0;
    };
    let mut words = text.split_whitespace();
    let (Some(number), check) = (words.next(), words.next()) else {
        return 0;
    };
    let Ok(seq) = number.parse::<u64>() else {
        return 0;
    };
    match check {
        // The older form: written atomically, whole or not at all.
        None => seq,
        Some(_) if audit_mark_text(seq) == text => seq,
        Some(_) => {
            tracing::warn!(path = %dir.join(AUDIT_MARK).display(), "audit mark unreadable (a write torn by a crash?): not checked at this start");
            0
        }
    }
}

/// A key as shown in messages: text when it is text, else hex (audit sequence numbers).
fn show_key(k: &[u8]) -> String {
    match std::str::from_utf8(k) {
        Ok(s) if !s.chars().any(char::is_control) => s.to_owned(),
        _ => format!("0x{}", hex::encode(k)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// sled's lock lingers after the last handle of this process is dropped
    /// (spacejam/sled#1289); a compaction's reopen once failed on it under CI load. The open
    /// waits for it, and names the file when it is held past the wait.
    #[test]
    fn an_open_waits_for_the_sled_lock_a_dropped_handle_still_holds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        let lingering = sled::Config::new()
            .path(&path)
            .flush_every_ms(None)
            .open()
            .unwrap();
        assert!(sled_lock_held(&path));
        let release = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            drop(lingering);
        });
        let db = open_sled_waiting(&path, Duration::from_secs(20)).unwrap();
        release.join().unwrap();
        drop(db);

        let holder = sled::Config::new()
            .path(&path)
            .flush_every_ms(None)
            .open()
            .unwrap();
        let err = open_sled_waiting(&path, Duration::from_millis(300))
            .unwrap_err()
            .to_string();
        assert!(err.contains("still locked after"), "{err}");
        assert!(
            err.contains(&path.join("db").display().to_string()),
            "{err}"
        );
        drop(holder);
        // Any other failure is not waited on: a file where the directory should be.
        let file = dir.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        let started = Instant::now();
        assert!(open_sled_waiting(&file, Duration::from_secs(20)).is_err());
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn survives_reopen_and_round_trips_through_export() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(&dir.path().join("a")).unwrap();
            s.put("agents", "a1", &serde_json::json!({"name": "vc1"}))
                .unwrap();
            s.append("audit", |seq| serde_json::json!({"seq": seq}))
                .unwrap();
            s.flush().unwrap();
        }
        let s = Store::open(&dir.path().join("a")).unwrap();
        let v: serde_json::Value = s.get("agents", "a1").unwrap().unwrap();
        assert_eq!(v["name"], "vc1");
        let mut buf = Vec::new();
        let summary = s.export(&mut buf).unwrap();
        assert_eq!(summary.written, 3); // schema version, agent, audit entry
        assert!(summary.skipped.is_empty());
        let t = Store::open(&dir.path().join("b")).unwrap();
        t.import(&mut buf.as_slice()).unwrap();
        let v: serde_json::Value = t.get("agents", "a1").unwrap().unwrap();
        assert_eq!(v["name"], "vc1");
        assert_eq!(t.tail::<serde_json::Value>("audit", 10).unwrap().len(), 1);
    }

    #[test]
    fn compare_and_swap_allows_one_winner() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        s.put("tokens", "t", &"active").unwrap();
        assert!(
            s.compare_and_swap("tokens", "t", &"active", &"used")
                .unwrap()
        );
        assert!(
            !s.compare_and_swap("tokens", "t", &"active", &"used")
                .unwrap()
        );
    }

    /// Writes `value` under `key` bypassing the checksum, as bit rot or a schema-1 store would.
    fn raw_insert(s: &Store, tree: &str, key: &[u8], value: &[u8]) {
        let db = s.db().unwrap();
        db.open_tree(tree).unwrap().insert(key, value).unwrap();
        db.flush().unwrap();
    }

    /// What caches of a tree rely on: every kind of write to it is counted, and only to it.
    #[test]
    fn writes_are_counted_per_tree() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let g = |t| s.generation(t);
        assert_eq!((g("agents"), g("inventory")), (0, 0));
        s.put("agents", "a1", &1).unwrap();
        s.put("agents", "a2", &2).unwrap();
        s.put("inventory", "a1", &1).unwrap();
        assert_eq!((g("agents"), g("inventory")), (2, 1));
        s.remove("agents", "a2").unwrap();
        assert!(s.compare_and_swap("agents", "a1", &1, &3).unwrap());
        // A swap that lost changes nothing and is not counted.
        assert!(!s.compare_and_swap("agents", "a1", &1, &4).unwrap());
        let (_, read) = s.get_for_swap::<u32>("agents", "a1").unwrap().unwrap();
        assert!(s.swap("agents", "a1", &read, &5).unwrap());
        assert_eq!(s.remove_prefix("agents", "a").unwrap(), 1);
        s.append("audit", |seq| seq).unwrap();
        assert_eq!((g("agents"), g("inventory"), g("audit")), (6, 1, 1));
    }

    #[test]
    fn a_damaged_value_is_refused_on_open_and_export_salvages_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path()).unwrap();
            s.put("agents", "good", &serde_json::json!({"name": "vc1"}))
                .unwrap();
            s.put("agents", "rotten", &serde_json::json!({"name": "vc2"}))
                .unwrap();
            // One flipped byte inside the stored document.
            let mut v = s
                .tree("agents")
                .unwrap()
                .get("rotten")
                .unwrap()
                .unwrap()
                .to_vec();
            let last = v.len() - 3;
            v[last] ^= 0x20;
            raw_insert(&s, "agents", b"rotten", &v);
            raw_insert(&s, "plans", b"garbage", b"\x02\x00\x01");
        }
        let err = Store::open(dir.path())
            .err()
            .expect("damaged store refused");
        let text = err.to_string();
        assert!(text.contains("is damaged: 2 value(s)"), "{text}");
        assert!(
            text.contains("tree agents, key rotten: checksum mismatch"),
            "{text}"
        );
        assert!(text.contains("certfleet store export"), "{text}");

        let s = Store::open_for_salvage(dir.path()).unwrap();
        let mut buf = Vec::new();
        let summary = s.export(&mut buf).unwrap();
        assert_eq!(summary.skipped.len(), 2, "{:?}", summary.skipped);
        let text = String::from_utf8(buf).unwrap();
        assert!(text.contains("\"vc1\""), "{text}");
        assert!(!text.contains("vc2"), "{text}");
        drop(s);

        // The salvage imports into a fresh store that opens cleanly.
        let fresh = tempfile::tempdir().unwrap();
        let t = Store::open(fresh.path()).unwrap();
        t.import(&mut text.as_bytes()).unwrap();
        drop(t);
        let t = Store::open(fresh.path()).unwrap();
        let v: serde_json::Value = t.get("agents", "good").unwrap().unwrap();
        assert_eq!(v["name"], "vc1");
    }

    /// The audit mark is rewritten in place (same file, same length) and read back; the older
    /// bare number still reads; a write torn by a crash (the checksum fails) reads as no mark,
    /// never as a later entry than was made durable.
    #[test]
    fn the_audit_mark_is_rewritten_in_place_and_a_torn_one_reads_as_none() {
        use std::os::unix::fs::MetadataExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(AUDIT_MARK);
        assert_eq!(recorded_audit_mark(dir.path()), 0, "no mark yet");
        write_audit_mark(dir.path(), 3).unwrap();
        assert_eq!(recorded_audit_mark(dir.path()), 3);
        let inode = std::fs::metadata(&path).unwrap().ino();
        for seq in [4, 12_345, u64::MAX] {
            write_audit_mark(dir.path(), seq).unwrap();
            assert_eq!(recorded_audit_mark(dir.path()), seq);
            let meta = std::fs::metadata(&path).unwrap();
            assert_eq!(meta.ino(), inode, "rewritten in place");
            assert_eq!(meta.len(), 30);
        }

        // The form older versions wrote, atomically.
        std::fs::write(&path, "77\n").unwrap();
        assert_eq!(recorded_audit_mark(dir.path()), 77);
        write_audit_mark(dir.path(), 80).unwrap();
        assert_eq!(recorded_audit_mark(dir.path()), 80);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 30);

        // Torn: the number of a later write with the check of the earlier one.
        let old = audit_mark_text(100);
        let torn = format!("{}{}", &audit_mark_text(200)[..20], &old[20..]);
        std::fs::write(&path, &torn).unwrap();
        assert_eq!(recorded_audit_mark(dir.path()), 0, "{torn:?}");
        for garbage in ["", "\n", "x y\n", "00000000000000000100 zzzz\n"] {
            std::fs::write(&path, garbage).unwrap();
            assert_eq!(recorded_audit_mark(dir.path()), 0, "{garbage:?}");
        }
    }

    #[test]
    fn a_store_that_lost_its_newest_audit_entries_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path()).unwrap();
            for _ in 0..3 {
                s.append("audit", |seq| serde_json::json!({"seq": seq}))
                    .unwrap();
            }
            s.flush().unwrap();
            // What sled does with a damaged record: the newest entries are gone.
            let t = s.tree("audit").unwrap();
            t.remove(3u64.to_be_bytes()).unwrap();
            s.db().unwrap().flush().unwrap();
        }
        let err = Store::open(dir.path()).err().expect("refused");
        assert!(
            err.to_string()
                .contains("the audit log ends at entry 2 but entry 3 was made durable"),
            "{err}"
        );
    }

    #[test]
    fn schema_1_values_are_migrated_to_checksummed_ones() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open_unchecked(dir.path()).unwrap();
            raw_insert(&s, "meta", b"schema_version", b"1");
            raw_insert(&s, "agents", b"a1", br#"{"name":"vc1"}"#);
            raw_insert(&s, "audit", &1u64.to_be_bytes(), br#"{"seq":1}"#);
        }
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.schema_version().unwrap(), Some(SCHEMA_VERSION));
        let v: serde_json::Value = s.get("agents", "a1").unwrap().unwrap();
        assert_eq!(v["name"], "vc1");
        assert_eq!(s.tail::<serde_json::Value>("audit", 5).unwrap().len(), 1);
        let raw = s.tree("agents").unwrap().get("a1").unwrap().unwrap();
        assert_eq!(raw[0], FRAME_MAGIC);
        assert!(s.verify().is_empty());
    }

    #[test]
    fn a_store_with_data_but_no_schema_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open_unchecked(dir.path()).unwrap();
            raw_insert(&s, "agents", b"a1", br#"{"name":"vc1"}"#);
        }
        let err = Store::open(dir.path()).err().unwrap();
        assert!(err.to_string().contains("schema_version"), "{err}");
    }

    /// A plan document as schema 2 stored it: one document, steps inside.
    fn schema_2_plan(id: &str, state: &str, steps: usize) -> serde_json::Value {
        let steps: Vec<serde_json::Value> = (0..steps)
            .map(|i| {
                serde_json::json!({
                    "id": format!("{id}-{}", i + 1), "key": format!("k{i}"), "name": "n",
                    "stage": "s", "target": format!("t{i}"), "agent_id": format!("a{}", i % 2),
                    "agent_name": "x", "action": "cert.install", "args": {}, "depends_on": [],
                    "commands": [], "files": [], "timeout_secs": 60, "canary": false,
                    "state": if i == 1 && state == "running" { "dispatched" } else { "pending" },
                    "attempts": 0,
                    "message": "", "details": null, "output": [], "started_at": 0,
                    "finished_at": 0,
                })
            })
            .collect();
        serde_json::json!({
            "id": id, "recipe": "files", "state": state, "created_at": 5,
            "created_by": "operator:admin", "origin": "operator", "policy": {
                "max_parallel": 1, "canary": false, "canary_soak_secs": 0, "failure_budget": 0,
                "approval_required": false, "window": "", "window_secs": 0,
            },
            "steps": steps, "message": "", "canary_released": false, "canary_done_at": 0,
            "params": {},
        })
    }

    #[test]
    fn schema_2_plans_are_split_into_steps_and_dry_runs_moved_out() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open_unchecked(dir.path()).unwrap();
            let put = |tree: &str, key: &str, v: serde_json::Value| {
                raw_insert(
                    &s,
                    tree,
                    key.as_bytes(),
                    &frame(&serde_json::to_vec(&v).unwrap()),
                )
            };
            put("meta", "schema_version", serde_json::json!(2));
            put("plans", "preal", schema_2_plan("preal", "running", 3));
            put("plans", "pdry", schema_2_plan("pdry", "dry_run", 2));
            put(
                "agents",
                "a0",
                serde_json::json!({"id": "a0", "name": "vc1", "state": "active"}),
            );
            put(
                "agents",
                "a9",
                serde_json::json!({"id": "a9", "name": "vc1", "state": "revoked"}),
            );
        }
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.schema_version().unwrap(), Some(SCHEMA_VERSION));
        assert!(s.verify().is_empty());
        // Headers without steps; the dry run in its own tree.
        let header: serde_json::Value = s.get("plans", "preal").unwrap().unwrap();
        assert!(header.get("steps").is_none(), "{header}");
        assert_eq!(header["state"], "running");
        assert!(
            s.get::<serde_json::Value>("plans", "pdry")
                .unwrap()
                .is_none()
        );
        let dry: serde_json::Value = s.get("dry_runs", "pdry").unwrap().unwrap();
        assert_eq!(dry["state"], "dry_run");
        // One document per step, in order; the dispatched one indexed by its agent.
        let steps = s
            .scan_prefix::<serde_json::Value>("plan_steps", "preal/")
            .unwrap();
        let ids: Vec<&str> = steps
            .iter()
            .map(|(_, v)| v["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["preal-1", "preal-2", "preal-3"]);
        assert_eq!(steps[1].0, plan_step_key("preal", 1));
        let flying = s.scan_prefix::<String>("steps_in_flight", "a1/").unwrap();
        assert_eq!(
            flying,
            vec![(in_flight_key("a1", "preal-2"), "preal".to_owned())]
        );
        assert_eq!(
            s.scan_prefix::<serde_json::Value>("plan_steps", "pdry/")
                .unwrap()
                .len(),
            2
        );
        // The name index points at the enrolled agent, not the revoked one.
        assert_eq!(
            s.get::<String>("agent_names", "vc1").unwrap().unwrap(),
            "a0"
        );
        drop(s);
        // Opening again changes nothing.
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(
            s.scan_prefix::<serde_json::Value>("plan_steps", "preal/")
                .unwrap()
                .len(),
            3
        );
    }

    #[test]
    fn newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path()).unwrap();
            s.put("meta", "schema_version", &(SCHEMA_VERSION + 1))
                .unwrap();
            s.flush().unwrap();
        }
        let err = Store::open(dir.path()).err().unwrap();
        assert!(err.to_string().contains("schema version"), "{err}");
    }
}
