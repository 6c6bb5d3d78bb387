//! HTTP side door for monitoring: `/healthz` (is the store answering and are its writes
//! succeeding), `/readyz` (may traffic be sent here: the store is open and answering, its
//! writes succeed, and the rotation engine is going round its loop) and `/metrics`
//! (Prometheus/OpenMetrics text). A separate listener, plain HTTP for localhost or, with
//! `--http-tls`, HTTPS with the controller's own certificate for a monitoring network (no client
//! certificate asked: it exposes no secrets and accepts no changes).
//!
//! `/metrics` must stay cheap with 100,000 certificates and several scrapers: the fleet part
//! is a pass over the in-memory inventory index (never the stored documents), rendered on a
//! blocking thread, one render at a time, and
//! the text is reused for [`crate::metrics::SNAPSHOT_MAX_AGE`]. Counters and connection
//! statistics are encoded fresh on every scrape.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;

use certfleet_common::model::now;
use certfleet_common::tls::ListenerStats;

use crate::fleet::Fleet;

/// How long the engine may go without a pass before `/readyz` says it is not running (a pass
/// happens at least every second; a policy evaluation on a large fleet takes a few).
pub const ENGINE_STALL_SECS: i64 = 60;

/// Errors of the HTTP side door's setup.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The controller's certificate or key could not be used for HTTPS.
    #[error("HTTPS for /metrics with {what}: {reason}")]
    Tls {
        /// Which file.
        what: String,
        /// Why.
        reason: String,
    },
}

/// The monitoring listener, and the TLS configuration when it serves HTTPS.
pub struct HttpListener {
    /// Bound listener.
    pub listener: TcpListener,
    /// Server-authenticated TLS (no client certificate), or plain HTTP.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

/// A TLS configuration for the monitoring listener from the controller's certificate chain and
/// key (PEM). `cert_path` names the files in errors.
pub fn tls_config(
    cert_pem: &str,
    key_pem: &str,
    cert_path: &str,
) -> Result<Arc<rustls::ServerConfig>, HttpError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let bad = |reason: String| HttpError::Tls {
        what: cert_path.to_owned(),
        reason,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| bad(e.to_string()))?;
    if chain.is_empty() {
        return Err(bad("no certificate".into()));
    }
    let key =
        PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| bad(format!("key: {e}")))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| bad(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Rendered fleet metrics and when.
type Snapshot = Option<(Instant, Arc<String>)>;

/// What the HTTP handlers read.
#[derive(Clone)]
struct Http {
    fleet: Arc<Fleet>,
    listener: Arc<ListenerStats>,
    snapshot: Arc<tokio::sync::Mutex<Snapshot>>,
}

/// The HTTP routes.
pub fn router(fleet: Arc<Fleet>, listener: Arc<ListenerStats>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(Http {
            fleet,
            listener,
            snapshot: Default::default(),
        })
}

/// Serves the routes on `l` (HTTP or HTTPS) until `shutdown` resolves.
pub async fn serve(
    l: HttpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    match l.tls {
        None => {
            axum::serve(l.listener, router)
                .with_graceful_shutdown(shutdown)
                .await
        }
        Some(tls) => {
            axum::serve(TlsListener::new(l.listener, tls), router)
                .with_graceful_shutdown(shutdown)
                .await
        }
    }
}

/// Connections whose TLS handshake finished. Handshakes run in their own tasks with a deadline,
/// so one slow or silent client never holds up the others.
struct TlsListener {
    local: std::net::SocketAddr,
    rx: tokio::sync::mpsc::Receiver<(
        tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
        std::net::SocketAddr,
    )>,
}

/// Deadline of one HTTPS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

impl TlsListener {
    fn new(listener: TcpListener, tls: Arc<rustls::ServerConfig>) -> Self {
        let local = listener
            .local_addr()
            .unwrap_or_else(|_| ([0, 0, 0, 0], 0).into());
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        tokio::spawn(async move {
            loop {
                let (tcp, peer) = match listener.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "monitoring listener: accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                if tx.is_closed() {
                    return;
                }
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(s)) => {
                            let _ = tx.send((s, peer)).await;
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(peer = %peer, error = %e, "monitoring listener: TLS handshake failed")
                        }
                        Err(_) => {
                            tracing::debug!(peer = %peer, "monitoring listener: TLS handshake timed out")
                        }
                    }
                });
            }
        });
        TlsListener { local, rx }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(c) => c,
            // The accept task only ends with the listener: nothing more will come.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

async fn healthz(State(h): State<Http>) -> impl IntoResponse {
    store_health(&h.fleet)
}

async fn readyz(State(h): State<Http>) -> impl IntoResponse {
    let (code, body) = store_health(&h.fleet);
    if code != StatusCode::OK {
        return (code, format!("not ready: {body}"));
    }
    let beat = h.fleet.metrics.last_engine_beat();
    if beat == 0 {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the rotation engine has not started\n".to_owned(),
        );
    }
    let idle = now() - beat;
    if idle > ENGINE_STALL_SECS {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: the rotation engine has not run for {idle}s\n"),
        );
    }
    (
        StatusCode::OK,
        "ready: store open, engine running\n".to_owned(),
    )
}

/// Whether the store is open and its writes succeed, as `/healthz` (and `certfleet status`)
/// report it.
pub fn store_health(fleet: &Fleet) -> (StatusCode, String) {
    if let Some(failure) = fleet.store.failure() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("state store writes are failing: {failure}\n"),
        );
    }
    match fleet.store.get::<u32>("meta", "schema_version") {
        Ok(Some(_)) => (
            StatusCode::OK,
            format!("ok: {} agents connected\n", fleet.registry.count()),
        ),
        Ok(None) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "state store has no schema version\n".to_owned(),
        ),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("state store: {e}\n"),
        ),
    }
}

/// Reads what the fleet gauges need and renders them (blocking: a pass over the inventory
/// index, the agent records, plan headers and the steps of open plans; no inventory document
/// is decoded).
pub fn render_fleet_snapshot(fleet: &Fleet) -> Result<String, String> {
    let directory = fleet
        .agent_directory()
        .map_err(|e| e.message().to_owned())?;
    let plans = crate::plan::storage::all_headers(&fleet.store, crate::metrics::plan_steps_shown)
        .map_err(|e| e.to_string())?;
    let policies: Vec<crate::policy::RolePolicy> =
        fleet.store.list("policies").map_err(|e| e.to_string())?;
    let live: HashMap<String, i64> = fleet.registry.last_seen().into_iter().collect();
    let seen = fleet.persisted_seen().map_err(|e| e.message().to_owned())?;
    let ca_not_after = crate::self_cert::ca_not_after(fleet.ca.cert_pem()).unwrap_or(0);
    // Every agent's name, revoked ones included (the CA forecast names who saw a CA).
    let names: crate::metrics::ScrapeMap<&str, &str> = directory
        .values()
        .map(|a| (a.id.as_str(), a.name.as_str()))
        .collect();
    let r = fleet
        .inventory
        .with_certs(fleet, |certs| {
            // The CA cliff per CA (issue 13), from the same pass over the index.
            let ca_facts = crate::cas::facts(certs, &names, fleet.ca.cert_pem());
            let view = crate::metrics::FleetView {
                now: now(),
                agents: directory.values().collect(),
                certs,
                live: &live,
                seen: &seen,
                plans: &plans,
                policies: &policies,
                fleet_ca_not_after: ca_not_after,
                controller_cert_not_after: fleet.metrics.controller_cert_not_after(),
                per_certificate: fleet.metrics.per_certificate(),
            };
            let mut r = crate::metrics::render_fleet(&view);
            crate::cas::register_metrics(&ca_facts, &mut r);
            r
        })
        .map_err(|e| e.message().to_owned())?;
    crate::metrics::encode(&r).map_err(|e| e.to_string())
}

/// The fleet part of a scrape: the cached text while it is fresh, else rendered again on a
/// blocking thread. Scrapes that arrive during a render wait for it and share its result.
async fn fleet_snapshot(h: &Http) -> Result<Arc<String>, String> {
    let mut guard = h.snapshot.lock().await;
    if let Some((at, text)) = guard.as_ref()
        && at.elapsed() < crate::metrics::SNAPSHOT_MAX_AGE
    {
        return Ok(text.clone());
    }
    let fleet = h.fleet.clone();
    let started = Instant::now();
    let text = tokio::task::spawn_blocking(move || render_fleet_snapshot(&fleet))
        .await
        .map_err(|e| format!("metrics render task: {e}"))??;
    tracing::debug!(
        ms = started.elapsed().as_millis() as u64,
        bytes = text.len(),
        "rendered fleet metrics"
    );
    let text = Arc::new(text);
    *guard = Some((Instant::now(), text.clone()));
    Ok(text)
}

async fn metrics(State(h): State<Http>) -> impl IntoResponse {
    let fleet = &h.fleet;
    let mut r = fleet.metrics.registry();
    crate::metrics::gauge(
        &mut r,
        "store_healthy",
        "1 while the state store's writes succeed, 0 while they fail",
        i64::from(fleet.store.failure().is_none()),
    );
    crate::metrics::gauge(
        &mut r,
        "store_write_errors",
        "State store write errors since the controller started",
        i64::try_from(fleet.store.write_errors()).unwrap_or(i64::MAX),
    );
    for (name, help, v) in [
        (
            "connections_evicted",
            "Anonymous connections closed to make room for newer ones",
            &h.listener.evicted,
        ),
        (
            "connections_handshake_timeouts",
            "Connections whose TLS handshake did not finish in time",
            &h.listener.handshake_timeouts,
        ),
        (
            "connections_first_request_timeouts",
            "Connections that sent no request in time after the TLS handshake",
            &h.listener.first_request_timeouts,
        ),
        (
            "connections_refused_full",
            "Authenticated connections refused because the pool was full",
            &h.listener.refused_full,
        ),
    ] {
        crate::metrics::gauge(
            &mut r,
            name,
            help,
            i64::try_from(v.load(Ordering::Relaxed)).unwrap_or(i64::MAX),
        );
    }
    crate::metrics::gauge(
        &mut r,
        "agents_connected",
        "Agents with a live stream",
        fleet.registry.count() as i64,
    );
    crate::metrics::gauge(
        &mut r,
        "store_size_bytes",
        "Bytes the state store uses on disk",
        fleet.store.size_on_disk() as i64,
    );
    let compaction = fleet.store.compaction_stats();
    for (name, help, value) in [
        (
            "store_live_bytes",
            "Bytes of keys and values the state store holds (its size without garbage)",
            fleet.store.live_bytes() as i64,
        ),
        (
            "store_compactions",
            "Online compactions of the state store since the controller started",
            compaction.runs as i64,
        ),
        (
            "store_compaction_failures",
            "Online compactions that failed (the live store was left as it was)",
            compaction.failures as i64,
        ),
        (
            "store_last_compaction_timestamp_seconds",
            "Unix time the last compaction ended, successful or not (0: none yet)",
            compaction.last_at,
        ),
        (
            "store_last_compaction_duration_ms",
            "How long the last compaction took",
            compaction.last_duration.as_millis() as i64,
        ),
    ] {
        crate::metrics::gauge(&mut r, name, help, value);
    }
    let fail = |why: String| {
        tracing::error!(error = %why, "rendering /metrics failed");
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain")],
            format!("rendering metrics failed: {why}\n"),
        )
    };
    let mut body = match crate::metrics::encode(&r) {
        Ok(b) => b,
        Err(e) => return fail(e.to_string()),
    };
    let fleet_text = match fleet_snapshot(&h).await {
        Ok(t) => t,
        Err(e) => return fail(e),
    };
    // Both parts are complete OpenMetrics documents: one `# EOF`, at the very end.
    if let Some(stripped) = body.strip_suffix("# EOF\n") {
        body.truncate(stripped.len());
    }
    body.push_str(&fleet_text);
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
}
