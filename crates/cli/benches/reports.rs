//! The reports over a large log (issue 27): builds a data directory holding N logged requests
//! (default 1,000,000), each decided by the real decision core under the example bundle and
//! logged as the server logs it — `action.requested`, `decision.made` with its recorded facts,
//! then an approval requested and granted for a `require_approval`, an execution for an
//! `execute`. `scripts/bench-reports` then times `warden report autonomy` and `warden policy
//! simulate` over it against `warden audit verify` of the same log (time and peak memory, GNU
//! time), in the same run.
//!
//!     cargo bench -p warden --bench reports -- build DIR [REQUESTS]

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use serde_json::json;
use time::OffsetDateTime;
use warden_core::audit::entry::{Actor, Event, EventType};
use warden_core::request::{ActionRequest, AgentStatus, BudgetUsage, DecisionInput, TaskInfo, TaskState};
use warden_core::simulate::{Counted, RecordedFacts};
use warden_core::{Bundle, Outcome, decide};
use warden_store::{Batch, DataDir, SystemClock};

/// (agent, action, targets, params): the mix of requests, every agent of the example bundle.
fn menu() -> Vec<(&'static str, &'static str, Vec<&'static str>, serde_json::Value)> {
    vec![
        (
            "spiffe://acme.example/soc/edr-responder",
            "host.isolate",
            vec!["host:web-01", "host:web-02", "host:web-42", "host:db-payments-01", "host:dc01.corp.acme.example"],
            json!({"reason": "beacon"}),
        ),
        (
            "spiffe://acme.example/soc/enrichment-bot",
            "alert.enrich",
            vec!["alert:a-1", "alert:a-2"],
            json!({"sources": ["edr"]}),
        ),
        (
            "spiffe://acme.example/soc/phish-triage",
            "email.quarantine",
            vec!["mailbox:jdoe@acme.example", "mailbox:cfo@acme.example"],
            json!({"message_id": "m-1"}),
        ),
        (
            "spiffe://acme.example/soc/identity-responder",
            "account.disable",
            vec!["account:jdoe", "account:asmith", "account:svc-backup"],
            json!({"reason": "ato"}),
        ),
        (
            "spiffe://acme.example/soc/network-guard",
            "ip.block",
            vec!["ip:203.0.113.66", "ip:198.51.100.7"],
            json!({"reason": "c2", "duration_minutes": 60}),
        ),
    ]
}

fn build(dir: &Path, requests: u64) {
    let started = Instant::now();
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/policy");
    let bundle = Bundle::load(&warden_server::policy_dir::read(&example).unwrap()).unwrap();
    let (data, _) = DataDir::init(dir, "bench.local/reports", Arc::new(SystemClock)).unwrap();
    let ledger = data.ledger();
    ledger.commit(Batch::new().changes(warden_server::state::bundle_changes(&bundle))).unwrap();
    let menu = menu();
    let confidences = [0.5, 0.7, 0.88, 0.93, 0.97];
    let start = OffsetDateTime::now_utc() - time::Duration::days(6);
    let mut batch = Batch::new();
    let mut outcomes = [0u64; 4];
    for i in 0..requests {
        let (agent, action, targets, params) = &menu[(i % menu.len() as u64) as usize];
        let target = targets[(i / 7 % targets.len() as u64) as usize];
        let confidence = confidences[(i / 3 % 5) as usize];
        let task_id = format!("INC-{}", i / 1000);
        let request = ActionRequest {
            task: task_id.clone(),
            action: action.to_string(),
            target: target.parse().unwrap(),
            params: params.as_object().cloned().unwrap_or_default(),
            confidence,
            rationale: format!("step {i}"),
            evidence: serde_json::from_value(json!([{"kind": "siem", "ref": format!("e:{i}")}])).unwrap(),
            idempotency_key: None,
            inputs: Vec::new(),
        };
        let task = TaskInfo {
            id: task_id.clone(),
            state: TaskState::Open,
            severity: "high".into(),
            source: "siem".into(),
            verified: true,
            agents: Vec::new(),
            taint: Vec::new(),
            history: Default::default(),
        };
        // Spread over six days, a request every half second or so.
        let now = start + time::Duration::milliseconds((i * 500) as i64);
        let facts = RecordedFacts {
            agent_status: AgentStatus::Active,
            task: Some(task),
            budget: BudgetUsage::default(),
            // As the store counts: up to the largest budgets the bundle can apply.
            counted: {
                let (per_hour, targets) = bundle.agent(agent).map_or((None, None), |g| g.budget_limits(action));
                Counted { executions: per_hour.map_or(0, u64::from), distinct_targets: targets.map_or(0, u64::from) }
            },
            halts: Vec::new(),
            now,
            shadow: false,
            via: None,
            history_read: Vec::new(),
            asset: Some(warden_core::simulate::AssetFacts::of(&bundle, &request.target)),
        };
        let input = DecisionInput {
            agent,
            agent_status: facts.agent_status,
            request: &request,
            task: facts.task.as_ref(),
            budget: facts.budget,
            halts: &facts.halts,
            now,
            shadow: false,
            via: None,
        };
        let decision = decide(&bundle, &input);
        outcomes[decision.outcome as usize] += 1;
        let id = format!("act_{i:012}");
        let actor = Actor::agent(*agent);
        let ev = |kind| Event::new(kind, actor.clone()).task(&task_id).request(&id).action(*action);
        batch = batch
            .event(ev(EventType::ActionRequested).data(json!({
                "target": target, "params": request.params, "confidence": confidence, "rationale": request.rationale,
                "evidence": request.evidence, "inputs": [], "idempotency_key": null,
                "request_digest": "sha256:00", "digest": "sha256:00"})))
            .event(ev(EventType::DecisionMade).data(json!({
                "target": target, "confidence": confidence, "state": "decided", "digest": "sha256:00",
                "decision": decision, "facts": facts})));
        match decision.outcome {
            Outcome::Execute => {
                batch = batch.event(
                    Event::new(EventType::ExecutionSucceeded, Actor::system("executor"))
                        .task(&task_id)
                        .request(&id)
                        .action(*action)
                        .data(json!({"execution_id": format!("exe_{i}"), "target": target, "tool_status": 200})),
                );
            }
            Outcome::RequireApproval => {
                let approval = format!("apr_{i:012}");
                let roles = decision.approval.as_ref().map(|a| a.roles.clone()).unwrap_or_default();
                batch = batch
                    .event(ev(EventType::ApprovalRequested).data(json!({"approval": approval, "target": target,
                        "roles": roles, "quorum": 1, "folded": false})))
                    .event(
                        Event::new(EventType::ApprovalGranted, Actor::user(["ana", "ian", "olga"][(i % 3) as usize]))
                            .task(&task_id)
                            .request(&id)
                            .action(*action)
                            .data(json!({"approval": approval, "state": "approved", "role": roles.first()})),
                    );
            }
            _ => {}
        }
        if batch.events.len() >= 1000 {
            ledger.commit(std::mem::take(&mut batch)).unwrap();
        }
        if i % 100_000 == 0 && i > 0 {
            eprint!("\rbuilt {i}/{requests} requests");
        }
    }
    if !batch.events.is_empty() {
        ledger.commit(batch).unwrap();
    }
    eprintln!();
    let size = ledger.store().size().unwrap();
    println!(
        "built {requests} requests ({size} entries: deny {}, advise {}, require_approval {}, execute {}) in {:.1} s at {}",
        outcomes[0],
        outcomes[1],
        outcomes[2],
        outcomes[3],
        started.elapsed().as_secs_f64(),
        dir.display()
    );
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    match args.first().map(String::as_str) {
        Some("build") => {
            let dir = Path::new(args.get(1).expect("build DIR [REQUESTS]"));
            build(dir, args.get(2).and_then(|s| s.parse().ok()).unwrap_or(1_000_000));
        }
        _ => eprintln!("usage: cargo bench -p warden --bench reports -- build DIR [REQUESTS]"),
    }
}
