//! Approving from Slack: signed callbacks only, mapped users only, the same rules as the API,
//! and the message updated through `response_url`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use hmac::{Hmac, KeyInit, Mac};
use http_body_util::BodyExt as _;
use serde_json::{Value, json};
use sha2::Sha256;
use tower::ServiceExt as _;
use warden_server::notify::SlackApp;
use warden_server::state::ServerOptions;
use warden_store::ManualClock;

use crate::{EDR, Harness, eventually, harness_options};

const SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";

/// Slack's `response_url`, on loopback: every message it is sent.
async fn slack_hooks() -> (Arc<Mutex<Vec<Value>>>, String) {
    let got = Arc::new(Mutex::new(Vec::new()));
    let state = got.clone();
    let app = axum::Router::new().route(
        "/actions/{id}",
        axum::routing::post(move |axum::Json(body): axum::Json<Value>| {
            let state = state.clone();
            async move {
                state.lock().unwrap().push(body);
                StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (got, format!("http://{addr}/"))
}

async fn harness(prefix: &str) -> (Harness, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(time::OffsetDateTime::now_utc()));
    let slack = SlackApp {
        signing_secret: SECRET.into(),
        users: [("U0ANA", "ana"), ("U0OLGA", "olga"), ("U0BO", "bo"), ("U0GHOST", "ghost"), ("U0IVY", "ivy")]
            .into_iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect(),
        response_url_prefixes: vec![prefix.to_string()],
    };
    let h = harness_options(clock.clone(), ServerOptions { slack: Some(slack), ..Default::default() });
    h.user("ana", &["soc-analyst"]);
    h.user("bo", &["soc-analyst"]);
    h.user("olga", &["soc-analyst", "team:endpoint-response"]);
    h.user("ivy", &["iam-owner"]);
    (h, clock)
}

fn sign(at: i64, body: &str, secret: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("v0:{at}:{body}").as_bytes());
    format!("v0={}", mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect::<String>())
}

fn press_body(user: &str, action_id: &str, approval: &str, response_url: &str) -> String {
    let payload = json!({"type": "block_actions", "user": {"id": user, "username": "x"},
        "actions": [{"action_id": action_id, "value": approval, "type": "button"}],
        "response_url": response_url, "trigger_id": "1.2.3"});
    serde_urlencoded::to_string([("payload", payload.to_string())]).unwrap()
}

async fn deliver(h: &Harness, at: i64, signature: &str, body: &str) -> (StatusCode, Value) {
    let req = Request::builder()
        .method("POST")
        .uri("/v1/integrations/slack/interactions")
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-slack-request-timestamp", at.to_string())
        .header("x-slack-signature", signature)
        .body(Body::from(body.to_string()))
        .unwrap();
    let res = h.router.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

async fn pending(h: &Harness) -> String {
    let agent = h.svid(EDR);
    let task = json!({"id": "INC-7", "title": "t", "trigger": {"source": "edr", "severity": "high"}});
    h.call("POST", "/v1/tasks", Some(&agent), Some(task)).await;
    let body = json!({"task": "INC-7", "action": "host.isolate", "target": "host:db-payments-01", "confidence": 0.95,
        "params": {"reason": "beacon"}, "rationale": "C2", "evidence": [{"kind": "edr", "ref": "det:9"}]});
    let (_, a) = h.call("POST", "/v1/actions", Some(&agent), Some(body)).await;
    assert_eq!(a["state"], "pending_approval", "{a}");
    a["decision"]["approval"]["id"].as_str().unwrap().to_string()
}

async fn state(h: &Harness, id: &str) -> String {
    h.call("GET", &format!("/v1/approvals/{id}"), Some(&h.admin), None).await.1["state"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn a_signed_press_by_a_mapped_analyst_approves_and_updates_the_message() {
    let (hooks, prefix) = slack_hooks().await;
    let (h, _) = harness(&prefix).await;
    let id = pending(&h).await;
    let now = h.app.now().unix_timestamp();
    let body = press_body("U0ANA", "warden_approve", &id, &format!("{prefix}actions/1"));
    let (status, answer) = deliver(&h, now, &sign(now, &body, SECRET), &body).await;
    assert_eq!((status, &answer["taken"]), (StatusCode::OK, &json!(id)));
    let message = eventually(|| hooks.lock().unwrap().first().cloned()).await;
    assert_eq!(message["replace_original"], true);
    assert!(message["text"].as_str().unwrap().starts_with("Approved by ana"), "{message}");
    assert!(message.to_string().find("warden_approve").is_none(), "no buttons left to press");
    assert_eq!(state(&h, &id).await, "approved");
    let (_, a) = h.call("GET", &format!("/v1/approvals/{id}"), Some(&h.admin), None).await;
    assert_eq!(
        (a["votes"][0]["user"].as_str(), a["votes"][0]["reason"].as_str()),
        (Some("ana"), Some("approved in Slack by ana"))
    );
}

#[tokio::test]
async fn unsigned_forged_or_replayed_presses_decide_nothing() {
    let (hooks, prefix) = slack_hooks().await;
    let (h, _) = harness(&prefix).await;
    let id = pending(&h).await;
    let now = h.app.now().unix_timestamp();
    let body = press_body("U0ANA", "warden_approve", &id, &format!("{prefix}actions/1"));
    let good = sign(now, &body, SECRET);
    // Another secret; the signature of another body; six minutes old; from the future; none.
    let other = press_body("U0ANA", "warden_approve", "apr_other", &format!("{prefix}actions/1"));
    for (at, sig, why) in [
        (now, sign(now, &body, "not-the-secret"), "another app's secret"),
        (now, sign(now, &other, SECRET), "another body's signature"),
        (now - 301, sign(now - 301, &body, SECRET), "replayed after 5 minutes"),
        (now + 301, sign(now + 301, &body, SECRET), "dated in the future"),
        (now, String::new(), "no signature"),
        (now + 1, good.clone(), "the signature under another timestamp"),
    ] {
        let (status, e) = deliver(&h, at, &sig, &body).await;
        assert_eq!(
            (status, e["error"]["code"].as_str()),
            (StatusCode::UNAUTHORIZED, Some("bad_slack_signature")),
            "{why}"
        );
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(state(&h, &id).await, "pending");
    assert!(hooks.lock().unwrap().is_empty(), "no message for a request that is not Slack's");
    // Not configured at all: 404, whatever is sent.
    let plain = crate::harness();
    let (status, e) = deliver(&plain, now, &good, &body).await;
    assert_eq!((status, e["error"]["code"].as_str()), (StatusCode::NOT_FOUND, Some("slack_not_configured")));
}

#[tokio::test]
async fn the_same_rules_as_everywhere_else_apply() {
    let (hooks, prefix) = slack_hooks().await;
    let (h, _) = harness(&prefix).await;
    let id = pending(&h).await;
    let now = h.app.now().unix_timestamp();
    let url = format!("{prefix}actions/1");
    let press = |user: &str, verb: &str| press_body(user, verb, &id, &url);
    // An unmapped Slack user, and one mapped to nobody: refused, told so.
    for user in ["U0NOBODY", "U0GHOST"] {
        let body = press(user, "warden_approve");
        let (status, e) = deliver(&h, now, &sign(now, &body, SECRET), &body).await;
        assert_eq!(
            (status, e["error"]["code"].as_str()),
            (StatusCode::FORBIDDEN, Some("unknown_slack_user")),
            "{user}"
        );
    }
    eventually(|| (hooks.lock().unwrap().len() == 2).then_some(())).await;
    // The agent's owner: separation of duties, told only to them.
    let body = press("U0OLGA", "warden_approve");
    assert_eq!(deliver(&h, now, &sign(now, &body, SECRET), &body).await.0, StatusCode::OK);
    let told = eventually(|| {
        let got = hooks.lock().unwrap();
        (got.len() == 3).then(|| got.clone())
    })
    .await;
    assert!(told[..2].iter().all(|m| m["text"].as_str().unwrap().contains("unknown_slack_user")));
    assert_eq!(
        (told[2]["response_type"].as_str(), told[2]["replace_original"].as_bool()),
        (Some("ephemeral"), Some(false))
    );
    assert!(told[2]["text"].as_str().unwrap().contains("separation_of_duties"), "{}", told[2]);
    assert_eq!(state(&h, &id).await, "pending");
    // Not a Warden button: 422, nothing decided.
    let body = press("U0ANA", "something_else");
    assert_eq!(deliver(&h, now, &sign(now, &body, SECRET), &body).await.0, StatusCode::UNPROCESSABLE_ENTITY);
    // A rejection from Slack carries a reason saying so; then nobody can decide it again.
    let body = press("U0BO", "warden_reject");
    assert_eq!(deliver(&h, now, &sign(now, &body, SECRET), &body).await.0, StatusCode::OK);
    let rejected = eventually(|| hooks.lock().unwrap().get(3).cloned()).await;
    assert!(rejected["text"].as_str().unwrap().starts_with("Rejected by bo"), "{rejected}");
    assert_eq!(state(&h, &id).await, "rejected");
    let body = press("U0ANA", "warden_approve");
    assert_eq!(deliver(&h, now, &sign(now, &body, SECRET), &body).await.0, StatusCode::OK);
    let late = eventually(|| hooks.lock().unwrap().get(4).cloned()).await;
    assert!(late["text"].as_str().unwrap().contains("approval_decided"), "{late}");
}

#[tokio::test]
async fn a_response_url_outside_slack_is_never_called() {
    let (hooks, prefix) = slack_hooks().await;
    let (h, _) = harness("https://hooks.slack.com/").await;
    let id = pending(&h).await;
    let now = h.app.now().unix_timestamp();
    let body = press_body("U0ANA", "warden_approve", &id, &format!("{prefix}actions/1"));
    assert_eq!(deliver(&h, now, &sign(now, &body, SECRET), &body).await.0, StatusCode::OK);
    eventually(|| (state_sync(&h, &id) == "approved").then_some(())).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(hooks.lock().unwrap().is_empty(), "the vote stands; the unknown host is not called");
}

fn state_sync(h: &Harness, id: &str) -> String {
    let r = h.app.ledger().store().get(warden_store::Table::Approvals, id).unwrap().unwrap();
    r.state.unwrap()
}

#[test]
fn notices_carry_buttons_only_while_pending_and_only_when_slack_is_set_up() {
    use warden_server::notify::{Kind, slack_payload};
    let mut a: warden_server::approvals::Approval = serde_json::from_value(json!({
        "id": "apr_1", "state": "pending", "agent": EDR, "owner": "team:x", "task": "T", "action": "host.isolate",
        "target": "host:a", "requests": ["act_1"], "confidence": 0.9, "rationale": "r", "evidence": [],
        "roles": ["soc-analyst"], "quorum": 2, "separation_of_duties": true, "notify": [], "caps": [], "policies": [],
        "bundle_version": "v", "lease_ttl_secs": 60, "created_at": "t", "created_ms": 0, "expires_at": "t", "expires_ms": 1,
        "votes": [{"user": "ana", "role": "soc-analyst", "at": "t", "reason": ""}]
    }))
    .unwrap();
    let buttons =
        |m: &Value| m.to_string().contains("\"warden_approve\"") && m.to_string().contains("\"warden_reject\"");
    assert!(buttons(&slack_payload(Kind::Created, &a, "https://w", true)));
    assert!(buttons(&slack_payload(Kind::Escalated, &a, "https://w", true)));
    assert!(!buttons(&slack_payload(Kind::Created, &a, "https://w", false)));
    assert!(!buttons(&slack_payload(Kind::Expired, &a, "https://w", true)));
    assert!(slack_payload(Kind::Created, &a, "https://w", true).to_string().contains("Approved so far* (1 of 2): ana"));
    a.state = warden_server::approvals::ApprovalState::Rejected;
    assert!(!buttons(&slack_payload(Kind::Created, &a, "https://w", true)));
}

/// A signed press captured and replayed within the 5-minute window counts once: on a quorum of
/// two, one person's press sent twice does not approve (the replay is `already_voted`).
#[tokio::test]
async fn a_replayed_press_counts_once() {
    let (hooks, prefix) = slack_hooks().await;
    let (h, _) = harness(&prefix).await;
    let iam = h.svid("spiffe://acme.example/soc/identity-responder");
    let task = json!({"id": "INC-8", "title": "t", "trigger": {"source": "siem", "severity": "high"}});
    h.call("POST", "/v1/tasks", Some(&h.admin), Some(task)).await;
    let body = json!({"task": "INC-8", "action": "account.disable", "target": "account:adm-jdoe", "confidence": 0.97,
        "params": {"reason": "token theft"}, "rationale": "C2", "evidence": [{"kind": "idp", "ref": "r:1"}, {"kind": "edr", "ref": "d:1"}]});
    let (_, a) = h.call("POST", "/v1/actions", Some(&iam), Some(body)).await;
    assert_eq!(
        (a["state"].as_str(), a["decision"]["approval"]["quorum"].as_u64()),
        (Some("pending_approval"), Some(2)),
        "{a}"
    );
    let id = a["decision"]["approval"]["id"].as_str().unwrap().to_string();
    let now = h.app.now().unix_timestamp();
    let press = press_body("U0IVY", "warden_approve", &id, &format!("{prefix}actions/1"));
    let signature = sign(now, &press, SECRET);
    for _ in 0..2 {
        assert_eq!(deliver(&h, now, &signature, &press).await.0, StatusCode::OK);
        let n = hooks.lock().unwrap().len();
        eventually(|| (hooks.lock().unwrap().len() > n).then_some(())).await;
    }
    let told = hooks.lock().unwrap().clone();
    assert!(told[0]["text"].as_str().unwrap().contains("Approval needed"), "the notice again, 1 of 2: {}", told[0]);
    assert!(told[1]["text"].as_str().unwrap().contains("already_voted"), "{}", told[1]);
    let (_, shown) = h.call("GET", &format!("/v1/approvals/{id}"), Some(&h.admin), None).await;
    assert_eq!((shown["state"].as_str(), shown["votes"].as_array().unwrap().len()), (Some("pending"), 1));
}
