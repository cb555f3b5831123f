//! The analyst console (DESIGN §12), a front door: server-rendered pages under `/console` for
//! humans, over the same services as the API — every decision (roles, separation of duties,
//! quorum, halts) is the services'; a page only leaves out a button the server would refuse.
//!
//! - **Sign-in** turns a human's API token or OIDC ID token into a session cookie
//!   ([`crate::session`]): `HttpOnly`, `SameSite=Strict`, `Path=/console`, `Secure` under TLS.
//!   The console reads only that cookie; the API reads only bearer tokens.
//! - **Every state-changing form** carries the session's CSRF token ([`CsrfForm`]), and a POST
//!   from another site (`Sec-Fetch-Site: cross-site`, or an `Origin` that is not this host) is
//!   refused before any handler runs.
//! - **Every page** is sent with a strict Content-Security-Policy (scripts and styles from
//!   this origin only — no inline script), `frame-ancestors 'none'`, `nosniff`, no referrer,
//!   no caching. Templates (askama) escape everything they interpolate: what an agent wrote
//!   renders as text.
//! - **Live**: `/console/events` is a server-sent event stream that says when anything was
//!   recorded; `static/console.js` then refreshes the page's live regions in place.

mod forms;
mod pages;
mod views;

use axum::Router;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde::de::DeserializeOwned;

use crate::auth::HumanCaller;
use crate::error::{ApiError, Code};
use crate::session::COOKIE;
use crate::state::{App, blocking};

/// The console's routes, with their security headers, their own admission limit (a busy
/// console never takes the permits `/v1` needs) and the request timeout — but for the event
/// stream, which lasts as long as the page.
pub fn router(app: App) -> Router {
    let permits = std::sync::Arc::new(tokio::sync::Semaphore::new(CONSOLE_IN_FLIGHT));
    let state = app.clone();
    let admit = move |req: Request, next: axum::middleware::Next| {
        let (permits, state) = (permits.clone(), state.clone());
        async move {
            match permits.try_acquire_owned() {
                Ok(_permit) => next.run(req).await,
                Err(_) => {
                    state.metrics.refused("in_flight_console");
                    Failure(ApiError::new(Code::Overloaded, "the console is busy; reload in a moment")).into_response()
                }
            }
        }
    };
    let events = Router::new().route("/console/events", get(pages::events));
    let pages = Router::new()
        .route("/console", get(|| async { Redirect::to("/console/inbox") }))
        .route("/console/", get(|| async { Redirect::to("/console/inbox") }))
        .route("/console/sign-in", get(pages::sign_in).post(forms::sign_in))
        .route("/console/sign-out", post(forms::sign_out))
        .route("/console/inbox", get(pages::inbox))
        .route("/console/approvals/{id}/approve", post(forms::approve))
        .route("/console/approvals/{id}/reject", post(forms::reject))
        .route("/console/activity", get(pages::activity))
        .route("/console/actions/{id}", get(pages::action))
        .route("/console/actions/{id}/rollback", post(forms::rollback))
        .route("/console/agents", get(pages::agents))
        .route("/console/agents/status", post(forms::agent_status))
        .route("/console/breakers/reset", post(forms::reset_breaker))
        .route("/console/halt", post(forms::halt))
        .route("/console/resume", post(forms::resume))
        .route("/console/audit", get(pages::audit))
        .route("/console/audit/verify", post(forms::verify))
        .route("/console/audit/ocsf.jsonl", get(pages::ocsf))
        .route("/console/policy", get(pages::policy))
        .route("/console/reports", get(pages::reports))
        .route("/console/static/console.js", get(|| static_file("text/javascript; charset=utf-8", JS)))
        .route("/console/static/console.css", get(|| static_file("text/css; charset=utf-8", CSS)))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, app.limits.timeout));
    pages
        .merge(events)
        .layer(axum::middleware::from_fn(admit))
        .layer(axum::middleware::from_fn(same_site_posts))
        .layer(axum::middleware::from_fn(security_headers))
        .layer(axum::extract::DefaultBodyLimit::max(crate::BODY_LIMIT))
        .with_state(app)
}

/// Console requests in flight at once (pages answer in milliseconds; event streams hold no
/// permit once their answer has begun).
const CONSOLE_IN_FLIGHT: usize = 64;

const JS: &str = include_str!("../../static/console.js");
const CSS: &str = include_str!("../../static/console.css");

async fn static_file(kind: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, kind), (header::CACHE_CONTROL, "max-age=300")], body).into_response()
}

/// The policy every console answer carries: nothing but this origin's own script and style,
/// no inline script, no framing, forms only back to this origin.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                       connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

async fn security_headers(req: Request, next: axum::middleware::Next) -> Response {
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // Not `no-referrer`: under it a browser sends `Origin: null` with every form.
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    h.entry(header::CACHE_CONTROL).or_insert(HeaderValue::from_static("no-store"));
    res
}

/// Refuses a POST another site sent (a cross-site form or script), whatever it carries: by
/// `Sec-Fetch-Site` where the browser sends it (only `same-origin` passes), else by `Origin`
/// (absent, or this host).
async fn same_site_posts(req: Request, next: axum::middleware::Next) -> Response {
    if req.method() == axum::http::Method::POST {
        let h = req.headers();
        let foreign = match h.get("sec-fetch-site").map(|v| v.as_bytes()) {
            Some(site) => site != b"same-origin",
            None => {
                let host = h.get(header::HOST).and_then(|v| v.to_str().ok());
                match (h.get(header::ORIGIN).map(|v| v.to_str().unwrap_or("null")), host) {
                    (Some("null"), _) => true,
                    (Some(origin), Some(host)) => origin.split_once("://").map(|(_, rest)| rest) != Some(host),
                    (Some(_), None) => true,
                    (None, _) => false,
                }
            }
        };
        if foreign {
            return Failure(ApiError::new(Code::CrossSite, "a form sent from another site is refused")).into_response();
        }
    }
    next.run(req).await
}

/// A failure as a page: the stable code, its status and the server's message (escaped).
#[derive(Debug)]
pub struct Failure(pub ApiError);

impl From<ApiError> for Failure {
    fn from(e: ApiError) -> Self {
        Failure(e)
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let e = self.0;
        // 401 (not signed in or the session ended) sends the browser to sign in.
        if e.code.status() == StatusCode::UNAUTHORIZED {
            return Redirect::to("/console/sign-in").into_response();
        }
        let page = views::ErrorPage { code: e.code.as_str(), message: e.message.to_string() };
        (e.code.status(), views::html(&page)).into_response()
    }
}

pub type PageResult = Result<Response, Failure>;

/// The session cookie's secret, if the request carries one.
fn session_secret(parts: &Parts) -> Option<String> {
    parts.headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(';')).find_map(
        |c| {
            let (name, value) = c.trim().split_once('=')?;
            (name == COOKIE).then(|| value.to_string())
        },
    )
}

/// The client's address, as the connection gave it (absent when served without one, as in
/// in-process tests).
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub Option<std::net::IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for Peer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let addr = parts.extensions.get::<axum::extract::ConnectInfo<std::net::SocketAddr>>();
        Ok(Peer(addr.map(|c| c.0.ip())))
    }
}

/// A signed-in human: the console's only way in. Not an `Authorization` header — a bearer
/// token is not a session.
#[derive(Debug, Clone)]
pub struct Analyst {
    pub human: HumanCaller,
    pub csrf: String,
    secret: String,
}

impl Analyst {
    pub fn user(&self) -> &crate::model::User {
        &self.human.0
    }
}

impl FromRequestParts<App> for Analyst {
    type Rejection = Failure;
    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, Failure> {
        let secret = session_secret(parts)
            .ok_or_else(|| Failure(ApiError::new(Code::MissingToken, "not signed in")))?
            .to_string();
        let s = secret.clone();
        let signed = blocking(app, move |st| crate::auth::console_session(st, &s)).await?;
        Ok(Analyst { human: HumanCaller(signed.user), csrf: signed.csrf, secret })
    }
}

/// A form that carries the session's CSRF token.
pub trait HasCsrf {
    fn csrf(&self) -> &str;
}

/// A signed-in human's form, its CSRF token checked (constant time) before the handler runs.
#[derive(Debug)]
pub struct CsrfForm<T> {
    pub analyst: Analyst,
    pub form: T,
}

impl<T: DeserializeOwned + HasCsrf + Send> FromRequest<App> for CsrfForm<T> {
    type Rejection = Failure;
    async fn from_request(req: Request, app: &App) -> Result<Self, Failure> {
        let (mut parts, body) = req.into_parts();
        let analyst = Analyst::from_request_parts(&mut parts, app).await?;
        let req = Request::from_parts(parts, body);
        let axum::Form(form) = axum::Form::<T>::from_request(req, app)
            .await
            .map_err(|e| Failure(ApiError::new(Code::MalformedRequest, format!("the form does not parse: {e}"))))?;
        if !crate::identity::same_secret(form.csrf(), &analyst.csrf) {
            return Err(Failure(ApiError::new(
                Code::CsrfRejected,
                "the form's CSRF token is missing or not this session's; reload the page",
            )));
        }
        Ok(CsrfForm { analyst, form })
    }
}

/// Sends the browser on after a form (303 See Other: the next request is a GET).
pub fn see_other(to: &str) -> Response {
    Redirect::to(to).into_response()
}
