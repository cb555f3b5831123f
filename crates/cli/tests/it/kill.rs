//! Kill test (issue 8): the real server under mixed load — advise, deny, approvals, executions
//! against the lab — is killed with SIGKILL at 20 random moments and restarted on the same data
//! directory. After each kill: the log verifies, every answer a client received is in it (its
//! decision and, for a finished execution, its result), and no tool call was made twice.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::respond::{Running, lab_state, start_lab};
use crate::serve::{http, stdout_of};
use crate::{edit, example_copy, warden};

const EDR: &str = "spiffe://acme.example/soc/edr-responder";
const ENRICH: &str = "spiffe://acme.example/soc/enrichment-bot";
const KILLS: u32 = 20;

fn start_server(data: &Path, policy: &Path, lab: &str, keys: &[(String, String)]) -> (Running, String) {
    let mut cmd = Command::new(assert_cmd::cargo::cargo_bin("warden"));
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--agent-rate", "100000", "--agent-burst", "100000"]);
    for tool in ["edr", "idp", "firewall", "mail", "ticketing", "siem"] {
        cmd.arg("--tool-url").arg(format!("{tool}=http://{lab}"));
    }
    cmd.arg("--data").arg(data).arg("--policy").arg(policy).envs(keys.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    crate::procs::spawn_server(&mut cmd)
}

/// An answer a client received: the request id, its state, and the tool path it ran on.
#[derive(Debug, Clone)]
pub struct Ack {
    pub id: String,
    pub state: String,
    pub path: Option<String>,
}

/// One client (`tag` names its alerts and hosts): a mix of the four outcomes until its server
/// dies or `stop` is set. Shared with the kill test over many nodes.
pub fn client(addr: &str, tokens: &(String, String), tag: &str, stop: &AtomicBool, acks: &Mutex<Vec<Ack>>) {
    let (edr, enrich) = tokens;
    for n in 0u64.. {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let ask = |action: &str, target: &str, confidence: f64| {
            let params = if action == "alert.enrich" { json!({}) } else { json!({"reason": "beacon"}) };
            // Each agent works in its own task (an agent's task is its alone).
            let task = if action == "alert.enrich" { "INC-10" } else { "INC-9" };
            json!({"task": task, "action": action, "target": target, "confidence": confidence,
                   "params": params, "rationale": "kill test", "evidence": [{"kind": "edr", "ref": "d:1"}]})
        };
        let alert = format!("k-{tag}-{n}");
        let (token, body, path) = match n % 4 {
            0 => (edr, ask("host.isolate", "host:web-01", 0.3), None), // advise
            1 => (edr, ask("host.wipe", "host:web-01", 0.95), None),   // deny
            2 => (edr, ask("host.isolate", &format!("host:unknown-{tag}"), 0.95), None), // approval
            _ => (
                enrich,
                ask("alert.enrich", &format!("alert:{alert}"), 0.95),
                Some(format!("POST /siem/api/alerts/{alert}/enrich")),
            ),
        };
        let Ok((status, answer)) = http(addr, "POST", "/v1/actions", token, Some(&body)) else { return };
        if status == 0 || answer.get("id").is_none() {
            return; // the server died mid-answer
        }
        assert_eq!(status, 200, "{answer}");
        let state = answer["state"].as_str().unwrap().to_string();
        acks.lock().unwrap().push(Ack { id: answer["id"].as_str().unwrap().to_string(), state, path });
    }
}

/// `(request, type)` of every entry in the log of `data` (on the store `store`, if given).
pub fn logged(data: &Path, store: Option<&str>) -> HashSet<(String, String)> {
    let mut cmd = warden();
    cmd.args(["audit", "export", "--format", "jsonl", "--data"]).arg(data);
    if let Some(url) = store {
        cmd.env("WARDEN_STORE", url);
    }
    let out = cmd.assert().success();
    String::from_utf8(out.get_output().stdout.clone())
        .unwrap()
        .lines()
        .filter_map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            let e = &v["entry"];
            Some((e["request"].as_str()?.to_string(), e["type"].as_str()?.to_string()))
        })
        .collect()
}

/// A xorshift generator seeded from the clock (the seed printed, to replay a failure).
pub fn seeded(what: &str) -> impl FnMut() -> u64 {
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1;
    eprintln!("{what} seed {seed}");
    let mut rng = seed;
    move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    }
}

/// After a kill: every answer `acks` received is in `log` (its decision and, for a finished
/// execution, its result); no tool path was called twice; every success reached the tool.
pub fn check_round(round: u32, log: &HashSet<(String, String)>, acks: Vec<Ack>, all: &mut Vec<Ack>, lab: &str) {
    for a in &acks {
        assert!(log.contains(&(a.id.clone(), "decision.made".into())), "round {round}: {a:?} answered, not logged");
        if a.state == "succeeded" || a.state == "failed" {
            let ended = (a.id.clone(), format!("execution.{}", a.state));
            assert!(log.contains(&ended), "round {round}: {a:?} finished, not logged");
        }
    }
    all.extend(acks);
    // Let the lab finish the calls it received before looking at its counters.
    std::thread::sleep(Duration::from_millis(50));
    let paths: BTreeMap<String, u64> = serde_json::from_value(lab_state(lab)["calls"]["by_path"].clone()).unwrap();
    // (`GET /` is the connectors' health check at start.)
    if let Some((path, n)) = paths.iter().find(|(p, n)| !p.starts_with("GET ") && **n > 1) {
        panic!("round {round}: `{path}` was called {n} times");
    }
    for a in all.iter().filter(|a| a.state == "succeeded") {
        let path = a.path.as_ref().expect("only enrichments execute here");
        assert_eq!(paths.get(path), Some(&1), "round {round}: {a:?} succeeded, the tool never saw it");
    }
}

#[test]
fn twenty_kills_under_mixed_load_lose_nothing_and_run_nothing_twice() {
    let mut next = seeded("kill test");
    let (_lab, lab, keys) = start_lab(5);
    // The example bundle with the responders' hourly budgets raised: executions keep running.
    let policy = example_copy();
    edit(policy.path(), "agents/edr-responder.toml", "max_per_hour = 10", "max_per_hour = 100000");
    edit(policy.path(), "agents/enrichment-bot.toml", "max_per_hour = 5000", "max_per_hour = 100000");
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path();
    let admin = crate::serve::init_admin(data);
    stdout_of(data, &["agent", "add", EDR, "--owner", "team:endpoint-response"]);
    stdout_of(data, &["agent", "add", ENRICH, "--owner", "team:soc-engineering"]);
    let tokens = Arc::new((
        stdout_of(data, &["agent", "token", EDR, "--ttl", "1h"]).trim().to_string(),
        stdout_of(data, &["agent", "token", ENRICH, "--ttl", "1h"]).trim().to_string(),
    ));

    let mut all: Vec<Ack> = Vec::new();
    for round in 0..KILLS {
        let (server, addr) = start_server(data, policy.path(), &lab, &keys);
        if round == 0 {
            let task = json!({"id": "INC-9", "title": "kill test", "trigger": {"source": "edr", "severity": "high"}});
            assert_eq!(http(&addr, "POST", "/v1/tasks", &tokens.0, Some(&task)).unwrap().0, 201);
            let task = json!({"id": "INC-10", "title": "kill test", "trigger": {"source": "siem", "severity": "high"}});
            assert_eq!(http(&addr, "POST", "/v1/tasks", &tokens.1, Some(&task)).unwrap().0, 201);
        }
        let acks = Arc::new(Mutex::new(Vec::new()));
        let clients: Vec<_> = (0..6)
            .map(|me| {
                let (addr, tokens, acks) = (addr.clone(), tokens.clone(), acks.clone());
                let never = AtomicBool::new(false);
                std::thread::spawn(move || client(&addr, &tokens, &format!("{round}-{me}"), &never, &acks))
            })
            .collect();
        let alive = Duration::from_millis(300 + next() % 900);
        let started = Instant::now();
        std::thread::sleep(alive);
        drop(server); // SIGKILL
        for c in clients {
            c.join().expect("a client failed on an answer it received");
        }
        let acks = std::mem::take(&mut *acks.lock().unwrap());
        assert!(!acks.is_empty() || round > 0, "no answer in the first {:?}", started.elapsed());

        warden().args(["audit", "verify", "--data"]).arg(data).assert().success();
        check_round(round, &logged(data, None), acks, &mut all, &lab);
    }

    // A last restart: nothing is left executing, interrupted executions are `unknown`, and
    // nothing was retried.
    let calls = lab_state(&lab)["calls"]["total"].as_u64().unwrap();
    let (server, addr) = start_server(data, policy.path(), &lab, &keys);
    let (status, executing) = http(&addr, "GET", "/v1/actions?state=executing", &admin, None).unwrap();
    assert_eq!((status, executing), (200, json!([])), "nothing is left executing");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(lab_state(&lab)["calls"]["total"].as_u64().unwrap(), calls, "nothing was retried");
    drop(server);
    warden().args(["audit", "verify", "--data"]).arg(data).assert().success();
    let count = |s: &str| all.iter().filter(|a| a.state == s).count();
    eprintln!(
        "kill test: {} answers over {KILLS} kills: {} advised, {} denied, {} pending approval, {} succeeded, {} tool calls",
        all.len(),
        count("advised"),
        count("denied"),
        count("pending_approval"),
        count("succeeded"),
        calls
    );
    for state in ["advised", "denied", "pending_approval", "succeeded"] {
        assert!(count(state) > 0, "the mix reached `{state}`");
    }
}
