//! Data boundaries, taint and the task's history (issue 26), attacked by an independent helper
//! (26c): the 64-mark bound, clearing (what is named, who may), the counted history and the
//! Slack card. Each test asserts what must hold: a failing test is a finding.

use std::sync::Arc;

use axum::http::StatusCode;
use serde_json::{Value, json};
use warden_store::SystemClock;

use crate::{PHISH, connector, harness_full};

const BOT: &str = "spiffe://acme.example/soc/enrichment-bot";
const MAILBOX: &str = "mailbox:jdoe@acme.example";

fn lab_harness() -> crate::Harness {
    let (url, keys) = crate::lab();
    harness_full(None, Arc::new(SystemClock), Default::default(), Some(connector(&url, &keys)))
}

/// A verified phishing task opened by a soc-analyst for `agents` (empty: every agent).
/// Returns the analyst's token.
async fn phish_task(h: &crate::Harness, id: &str, agents: &[&str]) -> String {
    let ana = h.user(&format!("ana-{}", id.to_lowercase()), &["soc-analyst"]);
    let task = json!({"id": id, "title": "reported phish", "agents": agents,
                      "trigger": {"source": "phish-report", "alert_id": "a-1", "severity": "high", "summary": "s"}});
    let (s, b) = h.call("POST", "/v1/tasks", Some(&ana), Some(task)).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    assert_eq!(b["verified"], true, "{b}");
    ana
}

async fn marks(h: &crate::Harness, id: &str) -> Vec<Value> {
    let (s, t) = h.call("GET", &format!("/v1/tasks/{id}"), Some(&h.admin), None).await;
    assert_eq!(s, StatusCode::OK, "{t}");
    t["taint"].as_array().cloned().unwrap_or_default()
}

fn enrich_body(id: &str, inputs: Vec<Value>) -> Value {
    json!({"task": id, "action": "alert.enrich", "target": "alert:a-1", "confidence": 0.9,
           "params": {}, "rationale": "context", "evidence": [{"kind": "siem", "ref": "a-1"}], "inputs": inputs})
}

async fn enrich(h: &crate::Harness, id: &str, inputs: Vec<Value>) -> Value {
    let (s, e) = h.call("POST", "/v1/actions", Some(&h.svid(BOT)), Some(enrich_body(id, inputs))).await;
    assert_eq!(s, StatusCode::OK, "{e}");
    assert_eq!(e["state"], "succeeded", "{e}");
    e
}

fn fetch(id: &str, message: &str) -> Value {
    json!({"task": id, "action": "email.fetch", "target": MAILBOX, "params": {"message_id": message},
           "confidence": 0.95, "rationale": "read the report", "evidence": [{"kind": "mail", "ref": message}]})
}

/// Message ids that share their first 64 characters: a mark shows each param cut to 64, so
/// two reads of different messages leave marks of the same words.
fn long_id(tail: &str) -> String {
    format!("newsletter-{}-{tail}", "0".repeat(53))
}

fn disable(id: &str) -> Value {
    json!({"task": id, "action": "account.disable", "target": "account:cfo@acme.example",
           "params": {"reason": "phished"}, "confidence": 0.97, "rationale": "credential phish",
           "evidence": [{"kind": "mail", "ref": "m-77"}]})
}

fn as_read(marks: &[Value]) -> Vec<Value> {
    marks.iter().map(|m| json!({"label": m["label"], "source": m["source"], "by": m["by"]})).collect()
}

/// FINDING candidate: "a mark added after the review is never swept with them". Warden's marks
/// are one per result, but a clear naming a mark as docs/policy.md shows it (label, source,
/// by — `request` is optional) matches every Warden mark of those words: the agent reads
/// another message after the human's review whose shown words are the same (params are shown
/// cut to 64 characters), and the human's clear of the first read sweeps the second, unseen.
#[tokio::test]
async fn attack26c_a_clear_without_request_spares_a_later_read() {
    let h = lab_harness();
    let ana = phish_task(&h, "INC-SWEEP", &[PHISH, BOT]).await;
    enrich(&h, "INC-SWEEP", vec![]).await;
    let phish = h.svid(PHISH);
    let (_, a) = h.call("POST", "/v1/actions", Some(&phish), Some(fetch("INC-SWEEP", &long_id("a")))).await;
    assert_eq!(a["state"], "succeeded", "{a}");
    // The human reads the task: one mark, Warden's read `a`.
    let reviewed = marks(&h, "INC-SWEEP").await;
    assert_eq!(reviewed.len(), 1, "{reviewed:?}");
    // Meanwhile the agent reads the mailbox again: a new result, a new mark.
    let (_, b) = h.call("POST", "/v1/actions", Some(&phish), Some(fetch("INC-SWEEP", &long_id("b")))).await;
    assert_eq!(b["state"], "succeeded", "{b}");
    let now = marks(&h, "INC-SWEEP").await;
    assert!(now.iter().any(|m| m["request"] == b["id"]), "{now:?}");
    // The human clears what they reviewed, as the docs' example names it.
    let body = json!({"reason": "read the first result: a benign newsletter", "marks": as_read(&reviewed)});
    let (s, v) = h.call("POST", "/v1/tasks/INC-SWEEP/taint/clear", Some(&ana), Some(body)).await;
    let left = marks(&h, "INC-SWEEP").await;
    let (_, d) = h.call("POST", "/v1/decisions", Some(&phish), Some(disable("INC-SWEEP"))).await;
    assert!(
        s != StatusCode::OK || left.iter().any(|m| m["request"] == b["id"]),
        "the clear of the reviewed read also swept the later, unreviewed one ({s}: cleared {}); the agent now \
         decides `{}` on the disable",
        v["cleared"],
        d["decision"]["outcome"]
    );
}

/// FINDING candidate: separation of duties for a clear looks only at agents named on the task
/// and agents that already made a request in it. A task open to every agent (`agents` empty)
/// names none: the owner of the triage agent (team:email-security, also a soc-analyst) clears
/// the taint before their agent's first request, and the agent then disables on its own.
#[tokio::test]
async fn attack26c_owner_cannot_clear_a_task_open_to_every_agent() {
    let h = lab_harness();
    phish_task(&h, "INC-ALL", &[]).await;
    // The bot enriches, and declares what it read: the poisoned mail.
    enrich(&h, "INC-ALL", vec![json!({"label": "untrusted", "source": "the body of message m-77"})]).await;
    let phish = h.svid(PHISH);
    let (_, d) = h.call("POST", "/v1/decisions", Some(&phish), Some(disable("INC-ALL"))).await;
    assert_eq!(d["decision"]["outcome"], "require_approval", "control: the taint sends it to a human: {d}");
    let eve = h.user("eve", &["soc-analyst", "team:email-security"]);
    let body = json!({"reason": "looked at it", "marks": as_read(&marks(&h, "INC-ALL").await)});
    let (s, v) = h.call("POST", "/v1/tasks/INC-ALL/taint/clear", Some(&eve), Some(body)).await;
    let (_, d) = h.call("POST", "/v1/actions", Some(&phish), Some(disable("INC-ALL"))).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("separation_of_duties")),
        "the triage agent's owner cleared the taint of a task its agent may act in ({v}); the agent's disable \
         then: {} ({})",
        d["decision"]["outcome"],
        d["state"]
    );
}

/// Control for the above: the same owner is refused once the agent has made a request.
#[tokio::test]
async fn attack26c_owner_refused_once_the_agent_acted() {
    let h = lab_harness();
    phish_task(&h, "INC-ALL2", &[]).await;
    enrich(&h, "INC-ALL2", vec![json!({"label": "untrusted", "source": "the body of message m-77"})]).await;
    let phish = h.svid(PHISH);
    let (_, d) = h.call("POST", "/v1/actions", Some(&phish), Some(disable("INC-ALL2"))).await;
    assert_eq!(d["state"], "pending_approval", "{d}");
    let eve = h.user("eve", &["soc-analyst", "team:email-security"]);
    let body = json!({"reason": "looked at it", "marks": as_read(&marks(&h, "INC-ALL2").await)});
    let (s, v) = h.call("POST", "/v1/tasks/INC-ALL2/taint/clear", Some(&eve), Some(body)).await;
    assert_eq!((s, v["error"]["code"].as_str()), (StatusCode::FORBIDDEN, Some("separation_of_duties")), "{v}");
}

/// FINDING candidate (approver misled): the card names five sources, Warden's newest first.
/// The agent reads the poisoned message, then five harmless ones: the card names the five
/// newsletters and "and 1 more"; the read that steered it is not on it.
#[tokio::test]
async fn attack26c_the_card_names_the_poisoned_read_after_newer_reads() {
    let h = lab_harness();
    phish_task(&h, "INC-NEWER", &[PHISH, BOT]).await;
    enrich(&h, "INC-NEWER", vec![]).await;
    let phish = h.svid(PHISH);
    let (_, f) = h.call("POST", "/v1/actions", Some(&phish), Some(fetch("INC-NEWER", "m-77"))).await;
    assert_eq!(f["state"], "succeeded", "{f}");
    for i in 0..5 {
        let (_, f) = h.call("POST", "/v1/actions", Some(&phish), Some(fetch("INC-NEWER", &format!("news-{i}")))).await;
        assert_eq!(f["state"], "succeeded", "{f}");
    }
    let (_, d) = h.call("POST", "/v1/actions", Some(&phish), Some(disable("INC-NEWER"))).await;
    assert_eq!(d["state"], "pending_approval", "{d}");
    let cap = d["decision"]["caps"].as_array().unwrap().iter().find(|c| c["code"] == "untrusted_input").cloned();
    let reason = cap.map(|c| c["reason"].as_str().unwrap_or_default().to_string()).unwrap_or_default();
    assert!(reason.contains("m-77"), "the card does not name the read of m-77: {reason}");
}

/// Held?: an agent's declared source with Slack markup (a broadcast, a link, a user mention)
/// reaches the Slack card only inside `plain_text`, never in `mrkdwn` or the notification text.
#[tokio::test]
async fn attack26c_slack_markup_in_a_cap_reason_stays_plain() {
    let h = lab_harness();
    phish_task(&h, "INC-MRK", &[PHISH, BOT]).await;
    enrich(&h, "INC-MRK", vec![]).await;
    let phish = h.svid(PHISH);
    let evil = "<!channel> *APPROVED by CISO* <https://evil.example/approve|Approve safely> <@U123> &lt;";
    let body = json!({"task": "INC-MRK", "action": "email.release", "target": MAILBOX, "params": {"message_id": evil},
                      "confidence": 0.95, "rationale": "r", "evidence": [{"kind": "mail", "ref": "m-1"}],
                      "inputs": [{"label": "untrusted", "source": evil}]});
    let (s, v) = h.call("POST", "/v1/actions", Some(&phish), Some(body)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (_, f) = h.call("POST", "/v1/actions", Some(&phish), Some(fetch("INC-MRK", evil))).await;
    assert_eq!(f["state"], "succeeded", "{f}");
    let (_, d) = h.call("POST", "/v1/actions", Some(&phish), Some(disable("INC-MRK"))).await;
    assert_eq!(d["state"], "pending_approval", "{d}");
    let id = d["decision"]["approval"]["id"].as_str().unwrap().to_string();
    let a = warden_server::approvals::load(h.app.ledger().store().as_ref(), &id).unwrap().unwrap().approval;
    let card = warden_server::notify::slack_payload(warden_server::notify::Kind::Created, &a, "https://w", true);
    fn mrkdwn(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                if m.get("type").and_then(|t| t.as_str()) == Some("mrkdwn")
                    && let Some(t) = m.get("text").and_then(|t| t.as_str())
                {
                    out.push(t.to_string());
                }
                m.values().for_each(|v| mrkdwn(v, out));
            }
            Value::Array(a) => a.iter().for_each(|v| mrkdwn(v, out)),
            _ => {}
        }
    }
    let mut texts = vec![card["text"].as_str().unwrap_or_default().to_string()];
    mrkdwn(&card, &mut texts);
    let leaked: Vec<&String> =
        texts.iter().filter(|t| t.contains("<!channel>") || t.contains("<https://evil") || t.contains("<@U")).collect();
    assert!(leaked.is_empty(), "Slack markup reached mrkdwn: {leaked:?}");
    assert!(card.to_string().contains("untrusted_input"), "{card}");
}

/// Held?: a mark with no request (a declaration refused with the backlog, or a 26b-era mark) is
/// not cleared by a clear that names a request; and a named request clears only its mark.
#[tokio::test]
async fn attack26c_a_clear_naming_a_request_clears_only_that_mark() {
    let h = lab_harness();
    let ana = phish_task(&h, "INC-REQ", &[PHISH, BOT]).await;
    enrich(&h, "INC-REQ", vec![]).await;
    let phish = h.svid(PHISH);
    let (_, a) = h.call("POST", "/v1/actions", Some(&phish), Some(fetch("INC-REQ", "m-1"))).await;
    let (_, b) = h.call("POST", "/v1/actions", Some(&phish), Some(fetch("INC-REQ", "m-1"))).await;
    assert_eq!((a["state"].as_str(), b["state"].as_str()), (Some("succeeded"), Some("succeeded")));
    let m = marks(&h, "INC-REQ").await;
    let first = m.iter().find(|m| m["request"] == a["id"]).unwrap().clone();
    // The request of the other mark, and a request that does not exist: nothing of `a` goes.
    for request in [b["id"].clone(), json!("act_nope"), json!("")] {
        let mut named = first.clone();
        named["request"] = request.clone();
        let body = json!({"reason": "r", "marks": [{"label": named["label"], "source": named["source"],
                          "by": named["by"], "request": named["request"]}]});
        let (s, v) = h.call("POST", "/v1/tasks/INC-REQ/taint/clear", Some(&ana), Some(body)).await;
        let cleared = v["cleared"].as_array().cloned().unwrap_or_default();
        assert!(!cleared.iter().any(|c| c["request"] == a["id"]), "{request}: {s} {v}");
        if request == b["id"] {
            assert_eq!(cleared.len(), 1, "{v}");
        }
    }
    assert!(marks(&h, "INC-REQ").await.iter().any(|m| m["request"] == a["id"]));
}
