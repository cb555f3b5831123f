//! `GET /v1/explain/{id}`: the accountability chain of autonomous, approved, denied,
//! rolled-back and halted actions, every cited entry proven against the signed checkpoint.

use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::{EDR, Harness, harness_lab};

fn isolate(target: &str) -> Value {
    json!({"task": "INC-7", "action": "host.isolate", "target": target, "confidence": 0.95,
        "params": {"reason": "beacon"}, "rationale": "C2 beacon from the host", "evidence": [{"kind": "edr", "ref": "det:1"}]})
}

async fn setup() -> (Harness, String) {
    let (h, _, _) = harness_lab();
    let agent = h.svid(EDR);
    let task = json!({"id": "INC-7", "title": "beaconing", "trigger": {"source": "edr", "alert_id": "ALRT-1001", "severity": "high", "summary": "C2"}});
    assert_eq!(h.call("POST", "/v1/tasks", Some(&agent), Some(task)).await.0, StatusCode::CREATED);
    (h, agent)
}

async fn explain(h: &Harness, id: &str) -> Value {
    let (status, e) = h.call("GET", &format!("/v1/explain/{id}"), Some(&h.admin), None).await;
    assert_eq!(status, StatusCode::OK, "{e}");
    e
}

fn cited(e: &Value) -> Vec<&str> {
    e["entries"].as_array().unwrap().iter().map(|c| c["type"].as_str().unwrap()).collect()
}

fn all_verified(e: &Value) {
    let entries = e["entries"].as_array().unwrap();
    assert!(!entries.is_empty());
    for c in entries {
        assert_eq!(c["verified"], true, "{c}");
        assert_eq!(c["proof"]["tree_size"], e["checkpoint"]["size"]);
    }
}

#[tokio::test]
async fn an_autonomous_action_is_explained_from_trigger_to_lease() {
    let (h, agent) = setup().await;
    let (_, a) = h.call("POST", "/v1/actions", Some(&agent), Some(isolate("host:web-42"))).await;
    let e = explain(&h, a["id"].as_str().unwrap()).await;
    assert_eq!(
        (e["trigger"]["alert_id"].as_str(), e["trigger"]["severity"].as_str()),
        (Some("ALRT-1001"), Some("high"))
    );
    assert_eq!((e["agent"]["id"].as_str(), e["agent"]["owner"].as_str()), (Some(EDR), Some("team:endpoint-response")));
    assert_eq!(e["request"]["rationale"], "C2 beacon from the host");
    assert_eq!(
        (e["decision"]["outcome"].as_str(), e["decision"]["effective_level"].as_u64()),
        (Some("execute"), Some(3))
    );
    assert_eq!(e["decision"]["policies"][0]["file"], "agents/edr-responder.toml");
    assert_eq!(
        (e["execution"]["state"].as_str(), e["execution"]["connector"].as_str()),
        (Some("succeeded"), Some("edr"))
    );
    assert_eq!(
        (e["lease"]["scope"].as_str(), e["lease"]["state"].as_str()),
        (Some("host.isolate host:web-42"), Some("revoked"))
    );
    assert_eq!(e["approval"], Value::Null);
    assert!(
        e["escalation"]["workflow_owner"].is_string() && e["escalation"]["incident_commander"].is_string(),
        "{}",
        e["escalation"]
    );
    assert_eq!(
        cited(&e),
        [
            "action.requested",
            "decision.made",
            "lease.issued",
            "execution.started",
            "lease.revoked",
            "execution.succeeded"
        ]
    );
    all_verified(&e);
}

#[tokio::test]
async fn an_approved_action_names_who_approved_it() {
    let (h, agent) = setup().await;
    let (_, a) = h.call("POST", "/v1/actions", Some(&agent), Some(isolate("host:db-payments-01"))).await;
    let approval = a["decision"]["approval"]["id"].as_str().unwrap();
    let ana = h.user("ana", &["soc-analyst"]);
    let (status, _) = h
        .call("POST", &format!("/v1/approvals/{approval}/approve"), Some(&ana), Some(json!({"reason": "confirmed C2"})))
        .await;
    assert_eq!(status, StatusCode::OK);
    let e = explain(&h, a["id"].as_str().unwrap()).await;
    assert_eq!(e["approval"]["state"], "approved");
    assert_eq!(e["approval"]["votes"][0]["user"], "ana");
    assert_eq!(
        (e["approval"]["votes"][0]["role"].as_str(), e["approval"]["votes"][0]["reason"].as_str()),
        (Some("soc-analyst"), Some("confirmed C2"))
    );
    let types = cited(&e);
    assert!(types.contains(&"approval.requested") && types.contains(&"approval.granted"), "{types:?}");
    assert_eq!(e["execution"]["state"], "succeeded");
    all_verified(&e);
}

#[tokio::test]
async fn a_denied_action_shows_its_caps_and_nothing_ran() {
    let (h, agent) = setup().await;
    let mut body = isolate("host:web-42");
    body["action"] = json!("host.wipe");
    let (_, a) = h.call("POST", "/v1/actions", Some(&agent), Some(body)).await;
    let e = explain(&h, a["id"].as_str().unwrap()).await;
    assert_eq!(e["decision"]["outcome"], "deny");
    assert!(!e["decision"]["caps"].as_array().unwrap().is_empty());
    assert_eq!((e["execution"].clone(), e["lease"].clone()), (Value::Null, Value::Null));
    assert_eq!(cited(&e), ["action.requested", "decision.made"]);
    all_verified(&e);
}

#[tokio::test]
async fn rolled_back_and_halted_actions_show_who_stopped_them() {
    let (h, agent) = setup().await;
    let (_, a) = h.call("POST", "/v1/actions", Some(&agent), Some(isolate("host:web-42"))).await;
    let id = a["id"].as_str().unwrap();
    let olga = h.user("olga", &["incident-commander"]);
    assert_eq!(h.call("POST", &format!("/v1/actions/{id}/rollback"), Some(&olga), None).await.0, StatusCode::OK);
    let e = explain(&h, id).await;
    assert_eq!((e["rollback"]["by"].as_str(), e["rollback"]["action"].as_str()), (Some("olga"), Some("host.release")));
    assert!(cited(&e).ends_with(&["rollback.started", "rollback.succeeded"]), "{:?}", cited(&e));
    all_verified(&e);

    let (status, _) = h
        .call(
            "POST",
            "/v1/halt",
            Some(&h.admin),
            Some(json!({"scope": "action", "id": "host.isolate", "reason": "drill"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, b) = h.call("POST", "/v1/actions", Some(&agent), Some(isolate("host:web-42"))).await;
    let e = explain(&h, b["id"].as_str().unwrap()).await;
    assert_eq!(e["decision"]["outcome"], "deny");
    assert!(e["decision"]["caps"].to_string().contains("halt"), "{}", e["decision"]["caps"]);
    all_verified(&e);
    let (status, _) = h.call("GET", "/v1/explain/act_nope", Some(&h.admin), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = h.call("GET", &format!("/v1/explain/{id}"), Some(&agent), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "humans only");
}
