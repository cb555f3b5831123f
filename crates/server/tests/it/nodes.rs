//! Two nodes on one store, in-process: what one commits binds the other.

use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::harness;

async fn post(router: &axum::Router, token: &str, body: &Value) -> (StatusCode, Value) {
    crate::call_router(router, "POST", "/v1/actions", Some(token), Some(body.clone())).await
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

async fn call_on(router: &axum::Router, method: &str, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
    crate::call_router(router, method, path, Some(token), Some(body).filter(|b| !b.is_null())).await
}

/// A user disabled on node B is refused on node A from the answer on: their API token, their
/// console session (ended: enabling the user again does not bring it back) and their vote.
/// Nobody disables themselves; enabling is audited like disabling.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_disabled_on_one_node_is_refused_on_the_other_at_once() {
    let h = harness();
    let (_b, router_b) = crate::second_node(&h, Default::default());
    let ana = h.user("ana", &["soc-analyst"]);
    let cookie = crate::stranger::sign_in(&h, &ana).await;
    assert_eq!(crate::stranger::get_page(&h, "/console/inbox", &cookie).await.status, StatusCode::OK);
    // A pending approval ana could decide.
    let agent = h.svid("spiffe://acme.example/soc/edr-responder");
    let task = json!({"id": "INC-U1", "title": "t", "trigger": {"source": "edr", "severity": "high"}});
    assert_eq!(h.call("POST", "/v1/tasks", Some(&agent), Some(task)).await.0, StatusCode::CREATED);
    let ask = json!({"task": "INC-U1", "action": "host.isolate", "target": "host:db-payments-01", "confidence": 0.95,
                     "params": {"reason": "beacon"}, "rationale": "r", "evidence": [{"kind": "edr", "ref": "d:1"}]});
    let (s, a) = h.call("POST", "/v1/actions", Some(&agent), Some(ask)).await;
    assert_eq!(s, StatusCode::OK, "{a}");
    let approval = a["decision"]["approval"]["id"].as_str().unwrap().to_string();

    let why = json!({"reason": "left the team"});
    let (s, v) = call_on(&router_b, "POST", "/v1/users/ana/disable", &h.admin, why.clone()).await;
    assert_eq!((s, v["status"].as_str()), (StatusCode::OK, Some("disabled")), "{v}");
    // Node A, right after: every way in is refused.
    let (s, v) = h.call("GET", "/v1/approvals", Some(&ana), None).await;
    assert_eq!((s, v["error"]["code"].as_str()), (StatusCode::FORBIDDEN, Some("user_disabled")), "{v}");
    let (s, v) = h.call("POST", &format!("/v1/approvals/{approval}/approve"), Some(&ana), Some(json!({}))).await;
    assert_eq!((s, v["error"]["code"].as_str()), (StatusCode::FORBIDDEN, Some("user_disabled")), "{v}");
    let page = crate::stranger::get_page(&h, "/console/inbox", &cookie).await;
    assert_ne!(page.status, StatusCode::OK, "the console session is refused");
    let (_, ap) = h.call("GET", &format!("/v1/approvals/{approval}"), Some(&h.admin), None).await;
    assert_eq!(ap["state"], "pending", "ana's refused vote counted for nothing: {ap}");

    // Nobody disables themselves; an unknown user is 404.
    let (s, v) = h.call("POST", "/v1/users/admin/disable", Some(&h.admin), Some(why.clone())).await;
    assert_eq!((s, v["error"]["code"].as_str()), (StatusCode::FORBIDDEN, Some("self_disable")), "{v}");
    let (s, v) = h.call("POST", "/v1/users/nobody/disable", Some(&h.admin), Some(why.clone())).await;
    assert_eq!((s, v["error"]["code"].as_str()), (StatusCode::NOT_FOUND, Some("unknown_user")), "{v}");

    // Enabled on node A: the token works on node B; the ended session stays ended.
    let (s, v) = h.call("POST", "/v1/users/ana/enable", Some(&h.admin), Some(json!({"reason": "back"}))).await;
    assert_eq!((s, v["status"].as_str()), (StatusCode::OK, Some("active")), "{v}");
    assert_eq!(call_on(&router_b, "GET", "/v1/approvals", &ana, Value::Null).await.0, StatusCode::OK);
    assert_ne!(crate::stranger::get_page(&h, "/console/inbox", &cookie).await.status, StatusCode::OK);
    let (_, entries) = h.call("GET", "/v1/audit/entries?limit=1000", Some(&h.admin), None).await;
    let changes: Vec<_> = entries["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["entry"]["type"] == "user.changed")
        .map(|e| {
            (e["entry"]["data"]["to"].clone(), e["entry"]["data"]["reason"].clone(), e["entry"]["actor"]["id"].clone())
        })
        .collect();
    assert_eq!(
        changes,
        [(json!("disabled"), json!("left the team"), json!("admin")), (json!("active"), json!("back"), json!("admin"))]
    );
}
