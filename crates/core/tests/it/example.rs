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
