//! `certfleet policy`: renewal policies, which make plans by themselves as certificates of a
//! role near expiry.

use std::time::Duration;

use certfleet_common::proto as pb;
use clap::Subcommand;
use serde::Serialize;

use super::args::{MAX_HORIZON, count_in, days, duration_in, secs};
use super::conn::Conn;
use super::output::{Cell, Column, OutputArgs, print_list};

/// `certfleet policy ...`
#[derive(Subcommand)]
pub enum PolicyCmd {
    /// Renew certificates of ROLE when within DURATION of expiry.
    #[command(
        after_help = "Example:\n  certfleet policy set ovirt.host --renew-within 30d --window \"0 2 * * SAT\""
    )]
    Set {
        /// Certificate role (see `certfleet inventory -o wide`).
        role: String,
        /// How long before expiry a plan is made.
        #[arg(long, value_parser = duration_in(secs(60), MAX_HORIZON))]
        renew_within: Duration,
        /// Maintenance window, cron-like (UTC).
        #[arg(long)]
        window: Option<String>,
        /// Window length.
        #[arg(long, value_parser = duration_in(secs(60), days(7)), default_value = "4h")]
        window_length: Duration,
        /// Run the plans it creates without approval.
        #[arg(long)]
        auto_approve: bool,
        /// Targets worked on at once.
        #[arg(long, default_value = "1", value_parser = count_in::<u32>(1, 1000))]
        max_parallel: u32,
    },
    /// List policies.
    #[command(after_help = "Example:\n  certfleet policy list -o csv")]
    List {
        #[command(flatten)]
        output: OutputArgs,
    },
}

/// Runs a `policy` command.
pub async fn run(conn: &Conn, cmd: &PolicyCmd) -> anyhow::Result<()> {
    let mut c = conn.client();
    let e = |s| conn.explain(s);
    match cmd {
        PolicyCmd::Set {
            role,
            renew_within,
            window,
            window_length,
            auto_approve,
            max_parallel,
        } => {
            let p = c
                .set_policy(pb::PolicyInfo {
                    role: role.clone(),
                    renew_within_secs: renew_within.as_secs(),
                    window: window.clone().unwrap_or_default(),
                    window_secs: window_length.as_secs(),
                    auto_approve: *auto_approve,
                    max_parallel: *max_parallel,
                })
                .await
                .map_err(e)?
                .into_inner();
            eprintln!(
                "policy for {} set: renew within {}s",
                p.role, p.renew_within_secs
            );
        }
        PolicyCmd::List { output } => {
            let policies = c
                .list_policies(pb::Empty {})
                .await
                .map_err(e)?
                .into_inner()
                .policies;
            print_policies(&policies, output)?;
        }
    }
    Ok(())
}

/// A policy as printed.
#[derive(Serialize)]
pub struct PolicyView {
    role: String,
    renew_within: String,
    window: String,
    auto_approve: bool,
    max_parallel: u32,
}

fn columns() -> Vec<Column<PolicyView>> {
    vec![
        Column::new("ROLE", "role", |v: &PolicyView| Cell::plain(&v.role)),
        Column::new("RENEW WITHIN", "renew_within", |v: &PolicyView| {
            Cell::plain(&v.renew_within)
        }),
        Column::new("WINDOW", "window", |v: &PolicyView| Cell::plain(&v.window)),
        Column::new("AUTO APPROVE", "auto_approve", |v: &PolicyView| {
            Cell::plain(v.auto_approve.to_string())
        }),
        Column::new("MAX PARALLEL", "max_parallel", |v: &PolicyView| {
            Cell::plain(v.max_parallel.to_string())
        }),
    ]
}

/// Prints policies.
pub fn print_policies(policies: &[pb::PolicyInfo], out: &OutputArgs) -> anyhow::Result<()> {
    let views: Vec<PolicyView> = policies
        .iter()
        .map(|p| PolicyView {
            role: p.role.clone(),
            renew_within: humantime::format_duration(Duration::from_secs(p.renew_within_secs))
                .to_string(),
            window: p.window.clone(),
            auto_approve: p.auto_approve,
            max_parallel: p.max_parallel,
        })
        .collect();
    print_list(out, "policy list", &views, &views, &columns())?;
    Ok(())
}
