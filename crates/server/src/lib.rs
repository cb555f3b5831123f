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
pub mod notify;
pub mod openapi;
pub mod pipeline;
pub mod policy_dir;
pub mod serve;
pub mod session;
pub mod slack;
pub mod startup;
pub mod state;
pub mod sweeper;
pub mod tasks;
pub mod tls;

pub use error::{ApiError, ApiResult, Code};
pub use http::{BODY_LIMIT, openapi_document, sweep_approvals};

/// The application: the `/v1` API, the MCP front door and the console, over one state.
pub fn router(app: App) -> axum::Router {
    http::router(app.clone()).merge(mcp::router(app.clone())).merge(console::router(app))
}
pub use state::{App, AppState};
