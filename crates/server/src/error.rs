//! API errors: `{"error": {"code", "message", "details"}}` with the right status.
//!
//! [`Code`] is the one table of stable error codes: each code's name, HTTP status and meaning
//! are written once, below. `docs/api.md` shows the same table (a test compares them) and the
//! OpenAPI document lists the codes as the `ErrorCode` enum. A code never changes its status.

use std::borrow::Cow;

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use warden_store::StoreError;

macro_rules! codes {
    ($($variant:ident = $name:literal, $status:literal, $meaning:literal;)*) => {
        /// Every stable error code Warden answers with. Clients match on [`Code::as_str`].
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Code {
            $(#[doc = $meaning] $variant,)*
        }

        impl Code {
            /// All codes, in the order of the table (by status).
            pub const ALL: &'static [Code] = &[$(Code::$variant,)*];

            /// The code as clients see it: stable `snake_case`.
            pub fn as_str(self) -> &'static str {
                match self { $(Code::$variant => $name,)* }
            }

            /// The HTTP status every answer with this code has.
            pub fn status_u16(self) -> u16 {
                match self { $(Code::$variant => $status,)* }
            }

            /// One line on what the code means (the docs table's words).
            pub fn meaning(self) -> &'static str {
                match self { $(Code::$variant => $meaning,)* }
            }
        }
    };
}

codes! {
    MalformedRequest = "malformed_request", 400, "the body is not the JSON (or form) the endpoint takes";
    MalformedQuery = "malformed_query", 400, "the query string does not parse";
    MalformedPath = "malformed_path", 400, "a path segment does not parse";
    MissingToken = "missing_token", 401, "no `Authorization: Bearer` token was sent";
    MalformedToken = "malformed_token", 401, "the token is not a readable compact JWT";
    AlgorithmNotAllowed = "algorithm_not_allowed", 401, "the token's algorithm is `none`, HMAC, or not its key's";
    BadSignature = "bad_signature", 401, "the token's signature does not verify";
    UnknownKey = "unknown_key", 401, "no trusted issuer has the token's key id";
    TokenExpired = "token_expired", 401, "the token has expired";
    TokenNotYetValid = "token_not_yet_valid", 401, "the token is not valid yet (or was issued in the future)";
    WrongAudience = "wrong_audience", 401, "the token's audience does not name this server";
    WrongIssuer = "wrong_issuer", 401, "the token's issuer is not its key's issuer";
    WrongTrustDomain = "wrong_trust_domain", 401, "the token's SPIFFE ID is outside its issuer's trust domains";
    MissingClaim = "missing_claim", 401, "the token lacks a required claim (`exp`, `sub`, `aud`, `iss`)";
    UnknownToken = "unknown_token", 401, "the API token is not known";
    BadSlackSignature = "bad_slack_signature", 401, "the request is not signed by the configured Slack app, or was signed more than 5 minutes ago";
    UnregisteredAgent = "unregistered_agent", 403, "the token is valid but its subject is not a registered agent";
    AgentSuspended = "agent_suspended", 403, "the calling agent is suspended";
    AgentHalted = "agent_halted", 403, "the calling agent is halted";
    AgentsNotAllowed = "agents_not_allowed", 403, "the endpoint is for humans; agents may not call it";
    HumansNotAllowed = "humans_not_allowed", 403, "agents only: humans may not call this (nor dry-run without naming an agent)";
    MissingRole = "missing_role", 403, "the caller lacks a role the operation needs";
    NotYourAgent = "not_your_agent", 403, "an agent acts only for itself";
    NotYourTask = "not_your_task", 403, "an agent may close only a task it opened";
    UserDisabled = "user_disabled", 403, "the calling user is disabled";
    SelfDisable = "self_disable", 403, "a user cannot disable themselves";
    CsrfRejected = "csrf_rejected", 403, "the console form's CSRF token is missing or not the session's";
    CrossSite = "cross_site", 403, "a console form was sent from another site";
    UnknownSlackUser = "unknown_slack_user", 403, "the Slack user is not mapped to a Warden user (`[slack.users]`)";
    SeparationOfDuties = "separation_of_duties", 403, "separation of duties: the caller owns the agent and may not decide its requests";
    NotFound = "not_found", 404, "no such endpoint";
    UnknownTask = "unknown_task", 404, "no task with that id";
    UnknownAction = "unknown_action", 404, "no action request with that id";
    UnknownAgent = "unknown_agent", 404, "no registered agent with that id";
    UnknownUser = "unknown_user", 404, "no user with that id";
    UnknownApproval = "unknown_approval", 404, "no approval with that id";
    UnknownLease = "unknown_lease", 404, "no lease with that id";
    NoExecution = "no_execution", 404, "the action request has no execution";
    NoHalt = "no_halt", 404, "no active halt has that scope and id";
    NoProof = "no_proof", 404, "no such proof: the entry is not in that tree, or the old size is above the new";
    SlackNotConfigured = "slack_not_configured", 404, "no Slack app is configured (`[slack]` in `--config`)";
    NoCheckpoint = "no_checkpoint", 404, "no signed checkpoint yet (or none at that size)";
    RequestTimeout = "request_timeout", 408, "the client took too long to send its request; the connection is closed";
    TaskExists = "task_exists", 409, "a task with that id already exists";
    TaskClosed = "task_closed", 409, "the task is closed";
    IdempotencyConflict = "idempotency_conflict", 409, "the idempotency key was used for a different request";
    Conflict = "conflict", 409, "a concurrent change won; read again and retry";
    AgentExists = "agent_exists", 409, "an agent with that id is already registered";
    UserExists = "user_exists", 409, "a user with that id already exists";
    AgentNotActive = "agent_not_active", 409, "the agent is not active, so no token is issued";
    ApprovalExpired = "approval_expired", 409, "the approval expired; it can no longer be decided";
    ApprovalCancelled = "approval_cancelled", 409, "the approval was cancelled (halt, suspension, task close)";
    ApprovalDecided = "approval_decided", 409, "the approval was already decided";
    ApprovalPending = "approval_pending", 409, "the pending approval already covers all the identical requests it may; wait for it";
    AlreadyVoted = "already_voted", 409, "the caller has already voted on this approval";
    NotRollbackable = "not_rollbackable", 409, "only a succeeded execution can be rolled back";
    RollbackInProgress = "rollback_in_progress", 409, "a rollback of the execution is already under way";
    NotApproved = "not_approved", 409, "the request is not approved, so it cannot run";
    Folded = "folded", 409, "the request was folded into another's approval and runs with it";
    Halted = "halted", 409, "a halt stands over the agent or action; nothing was done";
    Stopped = "stopped", 409, "the agent or task stopped between decision and execution; nothing was done";
    DigestMismatch = "digest_mismatch", 409, "the stored action no longer matches what was decided or approved; nothing was done";
    TaskShared = "task_shared", 409, "other agents have pending approvals or running executions in the task; a human must close it";
    UndoNeedsApproval = "undo_needs_approval", 409, "undoing the action needs more than one person: ask for it on its own (it becomes an approval)";
    PolicyChanged = "policy_changed", 409, "the bundle in force no longer allows what was approved; nothing was done";
    BreakerClosed = "breaker_closed", 409, "the breaker is not tripped";
    BodyTooLarge = "body_too_large", 413, "the body exceeds 64 KiB";
    UnsupportedMediaType = "unsupported_media_type", 415, "send `Content-Type: application/json`";
    InvalidRequest = "invalid_request", 422, "a field is missing, empty, out of range or not allowed";
    InvalidTaskId = "invalid_task_id", 422, "a task id must be 1–128 of `A–Z a–z 0–9 - _ . :`";
    InvalidPolicy = "invalid_policy", 422, "the policy bundle is invalid; the one in force stays";
    NoPolicyDir = "no_policy_dir", 422, "the server was started without a policy directory to reload";
    PolicyUnreadable = "policy_unreadable", 422, "the policy directory cannot be read";
    InvalidSpiffeId = "invalid_spiffe_id", 422, "not a SPIFFE ID (`spiffe://trust-domain/path`)";
    InvalidName = "invalid_name", 422, "a name must be 1–64 lowercase letters, digits and the allowed separators";
    InvalidTtl = "invalid_ttl", 422, "a lifetime does not parse, is zero or is above the maximum";
    InvalidWait = "invalid_wait", 422, "`wait` does not parse or is above the maximum";
    ReasonRequired = "reason_required", 422, "the operation needs a non-empty reason";
    WideningNotAllowed = "widening_not_allowed", 422, "an approval may shorten the lease, never lengthen it";
    Irreversible = "irreversible", 422, "the catalog names no compensation for the action";
    NoConnector = "no_connector", 422, "the server has no connectors configured";
    InvalidHalt = "invalid_halt", 422, "the halt's scope, id or expiry is not valid";
    InvalidSince = "invalid_since", 422, "`since` is not a duration such as `15m`";
    InvalidCursor = "invalid_cursor", 422, "`after` is not a cursor the list gave (its `Link: rel=\"next\"`)";
    RateLimited = "rate_limited", 429, "the agent exceeds its requests per second";
    ApprovalBacklog = "approval_backlog", 429, "the agent has as many requests waiting for a human as policy allows (`[escalation] max_pending`); nothing was queued";
    TooManySessions = "too_many_sessions", 429, "the agent has as many MCP sessions open as allowed, none of them idle; close one (`DELETE /mcp`)";
    TooManyStreams = "too_many_streams", 429, "as many event streams are open for this session or user as allowed; close one";
    RollbackFailed = "rollback_failed", 502, "the tool refused the compensation";
    StoreUnavailable = "store_unavailable", 503, "the store is unavailable; nothing was done";
    PolicyUnavailable = "policy_unavailable", 503, "no policy can be evaluated; nothing was done";
    HaltUnavailable = "halt_unavailable", 503, "the halt state cannot be read or recorded; nothing was done";
    ConnectorsStale = "connectors_stale", 503, "this node calls tools through a `connectors.toml` other than the bundle in force's; restart it with the bundle's files; nothing was called";
    Overloaded = "overloaded", 503, "too many requests in flight; retry shortly";
    RandomUnavailable = "random_unavailable", 503, "the system's random source failed; nothing was done";
    IssuerUnavailable = "issuer_unavailable", 503, "the token issuer cannot sign; nothing was done";
    AuditUnverifiable = "audit_unverifiable", 503, "the latest checkpoint or a proof does not verify; nothing was done";
    Internal = "internal", 503, "a worker failed; look up what it recorded before retrying";
    ResultUnrecorded = "result_unrecorded", 503, "the tool was called but its result could not be recorded; do not retry";
}

impl Code {
    /// The HTTP status every answer with this code has.
    pub fn status(self) -> StatusCode {
        StatusCode::from_u16(self.status_u16()).expect("the table holds valid statuses")
    }

    /// The code named `name`, if it is one.
    pub fn parse(name: &str) -> Option<Code> {
        Code::ALL.iter().copied().find(|c| c.as_str() == name)
    }

    /// The table as docs/api.md shows it (Markdown, one row per code).
    pub fn markdown_table() -> String {
        let mut out = String::from("| status | code | meaning |\n|---|---|---|\n");
        for c in Code::ALL {
            out.push_str(&format!("| {} | `{}` | {} |\n", c.status_u16(), c.as_str(), c.meaning()));
        }
        out
    }
}

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for Code {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl utoipa::PartialSchema for Code {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .description(Some("A stable error code; the table in docs/api.md gives each one's status and meaning."))
            .enum_values(Some(Code::ALL.iter().map(|c| c.as_str())))
            .into()
    }
}

impl utoipa::ToSchema for Code {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("ErrorCode")
    }
}

/// An error answer: a [`Code`] (which fixes the status), words for people, and details.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub code: Code,
    pub message: String,
    pub details: Option<Value>,
}

impl ApiError {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        ApiError { code, message: message.into(), details: None }
    }

    pub fn details(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }

    /// The HTTP status of the answer (the code's).
    pub fn status(&self) -> StatusCode {
        self.code.status()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict { .. } => ApiError::new(Code::Conflict, e.to_string()),
            // The ledger's check that no commit names a disabled user.
            StoreError::Refused { table: "users", id, .. } => {
                ApiError::new(Code::UserDisabled, format!("user `{id}` is disabled; nothing was done"))
            }
            StoreError::Refused { .. } => ApiError::new(Code::Conflict, e.to_string()),
            // Nothing secret in it, and the operator must see it to fix it.
            StoreError::ClockSkew { .. } => {
                tracing::error!(error = %e, "commit refused");
                ApiError::new(
                    Code::StoreUnavailable,
                    format!("the store refused this node's commit: {e}; nothing was done"),
                )
            }
            // The store's own words may name files or SQL; keep them in the log, not the answer.
            other => {
                tracing::error!(error = %other, "store failure");
                ApiError::new(Code::StoreUnavailable, "the store is unavailable; nothing was done")
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut body = json!({"code": self.code, "message": self.message});
        if let Some(d) = self.details {
            body["details"] = d;
        }
        (status, Json(json!({ "error": body }))).into_response()
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// The error body every endpoint answers with (DESIGN §8), as the OpenAPI document shows it.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// `code` is stable (the table in docs/api.md); `message` is for people.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    pub code: Code,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<Value>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_snake_case_and_errors() {
        let mut seen = std::collections::HashSet::new();
        for c in Code::ALL {
            assert!(seen.insert(c.as_str()), "`{c}` is listed twice");
            assert!(c.as_str().bytes().all(|b| b.is_ascii_lowercase() || b == b'_'), "`{c}` is not snake_case");
            assert!((400..600).contains(&c.status_u16()), "`{c}` has a status that is not an error");
            assert_eq!(Code::parse(c.as_str()), Some(*c));
            assert!(!c.meaning().is_empty() && !c.meaning().ends_with('.'), "`{c}`: a lowercase line, no full stop");
        }
        assert_eq!(Code::parse("no_such_code"), None);
    }

    #[test]
    fn the_table_is_ordered_by_status() {
        let statuses: Vec<u16> = Code::ALL.iter().map(|c| c.status_u16()).collect();
        let mut sorted = statuses.clone();
        sorted.sort();
        assert_eq!(statuses, sorted);
    }

    #[test]
    fn an_error_answers_with_its_codes_status() {
        let e = ApiError::new(Code::UnknownAgent, "no agent `x` is registered");
        assert_eq!(e.status(), StatusCode::NOT_FOUND);
        let e = ApiError::new(Code::RateLimited, "slow down");
        assert_eq!(e.into_response().status(), StatusCode::TOO_MANY_REQUESTS);
    }
}
