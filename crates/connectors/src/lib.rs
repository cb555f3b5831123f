//! Connectors: how an approved action reaches a tool. The only place that holds tool secrets.
//!
//! A bundle's `connectors.toml` names the tools (base URL, headers, timeout) and, per action
//! class, the HTTP call that performs it:
//!
//! ```toml
//! [tools.edr]
//! url = "http://127.0.0.1:8700"
//! headers = { "x-api-key" = "secret:LAB_EDR_KEY" }   # `secret:NAME`: resolved at call time
//! timeout = "10s"
//!
//! [actions."host.isolate"]
//! tool = "edr"
//! method = "POST"
//! path = "/edr/v1/hosts/{target.id}/contain"
//! body = { comment = "{params.reason} (lease {lease.id})" }
//! success = [200]                                  # default: any 2xx
//! capture = { containment_id = "/containment_id" } # JSON pointers into the answer
//!
//! [actions."host.release"]                         # the compensation of host.isolate
//! tool = "edr"
//! method = "POST"
//! path = "/edr/v1/hosts/{target.id}/lift_containment"
//! body = { containment_id = "{captured.containment_id}" }
//! ```
//!
//! Placeholders: `{target}`, `{target.kind}`, `{target.id}`, `{params.NAME}`,
//! `{captured.NAME}` (what the action being compensated captured), `{lease.id}`,
//! `{lease.token}` (a JWT tools can verify offline), `{task}`,
//! `{agent}`, `{action}`. A placeholder with no value fails the call before anything is sent.
//! Secrets are resolved only when sending, and every resolved secret is replaced by
//! `[redacted]` in whatever the connector returns — answers and errors alike.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Map, Value};

/// Why a connector could not do its job.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum ConnectorError {
    #[error("no connector is configured for action `{0}`")]
    NotConfigured(String),
    #[error("{0}")]
    Template(String),
    #[error("secret `{0}` is not available")]
    MissingSecret(String),
    #[error("the tool answered HTTP {status}: {answer}")]
    Rejected { status: u16, answer: String },
    /// The call may or may not have happened (timeout, connection lost mid-way).
    #[error("the tool was lost mid-call: {0}")]
    Unreachable(String),
    /// Nothing was sent: the tool's address did not resolve or refused the connection.
    #[error("the tool could not be reached: {0}")]
    NotSent(String),
    #[error("the tool's answer lacks `{0}`, which the compensation needs")]
    Capture(String),
}

/// Problems in a `connectors.toml`.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
#[error("connectors.toml: {0}")]
pub struct ConfigError(pub String);

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ToolConfig {
    url: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    timeout: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ActionConfig {
    tool: String,
    method: String,
    path: String,
    #[serde(default)]
    body: Option<Value>,
    #[serde(default)]
    success: Vec<u16>,
    #[serde(default)]
    capture: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    tools: BTreeMap<String, ToolConfig>,
    #[serde(default)]
    actions: BTreeMap<String, ActionConfig>,
}

/// Everything a connector gets to perform one action.
#[derive(Debug, Clone, Default)]
pub struct Call {
    pub action: String,
    pub target_kind: String,
    pub target_id: String,
    pub params: Map<String, Value>,
    /// Fields captured by the action being compensated (empty otherwise).
    pub captured: Map<String, Value>,
    pub lease_id: String,
    /// The lease's token (a JWT tools can verify offline).
    pub lease_token: String,
    pub task: String,
    pub agent: String,
}

/// What the tool answered, secrets redacted.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolAnswer {
    pub status: u16,
    pub body: Value,
    /// The `capture` fields, for the compensation.
    pub captured: Map<String, Value>,
    /// What went wrong after the tool accepted the call — a `capture` field missing from its
    /// answer. The tool acted all the same: the execution succeeded, with this warning.
    pub warning: Option<String>,
}

/// Where `secret:NAME` values come from.
pub trait Secrets: Send + Sync + fmt::Debug {
    fn get(&self, name: &str) -> Option<String>;
}

/// Secrets from the environment, then from files named after them in a directory.
#[derive(Debug, Clone, Default)]
pub struct EnvSecrets {
    /// Given by the embedding program (the demo hands the lab's keys over this way).
    pub given: BTreeMap<String, String>,
    pub dir: Option<std::path::PathBuf>,
}

impl Secrets for EnvSecrets {
    fn get(&self, name: &str) -> Option<String> {
        if let Some(v) = self.given.get(name) {
            return Some(v.clone());
        }
        if let Ok(v) = std::env::var(name) {
            return Some(v);
        }
        let dir = self.dir.as_ref()?;
        std::fs::read_to_string(dir.join(name)).ok().map(|s| s.trim_end().to_string())
    }
}

/// Performs actions against tools.
pub trait Connector: Send + Sync + fmt::Debug {
    /// Whether `action` can be performed at all (configured, its tool known).
    fn supports(&self, action: &str) -> bool;
    /// Performs the action.
    fn execute(&self, call: &Call) -> Result<ToolAnswer, ConnectorError>;
    /// Undoes an action through its `compensation` action, with what it captured in
    /// `call.captured`.
    fn compensate(&self, compensation: &str, call: &Call) -> Result<ToolAnswer, ConnectorError> {
        let mut c = call.clone();
        c.action = compensation.to_string();
        self.execute(&c)
    }
    /// Whether every tool answers.
    fn health(&self) -> Vec<(String, Result<(), ConnectorError>)>;
}

/// The HTTP connector, configured from `connectors.toml`.
pub struct HttpConnector {
    tools: BTreeMap<String, ToolConfig>,
    actions: BTreeMap<String, ActionConfig>,
    secrets: Box<dyn Secrets>,
    /// One HTTP client per tool: its connections are kept alive between calls.
    clients: BTreeMap<String, ureq::Agent>,
}

impl fmt::Debug for HttpConnector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpConnector")
            .field("tools", &self.tools.keys().collect::<Vec<_>>())
            .field("actions", &self.actions.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

fn placeholders(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        let Some(close) = rest[open..].find('}') else { break };
        out.push(&rest[open + 1..open + close]);
        rest = &rest[open + close + 1..];
    }
    out
}

fn strings(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => out.push(s.clone()),
        Value::Array(a) => a.iter().for_each(|x| strings(x, out)),
        Value::Object(o) => o.values().for_each(|x| strings(x, out)),
        _ => {}
    }
}

/// Connections kept open per tool between calls: enough for every execution thread under load
/// to reuse one instead of connecting (and resolving) again.
const POOL_PER_TOOL: usize = 64;

/// How long an idle connection is reused. Below the shortest keep-alive common among tool
/// servers (Node.js closes after 5 s), so a request is not written on a connection the tool has
/// just closed — which would leave a non-idempotent call's outcome `unknown`.
const POOL_IDLE_AGE: Duration = Duration::from_secs(4);

/// Resolves IP-literal hosts in place and hands names to ureq's resolver. ureq's own resolver
/// starts a thread for every lookup when a timeout is set, even for `127.0.0.1`: under load
/// that was hundreds of threads a second (each a fresh allocator heap and stack).
#[derive(Debug, Default)]
struct LiteralFirst(ureq::unversioned::resolver::DefaultResolver);

impl ureq::unversioned::resolver::Resolver for LiteralFirst {
    fn resolve(
        &self,
        uri: &ureq::http::Uri,
        config: &ureq::config::Config,
        timeout: ureq::unversioned::transport::NextTimeout,
    ) -> Result<ureq::unversioned::resolver::ResolvedSocketAddrs, ureq::Error> {
        if let Some(addr) = literal_addr(uri) {
            let mut out = self.empty();
            out.push(addr);
            return Ok(out);
        }
        self.0.resolve(uri, config, timeout)
    }
}

/// The socket address of a URI whose host is an IP address (`127.0.0.1`, `[::1]`), with its
/// port or the scheme's default.
fn literal_addr(uri: &ureq::http::Uri) -> Option<std::net::SocketAddr> {
    let host = uri.host()?;
    let ip: std::net::IpAddr = host.trim_start_matches('[').trim_end_matches(']').parse().ok()?;
    let port = uri.port_u16().or(match uri.scheme_str()? {
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    })?;
    Some(std::net::SocketAddr::new(ip, port))
}

/// Whether `e` happened before any byte of the request could reach the tool.
fn never_sent(e: &ureq::Error) -> bool {
    use ureq::Timeout;
    match e {
        ureq::Error::HostNotFound | ureq::Error::ConnectionFailed => true,
        ureq::Error::Timeout(Timeout::Resolve | Timeout::Connect) => true,
        ureq::Error::Io(io) => io.kind() == std::io::ErrorKind::ConnectionRefused,
        _ => false,
    }
}

fn parse_timeout(t: &str) -> Option<Duration> {
    let (n, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit())?);
    let n: u64 = n.parse().ok()?;
    match unit {
        "ms" => Some(Duration::from_millis(n)),
        "s" => Some(Duration::from_secs(n)),
        "m" => Some(Duration::from_secs(n * 60)),
        _ => None,
    }
}

impl HttpConnector {
    /// Reads and checks a `connectors.toml`; `tool_urls` override tools' base URLs (a lab on
    /// another port, a staging tool).
    pub fn from_toml(
        text: &str,
        tool_urls: &BTreeMap<String, String>,
        secrets: Box<dyn Secrets>,
    ) -> Result<Self, ConfigError> {
        let mut file: File = toml::from_str(text).map_err(|e| ConfigError(e.to_string()))?;
        for (name, url) in tool_urls {
            let tool =
                file.tools.get_mut(name).ok_or_else(|| ConfigError(format!("no tool `{name}` to point at `{url}`")))?;
            tool.url = url.clone();
        }
        for (name, tool) in &file.tools {
            if !(tool.url.starts_with("http://") || tool.url.starts_with("https://")) {
                return Err(ConfigError(format!("tool `{name}`: url must be http:// or https://")));
            }
            if let Some(t) = &tool.timeout
                && parse_timeout(t).is_none()
            {
                return Err(ConfigError(format!("tool `{name}`: timeout `{t}` must be like `500ms`, `10s`")));
            }
        }
        for (action, a) in &file.actions {
            if !file.tools.contains_key(&a.tool) {
                return Err(ConfigError(format!("action `{action}`: no tool `{}`", a.tool)));
            }
            if !["GET", "POST", "PUT", "PATCH", "DELETE"].contains(&a.method.as_str()) {
                return Err(ConfigError(format!("action `{action}`: method `{}` is not supported", a.method)));
            }
            let mut texts = vec![a.path.clone()];
            if let Some(b) = &a.body {
                strings(b, &mut texts);
            }
            for t in &texts {
                for p in placeholders(t) {
                    for alt in p.split('|').map(str::trim) {
                        let root = alt.split('.').next().unwrap_or_default();
                        let named = matches!(root, "params" | "captured")
                            && alt.split('.').nth(1).is_some_and(|n| !n.is_empty());
                        let plain = matches!(
                            alt,
                            "target"
                                | "target.kind"
                                | "target.id"
                                | "lease.id"
                                | "lease.token"
                                | "task"
                                | "agent"
                                | "action"
                        );
                        if !(named || plain) {
                            return Err(ConfigError(format!("action `{action}`: unknown placeholder `{{{p}}}`")));
                        }
                    }
                }
            }
            for (name, pointer) in &a.capture {
                if !pointer.starts_with('/') {
                    return Err(ConfigError(format!(
                        "action `{action}`: capture `{name}` must be a JSON pointer (`/…`)"
                    )));
                }
            }
        }
        let clients = file
            .tools
            .iter()
            .map(|(name, tool)| {
                let timeout = tool.timeout.as_deref().and_then(parse_timeout).unwrap_or(Duration::from_secs(10));
                let config = ureq::Agent::config_builder()
                    .http_status_as_error(false)
                    .timeout_global(Some(timeout))
                    .user_agent(concat!("warden/", env!("CARGO_PKG_VERSION")))
                    .max_idle_connections(POOL_PER_TOOL)
                    .max_idle_connections_per_host(POOL_PER_TOOL)
                    .max_idle_age(POOL_IDLE_AGE)
                    .build();
                let agent = ureq::Agent::with_parts(
                    config,
                    ureq::unversioned::transport::DefaultConnector::default(),
                    LiteralFirst::default(),
                );
                (name.clone(), agent)
            })
            .collect();
        Ok(HttpConnector { tools: file.tools, actions: file.actions, secrets, clients })
    }

    /// The action classes this connector performs.
    pub fn actions(&self) -> impl Iterator<Item = &str> {
        self.actions.keys().map(String::as_str)
    }

    /// Resolves every `secret:NAME` in a header value (`SSWS secret:IDP_KEY`).
    fn resolve_secret(&self, value: &str, used: &mut Vec<String>) -> Result<String, ConnectorError> {
        let mut out = String::new();
        let mut rest = value;
        while let Some(at) = rest.find("secret:") {
            out.push_str(&rest[..at]);
            let after = &rest[at + "secret:".len()..];
            let end = after.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(after.len());
            let name = &after[..end];
            let v = self.secrets.get(name).ok_or_else(|| ConnectorError::MissingSecret(name.to_string()))?;
            used.push(v.clone());
            out.push_str(&v);
            rest = &after[end..];
        }
        out.push_str(rest);
        Ok(out)
    }
}

/// The value of a placeholder; `a|b` is the first alternative that has one.
fn lookup(call: &Call, p: &str) -> Option<String> {
    p.split('|').find_map(|alt| lookup_one(call, alt.trim()))
}

fn lookup_one(call: &Call, p: &str) -> Option<String> {
    let text = |v: &Value| match v {
        Value::String(s) => Some(s.clone()),
        Value::Null => None,
        other => Some(other.to_string()),
    };
    match p {
        "target" => Some(format!("{}:{}", call.target_kind, call.target_id)),
        "target.kind" => Some(call.target_kind.clone()),
        "target.id" => Some(call.target_id.clone()),
        "lease.id" => Some(call.lease_id.clone()),
        "lease.token" => Some(call.lease_token.clone()).filter(|t| !t.is_empty()),
        "task" => Some(call.task.clone()),
        "agent" => Some(call.agent.clone()),
        "action" => Some(call.action.clone()),
        _ => {
            let (root, name) = p.split_once('.')?;
            match root {
                "params" => call.params.get(name).and_then(text),
                "captured" => call.captured.get(name).and_then(text),
                _ => None,
            }
        }
    }
}

fn render(text: &str, call: &Call, encode: bool) -> Result<String, ConnectorError> {
    let mut out = String::new();
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        let Some(close) = rest[open..].find('}') else { break };
        out.push_str(&rest[..open]);
        let p = &rest[open + 1..open + close];
        let v = lookup(call, p)
            .ok_or_else(|| ConnectorError::Template(format!("`{{{p}}}` has no value for action `{}`", call.action)))?;
        out.push_str(&if encode { encode_segment(&v) } else { v });
        rest = &rest[open + close + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

fn encode_segment(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~@".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn render_value(v: &Value, call: &Call) -> Result<Value, ConnectorError> {
    Ok(match v {
        Value::String(s) => Value::String(render(s, call, false)?),
        Value::Array(a) => Value::Array(a.iter().map(|x| render_value(x, call)).collect::<Result<_, _>>()?),
        Value::Object(o) => {
            Value::Object(o.iter().map(|(k, x)| Ok((k.clone(), render_value(x, call)?))).collect::<Result<_, _>>()?)
        }
        other => other.clone(),
    })
}

/// Replaces every secret in `text` with `[redacted]`.
fn redact(text: &str, secrets: &[String]) -> String {
    let mut out = text.to_string();
    for s in secrets.iter().filter(|s| !s.is_empty()) {
        out = out.replace(s.as_str(), "[redacted]");
    }
    out
}

fn redact_value(v: &Value, secrets: &[String]) -> Value {
    match v {
        Value::String(s) => Value::String(redact(s, secrets)),
        Value::Array(a) => Value::Array(a.iter().map(|x| redact_value(x, secrets)).collect()),
        Value::Object(o) => {
            Value::Object(o.iter().map(|(k, x)| (redact(k, secrets), redact_value(x, secrets))).collect())
        }
        other => other.clone(),
    }
}

impl Connector for HttpConnector {
    fn supports(&self, action: &str) -> bool {
        self.actions.contains_key(action)
    }

    fn execute(&self, call: &Call) -> Result<ToolAnswer, ConnectorError> {
        let a = self.actions.get(&call.action).ok_or_else(|| ConnectorError::NotConfigured(call.action.clone()))?;
        let tool = self.tools.get(&a.tool).ok_or_else(|| ConnectorError::NotConfigured(call.action.clone()))?;
        let url = format!("{}{}", tool.url.trim_end_matches('/'), render(&a.path, call, true)?);
        let body = a.body.as_ref().map(|b| render_value(b, call)).transpose()?;
        let mut used = Vec::new();
        let mut headers = Vec::new();
        for (name, value) in &tool.headers {
            headers.push((name.clone(), self.resolve_secret(value, &mut used)?));
        }
        let agent = self.clients.get(&a.tool).ok_or_else(|| ConnectorError::NotConfigured(call.action.clone()))?;
        let method: ureq::http::Method =
            a.method.parse().map_err(|_| ConnectorError::NotConfigured(call.action.clone()))?;
        let mut req = ureq::http::Request::builder().method(method).uri(&url);
        for (k, v) in &headers {
            req = req.header(k.as_str(), v.as_str());
        }
        let sent = match body {
            Some(b) => {
                let req = req
                    .header("content-type", "application/json")
                    .body(serde_json::to_vec(&b).unwrap_or_default())
                    .map_err(|e| ConnectorError::Template(redact(&e.to_string(), &used)))?;
                agent.run(req)
            }
            None => {
                let req = req.body(()).map_err(|e| ConnectorError::Template(redact(&e.to_string(), &used)))?;
                agent.run(req)
            }
        };
        let mut res = sent.map_err(|e| {
            let text = redact(&e.to_string(), &used);
            if never_sent(&e) { ConnectorError::NotSent(text) } else { ConnectorError::Unreachable(text) }
        })?;
        let status = res.status().as_u16();
        let text = res.body_mut().read_to_string().unwrap_or_default();
        let answer = redact_value(&serde_json::from_str(&text).unwrap_or(Value::String(text)), &used);
        let ok = if a.success.is_empty() { (200..300).contains(&status) } else { a.success.contains(&status) };
        if !ok {
            let shown = match &answer {
                Value::String(s) => s.chars().take(500).collect(),
                other => other.to_string().chars().take(500).collect(),
            };
            return Err(ConnectorError::Rejected { status, answer: shown });
        }
        // The tool has acted: a field missing from its answer is a warning, never a failure
        // (a `failed` execution would invite a retry of something that happened).
        let mut captured = Map::new();
        let mut missing = Vec::new();
        for (name, pointer) in &a.capture {
            match answer.pointer(pointer) {
                Some(v) => {
                    captured.insert(name.clone(), v.clone());
                }
                None => missing.push(ConnectorError::Capture(name.clone()).to_string()),
            }
        }
        let warning = (!missing.is_empty()).then(|| missing.join("; "));
        Ok(ToolAnswer { status, body: answer, captured, warning })
    }

    fn health(&self) -> Vec<(String, Result<(), ConnectorError>)> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(3)))
            .build()
            .into();
        self.tools
            .iter()
            .map(|(name, tool)| {
                let r = agent.get(&tool.url).call().map(|_| ()).map_err(|e| ConnectorError::Unreachable(e.to_string()));
                (name.clone(), r)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call() -> Call {
        let mut params = Map::new();
        params.insert("reason".into(), Value::String("beacon".into()));
        Call {
            action: "host.isolate".into(),
            target_kind: "host".into(),
            target_id: "web 42".into(),
            params,
            lease_id: "lease_1".into(),
            ..Call::default()
        }
    }

    #[test]
    fn ip_literal_hosts_resolve_in_place_and_names_do_not() {
        let addr = |u: &str| literal_addr(&u.parse().unwrap()).map(|a| a.to_string());
        assert_eq!(addr("http://127.0.0.1:8080/x").as_deref(), Some("127.0.0.1:8080"));
        assert_eq!(addr("https://10.0.0.7/api").as_deref(), Some("10.0.0.7:443"));
        assert_eq!(addr("http://[::1]:9000/").as_deref(), Some("[::1]:9000"));
        assert_eq!(addr("http://[::1]/").as_deref(), Some("[::1]:80"));
        assert_eq!(addr("http://edr.internal:8080/"), None, "names go to the system resolver");
        assert_eq!(addr("http://127.0.0.1.nip.io/"), None);
    }

    #[test]
    fn templates_fill_path_segments_encoded_and_bodies_verbatim() {
        assert_eq!(render("/h/{target.id}/x", &call(), true).unwrap(), "/h/web%2042/x");
        assert_eq!(render("{params.reason} ({lease.id})", &call(), false).unwrap(), "beacon (lease_1)");
        assert_eq!(render("{captured.id|target.id}", &call(), false).unwrap(), "web 42");
        let e = render("{captured.containment_id}", &call(), false).unwrap_err();
        assert!(matches!(e, ConnectorError::Template(m) if m.contains("captured.containment_id")));
    }

    #[test]
    fn bad_configs_are_refused_with_the_reason() {
        let s = || Box::new(EnvSecrets::default()) as Box<dyn Secrets>;
        let none = BTreeMap::new();
        let ok = "[tools.edr]\nurl = \"http://x\"\n[actions.\"a\"]\ntool = \"edr\"\nmethod = \"POST\"\npath = \"/{target.id}\"\n";
        assert!(HttpConnector::from_toml(ok, &none, s()).is_ok());
        for (bad, why) in [
            (ok.replace("tool = \"edr\"", "tool = \"fw\""), "no tool `fw`"),
            (ok.replace("POST", "BREW"), "method `BREW`"),
            (ok.replace("{target.id}", "{secret.key}"), "unknown placeholder `{secret.key}`"),
            (ok.replace("http://x", "ftp://x"), "http:// or https://"),
        ] {
            let e = HttpConnector::from_toml(&bad, &none, s()).unwrap_err();
            assert!(e.0.contains(why), "{e} should say {why}");
        }
    }

    #[test]
    fn secrets_are_redacted_everywhere() {
        let v = serde_json::json!({"echo": "key=s3cr3t", "s3cr3t": ["s3cr3t"]});
        assert_eq!(
            redact_value(&v, &["s3cr3t".into()]),
            serde_json::json!({"echo": "key=[redacted]", "[redacted]": ["[redacted]"]})
        );
    }
}
