//! Upstream MCP servers: other MCP servers whose tools Warden performs its executions through.
//!
//! `warden serve --config` names them (`[[mcp.upstreams]]`: a Streamable HTTP `url`, or a
//! `command` for stdio), with the credentials Warden holds (`bearer`, `headers`, `env`, each may
//! say `secret:NAME`). Each upstream has one long-lived MCP client session, on a runtime of its
//! own (so the synchronous executor can wait on it from any thread): it lists the upstream's
//! tools, follows its `notifications/tools/list_changed`, and reconnects with backoff when the
//! session ends. Calls carry the arguments the server rebuilt from the decided request
//! ([`Route`]); whatever comes back is redacted of the credentials, as the HTTP connector does.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use rmcp::model::{CallToolRequestParams, ClientConfig};
use rmcp::service::{Peer, RoleClient};

use super::*;

/// One upstream MCP server, as `[[mcp.upstreams]]` describes it.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// How `mcp.toml` refers to it (lowercase, `-`, `_`).
    pub name: String,
    /// Its Streamable HTTP endpoint.
    #[serde(default)]
    pub url: Option<String>,
    /// Or the command that runs it on stdio (program, then arguments).
    #[serde(default)]
    pub command: Vec<String>,
    /// A bearer token for `url` (may be `secret:NAME`).
    #[serde(default)]
    pub bearer: Option<String>,
    /// More HTTP headers (values may hold `secret:NAME`).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The environment of `command` (values may hold `secret:NAME`).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// How long one tool call may take (default 10s).
    #[serde(default)]
    pub timeout: Option<String>,
}

impl UpstreamConfig {
    /// Checks what can be checked without connecting.
    pub fn check(&self) -> Result<(), ConfigError> {
        let name_ok = !self.name.is_empty()
            && self.name.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'_');
        if !name_ok {
            return Err(ConfigError(format!(
                "upstream `{}`: a name is lowercase letters, digits, `-`, `_`",
                self.name
            )));
        }
        match (&self.url, self.command.is_empty()) {
            (Some(_), false) | (None, true) => {
                return Err(ConfigError(format!("upstream `{}`: give either `url` or `command`", self.name)));
            }
            (Some(u), true) if !(u.starts_with("http://") || u.starts_with("https://")) => {
                return Err(ConfigError(format!("upstream `{}`: `url` must be http:// or https://", self.name)));
            }
            _ => {}
        }
        if self.url.is_none() && (self.bearer.is_some() || !self.headers.is_empty()) {
            return Err(ConfigError(format!("upstream `{}`: `bearer` and `headers` go with `url`", self.name)));
        }
        if let Some(t) = &self.timeout
            && parse_timeout(t).is_none()
        {
            return Err(ConfigError(format!("upstream `{}`: timeout `{t}` is not like `10s`", self.name)));
        }
        Ok(())
    }

    fn call_timeout(&self) -> Duration {
        self.timeout.as_deref().and_then(parse_timeout).unwrap_or(Duration::from_secs(10))
    }
}

/// Where an execution runs when an upstream MCP tool performs it: the tool, and the arguments
/// rebuilt from the decided request (see `warden_core::mcp_map`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Route {
    pub upstream: String,
    pub tool: String,
    pub arguments: Map<String, Value>,
    /// Captured field → pointer into the tool's structured result.
    pub capture: BTreeMap<String, String>,
}

/// What Warden knows of one upstream right now.
#[derive(Debug, Default)]
struct Link {
    peer: Option<Peer<RoleClient>>,
    /// Its tools (MCP `Tool` objects), as last listed; empty while not connected.
    tools: Vec<Value>,
    /// Why it is not connected.
    error: Option<String>,
    /// The credentials its session was opened with: redacted from whatever it returns.
    used: Vec<String>,
}

struct Shared {
    configs: BTreeMap<String, UpstreamConfig>,
    secrets: Box<dyn Secrets>,
    links: RwLock<BTreeMap<String, Link>>,
    /// Bumped whenever an upstream's tools change (listed, list changed, lost).
    generation: AtomicU64,
}

/// The upstream MCP servers and their sessions.
pub struct Upstreams {
    shared: Arc<Shared>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl fmt::Debug for Upstreams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upstreams").field("upstreams", &self.shared.configs.keys().collect::<Vec<_>>()).finish()
    }
}

impl Drop for Upstreams {
    fn drop(&mut self) {
        // Dropped from async code too (tests): never block there.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// The client side of one session: tells the link when the upstream's tools changed.
#[derive(Clone)]
struct Listener {
    changed: tokio::sync::mpsc::UnboundedSender<()>,
}

impl rmcp::ClientHandler for Listener {
    fn get_info(&self) -> ClientConfig {
        ClientConfig::new(
            rmcp::model::ClientCapabilities::default(),
            rmcp::model::Implementation::new("warden", env!("CARGO_PKG_VERSION")),
        )
    }

    async fn on_tool_list_changed(&self, _ctx: rmcp::service::NotificationContext<RoleClient>) {
        let _ = self.changed.send(());
    }
}

impl Upstreams {
    /// Starts a session to each upstream (in the background: one that does not answer yet is
    /// retried, and its tools are simply not there until it does).
    pub fn start(configs: Vec<UpstreamConfig>, secrets: Box<dyn Secrets>) -> Result<Self, ConfigError> {
        let mut by_name = BTreeMap::new();
        for c in configs {
            c.check()?;
            if by_name.insert(c.name.clone(), c.clone()).is_some() {
                return Err(ConfigError(format!("upstream `{}` is configured twice", c.name)));
            }
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("warden-mcp-upstreams")
            .enable_all()
            .build()
            .map_err(|e| ConfigError(format!("cannot start the upstream runtime: {e}")))?;
        let shared = Arc::new(Shared {
            configs: by_name,
            secrets,
            links: RwLock::new(BTreeMap::new()),
            generation: AtomicU64::new(0),
        });
        for name in shared.configs.keys() {
            runtime.spawn(keep_connected(shared.clone(), name.clone()));
        }
        Ok(Self { shared, runtime: Some(runtime) })
    }

    /// The upstreams configured, by name.
    pub fn names(&self) -> impl Iterator<Item = &String> {
        self.shared.configs.keys()
    }

    /// `upstream`'s tools as last listed (`None`: not configured; empty: not connected).
    pub fn tools(&self, upstream: &str) -> Option<Vec<Value>> {
        if !self.shared.configs.contains_key(upstream) {
            return None;
        }
        let links = self.shared.links.read().ok()?;
        Some(links.get(upstream).map(|l| l.tools.clone()).unwrap_or_default())
    }

    /// Changes whenever an upstream's tools may have changed.
    pub fn generation(&self) -> u64 {
        self.shared.generation.load(Ordering::SeqCst)
    }

    /// Waits until every upstream has listed its tools once (or `within` passes); true if all did.
    pub fn wait_connected(&self, within: Duration) -> bool {
        let deadline = std::time::Instant::now() + within;
        loop {
            let all = self
                .shared
                .links
                .read()
                .map(|l| self.shared.configs.keys().all(|n| l.get(n).is_some_and(|x| x.peer.is_some())))
                .unwrap_or(false);
            if all || std::time::Instant::now() >= deadline {
                return all;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Calls `route`'s tool with its arguments and waits for the answer (any thread may call).
    pub fn call(&self, route: &Route) -> Result<ToolAnswer, ConnectorError> {
        let config = self
            .shared
            .configs
            .get(&route.upstream)
            .ok_or_else(|| ConnectorError::NotConfigured(format!("upstream MCP server `{}`", route.upstream)))?;
        let (peer, used) = {
            let links = self.shared.links.read().map_err(|_| ConnectorError::NotSent("upstream state".into()))?;
            let link = links.get(&route.upstream);
            match link.and_then(|l| l.peer.clone()) {
                Some(p) => (p, link.map(|l| l.used.clone()).unwrap_or_default()),
                None => {
                    let why = link.and_then(|l| l.error.clone()).unwrap_or_else(|| "not connected yet".into());
                    return Err(ConnectorError::NotSent(format!("upstream `{}`: {why}", route.upstream)));
                }
            }
        };
        let timeout = config.call_timeout();
        let runtime = self.runtime.as_ref().ok_or_else(|| ConnectorError::NotSent("upstreams stopped".into()))?;
        let (tx, rx) = std::sync::mpsc::channel();
        let params = CallToolRequestParams::new(route.tool.clone()).with_arguments(route.arguments.clone());
        runtime.spawn(async move {
            let answer = tokio::time::timeout(timeout, peer.call_tool(params)).await;
            let _ = tx.send(answer);
        });
        let redacted = |s: String| redact(&s, &used);
        let result = match rx.recv_timeout(timeout + Duration::from_secs(1)) {
            Ok(Ok(Ok(r))) => r,
            Ok(Ok(Err(e))) => {
                // The request was sent: whether the tool acted is unknown.
                return Err(ConnectorError::Unreachable(redacted(format!("upstream `{}`: {e}", route.upstream))));
            }
            Ok(Err(_)) | Err(_) => {
                return Err(ConnectorError::Unreachable(format!(
                    "upstream `{}` did not answer within {}s",
                    route.upstream,
                    timeout.as_secs()
                )));
            }
        };
        let body = match &result.structured_content {
            Some(v) => v.clone(),
            None => serde_json::json!({"content": serde_json::to_value(&result.content).unwrap_or(Value::Null)}),
        };
        let body = redact_value(&body, &used);
        if result.is_error == Some(true) {
            let text = body.to_string();
            return Err(ConnectorError::Rejected { status: 0, answer: text.chars().take(500).collect() });
        }
        let mut captured = Map::new();
        let mut missing = Vec::new();
        for (name, pointer) in &route.capture {
            match body.pointer(pointer) {
                Some(v) if !v.is_null() => {
                    captured.insert(name.clone(), v.clone());
                }
                _ => missing.push(name.clone()),
            }
        }
        let warning = (!missing.is_empty())
            .then(|| format!("the tool's result lacks {}, which the compensation needs", missing.join(", ")));
        Ok(ToolAnswer { status: 200, body, captured, warning })
    }

    /// Whether each upstream is connected.
    pub fn health(&self) -> Vec<(String, Result<(), ConnectorError>)> {
        let links = self.shared.links.read();
        self.shared
            .configs
            .keys()
            .map(|name| {
                let link = links.as_ref().ok().and_then(|l| l.get(name).map(|x| (x.peer.is_some(), x.error.clone())));
                let state = match link {
                    Some((true, _)) => Ok(()),
                    Some((false, why)) => Err(ConnectorError::NotSent(why.unwrap_or_else(|| "not connected".into()))),
                    None => Err(ConnectorError::NotSent("not connected yet".into())),
                };
                (format!("mcp:{name}"), state)
            })
            .collect()
    }
}

fn set_link(shared: &Shared, name: &str, f: impl FnOnce(&mut Link)) {
    if let Ok(mut links) = shared.links.write() {
        f(links.entry(name.to_string()).or_default());
    }
    shared.generation.fetch_add(1, Ordering::SeqCst);
}

/// Keeps a session to upstream `name` open: connect, list, follow list changes; on loss, say
/// so (its tools disappear) and connect again after a growing pause.
async fn keep_connected(shared: Arc<Shared>, name: String) {
    let mut pause = Duration::from_millis(250);
    loop {
        match session(&shared, &name).await {
            Ok(()) => pause = Duration::from_millis(250),
            Err(why) => {
                set_link(&shared, &name, |l| {
                    l.peer = None;
                    l.tools.clear();
                    l.error = Some(why);
                });
            }
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(30));
    }
}

/// One session, until it ends.
async fn session(shared: &Arc<Shared>, name: &str) -> Result<(), String> {
    use rmcp::ServiceExt;
    let config = shared.configs.get(name).ok_or("not configured")?;
    let mut used = Vec::new();
    let resolve = |v: &str, used: &mut Vec<String>| resolve_secrets(shared.secrets.as_ref(), v, used);
    let (tx, mut changed) = tokio::sync::mpsc::unbounded_channel();
    let listener = Listener { changed: tx };
    let service = if let Some(url) = &config.url {
        use rmcp::transport::StreamableHttpClientTransport;
        use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
        let mut cfg = StreamableHttpClientTransportConfig::with_uri(url.clone());
        if let Some(b) = &config.bearer {
            cfg = cfg.auth_header(resolve(b, &mut used).map_err(|e| e.to_string())?);
        }
        let mut headers = std::collections::HashMap::new();
        for (k, v) in &config.headers {
            let value = resolve(v, &mut used).map_err(|e| e.to_string())?;
            let k =
                ::http::HeaderName::try_from(k.as_str()).map_err(|_| format!("header `{k}` is not a header name"))?;
            let v = ::http::HeaderValue::try_from(value).map_err(|_| format!("header `{k}` has a bad value"))?;
            headers.insert(k, v);
        }
        let cfg = cfg.custom_headers(headers);
        // Never follow a redirect: it would carry the upstream's credentials to another
        // origin; the call fails instead.
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("the HTTP client cannot be built: {e}"))?;
        listener
            .serve(StreamableHttpClientTransport::with_client(client, cfg))
            .await
            .map_err(|e| redact(&e.to_string(), &used))?
    } else {
        use rmcp::transport::TokioChildProcess;
        let mut cmd = tokio::process::Command::new(&config.command[0]);
        cmd.args(&config.command[1..]).kill_on_drop(true).stderr(std::process::Stdio::null());
        for (k, v) in &config.env {
            cmd.env(k, resolve(v, &mut used).map_err(|e| e.to_string())?);
        }
        let transport =
            TokioChildProcess::new(cmd).map_err(|e| format!("cannot start `{}`: {e}", config.command[0]))?;
        listener.serve(transport).await.map_err(|e| redact(&e.to_string(), &used))?
    };
    let peer = service.peer().clone();
    let list = |peer: Peer<RoleClient>, used: Vec<String>| async move {
        let tools = peer.list_all_tools().await.map_err(|e| redact(&e.to_string(), &used))?;
        Ok::<Vec<Value>, String>(tools.into_iter().filter_map(|t| serde_json::to_value(t).ok()).collect())
    };
    let tools = list(peer.clone(), used.clone()).await?;
    set_link(shared, name, |l| {
        l.peer = Some(peer.clone());
        l.tools = tools;
        l.error = None;
        l.used = used.clone();
    });
    loop {
        tokio::select! {
            Some(()) = changed.recv() => {
                let tools = list(peer.clone(), used.clone()).await?;
                set_link(shared, name, |l| l.tools = tools);
            }
            () = tokio::time::sleep(Duration::from_millis(500)) => {
                if peer.is_transport_closed() {
                    return Err("the session ended".into());
                }
            }
        }
    }
}

/// Routes each call: to the upstream MCP tool it names, or to the HTTP connector.
#[derive(Debug)]
pub struct Routed {
    pub http: Option<Arc<dyn Connector>>,
    pub mcp: Arc<Upstreams>,
}

impl Connector for Routed {
    fn supports(&self, action: &str) -> bool {
        self.http.as_ref().is_some_and(|h| h.supports(action))
    }

    fn execute(&self, call: &Call) -> Result<ToolAnswer, ConnectorError> {
        match (&call.via, &self.http) {
            (Some(route), _) => self.mcp.call(route),
            (None, Some(http)) => http.execute(call),
            (None, None) => Err(ConnectorError::NotConfigured(call.action.clone())),
        }
    }

    fn health(&self) -> Vec<(String, Result<(), ConnectorError>)> {
        let mut all = self.http.as_ref().map(|h| h.health()).unwrap_or_default();
        all.extend(self.mcp.health());
        all
    }
}
