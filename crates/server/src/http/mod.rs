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
mod extract;
mod halts;
mod leases;
mod ops;
mod policy;
mod slack;
mod tasks;

use std::sync::OnceLock;

use axum::Json;
use axum::Router;
use axum::extract::Request;
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::{ApiError, Code};
use crate::openapi::ApiDoc;
use crate::state::App;

pub use extract::BODY_LIMIT;

/// Every route with its OpenAPI description.
fn documented() -> OpenApiRouter<App> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(ops::healthz))
        .routes(routes!(ops::readyz))
        .routes(routes!(ops::metrics))
        .routes(routes!(ops::jwks))
        .routes(routes!(openapi))
        .routes(routes!(tasks::open, tasks::list))
        .routes(routes!(tasks::get))
        .routes(routes!(tasks::close))
        .routes(routes!(tasks::clear_taint))
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
        .routes(routes!(admin::disable_user))
        .routes(routes!(admin::enable_user))
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
        .routes(routes!(slack::interactions))
}

pub use crate::sweeper::sweep_due as sweep_approvals;

/// The OpenAPI 3.1 document of this server, generated from the routes above.
pub fn openapi_document() -> &'static serde_json::Value {
    static DOC: OnceLock<serde_json::Value> = OnceLock::new();
    DOC.get_or_init(|| crate::openapi::to_json(&crate::openapi::complete(documented().split_for_parts().1)))
}

/// The application: every route, with its limits.
pub fn router(app: App) -> Router {
    let (routes, _) = documented().split_for_parts();
    routes
        .fallback(|| async { ApiError::new(Code::NotFound, "no such endpoint") })
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
        Err(_) => {
            app.metrics.refused("in_flight_v1");
            ApiError::new(Code::Overloaded, "too many requests in flight; retry shortly").into_response()
        }
    }
}

/// This document: OpenAPI 3.1, generated from the routes.
#[utoipa::path(get, path = "/openapi.json", tag = "ops",
    responses((status = 200, description = "the OpenAPI 3.1 document", body = Object)))]
pub async fn openapi() -> Json<&'static serde_json::Value> {
    Json(openapi_document())
}
