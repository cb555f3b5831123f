//! The emergency stop over HTTP.

use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use utoipa::ToSchema;
use warden_core::request::{Halt, HaltScope};

use super::extract::ApiJson;
use crate::auth::{Caller, HumanCaller};
use crate::error::{ApiResult, ErrorBody};
use crate::halt::{self, HaltRecord, Halted};
use crate::state::{App, blocking};

/// A halt: `scope` `all` (no `id`), or `agent`/`action` with the `id` it stops. The schema
/// says so with `oneOf` (see [`scoped_schema`]).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HaltBody {
    /// `all`, `agent` (id: SPIFFE ID) or `action` (id: action class).
    pub scope: HaltScope,
    #[serde(default)]
    pub id: Option<String>,
    pub reason: String,
    /// When the halt lapses by itself (RFC 3339); default: never.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub expires_at: Option<time::OffsetDateTime>,
    /// Also roll back the matching actions of open tasks (and of tasks an agent closed itself).
    #[serde(default)]
    pub rollback: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResumeBody {
    pub scope: HaltScope,
    #[serde(default)]
    pub id: Option<String>,
    pub reason: String,
}

/// `oneOf` two objects: scope `all` without an `id` (or with `null`), or scope `agent`/`action`
/// with a non-blank `id`; `reason` not blank; `extra` are the other properties.
fn scoped_schema(
    description: &str,
    extra: &[(&str, utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>)],
) -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    use utoipa::openapi::schema::{AdditionalProperties, ObjectBuilder, OneOfBuilder, Type};
    let variant = |scopes: &[&str], id: utoipa::openapi::schema::Object, id_required: bool| {
        let mut o = ObjectBuilder::new()
            .property("scope", ObjectBuilder::new().schema_type(Type::String).enum_values(Some(scopes.to_vec())))
            .property("id", id)
            .property("reason", crate::input::reason_schema())
            .required("scope")
            .required("reason")
            .additional_properties(Some(AdditionalProperties::FreeForm(false)));
        if id_required {
            o = o.required("id");
        }
        for (name, schema) in extra {
            o = o.property(*name, schema.clone());
        }
        o.build()
    };
    let none = ObjectBuilder::new().schema_type(Type::Null).description(Some("scope `all` names nothing")).build();
    let id = crate::input::not_blank("The agent's SPIFFE ID, or the action class.", "host.isolate");
    OneOfBuilder::new()
        .description(Some(description))
        .item(variant(&["all"], none, false))
        .item(variant(&["agent", "action"], id, true))
        .into()
}

impl utoipa::PartialSchema for HaltBody {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, SchemaType, Type};
        let expires_at = ObjectBuilder::new()
            .schema_type(SchemaType::from_iter([Type::String, Type::Null]))
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)))
            .description(Some("When the halt lapses by itself (RFC 3339); default: never."))
            .build();
        let rollback = ObjectBuilder::new()
            .schema_type(Type::Boolean)
            .description(Some(
                "Also roll back the matching actions of open tasks (and of tasks an agent closed itself).",
            ))
            .build();
        scoped_schema(
            "An emergency stop: everything (`all`), one agent or one action class.",
            &[("expires_at", expires_at.into()), ("rollback", rollback.into())],
        )
    }
}

impl ToSchema for HaltBody {}

impl utoipa::PartialSchema for ResumeBody {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        scoped_schema("Which halts to lift: the scope and id they were set with.", &[])
    }
}

impl ToSchema for ResumeBody {}

/// Emergency stop (humans with a halting role): from the moment this returns no matching action starts; the
/// matching leases are revoked and pending approvals cancelled in the same commit.
#[utoipa::path(post, path = "/v1/halt", tag = "halts", security(("bearer" = [])), request_body = HaltBody,
    responses(
        (status = 200, body = Halted),
        (status = 403, description = "`missing_role`: halting needs a halting role of the bundle", body = ErrorBody),
        (status = 409, description = "`conflict`", body = ErrorBody),
        (status = 422, description = "`invalid_halt`, `reason_required`", body = ErrorBody),
    ))]
pub async fn set(
    State(app): State<App>,
    human: HumanCaller,
    ApiJson(body): ApiJson<HaltBody>,
) -> ApiResult<Json<Halted>> {
    let halt = Halt { scope: body.scope, id: body.id, reason: body.reason, expires_at: body.expires_at };
    let caller = Caller::Human(human.0);
    blocking(&app, move |s| halt::set(s, halt, &caller, body.rollback).map(Json)).await
}

/// Lift halts (role `admin`).
#[utoipa::path(post, path = "/v1/resume", tag = "halts", security(("bearer" = [])), request_body = ResumeBody,
    responses(
        (status = 200, description = "the halts lifted", body = Vec<HaltRecord>),
        (status = 403, description = "`missing_role`: lifting halts needs `admin`", body = ErrorBody),
        (status = 404, description = "`no_halt`", body = ErrorBody),
        (status = 409, description = "`conflict`", body = ErrorBody),
        (status = 422, description = "`reason_required`", body = ErrorBody),
    ))]
pub async fn resume(
    State(app): State<App>,
    human: HumanCaller,
    ApiJson(body): ApiJson<ResumeBody>,
) -> ApiResult<Json<Vec<HaltRecord>>> {
    let caller = Caller::Human(human.0);
    blocking(&app, move |s| halt::resume(s, body.scope, body.id.as_deref(), &caller, &body.reason).map(Json)).await
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
