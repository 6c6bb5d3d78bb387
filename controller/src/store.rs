//! The controller's durable state, behind one small type so sled stays replaceable.
//!
//! sled 0.34 is the store the design card chose. Its weak spots (space amplification, reports
//! of corruption after abrupt stops) are contained here: values are JSON documents in named
//! trees, the schema version is checked on open, every state transition that must survive a
//! crash is followed by [`Store::flush`], and [`Store::export`] / [`Store::import`] move the
//! whole state to a fresh directory (JSON lines) when sled's files misbehave.
//!
//! Heartbeats are *not* written here (no fsync per heartbeat): the registry keeps `last_seen`
//! in memory and persists it in batches.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Current on-disk schema. Bump with a migration in [`Store::open`].
pub const SCHEMA_VERSION: u32 = 1;

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
];

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
    db: sled::Db,
    path: PathBuf,
    append_lock: std::sync::Arc<std::sync::Mutex<()>>,
}

impl Store {
    /// Opens (or creates) the store in `dir`, checking the schema version.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let db = sled::Config::new()
            .path(dir)
            .mode(sled::Mode::LowSpace)
            .flush_every_ms(Some(500))
            .open()
            .map_err(|source| StoreError::Sled {
                path: dir.to_path_buf(),
                source,
            })?;
        let store = Store {
            db,
            path: dir.to_path_buf(),
            append_lock: Default::default(),
        };
        match store.get::<u32>("meta", "schema_version")? {
            None => {
                store.put("meta", "schema_version", &SCHEMA_VERSION)?;
                store.flush()?;
            }
            Some(v) if v > SCHEMA_VERSION => {
                return Err(StoreError::Schema {
                    path: dir.to_path_buf(),
                    found: v,
                });
            }
            Some(_) => {}
        }
        Ok(store)
    }

    fn sled_err(&self) -> impl Fn(sled::Error) -> StoreError + '_ {
        |source| StoreError::Sled {
            path: self.path.clone(),
            source,
        }
    }

    fn tree(&self, name: &'static str) -> Result<sled::Tree, StoreError> {
        self.db.open_tree(name).map_err(self.sled_err())
    }

    fn decode<T: DeserializeOwned>(
        &self,
        tree: &'static str,
        key: &[u8],
        v: &[u8],
    ) -> Result<T, StoreError> {
        serde_json::from_slice(v).map_err(|e| StoreError::Corrupt {
            path: self.path.clone(),
            tree,
            key: String::from_utf8_lossy(key).into_owned(),
            reason: e.to_string(),
        })
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
        let bytes = serde_json::to_vec(value).expect("state documents serialize");
        self.tree(tree)?
            .insert(key, bytes)
            .map_err(self.sled_err())?;
        Ok(())
    }

    /// Removes one document.
    pub fn remove(&self, tree: &'static str, key: &str) -> Result<(), StoreError> {
        self.tree(tree)?.remove(key).map_err(self.sled_err())?;
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
        let old = serde_json::to_vec(expected).expect("serialize");
        let new = serde_json::to_vec(new).expect("serialize");
        let r = self
            .tree(tree)?
            .compare_and_swap(key, Some(old), Some(new))
            .map_err(self.sled_err())?;
        Ok(r.is_ok())
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
        let bytes = serde_json::to_vec(&make(seq)).expect("serialize");
        t.insert(seq.to_be_bytes(), bytes)
            .map_err(self.sled_err())?;
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
        self.db.flush().map_err(self.sled_err())?;
        Ok(())
    }

    /// Bytes used on disk (exported as a metric: sled amplifies space).
    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }

    /// Writes every tree as JSON lines `{"tree":…,"key":…(hex),"value":…}`.
    pub fn export(&self, out: &mut dyn Write) -> Result<usize, StoreError> {
        let io = |source| StoreError::Io {
            what: "writing export".into(),
            source,
        };
        let mut n = 0;
        for name in TREES {
            let t = self.tree(name)?;
            for kv in t.iter() {
                let (k, v) = kv.map_err(self.sled_err())?;
                let value: serde_json::Value = self.decode(name, &k, &v)?;
                let line =
                    serde_json::json!({"tree": name, "key": hex::encode(&k), "value": value});
                writeln!(out, "{line}").map_err(io)?;
                n += 1;
            }
        }
        out.flush().map_err(io)?;
        Ok(n)
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
            let value = serde_json::to_vec(&doc["value"]).expect("serialize");
            self.tree(tree)?
                .insert(key, value)
                .map_err(self.sled_err())?;
            n += 1;
        }
        self.flush()?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let n = s.export(&mut buf).unwrap();
        assert_eq!(n, 3); // schema version, agent, audit entry
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
