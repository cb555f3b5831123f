//! Tool secrets: `secret:NAME` resolved at call time (environment or a directory), and
//! redacted from everything a connector returns.

use super::*;

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

/// Replaces every secret in `text` with `[redacted]`.
pub(super) fn redact(text: &str, secrets: &[String]) -> String {
    let mut out = text.to_string();
    for s in secrets.iter().filter(|s| !s.is_empty()) {
        out = out.replace(s.as_str(), "[redacted]");
    }
    out
}

pub(super) fn redact_value(v: &Value, secrets: &[String]) -> Value {
    match v {
        Value::String(s) => Value::String(redact(s, secrets)),
        Value::Array(a) => Value::Array(a.iter().map(|x| redact_value(x, secrets)).collect()),
        Value::Object(o) => {
            Value::Object(o.iter().map(|(k, x)| (redact(k, secrets), redact_value(x, secrets))).collect())
        }
        other => other.clone(),
    }
}

/// Resolves every `secret:NAME` in `value` (`SSWS secret:IDP_KEY`), noting each value used.
pub(super) fn resolve_secrets(
    secrets: &dyn Secrets,
    value: &str,
    used: &mut Vec<String>,
) -> Result<String, ConnectorError> {
    let mut out = String::new();
    let mut rest = value;
    while let Some(at) = rest.find("secret:") {
        out.push_str(&rest[..at]);
        let after = &rest[at + "secret:".len()..];
        let end = after.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(after.len());
        let name = &after[..end];
        let v = secrets.get(name).ok_or_else(|| ConnectorError::MissingSecret(name.to_string()))?;
        used.push(v.clone());
        out.push_str(&v);
        rest = &after[end..];
    }
    out.push_str(rest);
    Ok(out)
}
