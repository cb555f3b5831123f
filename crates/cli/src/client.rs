//! A small blocking client for a running Warden server (`--server URL`): JSON in and out,
//! the API's error body turned into the CLI's exit codes.

use std::path::Path;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::Failure;

/// The CLI's exit code for an API error status: refusals of the credential or the role are
/// "denied" (2), a bad request or a conflict is invalid input (3), the rest a failure (1).
pub fn failure_for(status: u16, code: &str, message: &str) -> Failure {
    let text = if code.is_empty() { format!("error: {message}") } else { format!("error: {message} ({code})") };
    match status {
        401 | 403 => {
            eprintln!("{text}");
            Failure::Denied
        }
        400 | 404 | 409 | 413 | 415 | 422 => Failure::Invalid(text),
        _ => Failure::Other(anyhow::anyhow!("{message} ({code}, HTTP {status})")),
    }
}

/// A server and the credential to call it with.
#[derive(Debug)]
pub struct Client {
    base: String,
    token: String,
    agent: ureq::Agent,
}

impl Client {
    /// `server` is `http(s)://host:port`; `ca_cert` a PEM file of CA certificates to trust
    /// (for a server whose certificate a private CA signed).
    pub fn new(server: &str, token: Option<&str>, ca_cert: Option<&Path>) -> Result<Self, Failure> {
        let base = server.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(Failure::Invalid(format!("error: --server `{server}` must be an http:// or https:// URL")));
        }
        let token = token
            .filter(|t| !t.trim().is_empty())
            .ok_or_else(|| Failure::Invalid("error: --server needs a token: --token or WARDEN_TOKEN".into()))?
            .trim()
            .to_string();
        let mut config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .user_agent(concat!("warden/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = ca_cert {
            let pem = std::fs::read(path)
                .map_err(|e| Failure::Invalid(format!("error: --ca-cert `{}`: {e}", path.display())))?;
            let certs = ureq::tls::parse_pem(&pem)
                .filter_map(|item| match item {
                    Ok(ureq::tls::PemItem::Certificate(c)) => Some(Ok(c)),
                    Ok(_) => None,
                    Err(e) => Some(Err(e)),
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| Failure::Invalid(format!("error: --ca-cert `{}`: {e}", path.display())))?;
            if certs.is_empty() {
                return Err(Failure::Invalid(format!("error: --ca-cert `{}` holds no certificate", path.display())));
            }
            let tls = ureq::tls::TlsConfig::builder().root_certs(ureq::tls::RootCerts::new_with_certs(&certs)).build();
            config = config.tls_config(tls);
        }
        Ok(Client { base, token, agent: config.build().into() })
    }

    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, Failure> {
        let res = self.agent.get(format!("{}{path}", self.base)).header("authorization", self.bearer()).call();
        self.answer(path, res)
    }

    /// Every item of a paged list: the first page at `path`, then each `Link: <…>; rel="next"`
    /// the server gives (at most `max_pages` pages).
    pub fn get_all(&self, path: &str, max_pages: usize) -> Result<Vec<Value>, Failure> {
        let mut items = Vec::new();
        let mut next = Some(path.to_string());
        for _ in 0..max_pages {
            let Some(p) = next.take() else { break };
            let res = self.agent.get(format!("{}{p}", self.base)).header("authorization", self.bearer()).call();
            if let Ok(r) = &res {
                next = r
                    .headers()
                    .get("link")
                    .and_then(|l| l.to_str().ok())
                    .filter(|l| l.ends_with("rel=\"next\""))
                    .and_then(|l| l.strip_prefix('<')?.split_once('>').map(|(u, _)| u.to_string()));
            }
            let page: Vec<Value> = self.answer(&p, res)?;
            items.extend(page);
        }
        Ok(items)
    }

    pub fn post<T: DeserializeOwned>(&self, path: &str, body: &Value) -> Result<T, Failure> {
        let res =
            self.agent.post(format!("{}{path}", self.base)).header("authorization", self.bearer()).send_json(body);
        self.answer(path, res)
    }

    fn bearer(&self) -> String {
        format!("Bearer {}", self.token)
    }

    fn answer<T: DeserializeOwned>(
        &self,
        path: &str,
        res: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<T, Failure> {
        let mut res = res.map_err(|e| Failure::Other(anyhow::anyhow!("cannot reach {}: {e}", self.base)))?;
        let status = res.status().as_u16();
        let body: Value = res.body_mut().read_json().map_err(|e| {
            Failure::Other(anyhow::anyhow!("{} {path} answered HTTP {status} without JSON: {e}", self.base))
        })?;
        if status >= 400 {
            let code = body["error"]["code"].as_str().unwrap_or_default();
            let message = body["error"]["message"].as_str().unwrap_or("the server refused the request");
            return Err(failure_for(status, code, message));
        }
        serde_json::from_value(body)
            .map_err(|e| Failure::Other(anyhow::anyhow!("{} {path} answered an unexpected shape: {e}", self.base)))
    }
}

/// Percent-encodes one path segment (a SPIFFE ID holds `:` and `/`).
pub fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spiffe_ids_become_one_segment() {
        assert_eq!(segment("spiffe://acme.example/soc/x-1"), "spiffe%3A%2F%2Facme.example%2Fsoc%2Fx-1");
    }

    #[test]
    fn statuses_map_to_exit_codes() {
        assert!(matches!(failure_for(403, "missing_role", "m"), Failure::Denied));
        assert!(matches!(failure_for(409, "agent_exists", "m"), Failure::Invalid(t) if t.contains("agent_exists")));
        assert!(matches!(failure_for(503, "store_unavailable", "m"), Failure::Other(_)));
    }
}
