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

mod config;
mod http;
pub mod mcp;
mod resolver;
mod secrets;
mod template;

use config::*;
use http::*;
use resolver::*;
use secrets::*;
pub use secrets::{EnvSecrets, Secrets};
use template::*;

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
    /// Set when an upstream MCP tool performs the action (see [`mcp`]): its tool and the
    /// arguments rebuilt from the decided request.
    pub via: Option<mcp::Route>,
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
