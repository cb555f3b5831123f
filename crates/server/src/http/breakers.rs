//! Budget breakers: a tripped breaker holds an agent × action at human approval until reset.

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use warden_core::audit::entry::Actor;

use super::extract::ApiJson;
use crate::auth::HumanCaller;
use crate::error::{ApiResult, ErrorBody};
use crate::model::rfc3339;
use crate::state::{App, blocking};

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResetBody {
    /// The agent's SPIFFE ID.
    pub agent: String,
    /// The action class.
    pub action: String,
    /// Why (not blank); recorded in the audit log.
    #[schema(schema_with = crate::input::reason_schema)]
    pub reason: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ResetAnswer {
    pub agent: String,
    pub action: String,
    /// Budgets count again from here.
    pub reset_at: String,
}

/// Close a tripped breaker (role `admin`); the pair's budgets count afresh from now.
#[utoipa::path(post, path = "/v1/breakers/reset", tag = "admin", security(("bearer" = [])), request_body = ResetBody,
    responses(
        (status = 200, body = ResetAnswer),
        (status = 409, description = "`breaker_closed`: it is not tripped", body = ErrorBody),
        (status = 422, description = "`reason_required`", body = ErrorBody),
    ))]
pub async fn reset(
    State(app): State<App>,
    human: HumanCaller,
    ApiJson(body): ApiJson<ResetBody>,
) -> ApiResult<Json<ResetAnswer>> {
    crate::authority::check_human(&app, &human.0, crate::authority::Power::Admin("resetting a breaker"))?;
    blocking(&app, move |s| {
        let at = crate::breaker::reset(s, &body.agent, &body.action, &Actor::user(&human.0.id), &body.reason)?;
        Ok(Json(ResetAnswer { agent: body.agent, action: body.action, reset_at: rfc3339(at) }))
    })
    .await
}
