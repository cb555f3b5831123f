//! An independent attempt to get more authority than the example bundle grants, through every
//! front door, as an agent, a `tool` credential, one person, an `integration` principal and an
//! unmapped OIDC user. Each test asserts the SECURE behaviour: a failing test is a hole.

use std::path::Path;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use http_body_util::BodyExt as _;
use serde_json::{Value, json};
use tower::ServiceExt as _;
use warden_server::notify::NotifyOptions;
use warden_store::SystemClock;

use crate::{EDR, Harness, PHISH, connector, example_dir, harness, harness_full, harness_lab, lab, read_bundle};

const IAM: &str = "spiffe://acme.example/soc/identity-responder";
const NET: &str = "spiffe://acme.example/soc/network-guard";

// ---------------------------------------------------------------------------------------------
// helpers

fn lab_state(url: &str) -> Value {
    let mut res = ureq::get(format!("{url}/state")).call().unwrap();
    res.body_mut().read_json().unwrap()
}

/// How many times the lab saw `METHOD /path`.
fn lab_calls(url: &str, method_path: &str) -> u64 {
    lab_state(url)["calls"]["by_path"][method_path].as_u64().unwrap_or(0)
}

fn lab_paths(url: &str) -> Vec<String> {
    lab_state(url)["calls"]["by_path"].as_object().map(|m| m.keys().cloned().collect()).unwrap_or_default()
}

async fn open_task(h: &Harness, token: &str, id: &str, source: &str, severity: &str) -> (StatusCode, Value) {
    let body = json!({"id": id, "title": "t", "trigger": {"source": source, "severity": severity, "alert_id": "a1"}});
    h.call("POST", "/v1/tasks", Some(token), Some(body)).await
}

async fn task(h: &Harness, token: &str, id: &str) {
    let (s, v) = open_task(h, token, id, "edr", "high").await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
}

fn isolate(task: &str, target: &str, confidence: f64) -> Value {
    json!({"task": task, "action": "host.isolate", "target": target, "confidence": confidence,
           "params": {"reason": "beacon"}, "rationale": "C2 beacon", "evidence": [{"kind": "edr", "ref": "det:1"}]})
}

fn disable(task: &str, target: &str) -> Value {
    json!({"task": task, "action": "account.disable", "target": target, "confidence": 0.97,
           "params": {"reason": "takeover"}, "rationale": "impossible travel",
           "evidence": [{"kind": "idp", "ref": "e1"}, {"kind": "idp", "ref": "e2"}]})
}

async fn act(h: &Harness, agent: &str, body: Value) -> Value {
    let (s, v) = h.call("POST", "/v1/actions", Some(&h.svid(agent)), Some(body)).await;
    assert!(s == StatusCode::OK || s == StatusCode::ACCEPTED, "{s} {v}");
    v
}

async fn approve(h: &Harness, token: &str, approval: &str) -> (StatusCode, Value) {
    h.call("POST", &format!("/v1/approvals/{approval}/approve"), Some(token), Some(json!({"reason": "ok"}))).await
}

fn code(v: &Value) -> String {
    v["error"]["code"].as_str().unwrap_or("").to_string()
}

/// An autonomous isolation of web-42 by the EDR responder, executed in the lab.
async fn isolated_web42(h: &Harness, task_id: &str) -> String {
    task(h, &h.admin, task_id).await;
    let v = act(h, EDR, isolate(task_id, "host:web-42", 0.95)).await;
    assert_eq!(v["state"], "succeeded", "{v}");
    v["id"].as_str().unwrap().to_string()
}

/// A two-IAM-owner `account.disable` of `adm-jdoe`, approved by `ivy` and `ian`, executed.
async fn disabled_adm_jdoe(h: &Harness, task_id: &str, ivy: &str, ian: &str) -> String {
    task(h, &h.admin, task_id).await;
    let v = act(h, IAM, disable(task_id, "account:adm-jdoe")).await;
    assert_eq!(v["state"], "pending_approval", "{v}");
    assert_eq!(v["decision"]["approval"]["quorum"], 2, "{v}");
    let apr = v["decision"]["approval"]["id"].as_str().unwrap().to_string();
    assert_eq!(approve(h, ivy, &apr).await.0, StatusCode::OK);
    assert_eq!(approve(h, ian, &apr).await.0, StatusCode::OK);
    let id = v["id"].as_str().unwrap().to_string();
    let (_, a) = h.call("GET", &format!("/v1/actions/{id}"), Some(&h.admin), None).await;
    assert_eq!(a["state"], "succeeded", "{a}");
    id
}

/// A copy of the example bundle in a temporary directory, changed by `edit`.
fn bundle_copy(edit: impl FnOnce(&Path)) -> tempfile::TempDir {
    fn copy(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            if p.is_dir() {
                copy(&p, &to.join(e.file_name()));
            } else {
                std::fs::copy(&p, to.join(e.file_name())).unwrap();
            }
        }
    }
    let dir = tempfile::tempdir().unwrap();
    copy(&example_dir(), dir.path());
    edit(dir.path());
    dir
}

/// A harness reading (and reloading) the bundle at `dir`, executing against a fresh lab.
fn harness_dir_lab(dir: &Path) -> (Harness, String) {
    let (url, keys) = lab();
    let h = harness_full(Some(dir), Arc::new(SystemClock), NotifyOptions::default(), Some(connector(&url, &keys)));
    (h, url)
}

pub(crate) fn oidc(sub: &str, groups: Value) -> String {
    use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let key = EncodingKey::from_ec_pem(&std::fs::read(crate::fixture("ec.pem")).unwrap()).unwrap();
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("idp-ec".into());
    let claims = json!({"sub": sub, "aud": "warden", "exp": now + 600, "iss": crate::IDP, "groups": groups});
    encode(&header, &claims, &key).unwrap()
}

// console ------------------------------------------------------------------------------------

pub(crate) struct Page {
    pub(crate) status: StatusCode,
    headers: HeaderMap,
    body: String,
}

async fn send(h: &Harness, req: Request<Body>) -> Page {
    let res = h.router.clone().oneshot(req).await.unwrap();
    let (status, headers) = (res.status(), res.headers().clone());
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    Page { status, headers, body: String::from_utf8_lossy(&bytes).into() }
}

pub(crate) async fn get_page(h: &Harness, path: &str, cookie: &str) -> Page {
    let req = Request::builder().uri(path).header("host", "warden.test").header("cookie", cookie);
    send(h, req.body(Body::empty()).unwrap()).await
}

async fn post_form(h: &Harness, path: &str, cookie: Option<&str>, form: &[(&str, &str)]) -> Page {
    let mut req = Request::builder()
        .method("POST")
        .uri(path)
        .header("host", "warden.test")
        .header("origin", "http://warden.test")
        .header("content-type", "application/x-www-form-urlencoded");
    if let Some(c) = cookie {
        req = req.header("cookie", c);
    }
    send(h, req.body(Body::from(serde_urlencoded::to_string(form).unwrap())).unwrap()).await
}

pub(crate) async fn sign_in(h: &Harness, token: &str) -> String {
    let p = post_form(h, "/console/sign-in", None, &[("token", token)]).await;
    assert_eq!(p.status, StatusCode::SEE_OTHER, "{}", p.body);
    p.headers["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_string()
}

/// The session's CSRF token, read from a page with a form on it.
async fn csrf_of(h: &Harness, cookie: &str) -> String {
    let page = get_page(h, "/console/agents", cookie).await;
    let at = page.body.find("name=\"csrf\" value=\"").expect("a form with a CSRF token") + 19;
    page.body[at..at + page.body[at..].find('"').unwrap()].to_string()
}

// mcp ----------------------------------------------------------------------------------------

pub(crate) async fn mcp(
    h: &Harness,
    token: &str,
    session: Option<&str>,
    body: Value,
) -> (StatusCode, Option<String>, Value) {
    let mut req = Request::builder()
        .method("POST")
        .uri("/mcp")
        .header("host", "127.0.0.1")
        .header("accept", "application/json, text/event-stream")
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {token}"));
    if let Some(s) = session {
        req = req.header("mcp-session-id", s).header("mcp-protocol-version", "2025-06-18");
    }
    let res = h.router.clone().oneshot(req.body(Body::from(body.to_string())).unwrap()).await.unwrap();
    let status = res.status();
    let sid = res.headers().get("mcp-session-id").and_then(|v| v.to_str().ok()).map(str::to_string);
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8_lossy(&bytes).to_string();
    let v = serde_json::from_str(&text).unwrap_or_else(|_| {
        // An SSE answer: the last `data:` line.
        text.lines()
            .rev()
            .filter_map(|l| l.strip_prefix("data:"))
            .find_map(|d| serde_json::from_str(d.trim()).ok())
            .unwrap_or(Value::String(text.clone()))
    });
    (status, sid, v)
}

/// An initialized MCP session for `token`: its id.
pub(crate) async fn mcp_session(h: &Harness, token: &str) -> String {
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "stranger", "version": "1"}}});
    let (status, sid, v) = mcp(h, token, None, init).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let sid = sid.expect("a session id");
    let (status, _, _) =
        mcp(h, token, Some(&sid), json!({"jsonrpc": "2.0", "method": "notifications/initialized"})).await;
    assert!(status.is_success(), "{status}");
    sid
}

async fn mcp_call(h: &Harness, token: &str, sid: &str, name: &str, args: Value) -> (StatusCode, Value) {
    let body = json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": name, "arguments": args}});
    let (s, _, v) = mcp(h, token, Some(sid), body).await;
    (s, v)
}

// ---------------------------------------------------------------------------------------------
// rollback / undo

/// A `tool` credential, an `integration` principal, `admin` alone and the agent's owner may not
/// undo the EDR responder's containment; an analyst may (sanity).
#[tokio::test]
async fn stranger_rollback_needs_the_compensations_role_not_tool_integration_admin_or_owner() {
    let (h, url, _) = harness_lab();
    let id = isolated_web42(&h, "INC-R1").await;
    let tool = h.user("edr-tool", &["tool"]);
    let siem = h.user("siem", &["integration-siem"]);
    let olga = h.user("olga", &["soc-analyst", "team:endpoint-response"]);
    let path = format!("/v1/actions/{id}/rollback");
    for (who, token, want) in [
        ("tool", &tool, "missing_role"),
        ("integration", &siem, "missing_role"),
        ("admin", &h.admin, "missing_role"),
        ("owner", &olga, "separation_of_duties"),
    ] {
        let (s, v) = h.call("POST", &path, Some(token), None).await;
        assert_eq!((s, code(&v).as_str()), (StatusCode::FORBIDDEN, want), "{who}: {v}");
    }
    let agent = h.svid(EDR);
    let (s, _) = h.call("POST", &path, Some(&agent), None).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "an agent undoing its own action");
    assert_eq!(lab_calls(&url, "POST /edr/v1/hosts/web-42/lift_containment"), 0);
    // The same people through the console's Roll back button.
    for token in [&tool, &siem, &h.admin, &olga] {
        let cookie = sign_in(&h, token).await;
        let csrf = csrf_of(&h, &cookie).await;
        let p = post_form(&h, &format!("/console/actions/{id}/rollback"), Some(&cookie), &[("csrf", &csrf)]).await;
        assert_eq!(p.status, StatusCode::FORBIDDEN, "{}", p.body);
    }
    assert_eq!(lab_calls(&url, "POST /edr/v1/hosts/web-42/lift_containment"), 0);
    // Sanity: an analyst may.
    let ana = h.user("ana", &["soc-analyst"]);
    let (s, v) = h.call("POST", &path, Some(&ana), None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(lab_calls(&url, "POST /edr/v1/hosts/web-42/lift_containment"), 1);
}

/// One IAM owner cannot undo the two-person disable of a domain admin alone, through any door:
/// the API (twice), a second vote on their own undo approval, the console, a halt with rollback.
#[tokio::test]
async fn stranger_one_iam_owner_cannot_undo_a_two_person_disable_through_any_door() {
    let (h, url, _) = harness_lab();
    let ivy = h.user("ivy", &["iam-owner"]);
    let ian = h.user("ian", &["iam-owner"]);
    let id = disabled_adm_jdoe(&h, "INC-R2", &ivy, &ian).await;
    let enable = "POST /idp/api/v1/users/adm-jdoe/lifecycle/activate";
    let path = format!("/v1/actions/{id}/rollback");
    let (s, undo) = h.call("POST", &path, Some(&ivy), None).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{undo}");
    let undo_id = undo["id"].as_str().unwrap().to_string();
    assert_eq!(undo["quorum"], 2);
    // Asking again joins the same approval; voting again is already_voted.
    let (s, again) = h.call("POST", &path, Some(&ivy), None).await;
    assert_eq!((s, again["id"].as_str()), (StatusCode::ACCEPTED, Some(undo_id.as_str())), "{again}");
    let (s, v) = approve(&h, &ivy, &undo_id).await;
    assert_eq!((s, code(&v).as_str()), (StatusCode::CONFLICT, "already_voted"), "{v}");
    // The console's Roll back.
    let cookie = sign_in(&h, &ivy).await;
    let csrf = csrf_of(&h, &cookie).await;
    let p = post_form(&h, &format!("/console/actions/{id}/rollback"), Some(&cookie), &[("csrf", &csrf)]).await;
    assert_eq!(p.status, StatusCode::SEE_OTHER);
    // The console's Approve on the undo approval.
    let p = post_form(&h, &format!("/console/approvals/{undo_id}/approve"), Some(&cookie), &[("csrf", &csrf)]).await;
    assert_eq!(p.status, StatusCode::CONFLICT, "{}", p.body);
    // A halt with rollback (ivy may halt).
    let body = json!({"scope": "agent", "id": IAM, "reason": "stop", "rollback": true});
    let (s, halted) = h.call("POST", "/v1/halt", Some(&ivy), Some(body)).await;
    assert_eq!(s, StatusCode::OK, "{halted}");
    assert!(halted["rolled_back"].as_array().unwrap().is_empty(), "{halted}");
    assert_eq!(lab_calls(&url, enable), 0, "one person undid a two-person action");
    // The second IAM owner completes it: it runs once.
    assert_eq!(approve(&h, &ian, &undo_id).await.0, StatusCode::OK);
    crate::eventually(|| (lab_calls(&url, enable) == 1).then_some(())).await;
}

/// The agent's owner (team:iam) may neither roll back nor vote on someone else's undo approval.
#[tokio::test]
async fn stranger_the_agents_owner_cannot_undo_nor_vote_on_the_undo() {
    let (h, _url, _) = harness_lab();
    let ivy = h.user("ivy", &["iam-owner"]);
    let ian = h.user("ian", &["iam-owner"]);
    let tom = h.user("tom", &["iam-owner", "team:iam"]);
    let id = disabled_adm_jdoe(&h, "INC-R3", &ivy, &ian).await;
    let (s, v) = h.call("POST", &format!("/v1/actions/{id}/rollback"), Some(&tom), None).await;
    assert_eq!((s, code(&v).as_str()), (StatusCode::FORBIDDEN, "separation_of_duties"), "{v}");
    let (s, undo) = h.call("POST", &format!("/v1/actions/{id}/rollback"), Some(&ivy), None).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{undo}");
    let (s, v) = approve(&h, &tom, undo["id"].as_str().unwrap()).await;
    assert_eq!((s, code(&v).as_str()), (StatusCode::FORBIDDEN, "separation_of_duties"), "{v}");
}

/// Retiring an agent from the bundle (a routine reload) must not turn the undo of its
/// two-person, privileged action into a one-person act.
#[tokio::test]
async fn stranger_undo_of_a_retired_agents_privileged_action_still_needs_two() {
    let dir = bundle_copy(|_| {});
    let (h, url) = harness_dir_lab(dir.path());
    let ivy = h.user("ivy", &["iam-owner"]);
    let ian = h.user("ian", &["iam-owner"]);
    let id = disabled_adm_jdoe(&h, "INC-R4", &ivy, &ian).await;
    // The identity responder is retired: its guardrail leaves the bundle.
    std::fs::remove_file(dir.path().join("agents/identity-responder.toml")).unwrap();
    let (s, v) = h.call("POST", "/v1/policy/reload", Some(&h.admin), None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    // One incident commander alone.
    let olga = h.user("olga", &["incident-commander"]);
    let (s, v) = h.call("POST", &format!("/v1/actions/{id}/rollback"), Some(&olga), None).await;
    assert_ne!(s, StatusCode::OK, "one person re-enabled a privileged tier0 account: {v}");
    assert_eq!(lab_calls(&url, "POST /idp/api/v1/users/adm-jdoe/lifecycle/activate"), 0);
}

/// A halt with rollback by someone who may halt but not undo leaves the undo alone.
#[tokio::test]
async fn stranger_halt_with_rollback_undoes_only_what_the_halter_may() {
    let (h, url, _) = harness_lab();
    let _id = isolated_web42(&h, "INC-R5").await;
    // network-engineer may halt (authority.toml) but is no approver of the EDR responder.
    let neo = h.user("neo", &["network-engineer"]);
    let body = json!({"scope": "all", "reason": "stop", "rollback": true});
    let (s, v) = h.call("POST", "/v1/halt", Some(&neo), Some(body)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(v["rolled_back"].as_array().unwrap().is_empty(), "{v}");
    assert_eq!(v["rollback_left"][0]["code"], "missing_role", "{v}");
    assert_eq!(lab_calls(&url, "POST /edr/v1/hosts/web-42/lift_containment"), 0);
    // And a tool or integration cannot halt at all.
    for roles in [["tool"], ["integration-siem"]] {
        let t = h.user(&format!("x-{}", roles[0]), &roles);
        let body = json!({"scope": "all", "reason": "stop", "rollback": true});
        let (s, v) = h.call("POST", "/v1/halt", Some(&t), Some(body)).await;
        assert_eq!((s, code(&v).as_str()), (StatusCode::FORBIDDEN, "missing_role"), "{v}");
    }
}

/// An agent that closes its own task after acting takes its action out of the reach of an
/// emergency stop with rollback.
#[tokio::test]
async fn stranger_an_agent_cannot_shield_its_action_from_a_halt_with_rollback_by_closing_its_task() {
    let (h, url, _) = harness_lab();
    let agent = h.svid(EDR);
    let (s, v) = open_task(&h, &agent, "INC-R6", "edr", "high").await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let v = act(&h, EDR, isolate("INC-R6", "host:web-42", 0.95)).await;
    assert_eq!(v["state"], "succeeded", "{v}");
    let (s, v) = h.call("POST", "/v1/tasks/INC-R6/close", Some(&agent), None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let ic = h.user("olga", &["incident-commander"]);
    let body = json!({"scope": "agent", "id": EDR, "reason": "the EDR responder went rogue", "rollback": true});
    let (s, v) = h.call("POST", "/v1/halt", Some(&ic), Some(body)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        lab_calls(&url, "POST /edr/v1/hosts/web-42/lift_containment"),
        1,
        "the rogue agent's containment survived the halt with rollback: {v}"
    );
}

// ---------------------------------------------------------------------------------------------
// approvals

async fn pending_db_isolation(h: &Harness, task_id: &str) -> String {
    task(h, &h.admin, task_id).await;
    let v = act(h, EDR, isolate(task_id, "host:db-payments-01", 0.95)).await;
    assert_eq!(v["state"], "pending_approval", "{v}");
    v["decision"]["approval"]["id"].as_str().unwrap().to_string()
}

/// Only a role the approval names votes: not tool, integration, admin, the owner, a role-less
/// OIDC person, an agent.
#[tokio::test]
async fn stranger_only_a_named_role_votes() {
    let h = harness();
    let apr = pending_db_isolation(&h, "INC-A1").await;
    let tool = h.user("edr-tool", &["tool"]);
    let siem = h.user("siem", &["integration-siem"]);
    let olga = h.user("olga", &["soc-analyst", "team:endpoint-response"]);
    let nobody = oidc("00u-nobody", json!([]));
    let iam = h.user("ivy", &["iam-owner"]);
    for (who, t, want) in [
        ("tool", tool.as_str(), "missing_role"),
        ("integration", siem.as_str(), "missing_role"),
        ("admin", h.admin.as_str(), "missing_role"),
        ("owner", olga.as_str(), "separation_of_duties"),
        ("oidc without roles", nobody.as_str(), "missing_role"),
        ("an unrelated approver role", iam.as_str(), "missing_role"),
    ] {
        let (s, v) = approve(&h, t, &apr).await;
        assert_eq!((s, code(&v).as_str()), (StatusCode::FORBIDDEN, want), "{who}: {v}");
        let (s, v) =
            h.call("POST", &format!("/v1/approvals/{apr}/reject"), Some(t), Some(json!({"reason": "no"}))).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{who} rejecting: {v}");
    }
    let (s, v) = approve(&h, &h.svid(EDR), &apr).await;
    assert_eq!((s, code(&v).as_str()), (StatusCode::FORBIDDEN, "agents_not_allowed"), "{v}");
}

/// An OIDC person whose IdP groups name the owner's team is the owner too.
#[tokio::test]
async fn stranger_an_unmapped_oidc_owner_is_still_the_owner() {
    let h = harness();
    let apr = pending_db_isolation(&h, "INC-A2").await;
    let olga = oidc("00u-olga", json!(["soc-analyst", "team:endpoint-response"]));
    let (s, v) = approve(&h, &olga, &apr).await;
    assert_eq!((s, code(&v).as_str()), (StatusCode::FORBIDDEN, "separation_of_duties"), "{v}");
}

/// One person, one vote: a mapped OIDC login is the same voter as the API token — also when the
/// console session was opened before the admin mapped the identity.
#[tokio::test]
async fn stranger_a_console_session_opened_before_the_mapping_is_not_a_second_voter() {
    let h = harness();
    task(&h, &h.admin, "INC-A3").await;
    let v = act(&h, IAM, disable("INC-A3", "account:adm-jdoe")).await;
    let apr = v["decision"]["approval"]["id"].as_str().unwrap().to_string();
    // Xavier signs in to the console with his IdP login (not yet mapped; his IdP says iam-owner).
    let id_token = oidc("00u-xavier", json!(["iam-owner"]));
    let cookie = sign_in(&h, &id_token).await;
    // The admin onboards him: a Warden user with his OIDC identity mapped.
    let body = json!({"id": "xavier", "roles": ["iam-owner"], "oidc": [format!("{}#00u-xavier", crate::IDP)]});
    let (s, added) = h.call("POST", "/v1/users", Some(&h.admin), Some(body)).await;
    assert_eq!(s, StatusCode::CREATED, "{added}");
    let api = added["token"].as_str().unwrap().to_string();
    // He approves with his API token ...
    assert_eq!(approve(&h, &api, &apr).await.0, StatusCode::OK);
    // ... and again from the console session he already had.
    let csrf = csrf_of(&h, &cookie).await;
    let _ = post_form(&h, &format!("/console/approvals/{apr}/approve"), Some(&cookie), &[("csrf", &csrf)]).await;
    let (_, a) = h.call("GET", &format!("/v1/approvals/{apr}"), Some(&h.admin), None).await;
    assert_eq!(a["state"], "pending", "one person met a two-person quorum: {a}");
}

/// `admin` is not an approver, and must not become two approvers by registering users.
/// Known, not closed (docs/threat-model.md): user administration is admin's, and two
/// identities an admin made are two voters; the log shows `user.added` before their votes.
#[tokio::test]
#[ignore = "known limit (docs/threat-model.md): an admin who adds users can vote through them"]
async fn stranger_one_admin_cannot_meet_a_two_person_quorum_with_users_of_their_own() {
    let (h, url, _) = harness_lab();
    task(&h, &h.admin, "INC-A4").await;
    let v = act(&h, IAM, disable("INC-A4", "account:adm-jdoe")).await;
    let apr = v["decision"]["approval"]["id"].as_str().unwrap().to_string();
    let mut puppets = Vec::new();
    for name in ["sock-1", "sock-2"] {
        let (s, added) =
            h.call("POST", "/v1/users", Some(&h.admin), Some(json!({"id": name, "roles": ["iam-owner"]}))).await;
        assert_eq!(s, StatusCode::CREATED);
        puppets.push(added["token"].as_str().unwrap().to_string());
    }
    for p in &puppets {
        let _ = approve(&h, p, &apr).await;
    }
    assert_eq!(
        lab_calls(&url, "POST /idp/api/v1/users/adm-jdoe/lifecycle/deactivate"),
        0,
        "one admin disabled a domain admin that needs two IAM owners"
    );
}

/// A guardrail cannot make `tool` (a tool's credential) or `admin` an approver: "tool never
/// holds a power, the bundle does not load" and "admin is not an approver role".
#[tokio::test]
async fn stranger_a_guardrail_naming_tool_or_admin_as_approver_does_not_load() {
    for role in ["tool", "admin"] {
        let dir = bundle_copy(|d| {
            let p = d.join("agents/edr-responder.toml");
            let t = std::fs::read_to_string(&p).unwrap();
            let t = t.replace(
                "approver_roles = [\"soc-analyst\", \"incident-commander\"]",
                &format!("approver_roles = [\"{role}\"]"),
            );
            std::fs::write(&p, t).unwrap();
        });
        let loaded = warden_core::Bundle::load(&read_bundle(dir.path()));
        if loaded.is_ok() {
            // It loads: show what it means.
            let h = crate::harness_from(Some(dir.path()));
            let apr = pending_db_isolation(&h, "INC-A5").await;
            let t = h.user("edr-tool", &[role]);
            let token = if role == "admin" { h.admin.clone() } else { t };
            let (s, v) = approve(&h, &token, &apr).await;
            panic!("a bundle naming `{role}` as an approver loaded; its vote: {s} {v}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// tasks

#[tokio::test]
async fn stranger_an_agent_closes_only_its_own_task() {
    let h = harness();
    let ana = h.user("ana", &["soc-analyst"]);
    let phish = h.svid(PHISH);
    let edr = h.svid(EDR);
    assert_eq!(open_task(&h, &phish, "INC-T1", "phish-report", "low").await.0, StatusCode::CREATED);
    assert_eq!(open_task(&h, &ana, "INC-T2", "siem", "high").await.0, StatusCode::CREATED);
    for t in ["INC-T1", "INC-T2"] {
        let (s, v) = h.call("POST", &format!("/v1/tasks/{t}/close"), Some(&edr), None).await;
        assert_eq!((s, code(&v).as_str()), (StatusCode::FORBIDDEN, "not_your_task"), "{t}: {v}");
    }
    // Nor through MCP (no such tool), nor a tool or integration credential.
    let tool = h.user("edr-tool", &["tool"]);
    let siem = h.user("siem", &["integration-siem"]);
    for token in [&tool, &siem] {
        let (s, v) = h.call("POST", "/v1/tasks/INC-T2/close", Some(token), None).await;
        assert_eq!((s, code(&v).as_str()), (StatusCode::FORBIDDEN, "missing_role"), "{v}");
    }
    let sid = mcp_session(&h, &edr).await;
    let (_, v) = mcp_call(&h, &edr, &sid, "warden.close_task", json!({"id": "INC-T1"})).await;
    assert!(v.to_string().contains("no tool") || v["error"].is_object(), "{v}");
    let (_, t) = h.call("GET", "/v1/tasks/INC-T1", Some(&ana), None).await;
    assert_eq!(t["state"], "open");
}

/// An agent may not close a task another agent waits in — and no other agent can wait in an
/// agent's own task at all: it is that agent's alone.
#[tokio::test]
async fn stranger_an_agent_cannot_close_its_task_while_another_agent_waits_in_it() {
    let h = harness();
    let phish = h.svid(PHISH);
    assert_eq!(open_task(&h, &phish, "INC-T3", "phish-report", "low").await.0, StatusCode::CREATED);
    let v = act(&h, EDR, isolate("INC-T3", "host:db-payments-01", 0.95)).await;
    assert_eq!(
        (v["state"].as_str(), v["decision"]["caps"][0]["code"].as_str()),
        (Some("denied"), Some("out_of_scope")),
        "{v}"
    );
    // In a task a person without a close role opened, the opener's close stops no one's work.
    let tool = h.user("edr-tool", &["tool"]);
    assert_eq!(open_task(&h, &tool, "INC-T3b", "edr", "low").await.0, StatusCode::CREATED);
    let v = act(&h, EDR, isolate("INC-T3b", "host:db-payments-01", 0.95)).await;
    assert_eq!(v["state"], "pending_approval", "{v}");
    let (s, v) = h.call("POST", "/v1/tasks/INC-T3b/close", Some(&tool), None).await;
    assert_eq!((s, code(&v).as_str()), (StatusCode::CONFLICT, "task_shared"), "{v}");
}

/// Only a role mapped to the source verifies a trigger: not an agent (API or MCP), a tool, an
/// integration for another source, or an OIDC person without a mapped role.
#[tokio::test]
async fn stranger_only_a_mapped_role_vouches_for_a_trigger() {
    let h = harness_full(None, Arc::new(SystemClock), NotifyOptions::default(), None);
    let tool = h.user("edr-tool", &["tool"]);
    let siem = h.user("siem", &["integration-siem"]);
    let gw = h.user("gw", &["integration-email-gateway"]);
    let nobody = oidc("00u-nobody", json!(["team:web"]));
    let phish = h.svid(PHISH);
    let cases = [
        ("agent", phish.as_str(), "siem", false),
        ("tool", tool.as_str(), "siem", false),
        ("siem for phish-report", siem.as_str(), "phish-report", false),
        ("siem for email-gateway", siem.as_str(), "email-gateway", false),
        ("gateway for siem", gw.as_str(), "siem", false),
        ("oidc without a mapped role", nobody.as_str(), "siem", false),
        ("siem for SIEM", siem.as_str(), "SIEM", false),
        ("siem for siem (sanity)", siem.as_str(), "siem", true),
    ];
    for (i, (who, token, source, verified)) in cases.iter().enumerate() {
        let (s, v) = open_task(&h, token, &format!("INC-V{i}"), source, "critical").await;
        assert_eq!(s, StatusCode::CREATED, "{who}: {v}");
        assert_eq!(v["verified"], *verified, "{who}: {v}");
    }
    // MCP's own open-task tool.
    let sid = mcp_session(&h, &phish).await;
    let (_, v) = mcp_call(
        &h,
        &phish,
        &sid,
        "warden.open_task",
        json!({"id": "INC-VM", "title": "t", "source": "siem", "severity": "critical"}),
    )
    .await;
    assert!(v.to_string().contains("INC-VM"), "{v}");
    let (_, t) = h.call("GET", "/v1/tasks/INC-VM", Some(&h.admin), None).await;
    assert_eq!(t["verified"], false, "{t}");
}

/// A task id is taken once: nobody re-opens (and re-verifies or re-asserts) someone's task.
#[tokio::test]
async fn stranger_task_ids_are_never_reused() {
    let h = harness();
    let ana = h.user("ana", &["soc-analyst"]);
    let phish = h.svid(PHISH);
    assert_eq!(open_task(&h, &ana, "INC-U1", "siem", "low").await.0, StatusCode::CREATED);
    let (s, v) = open_task(&h, &phish, "INC-U1", "siem", "critical").await;
    assert_eq!((s, code(&v).as_str()), (StatusCode::CONFLICT, "task_exists"), "{v}");
    assert_eq!(h.call("POST", "/v1/tasks/INC-U1/close", Some(&ana), None).await.0, StatusCode::OK);
    let (s, _) = open_task(&h, &ana, "INC-U1", "siem", "critical").await;
    assert_eq!(s, StatusCode::CONFLICT);
}

/// An agent picks a human's verified critical task it has nothing to do with, to unlock the
/// level-4 Cedar permit that trusts only "a trusted party said the task is critical".
#[tokio::test]
async fn stranger_an_agent_cannot_borrow_a_verified_task_to_raise_its_autonomy() {
    let h = harness();
    let ana = h.user("ana", &["soc-analyst"]);
    // The analyst's incident: the SIEM's critical alert on the payments DB, given to the EDR
    // responder (a task's opener names the agents that may act in it).
    let body = json!({"id": "INC-B1", "title": "t", "agents": [EDR],
                      "trigger": {"source": "siem", "severity": "critical"}});
    let (s, t) = h.call("POST", "/v1/tasks", Some(&ana), Some(body)).await;
    assert_eq!(s, StatusCode::CREATED, "{t}");
    assert_eq!(t["verified"], true);
    // The phishing agent's own task for the same kind of work.
    let phish = h.svid(PHISH);
    let (_, own) = open_task(&h, &phish, "INC-B2", "siem", "critical").await;
    assert_eq!(own["verified"], false);
    let ticket = |task: &str| {
        json!({"task": task, "action": "ticket.create", "target": "ticket:NEW-1", "confidence": 0.95,
               "params": {"title": "x"}, "rationale": "r", "evidence": [{"kind": "a", "ref": "1"}]})
    };
    let own = act(&h, PHISH, ticket("INC-B2")).await;
    let borrowed = act(&h, PHISH, ticket("INC-B1")).await;
    assert_eq!(
        borrowed["decision"]["outcome"], own["decision"]["outcome"],
        "citing someone else's verified task raised the agent's autonomy: own {} vs borrowed {}",
        own["decision"], borrowed["decision"]
    );
    assert_eq!(borrowed["decision"]["caps"][0]["code"], "out_of_scope", "{borrowed}");
    // Nor may another agent act in an agent's own task.
    let in_theirs = act(&h, EDR, isolate("INC-B2", "host:web-02", 0.95)).await;
    assert_eq!(in_theirs["decision"]["outcome"], "deny", "{in_theirs}");
}

/// A `tool` credential that opened a task may close it — cancelling the humans' undo approval
/// and other agents' approvals in it.
#[tokio::test]
async fn stranger_a_tool_credential_cannot_cancel_others_approvals_by_closing_a_task() {
    let h = harness();
    let tool = h.user("edr-tool", &["tool"]);
    let (s, _) = open_task(&h, &tool, "INC-C1", "edr", "high").await;
    assert_eq!(s, StatusCode::CREATED);
    let v = act(&h, EDR, isolate("INC-C1", "host:db-payments-01", 0.95)).await;
    let apr = v["decision"]["approval"]["id"].as_str().unwrap().to_string();
    let (s, v) = h.call("POST", "/v1/tasks/INC-C1/close", Some(&tool), None).await;
    assert!(
        s == StatusCode::FORBIDDEN || (s == StatusCode::CONFLICT && v["error"]["code"] == "task_shared"),
        "a tool credential cancelled an agent's pending approval: {s} {v}"
    );
    let (_, a) = h.call("GET", &format!("/v1/approvals/{apr}"), Some(&h.admin), None).await;
    assert_eq!(a["state"], "pending", "{a}");
}

// ---------------------------------------------------------------------------------------------
// halts, resumes, leases, admin powers

#[tokio::test]
async fn stranger_admin_powers_need_admin_through_the_api() {
    let (h, _url, _) = harness_lab();
    let _ = isolated_web42(&h, "INC-P1").await;
    let ana = h.user("ana", &["soc-analyst", "incident-commander", "iam-owner"]);
    let tool = h.user("edr-tool", &["tool"]);
    let siem = h.user("siem", &["integration-siem"]);
    let nobody_admin = oidc("00u-x", json!(["soc-analyst"]));
    // A halt stands, so resume has something to lift.
    let (s, _) = h.call("POST", "/v1/halt", Some(&ana), Some(json!({"scope": "all", "reason": "r"}))).await;
    assert_eq!(s, StatusCode::OK);
    let agent = urlencode(EDR);
    let calls: Vec<(&str, String, Value)> = vec![
        ("POST", "/v1/resume".into(), json!({"scope": "all", "reason": "r"})),
        ("POST", format!("/v1/agents/{agent}/suspend"), json!({"reason": "r"})),
        ("POST", format!("/v1/agents/{agent}/resume"), json!({"reason": "r"})),
        ("POST", format!("/v1/agents/{agent}/token"), json!({"ttl": "5m"})),
        ("POST", "/v1/agents".into(), json!({"id": "spiffe://acme.example/soc/evil", "owner": "me", "purpose": "p"})),
        ("POST", "/v1/users".into(), json!({"id": "eve", "roles": ["admin"]})),
        ("POST", "/v1/policy/reload".into(), json!({})),
        ("POST", "/v1/breakers/reset".into(), json!({"agent": EDR, "action": "host.isolate", "reason": "r"})),
    ];
    for token in [&ana, &tool, &siem, &nobody_admin] {
        for (m, p, b) in &calls {
            let (s, v) = h.call(m, p, Some(token), Some(b.clone())).await;
            assert_eq!(s, StatusCode::FORBIDDEN, "{m} {p}: {v}");
        }
    }
    // Lease revoke needs the halt power: not a tool or integration.
    let (_, list) = h.call("GET", "/v1/actions?state=succeeded", Some(&ana), None).await;
    let lease = list[0]["lease"]["id"].as_str().unwrap().to_string();
    for token in [&tool, &siem] {
        let (s, v) = h.call("POST", &format!("/v1/leases/{lease}/revoke"), Some(token), Some(json!({}))).await;
        assert_eq!((s, code(&v).as_str()), (StatusCode::FORBIDDEN, "missing_role"), "{v}");
    }
    // Agents reach no human endpoint.
    let edr = h.svid(EDR);
    for (m, p, b) in &calls {
        let (s, _) = h.call(m, p, Some(&edr), Some(b.clone())).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "agent: {m} {p}");
    }
    let (s, _) = h.call("POST", "/v1/halt", Some(&edr), Some(json!({"scope": "all", "reason": "r"}))).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[tokio::test]
async fn stranger_admin_powers_need_admin_through_the_console() {
    let h = harness();
    let ana = h.user("ana", &["soc-analyst", "incident-commander"]);
    let tool = h.user("edr-tool", &["tool"]);
    let (s, _) = h.call("POST", "/v1/halt", Some(&ana), Some(json!({"scope": "all", "reason": "r"}))).await;
    assert_eq!(s, StatusCode::OK);
    let cookie = sign_in(&h, &ana).await;
    let csrf = csrf_of(&h, &cookie).await;
    for (path, form) in [
        ("/console/resume", vec![("reason", "r")]),
        ("/console/agents/status", vec![("agent", EDR), ("to", "suspend"), ("reason", "r")]),
        ("/console/agents/status", vec![("agent", EDR), ("to", "resume"), ("reason", "r")]),
        ("/console/breakers/reset", vec![("agent", EDR), ("action", "host.isolate"), ("reason", "r")]),
    ] {
        let mut f = form.clone();
        f.push(("csrf", &csrf));
        let p = post_form(&h, path, Some(&cookie), &f).await;
        assert_eq!(p.status, StatusCode::FORBIDDEN, "{path}: {}", p.body);
    }
    let (_, halts) = h.call("GET", "/v1/halts", Some(&ana), None).await;
    assert_eq!(halts[0]["active"], true);
    // A tool credential in the console: no halts of any kind.
    let cookie = sign_in(&h, &tool).await;
    let csrf = csrf_of(&h, &cookie).await;
    for (path, form) in [
        ("/console/halt", vec![("scope", "all"), ("reason", "r"), ("confirm", "yes")]),
        ("/console/agents/status", vec![("agent", EDR), ("to", "halt"), ("reason", "r")]),
    ] {
        let mut f = form.clone();
        f.push(("csrf", &csrf));
        let p = post_form(&h, path, Some(&cookie), &f).await;
        assert_eq!(p.status, StatusCode::FORBIDDEN, "{path}: {}", p.body);
    }
}

/// A halting analyst cannot lift an admin's halt of an agent by stacking a short halt on it.
#[tokio::test]
async fn stranger_a_short_halt_does_not_lift_an_admins_halt_when_it_expires() {
    let h = harness();
    let ana = h.user("ana", &["soc-analyst"]);
    let (s, _) =
        h.call("POST", "/v1/halt", Some(&h.admin), Some(json!({"scope": "agent", "id": EDR, "reason": "r"}))).await;
    assert_eq!(s, StatusCode::OK);
    let soon = time::OffsetDateTime::now_utc() + time::Duration::seconds(1);
    let soon = soon.format(&time::format_description::well_known::Rfc3339).unwrap();
    let body = json!({"scope": "agent", "id": EDR, "reason": "mine", "expires_at": soon});
    let (s, v) = h.call("POST", "/v1/halt", Some(&ana), Some(body)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    warden_server::halt::expire_due(&h.app).unwrap();
    let (_, a) = h.call("GET", &format!("/v1/agents/{}", urlencode(EDR)), Some(&ana), None).await;
    assert_eq!(a["status"], "halted", "{a}");
    let (s, v) =
        h.call("POST", "/v1/tasks", Some(&h.svid(EDR)), Some(json!({"title": "t", "trigger": {"source": "x"}}))).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
}

// ---------------------------------------------------------------------------------------------
// identity

#[tokio::test]
async fn stranger_lease_audience_tokens_are_never_agent_credentials() {
    let h = harness();
    let lease =
        h.app.tokens.local.mint_lease(EDR, "lease_x", "host.isolate host:web-42", "sha256:00", h.app.now(), 600);
    let (s, v) = h.call("GET", "/v1/tasks/none", Some(&lease), None).await;
    assert_eq!((s, code(&v).as_str()), (StatusCode::UNAUTHORIZED, "wrong_audience"), "{v}");
    let body = json!({"ttl": "5m", "audience": "warden-lease"});
    let (s, v) = h.call("POST", &format!("/v1/agents/{}/token", urlencode(EDR)), Some(&h.admin), Some(body)).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    // An agent token is no lease token for introspection.
    let tool = h.user("edr-tool", &["tool"]);
    let (s, v) = h.call("POST", "/v1/leases/introspect", Some(&tool), Some(json!({"token": h.svid(EDR)}))).await;
    assert_eq!((s, v["active"].as_bool()), (StatusCode::OK, Some(false)), "{v}");
    // And the lease token sent to MCP.
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "s", "version": "1"}}});
    let (s, _, _) = mcp(&h, &lease, None, init).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
}

/// An unmapped OIDC subject never speaks for a local user or an agent.
#[tokio::test]
async fn stranger_an_oidc_subject_named_like_a_user_or_agent_is_neither() {
    let h = harness();
    let _ivy = h.user("ivy", &["iam-owner"]);
    task(&h, &h.admin, "INC-O1").await;
    let v = act(&h, IAM, disable("INC-O1", "account:jdoe")).await;
    assert_eq!(v["state"], "pending_approval", "{v}");
    let apr = v["decision"]["approval"]["id"].as_str().unwrap().to_string();
    // Its IdP says nothing about roles: sub `ivy` is not the local ivy.
    let (s, v) = approve(&h, &oidc("ivy", json!([])), &apr).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    // sub as an agent's SPIFFE ID: a human, never the agent.
    let t = oidc(IAM, json!([]));
    let (s, v) = h.call("POST", "/v1/actions", Some(&t), Some(disable("INC-O1", "account:asmith"))).await;
    assert_eq!((s, code(&v).as_str()), (StatusCode::FORBIDDEN, "humans_not_allowed"), "{v}");
}

// ---------------------------------------------------------------------------------------------
// what runs is what was decided

/// Every spelling of the break-glass account meets its forbid (or is refused as no spelling).
#[tokio::test]
async fn stranger_break_glass_cannot_be_reached_by_another_spelling() {
    let h = harness();
    task(&h, &h.admin, "INC-S1").await;
    let spellings = [
        "account:BreakGlass-01",
        "account:BREAKGLASS-01",
        "account:breakglass-01\u{200B}",
        "account:breakglass-01\u{FE0F}",
        "account:breakglass-01\u{034F}",
        "account:breakglass-0\u{FF11}",
        "account:\u{FF42}reakglass-01",
        "account:breakglass-01\u{3164}",
        "account:breakglass-01.",
        "account:./breakglass-01",
    ];
    let mut through = Vec::new();
    for t in spellings {
        let (s, v) = h.call("POST", "/v1/actions", Some(&h.svid(IAM)), Some(disable("INC-S1", t))).await;
        let refused = s == StatusCode::UNPROCESSABLE_ENTITY;
        let denied = s == StatusCode::OK && v["decision"]["outcome"] == "deny";
        if !(refused || denied) {
            through.push(format!("{t:?} -> {s} {} {}", v["state"], v["decision"]["caps"]));
        }
    }
    assert!(through.is_empty(), "reached the approval inbox past the break-glass forbid:\n{}", through.join("\n"));
}

/// The internal DNS server by every IP spelling meets its forbid.
#[tokio::test]
async fn stranger_internal_ip_cannot_be_blocked_by_another_spelling() {
    let h = harness();
    task(&h, &h.admin, "INC-S2").await;
    for t in [
        "ip:10.0.0.53",
        "ip:::ffff:10.0.0.53",
        "ip:::FFFF:a00:35",
        "ip:0:0:0:0:0:ffff:0a00:0035",
        "ip:::10.0.0.53",
        "ip:10.0.0.053",
        "ip:10.0.0.53/32",
        "ip:167772213",
    ] {
        let body = json!({"task": "INC-S2", "action": "ip.block", "target": t, "confidence": 0.99,
                          "params": {"reason": "r"}, "rationale": "r", "evidence": []});
        let (s, v) = h.call("POST", "/v1/actions", Some(&h.svid(NET)), Some(body)).await;
        let ok = s == StatusCode::UNPROCESSABLE_ENTITY || v["decision"]["outcome"] == "deny";
        assert!(ok, "{t}: {s} {v}");
    }
}

/// Integers beyond 2^53 are refused, not rounded; typed params are typed.
#[tokio::test]
async fn stranger_huge_and_mistyped_integers_are_refused() {
    let h = harness();
    task(&h, &h.admin, "INC-S3").await;
    for pid in [json!(9007199254740993u64), json!(-9007199254740993i64), json!(18446744073709551615u64)] {
        let body = json!({"task": "INC-S3", "action": "process.kill", "target": "host:detonation-01",
                          "confidence": 0.99, "params": {"pid": pid}, "rationale": "r",
                          "evidence": [{"kind": "e", "ref": "1"}]});
        let (s, v) = h.call("POST", "/v1/actions", Some(&h.svid(EDR)), Some(body)).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{pid}: {v}");
    }
    // `4.0` is the integer 4, as JSON Schema and the log's canonical JSON have it: decided,
    // digested and recorded as 4 (so a replay from the log meets what was decided).
    let body = json!({"task": "INC-S3", "action": "process.kill", "target": "host:detonation-01",
                      "confidence": 0.99, "params": {"pid": 4.0}, "rationale": "r",
                      "evidence": [{"kind": "e", "ref": "1"}]});
    let (s, v) = h.call("POST", "/v1/actions", Some(&h.svid(EDR)), Some(body)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let logged = crate::simulate::entries(&h)
        .into_iter()
        .find(|e| e.event.request.as_deref() == v["id"].as_str() && e.event.kind.as_str() == "action.requested")
        .unwrap();
    assert!(logged.event.data["params"]["pid"].is_u64(), "{:?}", logged.event.data);
    assert_eq!(logged.event.data["params"]["pid"], json!(4));
    for pid in [json!("4"), json!(1e300), json!(4.5)] {
        let body = json!({"task": "INC-S3", "action": "process.kill", "target": "host:detonation-01",
                          "confidence": 0.99, "params": {"pid": pid}, "rationale": "r",
                          "evidence": [{"kind": "e", "ref": "1"}]});
        let (s, v) = h.call("POST", "/v1/actions", Some(&h.svid(EDR)), Some(body)).await;
        assert!(s == StatusCode::UNPROCESSABLE_ENTITY || v["decision"]["outcome"] == "deny", "{pid}: {s} {v}");
    }
}

/// A param rendered into a connector's path cannot be a `.`/`..` segment: the call must name the
/// decided mailbox's message, not move up the tool's path.
#[tokio::test]
async fn stranger_a_param_cannot_walk_the_connectors_path() {
    let (h, url, _) = harness_lab();
    let ana = h.user("ana", &["soc-analyst"]);
    let (_, t) = open_task(&h, &ana, "INC-S4", "email-gateway", "high").await;
    assert_eq!(t["verified"], true);
    for msg in ["..", "."] {
        let body = json!({"task": "INC-S4", "action": "email.quarantine", "target": "mailbox:jdoe@acme.example",
                          "confidence": 0.95, "params": {"message_id": msg}, "rationale": "r",
                          "evidence": [{"kind": "mail", "ref": "1"}]});
        let (s, v) = h.call("POST", "/v1/actions", Some(&h.svid(PHISH)), Some(body)).await;
        if s == StatusCode::UNPROCESSABLE_ENTITY {
            continue;
        }
        assert_eq!(s, StatusCode::OK, "{v}");
    }
    let paths = lab_paths(&url);
    let walked: Vec<&String> =
        paths.iter().filter(|p| !p.contains("/messages/") || p.contains("/./") || p.contains("/../")).collect();
    assert!(walked.is_empty(), "the tool was called off the decided message's path: {walked:?} (all: {paths:?})");
}

// ---------------------------------------------------------------------------------------------
// MCP

#[tokio::test]
async fn stranger_mcp_sessions_tools_and_targets_stay_the_agents() {
    let h = harness();
    task(&h, &h.admin, "INC-M1").await;
    let edr = h.svid(EDR);
    let phish = h.svid(PHISH);
    let sid = mcp_session(&h, &edr).await;
    // Another agent presenting the EDR responder's session.
    let list = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"});
    let (s, _, v) = mcp(&h, &phish, Some(&sid), list.clone()).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    // A human's token at /mcp.
    let ana = h.user("ana", &["soc-analyst"]);
    let (s, _, _) = mcp(&h, &ana, Some(&sid), list).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    // A tool the EDR responder is not granted, and one not in the catalog.
    for name in ["account.disable", "credential.rotate", "warden.halt"] {
        let (_, v) = mcp_call(
            &h,
            &edr,
            &sid,
            name,
            json!({"task": "INC-M1", "target": "account:jdoe", "confidence": 1.0, "reason": "x"}),
        )
        .await;
        assert!(v["error"].is_object() || v["result"]["isError"] == true, "{name}: {v}");
        assert!(!v.to_string().contains("\"succeeded\""), "{name}: {v}");
    }
    // A granted tool aimed at a target of another kind, or smuggling extra arguments.
    let (_, v) = mcp_call(
        &h,
        &edr,
        &sid,
        "host.isolate",
        json!({"task": "INC-M1", "target": "account:breakglass-01", "confidence": 0.99, "reason": "x"}),
    )
    .await;
    assert!(!v.to_string().contains("\"succeeded\""), "{v}");
    let (_, v) = mcp_call(&h, &edr, &sid, "host.isolate",
        json!({"task": "INC-M1", "target": "host:web-42", "confidence": 0.99, "reason": "x", "agent": PHISH, "params": {"x": 1}})).await;
    assert!(v["error"].is_object(), "extra arguments must be refused: {v}");
    // Reading another agent's request through warden.get_action.
    let other = act(
        &h,
        PHISH,
        json!({"task": "INC-M1", "action": "ticket.create", "target": "ticket:CASE-7",
        "confidence": 0.5, "params": {"title": "x"}, "rationale": "r", "evidence": [{"kind": "a", "ref": "1"}]}),
    )
    .await;
    let (_, v) = mcp_call(&h, &edr, &sid, "warden.get_action", json!({"id": other["id"]})).await;
    assert!(!v.to_string().contains("ticket.create"), "{v}");
}

// ---------------------------------------------------------------------------------------------
// reloads between votes and runs

fn set_iam_step_up(dir: &Path, roles: &str, owner: Option<&str>) {
    let p = dir.join("agents/identity-responder.toml");
    let mut t = std::fs::read_to_string(&p).unwrap();
    t = t.replace("step_up_roles = [\"iam-owner\"]", &format!("step_up_roles = {roles}"));
    if let Some(o) = owner {
        t = t.replace("owner = \"team:iam\"", &format!("owner = \"{o}\""));
    }
    std::fs::write(&p, t).unwrap();
}

/// An undo approval whose roles the bundle in force no longer trusts does not run.
#[tokio::test]
async fn stranger_a_reload_between_undo_votes_is_checked_before_the_undo_runs() {
    let dir = bundle_copy(|_| {});
    let (h, url) = harness_dir_lab(dir.path());
    let ivy = h.user("ivy", &["iam-owner"]);
    let ian = h.user("ian", &["iam-owner"]);
    let id = disabled_adm_jdoe(&h, "INC-L1", &ivy, &ian).await;
    let (s, undo) = h.call("POST", &format!("/v1/actions/{id}/rollback"), Some(&ivy), None).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{undo}");
    set_iam_step_up(dir.path(), "[\"iam-lead\"]", None);
    assert_eq!(h.call("POST", "/v1/policy/reload", Some(&h.admin), None).await.0, StatusCode::OK);
    let _ = approve(&h, &ian, undo["id"].as_str().unwrap()).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(lab_calls(&url, "POST /idp/api/v1/users/adm-jdoe/lifecycle/activate"), 0);
}

/// An approval whose roles the bundle in force no longer trusts does not run.
#[tokio::test]
async fn stranger_a_reload_between_approval_votes_is_checked_before_the_action_runs() {
    let dir = bundle_copy(|_| {});
    let (h, url) = harness_dir_lab(dir.path());
    let ivy = h.user("ivy", &["iam-owner"]);
    let ian = h.user("ian", &["iam-owner"]);
    task(&h, &h.admin, "INC-L2").await;
    let v = act(&h, IAM, disable("INC-L2", "account:adm-jdoe")).await;
    let apr = v["decision"]["approval"]["id"].as_str().unwrap().to_string();
    assert_eq!(approve(&h, &ivy, &apr).await.0, StatusCode::OK);
    set_iam_step_up(dir.path(), "[\"iam-lead\"]", None);
    assert_eq!(h.call("POST", "/v1/policy/reload", Some(&h.admin), None).await.0, StatusCode::OK);
    let (_, voted) = approve(&h, &ian, &apr).await;
    let (_, a) = h.call("GET", &format!("/v1/actions/{}", v["id"].as_str().unwrap()), Some(&h.admin), None).await;
    let (_, d) = h
        .call(
            "POST",
            "/v1/decisions",
            Some(&h.admin),
            Some({
                let mut b = disable("INC-L2", "account:adm-jdoe");
                b["agent"] = json!(IAM);
                b
            }),
        )
        .await;
    assert_eq!(
        lab_calls(&url, "POST /idp/api/v1/users/adm-jdoe/lifecycle/deactivate"),
        0,
        "ran although the bundle in force needs iam-lead: vote {voted}\naction {a}\ndecision now {d}\nlog {:?}",
        h.app
            .ledger()
            .store()
            .entries(0, 1000)
            .unwrap()
            .iter()
            .map(|e| String::from_utf8_lossy(&e.bytes).chars().take(400).collect::<String>())
            .collect::<Vec<_>>()
    );
}

/// A vote cast by someone a reload has since made the agent's owner no longer counts: separation
/// of duties reads the owner from the bundle in force.
#[tokio::test]
async fn stranger_a_vote_by_whom_a_reload_made_the_owner_does_not_count() {
    let dir = bundle_copy(|_| {});
    let (h, url) = harness_dir_lab(dir.path());
    let ivy = h.user("ivy", &["iam-owner", "team:iam-ops"]);
    let ian = h.user("ian", &["iam-owner"]);
    task(&h, &h.admin, "INC-L3").await;
    let v = act(&h, IAM, disable("INC-L3", "account:adm-jdoe")).await;
    let apr = v["decision"]["approval"]["id"].as_str().unwrap().to_string();
    assert_eq!(approve(&h, &ivy, &apr).await.0, StatusCode::OK);
    // The identity responder now belongs to ivy's team.
    set_iam_step_up(dir.path(), "[\"iam-owner\"]", Some("team:iam-ops"));
    assert_eq!(h.call("POST", "/v1/policy/reload", Some(&h.admin), None).await.0, StatusCode::OK);
    let _ = approve(&h, &ian, &apr).await;
    assert_eq!(
        lab_calls(&url, "POST /idp/api/v1/users/adm-jdoe/lifecycle/deactivate"),
        0,
        "the agent's owner (per the bundle in force) counted toward its approval"
    );
}

// ---------------------------------------------------------------------------------------------
// more task closes

/// An agent cannot cancel the humans' undo approval in its task by closing the task.
#[tokio::test]
async fn stranger_an_agent_cannot_close_its_task_over_a_humans_undo_approval() {
    let (h, _url, _) = harness_lab();
    let edr = h.svid(EDR);
    assert_eq!(open_task(&h, &edr, "INC-T4", "edr", "high").await.0, StatusCode::CREATED);
    // jump-01: tier1, privileged — isolating it needs two incident commanders, and so does undoing it.
    let v = act(&h, EDR, isolate("INC-T4", "host:jump-01", 0.95)).await;
    let apr = v["decision"]["approval"]["id"].as_str().unwrap().to_string();
    let ic1 = h.user("ic1", &["incident-commander"]);
    let ic2 = h.user("ic2", &["incident-commander"]);
    approve(&h, &ic1, &apr).await;
    approve(&h, &ic2, &apr).await;
    let id = v["id"].as_str().unwrap();
    let (s, undo) = h.call("POST", &format!("/v1/actions/{id}/rollback"), Some(&ic1), None).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{undo}");
    let (s, v) = h.call("POST", "/v1/tasks/INC-T4/close", Some(&edr), None).await;
    assert_eq!((s, code(&v).as_str()), (StatusCode::CONFLICT, "task_shared"), "{v}");
}

/// An agent cannot close its task while another agent's approved request waits to run in it.
#[tokio::test]
async fn stranger_an_agent_cannot_close_its_task_over_another_agents_approved_request() {
    let h = harness(); // no connectors: an approved request rests in `approved`
    // The opener holds no close role (a tool credential): closing by right of opening may
    // not stop the agent's approved request.
    let tool = h.user("edr-tool", &["tool"]);
    assert_eq!(open_task(&h, &tool, "INC-T5", "edr", "low").await.0, StatusCode::CREATED);
    let v = act(&h, EDR, isolate("INC-T5", "host:db-payments-01", 0.95)).await;
    let apr = v["decision"]["approval"]["id"].as_str().unwrap().to_string();
    let ana = h.user("ana", &["soc-analyst"]);
    assert_eq!(approve(&h, &ana, &apr).await.0, StatusCode::OK);
    let (_, a) = h.call("GET", &format!("/v1/actions/{}", v["id"].as_str().unwrap()), Some(&ana), None).await;
    assert_eq!(a["state"], "approved");
    let (s, v) = h.call("POST", "/v1/tasks/INC-T5/close", Some(&tool), None).await;
    assert_eq!((s, code(&v).as_str()), (StatusCode::CONFLICT, "task_shared"), "{v}");
}

// ---------------------------------------------------------------------------------------------
// agents reading and narrowing

#[tokio::test]
async fn stranger_an_agent_reads_and_dry_runs_only_for_itself() {
    let (h, _url, _) = harness_lab();
    let id = isolated_web42(&h, "INC-G1").await;
    let phish = h.svid(PHISH);
    let (s, _) = h.call("GET", &format!("/v1/actions/{id}"), Some(&phish), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (_, a) = h.call("GET", &format!("/v1/actions/{id}"), Some(&h.admin), None).await;
    let lease = a["lease"]["id"].as_str().unwrap();
    let (s, _) = h.call("GET", &format!("/v1/leases/{lease}"), Some(&phish), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let mut body = isolate("INC-G1", "host:web-42", 0.95);
    body["agent"] = json!(EDR);
    let (s, v) = h.call("POST", "/v1/decisions", Some(&phish), Some(body)).await;
    assert_eq!((s, code(&v).as_str()), (StatusCode::FORBIDDEN, "not_your_agent"), "{v}");
    for p in ["/v1/approvals", "/v1/audit/checkpoint", &format!("/v1/explain/{id}"), "/v1/users"] {
        let (s, _) = h.call("GET", p, Some(&phish), None).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{p}");
    }
    let (s, _) = h.call("POST", "/v1/leases/introspect", Some(&phish), Some(json!({"token": "x"}))).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
}

/// An approval may only shorten the lease.
#[tokio::test]
async fn stranger_an_approver_cannot_widen_the_lease() {
    let h = harness();
    let apr = pending_db_isolation(&h, "INC-G2").await;
    let ana = h.user("ana", &["soc-analyst"]);
    for ttl in ["1h", "11m", "0s"] {
        let (s, v) =
            h.call("POST", &format!("/v1/approvals/{apr}/approve"), Some(&ana), Some(json!({"lease_ttl": ttl}))).await;
        assert!(s == StatusCode::UNPROCESSABLE_ENTITY, "{ttl}: {s} {v}");
    }
}

// ---------------------------------------------------------------------------------------------
// Slack

#[tokio::test]
async fn stranger_slack_presses_follow_the_same_rules() {
    use hmac::{Hmac, KeyInit, Mac};
    const SECRET: &str = "slack-secret-for-stranger";
    let slack = warden_server::notify::SlackApp {
        signing_secret: SECRET.into(),
        users: [("U0OLGA", "olga"), ("U0TOOL", "edr-tool"), ("U0ANA", "ana")]
            .into_iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect(),
        response_url_prefixes: vec!["https://hooks.slack.com/".into()],
    };
    let h = crate::harness_options(
        Arc::new(SystemClock),
        warden_server::state::ServerOptions { slack: Some(slack), ..Default::default() },
    );
    h.user("olga", &["soc-analyst", "team:endpoint-response"]);
    h.user("edr-tool", &["tool"]);
    h.user("ana", &["soc-analyst"]);
    let apr = pending_db_isolation(&h, "INC-K1").await;
    let press = |user: &str| {
        let payload = json!({"type": "block_actions", "user": {"id": user},
            "actions": [{"action_id": "warden_approve", "value": apr, "type": "button"}]});
        serde_urlencoded::to_string([("payload", payload.to_string())]).unwrap()
    };
    let deliver = |body: String, sig: Option<String>| {
        let h = &h;
        async move {
            let now = time::OffsetDateTime::now_utc().unix_timestamp();
            let mut req = Request::builder()
                .method("POST")
                .uri("/v1/integrations/slack/interactions")
                .header("content-type", "application/x-www-form-urlencoded")
                .header("x-slack-request-timestamp", now.to_string());
            let sig = sig.unwrap_or_else(|| {
                let mut mac = Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
                mac.update(format!("v0:{now}:{body}").as_bytes());
                format!("v0={}", mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect::<String>())
            });
            req = req.header("x-slack-signature", sig);
            let res = h.router.clone().oneshot(req.body(Body::from(body)).unwrap()).await.unwrap();
            res.status()
        }
    };
    // Unsigned (a forged press for ana).
    assert_eq!(deliver(press("U0ANA"), Some("v0=".to_string() + &"0".repeat(64))).await, StatusCode::UNAUTHORIZED);
    // Signed presses by the owner and by a tool credential: taken, but they decide nothing.
    for u in ["U0OLGA", "U0TOOL", "U0NOBODY"] {
        let _ = deliver(press(u), None).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let (_, a) = h.call("GET", &format!("/v1/approvals/{apr}"), Some(&h.admin), None).await;
    assert_eq!((a["state"].as_str(), a["votes"].as_array().map(Vec::len)), (Some("pending"), Some(0)), "{a}");
}

// ---------------------------------------------------------------------------------------------
// params the Cedar rules read

/// "Perimeter blocks longer than a week are ... forbidden for agents": a block with no duration
/// (the firewall's default: no expiry) or a negative one is no shorter than a week.
#[tokio::test]
async fn stranger_a_block_without_or_with_a_negative_duration_is_no_short_block() {
    let h = harness();
    task(&h, &h.admin, "INC-N1").await;
    let ana = h.user("ana", &["soc-analyst"]);
    let mut allowed = Vec::new();
    for params in [
        json!({"reason": "r"}),
        json!({"reason": "r", "duration_minutes": -1}),
        json!({"reason": "r", "duration_minutes": 20000}),
    ] {
        let body = json!({"agent": NET, "task": "INC-N1", "action": "ip.block", "target": "ip:203.0.113.66",
                          "confidence": 0.99, "params": params, "rationale": "r", "evidence": []});
        let (s, v) = h.call("POST", "/v1/decisions", Some(&ana), Some(body)).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let d = &v["decision"];
        let forbidden = d["caps"].as_array().unwrap().iter().any(|c| c["code"] == "forbidden");
        if !forbidden {
            allowed.push(format!("{params} -> {} (shadow: {})", d["outcome"], d["shadow_outcome"]));
        }
    }
    assert!(allowed.is_empty(), "blocks with no upper bound pass the no-long-blocks forbid:\n{}", allowed.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// folds

/// A request never folds into an approval weaker than what the bundle in force asks.
#[tokio::test]
async fn stranger_no_fold_into_a_weaker_approval_after_a_reload() {
    let dir = bundle_copy(|_| {});
    let h = crate::harness_from(Some(dir.path()));
    let apr = pending_db_isolation(&h, "INC-F1").await;
    // db-payments-01 becomes privileged: isolating it now needs two incident commanders.
    let p = dir.path().join("assets.toml");
    let t = std::fs::read_to_string(&p).unwrap();
    let t = t.replacen(
        "id = \"db-payments-01\"\ncriticality = \"tier1\"",
        "id = \"db-payments-01\"\ncriticality = \"tier1\"\nprivileged = true",
        1,
    );
    std::fs::write(&p, t).unwrap();
    assert_eq!(h.call("POST", "/v1/policy/reload", Some(&h.admin), None).await.0, StatusCode::OK);
    let v = act(&h, EDR, isolate("INC-F1", "host:db-payments-01", 0.95)).await;
    assert_ne!(v["decision"]["approval"]["id"].as_str(), Some(apr.as_str()), "folded into the weaker approval: {v}");
    assert_eq!(v["decision"]["approval"]["quorum"], 2, "{v}");
    let (_, old) = h.call("GET", &format!("/v1/approvals/{apr}"), Some(&h.admin), None).await;
    assert_eq!(old["state"], "cancelled", "{old}");
}

// ---------------------------------------------------------------------------------------------
// task ids

/// An agent that guesses the id of the SIEM's next incident cannot squat it: the SIEM's
/// verified task must still open (or the agent must not choose such ids). Known, not closed
/// (docs/threat-model.md): the squatted task is unverified and the agent's alone, so it
/// raises nothing, but it denies the SIEM its id.
#[tokio::test]
#[ignore = "known limit (docs/threat-model.md): agents choose task ids; a guessed id is denied to its source"]
async fn stranger_an_agent_cannot_squat_the_siems_incident_id() {
    let h = harness();
    let phish = h.svid(PHISH);
    assert_eq!(open_task(&h, &phish, "SIEM-1001", "siem", "low").await.0, StatusCode::CREATED);
    let siem = h.user("siem", &["integration-siem"]);
    let (s, v) = open_task(&h, &siem, "SIEM-1001", "siem", "critical").await;
    assert_eq!(s, StatusCode::CREATED, "the SIEM's verified incident was pre-empted by an agent: {v}");
}

// ---------------------------------------------------------------------------------------------
// OIDC sessions

/// Once an OIDC identity is mapped to a Warden user, that person has the Warden user's roles —
/// also in a console session opened before the mapping (which keeps the IdP's roles).
#[tokio::test]
async fn stranger_a_console_session_opened_before_the_mapping_keeps_no_idp_roles() {
    let h = harness();
    let id_token = oidc("00u-yann", json!(["soc-analyst", "incident-commander"]));
    let cookie = sign_in(&h, &id_token).await;
    let body = json!({"id": "yann", "roles": ["soc-analyst"], "oidc": [format!("{}#00u-yann", crate::IDP)]});
    assert_eq!(h.call("POST", "/v1/users", Some(&h.admin), Some(body)).await.0, StatusCode::CREATED);
    // jump-01 is privileged: isolating it needs incident commanders.
    task(&h, &h.admin, "INC-O2").await;
    let v = act(&h, EDR, isolate("INC-O2", "host:jump-01", 0.95)).await;
    let apr = v["decision"]["approval"]["id"].as_str().unwrap().to_string();
    assert_eq!(v["decision"]["approval"]["roles"], json!(["incident-commander"]), "{v}");
    // Through the API his login is yann now: a soc-analyst, no vote here.
    let (s, e) = approve(&h, &id_token, &apr).await;
    assert_eq!((s, code(&e).as_str()), (StatusCode::FORBIDDEN, "missing_role"), "{e}");
    // The console session he opened a minute earlier still votes as the IdP's incident commander.
    let csrf = csrf_of(&h, &cookie).await;
    let _ = post_form(&h, &format!("/console/approvals/{apr}/approve"), Some(&cookie), &[("csrf", &csrf)]).await;
    let (_, a) = h.call("GET", &format!("/v1/approvals/{apr}"), Some(&h.admin), None).await;
    assert_eq!(
        a["votes"].as_array().map(Vec::len),
        Some(0),
        "a mapped person voted with roles Warden does not give him: {a}"
    );
}

// ---------------------------------------------------------------------------------------------
// stopped agents

/// A suspended or halted agent is refused at every door: API, MCP, its own task close.
#[tokio::test]
async fn stranger_a_stopped_agent_is_refused_at_every_door() {
    let h = harness();
    let edr = h.svid(EDR);
    assert_eq!(open_task(&h, &edr, "INC-Z1", "edr", "high").await.0, StatusCode::CREATED);
    let sid = mcp_session(&h, &edr).await;
    let (s, _) = h
        .call("POST", &format!("/v1/agents/{}/suspend", urlencode(EDR)), Some(&h.admin), Some(json!({"reason": "r"})))
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, v) = h.call("POST", "/v1/actions", Some(&edr), Some(isolate("INC-Z1", "host:web-42", 0.95))).await;
    assert_eq!((s, code(&v).as_str()), (StatusCode::FORBIDDEN, "agent_suspended"), "{v}");
    let (_, v) = mcp_call(
        &h,
        &edr,
        &sid,
        "host.isolate",
        json!({"task": "INC-Z1", "target": "host:web-42", "confidence": 0.95, "reason": "x"}),
    )
    .await;
    assert!(v.to_string().contains("agent_suspended") || v["error"].is_object(), "{v}");
    let (s, _) = h.call("POST", "/v1/tasks/INC-Z1/close", Some(&edr), None).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    // Nor can it sign in to the console.
    let p = post_form(&h, "/console/sign-in", None, &[("token", &edr)]).await;
    assert_eq!(p.status, StatusCode::FORBIDDEN);
    assert_eq!(h.app.ledger().store().find(warden_store::Table::Requests, &Default::default()).unwrap().len(), 0);
}

// ---------------------------------------------------------------------------------------------
// connectors bound to the decided target

/// "Every call carries the decided target ... or the bundle does not load": a placeholder whose
/// first alternative is an agent-chosen param (`{params.reason|target.id}`) carries the param,
/// not the target, whenever the agent sends it.
#[tokio::test]
async fn stranger_a_connector_whose_target_is_an_agent_param_does_not_load() {
    let edit = |text: &str| {
        text.replace(
            "path = \"/edr/v1/hosts/{target.id}/contain\"",
            "path = \"/edr/v1/hosts/{params.reason|target.id}/contain\"",
        )
    };
    let dir = bundle_copy(|d| {
        let p = d.join("connectors.toml");
        let t = std::fs::read_to_string(&p).unwrap();
        std::fs::write(&p, edit(&t)).unwrap();
    });
    if warden_core::Bundle::load(&read_bundle(dir.path())).is_err() {
        return;
    }
    // It loads: the EDR responder, allowed to isolate web-42 on its own, contains a domain
    // controller named in `reason`.
    let (url, keys) = lab();
    let text = edit(&std::fs::read_to_string(example_dir().join("connectors.toml")).unwrap());
    let tools =
        ["edr", "idp", "firewall", "mail", "ticketing", "siem"].iter().map(|t| (t.to_string(), url.clone())).collect();
    let given = keys.env().into_iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let secrets = warden_connectors::EnvSecrets { given, dir: None };
    let connector: Arc<dyn warden_connectors::Connector> =
        Arc::new(warden_connectors::HttpConnector::from_toml(&text, &tools, Box::new(secrets)).unwrap());
    let h = harness_full(Some(dir.path()), Arc::new(SystemClock), NotifyOptions::default(), Some(connector));
    task(&h, &h.admin, "INC-W1").await;
    let mut body = isolate("INC-W1", "host:web-42", 0.95);
    body["params"]["reason"] = json!("dc01.corp.acme.example");
    let v = act(&h, EDR, body).await;
    panic!(
        "a connector that sends an agent-chosen host loaded; decided {} on {}, the EDR was called at {:?}",
        v["decision"]["outcome"],
        v["target"],
        lab_paths(&url)
    );
}

/// A target id cannot smuggle a second scope into the lease (`<action> <target>`).
#[tokio::test]
async fn stranger_a_target_cannot_inject_into_the_lease_scope() {
    let h = harness();
    task(&h, &h.admin, "INC-W2").await;
    for t in [
        "host:web-42 host.isolate host:dc01.corp.acme.example",
        "host:web-42\thost:x",
        "host:web-42\u{2028}x",
        "host:web-42\u{00A0}x",
        "host:web-42\u{0085}x",
    ] {
        let (s, v) = h.call("POST", "/v1/actions", Some(&h.svid(EDR)), Some(isolate("INC-W2", t, 0.95))).await;
        assert!(s == StatusCode::UNPROCESSABLE_ENTITY || s == StatusCode::BAD_REQUEST, "{t:?}: {s} {v}");
    }
}

/// The same for an undo approval: the asker's vote, cast before a reload made them the owner.
#[tokio::test]
async fn stranger_an_undo_vote_by_whom_a_reload_made_the_owner_does_not_count() {
    let dir = bundle_copy(|_| {});
    let (h, url) = harness_dir_lab(dir.path());
    let ivy = h.user("ivy", &["iam-owner", "team:iam-ops"]);
    let ian = h.user("ian", &["iam-owner"]);
    let ida = h.user("ida", &["iam-owner"]);
    let id = disabled_adm_jdoe(&h, "INC-L4", &ian, &ida).await;
    let (s, undo) = h.call("POST", &format!("/v1/actions/{id}/rollback"), Some(&ivy), None).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{undo}");
    set_iam_step_up(dir.path(), "[\"iam-owner\"]", Some("team:iam-ops"));
    assert_eq!(h.call("POST", "/v1/policy/reload", Some(&h.admin), None).await.0, StatusCode::OK);
    let _ = approve(&h, &ian, undo["id"].as_str().unwrap()).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(
        lab_calls(&url, "POST /idp/api/v1/users/adm-jdoe/lifecycle/activate"),
        0,
        "the agent's owner (per the bundle in force) counted toward undoing its action"
    );
}

/// "An undo approval is humans asking to lift a containment: a stop does not cancel it" — a
/// halt keeps it; suspending the agent must keep it too.
#[tokio::test]
async fn stranger_suspending_an_agent_keeps_the_humans_undo_approval() {
    let (h, url, _) = harness_lab();
    task(&h, &h.admin, "INC-Z2").await;
    let v = act(&h, EDR, isolate("INC-Z2", "host:jump-01", 0.95)).await;
    let apr = v["decision"]["approval"]["id"].as_str().unwrap().to_string();
    let ic1 = h.user("ic1", &["incident-commander"]);
    let ic2 = h.user("ic2", &["incident-commander"]);
    approve(&h, &ic1, &apr).await;
    approve(&h, &ic2, &apr).await;
    let id = v["id"].as_str().unwrap();
    let (s, undo) = h.call("POST", &format!("/v1/actions/{id}/rollback"), Some(&ic1), None).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{undo}");
    // A halt leaves it pending ...
    let (s, _) =
        h.call("POST", "/v1/halt", Some(&ic1), Some(json!({"scope": "agent", "id": EDR, "reason": "r"}))).await;
    assert_eq!(s, StatusCode::OK);
    let undo_id = undo["id"].as_str().unwrap();
    let (_, a) = h.call("GET", &format!("/v1/approvals/{undo_id}"), Some(&h.admin), None).await;
    assert_eq!(a["state"], "pending", "{a}");
    // ... and so must a suspend.
    let (s, _) = h
        .call(
            "POST",
            &format!("/v1/agents/{}/suspend", urlencode(EDR)),
            Some(&h.admin),
            Some(json!({"reason": "rogue"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (_, a) = h.call("GET", &format!("/v1/approvals/{undo_id}"), Some(&h.admin), None).await;
    assert_eq!(a["state"], "pending", "suspending the rogue agent cancelled the humans' undo of its containment: {a}");
    approve(&h, &ic2, undo_id).await;
    crate::eventually(|| (lab_calls(&url, "POST /edr/v1/hosts/jump-01/lift_containment") == 1).then_some(())).await;
}
