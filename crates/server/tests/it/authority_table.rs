//! The authority table (issue 23): every operation of the API — read from the OpenAPI
//! document, so a route added without a row fails here — and every console form — read from
//! the console's router source — tried by every kind of principal, each against a resource of
//! its own. A principal the row does not name must be refused (401/403) and must change
//! nothing; one it names must get past authorization. The habit of Meilisearch's auth tests:
//! every route × every key.

use std::collections::BTreeSet;

use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::{EDR, Harness, PHISH, harness_lab};

/// The kinds of principal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    /// The edr-responder agent (owner of the fixtures' requests and tasks).
    Agent,
    /// Another agent (phish-triage).
    OtherAgent,
    /// A tool's credential (role `tool`).
    Tool,
    /// An integration (role `integration-siem`).
    Integration,
    /// A person with a role that grants nothing (`auditor`).
    Roleless,
    /// An approver (`soc-analyst`).
    Approver,
    /// The incident commander.
    Commander,
    /// `admin`.
    Admin,
}

use Who::*;

const EVERYONE: &[Who] = &[Agent, OtherAgent, Tool, Integration, Roleless, Approver, Commander, Admin];
const HUMANS: &[Who] = &[Tool, Integration, Roleless, Approver, Commander, Admin];
const AGENTS: &[Who] = &[Agent, OtherAgent];
/// The halting roles of the example bundle's authority.toml, and admin.
const HALTERS: &[Who] = &[Approver, Commander, Admin];
const ADMIN: &[Who] = &[Admin];

/// One operation: who may get past its authority check.
struct Row {
    method: &'static str,
    path: &'static str,
    allowed: &'static [Who],
}

const fn row(method: &'static str, path: &'static str, allowed: &'static [Who]) -> Row {
    Row { method, path, allowed }
}

/// Every `/v1` operation and who may perform it (docs/threat-model.md says why).
const API: &[Row] = &[
    row("GET", "/healthz", EVERYONE),
    row("GET", "/readyz", EVERYONE),
    row("GET", "/metrics", EVERYONE),
    row("GET", "/.well-known/jwks.json", EVERYONE),
    row("GET", "/openapi.json", EVERYONE),
    row("POST", "/v1/tasks", EVERYONE),
    row("GET", "/v1/tasks", HUMANS),
    row("GET", "/v1/tasks/{id}", EVERYONE),
    // The task was opened by the agent: it, or a human with a close role.
    row("POST", "/v1/tasks/{id}/close", &[Agent, Approver, Commander, Admin]),
    // `[powers] close_tasks` of the example's authority.toml, and admin; never an agent.
    row("POST", "/v1/tasks/{id}/taint/clear", &[Approver, Commander, Admin]),
    row("POST", "/v1/actions", AGENTS),
    row("GET", "/v1/actions", HUMANS),
    // The agent's own request: it, and humans.
    row("GET", "/v1/actions/{id}", &[Agent, Tool, Integration, Roleless, Approver, Commander, Admin]),
    row("POST", "/v1/decisions", EVERYONE),
    // Undoing host.isolate on a tier2 host: host.release's approvers and the incident
    // commander; admin alone is not enough.
    row("POST", "/v1/actions/{id}/rollback", &[Approver, Commander]),
    row("GET", "/v1/explain/{id}", HUMANS),
    row("GET", "/v1/approvals", HUMANS),
    row("GET", "/v1/approvals/{id}", HUMANS),
    // host.isolate on db-payments-01: soc-analyst or incident-commander.
    row("POST", "/v1/approvals/{id}/approve", &[Approver, Commander]),
    row("POST", "/v1/approvals/{id}/reject", &[Approver, Commander]),
    row("POST", "/v1/halt", HALTERS),
    row("POST", "/v1/resume", ADMIN),
    row("GET", "/v1/halts", HUMANS),
    row("GET", "/v1/leases/{id}", &[Agent, Tool, Integration, Roleless, Approver, Commander, Admin]),
    row("POST", "/v1/leases/{id}/revoke", HALTERS),
    row("POST", "/v1/leases/introspect", HUMANS),
    row("POST", "/v1/breakers/reset", ADMIN),
    row("POST", "/v1/policy/reload", ADMIN),
    row("GET", "/v1/agents", HUMANS),
    row("POST", "/v1/agents", ADMIN),
    row("GET", "/v1/agents/{id}", HUMANS),
    row("POST", "/v1/agents/{id}/suspend", ADMIN),
    row("POST", "/v1/agents/{id}/resume", ADMIN),
    row("POST", "/v1/agents/{id}/token", ADMIN),
    row("GET", "/v1/users", HUMANS),
    row("POST", "/v1/users", ADMIN),
    row("POST", "/v1/users/{id}/disable", ADMIN),
    row("POST", "/v1/users/{id}/enable", ADMIN),
    row("GET", "/v1/audit/checkpoint", HUMANS),
    row("GET", "/v1/audit/entries", HUMANS),
    row("GET", "/v1/audit/proof/inclusion", HUMANS),
    row("GET", "/v1/audit/proof/consistency", HUMANS),
    // Slack signs its callbacks; no bearer token of any kind gets in (see below).
    row("POST", "/v1/integrations/slack/interactions", &[]),
];

const NETWORK: &str = "spiffe://acme.example/soc/network-guard";

struct Ctx {
    h: Harness,
    n: std::cell::Cell<u32>,
}

impl Ctx {
    fn token(&self, who: Who) -> String {
        let fresh = |roles: &[&str]| {
            self.n.set(self.n.get() + 1);
            self.h.user(&format!("u{}", self.n.get()), roles)
        };
        match who {
            Agent => self.h.svid(EDR),
            OtherAgent => self.h.svid(PHISH),
            Tool => fresh(&["tool"]),
            Integration => fresh(&["integration-siem"]),
            Roleless => fresh(&["auditor"]),
            Approver => fresh(&["soc-analyst"]),
            Commander => fresh(&["incident-commander"]),
            Admin => self.h.admin.clone(),
        }
    }

    fn next(&self) -> u32 {
        self.n.set(self.n.get() + 1);
        self.n.get()
    }

    /// A task the agent opened, fresh.
    async fn task(&self) -> String {
        let id = format!("T-{}", self.next());
        let body = json!({"id": id, "title": "t", "trigger": {"source": "edr"}});
        let (s, t) = self.h.call("POST", "/v1/tasks", Some(&self.h.svid(EDR)), Some(body)).await;
        assert_eq!(s, StatusCode::CREATED, "{t}");
        id
    }

    /// The agent asks `action` on `target` in a fresh task; the answer.
    async fn ask(&self, target: &str) -> Value {
        let task = self.task().await;
        let body = json!({"task": task, "action": "host.isolate", "target": target, "confidence": 0.95,
            "params": {"reason": format!("r{}", self.next())}, "rationale": "c2", "evidence": [{"kind": "edr", "ref": "d"}]});
        let (s, a) = self.h.call("POST", "/v1/actions", Some(&self.h.svid(EDR)), Some(body)).await;
        assert_eq!(s, StatusCode::OK, "{a}");
        a
    }

    /// The path and body of `row` for `who`, on a resource of its own.
    async fn fixture(&self, row: &Row, who: Who) -> (String, Option<Value>) {
        let reason = json!({"reason": "table"});
        match (row.method, row.path) {
            ("POST", "/v1/tasks") => (
                row.path.into(),
                Some(json!({"id": format!("N-{}", self.next()), "title": "t", "trigger": {"source": "siem"}})),
            ),
            (_, "/v1/tasks/{id}") => (format!("/v1/tasks/{}", self.task().await), None),
            (_, "/v1/tasks/{id}/close") => (format!("/v1/tasks/{}/close", self.task().await), None),
            (_, "/v1/tasks/{id}/taint/clear") => {
                // A tainted task: the agent declared what it read.
                let task = self.task().await;
                let body = json!({"task": task, "action": "alert.enrich", "target": "alert:ALRT-1", "confidence": 0.9,
                    "params": {}, "rationale": "r", "evidence": [{"kind": "siem", "ref": "a"}],
                    "inputs": [{"label": "untrusted", "source": "a pasted chat log"}]});
                self.h.call("POST", "/v1/actions", Some(&self.h.svid(EDR)), Some(body)).await;
                let marks = json!([{"label": "untrusted", "source": "a pasted chat log", "by": "agent"}]);
                (format!("/v1/tasks/{task}/taint/clear"), Some(json!({"reason": "table", "marks": marks})))
            }
            ("POST", "/v1/actions") => {
                let task = self.task().await;
                let body = json!({"task": task, "action": "alert.enrich", "target": "alert:ALRT-1", "confidence": 0.9,
                    "params": {}, "rationale": "r", "evidence": [{"kind": "siem", "ref": "a"}]});
                (row.path.into(), Some(body))
            }
            ("GET", "/v1/actions/{id}") => {
                let a = self.ask("host:db-payments-01").await;
                (format!("/v1/actions/{}", a["id"].as_str().unwrap()), None)
            }
            (_, "/v1/decisions") => {
                let task = self.task().await;
                let mut body = json!({"task": task, "action": "host.isolate", "target": "host:web-02", "confidence": 0.9,
                    "params": {"reason": "x"}, "rationale": "r", "evidence": [{"kind": "edr", "ref": "d"}]});
                if !AGENTS.contains(&who) {
                    body["agent"] = json!(EDR);
                }
                (row.path.into(), Some(body))
            }
            (_, "/v1/actions/{id}/rollback") => {
                let a = self.ask("host:web-02").await;
                assert_eq!(a["state"], "succeeded", "{a}");
                (format!("/v1/actions/{}/rollback", a["id"].as_str().unwrap()), None)
            }
            (_, "/v1/explain/{id}") => {
                let a = self.ask("host:db-payments-01").await;
                (format!("/v1/explain/{}", a["id"].as_str().unwrap()), None)
            }
            (_, "/v1/approvals/{id}" | "/v1/approvals/{id}/approve" | "/v1/approvals/{id}/reject") => {
                let a = self.ask("host:db-payments-01").await;
                let id = a["decision"]["approval"]["id"].as_str().unwrap().to_string();
                (row.path.replace("{id}", &id), Some(reason).filter(|_| row.method == "POST"))
            }
            (_, "/v1/halt") => {
                (row.path.into(), Some(json!({"scope": "action", "id": "file.quarantine", "reason": "table"})))
            }
            (_, "/v1/resume") => {
                let halt = json!({"scope": "action", "id": "file.restore", "reason": "table"});
                let (s, _) = self.h.call("POST", "/v1/halt", Some(&self.h.admin), Some(halt)).await;
                assert_eq!(s, StatusCode::OK);
                (row.path.into(), Some(json!({"scope": "action", "id": "file.restore", "reason": "table"})))
            }
            (_, "/v1/leases/{id}" | "/v1/leases/{id}/revoke") => {
                let a = self.ask("host:web-02").await;
                let lease = a["lease"]["id"].as_str().unwrap().to_string();
                (row.path.replace("{id}", &lease), Some(reason).filter(|_| row.method == "POST"))
            }
            (_, "/v1/leases/introspect") => (row.path.into(), Some(json!({"token": "not-a-lease"}))),
            (_, "/v1/breakers/reset") => {
                (row.path.into(), Some(json!({"agent": NETWORK, "action": "ip.block", "reason": "table"})))
            }
            ("POST", "/v1/agents") => {
                let id = format!("spiffe://acme.example/soc/new-{}", self.next());
                (row.path.into(), Some(json!({"id": id, "owner": "team:x", "purpose": "p"})))
            }
            (_, "/v1/agents/{id}") => (format!("/v1/agents/{}", enc(NETWORK)), None),
            (_, "/v1/agents/{id}/suspend" | "/v1/agents/{id}/resume") => {
                (row.path.replace("{id}", &enc(NETWORK)), Some(reason))
            }
            (_, "/v1/agents/{id}/token") => (row.path.replace("{id}", &enc(NETWORK)), Some(json!({}))),
            ("POST", "/v1/users") => {
                (row.path.into(), Some(json!({"id": format!("new{}", self.next()), "roles": ["soc-analyst"]})))
            }
            (_, "/v1/users/{id}/disable" | "/v1/users/{id}/enable") => {
                let id = format!("someone{}", self.next());
                let body = json!({"id": id, "roles": ["soc-analyst"]});
                let (s, _) = self.h.call("POST", "/v1/users", Some(&self.h.admin), Some(body)).await;
                assert_eq!(s, StatusCode::CREATED);
                (row.path.replace("{id}", &id), Some(reason))
            }
            (_, "/v1/audit/proof/inclusion") => (format!("{}?index=0&size=1", row.path), None),
            (_, "/v1/audit/proof/consistency") => (format!("{}?old=1&new=1", row.path), None),
            (_, "/v1/integrations/slack/interactions") => (row.path.into(), Some(json!({}))),
            ("POST", _) => (row.path.into(), Some(json!({}))),
            _ => (row.path.into(), None),
        }
    }
}

fn enc(s: &str) -> String {
    s.replace(':', "%3A").replace('/', "%2F")
}

/// Every operation in the OpenAPI document has a row, and every row an operation.
#[test]
fn every_operation_has_a_row() {
    let doc = warden_server::openapi_document();
    let mut ops = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            if ["get", "post", "put", "patch", "delete"].contains(&method.as_str()) {
                ops.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    let rows: BTreeSet<(String, String)> = API.iter().map(|r| (r.method.to_string(), r.path.to_string())).collect();
    let missing: Vec<_> = ops.difference(&rows).collect();
    assert!(missing.is_empty(), "operations without a row in the authority table: {missing:?}");
    let stale: Vec<_> = rows.difference(&ops).collect();
    assert!(stale.is_empty(), "rows for operations that no longer exist: {stale:?}");
}

/// Each row × each kind of principal, against the real server and lab.
#[tokio::test]
async fn every_operation_refuses_every_principal_it_does_not_name() {
    let mut problems = Vec::new();
    for row in API {
        let (h, _url, _) = harness_lab();
        let ctx = Ctx { h, n: std::cell::Cell::new(0) };
        for &who in EVERYONE {
            let (path, body) = ctx.fixture(row, who).await;
            let token = ctx.token(who);
            let before = ctx.h.app.ledger().store().entries(0, 1_000_000).unwrap().len();
            let (status, answer) = ctx.h.call(row.method, &path, Some(&token), body).await;
            let refused = status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN;
            let allowed = row.allowed.contains(&who);
            if allowed && (refused || status.is_server_error()) {
                problems.push(format!("{} {} as {who:?}: {status} {answer}", row.method, row.path));
            }
            if !allowed {
                // The Slack callback is unsigned here: refused (401) or not configured (404).
                let slack = row.path.contains("/slack/") && status == StatusCode::NOT_FOUND;
                // Another agent's request or lease is not found for an agent: not even its
                // existence is told.
                let hidden = who == OtherAgent && row.method == "GET" && status == StatusCode::NOT_FOUND;
                if !refused && !slack && !hidden {
                    problems.push(format!("{} {} as {who:?} got past: {status} {answer}", row.method, row.path));
                }
                let after = ctx.h.app.ledger().store().entries(0, 1_000_000).unwrap().len();
                if after != before && row.method == "POST" {
                    problems.push(format!("{} {} as {who:?} was refused but recorded something", row.method, row.path));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{} problems:\n{}", problems.len(), problems.join("\n"));
}

/// The console's forms: each POST route of the console's router, by name.
const CONSOLE: &[(&str, &str, &[Who])] = &[
    ("/console/sign-in", "", HUMANS),
    ("/console/sign-out", "", HUMANS),
    ("/console/approvals/{id}/approve", "", &[Approver, Commander]),
    ("/console/approvals/{id}/reject", "", &[Approver, Commander]),
    ("/console/actions/{id}/rollback", "", &[Approver, Commander]),
    ("/console/agents/status", "halt", HALTERS),
    ("/console/agents/status", "suspend", ADMIN),
    ("/console/agents/status", "resume", ADMIN),
    ("/console/breakers/reset", "", ADMIN),
    ("/console/halt", "", HALTERS),
    ("/console/resume", "", ADMIN),
    ("/console/audit/verify", "", HUMANS),
];

/// The POST routes the console's router registers, read from its source.
fn console_posts() -> BTreeSet<String> {
    let src = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/console/mod.rs")).unwrap();
    let mut out = BTreeSet::new();
    for line in src.lines().map(str::trim).filter(|l| l.starts_with(".route(\"/console")) {
        let path = line.split('"').nth(1).unwrap().to_string();
        if line.contains("post(") {
            out.insert(path);
        }
    }
    out
}

#[test]
fn every_console_form_has_a_row() {
    let rows: BTreeSet<String> = CONSOLE.iter().map(|(p, _, _)| p.to_string()).collect();
    let forms = console_posts();
    assert!(!forms.is_empty());
    let missing: Vec<_> = forms.difference(&rows).collect();
    assert!(missing.is_empty(), "console forms without a row in the authority table: {missing:?}");
    let stale: Vec<_> = rows.difference(&forms).collect();
    assert!(stale.is_empty(), "rows for console forms that no longer exist: {stale:?}");
}

/// Each console form × each kind of human (agents cannot sign in at all: tested below).
#[tokio::test]
async fn every_console_form_refuses_every_person_it_does_not_name() {
    use crate::console::{csrf, get, post, sign_in};
    let mut problems = Vec::new();
    for &(path, variant, allowed) in CONSOLE {
        let (h, _url, _) = harness_lab();
        let ctx = Ctx { h, n: std::cell::Cell::new(0) };
        for &who in HUMANS {
            let token = ctx.token(who);
            if path == "/console/sign-in" {
                let p = post(&ctx.h, path, None, &[("token", &token)]).await;
                if p.status != StatusCode::SEE_OTHER {
                    problems.push(format!("{path} as {who:?}: {}", p.status));
                }
                continue;
            }
            let cookie = sign_in(&ctx.h, &token).await;
            let token_field = csrf(&get(&ctx.h, "/console/inbox", Some(&cookie)).await.body);
            let mut form: Vec<(&str, String)> = vec![("csrf", token_field), ("reason", "table".into())];
            let target = match (path, variant) {
                ("/console/approvals/{id}/approve" | "/console/approvals/{id}/reject", _) => {
                    let a = ctx.ask("host:db-payments-01").await;
                    path.replace("{id}", a["decision"]["approval"]["id"].as_str().unwrap())
                }
                ("/console/actions/{id}/rollback", _) => {
                    let a = ctx.ask("host:web-02").await;
                    path.replace("{id}", a["id"].as_str().unwrap())
                }
                ("/console/agents/status", to) => {
                    form.push(("agent", NETWORK.into()));
                    form.push(("to", to.into()));
                    path.to_string()
                }
                ("/console/breakers/reset", _) => {
                    form.push(("agent", NETWORK.into()));
                    form.push(("action", "ip.block".into()));
                    path.to_string()
                }
                ("/console/halt", _) => {
                    form.push(("scope", "all".into()));
                    form.push(("confirm", "yes".into()));
                    path.to_string()
                }
                _ => path.to_string(),
            };
            let before = ctx.h.app.ledger().store().entries(0, 1_000_000).unwrap().len();
            let fields: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let p = post(&ctx.h, &target, Some(&cookie), &fields).await;
            let refused = p.status == StatusCode::FORBIDDEN || p.status == StatusCode::UNAUTHORIZED;
            if allowed.contains(&who) {
                if refused || p.status.is_server_error() {
                    problems.push(format!("{path} {variant} as {who:?}: {}", p.status));
                }
            } else {
                if !refused {
                    problems.push(format!("{path} {variant} as {who:?} got past: {}", p.status));
                }
                let after = ctx.h.app.ledger().store().entries(0, 1_000_000).unwrap().len();
                if after != before {
                    problems.push(format!("{path} {variant} as {who:?} was refused but recorded something"));
                }
            }
            if who == Admin && path == "/console/halt" {
                // The stop of everything stands: later people's fixtures need none.
                let _ = ctx
                    .h
                    .call("POST", "/v1/resume", Some(&ctx.h.admin), Some(json!({"scope": "all", "reason": "r"})))
                    .await;
            }
        }
        // No agent signs in.
        let p = post(&ctx.h, "/console/sign-in", None, &[("token", &ctx.token(Agent))]).await;
        if p.status != StatusCode::FORBIDDEN {
            problems.push(format!("an agent signed in to the console: {}", p.status));
        }
    }
    assert!(problems.is_empty(), "{} problems:\n{}", problems.len(), problems.join("\n"));
}

/// `/mcp` speaks only to agents; the Slack callback takes no bearer token at all.
#[tokio::test]
async fn mcp_is_for_agents_and_slack_for_signed_callbacks() {
    let (h, _url, _) = harness_lab();
    let ctx = Ctx { h, n: std::cell::Cell::new(0) };
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-06-18",
        "capabilities": {}, "clientInfo": {"name": "table", "version": "1"}}});
    for &who in EVERYONE {
        let token = ctx.token(who);
        let req = axum::http::Request::builder()
            .method("POST")
            .uri("/mcp")
            .header("host", "localhost")
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(axum::body::Body::from(init.to_string()))
            .unwrap();
        let p = crate::console::send(&ctx.h, req).await;
        let refused = p.status == StatusCode::FORBIDDEN || p.status == StatusCode::UNAUTHORIZED;
        assert_eq!(refused, !AGENTS.contains(&who), "/mcp as {who:?}: {} {}", p.status, p.body);
        assert!(refused || p.status == StatusCode::OK, "/mcp as {who:?}: {} {}", p.status, p.body);
        let (status, _) =
            ctx.h.call("POST", "/v1/integrations/slack/interactions", Some(&token), Some(json!({}))).await;
        assert!(!status.is_success(), "the Slack callback as {who:?}: {status}");
    }
}
