//! The OCSF export of every exported entry type, against a golden file that
//! `tests/ocsf/check.py` validates with the published OCSF 1.8.0 schema. Regenerate with
//! `WARDEN_UPDATE_FIXTURES=1 cargo test -p warden-core ocsf`.

use std::path::Path;

use serde_json::{Value, json};
use time::macros::datetime;
use warden_core::audit::entry::{Actor, Entry, Event, EventType};
use warden_core::audit::ocsf::{Product, event};

fn samples() -> Vec<Event> {
    let agent = Actor::agent("spiffe://acme.example/soc/edr-responder");
    let decision = |outcome: &str, policies: Value| {
        Event::new(EventType::DecisionMade, agent.clone()).task("INC-7").request("req_1").action("host.isolate").data(
            json!({"target": "host:web-42", "confidence": 0.93, "decision": {"outcome": outcome,
                "granted_level": 3, "effective_level": 3, "band": "autonomous", "caps": [],
                "policies": policies, "bundle_version": "5b1e", "review": false}}),
        )
    };
    let policies = json!([{"id": "edr-responder.host.isolate", "owner": "soc-leads", "file": "agents/edr.toml"}]);
    let execution = |kind, category: &str, id: &str| {
        Event::new(kind, agent.clone())
            .task("INC-7")
            .request("req_1")
            .action("host.isolate")
            .data(json!({"category": category, "execution_id": id, "target": "host:web-42"}))
    };
    vec![
        Event::new(EventType::ActionRequested, agent.clone())
            .task("INC-7")
            .request("req_1")
            .action("host.isolate")
            .data(
                json!({"target": "host:web-42", "confidence": 0.93, "rationale": "beaconing", "source_ip": "127.0.0.1",
                "params": {}, "evidence": [{"kind": "alert", "ref": "ALERT-1"}], "idempotency_key": "k1"}),
            ),
        decision("execute", policies.clone()),
        decision("deny", json!([])),
        decision("advise", policies.clone()),
        decision("require_approval", policies),
        execution(EventType::ExecutionSucceeded, "containment", "exe_1"),
        execution(EventType::ExecutionFailed, "identity", "exe_2"),
        execution(EventType::ExecutionUnknown, "enrichment", "exe_3"),
        execution(EventType::ExecutionSucceeded, "ticketing", "exe_4"),
        execution(EventType::ExecutionSucceeded, "secrets", "exe_5"),
        Event::new(EventType::RollbackSucceeded, Actor::user("alice"))
            .task("INC-7")
            .request("req_1")
            .action("host.isolate"),
        Event::new(EventType::RollbackFailed, Actor::system("warden")).request("req_2"),
    ]
}

#[test]
fn ocsf_events_match_the_golden_file() {
    let product = Product { version: "0.1.0".into() };
    let mut out = String::new();
    for (seq, ev) in samples().into_iter().enumerate() {
        let bytes = ev.to_entry_bytes(seq as u64, datetime!(2026-11-23 06:00:00.250 UTC)).unwrap();
        let entry = Entry::parse(&bytes).unwrap();
        let ocsf = event(&entry, &product).expect("every sample is an exported type");
        out.push_str(&serde_json::to_string(&ocsf).unwrap());
        out.push('\n');
    }
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ocsf-events.jsonl");
    if std::env::var_os("WARDEN_UPDATE_FIXTURES").is_some() {
        std::fs::write(&golden, &out).unwrap();
    }
    let expected = std::fs::read_to_string(&golden).unwrap_or_default();
    assert_eq!(out, expected, "the OCSF mapping changed: regenerate the golden file and run tests/ocsf/check.py");
}
