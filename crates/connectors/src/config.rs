//! `connectors.toml`: tools (base URL, headers, timeout) and actions (method, path, body,
//! capture, success statuses), checked when loaded.

use super::*;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ToolConfig {
    pub(super) url: String,
    #[serde(default)]
    pub(super) headers: BTreeMap<String, String>,
    #[serde(default)]
    pub(super) timeout: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ActionConfig {
    pub(super) tool: String,
    pub(super) method: String,
    pub(super) path: String,
    #[serde(default)]
    pub(super) body: Option<Value>,
    #[serde(default)]
    pub(super) success: Vec<u16>,
    #[serde(default)]
    pub(super) capture: BTreeMap<String, String>,
    /// `false` when the call cannot carry the decided target (the bundle then grants the
    /// action at most level 2; `warden_core::binding`).
    #[serde(default)]
    #[allow(dead_code)]
    pub(super) target_bound: Option<bool>,
    /// Why it cannot.
    #[serde(default)]
    #[allow(dead_code)]
    pub(super) target_bound_reason: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct File {
    #[serde(default)]
    pub(super) tools: BTreeMap<String, ToolConfig>,
    #[serde(default)]
    pub(super) actions: BTreeMap<String, ActionConfig>,
}

pub(super) fn placeholders(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        let Some(close) = rest[open..].find('}') else { break };
        out.push(&rest[open + 1..open + close]);
        rest = &rest[open + close + 1..];
    }
    out
}

pub(super) fn strings(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => out.push(s.clone()),
        Value::Array(a) => a.iter().for_each(|x| strings(x, out)),
        Value::Object(o) => o.values().for_each(|x| strings(x, out)),
        _ => {}
    }
}

pub(super) fn parse_timeout(t: &str) -> Option<Duration> {
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
                // Never follow a redirect: it would resend the tool's credentials to wherever
                // the answer points, as another method; a 3xx is answered as it is.
                let config = ureq::Agent::config_builder()
                    .http_status_as_error(false)
                    .max_redirects(0)
                    .max_redirects_will_error(false)
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
    pub(super) fn resolve_secret(&self, value: &str, used: &mut Vec<String>) -> Result<String, ConnectorError> {
        resolve_secrets(self.secrets.as_ref(), value, used)
    }
}
