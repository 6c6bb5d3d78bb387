//! `certfleet audit`: the audit log of every mutation, newest last.

use certfleet_common::model::format_time;
use certfleet_common::proto as pb;
use clap::Args;
use serde::Serialize;

use super::args::count_in;
use super::conn::Conn;
use super::output::{Cell, Column, OutputArgs, print_list};

/// `certfleet audit`
#[derive(Args)]
pub struct AuditArgs {
    /// Only the last N entries (0: all).
    #[arg(long, default_value = "0", value_parser = count_in::<u32>(0, 10_000_000))]
    limit: u32,
    #[command(flatten)]
    output: OutputArgs,
}

/// Runs `audit`.
pub async fn run(conn: &Conn, args: &AuditArgs) -> anyhow::Result<()> {
    let entries = conn
        .client()
        .audit(pb::AuditRequest { limit: args.limit })
        .await
        .map_err(|s| conn.explain(s))?
        .into_inner()
        .entries;
    print_audit(&entries, &args.output)
}

/// An audit entry as printed.
#[derive(Serialize)]
pub struct AuditView {
    seq: u64,
    at: String,
    actor: String,
    action: String,
    target: String,
    detail: String,
}

fn columns() -> Vec<Column<AuditView>> {
    vec![
        Column::new("SEQ", "seq", |v: &AuditView| Cell::plain(v.seq.to_string())),
        Column::new("AT", "at", |v: &AuditView| Cell::plain(&v.at)),
        Column::new("ACTOR", "actor", |v: &AuditView| Cell::plain(&v.actor)),
        Column::new("ACTION", "action", |v: &AuditView| Cell::plain(&v.action)),
        Column::new("TARGET", "target", |v: &AuditView| Cell::plain(&v.target)),
        Column::new("DETAIL", "detail", |v: &AuditView| Cell::plain(&v.detail)),
    ]
}

/// Prints audit entries.
pub fn print_audit(entries: &[pb::AuditEntry], out: &OutputArgs) -> anyhow::Result<()> {
    let views: Vec<AuditView> = entries
        .iter()
        .map(|e| AuditView {
            seq: e.seq,
            at: format_time(e.at),
            actor: e.actor.clone(),
            action: e.action.clone(),
            target: e.target.clone(),
            detail: e.detail.clone(),
        })
        .collect();
    print_list(out, "audit", &views, &views, &columns())?;
    Ok(())
}
