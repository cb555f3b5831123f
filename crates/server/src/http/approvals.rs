//! The approval inbox (humans): list, show with the agent's track record, approve, reject.

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::extract::{ApiJson, ApiPath, ApiQuery};
use crate::approvals::{self, Approval, ApprovalState, TrackRecord, Verdict};
use crate::auth::HumanCaller;
use crate::error::{ApiError, ApiResult, Code, ErrorBody};
use crate::state::{App, AppState, blocking};

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// `pending` (default), `approved`, `rejected`, `expired` or `cancelled`.
    #[serde(default)]
    #[param(value_type = Option<ApprovalState>)]
    pub state: Option<ApprovalState>,
    /// Only this agent's (SPIFFE ID).
    pub agent: Option<String>,
    /// Only this action class's.
    pub action: Option<String>,
    /// Only the approvals the caller holds one of the roles of (an inbox).
    #[serde(default)]
    pub mine: Option<bool>,
    /// The next page: the cursor from the previous page's `Link: rel="next"`.
    #[param(schema_with = approval_cursor_schema)]
    pub after: Option<String>,
    /// At most this many, oldest first (1–1000, default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u64>,
}

fn approval_cursor_schema() -> utoipa::openapi::schema::Object {
    crate::input::text(
        crate::input::ID_CURSOR,
        "The next page: the cursor from the previous page's `Link: rel=\"next\"`.",
        "apr_0193c2a1b2c3d4e5f6a7b8c9d0e1",
    )
}

/// An approval with the requesting agent's track record for the action.
#[derive(Debug, Serialize, ToSchema)]
pub struct ApprovalView {
    #[serde(flatten)]
    pub approval: Approval,
    pub track_record: TrackRecord,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApproveBody {
    #[serde(default)]
    pub reason: Option<String>,
    /// Narrow the action: a shorter lease (`30s`, `5m`; at most `24h`) than the catalog's;
    /// never longer.
    #[serde(default)]
    #[schema(schema_with = lease_ttl_schema)]
    pub lease_ttl: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RejectBody {
    /// Required: why (not blank).
    #[schema(schema_with = crate::input::reason_schema)]
    pub reason: String,
}

fn lease_ttl_schema() -> utoipa::openapi::schema::Object {
    crate::input::optional(crate::input::duration_text(
        1,
        crate::input::MAX_TTL_SECS,
        "Narrow the action: a shorter lease (`30s`, `5m`) than the catalog's, never longer.",
        "2m",
    ))
}

fn view(s: &AppState, approval: Approval) -> Result<ApprovalView, ApiError> {
    let track_record =
        approvals::track_record(s.ledger().store().as_ref(), &approval.agent, &approval.action, s.now())?;
    Ok(ApprovalView { approval, track_record })
}

/// The inbox: approvals in a state (default `pending`), oldest first, a page at a time (the
/// next page's address is in `Link: <…>; rel="next"`).
#[utoipa::path(get, path = "/v1/approvals", tag = "approvals", security(("bearer" = [])), params(ListQuery),
    responses(
        (status = 200, body = Vec<Approval>, headers(("Link" = String, description = "`<…>; rel=\"next\"`: the next page, when there is one"))),
        (status = 422, description = "`invalid_cursor`, `invalid_request` (`limit` outside 1–1000)", body = ErrorBody),
    ))]
pub async fn list(
    State(app): State<App>,
    human: HumanCaller,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<(axum::http::HeaderMap, Json<Vec<Approval>>)> {
    let state = q.state.unwrap_or(ApprovalState::Pending);
    let limit = crate::input::in_range("limit", q.limit.unwrap_or(100), 1, 1000)?;
    let after = q.after.as_deref().map(|a| crate::input::cursor(a, warden_store::Order::Id)).transpose()?;
    let filter = approvals::Filter {
        state,
        agent: q.agent.clone(),
        action: q.action.clone(),
        for_user: q.mine.unwrap_or(false).then(|| human.0.clone()),
        after,
        limit: limit as usize,
    };
    let page = blocking(&app, move |s| approvals::page(s.ledger().store().as_ref(), &filter)).await?;
    let next = page.next.map(|c| crate::input::cursor_text(&c, warden_store::Order::Id));
    let query = [
        ("state", Some(state.as_str().to_string())),
        ("agent", q.agent),
        ("action", q.action),
        ("mine", q.mine.map(|m| m.to_string())),
        ("limit", Some(limit.to_string())),
    ];
    Ok((super::extract::next_link("/v1/approvals", &query, next), Json(page.items)))
}

/// One approval, with the agent's track record for this action (last 30 days).
#[utoipa::path(get, path = "/v1/approvals/{id}", tag = "approvals", security(("bearer" = [])),
    params(("id" = String, Path, description = "the approval id (`apr_…`)")),
    responses(
        (status = 200, body = ApprovalView),
        (status = 404, description = "`unknown_approval`", body = ErrorBody),
    ))]
pub async fn show(
    State(app): State<App>,
    _: HumanCaller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<ApprovalView>> {
    blocking(&app, move |s| {
        let v = approvals::load(s.ledger().store().as_ref(), &id)?
            .ok_or_else(|| ApiError::new(Code::UnknownApproval, format!("no approval `{id}`")))?;
        view(s, v.approval).map(Json)
    })
    .await
}

async fn decide(app: App, human: HumanCaller, id: String, verdict: Verdict) -> ApiResult<Json<ApprovalView>> {
    let within = super::extract::answer_within(&app);
    let approval = approvals::decide(&app, human.0, id, verdict, within).await?.approval;
    blocking(&app, move |s| view(s, approval).map(Json)).await
}

/// Approve (a human holding one of the approval's roles). Counts once per person toward the
/// quorum; the agent's owner may not approve when separation of duties applies.
#[utoipa::path(post, path = "/v1/approvals/{id}/approve", tag = "approvals", security(("bearer" = [])),
    params(("id" = String, Path, description = "the approval id (`apr_…`)")),
    request_body = ApproveBody,
    responses(
        (status = 200, description = "the approval after this vote", body = ApprovalView),
        (status = 404, description = "`unknown_approval`", body = ErrorBody),
        (status = 409, description = "`approval_expired`, `approval_cancelled`, `approval_decided`, `already_voted`, `conflict`", body = ErrorBody),
        (status = 422, description = "`widening_not_allowed`, `invalid_ttl`", body = ErrorBody),
    ))]
pub async fn approve(
    State(app): State<App>,
    human: HumanCaller,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<ApproveBody>,
) -> ApiResult<Json<ApprovalView>> {
    let lease_ttl_secs = match &body.lease_ttl {
        None => None,
        Some(t) => Some(
            crate::input::duration("lease_ttl", t, 1, crate::input::MAX_TTL_SECS)
                .map_err(|e| ApiError::new(Code::InvalidTtl, e))?,
        ),
    };
    let verdict = Verdict::Approve { reason: body.reason.unwrap_or_default(), lease_ttl_secs };
    decide(app, human, id, verdict).await
}

/// Reject (a human holding one of the approval's roles); a reason is required. One rejection
/// ends the approval.
#[utoipa::path(post, path = "/v1/approvals/{id}/reject", tag = "approvals", security(("bearer" = [])),
    params(("id" = String, Path, description = "the approval id (`apr_…`)")),
    request_body = RejectBody,
    responses(
        (status = 200, description = "the approval, rejected", body = ApprovalView),
        (status = 404, description = "`unknown_approval`", body = ErrorBody),
        (status = 409, description = "`approval_expired`, `approval_cancelled`, `approval_decided`, `conflict`", body = ErrorBody),
        (status = 422, description = "`reason_required`", body = ErrorBody),
    ))]
pub async fn reject(
    State(app): State<App>,
    human: HumanCaller,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<RejectBody>,
) -> ApiResult<Json<ApprovalView>> {
    decide(app, human, id, Verdict::Reject { reason: body.reason }).await
}
