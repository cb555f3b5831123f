//! Black box: the real binary serving on 127.0.0.1:0, driven over HTTP, stopped with SIGTERM
//! under load; afterwards the log verifies and holds every answered request.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

use crate::{example_dir, warden};

const EDR: &str = "spiffe://acme.example/soc/edr-responder";

/// One HTTP/1.1 request on a fresh connection; (status, JSON body).
pub fn http(addr: &str, method: &str, path: &str, token: &str, body: Option<&Value>) -> std::io::Result<(u16, Value)> {
    let mut s = TcpStream::connect(addr)?;
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {token}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let status = raw.get(9..12).and_then(|c| c.parse().ok()).ok_or(std::io::ErrorKind::InvalidData)?;
    let body = raw.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    Ok((status, serde_json::from_str(body).unwrap_or(Value::String(body.into()))))
}

/// `warden init` on `data`; the admin token it printed once.
pub fn init_admin(data: &Path) -> String {
    let init = warden().args(["init", "--output", "json", "--data"]).arg(data).assert().success();
    serde_json::from_slice::<Value>(&init.get_output().stdout).unwrap()["admin_token"].as_str().unwrap().to_string()
}

pub fn stdout_of(data: &Path, args: &[&str]) -> String {
    let out = warden().args(args).arg("--data").arg(data).assert().success();
    String::from_utf8(out.get_output().stdout.clone()).unwrap()
}

#[test]
fn the_binary_serves_decides_and_stops_cleanly_under_load() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path();
    warden().args(["init", "--data"]).arg(data).assert().success();
    stdout_of(data, &["agent", "add", EDR, "--owner", "team:endpoint-response"]);
    let token = stdout_of(data, &["agent", "token", EDR, "--ttl", "10m"]).trim().to_string();

    let mut server = Command::new(assert_cmd::cargo::cargo_bin("warden"))
        .args(["serve", "--listen", "127.0.0.1:0", "--agent-rate", "100000", "--agent-burst", "100000", "--data"])
        .arg(data)
        .arg("--policy")
        .arg(example_dir())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(server.stdout.take().unwrap()).read_line(&mut first).unwrap();
    let addr = first.trim().strip_prefix("listening on ").expect("the address is printed").to_string();

    let task = json!({"id": "INC-7", "title": "beacon", "trigger": {"source": "edr", "severity": "high"}});
    assert_eq!(http(&addr, "POST", "/v1/tasks", &token, Some(&task)).unwrap().0, 201);
    let ask = |target: &str, confidence: f64, action: &str| {
        json!({"task": "INC-7", "action": action, "target": target, "confidence": confidence,
               "params": {"reason": "beacon"}, "rationale": "C2", "evidence": [{"kind": "edr", "ref": "d:1"}]})
    };
    let mut outcomes = Vec::new();
    for body in [
        ask("host:web-42", 0.95, "host.isolate"),
        ask("host:db-payments-01", 0.95, "host.isolate"),
        ask("host:web-01", 0.3, "host.isolate"),
        ask("host:web-42", 0.95, "host.wipe"),
    ] {
        let (status, answer) = http(&addr, "POST", "/v1/actions", &token, Some(&body)).unwrap();
        assert_eq!(status, 200, "{answer}");
        outcomes.push(answer["decision"]["outcome"].as_str().unwrap().to_string());
    }
    assert_eq!(outcomes, ["execute", "require_approval", "advise", "deny"]);

    // Load from four clients, then SIGTERM in the middle of it.
    let answered = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (addr, token, answered, stop) = (addr.clone(), token.clone(), answered.clone(), stop.clone());
            let body = ask("host:web-01", 0.3, "host.isolate");
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match http(&addr, "POST", "/v1/actions", &token, Some(&body)) {
                        Ok((200, a)) => answered.lock().unwrap().push(a["id"].as_str().unwrap().to_string()),
                        Ok((status, a)) => panic!("unexpected {status}: {a}"),
                        Err(_) => break, // the server stopped accepting
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(400));
    Command::new("kill").args(["-TERM", &server.id().to_string()]).status().unwrap();
    let status = server.wait().unwrap();
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    assert!(status.success(), "a clean exit on SIGTERM: {status:?}");
    let answered = answered.lock().unwrap().clone();
    assert!(answered.len() > 5, "the load was real: {} answers", answered.len());

    warden().args(["audit", "verify", "--data"]).arg(data).assert().success();
    let export = stdout_of(data, &["audit", "export", "--format", "jsonl"]);
    let recorded: std::collections::HashSet<String> = export
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["entry"]["type"] == "decision.made")
        .filter_map(|e| e["entry"]["request"].as_str().map(String::from))
        .collect();
    for id in &answered {
        assert!(recorded.contains(id), "answered request {id} is not in the log");
    }
    // The tail was signed on the way out.
    let note = stdout_of(data, &["audit", "checkpoint"]);
    let size: u64 = note.lines().nth(1).unwrap().parse().unwrap();
    assert_eq!(size, export.lines().count() as u64);
}

#[test]
fn agent_and_user_administration_on_a_data_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path();
    warden().args(["init", "--data"]).arg(data).assert().success();
    stdout_of(data, &["agent", "add", EDR, "--owner", "team:endpoint-response", "--purpose", "contain hosts"]);
    warden().args(["agent", "add", EDR, "--owner", "x", "--data"]).arg(data).assert().code(3);
    warden().args(["agent", "add", "not-spiffe", "--owner", "x", "--data"]).arg(data).assert().code(3);
    let list: Value = serde_json::from_str(&stdout_of(data, &["agent", "list", "--output", "json"])).unwrap();
    assert_eq!((list[0]["id"].as_str(), list[0]["status"].as_str()), (Some(EDR), Some("active")));
    stdout_of(data, &["agent", "suspend", EDR, "--reason", "runaway"]);
    warden().args(["agent", "token", EDR, "--data"]).arg(data).assert().code(3);
    stdout_of(data, &["agent", "resume", EDR]);
    let token = stdout_of(data, &["agent", "token", EDR, "--ttl", "1m"]);
    assert_eq!(token.trim().split('.').count(), 3, "a compact JWT");
    warden().args(["agent", "token", EDR, "--ttl", "2d", "--data"]).arg(data).assert().code(3);

    let user: Value =
        serde_json::from_str(&stdout_of(data, &["user", "add", "alice", "--role", "soc-analyst", "--output", "json"]))
            .unwrap();
    assert!(user["token"].as_str().unwrap().starts_with("wdn_"));
    let users = stdout_of(data, &["user", "list"]);
    assert!(users.contains("alice  active  soc-analyst") && !users.contains("sha256"), "{users}");
    stdout_of(data, &["user", "disable", "alice", "--reason", "left the team"]);
    assert!(stdout_of(data, &["user", "list"]).contains("alice  disabled  soc-analyst"));
    stdout_of(data, &["user", "enable", "alice"]);
    assert!(stdout_of(data, &["user", "list"]).contains("alice  active  soc-analyst"));
    warden().args(["user", "disable", "nobody", "--data"]).arg(data).assert().code(3);

    // Every change is in the log, with the operator as actor, and the log verifies.
    let export = stdout_of(data, &["audit", "export", "--format", "jsonl"]);
    let types: Vec<String> = export
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["entry"]["type"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        types,
        [
            "store.initialized",
            "user.added",
            "agent.added",
            "agent.changed",
            "agent.changed",
            "agent.token_issued",
            "user.added",
            "user.changed",
            "user.changed"
        ]
    );
    assert!(!export.contains("wdn_"), "no token in the log");
    warden().args(["audit", "verify", "--data"]).arg(data).assert().success();
}

/// Starts `warden serve` on a free port; the child and its address.
fn start_server(data: &Path, extra: &[&str]) -> (crate::procs::Running, String) {
    let mut cmd = Command::new(assert_cmd::cargo::cargo_bin("warden"));
    cmd.args(["serve", "--listen", "127.0.0.1:0"])
        .args(extra)
        .arg("--data")
        .arg(data)
        .arg("--policy")
        .arg(example_dir());
    crate::procs::spawn_server(&mut cmd)
}

#[test]
fn agent_and_user_administration_against_a_running_server() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path();
    let init = warden().args(["init", "--output", "json", "--data"]).arg(data).assert().success();
    let init: Value = serde_json::from_slice(&init.get_output().stdout).unwrap();
    let admin = init["admin_token"].as_str().unwrap().to_string();
    let (mut server, addr) = start_server(data, &[]);
    let url = format!("http://{addr}");
    let remote = |args: &[&str], token: &str| {
        let mut cmd = warden();
        cmd.args(args).args(["--server", &url]).env("WARDEN_TOKEN", token).env_remove("WARDEN_DATA");
        cmd
    };
    let stdout = |args: &[&str], token: &str| {
        let out = remote(args, token).assert().success();
        String::from_utf8(out.get_output().stdout.clone()).unwrap()
    };

    stdout(&["agent", "add", EDR, "--owner", "team:endpoint-response"], &admin);
    remote(&["agent", "add", EDR, "--owner", "x"], &admin).assert().code(3);
    let list: Value = serde_json::from_str(&stdout(&["agent", "list", "--output", "json"], &admin)).unwrap();
    assert_eq!(list[0]["id"].as_str(), Some(EDR));
    let token = stdout(&["agent", "token", EDR, "--ttl", "5m"], &admin).trim().to_string();
    let task = json!({"title": "beacon", "trigger": {"source": "edr"}});
    assert_eq!(http(&addr, "POST", "/v1/tasks", &token, Some(&task)).unwrap().0, 201, "the minted token works");
    stdout(&["agent", "suspend", EDR, "--reason", "drill"], &admin);
    assert_eq!(http(&addr, "POST", "/v1/tasks", &token, Some(&task)).unwrap().0, 403);
    stdout(&["agent", "resume", EDR], &admin);

    let user: Value =
        serde_json::from_str(&stdout(&["user", "add", "ana", "--role", "soc-analyst", "--output", "json"], &admin))
            .unwrap();
    let analyst = user["token"].as_str().unwrap().to_string();
    assert!(stdout(&["user", "list"], &analyst).contains("ana  active  soc-analyst"));
    // Refusals keep the exit-code contract: a missing role is "denied" (2), no token is
    // invalid input (3), no server at all is a failure (1).
    remote(&["agent", "suspend", EDR], &analyst).assert().code(2);
    remote(&["agent", "list"], "wdn_not-a-token").assert().code(2);
    warden().args(["agent", "list", "--server", &url]).env_remove("WARDEN_TOKEN").assert().code(3);
    warden().args(["agent", "list", "--server", "http://127.0.0.1:9", "--token", &admin]).assert().code(1);

    server.0.kill().unwrap();
    server.0.wait().unwrap();
    // Each change is audited with the calling human as the actor.
    let export = stdout_of(data, &["audit", "export", "--format", "jsonl"]);
    let by_admin: Vec<String> = export
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["entry"].clone())
        .filter(|e| e["actor"]["id"] == "admin")
        .map(|e| e["type"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(by_admin, ["agent.added", "agent.token_issued", "agent.changed", "agent.changed", "user.added"]);
    assert!(!export.contains(&token) && !export.contains(&analyst), "no token in the log");
    warden().args(["audit", "verify", "--data"]).arg(data).assert().success();
}

#[test]
fn the_approval_inbox_from_the_command_line() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path();
    let init = warden().args(["init", "--output", "json", "--data"]).arg(data).assert().success();
    let init: Value = serde_json::from_slice(&init.get_output().stdout).unwrap();
    let admin = init["admin_token"].as_str().unwrap().to_string();
    stdout_of(data, &["agent", "add", EDR, "--owner", "team:endpoint-response"]);
    let agent = stdout_of(data, &["agent", "token", EDR]).trim().to_string();
    let user = |name: &str, role: &str| {
        let out = stdout_of(data, &["user", "add", name, "--role", role, "--output", "json"]);
        serde_json::from_str::<Value>(&out).unwrap()["token"].as_str().unwrap().to_string()
    };
    let (ana, ivy) = (user("ana", "soc-analyst"), user("ivy", "iam-owner"));
    let (mut server, addr) = start_server(data, &[]);
    let url = format!("http://{addr}");
    let task = json!({"id": "INC-7", "title": "beacon", "trigger": {"source": "edr", "severity": "high"}});
    assert_eq!(http(&addr, "POST", "/v1/tasks", &agent, Some(&task)).unwrap().0, 201);
    let req = json!({"task": "INC-7", "action": "host.isolate", "target": "host:db-payments-01", "confidence": 0.95,
        "params": {"reason": "beacon"}, "rationale": "C2 beacon", "evidence": [{"kind": "edr", "ref": "det:1"}]});
    let (status, answer) = http(&addr, "POST", "/v1/actions", &agent, Some(&req)).unwrap();
    assert_eq!((status, answer["state"].as_str()), (200, Some("pending_approval")), "{answer}");
    let id = answer["decision"]["approval"]["id"].as_str().unwrap().to_string();

    let run = |args: &[&str], token: &str| {
        let mut cmd = warden();
        cmd.arg("approvals").args(args).args(["--server", &url]).env("WARDEN_TOKEN", token);
        cmd.assert()
    };
    let out = run(&["list", "--output", "json"], &ana).success();
    let list: Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert_eq!(list[0]["id"].as_str(), Some(id.as_str()));
    let out = run(&["show", &id], &ana).success();
    let text = String::from_utf8_lossy(&out.get_output().stdout).to_string();
    assert!(text.contains("rationale   C2 beacon") && text.contains("last 30 days: 0 approved"), "{text}");
    run(&["reject", &id], &ana).code(3); // --reason is required
    run(&["approve", &id], &ivy).code(2); // not an approver role
    run(&["approve", &id], &admin).code(2); // admin is not an approver role either
    run(&["approve", &id, "--lease-ttl", "1h"], &ana).code(3); // widening
    let out = run(&["approve", &id, "--reason", "confirmed", "--output", "json"], &ana).success();
    let done: Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert_eq!(done["state"], "approved");
    run(&["reject", &id, "--reason", "late"], &ana).code(3); // already decided
    let out = run(&["list"], &ana).success();
    assert_eq!(String::from_utf8_lossy(&out.get_output().stdout).trim(), "no pending approvals");
    let (_, polled) =
        http(&addr, "GET", &format!("/v1/actions/{}?wait=5s", answer["id"].as_str().unwrap()), &agent, None).unwrap();
    // Approved, it went to the example connectors, whose lab keys are not set here: it fails
    // closed, before any call.
    assert_eq!(polled["state"], "failed", "{polled}");
    assert!(polled["execution"]["error"].as_str().unwrap().contains("LAB_EDR_KEY"), "{polled}");
    server.0.kill().unwrap();
    server.0.wait().unwrap();
}

#[test]
fn administration_over_https_trusts_a_private_ca_when_told() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path();
    let init = warden().args(["init", "--output", "json", "--data"]).arg(data).assert().success();
    let init: Value = serde_json::from_slice(&init.get_output().stdout).unwrap();
    let admin = init["admin_token"].as_str().unwrap().to_string();
    let tls = Path::new(env!("CARGO_MANIFEST_DIR")).join("../server/tests/fixtures/tls");
    let (cert, key, ca) = (tls.join("cert.pem"), tls.join("key.pem"), tls.join("ca.pem"));
    let (mut server, addr) =
        start_server(data, &["--tls-cert", cert.to_str().unwrap(), "--tls-key", key.to_str().unwrap()]);
    let url = format!("https://localhost:{}", addr.rsplit(':').next().unwrap());
    let list = |ca: Option<&Path>| {
        let mut cmd = warden();
        cmd.args(["user", "list", "--server", &url, "--token", &admin]);
        if let Some(ca) = ca {
            cmd.arg("--ca-cert").arg(ca);
        }
        cmd.assert()
    };
    list(None).code(1); // the private CA is not trusted by default
    let out = list(Some(&ca)).success();
    assert!(String::from_utf8_lossy(&out.get_output().stdout).contains("admin  active  admin"));
    server.0.kill().unwrap();
    server.0.wait().unwrap();
}

#[test]
fn a_bad_config_stops_the_server_before_it_listens() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    warden().args(["init", "--data"]).arg(&data).assert().success();
    let config = tmp.path().join("warden.toml");
    let issuer = "[[identity.issuers]]\nissuer = \"https://spire.example\"\njwks_file = \"missing.json\"\n";
    std::fs::write(&config, format!("{issuer}trust_domains = [\"acme.example\"]\n")).unwrap();
    let run = |config: &Path| {
        warden()
            .args(["serve", "--listen", "127.0.0.1:0", "--data"])
            .arg(&data)
            .arg("--policy")
            .arg(example_dir())
            .arg("--config")
            .arg(config)
            .timeout(std::time::Duration::from_secs(20))
            .assert()
    };
    let a = run(&config).code(3);
    assert!(String::from_utf8_lossy(&a.get_output().stderr).contains("missing.json"));
    // A workload issuer must say which trust domains it speaks for.
    std::fs::write(&config, issuer).unwrap();
    let a = run(&config).code(3);
    assert!(String::from_utf8_lossy(&a.get_output().stderr).contains("trust_domains"));
    std::fs::write(&config, "[identity]\nissuers = []\nsurprise = 1\n").unwrap();
    let a = run(&config).code(3);
    assert!(String::from_utf8_lossy(&a.get_output().stderr).contains("surprise"));
}

#[test]
fn tls_flags_come_in_pairs_and_bad_files_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    warden().args(["init", "--data"]).arg(&data).assert().success();
    warden()
        .args(["serve", "--tls-cert", "x.pem", "--policy"])
        .arg(example_dir())
        .arg("--data")
        .arg(&data)
        .assert()
        .code(3);
    let a = warden()
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--tls-cert",
            "missing-cert.pem",
            "--tls-key",
            "missing-key.pem",
            "--policy",
        ])
        .arg(example_dir())
        .arg("--data")
        .arg(&data)
        .timeout(std::time::Duration::from_secs(20))
        .assert()
        .code(3);
    assert!(String::from_utf8_lossy(&a.get_output().stderr).contains("missing-cert.pem"));
}
