//! The approval workflow: every transition and every rule, expiry on a clock the test moves,
//! concurrent approvers, long polls, and notices to a webhook receiver on loopback.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::StatusCode;
use serde_json::{Value, json};
use warden_server::notify::{Format, NotifyOptions, Webhook};
use warden_store::ManualClock;

use crate::{EDR, Harness, eventually, harness_with};

const IAM: &str = "spiffe://acme.example/soc/identity-responder";

fn clocked() -> (Harness, Arc<ManualClock>) {
    clocked_with(NotifyOptions::default())
}

fn clocked_with(notify: NotifyOptions) -> (Harness, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(time::OffsetDateTime::now_utc()));
    (harness_with(None, clock.clone(), notify), clock)
}

async fn task(h: &Harness, agent: &str, id: &str) {
    let body = json!({"id": id, "title": "t", "trigger": {"source": "edr", "severity": "high"}});
    let (status, answer) = h.call("POST", "/v1/tasks", Some(agent), Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
}

/// EDR isolates the payments database: analysts or the incident commander, quorum 1, 10 min.
async fn isolate_db(h: &Harness) -> Value {
    let agent = h.svid(EDR);
    task(h, &agent, "INC-7").await;
    request(h, &agent, "INC-7", "host.isolate", "host:db-payments-01").await
}

async fn request(h: &Harness, agent: &str, task: &str, action: &str, target: &str) -> Value {
    let body = json!({"task": task, "action": action, "target": target, "confidence": 0.95,
        "params": {"reason": "beacon"}, "rationale": "C2 beacon from the host", "evidence": [{"kind": "edr", "ref": "det:9"}, {"kind": "idp", "ref": "risk:1"}]});
    let (status, answer) = h.call("POST", "/v1/actions", Some(agent), Some(body)).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["state"], "pending_approval", "{answer}");
    answer
}

fn approval_id(answer: &Value) -> String {
    answer["decision"]["approval"]["id"].as_str().expect("the decision names its approval").to_string()
}

async fn vote(h: &Harness, token: &str, id: &str, verb: &str, body: Value) -> (StatusCode, Value) {
    h.call("POST", &format!("/v1/approvals/{id}/{verb}"), Some(token), Some(body)).await
}

async fn state_of_request(h: &Harness, id: &str) -> String {
    let (_, a) = h.call("GET", &format!("/v1/actions/{id}"), Some(&h.admin), None).await;
    a["state"].as_str().unwrap().to_string()
}

fn log(h: &Harness) -> Vec<Value> {
    let store = h.app.ledger().store();
    store.entries(0, 100_000).unwrap().iter().map(|e| serde_json::from_slice(&e.bytes).unwrap()).collect()
}

fn of_type<'a>(log: &'a [Value], t: &str) -> Vec<&'a Value> {
    log.iter().filter(|e| e["type"] == t).collect()
}

#[tokio::test]
async fn a_require_approval_decision_opens_an_approval_that_an_analyst_grants() {
    let (h, _) = clocked();
    let answer = isolate_db(&h).await;
    let id = approval_id(&answer);
    let (status, a) = h.call("GET", &format!("/v1/approvals/{id}"), Some(&h.admin), None).await;
    assert_eq!(status, StatusCode::OK, "{a}");
    assert_eq!(a["state"], "pending");
    assert_eq!(a["roles"], json!(["soc-analyst", "incident-commander"]));
    assert_eq!((a["quorum"].as_u64(), a["separation_of_duties"].as_bool()), (Some(1), Some(true)));
    assert_eq!(a["rationale"], "C2 beacon from the host");
    assert_eq!(a["evidence"][0]["ref"], "det:9");
    assert_eq!(a["requests"], json!([answer["id"]]));
    assert_eq!(a["expires_at"], answer["decision"]["approval"]["expires_at"]);
    assert_eq!(
        a["track_record"],
        json!({"days": 30, "approved": 0, "rejected": 0, "expired": 0, "rolled_back": 0, "withdrawn": 0})
    );
    let created =
        time::OffsetDateTime::parse(a["created_at"].as_str().unwrap(), &time::format_description::well_known::Rfc3339)
            .unwrap();
    let expires =
        time::OffsetDateTime::parse(a["expires_at"].as_str().unwrap(), &time::format_description::well_known::Rfc3339)
            .unwrap();
    let lifetime = expires - created;
    assert!(
        (lifetime - time::Duration::minutes(10)).abs() < time::Duration::milliseconds(1),
        "the guardrail's 10m, not {lifetime}"
    );

    let (_, inbox) = h.call("GET", "/v1/approvals", Some(&h.admin), None).await;
    assert_eq!(inbox.as_array().unwrap().len(), 1);

    let ana = h.user("ana", &["soc-analyst"]);
    let (status, done) = vote(&h, &ana, &id, "approve", json!({"reason": "confirmed C2"})).await;
    assert_eq!(status, StatusCode::OK, "{done}");
    assert_eq!((done["state"].as_str(), done["decided_by"].as_str()), (Some("approved"), Some("ana")));
    assert_eq!(done["votes"][0]["role"], "soc-analyst");
    assert_eq!(state_of_request(&h, answer["id"].as_str().unwrap()).await, "approved");
    let log = log(&h);
    let granted = of_type(&log, "approval.granted");
    assert_eq!(granted.len(), 1);
    assert_eq!(
        (granted[0]["actor"]["id"].as_str(), granted[0]["data"]["reason"].as_str()),
        (Some("ana"), Some("confirmed C2"))
    );
    assert_eq!(of_type(&log, "approval.requested").len(), 1);
    // Decided: nobody may decide it again.
    let (status, again) = vote(&h, &h.user("bo", &["incident-commander"]), &id, "reject", json!({"reason": "x"})).await;
    assert_eq!((status, &again["error"]["code"]), (StatusCode::CONFLICT, &json!("approval_decided")));
}

#[tokio::test]
async fn a_rejection_needs_a_reason_and_ends_the_approval() {
    let (h, _) = clocked();
    let answer = isolate_db(&h).await;
    let id = approval_id(&answer);
    let ana = h.user("ana", &["soc-analyst"]);
    let (status, e) = vote(&h, &ana, &id, "reject", json!({"reason": "  "})).await;
    assert_eq!((status, &e["error"]["code"]), (StatusCode::UNPROCESSABLE_ENTITY, &json!("reason_required")));
    let (status, e) = vote(&h, &ana, &id, "reject", json!({})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{e}");
    let (status, done) = vote(&h, &ana, &id, "reject", json!({"reason": "false positive: backup job"})).await;
    assert_eq!((status, done["state"].as_str()), (StatusCode::OK, Some("rejected")));
    assert_eq!(done["reason"], "false positive: backup job");
    assert_eq!(state_of_request(&h, answer["id"].as_str().unwrap()).await, "rejected");
    let log = log(&h);
    let rejected = of_type(&log, "approval.rejected");
    assert_eq!((rejected.len(), rejected[0]["actor"]["id"].as_str()), (1, Some("ana")));
}

#[tokio::test]
async fn only_a_required_role_may_decide_and_never_the_agents_owner() {
    let (h, _) = clocked();
    let id = approval_id(&isolate_db(&h).await);
    let iam = h.user("ivy", &["iam-owner"]);
    let (status, e) = vote(&h, &iam, &id, "approve", json!({})).await;
    assert_eq!((status, &e["error"]["code"]), (StatusCode::FORBIDDEN, &json!("missing_role")));
    // `admin` administers; it is not an approver role.
    let (status, e) = vote(&h, &h.admin, &id, "approve", json!({})).await;
    assert_eq!((status, &e["error"]["code"]), (StatusCode::FORBIDDEN, &json!("missing_role")));
    // An analyst of the team that owns the EDR agent: separation of duties.
    let owner = h.user("olga", &["soc-analyst", "team:endpoint-response"]);
    let (status, e) = vote(&h, &owner, &id, "approve", json!({})).await;
    assert_eq!((status, &e["error"]["code"]), (StatusCode::FORBIDDEN, &json!("separation_of_duties")));
    let (status, e) = vote(&h, &owner, &id, "reject", json!({"reason": "mine"})).await;
    assert_eq!((status, &e["error"]["code"]), (StatusCode::FORBIDDEN, &json!("separation_of_duties")));
    // Agents cannot reach the inbox at all.
    let (status, e) = vote(&h, &h.svid(EDR), &id, "approve", json!({})).await;
    assert_eq!((status, &e["error"]["code"]), (StatusCode::FORBIDDEN, &json!("agents_not_allowed")));
    let (_, a) = h.call("GET", &format!("/v1/approvals/{id}"), Some(&h.admin), None).await;
    assert_eq!((a["state"].as_str(), a["votes"].as_array().unwrap().len()), (Some("pending"), 0));
}

#[tokio::test]
async fn a_quorum_of_two_counts_each_person_once() {
    let (h, _) = clocked();
    let agent = h.svid(IAM);
    task(&h, &agent, "INC-3").await;
    let answer = request(&h, &agent, "INC-3", "account.disable", "account:adm-jdoe").await;
    let id = approval_id(&answer);
    assert_eq!(answer["decision"]["approval"]["quorum"], 2);
    let (ivy, ian) = (h.user("ivy", &["iam-owner"]), h.user("ian", &["iam-owner"]));
    let (status, first) = vote(&h, &ivy, &id, "approve", json!({"reason": "token theft confirmed"})).await;
    assert_eq!(
        (status, first["state"].as_str(), first["votes"].as_array().unwrap().len()),
        (StatusCode::OK, Some("pending"), 1)
    );
    let (status, dup) = vote(&h, &ivy, &id, "approve", json!({})).await;
    assert_eq!((status, &dup["error"]["code"]), (StatusCode::CONFLICT, &json!("already_voted")));
    assert_eq!(state_of_request(&h, answer["id"].as_str().unwrap()).await, "pending_approval");
    let (status, done) = vote(&h, &ian, &id, "approve", json!({})).await;
    assert_eq!((status, done["state"].as_str()), (StatusCode::OK, Some("approved")));
    let voters: Vec<&str> = done["votes"].as_array().unwrap().iter().map(|v| v["user"].as_str().unwrap()).collect();
    assert_eq!(voters, ["ivy", "ian"]);
    assert_eq!(state_of_request(&h, answer["id"].as_str().unwrap()).await, "approved");
    let log = log(&h);
    let granted = of_type(&log, "approval.granted");
    let states: Vec<&str> = granted.iter().map(|e| e["data"]["state"].as_str().unwrap()).collect();
    assert_eq!(states, ["pending", "approved"], "one entry per vote, one transition");
}

#[tokio::test]
async fn an_approval_expires_on_the_clock_and_cannot_be_approved_after() {
    let (h, clock) = clocked();
    let first = isolate_db(&h).await;
    let id = approval_id(&first);
    clock.advance(time::Duration::minutes(9));
    assert!(warden_server::sweep_approvals(&h.app).unwrap().expired.is_empty(), "not yet");
    clock.advance(time::Duration::minutes(1));
    let swept = warden_server::sweep_approvals(&h.app).unwrap();
    assert_eq!(swept.expired.iter().map(|a| a.id.as_str()).collect::<Vec<_>>(), [id.as_str()]);
    assert_eq!(state_of_request(&h, first["id"].as_str().unwrap()).await, "expired");
    let ana = h.user("ana", &["soc-analyst"]);
    let (status, e) = vote(&h, &ana, &id, "approve", json!({})).await;
    assert_eq!((status, &e["error"]["code"]), (StatusCode::CONFLICT, &json!("approval_expired")));
    let log = log(&h);
    assert_eq!(of_type(&log, "approval.expired").len(), 1);
    assert_eq!(of_type(&log, "approval.expired")[0]["actor"]["kind"], "system");

    // Without a sweep in between, a late vote records the expiry itself, then is refused.
    let agent = h.svid(EDR);
    let second = request(&h, &agent, "INC-7", "host.isolate", "host:db-payments-01").await;
    let id2 = approval_id(&second);
    assert_ne!(id2, id, "an expired approval is not folded into");
    clock.advance(time::Duration::minutes(11));
    let (status, e) = vote(&h, &ana, &id2, "approve", json!({})).await;
    assert_eq!((status, &e["error"]["code"]), (StatusCode::CONFLICT, &json!("approval_expired")));
    assert_eq!(state_of_request(&h, second["id"].as_str().unwrap()).await, "expired");
}

#[tokio::test]
async fn closing_the_task_cancels_its_pending_approvals() {
    let (h, _) = clocked();
    let answer = isolate_db(&h).await;
    let id = approval_id(&answer);
    let (status, _) = h.call("POST", "/v1/tasks/INC-7/close", Some(&h.admin), None).await;
    assert_eq!(status, StatusCode::OK);
    let (_, a) = h.call("GET", &format!("/v1/approvals/{id}"), Some(&h.admin), None).await;
    assert_eq!((a["state"].as_str(), a["decided_by"].as_str()), (Some("cancelled"), Some("admin")));
    assert_eq!(state_of_request(&h, answer["id"].as_str().unwrap()).await, "cancelled");
    let (status, e) = vote(&h, &h.user("ana", &["soc-analyst"]), &id, "approve", json!({})).await;
    assert_eq!((status, &e["error"]["code"]), (StatusCode::CONFLICT, &json!("approval_cancelled")));
    assert_eq!(of_type(&log(&h), "approval.cancelled").len(), 1);
}

#[tokio::test]
async fn an_approval_may_narrow_the_lease_but_never_widen_it() {
    let (h, _) = clocked();
    let id = approval_id(&isolate_db(&h).await);
    let ana = h.user("ana", &["soc-analyst"]);
    // host.isolate's lease is 10m in the example catalog.
    let (status, e) = vote(&h, &ana, &id, "approve", json!({"lease_ttl": "11m"})).await;
    assert_eq!((status, &e["error"]["code"]), (StatusCode::UNPROCESSABLE_ENTITY, &json!("widening_not_allowed")));
    let (status, e) = vote(&h, &ana, &id, "approve", json!({"lease_ttl": "soon"})).await;
    assert_eq!((status, &e["error"]["code"]), (StatusCode::UNPROCESSABLE_ENTITY, &json!("invalid_ttl")));
    let (status, done) = vote(&h, &ana, &id, "approve", json!({"lease_ttl": "2m"})).await;
    assert_eq!((status, done["state"].as_str()), (StatusCode::OK, Some("approved")));
    assert_eq!((done["lease_ttl_secs"].as_u64(), done["narrowed_lease_ttl_secs"].as_u64()), (Some(600), Some(120)));
}

#[tokio::test]
async fn identical_pending_requests_fold_into_one_approval() {
    let (h, _) = clocked();
    let first = isolate_db(&h).await;
    let agent = h.svid(EDR);
    let second = request(&h, &agent, "INC-7", "host.isolate", "host:db-payments-01").await;
    assert_eq!(approval_id(&first), approval_id(&second));
    assert_eq!(first["decision"]["approval"]["expires_at"], second["decision"]["approval"]["expires_at"]);
    let (_, inbox) = h.call("GET", "/v1/approvals", Some(&h.admin), None).await;
    assert_eq!(inbox.as_array().unwrap().len(), 1);
    assert_eq!(inbox[0]["requests"], json!([first["id"], second["id"]]));
    let (_, done) = vote(&h, &h.user("ana", &["soc-analyst"]), &approval_id(&first), "approve", json!({})).await;
    assert_eq!(done["state"], "approved");
    for r in [&first, &second] {
        assert_eq!(state_of_request(&h, r["id"].as_str().unwrap()).await, "approved");
    }
    // Once decided, the same request opens a new approval.
    let third = request(&h, &agent, "INC-7", "host.isolate", "host:db-payments-01").await;
    assert_ne!(approval_id(&third), approval_id(&first));
    // The inbox sorts by expiry and shows the agent's track record when opened.
    let (_, shown) = h.call("GET", &format!("/v1/approvals/{}", approval_id(&third)), Some(&h.admin), None).await;
    assert_eq!(shown["track_record"]["approved"], 1);
}

#[tokio::test]
async fn folding_stops_at_its_cap_and_the_refused_request_leaves_no_trace() {
    use warden_server::approvals::{FOLD_MAX, load};
    use warden_server::model::Model as _;
    let (h, _) = clocked();
    let first = isolate_db(&h).await;
    let id = approval_id(&first);
    // Fill the approval up to its cap, as if that many identical requests had folded into it.
    let store = h.app.ledger().store();
    let v = load(store.as_ref(), &id).unwrap().unwrap();
    let mut full = v.approval.clone();
    while full.requests.len() < FOLD_MAX {
        full.requests.push(format!("req_fold{}", full.requests.len()));
    }
    let mut record = full.record();
    record.version = v.version;
    h.app.ledger().commit(warden_store::Batch::new().change(warden_store::Change::Update(record))).unwrap();
    let size = store.size().unwrap();

    let body = json!({"task": "INC-7", "action": "host.isolate", "target": "host:db-payments-01", "confidence": 0.95,
        "params": {"reason": "beacon"}, "rationale": "again", "evidence": [{"kind": "edr", "ref": "det:9"}]});
    let (status, e) = h.call("POST", "/v1/actions", Some(&h.svid(EDR)), Some(body)).await;
    assert_eq!((status, &e["error"]["code"]), (StatusCode::CONFLICT, &json!("approval_pending")), "{e}");
    assert_eq!(e["error"]["details"]["approval"], id);
    assert_eq!(store.size().unwrap(), size, "nothing of the refused request is recorded");
    assert_eq!(load(store.as_ref(), &id).unwrap().unwrap().approval.requests.len(), FOLD_MAX);
    // Another target is another approval.
    let other = request(&h, &h.svid(EDR), "INC-7", "host.isolate", "host:db-payments-02").await;
    assert_ne!(approval_id(&other), id);
}

#[tokio::test]
async fn the_inbox_is_oldest_first() {
    let (h, clock) = clocked();
    let iam = h.svid(IAM);
    task(&h, &iam, "INC-3").await;
    // account.disable expires after the guardrail's default (15m); host.isolate after 10m.
    let late = request(&h, &iam, "INC-3", "account.disable", "account:jdoe").await;
    clock.advance(time::Duration::seconds(30));
    let soon = isolate_db(&h).await;
    let (_, inbox) = h.call("GET", "/v1/approvals", Some(&h.admin), None).await;
    let order: Vec<&str> = inbox.as_array().unwrap().iter().map(|a| a["id"].as_str().unwrap()).collect();
    assert_eq!(order, [approval_id(&late), approval_id(&soon)], "oldest first, though `soon` expires sooner");
    let (status, e) = h.call("GET", "/v1/approvals?state=sideways", Some(&h.admin), None).await;
    assert_eq!((status, &e["error"]["code"]), (StatusCode::BAD_REQUEST, &json!("malformed_query")));
}

#[tokio::test]
async fn many_concurrent_approvers_make_exactly_one_transition() {
    let (h, _) = clocked();
    let answer = isolate_db(&h).await;
    let id = approval_id(&answer);
    let tokens: Vec<String> = (0..16).map(|i| h.user(&format!("analyst{i}"), &["soc-analyst"])).collect();
    let h = Arc::new(h);
    let mut tasks = Vec::new();
    for t in tokens {
        let (h, id) = (h.clone(), id.clone());
        tasks.push(tokio::spawn(async move { vote(&h, &t, &id, "approve", json!({"reason": "race"})).await }));
    }
    let mut ok = 0;
    for t in tasks {
        let (status, body) = t.await.unwrap();
        match status {
            StatusCode::OK => ok += 1,
            StatusCode::CONFLICT => assert_eq!(body["error"]["code"], "approval_decided", "{body}"),
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!(ok, 1, "exactly one approver wins");
    let log = log(&h);
    let approved: Vec<_> =
        of_type(&log, "approval.granted").into_iter().filter(|e| e["data"]["state"] == "approved").collect();
    assert_eq!(approved.len(), 1);
    assert_eq!(of_type(&log, "approval.granted").len(), 1, "losers record nothing");
}

#[tokio::test]
async fn an_agent_long_polls_until_the_decision() {
    let (h, _) = clocked();
    let answer = isolate_db(&h).await;
    let (request_id, id) = (answer["id"].as_str().unwrap().to_string(), approval_id(&answer));
    let h = Arc::new(h);
    let agent = h.svid(EDR);
    let poll = {
        let (h, request_id) = (h.clone(), request_id.clone());
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let (status, a) = h.call("GET", &format!("/v1/actions/{request_id}?wait=30s"), Some(&agent), None).await;
            (status, a, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!poll.is_finished(), "the poll waits while the approval is pending");
    let (status, _) = vote(&h, &h.user("ana", &["soc-analyst"]), &id, "approve", json!({})).await;
    assert_eq!(status, StatusCode::OK);
    let (status, a, waited) = poll.await.unwrap();
    assert_eq!((status, a["state"].as_str()), (StatusCode::OK, Some("approved")));
    assert!(waited < Duration::from_secs(25), "woken by the decision, not by the timeout ({waited:?})");
    // Bad waits are refused; a decided request answers at once.
    let (status, e) = h.call("GET", &format!("/v1/actions/{request_id}?wait=2h"), Some(&h.admin), None).await;
    assert_eq!((status, &e["error"]["code"]), (StatusCode::UNPROCESSABLE_ENTITY, &json!("invalid_wait")));
}

/// A webhook receiver on loopback: records every body, fails the first `fail_first` calls
/// (or all of them) with 500.
#[derive(Clone, Default)]
struct Receiver {
    got: Arc<Mutex<Vec<Value>>>,
    calls: Arc<Mutex<u32>>,
}

async fn receiver(fail_first: u32) -> (Receiver, String) {
    let r = Receiver::default();
    let state = r.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |axum::Json(body): axum::Json<Value>| {
            let state = state.clone();
            async move {
                let n = {
                    let mut c = state.calls.lock().unwrap();
                    *c += 1;
                    *c
                };
                if n <= fail_first {
                    return StatusCode::INTERNAL_SERVER_ERROR;
                }
                state.got.lock().unwrap().push(body);
                StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (r, format!("http://{addr}/hook"))
}

fn notify_to(url: &str, format: Format) -> NotifyOptions {
    NotifyOptions {
        webhooks: vec![Webhook { name: "test".into(), url: url.into(), format }],
        attempts: 3,
        backoff: Duration::from_millis(20),
        timeout: Duration::from_secs(2),
        public_url: "https://warden.test".into(),
        slack_buttons: false,
    }
}

#[tokio::test]
async fn notices_go_out_as_json_on_creation_escalation_and_expiry_with_retries() {
    let (rx, url) = receiver(2).await;
    let (h, clock) = clocked_with(notify_to(&url, Format::Json));
    let answer = isolate_db(&h).await;
    let id = approval_id(&answer);
    let created = eventually(|| rx.got.lock().unwrap().first().cloned()).await;
    assert_eq!(*rx.calls.lock().unwrap(), 3, "two failures, then delivered on the third attempt");
    assert_eq!(created["event"], "approval.requested");
    assert_eq!(created["approval"]["id"], id);
    assert_eq!(created["approval"]["agent"], EDR);
    assert_eq!(created["approval"]["target"], "host:db-payments-01");
    assert_eq!(created["approval"]["rationale"], "C2 beacon from the host");
    assert_eq!(created["links"]["approval"], format!("https://warden.test/v1/approvals/{id}"));

    // The stored record is indexed by when the sweeper is next due (escalation, then expiry),
    // so a sweep reads only due approvals.
    let stored = || {
        let r = h.app.ledger().store().get(warden_store::Table::Approvals, &id).unwrap().unwrap();
        (r.at, r.body["created_ms"].as_i64().unwrap(), r.body["expires_ms"].as_i64().unwrap())
    };
    let (at, created, expires) = stored();
    assert_eq!(at, Some(created + (expires - created) * 2 / 3));
    clock.advance(time::Duration::minutes(6));
    assert!(warden_server::sweep_approvals(&h.app).unwrap().escalated.is_empty(), "not yet due");
    clock.advance(time::Duration::minutes(1));
    assert_eq!(warden_server::sweep_approvals(&h.app).unwrap().escalated.len(), 1);
    assert_eq!(stored().0, Some(expires), "next due at its expiry");
    assert!(warden_server::sweep_approvals(&h.app).unwrap().escalated.is_empty(), "escalated once");
    clock.advance(time::Duration::minutes(3));
    assert_eq!(warden_server::sweep_approvals(&h.app).unwrap().expired.len(), 1);
    let events = eventually(|| {
        let got = rx.got.lock().unwrap();
        (got.len() == 3).then(|| got.iter().map(|v| v["event"].as_str().unwrap().to_string()).collect::<Vec<_>>())
    })
    .await;
    assert_eq!(events, ["approval.requested", "approval.escalated", "approval.expired"]);
    assert!(of_type(&log(&h), "notification.failed").is_empty());
    assert_eq!(of_type(&log(&h), "approval.escalated").len(), 1);
}

#[tokio::test]
async fn slack_notices_carry_blocks_with_the_facts_and_links() {
    let (rx, url) = receiver(0).await;
    let (h, _) = clocked_with(notify_to(&url, Format::Slack));
    let id = approval_id(&isolate_db(&h).await);
    let msg = eventually(|| rx.got.lock().unwrap().first().cloned()).await;
    assert!(msg["text"].as_str().unwrap().contains("host.isolate on host:db-payments-01"), "{msg}");
    let blocks = msg["blocks"].as_array().unwrap();
    assert_eq!(blocks[0]["type"], "header");
    let fields: Vec<&str> =
        blocks[1]["fields"].as_array().unwrap().iter().map(|f| f["text"].as_str().unwrap()).collect();
    assert!(fields.contains(&format!("*Agent*\n{EDR}").as_str()), "{fields:?}");
    assert!(fields.contains(&"*Confidence (agent's claim)*\n0.95"), "{fields:?}");
    assert!(fields.contains(&"*Target*\nhost:db-payments-01"), "{fields:?}");
    let text = |b: &Value| b["text"]["text"].as_str().unwrap_or_default().to_string();
    let links = blocks.iter().find(|b| b["type"] == "context").unwrap();
    assert!(links["elements"][0]["text"].as_str().unwrap().contains(&format!("https://warden.test/v1/approvals/{id}")));
    let words = blocks.iter().position(|b| text(b).contains("C2 beacon from the host")).unwrap();
    assert_eq!(blocks[words]["text"]["type"], "plain_text", "the agent's words are plain text");
    let params = blocks.iter().position(|b| text(b).contains("Params (what approving runs)")).unwrap();
    assert!(params < words, "the authoritative facts come before what the agent wrote");
}

/// An agent's rationale and evidence cannot ping the channel, draw a link or a fake facts
/// block in the approvers' Slack: they are plain text, after the facts; every mrkdwn field
/// escapes `&`, `<` and `>`.
#[tokio::test]
async fn slack_notices_neutralise_what_the_agent_wrote() {
    let (rx, url) = receiver(0).await;
    let (h, _) = clocked_with(notify_to(&url, Format::Slack));
    let agent = h.svid(EDR);
    let t = json!({"id": "INC-7", "title": "t", "trigger": {"source": "edr", "severity": "high"}});
    assert_eq!(h.call("POST", "/v1/tasks", Some(&h.admin), Some(t)).await.0, StatusCode::CREATED);
    let evil =
        "<!channel> approve now <https://evil.example/|Open in Warden>\n*Target facts (inventory)*\ntier3 · sandbox";
    let body = json!({"task": "INC-7", "action": "host.isolate", "target": "host:db-payments-01", "confidence": 0.95,
        "params": {"reason": "<@U0ADMIN> & co"}, "rationale": evil,
        "evidence": [{"kind": "edr", "ref": "<!here>", "summary": "<https://evil.example/|x>"}]});
    let (status, a) = h.call("POST", "/v1/actions", Some(&agent), Some(body)).await;
    assert_eq!(status, StatusCode::OK, "{a}");
    let msg = eventually(|| rx.got.lock().unwrap().first().cloned()).await;
    let blocks = msg["blocks"].as_array().unwrap();
    let mut mrkdwn = Vec::new();
    for b in blocks {
        for t in b["fields"].as_array().into_iter().flatten().chain(b["elements"].as_array().into_iter().flatten()) {
            if t["type"] == "mrkdwn" {
                mrkdwn.push(t["text"].as_str().unwrap().to_string());
            }
        }
        if b["text"]["type"] == "mrkdwn" {
            mrkdwn.push(b["text"]["text"].as_str().unwrap().to_string());
        }
    }
    for m in &mrkdwn {
        assert!(!m.contains("<!") && !m.contains("<@") && !m.contains("evil.example"), "agent text in mrkdwn: {m}");
    }
    assert_eq!(mrkdwn.iter().filter(|m| m.contains("Target facts")).count(), 1, "one facts field, Warden's");
    let plain: Vec<&Value> = blocks.iter().filter(|b| b["text"]["type"] == "plain_text").collect();
    assert!(plain.iter().any(|b| b["text"]["text"].as_str().unwrap().contains("<!channel>")), "shown as written");
    assert!(!msg["text"].as_str().unwrap().contains('<'), "{msg}");
}

#[tokio::test]
async fn a_failing_webhook_is_audited_and_the_approval_carries_on() {
    let (rx, url) = receiver(u32::MAX).await;
    let (h, _) = clocked_with(notify_to(&url, Format::Json));
    let answer = isolate_db(&h).await;
    let id = approval_id(&answer);
    let failed = eventually(|| of_type(&log(&h), "notification.failed").first().map(|e| (*e).clone())).await;
    assert_eq!(*rx.calls.lock().unwrap(), 3, "every attempt was made");
    assert_eq!(failed["data"]["approval"], id);
    assert_eq!(
        (failed["data"]["webhook"].as_str(), failed["data"]["reason"].as_str()),
        (Some("test"), Some("HTTP 500"))
    );
    assert!(!failed.to_string().contains(&url), "the URL (which may hold a secret) is not logged");
    let (status, done) = vote(&h, &h.user("ana", &["soc-analyst"]), &id, "approve", json!({})).await;
    assert_eq!((status, done["state"].as_str()), (StatusCode::OK, Some("approved")));

    // A webhook nobody listens on fails the same way.
    let (h, _) = clocked_with(notify_to("http://127.0.0.1:9/hook", Format::Json));
    isolate_db(&h).await;
    let failed = eventually(|| of_type(&log(&h), "notification.failed").first().map(|e| (*e).clone())).await;
    assert!(failed["data"]["reason"].as_str().unwrap().starts_with("connection failed"), "{failed}");
}

#[tokio::test]
async fn a_tripped_breaker_is_announced() {
    let (rx, url) = receiver(0).await;
    let (h, _) = clocked_with(notify_to(&url, Format::Json));
    let agent = h.svid(EDR);
    task(&h, &agent, "INC-7").await;
    for _ in 0..11 {
        let body = json!({"task": "INC-7", "action": "host.isolate", "target": "host:web-42", "confidence": 0.95,
            "params": {"reason": "beacon"}, "rationale": "C2", "evidence": [{"kind": "edr", "ref": "d:1"}]});
        assert_eq!(h.call("POST", "/v1/actions", Some(&agent), Some(body)).await.0, StatusCode::OK);
    }
    let notice = eventually(|| rx.got.lock().unwrap().iter().find(|v| v["event"] == "breaker.tripped").cloned()).await;
    assert_eq!(
        (notice["breaker"]["agent"].as_str(), notice["breaker"]["action"].as_str()),
        (Some(EDR), Some("host.isolate"))
    );
}

/// The inbox pages oldest first through `Link: rel="next"`, every approval once, the same as
/// one big page; filters by agent, action and the caller's roles; a cursor it did not give is
/// refused.
#[tokio::test]
async fn the_inbox_pages_oldest_first_and_by_role() {
    let (h, _) = clocked();
    let agent = h.svid(EDR);
    task(&h, &agent, "INC-7").await;
    for i in 0..7 {
        let body = json!({"task": "INC-7", "action": "host.isolate", "target": "host:db-payments-01", "confidence": 0.95,
            "params": {"reason": format!("beacon {i}")}, "rationale": "C2", "evidence": [{"kind": "edr", "ref": "det:9"}]});
        let (status, answer) = h.call("POST", "/v1/actions", Some(&agent), Some(body)).await;
        assert_eq!((status, answer["state"].as_str()), (StatusCode::OK, Some("pending_approval")), "{answer}");
    }
    let ids = |list: &[Value]| list.iter().map(|a| a["id"].as_str().unwrap().to_string()).collect::<Vec<_>>();
    let (_, whole) = h.call("GET", "/v1/approvals?limit=1000", Some(&h.admin), None).await;
    let whole = ids(whole.as_array().unwrap());
    assert_eq!(whole.len(), 7);
    let mut sorted = whole.clone();
    sorted.sort();
    assert_eq!(whole, sorted, "oldest first (ids begin with their creation time)");
    for limit in [1, 2, 3, 7] {
        let walked = h.walk(&format!("/v1/approvals?limit={limit}"), &h.admin).await;
        assert_eq!(ids(&walked), whole, "pages of {limit}");
    }
    // The header keeps the filters.
    let (_, headers, page) =
        h.get_with_headers("/v1/approvals?state=pending&action=host.isolate&limit=2", &h.admin).await;
    assert_eq!(page.as_array().unwrap().len(), 2);
    let link = headers["link"].to_str().unwrap();
    assert!(link.contains("action=host.isolate") && link.contains("limit=2") && link.contains("after=apr_"), "{link}");
    assert!(h.walk("/v1/approvals?action=user.disable", &h.admin).await.is_empty());
    assert_eq!(h.walk(&format!("/v1/approvals?agent={EDR}&limit=4"), &h.admin).await.len(), 7);
    // Mine: only those I hold a role of.
    let ana = h.user("ana", &["soc-analyst"]);
    let intern = h.user("ivy", &["intern"]);
    assert_eq!(ids(&h.walk("/v1/approvals?mine=true&limit=3", &ana).await), whole);
    assert!(h.walk("/v1/approvals?mine=true", &intern).await.is_empty());
    assert_eq!(h.walk("/v1/approvals?mine=false", &intern).await.len(), 7, "the inbox is readable; votes are not");
    for bad in ["x%20y", "%3Cscript%3E", "1764500000000.apr_1"] {
        let (status, e) = h.call("GET", &format!("/v1/approvals?after={bad}"), Some(&h.admin), None).await;
        assert_eq!(
            (status, e["error"]["code"].as_str()),
            (StatusCode::UNPROCESSABLE_ENTITY, Some("invalid_cursor")),
            "{bad}"
        );
    }
}

/// The track record counts this agent's approved, rejected and rolled-back requests for this
/// action — counted in the store — and nobody else's, nor this agent's for another action.
#[tokio::test]
async fn the_track_record_counts_only_this_agent_and_action() {
    let (h, _, _) = crate::harness_lab();
    let edr = h.svid(EDR);
    task(&h, &edr, "INC-7").await;
    let ana = h.user("ana", &["soc-analyst"]);
    let isolate = |reason: &str| {
        json!({"task": "INC-7", "action": "host.isolate", "target": "host:db-payments-01", "confidence": 0.95,
            "params": {"reason": reason}, "rationale": "C2", "evidence": [{"kind": "edr", "ref": "det:9"}]})
    };
    let ask = |body: Value| {
        let (h, edr) = (&h, &edr);
        async move {
            let (_, a) = h.call("POST", "/v1/actions", Some(edr), Some(body)).await;
            assert_eq!(a["state"], "pending_approval", "{a}");
            a
        }
    };
    // Approved, executed in the lab, then rolled back; approved; rejected.
    let first = ask(isolate("one")).await;
    assert_eq!(vote(&h, &ana, &approval_id(&first), "approve", json!({})).await.1["state"], "approved");
    let (status, e) =
        h.call("POST", &format!("/v1/actions/{}/rollback", first["id"].as_str().unwrap()), Some(&ana), None).await;
    assert_eq!(status, StatusCode::OK, "{e}");
    let second = ask(isolate("two")).await;
    vote(&h, &ana, &approval_id(&second), "approve", json!({})).await;
    let third = ask(isolate("three")).await;
    vote(&h, &ana, &approval_id(&third), "reject", json!({"reason": "no"})).await;
    // Another action of the same agent, and the same action of another agent: not counted.
    let kill = json!({"task": "INC-7", "action": "process.kill", "target": "host:db-payments-01", "confidence": 0.95,
        "params": {"pid": 4242}, "rationale": "C2", "evidence": [{"kind": "edr", "ref": "det:9"}]});
    let (_, k) = h.call("POST", "/v1/actions", Some(&edr), Some(kill)).await;
    assert_eq!(k["state"], "pending_approval", "{k}");
    vote(&h, &ana, &approval_id(&k), "reject", json!({"reason": "no"})).await;
    let phish = h.svid(crate::PHISH);
    let t = json!({"id": "INC-8", "title": "t", "trigger": {"source": "siem", "severity": "high"}});
    assert_eq!(h.call("POST", "/v1/tasks", Some(&h.admin), Some(t)).await.0, StatusCode::CREATED);
    let mut other = isolate("other");
    other["task"] = json!("INC-8");
    let (_, p) = h.call("POST", "/v1/actions", Some(&phish), Some(other)).await;
    assert_eq!(p["state"], "pending_approval", "{p}");
    vote(&h, &ana, &approval_id(&p), "reject", json!({"reason": "no"})).await;
    let open = ask(isolate("four")).await;
    let (_, shown) = h.call("GET", &format!("/v1/approvals/{}", approval_id(&open)), Some(&h.admin), None).await;
    assert_eq!(
        shown["track_record"],
        json!({"days": 30, "approved": 2, "rejected": 1, "expired": 0, "rolled_back": 1, "withdrawn": 0}),
        "{}",
        shown["track_record"]
    );
}
