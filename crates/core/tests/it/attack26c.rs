//! Issue 26 (data boundaries), attacked again (helper 26c): what a hand-written rule reads of
//! `context.task.history` must be seen by the decision however the rule spells the access or
//! the scope — or the rule is refused at load. A failing test is a finding.

use warden_core::Outcome;

use crate::attack26b::{PHISH, disable, with_rule};

fn forbid(scope: &str, condition: &str) -> String {
    format!("@id(\"attack26c-rule\")\n@owner(\"team:iam\")\nforbid (\n  {scope}\n)\nwhen {{ {condition} }};")
}

const DISABLE_SCOPE: &str = "principal == Warden::Agent::\"spiffe://acme.example/soc/phish-triage\",\n  action == Warden::Action::\"account.disable\",\n  resource";

/// Control: with no extra rule the disable executes; the plain forbid denies.
#[test]
fn attack26c_control() {
    assert_eq!(disable(&with_rule("").unwrap()).outcome, Outcome::Execute);
    let b = with_rule(&forbid(DISABLE_SCOPE, "context.task.history has \"email.fetch\"")).unwrap();
    assert_eq!(disable(&b).outcome, Outcome::Deny);
}

/// Other spellings of the access (`["…"]` indexing, `has` chains, `||`, `unless`): each either
/// loads and fires, or is refused.
#[test]
fn attack26c_other_access_spellings_are_seen() {
    let mut missed = Vec::new();
    for condition in [
        "context[\"task\"][\"history\"] has \"email.fetch\"",
        "context.task[\"history\"] has \"email.fetch\"",
        "context[\"task\"].history has \"email.fetch\"",
        "context has task && context.task has history && context.task.history has \"email.fetch\"",
        "context.task.history has \"email.fetch\" && context[\"task\"][\"history\"][\"email.fetch\"] >= 1",
        "!(context.task.history has \"email.fetch\") == false",
        "(context.task.history has \"email.fetch\") in [true]",
        "[context.task.history has \"email.fetch\"].contains(true)",
        "{\"x\": context.task.history has \"email.fetch\"}.x",
        "(if context.task.history has \"email.fetch\" then true else false)",
        "context.task.history has \"email.fetch\" || context.task.history has \"alert.enrich\"",
    ] {
        match with_rule(&forbid(DISABLE_SCOPE, condition)) {
            Ok(b) => {
                let d = disable(&b);
                if d.outcome != Outcome::Deny {
                    missed.push(format!("{condition} → {}", d.outcome));
                }
            }
            Err(_) => continue,
        }
    }
    assert!(missed.is_empty(), "a forbid reading the history never fired: {missed:#?}");
}

/// Other spellings of the scope: the action named in a list, by its category, by `is`, or only
/// in the condition. The history classes must be shown for every action the rule may decide.
#[test]
fn attack26c_other_scope_spellings_are_seen() {
    let p = "principal == Warden::Agent::\"spiffe://acme.example/soc/phish-triage\"";
    let mut missed = Vec::new();
    for (scope, extra) in [
        (format!("{p}, action in [Warden::Action::\"account.disable\"], resource"), ""),
        (format!("{p}, action in Warden::Action::\"identity\", resource"), ""),
        (format!("{p}, action in [Warden::Action::\"identity\", Warden::Action::\"email.fetch\"], resource"), ""),
        (format!("{p}, action, resource"), "action == Warden::Action::\"account.disable\" && "),
        (format!("{p}, action is Warden::Action, resource"), ""),
        ("principal is Warden::Agent, action, resource is Warden::Account".to_string(), ""),
        (format!("principal in Warden::Agent::\"{PHISH}\", action, resource"), ""),
        (format!("{p}, action, resource"), "action in [Warden::Action::\"identity\"] && "),
    ] {
        let condition = format!("{extra}context.task.history has \"email.fetch\"");
        match with_rule(&forbid(&scope, &condition)) {
            Ok(b) => {
                let d = disable(&b);
                if d.outcome != Outcome::Deny {
                    missed.push(format!("{scope} / {condition} → {}", d.outcome));
                }
            }
            Err(e) => eprintln!("refused: {scope}: {e:?}"),
        }
    }
    assert!(missed.is_empty(), "a forbid reading the history never fired: {missed:#?}");
}

/// A misspelt class is refused however it is spelt (indexing, a `has` chain).
#[test]
fn attack26c_a_misspelt_class_is_refused_however_spelt() {
    let mut loaded = Vec::new();
    for condition in [
        "context[\"task\"][\"history\"] has \"emial.fetch\"",
        "context.task[\"history\"] has \"emial.fetch\"",
        "context.task.history has \"email.fetch\" && context.task.history has \"Email.Fetch\"",
    ] {
        if with_rule(&forbid(DISABLE_SCOPE, condition)).is_ok() {
            loaded.push(condition);
        }
    }
    assert!(loaded.is_empty(), "loaded with a class not in the catalog: {loaded:?}");
}

/// The loader survives a long rule over the history (no stack overflow in the history walk
/// where Cedar itself parses the rule).
#[test]
fn attack26c_a_long_history_rule_does_not_crash_the_loader() {
    let handle = std::thread::Builder::new()
        .stack_size(2 * 1024 * 1024)
        .spawn(|| {
            let clause = "context.task.history has \"email.fetch\"";
            let condition = vec![clause; 400].join(" && ");
            let started = std::time::Instant::now();
            let r = with_rule(&forbid(DISABLE_SCOPE, &condition));
            (r.is_ok(), started.elapsed())
        })
        .unwrap();
    let (ok, took) = handle.join().expect("the loader panicked");
    assert!(took < std::time::Duration::from_secs(20), "loading took {took:?} (ok: {ok})");
}
