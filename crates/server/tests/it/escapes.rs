//! The escapes: every way an agent or a race once got around Warden's authority, each tried
//! again here and each refused (DESIGN §3, §6). A test is named for the escape it closes; the
//! lab estate's call counters prove what reached a tool.

use std::sync::Arc;

use axum::http::StatusCode;
use serde_json::{Value, json};
use warden_server::model::Model as _;
use warden_store::{Batch, Change, Table};

use warden_server::state::ServerOptions;

use crate::{EDR, Harness, PHISH, connector, harness_full, harness_lab, harness_options, lab};

fn lab_state(url: &str) -> Value {
    let mut res = ureq::get(format!("{url}/state")).call().unwrap();
    res.body_mut().read_json().unwrap()
}

/// Calls of one lab endpoint (`edr kill_process`, `edr contain`, …).
pub fn calls(url: &str, endpoint: &str) -> u64 {
    lab_state(url)["calls"]["by_endpoint"][endpoint].as_u64().unwrap_or(0)
}

fn log(h: &Harness) -> Vec<Value> {
    let store = h.app.ledger().store();
    store.entries(0, 1_000_000).unwrap().iter().map(|e| serde_json::from_slice(&e.bytes).unwrap()).collect()
}

async fn open_task(h: &Harness, token: &str, id: &str, trigger: Value) {
    let body = json!({"id": id, "title": "t", "trigger": trigger});
    let (status, t) = h.call("POST", "/v1/tasks", Some(token), Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{t}");
}

async fn edr_task(h: &Harness, agent: &str) {
    open_task(h, agent, "INC-7", json!({"source": "edr", "severity": "high"})).await;
}

fn kill(pid: i64, rationale: &str) -> Value {
    json!({"task": "INC-7", "action": "process.kill", "target": "host:web-42", "params": {"pid": pid},
           "confidence": 0.95, "rationale": rationale, "evidence": [{"kind": "edr", "ref": "det:1"}]})
}

fn isolate(target: &str) -> Value {
    json!({"task": "INC-7", "action": "host.isolate", "target": target, "confidence": 0.95,
           "params": {"reason": "beacon"}, "rationale": "C2 beacon", "evidence": [{"kind": "edr", "ref": "det:1"}]})
}

fn approval_of(a: &Value) -> String {
    a["decision"]["approval"]["id"].as_str().unwrap_or_else(|| panic!("no approval in {a}")).to_string()
}

async fn approve(h: &Harness, token: &str, approval: &str) -> (StatusCode, Value) {
    h.call("POST", &format!("/v1/approvals/{approval}/approve"), Some(token), Some(json!({"reason": "ok"}))).await
}

async fn get(h: &Harness, token: &str, id: &str) -> Value {
    h.call("GET", &format!("/v1/actions/{id}"), Some(token), None).await.1
}

#[tokio::test]
async fn one_approval_cannot_run_a_second_action_with_other_params() {
    let (h, url, _) = harness_lab();
    let agent = h.svid(EDR);
    let ana = h.user("ana", &["soc-analyst"]);
    edr_task(&h, &agent).await;
    let (_, first) = h.call("POST", "/v1/actions", Some(&agent), Some(kill(4242, "malware pid 4242"))).await;
    let (_, second) = h.call("POST", "/v1/actions", Some(&agent), Some(kill(1, "also kill init"))).await;
    assert_eq!(
        (first["state"].as_str(), second["state"].as_str()),
        (Some("pending_approval"), Some("pending_approval"))
    );
    assert_ne!(first["digest"], second["digest"], "other params, another action");
    assert!(first["digest"].as_str().unwrap().starts_with("sha256:"));
    let (a1, a2) = (approval_of(&first), approval_of(&second));
    assert_ne!(a1, a2, "a request with another digest opens its own approval");
    let (status, view) = approve(&h, &ana, &a1).await;
    assert_eq!(status, StatusCode::OK, "{view}");
    // Exactly one kill reached the EDR, and it was pid 4242.
    assert_eq!(calls(&url, "edr kill_process"), 1);
    let killed = lab_state(&url)["edr"]["hosts"]["web-42"]["killed"].to_string();
    assert_eq!(killed.trim_matches('"'), "4242");
    assert_eq!(get(&h, &agent, first["id"].as_str().unwrap()).await["state"], "succeeded");
    assert_eq!(get(&h, &agent, second["id"].as_str().unwrap()).await["state"], "pending_approval");
}

#[tokio::test]
async fn identical_requests_fold_into_one_approval_and_one_execution() {
    let (h, url, _) = harness_lab();
    let agent = h.svid(EDR);
    let ana = h.user("ana", &["soc-analyst"]);
    edr_task(&h, &agent).await;
    let mut answers = Vec::new();
    for _ in 0..3 {
        answers.push(h.call("POST", "/v1/actions", Some(&agent), Some(kill(4242, "pid 4242"))).await.1);
    }
    let approval = approval_of(&answers[0]);
    assert!(answers.iter().all(|a| approval_of(a) == approval), "same digest, same approval");
    assert_eq!(answers[1]["folded_into"], answers[0]["id"]);
    let (_, view) = approve(&h, &ana, &approval).await;
    assert_eq!(view["requests"].as_array().unwrap().len(), 3);
    assert_eq!(calls(&url, "edr kill_process"), 1, "one approval, one tool call");
    let executions: Vec<Value> = {
        let mut out = Vec::new();
        for a in &answers {
            out.push(get(&h, &agent, a["id"].as_str().unwrap()).await);
        }
        out
    };
    for e in &executions {
        assert_eq!(e["state"], "succeeded", "{e}");
        assert_eq!(e["execution"]["id"], answers[0]["id"], "they share the first request's execution");
    }
    let started = log(&h).iter().filter(|e| e["type"] == "execution.started").count();
    assert_eq!(started, 1);
}

#[tokio::test]
async fn params_tampered_after_the_decision_are_refused_and_audited() {
    let (h, url, _) = harness_lab();
    let agent = h.svid(EDR);
    let ana = h.user("ana", &["soc-analyst"]);
    edr_task(&h, &agent).await;
    let (_, a) = h.call("POST", "/v1/actions", Some(&agent), Some(kill(4242, "pid 4242"))).await;
    let id = a["id"].as_str().unwrap();
    // Someone with write access to the tables changes what would run.
    let store = h.app.ledger().store();
    let r = store.get(Table::Requests, id).unwrap().unwrap();
    let mut req = warden_server::model::ActionRecord::from_record(&r).unwrap();
    req.params.insert("pid".into(), json!(1));
    let mut tampered = req.record();
    tampered.version = r.version;
    h.app.ledger().commit(Batch::new().change(Change::Update(tampered))).unwrap();
    approve(&h, &ana, &approval_of(&a)).await;
    assert_eq!(calls(&url, "edr kill_process"), 0, "nothing reached the tool");
    let after = get(&h, &agent, id).await;
    assert_eq!(after["state"], "failed", "{after}");
    let refused: Vec<Value> = log(&h)
        .into_iter()
        .filter(|e| e["type"] == "execution.failed" && e["data"]["refused"] == "digest_mismatch")
        .collect();
    assert_eq!(refused.len(), 1, "the refusal is audited");
    assert_eq!(refused[0]["data"]["called"], false);
}

#[tokio::test]
async fn the_lease_token_names_the_one_action_it_allows() {
    let (h, _, _) = harness_lab();
    let agent = h.svid(EDR);
    edr_task(&h, &agent).await;
    let (_, a) = h.call("POST", "/v1/actions", Some(&agent), Some(isolate("host:web-42"))).await;
    assert_eq!(a["state"], "succeeded", "{a}");
    let (_, lease) =
        h.call("GET", &format!("/v1/leases/{}", a["lease"]["id"].as_str().unwrap()), Some(&h.admin), None).await;
    assert_eq!(lease["digest"], a["digest"]);
    let issued: Vec<Value> = log(&h).into_iter().filter(|e| e["type"] == "lease.issued").collect();
    assert_eq!(issued[0]["data"]["digest"], a["digest"]);
    let decided: Vec<Value> = log(&h).into_iter().filter(|e| e["type"] == "decision.made").collect();
    assert_eq!(decided[0]["data"]["digest"], a["digest"]);
}

#[tokio::test]
async fn approvers_see_exactly_what_they_approve() {
    let (h, _, _) = harness_lab();
    let agent = h.svid(EDR);
    let ana = h.user("ana", &["soc-analyst"]);
    edr_task(&h, &agent).await;
    let (_, a) = h.call("POST", "/v1/actions", Some(&agent), Some(kill(4242, "malware pid 4242"))).await;
    let (status, view) = h.call("GET", &format!("/v1/approvals/{}", approval_of(&a)), Some(&ana), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(view["params"], json!({"pid": 4242}));
    assert_eq!(view["digest"], a["digest"]);
    assert_eq!(view["task"], "INC-7");
    assert_eq!(view["rationale"], "malware pid 4242");
    assert_eq!(view["evidence"][0]["ref"], "det:1");
    let facts = &view["target_facts"];
    assert_eq!((facts["known"].as_bool(), facts["criticality"].as_str()), (Some(true), Some("tier2")), "{facts}");
}

#[tokio::test]
async fn an_approved_execution_counts_toward_the_budget() {
    let (h, _, _) = harness_lab();
    let agent = h.svid(EDR);
    let ana = h.user("ana", &["soc-analyst"]);
    edr_task(&h, &agent).await;
    // db-payments-01 is tier0: level 2, approved by a human.
    let (_, a) = h.call("POST", "/v1/actions", Some(&agent), Some(isolate("host:db-payments-01"))).await;
    approve(&h, &ana, &approval_of(&a)).await;
    assert_eq!(get(&h, &agent, a["id"].as_str().unwrap()).await["state"], "succeeded");
    // The budget is 10 an hour: 9 more execute, the 10th goes to a human.
    let mut outcomes = Vec::new();
    for _ in 0..10 {
        let (_, r) = h.call("POST", "/v1/actions", Some(&agent), Some(isolate("host:web-42"))).await;
        outcomes.push(r["decision"]["outcome"].as_str().unwrap().to_string());
    }
    assert_eq!(outcomes.iter().filter(|o| *o == "execute").count(), 9, "{outcomes:?}");
    assert_eq!(outcomes.last().unwrap(), "require_approval");
}

#[tokio::test]
async fn sixty_concurrent_requests_through_the_real_server_get_exactly_the_budget() {
    // 60 at once on one host: the hourly budget of 10 binds.
    let (same, url) = fire_at_a_fresh_server((0..60).map(|_| isolate("host:web-42")).collect()).await;
    let executed = same.iter().filter(|a| a["decision"]["outcome"] == "execute").count();
    assert_eq!(executed, 10, "{:?}", same.iter().map(|a| a["state"].clone()).collect::<Vec<_>>());
    assert_eq!(calls(&url, "edr contain"), 10);
    assert!(same.iter().all(|a| a["id"].is_string()), "every request was answered");

    // At once on the 10 hosts the agent may isolate on its own (tier2 or lower), 6 times
    // each, on a fresh server: at most 5 distinct targets and 10 executions. Which budget
    // stops them first depends on the order the requests commit in (10 executions may land
    // on 4 hosts, and then the first to exceed trips the breaker on the hourly budget).
    let hosts = [
        "web-01",
        "web-02",
        "web-42",
        "build-07",
        "staging-api-01",
        "detonation-01",
        "detonation-02",
        "lt-jdoe",
        "lt-asmith",
        "lt-helpdesk-01",
    ];
    let (spread, url) =
        fire_at_a_fresh_server((0..60).map(|i| isolate(&format!("host:{}", hosts[i % 10]))).collect()).await;
    let executed: Vec<&Value> = spread.iter().filter(|a| a["decision"]["outcome"] == "execute").collect();
    let mut targets: Vec<&str> = executed.iter().map(|a| a["target"].as_str().unwrap()).collect();
    targets.sort_unstable();
    targets.dedup();
    assert!(targets.len() <= 5, "at most 5 distinct targets an hour: {targets:?}");
    assert!(executed.len() <= 10, "at most 10 an hour: {}", executed.len());
    assert_eq!(calls(&url, "edr contain"), executed.len() as u64);
    let said = |code: &str| spread.iter().any(|a| a["decision"]["caps"].to_string().contains(code));
    assert!(said("budget_exceeded") || said("distinct_targets_exceeded"), "a budget was met, and a decision says so");
    if executed.len() < 10 {
        assert_eq!(targets.len(), 5, "fewer than 10 ran: the distinct targets stopped them");
        assert!(said("distinct_targets_exceeded"), "and a decision says so");
    }
}

/// A fresh lab and server (on a loopback port, with the EDR agent's task open): `bodies` sent
/// at once as the EDR agent over real HTTP; the answers and the lab's URL.
async fn fire_at_a_fresh_server(bodies: Vec<Value>) -> (Vec<Value>, String) {
    let (url, keys) = lab();
    let h = harness_full(None, Arc::new(warden_store::SystemClock), Default::default(), Some(connector(&url, &keys)));
    let agent = h.svid(EDR);
    edr_task(&h, &agent).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(warden_server::serve::serve(listener, h.app.clone(), async move {
        let _ = stopped.await;
    }));
    let answers = tokio::task::spawn_blocking(move || fire(addr, &agent, bodies)).await.unwrap();
    let _ = (stop.send(()), server.await);
    (answers, url)
}

/// Sends every body at once, each from its own thread, over real HTTP; the answers.
fn fire(addr: std::net::SocketAddr, agent: &str, bodies: Vec<Value>) -> Vec<Value> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = bodies
            .into_iter()
            .map(|body| {
                scope.spawn(move || {
                    let mut res = ureq::post(format!("http://{addr}/v1/actions"))
                        .header("authorization", format!("Bearer {agent}"))
                        .config()
                        .http_status_as_error(false)
                        .build()
                        .send_json(body)
                        .unwrap();
                    res.body_mut().read_json::<Value>().unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|t| t.join().unwrap()).collect()
    })
}

#[tokio::test]
async fn a_retry_with_the_same_key_always_answers_the_original_request() {
    let (h, _, _) = harness_lab();
    let agent = h.svid(EDR);
    edr_task(&h, &agent).await;
    // Folds race on one approval while the same key is sent again and again.
    let h = Arc::new(h);
    let mut tasks = Vec::new();
    for i in 0..24 {
        let (h, agent) = (h.clone(), agent.clone());
        tasks.push(tokio::spawn(async move {
            let mut body = kill(4242, "pid 4242");
            if i % 2 == 0 {
                body["idempotency_key"] = json!("k-1");
            }
            h.call("POST", "/v1/actions", Some(&agent), Some(body)).await
        }));
    }
    let mut keyed = Vec::new();
    for (i, t) in tasks.into_iter().enumerate() {
        let (status, a) = t.await.unwrap();
        assert_eq!(status, StatusCode::OK, "{a}");
        if i % 2 == 0 {
            keyed.push(a["id"].as_str().unwrap().to_string());
        }
    }
    keyed.dedup();
    assert_eq!(keyed.len(), 1, "every retry answered the one original request: {keyed:?}");
}

#[tokio::test]
async fn an_agent_cannot_raise_its_own_autonomy_by_claiming_a_severity() {
    let (h, _, _) = harness_lab();
    let agent = h.svid(PHISH);
    let ticket = json!({"task": "INC-9", "action": "ticket.create", "target": "ticket:CASE-7", "confidence": 0.95,
        "params": {"title": "wave"}, "rationale": "r", "evidence": [{"kind": "email", "ref": "msg:a1"}]});
    // The agent opens its own task and claims it is critical, from a source in its scope.
    open_task(&h, &agent, "INC-9", json!({"source": "siem", "severity": "critical"})).await;
    let (_, t) = h.call("GET", "/v1/tasks/INC-9", Some(&agent), None).await;
    assert_eq!(t["verified"], false);
    let (_, claimed) = h.call("POST", "/v1/actions", Some(&agent), Some(ticket.clone())).await;
    assert_ne!(claimed["decision"]["effective_level"], 4, "{claimed}");
    assert_eq!(claimed["decision"]["outcome"], "deny");
    // The same trigger asserted by a trusted party (the SIEM's own credential).
    let siem = h.user("siem", &["integration-siem"]);
    open_task(&h, &siem, "INC-10", json!({"source": "siem", "severity": "critical"})).await;
    let mut body = ticket;
    body["task"] = json!("INC-10");
    let (_, verified) = h.call("POST", "/v1/actions", Some(&agent), Some(body)).await;
    assert_eq!(
        (verified["decision"]["granted_level"].as_u64(), verified["decision"]["outcome"].as_str()),
        (Some(4), Some("execute")),
        "{verified}"
    );
}

#[tokio::test]
async fn a_confidence_outside_zero_to_one_is_invalid_input_and_records_nothing() {
    let (h, _, _) = harness_lab();
    let agent = h.svid(EDR);
    edr_task(&h, &agent).await;
    let before = h.app.ledger().store().size().unwrap();
    for bad in [1.5, -0.1] {
        let mut body = isolate("host:web-42");
        body["confidence"] = json!(bad);
        let (status, e) = h.call("POST", "/v1/actions", Some(&agent), Some(body.clone())).await;
        assert_eq!((status, &e["error"]["code"]), (StatusCode::UNPROCESSABLE_ENTITY, &json!("invalid_request")), "{e}");
        body["agent"] = json!(EDR);
        let (status, _) = h.call("POST", "/v1/decisions", Some(&h.admin), Some(body)).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    }
    assert_eq!(h.app.ledger().store().size().unwrap(), before, "nothing recorded");
}

#[tokio::test]
async fn suspending_an_agent_cancels_its_pending_approvals() {
    let (h, url, _) = harness_lab();
    let agent = h.svid(EDR);
    let ana = h.user("ana", &["soc-analyst"]);
    edr_task(&h, &agent).await;
    let (_, a) = h.call("POST", "/v1/actions", Some(&agent), Some(kill(4242, "pid"))).await;
    let path = format!("/v1/agents/{}/suspend", EDR.replace('/', "%2F").replace(':', "%3A"));
    let (status, body) = h.call("POST", &path, Some(&h.admin), Some(json!({"reason": "misbehaving"}))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, e) = approve(&h, &ana, &approval_of(&a)).await;
    assert_eq!((status, &e["error"]["code"]), (StatusCode::CONFLICT, &json!("approval_cancelled")));
    assert_eq!(calls(&url, "edr kill_process"), 0);
    let r = h.app.ledger().store().get(Table::Requests, a["id"].as_str().unwrap()).unwrap().unwrap();
    assert_eq!(r.state.as_deref(), Some("cancelled"));
}

#[tokio::test]
async fn an_approval_granted_after_a_switch_to_shadow_mode_never_runs() {
    let dir = tempfile::tempdir().unwrap();
    for f in crate::read_bundle(&crate::example_dir()) {
        let path = dir.path().join(&f.path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, f.text).unwrap();
    }
    let (url, keys) = lab();
    let h = harness_full(
        Some(dir.path()),
        Arc::new(warden_store::SystemClock),
        Default::default(),
        Some(connector(&url, &keys)),
    );
    let agent = h.svid(EDR);
    let ana = h.user("ana", &["soc-analyst"]);
    edr_task(&h, &agent).await;
    let (_, a) = h.call("POST", "/v1/actions", Some(&agent), Some(kill(4242, "pid"))).await;
    let guardrail = dir.path().join("agents/edr-responder.toml");
    let text = std::fs::read_to_string(&guardrail).unwrap();
    std::fs::write(
        &guardrail,
        text.replace("owner = \"team:endpoint-response\"", "owner = \"team:endpoint-response\"\nmode = \"shadow\""),
    )
    .unwrap();
    let (status, body) = h.call("POST", "/v1/policy/reload", Some(&h.admin), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _) = approve(&h, &ana, &approval_of(&a)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(calls(&url, "edr kill_process"), 0, "shadow mode executes nothing");
    let after = get(&h, &agent, a["id"].as_str().unwrap()).await;
    assert_eq!(after["state"], "cancelled", "{after}");
    assert!(log(&h).iter().any(|e| e["type"] == "execution.failed" && e["data"]["refused"] == "stopped"));
}

#[tokio::test]
async fn global_shadow_mode_executes_nothing() {
    let (url, keys) = lab();
    let options = ServerOptions { shadow: true, connector: Some(connector(&url, &keys)), ..Default::default() };
    let h = harness_options(Arc::new(warden_store::SystemClock), options);
    let agent = h.svid(EDR);
    edr_task(&h, &agent).await;
    let (_, a) = h.call("POST", "/v1/actions", Some(&agent), Some(isolate("host:web-42"))).await;
    assert_eq!(
        (a["decision"]["outcome"].as_str(), a["decision"]["shadow_outcome"].as_str()),
        (Some("advise"), Some("execute")),
        "{a}"
    );
    assert_eq!(calls(&url, "edr contain"), 0);
}

#[tokio::test]
async fn a_decision_racing_a_halt_is_never_recorded_as_executable_after_it() {
    let (h, _, _) = harness_lab();
    let h = Arc::new(h);
    let agent = h.svid(EDR);
    let olga = h.user("olga", &["incident-commander"]);
    edr_task(&h, &agent).await;
    let mut tasks = Vec::new();
    for i in 0..40 {
        let (h, agent) = (h.clone(), agent.clone());
        tasks.push(tokio::spawn(async move {
            // Tier0 targets: level 2, so every request opens an approval and none is capped by budget.
            h.call("POST", "/v1/actions", Some(&agent), Some(kill(1000 + i, "pid"))).await
        }));
    }
    let halt = {
        let h = h.clone();
        tokio::spawn(async move {
            h.call("POST", "/v1/halt", Some(&olga), Some(json!({"scope": "agent", "id": EDR, "reason": "stop"}))).await
        })
    };
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(halt.await.unwrap().0, StatusCode::OK);
    let entries = log(&h);
    let halt_seq = entries.iter().find(|e| e["type"] == "halt.set").unwrap()["seq"].as_u64().unwrap();
    for e in entries.iter().filter(|e| e["type"] == "decision.made") {
        let outcome = e["data"]["decision"]["outcome"].as_str().unwrap();
        if e["seq"].as_u64().unwrap() > halt_seq {
            assert_eq!(outcome, "deny", "decided after the halt committed: {e}");
        }
    }
    // And nothing decided before it is still pending: the halt cancelled them all.
    let pending = h.call("GET", "/v1/approvals", Some(&h.admin), None).await.1;
    assert_eq!(pending.as_array().unwrap().len(), 0, "{pending}");
}

#[tokio::test]
async fn an_agent_halt_that_expires_makes_the_agent_usable_again() {
    let clock = Arc::new(warden_store::ManualClock::new(time::OffsetDateTime::now_utc()));
    let (url, keys) = lab();
    let h = harness_full(None, clock.clone(), Default::default(), Some(connector(&url, &keys)));
    let agent = h.svid(EDR);
    let olga = h.user("olga", &["incident-commander"]);
    edr_task(&h, &agent).await;
    let until = time::OffsetDateTime::now_utc() + time::Duration::minutes(5);
    let until = until.format(&time::format_description::well_known::Rfc3339).unwrap();
    let body = json!({"scope": "agent", "id": EDR, "reason": "cool down", "expires_at": until});
    assert_eq!(h.call("POST", "/v1/halt", Some(&olga), Some(body)).await.0, StatusCode::OK);
    let (status, e) = h.call("POST", "/v1/actions", Some(&agent), Some(isolate("host:web-42"))).await;
    assert_eq!((status, &e["error"]["code"]), (StatusCode::FORBIDDEN, &json!("agent_halted")));
    clock.advance(time::Duration::minutes(6));
    warden_server::sweep_approvals(&h.app).unwrap();
    let agent = h.svid(EDR);
    let (status, a) = h.call("POST", "/v1/actions", Some(&agent), Some(isolate("host:web-42"))).await;
    assert_eq!((status, a["state"].as_str()), (StatusCode::OK, Some("succeeded")), "{a}");
    assert!(log(&h).iter().any(|e| e["type"] == "halt.lifted" && e["data"]["reason"] == "the halt expired"));
}

#[tokio::test]
async fn a_tool_that_acted_but_lacks_a_captured_field_is_succeeded_with_a_warning() {
    let (url, keys) = lab();
    let text = std::fs::read_to_string(crate::example_dir().join("connectors.toml")).unwrap();
    let text = text.replace("\"/containment_id\"", "\"/no_such_field\"");
    assert!(text.contains("/no_such_field"));
    let tools =
        ["edr", "idp", "firewall", "mail", "ticketing", "siem"].iter().map(|t| (t.to_string(), url.clone())).collect();
    let given = keys.env().into_iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let secrets = warden_connectors::EnvSecrets { given, dir: None };
    let c: Arc<dyn warden_connectors::Connector> =
        Arc::new(warden_connectors::HttpConnector::from_toml(&text, &tools, Box::new(secrets)).unwrap());
    let h = harness_full(None, Arc::new(warden_store::SystemClock), Default::default(), Some(c));
    let agent = h.svid(EDR);
    edr_task(&h, &agent).await;
    let (_, a) = h.call("POST", "/v1/actions", Some(&agent), Some(isolate("host:web-42"))).await;
    assert_eq!(a["state"], "succeeded", "the tool acted: {a}");
    let warning = a["execution"]["warning"].as_str().unwrap_or_default();
    assert!(warning.contains("lacks `containment_id`"), "{a}");
    assert_eq!(calls(&url, "edr contain"), 1);
}

#[tokio::test]
async fn two_rollbacks_pressed_together_call_the_tool_once() {
    let (h, url, _) = harness_lab();
    let h = Arc::new(h);
    let agent = h.svid(EDR);
    edr_task(&h, &agent).await;
    let (_, a) = h.call("POST", "/v1/actions", Some(&agent), Some(isolate("host:web-42"))).await;
    let id = a["id"].as_str().unwrap().to_string();
    let ana = h.user("ana", &["soc-analyst"]);
    let olga = h.user("olga", &["incident-commander"]);
    let mut presses = Vec::new();
    for who in [ana, olga] {
        let (h, id) = (h.clone(), id.clone());
        presses.push(tokio::spawn(async move {
            h.call("POST", &format!("/v1/actions/{id}/rollback"), Some(&who), None).await
        }));
    }
    let mut statuses = Vec::new();
    for p in presses {
        let (status, body) = p.await.unwrap();
        assert!(status == StatusCode::OK || body["error"]["code"] == "rollback_in_progress", "{status} {body}");
        statuses.push(status);
    }
    assert!(statuses.contains(&StatusCode::OK));
    assert_eq!(calls(&url, "edr lift_containment"), 1, "{}", lab_state(&url)["calls"]);
    let started = log(&h).iter().filter(|e| e["type"] == "rollback.started").count();
    assert_eq!(started, 1);
}

#[tokio::test]
async fn an_approved_request_interrupted_before_its_execution_is_cancelled_on_restart() {
    use warden_server::model::{ActionRecord, Model as _};
    let (url, keys) = lab();
    // What a server leaves when it dies between an `execute` decision and the execution.
    let req = ActionRecord {
        id: "act_1".into(),
        agent: EDR.into(),
        task: "INC-7".into(),
        action: "host.isolate".into(),
        target: "host:web-42".into(),
        params: Default::default(),
        confidence: 0.95,
        rationale: "r".into(),
        evidence: vec![],
        idempotency_key: None,
        request_digest: "sha256:00".into(),
        digest: String::new(),
        folded_into: None,
        state: "approved".into(),
        created_at: "2026-11-23T00:00:00Z".into(),
        created_ms: 0,
        approval: None,
        via: None,
    };
    let options = ServerOptions { connector: Some(connector(&url, &keys)), ..Default::default() };
    let (_dir, app) = started_over(req.record(), options);
    let r = app.ledger().store().get(Table::Requests, "act_1").unwrap().unwrap();
    assert_eq!(r.state.as_deref(), Some("cancelled"));
    assert_eq!(calls(&url, "edr contain"), 0, "never executed late");
}

/// A server started on a data directory holding `left` — what a stopped server left behind.
fn started_over(left: warden_store::Record, options: ServerOptions) -> (tempfile::TempDir, warden_server::App) {
    let dir = tempfile::tempdir().unwrap();
    let clock: Arc<dyn warden_store::Clock> = Arc::new(warden_store::SystemClock);
    let (data, _) = warden_store::DataDir::init(dir.path(), "warden.test/audit", clock.clone()).unwrap();
    data.ledger().commit(Batch::new().change(Change::Insert(left))).unwrap();
    let bundle = warden_core::Bundle::load(&crate::read_bundle(&crate::example_dir())).unwrap();
    (dir, warden_server::AppState::with_options(data, bundle, clock, options).unwrap())
}

/// A harness with its own request timeout, executing against a lab that answers after `delay`.
fn harness_timed(timeout: std::time::Duration, delay: std::time::Duration) -> (Harness, String) {
    let keys = warden_lab::Keys::random();
    let url = warden_lab::spawn(keys.clone(), delay);
    let limits = warden_server::limits::Limits { timeout, ..Default::default() };
    let options = ServerOptions { limits, connector: Some(connector(&url, &keys)), ..Default::default() };
    (harness_options(Arc::new(warden_store::SystemClock), options), url)
}

#[tokio::test]
async fn a_tool_call_outlasting_the_request_timeout_is_answered_with_its_state_not_408() {
    let (h, url) = harness_timed(std::time::Duration::from_millis(1500), std::time::Duration::from_millis(2500));
    let agent = h.svid(EDR);
    edr_task(&h, &agent).await;
    let (status, a) = h.call("POST", "/v1/actions", Some(&agent), Some(isolate("host:web-42"))).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{a}");
    assert_eq!(a["state"], "executing", "{a}");
    let id = a["id"].as_str().unwrap().to_string();
    // It finishes behind the answer, once.
    let mut state = Value::Null;
    for _ in 0..100 {
        state = get(&h, &agent, &id).await["state"].clone();
        if state != "executing" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(state, "succeeded");
    assert_eq!(calls(&url, "edr contain"), 1);
}

#[tokio::test]
async fn a_long_poll_longer_than_the_request_timeout_is_answered_with_the_state_not_408() {
    let (h, _) = harness_timed(std::time::Duration::from_millis(1500), std::time::Duration::ZERO);
    let agent = h.svid(EDR);
    edr_task(&h, &agent).await;
    let (_, a) = h.call("POST", "/v1/actions", Some(&agent), Some(kill(4242, "pid"))).await;
    let started = std::time::Instant::now();
    let (status, got) =
        h.call("GET", &format!("/v1/actions/{}?wait=60s", a["id"].as_str().unwrap()), Some(&agent), None).await;
    assert_eq!((status, got["state"].as_str()), (StatusCode::OK, Some("pending_approval")), "{got}");
    assert!(started.elapsed() < std::time::Duration::from_millis(1500), "{:?}", started.elapsed());
}

/// A token of the external workload issuer (the test fixture's SPIRE), signed with its Ed25519 key.
fn spire_token(claims: Value) -> String {
    use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
    let key = EncodingKey::from_ed_pem(&std::fs::read(crate::fixture("ed25519.pem")).unwrap()).unwrap();
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some("spire-ed".into());
    encode(&header, &claims, &key).unwrap()
}

async fn refusal(h: &Harness, token: &str) -> (StatusCode, String) {
    let (status, body) = h.call("GET", "/v1/tasks/none", Some(token), None).await;
    (status, body["error"]["code"].as_str().unwrap_or("").to_string())
}

#[tokio::test]
async fn an_external_issuer_cannot_speak_for_another_trust_domain() {
    let h = crate::harness();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let claims = |sub: &str| json!({"sub": sub, "aud": "warden", "exp": now + 300, "iat": now, "iss": crate::SPIRE});
    // Its own trust domain: admitted (404: the task does not exist, the caller is fine).
    assert_eq!(refusal(&h, &spire_token(claims(EDR))).await.0, StatusCode::NOT_FOUND);
    // An agent of another trust domain, registered or not: refused before anything is read.
    let foreign = "spiffe://other.example/soc/edr-responder";
    let actor = warden_core::audit::entry::Actor::user("admin");
    warden_server::admin::add_agent(h.app.ledger(), &actor, foreign, "team:x", "p", h.app.now()).unwrap();
    assert_eq!(
        refusal(&h, &spire_token(claims(foreign))).await,
        (StatusCode::UNAUTHORIZED, "wrong_trust_domain".into())
    );
    // A look-alike domain is another domain.
    let lookalike = "spiffe://acme.example.evil/soc/edr-responder";
    assert_eq!(
        refusal(&h, &spire_token(claims(lookalike))).await,
        (StatusCode::UNAUTHORIZED, "wrong_trust_domain".into())
    );
}

#[tokio::test]
async fn a_token_without_an_issuer_is_refused() {
    let h = crate::harness();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let token = spire_token(json!({"sub": EDR, "aud": "warden", "exp": now + 300, "iat": now}));
    assert_eq!(refusal(&h, &token).await, (StatusCode::UNAUTHORIZED, "missing_claim".into()));
}

#[test]
fn a_workload_issuer_without_trust_domains_is_refused_at_load() {
    let cfg = warden_server::identity::IssuerConfig {
        issuer: crate::SPIRE.into(),
        jwks_file: crate::fixture("jwks.json"),
        audience: None,
        roles_claim: None,
        trust_domains: Vec::new(),
    };
    let e = warden_server::identity::ExternalIssuer::load(&cfg).unwrap_err().to_string();
    assert!(e.contains("trust_domains"), "{e}");
}

#[tokio::test]
async fn a_rollback_interrupted_by_a_stop_is_released_and_recorded_on_restart() {
    use warden_server::execution::{Execution, ExecutionState};
    let exec = Execution {
        id: "act_1".into(),
        state: ExecutionState::Succeeded,
        agent: EDR.into(),
        task: "INC-7".into(),
        action: "host.isolate".into(),
        target: "host:web-42".into(),
        lease: "lease_1".into(),
        started_at: "2026-11-23T00:00:00Z".into(),
        finished_at: None,
        tool_status: Some(200),
        answer: None,
        captured: Default::default(),
        error: None,
        compensation: Some("host.release".into()),
        rollback: None,
        rolling_back: Some("ana".into()),
        warning: None,
        node: None,
    };
    let (_dir, app) = started_over(exec.record(), Default::default());
    let r = app.ledger().store().get(Table::Executions, "act_1").unwrap().unwrap();
    let after = Execution::from_record(&r).unwrap();
    assert_eq!((after.state, after.rolling_back), (ExecutionState::Succeeded, None), "the claim is released");
    let failed = app.ledger().store().entries(0, 100).unwrap();
    assert!(failed.iter().any(|e| String::from_utf8_lossy(&e.bytes).contains("rollback.failed")));
}
