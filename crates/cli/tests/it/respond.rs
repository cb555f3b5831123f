//! Black box: `warden lab serve`, `warden serve` executing against it, then `warden rollback`,
//! `warden halt` and `warden resume` from the command line.

use std::process::Command;

use serde_json::{Value, json};

use crate::serve::{http, stdout_of};
use crate::{example_dir, warden};

const EDR: &str = "spiffe://acme.example/soc/edr-responder";

pub use crate::procs::Running;

/// `warden lab serve` on a free port, each call delayed by `delay_ms`: the process, its
/// address and the keys it printed.
pub fn start_lab(delay_ms: u64) -> (Running, String, Vec<(String, String)>) {
    crate::procs::spawn_lab(&assert_cmd::cargo::cargo_bin("warden"), delay_ms)
}

pub fn lab_state(addr: &str) -> Value {
    http(addr, "GET", "/state", "-", None).unwrap().1
}

#[test]
fn execute_roll_back_and_halt_from_the_command_line() {
    let (_lab, lab_addr, keys) = start_lab(0);
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path();
    let admin = crate::serve::init_admin(data);
    stdout_of(data, &["agent", "add", EDR, "--owner", "team:endpoint-response"]);
    let agent = stdout_of(data, &["agent", "token", EDR]).trim().to_string();
    let ana = serde_json::from_str::<Value>(&stdout_of(
        data,
        &["user", "add", "ana", "--role", "soc-analyst", "--output", "json"],
    ))
    .unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string();
    let (server, addr) = start_server(data, &lab_addr, &keys);
    let url = format!("http://{addr}");

    let task = json!({"id": "INC-7", "title": "beacon", "trigger": {"source": "edr", "severity": "high"}});
    assert_eq!(http(&addr, "POST", "/v1/tasks", &agent, Some(&task)).unwrap().0, 201);
    let isolate = json!({"task": "INC-7", "action": "host.isolate", "target": "host:web-42", "confidence": 0.95,
        "params": {"reason": "beacon"}, "rationale": "C2", "evidence": [{"kind": "edr", "ref": "d:1"}]});
    let (_, a) = http(&addr, "POST", "/v1/actions", &agent, Some(&isolate)).unwrap();
    assert_eq!(a["state"], "succeeded", "{a}");
    assert_eq!(lab_state(&lab_addr)["edr"]["hosts"]["web-42"]["status"], "contained");

    let run = |args: &[&str], token: &str| {
        let mut cmd = warden();
        cmd.args(args).args(["--server", &url]).env("WARDEN_TOKEN", token);
        cmd.assert()
    };
    let id = a["id"].as_str().unwrap();
    // Rollback needs the action's approver roles (or the incident commander's): not an admin.
    let out = run(&["rollback", id], &admin).code(2);
    assert!(String::from_utf8_lossy(&out.get_output().stderr).contains("missing_role"));
    let out = run(&["rollback", id], &ana).success();
    assert!(String::from_utf8_lossy(&out.get_output().stdout).contains("rolled_back (host.release)"));
    assert_eq!(lab_state(&lab_addr)["edr"]["hosts"]["web-42"]["status"], "normal");

    // Who is accountable for it, every entry proven against the signed checkpoint.
    let out = run(&["explain", id], &admin).success();
    let text = String::from_utf8_lossy(&out.get_output().stdout).to_string();
    assert!(text.contains("agent      spiffe://acme.example/soc/edr-responder owner team:endpoint-response"), "{text}");
    assert!(text.contains("rollback   host.release by ana"), "{text}");
    assert!(text.contains("entries proven") && !text.contains("PROOF FAILED"), "{text}");
    let out = run(&["explain", id, "--output", "json"], &admin).success();
    let e: Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert!(e["entries"].as_array().unwrap().iter().all(|c| c["verified"] == true));
    run(&["explain", "act_nope"], &admin).code(3);

    // Bulk: every reversible action of the task.
    let (_, b) = http(&addr, "POST", "/v1/actions", &agent, Some(&isolate)).unwrap();
    assert_eq!(b["state"], "succeeded");
    let out = run(&["rollback", "--task", "INC-7", "--output", "json"], &ana).success();
    let rolled: Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert_eq!(rolled, json!([{"id": b["id"], "state": "rolled_back", "compensation": "host.release"}]));
    assert_eq!(lab_state(&lab_addr)["edr"]["hosts"]["web-42"]["status"], "normal");

    // The emergency stop, and a resume that needs an admin.
    let out = run(&["halt", "--scope", "agent", "--id", EDR, "--reason", "drill"], &ana).success();
    assert!(String::from_utf8_lossy(&out.get_output().stdout).contains("leases revoked"));
    let (status, refused) = http(&addr, "POST", "/v1/actions", &agent, Some(&isolate)).unwrap();
    assert_eq!((status, &refused["error"]["code"]), (403, &json!("agent_halted")));
    run(&["resume", "--scope", "agent", "--id", EDR, "--reason", "drill over"], &ana).code(2);
    run(&["resume", "--scope", "agent", "--id", EDR, "--reason", "drill over"], &admin).success();
    let (_, c) = http(&addr, "POST", "/v1/actions", &agent, Some(&isolate)).unwrap();
    assert_eq!(c["state"], "succeeded", "{c}");
    run(&["halt", "--scope", "agent", "--reason", "no id"], &ana).code(3);

    drop(server);
    warden().args(["audit", "verify", "--data"]).arg(data).assert().success();
    let export = stdout_of(data, &["audit", "export", "--format", "raw"]);
    for (name, key) in &keys {
        assert!(!export.contains(key.as_str()), "{name} leaked into the log");
    }
}

fn start_server(data: &std::path::Path, lab_addr: &str, keys: &[(String, String)]) -> (Running, String) {
    let mut cmd = Command::new(assert_cmd::cargo::cargo_bin("warden"));
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--tool-url"])
        .arg(format!("edr=http://{lab_addr}"))
        .arg("--data")
        .arg(data)
        .arg("--policy")
        .arg(example_dir())
        .envs(keys.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    crate::procs::spawn_server(&mut cmd)
}

/// SIGKILL in the middle of executions against a slow tool: after the restart the interrupted
/// ones are `unknown`, nothing is called again, and the log verifies.
#[test]
fn a_killed_server_leaves_unknown_executions_and_calls_nothing_twice() {
    let (_lab, lab_addr, keys) = start_lab(500);
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path();
    let admin = crate::serve::init_admin(data);
    stdout_of(data, &["agent", "add", EDR, "--owner", "team:endpoint-response"]);
    let agent = stdout_of(data, &["agent", "token", EDR]).trim().to_string();
    let (server, addr) = start_server(data, &lab_addr, &keys);
    let task = json!({"id": "INC-7", "title": "beacon", "trigger": {"source": "edr", "severity": "high"}});
    assert_eq!(http(&addr, "POST", "/v1/tasks", &agent, Some(&task)).unwrap().0, 201);
    let hosts = ["web-01", "web-02", "web-42"];
    let threads: Vec<_> = (0..6)
        .map(|i| {
            let (addr, agent) = (addr.clone(), agent.clone());
            let body = json!({"task": "INC-7", "action": "host.isolate", "target": format!("host:{}", hosts[i % 3]),
                "confidence": 0.95, "params": {"reason": "beacon"}, "rationale": "C2", "evidence": [{"kind": "edr", "ref": "d:1"}]});
            std::thread::spawn(move || http(&addr, "POST", "/v1/actions", &agent, Some(&body)))
        })
        .collect();
    // Killed once a call is under way (the lab holds each for 500 ms), however slow the
    // machine is to get there.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::time::Instant::now() < deadline {
        let executing = http(&addr, "GET", "/v1/actions?state=executing", &admin, None);
        if executing.is_ok_and(|(s, v)| s == 200 && v.as_array().is_some_and(|a| !a.is_empty())) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    drop(server); // SIGKILL, mid-call
    for t in threads {
        let _ = t.join(); // their connections died with the server
    }
    std::thread::sleep(std::time::Duration::from_millis(800)); // the lab finishes what it received
    let calls_before = lab_state(&lab_addr)["calls"]["total"].as_u64().unwrap();
    assert!(calls_before > 0, "the tool was called before the kill");

    let (server, addr) = start_server(data, &lab_addr, &keys);
    let (status, unknown) = http(&addr, "GET", "/v1/actions?state=unknown", &admin, None).unwrap();
    assert_eq!(status, 200, "{unknown}");
    let unknown = unknown.as_array().unwrap().len() as u64;
    assert!(unknown >= 1, "the interrupted executions are unknown");
    let (_, executing) = http(&addr, "GET", "/v1/actions?state=executing", &admin, None).unwrap();
    assert_eq!(executing, json!([]), "nothing is left executing");
    assert!(
        calls_before <= unknown,
        "every call the lab got belongs to an unknown execution ({calls_before} > {unknown})"
    );
    std::thread::sleep(std::time::Duration::from_millis(800));
    assert_eq!(lab_state(&lab_addr)["calls"]["total"].as_u64().unwrap(), calls_before, "nothing was retried");
    drop(server);
    warden().args(["audit", "verify", "--data"]).arg(data).assert().success();
}

/// `warden task open|close|show|list` (DESIGN §8): opened and closed through a running server
/// (the token's human is the actor: an analyst's word verifies the trigger), shown and listed
/// from the server or, read only, from the data directory; history and state as the server has
/// them; bad input exits 3. `warden report autonomy` reads the same log from either side (an
/// agent's token may not read it).
#[test]
fn tasks_from_the_command_line() {
    let (_lab, lab_addr, keys) = start_lab(0);
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path();
    crate::serve::init_admin(data);
    stdout_of(data, &["agent", "add", EDR, "--owner", "team:endpoint-response"]);
    let agent = stdout_of(data, &["agent", "token", EDR]).trim().to_string();
    let added = stdout_of(data, &["user", "add", "ana", "--role", "soc-analyst", "--output", "json"]);
    let ana = serde_json::from_str::<Value>(&added).unwrap()["token"].as_str().unwrap().to_string();
    let (server, addr) = start_server(data, &lab_addr, &keys);
    let url = format!("http://{addr}");
    let run = |args: &[&str]| {
        let mut cmd = warden();
        cmd.args(args).args(["--server", &url]).env("WARDEN_TOKEN", &ana);
        cmd.assert()
    };
    let text = |a: assert_cmd::assert::Assert| String::from_utf8_lossy(&a.get_output().stdout).to_string();

    let opened = text(
        run(&[
            "task",
            "open",
            "--id",
            "INC-8",
            "--title",
            "beacon",
            "--source",
            "siem",
            "--severity",
            "high",
            "--agent",
            EDR,
        ])
        .success(),
    );
    assert!(opened.contains("INC-8 — beacon (open)") && opened.contains("verified by soc-analyst"), "{opened}");
    assert!(opened.contains(&format!("agents     {EDR}")), "{opened}");
    let other =
        text(run(&["task", "open", "--title", "phish", "--source", "email-gateway", "--output", "json"]).success());
    let other: Value = serde_json::from_str(&other).unwrap();
    assert!(other["id"].as_str().unwrap().starts_with("task_"), "{other}");

    let isolate = json!({"task": "INC-8", "action": "host.isolate", "target": "host:web-42", "confidence": 0.95,
        "params": {"reason": "beacon"}, "rationale": "C2", "evidence": [{"kind": "edr", "ref": "d:1"}]});
    assert_eq!(http(&addr, "POST", "/v1/actions", &agent, Some(&isolate)).unwrap().1["state"], "succeeded");
    let shown = text(run(&["task", "show", "INC-8"]).success());
    assert!(shown.contains("history    done in the task: host.isolate ×1"), "{shown}");

    let listed = text(run(&["task", "list"]).success());
    assert!(listed.contains("INC-8") && listed.contains(other["id"].as_str().unwrap()), "{listed}");
    let closed = text(run(&["task", "list", "--state", "closed", "--output", "json"]).success());
    assert_eq!(closed.trim(), "[]");
    let done = text(run(&["task", "close", "INC-8"]).success());
    assert!(done.contains("INC-8 — beacon (closed)") && done.contains("closed     "), "{done}");
    run(&["task", "close", "INC-8"]).code(3);
    run(&["task", "show", "INC-404"]).code(3);
    // The autonomy report read from the server's log is the one read from the data directory.
    let remote = text(run(&["report", "autonomy", "--since", "all", "--output", "json"]).success());
    let remote: Value = serde_json::from_str(&remote).unwrap();
    let row = &remote["rows"][0];
    assert_eq!((row["agent"].as_str(), row["action"].as_str()), (Some(EDR), Some("host.isolate")), "{remote}");
    assert_eq!(row["executions"]["succeeded"], 1);
    let agent_token =
        warden().args(["report", "autonomy", "--since", "all", "--server", &url]).env("WARDEN_TOKEN", &agent).assert();
    agent_token.code(2);
    // A simulation reads the same log through the server: the bundle in force changes nothing.
    let example = crate::example_dir();
    let simulated =
        text(run(&["policy", "simulate", "--since", "all", "--output", "json", example.to_str().unwrap()]).success());
    let simulated: Value = serde_json::from_str(&simulated).unwrap();
    assert_eq!((simulated["changed"].as_u64(), simulated["unrecorded"].as_u64()), (Some(0), Some(0)), "{simulated}");
    assert!(simulated["replayed"].as_u64() >= Some(1), "{simulated}");
    // The controls report through the server: its examples proved by the server's proofs.
    let controls = text(run(&["report", "controls", "--since", "all", "--output", "json"]).success());
    let controls: Value = serde_json::from_str(&controls).unwrap();
    let proofs = controls["proofs"].as_object().unwrap();
    assert!(!proofs.is_empty(), "{controls}");
    assert!(proofs.iter().all(|(seq, p)| p["leaf_index"].as_u64() == seq.parse().ok()), "{controls}");
    drop(server);
    let local: Value =
        serde_json::from_str(&stdout_of(data, &["report", "autonomy", "--since", "all", "--output", "json"])).unwrap();
    assert_eq!(local["rows"][0]["executions"], remote["rows"][0]["executions"]);
    assert_eq!(local["rows"][0]["requests"], remote["rows"][0]["requests"]);

    // Opening and closing on the data directory: the local operator, through the same rules.
    let opened: Value = serde_json::from_str(&stdout_of(
        data,
        &["task", "open", "--id", "INC-D", "--title", "offline", "--source", "siem", "--output", "json"],
    ))
    .unwrap();
    // The example's authority.toml lets `admin` vouch for `siem`: verified, as for an admin over /v1.
    assert_eq!((opened["state"].as_str(), opened["vouched_by"].as_str()), (Some("open"), Some("admin")), "{opened}");
    assert!(opened["opened_by"].as_str().unwrap().starts_with("user:local:"), "{opened}");
    let again = warden()
        .args(["task", "open", "--id", "INC-D", "--title", "t", "--source", "siem", "--data"])
        .arg(data)
        .assert();
    assert!(String::from_utf8_lossy(&again.code(3).get_output().stderr).contains("task_exists"));
    let closed = stdout_of(data, &["task", "close", "INC-D"]);
    assert!(closed.contains("(closed)") && closed.contains("by user:local:"), "{closed}");
    let twice = warden().args(["task", "close", "INC-D", "--data"]).arg(data).assert();
    assert!(String::from_utf8_lossy(&twice.get_output().stderr).contains("task_closed"));
    warden()
        .args(["task", "open", "--id", "bad id", "--title", "t", "--source", "siem", "--data"])
        .arg(data)
        .assert()
        .code(3);
    // A data directory no server ever ran has no bundle in force to decide with.
    let fresh = tempfile::tempdir().unwrap();
    crate::serve::init_admin(fresh.path());
    let none = warden().args(["task", "open", "--title", "t", "--source", "siem", "--data"]).arg(fresh.path()).assert();
    assert!(String::from_utf8_lossy(&none.failure().get_output().stderr).contains("no policy bundle is in force"));

    // Read only, from the data directory.
    let shown = stdout_of(data, &["task", "show", "INC-8"]);
    assert!(shown.contains("(closed)") && shown.contains("host.isolate ×1"), "{shown}");
    let closed: Value =
        serde_json::from_str(&stdout_of(data, &["task", "list", "--state", "closed", "--output", "json"])).unwrap();
    // Newest id first: the one closed on the data directory above, then the server's.
    assert_eq!(
        closed.as_array().unwrap().iter().map(|t| t["id"].clone()).collect::<Vec<_>>(),
        [json!("INC-D"), json!("INC-8")]
    );
    let all: Value =
        serde_json::from_str(&stdout_of(data, &["task", "list", "--limit", "1", "--output", "json"])).unwrap();
    assert_eq!(all.as_array().unwrap().len(), 1);
    warden().args(["task", "show", "INC-404", "--data"]).arg(data).assert().code(3);
    warden().args(["task", "list", "--limit", "0", "--data"]).arg(data).assert().code(3);
    warden()
        .args(["task", "open", "--title", "t", "--source", "siem", "--server", &url])
        .env_remove("WARDEN_TOKEN")
        .assert()
        .code(3);
}
