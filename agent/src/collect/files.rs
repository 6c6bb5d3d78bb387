//! Generic certificate files from the `[[files]]` globs of the config: PEM (one or many
//! blocks), DER and PKCS#12.

use certfleet_common::model::{Location, Problem};

use super::{Collection, Collector, read_small_file};
use crate::config::AgentConfig;

/// The `files` collector.
pub struct Files;

const NAME: &str = "files";

impl Collector for Files {
    fn name(&self) -> &'static str {
        NAME
    }

    fn detect(&self, cfg: &AgentConfig) -> bool {
        !cfg.files.is_empty() || !cfg.renew.is_empty()
    }

    fn collect(&self, cfg: &AgentConfig, out: &mut Collection) {
        for r in &cfg.renew {
            read_one(cfg, &cfg.host_path(&r.cert), "file.renewable", None, out);
        }
        for watch in &cfg.files {
            for pattern in &watch.paths {
                let full = cfg.host_path(pattern);
                let entries = match glob::glob(&full.to_string_lossy()) {
                    Ok(g) => g,
                    Err(e) => {
                        out.problem(Problem::error(NAME, pattern, format!("bad glob: {e}")));
                        continue;
                    }
                };
                for entry in entries {
                    match entry {
                        Ok(path) => {
                            read_one(cfg, &path, &watch.role, watch.password.as_deref(), out)
                        }
                        Err(e) => out.problem(Problem::error(
                            NAME,
                            e.path().display().to_string(),
                            e.error().to_string(),
                        )),
                    }
                }
            }
        }
    }
}

/// Reads one certificate file (PEM, DER or PKCS#12) into `out`.
pub fn read_one(
    cfg: &AgentConfig,
    path: &std::path::Path,
    role: &str,
    password: Option<&str>,
    out: &mut Collection,
) {
    let shown = cfg.shown(path);
    let bytes = match read_small_file(path) {
        Ok(b) => b,
        Err(e) => {
            out.problem(Problem::error(NAME, &shown, e));
            return;
        }
    };
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    if is_key_only(&bytes) {
        // Private keys sit next to certificates in most globs; they are not certificates.
        return;
    }
    if ext == "p12" || ext == "pfx" {
        read_pkcs12(&shown, &bytes, role, password.unwrap_or(""), out);
    } else {
        out.add_blob(NAME, &bytes, role, Location::file("file", shown));
    }
}

/// Reads the certificates of a PKCS#12 bundle.
pub fn read_pkcs12(shown: &str, bytes: &[u8], role: &str, password: &str, out: &mut Collection) {
    match p12_keystore::KeyStore::from_pkcs12(
        bytes,
        password,
        p12_keystore::Pkcs12ImportPolicy::Relaxed,
    ) {
        Ok(ks) => {
            let mut n = 0;
            for (alias, entry) in ks.entries() {
                let chain: Vec<&p12_keystore::Certificate> = match entry {
                    p12_keystore::KeyStoreEntry::PrivateKeyChain(c) => c.certs().iter().collect(),
                    p12_keystore::KeyStoreEntry::Certificate(c) => vec![c],
                    _ => Vec::new(),
                };
                for (i, cert) in chain.into_iter().enumerate() {
                    let mut loc = Location::file("pkcs12", shown);
                    loc.detail = if i == 0 {
                        alias.clone()
                    } else {
                        format!("{alias}#chain{i}")
                    };
                    // Only the leaf of a key chain carries the bundle's role; the rest are issuers.
                    let r = if i == 0 { role } else { "" };
                    out.add_der(NAME, cert.as_der(), r, loc);
                    n += 1;
                }
            }
            if n == 0 {
                out.problem(Problem::error(
                    NAME,
                    shown,
                    "PKCS#12 bundle holds no certificate",
                ));
            }
        }
        Err(e) => out.problem(Problem::error(
            NAME,
            shown,
            format!("cannot open PKCS#12 (wrong password or damaged file): {e}"),
        )),
    }
}

/// True for PEM files that hold keys (or parameters) and no certificate.
fn is_key_only(bytes: &[u8]) -> bool {
    if !certfleet_common::pem::looks_like_pem(bytes) {
        return false;
    }
    match certfleet_common::pem::decode_all(bytes) {
        Ok(blocks) => {
            !blocks.is_empty()
                && blocks
                    .iter()
                    .all(|(label, _)| label.contains("KEY") || label.contains("PARAMETERS"))
        }
        Err(_) => false,
    }
}
