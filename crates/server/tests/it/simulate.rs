//! `warden policy simulate` (DESIGN §13) over a log the server wrote: the bundle in force
//! replayed over its own window decides every request exactly as logged, whatever facts the
//! decisions met (halts, a closed task, budgets and the breaker, taint, the task's history,
//! unknown targets, bad requests); a proposal shows what it changes.

use std::collections::BTreeMap;

use axum::http::StatusCode;
use serde_json::json;
use warden_core::audit::entry::{Entry, EventType};
use warden_core::report::{Filter, Window};
use warden_core::simulate::{Guard, simulate};
use warden_core::{Bundle, Outcome};

use crate::{EDR, PHISH, example_dir, read_bundle};

const BOT: &str = "spiffe://acme.example/soc/enrichment-bot";
const IAM: &str = "spiffe://acme.example/soc/identity-responder";
const NET: &str = "spiffe://acme.example/soc/network-guard";

pub(crate) fn entries(h: &crate::Harness) -> Vec<Entry> {
    let store = h.app.ledger().store();
    let n = store.size().unwrap();
    store.entries(0, n as usize).unwrap().iter().map(|e| Entry::parse(&e.bytes).unwrap()).collect()
}

fn example() -> Bundle {
    Bundle::load(&read_bundle(&example_dir())).unwrap()
}

/// The example bundle with `edit` applied to one of its files.
fn proposal(path: &str, edit: impl Fn(&str) -> String) -> Bundle {
    let mut files = read_bundle(&example_dir());
    let f = files.iter_mut().find(|f| f.path == path).unwrap();
    let text = edit(&f.text);
    assert_ne!(text, f.text, "the proposal changes `{path}`");
    f.text = text;
    Bundle::load(&files).unwrap()
}

/// A varied stretch of work: every agent, targets of every criticality and some unknown,
/// confidences in every band, requests without evidence, declared untrusted input, a halt set
/// and lifted, a task closed, a budget run through (the breaker trips), and account disables
/// before and after the task's alert was enriched. Answers the logged outcome of every request.
pub(crate) async fn a_week_of_work(h: &crate::Harness) -> Vec<(String, String, String, Outcome)> {
    let ana = h.user("ana", &["soc-analyst"]);
    let root = h.user("root", &["admin"]);
    for (id, source, severity) in [("INC-S1", "siem", "high"), ("INC-S2", "email-gateway", "medium")] {
        let task = json!({"id": id, "title": id, "trigger": {"source": source, "severity": severity}});
        assert_eq!(h.call("POST", "/v1/tasks", Some(&ana), Some(task)).await.0, StatusCode::CREATED);
    }
    // An agent's own task: its trigger unverified.
    let own = json!({"id": "INC-S3", "title": "own", "trigger": {"source": "email-gateway", "severity": "critical"}});
    assert_eq!(h.call("POST", "/v1/tasks", Some(&h.svid(PHISH)), Some(own)).await.0, StatusCode::CREATED);

    let hosts =
        ["web-01", "web-02", "web-42", "build-07", "db-payments-01", "dc01.corp.acme.example", "lt-jdoe", "ghost-9"];
    let confidences = [0.35, 0.65, 0.88, 0.95, 0.99];
    let mut logged = Vec::new();
    for i in 0..96usize {
        match i {
            30 => {
                // An agent's halt refuses its requests before any decision; an action's is a cap.
                let halt = json!({"scope": "action", "id": "ip.block", "reason": "drill"});
                assert_eq!(h.call("POST", "/v1/halt", Some(&ana), Some(halt)).await.0, StatusCode::OK);
            }
            42 => {
                let resume = json!({"scope": "action", "id": "ip.block", "reason": "drill over"});
                assert_eq!(h.call("POST", "/v1/resume", Some(&root), Some(resume)).await.0, StatusCode::OK);
            }
            50 => {
                // A burst: the EDR responder's hourly budget (10) runs out and the breaker
                // trips; a sixth distinct host is one too many.
                for (n, host) in ["web-01", "web-02", "web-42", "build-07", "lt-jdoe", "staging-api-01"]
                    .iter()
                    .cycle()
                    .take(13)
                    .enumerate()
                {
                    let body = json!({"task": "INC-S1", "action": "host.isolate", "target": format!("host:{host}"),
                        "params": {"reason": format!("burst {n}")}, "confidence": 0.99, "rationale": "worm",
                        "evidence": [{"kind": "edr", "ref": format!("b:{n}")}]});
                    let (status, a) = h.call("POST", "/v1/actions", Some(&h.svid(EDR)), Some(body)).await;
                    assert!(status.is_success(), "{a}");
                    let outcome: Outcome = serde_json::from_value(a["decision"]["outcome"].clone()).unwrap();
                    logged.push((EDR.to_string(), "host.isolate".to_string(), format!("host:{host}"), outcome));
                }
            }
            70 => {
                let (status, _) =
                    h.call("POST", "/v1/tasks/INC-S2/close", Some(&ana), Some(json!({"reason": "done"}))).await;
                assert_eq!(status, StatusCode::OK);
            }
            _ => {}
        }
        let task = ["INC-S1", "INC-S2", "INC-S3"][i % 3];
        let confidence = confidences[i % 5];
        let (agent, action, target, params) = match i % 8 {
            0..=2 => (
                EDR,
                "host.isolate",
                format!("host:{}", hosts[(i + i / 6) % hosts.len()]),
                json!({"reason": format!("beacon {i}")}),
            ),
            3 => (
                PHISH,
                "account.disable",
                format!("account:{}", ["jdoe", "cfo", "adm-jdoe"][i % 3]),
                json!({"reason": "phish"}),
            ),
            4 => (BOT, "alert.enrich", format!("alert:a-{i}"), json!({"sources": ["edr"]})),
            5 => (
                PHISH,
                "email.quarantine",
                "mailbox:jdoe@acme.example".to_string(),
                json!({"message_id": format!("m-{i}")}),
            ),
            6 => (
                IAM,
                "account.disable",
                format!("account:{}", ["asmith", "svc-backup", "jdoe"][i % 3]),
                json!({"reason": "ato"}),
            ),
            _ => (
                NET,
                "ip.block",
                format!("ip:{}", ["203.0.113.66", "10.0.0.53", "198.51.100.7"][i % 3]),
                json!({"reason": "c2", "duration_minutes": 60}),
            ),
        };
        let mut body = json!({"task": task, "action": action, "target": target, "params": params,
            "confidence": confidence, "rationale": format!("step {i}"),
            "evidence": [{"kind": "alert", "ref": format!("e:{i}")}]});
        if i % 11 == 0 {
            body["evidence"] = json!([]);
        }
        if i % 13 == 5 {
            body["inputs"] = json!([{"label": "untrusted", "source": format!("a pasted log {i}")}]);
        }
        let (status, a) = h.call("POST", "/v1/actions", Some(&h.svid(agent)), Some(body)).await;
        if status != StatusCode::OK && status != StatusCode::ACCEPTED {
            continue; // refused before any decision (a backlog, a bad body): nothing to replay
        }
        let outcome: Outcome = serde_json::from_value(a["decision"]["outcome"].clone()).unwrap();
        logged.push((agent.to_string(), action.to_string(), target, outcome));
    }
    logged
}

/// The caps the logged decisions carry, by code.
fn caps_seen(log: &[Entry]) -> BTreeMap<String, u64> {
    let mut caps = BTreeMap::new();
    for e in log.iter().filter(|e| e.event.kind == EventType::DecisionMade) {
        for c in e.event.data["decision"]["caps"].as_array().into_iter().flatten() {
            *caps.entry(c["code"].as_str().unwrap().to_string()).or_default() += 1;
        }
    }
    caps
}

#[tokio::test]
async fn the_bundle_in_force_replayed_over_its_own_window_decides_every_request_as_logged() {
    let (h, _lab, _keys) = crate::harness_lab();
    let logged = a_week_of_work(&h).await;
    let log = entries(&h);
    // The stretch met what it was meant to meet, so the replay has something to get wrong.
    let caps = caps_seen(&log);
    for code in [
        "halted",
        "task_closed",
        "breaker_open",
        "untrusted_input",
        "shadow_mode",
        "invalid_request",
        "confidence_below_escalate",
        "forbidden",
    ] {
        assert!(caps.contains_key(code), "no decision met `{code}`: {caps:?}");
    }
    assert!(caps.contains_key("budget_exceeded") || caps.contains_key("distinct_targets_exceeded"), "{caps:?}");
    let outcomes: std::collections::BTreeSet<Outcome> = logged.iter().map(|l| l.3).collect();
    assert_eq!(outcomes.len(), 4, "every outcome: {outcomes:?}");

    let sim = simulate(log, Window::default(), &Filter::default(), &example());
    assert_eq!(sim.replayed, logged.len() as u64);
    assert_eq!((sim.unrecorded, sim.inexact), (0, 0));
    assert_eq!(sim.same_bundle, sim.replayed, "every request was decided under the example bundle");
    assert_eq!(sim.same_bundle_differing, 0, "{:?}", sim.changes);
    assert_eq!(sim.changed, 0, "{:?}", sim.changes);
    let mut want: BTreeMap<Outcome, u64> = BTreeMap::new();
    for l in &logged {
        *want.entry(l.3).or_default() += 1;
    }
    assert_eq!(sim.before, want);
    assert_eq!(sim.after, want);
}

/// A proposal that gives the EDR responder level 4 on every host: the replay names each
/// isolation that would now run on its own — tier0 and privileged hosts included, so the
/// guard fails — and the analysts' load falls by exactly those requests.
#[tokio::test]
async fn a_proposal_shows_each_request_it_would_newly_execute() {
    let (h, _lab, _keys) = crate::harness_lab();
    let logged = a_week_of_work(&h).await;
    let log = entries(&h);
    let wider = proposal("agents/edr-responder.toml", |t| {
        t.replacen(
            "action = \"host.isolate\"\nlevel = 3\nmax_criticality = \"tier2\"",
            "action = \"host.isolate\"\nlevel = 4",
            1,
        )
    });
    let sim = simulate(log.clone(), Window::default(), &Filter::default(), &wider);
    assert_eq!(sim.same_bundle, 0, "no request was decided under the proposal");
    assert_eq!((sim.unrecorded, sim.same_bundle_differing), (0, 0));
    // Independently: the isolations humans were asked for, when nothing else held them back
    // (a halt, a budget, a closed task: the replay keeps those facts as they were).
    let asked: Vec<&(String, String, String, Outcome)> =
        logged.iter().filter(|l| l.0 == EDR && l.1 == "host.isolate" && l.3 == Outcome::RequireApproval).collect();
    assert!(!asked.is_empty());
    let newly: Vec<&warden_core::simulate::Changed> =
        sim.changes.iter().filter(|c| c.after == Outcome::Execute && c.before != Outcome::Execute).collect();
    assert!(!newly.is_empty(), "{:?} {:?}", sim.changes, sim.rows);
    for c in &newly {
        assert_eq!((c.agent.as_str(), c.action.as_str()), (EDR, "host.isolate"), "{c:?}");
        assert_eq!(c.before, Outcome::RequireApproval, "{c:?}");
    }
    // Every change is the EDR responder's isolations: nothing else moved.
    assert!(sim.changes.iter().all(|c| c.agent == EDR && c.action == "host.isolate"), "{:?}", sim.changes);
    let row = sim.rows.iter().find(|r| r.agent == EDR && r.action == "host.isolate").unwrap();
    let n = |m: &BTreeMap<Outcome, u64>, o| m.get(&o).copied().unwrap_or(0);
    assert_eq!(n(&row.after, Outcome::Execute) - n(&row.before, Outcome::Execute), newly.len() as u64);
    assert_eq!(n(&row.before, Outcome::RequireApproval) - n(&row.after, Outcome::RequireApproval), newly.len() as u64);
    // The sensitive list: exactly the new executions on tier0 or privileged hosts (an unknown
    // host counts as both), by the inventory.
    let inventory = wider.inventory();
    let sensitive_host = |target: &str| {
        inventory
            .get(&target.parse().unwrap())
            .is_none_or(|a| a.criticality == warden_core::inventory::Criticality::Tier0 || a.privileged)
    };
    let want: Vec<&str> = newly.iter().filter(|c| sensitive_host(&c.target)).map(|c| c.request.as_str()).collect();
    let got: Vec<&str> = sim.newly_sensitive.iter().map(|c| c.request.as_str()).collect();
    assert_eq!(got, want);
    assert!(sim.newly_sensitive.iter().any(|c| c.target == "host:ghost-9"), "{:?}", sim.newly_sensitive);
    assert!(newly.iter().any(|c| !sensitive_host(&c.target)), "a tier1 or tier2 host too: {newly:?}");
    assert!(Guard::NewTier0Execute.broken(&sim) > 0);
    assert!(Guard::NewExecute.broken(&sim) >= Guard::NewTier0Execute.broken(&sim));
    // The incident commander (asked for every isolation) is asked that many times less; the
    // analysts only for the hosts that need no step-up (not privileged, not unknown).
    let drop = |role: &str| sim.roles.iter().find(|r| r.role == role).map(|r| r.before - r.after).unwrap();
    assert_eq!(drop("incident-commander"), newly.len() as u64, "{:?}", sim.roles);
    let plain =
        newly.iter().filter(|c| inventory.get(&c.target.parse().unwrap()).is_some_and(|a| !a.privileged)).count();
    assert_eq!(drop("soc-analyst"), plain as u64, "{:?}", sim.roles);

    // The HTML page: every sensitive request listed, the guard failed, the totals as counted,
    // nothing fetched, agent-named text inert.
    let page = warden_server::reports::simulate_html(&sim, "all", &[Guard::NewTier0Execute]).unwrap();
    for c in &sim.newly_sensitive {
        assert!(page.contains(&format!("<code>{}</code>", c.request)), "{}", c.request);
    }
    assert!(page.contains(&format!("Newly executing on tier0 or privileged targets: {}", sim.newly_sensitive.len())));
    assert!(page.contains(&format!("new-tier0-execute: FAILED ({} requests)", Guard::NewTier0Execute.broken(&sim))));
    let n = |m: &BTreeMap<Outcome, u64>, o| m.get(&o).copied().unwrap_or(0);
    assert!(page.contains(&format!(
        "execute {} → {}",
        n(&sim.before, Outcome::Execute),
        n(&sim.after, Outcome::Execute)
    )));
    for fetches in ["<script", "<link", " src=", "href=", "url(", "@import"] {
        assert!(!page.contains(fetches), "self-contained: no `{fetches}`");
    }

    // Filtered to another agent, nothing changes and no guard fails.
    let phish = Filter { agent: Some(PHISH.into()), action: None, ..Default::default() };
    let only = simulate(log, Window::default(), &phish, &wider);
    assert!(only.replayed > 0 && only.changed == 0, "{only:?}");
    assert_eq!(Guard::AnyChange.broken(&only), 0);
}

/// A window in the future holds nothing; one that ends before the work holds nothing either;
/// decisions logged without their facts are counted, never replayed on guesses.
#[tokio::test]
async fn windows_and_unrecorded_decisions() {
    let (h, _lab, _keys) = crate::harness_lab();
    a_week_of_work(&h).await;
    let log = entries(&h);
    let later = time::OffsetDateTime::now_utc() + time::Duration::hours(1);
    let empty = simulate(log.clone(), Window { from: Some(later), to: None }, &Filter::default(), &example());
    assert_eq!((empty.replayed, empty.in_window), (0, 0));
    // The same log as an older Warden wrote it: no facts in its decisions.
    let old: Vec<Entry> = log
        .into_iter()
        .map(|mut e| {
            if e.event.kind == EventType::DecisionMade {
                e.event.data.as_object_mut().unwrap().remove("facts");
            }
            e
        })
        .collect();
    let decisions = old.iter().filter(|e| e.event.kind == EventType::DecisionMade).count() as u64;
    let sim = simulate(old, Window::default(), &Filter::default(), &example());
    assert_eq!((sim.replayed, sim.unrecorded), (0, decisions));
    assert!(sim.changes.is_empty());
}

/// A proposed sequence rule over a class no rule in force reads: the replay counts the task's
/// history from the log (its `execution.succeeded` entries before each decision), so exactly the
/// quarantines in a task where no host had been isolated yet are newly denied.
#[tokio::test]
async fn a_proposed_sequence_rule_is_replayed_on_the_history_the_log_holds() {
    let (h, _lab, _keys) = crate::harness_lab();
    a_week_of_work(&h).await;
    let log = entries(&h);
    let rule = "\n@id(\"quarantine-after-isolation\")\n@owner(\"team:messaging\")\nforbid (\n  principal,\n  action == Warden::Action::\"email.quarantine\",\n  resource\n)\nunless { context.task.history has \"host.isolate\" };\n";
    let proposed = proposal("cedar/containment.cedar", |t| format!("{t}{rule}"));
    let sim = simulate(log.clone(), Window::default(), &Filter::default(), &proposed);
    // Independently, from the log: each quarantine not denied, and whether its task had an
    // isolation succeed before it.
    let mut isolated: std::collections::BTreeSet<String> = Default::default();
    let mut want = Vec::new();
    for e in &log {
        let ev = &e.event;
        if ev.kind == EventType::ExecutionSucceeded && ev.action.as_deref() == Some("host.isolate") {
            isolated.insert(ev.task.clone().unwrap());
        }
        if ev.kind == EventType::DecisionMade
            && ev.action.as_deref() == Some("email.quarantine")
            && ev.data["decision"]["outcome"] != "deny"
            && !isolated.contains(ev.task.as_deref().unwrap())
        {
            want.push(ev.request.clone().unwrap());
        }
    }
    assert!(!want.is_empty(), "some quarantine ran before any isolation");
    assert!(!isolated.is_empty(), "some task had an isolation");
    let got: Vec<String> = sim.changes.iter().map(|c| c.request.clone()).collect();
    assert_eq!(got, want);
    assert!(sim.changes.iter().all(|c| c.after == Outcome::Deny && c.caps.contains(&warden_core::CapCode::Forbidden)));
    // Some quarantine came after an isolation in its task and keeps its outcome.
    let kept = log.iter().filter(|e| {
        e.event.kind == EventType::DecisionMade
            && e.event.action.as_deref() == Some("email.quarantine")
            && e.event.data["decision"]["outcome"] != "deny"
    });
    assert!(kept.count() > want.len(), "the rule lets a quarantine after an isolation through");
}

/// The store counts budget usage only as far as the bundle in force could need: a proposal
/// with a larger budget cannot know whether a request that met the old one meets the new one,
/// and says so for exactly those requests instead of guessing.
#[tokio::test]
async fn a_larger_budget_is_replayed_as_inexact_where_the_log_counted_too_little() {
    let (h, _lab, _keys) = crate::harness_lab();
    a_week_of_work(&h).await;
    let log = entries(&h);
    let larger =
        proposal("agents/edr-responder.toml", |t| t.replace("max_distinct_targets = 5", "max_distinct_targets = 50"));
    let sim = simulate(log.clone(), Window::default(), &Filter::default(), &larger);
    // Independently: the EDR decisions whose facts show the count stopped at the old limit.
    let want: Vec<String> = log
        .iter()
        .filter(|e| e.event.kind == EventType::DecisionMade && e.event.actor.id == EDR)
        .filter(|e| {
            let f = &e.event.data["facts"];
            e.event.action.as_deref() == Some("host.isolate") && f["budget"]["distinct_targets"].as_u64() >= Some(5)
        })
        .map(|e| e.event.request.clone().unwrap())
        .collect();
    assert!(!want.is_empty(), "the burst reached five distinct hosts");
    let got: Vec<String> = sim.inexact_listed.iter().map(|i| i.request.clone()).collect();
    assert_eq!(got, want);
    assert_eq!(sim.inexact, want.len() as u64);
    assert!(sim.inexact_listed[0].why.contains("50 distinct targets"), "{:?}", sim.inexact_listed[0]);
    // The bundle in force has nothing to be inexact about.
    assert_eq!(simulate(log, Window::default(), &Filter::default(), &example()).inexact, 0);
}
