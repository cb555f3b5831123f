//! The console's forms (POST): each carries the session's CSRF token ([`CsrfForm`]) and calls
//! the same service the API calls, under the same rules; then the browser is sent on (303).

use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use warden_core::audit::entry::Actor;
use warden_core::request::{AgentStatus, Halt, HaltScope};

use super::views::{self, html};
use super::{CsrfForm, HasCsrf, PageResult, see_other};
use crate::approvals::{self, ApprovalState, Verdict};
use crate::error::{ApiError, Code};
use crate::session::COOKIE;
use crate::state::{App, blocking};

macro_rules! csrf_form {
    ($name:ident { $($field:ident : $ty:ty),* $(,)? }) => {
        #[derive(Debug, Deserialize)]
        pub struct $name {
            /// Missing reads as empty, which no session's token is.
            #[serde(default)]
            csrf: String,
            $(#[serde(default)] $field: $ty,)*
        }
        impl HasCsrf for $name {
            fn csrf(&self) -> &str {
                &self.csrf
            }
        }
    };
}

csrf_form!(Plain {});
csrf_form!(Reason { reason: String });
csrf_form!(AgentChange { agent: String, to: String, reason: String });
csrf_form!(BreakerReset { agent: String, action: String, reason: String });
csrf_form!(HaltForm { scope: String, reason: String, confirm: String });

#[derive(Debug, Deserialize)]
pub struct SignInForm {
    #[serde(default)]
    token: String,
}

fn cookie(app: &App, value: &str, max_age: u64) -> String {
    let secure = if app.secure_cookies { "; Secure" } else { "" };
    format!("{COOKIE}={value}; Path=/console; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}")
}

/// A token becomes a session cookie; the token itself is not kept. Agents are refused.
pub async fn sign_in(State(app): State<App>, peer: super::Peer, axum::Form(f): axum::Form<SignInForm>) -> Response {
    // Attempts are counted per address before the token is looked at: guessing is slow.
    if let Some(ip) = peer.0
        && !app.sign_ins.allow(ip)
    {
        app.metrics.refused("sign_in_attempts");
        tracing::warn!(%ip, "console sign-in refused: too many attempts from this address");
        let problem = "Too many sign-in attempts from this address; wait a minute and try again.";
        let mut res =
            (StatusCode::TOO_MANY_REQUESTS, html(&views::SignInPage { problem: Some(problem.into()) })).into_response();
        res.headers_mut().insert(header::RETRY_AFTER, axum::http::HeaderValue::from_static("60"));
        return res;
    }
    let signed = blocking(&app, move |s| crate::auth::console_sign_in(s, &f.token)).await;
    match signed {
        Ok((secret, user)) => {
            tracing::info!(user = %user.id, "console sign-in");
            let max_age = app.sessions.absolute.as_secs();
            let mut res = see_other("/console/inbox");
            if let Ok(v) = cookie(&app, &secret, max_age).parse() {
                res.headers_mut().insert(header::SET_COOKIE, v);
            }
            res
        }
        Err(e) => {
            let problem = match e.code {
                Code::AgentsNotAllowed => "Agents cannot sign in to the console.",
                Code::UserDisabled => "This user is disabled.",
                _ => "That token was not accepted.",
            };
            let status =
                if e.code.status() == StatusCode::FORBIDDEN { StatusCode::FORBIDDEN } else { StatusCode::UNAUTHORIZED };
            (status, html(&views::SignInPage { problem: Some(problem.into()) })).into_response()
        }
    }
}

/// Signing out forgets the session at once; the cookie is cleared.
pub async fn sign_out(State(app): State<App>, f: CsrfForm<Plain>) -> Response {
    let secret = f.analyst.secret.clone();
    if let Err(e) = blocking(&app, move |s| s.sessions.end(s.ledger(), &secret)).await {
        // The cookie is cleared anyway; the session ends at its idle timeout.
        tracing::warn!(error = %e.message, "a sign-out could not be recorded");
    }
    let mut res = see_other("/console/sign-in");
    if let Ok(v) = cookie(&app, "", 0).parse() {
        res.headers_mut().insert(header::SET_COOKIE, v);
    }
    res
}

async fn decide(app: App, f: CsrfForm<Reason>, id: String, approve: bool) -> PageResult {
    let verdict = if approve {
        Verdict::Approve { reason: f.form.reason, lease_ttl_secs: None }
    } else {
        Verdict::Reject { reason: f.form.reason }
    };
    let within = app.limits.timeout.mul_f64(0.8);
    let voted = approvals::decide(&app, f.analyst.user().clone(), id, verdict, within).await?;
    let done = match voted.approval.state {
        ApprovalState::Approved => "executed",
        ApprovalState::Pending => "approved",
        _ => "rejected",
    };
    Ok(see_other(&format!("/console/inbox?done={done}")))
}

pub async fn approve(State(app): State<App>, Path(id): Path<String>, f: CsrfForm<Reason>) -> PageResult {
    decide(app, f, id, true).await
}

pub async fn reject(State(app): State<App>, Path(id): Path<String>, f: CsrfForm<Reason>) -> PageResult {
    decide(app, f, id, false).await
}

pub async fn rollback(State(app): State<App>, Path(id): Path<String>, f: CsrfForm<Plain>) -> PageResult {
    let caller = crate::auth::Caller::Human(f.analyst.user().clone());
    let page = format!("/console/actions/{id}");
    let undone = blocking(&app, move |s| crate::approvals::request_undo(s, &id, &caller)).await?;
    let done = match undone {
        crate::execution::Undone::Done(_) => "rolled_back",
        crate::execution::Undone::Pending(_) | crate::execution::Undone::NeedsVotes { .. } => "undo_pending",
    };
    Ok(see_other(&format!("{page}?done={done}")))
}

/// Halt (any human), suspend or resume (admins) one agent, with a reason.
pub async fn agent_status(State(app): State<App>, f: CsrfForm<AgentChange>) -> PageResult {
    let CsrfForm { analyst, form } = f;
    let actor = Actor::user(&analyst.user().id);
    let caller = crate::auth::Caller::Human(analyst.user().clone());
    if crate::input::is_blank(&form.reason) {
        return Err(ApiError::new(Code::ReasonRequired, "changing an agent needs a reason").into());
    }
    match form.to.as_str() {
        "halt" => {
            let halt = Halt { scope: HaltScope::Agent, id: Some(form.agent), reason: form.reason, expires_at: None };
            blocking(&app, move |s| crate::halt::set(s, halt, &caller, false).map(|_| ())).await?;
        }
        "suspend" | "resume" => {
            crate::authority::check_human(
                &app,
                &analyst.human.0,
                crate::authority::Power::Admin("changing an agent's status"),
            )?;
            let status = if form.to == "suspend" { AgentStatus::Suspended } else { AgentStatus::Active };
            blocking(&app, move |s| {
                crate::admin::set_agent_status(s.ledger(), &actor, &form.agent, status, &form.reason).map(|_| ())
            })
            .await?;
            app.changed();
        }
        other => return Err(ApiError::new(Code::InvalidRequest, format!("no agent change `{other}`")).into()),
    }
    Ok(see_other("/console/agents?done=status"))
}

pub async fn reset_breaker(State(app): State<App>, f: CsrfForm<BreakerReset>) -> PageResult {
    let CsrfForm { analyst, form } = f;
    crate::authority::check_human(&app, &analyst.human.0, crate::authority::Power::Admin("resetting a breaker"))?;
    let actor = Actor::user(&analyst.user().id);
    blocking(&app, move |s| crate::breaker::reset(s, &form.agent, &form.action, &actor, &form.reason).map(|_| ()))
        .await?;
    Ok(see_other("/console/agents?done=reset"))
}

/// The emergency stop: everything halts, after an explicit confirmation.
pub async fn halt(State(app): State<App>, f: CsrfForm<HaltForm>) -> PageResult {
    let CsrfForm { analyst, form } = f;
    if form.scope != "all" {
        return Err(ApiError::new(Code::InvalidHalt, "the console's emergency stop halts everything").into());
    }
    if form.confirm != "yes" {
        return Err(ApiError::new(Code::InvalidHalt, "confirm the emergency stop: tick the box").into());
    }
    let caller = crate::auth::Caller::Human(analyst.user().clone());
    let halt = Halt { scope: HaltScope::All, id: None, reason: form.reason, expires_at: None };
    blocking(&app, move |s| crate::halt::set(s, halt, &caller, false).map(|_| ())).await?;
    app.changed();
    Ok(see_other("/console/agents?done=halted"))
}

/// Lifts every halt in force (admins), with a reason.
pub async fn resume(State(app): State<App>, f: CsrfForm<Reason>) -> PageResult {
    let CsrfForm { analyst, form } = f;
    let caller = crate::auth::Caller::Human(analyst.user().clone());
    blocking(&app, move |s| {
        crate::authority::check(s, &caller, crate::authority::Power::Admin("lifting halts"))?;
        let active = crate::halt::records(s.ledger().store().as_ref(), true)?;
        for (r, _) in active {
            match crate::halt::resume(s, r.halt.scope, r.halt.id.as_deref(), &caller, &form.reason) {
                Ok(_) => {}
                Err(e) if e.code == Code::NoHalt => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    })
    .await?;
    app.changed();
    Ok(see_other("/console/agents?done=resumed"))
}

/// Verifies the whole log server-side: every entry, subtree and checkpoint; the first bad one.
pub async fn verify(State(app): State<App>, f: CsrfForm<Plain>) -> PageResult {
    let analyst = f.analyst;
    let page = blocking(&app, move |s| {
        let store = s.ledger().store();
        let verdict = match warden_store::data_dir::recorded_verifier(store.as_ref())? {
            None => (false, "no checkpoint key is recorded: nothing to verify against".to_string()),
            Some(verifier) => match warden_store::verify::verify(store.as_ref(), &verifier, &mut |_, _| {}) {
                Ok(r) => (
                    true,
                    format!("verified: {} entries, {} signed checkpoints, every one consistent", r.size, r.checkpoints),
                ),
                Err(e) => (false, format!("the log does not verify: {e}")),
            },
        };
        super::pages::audit_page(s, &analyst, Some(verdict))
    })
    .await?;
    Ok(html(&page).into_response())
}
