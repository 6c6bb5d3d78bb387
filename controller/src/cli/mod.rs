//! The `certfleet` command line: the controller daemon (`init`, `serve`), offline store
//! maintenance, and the operator CLI. One module per resource (`agents`, `tokens`,
//! `operators`, `inventory`, `plan`, `policy`, `audit`, `store`), each holding its clap
//! arguments, its call to the controller and its rendering; `output` is the one output layer
//! (`-o table|wide|json|yaml|csv`, `--no-headers`) they all print through. `main.rs` only
//! parses, sets up logging and calls [`run`].

pub mod agents;
pub mod args;
pub mod audit;
pub mod backup;
pub mod conn;
pub mod context;
pub mod daemon;
pub mod exec;
pub mod inventory;
pub mod operators;
pub mod output;
pub mod plan;
pub mod policy;
pub mod recover;
pub mod status;
pub mod store;
pub mod tokens;

use std::path::PathBuf;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

pub use conn::Conn;
pub use output::{Format, OutputArgs};

/// `--version`: the crate version and the git commit it was built from (build.rs).
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("CERTFLEET_GIT_COMMIT"),
    ")"
);

/// Exit codes of every `certfleet` command (also in `--help` and the README).
pub mod exit {
    /// Done; also "nothing to renew" (the reasons are printed).
    pub const OK: u8 = 0;
    /// A runtime error: controller unreachable, a file unreadable, a store failure.
    pub const RUNTIME: u8 = 1;
    /// Usage: an unknown flag or value, a malformed argument, a name that matches nothing.
    pub const USAGE: u8 = 2;
    /// The controller refused: permission denied, unknown or revoked operator.
    pub const REFUSED: u8 = 3;
    /// `plan watch`: the plan ended failed or aborted.
    pub const PLAN_FAILED: u8 = 4;
    /// `plan create --fail-if-nothing`: the recipe found nothing to renew.
    pub const NOTHING_TO_DO: u8 = 5;
    /// `store export` skipped unreadable values and wrote the rest (a partial salvage).
    pub const PARTIAL_EXPORT: u8 = crate::store::PARTIAL_EXPORT_EXIT;
    /// `status --check`: something needs attention (listed).
    pub const ATTENTION: u8 = 7;
}

/// The exit-code table printed at the end of `certfleet --help`.
const EXIT_CODES: &str = "\
Exit codes:
  0  done (also \"nothing to renew\": the reasons are printed on stderr)
  1  runtime error (controller unreachable, file unreadable, store failure)
  2  usage error (unknown flag or value, a name that matches nothing)
  3  refused by the controller (permission denied, unknown or revoked operator)
  4  plan watch: the plan ended failed or aborted
  5  plan create --fail-if-nothing: nothing to renew
  6  store export: unreadable values skipped (listed), everything else written
  7  status --check: something needs attention (listed, each with its fix)
  exec: the remote command's own exit code (128+N for signal N); 3 also when refused

Example:
  certfleet --controller ctl.example.org:7443 --identity ~/admin inventory --expiring-within 30d";

/// An outcome with its own exit code; anything else exits with [`exit::RUNTIME`].
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Bad input found after parsing (exit 2).
    #[error("{0}")]
    Usage(String),
    /// The controller refused the caller (exit 3).
    #[error("{0}")]
    Refused(String),
    /// A watched plan ended failed or aborted (exit 4).
    #[error("plan {id} ended {state}{}", if .message.is_empty() { String::new() } else { format!(": {}", .message) })]
    PlanFailed {
        /// Plan id.
        id: String,
        /// Its final state.
        state: String,
        /// Its message.
        message: String,
    },
    /// Nothing to renew, and the caller asked for a distinct code (exit 5).
    #[error("{0}")]
    NothingToDo(String),
    /// `exec`: the remote command ended with a non-zero code (exit with that code).
    #[error("{message}")]
    RemoteExit {
        /// The code to exit with.
        code: u8,
        /// What ended it, naming the command and the agent.
        message: String,
    },
    /// `status --check` found something that needs attention (exit 7).
    #[error("{0}")]
    Attention(String),
}

/// The exit code for an error `run` returned.
pub fn exit_code(e: &anyhow::Error) -> u8 {
    match e.downcast_ref::<CliError>() {
        Some(CliError::Usage(_)) => exit::USAGE,
        Some(CliError::Refused(_)) => exit::REFUSED,
        Some(CliError::PlanFailed { .. }) => exit::PLAN_FAILED,
        Some(CliError::NothingToDo(_)) => exit::NOTHING_TO_DO,
        Some(CliError::RemoteExit { code, .. }) => *code,
        Some(CliError::Attention(_)) => exit::ATTENTION,
        None if e.downcast_ref::<output::OutputError>().is_some() => exit::USAGE,
        None if e.is::<crate::store::PartialExport>() => exit::PARTIAL_EXPORT,
        None => exit::RUNTIME,
    }
}

/// `certfleet`: its global options and its command.
#[derive(Parser)]
#[command(
    name = "certfleet",
    version = VERSION,
    about = "Keeps the certificates of virtualization fleets alive",
    after_help = EXIT_CODES
)]
pub struct Cli {
    /// Controller address (host:port) [env: CERTFLEET_CONTROLLER; else the context's; else
    /// 127.0.0.1:7443].
    #[arg(long, global = true)]
    pub controller: Option<String>,
    /// Operator identity directory (ca.pem, cert.pem, key.pem) [env: CERTFLEET_IDENTITY; else
    /// the context's].
    #[arg(long, global = true)]
    pub identity: Option<PathBuf>,
    /// Client context to use (from the client config) instead of its current-context [env:
    /// CERTFLEET_CONTEXT].
    #[arg(long, global = true)]
    pub context: Option<String>,
    /// Client config file [env: CERTFLEET_CONFIG; default:
    /// $XDG_CONFIG_HOME/certfleet/config.toml, else ~/.config/certfleet/config.toml].
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// Every `certfleet` command.
#[derive(Subcommand)]
pub enum Command {
    /// Create the fleet CA, the controller certificate and the first admin identity.
    #[command(
        after_help = "Example:\n  certfleet init --data-dir /var/lib/certfleet --san ctl.example.org"
    )]
    Init(daemon::InitArgs),
    /// Run the controller.
    #[command(
        after_help = "Example:\n  certfleet serve --data-dir /var/lib/certfleet --listen 0.0.0.0:7443 --http 127.0.0.1:9443"
    )]
    Serve(daemon::ServeArgs),
    /// The controller at a glance: version, certificates, store, agents, plans, and what
    /// needs attention.
    #[command(after_help = "Example:\n  certfleet status\n  certfleet status --check -o json")]
    Status(status::StatusArgs),
    /// Join tokens.
    #[command(subcommand)]
    #[command(after_help = "Example:\n  certfleet token create --ttl 1h --label site=dc1")]
    Token(tokens::TokenCmd),
    /// Enrolled agents.
    #[command(subcommand)]
    #[command(after_help = "Example:\n  certfleet agents list -o wide")]
    Agents(agents::AgentsCmd),
    /// Operator identities.
    #[command(subcommand)]
    #[command(
        after_help = "Example:\n  certfleet operators issue alice --role viewer --out ./alice"
    )]
    Operators(operators::OperatorsCmd),
    /// The audit log of every mutation.
    #[command(after_help = "Example:\n  certfleet audit --limit 20")]
    Audit(audit::AuditArgs),
    /// The fleet's certificate inventory.
    #[command(
        after_help = "Example:\n  certfleet inventory --expiring-within 30d --platform vsphere"
    )]
    Inventory(inventory::InventoryArgs),
    /// Rotation plans: create (or dry-run), approve, run, watch, roll back.
    #[command(subcommand)]
    #[command(
        after_help = "Example:\n  certfleet plan create files --expiring-within 30d --dry-run"
    )]
    Plan(plan::PlanCmd),
    /// Renewal policies: plans made automatically as certificates near expiry.
    #[command(subcommand)]
    #[command(
        after_help = "Example:\n  certfleet policy set ovirt.host --renew-within 30d --window \"0 2 * * SAT\""
    )]
    Policy(policy::PolicyCmd),
    /// Run an allow-listed command on an agent (admins only), its output live, its exit code.
    #[command(
        after_help = "The agent decides: only commands its config's [[exec.allow]] rules permit run; a\nrefusal names the rule. No shell: the words after -- are the argv.\n\nExample:\n  certfleet exec vc1 --timeout 30s -- systemctl status vmware-vpxd.service"
    )]
    Exec(exec::ExecArgs),
    /// Emergency recovery of an outage through the agents, built from the recipes.
    #[command(subcommand)]
    #[command(after_help = "Example:\n  certfleet recover ovirt-hosts --cluster Default --dry-run")]
    Recover(recover::RecoverCmd),
    /// Maintenance of the state store: online compaction, offline export and import.
    #[command(subcommand)]
    #[command(
        after_help = "Example:\n  certfleet store export --data-dir /var/lib/certfleet --out state.jsonl"
    )]
    Store(store::StoreCmd),
    /// Write the whole controller (store snapshot, fleet CA and its key, the controller's
    /// identity) to one file encrypted with a passphrase, while it runs (admins only).
    #[command(
        after_help = "The passphrase comes from --passphrase-file or CERTFLEET_BACKUP_PASSPHRASE, never argv.\n\nExample:\n  certfleet backup --out /srv/backup/certfleet-$(date +%F).cfbak --passphrase-file /root/backup.pass"
    )]
    Backup(backup::BackupArgs),
    /// Bring a controller back from `certfleet backup` into a new (empty) data directory:
    /// same fleet CA, agents reconnect without enrolling again.
    #[command(
        after_help = "Nothing is written unless the passphrase and every digest check out.\n\nExample:\n  certfleet restore --in certfleet-2026-12-01.cfbak --data-dir /var/lib/certfleet --passphrase-file /root/backup.pass"
    )]
    Restore(backup::RestoreArgs),
    /// Client contexts: named controllers and identities for several fleets.
    #[command(subcommand)]
    #[command(
        after_help = "Example:\n  certfleet --controller ctl.example.org:7443 --identity ~/prod-admin context set prod --use\n  certfleet --context lab inventory"
    )]
    Context(context::ContextCmd),
    /// Print a shell completion script (bash, zsh, fish) to stdout.
    #[command(
        after_help = "Example:\n  certfleet completion bash > /etc/bash_completion.d/certfleet"
    )]
    Completion {
        /// The shell.
        shell: certfleet_common::clidoc::Shell,
    },
    /// Write man pages, one per command, into a directory.
    #[command(after_help = "Example:\n  certfleet man --out-dir /usr/local/share/man/man1")]
    Man {
        /// Directory the pages are written into.
        #[arg(long)]
        out_dir: PathBuf,
    },
}

impl Cli {
    /// How this command logs: `serve --log-format`, text for everything else (the operator
    /// commands print their answers, not logs).
    pub fn log_format(&self) -> certfleet_common::process::LogFormat {
        match &self.command {
            Command::Serve(a) => a.log_format,
            _ => certfleet_common::process::LogFormat::Text,
        }
    }
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match &cli.command {
        Command::Completion { shell } => {
            certfleet_common::clidoc::write_completion(
                &mut Cli::command(),
                *shell,
                &mut std::io::stdout().lock(),
            )?;
            Ok(())
        }
        Command::Man { out_dir } => {
            for page in certfleet_common::clidoc::write_man_pages(Cli::command(), out_dir)? {
                println!("{}", page.display());
            }
            Ok(())
        }
        Command::Context(cmd) => context::run(&cli.globals(), cmd),
        Command::Init(args) => daemon::init(args),
        Command::Serve(args) => daemon::serve(args).await,
        Command::Store(store::StoreCmd::Compact { output }) => {
            store::compact(&connect(&cli)?, output).await
        }
        Command::Store(cmd) => store::run(cmd),
        Command::Backup(args) => backup::backup(&connect(&cli)?, args).await,
        Command::Restore(args) => backup::restore(args),
        Command::Status(args) => status::run(&connect(&cli)?, args).await,
        Command::Token(cmd) => tokens::run(&connect(&cli)?, cmd).await,
        Command::Agents(cmd) => agents::run(&connect(&cli)?, cmd).await,
        // Break-glass: from the data directory, with no operator certificate to connect with.
        Command::Operators(operators::OperatorsCmd::Issue {
            name,
            role,
            out,
            data_dir: Some(data_dir),
        }) => operators::issue_local(name, role, out, data_dir),
        Command::Operators(cmd) => operators::run(&connect(&cli)?, cmd).await,
        Command::Audit(args) => audit::run(&connect(&cli)?, args).await,
        Command::Inventory(args) => inventory::run(&connect(&cli)?, args).await,
        Command::Plan(cmd) => plan::run(&connect(&cli)?, cmd).await,
        Command::Policy(cmd) => policy::run(&connect(&cli)?, cmd).await,
        Command::Exec(args) => exec::run(&connect(&cli)?, args).await,
        Command::Recover(cmd) => recover::run(&connect(&cli)?, cmd).await,
    }
}

impl Cli {
    /// The global options the context resolution takes.
    pub fn globals(&self) -> context::Globals {
        context::Globals {
            controller: self.controller.clone(),
            identity: self.identity.clone(),
            context: self.context.clone(),
            config: self.config.clone(),
        }
    }
}

/// Parses the command line; a context's default output becomes the default of every `-o`
/// (a given `-o` still wins). A client config that cannot be read is reported when a command
/// resolves it, not here.
pub fn parse() -> Cli {
    let cli = Cli::parse();
    let default = context::resolve(&cli.globals(), &context::ProcessEnv)
        .ok()
        .and_then(|r| r.output);
    match default {
        None => cli,
        Some(f) => {
            let cmd = with_output_default(Cli::command(), f);
            Cli::from_arg_matches(&cmd.get_matches()).unwrap_or_else(|e| e.exit())
        }
    }
}

/// `cmd` with `format` as the default of every `-o/--output` in its tree.
fn with_output_default(mut cmd: clap::Command, format: Format) -> clap::Command {
    let value: &'static str = match format {
        Format::Table => "table",
        Format::Wide => "wide",
        Format::Json => "json",
        Format::Yaml => "yaml",
        Format::Csv => "csv",
    };
    if cmd.get_arguments().any(|a| {
        a.get_id() == "output"
            && a.get_possible_values()
                .iter()
                .any(|p| p.get_name() == "wide")
    }) {
        cmd = cmd.mut_arg("output", |a| a.default_value(value));
    }
    let names: Vec<String> = cmd
        .get_subcommands()
        .map(|s| s.get_name().to_owned())
        .collect();
    for n in names {
        cmd = cmd.mut_subcommand(n, |s| with_output_default(s, format));
    }
    cmd
}

/// The operator connection the global options, the environment and the client context
/// describe (resolved in [`context::resolve`]).
fn connect(cli: &Cli) -> anyhow::Result<Conn> {
    let r = context::resolve(&cli.globals(), &context::ProcessEnv)?;
    let id = r.identity.ok_or_else(|| {
        anyhow::anyhow!(
            "no operator identity: pass --identity DIR, set CERTFLEET_IDENTITY (e.g. DATA_DIR/admin), or use a context (`certfleet context set NAME --help`)"
        )
    })?;
    tracing::debug!(controller = %r.controller, context = ?r.context, "resolved connection");
    Conn::new(&r.controller, &id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_tree_is_consistent() {
        Cli::command().debug_assert();
    }

    /// Every command's `--help` has an example and every flag and argument a help text.
    #[test]
    fn every_command_has_an_example_and_every_flag_a_help_text() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            if cmd.get_name() == "help" {
                return; // clap's own `help` subcommands
            }
            let path = format!("{path} {}", cmd.get_name()).trim().to_owned();
            let after = cmd
                .get_after_help()
                .or(cmd.get_after_long_help())
                .map(|h| h.to_string())
                .unwrap_or_default();
            if !after.contains("Example:\n  certfleet") {
                missing.push(format!("`{path}`: no example in --help"));
            }
            for a in cmd.get_arguments() {
                if a.get_help().is_none() && a.get_long_help().is_none() {
                    missing.push(format!("`{path}` {}: no help text", a.get_id()));
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub, &path, missing);
            }
        }
        let mut cmd = Cli::command();
        cmd.build();
        let mut missing = Vec::new();
        walk(&cmd, "", &mut missing);
        assert!(missing.is_empty(), "{}", missing.join("\n"));
    }

    #[test]
    fn exit_codes_are_distinct_and_documented() {
        let codes = [
            exit::OK,
            exit::RUNTIME,
            exit::USAGE,
            exit::REFUSED,
            exit::PLAN_FAILED,
            exit::NOTHING_TO_DO,
            exit::PARTIAL_EXPORT,
            exit::ATTENTION,
        ];
        for (i, c) in codes.iter().enumerate() {
            assert!(!codes[..i].contains(c), "exit code {c} used twice");
            assert!(
                EXIT_CODES.contains(&format!("\n  {c}  ")),
                "exit code {c} missing from --help"
            );
        }
        let help = Cli::command().render_long_help().to_string();
        assert!(help.contains("Exit codes:"), "{help}");
        let e = anyhow::Error::new(CliError::Refused("no".into())).context("calling");
        assert_eq!(exit_code(&e), exit::REFUSED);
        assert_eq!(exit_code(&anyhow::anyhow!("disk full")), exit::RUNTIME);
    }
}
