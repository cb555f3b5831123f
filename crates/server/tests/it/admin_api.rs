//! Agents and users over HTTP: the same rules as on a data directory, the role `admin` for
//! changes, and every change audited with the calling human.

use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::{EDR, Harness, harness};

const NEW: &str = "spiffe://acme.example/soc/new-agent";
const NEW_PATH: &str = "spiffe%3A%2F%2Facme.example%2Fsoc%2Fnew-agent";

async fn code(h: &Harness, method: &str, path: &str, token: &str, body: Option<Value>) -> (StatusCode, Value) {
    let (status, answer) = h.call(method, path, Some(token), body).await;
    (status, answer["error"]["code"].clone())
}

fn log_types(h: &Harness) -> Vec<(String, String)> {
    let store = h.app.ledger().store();
    store
        .entries(0, 10_000)
        .unwrap()
        .iter()
        .map(|e| {
            let v: Value = serde_json::from_slice(&e.bytes).unwrap();
            (v["type"].as_str().unwrap().to_string(), v["actor"]["id"].as_str().unwrap_or_default().to_string())
        })
        .collect()
}

#[tokio::test]
async fn admins_register_suspend_resume_and_mint_for_agents() {
    let h = harness();
    let body = json!({"id": NEW, "owner": "soc-automation", "purpose": "testing"});
    let (status, agent) = h.call("POST", "/v1/agents", Some(&h.admin), Some(body.clone())).await;
    assert_eq!(status, StatusCode::CREATED, "{agent}");
    assert_eq!((agent["id"].as_str(), agent["status"].as_str()), (Some(NEW), Some("active")));
    assert_eq!(
        code(&h, "POST", "/v1/agents", &h.admin, Some(body)).await,
        (StatusCode::CONFLICT, json!("agent_exists"))
    );
    let bad = json!({"id": "spiffe://ACME/x", "owner": "o"});
    assert_eq!(
        code(&h, "POST", "/v1/agents", &h.admin, Some(bad)).await,
        (StatusCode::UNPROCESSABLE_ENTITY, json!("invalid_spiffe_id"))
    );

    let (status, one) = h.call("GET", &format!("/v1/agents/{NEW_PATH}"), Some(&h.admin), None).await;
    assert_eq!((status, one["owner"].as_str()), (StatusCode::OK, Some("soc-automation")));
    let (status, all) = h.call("GET", "/v1/agents", Some(&h.admin), None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(all.as_array().unwrap().iter().any(|a| a["id"] == NEW));
    assert_eq!(
        code(&h, "GET", "/v1/agents/spiffe%3A%2F%2Fnobody%2Fx", &h.admin, None).await,
        (StatusCode::NOT_FOUND, json!("unknown_agent"))
    );

    // A token minted over the API works for the agent.
    let (status, minted) =
        h.call("POST", &format!("/v1/agents/{NEW_PATH}/token"), Some(&h.admin), Some(json!({"ttl": "5m"}))).await;
    assert_eq!(status, StatusCode::OK, "{minted}");
    let token = minted["token"].as_str().unwrap().to_string();
    let task = json!({"title": "t", "trigger": {"source": "siem"}});
    assert_eq!(h.call("POST", "/v1/tasks", Some(&token), Some(task.clone())).await.0, StatusCode::CREATED);
    for ttl in ["0s", "25h", "soon"] {
        assert_eq!(
            code(&h, "POST", &format!("/v1/agents/{NEW_PATH}/token"), &h.admin, Some(json!({"ttl": ttl}))).await,
            (StatusCode::UNPROCESSABLE_ENTITY, json!("invalid_ttl")),
            "{ttl}"
        );
    }

    // Suspended: its tokens are refused, and no new one is minted; resumed: accepted again.
    let (status, suspended) = h
        .call("POST", &format!("/v1/agents/{NEW_PATH}/suspend"), Some(&h.admin), Some(json!({"reason": "drill"})))
        .await;
    assert_eq!((status, suspended["status"].as_str()), (StatusCode::OK, Some("suspended")));
    assert_eq!(
        code(&h, "POST", "/v1/tasks", &token, Some(task.clone())).await,
        (StatusCode::FORBIDDEN, json!("agent_suspended"))
    );
    assert_eq!(
        code(&h, "POST", &format!("/v1/agents/{NEW_PATH}/token"), &h.admin, Some(json!({}))).await,
        (StatusCode::CONFLICT, json!("agent_not_active"))
    );
    let (status, _) = h.call("POST", &format!("/v1/agents/{NEW_PATH}/resume"), Some(&h.admin), Some(json!({}))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(h.call("POST", "/v1/tasks", Some(&token), Some(task)).await.0, StatusCode::CREATED);

    // Each change is in the log, by the admin, and the token is not.
    let types = log_types(&h);
    for t in ["agent.added", "agent.token_issued", "agent.changed"] {
        assert!(types.iter().any(|(ty, actor)| ty == t && actor == "admin"), "{t} by admin in {types:?}");
    }
    let raw: Vec<u8> =
        h.app.ledger().store().entries(0, 10_000).unwrap().iter().flat_map(|e| e.bytes.clone()).collect();
    assert!(!String::from_utf8_lossy(&raw).contains(&token), "a minted token leaked into the log");
}

#[tokio::test]
async fn changes_need_the_admin_role_and_a_human() {
    let h = harness();
    let analyst = h.user("ana", &["soc-analyst"]);
    let body = json!({"id": NEW, "owner": "o"});
    assert_eq!(
        code(&h, "POST", "/v1/agents", &analyst, Some(body.clone())).await,
        (StatusCode::FORBIDDEN, json!("missing_role"))
    );
    assert_eq!(
        code(&h, "POST", "/v1/users", &analyst, Some(json!({"id": "eve", "roles": ["admin"]}))).await,
        (StatusCode::FORBIDDEN, json!("missing_role"))
    );
    let enc = EDR.replace(':', "%3A").replace('/', "%2F");
    assert_eq!(
        code(&h, "POST", &format!("/v1/agents/{enc}/token"), &analyst, Some(json!({}))).await,
        (StatusCode::FORBIDDEN, json!("missing_role"))
    );
    // Reads are open to any human, never to agents.
    assert_eq!(h.call("GET", "/v1/agents", Some(&analyst), None).await.0, StatusCode::OK);
    let svid = h.svid(EDR);
    assert_eq!(code(&h, "GET", "/v1/agents", &svid, None).await, (StatusCode::FORBIDDEN, json!("agents_not_allowed")));
    assert_eq!(
        code(&h, "POST", "/v1/agents", &svid, Some(body)).await,
        (StatusCode::FORBIDDEN, json!("agents_not_allowed"))
    );
}

#[tokio::test]
async fn admins_add_users_whose_token_is_shown_once() {
    let h = harness();
    let (status, added) =
        h.call("POST", "/v1/users", Some(&h.admin), Some(json!({"id": "bob", "roles": ["soc-analyst"]}))).await;
    assert_eq!(status, StatusCode::CREATED, "{added}");
    let token = added["token"].as_str().unwrap().to_string();
    assert!(token.starts_with("wdn_"));
    assert_eq!(h.call("GET", "/v1/users", Some(&token), None).await.0, StatusCode::OK);
    let (_, users) = h.call("GET", "/v1/users", Some(&h.admin), None).await;
    let bob = users.as_array().unwrap().iter().find(|u| u["id"] == "bob").unwrap().clone();
    assert_eq!(bob, json!({"id": "bob", "roles": ["soc-analyst"], "status": "active"}));
    assert!(!users.to_string().contains("sha256"), "token hashes are never shown: {users}");
    assert_eq!(
        code(&h, "POST", "/v1/users", &h.admin, Some(json!({"id": "bob", "roles": ["x"]}))).await,
        (StatusCode::CONFLICT, json!("user_exists"))
    );
    assert_eq!(
        code(&h, "POST", "/v1/users", &h.admin, Some(json!({"id": "Bob!", "roles": ["x"]}))).await,
        (StatusCode::UNPROCESSABLE_ENTITY, json!("invalid_name"))
    );
    assert!(log_types(&h).iter().any(|(t, a)| t == "user.added" && a == "admin"));
}
