//! Disabling and enabling users, attacked (an independent helper's attempts, kept): who may,
//! every door a disabled user might still use, requests already in flight when the disable
//! commits (refused at their commit: nothing commits in a disabled user's name), sessions that
//! must not come back, bad input.

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt as _;
use serde_json::{Value, json};
use tower::ServiceExt as _;

use crate::{EDR, Harness, harness};

async fn call_on(
    router: &axum::Router,
    method: &str,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    crate::call_router(router, method, path, Some(token), body).await
}

fn code(v: &Value) -> String {
    v["error"]["code"].as_str().unwrap_or("").to_string()
}

async fn status_of(h: &Harness, id: &str) -> String {
    let (_, users) = h.call("GET", "/v1/users", Some(&h.admin), None).await;
    users.as_array().unwrap().iter().find(|u| u["id"] == id).map(|u| u["status"].as_str().unwrap().to_string()).unwrap()
}

async fn entries(h: &Harness) -> Vec<Value> {
    let (_, e) = h.call("GET", "/v1/audit/entries?limit=1000", Some(&h.admin), None).await;
    e["entries"].as_array().unwrap().clone()
}

/// A pending host.isolate approval (quorum 1, soc-analyst).
async fn pending_isolate(h: &Harness, task: &str) -> String {
    let agent = h.svid(EDR);
    let t = json!({"id": task, "title": "t", "trigger": {"source": "edr", "severity": "high"}});
    assert_eq!(h.call("POST", "/v1/tasks", Some(&agent), Some(t)).await.0, StatusCode::CREATED);
    let ask = json!({"task": task, "action": "host.isolate", "target": "host:db-payments-01", "confidence": 0.95,
                     "params": {"reason": "beacon"}, "rationale": "r", "evidence": [{"kind": "edr", "ref": "d:1"}]});
    let (s, a) = h.call("POST", "/v1/actions", Some(&agent), Some(ask)).await;
    assert_eq!(s, StatusCode::OK, "{a}");
    a["decision"]["approval"]["id"].as_str().unwrap().to_string()
}

// --- who may disable -------------------------------------------------------------------------

#[tokio::test]
async fn nobody_but_an_admin_disables_or_enables() {
    let h = harness();
    let victim = h.user("victim", &["soc-analyst"]);
    let _ = victim;
    let mut callers: Vec<(String, String)> =
        ["soc-analyst", "iam-owner", "incident-commander", "tool", "integration-siem"]
            .iter()
            .map(|r| (r.to_string(), h.user(&format!("x-{r}"), &[r])))
            .collect();
    callers.push(("svid".into(), h.svid(EDR)));
    callers.push((
        "oidc-unmapped".into(),
        crate::stranger::oidc("mallory", json!(["soc-analyst", "team:admin", "Admin", "admin "])),
    ));
    for (who, token) in &callers {
        for path in [
            "/v1/users/victim/disable",
            "/v1/users/admin/disable",
            "/v1/users/nobody/disable",
            "/v1/users/victim/enable",
        ] {
            let (s, v) = h.call("POST", path, Some(token), Some(json!({"reason": "x"}))).await;
            assert_eq!(s, StatusCode::FORBIDDEN, "{who} {path}: {v}");
            assert!(["missing_role", "agents_not_allowed"].contains(&code(&v).as_str()), "{who} {path}: {v}");
        }
    }
    assert_eq!(status_of(&h, "victim").await, "active");
    assert_eq!(status_of(&h, "admin").await, "active");
    assert!(!entries(&h).await.iter().any(|e| e["entry"]["type"] == "user.changed"));
}

#[tokio::test]
async fn an_admin_cannot_disable_themselves_by_another_spelling() {
    let h = harness();
    for path in [
        "/v1/users/ADMIN/disable",
        "/v1/users/Admin/disable",
        "/v1/users/%61dmin/disable",
        "/v1/users/admin%20/disable",
        "/v1/users/%20admin/disable",
        "/v1/users/admin%00/disable",
        "/v1/users/adm%C4%B1n/disable",
        "/v1/users/%EF%BD%81dmin/disable",
        "/v1/users/admin/disable/",
        "/v1/users/admin%2F/disable",
        "/v1/users/.%2Fadmin/disable",
        "/v1//users/admin/disable",
    ] {
        let (s, v) = h.call("POST", path, Some(&h.admin), Some(json!({"reason": "x"}))).await;
        assert_ne!(s, StatusCode::OK, "{path}: {v}");
    }
    assert_eq!(status_of(&h, "admin").await, "active");
    // An OIDC-mapped admin signing in by OIDC is their user: still not themselves.
    let sub = "00u1boss";
    let body = json!({"id": "boss", "roles": ["admin"], "oidc": [format!("{}#{sub}", crate::IDP)]});
    assert_eq!(h.call("POST", "/v1/users", Some(&h.admin), Some(body)).await.0, StatusCode::CREATED);
    let boss = crate::stranger::oidc(sub, json!([]));
    let (s, v) = h.call("POST", "/v1/users/boss/disable", Some(&boss), Some(json!({"reason": "x"}))).await;
    assert_eq!((s, code(&v).as_str()), (StatusCode::FORBIDDEN, "self_disable"), "{v}");
    assert_eq!(status_of(&h, "boss").await, "active");
}

// --- bad input -------------------------------------------------------------------------------

#[tokio::test]
async fn bad_input_is_refused_with_its_code_and_changes_nothing() {
    let h = harness();
    h.user("ana", &["soc-analyst"]);
    let before = entries(&h).await.len();
    let raw = |body: &'static str, ctype: Option<&'static str>| {
        let mut req = Request::builder()
            .method("POST")
            .uri("/v1/users/ana/disable")
            .header("authorization", format!("Bearer {}", h.admin));
        if let Some(c) = ctype {
            req = req.header("content-type", c);
        }
        req.body(Body::from(body)).unwrap()
    };
    for (body, ctype, want) in [
        ("{", Some("application/json"), 400u16),
        // An array where the schema says object (serde alone would read `[]` as a struct).
        ("[]", Some("application/json"), 400),
        ("{\"reason\": 5}", Some("application/json"), 400),
        ("{\"reason\": \"x\", \"status\": \"active\"}", Some("application/json"), 400),
        ("reason=x", Some("application/x-www-form-urlencoded"), 415),
        ("{\"reason\": \"x\"}", None, 415),
    ] {
        let res = h.router.clone().oneshot(raw(body, ctype)).await.unwrap();
        assert_eq!(res.status().as_u16(), want, "{body}");
    }
    let big = "x".repeat(warden_server::BODY_LIMIT);
    let (s, v) = h.call("POST", "/v1/users/ana/disable", Some(&h.admin), Some(json!({"reason": big}))).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{v}");
    let (s, v) = h.call("POST", "/v1/users/nobody/disable", Some(&h.admin), Some(json!({"reason": "x"}))).await;
    assert_eq!((s, code(&v).as_str()), (StatusCode::NOT_FOUND, "unknown_user"), "{v}");
    let (s, v) = h.call("POST", "/v1/users/nobody/enable", Some(&h.admin), Some(json!({}))).await;
    assert_eq!((s, code(&v).as_str()), (StatusCode::NOT_FOUND, "unknown_user"), "{v}");
    assert_eq!(status_of(&h, "ana").await, "active");
    assert_eq!(entries(&h).await.len(), before, "nothing recorded");
}

#[tokio::test]
async fn the_audit_entry_holds_no_secret() {
    let h = harness();
    let ana = h.user("ana", &["soc-analyst"]);
    let hash = warden_store::data_dir::token_hash(&ana);
    h.call("POST", "/v1/users/ana/disable", Some(&h.admin), Some(json!({"reason": "x"}))).await;
    h.call("POST", "/v1/users/ana/enable", Some(&h.admin), Some(json!({"reason": "y"}))).await;
    let all = serde_json::to_string(&entries(&h).await).unwrap();
    let hex = hash.rsplit(':').next().unwrap();
    assert!(!all.contains(hex) && !all.contains(&ana), "a token or its hash is in the log");
    let changed: Vec<_> = entries(&h).await.into_iter().filter(|e| e["entry"]["type"] == "user.changed").collect();
    assert_eq!(changed.len(), 2);
    for e in changed {
        let keys: Vec<_> = e["entry"]["data"].as_object().unwrap().keys().cloned().collect();
        assert_eq!(keys, ["from", "id", "reason", "to"], "{e}");
    }
    // Nor in the answer.
    let (_, v) = h.call("POST", "/v1/users/ana/disable", Some(&h.admin), Some(json!({}))).await;
    assert!(!v.to_string().contains(hex), "{v}");
}

// --- every door ------------------------------------------------------------------------------

#[tokio::test]
async fn a_disabled_user_is_refused_at_every_door() {
    let h = harness();
    let ana = h.user("ana", &["soc-analyst"]);
    let sub = "00u1ana";
    let body = json!({"id": "anna", "roles": ["soc-analyst"], "oidc": [format!("{}#{sub}", crate::IDP)]});
    let (_, v) = h.call("POST", "/v1/users", Some(&h.admin), Some(body)).await;
    let anna_token = v["token"].as_str().unwrap().to_string();
    let anna_oidc = crate::stranger::oidc(sub, json!(["soc-analyst", "admin"]));
    let ana_cookie = crate::stranger::sign_in(&h, &ana).await;
    let anna_cookie = crate::stranger::sign_in(&h, &anna_oidc).await;
    let apr = pending_isolate(&h, "INC-D1").await;
    for u in ["ana", "anna"] {
        let (s, v) =
            h.call("POST", &format!("/v1/users/{u}/disable"), Some(&h.admin), Some(json!({"reason": "gone"}))).await;
        assert_eq!(s, StatusCode::OK, "{v}");
    }
    for t in [&ana, &anna_token, &anna_oidc] {
        let (s, v) = h.call("POST", &format!("/v1/approvals/{apr}/approve"), Some(t), Some(json!({}))).await;
        assert_eq!((s, code(&v).as_str()), (StatusCode::FORBIDDEN, "user_disabled"), "{v}");
        let (s, v) =
            h.call("POST", &format!("/v1/approvals/{apr}/reject"), Some(t), Some(json!({"reason": "no"}))).await;
        assert_eq!((s, code(&v).as_str()), (StatusCode::FORBIDDEN, "user_disabled"), "{v}");
        let (s, _) = h.call("POST", "/v1/halt", Some(t), Some(json!({"scope": "all", "reason": "x"}))).await;
        assert_eq!(s, StatusCode::FORBIDDEN);
    }
    for c in [&ana_cookie, &anna_cookie] {
        assert_ne!(crate::stranger::get_page(&h, "/console/inbox", c).await.status, StatusCode::OK);
    }
    // A new console sign-in, by API token or OIDC.
    for t in [&ana, &anna_token, &anna_oidc] {
        let req = Request::builder()
            .method("POST")
            .uri("/console/sign-in")
            .header("host", "warden.test")
            .header("origin", "http://warden.test")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Body::from(serde_urlencoded::to_string([("token", t.as_str())]).unwrap()))
            .unwrap();
        let res = h.router.clone().oneshot(req).await.unwrap();
        assert_ne!(res.status(), StatusCode::SEE_OTHER, "signed in while disabled");
        assert!(res.headers().get("set-cookie").is_none());
    }
    let (_, a) = h.call("GET", &format!("/v1/approvals/{apr}"), Some(&h.admin), None).await;
    assert_eq!((a["state"].as_str(), a["votes"].as_array().map(Vec::len)), (Some("pending"), Some(0)), "{a}");
}

/// An unmapped OIDC person (no Warden user) cannot be named by disable; mapping their
/// identity to a user and disabling that user shuts them out (the workaround).
#[tokio::test]
async fn an_unmapped_oidc_admin_can_only_be_shut_out_by_mapping_then_disabling() {
    let h = harness();
    let mallory = crate::stranger::oidc("mallory", json!(["admin"]));
    let cookie = crate::stranger::sign_in(&h, &mallory).await;
    let id = format!("{}#mallory", crate::IDP);
    let enc: String = id.bytes().map(|b| format!("%{b:02X}")).collect();
    let (s, v) =
        h.call("POST", &format!("/v1/users/{enc}/disable"), Some(&h.admin), Some(json!({"reason": "x"}))).await;
    assert_eq!((s, code(&v).as_str()), (StatusCode::NOT_FOUND, "unknown_user"), "{v}");
    // The unmapped admin can disable registered admins.
    h.user("admin2", &["admin"]);
    let (s, _) = h.call("POST", "/v1/users/admin2/disable", Some(&mallory), Some(json!({"reason": "x"}))).await;
    assert_eq!(s, StatusCode::OK);
    // Workaround: map, then disable.
    let body = json!({"id": "mallory-blocked", "roles": ["tool"], "oidc": [id]});
    assert_eq!(h.call("POST", "/v1/users", Some(&h.admin), Some(body)).await.0, StatusCode::CREATED);
    let why = json!({"reason": "x"});
    assert_eq!(h.call("POST", "/v1/users/mallory-blocked/disable", Some(&h.admin), Some(why)).await.0, StatusCode::OK);
    let (s, v) = h.call("GET", "/v1/approvals", Some(&mallory), None).await;
    assert_eq!((s, code(&v).as_str()), (StatusCode::FORBIDDEN, "user_disabled"), "{v}");
    assert_ne!(crate::stranger::get_page(&h, "/console/inbox", &cookie).await.status, StatusCode::OK);
}

// --- what the attack found, fixed: requests in flight, sessions, streams ----------------------

/// FINDING: disable does not end console sessions; a session nobody used while the user was
/// disabled is live again after enable (docs: "every session ... refused").
#[tokio::test]
async fn enabling_again_does_not_revive_a_session_untouched_while_disabled() {
    let h = harness();
    let ana = h.user("ana", &["soc-analyst"]);
    let cookie = crate::stranger::sign_in(&h, &ana).await;
    let why = json!({"reason": "laptop stolen"});
    assert_eq!(h.call("POST", "/v1/users/ana/disable", Some(&h.admin), Some(why)).await.0, StatusCode::OK);
    // (nobody uses the cookie while ana is disabled)
    let why = json!({"reason": "back"});
    assert_eq!(h.call("POST", "/v1/users/ana/enable", Some(&h.admin), Some(why)).await.0, StatusCode::OK);
    let page = crate::stranger::get_page(&h, "/console/inbox", &cookie).await;
    assert_ne!(page.status, StatusCode::OK, "the stolen session is live again after enable");
}

/// FINDING: the vote does not re-check the voter: a user read as active before the disable
/// commits a vote after it (the service takes the `User` the extractor read; no precondition
/// on the user's record, unlike an agent's `admit_versioned`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vote_authenticated_before_the_disable_is_not_counted_after_it() {
    let h = harness();
    let ana = h.user("ana", &["soc-analyst"]);
    let apr = pending_isolate(&h, "INC-R1").await;
    // What the approve handler does, step by step: authenticate (the extractor) ...
    let app = h.app.clone();
    let t = ana.clone();
    let user =
        tokio::task::spawn_blocking(move || warden_server::auth::user_of_api_token(&app, &t)).await.unwrap().unwrap();
    // ... the disable commits and answers meanwhile ...
    let (s, _) = h.call("POST", "/v1/users/ana/disable", Some(&h.admin), Some(json!({"reason": "fired"}))).await;
    assert_eq!(s, StatusCode::OK);
    // ... then the vote.
    let verdict = warden_server::approvals::Verdict::Approve { reason: "late".into(), lease_ttl_secs: None };
    let voted = warden_server::approvals::decide(&h.app, user, apr.clone(), verdict, Duration::from_secs(5)).await;
    let (_, a) = h.call("GET", &format!("/v1/approvals/{apr}"), Some(&h.admin), None).await;
    assert!(voted.is_err() && a["state"] == "pending", "a disabled user's vote decided the approval: {a}");
}

/// FINDING, end to end: requests racing the disable. A disabled admin's `POST /v1/users`
/// (a new admin) or a mutual disable by two admins commits after the disable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_racing_a_disable_commit_after_it() {
    let h = harness();
    let mut backdoors = 0;
    let mut lockouts = 0;
    for i in 0..20 {
        let b = h.user(&format!("b{i}"), &["admin"]);
        let r1 = h.router.clone();
        let (a, bb) = (h.admin.clone(), b.clone());
        let dis = tokio::spawn(async move {
            call_on(&r1, "POST", &format!("/v1/users/b{i}/disable"), &a, Some(json!({"reason": "fired"}))).await
        });
        let r2 = h.router.clone();
        let add = tokio::spawn(async move {
            let body = json!({"id": format!("bd{i}"), "roles": ["admin"]});
            call_on(&r2, "POST", "/v1/users", &bb, Some(body)).await
        });
        let (d, n) = (dis.await.unwrap(), add.await.unwrap());
        assert_eq!(d.0, StatusCode::OK);
        if n.0 == StatusCode::CREATED {
            // Which committed first?
            let log = entries(&h).await;
            let at = |f: &dyn Fn(&Value) -> bool| log.iter().position(|e| f(&e["entry"])).unwrap();
            let disabled = at(&|e| e["type"] == "user.changed" && e["data"]["id"] == format!("b{i}"));
            let added = at(&|e| e["type"] == "user.added" && e["data"]["id"] == format!("bd{i}"));
            if added > disabled {
                backdoors += 1;
            }
        }
        // Two admins disabling each other at once.
        let x = h.user(&format!("x{i}"), &["admin"]);
        let y = h.user(&format!("y{i}"), &["admin"]);
        let (r1, r2) = (h.router.clone(), h.router.clone());
        let j1 = tokio::spawn(async move {
            call_on(&r1, "POST", &format!("/v1/users/y{i}/disable"), &x, Some(json!({"reason": "x"}))).await
        });
        let j2 = tokio::spawn(async move {
            call_on(&r2, "POST", &format!("/v1/users/x{i}/disable"), &y, Some(json!({"reason": "y"}))).await
        });
        let (s1, s2) = (j1.await.unwrap().0, j2.await.unwrap().0);
        if s1 == StatusCode::OK && s2 == StatusCode::OK {
            lockouts += 1;
        }
    }
    println!("disabled admin created an admin after the disable: {backdoors}/40; both admins disabled: {lockouts}/40");
    assert_eq!((backdoors, lockouts), (0, 0));
}

/// Low: a disabled user's open live-event stream keeps running (the log's size on every change).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_users_event_stream_ends() {
    let h = harness();
    let ana = h.user("ana", &["soc-analyst"]);
    let cookie = crate::stranger::sign_in(&h, &ana).await;
    let req = Request::builder().uri("/console/events").header("host", "warden.test").header("cookie", &cookie);
    let res = h.router.clone().oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let mut body = res.into_body();
    assert_eq!(
        h.call("POST", "/v1/users/ana/disable", Some(&h.admin), Some(json!({"reason": "x"}))).await.0,
        StatusCode::OK
    );
    // Something happens after the disable.
    h.user("someone", &["soc-analyst"]);
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while let Ok(Some(Ok(frame))) = tokio::time::timeout_at(deadline, body.frame()).await {
        if let Some(d) = frame.data_ref() {
            got.push(String::from_utf8_lossy(d).to_string());
        }
    }
    assert!(got.is_empty(), "a disabled user's stream still streams: {got:?}");
}

// --- Slack -----------------------------------------------------------------------------------

const SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";

fn slack_harness() -> Harness {
    use warden_server::notify::SlackApp;
    let slack = SlackApp {
        signing_secret: SECRET.into(),
        users: [("U0ANA".to_string(), "ana".to_string())].into_iter().collect(),
        response_url_prefixes: vec!["http://127.0.0.1:9/".into()],
    };
    let h = crate::harness_options(
        std::sync::Arc::new(warden_store::SystemClock),
        warden_server::state::ServerOptions { slack: Some(slack), ..Default::default() },
    );
    h.user("ana", &["soc-analyst"]);
    h
}

fn signed_press(at: i64, approval: &str) -> (String, String) {
    use hmac::{Hmac, KeyInit, Mac};
    let payload = json!({"type": "block_actions", "user": {"id": "U0ANA", "username": "x"},
        "actions": [{"action_id": "warden_approve", "value": approval, "type": "button"}],
        "response_url": "http://127.0.0.1:9/x", "trigger_id": "1.2.3"});
    let body = serde_urlencoded::to_string([("payload", payload.to_string())]).unwrap();
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(format!("v0:{at}:{body}").as_bytes());
    let sig = format!("v0={}", mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect::<String>());
    (body, sig)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_slack_users_press_is_refused() {
    let h = slack_harness();
    let apr = pending_isolate(&h, "INC-S1").await;
    assert_eq!(
        h.call("POST", "/v1/users/ana/disable", Some(&h.admin), Some(json!({"reason": "x"}))).await.0,
        StatusCode::OK
    );
    let at = h.app.now().unix_timestamp();
    let (body, sig) = signed_press(at, &apr);
    let req = Request::builder()
        .method("POST")
        .uri("/v1/integrations/slack/interactions")
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-slack-request-timestamp", at.to_string())
        .header("x-slack-signature", sig)
        .body(Body::from(body))
        .unwrap();
    let res = h.router.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let v: Value = serde_json::from_slice(&res.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!((status, code(&v).as_str()), (StatusCode::FORBIDDEN, "user_disabled"), "{v}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, a) = h.call("GET", &format!("/v1/approvals/{apr}"), Some(&h.admin), None).await;
    assert_eq!(a["state"], "pending", "{a}");
}

/// FINDING (Slack): the press is answered once `user_of` read the user active; the vote is cast
/// later in a spawned task with that `User` — a disable in between does not stop it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slack_press_read_before_the_disable_is_not_counted_after_it() {
    let h = slack_harness();
    let apr = pending_isolate(&h, "INC-S2").await;
    let (app, cfg) = (h.app.clone(), h.app.slack.clone().unwrap());
    let user =
        tokio::task::spawn_blocking(move || warden_server::slack::user_of(&app, &cfg, "U0ANA")).await.unwrap().unwrap();
    assert_eq!(
        h.call("POST", "/v1/users/ana/disable", Some(&h.admin), Some(json!({"reason": "x"}))).await.0,
        StatusCode::OK
    );
    let press = warden_server::slack::Press {
        slack_user: "U0ANA".into(),
        approve: true,
        approval: apr.clone(),
        response_url: None,
    };
    warden_server::slack::act(h.app.clone(), press, user).await;
    let (_, a) = h.call("GET", &format!("/v1/approvals/{apr}"), Some(&h.admin), None).await;
    assert_eq!(a["state"], "pending", "a disabled user's Slack vote decided it: {a}");
}

/// FINDING, end to end on /v1: a vote racing the disable is counted after the disable committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn votes_racing_a_disable_are_not_counted_after_it() {
    let h = harness();
    let closer = h.user("closer", &["soc-analyst"]);
    let mut late = 0;
    for i in 0..30 {
        let u = format!("v{i}");
        let token = h.user(&u, &["soc-analyst"]);
        // A fresh approval each round (the last one was decided).
        let apr = pending_isolate(&h, &format!("INC-V{i}")).await;
        let (r1, r2, a) = (h.router.clone(), h.router.clone(), h.admin.clone());
        let path = format!("/v1/users/{u}/disable");
        let dis = tokio::spawn(async move { call_on(&r1, "POST", &path, &a, Some(json!({"reason": "fired"}))).await });
        let path = format!("/v1/approvals/{apr}/approve");
        let vote =
            tokio::spawn(async move { call_on(&r2, "POST", &path, &token, Some(json!({"reason": "quick"}))).await });
        let (d, v) = (dis.await.unwrap(), vote.await.unwrap());
        assert_eq!(d.0, StatusCode::OK);
        if v.0 == StatusCode::OK {
            let log = entries(&h).await;
            let at = |f: &dyn Fn(&Value) -> bool| log.iter().position(|e| f(&e["entry"])).unwrap();
            let disabled = at(&|e| e["type"] == "user.changed" && e["data"]["id"] == u);
            let voted = at(&|e| e["type"] == "approval.granted" && e["actor"]["id"] == u);
            if voted > disabled {
                late += 1;
            }
        }
        // Let the next round open a new approval on the same target.
        let (_, a) = h.call("GET", &format!("/v1/approvals/{apr}"), Some(&h.admin), None).await;
        if a["state"] == "pending" {
            h.call("POST", &format!("/v1/approvals/{apr}/reject"), Some(&closer), Some(json!({"reason": "next"})))
                .await;
        }
    }
    println!("votes committed after the voter's disable: {late}/30");
    assert_eq!(late, 0);
}
