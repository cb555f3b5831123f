//! The HTTP routes (DESIGN §8), one module per area.

mod actions;
mod audit;
mod ops;
mod policy;
mod tasks;

use axum::Router;
use axum::extract::{FromRequest, Request};
use axum::routing::{get, post};
use serde::de::DeserializeOwned;

use crate::error::ApiError;
use crate::state::App;

/// The largest request body accepted (413 beyond).
pub const BODY_LIMIT: usize = 64 * 1024;

/// The application: every route, with its limits.
pub fn router(app: App) -> Router {
    Router::new()
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .route("/.well-known/jwks.json", get(ops::jwks))
        .route("/v1/tasks", post(tasks::open))
        .route("/v1/tasks/{id}", get(tasks::get))
        .route("/v1/tasks/{id}/close", post(tasks::close))
        .route("/v1/actions", post(actions::submit))
        .route("/v1/actions/{id}", get(actions::get))
        .route("/v1/decisions", post(actions::dry_run))
        .route("/v1/policy/reload", post(policy::reload))
        .route("/v1/audit/checkpoint", get(audit::checkpoint))
        .route("/v1/audit/entries", get(audit::entries))
        .route("/v1/audit/proof/inclusion", get(audit::inclusion))
        .route("/v1/audit/proof/consistency", get(audit::consistency))
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
