//! `certfleet-agent`: parse arguments, set up logging and the crypto provider, run.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use certfleet_agent::{collect, config::AgentConfig, report};
use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(name = "certfleet-agent", version, about = "certfleet host agent")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Table,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Scan this host's certificates locally, without a controller.
    Scan {
        /// Root prefix of the host (default: from config, else /).
        #[arg(long)]
        root: Option<PathBuf>,
        /// Agent configuration file.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Format,
    },
}

fn load_config(path: Option<&PathBuf>, root: Option<PathBuf>) -> anyhow::Result<AgentConfig> {
    let mut cfg = match path {
        Some(p) => AgentConfig::load(p).map_err(anyhow::Error::msg)?,
        None => AgentConfig::default(),
    };
    if let Some(r) = root {
        cfg.root = std::fs::canonicalize(&r).with_context(|| format!("root {}", r.display()))?;
    }
    Ok(cfg)
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    certfleet_common::tls::install_crypto_provider();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("certfleet-agent: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Scan { root, config, output } => {
            let cfg = load_config(config.as_ref(), root)?;
            let found = collect::scan(&cfg);
            let now = certfleet_common::model::now();
            match output {
                Format::Json => println!("{}", report::json(&found, now)),
                Format::Table => print!("{}", report::table(&found, now)),
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
