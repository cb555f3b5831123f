//! Liveness, readiness, the issuer's keys.

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use crate::error::{ApiError, ApiResult};
use crate::state::{App, blocking};

pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// Ready when the store answers and a bundle is in force.
pub async fn readyz(State(app): State<App>) -> ApiResult<Json<Value>> {
    let bundle = app.bundle()?.version().to_string();
    let size = blocking(&app, |s| Ok(s.ledger().store().size()?))
        .await
        .map_err(|_| ApiError::unavailable("store_unavailable", "the store does not answer"))?;
    Ok(Json(json!({"status": "ready", "bundle_version": bundle, "audit_size": size})))
}

pub async fn jwks(State(app): State<App>) -> Json<Value> {
    Json(app.tokens.local.jwks())
}

/// Prometheus text exposition.
pub async fn metrics(State(app): State<App>) -> ApiResult<impl axum::response::IntoResponse> {
    let pending = blocking(&app, |s| {
        let q = warden_store::Query { state: Some("pending_approval".into()), ..warden_store::Query::default() };
        Ok(s.ledger().store().find(warden_store::Table::Requests, &q)?.len() as u64)
    })
    .await?;
    let text = app.metrics.render(pending, 0);
    Ok(([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], text))
}
