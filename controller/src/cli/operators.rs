//! `certfleet operators`: operator identities (a key made on this machine, a certificate
//! signed by the fleet CA with a role), their revocation and listing.

use std::path::{Path, PathBuf};

use certfleet_common::proto as pb;
use clap::Subcommand;
use serde::Serialize;

use super::conn::Conn;
use super::output::{Cell, Column, OutputArgs, print_list, when};

/// `certfleet operators ...`
#[derive(Subcommand)]
pub enum OperatorsCmd {
    /// Issue an operator identity into DIR (the key is made here).
    #[command(
        after_help = "Example:\n  certfleet operators issue alice --role viewer --out ./alice\n  certfleet operators issue root --role admin --out ./root --data-dir /var/lib/certfleet   # locked out: on the controller host, controller stopped"
    )]
    Issue {
        /// Operator name (the certificate's common name).
        name: String,
        /// Role: admin or viewer.
        #[arg(long)]
        role: String,
        /// Directory written: key.pem, cert.pem, ca.pem.
        #[arg(long)]
        out: PathBuf,
        /// Issue locally from the controller's data directory (controller stopped), with no
        /// working operator certificate: for an operator whose certificate expired.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Revoke an operator.
    #[command(after_help = "Example:\n  certfleet operators revoke alice")]
    Revoke {
        /// Operator name.
        name: String,
    },
    /// List operators.
    #[command(after_help = "Example:\n  certfleet operators list")]
    List {
        #[command(flatten)]
        output: OutputArgs,
    },
}

/// `operators issue --data-dir`: signs with the data directory's fleet CA and records the
/// operator in the store directly ([`crate::local_admin`]).
pub fn issue_local(name: &str, role: &str, out: &Path, data_dir: &Path) -> anyhow::Result<()> {
    let (key_path, csr) = new_operator_key(out, name)?;
    let issued = match crate::local_admin::issue_operator(data_dir, name, role, &csr) {
        Ok(i) => i,
        Err(e) => {
            // Leave nothing half-made behind.
            let _ = std::fs::remove_file(&key_path);
            return Err(e.into());
        }
    };
    certfleet_common::atomic::write_file(
        &out.join("cert.pem"),
        issued.certificate_pem.as_bytes(),
        certfleet_common::atomic::PUBLIC,
    )?;
    certfleet_common::atomic::write_file(
        &out.join("ca.pem"),
        issued.ca_pem.as_bytes(),
        certfleet_common::atomic::PUBLIC,
    )?;
    eprintln!(
        "operator {name} ({role}) issued locally from {} and written to {}{}",
        data_dir.display(),
        out.display(),
        issued
            .replaced
            .map(|f| format!(
                "; its previous certificate {} is revoked",
                &f[..16.min(f.len())]
            ))
            .unwrap_or_default()
    );
    Ok(())
}

/// Runs an `operators` command.
pub async fn run(conn: &Conn, cmd: &OperatorsCmd) -> anyhow::Result<()> {
    let mut c = conn.client();
    let e = |s| conn.explain(s);
    match cmd {
        OperatorsCmd::Issue {
            name, role, out, ..
        } => {
            let (key_path, csr) = new_operator_key(out, name)?;
            let r = match c
                .issue_operator(pb::IssueOperatorRequest {
                    name: name.clone(),
                    role: role.clone(),
                    csr_pem: csr,
                })
                .await
            {
                Ok(r) => r.into_inner(),
                Err(s) => {
                    // Leave nothing half-made behind.
                    let _ = std::fs::remove_file(&key_path);
                    return Err(e(s));
                }
            };
            certfleet_common::atomic::write_file(
                &out.join("cert.pem"),
                r.certificate_pem.as_bytes(),
                certfleet_common::atomic::PUBLIC,
            )?;
            certfleet_common::atomic::write_file(
                &out.join("ca.pem"),
                r.ca_pem.as_bytes(),
                certfleet_common::atomic::PUBLIC,
            )?;
            eprintln!("operator {name} ({role}) written to {}", out.display());
        }
        OperatorsCmd::Revoke { name } => {
            c.revoke_operator(pb::IdRequest { id: name.clone() })
                .await
                .map_err(e)?;
            eprintln!("operator {name} revoked");
        }
        OperatorsCmd::List { output } => {
            let ops = c
                .list_operators(pb::Empty {})
                .await
                .map_err(e)?
                .into_inner()
                .operators;
            print_operators(&ops, output)?;
        }
    }
    Ok(())
}

/// Generates an operator key in `out` and returns the CSR; the key never leaves this machine.
///
/// Idempotent in the safe direction: an existing `key.pem` is never overwritten (the call is
/// refused), and the key is written 0600 atomically before the CSR is sent.
pub fn new_operator_key(out: &Path, name: &str) -> anyhow::Result<(PathBuf, String)> {
    if out.join("key.pem").exists() {
        anyhow::bail!(
            "{} already holds a key.pem; refusing to overwrite an identity",
            out.display()
        );
    }
    certfleet_common::atomic::create_private_dir(out)?;
    let (key, csr) = certfleet_common::pki::new_key_and_csr(name)?;
    let key_path = out.join("key.pem");
    certfleet_common::atomic::write_file(
        &key_path,
        key.as_bytes(),
        certfleet_common::atomic::PRIVATE,
    )?;
    Ok((key_path, csr))
}

/// An operator as `operators list` prints it.
#[derive(Serialize)]
pub struct OperatorView {
    name: String,
    role: String,
    state: String,
    issued_at: Option<String>,
    issued_by: String,
}

fn columns() -> Vec<Column<OperatorView>> {
    vec![
        Column::new("NAME", "name", |v: &OperatorView| Cell::plain(&v.name)),
        Column::new("ROLE", "role", |v: &OperatorView| Cell::plain(&v.role)),
        Column::new("STATE", "state", |v: &OperatorView| Cell::plain(&v.state)),
        Column::new("ISSUED AT", "issued_at", |v: &OperatorView| {
            Cell::plain(v.issued_at.clone().unwrap_or_default())
        }),
        Column::new("ISSUED BY", "issued_by", |v: &OperatorView| {
            Cell::plain(&v.issued_by)
        }),
    ]
}

/// Prints operators.
pub fn print_operators(ops: &[pb::OperatorEntry], out: &OutputArgs) -> anyhow::Result<()> {
    let views: Vec<OperatorView> = ops
        .iter()
        .map(|o| OperatorView {
            name: o.name.clone(),
            role: o.role.clone(),
            state: o.state.clone(),
            issued_at: when(o.issued_at),
            issued_by: o.issued_by.clone(),
        })
        .collect();
    print_list(out, "operators list", &views, &views, &columns())?;
    Ok(())
}
