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
