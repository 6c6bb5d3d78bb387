//! `certfleet agents`: the enrolled agents, their connection and certificate, revocation and
//! the approval of a re-binding.

use std::collections::BTreeMap;

use certfleet_common::proto as pb;
use clap::Subcommand;
use serde::Serialize;

use super::conn::Conn;
use super::output::{
    Cell, Column, OutputArgs, Show, Tone, ago, labels_map, print_list, until, when,
};

/// `certfleet agents ...`
#[derive(Subcommand)]
pub enum AgentsCmd {
    /// List agents.
    #[command(after_help = "Example:\n  certfleet agents list -o wide")]
    List {
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Show one agent (id or name).
    #[command(after_help = "Example:\n  certfleet agents show vcsa-01 -o yaml")]
    Show {
        /// Agent id or name.
        id: String,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Revoke an agent: its stream is closed and it is refused from now on.
    #[command(after_help = "Example:\n  certfleet agents revoke vcsa-01")]
    Revoke {
        /// Agent id or name.
        id: String,
    },
    /// Approve the re-binding of an agent whose certificate expired.
    #[command(after_help = "Example:\n  certfleet agents approve vcsa-01")]
    Approve {
        /// Agent id or name.
        id: String,
    },
}

/// Runs an `agents` command.
pub async fn run(conn: &Conn, cmd: &AgentsCmd) -> anyhow::Result<()> {
    let mut c = conn.client();
    let e = |s| conn.explain(s);
    match cmd {
        AgentsCmd::List { output } => {
            let agents = c
                .list_agents(pb::Empty {})
                .await
                .map_err(e)?
                .into_inner()
                .agents;
            print_agents(&agents, output)?;
        }
        AgentsCmd::Show { id, output } => {
            let a = c
                .get_agent(pb::IdRequest { id: id.clone() })
                .await
                .map_err(e)?
                .into_inner();
            let view = AgentView::from(&a);
            let rows = [view];
            // One agent: json and yaml print the object, not a one-element array.
            print_list(output, "agents show", &rows[0], &rows, &columns())?;
        }
        AgentsCmd::Revoke { id } => {
            c.revoke_agent(pb::IdRequest { id: id.clone() })
                .await
                .map_err(e)?;
            eprintln!("agent {id} revoked; its stream was closed");
        }
        AgentsCmd::Approve { id } => {
            c.approve_agent(pb::IdRequest { id: id.clone() })
                .await
                .map_err(e)?;
            eprintln!("agent {id} approved; it picks up its new certificate on its next attempt");
        }
    }
    Ok(())
}

/// An agent as `agents list` and `agents show` print it.
#[derive(Serialize)]
pub struct AgentView {
    id: String,
    name: String,
    hostname: String,
    platforms: Vec<String>,
    version: String,
    connected: bool,
    last_seen: Option<String>,
    cert_not_after: Option<String>,
    state: String,
    enrolled_at: Option<String>,
    labels: BTreeMap<String, String>,
    cert_fingerprint: String,
    remote_addr: String,
    /// The raw times, for relative columns.
    #[serde(skip)]
    at: RawTimes,
}

/// Unix times kept next to their formatted forms.
#[derive(Default)]
struct RawTimes {
    last_seen: i64,
    cert_not_after: i64,
}

impl From<&pb::AgentInfo> for AgentView {
    fn from(a: &pb::AgentInfo) -> Self {
        AgentView {
            id: a.id.clone(),
            name: a.name.clone(),
            hostname: a.hostname.clone(),
            platforms: a.platforms.clone(),
            version: a.version.clone(),
            connected: a.connected,
            last_seen: when(a.last_seen),
            cert_not_after: when(a.cert_not_after),
            state: a.state.clone(),
            enrolled_at: when(a.enrolled_at),
            labels: labels_map(&a.labels),
            cert_fingerprint: a.cert_fingerprint.clone(),
            remote_addr: a.remote_addr.clone(),
            at: RawTimes {
                last_seen: a.last_seen,
                cert_not_after: a.cert_not_after,
            },
        }
    }
}

fn columns() -> Vec<Column<AgentView>> {
    vec![
        Column::new("ID", "id", |a: &AgentView| Cell::plain(&a.id)).only(Show::Wide),
        Column::new("NAME", "name", |a: &AgentView| Cell::plain(&a.name)),
        Column::new("HOSTNAME", "hostname", |a: &AgentView| {
            Cell::plain(&a.hostname)
        }),
        Column::new("PLATFORMS", "platforms", |a: &AgentView| {
            Cell::plain(a.platforms.join(","))
        }),
        Column::new("STATE", "state", |a: &AgentView| {
            Cell::toned(
                &a.state,
                match a.state.as_str() {
                    "active" => Tone::Good,
                    "revoked" => Tone::Bad,
                    _ => Tone::Warn,
                },
            )
        }),
        Column::new("CONNECTED", "connected", |a: &AgentView| {
            if a.connected {
                Cell::toned("yes", Tone::Good)
            } else {
                Cell::toned("no", Tone::Bad)
            }
        }),
        Column::new("LAST SEEN", "last_seen", |a: &AgentView| {
            Cell::plain(ago(a.at.last_seen))
        })
        .only(Show::Screen),
        Column::new("LAST SEEN", "last_seen", |a: &AgentView| {
            Cell::plain(a.last_seen.clone().unwrap_or_else(|| "never".into()))
        })
        .only(Show::Csv),
        Column::new("CERT EXPIRES", "cert_expires", |a: &AgentView| {
            Cell::plain(until(a.at.cert_not_after))
        })
        .only(Show::Screen),
        Column::new("CERT NOT AFTER", "cert_not_after", |a: &AgentView| {
            Cell::plain(a.cert_not_after.clone().unwrap_or_default())
        })
        .only(Show::Csv),
        Column::new("VERSION", "version", |a: &AgentView| {
            Cell::plain(&a.version)
        })
        .only(Show::Wide),
        Column::new("ENROLLED", "enrolled_at", |a: &AgentView| {
            Cell::plain(a.enrolled_at.clone().unwrap_or_default())
        })
        .only(Show::Wide),
        Column::new("ADDRESS", "remote_addr", |a: &AgentView| {
            Cell::plain(&a.remote_addr)
        })
        .only(Show::Wide),
        Column::new("CERT FINGERPRINT", "cert_fingerprint", |a: &AgentView| {
            Cell::plain(&a.cert_fingerprint)
        })
        .only(Show::Wide),
    ]
}

/// Prints agents.
pub fn print_agents(agents: &[pb::AgentInfo], out: &OutputArgs) -> anyhow::Result<()> {
    let views: Vec<AgentView> = agents.iter().map(AgentView::from).collect();
    print_list(out, "agents list", &views, &views, &columns())?;
    Ok(())
}
