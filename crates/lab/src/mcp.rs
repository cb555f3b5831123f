//! The lab EDR's MCP server (`/edr/mcp`, Streamable HTTP, `authorization: Bearer <EDR key>`):
//! an EDR-shaped tool set over the same estate as the EDR's REST API, for upstream-MCP tests.
//!
//! | tool | does |
//! |---|---|
//! | `isolate_host` {hostname, comment} | contains a host (answers its `containment_id`) |
//! | `release_host` {hostname, containment_id} | lifts the containment |
//! | `kill_process` {hostname, pid} | kills a process |
//! | `get_host` {hostname} | reads a host (read-only) |
//! | `run_script` {hostname, script} | runs a script on a host (nothing maps it: Warden hides it) |
//! | `enrich_alert` {alert_id, sources} | the EDR's detections behind an alert (read-only; benches map it) |
//! | `collect_triage` {hostname} | only while switched on (`POST /edr/mcp-admin/collect_triage`, `DELETE` to switch off); switching announces `tools/list_changed` |
//!
//! Every call is counted in `GET /state` as `edr mcp.TOOL`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ErrorData, Implementation, ListToolsResult,
    PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::{NotificationContext, Peer, RequestContext, RoleServer};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use serde_json::{Value, json};

use crate::{Estate, Shared, err};

#[derive(Clone)]
struct EdrMcp {
    lab: Shared,
}

fn host_arg() -> Value {
    json!({"type": "string", "minLength": 1, "description": "The host's name, as the EDR knows it"})
}

fn tools(extra: bool) -> Vec<Value> {
    let mut tools = vec![
        json!({"name": "isolate_host", "description": "Contain a host: cut it off the network but for the EDR.",
               "inputSchema": {"type": "object", "required": ["hostname"], "properties": {
                   "hostname": host_arg(), "comment": {"type": "string"}}},
               "annotations": {"destructiveHint": false, "idempotentHint": true}}),
        json!({"name": "release_host", "description": "Lift a host's containment.",
               "inputSchema": {"type": "object", "required": ["hostname"], "properties": {
                   "hostname": host_arg(), "containment_id": {"type": "string"}, "comment": {"type": "string"}}}}),
        json!({"name": "kill_process", "description": "Kill a process on a host.",
               "inputSchema": {"type": "object", "required": ["hostname", "pid"], "properties": {
                   "hostname": host_arg(), "pid": {"type": "integer"}}}}),
        json!({"name": "get_host", "description": "Read what the EDR knows of a host.",
               "inputSchema": {"type": "object", "required": ["hostname"], "properties": {"hostname": host_arg()}},
               "annotations": {"readOnlyHint": true}}),
        json!({"name": "run_script", "description": "Run a script on a host as SYSTEM.",
               "inputSchema": {"type": "object", "required": ["hostname", "script"], "properties": {
                   "hostname": host_arg(), "script": {"type": "string"}}},
               "annotations": {"destructiveHint": true}}),
        json!({"name": "enrich_alert", "description": "The EDR's detections behind an alert.",
               "inputSchema": {"type": "object", "required": ["alert_id"], "properties": {
                   "alert_id": {"type": "string", "minLength": 1},
                   "sources": {"type": "array", "items": {"type": "string"}}}},
               "annotations": {"readOnlyHint": true}}),
    ];
    if extra {
        tools.push(json!({"name": "collect_triage", "description": "Collect a triage package from a host.",
                          "inputSchema": {"type": "object", "required": ["hostname"], "properties": {"hostname": host_arg()}}}));
    }
    tools
}

fn text_of(v: &Value) -> String {
    v.to_string()
}

impl EdrMcp {
    fn run(&self, tool: &str, args: &serde_json::Map<String, Value>) -> Result<Value, String> {
        let mut e = self.lab.estate.lock().map_err(|_| "lab state poisoned".to_string())?;
        *e.calls.entry(format!("edr mcp.{tool}")).or_default() += 1;
        e.total += 1;
        if tool == "enrich_alert" {
            let alert = args.get("alert_id").and_then(Value::as_str).unwrap_or("");
            if alert.is_empty() {
                return Err("`alert_id` is required".into());
            }
            return Ok(
                json!({"alert": alert, "detections": 3, "sources": args.get("sources").cloned().unwrap_or(json!([]))}),
            );
        }
        let host = args.get("hostname").and_then(Value::as_str).unwrap_or("").to_string();
        if host.is_empty() {
            return Err("`hostname` is required".into());
        }
        let s = |name: &str| args.get(name).and_then(Value::as_str).unwrap_or("").to_string();
        match tool {
            "isolate_host" => Ok(isolate(&mut e, &host, &s("comment"))),
            "release_host" => {
                let current = e.hosts.get(&host).and_then(|x| x["containment_id"].as_str().map(String::from));
                let asked = s("containment_id");
                if let Some(cur) = &current
                    && !asked.is_empty()
                    && &asked != cur
                {
                    return Err(format!("containment `{asked}` is not the one in force"));
                }
                e.hosts.insert(host.clone(), json!({"status": "normal", "containment_id": null}));
                Ok(json!({"host": host, "status": "normal"}))
            }
            "kill_process" => {
                let pid = args.get("pid").cloned().unwrap_or(Value::Null);
                let entry = e.hosts.entry(host.clone()).or_insert_with(|| json!({"status": "normal"}));
                entry["killed"] = pid.clone();
                Ok(json!({"host": host, "killed": pid}))
            }
            "get_host" => Ok(e.hosts.get(&host).cloned().unwrap_or_else(|| json!({"status": "normal"}))),
            "run_script" => Ok(json!({"host": host, "exit_code": 0})),
            "collect_triage" if e.mcp_extra => Ok(json!({"host": host, "package": e.id("triage")})),
            other => Err(format!("no tool `{other}`")),
        }
    }
}

fn isolate(e: &mut Estate, host: &str, comment: &str) -> Value {
    let existing = e.hosts.get(host).and_then(|x| x["containment_id"].as_str().map(String::from));
    let id = existing.unwrap_or_else(|| e.id("cnt"));
    e.hosts.insert(host.to_string(), json!({"status": "contained", "containment_id": id, "comment": comment}));
    json!({"host": host, "status": "contained", "containment_id": id})
}

impl rmcp::ServerHandler for EdrMcp {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().enable_tool_list_changed().build())
            .with_server_info(Implementation::new("lab-edr", "1"))
    }

    async fn on_initialized(&self, ctx: NotificationContext<RoleServer>) {
        if let Ok(mut peers) = self.lab.mcp_peers.lock() {
            peers.retain(|p| !p.is_transport_closed());
            peers.push(ctx.peer.clone());
        }
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let extra = self.lab.estate.lock().map(|e| e.mcp_extra).unwrap_or(false);
        let tools = tools(extra)
            .into_iter()
            .map(serde_json::from_value::<Tool>)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ErrorData::internal_error(e.to_string(), None))?;
        Ok(ListToolsResult::with_all_items(tools))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let args = request.arguments.unwrap_or_default();
        let result = match self.run(&request.name, &args) {
            Ok(v) => {
                json!({"content": [{"type": "text", "text": text_of(&v)}], "structuredContent": v, "isError": false})
            }
            Err(m) => json!({"content": [{"type": "text", "text": m}], "isError": true}),
        };
        let result: CallToolResult =
            serde_json::from_value(result).map_err(|e| ErrorData::internal_error(e.to_string(), None))?;
        Ok(result.into())
    }
}

/// `POST`/`DELETE /edr/mcp-admin/collect_triage` (EDR key): switch the extra tool on or off,
/// and tell every session its tools changed.
async fn switch(State(lab): State<Shared>, method: axum::http::Method, h: HeaderMap) -> Response {
    if h.get("x-api-key").and_then(|v| v.to_str().ok()) != Some(lab.keys.edr.as_str()) {
        return err(StatusCode::UNAUTHORIZED, "invalid api key");
    }
    let on = method == axum::http::Method::POST;
    if let Ok(mut e) = lab.estate.lock() {
        e.mcp_extra = on;
    }
    let peers: Vec<Peer<RoleServer>> = lab.mcp_peers.lock().map(|p| p.clone()).unwrap_or_default();
    for p in peers.iter().filter(|p| !p.is_transport_closed()) {
        let _ = p.notify_tool_list_changed().await;
    }
    axum::Json(json!({"collect_triage": on, "told": peers.len()})).into_response()
}

/// Only the EDR's key opens the MCP server.
async fn authenticate(
    State(lab): State<Shared>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let bearer = req.headers().get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("");
    if bearer != format!("Bearer {}", lab.keys.edr) {
        return err(StatusCode::UNAUTHORIZED, "invalid bearer token");
    }
    next.run(req).await
}

/// The MCP routes, merged into the lab's router.
pub(crate) fn router(lab: Shared) -> axum::Router {
    let handler = EdrMcp { lab: lab.clone() };
    // Tests and demos reach the lab on loopback under any port.
    let config = StreamableHttpServerConfig::default().disable_allowed_hosts();
    let service: StreamableHttpService<EdrMcp, LocalSessionManager> =
        StreamableHttpService::new(move || Ok(handler.clone()), Arc::default(), config);
    let mcp = axum::Router::new()
        .nest_service("/edr/mcp", service)
        .layer(axum::middleware::from_fn_with_state(lab.clone(), authenticate));
    let admin = axum::Router::new()
        .route("/edr/mcp-admin/collect_triage", axum::routing::post(switch).delete(switch))
        .with_state(lab);
    mcp.merge(admin)
}

/// The EDR's MCP server on stdin/stdout until the client hangs up, over an estate of its own
/// (no key: whoever launched the process holds it).
pub async fn serve_stdio(lab: Shared) -> std::io::Result<()> {
    use rmcp::ServiceExt;
    let service = EdrMcp { lab }.serve(rmcp::transport::stdio()).await.map_err(std::io::Error::other)?;
    service.waiting().await.map_err(std::io::Error::other)?;
    Ok(())
}
