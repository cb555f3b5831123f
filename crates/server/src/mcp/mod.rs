//! The MCP front door: `/mcp` (Streamable HTTP, through the official Rust SDK `rmcp`) and its
//! OAuth protected-resource metadata (RFC 9728).
//!
//! An agent authenticates exactly as on `/v1` (a JWT-SVID bearer, checked on every HTTP
//! request before rmcp sees it); without a valid one the answer is 401 with
//! `WWW-Authenticate: Bearer resource_metadata="…/.well-known/oauth-protected-resource"`.
//! `tools/list` is [`tools::for_agent`]; `tools/call` is [`call::call`] — the pipeline service
//! every front door uses. Nothing is decided here.

pub mod call;
pub mod sessions;
pub mod tools;

use std::sync::Arc;

use axum::Router;
use axum::extract::{FromRequestParts, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, CancelTaskParams, CreateTaskResult, DetailedTask,
    ErrorData, GetTaskParams, GetTaskResult, Implementation, ListToolsResult, PaginatedRequestParams,
    ProgressNotificationParam, ServerCapabilities, ServerConfig, ServerNotification, SubscriptionFilter, Task,
    TaskPayload, TaskStatus, Tool,
};
use rmcp::service::{RequestContext, SubscriptionContext};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{RoleServer, ServerHandler};
use serde_json::{Value, json};

use crate::auth::AgentToken;
use crate::error::ApiError;
use crate::pipeline;
use crate::state::{App, blocking};

pub use crate::limits::{HoldOptions, McpOptions};

/// How often a session looks whether a reload changed its agent's tools.
const LIST_WATCH: std::time::Duration = std::time::Duration::from_secs(1);

/// How often a client is asked to poll a task.
const TASK_POLL: std::time::Duration = std::time::Duration::from_secs(2);

/// Where the protected-resource metadata lives (RFC 9728 §3).
pub const METADATA_PATH: &str = "/.well-known/oauth-protected-resource";

/// The MCP server of one session: the shared state, and what held calls left pending.
#[derive(Clone)]
struct Door {
    app: App,
    hold: Arc<HoldOptions>,
    pending: Arc<call::Pending>,
}

/// The agent token the HTTP request carried (put there by [`authenticate`]).
fn token_of(ctx: &RequestContext<RoleServer>) -> Result<AgentToken, ErrorData> {
    ctx.extensions
        .get::<axum::http::request::Parts>()
        .and_then(|p| p.extensions.get::<AgentToken>())
        .cloned()
        .ok_or_else(|| ErrorData::internal_error("the request carries no authenticated agent", None))
}

/// An API error as MCP says it: what the model can act on (4xx: refused, not found, invalid)
/// as an error *result* it can read; Warden failing (5xx) as a JSON-RPC error.
fn refusal(e: ApiError) -> Result<CallToolResult, ErrorData> {
    if e.status().is_server_error() {
        return Err(ErrorData::internal_error(e.message, Some(json!({"code": e.code.as_str()}))));
    }
    let result = json!({
        "content": [{"type": "text", "text": format!("Warden refused the call ({}): {}; nothing was executed.", e.code, e.message)}],
        "isError": true,
        "_meta": {"warden/error": e.code.as_str()},
    });
    serde_json::from_value(result).map_err(|e| ErrorData::internal_error(e.to_string(), None))
}

fn rpc_error(e: ApiError) -> ErrorData {
    ErrorData::internal_error(e.message, Some(json!({"code": e.code.as_str()})))
}

impl ServerHandler for Door {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder().enable_tools().enable_tool_list_changed().enable_tasks().build(),
        )
        .with_server_info(Implementation::new("warden", env!("CARGO_PKG_VERSION")))
        .with_instructions(
            "Warden governs these tools: every call is decided against policy, recorded in a tamper-evident \
                 log, and executed only when policy (or a human approver) allows. Pass the task you work on, your \
                 confidence and a rationale. A call that waits for a human answers with its pending ids; call \
                 again with the same arguments to learn the outcome.",
        )
    }

    /// Watches the bundle for this session (2025-era clients, after `initialize`): when a reload
    /// changes the agent's tools, the client is told (`notifications/tools/list_changed`).
    async fn on_initialized(&self, ctx: rmcp::service::NotificationContext<RoleServer>) {
        let Some(token) =
            ctx.extensions.get::<axum::http::request::Parts>().and_then(|p| p.extensions.get::<AgentToken>()).cloned()
        else {
            return;
        };
        let (app, peer) = (self.app.clone(), ctx.peer.clone());
        tokio::spawn(async move {
            let closed = peer.clone();
            watch_tools(
                app,
                token,
                move || closed.is_transport_closed(),
                move || {
                    let peer = peer.clone();
                    async move { peer.notify_tool_list_changed().await.is_ok() }
                },
            )
            .await
        });
    }

    /// 2026-07-28 clients subscribe (`subscriptions/listen`) to tool-list changes; nothing else
    /// is offered.
    fn accepted_subscription_filter(&self, _requested: &SubscriptionFilter) -> Option<SubscriptionFilter> {
        Some(SubscriptionFilter::builder().tools_list_changed().build())
    }

    /// One such subscription: told when a reload changes the agent's tools, until it ends.
    async fn listen(&self, context: SubscriptionContext) -> Result<(), ErrorData> {
        let token = token_of(context.request_context())?;
        if context.accepted().tools_list_changed != Some(true) {
            context.cancelled().await;
            return Ok(());
        }
        let sink = context.sink().clone();
        let ended = context.request_context().ct.clone();
        let watch = watch_tools(
            self.app.clone(),
            token,
            move || ended.is_cancelled(),
            move || {
                let sink = sink.clone();
                async move {
                    let n = ServerNotification::ToolListChangedNotification(Default::default());
                    sink.send(n).await.is_ok()
                }
            },
        );
        tokio::select! {
            () = context.cancelled() => {}
            () = watch => {}
        }
        Ok(())
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let token = token_of(&ctx)?;
        let agent = token.subject().to_string();
        blocking(&self.app, move |s| token.admit(s)).await.map_err(rpc_error)?;
        let bundle = self.app.bundle().map_err(rpc_error)?;
        let tools = tools::for_agent(&bundle, self.app.upstreams.as_deref(), &agent)
            .into_iter()
            .map(serde_json::from_value::<Tool>)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ErrorData::internal_error(format!("a tool does not serialize: {e}"), None))?;
        Ok(ListToolsResult::with_all_items(tools))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let token = token_of(&ctx)?;
        if request.name == tools::OPEN_TASK || request.name == tools::GET_ACTION {
            return self.own_tool(token, request).await.map(Into::into);
        }
        let bundle = self.app.bundle().map_err(rpc_error)?;
        let invalid = |b: tools::BadArguments| ErrorData::invalid_params(b.0, None);
        let granted =
            bundle.catalog().get(&request.name).filter(|a| tools::granted_level(&bundle, token.subject(), &a.id) >= 1);
        let (req, via) = match granted {
            Some(action) => (tools::request_from(action, request.arguments).map_err(invalid)?, None),
            None => {
                // An upstream MCP tool the agent may call (mapped, or advice), as listed now.
                let upstream = self.app.upstreams.as_deref().and_then(|u| {
                    tools::upstream_tools(&bundle, u, token.subject())
                        .into_iter()
                        .find(|(t, _)| t["name"] == request.name.as_ref())
                        .map(|(_, call)| call)
                });
                let call =
                    upstream.ok_or_else(|| ErrorData::invalid_params(format!("no tool `{}`", request.name), None))?;
                tools::upstream_request_from(&bundle, &call, request.arguments).map_err(invalid)?
            }
        };
        let progress_token = ctx.meta.get_progress_token();
        let peer = ctx.peer.clone();
        let sink = move |elapsed: f64, total: f64, message: String| -> call::BoxFuture<'static> {
            let (peer, token) = (peer.clone(), progress_token.clone());
            Box::pin(async move {
                if let Some(token) = token {
                    let p = ProgressNotificationParam::new(token, elapsed).with_total(total).with_message(message);
                    // A client that went away misses progress; the call goes on.
                    let _ = peer.notify_progress(p).await;
                }
            })
        };
        let wants_progress = ctx.meta.get_progress_token().is_some();
        let progress: Option<call::Progress<'_>> = if wants_progress { Some(&sink) } else { None };
        // A client that declared the tasks extension gets a task at once instead of a held call.
        // (A session's capabilities, or a 2026-07-28 request's own, without copying them.)
        let tasks = ctx.peer.peer_info().is_some_and(|i| i.capabilities.supports_tasks())
            || ctx.meta.client_capabilities().is_some_and(|c| c.supports_tasks());
        let mode = if tasks { call::Mode::Task } else { call::Mode::Hold(progress) };
        let tool_call = call::ToolCall { token, bundle, req, via };
        match call::call(&self.app, &self.hold, &self.pending, tool_call, mode).await {
            Ok(call::Answered::Result(v)) => Ok(tool_result(v)?.into()),
            Ok(call::Answered::Task(answer)) => {
                let meta = json!({
                    "warden/request": answer.id,
                    "warden/approval": answer.decision.approval.as_ref().and_then(|a| a.id.clone()),
                    "warden/digest": answer.digest,
                });
                let meta = match meta {
                    Value::Object(m) => m.into(),
                    _ => rmcp::model::MetaObject::default(),
                };
                Ok(CreateTaskResult::new(task_of(&answer)).with_meta(meta).into())
            }
            Err(e) => Ok(refusal(e)?.into()),
        }
    }

    /// `tasks/get`: a task is an action request of this agent (its id is the request's); working
    /// while it waits for a human or its execution, completed with the tool result once settled
    /// — the same result a held call would have answered.
    async fn get_task(
        &self,
        request: GetTaskParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<GetTaskResult, ErrorData> {
        let token = token_of(&ctx)?;
        let (answer, open) = call::look(&self.app, token, request.task_id).await.map_err(task_error)?;
        let task = task_of(&answer);
        let detailed = if open {
            DetailedTask::new(task.with_status_message(call::waiting_for(&answer)), TaskPayload::Working)
        } else {
            let result = call::outcome(&self.app, &answer).await.map_err(rpc_error)?;
            let result = match result {
                Value::Object(m) => m,
                _ => return Err(ErrorData::internal_error("a result is not an object", None)),
            };
            DetailedTask::new(task.with_status_message(answer.state.clone()), TaskPayload::Completed { result })
        };
        Ok(GetTaskResult::new(detailed))
    }

    /// `tasks/cancel`: refused. Withdrawing a recorded request is not the agent's to do — a
    /// human rejects it in Warden, or it expires; a halt or the task's close cancels it.
    async fn cancel_task(&self, request: CancelTaskParams, ctx: RequestContext<RoleServer>) -> Result<(), ErrorData> {
        let token = token_of(&ctx)?;
        let (answer, _) = call::look(&self.app, token, request.task_id).await.map_err(task_error)?;
        Err(ErrorData::invalid_request(
            format!(
                "request `{}` cannot be cancelled by its agent; a human rejects it in Warden, or it expires",
                answer.id
            ),
            Some(json!({"code": "not_cancellable"})),
        ))
    }
}

/// Looks whether a reload changed `token`'s agent's tools every [`LIST_WATCH`], and calls
/// `notify` when it did; ends when `closed` says so or `notify` fails.
async fn watch_tools<F, Fut>(app: App, token: AgentToken, closed: impl Fn() -> bool, notify: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let names = |app: &App| -> Option<Vec<Value>> {
        let bundle = app.bundle().ok()?;
        Some(
            tools::for_agent(&bundle, app.upstreams.as_deref(), token.subject())
                .into_iter()
                .map(|t| t["name"].clone())
                .collect(),
        )
    };
    let mut seen = names(&app);
    // The bundle's version and the upstreams' tools: either may change what the agent sees.
    let state = |app: &App| {
        (app.bundle().ok().map(|b| b.version().to_string()), app.upstreams.as_ref().map(|u| u.generation()))
    };
    let mut version = state(&app);
    let mut tick = tokio::time::interval(LIST_WATCH);
    while !closed() {
        tick.tick().await;
        let now = state(&app);
        if now == version {
            continue;
        }
        version = now;
        let listed = names(&app);
        if listed != seen {
            seen = listed;
            if !notify().await {
                return;
            }
        }
    }
}

/// A tool result from its JSON.
fn tool_result(v: Value) -> Result<CallToolResult, ErrorData> {
    serde_json::from_value::<CallToolResult>(v)
        .map_err(|e| ErrorData::internal_error(format!("a result does not serialize: {e}"), None))
}

/// The MCP task of an action request: the request's id, its state and times. Its TTL is
/// unlimited: the request stays in the store.
fn task_of(answer: &pipeline::ActionAnswer) -> Task {
    let now = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| answer.created_at.clone());
    let status = if call::unsettled(&answer.state) { TaskStatus::Working } else { TaskStatus::Completed };
    Task::new(answer.id.clone(), status, answer.created_at.clone(), now)
        .with_poll_interval_ms(TASK_POLL.as_millis() as u64)
}

/// An unknown task (or another agent's) is invalid params, as MCP says; Warden failing is an
/// internal error.
fn task_error(e: ApiError) -> ErrorData {
    if e.status().is_server_error() {
        return rpc_error(e);
    }
    ErrorData::invalid_params(e.message, Some(json!({"code": e.code.as_str()})))
}

impl Door {
    /// Warden's own tools: open a task, read an action — the same services as `/v1`.
    async fn own_tool(&self, token: AgentToken, request: CallToolRequestParams) -> Result<CallToolResult, ErrorData> {
        let invalid = |b: tools::BadArguments| ErrorData::invalid_params(b.0, None);
        let answer = if request.name == tools::OPEN_TASK {
            let (id, title, trigger) = tools::open_task_from(request.arguments).map_err(invalid)?;
            blocking(&self.app, move |s| {
                let agent = token.admit(s)?;
                let task = crate::tasks::open(s, &crate::auth::Caller::Agent(agent), id, title, trigger, Vec::new())?;
                Ok(serde_json::to_value(task).unwrap_or_default())
            })
            .await
        } else {
            let id = tools::get_action_from(request.arguments).map_err(invalid)?;
            blocking(&self.app, move |s| {
                let agent = token.admit(s)?;
                let answer = crate::pipeline::lookup(s, &id, &crate::auth::Caller::Agent(agent))?;
                Ok(serde_json::to_value(answer).unwrap_or_default())
            })
            .await
        };
        match answer {
            Ok(value) => {
                let result = json!({"content": [{"type": "text", "text": value.to_string()}], "structuredContent": value, "isError": false});
                serde_json::from_value(result).map_err(|e| ErrorData::internal_error(e.to_string(), None))
            }
            Err(e) => refusal(e),
        }
    }
}

const SESSION_HEADER: &str = "mcp-session-id";

/// Authenticates every `/mcp` HTTP request as an agent, as `/v1` does; the token rides in the
/// request's extensions to the handler. A session answers only the agent that opened it: a
/// request naming another agent's session id is refused (403 `not_your_agent`) before the
/// session sees it, so no agent reads another's held calls, notifications or tasks. The
/// session bounds ([`sessions`]) are kept here too.
async fn authenticate(
    State((app, registry)): State<(App, Arc<sessions::Registry>)>,
    req: Request,
    next: axum::middleware::Next,
) -> Response {
    let (mut parts, body) = req.into_parts();
    let token = match AgentToken::from_request_parts(&mut parts, &app).await {
        Ok(token) => token,
        Err(e) => return challenge(&app, &parts, e),
    };
    let session = parts.headers.get(SESSION_HEADER).and_then(|v| v.to_str().ok()).map(str::to_string);
    let stream = parts.method == axum::http::Method::GET;
    let closing = parts.method == axum::http::Method::DELETE;
    // Only a POST without a session opens one (`initialize`); the SDK refuses anything else.
    let admitted = if session.is_none() && parts.method != axum::http::Method::POST {
        None
    } else {
        match registry.admit(token.subject(), session.as_deref(), stream).await {
            Ok(a) => Some(a),
            Err(sessions::Refused::NotYours) => {
                return ApiError::new(crate::error::Code::NotYourAgent, "this MCP session belongs to another agent")
                    .into_response();
            }
            Err(sessions::Refused::Sessions(cap)) => {
                return ApiError::new(
                    crate::error::Code::TooManySessions,
                    format!(
                        "agent `{}` holds {cap} MCP sessions (the cap), each busy; close one (`DELETE /mcp`) or wait for one to finish",
                        token.subject()
                    ),
                )
                .details(json!({"cap": cap}))
                .into_response();
            }
            Err(sessions::Refused::Streams(cap)) => {
                return ApiError::new(
                    crate::error::Code::TooManyStreams,
                    format!("this MCP session has {cap} event streams open (the cap); close one"),
                )
                .details(json!({"cap": cap}))
                .into_response();
            }
        }
    };
    parts.extensions.insert(token);
    let res = next.run(Request::from_parts(parts, body)).await;
    let Some(mut admitted) = admitted else { return res };
    let opened = if session.is_none() { res.headers().get(SESSION_HEADER).and_then(|v| v.to_str().ok()) } else { None };
    admitted.answered(opened, closing && res.status().is_success());
    // The request counts as busy until its answer has been sent (or the client left).
    res.map(|body| {
        use futures_util::StreamExt as _;
        axum::body::Body::from_stream(body.into_data_stream().map(move |chunk| {
            let _ = &admitted;
            chunk
        }))
    })
}

/// The resource's base URL as the client reached it.
fn base_url(app: &App, headers: &axum::http::HeaderMap) -> String {
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("localhost");
    format!("{}://{host}", app.mcp.scheme)
}

/// 401 with the pointer to the metadata (MCP authorization, RFC 9728 §5.1); other refusals as
/// the API gives them.
fn challenge(app: &App, parts: &axum::http::request::Parts, e: ApiError) -> Response {
    if e.status() != StatusCode::UNAUTHORIZED {
        return e.into_response();
    }
    let presented = parts.headers.contains_key(header::AUTHORIZATION);
    let mut value = format!("Bearer resource_metadata=\"{}{METADATA_PATH}\"", base_url(app, &parts.headers));
    if presented {
        value.push_str(", error=\"invalid_token\"");
    }
    let mut res = e.into_response();
    if let Ok(v) = HeaderValue::from_str(&value) {
        res.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    res
}

/// RFC 9728 protected-resource metadata: this resource and the issuers whose tokens it takes.
async fn metadata(State(app): State<App>, headers: axum::http::HeaderMap) -> Response {
    let base = base_url(&app, &headers);
    let mut issuers = vec![app.tokens.local.issuer().to_string()];
    issuers.extend(app.tokens.external.iter().filter(|i| i.roles_claim.is_none()).map(|i| i.issuer.clone()));
    axum::Json(json!({
        "resource": format!("{base}/mcp"),
        "authorization_servers": issuers,
        "bearer_methods_supported": ["header"],
        "resource_name": "Warden",
        "resource_documentation": "https://github.com/warden/warden/blob/main/docs/mcp.md",
    }))
    .into_response()
}

/// `/mcp` and the metadata. Not under the API's request timeout: a held call lasts up to the
/// hold budget, and SSE streams longer.
pub fn router(app: App) -> Router {
    let options = app.mcp.clone();
    let door = Door { app: app.clone(), hold: Arc::new(options.hold.clone()), pending: Arc::default() };
    // A call answered at once is one JSON body; one that notifies first (progress while held
    // for a human) is an SSE stream, so nothing is lost.
    let mut config = StreamableHttpServerConfig::default()
        .with_json_response(true)
        .with_max_request_body_bytes(crate::http::BODY_LIMIT)
        .with_allowed_origins(options.allowed_origins.clone());
    config = if options.allowed_hosts.is_empty() {
        config.disable_allowed_hosts()
    } else {
        config.with_allowed_hosts(options.allowed_hosts.clone())
    };
    if !options.allowed_origins.is_empty() {
        config = config.enforce_origin_validation();
    }
    let mut manager = LocalSessionManager::default();
    // The SDK's own idle timeout is a safety net behind the registry's (which sees HTTP
    // requests, not only messages).
    manager.session_config.keep_alive = Some(options.sessions.idle.saturating_mul(2));
    let manager = Arc::new(manager);
    let registry = sessions::Registry::new(manager.clone(), options.sessions, app.clone());
    registry.spawn_expiry();
    let service: StreamableHttpService<Door, LocalSessionManager> =
        StreamableHttpService::new(move || Ok(door.clone()), manager, config);
    // Its own admission limit, as large as the API's: calls held for a human (and SSE streams)
    // never take the permits `/v1` needs.
    let permits = Arc::new(tokio::sync::Semaphore::new(app.limits.in_flight));
    let state = app.clone();
    let admit = move |req: Request, next: axum::middleware::Next| {
        let state = state.clone();
        crate::limits::admit_or(permits.clone(), req, next, move || {
            state.metrics.refused("in_flight_mcp");
            ApiError::new(crate::error::Code::Overloaded, "too many MCP requests in flight; retry shortly")
                .into_response()
        })
    };
    let mcp = Router::new()
        .nest_service("/mcp", service)
        .layer(axum::middleware::from_fn_with_state((app.clone(), registry), authenticate))
        .layer(axum::middleware::from_fn(admit));
    let meta = Router::new().route(METADATA_PATH, axum::routing::get(metadata)).with_state(app);
    mcp.merge(meta)
}
