//! `certfleet backup` and `certfleet restore`: the whole controller in one encrypted file, and
//! that file brought back as a data directory on a new machine.
//!
//! `backup` goes through the running controller as an admin (the store is opened exclusively
//! by the controller, so only the controller can take a consistent snapshot while agents
//! keep reporting; it works from wherever the operator is, and the controller audits it).
//! The controller sends the bundle over the mTLS session; the CLI checks every member's
//! digest, encrypts it with the passphrase and writes it 0600 without ever replacing a file:
//! the passphrase never leaves the operator's machine. `restore` is local (it writes a data
//! directory, like `init`): it checks the passphrase, every chunk and digest, the schema and
//! that the fleet CA key matches its certificate before it writes anything, and refuses a
//! destination that is not empty. See `store::backup` for the file layout.
//!
//! The passphrase comes from `--passphrase-file` or `CERTFLEET_BACKUP_PASSPHRASE`, never
//! from the command line (argv is visible to every user of the host).

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;

use super::CliError;
use super::conn::Conn;
use super::output::{OutputArgs, print_document};
use crate::store::backup::{self as bk, Bundle};

/// Environment variable holding the passphrase when no file is given.
pub const PASSPHRASE_ENV: &str = "CERTFLEET_BACKUP_PASSPHRASE";

/// `certfleet backup`
#[derive(Args)]
pub struct BackupArgs {
    /// File to write (0600; never replaces an existing file).
    #[arg(long)]
    out: PathBuf,
    /// File holding the passphrase (first line; at least 12 characters). Without it,
    /// CERTFLEET_BACKUP_PASSPHRASE is read.
    #[arg(long)]
    passphrase_file: Option<PathBuf>,
    #[command(flatten)]
    output: OutputArgs,
}

/// `certfleet restore`
#[derive(Args)]
pub struct RestoreArgs {
    /// Backup file (from `certfleet backup`).
    #[arg(long = "in")]
    input: PathBuf,
    /// Data directory to create (absent or empty); then `certfleet serve --data-dir` it.
    #[arg(long)]
    data_dir: PathBuf,
    /// File holding the passphrase (first line). Without it, CERTFLEET_BACKUP_PASSPHRASE is
    /// read.
    #[arg(long)]
    passphrase_file: Option<PathBuf>,
    /// Re-issue the controller's certificate (same fleet CA) adding this DNS name or IP, for
    /// a new machine agents reach by another name (repeatable; this host's name and the
    /// loopback addresses are added too).
    #[arg(long)]
    san: Vec<String>,
    #[command(flatten)]
    output: OutputArgs,
}

/// The passphrase from `file` (its first line) or the environment.
fn passphrase(file: Option<&Path>) -> anyhow::Result<String> {
    if let Some(f) = file {
        let text = std::fs::read_to_string(f)
            .with_context(|| format!("reading the passphrase file {}", f.display()))?;
        let line = text.lines().next().unwrap_or_default().to_owned();
        if line.is_empty() {
            return Err(CliError::Usage(format!(
                "passphrase file {}: its first line is empty",
                f.display()
            ))
            .into());
        }
        return Ok(line);
    }
    match std::env::var(PASSPHRASE_ENV) {
        Ok(p) if !p.is_empty() => Ok(p),
        _ => Err(CliError::Usage(format!(
            "no passphrase: pass --passphrase-file FILE or set {PASSPHRASE_ENV} (a passphrase is \
             never taken from the command line)"
        ))
        .into()),
    }
}

/// What `backup` prints.
#[derive(serde::Serialize)]
struct Written<'a> {
    file: &'a Path,
    bytes: usize,
    created_at: i64,
    schema_version: u32,
    documents: u64,
    fleet_ca_fingerprint: &'a str,
    files: Vec<&'a str>,
}

/// Runs `backup` through the controller.
pub async fn backup(conn: &Conn, args: &BackupArgs) -> anyhow::Result<()> {
    let pass = passphrase(args.passphrase_file.as_deref())?;
    bk::check_new_passphrase(&pass).map_err(|e| CliError::Usage(e.to_string()))?;
    if args.out.exists() {
        return Err(CliError::Usage(format!(
            "{} already exists: a backup never overwrites a file (choose another name)",
            args.out.display()
        ))
        .into());
    }
    let mut stream = conn
        .client()
        .backup(certfleet_common::proto::Empty {})
        .await
        .map_err(|s| conn.explain(s))?
        .into_inner();
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.message().await.map_err(|s| conn.explain(s))? {
        bytes.extend_from_slice(&chunk.data);
    }
    // Every digest checked before anything is written: a bundle damaged on the way is
    // never encrypted into something that looks like a backup.
    let bundle = Bundle::decode(&bytes).context("the backup the controller sent")?;
    let out = args.out.clone();
    let sealed = tokio::task::spawn_blocking(move || {
        bk::seal(&bytes, &pass).and_then(|f| bk::write_new_private(&out, &f).map(|_| f.len()))
    })
    .await
    .context("encryption task")??;
    let m = &bundle.manifest;
    tracing::info!(file = %args.out.display(), bytes = sealed, documents = m.documents, "backup written");
    let doc = Written {
        file: &args.out,
        bytes: sealed,
        created_at: m.created_at,
        schema_version: m.schema_version,
        documents: m.documents,
        fleet_ca_fingerprint: &m.fleet_ca_fingerprint,
        files: m.members.iter().skip(1).map(|m| m.path.as_str()).collect(),
    };
    print_document(&args.output, "backup", &doc, |_| {
        format!(
            "backup {}: {} bytes, {} store documents (schema {}), {} files ({}), fleet CA {}\n\
             keep the passphrase apart from the file: it decrypts the fleet CA key\n",
            doc.file.display(),
            doc.bytes,
            doc.documents,
            doc.schema_version,
            doc.files.len(),
            doc.files.join(", "),
            &doc.fleet_ca_fingerprint[..16.min(doc.fleet_ca_fingerprint.len())],
        )
    })?;
    Ok(())
}

/// What `restore` prints.
#[derive(serde::Serialize)]
struct RestoredDoc<'a> {
    data_dir: &'a Path,
    documents: usize,
    files: usize,
    backup_created_at: i64,
    backup_created_by: &'a str,
    backup_controller_host: &'a str,
    fleet_ca_fingerprint: &'a str,
}

/// Runs `restore` (local: no controller is involved).
pub fn restore(args: &RestoreArgs) -> anyhow::Result<()> {
    // Cheap refusals first: no passphrase work for a destination that cannot take it.
    bk::check_destination(&args.data_dir)?;
    let pass = passphrase(args.passphrase_file.as_deref())?;
    let input = &args.input;
    let file = std::fs::read(input).with_context(|| format!("reading {}", input.display()))?;
    let plain = bk::open(&file, &pass).with_context(|| format!("{}", input.display()))?;
    let bundle = Bundle::decode(&plain).with_context(|| format!("{}", input.display()))?;
    let m = &bundle.manifest;
    // The CA key must match its certificate, and the certificate the manifest's fingerprint.
    let text = |p: &str| String::from_utf8_lossy(bundle.member(p).unwrap_or_default()).into_owned();
    let ca = certfleet_common::pki::FleetCa::from_pem(&text("ca/ca.pem"), &text("ca/ca.key"))
        .with_context(|| format!("{}: the fleet CA in it", input.display()))?;
    if ca.fingerprint() != m.fleet_ca_fingerprint {
        anyhow::bail!(
            "{}: the fleet CA certificate ({}) is not the one the manifest names ({})",
            input.display(),
            ca.fingerprint(),
            m.fleet_ca_fingerprint
        );
    }
    let user = nix::unistd::User::from_uid(nix::unistd::getuid())
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| format!("uid {}", nix::unistd::getuid()));
    let detail = format!(
        "from {} (taken {} by {} on {}, {} documents){}",
        input.display(),
        certfleet_common::model::format_time(m.created_at),
        m.created_by,
        m.controller_host,
        m.documents,
        if args.san.is_empty() {
            String::new()
        } else {
            format!(
                "; controller certificate re-issued adding {}",
                args.san.join(", ")
            )
        }
    );
    let restored = bk::restore(&bundle, &args.data_dir, |dir, store| {
        if !args.san.is_empty() {
            reissue_server_cert(dir, &ca, &args.san)?;
        }
        store
            .append("audit", |seq| crate::fleet::AuditEntry {
                seq,
                at: certfleet_common::model::now(),
                actor: format!("local:{user}"),
                action: "store.restore".into(),
                target: format!("ca:{}", m.fleet_ca_fingerprint),
                detail: detail.clone(),
            })
            .map(|_| ())
            .map_err(bk::BackupError::from)
    })?;
    tracing::info!(data_dir = %args.data_dir.display(), documents = restored.documents, files = restored.files, "controller restored");
    let doc = RestoredDoc {
        data_dir: &args.data_dir,
        documents: restored.documents,
        files: restored.files,
        backup_created_at: m.created_at,
        backup_created_by: &m.created_by,
        backup_controller_host: &m.controller_host,
        fleet_ca_fingerprint: &m.fleet_ca_fingerprint,
    };
    print_document(&args.output, "restore", &doc, |_| {
        format!(
            "restored {} store documents and {} files into {} (backup taken {} by {} on {})\n\
             next: certfleet serve --data-dir {} (agents keep their identities: point them at \
             this controller's address)\n",
            doc.documents,
            doc.files,
            doc.data_dir.display(),
            certfleet_common::model::format_time(doc.backup_created_at),
            doc.backup_created_by,
            doc.backup_controller_host,
            doc.data_dir.display(),
        )
    })?;
    Ok(())
}

/// Re-issues the controller certificate in the data directory `dir` being restored, for the
/// names it had plus `extra` (and this host's defaults), signed by the restored fleet CA.
///
/// Idempotent: the key and certificate are replaced atomically (key first), and the names
/// are a set; agents verify the controller against the fleet CA, which does not change.
fn reissue_server_cert(
    dir: &Path,
    ca: &certfleet_common::pki::FleetCa,
    extra: &[String],
) -> Result<(), bk::BackupError> {
    let d = crate::server::DataDir(dir.to_path_buf());
    let mut sans: Vec<String> = std::fs::read_to_string(d.server_sans())
        .map(|s| s.lines().map(str::to_owned).collect())
        .unwrap_or_default();
    for s in crate::server::default_sans(extra) {
        if !sans.contains(&s) {
            sans.push(s);
        }
    }
    crate::server::issue_server_cert(&d, ca, &sans).map_err(|e| {
        bk::BackupError::Finish(format!(
            "re-issuing the controller certificate {} for {}: {e:#}",
            d.server_cert().display(),
            sans.join(", ")
        ))
    })?;
    tracing::info!(cert = %d.server_cert().display(), sans = %sans.join(","), "controller certificate re-issued for the new machine");
    Ok(())
}
