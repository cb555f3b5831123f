//! Two nodes on one store, in-process: what one commits binds the other.

use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::harness;

async fn post(router: &axum::Router, token: &str, body: &Value) -> (StatusCode, Value) {
    use http_body_util::BodyExt as _;
    use tower::ServiceExt as _;
    let req = axum::http::Request::builder()
        .method("POST")
        .uri("/v1/actions")
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(axum::body::Body::from(body.to_string()))
        .unwrap();
    let res = router.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

/// Requests racing on two nodes past an hourly budget meet it exactly and trip its breaker
/// once: one `breaker.tripped` entry, one notice. A trip expects the breaker as the request's
/// facts read it; with `WARDEN_TEST_STORE=postgres` this run tripped it twice before (the
/// budget's trip and a backlog refusal's, each from facts read before the other committed).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_budget_met_on_two_nodes_at_once_trips_its_breaker_once() {
    let h = harness();
    let (_b, router_b) = crate::second_node(&h, Default::default());
    let agent = h.svid("spiffe://acme.example/soc/edr-responder");
    let task = json!({"id": "INC-11", "title": "race", "trigger": {"source": "edr", "severity": "high"}});
    assert_eq!(h.call("POST", "/v1/tasks", Some(&agent), Some(task)).await.0, StatusCode::CREATED);
    let isolate = json!({"task": "INC-11", "action": "host.isolate", "target": "host:web-42", "confidence": 0.95,
                         "params": {"reason": "beacon"}, "rationale": "race", "evidence": [{"kind": "edr", "ref": "d:1"}]});
    let routers = [h.router.clone(), router_b];
    let calls: Vec<_> = (0..80)
        .map(|i| {
            let (router, agent, body) = (routers[i % 2].clone(), agent.clone(), isolate.clone());
            tokio::spawn(async move { post(&router, &agent, &body).await })
        })
        .collect();
    let mut executed = 0;
    for c in calls {
        let (status, a) = c.await.unwrap();
        // Under this much contention for one approval (every request past the budget folds
        // into it) a request may give up with 409 `conflict`, recording nothing: allowed.
        if status == StatusCode::CONFLICT && a["error"]["code"] == "conflict" {
            continue;
        }
        assert_eq!(status, StatusCode::OK, "{a}");
        executed += usize::from(a["decision"]["outcome"] == "execute");
    }
    assert_eq!(executed, 10, "the hourly budget of 10 across both nodes");
    let (_, entries) = h.call("GET", "/v1/audit/entries?limit=1000", Some(&h.admin), None).await;
    let trips =
        entries["entries"].as_array().unwrap().iter().filter(|e| e["entry"]["type"] == "breaker.tripped").count();
    assert_eq!(trips, 1, "the breaker tripped once");
}
