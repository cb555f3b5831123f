//! `/v1/actions` and `/v1/decisions`: HTTP in and out of the request pipeline
//! ([`crate::pipeline`]) — extract, call, map the answer. Nothing is decided here.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use utoipa::ToSchema;
use warden_core::request::ActionRequest;

use super::extract::{ApiJson, ApiPath};
use crate::auth::{AgentToken, AnyCaller, Caller};
use crate::error::{ApiError, ApiResult, Code};
use crate::execution::{self, Execution};
use crate::input;
use crate::pipeline::{self, ActionAnswer, Admitted, DryRunAnswer};
use crate::state::{App, blocking};

/// A dry run's body: an action request, and for humans the agent it is for.
#[derive(Debug)]
pub struct DryRunRequest {
    /// The agent to decide for (humans must name it; agents may only name themselves).
    pub agent: Option<String>,
    pub request: ActionRequest,
}

/// `agent` taken out, the rest read as an [`ActionRequest`] — which refuses fields it does not
/// name (`#[serde(flatten)]` would let them through).
impl<'de> Deserialize<'de> for DryRunRequest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let mut fields = serde_json::Map::<String, serde_json::Value>::deserialize(d)?;
        let agent = match fields.remove("agent") {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(a)) => Some(a),
            Some(other) => return Err(D::Error::custom(format!("agent: expected a string, not `{other}`"))),
        };
        let request = ActionRequest::deserialize(serde_json::Value::Object(fields)).map_err(D::Error::custom)?;
        Ok(DryRunRequest { agent, request })
    }
}

/// The schema of [`ActionRequest`] with the optional `agent` beside its fields (`allOf` would
/// not do: the request's schema forbids properties it does not name).
impl utoipa::PartialSchema for DryRunRequest {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::RefOr;
        use utoipa::openapi::schema::{Object, Schema, Type};
        let mut schema = <ActionRequest as utoipa::PartialSchema>::schema();
        if let RefOr::T(Schema::Object(o)) = &mut schema {
            let agent = Object::builder()
                .schema_type(utoipa::openapi::schema::SchemaType::from_iter([Type::String, Type::Null]))
                .description(Some("The agent to decide for: humans must name it; agents may name only themselves."))
                .build();
            o.properties.insert("agent".into(), RefOr::T(Schema::Object(agent)));
            o.description = Some("An action request, and for humans the agent it is for.".into());
        }
        schema
    }
}

impl ToSchema for DryRunRequest {
    fn schemas(schemas: &mut Vec<(String, utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>)>) {
        <ActionRequest as ToSchema>::schemas(schemas);
    }
}

/// Submit an action request (agents): the decision, recorded durably before the answer.
/// A `deny` is a 200 with outcome `deny`, not an error.
#[utoipa::path(post, path = "/v1/actions", tag = "actions", security(("bearer" = [])), request_body = ActionRequest,
    responses(
        (status = 200, description = "the decision, recorded", body = ActionAnswer),
        (status = 202, description = "recorded and still executing when the answer was due: the request as it stands (`state` `executing`); `GET /v1/actions/{id}` tells how it ends", body = ActionAnswer),
        (status = 404, description = "`unknown_task`: open the task first (`POST /v1/tasks`)", body = crate::error::ErrorBody),
        (status = 409, description = "`idempotency_conflict`, `approval_pending`, `conflict`", body = crate::error::ErrorBody),
        (status = 422, description = "`invalid_request` (e.g. a confidence outside [0, 1])", body = crate::error::ErrorBody),
    ))]
pub async fn submit(
    State(app): State<App>,
    token: AgentToken,
    ApiJson(req): ApiJson<ActionRequest>,
) -> ApiResult<(StatusCode, Json<ActionAnswer>)> {
    req.validate().map_err(|why| ApiError::new(Code::InvalidRequest, why))?;
    let bundle = app.bundle()?;
    let request_digest = pipeline::request_digest(&req)?;
    // Set once the decision is committed, before any execution starts.
    let recorded = Arc::new(std::sync::OnceLock::new());
    let mut job = {
        let (app, recorded) = (app.clone(), recorded.clone());
        // One hop to the blocking pool: admitting the agent is a store read like the rest.
        tokio::task::spawn_blocking(move || {
            let (agent, version) = token.admit_versioned(&app)?;
            pipeline::submit(&app, &bundle, &Admitted { agent, version }, req, request_digest, None, &recorded)
        })
    };
    let joined = |j: Result<ApiResult<ActionAnswer>, tokio::task::JoinError>| {
        j.map_err(|_| ApiError::new(Code::Internal, "a worker failed; look up the request before retrying"))?
    };
    // Answer before the router's timeout would: a tool call still running is not cut short
    // by a 408 — the agent gets the request's id and state, and polls for the end.
    match tokio::time::timeout(super::extract::answer_within(&app), &mut job).await {
        Ok(done) => joined(done).map(|a| (StatusCode::OK, Json(a))),
        Err(_) => match recorded.get().cloned() {
            Some(id) => {
                let a = blocking(&app, move |s| pipeline::answer_of(s, &id)).await?;
                Ok((StatusCode::ACCEPTED, Json(a)))
            }
            // Still deciding (nothing executes before the decision is recorded).
            None => joined(job.await).map(|a| (StatusCode::OK, Json(a))),
        },
    }
}

/// Dry run (agents and humans): the decision only, nothing recorded. Agents decide for
/// themselves; humans name the agent in `agent`.
#[utoipa::path(post, path = "/v1/decisions", tag = "actions", security(("bearer" = [])), request_body = DryRunRequest,
    responses(
        (status = 200, description = "the decision, not recorded", body = DryRunAnswer),
        (status = 403, description = "`humans_not_allowed` (a human named no agent), `not_your_agent`", body = crate::error::ErrorBody),
        (status = 422, description = "`invalid_request` (e.g. a confidence outside [0, 1])", body = crate::error::ErrorBody),
    ))]
pub async fn dry_run(
    State(app): State<App>,
    AnyCaller(caller): AnyCaller,
    ApiJson(body): ApiJson<DryRunRequest>,
) -> ApiResult<Json<DryRunAnswer>> {
    let agent_id = match (&caller, body.agent) {
        (Caller::Agent(a), None) => a.id.clone(),
        (Caller::Agent(a), Some(n)) if n == a.id => n,
        (Caller::Agent(_), Some(_)) => {
            return Err(ApiError::new(Code::NotYourAgent, "an agent decides only for itself"));
        }
        (Caller::Human(_), Some(n)) => n,
        // Who the caller is decides whether `agent` is needed, so it is a 403, not a 422: the
        // body is valid, but a human has no decisions of their own.
        (Caller::Human(_), None) => {
            return Err(ApiError::new(Code::HumansNotAllowed, "a human dry-runs for an agent: name it in `agent`"));
        }
    };
    let req = body.request;
    req.validate().map_err(|why| ApiError::new(Code::InvalidRequest, why))?;
    let bundle = app.bundle()?;
    blocking(&app, move |s| pipeline::dry_run(s, &bundle, &agent_id, &req).map(Json)).await
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct GetQuery {
    /// Long poll: while the request is `pending_approval`, wait up to this long (`30s`, at most
    /// `60s`) for it to change before answering.
    #[param(schema_with = wait_schema)]
    pub wait: Option<String>,
}

/// The longest long poll.
const MAX_WAIT_SECS: u64 = 60;

fn wait_schema() -> utoipa::openapi::schema::Object {
    input::duration_text(
        0,
        MAX_WAIT_SECS,
        "Long poll: while the request is `pending_approval`, wait up to this long (at most `60s`) \
         for it to change before answering.",
        "30s",
    )
}

fn since_schema() -> utoipa::openapi::schema::Object {
    input::duration_text(0, input::MAX_SINCE_SECS, "Only requests of the last `since` (at most `3650d`).", "1h")
}

/// The state of a request. Agents see their own requests only. With `?wait=30s` the answer
/// comes as soon as a pending approval is decided, or when the wait is over — never later
/// than four fifths of the server's request timeout, so a long poll is answered with the
/// request's state, not a 408.
#[utoipa::path(get, path = "/v1/actions/{id}", tag = "actions", security(("bearer" = [])),
    params(("id" = String, Path, description = "the request id (`act_…`)"), GetQuery),
    responses(
        (status = 200, body = ActionAnswer),
        (status = 404, description = "`unknown_action`", body = crate::error::ErrorBody),
        (status = 422, description = "`invalid_wait`", body = crate::error::ErrorBody),
    ))]
pub async fn get(
    State(app): State<App>,
    AnyCaller(caller): AnyCaller,
    ApiPath(id): ApiPath<String>,
    super::extract::ApiQuery(q): super::extract::ApiQuery<GetQuery>,
) -> ApiResult<Json<ActionAnswer>> {
    let wait = match &q.wait {
        None => 0,
        Some(w) => input::duration("wait", w, 0, MAX_WAIT_SECS).map_err(|e| ApiError::new(Code::InvalidWait, e))?,
    };
    // Never longer than the request timeout allows: the answer comes with the current state
    // rather than as a 408.
    let mut wait = std::time::Duration::from_secs(wait).min(super::extract::answer_within(&app));
    // A long poll holds a permit while it waits: a caller may hold a few, all callers together
    // half the permits; beyond, the answer is the state now (polling again later is the same).
    let keys = [
        (format!("longpoll:{}", caller.actor().id), crate::limits::LONG_POLLS_PER_CALLER),
        ("longpoll:all".to_string(), app.limits.in_flight / 2),
    ];
    let _slot = if wait.is_zero() {
        None
    } else {
        let slot = app.held.take(&keys);
        if slot.is_none() {
            app.metrics.refused("long_polls");
            wait = std::time::Duration::ZERO;
        }
        slot
    };
    let deadline = tokio::time::Instant::now() + wait;
    // Subscribed before the first look, so no change between the look and the wait is missed.
    let mut changes = app.subscribe();
    loop {
        let (id, caller) = (id.clone(), caller.clone());
        let found = blocking(&app, move |s| pipeline::lookup(s, &id, &caller)).await?;
        if found.state != "pending_approval" || tokio::time::Instant::now() >= deadline {
            return Ok(Json(found));
        }
        if tokio::time::timeout_at(deadline, changes.changed()).await.is_err() {
            // Timed out; one last look below.
            continue;
        }
    }
}

/// Undo an executed action through its compensation (humans). Idempotent: an action already
/// rolled back answers as it is. Irreversible actions are refused with 422.
#[utoipa::path(post, path = "/v1/actions/{id}/rollback", tag = "actions", security(("bearer" = [])),
    params(("id" = String, Path, description = "the request id (`act_…`)")),
    responses(
        (status = 200, description = "the execution, rolled back", body = Execution),
        (status = 202, description = "undoing it needs more than one person: the undo approval, with this caller's vote on it", body = crate::model::Approval),
        (status = 404, description = "`no_execution`, `unknown_action`", body = crate::error::ErrorBody),
        (status = 403, description = "`missing_role`, `separation_of_duties`: rollback needs the roles the compensation needs on that target", body = crate::error::ErrorBody),
        (status = 409, description = "`not_rollbackable`, `rollback_in_progress`, `already_voted`, `conflict`", body = crate::error::ErrorBody),
        (status = 422, description = "`irreversible`, `no_connector`", body = crate::error::ErrorBody),
        (status = 502, description = "`rollback_failed`: the tool refused the compensation", body = crate::error::ErrorBody),
    ))]
pub async fn rollback(
    State(app): State<App>,
    human: crate::auth::HumanCaller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<axum::response::Response> {
    use axum::response::IntoResponse;
    let caller = crate::auth::Caller::Human(human.0);
    let undone = blocking(&app, move |s| crate::approvals::request_undo(s, &id, &caller)).await?;
    Ok(match undone {
        execution::Undone::Done(e) => Json(e).into_response(),
        execution::Undone::Pending(a) => (axum::http::StatusCode::ACCEPTED, Json(a)).into_response(),
        execution::Undone::NeedsVotes { .. } => {
            return Err(crate::error::ApiError::new(crate::error::Code::Internal, "the undo approval was not opened"));
        }
    })
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    pub task: Option<String>,
    /// The agent's SPIFFE ID.
    pub agent: Option<String>,
    /// The action class (`host.isolate`).
    pub action: Option<String>,
    /// A request state (`succeeded`, `pending_approval`, …).
    pub state: Option<String>,
    /// Only requests of the last `since` (`30m`, `1h`, `7d`; at most `3650d`).
    #[param(schema_with = since_schema)]
    pub since: Option<String>,
    /// The next page: the cursor from the previous page's `Link: rel="next"`.
    #[param(schema_with = action_cursor_schema)]
    pub after: Option<String>,
    /// At most this many, newest first (1–1000, default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u64>,
}

fn action_cursor_schema() -> utoipa::openapi::schema::Object {
    input::text(
        input::TIME_CURSOR,
        "The next page: the cursor from the previous page's `Link: rel=\"next\"`.",
        "1764500000000.act_0193c2a1b2c3d4e5f6a7b8c9d0e1",
    )
}

/// Requests, newest first (humans): by task, agent, action, state and age, a page at a time
/// (the next page's address is in `Link: <…>; rel="next"`) — what `warden rollback
/// --task`/`--agent` pick from.
#[utoipa::path(get, path = "/v1/actions", tag = "actions", security(("bearer" = [])), params(ListQuery),
    responses(
        (status = 200, body = Vec<ActionAnswer>, headers(("Link" = String, description = "`<…>; rel=\"next\"`: the next page, when there is one"))),
        (status = 422, description = "`invalid_since`, `invalid_cursor`, `invalid_request` (`limit` outside 1–1000)", body = crate::error::ErrorBody),
    ))]
pub async fn list(
    State(app): State<App>,
    _: crate::auth::HumanCaller,
    super::extract::ApiQuery(q): super::extract::ApiQuery<ListQuery>,
) -> ApiResult<(axum::http::HeaderMap, Json<Vec<ActionAnswer>>)> {
    let since = match &q.since {
        None => None,
        Some(t) => Some(
            input::duration("since", t, 0, input::MAX_SINCE_SECS).map_err(|e| ApiError::new(Code::InvalidSince, e))?,
        ),
    };
    let limit = input::in_range("limit", q.limit.unwrap_or(100), 1, 1000)?;
    let after = q.after.as_deref().map(|a| input::cursor(a, warden_store::Order::At)).transpose()?;
    let filter = pipeline::Recent {
        task: q.task.clone(),
        agent: q.agent.clone(),
        action: q.action.clone(),
        state: q.state.clone(),
        since_secs: since,
        after,
        limit: limit as usize,
    };
    let page = blocking(&app, move |s| pipeline::recent(s, filter)).await?;
    let next = page.next.map(|c| input::cursor_text(&c, warden_store::Order::At));
    let query = [
        ("task", q.task),
        ("agent", q.agent),
        ("action", q.action),
        ("state", q.state),
        ("since", q.since),
        ("limit", Some(limit.to_string())),
    ];
    Ok((super::extract::next_link("/v1/actions", &query, next), Json(page.items)))
}

/// The accountability chain of one action (humans): trigger, agent, request, decision,
/// approvals, lease, execution, rollback, who should have intervened, and an inclusion proof
/// for every audit entry cited, checked against the latest signed checkpoint.
#[utoipa::path(get, path = "/v1/explain/{id}", tag = "actions", security(("bearer" = [])),
    params(("id" = String, Path, description = "the request id (`act_…`)")),
    responses(
        (status = 200, body = crate::explain::Explanation),
        (status = 404, description = "`unknown_action`", body = crate::error::ErrorBody),
    ))]
pub async fn explain(
    State(app): State<App>,
    _: crate::auth::HumanCaller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<crate::explain::Explanation>> {
    blocking(&app, move |s| crate::explain::explain(s, &id).map(Json)).await
}
