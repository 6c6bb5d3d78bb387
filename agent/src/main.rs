//! `certfleet-agent`: parse arguments, set up logging and the crypto provider, run.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use certfleet_agent::{collect, config::AgentConfig, link, report};
use clap::{CommandFactory, Parser, Subcommand, ValueEnum};

/// `--version`: the crate version and the git commit it was built from (build.rs).
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("CERTFLEET_GIT_COMMIT"),
    ")"
);

#[derive(Parser)]
#[command(name = "certfleet-agent", version = VERSION, about = "certfleet host agent")]
struct Cli {
    /// Log lines as text (colour only on a terminal) or JSON, one object per line.
    #[arg(
        long,
        global = true,
        value_enum,
        env = "CERTFLEET_LOG_FORMAT",
        default_value = "text"
    )]
    log_format: certfleet_common::process::LogFormat,
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
    /// Enroll this host with a controller using a join token.
    Enroll {
        /// Controller address (host:port).
        #[arg(long, env = "CERTFLEET_CONTROLLER")]
        controller: String,
        /// Join token from `certfleet token create`.
        #[arg(long, env = "CERTFLEET_TOKEN")]
        token: String,
        /// Where the agent keeps its identity.
        #[arg(long, default_value = "/var/lib/certfleet-agent")]
        state_dir: PathBuf,
        /// Agent name (default: host name).
        #[arg(long)]
        name: Option<String>,
    },
    /// Connect to the controller and serve it until stopped (SIGTERM).
    Run {
        #[arg(long, default_value = "/var/lib/certfleet-agent")]
        state_dir: PathBuf,
        /// Agent configuration file.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Root prefix of the host (overrides the config).
        #[arg(long)]
        root: Option<PathBuf>,
        /// Longest reconnect backoff.
        #[arg(long, value_parser = max_backoff, default_value = "60s")]
        max_backoff: std::time::Duration,
    },
    /// Backups taken before every replacement (newest last).
    Backups {
        #[arg(long, default_value = "/var/lib/certfleet-agent")]
        state_dir: PathBuf,
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Format,
        /// Restore this backup (files back with their bytes, mode and owner).
        #[arg(long)]
        restore: Option<String>,
    },
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
    /// Emergency recovery of this host with no controller (see `sign` for the other half).
    Recover {
        #[command(subcommand)]
        what: RecoverCmd,
    },
    /// On an oVirt engine: sign a host's recovery CSR with the engine CA, as
    /// pki-enroll-request.sh does (oVirt's openssl.conf/cert.conf, SAN); never twice per key.
    Sign {
        /// The CSR from `certfleet-agent recover ovirt-host --csr-out`.
        #[arg(long)]
        csr: PathBuf,
        /// Where to write the signed certificate (PEM).
        #[arg(long)]
        out: PathBuf,
        /// subjectAltName (OVIRT_SAN), e.g. DNS:host1.example.test (default: DNS:<CN>).
        #[arg(long)]
        san: Option<String>,
        /// Subject in openssl's /O=…/CN=… form (default: the CSR's).
        #[arg(long)]
        subject: Option<String>,
        /// Validity in days (default: VdsCertificateValidityInDays, else 1827).
        #[arg(long)]
        days: Option<u64>,
        #[command(flatten)]
        local: LocalArgs,
    },
    /// Check a config file and this host against it, reporting every problem at once: unknown
    /// keys, values, inline passwords, owners/groups and units to restart that do not exist.
    /// Exits 0 when fine, 1 when anything is wrong.
    ///
    /// Example: certfleet-agent check-config --config /etc/certfleet/agent.toml
    CheckConfig {
        /// Agent configuration file.
        #[arg(long, default_value = "/etc/certfleet/agent.toml")]
        config: PathBuf,
        /// Root prefix of the host (overrides the config).
        #[arg(long)]
        root: Option<PathBuf>,
    },
    /// Check this host for certfleet: the config, the tools each platform's collector and
    /// recipes run, the state directory and key permissions, the agent's certificate, the
    /// controller (TLS with this agent's identity) and the clock skew against it. Each
    /// finding comes with its fix. Read-only. Exits 0 when all is fine, 7 when something
    /// needs attention (a WARN or FAIL line), 1 when the check itself could not run.
    #[command(
        after_help = "Example:\n  certfleet-agent doctor --config /etc/certfleet/agent.toml\n  certfleet-agent doctor -o json --no-controller"
    )]
    Doctor {
        /// Where the agent keeps its identity.
        #[arg(long, default_value = "/var/lib/certfleet-agent")]
        state_dir: PathBuf,
        /// Agent configuration file (default: none, built-in defaults).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Root prefix of the host (overrides the config).
        #[arg(long)]
        root: Option<PathBuf>,
        /// Skip the controller and clock checks (offline).
        #[arg(long)]
        no_controller: bool,
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Format,
    },
    /// Print a shell completion script (bash, zsh, fish) to stdout.
    Completion {
        shell: certfleet_common::clidoc::Shell,
    },
    /// Write man pages, one per command, into a directory.
    Man {
        #[arg(long)]
        out_dir: PathBuf,
    },
}

/// Where a local (controller-less) action keeps its journal and finds the host.
#[derive(clap::Args)]
struct LocalArgs {
    /// Agent state directory (journal, intent log, backups).
    #[arg(long, default_value = "/var/lib/certfleet-agent")]
    state_dir: PathBuf,
    /// Agent configuration file.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Root prefix of the host (overrides the config).
    #[arg(long)]
    root: Option<PathBuf>,
    /// Timeout of each tool run.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5m")]
    timeout: std::time::Duration,
}

#[derive(Subcommand)]
enum RecoverCmd {
    /// oVirt host with an expired VDSM certificate: `--csr-out` here, `sign` on the engine,
    /// then `--cert-in` here (installs at every path with backups, restarts libvirtd and
    /// vdsmd, verifies).
    #[command(group = clap::ArgGroup::new("phase").required(true).args(["csr_out", "cert_in"]))]
    OvirtHost {
        /// Write a CSR made from /etc/pki/vdsm/keys/vdsmkey.pem to this file.
        #[arg(long)]
        csr_out: Option<PathBuf>,
        /// Install this certificate (signed by the engine from that CSR).
        #[arg(long)]
        cert_in: Option<PathBuf>,
        /// Subject for the CSR (default: the current VDSM certificate's).
        #[arg(long, requires = "csr_out")]
        subject: Option<String>,
        /// Check the certificate and print what would change; change nothing.
        #[arg(long, requires = "cert_in")]
        dry_run: bool,
        #[command(flatten)]
        local: LocalArgs,
    },
    /// Self-hosted engine host whose expired VDSM certificate keeps libvirtd, and so the
    /// HostedEngine VM, down. `--csr-out`: bring the VM up and write the CSR; sign it on the
    /// engine VM (`certfleet-agent sign`); `--cert-in`: install it and put libvirtd back to
    /// normal. Prints its plan first, audits every action (recover-audit.jsonl in the state
    /// directory), reports the wall time.
    ///
    /// Ways: `dropin` (default, safer): a systemd drop-in under /run starts libvirtd without
    /// --listen, so without its TLS listener and without loading the expired certificate;
    /// the clock is not touched. Risk: no TLS to the host (no migration, the engine cannot
    /// manage it) until --cert-in removes the drop-in; a reboot drops it by itself; hosts
    /// with a socket-activated libvirtd (libvirtd-tls.socket) are not handled.
    /// `clock` (the manual procedure): stop chronyd, set the clock inside the certificate's
    /// validity, start libvirtd and vdsmd, wait for the VM, restore the clock and chronyd.
    /// The change is journaled before it is made and restored on failure, and at the next
    /// agent start after a crash. Risk: everything on the host sees a wrong time for the
    /// minutes the VM takes to start; a host reboot in between leaves the clock to chronyd.
    #[command(
        group = clap::ArgGroup::new("phase").required(true).args(["csr_out", "cert_in"]),
        after_help = "Example:\n  certfleet-agent recover ovirt-hosted-engine --csr-out /root/host.csr\n  \
                      certfleet-agent sign --csr host.csr --out host.cer   # on the engine VM\n  \
                      certfleet-agent recover ovirt-hosted-engine --cert-in /root/host.cer"
    )]
    OvirtHostedEngine {
        /// How the VM is brought up: dropin (libvirtd without TLS) or clock (clock set back).
        #[arg(long, value_enum, default_value = "dropin")]
        way: HeWay,
        /// Bring the HostedEngine VM up and write a CSR from vdsmkey.pem to this file.
        #[arg(long)]
        csr_out: Option<PathBuf>,
        /// Install this certificate (signed by the engine from that CSR) and restore libvirtd.
        #[arg(long)]
        cert_in: Option<PathBuf>,
        /// Print the plan (and check --cert-in); change nothing.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        local: LocalArgs,
    },
    /// vCenter (VCSA) whose STS, Machine SSL or solution-user certificates expired, recovered
    /// on this node with no controller: scans locally, prints the plan (STS, Machine SSL,
    /// solution users, in the GSS order), runs only what is due (replication gate, then each
    /// replacement with its restart, as the controller's recipes do), rescans and verifies.
    /// Refuses before any change (exit 3) on several STS tenant credentials, an expired custom
    /// root the certificates chain to, or a due VMCA root. A run killed half-way, or stopped
    /// by a failed step (rolled back), is finished by running the command again; finished
    /// steps are not repeated. Each step's tools get at least the controller recipe's time
    /// (10-15 min for replacements and restarts) whatever --timeout says. Audited in
    /// recover-audit.jsonl; prints the wall time.
    /// On a multi-node SSO domain the STS replacement is domain-wide: restart every other
    /// vCenter afterwards (the command says so).
    #[command(
        after_help = "Example:\n  certfleet-agent recover vsphere --config /etc/certfleet/agent.toml --dry-run\n  \
                      certfleet-agent recover vsphere --config /etc/certfleet/agent.toml --within 7d"
    )]
    Vsphere {
        /// Certificates expiring within this long count as expired (e.g. 7d, 30d).
        #[arg(long, value_parser = humantime::parse_duration, default_value = "7d")]
        within: std::time::Duration,
        /// Print the plan; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Go on although vmdir holds more than one STS TenantCredential (the STS step deletes
        /// them all and writes one; check first which one vCenter signs with, e.g. checksts.py).
        #[arg(long)]
        allow_several_tenant_credentials: bool,
        #[command(flatten)]
        local: LocalArgs,
    },
    /// GKE on VMware admin workstation: user-cluster kubeconfigs whose client certificate
    /// expired, fetched anew from the admin cluster (kubectl get secret admin -n CLUSTER) and
    /// installed with a backup, owner and mode kept, checked with kubectl; no controller.
    /// Refuses (exit 3) when the admin kubeconfig itself expired, naming it. Audited in
    /// recover-audit.jsonl; prints the wall time.
    #[command(
        after_help = "Example:\n  certfleet-agent recover gke-kubeconfig --dry-run\n  \
                      certfleet-agent recover gke-kubeconfig --cluster user-cluster-1"
    )]
    GkeKubeconfig {
        /// Only the kubeconfigs of this user cluster (repeatable; default: every one expired).
        #[arg(long = "cluster")]
        clusters: Vec<String>,
        /// Print the plan; change nothing.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        local: LocalArgs,
    },
}

/// Exit code of a local recovery's error: 3 refused (nothing changed), 2 usage, 1 otherwise.
fn recover_exit(what: &str, e: &certfleet_agent::recover::RecoverError) -> ExitCode {
    use certfleet_agent::recover::RecoverError as E;
    eprintln!("certfleet-agent: {what}: {e}");
    ExitCode::from(match e {
        E::Refused(_) => 3,
        E::Usage(_) => 2,
        _ => 1,
    })
}

/// Prints a local recovery's outcome and wall time; its exit code.
fn recovery_done(
    what: &str,
    started: std::time::Instant,
    result: Result<String, certfleet_agent::recover::RecoverError>,
) -> ExitCode {
    let wall = started.elapsed().as_secs_f64();
    let code = match result {
        Ok(msg) => {
            println!("{msg}");
            ExitCode::SUCCESS
        }
        Err(e) => recover_exit(what, &e),
    };
    println!("wall time {wall:.1}s");
    code
}

/// `recover ovirt-hosted-engine --way`.
#[derive(Clone, Copy, ValueEnum)]
enum HeWay {
    /// libvirtd started without its TLS listener through a systemd drop-in (safer).
    Dropin,
    /// The host clock set inside the certificate's validity, then restored.
    Clock,
}

fn local_setup(
    local: &LocalArgs,
) -> anyhow::Result<(AgentConfig, certfleet_agent::state::StateDir)> {
    let cfg = load_config(local.config.as_ref(), local.root.clone())?;
    certfleet_common::atomic::create_private_dir(&local.state_dir)?;
    let state = certfleet_agent::state::StateDir(local.state_dir.clone());
    undo_pending_clock(&cfg, &state)?;
    Ok((cfg, state))
}

/// A clock change left by an interrupted hosted-engine recovery is undone before anything
/// else the agent does.
fn undo_pending_clock(
    cfg: &AgentConfig,
    state: &certfleet_agent::state::StateDir,
) -> anyhow::Result<()> {
    if let Some(done) = certfleet_agent::recover::hosted_engine::undo_pending_clock(
        cfg,
        state,
        std::time::Duration::from_secs(120),
        &print_line,
    )? {
        println!("{done}");
    }
    Ok(())
}

/// The context of a local recovery: progress printed as it happens.
fn local_recovery<'a>(
    cfg: &'a AgentConfig,
    state: &'a certfleet_agent::state::StateDir,
    local: &LocalArgs,
) -> certfleet_agent::recover::Local<'a> {
    certfleet_agent::recover::Local {
        cfg,
        state,
        timeout: local.timeout,
        out: &print_line,
    }
}

/// Progress of a local recovery, printed as it happens.
fn print_line(line: String) {
    println!("  {line}");
}

/// `--max-backoff`: between 1s and 1h, refused at parse time with the limits named.
fn max_backoff(s: &str) -> Result<std::time::Duration, String> {
    let d = humantime::parse_duration(s.trim())
        .map_err(|e| format!("{s:?}: {e} (a duration between 1s and 1h, e.g. 60s)"))?;
    if d < std::time::Duration::from_secs(1) || d > std::time::Duration::from_secs(3600) {
        return Err(format!("{s:?} is out of range: must be between 1s and 1h"));
    }
    Ok(d)
}

fn load_config(path: Option<&PathBuf>, root: Option<PathBuf>) -> anyhow::Result<AgentConfig> {
    let mut cfg = match path {
        Some(p) => AgentConfig::load(p).map_err(anyhow::Error::msg)?,
        None => AgentConfig::default(),
    };
    if let Some(r) = root {
        cfg.root = std::fs::canonicalize(&r).with_context(|| format!("root {}", r.display()))?;
    }
    let problems = cfg.resolve_secrets();
    if !problems.is_empty() {
        anyhow::bail!("config:\n  - {}", problems.join("\n  - "));
    }
    Ok(cfg)
}

fn main() -> ExitCode {
    // Before any thread starts (see the function's note): scans run on a blocking thread, and
    // their records are encoded and freed on the runtime's.
    certfleet_common::heap::one_arena();
    let cli = Cli::parse();
    certfleet_common::process::init_tracing(cli.log_format);
    certfleet_common::tls::install_crypto_provider();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("certfleet-agent: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    // One thread drives the link (one stream, heartbeats, timers); scans and steps run on
    // blocking threads. A current-thread runtime has no worker threads, so no worker stacks
    // and, with glibc, no per-worker malloc arenas: the agent is meant to be invisible on the
    // hosts it watches (issue 10: <= 8 MB idle). Blocking threads exit after a few idle seconds
    // (tokio keeps them 10 s), so a finished scan's thread does not linger.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_keep_alive(std::time::Duration::from_secs(2))
        .build()
        .expect("tokio runtime")
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::CheckConfig { config, root } => {
            let root = match root {
                Some(r) => Some(
                    std::fs::canonicalize(&r).with_context(|| format!("root {}", r.display()))?,
                ),
                None => None,
            };
            let problems = AgentConfig::check_file(&config, root.as_deref(), &SystemFacts);
            if problems.is_empty() {
                println!("{}: OK", config.display());
                Ok(ExitCode::SUCCESS)
            } else {
                println!("{}: {} problem(s)", config.display(), problems.len());
                for p in &problems {
                    println!("  - {p}");
                }
                Ok(ExitCode::from(1))
            }
        }
        Command::Doctor {
            state_dir,
            config,
            root,
            no_controller,
            output,
        } => doctor(&state_dir, config.as_deref(), root, no_controller, output),
        Command::Completion { shell } => {
            certfleet_common::clidoc::write_completion(
                &mut Cli::command(),
                shell,
                &mut std::io::stdout().lock(),
            )?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Man { out_dir } => {
            for page in certfleet_common::clidoc::write_man_pages(Cli::command(), &out_dir)? {
                println!("{}", page.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Backups {
            state_dir,
            output,
            restore,
        } => {
            let state = certfleet_agent::state::StateDir(state_dir);
            if let Some(id) = restore {
                let m = certfleet_agent::act::backup::restore(&state, &id)?;
                println!("restored backup {id}: {} file(s)", m.files.len());
                return Ok(ExitCode::SUCCESS);
            }
            let list = certfleet_agent::act::backup::list(&state);
            match output {
                Format::Json => println!("{}", serde_json::to_string_pretty(&list)?),
                Format::Table => {
                    for m in &list {
                        println!(
                            "{}  {}  step {}",
                            m.id,
                            certfleet_common::model::format_time(m.created_at),
                            m.step_id
                        );
                        for f in &m.files {
                            let what = if f.existed {
                                format!(
                                    "{:o} {}:{} sha256 {}",
                                    f.mode,
                                    f.uid,
                                    f.gid,
                                    &f.sha256[..16]
                                )
                            } else {
                                "did not exist".into()
                            };
                            println!("    {}  ({what})", f.path.display());
                        }
                    }
                    if list.is_empty() {
                        println!("no backups in {}", state.path().display());
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Enroll {
            controller,
            token,
            state_dir,
            name,
        } => {
            let state = certfleet_agent::state::StateDir(state_dir);
            let meta =
                runtime().block_on(link::enroll(&controller, &token, &state, name.as_deref()))?;
            println!(
                "enrolled as {} ({}) with {}",
                meta.name, meta.agent_id, meta.controller
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Run {
            state_dir,
            config,
            root,
            max_backoff,
        } => {
            let cfg = load_config(config.as_ref(), root)?;
            let state = certfleet_agent::state::StateDir(state_dir);
            undo_pending_clock(&cfg, &state)?;
            let opts = link::RunOptions {
                backoff_cap: max_backoff,
                ..Default::default()
            };
            match runtime().block_on(link::run(
                state,
                cfg,
                opts,
                certfleet_common::process::shutdown_signal(),
            )) {
                Ok(()) => {
                    tracing::info!("stopped");
                    Ok(ExitCode::SUCCESS)
                }
                Err(e @ link::LinkError::Revoked(_)) => {
                    eprintln!("certfleet-agent: {e}");
                    // EX_NOPERM: the unit's RestartPreventExitStatus keeps systemd from looping.
                    Ok(ExitCode::from(77))
                }
                Err(e) => Err(e.into()),
            }
        }
        Command::Recover {
            what:
                RecoverCmd::OvirtHost {
                    csr_out,
                    cert_in,
                    subject,
                    dry_run,
                    local,
                },
        } => {
            let started = std::time::Instant::now();
            let (cfg, state) = local_setup(&local)?;
            let l = local_recovery(&cfg, &state, &local);
            if let Some(out) = csr_out {
                let san = l.ovirt_host_csr(&out, subject.as_deref())?;
                println!("wrote {}", out.display());
                println!(
                    "next, on the engine: certfleet-agent sign --csr {} --out <host>.cer --san {san}",
                    out.display()
                );
                println!("then here: certfleet-agent recover ovirt-host --cert-in <host>.cer");
            } else if let Some(cert) = cert_in {
                let msg = l.ovirt_host_install(&cert, dry_run)?;
                println!("{msg}");
            }
            println!("wall time {:.1}s", started.elapsed().as_secs_f64());
            Ok(ExitCode::SUCCESS)
        }
        Command::Recover {
            what:
                RecoverCmd::OvirtHostedEngine {
                    way,
                    csr_out,
                    cert_in,
                    dry_run,
                    local,
                },
        } => {
            use certfleet_agent::recover::hosted_engine::Way;
            let started = std::time::Instant::now();
            let (cfg, state) = local_setup(&local)?;
            let l = local_recovery(&cfg, &state, &local);
            let way = match way {
                HeWay::Dropin => Way::DropIn,
                HeWay::Clock => Way::Clock,
            };
            let result = match (csr_out, cert_in) {
                (Some(out), _) => l.hosted_engine_start(way, &out, dry_run),
                (None, Some(cert)) => l.hosted_engine_finish(way, &cert, dry_run),
                (None, None) => unreachable!("clap requires one phase"),
            };
            let wall = started.elapsed().as_secs_f64();
            match result {
                Ok(msg) => {
                    println!("{msg}");
                    println!("wall time {wall:.1}s");
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    eprintln!("certfleet-agent: recover ovirt-hosted-engine: {e}");
                    println!("wall time {wall:.1}s");
                    Ok(ExitCode::from(1))
                }
            }
        }
        Command::Recover {
            what:
                RecoverCmd::Vsphere {
                    within,
                    dry_run,
                    allow_several_tenant_credentials,
                    local,
                },
        } => {
            let started = std::time::Instant::now();
            let (cfg, state) = local_setup(&local)?;
            let l = local_recovery(&cfg, &state, &local);
            let result = l.vsphere(&certfleet_agent::recover::vsphere::VsphereOptions {
                within,
                dry_run,
                allow_several_tenant_credentials,
            });
            Ok(recovery_done("recover vsphere", started, result))
        }
        Command::Recover {
            what:
                RecoverCmd::GkeKubeconfig {
                    clusters,
                    dry_run,
                    local,
                },
        } => {
            let started = std::time::Instant::now();
            let (cfg, state) = local_setup(&local)?;
            let l = local_recovery(&cfg, &state, &local);
            let result = l.gke_kubeconfig(&clusters, dry_run);
            Ok(recovery_done("recover gke-kubeconfig", started, result))
        }
        Command::Sign {
            csr,
            out,
            san,
            subject,
            days,
            local,
        } => {
            let (cfg, state) = local_setup(&local)?;
            let l = local_recovery(&cfg, &state, &local);
            let done = l.sign(&certfleet_agent::recover::SignRequest {
                csr: &csr,
                out: &out,
                san: san.as_deref(),
                subject: subject.as_deref(),
                days,
            })?;
            println!(
                "wrote {} (serial {}){}",
                out.display(),
                done.details["serial"].as_str().unwrap_or("?"),
                if done.from_journal {
                    ", signed earlier for this key: not signed again"
                } else {
                    ""
                }
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Scan {
            root,
            config,
            output,
        } => {
            let cfg = load_config(config.as_ref(), root)?;
            // The local report prints no DER: the scan does not keep it (a third of what
            // 10,000 certificates take in memory).
            let found = collect::scan_into(&cfg, collect::Collection::without_der());
            let now = certfleet_common::model::now();
            match output {
                Format::Json => report::write_json(&found, now, std::io::stdout().lock())
                    .context("writing the report")?,
                Format::Table => print!("{}", report::table(&found, now)),
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `certfleet-agent doctor`: the findings of [`certfleet_agent::doctor`], printed.
fn doctor(
    state_dir: &std::path::Path,
    config: Option<&std::path::Path>,
    root: Option<PathBuf>,
    no_controller: bool,
    output: Format,
) -> anyhow::Result<ExitCode> {
    use certfleet_agent::doctor as d;
    let root = match root {
        Some(r) => {
            Some(std::fs::canonicalize(&r).with_context(|| format!("root {}", r.display()))?)
        }
        None => None,
    };
    let mut findings = d::check_config(config, root.as_deref(), &SystemFacts);
    // The tools are checked against the config as the agent would load it; a config too broken
    // to load is already a finding, and the tools are then checked at their defaults.
    let mut cfg = config
        .and_then(|p| AgentConfig::load(p).ok())
        .unwrap_or_default();
    if let Some(r) = root {
        cfg.root = r;
    }
    let platforms = collect::detect(&cfg);
    findings.push(d::Finding {
        check: "platforms",
        level: d::Level::Note,
        detail: if platforms.is_empty() {
            "no platform detected (nothing to collect)".into()
        } else {
            format!(
                "{} ({})",
                platforms.join(", "),
                if cfg.platforms.is_empty() {
                    "detected"
                } else {
                    "configured"
                }
            )
        },
        fix: String::new(),
    });
    findings.extend(d::check_tools(&cfg, &platforms));
    findings.extend(d::check_recipes(&cfg, &platforms));
    let state = certfleet_agent::state::StateDir(state_dir.to_path_buf());
    findings.extend(d::check_state(&state, nix::unistd::geteuid().as_raw()));
    if state.is_enrolled() {
        match state.load() {
            Ok(id) => {
                findings.push(d::check_certificate(
                    id.not_before,
                    id.not_after,
                    &state_dir.join("cert.pem"),
                    certfleet_common::model::now(),
                ));
                if !no_controller {
                    findings.extend(runtime().block_on(d::check_controller(
                        &id.meta.controller,
                        &id.ca_pem,
                        &id.cert_pem,
                        &id.key_pem,
                    )));
                }
            }
            Err(e) => findings.push(d::Finding {
                check: "state",
                level: d::Level::Fail,
                detail: e.to_string(),
                fix: "re-enroll this host (certfleet token create; certfleet-agent enroll)".into(),
            }),
        }
    }
    match output {
        Format::Json => println!("{}", serde_json::to_string_pretty(&findings)?),
        Format::Table => {
            for f in &findings {
                println!("{:<4}  {:<11}  {}", f.level.to_string(), f.check, f.detail);
                if !f.fix.is_empty() {
                    println!("{:<4}  {:<11}  fix: {}", "", "", f.fix);
                }
            }
        }
    }
    Ok(if d::needs_attention(&findings) {
        ExitCode::from(d::ATTENTION_EXIT)
    } else {
        ExitCode::SUCCESS
    })
}

/// The host as `check-config` sees it: accounts from the system's user database (what the
/// install step resolves owners with), units from `systemctl status` (exit 4: no such unit).
struct SystemFacts;

impl certfleet_agent::config::HostFacts for SystemFacts {
    fn user_exists(&self, name: &str) -> bool {
        nix::unistd::User::from_name(name).ok().flatten().is_some()
    }

    fn group_exists(&self, name: &str) -> bool {
        nix::unistd::Group::from_name(name).ok().flatten().is_some()
    }

    fn unit_exists(&self, systemctl: &std::path::Path, name: &str) -> Result<bool, String> {
        let out = std::process::Command::new(systemctl)
            .args(["status", "--no-pager", name])
            .output()
            .map_err(|e| format!("{} status {name}: {e}", systemctl.display()))?;
        // systemctl status: 0 active, 3 not running, 4 no such unit.
        match out.status.code() {
            Some(0 | 3) => Ok(true),
            Some(4) => Ok(false),
            other => Err(format!(
                "{} status {name} exited {other:?}: {}",
                systemctl.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The controller-less vSphere and GKE recoveries: an example after the help, help on
    /// every flag (the controller's CLI test checks its own tree the same way).
    #[test]
    fn local_recoveries_document_every_flag_and_give_an_example() {
        let cli = Cli::command();
        let recover = cli.find_subcommand("recover").unwrap();
        for name in ["vsphere", "gke-kubeconfig"] {
            let c = recover
                .find_subcommand(name)
                .unwrap_or_else(|| panic!("no recover {name}"));
            let after = c
                .get_after_help()
                .map(|h| h.to_string())
                .unwrap_or_default();
            assert!(
                after.starts_with("Example:\n  certfleet-agent recover ") && after.contains(name),
                "recover {name}: {after:?}"
            );
            for a in c.get_arguments() {
                if matches!(a.get_id().as_str(), "help" | "log_format") {
                    continue;
                }
                assert!(
                    a.get_help().is_some() || a.get_long_help().is_some(),
                    "recover {name} --{}: no help",
                    a.get_id()
                );
            }
        }
    }
}
