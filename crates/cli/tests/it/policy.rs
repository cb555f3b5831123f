use predicates::prelude::*;

use crate::{edit, example_copy, example_dir, warden};

#[test]
fn validate_accepts_the_example_bundle() {
    warden().args(["policy", "validate"]).arg(example_dir()).assert().success().stdout(
        predicate::str::is_match(r"^ok: sha256:[0-9a-f]{64} — 20 actions, 36 assets, 5 agents, 31 Cedar policies, 3 upstream MCP tools mapped\n$")
            .unwrap(),
    );
}

/// Each broken bundle named by the issue: exit 3, one `file:line: message` per problem.
#[test]
fn validate_locates_each_kind_of_problem() {
    let cases = [
        (
            // A connector whose call names a param where the decided target belongs (issue 23).
            "connectors.toml",
            "path = \"/edr/v1/hosts/{target.id}/contain\"",
            "path = \"/edr/v1/hosts/{params.reason}/contain\"",
            "connectors.toml:95: action `host.isolate`'s call does not carry the decided target",
        ),
        (
            "cedar/network.cedar",
            "if context.params has duration_minutes",
            "if context.params has duration_minutes &&&",
            "cedar/network.cedar:9: invalid token",
        ),
        (
            "agents/phish-triage.toml",
            "action = \"email.release\"",
            "action = \"email.relaese\"",
            "agents/phish-triage.toml:49: unknown action `email.relaese` (not in actions.toml)",
        ),
        (
            "agents/edr-responder.toml",
            "level = 3",
            "level = 7",
            "agents/edr-responder.toml:37: autonomy level must be 0 to 4, not 7",
        ),
        (
            "agents/phish-triage.toml",
            "autonomous = 0.90",
            "autonomous = 1.5",
            "agents/phish-triage.toml:20: threshold `autonomous` must be between 0 and 1, not 1.5",
        ),
        (
            "agents/network-guard.toml",
            "soc/network-guard",
            "soc/phish-triage",
            "agents/phish-triage.toml:4: duplicate agent id `spiffe://acme.example/soc/phish-triage` (also in agents/network-guard.toml)",
        ),
        (
            "actions.toml",
            "compensation = \"host.release\"",
            "compensation = \"host.relase\"",
            "actions.toml:157: compensation of `host.isolate` names a missing action `host.relase`",
        ),
        (
            "mcp.toml",
            "action = \"process.kill\"",
            "action = \"process.kil\"",
            "mcp.toml:31: action `process.kil` is not in actions.toml",
        ),
    ];
    for (file, from, to, expected) in cases {
        let dir = example_copy();
        edit(dir.path(), file, from, to);
        warden()
            .args(["policy", "validate"])
            .arg(dir.path())
            .assert()
            .code(3)
            .stdout("")
            .stderr(predicate::str::contains(expected));
    }
}

#[test]
fn validate_json_lists_problems() {
    let dir = example_copy();
    edit(dir.path(), "agents/edr-responder.toml", "level = 3", "level = 7");
    let out = warden()
        .args(["policy", "validate", "--output", "json"])
        .arg(dir.path())
        .assert()
        .code(3)
        .get_output()
        .stdout
        .clone();
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["valid"], false);
    assert_eq!(v["problems"][0]["file"], "agents/edr-responder.toml");
    assert_eq!(v["problems"][0]["line"], 37);
}

#[test]
fn a_missing_directory_is_a_failure_not_a_panic() {
    warden()
        .args(["policy", "validate", "/nonexistent/bundle"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("is not a directory"));
}

#[test]
fn test_runs_every_case_and_closes_with_a_count() {
    let out = warden().args(["policy", "test"]).arg(example_dir()).assert().success().get_output().stdout.clone();
    let text = String::from_utf8(out).unwrap();
    let last = text.lines().last().unwrap();
    let passed: usize = last.split(' ').next().unwrap().parse().unwrap();
    assert!(passed >= 40);
    assert_eq!(last, format!("{passed} passed, 0 failed"));
    assert_eq!(text.lines().filter(|l| l.starts_with("ok   tests/")).count(), passed);
}

#[test]
fn a_failing_case_exits_2_and_says_why() {
    let dir = example_copy();
    edit(
        dir.path(),
        "tests/edr-responder.toml",
        "expect = { outcome = \"execute\", granted_level = 3, effective_level = 3, caps = [], policies",
        "expect = { outcome = \"deny\", granted_level = 3, effective_level = 3, caps = [], policies",
    );
    warden()
        .args(["policy", "test", "--filter", "tier2 web server"])
        .arg(dir.path())
        .assert()
        .code(2)
        .stdout(predicate::str::contains("FAIL tests/edr-responder.toml:3 isolates a tier2 web server on its own\n       outcome: expected deny, got execute\n0 passed, 1 failed\n"));
}

#[test]
fn a_malformed_test_file_is_invalid_input() {
    let dir = example_copy();
    edit(dir.path(), "tests/edr-responder.toml", "confidence = 0.93", "confidence = \"high\"");
    warden()
        .args(["policy", "test"])
        .arg(dir.path())
        .assert()
        .code(3)
        .stderr(predicate::str::contains("tests/edr-responder.toml:"));
}

fn write_request(dir: &std::path::Path, name: &str, body: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    p
}

const REQUEST: &str = r#"{
  "agent": "spiffe://acme.example/soc/edr-responder",
  "action": "host.isolate",
  "target": "host:db-payments-01",
  "confidence": 0.93,
  "params": {"reason": "beacon"},
  "rationale": "C2 beacon",
  "evidence": [{"kind": "edr", "ref": "det:2"}],
  "task": {"id": "INC-7", "severity": "high", "source": "edr"},
  "now": "2026-01-07T03:00:00Z"
}"#;

#[test]
fn eval_prints_the_decision() {
    let tmp = tempfile::tempdir().unwrap();
    let req = write_request(tmp.path(), "req.json", REQUEST);
    warden()
        .args(["policy", "eval"])
        .arg(example_dir())
        .arg("--request")
        .arg(&req)
        .assert()
        .success()
        .stdout(predicate::str::starts_with(
            "require_approval  (granted level 2 → effective 2, confidence band autonomous)\n",
        ))
        .stdout(predicate::str::contains(
            "  approval  roles soc-analyst, incident-commander · quorum 1 · expires 2026-01-07T03:10:00Z",
        ));
}

#[test]
fn eval_json_is_the_decision_contract() {
    let tmp = tempfile::tempdir().unwrap();
    let req = write_request(tmp.path(), "req.json", REQUEST);
    let out = warden()
        .args(["policy", "eval", "--output", "json"])
        .arg(example_dir())
        .arg("--request")
        .arg(&req)
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    insta::assert_json_snapshot!(v, {".bundle_version" => "[bundle_version]"});
}

#[test]
fn eval_exits_2_on_deny_and_reads_toml_or_stdin() {
    let tmp = tempfile::tempdir().unwrap();
    let toml = r#"
agent = "spiffe://acme.example/soc/identity-responder"
action = "credential.rotate"
target = "account:svc-backup"
confidence = 0.99
evidence = [{ kind = "idp", ref = "a" }, { kind = "idp", ref = "b" }]
"#;
    let req = write_request(tmp.path(), "req.toml", toml);
    warden()
        .args(["policy", "eval"])
        .arg(example_dir())
        .arg("--request")
        .arg(&req)
        .assert()
        .code(2)
        .stdout(predicate::str::starts_with("deny  (granted level 0"));
    warden()
        .args(["policy", "eval"])
        .arg(example_dir())
        .args(["--request", "-"])
        .write_stdin(REQUEST)
        .assert()
        .success();
}

#[test]
fn eval_rejects_malformed_requests_with_exit_3() {
    let tmp = tempfile::tempdir().unwrap();
    let req = write_request(tmp.path(), "bad.json", &REQUEST.replace("host:db-payments-01", "db-payments-01"));
    warden()
        .args(["policy", "eval"])
        .arg(example_dir())
        .arg("--request")
        .arg(&req)
        .assert()
        .code(3)
        .stderr(predicate::str::contains("must be written `KIND:ID`"));
}

#[test]
fn show_prints_the_schema_and_the_policies() {
    warden()
        .args(["policy", "show", "--schema"])
        .arg(example_dir())
        .assert()
        .success()
        .stdout(predicate::str::contains("namespace Warden {"));
    warden()
        .args(["policy", "show"])
        .arg(example_dir())
        .assert()
        .success()
        .stdout(predicate::str::contains("@id(\"agent/phish-triage/email.quarantine#0\")"));
}

#[test]
fn test_json_reports_each_case_with_its_decision() {
    let out = warden()
        .args(["policy", "test", "--output", "json"])
        .arg(example_dir())
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["failed"], 0);
    let cases = v["cases"].as_array().unwrap();
    assert_eq!(cases.len() as u64, v["passed"].as_u64().unwrap());
    assert!(cases.iter().all(|c| c["passed"] == true && c["decision"]["outcome"].is_string()));
}

/// A grant no request can use (its action reads data the agent may not) loads, and `policy
/// validate` says so, in text and in JSON.
#[test]
fn validate_warns_of_grants_that_data_boundaries_make_unusable() {
    let dir = example_copy();
    edit(dir.path(), "agents/network-guard.toml", "allowed = [\"netflow\", ", "allowed = [");
    let out = warden().args(["policy", "validate"]).arg(dir.path()).assert().success().get_output().stdout.clone();
    let text = String::from_utf8(out).unwrap();
    assert!(text.starts_with("ok: "), "{text}");
    let warnings: Vec<&str> = text.lines().filter(|l| l.starts_with("warning: ")).collect();
    assert_eq!(warnings.len(), 3, "{text}");
    assert!(warnings.iter().all(|w| w.contains("agents/network-guard.toml:") && w.contains("`netflow`")), "{text}");
    let out = warden()
        .args(["policy", "validate", "--output", "json"])
        .arg(dir.path())
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!((v["valid"].as_bool(), v["warnings"].as_array().map(Vec::len)), (Some(true), Some(3)), "{v}");
}
