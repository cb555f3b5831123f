//! `warden mcp stdio`: a bridge for MCP clients that launch a local command (desktop and IDE
//! assistants). MCP on stdin/stdout in, Warden's `/mcp` out, with the agent's token from a
//! file or the environment. It decides nothing and holds no state of its own: `tools/list` and
//! `tools/call` are forwarded, and so are the server's progress and list-changed notices.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use anyhow::Context as _;
use clap::{Args, Subcommand};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, ClientRequest, ErrorData, ListToolsResult, PaginatedRequestParams,
    ProgressNotificationParam, ProgressToken, Request, ServerCapabilities, ServerConfig, ServerResult,
};
use rmcp::service::{NotificationContext, Peer, PeerRequestOptions, RequestContext, RunningService};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::{ClientHandler, RoleClient, RoleServer, ServerHandler, ServiceExt};

use crate::Failure;

#[derive(Debug, Subcommand)]
pub enum McpCommand {
    /// Serve MCP on stdin/stdout for a local client, forwarding to a Warden server's `/mcp`
    /// as the agent whose token is given.
    Stdio(StdioArgs),
}

#[derive(Debug, Args)]
pub struct StdioArgs {
    /// The Warden server (`http://…` or `https://…`).
    #[arg(long, env = "WARDEN_SERVER", default_value = "http://127.0.0.1:8443")]
    pub server: String,
    /// A file holding the agent's JWT-SVID (read at start; SPIRE's agent writes one).
    #[arg(long, env = "WARDEN_AGENT_TOKEN_FILE", conflicts_with = "token")]
    pub token_file: Option<PathBuf>,
    /// The agent's JWT-SVID itself.
    #[arg(long, env = "WARDEN_AGENT_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

/// The bridge's client side: relays what Warden notifies to the local client.
#[derive(Clone, Default)]
struct Relay {
    /// The local client, once its session is up.
    local: Arc<OnceLock<Peer<RoleServer>>>,
    /// Upstream progress token → the local client's token for the same call.
    progress: Arc<Mutex<HashMap<ProgressToken, ProgressToken>>>,
}

impl ClientHandler for Relay {
    async fn on_progress(&self, params: ProgressNotificationParam, _ctx: NotificationContext<RoleClient>) {
        let local_token = self.progress.lock().ok().and_then(|m| m.get(&params.progress_token).cloned());
        if let (Some(peer), Some(token)) = (self.local.get(), local_token) {
            let mut p = params.clone();
            p.progress_token = token;
            let _ = peer.notify_progress(p).await;
        }
    }

    async fn on_tool_list_changed(&self, _ctx: NotificationContext<RoleClient>) {
        if let Some(peer) = self.local.get() {
            let _ = peer.notify_tool_list_changed().await;
        }
    }
}

/// The bridge's server side: forwards to Warden.
#[derive(Clone)]
struct Bridge {
    upstream: Arc<RunningService<RoleClient, Relay>>,
    relay: Relay,
}

fn upstream_error(e: rmcp::ServiceError) -> ErrorData {
    match e {
        rmcp::ServiceError::McpError(e) => e,
        other => ErrorData::internal_error(format!("Warden is unreachable: {other}"), None),
    }
}

impl ServerHandler for Bridge {
    fn get_info(&self) -> ServerConfig {
        let mut info =
            ServerConfig::new(ServerCapabilities::builder().enable_tools().enable_tool_list_changed().build());
        if let Some(up) = self.upstream.peer_info() {
            if let Some(i) = up.instructions.clone() {
                info = info.with_instructions(i);
            }
            if let Some(s) = up.server_info.clone() {
                info = info.with_server_info(s);
            }
        }
        info
    }

    async fn list_tools(
        &self,
        request: Option<PaginatedRequestParams>,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        self.upstream.list_tools(request).await.map_err(upstream_error)
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let handle = self
            .upstream
            .send_cancellable_request(
                ClientRequest::CallToolRequest(Request::new(request)),
                PeerRequestOptions::no_options(),
            )
            .await
            .map_err(upstream_error)?;
        let upstream_token = handle.progress_token.clone();
        if let Some(local) = ctx.meta.get_progress_token()
            && let Ok(mut m) = self.relay.progress.lock()
        {
            m.insert(upstream_token.clone(), local);
        }
        let answer = handle.await_response().await;
        if let Ok(mut m) = self.relay.progress.lock() {
            m.remove(&upstream_token);
        }
        match answer.map_err(upstream_error)? {
            ServerResult::CallToolResult(r) => Ok(r.into()),
            other => Err(ErrorData::internal_error(format!("Warden answered a tool call with {other:?}"), None)),
        }
    }
}

fn token(a: &StdioArgs) -> Result<String, Failure> {
    let token = match (&a.token_file, &a.token) {
        (Some(path), _) => std::fs::read_to_string(path)
            .map_err(|e| Failure::Invalid(format!("error: reading the token file `{}`: {e}", path.display())))?,
        (None, Some(t)) => t.clone(),
        (None, None) => {
            return Err(Failure::Invalid(
                "error: no agent token: pass `--token-file PATH` (or WARDEN_AGENT_TOKEN_FILE) or WARDEN_AGENT_TOKEN"
                    .into(),
            ));
        }
    };
    let token = token.trim().to_string();
    if token.is_empty() {
        return Err(Failure::Invalid("error: the agent token is empty".into()));
    }
    Ok(token)
}

pub fn run(c: McpCommand) -> Result<(), Failure> {
    let McpCommand::Stdio(a) = c;
    let token = token(&a)?;
    let base = a.server.trim_end_matches('/').to_string();
    if !(base.starts_with("http://") || base.starts_with("https://")) {
        return Err(Failure::Invalid(format!("error: `--server` must be `http://…` or `https://…`, not `{base}`")));
    }
    // Logs go to stderr: stdout is the MCP channel.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")?;
    runtime.block_on(async move {
        let relay = Relay::default();
        let config = StreamableHttpClientTransportConfig::with_uri(format!("{base}/mcp")).auth_header(token);
        let upstream = relay
            .clone()
            .serve(StreamableHttpClientTransport::from_config(config))
            .await
            .map_err(|e| Failure::Other(anyhow::anyhow!("connecting to `{base}/mcp`: {e}")))?;
        let bridge = Bridge { upstream: Arc::new(upstream), relay: relay.clone() };
        let local = bridge
            .serve(rmcp::transport::stdio())
            .await
            .map_err(|e| Failure::Other(anyhow::anyhow!("serving MCP on stdio: {e}")))?;
        let _ = relay.local.set(local.peer().clone());
        local.waiting().await.map_err(|e| Failure::Other(anyhow::anyhow!("the stdio session ended: {e}")))?;
        Ok(())
    })
}
