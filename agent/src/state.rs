//! The agent's own identity on disk (`--state-dir`).
//!
//! ```text
//! key.pem      private key, 0600, generated here and never sent anywhere
//! cert.pem     current certificate (previous one kept as cert.pem.prev)
//! ca.pem       fleet CA, pinned at enrollment by the join token's fingerprint
//! agent.json   agent id, name, controller address
//! ```
//! Every file is replaced atomically, so a crash mid-renewal leaves a usable identity.

use std::path::{Path, PathBuf};

use certfleet_common::atomic::{PUBLIC, create_private_dir, write_file, write_private};
use serde::{Deserialize, Serialize};

/// What `agent.json` holds.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AgentMeta {
    /// Controller-assigned id.
    pub agent_id: String,
    /// Name.
    pub name: String,
    /// Controller address.
    pub controller: String,
}

/// A loaded identity.
#[derive(Clone)]
pub struct AgentIdentity {
    /// Metadata.
    pub meta: AgentMeta,
    /// Key, PEM.
    pub key_pem: String,
    /// Certificate, PEM.
    pub cert_pem: String,
    /// Fleet CA, PEM.
    pub ca_pem: String,
    /// Certificate validity start.
    pub not_before: i64,
    /// Certificate validity end.
    pub not_after: i64,
}

/// The state directory.
#[derive(Clone, Debug)]
pub struct StateDir(pub PathBuf);

/// State directory problems, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Not enrolled yet.
    #[error("{0} holds no agent identity: run `certfleet-agent enroll` first")]
    NotEnrolled(PathBuf),
    /// A file is unreadable or malformed.
    #[error("{path}: {reason}")]
    Bad {
        /// File.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A write failed.
    #[error(transparent)]
    Write(#[from] certfleet_common::atomic::WriteError),
}

impl StateDir {
    fn f(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// Whether an identity exists.
    pub fn is_enrolled(&self) -> bool {
        self.f("key.pem").exists() || self.f("agent.json").exists()
    }

    /// Path of the private key.
    pub fn key_path(&self) -> PathBuf {
        self.f("key.pem")
    }

    fn read(&self, name: &str) -> Result<String, StateError> {
        let p = self.f(name);
        std::fs::read_to_string(&p).map_err(|e| StateError::Bad {
            path: p,
            reason: e.to_string(),
        })
    }

    /// Loads the identity.
    pub fn load(&self) -> Result<AgentIdentity, StateError> {
        if !self.f("agent.json").exists() {
            return Err(StateError::NotEnrolled(self.0.clone()));
        }
        let meta: AgentMeta =
            serde_json::from_str(&self.read("agent.json")?).map_err(|e| StateError::Bad {
                path: self.f("agent.json"),
                reason: e.to_string(),
            })?;
        let cert_pem = self.read("cert.pem")?;
        let bad = |reason: String| StateError::Bad {
            path: self.f("cert.pem"),
            reason,
        };
        let der = certfleet_common::pem::first_certificate(cert_pem.as_bytes())
            .map_err(|e| bad(e.to_string()))?;
        let rec = certfleet_common::x509::parse_der(&der).map_err(|e| bad(e.to_string()))?;
        Ok(AgentIdentity {
            meta,
            key_pem: self.read("key.pem")?,
            cert_pem,
            ca_pem: self.read("ca.pem")?,
            not_before: rec.not_before,
            not_after: rec.not_after,
        })
    }

    /// Writes the private key (0600) before anything is sent.
    pub fn save_key(&self, key_pem: &str) -> Result<(), StateError> {
        create_private_dir(&self.0)?;
        write_private(&self.f("key.pem"), key_pem.as_bytes())?;
        Ok(())
    }

    /// Writes metadata.
    pub fn save_meta(&self, meta: &AgentMeta) -> Result<(), StateError> {
        let json = serde_json::to_vec_pretty(meta).expect("serialize");
        write_file(&self.f("agent.json"), &json, PUBLIC)?;
        Ok(())
    }

    /// Installs a new certificate (and CA), keeping the previous certificate as a backup.
    pub fn save_cert(&self, cert_pem: &str, ca_pem: &str) -> Result<(), StateError> {
        if let Ok(old) = std::fs::read(self.f("cert.pem")) {
            write_file(&self.f("cert.pem.prev"), &old, PUBLIC)?;
        }
        write_file(&self.f("ca.pem"), ca_pem.as_bytes(), PUBLIC)?;
        write_file(&self.f("cert.pem"), cert_pem.as_bytes(), PUBLIC)?;
        Ok(())
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }
}
