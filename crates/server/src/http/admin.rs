//! Agents and users over HTTP (what `warden agent …` and `warden user …` do with
//! `--server`). Reads need any human; changes need the role `admin`. Each change is audited
//! with the calling human as the actor, through the same functions the CLI uses on a data
//! directory ([`crate::admin`]).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use warden_core::audit::entry::Actor;
use warden_core::request::AgentStatus;

use super::extract::{ApiJson, ApiPath};
use crate::admin;
use crate::auth::HumanCaller;
use crate::error::{ApiError, ApiResult, Code, ErrorBody};
use crate::model::{Agent, rfc3339};
use crate::state::{App, blocking};

/// The longest JWT-SVID the API mints.
const MAX_TOKEN_TTL_SECS: u64 = crate::input::MAX_TTL_SECS;

fn agent_id_schema() -> utoipa::openapi::schema::Object {
    crate::input::text(
        crate::input::SPIFFE_ID,
        "The agent's SPIFFE ID: `spiffe://<trust domain>/<path>`.",
        "spiffe://acme.example/soc/phish-triage",
    )
}

fn owner_schema() -> utoipa::openapi::schema::Object {
    crate::input::not_blank("The accountable team or person (not blank).", "team:endpoint-response")
}

fn token_ttl_schema() -> utoipa::openapi::schema::Object {
    crate::input::optional(crate::input::duration_text(
        1,
        MAX_TOKEN_TTL_SECS,
        "Lifetime: `30s`, `10m`, `1h` (1s to 24h; default `10m`).",
        "10m",
    ))
}

fn user_id_schema() -> utoipa::openapi::schema::Object {
    crate::input::text(crate::input::USER_NAME, "1–64 lowercase letters, digits, `-`, `_`, `.` or `@`.", "alice")
}

fn oidc_schema() -> utoipa::openapi::schema::Array {
    use utoipa::openapi::schema::ArrayBuilder;
    ArrayBuilder::new()
        .items(crate::input::text(
            crate::input::OIDC_IDENTITY,
            "`ISSUER#SUB`: the issuer's `iss`, `#`, the person's `sub`.",
            "https://idp.acme.example#00u1ana",
        ))
        .description(Some("OIDC identities that sign in as this user (one person, one voter)."))
        .build()
}

fn roles_schema() -> utoipa::openapi::schema::Array {
    use utoipa::openapi::schema::ArrayBuilder;
    ArrayBuilder::new()
        .items(crate::input::text(
            crate::input::ROLE,
            "A role: as a user name, and `:` (a team such as `team:endpoint-response`).",
            "soc-analyst",
        ))
        .min_items(Some(1))
        .description(Some("At least one: `soc-analyst`, `incident-commander`, `iam-owner`, `admin`…"))
        .build()
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewAgent {
    /// `spiffe://<trust domain>/<path>`
    #[schema(schema_with = agent_id_schema)]
    pub id: String,
    /// The accountable team or person.
    #[schema(schema_with = owner_schema)]
    pub owner: String,
    #[serde(default)]
    pub purpose: String,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StatusChange {
    /// Why; recorded in the audit log.
    #[serde(default)]
    pub reason: String,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    /// Lifetime: `30s`, `10m`, `1h` (1s to 24h; default `10m`).
    #[serde(default)]
    #[schema(schema_with = token_ttl_schema)]
    pub ttl: Option<String>,
    /// The audience (default: this server's).
    #[serde(default)]
    pub audience: Option<String>,
}

/// A freshly minted JWT-SVID.
#[derive(Debug, Serialize, ToSchema)]
pub struct MintedToken {
    pub token: String,
    pub expires_at: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    /// 1–64 lowercase letters, digits, `-`, `_`, `.` or `@`.
    #[schema(schema_with = user_id_schema)]
    pub id: String,
    /// `soc-analyst`, `incident-commander`, `iam-owner`, `admin`…: at least one.
    #[schema(schema_with = roles_schema)]
    pub roles: Vec<String>,
    /// OIDC identities (`ISSUER#SUB`) that sign in as this user (one person, one voter).
    #[serde(default)]
    #[schema(schema_with = oidc_schema)]
    pub oidc: Vec<String>,
}

/// A user as the API shows them (never the token hash).
#[derive(Debug, Serialize, ToSchema)]
pub struct UserView {
    pub id: String,
    pub roles: Vec<String>,
    pub status: String,
    /// The OIDC identities that sign in as this user.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub oidc: Vec<String>,
}

/// A new user and their API token, shown this once.
#[derive(Debug, Serialize, ToSchema)]
pub struct NewUserAnswer {
    pub id: String,
    pub roles: Vec<String>,
    /// Shown once; stored only as a hash.
    pub token: String,
}

fn actor(h: &HumanCaller) -> Actor {
    Actor::user(&h.0.id)
}

/// Registered agents, by id.
#[utoipa::path(get, path = "/v1/agents", tag = "admin", security(("bearer" = [])),
    responses((status = 200, body = Vec<Agent>)))]
pub async fn list_agents(State(app): State<App>, _: HumanCaller) -> ApiResult<Json<Vec<Agent>>> {
    blocking(&app, |s| admin::list_agents(s.ledger()).map(Json)).await
}

/// Register an agent (role `admin`).
#[utoipa::path(post, path = "/v1/agents", tag = "admin", security(("bearer" = [])), request_body = NewAgent,
    responses(
        (status = 201, body = Agent),
        (status = 409, description = "`agent_exists`", body = ErrorBody),
        (status = 422, description = "`invalid_spiffe_id`, `invalid_request`", body = ErrorBody),
    ))]
pub async fn add_agent(
    State(app): State<App>,
    human: HumanCaller,
    ApiJson(body): ApiJson<NewAgent>,
) -> ApiResult<(StatusCode, Json<Agent>)> {
    crate::authority::check_human(&app, &human.0, crate::authority::Power::Admin("registering an agent"))?;
    let actor = actor(&human);
    let now = app.now();
    blocking(&app, move |s| admin::add_agent(s.ledger(), &actor, &body.id, &body.owner, &body.purpose, now))
        .await
        .map(|a| (StatusCode::CREATED, Json(a)))
}

fn unknown_agent(id: &str) -> ApiError {
    ApiError::new(Code::UnknownAgent, format!("no agent `{id}` is registered"))
}

/// One agent. The SPIFFE ID goes in the path percent-encoded (`spiffe%3A%2F%2F…`).
#[utoipa::path(get, path = "/v1/agents/{id}", tag = "admin", security(("bearer" = [])),
    params(("id" = String, Path, description = "the agent's SPIFFE ID, percent-encoded")),
    responses(
        (status = 200, body = Agent),
        (status = 404, description = "`unknown_agent`", body = ErrorBody),
    ))]
pub async fn get_agent(State(app): State<App>, _: HumanCaller, ApiPath(id): ApiPath<String>) -> ApiResult<Json<Agent>> {
    blocking(&app, move |s| admin::get_agent(s.ledger(), &id)?.map(Json).ok_or_else(|| unknown_agent(&id))).await
}

async fn set_status(
    app: App,
    human: HumanCaller,
    id: String,
    status: AgentStatus,
    body: StatusChange,
) -> ApiResult<Json<Agent>> {
    crate::authority::check_human(&app, &human.0, crate::authority::Power::Admin("changing an agent's status"))?;
    let actor = actor(&human);
    blocking(&app, move |s| admin::set_agent_status(s.ledger(), &actor, &id, status, &body.reason).map(Json)).await
}

/// Suspend an agent (role `admin`): its tokens are refused until it is resumed.
#[utoipa::path(post, path = "/v1/agents/{id}/suspend", tag = "admin", security(("bearer" = [])),
    params(("id" = String, Path, description = "the agent's SPIFFE ID, percent-encoded")),
    request_body = StatusChange,
    responses(
        (status = 200, body = Agent),
        (status = 404, description = "`unknown_agent`", body = ErrorBody),
        (status = 409, description = "`conflict`", body = ErrorBody),
    ))]
pub async fn suspend_agent(
    State(app): State<App>,
    human: HumanCaller,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<StatusChange>,
) -> ApiResult<Json<Agent>> {
    set_status(app, human, id, AgentStatus::Suspended, body).await
}

/// Reactivate an agent (role `admin`).
#[utoipa::path(post, path = "/v1/agents/{id}/resume", tag = "admin", security(("bearer" = [])),
    params(("id" = String, Path, description = "the agent's SPIFFE ID, percent-encoded")),
    request_body = StatusChange,
    responses(
        (status = 200, body = Agent),
        (status = 404, description = "`unknown_agent`", body = ErrorBody),
        (status = 409, description = "`conflict`", body = ErrorBody),
    ))]
pub async fn resume_agent(
    State(app): State<App>,
    human: HumanCaller,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<StatusChange>,
) -> ApiResult<Json<Agent>> {
    set_status(app, human, id, AgentStatus::Active, body).await
}

/// Mint a JWT-SVID for an active agent from the local issuer (role `admin`). The token is
/// not stored; minting is audited (without the token).
#[utoipa::path(post, path = "/v1/agents/{id}/token", tag = "admin", security(("bearer" = [])),
    params(("id" = String, Path, description = "the agent's SPIFFE ID, percent-encoded")),
    request_body = TokenRequest,
    responses(
        (status = 200, body = MintedToken),
        (status = 404, description = "`unknown_agent`", body = ErrorBody),
        (status = 409, description = "`agent_not_active`", body = ErrorBody),
        (status = 422, description = "`invalid_ttl`", body = ErrorBody),
    ))]
pub async fn agent_token(
    State(app): State<App>,
    human: HumanCaller,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<TokenRequest>,
) -> ApiResult<Json<MintedToken>> {
    crate::authority::check_human(&app, &human.0, crate::authority::Power::Admin("minting an agent token"))?;
    let ttl = match &body.ttl {
        None => 600,
        Some(t) => {
            crate::input::duration("ttl", t, 1, MAX_TOKEN_TTL_SECS).map_err(|e| ApiError::new(Code::InvalidTtl, e))?
        }
    };
    let audience = body.audience.unwrap_or_else(|| app.tokens.audience.clone());
    if audience == crate::identity::LEASE_AUDIENCE {
        // A lease token is minted only by the executor, for one decided action.
        return Err(ApiError::new(
            Code::InvalidRequest,
            format!("audience `{audience}` is the lease tokens' own: agent tokens may not carry it"),
        ));
    }
    let actor = actor(&human);
    let now = app.now();
    let minted = app.clone();
    blocking(&app, move |s| {
        let agent = admin::get_agent(s.ledger(), &id)?.ok_or_else(|| unknown_agent(&id))?;
        if agent.status != AgentStatus::Active {
            return Err(ApiError::new(Code::AgentNotActive, format!("agent `{id}` is not active")));
        }
        admin::record_token_minted(s.ledger(), &actor, &id, &audience, ttl)?;
        let token = minted.tokens.local.mint(&id, &audience, now, ttl as i64);
        let expires_at = rfc3339(now + time::Duration::seconds(ttl as i64));
        Ok(Json(MintedToken { token, expires_at }))
    })
    .await
}

/// Users and their roles.
#[utoipa::path(get, path = "/v1/users", tag = "admin", security(("bearer" = [])),
    responses((status = 200, body = Vec<UserView>)))]
pub async fn list_users(State(app): State<App>, _: HumanCaller) -> ApiResult<Json<Vec<UserView>>> {
    blocking(&app, |s| {
        let users = admin::list_users(s.ledger())?;
        Ok(Json(
            users.into_iter().map(|u| UserView { id: u.id, roles: u.roles, status: u.status, oidc: u.oidc }).collect(),
        ))
    })
    .await
}

/// Add a user (role `admin`); the API token is in the answer, once.
#[utoipa::path(post, path = "/v1/users", tag = "admin", security(("bearer" = [])), request_body = NewUser,
    responses(
        (status = 201, body = NewUserAnswer),
        (status = 409, description = "`user_exists`", body = ErrorBody),
        (status = 422, description = "`invalid_name`, `invalid_request`", body = ErrorBody),
    ))]
pub async fn add_user(
    State(app): State<App>,
    human: HumanCaller,
    ApiJson(body): ApiJson<NewUser>,
) -> ApiResult<(StatusCode, Json<NewUserAnswer>)> {
    crate::authority::check_human(&app, &human.0, crate::authority::Power::Admin("adding a user"))?;
    let actor = actor(&human);
    blocking(&app, move |s| {
        let (user, token) = admin::add_user(s.ledger(), &actor, &body.id, &body.roles, &body.oidc)?;
        Ok((StatusCode::CREATED, Json(NewUserAnswer { id: user.id, roles: user.roles, token })))
    })
    .await
}

async fn set_user_status(
    app: App,
    human: HumanCaller,
    id: String,
    active: bool,
    body: StatusChange,
) -> ApiResult<Json<UserView>> {
    crate::authority::check_human(&app, &human.0, crate::authority::Power::Admin("changing a user's status"))?;
    let actor = actor(&human);
    blocking(&app, move |s| {
        let u = admin::set_user_status(s.ledger(), &actor, &id, active, &body.reason)?;
        Ok(Json(UserView { id: u.id, roles: u.roles, status: u.status, oidc: u.oidc }))
    })
    .await
}

/// Disable a user (role `admin`): their API token, OIDC sign-in and console sessions are
/// refused from the answer on, on every node; votes already cast stay. Not oneself.
#[utoipa::path(post, path = "/v1/users/{id}/disable", tag = "admin", security(("bearer" = [])),
    params(("id" = String, Path, description = "the user's id")),
    request_body = StatusChange,
    responses(
        (status = 200, body = UserView),
        (status = 404, description = "`unknown_user`", body = ErrorBody),
        (status = 409, description = "`conflict`", body = ErrorBody),
        (status = 403, description = "`self_disable`", body = ErrorBody),
    ))]
pub async fn disable_user(
    State(app): State<App>,
    human: HumanCaller,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<StatusChange>,
) -> ApiResult<Json<UserView>> {
    set_user_status(app, human, id, false, body).await
}

/// Reactivate a user (role `admin`).
#[utoipa::path(post, path = "/v1/users/{id}/enable", tag = "admin", security(("bearer" = [])),
    params(("id" = String, Path, description = "the user's id")),
    request_body = StatusChange,
    responses(
        (status = 200, body = UserView),
        (status = 404, description = "`unknown_user`", body = ErrorBody),
        (status = 409, description = "`conflict`", body = ErrorBody),
    ))]
pub async fn enable_user(
    State(app): State<App>,
    human: HumanCaller,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<StatusChange>,
) -> ApiResult<Json<UserView>> {
    set_user_status(app, human, id, true, body).await
}
