//! Issue 26 (data boundaries), attacked again (helper 26b): what a hand-written rule reads of
//! `context.task.history` must be seen by the decision, however the rule reaches the record.

use warden_core::request::{ActionRequest, AgentStatus, BudgetUsage, DecisionInput, TaskInfo, TaskState};
use warden_core::{Bundle, Outcome, decide};

use crate::example_files;

pub(crate) const PHISH: &str = "spiffe://acme.example/soc/phish-triage";

/// The example bundle with one more rule in `cedar/containment.cedar`.
pub(crate) fn with_rule(rule: &str) -> Result<Bundle, Vec<warden_core::Problem>> {
    let mut files = example_files();
    let f = files.iter_mut().find(|f| f.path == "cedar/containment.cedar").unwrap();
    f.text.push('\n');
    f.text.push_str(rule);
    f.text.push('\n');
    Bundle::load(&files).map_err(|e| e.problems)
}

fn forbid_when(condition: &str) -> String {
    format!(
        "@id(\"no-disable-after-reading-mail\")\n@owner(\"team:iam\")\nforbid (\n  principal == \
         Warden::Agent::\"{PHISH}\",\n  action == Warden::Action::\"account.disable\",\n  resource\n)\nwhen {{ \
         {condition} }};"
    )
}

/// phish-triage disabling an account in a verified phishing task where the alert has been
/// enriched and `email.fetch` has run (no taint, so nothing else lowers it).
pub(crate) fn disable(bundle: &Bundle) -> warden_core::Decision {
    let req: ActionRequest = serde_json::from_value(serde_json::json!({
        "task": "INC-1", "action": "account.disable", "target": "account:jdoe",
        "params": {"reason": "phished"}, "confidence": 0.97, "rationale": "phished",
        "evidence": [{"kind": "mail", "ref": "m-1"}]
    }))
    .unwrap();
    let task = TaskInfo {
        id: "INC-1".into(),
        state: TaskState::Open,
        severity: "high".into(),
        source: "phish-report".into(),
        verified: true,
        agents: Vec::new(),
        taint: Vec::new(),
        history: [("alert.enrich".to_string(), 1), ("email.fetch".to_string(), 1)].into_iter().collect(),
    };
    // A Monday at 03:00 UTC, outside every time window.
    let now = time::macros::datetime!(2026-11-23 03:00 UTC);
    let input = DecisionInput {
        agent: PHISH,
        agent_status: AgentStatus::Active,
        request: &req,
        task: Some(&task),
        budget: BudgetUsage::default(),
        halts: &[],
        now,
        shadow: false,
        via: None,
    };
    decide(bundle, &input)
}

/// Control: without the extra rule the disable executes at level 4 (the verified-phishing
/// permit); with the rule written plainly, the forbid holds.
#[test]
fn attack26b_history_rule_control() {
    let plain = with_rule("").unwrap();
    assert_eq!(disable(&plain).outcome, Outcome::Execute, "{:?}", disable(&plain));
    let b = with_rule(&forbid_when("context.task.history has \"email.fetch\"")).unwrap();
    assert_eq!(disable(&b).outcome, Outcome::Deny, "{:?}", disable(&b));
}

/// A forbid that reaches the history record through a computed expression (an `if`, a record
/// literal) must still see the classes it names: otherwise the class is left out of what
/// Cedar is shown and the forbid silently never fires.
#[test]
fn attack26b_history_read_through_a_computed_expression_is_seen() {
    let mut missed = Vec::new();
    for condition in [
        "(if true then context.task else context.task).history has \"email.fetch\"",
        "{\"t\": context.task}.t.history has \"email.fetch\"",
        "(if context.task.verified then context.task.history else context.task.history) has \"email.fetch\"",
    ] {
        let b = match with_rule(&forbid_when(condition)) {
            Ok(b) => b,
            // Refusing such a rule at load is secure too.
            Err(_) => continue,
        };
        let d = disable(&b);
        if d.outcome != Outcome::Deny {
            missed.push(format!("{condition} → {} at level {}", d.outcome, d.effective_level));
        }
    }
    assert!(missed.is_empty(), "a forbid reading the history never fired: {missed:#?}");
}

/// A misspelt class read through a computed expression must be refused at load, as it is when
/// written plainly: it would silently never match.
#[test]
fn attack26b_a_misspelt_class_read_through_a_computed_expression_is_refused() {
    let plain = with_rule(&forbid_when("context.task.history has \"emial.fetch\""));
    assert!(plain.is_err(), "the plain misspelling loads");
    let computed = with_rule(&forbid_when("(if true then context.task else context.task).history has \"emial.fetch\""));
    assert!(computed.is_err(), "a misspelt history class read through `if` loads and can never match");
}

/// Held: odd uses of the history (the record whole, compared, in a set, `has` on a computed
/// expression, extended `has`, an empty or unknown class) either load or are refused — never a
/// panic — and a rule using the record whole sees every class.
#[test]
fn attack26b_odd_history_uses_never_panic() {
    for condition in [
        "context.task.history == context.task.history",
        "[context.task.history].contains(context.task.history)",
        "context.task.history has \"\"",
        "context.task.history has alert.enrich",
        "context has task.history",
        "context.task has history",
        "context.task.history.alert",
        "(if context.task.history has \"email.fetch\" then context.task else context.task).history has \"alert.enrich\"",
        "context.task.history has \"email.fetch\" && context.task.history[\"email.fetch\"] > 0",
    ] {
        let _ = with_rule(&forbid_when(condition));
    }
    // The record whole: every class is shown.
    if let Ok(b) = with_rule(&forbid_when(
        "context.task.history == context.task.history && context.task.history has \"email.fetch\"",
    )) {
        assert_eq!(disable(&b).outcome, Outcome::Deny);
    }
}
