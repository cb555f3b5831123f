//! `/openapi.json`: an OpenAPI 3.1 document that lists every route the router serves, and
//! nothing it does not.

use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::harness;

/// Every operation of DESIGN §8 this server implements so far, plus the admin endpoints.
const EXPECTED: &[(&str, &str)] = &[
    ("GET", "/.well-known/jwks.json"),
    ("GET", "/healthz"),
    ("GET", "/metrics"),
    ("GET", "/openapi.json"),
    ("GET", "/readyz"),
    ("GET", "/v1/actions"),
    ("GET", "/v1/actions/{id}"),
    ("GET", "/v1/agents"),
    ("GET", "/v1/agents/{id}"),
    ("GET", "/v1/approvals"),
    ("GET", "/v1/approvals/{id}"),
    ("GET", "/v1/audit/checkpoint"),
    ("GET", "/v1/audit/entries"),
    ("GET", "/v1/audit/proof/consistency"),
    ("GET", "/v1/audit/proof/inclusion"),
    ("GET", "/v1/explain/{id}"),
    ("GET", "/v1/halts"),
    ("GET", "/v1/leases/{id}"),
    ("GET", "/v1/tasks"),
    ("GET", "/v1/tasks/{id}"),
    ("GET", "/v1/users"),
    ("POST", "/v1/actions"),
    ("POST", "/v1/actions/{id}/rollback"),
    ("POST", "/v1/agents"),
    ("POST", "/v1/agents/{id}/resume"),
    ("POST", "/v1/agents/{id}/suspend"),
    ("POST", "/v1/agents/{id}/token"),
    ("POST", "/v1/approvals/{id}/approve"),
    ("POST", "/v1/approvals/{id}/reject"),
    ("POST", "/v1/breakers/reset"),
    ("POST", "/v1/decisions"),
    ("POST", "/v1/halt"),
    ("POST", "/v1/integrations/slack/interactions"),
    ("POST", "/v1/leases/introspect"),
    ("POST", "/v1/leases/{id}/revoke"),
    ("POST", "/v1/policy/reload"),
    ("POST", "/v1/resume"),
    ("POST", "/v1/tasks"),
    ("POST", "/v1/tasks/{id}/close"),
    ("POST", "/v1/tasks/{id}/taint/clear"),
    ("POST", "/v1/users"),
    ("POST", "/v1/users/{id}/disable"),
    ("POST", "/v1/users/{id}/enable"),
];

fn operations(doc: &Value) -> Vec<(String, String)> {
    let mut ops = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in ["get", "post", "put", "delete", "patch"] {
            if item.get(method).is_some() {
                ops.push((method.to_uppercase(), path.clone()));
            }
        }
    }
    ops.sort();
    ops
}

#[tokio::test]
async fn the_document_is_openapi_3_1_and_lists_every_route() {
    let h = harness();
    let (status, doc) = h.call("GET", "/openapi.json", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1."), "{}", doc["openapi"]);
    let expected: Vec<(String, String)> = EXPECTED.iter().map(|(m, p)| (m.to_string(), p.to_string())).collect();
    assert_eq!(operations(&doc), expected);
    assert_eq!(doc, serde_json::to_value(warden_server::openapi_document()).unwrap());
}

/// Each documented operation reaches a handler: not the router's fallback (404 `not_found`)
/// and not 405. Conversely, a path the document does not list is the fallback.
#[tokio::test]
async fn every_documented_operation_is_served() {
    let h = harness();
    let doc = serde_json::to_value(warden_server::openapi_document()).unwrap();
    for (method, path) in operations(&doc) {
        let uri = path.replace("{id}", "x");
        let body = (method == "POST").then(|| json!({}));
        let (status, answer) = h.call(&method, &uri, Some(&h.admin), body).await;
        assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {uri}");
        assert_ne!(answer["error"]["code"], "not_found", "{method} {uri}: {answer}");
        let documented = doc["paths"][&path][method.to_lowercase()]["responses"].as_object().unwrap();
        assert!(documented.contains_key(status.as_str()), "{method} {uri} answered {status}, not documented: {answer}");
    }
    let (status, answer) = h.call("GET", "/v1/nothing-here", Some(&h.admin), None).await;
    assert_eq!((status, &answer["error"]["code"]), (StatusCode::NOT_FOUND, &json!("not_found")));
}

#[tokio::test]
async fn shared_answers_are_documented_on_every_secured_operation() {
    let doc = serde_json::to_value(warden_server::openapi_document()).unwrap();
    for (method, path) in operations(&doc) {
        let op = &doc["paths"][&path][method.to_lowercase()];
        let responses = op["responses"].as_object().unwrap();
        assert!(responses.contains_key("503"), "{method} {path}");
        if op.get("security").is_some() {
            for s in ["401", "403", "429"] {
                assert!(responses.contains_key(s), "{method} {path} lacks {s}");
            }
        }
        if op.get("requestBody").is_some() {
            for s in ["400", "413", "415"] {
                assert!(responses.contains_key(s), "{method} {path} lacks {s}");
            }
        }
    }
}

/// The document as reviewed: any change to the API shows up here.
#[test]
fn snapshot() {
    insta::assert_json_snapshot!("openapi", warden_server::openapi_document());
}

/// Every link leads to an operation the document has, naming a parameter that operation takes,
/// in OpenAPI's spelling (`operationRef`).
#[test]
fn links_lead_to_real_operations() {
    let doc = warden_server::openapi_document();
    let mut links = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            for (status, response) in op["responses"].as_object().into_iter().flatten() {
                for (name, link) in response["links"].as_object().into_iter().flatten() {
                    let to = link["operationRef"]
                        .as_str()
                        .unwrap_or_else(|| panic!("{method} {path} {status} {name}: {link}"));
                    let pointer = to.strip_prefix('#').unwrap().replace("~1", "/").replace("~0", "~");
                    let (to_path, to_method) = pointer.strip_prefix("/paths/").unwrap().rsplit_once('/').unwrap();
                    let target = &doc["paths"][to_path][to_method];
                    assert!(target.is_object(), "{name} leads to `{to}`, which is not an operation");
                    let takes: Vec<&str> =
                        target["parameters"].as_array().unwrap().iter().filter_map(|p| p["name"].as_str()).collect();
                    for param in link["parameters"].as_object().unwrap().keys() {
                        assert!(takes.contains(&param.as_str()), "{name}: `{to}` takes no `{param}`");
                    }
                    links += 1;
                }
            }
        }
    }
    assert!(links >= 15, "{links} links");
}
