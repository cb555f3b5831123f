//! Authentication in the handler's types: a handler that takes [`AgentToken`] can only be
//! reached by an agent with a verified token, and gets the agent itself only through
//! [`AgentToken::admit`] (registered, active, within its rate); one that takes [`HumanCaller`]
//! only by a human. An agent can never call a human endpoint, nor a human an agent one.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use warden_core::audit::entry::Actor;
use warden_core::request::AgentStatus;
use warden_store::Query;
use warden_store::data_dir::token_hash;

use crate::error::{ApiError, Code};
use crate::identity::{Subject, same_secret};
use crate::model::{Agent, Model, User};
use crate::state::{App, AppState, blocking};

/// Whoever called, verified.
#[derive(Debug, Clone)]
pub enum Caller {
    Agent(Agent),
    Human(User),
}

impl Caller {
    pub fn actor(&self) -> Actor {
        match self {
            Caller::Agent(a) => Actor::agent(&a.id),
            Caller::Human(u) => Actor::user(&u.id),
        }
    }
    /// `agent:<id>` or `user:<id>`.
    pub fn label(&self) -> String {
        match self {
            Caller::Agent(a) => format!("agent:{}", a.id),
            Caller::Human(u) => format!("user:{}", u.id),
        }
    }
}

/// An agent whose token is verified but who is not yet admitted: the handler must call
/// [`AgentToken::admit`] (registered, active, within its rate) inside its own blocking call.
/// The hot path uses it to pay one hop to the blocking pool per request instead of two.
#[derive(Debug, Clone)]
pub struct AgentToken(String);

impl AgentToken {
    /// The agent the token names (its SPIFFE ID), not yet admitted.
    pub fn subject(&self) -> &str {
        &self.0
    }

    /// The registered, active agent this token speaks for (see [`active_agent`]).
    pub fn admit(&self, s: &AppState) -> Result<Agent, ApiError> {
        active_agent(s, &self.0).map(|(a, _)| a)
    }

    /// [`AgentToken::admit`], with the version its record was read at: a commit that relies
    /// on the agent being active expects that version (a suspend or halt meanwhile conflicts).
    pub fn admit_versioned(&self, s: &AppState) -> Result<(Agent, u64), ApiError> {
        active_agent(s, &self.0)
    }
}

/// A verified human.
#[derive(Debug, Clone)]
pub struct HumanCaller(pub User);

/// Anyone verified.
#[derive(Debug, Clone)]
pub struct AnyCaller(pub Caller);

/// The bearer token of the request.
fn bearer(parts: &Parts) -> Result<String, ApiError> {
    let header = parts
        .headers
        .get(axum::http::header::AUTHORIZATION)
        .ok_or_else(|| ApiError::new(Code::MissingToken, "send `Authorization: Bearer <token>`"))?;
    Ok(header
        .to_str()
        .ok()
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ApiError::new(Code::MalformedToken, "the Authorization header must be `Bearer <token>`"))?
        .to_string())
}

async fn authenticate(parts: &Parts, app: &App) -> Result<Caller, ApiError> {
    let token = bearer(parts)?;
    if token.starts_with("wdn_") {
        return blocking(app, move |s| user_of_api_token(s, &token).map(Caller::Human)).await;
    }
    let sub = match app.tokens.subject(&token, app.now())? {
        Subject::Agent(sub) => sub,
        Subject::Human { id, roles } => {
            return blocking(app, move |s| human_of_oidc(s, id, roles).map(Caller::Human)).await;
        }
    };
    blocking(app, move |s| active_agent(s, &sub).map(|(a, _)| Caller::Agent(a))).await
}

/// The active user whose API token `token` is (401 `unknown_token`, 403 `user_disabled`).
pub fn user_of_api_token(s: &AppState, token: &str) -> Result<User, ApiError> {
    let hash = token_hash(token);
    let query = Query { key: Some(hash.clone()), limit: 1, ..Query::default() };
    let found = s.ledger().store().find(User::TABLE, &query)?;
    let user = match found.first() {
        Some(r) => User::from_record(r)?,
        None => return Err(ApiError::new(Code::UnknownToken, "the API token is not known")),
    };
    if !same_secret(&user.token_hash, &hash) {
        return Err(ApiError::new(Code::UnknownToken, "the API token is not known"));
    }
    if user.status != "active" {
        return Err(ApiError::new(Code::UserDisabled, format!("user `{}` is disabled", user.id)));
    }
    Ok(user)
}

/// The human an OIDC identity (`ISSUER#SUB`) is: the Warden user it is mapped to (with that
/// user's roles and status: a disabled user is refused), or, unmapped, a person known only by
/// that namespaced id and the roles their token lists.
pub fn human_of_oidc(s: &AppState, id: String, roles: Vec<String>) -> Result<User, ApiError> {
    let users = s.ledger().store().find(User::TABLE, &Query::default())?;
    for r in &users {
        let user = User::from_record(r)?;
        if user.oidc.contains(&id) {
            if user.status != "active" {
                return Err(ApiError::new(Code::UserDisabled, format!("user `{}` is disabled", user.id)));
            }
            return Ok(user);
        }
    }
    Ok(User { id, roles, token_hash: String::new(), status: "active".into(), oidc: Vec::new() })
}

/// Loads the registered agent `sub` names and admits it: active, and within its rate.
/// Synchronous (one store read), so a handler can do it inside its own blocking call.
pub fn active_agent(s: &AppState, sub: &str) -> Result<(Agent, u64), ApiError> {
    let (agent, version) = match s.ledger().store().get(Agent::TABLE, sub)? {
        Some(r) => (Agent::from_record(&r)?, r.version),
        None => return Err(ApiError::new(Code::UnregisteredAgent, format!("`{sub}` is not a registered agent"))),
    };
    match agent.status {
        AgentStatus::Active if !s.rate.allow(&agent.id, &s.limits) => Err(ApiError::new(
            Code::RateLimited,
            format!("agent `{sub}` exceeds {} requests per second", s.limits.agent_rate),
        )),
        AgentStatus::Active => Ok((agent, version)),
        AgentStatus::Suspended => Err(ApiError::new(Code::AgentSuspended, format!("agent `{sub}` is suspended"))),
        AgentStatus::Halted => Err(ApiError::new(Code::AgentHalted, format!("agent `{sub}` is halted"))),
    }
}

impl FromRequestParts<App> for AnyCaller {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, ApiError> {
        authenticate(parts, app).await.map(AnyCaller)
    }
}

impl FromRequestParts<App> for AgentToken {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, ApiError> {
        let token = bearer(parts)?;
        if token.starts_with("wdn_") {
            // A human API token: the full check gives the same answer as everywhere else.
            return match authenticate(parts, app).await? {
                Caller::Human(_) => Err(ApiError::new(Code::HumansNotAllowed, "this endpoint is for agents")),
                Caller::Agent(a) => Ok(AgentToken(a.id)),
            };
        }
        match app.tokens.subject(&token, app.now())? {
            Subject::Agent(sub) => Ok(AgentToken(sub)),
            Subject::Human { .. } => Err(ApiError::new(Code::HumansNotAllowed, "this endpoint is for agents")),
        }
    }
}

impl FromRequestParts<App> for HumanCaller {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, ApiError> {
        match authenticate(parts, app).await? {
            Caller::Human(u) => Ok(HumanCaller(u)),
            Caller::Agent(_) => Err(ApiError::new(Code::AgentsNotAllowed, "this endpoint is for humans")),
        }
    }
}

/// A human signed in to the console: who, and their session's form token.
#[derive(Debug, Clone)]
pub struct Signed {
    pub user: User,
    pub csrf: String,
}

/// Signs in to the console with `token` — a human's API token, or an ID token from a trusted
/// OIDC issuer — and starts a session: its secret, for the cookie only. Agents cannot sign in
/// (403 `agents_not_allowed`), nor disabled users.
pub fn console_sign_in(s: &AppState, token: &str) -> Result<(String, User), ApiError> {
    let token = token.trim();
    let now = s.now();
    let (user, oidc, cap) = if token.starts_with("wdn_") {
        (user_of_api_token(s, token)?, false, None)
    } else {
        match s.tokens.subject_with_expiry(token, now)? {
            (Subject::Human { id, roles }, exp) => {
                let user = human_of_oidc(s, id, roles)?;
                // A mapped person's session is the Warden user's, re-read on every page.
                let mapped = !user.token_hash.is_empty();
                (user, !mapped, exp)
            }
            (Subject::Agent(_), _) => {
                return Err(ApiError::new(Code::AgentsNotAllowed, "agents cannot sign in to the console"));
            }
        }
    };
    let secret = s.sessions.start(s.ledger(), &user, oidc, cap, now)?;
    Ok((secret, user))
}

/// The human whose live console session `secret` is: an API-token user re-read, so a disabled
/// user is signed out at once and a changed role counts at once.
pub fn console_session(s: &AppState, secret: &str) -> Result<Signed, ApiError> {
    let live = s.sessions.check(s.ledger(), secret, s.now())?;
    let user = match live.oidc {
        // Looked up again on every page: an identity mapped since sign-in is that user now
        // (one person, one voter; the Warden user's roles and status).
        Some(u) => match human_of_oidc(s, u.id.clone(), u.roles.clone()) {
            Ok(user) => user,
            Err(e) => {
                s.sessions.end(s.ledger(), secret)?;
                return Err(e);
            }
        },
        None => {
            let r = s.ledger().store().get(User::TABLE, &live.user)?;
            let user = r
                .as_ref()
                .map(User::from_record)
                .transpose()?
                .ok_or_else(|| ApiError::new(Code::UnknownToken, "not signed in: no such user"))?;
            if user.status != "active" {
                s.sessions.end(s.ledger(), secret)?;
                return Err(ApiError::new(Code::UserDisabled, format!("user `{}` is disabled", user.id)));
            }
            user
        }
    };
    Ok(Signed { user, csrf: live.csrf })
}
