//! The example bundle: its own test cases pass, and its decisions are pinned by snapshots.

use serde_json::json;
use warden_core::policy_test::{parse_cases, run_case};

use crate::{example_bundle, example_files};

fn all_cases() -> Vec<warden_core::policy_test::Case> {
    example_files().iter().filter(|f| f.path.starts_with("tests/")).flat_map(|f| parse_cases(f).unwrap()).collect()
}

#[test]
fn every_example_policy_test_passes() {
    let cases = all_cases();
    assert!(cases.len() >= 40, "the example bundle needs at least 40 cases, has {}", cases.len());
    let failures: Vec<String> = cases
        .iter()
        .map(|c| run_case(example_bundle(), c))
        .filter(|r| !r.passed())
        .map(|r| format!("{}:{} {}: {:?}", r.case.file, r.case.line, r.case.scenario.name, r.failures))
        .collect();
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn the_example_tests_cover_every_outcome_band_and_cap() {
    use std::collections::BTreeSet;
    let decisions: Vec<_> = all_cases().iter().map(|c| c.scenario.decide(example_bundle())).collect();
    let outcomes: BTreeSet<_> = decisions.iter().map(|d| d.outcome.as_str()).collect();
    let bands: BTreeSet<_> = decisions.iter().map(|d| d.band.as_str()).collect();
    let caps: BTreeSet<_> = decisions.iter().flat_map(|d| d.caps.iter().map(|c| c.code.as_str())).collect();
    assert_eq!(outcomes.len(), 4, "{outcomes:?}");
    assert_eq!(bands.len(), 3, "{bands:?}");
    let all_caps = [
        "unknown_agent",
        "unknown_action",
        "invalid_request",
        "agent_inactive",
        "halted",
        "task_closed",
        "out_of_scope",
        "evaluation_error",
        "forbidden",
        "no_grant",
        "confidence_below_escalate",
        "confidence_below_autonomous",
        "irreversible",
        "tier0_target",
        "privileged_target",
        "step_up",
        "breaker_open",
        "budget_exceeded",
        "distinct_targets_exceeded",
        "shadow_mode",
    ];
    let missing: Vec<_> = all_caps.iter().filter(|c| !caps.contains(*c)).collect();
    assert!(missing.is_empty(), "caps no example test reaches: {missing:?}");
}

#[test]
fn decisions_of_the_example_bundle() {
    let cases = all_cases();
    let snapshot: Vec<_> = cases
        .iter()
        .map(|c| json!({"case": format!("{}:{} {}", c.file, c.line, c.scenario.name), "decision": c.scenario.decide(example_bundle())}))
        .collect();
    insta::assert_json_snapshot!(snapshot, {"[].decision.bundle_version" => "[bundle_version]"});
}

#[test]
fn generated_cedar_schema() {
    insta::assert_snapshot!(example_bundle().cedar_schema());
}

#[test]
fn compiled_guardrail_policies() {
    let text = example_bundle().cedar_policies();
    let start = text.find("// edr-responder").expect("edr-responder section");
    let end = text[start + 1..].find("\n// ").map_or(text.len(), |e| start + 1 + e);
    let edr = &text[start..end];
    insta::assert_snapshot!(edr);
}

#[test]
fn remembered_target_facts_change_no_answer() {
    let cases = all_cases();
    let first: Vec<_> = cases.iter().map(|c| c.scenario.decide(example_bundle())).collect();
    let warm: Vec<_> = cases.iter().map(|c| c.scenario.decide(example_bundle())).collect();
    example_bundle().clear_memo();
    let cold: Vec<_> = cases.iter().map(|c| c.scenario.decide(example_bundle())).collect();
    assert_eq!(first, warm);
    assert_eq!(first, cold);
}

/// The example bundle with one file edited.
fn edited(path: &str, edit: impl Fn(&str) -> String) -> warden_core::Bundle {
    let files: Vec<_> = example_files()
        .into_iter()
        .map(|f| if f.path == path { warden_core::SourceFile::new(f.path.clone(), edit(&f.text)) } else { f })
        .collect();
    warden_core::Bundle::load(&files).expect("the edited bundle is valid")
}

fn scenario(toml_text: &str) -> warden_core::policy_test::Scenario {
    toml::from_str(toml_text).unwrap()
}

#[test]
fn only_a_verified_severity_unlocks_the_critical_ticket_rule() {
    // Without the scope on task sources, the Cedar rule itself must tell verified from not.
    let bundle = edited("agents/phish-triage.toml", |t| t.replace("task_sources = [", "# task_sources = ["));
    let case = |verified: bool| {
        scenario(&format!(
            r#"agent = "spiffe://acme.example/soc/phish-triage"
            action = "ticket.create"
            target = "ticket:CASE-7"
            confidence = 0.95
            params = {{ title = "wave" }}
            evidence = [{{ kind = "email", ref = "msg:a1" }}]
            task = {{ id = "INC-2", severity = "critical", source = "siem", verified = {verified} }}"#
        ))
        .decide(&bundle)
    };
    let (claimed, verified) = (case(false), case(true));
    assert_eq!((claimed.granted_level, verified.granted_level), (3, 4), "{claimed:?}");
}

#[test]
fn allow_privileged_on_a_level_three_grant_decides_privileged_targets() {
    let quarantine_cfo = r#"agent = "spiffe://acme.example/soc/phish-triage"
        action = "email.quarantine"
        target = "mailbox:cfo@acme.example"
        confidence = 0.95
        params = { message_id = "<a1@evil.example>" }
        evidence = [{ kind = "email", ref = "msg:a1" }]
        task = { id = "INC-1", severity = "high", source = "phish-report", verified = true }"#;
    let with = |allow: &str| {
        let b = edited("agents/phish-triage.toml", |t| {
            t.replace(
                "action = \"email.quarantine\"\nlevel = 3",
                &format!("action = \"email.quarantine\"\nlevel = 3\nallow_privileged = {allow}"),
            )
        });
        scenario(quarantine_cfo).decide(&b)
    };
    let allowed = with("true");
    assert_eq!((allowed.outcome.as_str(), allowed.effective_level), ("execute", 3), "{allowed:?}");
    let refused = with("false");
    // `false` removes privileged targets from the grant altogether.
    assert_eq!((refused.outcome.as_str(), refused.granted_level), ("deny", 0), "{refused:?}");
    let default = scenario(quarantine_cfo).decide(example_bundle());
    assert_eq!(default.effective_level, 2);
    assert!(default.caps.iter().any(|c| c.code.as_str() == "privileged_target"), "{default:?}");
}

#[test]
fn a_halt_that_names_nothing_is_refused_in_a_fixture() {
    for scope in ["agent", "action"] {
        let text = format!(
            "[[case]]\nname = \"x\"\nagent = \"a\"\naction = \"b\"\ntarget = \"host:h\"\nconfidence = 0.9\n\
             halts = [{{ scope = \"{scope}\", reason = \"stop\" }}]\nexpect = {{ outcome = \"deny\" }}\n"
        );
        let problems = parse_cases(&warden_core::SourceFile::new("tests/x.toml", text)).unwrap_err();
        assert!(problems[0].message.contains("need an `id`"), "{problems:?}");
    }
    let text = "[[case]]\nname = \"x\"\nagent = \"a\"\naction = \"b\"\ntarget = \"host:h\"\nconfidence = 1.5\n\
                expect = { outcome = \"deny\" }\n";
    let problems = parse_cases(&warden_core::SourceFile::new("tests/x.toml", text)).unwrap_err();
    assert!(problems[0].message.contains("between 0 and 1"), "{problems:?}");
}
