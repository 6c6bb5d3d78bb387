//! `certfleet exec AGENT -- COMMAND ARGS…`: runs one command on an agent, if that agent's own
//! allow-list permits it, printing its output as it comes and exiting with its exit code.
//!
//! Exit codes: the command's own (a signal N gives 128+N); 3 when the controller (not an
//! admin) or the agent (no rule allows it; the message names the rule) refused it; 1 when it
//! ran past its timeout, could not start, or the link was lost.

use std::io::Write;
use std::time::Duration;

use anyhow::{anyhow, bail};
use certfleet_common::proto as pb;
use clap::Args;

use super::CliError;
use super::args::{duration_in, secs};
use super::conn::Conn;

/// `certfleet exec`
#[derive(Args)]
pub struct ExecArgs {
    /// Agent id or name.
    agent: String,
    /// Longest run; the agent's rule may allow less (default: the rule's timeout).
    #[arg(long, value_parser = duration_in(secs(1), secs(3600)))]
    timeout: Option<Duration>,
    /// An environment variable for the command, NAME=VALUE (repeatable); the rule must list
    /// NAME in its `env`. The command gets no other variables than PATH and these.
    #[arg(long = "env", value_name = "NAME=VALUE")]
    env: Vec<String>,
    /// The command and its arguments, after `--`: run as given, without a shell.
    #[arg(last = true, required = true, num_args = 1.., value_name = "COMMAND")]
    command: Vec<String>,
}

fn shown(argv: &[String]) -> String {
    argv.iter()
        .map(|a| {
            if a.is_empty() || a.contains(|c: char| c.is_whitespace() || c == '\'') {
                format!("{a:?}")
            } else {
                a.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `exec`.
pub async fn run(conn: &Conn, args: &ExecArgs) -> anyhow::Result<()> {
    let env = args
        .env
        .iter()
        .map(|e| match e.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok(pb::Label {
                key: k.to_owned(),
                value: v.to_owned(),
            }),
            _ => Err(CliError::Usage(format!("--env {e:?} is not NAME=VALUE"))),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let cmdline = shown(&args.command);
    let mut stream = conn
        .client()
        .exec(pb::ExecRequest {
            agent: args.agent.clone(),
            argv: args.command.clone(),
            timeout_secs: args.timeout.map_or(0, |d| d.as_secs() as u32),
            env,
        })
        .await
        .map_err(|s| {
            // The controller refuses a command for an agent that cannot run it (revoked, no
            // `exec` capability): refused by the controller, 3.
            if s.code() == tonic::Code::FailedPrecondition {
                CliError::Refused(format!("agent {}: {}", args.agent, s.message())).into()
            } else {
                conn.explain(s)
            }
        })?
        .into_inner();
    let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
    let result = loop {
        let Some(ev) = stream.message().await.map_err(|s| {
            conn.explain(s)
                .context(format!("`{cmdline}` on agent {}", args.agent))
        })?
        else {
            bail!(
                "`{cmdline}` on agent {}: the controller ended the stream without a result",
                args.agent
            );
        };
        match ev.kind {
            Some(pb::exec_event::Kind::Output(o)) => {
                digest.update(&o.data);
                // Written as it comes: the operator watches a long command live.
                if o.stream == pb::ExecStream::Stderr as i32 {
                    let mut e = std::io::stderr().lock();
                    e.write_all(&o.data)?;
                    e.flush()?;
                } else {
                    let mut out = std::io::stdout().lock();
                    out.write_all(&o.data)?;
                    out.flush()?;
                }
            }
            Some(pb::exec_event::Kind::Result(r)) => break r,
            None => {}
        }
    };
    let ours = hex::encode(digest.finish().as_ref());
    if ours != result.output_sha256 {
        bail!(
            "`{cmdline}` on agent {}: the output received (sha256 {ours}) is not what the controller relayed and audited (sha256 {})",
            args.agent,
            result.output_sha256
        );
    }
    if result.truncated {
        eprintln!(
            "certfleet: output of `{cmdline}` cut by agent {} after {} bytes (the rule's max_output)",
            args.agent, result.output_bytes
        );
    }
    use pb::exec_result::Outcome;
    let on = format!("`{cmdline}` on agent {}", args.agent);
    match Outcome::try_from(result.outcome).unwrap_or(Outcome::Unspecified) {
        Outcome::Exited if result.signal != 0 => Err(CliError::RemoteExit {
            code: 128u8.saturating_add((result.signal & 0x7f) as u8),
            message: format!("{on}: ended by signal {}", result.signal),
        }
        .into()),
        Outcome::Exited if result.exit_code == 0 => Ok(()),
        Outcome::Exited => Err(CliError::RemoteExit {
            code: (result.exit_code & 0xff) as u8,
            message: format!("{on}: exited with code {}", result.exit_code),
        }
        .into()),
        Outcome::Refused => {
            Err(CliError::Refused(format!("{on}: refused by the agent: {}", result.message)).into())
        }
        Outcome::TimedOut => Err(anyhow!(
            "{on}: {} (rule {:?}, timeout {}s)",
            result.message,
            result.rule,
            result.timeout_secs
        )),
        Outcome::FailedToStart | Outcome::Cancelled | Outcome::Unspecified => {
            Err(anyhow!("{on}: {}", result.message))
        }
    }
}
