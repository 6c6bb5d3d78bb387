//! Generic certificate files from the `[[files]]` globs of the config: PEM (one or many
//! blocks, `TRUSTED CERTIFICATE` too), DER and PKCS#12.
//!
//! Globs are expanded by our own walk rather than `glob::glob`, because real trees hold what
//! `glob` cannot cope with: directory symlinks that loop (`a -> .`) made `/**` run forever, the
//! same file reached through several links was listed once per path, non-UTF-8 names were
//! skipped and a root prefix with glob metacharacters (`/srv/host[1]`) matched nothing. The walk
//! follows symlinks but enters each directory once (by device and inode), lists each file once
//! (by its canonical path, which is also the path reported), reads every name (shown lossily),
//! and treats the root prefix as a literal path. A glob only ever matches files; directories
//! it matches are walked, not reported.
//!
//! PKCS#12 bundles are read bag by bag ([`p12_keystore::Pkcs12Archive`]), so every certificate
//! is reported: the leaf of each key, the CA certificates shipped with it, and bundles that
//! hold certificates only. Encryption is whatever the bundle says: PBES2 with AES-256-CBC
//! (`openssl pkcs12 -export` on OpenSSL 3), the legacy RC2-40/3DES (`-legacy`, `-descert`) or
//! none at all. A bundle without a password is opened with the empty password; say so in the
//! config with `no_password = true` (or `ovirt.p12_password = ""` for the oVirt engine).

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use certfleet_common::model::{Location, Problem};

use super::{Collection, Collector, read_small_file};
use crate::config::{AgentConfig, FileWatch};

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
            // A file is read once per watch, however many of its patterns and links lead to it.
            let mut seen = HashSet::new();
            for pattern in &watch.paths {
                let expansion = match expand(cfg, pattern) {
                    Ok(x) => x,
                    Err(e) => {
                        out.problem(Problem::error(NAME, pattern, e));
                        continue;
                    }
                };
                for (path, e) in expansion.problems {
                    out.problem(Problem::error(NAME, cfg.shown(&path), e));
                }
                for path in expansion.files {
                    if seen.insert(path.clone()) {
                        read_one(cfg, &path, &watch.role, watch_password(watch), out);
                    }
                }
            }
        }
    }
}

/// The PKCS#12 password of a watch: the configured one, or the empty password when the watch
/// says `no_password = true` or gives none.
fn watch_password(watch: &FileWatch) -> Option<&str> {
    if watch.no_password {
        Some("")
    } else {
        watch.password.as_deref()
    }
}

/// What one glob pattern matched.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Expansion {
    /// Matching files, by canonical path, each once, in walk (name) order.
    pub files: Vec<PathBuf>,
    /// Paths that could not be looked at (an unreadable directory, a dangling link that
    /// matches), with the reason.
    pub problems: Vec<(PathBuf, String)>,
}

/// Expands `pattern` (a host path glob such as `/etc/pki/**/*.pem`) under the root prefix.
pub fn expand(cfg: &AgentConfig, pattern: &str) -> Result<Expansion, String> {
    let rel = pattern.trim_start_matches('/');
    let components: Vec<&str> = rel.split('/').filter(|c| !c.is_empty()).collect();
    let literal = components
        .iter()
        .take_while(|c| !c.contains(['*', '?', '[']))
        .count();
    let mut base = cfg.root.clone();
    for c in &components[..literal] {
        base.push(c);
    }
    let mut x = Expansion::default();
    if literal == components.len() {
        // No metacharacter: the path itself, if it exists (read_one says what is wrong with it).
        if std::fs::symlink_metadata(&base).is_ok() {
            x.files.push(canonical(cfg, &base));
        }
        return Ok(x);
    }
    let root = cfg.root.to_string_lossy();
    let full = format!(
        "{}/{}",
        glob::Pattern::escape(root.trim_end_matches('/')),
        components.join("/")
    );
    let matcher = glob::Pattern::new(&full).map_err(|e| format!("bad glob: {e}"))?;
    let rest = &components[literal..];
    let recursive = rest.contains(&"**");
    let mut walk = Walk {
        cfg,
        matcher,
        depth: if recursive { usize::MAX } else { rest.len() },
        recursive,
        pre: rest.iter().take_while(|c| **c != "**").count(),
        tail: rest
            .iter()
            .rev()
            .take_while(|c| **c != "**")
            .count()
            .saturating_sub(1),
        visited: HashSet::new(),
        listed: HashSet::new(),
        out: x,
    };
    if std::fs::metadata(&base).is_ok_and(|m| m.is_dir()) {
        walk.dir(&base, &mut Vec::new());
    }
    Ok(walk.out)
}

/// A walk below the literal part of a pattern.
///
/// Patterns without `**` have a fixed depth, so the walk ends even in a tree of looping links.
/// With `**` a directory is entered once per (device, inode) and per the path names that can
/// still decide a match: the names matched by the part before the first `**` and the last
/// names that the part after the last `**` looks at. For the usual `dir/**/*.pem` that is just
/// (device, inode); for `dir/**/certs/*.pem` also the directory's own name, so a directory
/// first reached through a link with another name is still searched under its real name.
struct Walk<'c> {
    cfg: &'c AgentConfig,
    matcher: glob::Pattern,
    /// Levels left to descend (`usize::MAX` with `**`).
    depth: usize,
    recursive: bool,
    /// Components before the first `**`.
    pre: usize,
    /// Components after the last `**`, less the file name itself.
    tail: usize,
    visited: HashSet<(u64, u64, Vec<std::ffi::OsString>)>,
    /// Canonical paths already listed.
    listed: HashSet<PathBuf>,
    out: Expansion,
}

impl Walk<'_> {
    fn matches(&self, path: &Path) -> bool {
        let opts = glob::MatchOptions {
            case_sensitive: true,
            require_literal_separator: true,
            require_literal_leading_dot: false,
        };
        // Lossy, so that non-UTF-8 names are matched (and shown) rather than skipped.
        self.matcher.matches_with(&path.to_string_lossy(), opts)
    }

    /// Whether to enter `dir` (reached through `names` below the base), recording it.
    fn enter(&mut self, meta: &std::fs::Metadata, names: &[std::ffi::OsString]) -> bool {
        if !self.recursive {
            return names.len() < self.depth;
        }
        let head = names.len().min(self.pre);
        let tail_from = names.len().saturating_sub(self.tail).max(head);
        let mut key = names[..head].to_vec();
        key.extend_from_slice(&names[tail_from..]);
        self.visited.insert((meta.dev(), meta.ino(), key))
    }

    fn dir(&mut self, dir: &Path, names: &mut Vec<std::ffi::OsString>) {
        let mut entries: Vec<PathBuf> = match std::fs::read_dir(dir) {
            Ok(rd) => rd.filter_map(|e| e.ok().map(|e| e.path())).collect(),
            Err(e) => {
                self.out
                    .problems
                    .push((dir.to_path_buf(), format!("cannot list directory: {e}")));
                return;
            }
        };
        entries.sort();
        for path in entries {
            match std::fs::metadata(&path) {
                Ok(meta) if meta.is_dir() => {
                    names.push(path.file_name().unwrap_or_default().to_owned());
                    if self.enter(&meta, names) {
                        self.dir(&path, names);
                    }
                    names.pop();
                }
                Ok(_) => {
                    if self.matches(&path) {
                        let canon = canonical(self.cfg, &path);
                        if self.listed.insert(canon.clone()) {
                            self.out.files.push(canon);
                        }
                    }
                }
                Err(e) => {
                    if self.matches(&path) {
                        let why = match e.raw_os_error() {
                            Some(40) => "symlink loop".to_owned(), // ELOOP
                            _ if e.kind() == std::io::ErrorKind::NotFound => {
                                "dangling symlink".into()
                            }
                            _ => e.to_string(),
                        };
                        self.out.problems.push((path, why));
                    }
                }
            }
        }
    }
}

/// The path with every symlink resolved, expressed under the configured root when it lies
/// there (the root prefix itself may sit behind a link); the path as given if it cannot be
/// resolved (read_one then reports why).
fn canonical(cfg: &AgentConfig, path: &Path) -> PathBuf {
    let Ok(real) = std::fs::canonicalize(path) else {
        return path.to_path_buf();
    };
    match std::fs::canonicalize(&cfg.root) {
        Ok(root) if root != cfg.root => match real.strip_prefix(&root) {
            Ok(rel) => cfg.root.join(rel),
            Err(_) => real,
        },
        _ => real,
    }
}

/// Reads one certificate file (PEM, DER or PKCS#12) into `out`. `password` is the PKCS#12
/// password (`""` for a bundle without one).
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
        let before = out.problems.len();
        read_pkcs12(&shown, &bytes, role, password.unwrap_or(""), out);
        if password.is_none() {
            for p in &mut out.problems[before..] {
                p.message.push_str(
                    " (no password configured for this file: set password = \"…\", or no_password = true if it has none)",
                );
            }
        }
    } else {
        out.add_blob(NAME, &bytes, role, Location::file("file", shown));
    }
}

/// Why a PKCS#12 bundle could not be read.
#[derive(Debug, thiserror::Error)]
pub enum Pkcs12Error {
    /// Wrong password, damaged file or a scheme we do not know.
    #[error("cannot open PKCS#12 (wrong password or damaged file): {0}")]
    Open(#[from] p12_keystore::error::Error),
    /// It opened but holds no certificate bag.
    #[error("PKCS#12 bundle holds no certificate")]
    Empty,
}

/// One certificate of a PKCS#12 bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pkcs12Cert {
    /// Position of the certificate bag in the bundle.
    pub index: usize,
    /// The bag's friendly name (`-name` of `openssl pkcs12 -export`), if any.
    pub friendly_name: Option<String>,
    /// True for the certificate of a private key in the bundle (matched by `localKeyId`).
    pub is_key_certificate: bool,
    /// DER.
    pub der: Vec<u8>,
}

/// Every certificate bag of a PKCS#12 bundle, in bundle order. `password` `""` opens bundles
/// that have none.
pub fn pkcs12_certificates(bytes: &[u8], password: &str) -> Result<Vec<Pkcs12Cert>, Pkcs12Error> {
    let archive = p12_keystore::Pkcs12Archive::from_pkcs12(bytes, password)?;
    let key_ids: Vec<&[u8]> = archive
        .keys
        .iter()
        .filter_map(|k| k.local_key_id.as_ref().map(|id| id.as_ref()))
        .collect();
    let mut certs: Vec<Pkcs12Cert> = archive
        .certs
        .iter()
        .enumerate()
        .map(|(index, bag)| Pkcs12Cert {
            index,
            friendly_name: bag.friendly_name.clone(),
            is_key_certificate: bag
                .local_key_id
                .as_deref()
                .is_some_and(|id| key_ids.contains(&id)),
            der: bag.cert.as_der().to_vec(),
        })
        .collect();
    // A key whose certificate carries no localKeyId (some tools omit it): the first
    // certificate is the leaf, as `openssl pkcs12 -export` writes it first.
    if !archive.keys.is_empty()
        && !certs.iter().any(|c| c.is_key_certificate)
        && let Some(first) = certs.first_mut()
    {
        first.is_key_certificate = true;
    }
    if certs.is_empty() {
        return Err(Pkcs12Error::Empty);
    }
    Ok(certs)
}

/// Reads the certificates of a PKCS#12 bundle into `out`. The certificates of the bundle's keys
/// get `role`; the CA certificates shipped with them get no role of their own (they merge with
/// the CA's record found elsewhere). A bundle without keys (a trust store) gives every
/// certificate `role`.
pub fn read_pkcs12(shown: &str, bytes: &[u8], role: &str, password: &str, out: &mut Collection) {
    let certs = match pkcs12_certificates(bytes, password) {
        Ok(c) => c,
        Err(e) => return out.problem(Problem::error(NAME, shown, e.to_string())),
    };
    let has_keys = certs.iter().any(|c| c.is_key_certificate);
    for c in certs {
        let mut loc = Location::file("pkcs12", shown);
        loc.detail = match (&c.friendly_name, c.is_key_certificate || !has_keys) {
            (Some(name), true) => name.clone(),
            (Some(name), false) => format!("{name} (CA certificate #{})", c.index),
            (None, true) => format!("#{}", c.index),
            (None, false) => format!("CA certificate #{}", c.index),
        };
        let r = if c.is_key_certificate || !has_keys {
            role
        } else {
            ""
        };
        out.add_der(NAME, &c.der, r, loc);
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::symlink;

    fn cfg(root: &Path, watch: FileWatch) -> AgentConfig {
        AgentConfig {
            root: root.to_path_buf(),
            platforms: vec![NAME.into()],
            files: vec![watch],
            ..Default::default()
        }
    }

    fn watch(paths: &[&str]) -> FileWatch {
        FileWatch {
            paths: paths.iter().map(|p| p.to_string()).collect(),
            role: "file.custom".into(),
            password: None,
            password_file: None,
            no_password: false,
        }
    }

    fn scan(cfg: &AgentConfig) -> Collection {
        let mut out = Collection::default();
        Files.collect(cfg, &mut out);
        out
    }

    fn ca_pem(name: &str) -> String {
        certfleet_common::pki::generate_ca(name, std::time::Duration::from_secs(86400))
            .unwrap()
            .cert_pem
    }

    /// Runs the real openssl in `dir`.
    fn openssl(dir: &Path, args: &[&str]) -> Vec<u8> {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl must be installed (packaging/deps.sh)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    /// SHA-256 fingerprints of every certificate openssl finds in a PEM text.
    fn fingerprints(pem: &[u8]) -> Vec<String> {
        let mut fps: Vec<String> = certfleet_common::pem::certificates(pem)
            .unwrap()
            .iter()
            .map(|d| certfleet_common::pki::sha256_hex(d))
            .collect();
        fps.sort();
        fps
    }

    #[test]
    fn symlink_loops_finish_and_list_each_certificate_once() {
        let dir = tempfile::tempdir().unwrap();
        let certs = dir.path().join("etc/certs");
        std::fs::create_dir_all(&certs).unwrap();
        std::fs::write(certs.join("a.pem"), ca_pem("loop a")).unwrap();
        // Two links to the directory itself, one to its parent, one file link.
        symlink(".", certs.join("self1")).unwrap();
        symlink(&certs, certs.join("self2")).unwrap();
        symlink("..", certs.join("up")).unwrap();
        symlink("a.pem", certs.join("b.pem")).unwrap();
        for pattern in [
            "/etc/**",
            "/etc/**/*.pem",
            "/**/*.pem",
            "/etc/certs/*/*/*.pem",
        ] {
            let out = scan(&cfg(dir.path(), watch(&[pattern])));
            assert_eq!(out.len(), 1, "{pattern}: {:?}", out.problems);
            let rec = out.certificates().next().unwrap();
            assert_eq!(
                rec.locations
                    .iter()
                    .map(|l| l.path.as_str())
                    .collect::<Vec<_>>(),
                vec!["/etc/certs/a.pem"],
                "{pattern}"
            );
            assert!(out.problems.is_empty(), "{pattern}: {:?}", out.problems);
        }
    }

    #[test]
    fn a_directory_reached_first_through_a_link_is_still_searched_by_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("srv/z/certs");
        std::fs::create_dir_all(&real).unwrap();
        std::fs::write(real.join("c.pem"), ca_pem("deep")).unwrap();
        // `a/other` sorts first and is the same directory under another name.
        std::fs::create_dir_all(dir.path().join("srv/a")).unwrap();
        symlink(&real, dir.path().join("srv/a/other")).unwrap();
        let out = scan(&cfg(dir.path(), watch(&["/srv/**/certs/*.pem"])));
        assert_eq!(out.len(), 1, "{:?}", out.problems);
    }

    #[test]
    fn non_utf8_names_are_scanned() {
        let dir = tempfile::tempdir().unwrap();
        let name = std::ffi::OsStr::from_bytes(b"caf\xe9.pem");
        std::fs::write(dir.path().join(name), ca_pem("latin1")).unwrap();
        let out = scan(&cfg(dir.path(), watch(&["/*.pem"])));
        assert_eq!(out.len(), 1, "{:?}", out.problems);
        let loc = &out.certificates().next().unwrap().locations[0];
        assert_eq!(loc.path, "/caf\u{fffd}.pem");
    }

    #[test]
    fn a_root_with_glob_metacharacters_is_literal() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("host[1]");
        std::fs::create_dir_all(root.join("pki")).unwrap();
        std::fs::write(root.join("pki/ca.pem"), ca_pem("bracket")).unwrap();
        // A sibling that `host[1]` read as a pattern would match instead.
        std::fs::create_dir_all(dir.path().join("host1/pki")).unwrap();
        std::fs::write(dir.path().join("host1/pki/ca.pem"), ca_pem("wrong")).unwrap();
        let out = scan(&cfg(&root, watch(&["/pki/*.pem", "/pki/ca.pem"])));
        assert_eq!(out.len(), 1, "{:?}", out.problems);
        let rec = out.certificates().next().unwrap();
        assert!(rec.subject.contains("bracket"), "{}", rec.subject);
        assert_eq!(rec.locations.len(), 1);
        assert_eq!(rec.locations[0].path, "/pki/ca.pem");
    }

    #[test]
    fn one_bad_block_keeps_the_others_and_names_file_and_index() {
        let dir = tempfile::tempdir().unwrap();
        let bundle = format!(
            "{}-----BEGIN CERTIFICATE-----\nnot base64 at all!\n-----END CERTIFICATE-----\n{}",
            ca_pem("first"),
            ca_pem("third")
        );
        std::fs::write(dir.path().join("bundle.pem"), bundle).unwrap();
        let out = scan(&cfg(dir.path(), watch(&["/*.pem"])));
        assert_eq!(out.len(), 2, "{:?}", out.problems);
        assert_eq!(out.problems.len(), 1, "{:?}", out.problems);
        let p = &out.problems[0];
        assert!(p.subject.contains("/bundle.pem"), "{p:?}");
        assert!(p.message.contains("block #1 (CERTIFICATE)"), "{p:?}");
        assert!(
            p.message.contains("other blocks of the file were read"),
            "{p:?}"
        );
    }

    #[test]
    fn bundles_over_one_mebibyte_are_read_and_the_cap_is_named() {
        let dir = tempfile::tempdir().unwrap();
        // Like a system CA bundle: comments and certificates, 1.5 MiB in all.
        let mut bundle = String::new();
        let mut want = Vec::new();
        for i in 0..3 {
            let pem = ca_pem(&format!("bundle CA {i}"));
            want.extend(fingerprints(pem.as_bytes()));
            bundle.push_str(&"# a comment line of a system CA bundle\n".repeat(14_000));
            bundle.push_str(&pem);
        }
        assert!(bundle.len() > 1024 * 1024 + 512 * 1024);
        std::fs::write(dir.path().join("tls-ca-bundle.pem"), &bundle).unwrap();
        // Past the cap: reported, naming it, not read.
        let huge = std::fs::File::create(dir.path().join("huge.pem")).unwrap();
        huge.set_len(super::super::MAX_CERT_FILE + 1).unwrap();
        let out = scan(&cfg(dir.path(), watch(&["/*.pem"])));
        let mut got: Vec<String> = out
            .certificates()
            .map(|c| c.fingerprint_sha256.clone())
            .collect();
        got.sort();
        want.sort();
        assert_eq!(got, want);
        assert_eq!(out.problems.len(), 1, "{:?}", out.problems);
        assert!(out.problems[0].subject.ends_with("/huge.pem"));
        assert!(
            out.problems[0].message.contains("16 MiB cap"),
            "{:?}",
            out.problems
        );
    }

    #[test]
    fn trusted_certificate_files_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        openssl(
            d,
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                "k.key",
                "-subj",
                "/CN=Trusted Root",
                "-days",
                "2",
                "-out",
                "root.crt",
            ],
        );
        let mut trusted = Vec::new();
        for (trust, alias) in [("serverAuth", "one"), ("emailProtection", "two")] {
            trusted.extend(openssl(
                d,
                &[
                    "x509",
                    "-in",
                    "root.crt",
                    "-addtrust",
                    trust,
                    "-setalias",
                    alias,
                    "-trustout",
                ],
            ));
        }
        std::fs::write(d.join("ca-bundle.trust.crt"), &trusted).unwrap();
        let out = scan(&cfg(d, watch(&["/*.trust.crt"])));
        assert!(out.problems.is_empty(), "{:?}", out.problems);
        assert_eq!(out.len(), 1);
        let fp = String::from_utf8(openssl(
            d,
            &[
                "x509",
                "-in",
                "root.crt",
                "-noout",
                "-fingerprint",
                "-sha256",
            ],
        ))
        .unwrap();
        let fp = fp
            .trim()
            .rsplit('=')
            .next()
            .unwrap()
            .replace(':', "")
            .to_lowercase();
        assert_eq!(out.certificates().next().unwrap().fingerprint_sha256, fp);
    }

    /// A leaf signed by an intermediate signed by a root, made by the real openssl, plus
    /// PKCS#12 bundles of it in every form met on hosts. Returns the fingerprints of
    /// (leaf, [intermediate, root]).
    fn openssl_chain(d: &Path) -> (String, Vec<String>) {
        let cnf = "[v3_ca]\nbasicConstraints=critical,CA:true\n";
        std::fs::write(d.join("ca.cnf"), cnf).unwrap();
        openssl(
            d,
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                "root.key",
                "-subj",
                "/CN=P12 Root",
                "-days",
                "3",
                "-out",
                "root.crt",
            ],
        );
        openssl(
            d,
            &[
                "req",
                "-new",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                "int.key",
                "-subj",
                "/CN=P12 Intermediate",
                "-out",
                "int.csr",
            ],
        );
        openssl(
            d,
            &[
                "x509",
                "-req",
                "-in",
                "int.csr",
                "-CA",
                "root.crt",
                "-CAkey",
                "root.key",
                "-set_serial",
                "2",
                "-days",
                "3",
                "-extfile",
                "ca.cnf",
                "-extensions",
                "v3_ca",
                "-out",
                "int.crt",
            ],
        );
        openssl(
            d,
            &[
                "req",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                "leaf.key",
                "-subj",
                "/CN=engine.example.test",
                "-out",
                "leaf.csr",
            ],
        );
        openssl(
            d,
            &[
                "x509",
                "-req",
                "-in",
                "leaf.csr",
                "-CA",
                "int.crt",
                "-CAkey",
                "int.key",
                "-set_serial",
                "3",
                "-days",
                "3",
                "-out",
                "leaf.crt",
            ],
        );
        let chain = [
            std::fs::read(d.join("int.crt")).unwrap(),
            std::fs::read(d.join("root.crt")).unwrap(),
        ]
        .concat();
        std::fs::write(d.join("chain.crt"), &chain).unwrap();
        let leaf = fingerprints(&std::fs::read(d.join("leaf.crt")).unwrap()).remove(0);
        (leaf, fingerprints(&chain))
    }

    /// What `openssl pkcs12` itself reads from a bundle.
    fn openssl_p12_fingerprints(d: &Path, file: &str, pass: &str) -> Vec<String> {
        let mut args = vec!["pkcs12", "-in", file, "-nokeys", "-passin"];
        let pass = format!("pass:{pass}");
        args.push(&pass);
        if !file.contains("modern") {
            args.push("-legacy");
        }
        fingerprints(&openssl(d, &args))
    }

    #[test]
    fn pkcs12_bundles_as_openssl_makes_them() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let (leaf, cas) = openssl_chain(d);
        let export = [
            "pkcs12",
            "-export",
            "-in",
            "leaf.crt",
            "-inkey",
            "leaf.key",
            "-certfile",
            "chain.crt",
            "-name",
            "engine",
        ];
        // (file, extra arguments, password)
        let cases: &[(&str, &[&str], &str)] = &[
            // OpenSSL 3 default: PBES2/PBKDF2-SHA256/AES-256-CBC, SHA-256 MAC.
            ("modern.p12", &["-passout", "pass:s3cret"], "s3cret"),
            // RC2-40 certificates, 3DES key, SHA-1 MAC.
            (
                "legacy.p12",
                &["-legacy", "-passout", "pass:s3cret"],
                "s3cret",
            ),
            // oVirt 4.4's FIPS variant.
            (
                "descert.p12",
                &["-descert", "-passout", "pass:mypass"],
                "mypass",
            ),
            // No password.
            ("modern-nopass.p12", &["-passout", "pass:"], ""),
            ("legacy-nopass.p12", &["-legacy", "-passout", "pass:"], ""),
            (
                "clear.p12",
                &[
                    "-keypbe", "NONE", "-certpbe", "NONE", "-nomac", "-passout", "pass:",
                ],
                "",
            ),
        ];
        for (file, extra, _) in cases {
            let mut args = export.to_vec();
            args.extend_from_slice(extra);
            args.extend(["-out", file]);
            openssl(d, &args);
        }
        // Certificates only (a trust store), no key.
        openssl(
            d,
            &[
                "pkcs12",
                "-export",
                "-nokeys",
                "-in",
                "chain.crt",
                "-passout",
                "pass:trust",
                "-out",
                "certs-only-modern.p12",
            ],
        );
        let mut all = vec![leaf.clone()];
        all.extend(cas.iter().cloned());
        all.sort();
        // The bundles are what they claim to be.
        for (file, scheme) in [
            ("modern.p12", "PBES2, PBKDF2, AES-256-CBC"),
            ("legacy.p12", "pbeWithSHA1And40BitRC2-CBC"),
            ("descert.p12", "pbeWithSHA1And3-KeyTripleDES-CBC"),
        ] {
            let pass = if file == "descert.p12" {
                "pass:mypass"
            } else {
                "pass:s3cret"
            };
            let info = std::process::Command::new("openssl")
                .args([
                    "pkcs12", "-legacy", "-info", "-noout", "-passin", pass, "-in", file,
                ])
                .current_dir(d)
                .output()
                .unwrap();
            let info = String::from_utf8_lossy(&info.stderr);
            assert!(info.contains(scheme), "{file}: {info}");
        }
        for (file, _, pass) in cases {
            assert_eq!(openssl_p12_fingerprints(d, file, pass), all, "{file}");
            let mut out = Collection::default();
            let bytes = std::fs::read(d.join(file)).unwrap();
            read_pkcs12(file, &bytes, "file.p12", pass, &mut out);
            assert!(out.problems.is_empty(), "{file}: {:?}", out.problems);
            let mut got: Vec<String> = out
                .certificates()
                .map(|c| c.fingerprint_sha256.clone())
                .collect();
            got.sort();
            assert_eq!(got, all, "{file}: every certificate, CAs too");
            let leaf_rec = out.get(&leaf).unwrap();
            assert_eq!(leaf_rec.role, "file.p12", "{file}");
            assert_eq!(leaf_rec.locations[0].detail, "engine", "{file}");
            for ca in &cas {
                assert_eq!(
                    out.get(ca).unwrap().role,
                    "",
                    "{file}: CA keeps no role of the leaf"
                );
            }
        }
        // Certificate-only bundle: both certificates, with the bundle's role.
        assert_eq!(
            openssl_p12_fingerprints(d, "certs-only-modern.p12", "trust"),
            cas
        );
        let mut out = Collection::default();
        let bytes = std::fs::read(d.join("certs-only-modern.p12")).unwrap();
        read_pkcs12("certs-only.p12", &bytes, "file.trust", "trust", &mut out);
        assert!(out.problems.is_empty(), "{:?}", out.problems);
        assert_eq!(out.len(), 2);
        assert!(out.certificates().all(|c| c.role == "file.trust"));
        // A wrong password is one clear problem.
        let mut out = Collection::default();
        let bytes = std::fs::read(d.join("modern.p12")).unwrap();
        read_pkcs12("modern.p12", &bytes, "r", "wrong", &mut out);
        assert_eq!(out.len(), 0);
        assert!(
            out.problems[0].message.contains("wrong password"),
            "{:?}",
            out.problems
        );
    }

    #[test]
    fn the_config_says_no_password() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let (leaf, _) = openssl_chain(d);
        openssl(
            d,
            &[
                "pkcs12",
                "-export",
                "-in",
                "leaf.crt",
                "-inkey",
                "leaf.key",
                "-passout",
                "pass:",
                "-out",
                "nopass.p12",
            ],
        );
        let toml = format!(
            "root = \"{}\"\nplatforms = [\"files\"]\n[[files]]\npaths = [\"/*.p12\"]\nrole = \"file.p12\"\nno_password = true\n",
            d.display()
        );
        let config: AgentConfig = toml::from_str(&toml).unwrap();
        assert!(config.validate().is_empty());
        let out = scan(&config);
        assert!(out.problems.is_empty(), "{:?}", out.problems);
        assert_eq!(out.get(&leaf).unwrap().role, "file.p12");
        // A watch that names a password gets the message about it, not about "no password".
        let mut w = watch(&["/*.p12"]);
        w.password = Some("not-it".into());
        let out = scan(&cfg(d, w));
        assert!(
            out.problems[0].message.contains("wrong password"),
            "{:?}",
            out.problems
        );
        assert!(!out.problems[0].message.contains("no_password"));
    }
}
