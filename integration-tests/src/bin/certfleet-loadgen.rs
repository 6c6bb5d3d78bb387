//! `certfleet-loadgen`: a fleet of virtual agents (each enrolled through its own join token,
//! each on its own mTLS session, all in this one process) against a real `certfleet serve`,
//! and the operator's queries timed while that fleet heartbeats. Scenarios, in order:
//! enrollment, connect N, the whole inventory, operator queries (p50/p99), a plan over P agents
//! of instant steps, a reconnect storm after the controller is SIGKILLed (with that plan
//! stored), and the controller's RSS throughout. Prints a Markdown table; asserts nothing
//! (targets are read by a person, not a timed test).
//!
//! `certfleet-loadgen --agents 10000 --certs 10` is the scale; `packaging/bench.sh`
//! runs it with sizes from the environment.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use certfleet_common::proto as pb;
use certfleet_common::proto::operator_client::OperatorClient;
use certfleet_integration_tests::loadgen::{self, FleetCounters, VirtualAgent};
use clap::Parser;
use tokio::sync::watch;
use tonic::transport::Channel;

#[derive(Parser)]
#[command(about = "Virtual agents over real mTLS against a real controller; prints a table")]
struct Args {
    /// Virtual agents.
    #[arg(long, default_value = "500")]
    agents: usize,
    /// Certificates each agent reports.
    #[arg(long, default_value = "10")]
    certs: usize,
    /// Agents in the plan of instant steps (three steps each: CSR, sign, install).
    #[arg(long, default_value = "100")]
    plan_agents: usize,
    /// Times each operator query is run.
    #[arg(long, default_value = "10")]
    queries: usize,
    /// Directory holding `certfleet` (default: next to this binary).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Keep the controller's data directory and logs here (default: a temporary directory).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Give up waiting on one scenario after this long.
    #[arg(long, value_parser = humantime_secs, default_value = "600")]
    scenario_timeout: u64,
}

fn humantime_secs(s: &str) -> Result<u64, String> {
    s.parse().map_err(|e| format!("{s:?}: seconds: {e}"))
}

/// One row of the result table.
struct Row {
    scenario: String,
    result: String,
    target: &'static str,
}

/// The rows so far; each is also printed as it comes (a long run shows progress, and a run cut
/// short still leaves its numbers).
struct Rows(Vec<Row>);

impl Rows {
    fn push(&mut self, r: Row) {
        eprintln!("loadgen: {}: {}", r.scenario, r.result);
        self.0.push(r);
    }
}

struct Controller {
    bin: PathBuf,
    data: PathBuf,
    addr: String,
    http: String,
    max_connections: usize,
    child: Option<tokio::process::Child>,
    logs: PathBuf,
    starts: usize,
}

impl Controller {
    async fn serve(&mut self) -> anyhow::Result<()> {
        self.starts += 1;
        let log = std::fs::File::create(self.logs.join(format!("controller-{}.log", self.starts)))?;
        let child = tokio::process::Command::new(&self.bin)
            .arg("serve")
            .arg("--data-dir")
            .arg(&self.data)
            .args(["--listen", &self.addr, "--http", &self.http])
            .args(["--max-connections", &self.max_connections.to_string()])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(120);
        while tokio::net::TcpStream::connect(&self.addr).await.is_err() {
            if Instant::now() > deadline {
                bail!("controller did not listen on {} within 120 s", self.addr);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().and_then(|c| c.id()).unwrap_or(0)
    }

    /// (VmRSS, VmHWM) in MiB.
    fn rss_mib(&self) -> (f64, f64) {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        let field = |name: &str| {
            s.lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
                / 1024.0
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    /// A table row of the controller's RSS now and at its peak so far.
    fn rss_row(&self, scenario: String, target: &'static str) -> Row {
        let (rss, hwm) = self.rss_mib();
        Row {
            scenario: format!("{scenario} (now / peak)"),
            result: format!("{rss:.0} / {hwm:.0} MiB"),
            target,
        }
    }

    /// utime + stime in clock ticks.
    fn cpu_ticks(&self) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap_or_default();
        // Fields after the command name (which may hold spaces): state is field 3.
        let rest = s.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let f: Vec<&str> = rest.split_whitespace().collect();
        let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        n(11) + n(12)
    }

    async fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.start_kill();
            let _ = c.wait().await;
        }
    }

    fn cli(&self, args: &[&str]) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(&self.bin);
        c.args(["--controller", &self.addr, "--identity"])
            .arg(self.data.join("admin"))
            .args(args);
        c
    }
}

/// What [`run_counting`] saw of a command.
struct Counted {
    status: std::process::ExitStatus,
    stdout_bytes: usize,
    stderr: Vec<u8>,
}

/// Runs `cmd` as an operator's `certfleet ... > file` would: its output read as it comes and
/// counted, not kept. Keeping it (`Command::output`) grew a 100 MB buffer in this process on
/// the same two cores, by doubling and with fresh pages the first time: the first full
/// listing of each run was 0.15-0.25 s slower than the other nine.
async fn run_counting(mut cmd: tokio::process::Command) -> anyhow::Result<Counted> {
    use tokio::io::AsyncReadExt as _;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting certfleet")?;
    let mut out = child.stdout.take().context("stdout of certfleet")?;
    let mut err = child.stderr.take().context("stderr of certfleet")?;
    let count = async {
        let mut buf = vec![0u8; 1 << 20];
        let mut n = 0;
        loop {
            match out.read(&mut buf).await? {
                0 => return Ok::<_, std::io::Error>(n),
                k => n += k,
            }
        }
    };
    let errors = async {
        let mut e = Vec::new();
        err.read_to_end(&mut e).await.map(|_| e)
    };
    let (stdout_bytes, stderr, status) = tokio::try_join!(count, errors, child.wait())?;
    Ok(Counted {
        status,
        stdout_bytes,
        stderr,
    })
}

async fn operator(c: &Controller) -> anyhow::Result<OperatorClient<Channel>> {
    let dir = c.data.join("admin");
    let read = |f: &str| {
        let p = dir.join(f);
        std::fs::read_to_string(&p)
            .with_context(|| format!("reading operator identity {}", p.display()))
    };
    let ch = certfleet_common::tls::mtls_channel(
        &c.addr,
        &read("ca.pem")?,
        &read("cert.pem")?,
        &read("key.pem")?,
    )?;
    Ok(OperatorClient::new(ch).max_decoding_message_size(1 << 30))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

/// Waits until `f` holds, polling every 100 ms; how long it took, or None after `timeout`.
async fn until(timeout: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let t0 = Instant::now();
    while !f() {
        if t0.elapsed() > timeout {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Some(t0.elapsed())
}

async fn http_get(addr: &str, path: &str) -> anyhow::Result<usize> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    if !buf.starts_with(b"HTTP/1.0 200") && !buf.starts_with(b"HTTP/1.1 200") {
        bail!(
            "GET {path}: {}",
            String::from_utf8_lossy(&buf[..buf.len().min(200)])
        );
    }
    Ok(buf.len())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    certfleet_common::tls::install_crypto_provider();
    raise_fd_limit();
    let timeout = Duration::from_secs(args.scenario_timeout);
    let bin_dir = match &args.bin_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("binary directory")?
            .to_path_buf(),
    };
    let bin = bin_dir.join("certfleet");
    if !bin.exists() {
        bail!("{} missing: build the binaries first", bin.display());
    }
    let tmp = tempfile::tempdir()?;
    let work = args
        .work_dir
        .clone()
        .unwrap_or_else(|| tmp.path().to_path_buf());
    std::fs::create_dir_all(&work)?;
    let data = work.join("data");
    let out = std::process::Command::new(&bin)
        .args(["init", "--data-dir"])
        .arg(&data)
        .output()?;
    if !out.status.success() {
        bail!("certfleet init: {}", String::from_utf8_lossy(&out.stderr));
    }
    let port = |_: ()| -> anyhow::Result<u16> {
        Ok(std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port())
    };
    let mut ctl = Controller {
        bin: bin.clone(),
        data,
        addr: format!("127.0.0.1:{}", port(())?),
        http: format!("127.0.0.1:{}", port(())?),
        max_connections: args.agents + 1000,
        child: None,
        logs: work.clone(),
        starts: 0,
    };
    ctl.serve().await?;
    let mut rows = Rows(Vec::new());
    let n = args.agents;
    let plan_agents = args.plan_agents.min(n.saturating_sub(1));
    eprintln!(
        "loadgen: {n} agents × {} certificates, plan over {plan_agents} agents, controller at {} (logs in {})",
        args.certs,
        ctl.addr,
        work.display()
    );

    // Certificates first (CPU-bound, off the clock).
    let ca = Arc::new(loadgen::bench_ca()?);
    let t0 = Instant::now();
    let mut jobs = Vec::new();
    let chunk = n.div_ceil(4).max(1);
    for part in 0..4usize {
        let ca = ca.clone();
        let certs = args.certs;
        jobs.push(tokio::task::spawn_blocking(move || {
            (part * chunk..((part + 1) * chunk).min(n))
                .map(|i| loadgen::make_certificates(&ca, &format!("a{i:05}"), certs, i))
                .collect::<anyhow::Result<Vec<_>>>()
        }));
    }
    let mut all_certs = Vec::with_capacity(n);
    for j in jobs {
        all_certs.extend(j.await??);
    }
    eprintln!(
        "loadgen: {} certificates made in {}",
        n * args.certs,
        secs(t0.elapsed())
    );

    // Enrollment: one key per agent and one multi-use join token capped at the fleet's size,
    // as a mass roll-out (Ansible) uses it.
    let mut op = operator(&ctl).await?;
    let t0 = Instant::now();
    let token = op
        .create_token(pb::CreateTokenRequest {
            ttl_secs: 3600,
            labels: vec![],
            max_uses: u32::try_from(n).unwrap_or(u32::MAX),
        })
        .await
        .map_err(|s| anyhow!("token create: {}", s.message()))?
        .into_inner()
        .token;
    let sem = Arc::new(tokio::sync::Semaphore::new(32));
    let mut handles = Vec::with_capacity(n);
    for (i, certs) in all_certs.into_iter().enumerate() {
        let token = token.clone();
        let permit = sem.clone().acquire_owned().await?;
        let addr = ctl.addr.clone();
        handles.push(tokio::spawn(async move {
            let _permit = permit;
            let name = format!("vagent-{i:05}");
            let e = loadgen::enroll(&addr, &token, &name).await?;
            let mut certs = certs;
            let (renewable, cas) = if i == 0 {
                (vec![], vec!["bench-ca".to_owned()])
            } else if i <= plan_agents {
                // The first certificate is the one the plan renews.
                if let Some(loc) = certs.first_mut().and_then(|c| c.locations.first_mut()) {
                    loc.path = "/bench/renew.pem".into();
                }
                (
                    vec![pb::RenewableFile {
                        cert: "/bench/renew.pem".into(),
                        key: "/bench/renew.key".into(),
                        issuer: "bench-ca".into(),
                        mode: "0644".into(),
                        ..Default::default()
                    }],
                    vec![],
                )
            } else {
                (vec![], vec![])
            };
            anyhow::Ok(VirtualAgent {
                index: i,
                name,
                agent_id: e.agent_id,
                cert_pem: e.cert_pem,
                key_pem: e.key_pem,
                ca_pem: e.ca_pem,
                certificates: Arc::new(certs),
                renewable,
                cas,
            })
        }));
    }
    let mut agents = Vec::with_capacity(n);
    for h in handles {
        agents.push(h.await??);
    }
    let took = t0.elapsed();
    rows.push(Row {
        scenario: format!("enroll {n} agents (one capped multi-use token)"),
        result: format!("{} ({:.0}/s)", secs(took), n as f64 / took.as_secs_f64()),
        target: "",
    });

    // Connect N.
    let counters = Arc::new(FleetCounters::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let t0 = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for a in agents {
        tasks.push(tokio::spawn(loadgen::run(
            ctl.addr.clone(),
            a,
            counters.clone(),
            stop_rx.clone(),
        )));
    }
    let c = counters.clone();
    let connected = until(timeout, || c.connected.load(Ordering::Relaxed) == n).await;
    rows.push(Row {
        scenario: format!("connect {n} agents"),
        result: match connected {
            Some(d) => format!(
                "{} ({} connect timeouts)",
                secs(d),
                counters.connect_timeouts.load(Ordering::Relaxed)
            ),
            None => format!(
                "only {} connected after {}",
                counters.connected.load(Ordering::Relaxed),
                secs(timeout)
            ),
        },
        target: "",
    });

    // The whole inventory, as soon as every report is in.
    let total = n * args.certs;
    let t_inv = Instant::now();
    let mut last = 0usize;
    let mut inv_result = None;
    while t_inv.elapsed() < timeout {
        match op
            .inventory(pb::InventoryQuery::default())
            .await
            .map(|r| r.into_inner().items.len())
        {
            Ok(k) => {
                last = k;
                if k >= total {
                    inv_result = Some(t0.elapsed());
                    break;
                }
            }
            Err(s) => eprintln!("loadgen: inventory: {}", s.message()),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    rows.push(Row {
        scenario: format!("inventory complete ({total} certificates)"),
        result: match inv_result {
            Some(d) => format!("{} after the first connect", secs(d)),
            None => format!("{last} of {total} after {}", secs(timeout)),
        },
        target: "",
    });
    rows.push(ctl.rss_row(
        format!("controller RSS when the last report is in, {n} agents, {total} certificates"),
        "",
    ));

    // Idle heartbeat CPU over 10 s.
    let tick = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    let c0 = ctl.cpu_ticks();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let cpu = (ctl.cpu_ticks() - c0) as f64 / tick / 10.0 * 100.0;
    rows.push(Row {
        scenario: "controller CPU while the fleet heartbeats (10 s)".into(),
        result: format!("{cpu:.1} % of one core"),
        target: "",
    });
    // The fleet connected and reported, after the burst (the controller gives freed heap back
    // every few seconds): what the controller holds for it.
    rows.push(ctl.rss_row(
        format!("controller RSS, {n} agents connected and heartbeating, {total} certificates"),
        "≤ 1 GiB at 10,000 × 10",
    ));

    // Operator queries while the fleet heartbeats.
    let probe = format!("vagent-{:05}", n / 2);
    let queries: Vec<(String, Vec<&str>)> = vec![
        (
            "certfleet inventory -o json".into(),
            vec!["inventory", "-o", "json"],
        ),
        (
            "certfleet inventory --expiring-within 30d -o json".into(),
            vec!["inventory", "--expiring-within", "30d", "-o", "json"],
        ),
        (
            format!("certfleet inventory --agent {probe} -o json"),
            vec!["inventory", "--agent", &probe, "-o", "json"],
        ),
        (
            "certfleet plan list -o json".into(),
            vec!["plan", "list", "-o", "json"],
        ),
        (
            "certfleet agents list -o json".into(),
            vec!["agents", "list", "-o", "json"],
        ),
    ];
    for (label, q) in &queries {
        let mut times = Vec::new();
        let mut bytes = 0;
        let mut failure = None;
        for _ in 0..args.queries.max(1) {
            let t = Instant::now();
            let out = run_counting(ctl.cli(q)).await?;
            times.push(t.elapsed());
            if out.status.success() {
                bytes = out.stdout_bytes;
            } else {
                failure = Some(String::from_utf8_lossy(&out.stderr).trim().to_owned());
            }
        }
        // Every run in the log, in the order they ran: the p99 of ten runs is the slowest, and
        // whether that is the first run or any run points at different causes.
        eprintln!(
            "loadgen: {label}: runs {}",
            times
                .iter()
                .map(|t| format!("{:.2}", t.as_secs_f64()))
                .collect::<Vec<_>>()
                .join(" ")
        );
        times.sort();
        rows.push(Row {
            scenario: label.clone(),
            result: match failure {
                None => format!(
                    "p50 {} / p99 {} ({:.1} MB out)",
                    secs(percentile(&times, 0.5)),
                    secs(percentile(&times, 0.99)),
                    bytes as f64 / 1e6
                ),
                Some(e) => format!("FAILED: {}", e.lines().last().unwrap_or("")),
            },
            target: "≤ 1 s p99",
        });
    }
    let mut times = Vec::new();
    let mut bytes = 0;
    for _ in 0..args.queries.max(1) {
        let t = Instant::now();
        bytes = http_get(&ctl.http, "/metrics").await.unwrap_or(0);
        times.push(t.elapsed());
    }
    times.sort();
    rows.push(Row {
        scenario: "GET /metrics".into(),
        result: format!(
            "p50 {} / p99 {} ({:.1} MB)",
            secs(percentile(&times, 0.5)),
            secs(percentile(&times, 0.99)),
            bytes as f64 / 1e6
        ),
        target: "≤ 1 s",
    });

    // A plan over `plan_agents` agents of instant steps: the engine's own overhead.
    if plan_agents > 0 {
        rows.push(run_plan(&mut op, plan_agents, timeout).await?);
    }

    // Reconnect storm: SIGKILL, restart, time until every agent is welcomed again.
    let timeouts_before = counters.connect_timeouts.load(Ordering::Relaxed);
    ctl.kill9().await;
    let c = counters.clone();
    until(Duration::from_secs(60), || {
        c.connected.load(Ordering::Relaxed) == 0
    })
    .await;
    let t0 = Instant::now();
    ctl.serve().await?;
    let c = counters.clone();
    let back = until(timeout, || c.connected.load(Ordering::Relaxed) == n)
        .await
        .map(|_| t0.elapsed());
    let storm_timeouts = counters.connect_timeouts.load(Ordering::Relaxed) - timeouts_before;
    rows.push(Row {
        scenario: format!(
            "reconnect storm after SIGKILL ({n} agents{})",
            if plan_agents > 0 { ", plan stored" } else { "" }
        ),
        result: match back {
            Some(d) => format!("{} ({storm_timeouts} connect timeouts)", secs(d)),
            None => format!(
                "{} of {n} back after {} ({storm_timeouts} connect timeouts)",
                counters.connected.load(Ordering::Relaxed),
                secs(timeout)
            ),
        },
        target: "≤ 30 s, no connect timeouts",
    });
    // RSS once the reports after the storm are in.
    tokio::time::sleep(Duration::from_secs(5)).await;
    rows.push(ctl.rss_row("controller RSS after the storm".into(), "≤ 1 GiB"));

    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = t.await;
    }
    ctl.kill9().await;
    let err = counters.last_error.lock().unwrap().clone();
    if !err.is_empty() {
        eprintln!("loadgen: last session error: {err}");
    }
    print_table(&args, &rows.0);
    Ok(())
}

async fn run_plan(
    op: &mut OperatorClient<Channel>,
    plan_agents: usize,
    timeout: Duration,
) -> anyhow::Result<Row> {
    let scenario = format!("plan over {plan_agents} agents of instant steps (files recipe)");
    let t0 = Instant::now();
    let plan = op
        .create_plan(pb::CreatePlanRequest {
            recipe: "files".into(),
            policy: Some(pb::PlanPolicy {
                max_parallel: u32::try_from(plan_agents).unwrap_or(u32::MAX),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await;
    let plan = match plan {
        Ok(p) => p.into_inner(),
        Err(s) => {
            return Ok(Row {
                scenario,
                result: format!("FAILED to create: {}", s.message()),
                target: "≤ 10 s engine overhead",
            });
        }
    };
    let created = t0.elapsed();
    let steps = plan.steps.len();
    let control = |action: &str| pb::ControlPlanRequest {
        id: plan.id.clone(),
        action: action.into(),
        ..Default::default()
    };
    if plan.state == "awaiting_approval" {
        op.control_plan(control("approve"))
            .await
            .map_err(|s| anyhow!("plan approve: {}", s.message()))?;
    }
    let t1 = Instant::now();
    op.control_plan(control("run"))
        .await
        .map_err(|s| anyhow!("plan run: {}", s.message()))?;
    let mut state = String::new();
    while t1.elapsed() < timeout {
        tokio::time::sleep(Duration::from_millis(500)).await;
        match op
            .get_plan(pb::IdRequest {
                id: plan.id.clone(),
            })
            .await
        {
            Ok(p) => {
                state = p.into_inner().state;
                if matches!(
                    state.as_str(),
                    "succeeded" | "failed" | "aborted" | "rolled_back"
                ) {
                    break;
                }
            }
            Err(s) => eprintln!("loadgen: plan show: {}", s.message()),
        }
    }
    Ok(Row {
        scenario,
        result: format!(
            "{steps} steps: created in {}, {state} after {}",
            secs(created),
            secs(t1.elapsed())
        ),
        target: "≤ 10 s engine overhead (1,000 agents)",
    })
}

fn print_table(args: &Args, rows: &[Row]) {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "\ncertfleet-loadgen: {} agents × {} certificates, {} cores, load average {}",
        args.agents,
        args.certs,
        cores,
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!();
    println!("| scenario | result | target |");
    println!("|---|---|---|");
    for r in rows {
        println!("| {} | {} | {} |", r.scenario, r.result, r.target);
    }
}

/// 10,000 sessions need 10,000 descriptors here and at the controller (which inherits this).
fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}
