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

/// `[data] allowed` is enforced: with a grant, an action reading a class the agent may not read
/// is denied (`data_not_allowed`, naming the class and where `[data] allowed` is); the grant is
/// reported as one no request can use; without a grant, `no_grant` still says why.
#[test]
fn an_action_reading_data_the_agent_may_not_read_is_denied() {
    let quarantine = scenario(
        r#"agent = "spiffe://acme.example/soc/phish-triage"
        action = "email.quarantine"
        target = "mailbox:jdoe@acme.example"
        confidence = 0.95
        params = { message_id = "<a1@evil.example>" }
        evidence = [{ kind = "email", ref = "msg:a1" }]
        task = { id = "INC-1", severity = "high", source = "phish-report", verified = true }"#,
    );
    assert_eq!(quarantine.decide(example_bundle()).outcome.as_str(), "execute");
    let bundle = edited("agents/phish-triage.toml", |t| t.replace("\"email.headers\", ", ""));
    let d = quarantine.decide(&bundle);
    assert_eq!((d.outcome.as_str(), d.effective_level, d.granted_level), ("deny", 0, 3), "{d:?}");
    assert_eq!(d.caps.len(), 1, "{d:?}");
    assert_eq!(d.caps[0].code.as_str(), "data_not_allowed");
    assert!(
        d.caps[0].reason.contains("`email.headers`") && d.caps[0].reason.contains("agents/phish-triage.toml:13"),
        "{}",
        d.caps[0].reason
    );
    let warned: Vec<String> = bundle.warnings().iter().map(ToString::to_string).collect();
    assert_eq!(warned.len(), 3, "{warned:?}");
    assert!(warned.iter().all(|w| w.contains("can never be used") && w.contains("`email.headers`")), "{warned:?}");
    for action in ["email.quarantine", "email.release", "email.fetch"] {
        assert!(warned.iter().any(|w| w.contains(action)), "{action}: {warned:?}");
    }
    assert!(example_bundle().warnings().is_empty(), "{:?}", example_bundle().warnings());
    // No `[data] allowed` at all: nothing may be read.
    let bundle = edited("agents/phish-triage.toml", |t| {
        t.replace(
            "allowed = [\"email.headers\", \"email.body\", \"url.reputation\", \"attachment.hash\", \"idp.signin_logs\"]",
            "",
        )
    });
    let d = quarantine.decide(&bundle);
    assert!(d.caps[0].reason.contains("which has no `[data] allowed`"), "{d:?}");
    // Without a grant, the missing grant (or what forbids it) is what is said.
    let block = scenario(
        r#"agent = "spiffe://acme.example/soc/phish-triage"
        action = "ip.block"
        target = "ip:203.0.113.9"
        confidence = 0.95
        params = { reason = "c2" }
        evidence = [{ kind = "email", ref = "msg:a1" }]"#,
    );
    let d = block.decide(example_bundle());
    assert_eq!(d.granted_level, 0, "{d:?}");
    assert!(!d.caps.iter().any(|c| c.code.as_str() == "data_not_allowed"), "{d:?}");
}

/// An upstream MCP tool's own `reads` count for calls through it, not for the same action
/// asked through `/v1`; its result label joins its action class's.
#[test]
fn an_upstream_tools_labels_count_for_calls_through_it() {
    let bundle = edited("mcp.toml", |t| {
        t.replacen(
            "action = \"host.isolate\"",
            "action = \"host.isolate\"\nreads = [\"edr.telemetry\"]\nresult = { confidentiality = \"confidential\" }",
            1,
        )
    });
    let tool = bundle.mcp().by_name("lab-edr.isolate_host").unwrap();
    assert_eq!(tool.reads, ["edr.telemetry"]);
    assert_eq!(tool.result.confidentiality, warden_core::catalog::Confidentiality::Confidential);
    let enrich = bundle.catalog().get("alert.enrich").unwrap();
    assert_eq!(enrich.result.integrity, warden_core::catalog::Integrity::Trusted, "the default");
    // phish-triage may isolate (level 2) but not read EDR telemetry: through the tool, denied.
    let isolate = scenario(
        r#"agent = "spiffe://acme.example/soc/phish-triage"
        action = "host.isolate"
        target = "host:web-42"
        confidence = 0.95
        params = { reason = "beacon" }
        evidence = [{ kind = "email", ref = "msg:a1" }]
        task = { id = "INC-1", severity = "high", source = "phish-report", verified = true }"#,
    );
    let direct = isolate.decide(&bundle);
    assert_eq!(direct.outcome.as_str(), "require_approval", "{direct:?}");
    let request = isolate.request();
    let input = warden_core::request::DecisionInput {
        agent: &isolate.agent,
        agent_status: warden_core::request::AgentStatus::Active,
        request: &request,
        task: isolate.task.as_ref(),
        budget: Default::default(),
        halts: &[],
        now: time::macros::datetime!(2026-01-07 10:00 UTC),
        shadow: false,
        via: Some("lab-edr/isolate_host"),
    };
    let through = warden_core::decide(&bundle, &input);
    assert_eq!(through.outcome.as_str(), "deny", "{through:?}");
    assert!(through.caps[0].reason.contains("through `lab-edr/isolate_host` reads `edr.telemetry`"), "{through:?}");
    assert!(bundle.warnings().iter().any(|w| w.message.contains("through upstream tool `lab-edr.isolate_host`")));
}

/// Taint (DESIGN §14): after untrusted input, phish-triage's containment goes to a human
/// (`[data] after_untrusted`), and the cap says what was taken in; a task without taint
/// decides as before; ticketing (not covered) is untouched. After confidential data, an
/// `egress` action needs a human.
#[test]
fn taint_lowers_autonomy_and_says_why() {
    let quarantine = |task_extra: &str, inputs: &str| {
        scenario(&format!(
            r#"agent = "spiffe://acme.example/soc/phish-triage"
            action = "email.quarantine"
            target = "mailbox:jdoe@acme.example"
            confidence = 0.95
            params = {{ message_id = "<a1@evil.example>" }}
            evidence = [{{ kind = "email", ref = "msg:a1" }}]
            {inputs}
            task = {{ id = "INC-1", severity = "high", source = "phish-report", verified = true {task_extra} }}"#
        ))
        .decide(example_bundle())
    };
    let clean = quarantine("", "");
    assert_eq!(clean.outcome.as_str(), "execute", "{clean:?}");
    let mark =
        r#", taint = [{ label = "untrusted", source = "the body of message m-77", request = "act_1", by = "warden" }]"#;
    let tainted = quarantine(mark, "");
    assert_eq!((tainted.outcome.as_str(), tainted.effective_level), ("require_approval", 2), "{tainted:?}");
    let cap = tainted.caps.iter().find(|c| c.code.as_str() == "untrusted_input").expect("the cap");
    assert!(cap.reason.contains("the body of message m-77 (warden, act_1)"), "{}", cap.reason);
    // Declared by the request itself: the same.
    let declared = quarantine("", r#"inputs = [{ label = "untrusted", source = "https://evil.example/login" }]"#);
    assert_eq!(declared.outcome.as_str(), "require_approval", "{declared:?}");
    assert!(declared.caps.iter().any(|c| c.reason.contains("https://evil.example/login (agent)")), "{declared:?}");
    // Confidential data is not untrusted input: containment stays autonomous.
    let confidential = quarantine(&mark.replace("untrusted", "confidential"), "");
    assert_eq!(confidential.outcome.as_str(), "execute", "{confidential:?}");

    // An action that sends data outside, after confidential data: a human decides.
    let bundle =
        edited("actions.toml", |t| t.replacen("tool = \"ticketing\"\n", "tool = \"ticketing\"\negress = true\n", 1));
    let ticket = |extra: &str| {
        scenario(&format!(
            r#"agent = "spiffe://acme.example/soc/phish-triage"
            action = "ticket.create"
            target = "ticket:CASE-7"
            confidence = 0.95
            params = {{ title = "wave" }}
            evidence = [{{ kind = "email", ref = "msg:a1" }}]
            task = {{ id = "INC-2", severity = "high", source = "siem", verified = true {extra} }}"#
        ))
        .decide(&bundle)
    };
    assert_eq!(ticket("").outcome.as_str(), "execute");
    // Untrusted input alone: ticketing is not in `after_untrusted`'s categories.
    assert_eq!(ticket(mark).outcome.as_str(), "execute");
    let d = ticket(&mark.replace("untrusted", "confidential"));
    assert_eq!(d.outcome.as_str(), "require_approval", "{d:?}");
    assert!(d.caps.iter().any(|c| c.code.as_str() == "confidential_egress"), "{d:?}");
}

/// `context.task.history` (DESIGN §14): the example's sequence rule forbids the phishing agent's
/// account disable until an alert was enriched in the task, and counts are what Cedar reads. A
/// class the catalog no longer has (a reload took it away) is left out, never an evaluation
/// error; an empty history is an empty record, not a missing one.
#[test]
fn the_task_history_is_what_sequence_rules_read() {
    let disable = |history: &str, bundle: &warden_core::Bundle| {
        scenario(&format!(
            r#"agent = "spiffe://acme.example/soc/phish-triage"
            action = "account.disable"
            target = "account:cfo"
            confidence = 0.95
            params = {{ reason = "credential phishing" }}
            evidence = [{{ kind = "email", ref = "msg:m-77" }}]
            task = {{ id = "INC-1", severity = "high", source = "email-gateway", verified = true, history = {{ {history} }} }}"#
        ))
        .decide(bundle)
    };
    let b = example_bundle();
    let none = disable("", b);
    assert_eq!((none.outcome.as_str(), none.caps[0].code.as_str()), ("deny", "forbidden"), "{none:?}");
    assert!(none.caps[0].reason.contains("phish-disable-after-enrichment"), "{none:?}");
    let done = disable(r#""alert.enrich" = 1"#, b);
    assert_eq!(done.outcome.as_str(), "execute", "{done:?}");
    // A class gone from the catalog is not shown to Cedar (the schema names no such attribute).
    let gone = disable(r#""alert.enrich" = 1, "gone.class" = 4"#, b);
    assert_eq!(gone, done);
    // Counts: a rule may ask for more than one.
    let bundle = edited("cedar/containment.cedar", |t| {
        t.replace(
            "unless { context.task.history has \"alert.enrich\" }",
            "unless { context.task.history has \"alert.enrich\" && context.task.history[\"alert.enrich\"] >= 2 }",
        )
    });
    assert_eq!(disable(r#""alert.enrich" = 1"#, &bundle).outcome.as_str(), "deny");
    assert_eq!(disable(r#""alert.enrich" = 2"#, &bundle).outcome.as_str(), "execute");
}
