//! Data boundaries, taint and the task's history (issue 26), attacked by an independent helper
//! (26b). Each test asserts what must hold: a failing test is a finding.

use std::sync::Arc;

use axum::http::StatusCode;
use serde_json::{Value, json};
use warden_store::SystemClock;

use crate::{PHISH, connector, harness_full};

const BOT: &str = "spiffe://acme.example/soc/enrichment-bot";
const MAILBOX: &str = "mailbox:jdoe@acme.example";

/// A harness on the example bundle whose executions reach a fresh lab.
fn lab_harness() -> crate::Harness {
    let (url, keys) = crate::lab();
    harness_full(None, Arc::new(SystemClock), Default::default(), Some(connector(&url, &keys)))
}

/// A verified phishing task (a soc-analyst vouches for `phish-report`), worked by the triage
/// agent and the enrichment bot. Returns the analyst's token (a close role: may clear taint).
async fn verified_phish_task(h: &crate::Harness, id: &str) -> String {
    let ana = h.user(&format!("ana-{}", id.to_lowercase()), &["soc-analyst"]);
    let task = json!({"id": id, "title": "reported phish", "agents": [PHISH, BOT],
                      "trigger": {"source": "phish-report", "alert_id": "a-1", "severity": "high", "summary": "s"}});
    let (s, b) = h.call("POST", "/v1/tasks", Some(&ana), Some(task)).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    assert_eq!(b["verified"], true, "{b}");
    ana
}

async fn task(h: &crate::Harness, id: &str) -> Value {
    let (s, t) = h.call("GET", &format!("/v1/tasks/{id}"), Some(&h.admin), None).await;
    assert_eq!(s, StatusCode::OK, "{t}");
    t
}

async fn marks(h: &crate::Harness, id: &str) -> Vec<Value> {
    task(h, id).await["taint"].as_array().cloned().unwrap_or_default()
}

/// The bot enriches an alert in the task (the sequence rule's "look before you act").
async fn enrich(h: &crate::Harness, id: &str) -> Value {
    let body = json!({"task": id, "action": "alert.enrich", "target": "alert:a-1", "confidence": 0.9,
                      "params": {}, "rationale": "context", "evidence": [{"kind": "siem", "ref": "a-1"}]});
    let (s, e) = h.call("POST", "/v1/actions", Some(&h.svid(BOT)), Some(body)).await;
    assert_eq!(s, StatusCode::OK, "{e}");
    e
}

fn fetch(id: &str, message: &str) -> Value {
    json!({"task": id, "action": "email.fetch", "target": MAILBOX, "params": {"message_id": message},
           "confidence": 0.95, "rationale": "read the report", "evidence": [{"kind": "mail", "ref": message}]})
}

fn disable(id: &str) -> Value {
    json!({"task": id, "action": "account.disable", "target": "account:cfo@acme.example",
           "params": {"reason": "phished"}, "confidence": 0.97, "rationale": "credential phish",
           "evidence": [{"kind": "mail", "ref": "m-77"}]})
}

/// A request recorded as advice (email.release is level 1 for the triage agent) carrying
/// `inputs`: nothing runs, the declaration taints the task.
fn advice_with_inputs(id: &str, inputs: Vec<Value>) -> Value {
    json!({"task": id, "action": "email.release", "target": MAILBOX, "params": {"message_id": "m-1"},
           "confidence": 0.95, "rationale": "newsletters", "evidence": [{"kind": "mail", "ref": "m-1"}],
           "inputs": inputs})
}

/// The human reviews the marks as `GET /v1/tasks/{id}` shows them and clears all of them.
async fn clear_all_as_read(h: &crate::Harness, id: &str, human: &str) {
    let seen: Vec<Value> =
        marks(h, id).await.iter().map(|m| json!({"label": m["label"], "source": m["source"], "by": m["by"]})).collect();
    let body = json!({"reason": "reviewed every input listed on the task: benign", "marks": seen});
    let (s, v) = h.call("POST", &format!("/v1/tasks/{id}/taint/clear"), Some(human), Some(body)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
}

/// Control: the example's intent. On a verified phishing task, after enrichment and with a
/// clean task, the triage agent disables an account on its own; once it has read a message
/// (untrusted), the same request goes to a human.
#[tokio::test]
async fn attack26b_control_the_example_flow() {
    let h = lab_harness();
    verified_phish_task(&h, "INC-CTL").await;
    let phish = h.svid(PHISH);
    let (_, d) = h.call("POST", "/v1/decisions", Some(&phish), Some(disable("INC-CTL"))).await;
    assert_eq!(d["decision"]["outcome"], "deny", "no enrichment yet: {d}");
    assert_eq!(enrich(&h, "INC-CTL").await["state"], "succeeded");
    let (_, d) = h.call("POST", "/v1/decisions", Some(&phish), Some(disable("INC-CTL"))).await;
    assert_eq!(d["decision"]["outcome"], "execute", "{d}");
    let (_, f) = h.call("POST", "/v1/actions", Some(&phish), Some(fetch("INC-CTL", "m-77"))).await;
    assert_eq!(f["state"], "succeeded", "{f}");
    let (_, d) = h.call("POST", "/v1/decisions", Some(&phish), Some(disable("INC-CTL"))).await;
    assert_eq!(d["decision"]["outcome"], "require_approval", "{d}");
    assert!(d["decision"]["caps"].to_string().contains("untrusted_input"), "{d}");
}

/// FINDING candidate: the task keeps at most 64 marks, and once full a mark whose label the
/// task holds is dropped — Warden's own included. The task's agent fills its task with 64
/// harmless-looking declarations, then reads the poisoned message: Warden's mark of that read
/// is never recorded. The human reviewing the task sees 64 agent declarations, reviews them,
/// clears them — and the agent then acts on its own after reading untrusted content nobody
/// was shown.
#[tokio::test]
async fn attack26b_wardens_own_mark_survives_a_full_task() {
    let h = lab_harness();
    let ana = verified_phish_task(&h, "INC-FULL").await;
    enrich(&h, "INC-FULL").await;
    let phish = h.svid(PHISH);
    for round in 0..4 {
        let inputs: Vec<Value> = (0..16)
            .map(|i| json!({"label": "untrusted", "source": format!("the marketing newsletter n-{round}-{i}")}))
            .collect();
        let (s, a) = h.call("POST", "/v1/actions", Some(&phish), Some(advice_with_inputs("INC-FULL", inputs))).await;
        assert_eq!((s, a["state"].as_str()), (StatusCode::OK, Some("advised")), "{a}");
    }
    assert_eq!(marks(&h, "INC-FULL").await.len(), warden_server::model::MAX_TAINT);
    let (_, f) = h.call("POST", "/v1/actions", Some(&phish), Some(fetch("INC-FULL", "m-77"))).await;
    assert_eq!(f["state"], "succeeded", "{f}");
    let shown = marks(&h, "INC-FULL").await;
    let recorded = shown.iter().any(|m| m["by"] == "warden" && m["request"] == f["id"]);
    // Fixed: the newest mark Warden labelled is kept (an agent's oldest declaration goes), so
    // the human who reviews the task sees the read of m-77; the card names it first.
    assert!(recorded, "Warden's mark of the `email.fetch` of m-77 is on the task: {shown:?}");
    assert_eq!(shown.len(), warden_server::model::MAX_TAINT);
    let (_, d) = h.call("POST", "/v1/actions", Some(&phish), Some(disable("INC-FULL"))).await;
    assert_eq!(d["decision"]["outcome"], "require_approval", "{d}");
    assert!(d["decision"]["caps"].to_string().contains("taken in: the result of `email.fetch`"), "{d}");
    // Clearing what the human saw, the m-77 read among it, is the human's call.
    clear_all_as_read(&h, "INC-FULL", &ana).await;
    assert!(marks(&h, "INC-FULL").await.is_empty());
}

/// FINDING candidate: marks are one per (label, source, by), and a result's source shows each
/// param cut to 64 characters. Two reads of different messages whose ids share 64 characters
/// leave one mark, naming the first request only. The human reviews that request's content
/// and clears the mark: the second read — never shown — goes with it.
#[tokio::test]
async fn attack26b_a_second_read_is_not_folded_into_the_first_mark() {
    let h = lab_harness();
    let ana = verified_phish_task(&h, "INC-TRUNC").await;
    enrich(&h, "INC-TRUNC").await;
    let phish = h.svid(PHISH);
    let prefix = format!("newsletter-{}", "0".repeat(53));
    assert_eq!(prefix.chars().count(), 64);
    let (_, a) = h.call("POST", "/v1/actions", Some(&phish), Some(fetch("INC-TRUNC", &format!("{prefix}-a")))).await;
    assert_eq!(a["state"], "succeeded", "{a}");
    let (_, b) = h.call("POST", "/v1/actions", Some(&phish), Some(fetch("INC-TRUNC", &format!("{prefix}-b")))).await;
    assert_eq!(b["state"], "succeeded", "{b}");
    let shown = marks(&h, "INC-TRUNC").await;
    // Fixed: one mark per result Warden handed back, keyed by its request.
    assert!(
        shown.iter().any(|m| m["request"] == a["id"]) && shown.iter().any(|m| m["request"] == b["id"]),
        "{shown:?}"
    );
    // A clear naming only the first read's mark (as a human who reviewed only it would)
    // leaves the second: the task stays tainted.
    let first = shown.iter().find(|m| m["request"] == a["id"]).unwrap();
    let body = json!({"reason": "reviewed the first newsletter", "marks": [
        {"label": first["label"], "source": first["source"], "by": first["by"], "request": first["request"]}]});
    let (status, _) = h.call("POST", "/v1/tasks/INC-TRUNC/taint/clear", Some(&ana), Some(body)).await;
    assert_eq!(status, StatusCode::OK);
    let (_, d) = h.call("POST", "/v1/actions", Some(&phish), Some(disable("INC-TRUNC"))).await;
    assert_eq!(d["decision"]["outcome"], "require_approval", "{d}");
    clear_all_as_read(&h, "INC-TRUNC", &ana).await;
}

/// FINDING candidate: the approval card names at most five sources, in the order they were
/// added. An agent that declares five harmless inputs first pushes Warden's own mark of what
/// really lowered the level (the poisoned message) out of the card: it reads "and 1 more".
#[tokio::test]
async fn attack26b_the_card_names_wardens_own_mark() {
    let h = lab_harness();
    verified_phish_task(&h, "INC-CARD").await;
    enrich(&h, "INC-CARD").await;
    let phish = h.svid(PHISH);
    let inputs: Vec<Value> =
        (0..5).map(|i| json!({"label": "untrusted", "source": format!("the IT newsletter n-{i}")})).collect();
    h.call("POST", "/v1/actions", Some(&phish), Some(advice_with_inputs("INC-CARD", inputs))).await;
    let (_, f) = h.call("POST", "/v1/actions", Some(&phish), Some(fetch("INC-CARD", "m-77"))).await;
    assert_eq!(f["state"], "succeeded", "{f}");
    let (_, d) = h.call("POST", "/v1/actions", Some(&phish), Some(disable("INC-CARD"))).await;
    assert_eq!(d["state"], "pending_approval", "{d}");
    let cap = d["decision"]["caps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["code"] == "untrusted_input")
        .cloned()
        .unwrap_or_default();
    assert!(
        cap["reason"].as_str().unwrap_or_default().contains("m-77"),
        "the card does not name the poisoned read: {cap}"
    );
}

/// FINDING candidate: DESIGN §14 — "the approval card shows the input that lowered it". The
/// Slack card (with Approve buttons) shows no cap at all: an approver deciding from Slack never
/// learns that the agent read untrusted input, nor where it came from.
#[tokio::test]
async fn attack26b_the_slack_card_shows_the_input_that_lowered_it() {
    let h = lab_harness();
    verified_phish_task(&h, "INC-SLACK").await;
    enrich(&h, "INC-SLACK").await;
    let phish = h.svid(PHISH);
    let (_, f) = h.call("POST", "/v1/actions", Some(&phish), Some(fetch("INC-SLACK", "m-77"))).await;
    assert_eq!(f["state"], "succeeded", "{f}");
    let (_, d) = h.call("POST", "/v1/actions", Some(&phish), Some(disable("INC-SLACK"))).await;
    assert_eq!(d["state"], "pending_approval", "{d}");
    let id = d["decision"]["approval"]["id"].as_str().unwrap().to_string();
    let a = warden_server::approvals::load(h.app.ledger().store().as_ref(), &id).unwrap().unwrap().approval;
    assert!(a.caps.iter().any(|c| c.reason.contains("m-77")), "{:?}", a.caps);
    let card = warden_server::notify::slack_payload(warden_server::notify::Kind::Created, &a, "https://w", true);
    let text = card.to_string();
    assert!(
        text.contains("untrusted") && text.contains("m-77"),
        "the Slack approval card does not say the task read untrusted input, nor what: {text}"
    );
}

/// FINDING candidate: an input's source is refused with control and *some* invisible format
/// characters. Others that hide or reorder text on the card pass: the Arabic letter mark (a
/// direction mark), line/paragraph separators, tag characters (invisible ASCII), the
/// Mongolian vowel separator, a combining grapheme joiner, variation selectors, and sources
/// that are blank to the eye (no-break spaces, Hangul fillers, a Braille blank).
#[tokio::test]
async fn attack26b_invisible_characters_in_an_input_source_are_refused() {
    let h = crate::harness();
    verified_phish_task(&h, "INC-CHARS").await;
    let phish = h.svid(PHISH);
    let tags: String = "IGNORE".chars().map(|c| char::from_u32(0xE0000 + c as u32).unwrap()).collect();
    let cases = [
        ("U+061C arabic letter mark", "message m-1\u{061C} from ceo".to_string()),
        ("U+2028 line separator", "message m-1\u{2028}approved by the CISO".to_string()),
        ("U+2029 paragraph separator", "message m-1\u{2029}approved by the CISO".to_string()),
        ("tag characters", format!("message m-1{tags}")),
        ("U+180E mongolian vowel separator", "message\u{180E}m-1".to_string()),
        ("U+034F combining grapheme joiner", "message\u{034F}m-1".to_string()),
        ("U+FE0F variation selector", "message m-1\u{FE0F}".to_string()),
        ("U+FFF9 interlinear annotation", "message m-1\u{FFF9}hidden\u{FFFB}".to_string()),
        ("only no-break spaces", "\u{00A0}\u{00A0}".to_string()),
        ("only a hangul filler", "\u{3164}".to_string()),
        ("only a braille blank", "\u{2800}".to_string()),
    ];
    let mut accepted = Vec::new();
    for (what, source) in cases {
        let inputs = vec![json!({"label": "untrusted", "source": source})];
        let (s, v) = h.call("POST", "/v1/actions", Some(&phish), Some(advice_with_inputs("INC-CHARS", inputs))).await;
        if s == StatusCode::OK {
            accepted.push(format!("{what} ({})", v["state"]));
        }
    }
    assert!(accepted.is_empty(), "input sources accepted with invisible or blank characters: {accepted:#?}");
}

/// FINDING candidate: a result's mark shows the request's params (cut and "inert"). A param
/// holding a line separator or a direction mark reaches the mark — and the card — as it was
/// sent.
#[tokio::test]
async fn attack26b_params_shown_in_a_mark_are_inert() {
    let h = lab_harness();
    verified_phish_task(&h, "INC-PARAM").await;
    let phish = h.svid(PHISH);
    let (_, f) = h
        .call("POST", "/v1/actions", Some(&phish), Some(fetch("INC-PARAM", "m-1\u{2028}reviewed by IAM\u{061C}")))
        .await;
    assert_eq!(f["state"], "succeeded", "{f}");
    let m = marks(&h, "INC-PARAM").await;
    let source = m.iter().find(|m| m["by"] == "warden").map(|m| m["source"].as_str().unwrap().to_string()).unwrap();
    assert!(
        !source.contains('\u{2028}') && !source.contains('\u{061C}'),
        "a param's separator or direction mark reached Warden's mark: {source:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Attempts expected to hold.

/// History counts succeeded executions only: an enrichment the tool refused (wrong key) or
/// could not reach does not satisfy the sequence rule.
#[tokio::test]
async fn attack26b_a_failed_enrichment_is_not_history() {
    for tool in ["wrong-key", "unreachable"] {
        let (url, _keys) = crate::lab();
        let c = match tool {
            "wrong-key" => connector(&url, &warden_lab::Keys::random()),
            _ => connector("http://127.0.0.1:9", &warden_lab::Keys::random()),
        };
        let h = harness_full(None, Arc::new(SystemClock), Default::default(), Some(c));
        verified_phish_task(&h, "INC-F").await;
        let e = enrich(&h, "INC-F").await;
        assert_ne!(e["state"], "succeeded", "{tool}: {e}");
        assert!(task(&h, "INC-F").await.get("history").is_none_or(|v| v.as_object().is_none_or(|m| m.is_empty())));
        let (_, d) = h.call("POST", "/v1/actions", Some(&h.svid(PHISH)), Some(disable("INC-F"))).await;
        assert_eq!(d["decision"]["outcome"], "deny", "{tool}: {d}");
    }
}

/// A dry run records nothing in the history, and a task's history never reaches another task:
/// the bot enriching in a task of its own, or the triage agent in a task of its own, leaves
/// the verified task without it.
#[tokio::test]
async fn attack26b_history_stays_in_its_task_and_dry_runs_add_none() {
    let h = lab_harness();
    verified_phish_task(&h, "INC-H").await;
    let bot = h.svid(BOT);
    let dry = json!({"task": "INC-H", "action": "alert.enrich", "target": "alert:a-1", "confidence": 0.9,
                     "params": {}, "rationale": "r", "evidence": [{"kind": "siem", "ref": "a"}]});
    let (_, d) = h.call("POST", "/v1/decisions", Some(&bot), Some(dry)).await;
    assert_eq!(d["decision"]["outcome"], "execute", "{d}");
    // The bot's own task (agent-opened: its alone).
    let own = json!({"id": "BOT-OWN", "title": "t", "trigger": {"source": "siem", "severity": "low"}});
    assert_eq!(h.call("POST", "/v1/tasks", Some(&bot), Some(own)).await.0, StatusCode::CREATED);
    assert_eq!(enrich(&h, "BOT-OWN").await["state"], "succeeded");
    // The same task id again (reuse) is refused.
    let again = json!({"id": "INC-H", "title": "t", "trigger": {"source": "phish-report", "severity": "low"}});
    assert_eq!(h.call("POST", "/v1/tasks", Some(&bot), Some(again)).await.0, StatusCode::CONFLICT);
    let (_, d) = h.call("POST", "/v1/actions", Some(&h.svid(PHISH)), Some(disable("INC-H"))).await;
    assert_eq!(d["decision"]["outcome"], "deny", "{d}");
    assert!(d["decision"]["caps"].to_string().contains("phish-disable-after-enrichment"), "{d}");
}

/// An approved request whose task was tainted after its decision is decided again at its
/// start: an `execute` recorded before a mark never runs after it. (Driven by hand: the
/// request is recorded with no connector, the mark added, then the executor asked to run it.)
#[tokio::test]
async fn attack26b_an_execute_recorded_before_a_mark_does_not_start_after_it() {
    let (url, keys) = crate::lab();
    let h = harness_full(None, Arc::new(SystemClock), Default::default(), None);
    verified_phish_task(&h, "INC-R").await;
    // The bot's enrichment, recorded `approved` (no connector here), then run by the executor.
    let c = connector(&url, &keys);
    let e = enrich(&h, "INC-R").await;
    assert_eq!(e["state"], "approved", "{e}");
    warden_server::execution::execute(&h.app, c.as_ref(), e["id"].as_str().unwrap()).unwrap();
    let phish = h.svid(PHISH);
    let (_, d) = h.call("POST", "/v1/actions", Some(&phish), Some(disable("INC-R"))).await;
    assert_eq!(d["state"], "approved", "{d}");
    // Now the task is tainted (another request of the agent declares the message it read).
    let inputs = vec![json!({"label": "untrusted", "source": "the body of message m-77"})];
    h.call("POST", "/v1/actions", Some(&phish), Some(advice_with_inputs("INC-R", inputs))).await;
    let r = warden_server::execution::execute(&h.app, c.as_ref(), d["id"].as_str().unwrap());
    assert!(r.is_err(), "the execute ran after a mark it did not see");
    let (_, a) = h.call("GET", &format!("/v1/actions/{}", d["id"].as_str().unwrap()), Some(&phish), None).await;
    assert_ne!(a["state"], "succeeded", "{a}");
}

/// Replaying a request by its idempotency key answers the recorded request; it never decides
/// afresh on a task whose taint a human has since cleared, nor runs again.
#[tokio::test]
async fn attack26b_a_replay_never_runs_again_after_a_clear() {
    let h = lab_harness();
    let ana = verified_phish_task(&h, "INC-REP").await;
    enrich(&h, "INC-REP").await;
    let phish = h.svid(PHISH);
    let inputs = vec![json!({"label": "untrusted", "source": "the body of message m-77"})];
    let mut body = disable("INC-REP");
    body["inputs"] = json!(inputs);
    body["idempotency_key"] = json!("k-1");
    let (_, first) = h.call("POST", "/v1/actions", Some(&phish), Some(body.clone())).await;
    assert_eq!(first["state"], "pending_approval", "{first}");
    clear_all_as_read(&h, "INC-REP", &ana).await;
    let (_, again) = h.call("POST", "/v1/actions", Some(&phish), Some(body)).await;
    assert_eq!((again["id"].clone(), again["state"].clone()), (first["id"].clone(), json!("pending_approval")));
}

/// FINDING candidate: separation of duties. The triage agent's owner (a soc-analyst who is on
/// `team:email-security`) may not approve its agent's requests — but may clear the taint that
/// sent them to a human, and the agent then acts on its own: clearing taint raises autonomy as
/// an approval does, without the approval's rules (separation of duties, step-up, quorum).
#[tokio::test]
async fn attack26b_the_agents_owner_cannot_clear_its_taint_instead_of_approving() {
    let h = lab_harness();
    verified_phish_task(&h, "INC-SOD").await;
    enrich(&h, "INC-SOD").await;
    let phish = h.svid(PHISH);
    let eve = h.user("eve", &["soc-analyst", "team:email-security"]);
    let (_, f) = h.call("POST", "/v1/actions", Some(&phish), Some(fetch("INC-SOD", "m-77"))).await;
    assert_eq!(f["state"], "succeeded", "{f}");
    let quarantine = json!({"task": "INC-SOD", "action": "email.quarantine", "target": MAILBOX,
                            "params": {"message_id": "m-77"}, "confidence": 0.97, "rationale": "phish",
                            "evidence": [{"kind": "mail", "ref": "m-77"}]});
    let (_, q) = h.call("POST", "/v1/actions", Some(&phish), Some(quarantine.clone())).await;
    assert_eq!(q["state"], "pending_approval", "{q}");
    let apr = q["decision"]["approval"]["id"].as_str().unwrap().to_string();
    let (s, v) =
        h.call("POST", &format!("/v1/approvals/{apr}/approve"), Some(&eve), Some(json!({"reason": "fine"}))).await;
    assert_eq!((s, v["error"]["code"].as_str()), (StatusCode::FORBIDDEN, Some("separation_of_duties")), "{v}");
    // Instead: clear the marks, as read.
    let seen: Vec<Value> = marks(&h, "INC-SOD")
        .await
        .iter()
        .map(|m| json!({"label": m["label"], "source": m["source"], "by": m["by"]}))
        .collect();
    let body = json!({"reason": "looked at it", "marks": seen});
    let (s, v) = h.call("POST", "/v1/tasks/INC-SOD/taint/clear", Some(&eve), Some(body)).await;
    let mut again = quarantine;
    again["params"]["message_id"] = json!("m-78");
    let (_, d) = h.call("POST", "/v1/decisions", Some(&phish), Some(again)).await;
    assert!(
        s == StatusCode::FORBIDDEN || d["decision"]["outcome"] != "execute",
        "the agent's owner, refused as an approver ({apr}), cleared the taint ({s} {v}) and the agent now decides {}",
        d["decision"]["outcome"]
    );
}

/// FINDING candidate, end to end: a sequence rule written with the history reached through
/// an `if` is not counted by the server (nor shown to Cedar), so it never fires. Here: no
/// quarantine once a message has been fetched in the task (with the rule working, a deny; with
/// it ignored, the request only goes to a human because of the taint).
#[tokio::test]
async fn attack26b_a_computed_history_forbid_holds_end_to_end() {
    let mut outcomes = Vec::new();
    // Fixed: a rule that reaches the history other than as `context.task.history` is refused
    // at load (what it reads could not be counted), so it can never be in force unseen.
    let computed = "(if true then context.task else context.task).history";
    let mut files = crate::read_bundle(&crate::example_dir());
    let f = files.iter_mut().find(|f| f.path == "cedar/containment.cedar").unwrap();
    f.text.push_str(&format!(
        "\n@id(\"computed\")\n@owner(\"team:x\")\nforbid (principal, action, resource) when {{ {computed} has \"email.fetch\" }};\n"
    ));
    let refused = warden_core::Bundle::load(&files).unwrap_err().to_string();
    assert!(refused.contains("uses `context` or `context.task` as a value"), "{refused}");
    for reads in ["context.task.history"] {
        let rule = format!(
            "\n@id(\"no-quarantine-after-a-fetch\")\n@owner(\"team:email-security\")\nforbid (\n  principal == \
             Warden::Agent::\"{PHISH}\",\n  action == Warden::Action::\"email.quarantine\",\n  resource\n)\nwhen {{ \
             {reads} has \"email.fetch\" }};\n"
        );
        let last = "unless { context.task.history has \"alert.enrich\" };\n";
        let policy = crate::taint::bundle_edits(&[("cedar/containment.cedar", last, &format!("{last}{rule}"))]);
        let (url, keys) = crate::lab();
        let h =
            harness_full(Some(policy.path()), Arc::new(SystemClock), Default::default(), Some(connector(&url, &keys)));
        verified_phish_task(&h, "INC-SEQ").await;
        let phish = h.svid(PHISH);
        let (_, f) = h.call("POST", "/v1/actions", Some(&phish), Some(fetch("INC-SEQ", "m-1"))).await;
        assert_eq!(f["state"], "succeeded", "{f}");
        assert_eq!(task(&h, "INC-SEQ").await["history"]["email.fetch"], 1);
        let quarantine = json!({"task": "INC-SEQ", "action": "email.quarantine", "target": MAILBOX,
                                "params": {"message_id": "m-1"}, "confidence": 0.97, "rationale": "phish",
                                "evidence": [{"kind": "mail", "ref": "m-1"}]});
        let (_, q) = h.call("POST", "/v1/actions", Some(&phish), Some(quarantine)).await;
        outcomes.push((reads, q["decision"]["outcome"].as_str().unwrap_or_default().to_string()));
    }
    assert_eq!(outcomes[0].1, "deny", "control: the plain rule fires");
    assert!(outcomes.iter().all(|(_, o)| o == "deny"), "the forbid after `email.fetch` never fired: {outcomes:?}");
}
