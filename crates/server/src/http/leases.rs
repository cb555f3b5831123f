//! Leases: read, revoke, and RFC 7662 introspection for tools.

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use warden_core::audit::entry::Actor;

use super::extract::{ApiJson, ApiPath};

use crate::auth::{AnyCaller, Caller, HumanCaller};
use crate::error::{ApiError, ApiResult, Code, ErrorBody};
use crate::execution::{self, Lease, LeaseState};
use crate::state::{App, blocking};

/// A lease as stored, with whether it is active now.
#[derive(Debug, Serialize, ToSchema)]
pub struct LeaseView {
    #[serde(flatten)]
    pub lease: Lease,
    pub active: bool,
}

/// A lease (humans; agents see their own).
#[utoipa::path(get, path = "/v1/leases/{id}", tag = "leases", security(("bearer" = [])),
    params(("id" = String, Path, description = "the lease id (`lease_…`)")),
    responses(
        (status = 200, body = LeaseView),
        (status = 403, description = "`missing_role`: revoking needs a halting role", body = ErrorBody),
        (status = 404, description = "`unknown_lease`", body = ErrorBody),
    ))]
pub async fn get(
    State(app): State<App>,
    AnyCaller(caller): AnyCaller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<LeaseView>> {
    blocking(&app, move |s| {
        let missing = || ApiError::new(Code::UnknownLease, format!("no lease `{id}`"));
        let (lease, _) = execution::lease(s.ledger().store().as_ref(), &id)?.ok_or_else(missing)?;
        if let Caller::Agent(a) = &caller
            && a.id != lease.agent
        {
            return Err(missing());
        }
        let active = lease.active_at(s.now());
        Ok(Json(LeaseView { lease, active }))
    })
    .await
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevokeBody {
    #[serde(default)]
    pub reason: Option<String>,
}

/// Revoke a lease now (humans with a halting role). Revoking a revoked lease answers it as it is.
#[utoipa::path(post, path = "/v1/leases/{id}/revoke", tag = "leases", security(("bearer" = [])),
    params(("id" = String, Path, description = "the lease id (`lease_…`)")),
    request_body = RevokeBody,
    responses(
        (status = 200, body = LeaseView),
        (status = 404, description = "`unknown_lease`", body = ErrorBody),
        (status = 409, description = "`conflict`", body = ErrorBody),
    ))]
pub async fn revoke(
    State(app): State<App>,
    human: HumanCaller,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<RevokeBody>,
) -> ApiResult<Json<LeaseView>> {
    blocking(&app, move |s| {
        crate::authority::check_human(s, &human.0, crate::authority::Power::RevokeLease)?;
        let store = s.ledger().store();
        let (lease, version) = execution::lease(store.as_ref(), &id)?
            .ok_or_else(|| ApiError::new(Code::UnknownLease, format!("no lease `{id}`")))?;
        if lease.state == LeaseState::Active {
            let reason = body.reason.unwrap_or_else(|| "revoked by hand".into());
            let batch = execution::revoke_changes(&lease, version, &Actor::user(&human.0.id), &reason, s.now());
            s.ledger().commit(batch)?;
        }
        let (lease, _) = execution::lease(store.as_ref(), &id)?
            .ok_or_else(|| ApiError::new(Code::UnknownLease, format!("no lease `{id}`")))?;
        let active = lease.active_at(s.now());
        Ok(Json(LeaseView { lease, active }))
    })
    .await
}

/// RFC 7662 request: the lease token (or the lease id).
#[derive(Debug, Deserialize, ToSchema)]
pub struct IntrospectBody {
    pub token: String,
    #[serde(default)]
    pub token_type_hint: Option<String>,
}

/// RFC 7662 answer; only `active` when the lease is unknown, revoked or expired.
#[derive(Debug, Serialize, ToSchema)]
pub struct Introspection {
    pub active: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exp: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iat: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    /// The action digest of the one action the lease allows (DESIGN §6).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub act_digest: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
}

fn inactive() -> Introspection {
    Introspection {
        active: false,
        scope: None,
        sub: None,
        exp: None,
        iat: None,
        jti: None,
        act_digest: None,
        token_type: None,
        iss: None,
    }
}

/// RFC 7662 introspection of a lease token, for tools (a tool's own credential: `warden user
/// add <tool> --role tool`) and humans; agents are refused. Only the token itself is
/// introspected — a lease id is not a credential and is answered `{"active": false}`. The
/// body is `application/x-www-form-urlencoded` as the RFC says, or JSON.
#[utoipa::path(post, path = "/v1/leases/introspect", tag = "leases", security(("bearer" = [])),
    request_body(content(
        (IntrospectBody = "application/x-www-form-urlencoded"),
        (IntrospectBody = "application/json"),
    )),
    responses(
        (status = 200, body = Introspection),
    ))]
pub async fn introspect(
    State(app): State<App>,
    _: HumanCaller,
    super::extract::FormOrJson(body): super::extract::FormOrJson<IntrospectBody>,
) -> ApiResult<Json<Introspection>> {
    // RFC 7662 §2.1: the hint may be ignored; the token's signature says what it is.
    let _ = body.token_type_hint.as_deref();
    blocking(&app, move |s| {
        let Some(id) = s
            .tokens
            .lease_claims(&body.token)
            .and_then(|c| c.extra.get("jti").and_then(|j| j.as_str().map(String::from)))
        else {
            return Ok(Json(inactive()));
        };
        let Some((lease, _)) = execution::lease(s.ledger().store().as_ref(), &id)? else { return Ok(Json(inactive())) };
        if !lease.active_at(s.now()) {
            return Ok(Json(inactive()));
        }
        let iat = time::OffsetDateTime::parse(&lease.issued_at, &time::format_description::well_known::Rfc3339)
            .ok()
            .map(|t| t.unix_timestamp());
        Ok(Json(Introspection {
            active: true,
            scope: Some(lease.scope.clone()),
            sub: Some(lease.agent.clone()),
            exp: Some(lease.expires_ms / 1000),
            iat,
            jti: Some(lease.id.clone()),
            act_digest: Some(lease.digest.clone()).filter(|d| !d.is_empty()),
            token_type: Some("lease".into()),
            iss: Some(s.tokens.local.issuer().to_string()),
        }))
    })
    .await
}
