//! Executions against the lab estate: leases, the state machine, rollback, restart
//! reconciliation and the emergency stop. The lab's state and call counters are the proof.

use std::sync::Arc;

use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::{EDR, Harness, harness_lab};

const ENRICH: &str = "spiffe://acme.example/soc/enrichment-bot";

fn lab_state(url: &str) -> Value {
    let mut res = ureq::get(format!("{url}/state")).call().unwrap();
    res.body_mut().read_json().unwrap()
}

fn log(h: &Harness) -> Vec<Value> {
    let store = h.app.ledger().store();
    store.entries(0, 100_000).unwrap().iter().map(|e| serde_json::from_slice(&e.bytes).unwrap()).collect()
}

fn types(h: &Harness) -> Vec<String> {
    log(h).iter().map(|e| e["type"].as_str().unwrap().to_string()).collect()
}

async fn task(h: &Harness, token: &str, id: &str) {
    let body = json!({"id": id, "title": "t", "trigger": {"source": "edr", "severity": "high"}});
    assert_eq!(h.call("POST", "/v1/tasks", Some(token), Some(body)).await.0, StatusCode::CREATED);
}

fn isolate(target: &str, confidence: f64) -> Value {
    json!({"task": "INC-7", "action": "host.isolate", "target": target, "confidence": confidence,
        "params": {"reason": "beacon"}, "rationale": "C2 beacon", "evidence": [{"kind": "edr", "ref": "det:1"}]})
}

/// Asserts that no key of the lab appears anywhere Warden recorded or answered.
fn assert_no_secret(h: &Harness, keys: &warden_lab::Keys, answers: &[&Value]) {
    let log = serde_json::to_string(&log(h)).unwrap();
    for (name, key) in keys.env() {
        assert!(!log.contains(key), "{name} leaked into the audit log");
        for a in answers {
            assert!(!a.to_string().contains(key), "{name} leaked into an answer");
        }
    }
}

#[tokio::test]
async fn an_execute_decision_runs_through_the_connector_under_a_lease() {
    let (h, url, keys) = harness_lab();
    let agent = h.svid(EDR);
    task(&h, &agent, "INC-7").await;
    let (status, a) = h.call("POST", "/v1/actions", Some(&agent), Some(isolate("host:web-42", 0.95))).await;
    assert_eq!(status, StatusCode::OK, "{a}");
    assert_eq!((a["decision"]["outcome"].as_str(), a["state"].as_str()), (Some("execute"), Some("succeeded")), "{a}");
    let exec = &a["execution"];
    assert_eq!((exec["state"].as_str(), exec["tool_status"].as_u64()), (Some("succeeded"), Some(200)));
    assert!(exec["captured"]["containment_id"].as_str().unwrap().starts_with("cnt-"));
    assert_eq!(exec["compensation"], "host.release");
    assert_eq!(a["lease"]["state"], "revoked", "revoked when the execution finished");
    let lab = lab_state(&url);
    assert_eq!(lab["edr"]["hosts"]["web-42"]["status"], "contained");
    let lease_id = a["lease"]["id"].as_str().unwrap();
    assert!(
        lab["edr"]["hosts"]["web-42"]["comment"].as_str().unwrap().contains(lease_id),
        "the lease reached the tool"
    );
    let t = types(&h);
    let pos = |x: &str| t.iter().position(|y| y == x).unwrap_or_else(|| panic!("{x} in {t:?}"));
    assert!(pos("decision.made") < pos("lease.issued"));
    assert!(pos("execution.started") < pos("execution.succeeded"), "executing is recorded before the result");
    assert!(
        pos("execution.succeeded") < pos("lease.revoked") || t.iter().filter(|x| *x == "lease.revoked").count() == 1
    );
    let (status, lease) = h.call("GET", &format!("/v1/leases/{lease_id}"), Some(&h.admin), None).await;
    assert_eq!(
        (status, lease["active"].as_bool(), lease["scope"].as_str()),
        (StatusCode::OK, Some(false), Some("host.isolate host:web-42"))
    );
    let (_, got) = h.call("GET", &format!("/v1/actions/{}", a["id"].as_str().unwrap()), Some(&agent), None).await;
    assert_eq!(got["execution"]["state"], "succeeded");
    assert_no_secret(&h, &keys, &[&a, &got, &lease]);
}

#[tokio::test]
async fn a_rollback_really_reverts_the_lab_once() {
    let (h, url, _) = harness_lab();
    let agent = h.svid(EDR);
    task(&h, &agent, "INC-7").await;
    let (_, a) = h.call("POST", "/v1/actions", Some(&agent), Some(isolate("host:web-42", 0.95))).await;
    let id = a["id"].as_str().unwrap();
    assert_eq!(lab_state(&url)["edr"]["hosts"]["web-42"]["status"], "contained");
    let (status, e) = h.call("POST", &format!("/v1/actions/{id}/rollback"), Some(&agent), None).await;
    assert_eq!((status, &e["error"]["code"]), (StatusCode::FORBIDDEN, &json!("agents_not_allowed")));
    // Rolling back needs the action's approver roles or the incident commander's; an admin
    // as such has neither.
    let (status, e) = h.call("POST", &format!("/v1/actions/{id}/rollback"), Some(&h.admin), None).await;
    assert_eq!((status, &e["error"]["code"]), (StatusCode::FORBIDDEN, &json!("missing_role")));
    let ic = h.user("ic", &["incident-commander"]);
    let (status, rolled) = h.call("POST", &format!("/v1/actions/{id}/rollback"), Some(&ic), None).await;
    assert_eq!(status, StatusCode::OK, "{rolled}");
    assert_eq!(
        (rolled["state"].as_str(), rolled["rollback"]["action"].as_str()),
        (Some("rolled_back"), Some("host.release"))
    );
    assert_eq!(lab_state(&url)["edr"]["hosts"]["web-42"]["status"], "normal");
    let calls = lab_state(&url)["calls"]["total"].as_u64().unwrap();
    let (status, again) = h.call("POST", &format!("/v1/actions/{id}/rollback"), Some(&ic), None).await;
    assert_eq!((status, again["state"].as_str()), (StatusCode::OK, Some("rolled_back")));
    assert_eq!(lab_state(&url)["calls"]["total"].as_u64().unwrap(), calls, "idempotent: no second call");
    let (_, got) = h.call("GET", &format!("/v1/actions/{id}"), Some(&h.admin), None).await;
    assert_eq!(got["state"], "rolled_back");
    let t = types(&h);
    assert_eq!(t.iter().filter(|x| *x == "rollback.succeeded").count(), 1);

    // Enrichment is irreversible: 422 with the reason.
    let bot = h.svid(ENRICH);
    task(&h, &bot, "INC-8").await;
    let body = json!({"task": "INC-8", "action": "alert.enrich", "target": "alert:ALRT-1001", "confidence": 0.9,
        "params": {"sources": ["threat-intel"]}});
    let (_, enriched) = h.call("POST", "/v1/actions", Some(&bot), Some(body)).await;
    assert_eq!(enriched["state"], "succeeded", "{enriched}");
    assert_eq!(lab_state(&url)["siem"]["alerts"]["ALRT-1001"]["enriched"], true);
    let (status, e) =
        h.call("POST", &format!("/v1/actions/{}/rollback", enriched["id"].as_str().unwrap()), Some(&ic), None).await;
    assert_eq!((status, &e["error"]["code"]), (StatusCode::UNPROCESSABLE_ENTITY, &json!("irreversible")));
}

#[tokio::test]
async fn an_approved_request_executes_when_the_approval_is_granted() {
    let (h, url, _) = harness_lab();
    let agent = h.svid(EDR);
    task(&h, &agent, "INC-7").await;
    let (_, a) = h.call("POST", "/v1/actions", Some(&agent), Some(isolate("host:db-payments-01", 0.95))).await;
    assert_eq!(a["state"], "pending_approval");
    assert!(lab_state(&url)["edr"]["hosts"].get("db-payments-01").is_none(), "nothing ran before the approval");
    let approval = a["decision"]["approval"]["id"].as_str().unwrap();
    let ana = h.user("ana", &["soc-analyst"]);
    let body = json!({"reason": "confirmed", "lease_ttl": "2m"});
    let (status, _) = h.call("POST", &format!("/v1/approvals/{approval}/approve"), Some(&ana), Some(body)).await;
    assert_eq!(status, StatusCode::OK);
    let (_, got) = h.call("GET", &format!("/v1/actions/{}", a["id"].as_str().unwrap()), Some(&agent), None).await;
    assert_eq!(
        (got["state"].as_str(), got["execution"]["state"].as_str()),
        (Some("succeeded"), Some("succeeded")),
        "{got}"
    );
    assert_eq!(lab_state(&url)["edr"]["hosts"]["db-payments-01"]["status"], "contained");
    // The approval narrowed the lease to two minutes.
    let (_, lease) =
        h.call("GET", &format!("/v1/leases/{}", got["lease"]["id"].as_str().unwrap()), Some(&h.admin), None).await;
    let at = |k: &str| {
        time::OffsetDateTime::parse(lease[k].as_str().unwrap(), &time::format_description::well_known::Rfc3339).unwrap()
    };
    assert_eq!((at("expires_at") - at("issued_at")).whole_seconds(), 120);
}

#[tokio::test]
async fn a_tool_that_refuses_fails_the_execution_and_revokes_the_lease() {
    let (url, keys) = crate::lab();
    let mut wrong = keys.clone();
    wrong.edr = "lab-edr-wrong".into();
    let h = crate::harness_full(
        None,
        Arc::new(warden_store::SystemClock),
        Default::default(),
        Some(crate::connector(&url, &wrong)),
    );
    let agent = h.svid(EDR);
    task(&h, &agent, "INC-7").await;
    let (status, a) = h.call("POST", "/v1/actions", Some(&agent), Some(isolate("host:web-42", 0.95))).await;
    assert_eq!(status, StatusCode::OK, "{a}");
    assert_eq!((a["state"].as_str(), a["execution"]["tool_status"].as_u64()), (Some("failed"), Some(401)));
    assert_eq!(a["lease"]["state"], "revoked");
    assert!(a["execution"]["error"].as_str().unwrap().contains("HTTP 401"));
    assert_eq!(lab_state(&url)["edr"]["hosts"], json!({}));
    assert_no_secret(&h, &wrong, &[&a]);
    assert!(types(&h).contains(&"execution.failed".to_string()));
}

#[tokio::test]
async fn an_execution_interrupted_by_a_stop_becomes_unknown_on_restart() {
    use warden_server::execution::{Execution, ExecutionState};
    use warden_server::model::Model as _;
    let dir = tempfile::tempdir().unwrap();
    let clock: Arc<dyn warden_store::Clock> = Arc::new(warden_store::SystemClock);
    let (data, _) = warden_store::DataDir::init(dir.path(), "warden.test/audit", clock.clone()).unwrap();
    // What a server leaves when it dies between `executing` and the tool's answer.
    let exec = Execution {
        id: "act_1".into(),
        state: ExecutionState::Executing,
        agent: EDR.into(),
        task: "INC-7".into(),
        action: "host.isolate".into(),
        target: "host:web-42".into(),
        lease: "lease_1".into(),
        started_at: "2026-11-23T00:00:00Z".into(),
        finished_at: None,
        tool_status: None,
        answer: None,
        captured: Default::default(),
        error: None,
        compensation: Some("host.release".into()),
        rollback: None,
        rolling_back: None,
        warning: None,
        node: None,
    };
    data.ledger().commit(warden_store::Batch::new().change(warden_store::Change::Insert(exec.record()))).unwrap();
    let files = crate::read_bundle(&crate::example_dir());
    let bundle = warden_core::Bundle::load(&files).unwrap();
    let app = warden_server::AppState::with_options(data, bundle, clock, Default::default()).unwrap();
    let store = app.ledger().store();
    let r = store.get(warden_store::Table::Executions, "act_1").unwrap().unwrap();
    assert_eq!(Execution::from_record(&r).unwrap().state, ExecutionState::Unknown);
    let unknown = store
        .entries(0, 100)
        .unwrap()
        .iter()
        .filter(|e| String::from_utf8_lossy(&e.bytes).contains("execution.unknown"))
        .count();
    assert_eq!(unknown, 1);
}

#[tokio::test]
async fn a_halt_stops_an_agent_revokes_cancels_and_resume_needs_admin() {
    let (h, url, _) = harness_lab();
    let agent = h.svid(EDR);
    task(&h, &agent, "INC-7").await;
    let (_, pending) = h.call("POST", "/v1/actions", Some(&agent), Some(isolate("host:db-payments-01", 0.95))).await;
    assert_eq!(pending["state"], "pending_approval");
    let (_, done) = h.call("POST", "/v1/actions", Some(&agent), Some(isolate("host:web-42", 0.95))).await;
    assert_eq!(done["state"], "succeeded");
    let ana = h.user("ana", &["soc-analyst"]);
    let body = json!({"scope": "agent", "id": EDR, "reason": "runaway", "rollback": true});
    let (status, halted) = h.call("POST", "/v1/halt", Some(&ana), Some(body)).await;
    assert_eq!(status, StatusCode::OK, "{halted}");
    assert_eq!(halted["cancelled_approvals"], json!([pending["decision"]["approval"]["id"]]));
    assert_eq!(halted["rolled_back"], json!([done["id"]]));
    assert_eq!(lab_state(&url)["edr"]["hosts"]["web-42"]["status"], "normal", "rolled back in the lab");
    let (status, e) = h.call("POST", "/v1/actions", Some(&agent), Some(isolate("host:web-43", 0.95))).await;
    assert_eq!((status, &e["error"]["code"]), (StatusCode::FORBIDDEN, &json!("agent_halted")));
    let (_, list) = h.call("GET", "/v1/halts", Some(&ana), None).await;
    assert_eq!(list[0]["active"], true);
    let body = json!({"scope": "agent", "id": EDR, "reason": "fixed"});
    let (status, e) = h.call("POST", "/v1/resume", Some(&ana), Some(body.clone())).await;
    assert_eq!((status, &e["error"]["code"]), (StatusCode::FORBIDDEN, &json!("missing_role")));
    let (status, _) = h.call("POST", "/v1/resume", Some(&h.admin), Some(body)).await;
    assert_eq!(status, StatusCode::OK);
    let (_, again) = h.call("POST", "/v1/actions", Some(&agent), Some(isolate("host:web-42", 0.95))).await;
    assert_eq!(again["state"], "succeeded", "{again}");
    let (status, e) = h.call("POST", "/v1/halt", Some(&ana), Some(json!({"scope": "agent", "reason": "x"}))).await;
    assert_eq!((status, &e["error"]["code"]), (StatusCode::UNPROCESSABLE_ENTITY, &json!("invalid_halt")));
}

/// Requests of two agents in flight, executing against the lab, while a halt of everything is
/// issued: once the halt call has returned, the lab receives no further call.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nothing_starts_after_a_halt_returns() {
    let (h, url, _) = harness_lab();
    let h = Arc::new(h);
    let (bot, edr) = (h.svid(ENRICH), h.svid(EDR));
    task(&h, &bot, "INC-7").await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for w in 0..8 {
        let (h, stop) = (h.clone(), stop.clone());
        let token = if w % 4 == 0 { edr.clone() } else { bot.clone() };
        load.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let body = if w % 4 == 0 {
                    isolate("host:web-42", 0.95)
                } else {
                    json!({"task": "INC-7", "action": "alert.enrich", "target": format!("alert:ALRT-{w}-{i}"),
                        "confidence": 0.9, "params": {"sources": ["threat-intel"]}})
                };
                let _ = h.call("POST", "/v1/actions", Some(&token), Some(body)).await;
                i += 1;
            }
        }));
    }
    // Executions flowing (at least 20 calls, however fast the store is), then the halt.
    let flowing = std::time::Instant::now();
    while lab_state(&url)["calls"]["total"].as_u64().unwrap() < 20 && flowing.elapsed().as_secs() < 20 {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let (status, halted) =
        h.call("POST", "/v1/halt", Some(&h.admin), Some(json!({"scope": "all", "reason": "stop everything"}))).await;
    assert_eq!(status, StatusCode::OK, "{halted}");
    let after = lab_state(&url)["calls"]["total"].as_u64().unwrap();
    assert!(after >= 20, "executions were flowing before the halt ({after} calls)");
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for l in load {
        l.await.unwrap();
    }
    assert_eq!(lab_state(&url)["calls"]["total"].as_u64().unwrap(), after, "no call after the halt returned");
    // Every lease is inactive, and the requests that arrived after the halt were denied.
    let store = h.app.ledger().store();
    let q = warden_store::Query { state: Some("active".into()), ..Default::default() };
    assert!(store.find(warden_store::Table::Leases, &q).unwrap().is_empty());
    let denied = log(&h)
        .iter()
        .filter(|e| e["type"] == "decision.made" && e["data"]["decision"]["caps"].to_string().contains("halted"))
        .count();
    assert!(denied > 0, "requests after the halt were decided against");
}

/// Halts persist: a server opened later on the same data directory enforces them.
#[tokio::test]
async fn a_halt_survives_a_restart() {
    let (h, _, _) = harness_lab();
    let (status, _) = h
        .call(
            "POST",
            "/v1/halt",
            Some(&h.admin),
            Some(json!({"scope": "action", "id": "host.isolate", "reason": "drill"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let data =
        warden_store::DataDir::open_at(h._dir.path(), &h.at, Arc::new(warden_store::SystemClock), Default::default())
            .unwrap();
    let files = crate::read_bundle(&crate::example_dir());
    let again = warden_server::AppState::with_options(
        data,
        warden_core::Bundle::load(&files).unwrap(),
        Arc::new(warden_store::SystemClock),
        Default::default(),
    )
    .unwrap();
    let halts = again.halts.read().unwrap().list.clone();
    assert_eq!((halts.len(), halts[0].id.as_deref()), (1, Some("host.isolate")));
}

#[tokio::test]
async fn a_runaway_trips_its_breaker_until_an_admin_resets_it() {
    let (h, url, _) = harness_lab();
    let agent = h.svid(EDR);
    task(&h, &agent, "INC-7").await;
    // The EDR responder's budget: 10 executions an hour.
    for i in 0..10 {
        let (_, a) = h.call("POST", "/v1/actions", Some(&agent), Some(isolate("host:web-42", 0.95))).await;
        assert_eq!(a["state"], "succeeded", "execution {i}: {a}");
    }
    let (_, tripped) = h.call("POST", "/v1/actions", Some(&agent), Some(isolate("host:web-42", 0.95))).await;
    assert_ne!(tripped["decision"]["outcome"], "execute", "{tripped}");
    assert_eq!(types(&h).iter().filter(|t| *t == "breaker.tripped").count(), 1);
    let (_, held) = h.call("POST", "/v1/actions", Some(&agent), Some(isolate("host:web-42", 0.95))).await;
    assert!(held["decision"]["caps"].as_array().unwrap().iter().any(|c| c["code"] == "breaker_open"), "{held}");
    let calls = lab_state(&url)["calls"]["total"].as_u64().unwrap();
    assert_eq!(calls, 10, "nothing ran past the budget");

    let body = json!({"agent": EDR, "action": "host.isolate", "reason": "runaway loop fixed"});
    let ana = h.user("ana", &["soc-analyst"]);
    let (status, e) = h.call("POST", "/v1/breakers/reset", Some(&ana), Some(body.clone())).await;
    assert_eq!((status, &e["error"]["code"]), (StatusCode::FORBIDDEN, &json!("missing_role")));
    let (status, _) = h.call("POST", "/v1/breakers/reset", Some(&h.admin), Some(body.clone())).await;
    assert_eq!(status, StatusCode::OK);
    let (status, e) = h.call("POST", "/v1/breakers/reset", Some(&h.admin), Some(body)).await;
    assert_eq!((status, &e["error"]["code"]), (StatusCode::CONFLICT, &json!("breaker_closed")));
    let (_, again) = h.call("POST", "/v1/actions", Some(&agent), Some(isolate("host:web-42", 0.95))).await;
    assert_eq!(again["state"], "succeeded", "budgets count afresh after the reset: {again}");
    assert_eq!(types(&h).iter().filter(|t| *t == "breaker.reset").count(), 1);
}

#[tokio::test]
async fn closing_a_task_revokes_its_active_leases() {
    use warden_server::execution::{Lease, LeaseState};
    use warden_server::model::Model as _;
    let (h, _, _) = harness_lab();
    let agent = h.svid(EDR);
    task(&h, &agent, "INC-7").await;
    // A lease still active (an execution in flight, say).
    let lease = Lease {
        id: "lease_inflight".into(),
        state: LeaseState::Active,
        agent: EDR.into(),
        task: "INC-7".into(),
        request: "act_x".into(),
        scope: "host.isolate host:web-42".into(),
        digest: String::new(),
        max_uses: 1,
        uses: 1,
        issued_at: "2026-11-23T00:00:00Z".into(),
        expires_at: "2099-01-01T00:00:00Z".into(),
        expires_ms: 4_070_908_800_000,
        revoked_at: None,
        revoked_reason: None,
    };
    h.app.ledger().commit(warden_store::Batch::new().change(warden_store::Change::Insert(lease.record()))).unwrap();
    // Introspection takes the lease's token, never its id.
    let token = h.app.tokens.local.mint_lease(EDR, "lease_inflight", &lease.scope, "", h.app.now(), 3600);
    let (_, by_id) =
        h.call("POST", "/v1/leases/introspect", Some(&h.admin), Some(json!({"token": "lease_inflight"}))).await;
    assert_eq!(by_id, json!({"active": false}));
    let (_, before) = h.call("POST", "/v1/leases/introspect", Some(&h.admin), Some(json!({"token": token}))).await;
    assert_eq!((before["active"].as_bool(), before["scope"].as_str()), (Some(true), Some("host.isolate host:web-42")));
    assert_eq!(h.call("POST", "/v1/tasks/INC-7/close", Some(&h.admin), None).await.0, StatusCode::OK);
    let (_, l) = h.call("GET", "/v1/leases/lease_inflight", Some(&h.admin), None).await;
    assert_eq!((l["state"].as_str(), l["revoked_reason"].as_str()), (Some("revoked"), Some("the task was closed")));
    let (_, after) = h.call("POST", "/v1/leases/introspect", Some(&h.admin), Some(json!({"token": token}))).await;
    assert_eq!(after, json!({"active": false}));
    // An agent may not introspect at all; a tool's own credential may.
    let (status, _) = h.call("POST", "/v1/leases/introspect", Some(&agent), Some(json!({"token": token}))).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let tool = h.user("edr-tool", &["tool"]);
    let (status, _) = h.call("POST", "/v1/leases/introspect", Some(&tool), Some(json!({"token": token}))).await;
    assert_eq!(status, StatusCode::OK);
    // RFC 7662's form encoding works too; garbage is simply inactive.
    let (status, v) =
        h.call_form("/v1/leases/introspect", &h.admin, "token=not-a-token&token_type_hint=access_token").await;
    assert_eq!((status, v), (StatusCode::OK, json!({"active": false})));
}

/// The lease token a tool receives verifies offline with the published JWKS, names the lease
/// and its scope, and introspection says whether it is still good.
#[tokio::test]
async fn a_tool_can_check_its_lease_token_offline_and_by_introspection() {
    let (url, keys) = crate::lab();
    let text = format!(
        "[tools.edr]\nurl = \"{url}\"\nheaders = {{ \"x-api-key\" = \"secret:LAB_EDR_KEY\" }}\n\
         [actions.\"host.isolate\"]\ntool = \"edr\"\nmethod = \"POST\"\npath = \"/edr/v1/hosts/{{target.id}}/contain\"\n\
         body = {{ comment = \"{{lease.token}}\" }}\n"
    );
    let given = keys.env().into_iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let secrets = warden_connectors::EnvSecrets { given, dir: None };
    let connector: Arc<dyn warden_connectors::Connector> =
        Arc::new(warden_connectors::HttpConnector::from_toml(&text, &Default::default(), Box::new(secrets)).unwrap());
    let h = crate::harness_full(None, Arc::new(warden_store::SystemClock), Default::default(), Some(connector));
    let agent = h.svid(EDR);
    task(&h, &agent, "INC-7").await;
    let (_, a) = h.call("POST", "/v1/actions", Some(&agent), Some(isolate("host:web-42", 0.95))).await;
    assert_eq!(a["state"], "succeeded", "{a}");
    let token = lab_state(&url)["edr"]["hosts"]["web-42"]["comment"].as_str().unwrap().to_string();
    // Offline: nothing but the JWKS and a JWT library.
    let (_, jwks) = h.call("GET", "/.well-known/jwks.json", None, None).await;
    let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(jwks["keys"][0].clone()).unwrap();
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
    v.set_audience(&["warden-lease"]);
    let claims =
        jsonwebtoken::decode::<Value>(&token, &jsonwebtoken::DecodingKey::from_jwk(&jwk).unwrap(), &v).unwrap().claims;
    assert_eq!(
        (claims["jti"].as_str(), claims["scope"].as_str(), claims["sub"].as_str()),
        (a["lease"]["id"].as_str(), Some("host.isolate host:web-42"), Some(EDR))
    );
    // Introspection: the execution is over, so the lease is no longer active.
    let (_, i) = h.call("POST", "/v1/leases/introspect", Some(&h.admin), Some(json!({"token": token}))).await;
    assert_eq!(i, json!({"active": false}));
    // A lease token is not a credential for Warden's own API.
    let (status, _) = h.call("GET", "/v1/tasks/INC-7", Some(&token), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

/// A tool lost mid-call may have acted: the execution is `unknown` (for a human), never
/// `failed` (which would invite a retry); a tool that refused the connection did nothing.
#[tokio::test]
async fn a_tool_lost_mid_call_leaves_the_execution_unknown() {
    let keys = warden_lab::Keys::random();
    for (url, expected) in [(warden_lab::spawn_hang_up(), "unknown"), (closed_port(), "failed")] {
        let connector = crate::connector(&url, &keys);
        let h = crate::harness_full(None, Arc::new(warden_store::SystemClock), Default::default(), Some(connector));
        let agent = h.svid(EDR);
        task(&h, &agent, "INC-7").await;
        let (status, a) = h.call("POST", "/v1/actions", Some(&agent), Some(isolate("host:web-42", 0.95))).await;
        assert_eq!(status, StatusCode::OK, "{a}");
        assert_eq!((a["state"].as_str(), a["execution"]["state"].as_str()), (Some(expected), Some(expected)), "{a}");
        assert_eq!(a["lease"]["state"], "revoked", "{a}");
        assert!(types(&h).contains(&format!("execution.{expected}")), "{:?}", types(&h));
    }
}

fn closed_port() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("http://{}", l.local_addr().unwrap())
}
