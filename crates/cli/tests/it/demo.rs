use serde_json::Value;

use crate::warden;

/// The README's first command: the whole incident end to end, each step asserted from the
/// narration, the lab's state read back from the demo's own data directory's log.
#[test]
fn the_demo_runs_the_whole_incident_as_narrated() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("demo");
    let out = warden().args(["demo", "--data"]).arg(&data).assert().success().get_output().stdout.clone();
    let text = String::from_utf8(out).unwrap();
    for expected in [
        "enrichment-bot → alert.enrich on alert:ALRT-1001",
        "execute at level 4",
        "✓ the SIEM alert is enriched in the lab",
        "phish-triage → email.quarantine on mailbox:jdoe@acme.example (confidence 0.95)",
        "execute at level 3",
        "✓ the message is quarantined in the lab",
        "edr-responder → host.isolate on host:db-payments-01",
        "ana (soc-analyst) approves",
        "✓ the host is contained in the lab",
        "needs 2 of [\"iam-owner\"]",
        "→ pending (1/2 votes)",
        "→ approved (2/2 votes)",
        "✓ the account is deactivated in the lab",
        "advise at level 1",
        "flagged for review",
        "\"code\":\"budget_exceeded\"",
        "✓ its budget (10 an hour) trips the breaker: back to level 2",
        "✓ its pending approval is cancelled",
        "✓ its containments are lifted in the lab",
        "✓ the halted agent is refused",
        "dry run: phish-triage → account.disable on account:cfo would execute at level 4 (phish-disable-on-verified-phishing)",
        "phish-triage → email.fetch on mailbox:jdoe@acme.example (confidence 0.95)",
        "✓ the read ran on its own, and its body is an instruction",
        "cap untrusted_input: the task holds untrusted input: at most level 2 (`[data] after_untrusted`); taken in: \
         the result of `email.fetch` on `mailbox:jdoe@acme.example` (message_id=`m-77`)",
        "✓ after the untrusted read, the same disable goes to a human (incident-commander)",
        "✓ the approval card names what was read",
        "✓ the CFO's account was never touched in the lab",
        "warden explain: taint      untrusted: the result of `email.fetch` on `mailbox:jdoe@acme.example`",
        "warden explain: history    done in the task: alert.enrich ×1, email.fetch ×1",
        "✓ the tool result carries the instruction",
        "tools/call account.disable is held for a human: the task read untrusted input",
        "✓ olga rejects it; the held call answers so, and nothing ran",
        "✓ its tools are the actions it is granted (no process.kill, no session.revoke)",
        "tools/call email.quarantine → `email.quarantine` on `mailbox:jdoe@acme.example` executed",
        "✓ the same call, executed once approved",
        "Warden refused the call (agent_halted)",
        "✓ the halted agent's tool call is refused",
        "✓ closed",
        "every leaf and signed checkpoint recomputed: ok",
        "approval.granted by user:ana ✓",
        "✓ every cited entry proves against the signed checkpoint",
        "The run's own track record, from the audit log alone (warden report autonomy)",
        "✓ the runaway EDR agent is proposed a level lower (never applied by Warden)",
        "| 5 | identity-responder | account.disable account:adm-jdoe | require_approval | 2 | succeeded (approved by ivy, ian) |",
    ] {
        assert!(text.contains(expected), "missing `{expected}` in:\n{text}");
    }
    assert!(!text.contains("PROOF FAILED"));
    // What it left behind is a real data directory: the log verifies with the CLI, and the
    // lab's answers recorded in it show each tool changed.
    warden().args(["audit", "verify", "--data"]).arg(&data).assert().success();
    let export = warden().args(["audit", "export", "--format", "jsonl", "--data"]).arg(&data).assert().success();
    let entries: Vec<Value> = String::from_utf8_lossy(&export.get_output().stdout)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["entry"].clone())
        .collect();
    let succeeded: Vec<&str> =
        entries.iter().filter(|e| e["type"] == "execution.succeeded").map(|e| e["action"].as_str().unwrap()).collect();
    for action in ["alert.enrich", "email.quarantine", "host.isolate", "account.disable"] {
        assert!(succeeded.contains(&action), "{action} executed: {succeeded:?}");
    }
    assert!(entries.iter().any(|e| e["type"] == "halt.set"));
    // The poisoned message: the CFO's account was asked for twice, rejected twice, never run.
    let on_cfo = |t: &str| entries.iter().filter(|e| e["type"] == t && e["data"]["target"] == "account:cfo").count();
    assert_eq!((on_cfo("action.requested"), on_cfo("execution.started")), (2, 0));
    assert_eq!(entries.iter().filter(|e| e["type"] == "approval.rejected").count(), 2);
    // An auditor explains an action from the data directory alone, no server running.
    let approved =
        entries.iter().find(|e| e["type"] == "approval.granted").unwrap()["request"].as_str().unwrap().to_string();
    let out = warden().args(["explain", &approved, "--data"]).arg(&data).assert().success();
    let text = String::from_utf8_lossy(&out.get_output().stdout).to_string();
    assert!(
        text.contains("ana as soc-analyst") && text.contains("entries proven") && !text.contains("PROOF FAILED"),
        "{text}"
    );
    assert!(entries.iter().any(|e| e["type"] == "breaker.tripped"));
    // The demo's own track record: the runaway EDR agent is proposed a level lower (its
    // isolations were rolled back and its breaker tripped), as a diff of its guardrail.
    let out = warden()
        .args(["report", "autonomy", "--since", "all", "--output", "json", "--data"])
        .arg(&data)
        .assert()
        .success();
    let report: Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    let edr = report["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["agent"] == "spiffe://acme.example/soc/edr-responder" && r["action"] == "host.isolate")
        .unwrap();
    assert_eq!((edr["rollbacks"].as_u64(), edr["breaker_trips"].as_u64()), (Some(10), Some(1)), "{edr}");
    let rec = &edr["recommendation"];
    assert_eq!(
        (rec["verdict"].as_str(), rec["level"].as_u64(), rec["proposed_level"].as_u64()),
        (Some("demote"), Some(3), Some(2)),
        "{rec}"
    );
    assert!(rec["diff"].as_str().unwrap().contains("-level = 3\n+level = 2"), "{rec}");
    let out = warden().args(["report", "autonomy", "--since", "all", "--data"]).arg(&data).assert().success();
    let text = String::from_utf8_lossy(&out.get_output().stdout).to_string();
    assert!(text.contains("→ demote (level 3 → 2): in the window: 10 rolled back, 1 breaker trips"), "{text}");
    assert!(text.contains("ivy") && text.contains("ian"), "both voters of the two-person disable: {text}");
    warden().args(["report", "autonomy", "--since", "soon", "--data"]).arg(&data).assert().code(3);
    // The bundle in force, replayed over the run: every decision as logged.
    let out = warden()
        .args(["policy", "simulate", "--since", "all", "--fail-on", "any-change", "--data"])
        .arg(&data)
        .arg(crate::example_dir())
        .assert()
        .success();
    let text = String::from_utf8_lossy(&out.get_output().stdout).to_string();
    assert!(text.contains(" 0 change outcome") && text.contains("guard any-change: passed"), "{text}");
    // The report's proposal, simulated before anyone loads it: the demoted EDR responder's
    // isolations go to a human, nothing newly executes (that guard passes), any-change fails.
    let proposal = crate::example_copy();
    let path = proposal.path().join("agents/edr-responder.toml");
    let guardrail = std::fs::read_to_string(&path).unwrap();
    let demoted = guardrail.replacen("action = \"host.isolate\"\nlevel = 3", "action = \"host.isolate\"\nlevel = 2", 1);
    assert_ne!(demoted, guardrail);
    std::fs::write(&path, demoted).unwrap();
    let sim = |guard: &str| {
        warden()
            .args(["policy", "simulate", "--since", "all", "--output", "json", "--fail-on", guard, "--data"])
            .arg(&data)
            .arg(proposal.path())
            .assert()
    };
    let out = sim("new-execute").success();
    let v: Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    let edr = v["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["action"] == "host.isolate" && r["agent"] == "spiffe://acme.example/soc/edr-responder")
        .unwrap();
    assert_eq!(edr["after"]["execute"], Value::Null, "no isolation runs on its own: {edr}");
    assert_eq!(edr["changed"], edr["before"]["execute"], "{edr}");
    assert_eq!(v["guards"][0]["broken_by"], 0);
    assert_eq!(v["same_bundle"], 0);
    let out = sim("any-change").code(2);
    let v: Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert_eq!(v["guards"][0]["broken_by"], v["changed"]);
    warden()
        .args(["policy", "simulate", "--fail-on", "nothing-bad", "--data"])
        .arg(&data)
        .arg(proposal.path())
        .assert()
        .code(3);
    // The controls the run evidences, each example with its inclusion proof.
    let out = warden()
        .args(["report", "controls", "--since", "all", "--output", "json", "--data"])
        .arg(&data)
        .assert()
        .success();
    let v: Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    let control = |id: &str| v["controls"].as_array().unwrap().iter().find(|c| c["id"] == id).unwrap().clone();
    assert_eq!(control("AML.M0029")["status"], "evidenced", "the demo's approvals");
    assert_eq!(control("ASI07")["status"], "no_feature");
    for seq in control("AML.M0029")["examples"].as_array().unwrap() {
        let proof = &v["proofs"][seq.as_u64().unwrap().to_string()];
        assert_eq!(proof["leaf_index"], *seq, "{v}");
    }
    let out = warden()
        .args(["report", "controls", "--since", "all", "--framework", "atlas", "--data"])
        .arg(&data)
        .assert()
        .success();
    let text = String::from_utf8_lossy(&out.get_output().stdout).to_string();
    assert!(text.contains("AML.M0029") && !text.contains("ASI01"), "{text}");
    warden().args(["report", "controls", "--framework", "iso", "--data"]).arg(&data).assert().code(3);
    // A second run starts its own directory afresh; a foreign directory is refused.
    warden().args(["demo", "--data"]).arg(&data).assert().success();
    let foreign = tmp.path().join("foreign");
    std::fs::create_dir_all(&foreign).unwrap();
    std::fs::write(foreign.join("precious.txt"), "mine").unwrap();
    warden().args(["demo", "--data"]).arg(&foreign).assert().code(3);
    assert!(foreign.join("precious.txt").exists());
}

#[test]
fn the_decision_walk_runs_every_scenario_as_scripted() {
    let out = warden().args(["demo", "--decisions"]).assert().success().get_output().stdout.clone();
    let text = String::from_utf8(out).unwrap();
    assert!(text.starts_with("Warden demo — policy bundle sha256:"));
    assert!(text.contains("10 scenarios decided as scripted."), "{text}");
    assert!(text.contains("cap       forbidden: forbidden by `dc-business-hours`"));
    assert!(text.contains("shadow    would have been execute"));
}

#[test]
fn the_decision_walk_can_use_a_bundle_from_disk() {
    warden().args(["demo", "--decisions", "--policy"]).arg(crate::example_dir()).assert().success();
    warden().args(["demo", "--decisions", "--policy", "/nonexistent/bundle"]).assert().code(1);
    warden().args(["demo", "--policy", "/x"]).assert().code(3);
}

#[test]
fn help_documents_the_exit_codes() {
    let out = warden().arg("--help").assert().success().get_output().stdout.clone();
    let text = String::from_utf8(out).unwrap();
    assert!(text.contains("Exit codes: 0 ok, 1 failure, 2 denied or verification failed, 3 invalid input."));
}

#[test]
fn demo_transcript() {
    let out = warden().args(["demo", "--decisions"]).assert().success().get_output().stdout.clone();
    let text = String::from_utf8(out).unwrap();
    let version = text.split_whitespace().find(|w| w.starts_with("sha256:")).unwrap().to_string();
    insta::assert_snapshot!(text.replace(&version, "[bundle_version]"));
}
