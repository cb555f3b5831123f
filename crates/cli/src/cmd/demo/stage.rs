//! What every act of the demo shares: the narrator ([`Demo`]: steps, checks, the summary's
//! rows), its HTTP client, and who the agents and the incident are. The incident (`incident`)
//! runs the other acts (`poison`, `mcp`); they import only this, never the incident or each
//! other, so the modules form no circle.

use anyhow::{Context as _, anyhow, bail};
use serde_json::{Value, json};

pub(super) const PHISH: &str = "spiffe://acme.example/soc/phish-triage";
pub(super) const EDR: &str = "spiffe://acme.example/soc/edr-responder";
pub(super) const IAM: &str = "spiffe://acme.example/soc/identity-responder";
pub(super) const ENRICH: &str = "spiffe://acme.example/soc/enrichment-bot";
pub(super) const TASK: &str = "INC-2041";

pub(super) struct Http {
    pub(super) base: String,
    pub(super) agent: ureq::Agent,
}

impl Http {
    pub(super) fn call(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<(u16, Value)> {
        let url = format!("{}{path}", self.base);
        let auth = format!("Bearer {token}");
        let res = match (method, body) {
            ("GET", _) => self.agent.get(&url).header("authorization", &auth).call(),
            (_, Some(b)) => self.agent.post(&url).header("authorization", &auth).send_json(b),
            (_, None) => self.agent.post(&url).header("authorization", &auth).send_empty(),
        };
        let mut res = res.with_context(|| format!("calling {method} {path}"))?;
        let status = res.status().as_u16();
        let v: Value = res.body_mut().read_json().unwrap_or(Value::Null);
        Ok((status, v))
    }

    pub(super) fn ok(&self, method: &str, path: &str, token: &str, body: Option<&Value>) -> anyhow::Result<Value> {
        let (status, v) = self.call(method, path, token, body)?;
        if !(200..300).contains(&status) {
            bail!("{method} {path} answered {status}: {v}");
        }
        Ok(v)
    }
}

/// One line of the summary table.
pub(super) struct Row {
    step: usize,
    actor: String,
    what: String,
    outcome: String,
    level: String,
    pub(super) state: String,
}

pub(super) struct Demo {
    pub(super) http: Http,
    pub(super) lab: String,
    pub(super) started: std::time::Instant,
    pub(super) rows: Vec<Row>,
    pub(super) step: usize,
}

pub(super) fn short(agent: &str) -> &str {
    agent.rsplit('/').next().unwrap_or(agent)
}

impl Row {
    pub(super) fn new(step: usize, actor: &str, what: &str, outcome: &str, level: &str, state: &str) -> Row {
        Row {
            step,
            actor: actor.into(),
            what: what.into(),
            outcome: outcome.into(),
            level: level.into(),
            state: state.into(),
        }
    }
}

impl Demo {
    pub(super) fn say(&self, text: &str) {
        let t = time::OffsetDateTime::now_utc();
        outln!("[{:02}:{:02}:{:02}.{:03}] {text}", t.hour(), t.minute(), t.second(), t.millisecond());
    }

    pub(super) fn detail(&self, text: &str) {
        outln!("               {text}");
    }

    pub(super) fn heading(&mut self, title: &str) {
        self.step += 1;
        outln!("");
        self.say(&format!("{}. {title}", self.step));
    }

    pub(super) fn lab_state(&self) -> anyhow::Result<Value> {
        let mut res = ureq::get(format!("{}/state", self.lab)).call().context("reading the lab's state")?;
        Ok(res.body_mut().read_json()?)
    }

    /// An agent's request in the incident's task; narrates the decision (and the execution).
    pub(super) fn request(
        &mut self,
        token: &str,
        agent: &str,
        action: &str,
        target: &str,
        confidence: f64,
        params: Value,
    ) -> anyhow::Result<Value> {
        self.request_in(TASK, token, agent, action, target, confidence, params)
    }

    /// An agent's request in `task`; narrates the decision (and the execution, when there is one).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn request_in(
        &mut self,
        task: &str,
        token: &str,
        agent: &str,
        action: &str,
        target: &str,
        confidence: f64,
        params: Value,
    ) -> anyhow::Result<Value> {
        let body = json!({"task": task, "action": action, "target": target, "confidence": confidence, "params": params,
            "rationale": format!("{} asks for {action}: indicators in the phishing wave point at {target}", short(agent)),
            "evidence": [{"kind": "email", "ref": "msg:wave-2041"}, {"kind": "siem", "ref": "ALRT-1001"}]});
        let a = self.http.ok("POST", "/v1/actions", token, Some(&body))?;
        let d = &a["decision"];
        self.say(&format!("{} → {action} on {target} (confidence {confidence:.2})", short(agent)));
        let policy = d["policies"][0].clone();
        self.detail(&format!(
            "{} at level {} (granted {}, band {}){}",
            d["outcome"].as_str().unwrap_or(""),
            d["effective_level"],
            d["granted_level"],
            d["band"].as_str().unwrap_or(""),
            if d["review"] == true { " · flagged for review" } else { "" }
        ));
        if policy.is_object() {
            self.detail(&format!(
                "policy {} (owner {})",
                policy["id"].as_str().unwrap_or(""),
                policy["owner"].as_str().unwrap_or("")
            ));
        }
        for c in d["caps"].as_array().into_iter().flatten() {
            self.detail(&format!("cap {}: {}", c["code"].as_str().unwrap_or(""), c["reason"].as_str().unwrap_or("")));
        }
        if let Some(ap) = d["approval"].as_object() {
            self.detail(&format!(
                "approval {} needs {} of {} by {}",
                ap["id"].as_str().unwrap_or(""),
                ap["quorum"],
                ap["roles"],
                ap["expires_at"].as_str().unwrap_or("")
            ));
        }
        self.narrate_execution(&a);
        self.rows.push(Row {
            step: self.step,
            actor: short(agent).to_string(),
            what: format!("{action} {target}"),
            outcome: d["outcome"].as_str().unwrap_or("").to_string(),
            level: d["effective_level"].to_string(),
            state: a["state"].as_str().unwrap_or("").to_string(),
        });
        Ok(a)
    }

    pub(super) fn narrate_execution(&self, a: &Value) {
        if let Some(x) = a["execution"].as_object() {
            self.detail(&format!(
                "executed through the connector: {} (HTTP {}) {} · lease {} {}",
                x["state"].as_str().unwrap_or(""),
                x["tool_status"],
                x["captured"],
                a["lease"]["id"].as_str().unwrap_or(""),
                a["lease"]["state"].as_str().unwrap_or("")
            ));
        }
    }

    pub(super) fn expect(&self, what: &str, ok: bool) -> anyhow::Result<()> {
        if ok {
            self.detail(&format!("✓ {what}"));
            Ok(())
        } else {
            Err(anyhow!("step {}: expected {what}", self.step))
        }
    }

    pub(super) fn vote(&mut self, token: &str, who: &str, approval: &str, reason: &str) -> anyhow::Result<Value> {
        let v = self.http.ok(
            "POST",
            &format!("/v1/approvals/{approval}/approve"),
            token,
            Some(&json!({"reason": reason})),
        )?;
        self.say(&format!(
            "{who} approves {approval}: \"{reason}\" → {} ({}/{} votes)",
            v["state"].as_str().unwrap_or(""),
            v["votes"].as_array().map_or(0, Vec::len),
            v["quorum"]
        ));
        Ok(v)
    }

    pub(super) fn get_action(&self, token: &str, id: &str) -> anyhow::Result<Value> {
        self.http.ok("GET", &format!("/v1/actions/{id}"), token, None)
    }
}

/// The summary table of the acts' rows.
pub(super) fn summary(demo: &Demo) {
    outln!("");
    outln!("Summary ({:.1} s)", demo.started.elapsed().as_secs_f64());
    outln!("| step | agent | request | decision | level | result |");
    outln!("|---|---|---|---|---|---|");
    for r in &demo.rows {
        outln!("| {} | {} | {} | {} | {} | {} |", r.step, r.actor, r.what, r.outcome, r.level, r.state);
    }
}
