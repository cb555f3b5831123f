//! Attacks on issue 27's core pieces: `warden policy simulate` replays requests from the log.
//! `request_of` re-parses each logged target; the replay is exact only if parsing a target's
//! canonical form gives that form back.

use warden_core::inventory::TargetRef;

/// Every single character (and `x` + it, and it + a combining mark) as a host id: the target the
/// server decided on, written to the log and parsed again by the replay, must be the same target.
// FINDING (fixed): `canonical_id` (crates/core/src/inventory.rs) is NFKC then lower case, which is not
// idempotent: `host:Ϊ́` (U+03AA U+0301) is decided by the server as `host:ΐ` (U+03CA U+0301,
// not in NFC), and that is what the log records; `simulate`'s `request_of` parses it again and
// NFKC composes it into `host:ΐ` (U+0390) — another target, looked up in the inventory under
// another key. The replay then decides on a target the server never decided on (and a forbid or
// an asset keyed on one spelling misses the other).
#[test]
fn a_logged_target_parses_back_to_itself() {
    let mut broken = Vec::new();
    for kind in ["host", "account", "mailbox", "user", "ip", "alert"] {
        for cp in 0x20u32..0x2100 {
            let Some(c) = char::from_u32(cp) else { continue };
            for id in [format!("{c}"), format!("a{c}"), format!("{c}\u{301}"), format!("{c}."), format!("{c}{c}")] {
                let Ok(first) = format!("{kind}:{id}").parse::<TargetRef>() else { continue };
                if first.check().is_err() {
                    continue; // refused before any decision
                }
                match first.to_string().parse::<TargetRef>() {
                    Ok(again) if again == first => {}
                    other => broken.push(format!("{kind}:{:?} -> {:?} -> {:?}", id, first.id, other.map(|t| t.id))),
                }
            }
        }
    }
    assert!(
        broken.is_empty(),
        "{} targets change when parsed again: {:?}",
        broken.len(),
        &broken[..broken.len().min(20)]
    );
}

/// A secret param a hand-written rule names is replayed on its commitment (the log holds no
/// secret): such a request is listed as inexact, with the param named, and one whose secret no
/// rule names is not.
#[test]
fn a_secret_a_rule_names_makes_its_replay_inexact() {
    use warden_core::audit::entry::{Actor, Entry, Event, EventType};
    use warden_core::report::{Filter, Window};
    use warden_core::request::{AgentStatus, DecisionInput};
    use warden_core::simulate::{AssetFacts, Counted, RecordedFacts, simulate};

    let edr = "spiffe://acme.example/soc/edr-responder";
    let secret = |files: &mut Vec<warden_core::SourceFile>, rule: &str| {
        // Without connectors.toml: no call binding to check, only the decision.
        files.retain(|f| f.path != "connectors.toml");
        let actions = files.iter_mut().find(|f| f.path == "actions.toml").unwrap();
        actions.text = actions.text.replacen(
            r#"params = [{ name = "reason", type = "string", required = true }]"#,
            r#"params = [{ name = "reason", type = "string", required = true, secret = true }]"#,
            1,
        );
        let cedar = files.iter_mut().find(|f| f.path == "cedar/containment.cedar").unwrap();
        cedar.text.push_str(rule);
        warden_core::Bundle::load(files).unwrap()
    };
    let named = "\n@id(\"wipe-reason\")\n@owner(\"team:x\")\nforbid (principal, action, resource) when { context has params && context.params has reason && context.params.reason == \"wipe\" };\n";
    let bundles = [secret(&mut crate::example_files(), named), secret(&mut crate::example_files(), "")];
    for (bundle, inexact) in bundles.iter().zip([1, 0]) {
        let request: warden_core::ActionRequest = serde_json::from_value(serde_json::json!({
            "task": "INC-1", "action": "host.isolate", "target": "host:web-01", "params": {"reason": "wipe"},
            "confidence": 0.95, "rationale": "r", "evidence": [{"kind": "edr", "ref": "e"}]}))
        .unwrap();
        let now = time::OffsetDateTime::now_utc();
        let facts = RecordedFacts {
            agent_status: AgentStatus::Active,
            task: None,
            budget: Default::default(),
            counted: Counted { executions: 10, distinct_targets: 5 },
            halts: Vec::new(),
            now,
            shadow: false,
            via: None,
            history_read: Vec::new(),
            asset: Some(AssetFacts::of(bundle, &request.target)),
        };
        let input = DecisionInput {
            agent: edr,
            agent_status: AgentStatus::Active,
            request: &request,
            task: None,
            budget: facts.budget,
            halts: &[],
            now,
            shadow: false,
            via: None,
        };
        let decision = warden_core::decide(bundle, &input);
        let shown = bundle.shown_params("host.isolate", &request.params);
        let entry = |seq, kind, data: serde_json::Value| Entry {
            seq,
            time: "2026-12-01T10:00:00.000Z".into(),
            event: Event::new(kind, Actor::agent(edr)).task("INC-1").request("act_1").action("host.isolate").data(data),
        };
        let log = vec![
            entry(
                0,
                EventType::ActionRequested,
                serde_json::json!({"target": "host:web-01", "params": shown,
                "confidence": 0.95, "rationale": "r", "evidence": [{"kind": "edr", "ref": "e"}]}),
            ),
            entry(1, EventType::DecisionMade, serde_json::json!({"decision": decision, "facts": facts})),
        ];
        let s = simulate(log, Window::default(), &Filter::default(), bundle);
        assert_eq!(s.replayed, 1);
        assert_eq!(s.inexact, inexact, "{:?}", s.inexact_listed);
        if inexact == 1 {
            assert!(s.inexact_listed[0].why.contains("secret param `reason`"), "{:?}", s.inexact_listed);
            // The rule read `wipe` and forbade it; the replay reads the commitment: not the same
            // decision, and the report says it cannot be.
            assert_eq!(s.same_bundle_differing, 1);
        }
    }
}
