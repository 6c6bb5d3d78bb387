//! `certfleet store`: maintenance of the controller's state store: online compaction through
//! the running controller, and offline export to JSON lines / import into a fresh data
//! directory.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;

use super::conn::Conn;
use super::output::{OutputArgs, print_document};
use crate::server;

/// `certfleet store ...`
#[derive(Subcommand)]
pub enum StoreCmd {
    /// Compact the running controller's store (admin): copy it into a fresh store and swap
    /// that in, giving back the space of rewritten documents. Writes pause only for the swap.
    /// `serve` also compacts on its own (see `--store-compact-ratio`).
    #[command(after_help = "Example:\n  certfleet store compact")]
    Compact {
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Write the whole state as JSON lines. Works on a damaged store: unreadable values are
    /// skipped and listed, everything else is written, and the exit status is then 6 (a
    /// partial export) instead of 0.
    #[command(
        after_help = "Example:\n  certfleet store export --data-dir /var/lib/certfleet --out state.jsonl"
    )]
    Export {
        /// The controller's data directory.
        #[arg(long)]
        data_dir: PathBuf,
        /// File written.
        #[arg(long)]
        out: PathBuf,
    },
    /// Load an export into a fresh data directory's store.
    #[command(
        after_help = "Example:\n  certfleet store import --data-dir /var/lib/certfleet --in state.jsonl"
    )]
    Import {
        /// The controller's data directory.
        #[arg(long)]
        data_dir: PathBuf,
        /// File read (from `store export`).
        #[arg(long = "in")]
        input: PathBuf,
    },
}

/// Runs `store compact` through the controller.
pub async fn compact(conn: &Conn, output: &OutputArgs) -> anyhow::Result<()> {
    let r = conn
        .client()
        .compact_store(certfleet_common::proto::Empty {})
        .await
        .map_err(|s| conn.explain(s))?
        .into_inner();
    let doc = serde_json::json!({
        "before_bytes": r.before_bytes,
        "after_bytes": r.after_bytes,
        "live_bytes": r.live_bytes,
        "documents": r.documents,
        "recopied": r.recopied,
        "duration_ms": r.duration_ms,
        "pause_ms": r.pause_ms,
    });
    print_document(output, "store compact", &doc, |_| {
        format!(
            "compacted: {} -> {} bytes on disk ({} live, {} documents) in {} ms, writes paused {} ms\n",
            r.before_bytes, r.after_bytes, r.live_bytes, r.documents, r.duration_ms, r.pause_ms
        )
    })?;
    Ok(())
}

/// Runs an offline `store` command (no controller connection: the store is opened directly).
pub fn run(cmd: &StoreCmd) -> anyhow::Result<()> {
    match cmd {
        // Dispatched to `compact` by cli::run, with a connection.
        StoreCmd::Compact { .. } => {
            anyhow::bail!("store compact runs through the controller: use cli::run")
        }
        StoreCmd::Export { data_dir, out } => {
            // Opened without verification: export is the way out of a damaged store.
            let store =
                crate::store::Store::open_for_salvage(&server::DataDir(data_dir.clone()).state())?;
            let mut f = std::io::BufWriter::new(
                std::fs::File::create(out)
                    .with_context(|| format!("creating {}", out.display()))?,
            );
            let summary = store.export(&mut f)?;
            eprintln!(
                "exported {} documents to {}",
                summary.written,
                out.display()
            );
            if !summary.skipped.is_empty() {
                eprintln!("skipped {} unreadable value(s):", summary.skipped.len());
                for s in &summary.skipped {
                    eprintln!("  {s}");
                }
                // Written and synced first: a partial salvage is still the way out.
                f.into_inner()
                    .map_err(|e| e.into_error())
                    .and_then(|f| f.sync_all())
                    .with_context(|| format!("writing {}", out.display()))?;
                return Err(crate::store::PartialExport {
                    out: out.clone(),
                    written: summary.written,
                    skipped: summary.skipped.len(),
                }
                .into());
            }
            Ok(())
        }
        StoreCmd::Import { data_dir, input } => {
            let store = crate::store::Store::open(&server::DataDir(data_dir.clone()).state())?;
            let mut f = std::io::BufReader::new(
                std::fs::File::open(input)
                    .with_context(|| format!("opening {}", input.display()))?,
            );
            let n = store.import(&mut f)?;
            eprintln!("imported {n} documents into {}", data_dir.display());
            Ok(())
        }
    }
}
