//! Break-glass administration on the controller host, with no working operator certificate:
//! `certfleet operators issue NAME --role R --out DIR --data-dir DATA` signs a new operator
//! identity with the fleet CA in the data directory and records it in the state store
//! directly, so an operator whose certificate expired (the admin's included) is never locked
//! out. Being able to read the data directory (the CA key) is the authorisation, as it is for
//! `certfleet init`.
//!
//! The store is opened exclusively, so this runs while the controller is stopped; with the
//! controller running the open fails and the message says so (stop it for the few seconds
//! this takes, or use another admin's identity).

use std::path::{Path, PathBuf};

use certfleet_common::identity::Identity;
use certfleet_common::model::now;
use certfleet_common::pki::FleetCa;

use crate::fleet::{OperatorRecord, RevokedCert, Role};
use crate::server::DataDir;
use crate::store::Store;

/// The local issue could not be done.
#[derive(Debug, thiserror::Error)]
pub enum LocalAdminError {
    /// The data directory lacks the fleet CA, or it is unreadable.
    #[error("{path}: {reason}")]
    DataDir {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The state store could not be opened (usually: the controller is running).
    #[error(
        "cannot open the state store {path} ({reason}); if the controller is running, stop it \
         first (the store is opened exclusively) or issue with another admin's identity"
    )]
    StoreBusy {
        /// The store directory.
        path: PathBuf,
        /// What sled said.
        reason: String,
    },
    /// Bad input (name, role, CSR) or a store write failed.
    #[error("{0}")]
    Other(String),
}

/// What was issued.
pub struct Issued {
    /// The operator certificate, PEM.
    pub certificate_pem: String,
    /// The fleet CA, PEM.
    pub ca_pem: String,
    /// The certificate it replaces, now revoked (fingerprint), if the operator existed.
    pub replaced: Option<String>,
}

/// Issues (or re-issues) operator `name` with `role` for `csr_pem`, recording and auditing it
/// in the store of `data_dir`.
///
/// Idempotent in effect: the record is replaced as a whole and the previous certificate's
/// fingerprint is put in the revoked set (putting it there twice changes nothing); the
/// audit entry says it was issued locally and by which OS user.
pub fn issue_operator(
    data_dir: &Path,
    name: &str,
    role: &str,
    csr_pem: &str,
) -> Result<Issued, LocalAdminError> {
    if !certfleet_common::identity::valid_name(name) {
        return Err(LocalAdminError::Other(format!(
            "operator name {name:?}: use letters, digits, '.', '-', '_'"
        )));
    }
    let role = Role::parse(role)
        .ok_or_else(|| LocalAdminError::Other(format!("role {role:?}: admin or viewer")))?;
    let d = DataDir(data_dir.to_path_buf());
    let read = |p: PathBuf| {
        std::fs::read_to_string(&p).map_err(|e| LocalAdminError::DataDir {
            path: p,
            reason: format!("{e} (is this the controller's --data-dir?)"),
        })
    };
    let ca_pem = read(d.ca_cert())?;
    let ca =
        FleetCa::from_pem(&ca_pem, &read(d.ca_key())?).map_err(|e| LocalAdminError::DataDir {
            path: d.ca_cert(),
            reason: e.to_string(),
        })?;
    if !d.state().exists() {
        return Err(LocalAdminError::DataDir {
            path: d.state(),
            reason: "no state store here".into(),
        });
    }
    let store = Store::open(&d.state()).map_err(|e| LocalAdminError::StoreBusy {
        path: d.state(),
        reason: e.to_string(),
    })?;
    let other = |e: crate::store::StoreError| LocalAdminError::Other(e.to_string());
    let existing = store
        .get::<OperatorRecord>("operators", name)
        .map_err(other)?;
    let pem = ca
        .sign_client_csr(
            csr_pem,
            &Identity::Operator(name.to_owned()),
            name,
            crate::operator::OPERATOR_CERT_TTL,
        )
        .map_err(|e| LocalAdminError::Other(format!("certificate signing request: {e}")))?;
    let der = certfleet_common::pem::first_certificate(pem.as_bytes())
        .map_err(|e| LocalAdminError::Other(format!("issued certificate: {e}")))?;
    let replaced = existing
        .as_ref()
        .filter(|e| !e.cert_fingerprint.is_empty())
        .map(|e| e.cert_fingerprint.clone());
    if let Some(fp) = &replaced {
        let entry = RevokedCert {
            fingerprint: fp.clone(),
            identity: format!("operator:{name}"),
            revoked_at: now(),
            reason: "re-issued locally from the data directory".into(),
        };
        store.put("revoked_certs", fp, &entry).map_err(other)?;
    }
    let rec = OperatorRecord {
        name: name.to_owned(),
        role,
        revoked: false,
        issued_at: now(),
        issued_by: "local".into(),
        cert_fingerprint: certfleet_common::pki::sha256_hex(&der),
    };
    store.put("operators", name, &rec).map_err(other)?;
    let user = nix::unistd::User::from_uid(nix::unistd::getuid())
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| format!("uid {}", nix::unistd::getuid()));
    store
        .append("audit", |seq| crate::fleet::AuditEntry {
            seq,
            at: now(),
            actor: format!("local:{user}"),
            action: "operator.issue_local".into(),
            target: format!("operator:{name}"),
            detail: format!(
                "role={}{}",
                role.as_str(),
                replaced
                    .as_ref()
                    .map(|f| format!(" replaced={}", &f[..16.min(f.len())]))
                    .unwrap_or_default()
            ),
        })
        .map_err(other)?;
    store.flush().map_err(other)?;
    tracing::info!(
        operator = name,
        role = role.as_str(),
        user,
        "operator issued locally from the data directory"
    );
    Ok(Issued {
        certificate_pem: pem,
        ca_pem,
        replaced,
    })
}
