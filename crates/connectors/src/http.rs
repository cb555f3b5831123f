//! The HTTP connector at call time: one pooled client per tool, the call, the answer
//! classified (sent or not, accepted or refused), secrets redacted, fields captured.

use super::*;

/// Connections kept open per tool between calls: enough for every execution thread under load
/// to reuse one instead of connecting (and resolving) again.
pub(super) const POOL_PER_TOOL: usize = 64;

/// How long an idle connection is reused. Below the shortest keep-alive common among tool
/// servers (Node.js closes after 5 s), so a request is not written on a connection the tool has
/// just closed — which would leave a non-idempotent call's outcome `unknown`.
pub(super) const POOL_IDLE_AGE: Duration = Duration::from_secs(4);

/// Whether `e` happened before any byte of the request could reach the tool.
pub(super) fn never_sent(e: &ureq::Error) -> bool {
    use ureq::Timeout;
    match e {
        ureq::Error::HostNotFound | ureq::Error::ConnectionFailed => true,
        ureq::Error::Timeout(Timeout::Resolve | Timeout::Connect) => true,
        ureq::Error::Io(io) => io.kind() == std::io::ErrorKind::ConnectionRefused,
        _ => false,
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
        if (300..400).contains(&status) {
            // Not followed (it could carry the credentials elsewhere) and not success: the
            // request reached the tool, so whether it acted is not known.
            let to = res.headers().get("location").and_then(|v| v.to_str().ok()).unwrap_or("nowhere");
            return Err(ConnectorError::Unreachable(redact(
                &format!("the tool answered {status}, a redirect to `{to}`; redirects are never followed"),
                &used,
            )));
        }
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
            .max_redirects(0)
            .max_redirects_will_error(false)
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
