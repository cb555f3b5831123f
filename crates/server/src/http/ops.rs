//! Operations: liveness, readiness, metrics, the local issuer's keys, this API's description.

use axum::Json;
use axum::extract::State;
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use crate::error::{ApiError, ApiResult, Code};
use crate::state::{App, blocking};

#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    #[schema(example = "ok")]
    pub status: String,
}

/// Liveness: the process answers. Touches nothing (the framework's floor in benchmarks).
#[utoipa::path(get, path = "/healthz", tag = "ops", responses((status = 200, body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health { status: "ok".into() })
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Ready {
    #[schema(example = "ready")]
    pub status: String,
    /// The policy bundle in force.
    pub bundle_version: String,
    /// Entries in the audit log.
    pub audit_size: u64,
}

/// Readiness: a policy bundle is loaded and the store answers.
#[utoipa::path(get, path = "/readyz", tag = "ops", responses((status = 200, body = Ready)))]
pub async fn readyz(State(app): State<App>) -> ApiResult<Json<Ready>> {
    let bundle_version = app.bundle()?.version().to_string();
    let audit_size = blocking(&app, |s| Ok(s.ledger().store().size()?))
        .await
        .map_err(|_| ApiError::new(Code::StoreUnavailable, "the store does not answer"))?;
    Ok(Json(Ready { status: "ready".into(), bundle_version, audit_size }))
}

/// The local issuer's public keys (RFC 7517), to verify JWT-SVIDs offline.
#[utoipa::path(get, path = "/.well-known/jwks.json", tag = "ops",
    responses((status = 200, description = "a JWK set", body = Object)))]
pub async fn jwks(State(app): State<App>) -> Json<Value> {
    Json(app.tokens.local.jwks())
}

/// Prometheus metrics (text exposition format 0.0.4).
#[utoipa::path(get, path = "/metrics", tag = "ops",
    responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain")))]
pub async fn metrics(State(app): State<App>) -> ApiResult<impl axum::response::IntoResponse> {
    let (pending, leases, by_agent) = blocking(&app, |s| {
        let store = s.ledger().store();
        let q = warden_store::Query { state: Some("pending".into()), ..warden_store::Query::default() };
        let pending = store.count(warden_store::Table::Approvals, &q)?;
        // Bounded: each agent's pending approvals are capped by policy.
        let mut by_agent = std::collections::BTreeMap::<String, u64>::new();
        for r in store.find(warden_store::Table::Approvals, &q)? {
            *by_agent.entry(r.agent.unwrap_or_default()).or_default() += 1;
        }
        let q = warden_store::Query {
            state: Some("active".into()),
            at_from: Some(crate::model::millis(s.now())),
            ..warden_store::Query::default()
        };
        Ok((pending, store.count(warden_store::Table::Leases, &q)?, by_agent.into_iter().collect::<Vec<_>>()))
    })
    .await?;
    let text = app.metrics.render(pending, leases, app.ledger().group_stats(), &by_agent);
    Ok(([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], text))
}
