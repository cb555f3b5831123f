//! The `/v1` HTTP API (DESIGN §8), a front door: one module per area, each handler extracting
//! its input (authentication is in the extractor types), calling a service, and mapping the
//! answer. Nothing is decided here.
//!
//! Every route is registered through [`OpenApiRouter`] together with its `#[utoipa::path]`
//! description, so the OpenAPI document (`/openapi.json`) and the router come from the same
//! place and cannot drift apart.

mod actions;
mod admin;
mod approvals;
mod audit;
mod breakers;
mod halts;
mod leases;
mod ops;
mod policy;
mod tasks;

use std::sync::OnceLock;

use axum::Router;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::ApiError;
use crate::openapi::ApiDoc;
use crate::state::App;

/// The largest request body accepted (413 beyond).
pub const BODY_LIMIT: usize = 64 * 1024;

/// Every route with its OpenAPI description.
fn documented() -> OpenApiRouter<App> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(ops::healthz))
        .routes(routes!(ops::readyz))
        .routes(routes!(ops::metrics))
        .routes(routes!(ops::jwks))
        .routes(routes!(ops::openapi))
        .routes(routes!(tasks::open))
        .routes(routes!(tasks::get))
        .routes(routes!(tasks::close))
        .routes(routes!(actions::submit, actions::list))
        .routes(routes!(actions::get))
        .routes(routes!(actions::dry_run))
        .routes(routes!(policy::reload))
        .routes(routes!(audit::checkpoint))
        .routes(routes!(audit::entries))
        .routes(routes!(audit::inclusion))
        .routes(routes!(audit::consistency))
        .routes(routes!(admin::list_agents, admin::add_agent))
        .routes(routes!(admin::get_agent))
        .routes(routes!(admin::suspend_agent))
        .routes(routes!(admin::resume_agent))
        .routes(routes!(admin::agent_token))
        .routes(routes!(admin::list_users, admin::add_user))
        .routes(routes!(approvals::list))
        .routes(routes!(approvals::show))
        .routes(routes!(approvals::approve))
        .routes(routes!(approvals::reject))
        .routes(routes!(actions::rollback))
        .routes(routes!(actions::explain))
        .routes(routes!(leases::get))
        .routes(routes!(leases::revoke))
        .routes(routes!(leases::introspect))
        .routes(routes!(halts::set))
        .routes(routes!(halts::resume))
        .routes(routes!(halts::list))
        .routes(routes!(breakers::reset))
}

pub use crate::approvals::sweep_due as sweep_approvals;

/// The OpenAPI 3.1 document of this server, generated from the routes above.
pub fn openapi_document() -> &'static utoipa::openapi::OpenApi {
    static DOC: OnceLock<utoipa::openapi::OpenApi> = OnceLock::new();
    DOC.get_or_init(|| crate::openapi::complete(documented().split_for_parts().1))
}

/// How long a handler whose work may outlast the request timeout waits before answering
/// with where the work stands: four fifths of the timeout.
pub(crate) fn answer_within(app: &crate::state::AppState) -> std::time::Duration {
    app.limits.timeout.mul_f64(0.8)
}

/// The application: every route, with its limits.
pub fn router(app: App) -> Router {
    let (routes, _) = documented().split_for_parts();
    routes
        .fallback(|| async { ApiError::not_found("not_found", "no such endpoint") })
        .layer(axum::extract::DefaultBodyLimit::max(BODY_LIMIT))
        .layer(axum::middleware::from_fn_with_state(app.clone(), admit))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            app.limits.timeout,
        ))
        .with_state(app)
}

/// Admits a request only while fewer than `limits.in_flight` are running: beyond that the
/// answer is 503 at once, so nothing queues without bound.
async fn admit(
    axum::extract::State(app): axum::extract::State<App>,
    req: Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    match app.in_flight.clone().try_acquire_owned() {
        Ok(permit) => {
            let res = next.run(req).await;
            drop(permit);
            res
        }
        Err(_) => ApiError::unavailable("overloaded", "too many requests in flight; retry shortly").into_response(),
    }
}

/// JSON bodies whose rejections are API errors (400 malformed, 413 too large, 415).
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        use axum::extract::rejection::JsonRejection;
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(ApiJson(v)),
            Err(JsonRejection::MissingJsonContentType(_)) => Err(ApiError::new(
                axum::http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send `Content-Type: application/json`",
            )),
            Err(JsonRejection::BytesRejection(e)) if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE => {
                Err(ApiError::new(
                    axum::http::StatusCode::PAYLOAD_TOO_LARGE,
                    "body_too_large",
                    format!("the body exceeds {BODY_LIMIT} bytes"),
                ))
            }
            Err(e) => Err(ApiError::bad_request("malformed_request", e.body_text())),
        }
    }
}

/// A body sent either as a form (`application/x-www-form-urlencoded`) or as JSON.
#[derive(Debug)]
pub struct FormOrJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for FormOrJson<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let form = req
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
        if !form {
            return ApiJson::<T>::from_request(req, state).await.map(|ApiJson(v)| FormOrJson(v));
        }
        let bytes = axum::body::Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(e.status(), "body_too_large", format!("the body exceeds {BODY_LIMIT} bytes"))
            } else {
                ApiError::bad_request("malformed_request", e.body_text())
            }
        })?;
        serde_urlencoded::from_bytes(&bytes)
            .map(FormOrJson)
            .map_err(|e| ApiError::bad_request("malformed_request", e.to_string()))
    }
}

/// Query strings whose rejections are API errors (400 `malformed_query`).
#[derive(Debug)]
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(ApiQuery(v)),
            Err(e) => Err(ApiError::bad_request("malformed_query", e.body_text())),
        }
    }
}

/// Path parameters whose rejections are API errors (400 `malformed_path`, e.g. bad UTF-8).
#[derive(Debug)]
pub struct ApiPath<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(ApiPath(v)),
            Err(e) => Err(ApiError::bad_request("malformed_path", e.body_text())),
        }
    }
}
