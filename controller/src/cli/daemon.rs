//! `certfleet init` and `certfleet serve`: setting up a controller's data directory and running
//! the controller daemon with its limits.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use super::args::{count_in, days, duration_in, secs};
use crate::fleet::ServeOptions;
use crate::server;

/// `certfleet init`
#[derive(Args)]
pub struct InitArgs {
    /// Data directory to create (fleet CA, controller certificate, admin identity).
    #[arg(long)]
    data_dir: PathBuf,
    /// Extra DNS name or IP for the controller certificate (repeatable).
    #[arg(long)]
    san: Vec<String>,
}

/// `certfleet serve`
#[derive(Args)]
pub struct ServeArgs {
    /// Data directory made by `certfleet init`.
    #[arg(long)]
    data_dir: PathBuf,
    /// gRPC listen address.
    #[arg(long, default_value = "0.0.0.0:7443")]
    listen: String,
    /// HTTP address for /healthz, /readyz and /metrics.
    #[arg(long)]
    http: Option<String>,
    /// Serve --http as HTTPS with the controller's certificate (for a non-loopback address;
    /// Prometheus: `scheme: https` with `tls_config.ca_file` the fleet CA).
    #[arg(long, requires = "http")]
    http_tls: bool,
    /// Export x509-certificate-exporter series (`x509_cert_not_after`, …) for every
    /// certificate location, besides the aggregated counts (one series per location: large
    /// fleets should leave this off).
    #[arg(long)]
    metrics_per_certificate: bool,
    /// Lifetime of agent certificates (renewed at two thirds of it).
    #[arg(long, value_parser = duration_in(secs(4), days(398)), default_value = "30d")]
    agent_cert_ttl: Duration,
    /// Heartbeat interval asked of agents.
    #[arg(long, value_parser = duration_in(secs(1), secs(3600)), default_value = "15s")]
    heartbeat_interval: Duration,
    /// Re-bind agents with expired certificates without operator approval.
    #[arg(long)]
    auto_approve_rebind: bool,
    /// How long dry-run plans are kept.
    #[arg(long, value_parser = duration_in(secs(60), days(365)), default_value = "24h")]
    dry_run_ttl: Duration,
    /// Refuse `certfleet backup` (the bundle holds the fleet CA key: whoever has an admin
    /// certificate could take it). Back up on the controller host instead (stop it, copy the
    /// data directory).
    #[arg(long)]
    no_backup_over_api: bool,
    /// Start on an empty state store although the data directory holds a fleet CA
    /// (everyone must be issued and enrolled again).
    #[arg(long)]
    new_store: bool,
    /// Log lines as text (colour only on a terminal) or JSON, one object per line.
    #[arg(long, value_enum, env = "CERTFLEET_LOG_FORMAT", default_value = "text")]
    pub log_format: certfleet_common::process::LogFormat,
    #[command(flatten)]
    limits: LimitArgs,
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
    /// Never compact the state store on its own (`certfleet store compact` still does).
    #[arg(long)]
    no_store_auto_compact: bool,
    /// Compact the state store when its size on disk exceeds this many times its live data.
    #[arg(long, value_parser = count_in::<u64>(2, 1000), default_value = "4")]
    store_compact_ratio: u64,
    /// Never compact automatically a store smaller than this on disk (bytes).
    #[arg(long, value_parser = count_in::<u64>(65_536, 1 << 40), default_value = "67108864")]
    store_compact_min_size: u64,
    /// At most one automatic compaction per this interval.
    #[arg(long, value_parser = duration_in(secs(1), days(30)), default_value = "1h")]
    store_compact_interval: Duration,
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
            reports: crate::link::ReportLimits {
                max_report_bytes: n(self.max_report_bytes),
                max_certificates: n(self.max_certificates_per_agent),
                max_locations: n(self.max_locations_per_certificate),
            },
            store_probe_interval: self.store_probe_interval,
            store_failure_grace: self.store_failure_grace,
            store_compaction: crate::store::CompactionPolicy {
                enabled: !self.no_store_auto_compact,
                ratio: self.store_compact_ratio,
                min_size_bytes: self.store_compact_min_size,
                interval: self.store_compact_interval,
            },
        }
    }
}

/// Runs `init`. Refused by `server::init` when the directory already holds a fleet CA, so a
/// second run never replaces a CA.
pub fn init(args: &InitArgs) -> anyhow::Result<()> {
    let data_dir = &args.data_dir;
    server::init(data_dir, &args.san)?;
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

/// Runs `serve` until SIGINT or SIGTERM.
pub async fn serve(args: &ServeArgs) -> anyhow::Result<()> {
    let opts = ServeOptions {
        agent_cert_ttl: args.agent_cert_ttl,
        heartbeat_interval: args.heartbeat_interval,
        auto_approve_rebind: args.auto_approve_rebind,
        dry_run_ttl: args.dry_run_ttl,
        backup_over_api: !args.no_backup_over_api,
    };
    let mut limits = args.limits.limits();
    server::fit_fd_limit(&mut limits.listener);
    let (fleet, tls, self_cert) = server::load_serving(&args.data_dir, opts, args.new_store)?;
    // The controller's own certificate is checked hourly and renewed in place.
    let (self_stop, self_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(self_cert.run(std::time::Duration::from_secs(3600), self_rx));
    let listen = &args.listen;
    let grpc = server::bind_listener(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    fleet
        .metrics
        .set_per_certificate(args.metrics_per_certificate);
    let http = match &args.http {
        Some(a) => {
            let listener = tokio::net::TcpListener::bind(a)
                .await
                .with_context(|| format!("binding {a}"))?;
            let tls = if args.http_tls {
                let d = server::DataDir(args.data_dir.clone());
                let read = |p: PathBuf| {
                    std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))
                };
                Some(crate::http::tls_config(
                    &read(d.server_cert())?,
                    &read(d.server_key())?,
                    &d.server_cert().display().to_string(),
                )?)
            } else {
                None
            };
            Some(crate::http::HttpListener { listener, tls })
        }
        None => None,
    };
    tracing::info!(listen = %grpc.local_addr()?, http = ?http.as_ref().and_then(|h| h.listener.local_addr().ok()), http_tls = args.http_tls, ca = %fleet.ca.fingerprint(), "serving");
    server::serve(fleet, tls, grpc, http, limits, async move {
        certfleet_common::process::shutdown_signal().await;
        let _ = self_stop.send(true);
    })
    .await?;
    tracing::info!("stopped");
    Ok(())
}
