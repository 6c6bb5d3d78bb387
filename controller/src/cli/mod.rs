//! The `certfleet` command line: the controller daemon (`init`, `serve`), offline store
//! maintenance, and the operator CLI. One module per resource (`agents`, `tokens`,
//! `operators`, `inventory`, `plan`, `policy`, `audit`, `store`), each holding its clap
//! arguments, its call to the controller and its rendering; `output` is the one output layer
//! (`-o table|wide|json|yaml|csv`, `--no-headers`) they all print through. `main.rs` only
//! parses, sets up logging and calls [`run`].

pub mod agents;
pub mod args;
pub mod audit;
pub mod conn;
pub mod daemon;
pub mod inventory;
pub mod operators;
pub mod output;
pub mod plan;
pub mod policy;
pub mod store;
pub mod tokens;

use std::path::PathBuf;

use clap::{CommandFactory, Parser, Subcommand};

pub use conn::Conn;
pub use output::{Format, OutputArgs};

/// `--version`: the crate version and the git commit it was built from (build.rs).
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("CERTFLEET_GIT_COMMIT"),
    ")"
);

/// `certfleet`: its global options and its command.
#[derive(Parser)]
#[command(
    name = "certfleet",
    version = VERSION,
    about = "Keeps the certificates of virtualization fleets alive"
)]
pub struct Cli {
    /// Controller address (host:port).
    #[arg(
        long,
        global = true,
        env = "CERTFLEET_CONTROLLER",
        default_value = "127.0.0.1:7443"
    )]
    pub controller: String,
    /// Operator identity directory (ca.pem, cert.pem, key.pem).
    #[arg(long, global = true, env = "CERTFLEET_IDENTITY")]
    pub identity: Option<PathBuf>,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// Every `certfleet` command.
#[derive(Subcommand)]
pub enum Command {
    /// Create the fleet CA, the controller certificate and the first admin identity.
    Init(daemon::InitArgs),
    /// Run the controller.
    Serve(daemon::ServeArgs),
    /// Join tokens.
    #[command(subcommand)]
    Token(tokens::TokenCmd),
    /// Enrolled agents.
    #[command(subcommand)]
    Agents(agents::AgentsCmd),
    /// Operator identities.
    #[command(subcommand)]
    Operators(operators::OperatorsCmd),
    /// The audit log of every mutation.
    Audit(audit::AuditArgs),
    /// The fleet's certificate inventory.
    Inventory(inventory::InventoryArgs),
    /// Rotation plans: create (or dry-run), approve, run, watch, roll back.
    #[command(subcommand)]
    Plan(plan::PlanCmd),
    /// Renewal policies: plans made automatically as certificates near expiry.
    #[command(subcommand)]
    Policy(policy::PolicyCmd),
    /// Offline maintenance of the state store (controller stopped).
    #[command(subcommand)]
    Store(store::StoreCmd),
    /// Print a shell completion script (bash, zsh, fish) to stdout.
    Completion {
        /// The shell.
        shell: certfleet_common::clidoc::Shell,
    },
    /// Write man pages, one per command, into a directory.
    Man {
        /// Directory the pages are written into.
        #[arg(long)]
        out_dir: PathBuf,
    },
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
        Command::Init(args) => daemon::init(args),
        Command::Serve(args) => daemon::serve(args).await,
        Command::Store(cmd) => store::run(cmd),
        Command::Token(cmd) => tokens::run(&connect(&cli)?, cmd).await,
        Command::Agents(cmd) => agents::run(&connect(&cli)?, cmd).await,
        Command::Operators(cmd) => operators::run(&connect(&cli)?, cmd).await,
        Command::Audit(args) => audit::run(&connect(&cli)?, args).await,
        Command::Inventory(args) => inventory::run(&connect(&cli)?, args).await,
        Command::Plan(cmd) => plan::run(&connect(&cli)?, cmd).await,
        Command::Policy(cmd) => policy::run(&connect(&cli)?, cmd).await,
    }
}

/// The operator connection the global options describe.
fn connect(cli: &Cli) -> anyhow::Result<Conn> {
    let dir = cli.identity.clone().ok_or_else(|| {
        anyhow::anyhow!(
            "no operator identity: pass --identity DIR or set CERTFLEET_IDENTITY (e.g. DATA_DIR/admin)"
        )
    })?;
    Conn::new(&cli.controller, &dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_tree_is_consistent() {
        Cli::command().debug_assert();
    }
}
