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

/// The inbox: approvals in a state (default `pending`), soonest expiry first.
#[utoipa::path(get, path = "/v1/approvals", tag = "approvals", security(("bearer" = [])), params(ListQuery),
    responses((status = 200, body = Vec<Approval>)))]
pub async fn list(
    State(app): State<App>,
    _: HumanCaller,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<Json<Vec<Approval>>> {
    let state = q.state.unwrap_or(ApprovalState::Pending);
    blocking(&app, move |s| approvals::list(s.ledger().store().as_ref(), state).map(Json)).await
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
    let voted = blocking(&app, move |s| {
        let store = s.ledger().store();
        let commit = |b| s.ledger().commit(b).map(|_| ());
        let voted = approvals::vote(store.as_ref(), &commit, &id, &human.0, &verdict, s.now());
        // A vote that found the approval expired recorded the expiry: waiters must look again.
        s.changed();
        let voted = voted?;
        if voted.transitioned {
            tracing::info!(approval = %id, state = voted.approval.state.as_str(), by = %human.0.id, "approval decided");
        }
        Ok(voted)
    })
    .await?;
    // Approved: the action runs now, once — as the request that opened the approval; the
    // identical requests folded into it share that one execution. A tool call that outlasts
    // the answer's time goes on; the approver is answered with the approval as it stands.
    if voted.transitioned
        && voted.approval.state == ApprovalState::Approved
        && app.connector.is_some()
        && let Some(request) = voted.approval.requests.first().cloned()
    {
        let running = {
            let app = app.clone();
            tokio::task::spawn_blocking(move || approvals::run_approved(&app, &request))
        };
        let _ = tokio::time::timeout(super::extract::answer_within(&app), running).await;
    }
    let approval = voted.approval;
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
