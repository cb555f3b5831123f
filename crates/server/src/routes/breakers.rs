//! Budget breakers: a tripped breaker holds an agent × action at human approval until reset.

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;
use warden_core::audit::entry::{Actor, Event, EventType};
use warden_store::{Batch, Change};

use super::ApiJson;
use super::actions::{breaker, breaker_key};
use crate::auth::HumanCaller;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::model::{millis, rfc3339};
use crate::state::{App, blocking};

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResetBody {
    /// The agent's SPIFFE ID.
    pub agent: String,
    /// The action class.
    pub action: String,
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
    human.require(&["admin"])?;
    if body.reason.trim().is_empty() {
        return Err(ApiError::invalid("reason_required", "a reset needs a `reason`"));
    }
    blocking(&app, move |s| {
        if !breaker(s.ledger().store().as_ref(), &body.agent, &body.action)?.open {
            return Err(ApiError::conflict(
                "breaker_closed",
                format!("the breaker of `{}` × `{}` is not tripped", body.agent, body.action),
            ));
        }
        let now = s.now();
        let batch = Batch::new()
            .change(Change::SetMeta {
                key: breaker_key(&body.agent, &body.action),
                value: format!("closed {}", millis(now)),
            })
            .event(
                Event::new(EventType::BreakerReset, Actor::user(&human.0.id))
                    .action(&body.action)
                    .data(json!({"agent": body.agent, "reason": body.reason})),
            );
        s.ledger().commit(batch)?;
        Ok(Json(ResetAnswer { agent: body.agent, action: body.action, reset_at: rfc3339(now) }))
    })
    .await
}
