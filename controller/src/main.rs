//! `certfleet`: the controller daemon (`serve`), its set-up (`init`), and the operator CLI.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use certfleet_common::proto as pb;
use certfleet_controller::cli::{self, Conn, Format};
use certfleet_controller::fleet::ServeOptions;
use certfleet_controller::server;
use clap::{Args, CommandFactory, Parser, Subcommand};

/// `--version`: the crate version and the git commit it was built from (build.rs).
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("CERTFLEET_GIT_COMMIT"),
    ")"
);

#[derive(Parser)]
#[command(
    name = "certfleet",
    version = VERSION,
    about = "Keeps the certificates of virtualization fleets alive"
)]
struct Cli {
    /// Controller address (host:port).
    #[arg(
        long,
        global = true,
        env = "CERTFLEET_CONTROLLER",
        default_value = "127.0.0.1:7443"
    )]
    controller: String,
    /// Operator identity directory (ca.pem, cert.pem, key.pem).
    #[arg(long, global = true, env = "CERTFLEET_IDENTITY")]
    identity: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

const fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}
const fn days(n: u64) -> Duration {
    Duration::from_secs(n * 86_400)
}

/// A duration flag bounded to `[min, max]`, in humantime syntax; out-of-range and malformed
/// values are refused at parse time (exit code 2) with a message naming the limits.
fn duration_in(
    min: Duration,
    max: Duration,
) -> impl Fn(&str) -> Result<Duration, String> + Clone + Send + Sync + 'static {
    move |s: &str| {
        let limits = format!(
            "between {} and {}",
            humantime::format_duration(min),
            humantime::format_duration(max)
        );
        let d = humantime::parse_duration(s.trim())
            .map_err(|e| format!("{s:?}: {e} (a duration such as 90s, 1h or 30d, {limits})"))?;
        if d < min || d > max {
            return Err(format!("{s:?} is out of range: must be {limits}"));
        }
        Ok(d)
    }
}

/// A count flag bounded to `[min, max]`; a message naming the limits otherwise (exit code 2).
fn count_in<T: TryFrom<u64> + Clone + Send + Sync + 'static>(
    min: u64,
    max: u64,
) -> impl Fn(&str) -> Result<T, String> + Clone + Send + Sync + 'static {
    move |s: &str| {
        s.trim()
            .parse::<u64>()
            .ok()
            .filter(|n| (min..=max).contains(n))
            .and_then(|n| T::try_from(n).ok())
            .ok_or_else(|| format!("{s:?} is not a whole number between {min} and {max}"))
    }
}

/// Durations of "how far ahead" filters (expiring within …): up to 100 years.
const MAX_HORIZON: Duration = days(36_500);

#[derive(Subcommand)]
enum Command {
    /// Create the fleet CA, the controller certificate and the first admin identity.
    Init {
        #[arg(long)]
        data_dir: PathBuf,
        /// Extra DNS name or IP for the controller certificate (repeatable).
        #[arg(long)]
        san: Vec<String>,
    },
    /// Run the controller.
    Serve {
        #[arg(long)]
        data_dir: PathBuf,
        /// gRPC listen address.
        #[arg(long, default_value = "0.0.0.0:7443")]
        listen: String,
        /// HTTP address for /healthz and /metrics.
        #[arg(long)]
        http: Option<String>,
        /// Lifetime of agent certificates (renewed at two thirds of it).
        #[arg(long, value_parser = duration_in(secs(4), days(398)), default_value = "30d")]
        agent_cert_ttl: Duration,
        /// Heartbeat interval asked of agents.
        #[arg(long, value_parser = duration_in(secs(1), secs(3600)), default_value = "15s")]
        heartbeat_interval: Duration,
        /// Re-bind agents with expired certificates without operator approval.
        #[arg(long)]
        auto_approve_rebind: bool,
        /// Start on an empty state store although the data directory holds a fleet CA
        /// (everyone must be issued and enrolled again).
        #[arg(long)]
        new_store: bool,
        #[command(flatten)]
        limits: LimitArgs,
    },
    /// Join tokens.
    #[command(subcommand)]
    Token(TokenCmd),
    /// Enrolled agents.
    #[command(subcommand)]
    Agents(AgentsCmd),
    /// Operator identities.
    #[command(subcommand)]
    Operators(OperatorsCmd),
    /// The audit log of every mutation.
    Audit {
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Format,
        /// Only the last N entries (0: all).
        #[arg(long, default_value = "0", value_parser = count_in::<u32>(0, 10_000_000))]
        limit: u32,
    },
    /// The fleet's certificate inventory.
    Inventory(InventoryArgs),
    /// Rotation plans: create (or dry-run), approve, run, watch, roll back.
    #[command(subcommand)]
    Plan(PlanCmd),
    /// Renewal policies: plans made automatically as certificates near expiry.
    #[command(subcommand)]
    Policy(PolicyCmd),
    /// Offline maintenance of the state store (controller stopped).
    #[command(subcommand)]
    Store(StoreCmd),
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

/// Limits that keep one peer from hurting the others (`certfleet serve`).
#[derive(Args)]
struct LimitArgs {
    /// Connections with a fleet client certificate (operators, agents).
    #[arg(long, value_parser = count_in::<u64>(1, 1_000_000), default_value = "8192")]
    max_connections: u64,
    /// Connections in their TLS handshake or without a client certificate; the oldest is
    /// closed to make room for a new one.
    #[arg(long, value_parser = count_in::<u64>(1, 100_000), default_value = "512")]
    max_anonymous_connections: u64,
    /// Of those, from one IP address.
    #[arg(long, value_parser = count_in::<u64>(1, 100_000), default_value = "64")]
    max_anonymous_per_address: u64,
    /// Deadline for a client's TLS handshake.
    #[arg(long, value_parser = duration_in(secs(1), secs(300)), default_value = "10s")]
    handshake_timeout: Duration,
    /// Deadline, after the handshake, for the HTTP/2 preface and the first request.
    #[arg(long, value_parser = duration_in(secs(1), secs(300)), default_value = "10s")]
    first_request_timeout: Duration,
    /// Largest message an agent may send (bytes).
    #[arg(long, value_parser = count_in::<u64>(65_536, 1_073_741_824), default_value = "33554432")]
    max_report_bytes: u64,
    /// Certificates one agent may hold in the inventory.
    #[arg(long, value_parser = count_in::<u64>(1, 10_000_000), default_value = "20000")]
    max_certificates_per_agent: u64,
    /// Locations one certificate may be reported at.
    #[arg(long, value_parser = count_in::<u64>(1, 100_000), default_value = "256")]
    max_locations_per_certificate: u64,
    /// How often the state store is probed with a write.
    #[arg(long, value_parser = duration_in(secs(1), secs(600)), default_value = "10s")]
    store_probe_interval: Duration,
    /// How long the store's writes may keep failing before the controller exits (status 1)
    /// for its supervisor to restart it.
    #[arg(long, value_parser = duration_in(secs(1), secs(3600)), default_value = "60s")]
    store_failure_grace: Duration,
}

impl LimitArgs {
    fn limits(&self) -> server::PeerLimits {
        let n = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
        server::PeerLimits {
            listener: certfleet_common::tls::ListenerLimits {
                handshake_timeout: self.handshake_timeout,
                first_request_timeout: self.first_request_timeout,
                max_authenticated: n(self.max_connections),
                max_anonymous: n(self.max_anonymous_connections),
                max_anonymous_per_address: n(self.max_anonymous_per_address),
            },
            reports: certfleet_controller::link::ReportLimits {
                max_report_bytes: n(self.max_report_bytes),
                max_certificates: n(self.max_certificates_per_agent),
                max_locations: n(self.max_locations_per_certificate),
            },
            store_probe_interval: self.store_probe_interval,
            store_failure_grace: self.store_failure_grace,
        }
    }
}

#[derive(Subcommand)]
enum TokenCmd {
    /// Create a single-use join token; prints only the token.
    Create {
        /// How long the token may be used.
        #[arg(long, value_parser = duration_in(secs(1), days(30)))]
        ttl: Duration,
        /// Label for agents enrolled with it, key=value (repeatable).
        #[arg(long)]
        label: Vec<String>,
    },
    /// List tokens.
    List {
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Format,
    },
    /// Revoke an unused token.
    Revoke { id: String },
}

#[derive(Subcommand)]
enum AgentsCmd {
    /// List agents.
    List {
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Format,
    },
    /// Show one agent (id or name).
    Show {
        id: String,
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Format,
    },
    /// Revoke an agent: its stream is closed and it is refused from now on.
    Revoke { id: String },
    /// Approve the re-binding of an agent whose certificate expired.
    Approve { id: String },
}

#[derive(Subcommand)]
enum OperatorsCmd {
    /// Issue an operator identity into DIR (the key is made here).
    Issue {
        name: String,
        #[arg(long)]
        role: String,
        #[arg(long)]
        out: PathBuf,
    },
    /// Revoke an operator.
    Revoke { name: String },
    /// List operators.
    List {
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Format,
    },
}

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
struct InventoryArgs {
    #[command(subcommand)]
    sub: Option<InventoryCmd>,
    /// Only certificates expiring within this duration (e.g. 90d).
    #[arg(long, value_parser = duration_in(secs(1), MAX_HORIZON))]
    expiring_within: Option<Duration>,
    /// Only this platform (vsphere, ovirt, gke, kubeadm, kubernetes, any).
    #[arg(long)]
    platform: Option<String>,
    /// Only this role (or role prefix, e.g. vsphere.solution_user).
    #[arg(long)]
    role: Option<String>,
    /// Only what this agent (id or name) reported.
    #[arg(long)]
    agent: Option<String>,
    /// Only certificates issued by the CA with this fingerprint.
    #[arg(long)]
    issued_by: Option<String>,
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    output: Format,
    /// Compare with an earlier `inventory -o json` saved to this file: what changed where.
    #[arg(long)]
    compare: Option<PathBuf>,
}

#[derive(Subcommand)]
enum InventoryCmd {
    /// One certificate: where it is, its chain, what it signs.
    Show {
        fingerprint: String,
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Format,
    },
    /// Ask agents (all connected, or one) to rescan now.
    Rescan { agent: Option<String> },
    /// Every CA in the fleet: the leaves it caps and its cliff (the date from which new leaves
    /// can no longer get a full lifetime).
    Cas {
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Format,
    },
}

#[derive(Subcommand)]
enum PlanCmd {
    /// Build a plan from a recipe; prints the whole step graph.
    Create {
        /// Recipe (see `certfleet plan recipes`).
        recipe: String,
        /// Target agents (id or name, repeatable; default: every agent the recipe applies to).
        #[arg(long = "agent")]
        agents: Vec<String>,
        /// Only certificates of this role (repeatable).
        #[arg(long = "role")]
        roles: Vec<String>,
        /// Only certificates expiring within this duration.
        #[arg(long, value_parser = duration_in(secs(1), MAX_HORIZON))]
        expiring_within: Option<Duration>,
        /// Targets worked on at once.
        #[arg(long, default_value = "1", value_parser = count_in::<u32>(1, 1000))]
        max_parallel: u32,
        /// Do one target first, then wait (for approval, or --canary-soak).
        #[arg(long)]
        canary: bool,
        /// Continue after the canary by itself after this long.
        #[arg(long, value_parser = duration_in(secs(1), days(30)))]
        canary_soak: Option<Duration>,
        /// Failed targets tolerated before the plan halts.
        #[arg(long, default_value = "0", value_parser = count_in::<u32>(0, 100_000))]
        failure_budget: u32,
        /// Require `plan approve` before `plan run`.
        #[arg(long)]
        require_approval: bool,
        /// Maintenance window, cron-like (UTC), e.g. "0 2 * * SAT".
        #[arg(long)]
        window: Option<String>,
        /// Window length.
        #[arg(long, value_parser = duration_in(secs(60), days(7)), default_value = "4h")]
        window_length: Duration,
        /// Recipe parameter key=value (repeatable).
        #[arg(long = "param")]
        params: Vec<String>,
        /// Print the graph only; touch nothing.
        #[arg(long)]
        dry_run: bool,
        /// Start at once (when no approval is required).
        #[arg(long)]
        run: bool,
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Format,
    },
    /// List plans.
    List {
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Format,
    },
    /// Show a plan: every step, its commands, files, state and output.
    Show {
        id: String,
        /// Include each step's streamed output.
        #[arg(long)]
        output_lines: bool,
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Format,
    },
    /// Follow a plan live until it finishes.
    Watch {
        id: String,
        /// Print each step's streamed output as it arrives.
        #[arg(long)]
        output_lines: bool,
    },
    /// Approve a plan (or continue after its canary).
    Approve { id: String },
    /// Start an approved plan.
    Run { id: String },
    /// Pause: running steps finish, nothing new starts.
    Pause { id: String },
    /// Resume a paused plan.
    Resume { id: String },
    /// Abort: nothing new starts.
    Abort { id: String },
    /// Undo a finished plan's changes, last step first.
    Rollback { id: String },
    /// Print the CSR a step waits to have signed (`issuer = "operator"`).
    Csr { id: String, step: String },
    /// Hand in the certificate signed for a waiting step's CSR.
    Supply {
        id: String,
        step: String,
        /// PEM certificate file.
        cert: PathBuf,
    },
    /// List the built-in recipes.
    Recipes,
}

#[derive(Subcommand)]
enum PolicyCmd {
    /// Renew certificates of ROLE when within DURATION of expiry.
    Set {
        role: String,
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
    List {
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Format,
    },
}

#[derive(Subcommand)]
enum StoreCmd {
    /// Write the whole state as JSON lines.
    Export {
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
    /// Load an export into a fresh data directory's store.
    Import {
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long = "in")]
        input: PathBuf,
    },
}

fn main() -> ExitCode {
    certfleet_common::process::init_tracing();
    certfleet_common::tls::install_crypto_provider();
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("certfleet: {e:#}");
            // Exit now: dropping the runtime would wait for blocking tasks, and dropping the
            // store would flush it, and either can block for good on a failed disk (the
            // supervisor restarts us to get a fresh store handle).
            std::process::exit(1)
        }
    }
}

fn connect(cli: &Cli) -> anyhow::Result<Conn> {
    let dir = cli
        .identity
        .clone()
        .ok_or_else(|| anyhow::anyhow!("no operator identity: pass --identity DIR or set CERTFLEET_IDENTITY (e.g. DATA_DIR/admin)"))?;
    Conn::new(&cli.controller, &dir)
}

async fn run(cli: Cli) -> anyhow::Result<()> {
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
        Command::Init { data_dir, san } => {
            server::init(data_dir, san)?;
            let ca = std::fs::read(data_dir.join("ca/ca.pem"))?;
            let der = certfleet_common::pem::first_certificate(&ca)?;
            println!("fleet CA     {}", certfleet_common::pki::sha256_hex(&der));
            println!("admin        {}", data_dir.join("admin").display());
            println!(
                "next         certfleet serve --data-dir {} --listen 0.0.0.0:7443",
                data_dir.display()
            );
            Ok(())
        }
        Command::Serve {
            data_dir,
            listen,
            http,
            agent_cert_ttl,
            heartbeat_interval,
            auto_approve_rebind,
            new_store,
            limits,
        } => {
            let opts = ServeOptions {
                agent_cert_ttl: *agent_cert_ttl,
                heartbeat_interval: *heartbeat_interval,
                auto_approve_rebind: *auto_approve_rebind,
            };
            let mut limits = limits.limits();
            server::fit_fd_limit(&mut limits.listener);
            let (fleet, tls) = server::load(data_dir, opts, *new_store)?;
            let grpc = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("binding {listen}"))?;
            let http = match http {
                Some(a) => Some(
                    tokio::net::TcpListener::bind(a)
                        .await
                        .with_context(|| format!("binding {a}"))?,
                ),
                None => None,
            };
            tracing::info!(listen = %grpc.local_addr()?, http = ?http.as_ref().and_then(|h| h.local_addr().ok()), ca = %fleet.ca.fingerprint(), "serving");
            server::serve(
                fleet,
                tls,
                grpc,
                http,
                limits,
                certfleet_common::process::shutdown_signal(),
            )
            .await?;
            tracing::info!("stopped");
            Ok(())
        }
        Command::Store(StoreCmd::Export { data_dir, out }) => {
            // Opened without verification: export is the way out of a damaged store.
            let store = certfleet_controller::store::Store::open_for_salvage(
                &server::DataDir(data_dir.clone()).state(),
            )?;
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
            }
            Ok(())
        }
        Command::Store(StoreCmd::Import { data_dir, input }) => {
            let store = certfleet_controller::store::Store::open(
                &server::DataDir(data_dir.clone()).state(),
            )?;
            let mut f = std::io::BufReader::new(
                std::fs::File::open(input)
                    .with_context(|| format!("opening {}", input.display()))?,
            );
            let n = store.import(&mut f)?;
            eprintln!("imported {n} documents into {}", data_dir.display());
            Ok(())
        }
        _ => operator(&cli).await,
    }
}

async fn operator(cli: &Cli) -> anyhow::Result<()> {
    let conn = connect(cli)?;
    let mut c = conn.client();
    let e = |s| conn.explain(s);
    match &cli.command {
        Command::Token(TokenCmd::Create { ttl, label }) => {
            let r = c
                .create_token(pb::CreateTokenRequest {
                    ttl_secs: ttl.as_secs(),
                    labels: cli::parse_labels(label)?,
                })
                .await
                .map_err(e)?
                .into_inner();
            println!("{}", r.token);
        }
        Command::Token(TokenCmd::List { output }) => {
            cli::print_tokens(
                &c.list_tokens(pb::Empty {})
                    .await
                    .map_err(e)?
                    .into_inner()
                    .tokens,
                *output,
            );
        }
        Command::Token(TokenCmd::Revoke { id }) => {
            c.revoke_token(pb::IdRequest { id: id.clone() })
                .await
                .map_err(e)?;
            eprintln!("token {id} revoked");
        }
        Command::Agents(AgentsCmd::List { output }) => {
            cli::print_agents(
                &c.list_agents(pb::Empty {})
                    .await
                    .map_err(e)?
                    .into_inner()
                    .agents,
                *output,
            );
        }
        Command::Agents(AgentsCmd::Show { id, output }) => {
            let a = c
                .get_agent(pb::IdRequest { id: id.clone() })
                .await
                .map_err(e)?
                .into_inner();
            if *output == Format::Json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&cli::AgentView::from(&a))?
                );
            } else {
                cli::print_agents(&[a], *output);
            }
        }
        Command::Agents(AgentsCmd::Revoke { id }) => {
            c.revoke_agent(pb::IdRequest { id: id.clone() })
                .await
                .map_err(e)?;
            eprintln!("agent {id} revoked; its stream was closed");
        }
        Command::Agents(AgentsCmd::Approve { id }) => {
            c.approve_agent(pb::IdRequest { id: id.clone() })
                .await
                .map_err(e)?;
            eprintln!("agent {id} approved; it picks up its new certificate on its next attempt");
        }
        Command::Operators(OperatorsCmd::Issue { name, role, out }) => {
            let (key_path, csr) = cli::new_operator_key(out, name)?;
            let r = match c
                .issue_operator(pb::IssueOperatorRequest {
                    name: name.clone(),
                    role: role.clone(),
                    csr_pem: csr,
                })
                .await
            {
                Ok(r) => r.into_inner(),
                Err(s) => {
                    // Leave nothing half-made behind.
                    let _ = std::fs::remove_file(&key_path);
                    return Err(e(s));
                }
            };
            certfleet_common::atomic::write_file(
                &out.join("cert.pem"),
                r.certificate_pem.as_bytes(),
                certfleet_common::atomic::PUBLIC,
            )?;
            certfleet_common::atomic::write_file(
                &out.join("ca.pem"),
                r.ca_pem.as_bytes(),
                certfleet_common::atomic::PUBLIC,
            )?;
            eprintln!("operator {name} ({role}) written to {}", out.display());
        }
        Command::Operators(OperatorsCmd::Revoke { name }) => {
            c.revoke_operator(pb::IdRequest { id: name.clone() })
                .await
                .map_err(e)?;
            eprintln!("operator {name} revoked");
        }
        Command::Operators(OperatorsCmd::List { output }) => {
            cli::print_operators(
                &c.list_operators(pb::Empty {})
                    .await
                    .map_err(e)?
                    .into_inner()
                    .operators,
                *output,
            );
        }
        Command::Audit { output, limit } => {
            cli::print_audit(
                &c.audit(pb::AuditRequest { limit: *limit })
                    .await
                    .map_err(e)?
                    .into_inner()
                    .entries,
                *output,
            );
        }
        Command::Plan(cmd) => plan_cmd(&conn, cmd).await?,
        Command::Policy(PolicyCmd::Set {
            role,
            renew_within,
            window,
            window_length,
            auto_approve,
            max_parallel,
        }) => {
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
        Command::Policy(PolicyCmd::List { output }) => {
            cli::print_policies(
                &c.list_policies(pb::Empty {})
                    .await
                    .map_err(e)?
                    .into_inner()
                    .policies,
                *output,
            );
        }
        Command::Inventory(args) => match &args.sub {
            Some(InventoryCmd::Rescan { agent }) => {
                let r = c
                    .rescan(pb::IdRequest {
                        id: agent.clone().unwrap_or_default(),
                    })
                    .await
                    .map_err(e)?
                    .into_inner();
                eprintln!("rescan requested from {} agent(s)", r.agents);
            }
            Some(InventoryCmd::Cas { output }) => {
                let all = c
                    .inventory(pb::InventoryQuery::default())
                    .await
                    .map_err(e)?
                    .into_inner();
                let facts = certfleet_controller::cas::facts_from_list(&all);
                certfleet_controller::cas::print(
                    &certfleet_controller::cas::forecast(&facts, certfleet_common::model::now()),
                    matches!(output, Format::Json),
                );
            }
            Some(InventoryCmd::Show {
                fingerprint,
                output,
            }) => {
                let all = c
                    .inventory(pb::InventoryQuery::default())
                    .await
                    .map_err(e)?
                    .into_inner();
                cli::print_certificate(fingerprint, &all, *output)?;
            }
            None => {
                let q = pb::InventoryQuery {
                    expiring_within_secs: args.expiring_within.map(|d| d.as_secs()).unwrap_or(0),
                    platform: args.platform.clone().unwrap_or_default(),
                    role: args.role.clone().unwrap_or_default(),
                    agent: args.agent.clone().unwrap_or_default(),
                    issued_by: args.issued_by.clone().unwrap_or_default(),
                    fingerprint: String::new(),
                };
                let list = c.inventory(q).await.map_err(e)?.into_inner();
                match &args.compare {
                    Some(before) => cli::print_comparison(before, &list)?,
                    None => cli::print_inventory(&list, args.output),
                }
            }
        },
        Command::Init { .. }
        | Command::Serve { .. }
        | Command::Store(_)
        | Command::Completion { .. }
        | Command::Man { .. } => {
            unreachable!("handled in run")
        }
    }
    Ok(())
}

async fn plan_cmd(conn: &Conn, cmd: &PlanCmd) -> anyhow::Result<()> {
    let mut c = conn.client();
    let e = |s| conn.explain(s);
    let control = |id: &str, action: &str| pb::ControlPlanRequest {
        id: id.to_owned(),
        action: action.to_owned(),
        ..Default::default()
    };
    match cmd {
        PlanCmd::Create {
            recipe,
            agents,
            roles,
            expiring_within,
            max_parallel,
            canary,
            canary_soak,
            failure_budget,
            require_approval,
            window,
            window_length,
            params,
            dry_run,
            run,
            output,
        } => {
            let req = pb::CreatePlanRequest {
                recipe: recipe.clone(),
                agents: agents.clone(),
                roles: roles.clone(),
                expiring_within_secs: expiring_within.map(|d| d.as_secs()).unwrap_or(0),
                policy: Some(pb::PlanPolicy {
                    max_parallel: *max_parallel,
                    canary: *canary,
                    canary_soak_secs: canary_soak.map(|d| d.as_secs()).unwrap_or(0),
                    failure_budget: *failure_budget,
                    approval_required: *require_approval,
                    window: window.clone().unwrap_or_default(),
                    window_secs: window_length.as_secs(),
                }),
                dry_run: *dry_run,
                params: cli::parse_labels(params)?,
            };
            let mut plan = c.create_plan(req).await.map_err(e)?.into_inner();
            if *run && !*dry_run && !*require_approval {
                plan = c
                    .control_plan(control(&plan.id, "run"))
                    .await
                    .map_err(e)?
                    .into_inner();
            }
            cli::print_plan(&plan, *output, false);
        }
        PlanCmd::List { output } => cli::print_plans(
            &c.list_plans(pb::Empty {})
                .await
                .map_err(e)?
                .into_inner()
                .plans,
            *output,
        ),
        PlanCmd::Show {
            id,
            output_lines,
            output,
        } => cli::print_plan(
            &c.get_plan(pb::IdRequest { id: id.clone() })
                .await
                .map_err(e)?
                .into_inner(),
            *output,
            *output_lines,
        ),
        PlanCmd::Watch { id, output_lines } => {
            let mut stream = c
                .watch_plan(pb::IdRequest { id: id.clone() })
                .await
                .map_err(e)?
                .into_inner();
            let mut watcher = cli::PlanWatcher::new(*output_lines);
            while let Some(p) = stream.message().await.map_err(e)? {
                watcher.update(&p);
            }
            watcher.finish();
        }
        PlanCmd::Approve { id }
        | PlanCmd::Run { id }
        | PlanCmd::Pause { id }
        | PlanCmd::Resume { id }
        | PlanCmd::Abort { id }
        | PlanCmd::Rollback { id } => {
            let action = match cmd {
                PlanCmd::Approve { .. } => "approve",
                PlanCmd::Run { .. } => "run",
                PlanCmd::Pause { .. } => "pause",
                PlanCmd::Resume { .. } => "resume",
                PlanCmd::Abort { .. } => "abort",
                _ => "rollback",
            };
            let p = c
                .control_plan(control(id, action))
                .await
                .map_err(e)?
                .into_inner();
            eprintln!(
                "plan {}: {}{}",
                p.id,
                p.state,
                if p.message.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", p.message)
                }
            );
        }
        PlanCmd::Csr { id, step } => {
            let p = c
                .get_plan(pb::IdRequest { id: id.clone() })
                .await
                .map_err(e)?
                .into_inner();
            let s = p
                .steps
                .iter()
                .find(|s| &s.id == step)
                .ok_or_else(|| anyhow::anyhow!("plan {id} has no step {step}"))?;
            let args: serde_json::Value = serde_json::from_str(&s.args_json).unwrap_or_default();
            match args.get("csr_pem").and_then(|v| v.as_str()) {
                Some(csr) if s.state == "dispatched" => print!("{csr}"),
                _ => anyhow::bail!(
                    "step {step} of plan {id} is {} and has no CSR waiting to be signed",
                    s.state
                ),
            }
        }
        PlanCmd::Supply { id, step, cert } => {
            let pem = std::fs::read_to_string(cert)
                .with_context(|| format!("reading {}", cert.display()))?;
            let req = pb::ControlPlanRequest {
                id: id.clone(),
                action: "supply".into(),
                step_id: step.clone(),
                payload: pem,
            };
            let p = c.control_plan(req).await.map_err(e)?.into_inner();
            eprintln!(
                "plan {}: certificate accepted for step {step}; {}",
                p.id, p.state
            );
        }
        PlanCmd::Recipes => {
            for r in certfleet_controller::plan::recipes::all() {
                println!("{:<24} {}", r.name(), r.about());
            }
        }
    }
    Ok(())
}
