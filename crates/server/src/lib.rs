//! Warden's HTTP gateway: the service agents call. Workload identity (JWT-SVIDs from the local
//! issuer), tasks, action requests decided by the core and recorded durably, the audit log
//! over HTTP.
//!
//! ```text
//! request ─► auth extractor (AgentToken / HumanCaller) ─► handler ─► blocking(admit, store work)
//!                                                         │ decide(bundle, facts)   (pure)
//!                                                         │ ledger.commit(batch)    (durable)
//!                                                         ▼
//!                                                       answer
//! ```

pub mod admin;
pub mod approvals;
pub mod auth;
pub mod authority;
pub mod breaker;
mod console;
pub mod error;
pub mod execution;
pub mod explain;
pub mod facts;
pub mod halt;
mod http;
pub mod identity;
pub mod input;
pub mod limits;
pub mod mcp;
pub mod metrics;
pub mod model;
pub mod node;
pub mod notify;
pub mod openapi;
pub mod pipeline;
pub mod policy_dir;
pub mod reporting;
pub mod reports;
pub mod serve;
pub mod session;
pub mod siem;
pub mod slack;
pub mod startup;
pub mod state;
pub mod sweeper;
pub mod tasks;
pub mod tls;

pub use error::{ApiError, ApiResult, Code};
pub use http::{BODY_LIMIT, openapi_document, sweep_approvals};

/// The application: the `/v1` API, the MCP front door and the console, over one state.
///
/// A request's body is read in full (at most [`BODY_LIMIT`], under the connection's body
/// timeout) *before* any front door admits it: a client that announces a body and sends it
/// slowly holds a socket, never one of the permits every other client needs.
pub fn router(app: App) -> axum::Router {
    http::router(app.clone())
        .merge(mcp::router(app.clone()))
        .merge(console::router(app))
        .layer(axum::middleware::from_fn(read_body_first))
}

async fn read_body_first(req: axum::extract::Request, next: axum::middleware::Next) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    let (parts, body) = req.into_parts();
    use http_body_util::BodyExt as _;
    let bytes = match http_body_util::Limited::new(body, BODY_LIMIT).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return ApiError::new(Code::BodyTooLarge, format!("the body exceeds {BODY_LIMIT} bytes")).into_response();
        }
        Err(_) => {
            return ApiError::new(Code::RequestTimeout, "the request body did not arrive in full").into_response();
        }
    };
    next.run(axum::extract::Request::from_parts(parts, axum::body::Body::from(bytes))).await
}
pub use state::{App, AppState};
