//! HTTP side door for monitoring: `/healthz` (is the store answering and are its writes
//! succeeding), `/readyz` (may traffic be sent here: the same, plus the gRPC side is up) and
//! `/metrics` (Prometheus text format). Plain HTTP on a separate listener, meant for localhost or a
//! monitoring network; it exposes no secrets and accepts no changes.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use certfleet_common::tls::ListenerStats;

use crate::fleet::Fleet;

/// What the HTTP handlers read.
#[derive(Clone)]
struct Http {
    fleet: Arc<Fleet>,
    listener: Arc<ListenerStats>,
}

/// The HTTP routes.
pub fn router(fleet: Arc<Fleet>, listener: Arc<ListenerStats>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(Http { fleet, listener })
}

async fn healthz(State(h): State<Http>) -> impl IntoResponse {
    store_health(&h.fleet)
}

async fn readyz(State(h): State<Http>) -> impl IntoResponse {
    let (code, body) = store_health(&h.fleet);
    if code == StatusCode::OK {
        (StatusCode::OK, "ready\n".to_owned())
    } else {
        (code, format!("not ready: {body}"))
    }
}

fn store_health(fleet: &Fleet) -> (StatusCode, String) {
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
    let agents: Vec<crate::fleet::AgentRecord> = fleet.store.list("agents").unwrap_or_default();
    crate::metrics::gauge(
        &mut r,
        "agents_enrolled",
        "Agents enrolled and not revoked",
        agents
            .iter()
            .filter(|a| a.state != crate::fleet::AgentState::Revoked)
            .count() as i64,
    );
    crate::metrics::gauge(
        &mut r,
        "store_size_bytes",
        "Bytes the state store uses on disk",
        fleet.store.size_on_disk() as i64,
    );
    crate::inventory::register_metrics(fleet, &mut r);
    crate::cas::register_metrics(fleet, &mut r);
    let mut body = String::new();
    if prometheus_client::encoding::text::encode(&mut body, &r).is_err() {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain")],
            "encoding failed".to_owned(),
        );
    }
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
}
