//! `certfleet init` and `certfleet serve`: the data directory, and the daemon that serves gRPC
//! (mTLS) and HTTP (`/healthz`, `/metrics`).
//!
//! Data directory layout:
//! ```text
//! DIR/ca/ca.pem, ca.key        fleet CA (key 0600)
//! DIR/server/cert.pem, key.pem controller TLS identity (key 0600)
//! DIR/admin/ca.pem, cert.pem, key.pem   first admin operator identity
//! DIR/state/                   sled store
//! ```
//! [`serve`] takes already-bound listeners and a shutdown future, so tests bind port 0.
//!
//! [`PeerLimits`] keep one peer from hurting the others (connection pools and deadlines on the
//! listener, caps on reports); a store whose writes keep failing makes [`serve`] return an
//! error, so the process exits non-zero and its supervisor restarts it.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use certfleet_common::atomic::{PRIVATE, PUBLIC, create_private_dir, write_file};
use certfleet_common::identity::Identity;
use certfleet_common::model::now;
use certfleet_common::pki::{self, FleetCa};
use certfleet_common::proto::agent_link_server::AgentLinkServer;
use certfleet_common::proto::enrollment_server::EnrollmentServer;
use certfleet_common::proto::operator_server::OperatorServer;
use tokio::net::TcpListener;

use certfleet_common::tls::{ListenerLimits, ListenerStats};

use crate::fleet::{Fleet, OperatorRecord, Role, ServeOptions};
use crate::link::ReportLimits;
use crate::store::Store;

/// Fleet CA lifetime.
const CA_TTL: Duration = Duration::from_secs(10 * 365 * 86_400);
/// Controller server certificate lifetime (re-issued at start when within 30 days of expiry).
pub(crate) const SERVER_TTL: Duration = Duration::from_secs(365 * 86_400);

/// Paths inside a data directory.
pub struct DataDir(pub PathBuf);

impl DataDir {
    fn p(&self, rel: &str) -> PathBuf {
        self.0.join(rel)
    }
    /// CA certificate.
    pub fn ca_cert(&self) -> PathBuf {
        self.p("ca/ca.pem")
    }
    /// CA key.
    pub fn ca_key(&self) -> PathBuf {
        self.p("ca/ca.key")
    }
    /// Server certificate.
    pub fn server_cert(&self) -> PathBuf {
        self.p("server/cert.pem")
    }
    /// Server key.
    pub fn server_key(&self) -> PathBuf {
        self.p("server/key.pem")
    }
    /// SANs the server certificate was made for.
    pub fn server_sans(&self) -> PathBuf {
        self.p("server/sans.txt")
    }
    /// First admin identity.
    pub fn admin(&self) -> PathBuf {
        self.p("admin")
    }
    /// sled store.
    pub fn state(&self) -> PathBuf {
        self.p("state")
    }
}

pub(crate) fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

/// Writes an operator identity directory (`ca.pem`, `cert.pem`, `key.pem`).
pub fn write_identity(
    dir: &Path,
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> anyhow::Result<()> {
    create_private_dir(dir)?;
    write_file(&dir.join("key.pem"), key_pem.as_bytes(), PRIVATE)?;
    write_file(&dir.join("cert.pem"), cert_pem.as_bytes(), PUBLIC)?;
    write_file(&dir.join("ca.pem"), ca_pem.as_bytes(), PUBLIC)?;
    Ok(())
}

pub(crate) fn default_sans(extra: &[String]) -> Vec<String> {
    let mut sans = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    if let Ok(h) = nix_hostname() {
        sans.push(h);
    }
    for s in extra {
        if !sans.contains(s) {
            sans.push(s.clone());
        }
    }
    sans
}

fn nix_hostname() -> std::io::Result<String> {
    let h = std::fs::read_to_string("/proc/sys/kernel/hostname")?;
    Ok(h.trim().to_owned())
}

/// `certfleet init`: creates the fleet CA, the controller's certificate and the first admin.
pub fn init(dir: &Path, extra_sans: &[String]) -> anyhow::Result<()> {
    let d = DataDir(dir.to_path_buf());
    if d.ca_cert().exists() || d.ca_key().exists() {
        bail!(
            "{} already holds a fleet CA; refusing to overwrite it (a new CA would orphan every enrolled agent)",
            dir.display()
        );
    }
    create_private_dir(dir)?;
    create_private_dir(&dir.join("ca"))?;
    create_private_dir(&dir.join("server"))?;
    let ca = pki::generate_ca("certfleet fleet CA", CA_TTL)?;
    // Key first: a crash between the two writes leaves no CA certificate without its key.
    write_file(&d.ca_key(), ca.key_pem.as_bytes(), PRIVATE)?;
    write_file(&d.ca_cert(), ca.cert_pem.as_bytes(), PUBLIC)?;
    let fleet_ca = FleetCa::from_pem(&ca.cert_pem, &ca.key_pem)?;
    issue_server_cert(&d, &fleet_ca, &default_sans(extra_sans))?;

    let (key, csr) = pki::new_key_and_csr("admin")?;
    let cert = fleet_ca.sign_client_csr(
        &csr,
        &Identity::Operator("admin".into()),
        "admin",
        crate::operator::OPERATOR_CERT_TTL,
    )?;
    write_identity(&d.admin(), &ca.cert_pem, &cert, &key)?;

    let store = Store::open(&d.state())?;
    let der = certfleet_common::pem::first_certificate(cert.as_bytes())?;
    store.put(
        "operators",
        "admin",
        &OperatorRecord {
            name: "admin".into(),
            role: Role::Admin,
            revoked: false,
            issued_at: now(),
            issued_by: "certfleet init".into(),
            cert_fingerprint: pki::sha256_hex(&der),
        },
    )?;
    store.append("audit", |seq| crate::fleet::AuditEntry {
        seq,
        at: now(),
        actor: "certfleet init".into(),
        action: "fleet.init".into(),
        target: format!("ca:{}", fleet_ca.fingerprint()),
        detail: "created fleet CA, controller certificate and operator admin".into(),
    })?;
    store.flush()?;
    Ok(())
}

pub(crate) fn issue_server_cert(d: &DataDir, ca: &FleetCa, sans: &[String]) -> anyhow::Result<()> {
    let server = ca.issue_server(sans, SERVER_TTL)?;
    write_file(&d.server_key(), server.key_pem.as_bytes(), PRIVATE)?;
    write_file(&d.server_cert(), server.cert_pem.as_bytes(), PUBLIC)?;
    write_file(&d.server_sans(), sans.join("\n").as_bytes(), PUBLIC)?;
    Ok(())
}

/// Loads the fleet from a data directory, renewing the controller's own certificate when it is
/// within 30 days of expiry (or already expired, e.g. after the controller was stopped past its
/// notAfter). A data directory whose CA exists but whose store does not is refused unless
/// `new_store` (an empty store would lock every operator and agent out).
pub fn load(
    dir: &Path,
    opts: ServeOptions,
    new_store: bool,
) -> anyhow::Result<(Arc<Fleet>, Arc<rustls::ServerConfig>)> {
    let (fleet, tls, _) = load_serving(dir, opts, new_store)?;
    Ok((fleet, tls))
}

/// [`load`], also returning the handle that keeps renewing the server certificate while the
/// controller runs ([`crate::self_cert::SelfCert::run`]).
pub fn load_serving(
    dir: &Path,
    opts: ServeOptions,
    new_store: bool,
) -> anyhow::Result<(
    Arc<Fleet>,
    Arc<rustls::ServerConfig>,
    crate::self_cert::SelfCert,
)> {
    let d = DataDir(dir.to_path_buf());
    if !d.ca_cert().exists() {
        bail!(
            "{} holds no fleet CA: run `certfleet init --data-dir {}` first",
            dir.display(),
            dir.display()
        );
    }
    // A compaction killed between its two renames leaves no `state` for a moment.
    crate::store::recover_interrupted_compaction(&d.state())?;
    if !d.state().exists() && !new_store {
        bail!(
            "{} holds a fleet CA but no state store ({} is missing): starting on an empty store \
             would lock out every operator and agent. Restore {} from a backup, or import an \
             export with `certfleet store import --data-dir {}`; to start over deliberately with \
             an empty store (operators and agents must be issued and enrolled again), pass --new-store",
            dir.display(),
            d.state().display(),
            d.state().display(),
            dir.display()
        );
    }
    let ca_pem = read(&d.ca_cert())?;
    let self_ca = FleetCa::from_pem(&ca_pem, &read(&d.ca_key())?)
        .with_context(|| format!("loading fleet CA from {}", d.ca_cert().display()))?;
    let ca = FleetCa::from_pem(&ca_pem, &read(&d.ca_key())?)
        .with_context(|| format!("loading fleet CA from {}", d.ca_cert().display()))?;
    let self_cert = crate::self_cert::SelfCert::start(dir, self_ca)?;
    let tls = certfleet_common::tls::server_config_reloadable(&ca_pem, self_cert.served())?;
    let store = Store::open(&d.state())?;
    let metrics = crate::metrics::Metrics::default();
    let served = certfleet_common::pem::first_certificate(read(&d.server_cert())?.as_bytes())?;
    metrics.set_controller_cert_not_after(certfleet_common::x509::parse_der(&served)?.not_after);
    let fleet = Fleet {
        store,
        ca,
        opts,
        registry: Default::default(),
        metrics,
        enroll_lock: Default::default(),
        changed: Default::default(),
        plan_lock: Default::default(),
        inventory: Default::default(),
        active_plans: Default::default(),
        execs: Default::default(),
        agent_cache: Default::default(),
    };
    Ok((Arc::new(fleet), tls, self_cert))
}

/// Limits that keep one peer from hurting the others, and the store watchdog's patience.
#[derive(Clone, Debug)]
pub struct PeerLimits {
    /// Connection pools and deadlines of the gRPC listener.
    pub listener: ListenerLimits,
    /// Caps on what one agent may report.
    pub reports: ReportLimits,
    /// How often the store is probed with a write.
    pub store_probe_interval: Duration,
    /// How long writes may keep failing before the controller exits (non-zero) so that its
    /// supervisor restarts it.
    pub store_failure_grace: Duration,
    /// When the store is compacted automatically (checked every `store_probe_interval`).
    pub store_compaction: crate::store::CompactionPolicy,
}

impl Default for PeerLimits {
    fn default() -> Self {
        PeerLimits {
            listener: ListenerLimits::default(),
            reports: ReportLimits::default(),
            store_probe_interval: Duration::from_secs(10),
            store_failure_grace: Duration::from_secs(60),
            store_compaction: Default::default(),
        }
    }
}

/// Accept backlog of the gRPC listener. A restarted controller meets the whole fleet
/// reconnecting at once; the usual 128 overflows while it is busy, and every dropped SYN costs
/// an agent a connect timeout. The kernel caps it at `net.core.somaxconn` (4096 by default).
pub const LISTEN_BACKLOG: u32 = 4096;

/// Binds `addr` (`host:port`) with [`LISTEN_BACKLOG`] (tokio's `TcpListener::bind` uses 128).
pub async fn bind_listener(addr: &str) -> std::io::Result<TcpListener> {
    let mut last = None;
    for a in tokio::net::lookup_host(addr).await? {
        let socket = if a.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        match socket.bind(a).and_then(|_| socket.listen(LISTEN_BACKLOG)) {
            Ok(l) => return Ok(l),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::AddrNotAvailable,
            format!("{addr} resolves to no address"),
        )
    }))
}

/// Largest message an operator may send (a supplied certificate, a plan request).
const MAX_OPERATOR_REQUEST_BYTES: usize = 4 << 20;
/// Largest message an enrolling agent may send (a CSR).
const MAX_ENROLL_REQUEST_BYTES: usize = 64 << 10;

/// Probes the store every `interval`; resolves with an error once writes have kept failing
/// (the probe, or any other write in the interval) for longer than `grace`. An interval without
/// a write error ends the streak and clears the failure the health endpoints report.
async fn store_watchdog(fleet: Arc<Fleet>, interval: Duration, grace: Duration) -> anyhow::Error {
    let mut tick = tokio::time::interval(interval);
    let mut failing_since: Option<tokio::time::Instant> = None;
    let mut errors_seen = fleet.store.write_errors();
    loop {
        tick.tick().await;
        let store = fleet.store.clone();
        // sled's flush can block for good once the disk has failed it: a probe that does not
        // finish in time is a failed probe.
        let patience = interval.max(Duration::from_secs(5));
        let probe = match tokio::time::timeout(
            patience,
            tokio::task::spawn_blocking(move || store.probe()),
        )
        .await
        {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => Err(crate::store::StoreError::Io {
                what: "store probe".into(),
                source: std::io::Error::other(e.to_string()),
            }),
            Err(_) => Err(crate::store::StoreError::Io {
                what: "store probe".into(),
                source: std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "a write and flush did not finish within {}s",
                        patience.as_secs()
                    ),
                ),
            }),
        };
        let errors = fleet.store.write_errors();
        let new_errors = errors - errors_seen;
        errors_seen = errors;
        if probe.is_ok() && new_errors == 0 {
            if failing_since.take().is_some() {
                tracing::info!("state store writes succeed again");
            }
            fleet.store.clear_failure();
            continue;
        }
        let since = *failing_since.get_or_insert_with(tokio::time::Instant::now);
        let why = match probe {
            Err(e) => e.to_string(),
            Ok(()) => fleet
                .store
                .failure()
                .unwrap_or_else(|| format!("{new_errors} write error(s)")),
        };
        tracing::error!(error = %why, new_errors, failing_for_s = since.elapsed().as_secs(), "state store writes are failing");
        if since.elapsed() >= grace {
            return anyhow::anyhow!(
                "state store writes have failed for {}s ({why}); exiting so that the supervisor restarts the controller \
                 (free disk space under the data directory first)",
                since.elapsed().as_secs()
            );
        }
    }
}

/// Compacts the store when [`crate::store::CompactionPolicy::wants`] it, at most once per its
/// interval (a failed attempt counts), checking every `every`, until `stop`.
async fn auto_compact(
    fleet: Arc<Fleet>,
    every: Duration,
    policy: crate::store::CompactionPolicy,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    if !policy.enabled {
        return;
    }
    let mut tick = tokio::time::interval(every);
    let mut last: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        if last.is_some_and(|t| t.elapsed() < policy.interval) {
            continue;
        }
        let (size, live) = (fleet.store.size_on_disk(), fleet.store.live_bytes());
        if !policy.wants(size, live) {
            continue;
        }
        tracing::info!(
            size_on_disk = size,
            live_bytes = live,
            ratio = policy.ratio,
            "state store holds mostly garbage: compacting"
        );
        last = Some(tokio::time::Instant::now());
        let store = fleet.store.clone();
        // Failures are logged and counted in the store's compaction statistics.
        let _ = tokio::task::spawn_blocking(move || store.compact()).await;
    }
}

/// Raises the open-file limit to its hard maximum, and shrinks the connection pools to fit it
/// (each connection is one descriptor; some are kept for the store, HTTP and tools).
pub fn fit_fd_limit(limits: &mut ListenerLimits) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    let soft = if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        hard
    } else {
        soft
    };
    let available = usize::try_from(soft)
        .unwrap_or(usize::MAX)
        .saturating_sub(256);
    let wanted = limits.max_authenticated + limits.max_anonymous;
    if wanted > available {
        let anonymous = (available / 8).max(1).min(limits.max_anonymous);
        let authenticated = available.saturating_sub(anonymous).max(1);
        tracing::warn!(
            open_files = soft,
            max_connections = authenticated,
            max_anonymous_connections = anonymous,
            "open-file limit is lower than the connection limits; lowering them"
        );
        limits.max_anonymous = anonymous;
        limits.max_anonymous_per_address = limits.max_anonymous_per_address.min(anonymous);
        limits.max_authenticated = authenticated;
    }
}

/// Serves gRPC on `grpc` and, if given, HTTP on `http`, until `shutdown` resolves. Returns an
/// error when the store's writes keep failing (see [`PeerLimits::store_failure_grace`]).
pub async fn serve(
    fleet: Arc<Fleet>,
    tls: Arc<rustls::ServerConfig>,
    grpc: TcpListener,
    http: Option<crate::http::HttpListener>,
    limits: PeerLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let stats: Arc<ListenerStats> = Default::default();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let f = fleet.clone();
    tokio::spawn(async move {
        shutdown.await;
        // The heartbeat times since the last batch, while the streams are still registered (a
        // kicked stream's end writes none).
        let g = f.clone();
        let _ = tokio::task::spawn_blocking(move || g.persist_last_seen(&mut HashMap::new())).await;
        // Long-lived agent streams would hold a graceful shutdown open forever: end them.
        f.registry
            .kick_all(tonic::Status::unavailable("controller shutting down"));
        let _ = stop_tx.send(true);
    });
    let wait = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|v| *v).await;
    };

    if let Some(http) = http {
        let router = crate::http::router(fleet.clone(), stats.clone());
        let rx = stop_rx.clone();
        tokio::spawn(async move {
            if let Err(e) = crate::http::serve(http, router, wait(rx)).await {
                tracing::error!(error = %e, "HTTP server failed");
            }
        });
    }

    // The inventory index before the fleet reconnects and reports: built once, off the async
    // threads, while handshakes and hellos go on (reports wait for it).
    let f = fleet.clone();
    tokio::task::spawn_blocking(move || {
        if let Err(e) = f.inventory.warm(&f) {
            tracing::error!(error = %e.message(), "building the inventory index failed");
        }
    });

    tokio::spawn(crate::engine::run(fleet.clone(), stop_rx.clone()));

    // Batched heartbeat persistence: no fsync per heartbeat, only the times that changed, off
    // the runtime's threads (a write per connected agent).
    let f = fleet.clone();
    let mut rx = stop_rx.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(30));
        let persisted = Arc::new(std::sync::Mutex::new(HashMap::new()));
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let (f, persisted) = (f.clone(), persisted.clone());
                    let _ = tokio::task::spawn_blocking(move || {
                        f.persist_last_seen(&mut persisted.lock().unwrap_or_else(|p| p.into_inner()));
                    })
                    .await;
                }
                _ = rx.changed() => break,
            }
        }
    });

    // The agent directory decoded again off the request path once the agents tree has been
    // quiet for a second (after a wave of first hellos or enrollments): the next listing finds
    // it current instead of decoding 10,000 records on its own time.
    let f = fleet.clone();
    let mut rx = stop_rx.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut before = u64::MAX;
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let g = f.store.generation("agents");
                    if g == before && !f.agent_cache.is_current(g) {
                        let f = f.clone();
                        let _ = tokio::task::spawn_blocking(move || f.agent_directory()).await;
                    }
                    before = g;
                }
                _ = rx.changed() => break,
            }
        }
    });

    tokio::spawn(crate::heap::trim_periodically(stop_rx.clone()));

    tokio::spawn(auto_compact(
        fleet.clone(),
        limits.store_probe_interval,
        limits.store_compaction.clone(),
        stop_rx.clone(),
    ));

    let incoming = certfleet_common::tls::tls_incoming(grpc, tls, limits.listener.clone(), stats);
    let report_bytes = limits.reports.max_report_bytes;
    let grpc_server = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .max_concurrent_streams(Some(128))
        .add_service(
            EnrollmentServer::new(crate::enroll::EnrollmentService::new(fleet.clone()))
                .max_decoding_message_size(MAX_ENROLL_REQUEST_BYTES)
                .max_encoding_message_size(MAX_ENROLL_REQUEST_BYTES),
        )
        .add_service(
            AgentLinkServer::new(crate::link::AgentLinkService::with_limits(
                fleet.clone(),
                limits.reports.clone(),
            ))
            .max_decoding_message_size(report_bytes)
            .max_encoding_message_size(report_bytes),
        )
        .add_service(
            OperatorServer::new(crate::operator::OperatorService::new(fleet.clone()))
                .max_decoding_message_size(MAX_OPERATOR_REQUEST_BYTES)
                // Inventory answers grow with the fleet; what a client accepts is its choice.
                .max_encoding_message_size(usize::MAX),
        )
        .serve_with_incoming_shutdown(incoming, wait(stop_rx));
    tokio::select! {
        r = grpc_server => r.context("gRPC server")?,
        e = store_watchdog(fleet.clone(), limits.store_probe_interval, limits.store_failure_grace) => {
            fleet.registry.kick_all(tonic::Status::unavailable("controller restarting: state store failed"));
            return Err(e);
        }
    }
    fleet.store.flush()?;
    Ok(())
}

/// A fleet on a fresh data directory (`certfleet init` + load), for unit tests.
#[cfg(test)]
pub(crate) fn test_fleet() -> (tempfile::TempDir, Arc<Fleet>) {
    certfleet_common::tls::install_crypto_provider();
    let dir = tempfile::tempdir().expect("tempdir");
    init(dir.path(), &[]).expect("certfleet init");
    let (fleet, _) = load(dir.path(), ServeOptions::default(), false).expect("load");
    (dir, fleet)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reconnect storm: many connections arrive before the controller accepts any. With a
    /// backlog of 128 the kernel drops the SYNs beyond it and those connects time out.
    #[tokio::test]
    async fn the_listener_queues_a_reconnect_storm() {
        let listener = bind_listener("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut connects = tokio::task::JoinSet::new();
        for _ in 0..400 {
            connects.spawn(async move {
                tokio::time::timeout(
                    Duration::from_millis(1500),
                    tokio::net::TcpStream::connect(addr),
                )
                .await
            });
        }
        let mut held = Vec::new();
        let mut timed_out = 0;
        while let Some(r) = connects.join_next().await {
            match r.unwrap() {
                Ok(Ok(s)) => held.push(s),
                Ok(Err(e)) => panic!("connect failed: {e}"),
                Err(_) => timed_out += 1,
            }
        }
        assert_eq!(
            timed_out,
            0,
            "{} connected, {timed_out} timed out",
            held.len()
        );
        drop(listener);
    }
}
