//! HTTP side door for monitoring: `/healthz` (is the store answering) and `/metrics`
//! (Prometheus text format). Plain HTTP on a separate listener, meant for localhost or a
//! monitoring network; it exposes no secrets and accepts no changes.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::fleet::Fleet;

/// The HTTP routes.
pub fn router(fleet: Arc<Fleet>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .with_state(fleet)
}

async fn healthz(State(fleet): State<Arc<Fleet>>) -> impl IntoResponse {
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

async fn metrics(State(fleet): State<Arc<Fleet>>) -> impl IntoResponse {
    let mut r = fleet.metrics.registry();
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
    crate::inventory::register_metrics(&fleet, &mut r);
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
