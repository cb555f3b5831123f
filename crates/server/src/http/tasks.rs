//! Tasks: the incidents agents work within.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;

use super::extract::{ApiJson, ApiPath};
use crate::auth::AnyCaller;
use crate::error::ApiResult;
use crate::model::{Task, Trigger};
use crate::state::{App, blocking};
use warden_core::request::TaskState;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OpenTask {
    /// 1–128 of `A–Z a–z 0–9 - _ . :` (default: a fresh `task_…`).
    #[serde(default)]
    #[schema(schema_with = task_id_schema)]
    pub id: Option<String>,
    /// Not blank.
    #[schema(schema_with = title_schema)]
    pub title: String,
    pub trigger: Trigger,
    /// The agents that may act in the task (SPIFFE IDs); default: every agent. An agent's
    /// own task is its alone, whatever it sends.
    #[serde(default)]
    #[schema(schema_with = agents_schema)]
    pub agents: Vec<String>,
}

fn agents_schema() -> utoipa::openapi::schema::Array {
    utoipa::openapi::schema::ArrayBuilder::new()
        .items(crate::input::text(
            crate::input::SPIFFE_ID,
            "An agent's SPIFFE ID.",
            "spiffe://acme.example/soc/edr-responder",
        ))
        .description(Some("The agents that may act in the task; default: every agent."))
        .build()
}

fn task_id_schema() -> utoipa::openapi::schema::Object {
    crate::input::optional(crate::input::text(
        crate::input::TASK_ID,
        "1–128 of `A–Z a–z 0–9 - _ . :`; default: a fresh `task_…`.",
        "INC-4711",
    ))
}

fn title_schema() -> utoipa::openapi::schema::Object {
    crate::input::not_blank("What the task is about (not blank).", "phishing wave against finance")
}

/// Open a task (agents and humans).
#[utoipa::path(post, path = "/v1/tasks", tag = "tasks", security(("bearer" = [])), request_body = OpenTask,
    responses(
        (status = 201, description = "the task, open", body = Task),
        (status = 409, description = "`task_exists`", body = crate::error::ErrorBody),
        (status = 422, description = "`invalid_task_id`, `invalid_request`", body = crate::error::ErrorBody),
    ))]
pub async fn open(
    State(app): State<App>,
    AnyCaller(caller): AnyCaller,
    ApiJson(body): ApiJson<OpenTask>,
) -> ApiResult<(StatusCode, Json<Task>)> {
    let task =
        blocking(&app, move |s| crate::tasks::open(s, &caller, body.id, body.title, body.trigger, body.agents)).await?;
    Ok((StatusCode::CREATED, Json(task)))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TaskListQuery {
    /// Only open or only closed tasks.
    pub state: Option<TaskState>,
    /// The next page: the cursor from the previous page's `Link: rel="next"` (a task id).
    #[param(schema_with = task_cursor_schema)]
    pub after: Option<String>,
    /// At most this many, newest id first (1–1000, default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u64>,
}

fn task_cursor_schema() -> utoipa::openapi::schema::Object {
    crate::input::text(
        crate::input::TASK_ID,
        "The next page: the cursor from the previous page's `Link: rel=\"next\"`.",
        "INC-4711",
    )
}

/// Tasks, newest id first (humans), a page at a time (the next page's address is in
/// `Link: <…>; rel="next"`); each with its taint, without its history (read one task for it).
#[utoipa::path(get, path = "/v1/tasks", tag = "tasks", security(("bearer" = [])), params(TaskListQuery),
    responses(
        (status = 200, body = Vec<Task>, headers(("Link" = String, description = "`<…>; rel=\"next\"`: the next page, when there is one"))),
        (status = 422, description = "`invalid_cursor`, `invalid_request` (`limit` outside 1–1000)", body = crate::error::ErrorBody),
    ))]
pub async fn list(
    State(app): State<App>,
    _: crate::auth::HumanCaller,
    super::extract::ApiQuery(q): super::extract::ApiQuery<TaskListQuery>,
) -> ApiResult<(axum::http::HeaderMap, Json<Vec<Task>>)> {
    let limit = crate::input::in_range("limit", q.limit.unwrap_or(100), 1, 1000)?;
    let (state, after) = (q.state, q.after.clone());
    let page = blocking(&app, move |s| crate::tasks::list(s, state, after, limit as usize)).await?;
    let next = page.next.map(|c| c.id);
    let state_text = q.state.map(|st| if st == TaskState::Open { "open".to_string() } else { "closed".to_string() });
    let query = [("state", state_text), ("limit", Some(limit.to_string()))];
    Ok((super::extract::next_link("/v1/tasks", &query, next), Json(page.items)))
}

/// Read a task.
#[utoipa::path(get, path = "/v1/tasks/{id}", tag = "tasks", security(("bearer" = [])),
    params(("id" = String, Path, description = "the task id")),
    responses(
        (status = 200, body = Task),
        (status = 404, description = "`unknown_task`", body = crate::error::ErrorBody),
    ))]
pub async fn get(
    State(app): State<App>,
    AnyCaller(_): AnyCaller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Task>> {
    blocking(&app, move |s| crate::tasks::get(s, &id).map(Json)).await
}

/// Close a task: its pending approvals are cancelled and its active leases revoked in the
/// same commit.
#[utoipa::path(post, path = "/v1/tasks/{id}/close", tag = "tasks", security(("bearer" = [])),
    params(("id" = String, Path, description = "the task id")),
    responses(
        (status = 200, description = "the task, closed", body = Task),
        (status = 404, description = "`unknown_task`", body = crate::error::ErrorBody),
        (status = 409, description = "`task_closed`, `conflict`", body = crate::error::ErrorBody),
    ))]
pub async fn close(
    State(app): State<App>,
    AnyCaller(caller): AnyCaller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Task>> {
    blocking(&app, move |s| crate::tasks::close(s, &caller, &id).map(Json)).await
}

/// One mark, as the human saw it on the task (`GET /v1/tasks/{id}`).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MarkSeen {
    pub label: warden_core::request::TaintLabel,
    pub source: String,
    pub by: String,
    /// The request the mark came with, as read: when given, only that request's mark is
    /// cleared (two results alike in words are two marks).
    #[serde(default)]
    pub request: Option<String>,
}

/// What clearing taint needs: why, and exactly the marks the human reviewed — a mark added
/// since is never swept with them.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClearTaint {
    /// Required: why (not blank); recorded in the audit log.
    #[schema(schema_with = crate::input::reason_schema)]
    pub reason: String,
    /// The marks to clear, as read from the task.
    #[schema(min_items = 1, max_items = 64)]
    pub marks: Vec<MarkSeen>,
}

/// The task after a clear, and the marks cleared.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Cleared {
    pub task: Task,
    pub cleared: Vec<warden_core::request::Taint>,
}

/// Clear marks of a task's taint — exactly those named, as the human read them — (a human
/// holding a role that may close others' tasks, `authority.toml [powers] close_tasks`, or
/// admin; never an agent): its agents' autonomy is no longer lowered by them. Audited as
/// `task.taint_cleared`, naming every mark cleared.
#[utoipa::path(post, path = "/v1/tasks/{id}/taint/clear", tag = "tasks", security(("bearer" = [])),
    params(("id" = String, Path, description = "the task id")),
    request_body = ClearTaint,
    responses(
        (status = 200, description = "the task, its remaining marks, and those cleared", body = Cleared),
        (status = 403, description = "`missing_role`, `agents_not_allowed`, `user_disabled`, `separation_of_duties` (the caller owns an agent that may act in the task)", body = crate::error::ErrorBody),
        (status = 404, description = "`unknown_task`", body = crate::error::ErrorBody),
        (status = 409, description = "`task_closed`, `conflict`", body = crate::error::ErrorBody),
        (status = 422, description = "`invalid_request` (a blank reason, no marks, a mark named without its `request` that several marks match)", body = crate::error::ErrorBody),
    ))]
pub async fn clear_taint(
    State(app): State<App>,
    AnyCaller(caller): AnyCaller,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<ClearTaint>,
) -> ApiResult<Json<Cleared>> {
    let marks: Vec<_> = body.marks.into_iter().map(|m| (m.label, m.source, m.by, m.request)).collect();
    blocking(&app, move |s| {
        let (task, cleared) = crate::tasks::clear_taint(s, &caller, &id, &marks, &body.reason)?;
        Ok(Json(Cleared { task, cleared }))
    })
    .await
}
