//! Authority everywhere (issue 23, DESIGN §5, §6): every change to the world passes the one
//! authority check whichever path asks for it, and what runs is what was decided. Each test
//! tries one way around it that worked before, with values of its own.

use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::{EDR, Harness, PHISH, example_dir, harness, harness_full, harness_lab};

const IAM: &str = "spiffe://acme.example/soc/identity-responder";

fn lab_state(url: &str) -> Value {
    let mut res = ureq::get(format!("{url}/state")).call().unwrap();
    res.body_mut().read_json().unwrap()
}

/// How many requests reached the lab at `path` (`POST /edr/v1/hosts/web-02/contain`).
fn hits(url: &str, path: &str) -> u64 {
    lab_state(url)["calls"]["by_path"][path].as_u64().unwrap_or(0)
}

async fn open_task(h: &Harness, token: &str, id: &str, source: &str) -> Value {
    let body = json!({"id": id, "title": "t", "trigger": {"source": source, "severity": "critical"}});
    let (status, t) = h.call("POST", "/v1/tasks", Some(token), Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{t}");
    t
}

fn isolate(task: &str, target: &str) -> Value {
    json!({"task": task, "action": "host.isolate", "target": target, "confidence": 0.95,
           "params": {"reason": "beacon"}, "rationale": "C2 beacon", "evidence": [{"kind": "edr", "ref": "det:9"}]})
}

fn disable(task: &str, target: &str) -> Value {
    json!({"task": task, "action": "account.disable", "target": target, "confidence": 0.97,
           "params": {"reason": "token theft"}, "rationale": "token theft", "evidence": [{"kind": "idp", "ref": "risk:1"}, {"kind": "idp", "ref": "risk:2"}]})
}

async fn submit(h: &Harness, token: &str, body: Value) -> Value {
    let (status, a) = h.call("POST", "/v1/actions", Some(token), Some(body)).await;
    assert_eq!(status, StatusCode::OK, "{a}");
    a
}

fn approval_of(a: &Value) -> String {
    a["decision"]["approval"]["id"].as_str().unwrap_or_else(|| panic!("no approval in {a}")).to_string()
}

async fn approve(h: &Harness, token: &str, approval: &str) -> (StatusCode, Value) {
    h.call("POST", &format!("/v1/approvals/{approval}/approve"), Some(token), Some(json!({"reason": "seen"}))).await
}

#[tokio::test]
async fn a_tool_credential_cannot_halt_nor_undo_containments_through_the_halt() {
    let (h, url, _) = harness_lab();
    let agent = h.svid(EDR);
    let ana = h.user("ana", &["soc-analyst"]);
    open_task(&h, &ana, "INC-31", "edr").await;
    let done = submit(&h, &agent, isolate("INC-31", "host:web-02")).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    for (who, roles) in
        [("edr-tool", &["tool"][..]), ("auditor", &["auditor"][..]), ("siem-feed", &["integration"][..])]
    {
        let token = h.user(who, roles);
        let body = json!({"scope": "action", "id": "host.isolate", "reason": "x", "rollback": true});
        let (status, e) = h.call("POST", "/v1/halt", Some(&token), Some(body)).await;
        assert_eq!((status, e["error"]["code"].as_str()), (StatusCode::FORBIDDEN, Some("missing_role")), "{who}: {e}");
        let (status, e) =
            h.call("POST", &format!("/v1/actions/{}/rollback", done["id"].as_str().unwrap()), Some(&token), None).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{who}: {e}");
        let (status, e) = h.call("POST", "/v1/leases/lease_x/revoke", Some(&token), Some(json!({"reason": "x"}))).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{who} may not revoke leases either: {e}");
    }
    assert_eq!(hits(&url, "POST /edr/v1/hosts/web-02/lift_containment"), 0, "nothing was released");
    let (_, halts) = h.call("GET", "/v1/halts", Some(&ana), None).await;
    assert_eq!(halts.as_array().unwrap().len(), 0, "no halt was set: {halts}");
    // An analyst may halt and undo it: the analyst holds host.release's approver role.
    let body = json!({"scope": "action", "id": "host.isolate", "reason": "stop", "rollback": true});
    let (status, halted) = h.call("POST", "/v1/halt", Some(&ana), Some(body)).await;
    assert_eq!(status, StatusCode::OK, "{halted}");
    assert_eq!(halted["rolled_back"], json!([done["id"]]), "{halted}");
    assert_eq!(hits(&url, "POST /edr/v1/hosts/web-02/lift_containment"), 1);
}

/// A two-person `account.disable` on a privileged account: undoing it is `account.enable` on
/// the same account, which needs the same two IAM owners — never one analyst's click.
async fn two_person_disable(h: &Harness) -> (String, String, String) {
    let ana = h.user("ana", &["soc-analyst"]);
    let ivy = h.user("ivy", &["iam-owner"]);
    let ian = h.user("ian", &["iam-owner"]);
    open_task(h, &ana, "INC-32", "idp").await;
    let asked = submit(h, &h.svid(IAM), disable("INC-32", "account:adm-jdoe")).await;
    assert_eq!(asked["decision"]["approval"]["quorum"], 2, "{asked}");
    let a = approval_of(&asked);
    assert_eq!(approve(h, &ivy, &a).await.0, StatusCode::OK);
    let (status, v) = approve(h, &ian, &a).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    (asked["id"].as_str().unwrap().to_string(), ivy, ian)
}

#[tokio::test]
async fn one_analyst_cannot_undo_a_two_person_action() {
    let (h, url, _) = harness_lab();
    let (id, ivy, ian) = two_person_disable(&h).await;
    assert_eq!(hits(&url, "POST /idp/api/v1/users/adm-jdoe/lifecycle/deactivate"), 1);
    let rollback = format!("/v1/actions/{id}/rollback");
    // The analyst, the incident commander, even an admin: none holds the step-up role.
    for roles in [&["soc-analyst"][..], &["incident-commander"], &["admin"]] {
        let token = h.user(&format!("u-{}", roles[0]), roles);
        let (status, e) = h.call("POST", &rollback, Some(&token), None).await;
        assert_eq!((status, e["error"]["code"].as_str()), (StatusCode::FORBIDDEN, Some("missing_role")), "{e}");
        let body = json!({"scope": "agent", "id": IAM, "reason": "stop", "rollback": true});
        let (status, halted) = h.call("POST", "/v1/halt", Some(&token), Some(body)).await;
        if status == StatusCode::OK {
            assert_eq!(halted["rolled_back"], json!([]), "{halted}");
            assert_eq!(halted["rollback_left"][0]["execution"], json!(id), "the halt says what it left: {halted}");
            let (s, _) = h
                .call("POST", "/v1/resume", Some(&h.admin), Some(json!({"scope": "agent", "id": IAM, "reason": "r"})))
                .await;
            assert_eq!(s, StatusCode::OK);
        }
    }
    // One IAM owner asking makes it an approval with their one vote, not a click.
    let (status, pending) = h.call("POST", &rollback, Some(&ivy), None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{pending}");
    assert_eq!(
        (pending["quorum"].as_u64(), pending["votes"].as_array().map(Vec::len)),
        (Some(2), Some(1)),
        "{pending}"
    );
    assert_eq!(pending["undo"], json!(id));
    let (status, again) = h.call("POST", &rollback, Some(&ivy), None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "asking twice joins the same approval: {again}");
    assert_eq!(again["id"], pending["id"]);
    let undo = pending["id"].as_str().unwrap();
    let (status, e) = approve(&h, &ivy, undo).await;
    assert_eq!((status, e["error"]["code"].as_str()), (StatusCode::CONFLICT, Some("already_voted")), "{e}");
    assert_eq!(hits(&url, "POST /idp/api/v1/users/adm-jdoe/lifecycle/activate"), 0, "one person: nothing ran");
    let (status, done) = approve(&h, &ian, undo).await;
    assert_eq!(status, StatusCode::OK, "{done}");
    assert_eq!(hits(&url, "POST /idp/api/v1/users/adm-jdoe/lifecycle/activate"), 1, "two people: it ran once");
    let (_, action) = h.call("GET", &format!("/v1/actions/{id}"), Some(&ivy), None).await;
    assert_eq!(action["state"], "rolled_back", "{action}");
}

#[tokio::test]
async fn a_grant_revoked_by_a_reload_stops_an_approved_request() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&example_dir(), dir.path());
    let (url, keys) = crate::lab();
    let h = harness_full(
        Some(dir.path()),
        std::sync::Arc::new(warden_store::SystemClock),
        Default::default(),
        Some(crate::connector(&url, &keys)),
    );
    let ana = h.user("ana", &["soc-analyst"]);
    open_task(&h, &ana, "INC-33", "edr").await;
    let asked = submit(&h, &h.svid(EDR), isolate("INC-33", "host:db-payments-01")).await;
    assert_eq!(asked["state"], "pending_approval", "{asked}");
    // The grant drops to level 0: a dry run now says `deny`.
    let path = dir.path().join("agents/edr-responder.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let text = text
        .replace("action = \"host.isolate\"\nlevel = 3", "action = \"host.isolate\"\nlevel = 0")
        .replace("action = \"host.isolate\"\nlevel = 2", "action = \"host.isolate\"\nlevel = 0");
    std::fs::write(&path, text).unwrap();
    let (status, r) = h.call("POST", "/v1/policy/reload", Some(&h.admin), None).await;
    assert_eq!(status, StatusCode::OK, "{r}");
    let (status, v) = approve(&h, &ana, &approval_of(&asked)).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let (_, now) = h.call("GET", &format!("/v1/actions/{}", asked["id"].as_str().unwrap()), Some(&ana), None).await;
    assert_eq!(now["state"], "failed", "{now}");
    assert_eq!(hits(&url, "POST /edr/v1/hosts/db-payments-01/contain"), 0, "nothing reached the EDR");
    let entries = h.app.ledger().store().entries(0, 1_000_000).unwrap();
    let refused = entries
        .iter()
        .map(|e| serde_json::from_slice::<Value>(&e.bytes).unwrap())
        .any(|e| e["type"] == "execution.failed" && e["data"]["refused"] == "policy_changed");
    assert!(refused, "the refusal is audited");
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.path().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

#[tokio::test]
async fn an_agent_cannot_close_a_task_it_did_not_open() {
    let h = harness();
    let ana = h.user("ana", &["soc-analyst"]);
    let edr = h.svid(EDR);
    let phish = h.svid(PHISH);
    open_task(&h, &ana, "INC-34", "edr").await;
    let asked = submit(&h, &edr, isolate("INC-34", "host:db-payments-01")).await;
    assert_eq!(asked["state"], "pending_approval");
    let (status, e) = h.call("POST", "/v1/tasks/INC-34/close", Some(&phish), None).await;
    assert_eq!((status, e["error"]["code"].as_str()), (StatusCode::FORBIDDEN, Some("not_your_task")), "{e}");
    // Nor may the requesting agent: a human opened it.
    let (status, _) = h.call("POST", "/v1/tasks/INC-34/close", Some(&edr), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (_, a) = h.call("GET", &format!("/v1/approvals/{}", approval_of(&asked)), Some(&ana), None).await;
    assert_eq!(a["state"], "pending", "{a}");
    // A tool credential may not close it either.
    let tool = h.user("edr-tool", &["tool"]);
    let (status, _) = h.call("POST", "/v1/tasks/INC-34/close", Some(&tool), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // An agent's own task, with another agent waiting in it: a human must close it.
    open_task(&h, &edr, "INC-35", "edr").await;
    let theirs = submit(&h, &edr, isolate("INC-35", "host:db-payments-01")).await;
    assert_eq!(theirs["state"], "pending_approval");
    let (status, e) = h.call("POST", "/v1/tasks/INC-35/close", Some(&edr), None).await;
    assert_eq!(status, StatusCode::OK, "closing its own task with only its own work: {e}");
    let (_, a) = h.call("GET", &format!("/v1/approvals/{}", approval_of(&theirs)), Some(&ana), None).await;
    assert_eq!(a["state"], "cancelled");
    assert_eq!(a["track_record"]["withdrawn"], 1, "its own cancellation counts against it: {a}");
}

#[tokio::test]
async fn only_a_role_mapped_to_the_source_verifies_a_trigger() {
    let h = harness();
    let cases = [
        ("edr-tool", vec!["tool"], false),
        ("someone", vec!["auditor"], false),
        ("ana", vec!["soc-analyst"], true),
        ("gw", vec!["integration"], false),
    ];
    for (i, (who, roles, verified)) in cases.into_iter().enumerate() {
        let token = h.user(who, &roles);
        let t = open_task(&h, &token, &format!("INC-4{i}"), "email-gateway").await;
        assert_eq!(t["verified"], verified, "{who}: {t}");
        if verified {
            assert_eq!(t["vouched_by"], roles[0], "the record names the role that vouched");
        }
    }
    // An agent's own word never verifies.
    let t = open_task(&h, &h.svid(PHISH), "INC-49", "email-gateway").await;
    assert_eq!(t["verified"], false);
}

#[tokio::test]
async fn a_halt_that_expires_in_the_past_is_refused() {
    let h = harness();
    let past = json!({"scope": "all", "reason": "x", "expires_at": "2020-01-01T00:00:00Z"});
    let (status, e) = h.call("POST", "/v1/halt", Some(&h.admin), Some(past)).await;
    assert_eq!((status, e["error"]["code"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("invalid_halt")), "{e}");
    let (_, halts) = h.call("GET", "/v1/halts", Some(&h.admin), None).await;
    assert_eq!(halts, json!([]));
}

#[tokio::test]
async fn integers_beyond_2_53_are_refused_not_rounded() {
    let h = harness();
    let edr = h.svid(EDR);
    open_task(&h, &h.admin, "INC-36", "edr").await;
    for pid in [json!(9_007_199_254_740_993u64), json!(9_007_199_254_740_992u64), json!(-9_007_199_254_740_993i64)] {
        let body = json!({"task": "INC-36", "action": "process.kill", "target": "host:web-42", "params": {"pid": pid},
                          "confidence": 0.95, "rationale": "r", "evidence": [{"kind": "edr", "ref": "d"}]});
        let (status, e) = h.call("POST", "/v1/actions", Some(&edr), Some(body)).await;
        assert_eq!(
            (status, e["error"]["code"].as_str()),
            (StatusCode::UNPROCESSABLE_ENTITY, Some("invalid_request")),
            "{e}"
        );
    }
    let body = json!({"task": "INC-36", "action": "process.kill", "target": "host:web-42",
                      "params": {"pid": 9_007_199_254_740_991u64},
                      "confidence": 0.95, "rationale": "r", "evidence": [{"kind": "edr", "ref": "d"}]});
    let (status, a) = h.call("POST", "/v1/actions", Some(&edr), Some(body)).await;
    assert_eq!(status, StatusCode::OK, "2^53−1 is exact: {a}");
}

#[tokio::test]
async fn a_forbidden_asset_cannot_be_reached_by_another_spelling() {
    let h = harness();
    let iam = h.svid(IAM);
    open_task(&h, &h.admin, "INC-37", "idp").await;
    for target in ["account:breakglass-01", "account:BreakGlass-01", "account:BREAKGLASS-01"] {
        let a = submit(&h, &iam, disable("INC-37", target)).await;
        assert_eq!(a["decision"]["outcome"], "deny", "{target}: {a}");
        assert_eq!(a["decision"]["caps"][0]["code"], "forbidden", "{target}: {a}");
    }
    for target in
        ["account:breakglass\u{200b}-01", "account:breakglass-01\u{feff}", "account:break glass-01", "host:../web-02"]
    {
        let (status, e) = h.call("POST", "/v1/actions", Some(&iam), Some(disable("INC-37", target))).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{target:?}: {e}");
    }
}

#[tokio::test]
async fn a_message_cannot_be_quarantined_through_another_mailbox() {
    let (h, url, _) = harness_lab();
    let ana = h.user("ana", &["soc-analyst"]);
    let phish = h.svid(PHISH);
    open_task(&h, &ana, "INC-38", "email-gateway").await;
    let quarantine = |message: &str| {
        json!({"task": "INC-38", "action": "email.quarantine", "target": "mailbox:JDoe@acme.example",
               "params": {"message_id": message}, "confidence": 0.95, "rationale": "phish",
               "evidence": [{"kind": "email", "ref": "m"}]})
    };
    // The CFO's board minutes, asked for as if they were in jdoe's mailbox.
    let cfo = submit(&h, &phish, quarantine("board-minutes-7")).await;
    assert_eq!(cfo["decision"]["outcome"], "execute", "{cfo}");
    assert_eq!(cfo["state"], "failed", "the mail API scoped to the decided mailbox refuses it: {cfo}");
    let state = lab_state(&url);
    assert_eq!(state["mail"]["messages"]["board-minutes-7"], Value::Null, "nothing happened to the CFO's mail");
    // jdoe's own message goes, through jdoe's mailbox (the target is case-folded).
    let own = submit(&h, &phish, quarantine("wave-2041-a1")).await;
    assert_eq!(own["state"], "succeeded", "{own}");
    assert_eq!(hits(&url, "POST /mail/v1/mailboxes/jdoe@acme.example/messages/wave-2041-a1/quarantine"), 1);
}

#[tokio::test]
async fn an_admin_cannot_mint_an_agent_token_with_the_lease_audience() {
    let h = harness();
    let path = format!("/v1/agents/{}/token", EDR.replace(':', "%3A").replace('/', "%2F"));
    let (status, e) = h.call("POST", &path, Some(&h.admin), Some(json!({"audience": "warden-lease"}))).await;
    assert_eq!(
        (status, e["error"]["code"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("invalid_request")),
        "{e}"
    );
    let (status, _) = h.call("POST", &path, Some(&h.admin), Some(json!({}))).await;
    assert_eq!(status, StatusCode::OK);
}

/// Sends one JSON-RPC message to `/mcp` as `token`, in `session` if given: status, the
/// session id the answer names, body.
async fn mcp(h: &Harness, token: &str, session: Option<&str>, msg: Value) -> (StatusCode, Option<String>, String) {
    let mut req = axum::http::Request::builder()
        .method("POST")
        .uri("/mcp")
        .header("host", "localhost")
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream");
    if let Some(s) = session {
        req = req.header("mcp-session-id", s).header("mcp-protocol-version", "2025-06-18");
    }
    let p = crate::console::send(h, req.body(axum::body::Body::from(msg.to_string())).unwrap()).await;
    let id = p.headers.get("mcp-session-id").and_then(|v| v.to_str().ok()).map(str::to_string);
    (p.status, id, p.body)
}

#[tokio::test]
async fn an_mcp_session_answers_only_the_agent_that_opened_it() {
    let h = harness();
    let (edr, phish) = (h.svid(EDR), h.svid(PHISH));
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-06-18",
        "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}});
    let (status, session, body) = mcp(&h, &edr, None, init).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let session = session.expect("a stateful session");
    let done = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    assert!(mcp(&h, &edr, Some(&session), done).await.0.is_success());
    let list = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"});
    let (status, _, body) = mcp(&h, &phish, Some(&session), list.clone()).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "another agent in edr-responder's session: {body}");
    assert!(body.contains("not_your_agent"), "{body}");
    let (status, _, body) = mcp(&h, &edr, Some(&session), list).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains("host.isolate"), "its own tools: {body}");
}

/// A bundle whose `host.isolate` takes its `reason` as a secret: the audit log, explain and
/// the approval show only its commitment, and the digest is recomputed from the log alone.
#[tokio::test]
async fn secret_params_never_reach_the_log_in_clear_and_digests_stay_verifiable() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&example_dir(), dir.path());
    let actions = dir.path().join("actions.toml");
    let text = std::fs::read_to_string(&actions).unwrap();
    let marked = text.replacen(
        "params = [{ name = \"reason\", type = \"string\", required = true }]",
        "params = [{ name = \"reason\", type = \"string\", required = true, secret = true }]",
        1,
    );
    assert_ne!(marked, text, "host.isolate's reason is marked secret");
    std::fs::write(&actions, marked).unwrap();
    let h = harness_full(Some(dir.path()), std::sync::Arc::new(warden_store::SystemClock), Default::default(), None);
    let ana = h.user("ana", &["soc-analyst"]);
    open_task(&h, &ana, "INC-39", "edr").await;
    let secret = "hunter2-correct-horse-battery";
    let mut body = isolate("INC-39", "host:db-payments-01");
    body["params"]["reason"] = json!(secret);
    let asked = submit(&h, &h.svid(EDR), body).await;
    let entries: Vec<Value> = h
        .app
        .ledger()
        .store()
        .entries(0, 1_000_000)
        .unwrap()
        .iter()
        .map(|e| serde_json::from_slice(&e.bytes).unwrap())
        .collect();
    assert!(!entries.iter().any(|e| e.to_string().contains(secret)), "the secret is in the log");
    let requested = entries.iter().find(|e| e["type"] == "action.requested").unwrap();
    let logged = requested["data"]["params"].as_object().unwrap().clone();
    assert!(logged["reason"].as_str().unwrap().starts_with("[redacted] sha256:"), "{logged:?}");
    let digest =
        warden_core::request::action_digest(EDR, "INC-39", "host.isolate", "host:db-payments-01", &logged).unwrap();
    assert_eq!(json!(digest), asked["digest"], "the digest is recomputed from the log alone");
    let id = asked["id"].as_str().unwrap();
    let (_, explained) = h.call("GET", &format!("/v1/explain/{id}"), Some(&ana), None).await;
    assert!(!explained.to_string().contains(secret), "{explained}");
    let (_, approval) = h.call("GET", &format!("/v1/approvals/{}", approval_of(&asked)), Some(&ana), None).await;
    assert!(!approval.to_string().contains(secret), "{approval}");
}
