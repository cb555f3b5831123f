//! The emergency stop over HTTP.

use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use utoipa::ToSchema;
use warden_core::audit::entry::Actor;
use warden_core::request::{Halt, HaltScope};

use super::extract::ApiJson;
use crate::auth::HumanCaller;
use crate::error::{ApiResult, ErrorBody};
use crate::halt::{self, HaltRecord, Halted};
use crate::state::{App, blocking};

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HaltBody {
    /// `all`, `agent` (id: SPIFFE ID) or `action` (id: action class).
    #[schema(value_type = String, example = "agent")]
    pub scope: HaltScope,
    #[serde(default)]
    pub id: Option<String>,
    pub reason: String,
    /// When the halt lapses by itself (RFC 3339); default: never.
    #[serde(default, with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>)]
    pub expires_at: Option<time::OffsetDateTime>,
    /// Also roll back the matching actions of open tasks.
    #[serde(default)]
    pub rollback: bool,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResumeBody {
    #[schema(value_type = String, example = "agent")]
    pub scope: HaltScope,
    #[serde(default)]
    pub id: Option<String>,
    pub reason: String,
}

/// Emergency stop (humans): from the moment this returns no matching action starts; the
/// matching leases are revoked and pending approvals cancelled in the same commit.
#[utoipa::path(post, path = "/v1/halt", tag = "halts", security(("bearer" = [])), request_body = HaltBody,
    responses(
        (status = 200, body = Halted),
        (status = 409, description = "`conflict`", body = ErrorBody),
        (status = 422, description = "`invalid_halt`, `reason_required`", body = ErrorBody),
    ))]
pub async fn set(
    State(app): State<App>,
    human: HumanCaller,
    ApiJson(body): ApiJson<HaltBody>,
) -> ApiResult<Json<Halted>> {
    let halt = Halt { scope: body.scope, id: body.id, reason: body.reason, expires_at: body.expires_at };
    let actor = Actor::user(&human.0.id);
    blocking(&app, move |s| halt::set(s, halt, &actor, body.rollback).map(Json)).await
}

/// Lift halts (role `admin`).
#[utoipa::path(post, path = "/v1/resume", tag = "halts", security(("bearer" = [])), request_body = ResumeBody,
    responses(
        (status = 200, description = "the halts lifted", body = Vec<HaltRecord>),
        (status = 404, description = "`no_halt`", body = ErrorBody),
        (status = 409, description = "`conflict`", body = ErrorBody),
        (status = 422, description = "`reason_required`", body = ErrorBody),
    ))]
pub async fn resume(
    State(app): State<App>,
    human: HumanCaller,
    ApiJson(body): ApiJson<ResumeBody>,
) -> ApiResult<Json<Vec<HaltRecord>>> {
    human.require(&["admin"])?;
    let actor = Actor::user(&human.0.id);
    blocking(&app, move |s| halt::resume(s, body.scope, body.id.as_deref(), &actor, &body.reason).map(Json)).await
}

/// Halts, active and lifted.
#[utoipa::path(get, path = "/v1/halts", tag = "halts", security(("bearer" = [])),
    responses((status = 200, body = Vec<HaltRecord>)))]
pub async fn list(State(app): State<App>, _: HumanCaller) -> ApiResult<Json<Vec<HaltRecord>>> {
    blocking(&app, |s| {
        Ok(Json(halt::records(s.ledger().store().as_ref(), false)?.into_iter().map(|(h, _)| h).collect()))
    })
    .await
}
