//! Tasks, action requests, idempotency, dry runs and the audit endpoints.

use axum::http::StatusCode;
use serde_json::{Value, json};
use warden_core::audit::note::{Checkpoint, NoteVerifier};
use warden_core::audit::proof::{ConsistencyProof, InclusionProof};
use warden_store::data_dir::recorded_verifier;
use warden_store::verify::verify;

use crate::{EDR, Harness, PHISH, harness};

async fn open_task(h: &Harness, token: &str, id: &str, source: &str) -> Value {
    let body = json!({"id": id, "title": "beaconing", "trigger": {"source": source, "alert_id": "A-1", "severity": "high", "summary": "C2"}});
    let (status, task) = h.call("POST", "/v1/tasks", Some(token), Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{task}");
    task
}

fn isolate(target: &str, confidence: f64, key: Option<&str>) -> Value {
    let mut b = json!({
        "task": "INC-7", "action": "host.isolate", "target": target, "confidence": confidence,
        "params": {"reason": "beacon"}, "rationale": "C2 beacon seen", "evidence": [{"kind": "edr", "ref": "det:1"}]
    });
    if let Some(k) = key {
        b["idempotency_key"] = json!(k);
    }
    b
}

fn verified_size(h: &Harness) -> u64 {
    let store = h.app.ledger().store();
    let verifier = recorded_verifier(store.as_ref()).unwrap().unwrap();
    verify(store.as_ref(), &verifier, &mut |_, _| {}).expect("the log verifies").size
}

#[tokio::test]
async fn health_and_readiness() {
    let h = harness();
    assert_eq!(h.call("GET", "/healthz", None, None).await, (StatusCode::OK, json!({"status": "ok"})));
    let (status, body) = h.call("GET", "/readyz", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body["bundle_version"].as_str().unwrap().starts_with("sha256:"));
    let (status, body) = h.call("GET", "/v1/nothing", None, None).await;
    assert_eq!((status, body["error"]["code"].clone()), (StatusCode::NOT_FOUND, json!("not_found")));
}

/// `GET /v1/tasks`: newest id first, a page at a time through `Link: rel="next"` (every task
/// once, a task opened between pages never shifting one), by state; a bad cursor or limit is a
/// clear 422; the history is on `GET /v1/tasks/{id}` only.
#[tokio::test]
async fn tasks_are_listed_newest_id_first_a_page_at_a_time() {
    let h = harness();
    for i in 0..5 {
        open_task(&h, &h.admin, &format!("INC-{i}"), "siem").await;
    }
    let (status, _) = h.call("POST", "/v1/tasks/INC-1/close", Some(&h.admin), None).await;
    assert_eq!(status, StatusCode::OK);
    let ids =
        |v: &Value| v.as_array().unwrap().iter().map(|t| t["id"].as_str().unwrap().to_string()).collect::<Vec<_>>();
    let (status, headers, first) = h.get_with_headers("/v1/tasks?limit=2", &h.admin).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ids(&first), ["INC-4", "INC-3"]);
    let link = headers.get("link").unwrap().to_str().unwrap().to_string();
    assert!(link.contains("after=INC-3") && link.ends_with("rel=\"next\""), "{link}");
    open_task(&h, &h.admin, "INC-9", "siem").await;
    let next = link.trim_start_matches('<').split('>').next().unwrap().to_string();
    let (_, _, second) = h.get_with_headers(&next, &h.admin).await;
    assert_eq!(ids(&second), ["INC-2", "INC-1"], "a task opened meanwhile shifts no page");
    let walked: Vec<String> =
        h.walk("/v1/tasks?limit=2", &h.admin).await.iter().map(|t| t["id"].as_str().unwrap().to_string()).collect();
    assert_eq!(walked, ["INC-9", "INC-4", "INC-3", "INC-2", "INC-1", "INC-0"]);
    let (_, closed) = h.call("GET", "/v1/tasks?state=closed", Some(&h.admin), None).await;
    assert_eq!(ids(&closed), ["INC-1"]);
    let (_, open) = h.call("GET", "/v1/tasks?state=open&limit=1000", Some(&h.admin), None).await;
    assert_eq!(ids(&open).len(), 5);
    assert!(open[0].get("history").is_none());
    for (query, code) in
        [("after=INC%201", "invalid_cursor"), ("limit=0", "invalid_request"), ("limit=1001", "invalid_request")]
    {
        let (status, e) = h.call("GET", &format!("/v1/tasks?{query}"), Some(&h.admin), None).await;
        assert_eq!(
            (status, e["error"]["code"].as_str()),
            (StatusCode::UNPROCESSABLE_ENTITY, Some(code)),
            "{query}: {e}"
        );
    }
    let (status, _) = h.call("GET", "/v1/tasks?state=ajar", Some(&h.admin), None).await;
    assert!(status.is_client_error());
}

#[tokio::test]
async fn tasks_open_read_and_close_once() {
    let h = harness();
    let agent = h.svid(EDR);
    let task = open_task(&h, &agent, "INC-7", "edr").await;
    assert_eq!(
        (task["state"].as_str(), task["opened_by"].as_str()),
        (Some("open"), Some(format!("agent:{EDR}").as_str()))
    );
    let again = json!({"id": "INC-7", "title": "x", "trigger": {"source": "edr"}});
    let (status, body) = h.call("POST", "/v1/tasks", Some(&agent), Some(again)).await;
    assert_eq!((status, body["error"]["code"].clone()), (StatusCode::CONFLICT, json!("task_exists")));
    let (status, body) = h.call("GET", "/v1/tasks/INC-7", Some(&h.admin), None).await;
    assert_eq!((status, body["trigger"]["severity"].clone()), (StatusCode::OK, json!("high")));
    let (status, body) = h.call("POST", "/v1/tasks/INC-7/close", Some(&h.admin), None).await;
    assert_eq!(
        (status, body["state"].clone(), body["closed_by"].clone()),
        (StatusCode::OK, json!("closed"), json!("user:admin"))
    );
    let (status, body) = h.call("POST", "/v1/tasks/INC-7/close", Some(&h.admin), None).await;
    assert_eq!((status, body["error"]["code"].clone()), (StatusCode::CONFLICT, json!("task_closed")));
    let (status, _) = h.call("GET", "/v1/tasks/INC-404", Some(&agent), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, body) =
        h.call("POST", "/v1/tasks", Some(&agent), Some(json!({"title": "t", "trigger": {"source": "edr"}}))).await;
    assert!(body["id"].as_str().unwrap().starts_with("task_"), "ids are generated: {body}");
    // A request on a closed task is denied, and recorded.
    let (status, body) = h.call("POST", "/v1/actions", Some(&agent), Some(isolate("host:web-42", 0.95, None))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["decision"]["outcome"], "deny");
    assert!(body["decision"]["caps"].as_array().unwrap().iter().any(|c| c["code"] == "task_closed"), "{body}");
}

#[tokio::test]
async fn requests_are_decided_recorded_and_readable() {
    let h = harness();
    let agent = h.svid(EDR);
    open_task(&h, &agent, "INC-7", "edr").await;
    let before = verified_size(&h);

    let (status, exec) = h.call("POST", "/v1/actions", Some(&agent), Some(isolate("host:web-42", 0.95, None))).await;
    assert_eq!(status, StatusCode::OK, "{exec}");
    assert_eq!((exec["state"].as_str(), exec["decision"]["outcome"].as_str()), (Some("approved"), Some("execute")));
    assert_eq!(exec["decision"]["effective_level"], 3);
    assert_eq!(exec["decision"]["policies"][0]["owner"], "team:endpoint-response");

    let (_, approval) =
        h.call("POST", "/v1/actions", Some(&agent), Some(isolate("host:db-payments-01", 0.95, None))).await;
    assert_eq!(
        (approval["state"].as_str(), approval["decision"]["outcome"].as_str()),
        (Some("pending_approval"), Some("require_approval"))
    );
    assert_eq!(approval["decision"]["approval"]["quorum"], 1);

    let (_, advise) = h.call("POST", "/v1/actions", Some(&agent), Some(isolate("host:web-01", 0.3, None))).await;
    assert_eq!((advise["state"].as_str(), advise["decision"]["outcome"].as_str()), (Some("advised"), Some("advise")));

    let mut unknown = isolate("host:web-42", 0.95, None);
    unknown["action"] = json!("host.wipe");
    let (_, deny) = h.call("POST", "/v1/actions", Some(&agent), Some(unknown)).await;
    assert_eq!((deny["state"].as_str(), deny["decision"]["outcome"].as_str()), (Some("denied"), Some("deny")));

    // Each request added two entries (requested, decided), the one that needs a human a
    // third (approval.requested); the log still verifies.
    assert_eq!(verified_size(&h), before + 9);
    let id = exec["id"].as_str().unwrap();
    let (status, read) = h.call("GET", &format!("/v1/actions/{id}"), Some(&agent), None).await;
    assert_eq!((status, &read), (StatusCode::OK, &exec));
    let (status, _) = h.call("GET", &format!("/v1/actions/{id}"), Some(&h.svid(PHISH)), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "another agent cannot see it");
    let (status, _) = h.call("GET", &format!("/v1/actions/{id}"), Some(&h.admin), None).await;
    assert_eq!(status, StatusCode::OK);

    let (status, entries) =
        h.call("GET", &format!("/v1/audit/entries?since={before}&limit=2"), Some(&h.admin), None).await;
    assert_eq!(status, StatusCode::OK);
    let e = &entries["entries"];
    assert_eq!(
        (e[0]["entry"]["type"].as_str(), e[1]["entry"]["type"].as_str()),
        (Some("action.requested"), Some("decision.made"))
    );
    assert_eq!(e[1]["entry"]["request"], exec["id"]);
    assert_eq!(e[1]["entry"]["actor"], json!({"kind": "agent", "id": EDR}));
    assert_eq!(e[1]["entry"]["data"]["decision"]["outcome"], "execute");
}

#[tokio::test]
async fn an_unknown_task_or_a_bad_body_records_nothing() {
    let h = harness();
    let agent = h.svid(EDR);
    let before = verified_size(&h);
    let (status, body) = h.call("POST", "/v1/actions", Some(&agent), Some(isolate("host:web-42", 0.95, None))).await;
    assert_eq!((status, body["error"]["code"].clone()), (StatusCode::NOT_FOUND, json!("unknown_task")));
    let (status, body) = h.call("POST", "/v1/actions", Some(&agent), Some(json!({"task": "INC-7"}))).await;
    assert_eq!((status, body["error"]["code"].clone()), (StatusCode::BAD_REQUEST, json!("malformed_request")));
    let mut extra = isolate("host:web-42", 0.95, None);
    extra["surprise"] = json!(1);
    let (status, _) = h.call("POST", "/v1/actions", Some(&agent), Some(extra)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "unknown fields are refused");
    let mut huge = isolate("host:web-42", 0.95, None);
    huge["rationale"] = json!("x".repeat(warden_server::BODY_LIMIT + 1));
    let (status, body) = h.call("POST", "/v1/actions", Some(&agent), Some(huge)).await;
    assert_eq!((status, body["error"]["code"].clone()), (StatusCode::PAYLOAD_TOO_LARGE, json!("body_too_large")));
    assert_eq!(verified_size(&h), before);
}

#[tokio::test]
async fn idempotency_replays_and_refuses_a_changed_body() {
    let h = harness();
    let agent = h.svid(EDR);
    open_task(&h, &agent, "INC-7", "edr").await;
    let (_, first) = h.call("POST", "/v1/actions", Some(&agent), Some(isolate("host:web-42", 0.95, Some("k-1")))).await;
    let size = verified_size(&h);
    let (status, again) =
        h.call("POST", "/v1/actions", Some(&agent), Some(isolate("host:web-42", 0.95, Some("k-1")))).await;
    assert_eq!((status, &again), (StatusCode::OK, &first), "the same answer");
    assert_eq!(verified_size(&h), size, "no second effect");
    let usage = h
        .app
        .ledger()
        .store()
        .budget_usage(EDR, "host.isolate", 0, "host:web-42", warden_store::UsageLimits::ALL)
        .unwrap();
    assert_eq!(usage.hits, 1, "counted once");
    let (status, body) =
        h.call("POST", "/v1/actions", Some(&agent), Some(isolate("host:web-01", 0.95, Some("k-1")))).await;
    assert_eq!((status, body["error"]["code"].clone()), (StatusCode::CONFLICT, json!("idempotency_conflict")));
    // Keys are per agent: another agent may use the same one.
    let phish = h.svid(PHISH);
    open_task(&h, &phish, "INC-8", "email").await;
    let body = json!({"task": "INC-8", "action": "ticket.create", "target": "ticket:new", "confidence": 0.9,
        "params": {"title": "x"}, "rationale": "r", "evidence": [{"kind": "mail", "ref": "m:1"}], "idempotency_key": "k-1"});
    let (status, _) = h.call("POST", "/v1/actions", Some(&phish), Some(body)).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn concurrent_retries_with_one_key_record_once() {
    let h = std::sync::Arc::new(harness());
    let agent = h.svid(EDR);
    open_task(&h, &agent, "INC-7", "edr").await;
    let size = verified_size(&h);
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (h, agent) = (h.clone(), agent.clone());
        tasks.push(tokio::spawn(async move {
            h.call("POST", "/v1/actions", Some(&agent), Some(isolate("host:web-42", 0.95, Some("race")))).await
        }));
    }
    let mut ids = std::collections::BTreeSet::new();
    for t in tasks {
        let (status, body) = t.await.unwrap();
        assert_eq!(status, StatusCode::OK, "{body}");
        ids.insert(body["id"].as_str().unwrap().to_string());
    }
    assert_eq!(ids.len(), 1, "one request, one id: {ids:?}");
    assert_eq!(verified_size(&h), size + 2);
}

#[tokio::test]
async fn budgets_are_counted_in_the_store() {
    let h = harness();
    let agent = h.svid(EDR);
    open_task(&h, &agent, "INC-7", "edr").await;
    let mut executed = std::collections::BTreeSet::new();
    let mut capped = None;
    // web-01 twice: a host already touched in the window does not count again.
    for host in ["web-01", "web-01", "web-02", "web-42", "build-07", "staging-api-01", "detonation-01", "detonation-02"]
    {
        let (_, body) =
            h.call("POST", "/v1/actions", Some(&agent), Some(isolate(&format!("host:{host}"), 0.95, None))).await;
        if body["decision"]["outcome"] == "execute" {
            executed.insert(host);
        } else if body["decision"]["caps"].as_array().unwrap().iter().any(|c| c["code"] == "distinct_targets_exceeded")
        {
            capped = Some(host);
            break;
        }
    }
    assert_eq!(executed.len(), 5, "edr-responder may touch 5 distinct hosts an hour: {executed:?}");
    assert!(capped.is_some(), "the sixth distinct host goes to a human");
    let usage = h
        .app
        .ledger()
        .store()
        .budget_usage(EDR, "host.isolate", 0, "host:web-01", warden_store::UsageLimits::ALL)
        .unwrap();
    assert_eq!((usage.hits, usage.distinct_targets), (6, 5), "six executions on five hosts");
    // Exceeding the budget tripped the breaker: now even a known host goes to a human.
    let (_, body) = h.call("POST", "/v1/actions", Some(&agent), Some(isolate("host:web-42", 0.95, None))).await;
    assert_eq!(body["decision"]["outcome"], "require_approval", "{body}");
    assert!(body["decision"]["caps"].as_array().unwrap().iter().any(|c| c["code"] == "breaker_open"), "{body}");
}

#[tokio::test]
async fn dry_runs_decide_without_recording() {
    let h = harness();
    let agent = h.svid(EDR);
    open_task(&h, &agent, "INC-7", "edr").await;
    let analyst = h.user("alice", &["soc-analyst"]);
    let size = verified_size(&h);
    let (status, body) = h.call("POST", "/v1/decisions", Some(&agent), Some(isolate("host:web-42", 0.95, None))).await;
    assert_eq!(
        (status, body["decision"]["outcome"].as_str(), body["recorded"].as_bool()),
        (StatusCode::OK, Some("execute"), Some(false))
    );
    let mut as_human = isolate("host:db-payments-01", 0.95, None);
    as_human["agent"] = json!(EDR);
    let (status, body) = h.call("POST", "/v1/decisions", Some(&analyst), Some(as_human)).await;
    assert_eq!((status, body["decision"]["outcome"].as_str()), (StatusCode::OK, Some("require_approval")));
    let (status, body) =
        h.call("POST", "/v1/decisions", Some(&analyst), Some(isolate("host:web-42", 0.95, None))).await;
    assert_eq!((status, body["error"]["code"].clone()), (StatusCode::FORBIDDEN, json!("humans_not_allowed")));
    let mut other = isolate("host:web-42", 0.95, None);
    other["agent"] = json!(PHISH);
    let (status, _) = h.call("POST", "/v1/decisions", Some(&agent), Some(other)).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "an agent decides only for itself");
    assert_eq!(verified_size(&h), size, "nothing recorded");
}

#[tokio::test]
async fn audit_proofs_over_http_verify_against_the_checkpoint() {
    let h = harness();
    let agent = h.svid(EDR);
    open_task(&h, &agent, "INC-7", "edr").await;
    for _ in 0..3 {
        h.call("POST", "/v1/actions", Some(&agent), Some(isolate("host:web-42", 0.95, None))).await;
    }
    let (status, note) = h.call("GET", "/v1/audit/checkpoint", Some(&h.admin), None).await;
    assert_eq!(status, StatusCode::OK);
    let note = note.as_str().unwrap().to_string();
    let store = h.app.ledger().store();
    let verifier = NoteVerifier::parse(&h.app.ledger().signer().verifier_key()).unwrap();
    let cp = Checkpoint::open(&note, &verifier).unwrap();
    assert_eq!(cp.size, store.size().unwrap(), "the checkpoint covers every answered request");
    let (_, p) = h.call("GET", "/v1/audit/proof/inclusion?index=4", Some(&h.admin), None).await;
    let p: InclusionProof = serde_json::from_value(p).unwrap();
    assert!(p.verify(&cp.root));
    let (_, c) = h.call("GET", "/v1/audit/proof/consistency?old=2", Some(&h.admin), None).await;
    let c: ConsistencyProof = serde_json::from_value(c).unwrap();
    assert!(c.verify(&store.root(2).unwrap(), &cp.root));
    let (status, body) = h.call("GET", "/v1/audit/proof/inclusion?index=4&size=9999", Some(&h.admin), None).await;
    assert_eq!((status, body["error"]["code"].clone()), (StatusCode::NOT_FOUND, json!("no_checkpoint")));
    let (status, body) = h.call("GET", "/v1/audit/proof/inclusion?index=999", Some(&h.admin), None).await;
    assert_eq!((status, body["error"]["code"].clone()), (StatusCode::NOT_FOUND, json!("no_proof")));
}

#[tokio::test]
async fn metrics_count_decisions_and_latencies() {
    let h = harness();
    let agent = h.svid(EDR);
    open_task(&h, &agent, "INC-7", "edr").await;
    h.call("POST", "/v1/actions", Some(&agent), Some(isolate("host:web-42", 0.95, None))).await;
    h.call("POST", "/v1/actions", Some(&agent), Some(isolate("host:db-payments-01", 0.95, None))).await;
    let (status, text) = h.call("GET", "/metrics", None, None).await;
    assert_eq!(status, StatusCode::OK);
    let text = text.as_str().unwrap();
    assert!(text.contains("warden_decisions_total{outcome=\"execute\",action=\"host.isolate\"} 1\n"), "{text}");
    assert!(text.contains("warden_decisions_total{outcome=\"require_approval\",action=\"host.isolate\"} 1\n"));
    assert!(text.contains("warden_decision_seconds_count 2\n"));
    assert!(text.contains("warden_audit_append_seconds_count 2\n"));
    assert!(text.contains("warden_pending_approvals 1\n"));
}

#[tokio::test]
async fn a_runaway_agent_trips_its_breaker_once_and_it_stays_open() {
    let h = harness();
    let agent = h.svid(EDR);
    open_task(&h, &agent, "INC-7", "edr").await;
    // edr-responder: max_per_hour = 10 for host.isolate.
    for i in 0..10 {
        let (_, body) = h.call("POST", "/v1/actions", Some(&agent), Some(isolate("host:web-42", 0.95, None))).await;
        assert_eq!(body["decision"]["outcome"], "execute", "request {i}: {body}");
    }
    let caps = |body: &Value| -> Vec<String> {
        body["decision"]["caps"].as_array().unwrap().iter().map(|c| c["code"].as_str().unwrap().to_string()).collect()
    };
    let (_, eleventh) = h.call("POST", "/v1/actions", Some(&agent), Some(isolate("host:web-42", 0.95, None))).await;
    assert_eq!(eleventh["decision"]["outcome"], "require_approval", "{eleventh}");
    assert!(caps(&eleventh).contains(&"budget_exceeded".to_string()), "{eleventh}");
    let (_, twelfth) = h.call("POST", "/v1/actions", Some(&agent), Some(isolate("host:web-01", 0.95, None))).await;
    assert!(caps(&twelfth).contains(&"breaker_open".to_string()), "the breaker stays open: {twelfth}");
    let (_, entries) = h.call("GET", "/v1/audit/entries?limit=1000", Some(&h.admin), None).await;
    let trips: Vec<&Value> =
        entries["entries"].as_array().unwrap().iter().filter(|e| e["entry"]["type"] == "breaker.tripped").collect();
    assert_eq!(trips.len(), 1, "tripped once");
    assert_eq!(trips[0]["entry"]["request"], eleventh["id"]);
    let (_, metrics) = h.call("GET", "/metrics", None, None).await;
    assert!(metrics.as_str().unwrap().contains("warden_breaker_trips_total 1\n"));
}

/// Found by schemathesis: bounds beyond `i64::MAX` were a store error (503). They are input
/// errors now (the document bounds every integer by 2^53 − 1); at the bound, nothing is there.
#[tokio::test]
async fn huge_audit_bounds_are_answered_not_failed() {
    let h = harness();
    let max = warden_server::input::MAX_INT;
    let (status, page) = h.call("GET", &format!("/v1/audit/entries?since={max}"), Some(&h.admin), None).await;
    assert_eq!((status, page["entries"].clone()), (StatusCode::OK, json!([])));
    let (status, page) = h.call("GET", "/v1/audit/entries?since=9223372036854775808", Some(&h.admin), None).await;
    assert_eq!((status, &page["error"]["code"]), (StatusCode::UNPROCESSABLE_ENTITY, &json!("invalid_request")));
    for q in [format!("inclusion?index=0&size={max}"), format!("consistency?old=1&new={max}")] {
        let (status, body) = h.call("GET", &format!("/v1/audit/proof/{q}"), Some(&h.admin), None).await;
        assert_eq!((status, &body["error"]["code"]), (StatusCode::NOT_FOUND, &json!("no_checkpoint")), "{q}");
    }
    for q in ["inclusion?index=0&size=18446744073709551615", "consistency?old=0&new=9223372036854775808"] {
        let (status, body) = h.call("GET", &format!("/v1/audit/proof/{q}"), Some(&h.admin), None).await;
        assert_eq!(
            (status, &body["error"]["code"]),
            (StatusCode::UNPROCESSABLE_ENTITY, &json!("invalid_request")),
            "{q}"
        );
    }
    let (status, body) = h.call("GET", "/v1/audit/entries?since=-1", Some(&h.admin), None).await;
    assert_eq!((status, &body["error"]["code"]), (StatusCode::BAD_REQUEST, &json!("malformed_query")));
}

/// The edges of what the OpenAPI document says each input takes: one step inside is
/// accepted, one step outside refused with a 4xx and its code, and nothing is recorded.
#[tokio::test]
async fn inputs_are_refused_exactly_where_the_document_says() {
    let h = harness();
    let agent = h.svid(EDR);
    let admin = Some(h.admin.as_str());
    open_task(&h, &h.admin, "INC-7", "siem").await;
    let code = |r: &(StatusCode, Value)| (r.0, r.1["error"]["code"].as_str().unwrap_or("").to_string());
    let refused = |status: StatusCode, c: &str| (status, c.to_string());
    let ok = |r: &(StatusCode, Value)| r.0.is_success();

    // Listings: `limit` 1–1000 (no quiet clamping), `since` a bounded duration, nothing around it.
    assert!(ok(&h.call("GET", "/v1/actions?limit=1", admin, None).await));
    assert!(ok(&h.call("GET", "/v1/actions?limit=1000&since=3650d", admin, None).await));
    let invalid = StatusCode::UNPROCESSABLE_ENTITY;
    assert_eq!(code(&h.call("GET", "/v1/actions?limit=0", admin, None).await), refused(invalid, "invalid_request"));
    assert_eq!(code(&h.call("GET", "/v1/actions?limit=1001", admin, None).await), refused(invalid, "invalid_request"));
    assert_eq!(code(&h.call("GET", "/v1/actions?since=3651d", admin, None).await), refused(invalid, "invalid_since"));
    assert_eq!(code(&h.call("GET", "/v1/actions?since=%201h", admin, None).await), refused(invalid, "invalid_since"));
    assert!(ok(&h.call("GET", "/v1/audit/entries?since=0&limit=1", admin, None).await));
    assert_eq!(
        code(&h.call("GET", "/v1/audit/entries?limit=0", admin, None).await),
        refused(invalid, "invalid_request")
    );
    let too_big = format!("/v1/audit/entries?since={}", warden_server::input::MAX_INT + 1);
    assert_eq!(code(&h.call("GET", &too_big, admin, None).await), refused(invalid, "invalid_request"));

    // Proofs that do not exist are 404 `no_proof`; sizes out of range are 422.
    let size = verified_size(&h);
    let (_, cp) = h.call("GET", "/v1/audit/proof/consistency?old=1", admin, None).await;
    let latest = cp["new_size"].as_u64().unwrap_or_else(|| panic!("a checkpoint to prove against: {cp}"));
    let hr = &h;
    let at = |q: String| async move { code(&hr.call("GET", &q, admin, None).await) };
    let nf = StatusCode::NOT_FOUND;
    assert!(ok(&h.call("GET", &format!("/v1/audit/proof/inclusion?index={}", latest - 1), admin, None).await));
    assert_eq!(at(format!("/v1/audit/proof/inclusion?index={latest}")).await, refused(nf, "no_proof"));
    assert_eq!(at(format!("/v1/audit/proof/consistency?old={}", latest + 1)).await, refused(nf, "no_proof"));
    assert_eq!(at("/v1/audit/proof/consistency?old=0".into()).await, refused(invalid, "invalid_request"));
    assert_eq!(verified_size(&h), size, "reads record nothing");

    // Long polls: 0–60 s.
    let (_, a) = h.call("POST", "/v1/actions", Some(&agent), Some(isolate("host:web-42", 0.95, None))).await;
    let id = a["id"].as_str().unwrap().to_string();
    assert!(ok(&h.call("GET", &format!("/v1/actions/{id}?wait=0s"), Some(&agent), None).await));
    assert!(ok(&h.call("GET", &format!("/v1/actions/{id}?wait=01m"), Some(&agent), None).await));
    assert_eq!(at(format!("/v1/actions/{id}?wait=61s")).await, refused(invalid, "invalid_wait"));
    assert_eq!(at(format!("/v1/actions/{id}?wait=2m")).await, refused(invalid, "invalid_wait"));

    // Blank means only spaces, tabs, CRs and LFs — the same in the document and the server.
    let size = verified_size(&h);
    let reject = |reason: &str| json!({"agent": EDR, "action": "host.isolate", "reason": reason});
    let blank = h.call("POST", "/v1/breakers/reset", admin, Some(reject(" \t\r\n"))).await;
    assert_eq!(code(&blank), refused(invalid, "reason_required"));
    let ideographic = h.call("POST", "/v1/breakers/reset", admin, Some(reject("\u{3000}"))).await;
    assert_eq!(
        code(&ideographic),
        refused(StatusCode::CONFLICT, "breaker_closed"),
        "not blank: it reached the breaker"
    );
    let halt_blank_id = json!({"scope": "agent", "id": " \n", "reason": "drill"});
    assert_eq!(code(&h.call("POST", "/v1/halt", admin, Some(halt_blank_id)).await), refused(invalid, "invalid_halt"));
    let halt_all_with_id = json!({"scope": "all", "id": EDR, "reason": "drill"});
    assert_eq!(
        code(&h.call("POST", "/v1/halt", admin, Some(halt_all_with_id)).await),
        refused(invalid, "invalid_halt")
    );
    assert_eq!(verified_size(&h), size, "nothing refused was recorded");

    // A dry run refuses fields it does not name (the request's own rule, through `agent`),
    // takes `agent: null` as absent, and a human must name the agent (403: who asks decides).
    let mut dry = isolate("host:web-42", 0.5, None);
    dry["agent"] = json!(EDR);
    assert!(ok(&h.call("POST", "/v1/decisions", admin, Some(dry.clone())).await));
    dry["surprise"] = json!(1);
    assert_eq!(
        code(&h.call("POST", "/v1/decisions", admin, Some(dry)).await),
        refused(StatusCode::BAD_REQUEST, "malformed_request")
    );
    let mut mine = isolate("host:web-42", 0.5, None);
    mine["agent"] = Value::Null;
    assert!(ok(&h.call("POST", "/v1/decisions", Some(&agent), Some(mine.clone())).await));
    assert_eq!(
        code(&h.call("POST", "/v1/decisions", admin, Some(mine)).await),
        refused(StatusCode::FORBIDDEN, "humans_not_allowed")
    );

    // Tokens and users: lifetimes 1s–24h, at least one role.
    let token = |ttl: &str| json!({"ttl": ttl});
    let mint = format!("/v1/agents/{}/token", EDR.replace(':', "%3A").replace('/', "%2F"));
    assert!(ok(&h.call("POST", &mint, admin, Some(token("86400s"))).await));
    assert_eq!(code(&h.call("POST", &mint, admin, Some(token("86401s"))).await), refused(invalid, "invalid_ttl"));
    assert_eq!(code(&h.call("POST", &mint, admin, Some(token("0m"))).await), refused(invalid, "invalid_ttl"));
    let no_roles = json!({"id": "carol", "roles": []});
    assert_eq!(code(&h.call("POST", "/v1/users", admin, Some(no_roles)).await), refused(invalid, "invalid_request"));
}

/// `GET /v1/actions` pages newest first through `Link: rel="next"`: every request once, the
/// same as one big page, with the filters kept — and requests recorded between pages neither
/// repeat nor shift a page.
#[tokio::test]
async fn the_action_list_pages_newest_first_by_cursor() {
    let h = harness();
    let agent = h.svid(EDR);
    open_task(&h, &agent, "INC-7", "edr").await;
    let submit = |i: usize| {
        let target = format!("host:web-{i:02}");
        let action = if i.is_multiple_of(3) { "host.isolate" } else { "process.kill" };
        let mut body = isolate(&target, 0.99, None);
        body["action"] = json!(action);
        if action == "process.kill" {
            body["params"] = json!({"pid": 4242});
        }
        body
    };
    for i in 0..12 {
        let (status, a) = h.call("POST", "/v1/actions", Some(&agent), Some(submit(i))).await;
        assert_eq!(status, StatusCode::OK, "{a}");
    }
    let ids = |list: &[Value]| list.iter().map(|a| a["id"].as_str().unwrap().to_string()).collect::<Vec<_>>();
    let admin = &h.admin;
    let (_, whole) = h.call("GET", "/v1/actions?limit=1000", Some(admin), None).await;
    let whole = ids(whole.as_array().unwrap());
    assert_eq!(whole.len(), 12);
    for limit in [1, 5, 12] {
        assert_eq!(ids(&h.walk(&format!("/v1/actions?limit={limit}"), admin).await), whole, "pages of {limit}");
    }
    let isolations = h.walk("/v1/actions?action=host.isolate&limit=2", admin).await;
    assert_eq!(isolations.len(), 4);
    assert!(isolations.iter().all(|a| a["action"] == "host.isolate"));
    // Recorded meanwhile: newer than the walk's start, so not in it; nothing repeats.
    let (_, headers, first) = h.get_with_headers("/v1/actions?limit=4", admin).await;
    for i in 12..15 {
        h.call("POST", "/v1/actions", Some(&agent), Some(submit(i))).await;
    }
    let link = headers["link"].to_str().unwrap();
    let rest = h.walk(&link[1..link.find('>').unwrap()], admin).await;
    let mut seen = ids(first.as_array().unwrap());
    seen.extend(ids(&rest));
    assert_eq!(seen, whole, "the walk is the list as it was when it began");
    for bad in ["apr_1", "1.", ".x", "99999999999999999.act_1", "1.a%20b"] {
        let (status, e) = h.call("GET", &format!("/v1/actions?after={bad}"), Some(admin), None).await;
        assert_eq!(
            (status, e["error"]["code"].as_str()),
            (StatusCode::UNPROCESSABLE_ENTITY, Some("invalid_cursor")),
            "{bad}"
        );
    }
}

/// `warden task close --data` runs the server's own close on a data directory (the bundle in
/// force, no reconciliation): the task's pending approval is cancelled in the same commit, and
/// the running server's next look at it says so.
#[tokio::test]
async fn a_task_closed_offline_cancels_its_pending_approvals() {
    let h = harness();
    let agent = h.svid(EDR);
    let task = json!({"id": "INC-O", "title": "t", "trigger": {"source": "edr", "severity": "high"}});
    assert_eq!(h.call("POST", "/v1/tasks", Some(&agent), Some(task)).await.0, StatusCode::CREATED);
    let body = json!({"task": "INC-O", "action": "host.isolate", "target": "host:db-payments-01", "confidence": 0.95,
        "params": {"reason": "beacon"}, "rationale": "C2", "evidence": [{"kind": "edr", "ref": "d:1"}]});
    let (_, a) = h.call("POST", "/v1/actions", Some(&agent), Some(body)).await;
    assert_eq!(a["state"], "pending_approval", "{a}");
    let approval = a["decision"]["approval"]["id"].as_str().unwrap().to_string();

    let data = warden_store::DataDir::open_at(
        h._dir.path(),
        &h.at,
        std::sync::Arc::new(warden_store::SystemClock),
        Default::default(),
    )
    .unwrap();
    let offline = warden_server::AppState::offline(data, std::sync::Arc::new(warden_store::SystemClock)).unwrap();
    let operator = warden_server::auth::Caller::Human(warden_server::model::User {
        id: "local:ops".into(),
        roles: vec!["admin".into()],
        token_hash: String::new(),
        status: "active".into(),
        oidc: Vec::new(),
    });
    let closed = warden_server::tasks::close(&offline, &operator, "INC-O").unwrap();
    assert_eq!(closed.closed_by.as_deref(), Some("user:local:ops"));
    let (_, ap) = h.call("GET", &format!("/v1/approvals/{approval}"), Some(&h.admin), None).await;
    assert_eq!(ap["state"], "cancelled", "{ap}");
    let (_, req) = h.call("GET", &format!("/v1/actions/{}", a["id"].as_str().unwrap()), Some(&h.admin), None).await;
    assert_eq!(req["state"], "cancelled", "{req}");
}
