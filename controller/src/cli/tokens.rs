//! `certfleet token`: single-use join tokens for enrolling agents.

use std::collections::BTreeMap;
use std::time::Duration;

use certfleet_common::proto as pb;
use clap::Subcommand;
use serde::Serialize;

use super::args::{days, duration_in, parse_labels, secs};
use super::conn::Conn;
use super::output::{Cell, Column, OutputArgs, Show, labels_map, print_list, until, when};

/// `certfleet token ...`
#[derive(Subcommand)]
pub enum TokenCmd {
    /// Create join tokens (single-use unless --uses); prints only the tokens, one a line.
    #[command(
        after_help = "Example:\n  certfleet token create --ttl 1h --label site=dc1\n  certfleet token create --ttl 2h --uses 500 --label site=dc1   # one token for an Ansible roll-out"
    )]
    Create {
        /// How long the token may be used.
        #[arg(long, value_parser = duration_in(secs(1), days(30)))]
        ttl: Duration,
        /// Label for agents enrolled with it, key=value (repeatable).
        #[arg(long)]
        label: Vec<String>,
        /// Enrollments each token allows (a capped multi-use token for a mass roll-out, e.g.
        /// through Ansible; keep --ttl short).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100_000))]
        uses: u32,
        /// How many tokens to create (one per host, for bulk enrollment).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=10_000))]
        count: u32,
    },
    /// List tokens.
    #[command(after_help = "Example:\n  certfleet token list -o json")]
    List {
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Revoke an unused token.
    #[command(after_help = "Example:\n  certfleet token revoke 3f9a0c1e")]
    Revoke {
        /// Token id (from `token list`).
        id: String,
    },
}

/// Runs a `token` command.
pub async fn run(conn: &Conn, cmd: &TokenCmd) -> anyhow::Result<()> {
    let mut c = conn.client();
    let e = |s| conn.explain(s);
    match cmd {
        TokenCmd::Create {
            ttl,
            label,
            uses,
            count,
        } => {
            let labels = parse_labels(label)?;
            for _ in 0..*count {
                let r = c
                    .create_token(pb::CreateTokenRequest {
                        ttl_secs: ttl.as_secs(),
                        labels: labels.clone(),
                        max_uses: *uses,
                    })
                    .await
                    .map_err(e)?
                    .into_inner();
                println!("{}", r.token);
            }
        }
        TokenCmd::List { output } => {
            let tokens = c
                .list_tokens(pb::Empty {})
                .await
                .map_err(e)?
                .into_inner()
                .tokens;
            print_tokens(&tokens, output)?;
        }
        TokenCmd::Revoke { id } => {
            c.revoke_token(pb::IdRequest { id: id.clone() })
                .await
                .map_err(e)?;
            eprintln!("token {id} revoked");
        }
    }
    Ok(())
}

/// A token as `token list` shows it.
#[derive(Serialize)]
pub struct TokenView {
    id: String,
    state: String,
    created_at: Option<String>,
    expires_at: Option<String>,
    created_by: String,
    labels: BTreeMap<String, String>,
    used_by: String,
    uses: u32,
    max_uses: u32,
    #[serde(skip)]
    expires_at_secs: i64,
}

impl From<&pb::TokenInfo> for TokenView {
    fn from(k: &pb::TokenInfo) -> Self {
        TokenView {
            id: k.id.clone(),
            state: k.state.clone(),
            created_at: when(k.created_at),
            expires_at: when(k.expires_at),
            created_by: k.created_by.clone(),
            labels: labels_map(&k.labels),
            used_by: k.used_by.clone(),
            uses: k.uses,
            max_uses: k.max_uses,
            expires_at_secs: k.expires_at,
        }
    }
}

fn columns() -> Vec<Column<TokenView>> {
    vec![
        Column::new("ID", "id", |v: &TokenView| Cell::plain(&v.id)),
        Column::new("STATE", "state", |v: &TokenView| Cell::plain(&v.state)),
        Column::new("CREATED", "created_at", |v: &TokenView| {
            Cell::plain(v.created_at.clone().unwrap_or_default())
        })
        .only(Show::Wide),
        Column::new("EXPIRES", "expires_in", |v: &TokenView| {
            Cell::plain(until(v.expires_at_secs))
        })
        .only(Show::Screen),
        Column::new("EXPIRES AT", "expires_at", |v: &TokenView| {
            Cell::plain(v.expires_at.clone().unwrap_or_default())
        })
        .only(Show::Wide),
        Column::new("CREATED BY", "created_by", |v: &TokenView| {
            Cell::plain(&v.created_by)
        }),
        Column::new("LABELS", "labels", |v: &TokenView| {
            Cell::plain(
                v.labels
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(","),
            )
        }),
        Column::new("USES", "uses", |v: &TokenView| {
            Cell::plain(format!("{}/{}", v.uses, v.max_uses.max(1)))
        }),
        Column::new("USED BY", "used_by", |v: &TokenView| {
            Cell::plain(&v.used_by)
        }),
    ]
}

/// Prints tokens.
pub fn print_tokens(tokens: &[pb::TokenInfo], out: &OutputArgs) -> anyhow::Result<()> {
    let views: Vec<TokenView> = tokens.iter().map(TokenView::from).collect();
    print_list(out, "token list", &views, &views, &columns())?;
    Ok(())
}
