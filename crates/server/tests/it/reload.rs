//! Policy reload: only valid bundles, each load audited with its version.

use axum::http::StatusCode;
use serde_json::json;

use crate::{example_dir, harness_from};

pub fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[tokio::test]
async fn only_valid_bundles_replace_the_one_in_force_and_each_load_is_audited() {
    let policy = tempfile::tempdir().unwrap();
    copy_dir(&example_dir(), policy.path());
    let h = harness_from(Some(policy.path()));
    let (_, ready) = h.call("GET", "/readyz", None, None).await;
    let first = ready["bundle_version"].as_str().unwrap().to_string();

    let (status, body) = h.call("POST", "/v1/policy/reload", Some(&h.admin), None).await;
    assert_eq!((status, body), (StatusCode::OK, json!({"bundle_version": first, "changed": false})));

    let analyst = h.user("alice", &["soc-analyst"]);
    let (status, body) = h.call("POST", "/v1/policy/reload", Some(&analyst), None).await;
    assert_eq!((status, body["error"]["code"].clone()), (StatusCode::FORBIDDEN, json!("missing_role")));

    let file = policy.path().join("agents/edr-responder.toml");
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, text.replace("autonomous = 0.90", "autonomous = 0.99")).unwrap();
    let (status, body) = h.call("POST", "/v1/policy/reload", Some(&h.admin), None).await;
    assert_eq!((status, body["changed"].clone()), (StatusCode::OK, json!(true)));
    let second = body["bundle_version"].as_str().unwrap().to_string();
    assert_ne!(second, first);

    std::fs::write(&file, "this is not toml [").unwrap();
    let (status, body) = h.call("POST", "/v1/policy/reload", Some(&h.admin), None).await;
    assert_eq!((status, body["error"]["code"].clone()), (StatusCode::UNPROCESSABLE_ENTITY, json!("invalid_policy")));
    assert!(body["error"]["details"]["problems"][0].as_str().unwrap().contains("agents/edr-responder.toml"), "{body}");
    let (_, ready) = h.call("GET", "/readyz", None, None).await;
    assert_eq!(ready["bundle_version"], second, "the valid bundle stays in force");

    let (_, entries) = h.call("GET", "/v1/audit/entries?limit=1000", Some(&h.admin), None).await;
    let loads: Vec<(String, String)> = entries["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["entry"]["type"] == "policy.loaded")
        .map(|e| {
            (
                e["entry"]["data"]["bundle_version"].as_str().unwrap().into(),
                e["entry"]["actor"]["id"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(loads, [(first, "warden".to_string()), (second, "admin".to_string())]);
}

/// Two nodes on one store, node B not yet following a load made on node A (its mirror is
/// stale): a decision B makes under the replaced bundle is never recorded — its commit expects
/// the bundle in force — and B answers 409 `policy_changed`; sent again, it is decided under
/// the new bundle. (Found by the multi-node attack: decisions under the old bundle executed
/// past the new bundle's budget.)
#[tokio::test]
async fn a_decision_under_a_bundle_replaced_on_another_node_is_not_recorded() {
    let policy = tempfile::tempdir().unwrap();
    copy_dir(&example_dir(), policy.path());
    let h = harness_from(Some(policy.path()));
    let (b, router_b) = crate::second_node(&h, Default::default());
    let agent = h.svid("spiffe://acme.example/soc/edr-responder");
    let task = json!({"id": "INC-8", "title": "reload race", "trigger": {"source": "edr", "severity": "high"}});
    assert_eq!(h.call("POST", "/v1/tasks", Some(&agent), Some(task)).await.0, StatusCode::CREATED);
    let file = policy.path().join("agents/edr-responder.toml");
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, text.replace("autonomous = 0.90", "autonomous = 0.99")).unwrap();
    let (status, body) = h.call("POST", "/v1/policy/reload", Some(&h.admin), None).await;
    assert_eq!((status, body["changed"].clone()), (StatusCode::OK, json!(true)));
    let new = body["bundle_version"].as_str().unwrap().to_string();
    assert_ne!(b.bundle().unwrap().version(), new, "node B has not followed yet");

    let isolate = json!({"task": "INC-8", "action": "host.isolate", "target": "host:web-01", "confidence": 0.95,
                         "params": {"reason": "beacon"}, "rationale": "race", "evidence": [{"kind": "edr", "ref": "d:1"}]});
    let on_b = || {
        let req = axum::http::Request::builder()
            .method("POST")
            .uri("/v1/actions")
            .header("authorization", format!("Bearer {agent}"))
            .header("content-type", "application/json")
            .body(axum::body::Body::from(isolate.to_string()))
            .unwrap();
        let router = router_b.clone();
        async move {
            use http_body_util::BodyExt as _;
            use tower::ServiceExt as _;
            let res = router.oneshot(req).await.unwrap();
            let status = res.status();
            let bytes = res.into_body().collect().await.unwrap().to_bytes();
            (status, serde_json::from_slice::<serde_json::Value>(&bytes).unwrap())
        }
    };
    let (status, refused) = on_b().await;
    assert_eq!((status, &refused["error"]["code"]), (StatusCode::CONFLICT, &json!("policy_changed")), "{refused}");
    let requests = h.app.ledger().store().count(warden_store::Table::Requests, &Default::default()).unwrap();
    assert_eq!(requests, 0, "nothing recorded under the replaced bundle");
    assert_eq!(b.bundle().unwrap().version(), new, "node B follows the bundle in force");
    let (status, again) = on_b().await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["decision"]["bundle_version"], json!(new), "{again}");
    assert_ne!(again["decision"]["outcome"], "execute", "the new threshold (0.99) binds: {again}");
}
