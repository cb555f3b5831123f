//! Second round of attacks on issue 27's fixes (core side): `simulate`'s `secret_read` and the
//! bundle's check that a connector sends every param a Cedar rule reads.

use warden_core::SourceFile;

/// The example bundle with `host.isolate`'s `reason` a secret, no connectors.toml, and `rule`
/// appended to the hand-written containment rules.
pub(crate) fn secret_bundle(rule: &str) -> warden_core::Bundle {
    let mut files = crate::example_files();
    files.retain(|f| f.path != "connectors.toml");
    let actions = files.iter_mut().find(|f| f.path == "actions.toml").unwrap();
    actions.text = actions.text.replacen(
        r#"params = [{ name = "reason", type = "string", required = true }]"#,
        r#"params = [{ name = "reason", type = "string", required = true, secret = true }]"#,
        1,
    );
    let cedar = files.iter_mut().find(|f| f.path == "cedar/containment.cedar").unwrap();
    cedar.text.push_str(rule);
    warden_core::Bundle::load(&files).unwrap()
}

/// Logs one request decided live under `bundle`, replays it under the same bundle, and returns
/// the simulation.
pub(crate) fn replay_one(bundle: &warden_core::Bundle) -> (warden_core::Decision, warden_core::simulate::Simulation) {
    use warden_core::audit::entry::{Actor, Entry, Event, EventType};
    use warden_core::report::{Filter, Window};
    use warden_core::request::{AgentStatus, DecisionInput};
    use warden_core::simulate::{AssetFacts, Counted, RecordedFacts, simulate};
    let edr = "spiffe://acme.example/soc/edr-responder";
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
    (decision.clone(), simulate(log, Window::default(), &Filter::default(), bundle))
}

// FINDING (fixed): `secret_read` (crates/core/src/simulate.rs) is a substring search for the param's
// name in the `.cedar` text, but Cedar reads a record by a string literal too, and a string
// literal may spell the name with escapes: `context.params["reas\u{6f}n"]` reads `reason` and
// its text never contains `reason`. The rule forbade the live request (it read `wipe`); the
// replay reads the commitment instead, decides otherwise, and the replay is NOT listed as
// inexact — `policy simulate` reports a confident change it cannot know.
#[test]
fn a_secret_read_through_an_escaped_index_is_still_inexact() {
    for (label, rule) in [
        (
            "index with \\u escape",
            "\n@id(\"w-esc\")\n@owner(\"team:x\")\nforbid (principal, action, resource) when { context.params has \"reas\\u{6f}n\" && context.params[\"reas\\u{6f}n\"] == \"wipe\" };\n",
        ),
        (
            "index with \\u escape on every letter",
            "\n@id(\"w-esc2\")\n@owner(\"team:x\")\nforbid (principal, action, resource) when { context.params has \"\\u{72}\\u{65}\\u{61}\\u{73}\\u{6f}\\u{6e}\" && context.params[\"\\u{72}\\u{65}\\u{61}\\u{73}\\u{6f}\\u{6e}\"] like \"w*\" };\n",
        ),
    ] {
        let bundle = secret_bundle(rule);
        let (decision, s) = replay_one(&bundle);
        assert_eq!(decision.outcome, warden_core::Outcome::Deny, "{label}: the rule forbade the live request");
        assert_eq!(s.replayed, 1);
        assert_eq!(s.same_bundle_differing, 1, "{label}: the replay read the commitment");
        assert_eq!(s.inexact, 1, "{label}: a rule reads secret `reason`, replay not marked inexact");
    }
}

// HELD: the plain spellings (`context.params.reason`, `context.params["reason"]`,
// `has reason`) are found by the text match.
#[test]
fn a_secret_read_by_plain_spellings_is_inexact() {
    for rule in [
        "\n@id(\"w1\")\n@owner(\"team:x\")\nforbid (principal, action, resource) when { context.params has \"reason\" && context.params[\"reason\"] == \"wipe\" };\n",
        "\n@id(\"w2\")\n@owner(\"team:x\")\nforbid (principal, action, resource) when { context.params has reason && context.params.reason like \"wi*\" };\n",
    ] {
        let (_, s) = replay_one(&secret_bundle(rule));
        assert_eq!(s.inexact, 1, "{rule}");
    }
}

/// The example bundle with `host.isolate` gaining an optional integer `minutes` its connector
/// call does not send, and `rule` appended to the Cedar rules.
fn minutes_bundle(rule: &str) -> Result<warden_core::Bundle, warden_core::bundle::BundleError> {
    let mut files: Vec<SourceFile> = crate::example_files();
    let actions = files.iter_mut().find(|f| f.path == "actions.toml").unwrap();
    actions.text = actions.text.replacen(
        r#"params = [{ name = "reason", type = "string", required = true }]"#,
        r#"params = [{ name = "reason", type = "string", required = true }, { name = "minutes", type = "integer" }]"#,
        1,
    );
    let cedar = files.iter_mut().find(|f| f.path == "cedar/containment.cedar").unwrap();
    cedar.text.push_str(rule);
    warden_core::Bundle::load(&files)
}

// FINDING (fixed): `binding::params_read` (crates/core/src/binding.rs) finds the params a rule reads
// only as `context.params.NAME` and `context.params has NAME`; a rule reading
// `context.params["minutes"]` (or `has "minutes"`) is not seen, so a connector that never
// sends `minutes` loads: the tool runs with its own default while policy decided on the
// agent's value ("what runs must be what was decided on", docs in connectors.toml).
#[test]
fn a_param_read_by_index_must_be_sent_by_the_connector() {
    // Control: the dotted spelling is refused.
    let dotted = minutes_bundle(
        "\n@id(\"m1\")\n@owner(\"team:x\")\nforbid (principal, action, resource) when { context.params has minutes && context.params.minutes > 60 };\n",
    );
    assert!(dotted.is_err(), "dotted read of an unsent param is refused");
    let indexed = minutes_bundle(
        "\n@id(\"m2\")\n@owner(\"team:x\")\nforbid (principal, action, resource) when { context.params has \"minutes\" && context.params[\"minutes\"] > 60 };\n",
    );
    assert!(indexed.is_err(), "an indexed read of a param the connector does not send loaded");
}
