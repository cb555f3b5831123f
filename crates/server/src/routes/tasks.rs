//! Tasks: the incidents agents work within.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::json;
use warden_core::audit::entry::{Event, EventType};
use warden_core::request::TaskState;
use warden_store::{Batch, Change, StoreError};

use super::{ApiJson, ApiPath};
use crate::auth::AnyCaller;
use crate::error::{ApiError, ApiResult};
use crate::model::{Model, Task, Trigger, new_id, rfc3339};
use crate::state::{App, blocking};

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OpenTask {
    #[serde(default)]
    pub id: Option<String>,
    pub title: String,
    pub trigger: Trigger,
}

/// A fresh id: `prefix_`, the time in milliseconds (12 hex digits) and 64 random bits
/// (16 hex digits). Ids sort by creation time, so the store appends at the right edge of its
/// indexes instead of touching a random page per insert.
fn check_task_id(id: &str) -> Result<(), ApiError> {
    let ok = !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid("invalid_task_id", format!("task id `{id}` must be 1–128 of A–Z a–z 0–9 - _ . :")))
    }
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
    let id = match body.id {
        Some(id) => {
            check_task_id(&id)?;
            id
        }
        None => new_id("task")?,
    };
    if body.title.trim().is_empty() || body.trigger.source.trim().is_empty() {
        return Err(ApiError::invalid("invalid_request", "a task needs a `title` and a `trigger.source`"));
    }
    let task = Task {
        id: id.clone(),
        title: body.title,
        trigger: body.trigger,
        state: TaskState::Open,
        opened_by: caller.label(),
        // Only a trusted party's word about the trigger is verified; an agent's is its claim.
        verified: matches!(caller, crate::auth::Caller::Human(_)),
        opened_at: rfc3339(app.now()),
        closed_at: None,
        closed_by: None,
    };
    let event = Event::new(EventType::TaskOpened, caller.actor())
        .task(&id)
        .data(json!({"title": task.title, "trigger": task.trigger, "verified": task.verified}));
    let saved = task.clone();
    blocking(&app, move |s| {
        s.ledger().commit(Batch::new().change(Change::Insert(saved.record())).event(event)).map_err(|e| match e {
            StoreError::Conflict { .. } => ApiError::conflict("task_exists", format!("task `{id}` already exists")),
            other => other.into(),
        })
    })
    .await?;
    Ok((StatusCode::CREATED, Json(task)))
}

/// The stored record of task `id`, or 404 `unknown_task`.
fn stored_task(s: &crate::state::AppState, id: &str) -> Result<warden_store::Record, ApiError> {
    s.ledger()
        .store()
        .get(Task::TABLE, id)?
        .ok_or_else(|| ApiError::not_found("unknown_task", format!("no task `{id}`")))
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
    blocking(&app, move |s| {
        let r = stored_task(s, &id)?;
        Ok(Json(Task::from_record(&r)?))
    })
    .await
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
    let now = rfc3339(app.now());
    blocking(&app, move |s| {
        let r = stored_task(s, &id)?;
        let mut task = Task::from_record(&r)?;
        if task.state == TaskState::Closed {
            return Err(ApiError::conflict("task_closed", format!("task `{id}` is already closed")));
        }
        task.state = TaskState::Closed;
        task.closed_at = Some(now);
        task.closed_by = Some(caller.label());
        let mut updated = task.record();
        updated.version = r.version;
        let event = Event::new(EventType::TaskClosed, caller.actor()).task(&id);
        let mut batch = Batch::new().change(Change::Update(updated)).event(event);
        // Its pending approvals are cancelled in the same commit.
        let store = s.ledger().store();
        let pending = crate::approvals::pending_of_task(store.as_ref(), &id)?;
        for v in &pending {
            let (_, cancel) =
                crate::approvals::cancel_batch(store.as_ref(), v, &caller.actor(), "the task was closed", s.now())?;
            batch.changes.extend(cancel.changes);
            batch.events.extend(cancel.events);
        }
        // And its active leases revoked.
        let q = warden_store::Query { task: Some(id.clone()), state: Some("active".into()), ..Default::default() };
        for r in store.find(warden_store::Table::Leases, &q)? {
            let lease = crate::execution::Lease::from_record(&r)?;
            let revoke =
                crate::execution::revoke_changes(&lease, r.version, &caller.actor(), "the task was closed", s.now());
            batch.changes.extend(revoke.changes);
            batch.events.extend(revoke.events);
        }
        let cancelled = !pending.is_empty();
        s.ledger().commit(batch).map_err(|e| match e {
            StoreError::Conflict { .. } => {
                ApiError::conflict("conflict", format!("task `{id}` changed meanwhile; try again"))
            }
            other => other.into(),
        })?;
        if cancelled {
            s.changed();
        }
        Ok(Json(task))
    })
    .await
}
