//! Data boundaries (issue 26) through the `/v1` door: `[data] allowed` enforced at decision
//! time. (The MCP door's: `mcp::upstream::an_upstream_tool_reading_data_the_agent_may_not_is_denied`.)

use std::sync::Arc;

use axum::http::StatusCode;
use serde_json::json;

use crate::{PHISH, connector, harness_full};

/// A copy of the example bundle in a temporary directory, with `file`'s `from` made `to`.
fn bundle_with(file: &str, from: &str, to: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    crate::reload::copy_dir(&crate::example_dir(), dir.path());
    let path = dir.path().join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(from), "`{from}` not in {file}");
    std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
    dir
}

/// phish-triage may quarantine mail at level 3, but not once its `[data] allowed` stops listing
/// `email.headers`, which `email.quarantine` reads: denied, recorded with the cap, and the
/// mail tool never called. Asking to dry-run it says the same.
#[tokio::test]
async fn an_action_reading_data_the_agent_may_not_is_denied_and_nothing_runs() {
    let (url, keys) = crate::lab();
    let policy = bundle_with("agents/phish-triage.toml", "allowed = [\"email.headers\", ", "allowed = [");
    let h = harness_full(
        Some(policy.path()),
        Arc::new(warden_store::SystemClock),
        Default::default(),
        Some(connector(&url, &keys)),
    );
    let ana = h.user("ana", &["soc-analyst"]);
    let task = json!({"id": "INC-D1", "title": "t", "trigger": {"source": "email-gateway", "severity": "high"}});
    assert_eq!(h.call("POST", "/v1/tasks", Some(&ana), Some(task)).await.0, StatusCode::CREATED);
    let ask = json!({"task": "INC-D1", "action": "email.quarantine", "target": "mailbox:jdoe@acme.example",
                     "params": {"message_id": "wave-2041-a1"}, "confidence": 0.95, "rationale": "phish",
                     "evidence": [{"kind": "email", "ref": "m"}]});
    let phish = h.svid(PHISH);
    let (status, dry) = h.call("POST", "/v1/decisions", Some(&phish), Some(ask.clone())).await;
    assert_eq!((status, dry["decision"]["outcome"].as_str()), (StatusCode::OK, Some("deny")), "{dry}");
    let (status, a) = h.call("POST", "/v1/actions", Some(&phish), Some(ask)).await;
    assert_eq!(status, StatusCode::OK, "{a}");
    assert_eq!((a["decision"]["outcome"].as_str(), a["decision"]["granted_level"].as_u64()), (Some("deny"), Some(3)));
    let cap = &a["decision"]["caps"][0];
    assert_eq!(cap["code"], "data_not_allowed", "{a}");
    let reason = cap["reason"].as_str().unwrap();
    assert!(reason.contains("`email.headers`") && reason.contains("agents/phish-triage.toml:13"), "{reason}");
    let state: serde_json::Value = ureq::get(&format!("{url}/state")).call().unwrap().body_mut().read_json().unwrap();
    assert_eq!(state["calls"]["by_endpoint"]["mail quarantine"].as_u64().unwrap_or(0), 0, "no tool was called");
    assert_eq!(state["mail"]["messages"]["wave-2041-a1"]["status"].as_str().unwrap_or("inbox"), "inbox", "{state}");
    // The decision is in the log with its cap.
    let (_, entries) = h.call("GET", "/v1/audit/entries?limit=1000", Some(&h.admin), None).await;
    let decided = entries["entries"].as_array().unwrap().iter().rev().find(|e| e["entry"]["type"] == "decision.made");
    assert!(decided.unwrap().to_string().contains("data_not_allowed"), "{decided:?}");
}
