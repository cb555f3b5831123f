//! Many nodes, one PostgreSQL database (DESIGN §9): the real binary served three times over one
//! throwaway cluster, each node with its own copy of the data directory's keys. Requests are
//! spread round-robin; what one node commits binds the others.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::kill::{Ack, check_round, client, logged};
use crate::procs::Running;
use crate::respond::{lab_state, start_lab};
use crate::serve::http;
use crate::{example_dir, warden};

const EDR: &str = "spiffe://acme.example/soc/edr-responder";

/// A database, the data directories of `n` nodes (keys only), the admin's and the EDR
/// agent's tokens.
pub struct Cluster {
    pub url: String,
    pub dirs: Vec<tempfile::TempDir>,
    pub admin: String,
    pub edr: String,
}

/// `warden …` against the shared store, from node `0`'s directory.
pub fn on_store(url: &str, dir: &Path, args: &[&str]) -> String {
    let out = warden().args(args).arg("--data").arg(dir).env("WARDEN_STORE", url).assert().success();
    String::from_utf8(out.get_output().stdout.clone()).unwrap()
}

impl Cluster {
    /// `None` where the machine has no PostgreSQL (and none is required).
    pub fn new(n: usize) -> Option<Cluster> {
        let pg = warden_testpg::shared()?;
        let url = pg.fresh_database();
        let dirs: Vec<_> = (0..n).map(|_| tempfile::tempdir().unwrap()).collect();
        let init = on_store(&url, dirs[0].path(), &["init", "--output", "json"]);
        let admin = serde_json::from_str::<Value>(&init).unwrap()["admin_token"].as_str().unwrap().to_string();
        // Every node has the same keys: copies of the first directory (mode 0600 kept).
        for d in &dirs[1..] {
            for key in ["signing.key", "token.key"] {
                std::fs::copy(dirs[0].path().join(key), d.path().join(key)).unwrap();
            }
        }
        on_store(&url, dirs[0].path(), &["agent", "add", EDR, "--owner", "team:endpoint-response"]);
        let edr = on_store(&url, dirs[1 % n].path(), &["agent", "token", EDR, "--ttl", "1h"]).trim().to_string();
        Some(Cluster { url, dirs, admin, edr })
    }

    /// Starts node `i` (lab connectors at `lab`, extra arguments `extra`): the process and its
    /// address.
    pub fn start(
        &self,
        i: usize,
        policy: &Path,
        lab: &str,
        keys: &[(String, String)],
        extra: &[&str],
    ) -> (Running, String) {
        let mut cmd = Command::new(assert_cmd::cargo::cargo_bin("warden"));
        cmd.args(["serve", "--listen", "127.0.0.1:0"]).args(extra);
        for tool in ["edr", "idp", "firewall", "mail", "ticketing", "siem"] {
            cmd.arg("--tool-url").arg(format!("{tool}=http://{lab}"));
        }
        cmd.arg("--data").arg(self.dirs[i].path()).arg("--policy").arg(policy).env("WARDEN_STORE", &self.url);
        cmd.envs(keys.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        crate::procs::spawn_server(&mut cmd)
    }

    pub fn dir(&self, i: usize) -> PathBuf {
        self.dirs[i].path().to_path_buf()
    }
}

fn isolate(task: &str, host: &str) -> Value {
    json!({"task": task, "action": "host.isolate", "target": format!("host:{host}"), "confidence": 0.95,
           "params": {"reason": "beacon"}, "rationale": "C2", "evidence": [{"kind": "edr", "ref": "d:1"}]})
}

fn contained(lab: &str) -> u64 {
    lab_state(lab)["calls"]["by_path"]
        .as_object()
        .map_or(0, |m| m.iter().filter(|(p, _)| p.contains("/contain")).map(|(_, n)| n.as_u64().unwrap_or(0)).sum())
}

#[test]
fn three_nodes_share_one_log_one_budget_and_every_halt() {
    let Some(c) = Cluster::new(3) else { return };
    let (_lab, lab, keys) = start_lab(0);
    let nodes: Vec<(Running, String)> = (0..3).map(|i| c.start(i, &example_dir(), &lab, &keys, &[])).collect();
    let addr = |i: usize| nodes[i % 3].1.clone();
    let task = json!({"id": "INC-1", "title": "nodes", "trigger": {"source": "edr", "severity": "high"}});
    assert_eq!(http(&addr(0), "POST", "/v1/tasks", &c.edr, Some(&task)).unwrap().0, 201);

    // 60 at once on one host, spread over the three nodes: the hourly budget of 10 binds
    // across them all — a budget counted in the database, not per node.
    let answers: Vec<Value> = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..60)
            .map(|i| {
                let (a, t) = (addr(i), c.edr.clone());
                scope.spawn(move || http(&a, "POST", "/v1/actions", &t, Some(&isolate("INC-1", "web-42"))).unwrap())
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap().1).collect()
    });
    let executed = answers.iter().filter(|a| a["decision"]["outcome"] == "execute").count();
    assert_eq!(executed, 10, "{:?}", answers.iter().map(|a| a["state"].clone()).collect::<Vec<_>>());
    assert_eq!(contained(&lab), 10, "the tool was called once per execution");

    // A halt on node 1: once it has returned, nodes 0 and 2 start nothing that matches.
    let halt = json!({"scope": "action", "id": "host.isolate", "reason": "drill"});
    let (status, h) = http(&addr(1), "POST", "/v1/halt", &c.admin, Some(&halt)).unwrap();
    assert_eq!(status, 200, "{h}");
    for i in [0, 2] {
        let (status, a) = http(&addr(i), "POST", "/v1/actions", &c.edr, Some(&isolate("INC-1", "web-01"))).unwrap();
        assert_ne!(a["state"], "succeeded", "node {i} ran a halted action: {a}");
        // Refused for the halt (its mirror read again), not worn out by conflicts.
        assert!(a.to_string().contains("halt"), "node {i}: {status} {a}");
    }
    assert_eq!(contained(&lab), 10, "nothing reached the tool after the halt");

    // A resume on node 2 reaches the others within a moment (a node keeps in step 4× a second).
    let resume = json!({"scope": "action", "id": "host.isolate", "reason": "drill over"});
    assert_eq!(http(&addr(2), "POST", "/v1/resume", &c.admin, Some(&resume)).unwrap().0, 200);
    std::thread::sleep(Duration::from_millis(600));
    let (_, a) = http(&addr(0), "POST", "/v1/actions", &c.edr, Some(&isolate("INC-1", "web-01"))).unwrap();
    assert!(!a.to_string().contains("halt"), "the resume did not reach node 0: {a}");

    drop(nodes);
    warden().args(["audit", "verify"]).arg("--data").arg(c.dir(0)).env("WARDEN_STORE", &c.url).assert().success();
}

/// Long polls wake on every node: an approval decided on node 0 answers a `?wait` on node 1.
#[test]
fn a_long_poll_on_one_node_sees_a_decision_made_on_another() {
    let Some(c) = Cluster::new(2) else { return };
    let (_lab, lab, keys) = start_lab(0);
    let nodes: Vec<(Running, String)> = (0..2).map(|i| c.start(i, &example_dir(), &lab, &keys, &[])).collect();
    let ana = serde_json::from_str::<Value>(&on_store(
        &c.url,
        &c.dir(0),
        &["user", "add", "ana", "--role", "soc-analyst", "--output", "json"],
    ))
    .unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string();
    let task = json!({"id": "INC-2", "title": "nodes", "trigger": {"source": "edr", "severity": "high"}});
    assert_eq!(http(&nodes[0].1, "POST", "/v1/tasks", &c.edr, Some(&task)).unwrap().0, 201);
    // A tier0 host: a human decides.
    let (_, a) = http(&nodes[0].1, "POST", "/v1/actions", &c.edr, Some(&isolate("INC-2", "db-payments-01"))).unwrap();
    assert_eq!(a["decision"]["outcome"], "require_approval", "{a}");
    let id = a["id"].as_str().unwrap().to_string();
    let approval = a["decision"]["approval"]["id"].as_str().unwrap().to_string();
    let waiter = {
        let (addr, token, id) = (nodes[1].1.clone(), c.edr.clone(), id.clone());
        std::thread::spawn(move || {
            let started = Instant::now();
            let (_, r) = http(&addr, "GET", &format!("/v1/actions/{id}?wait=30s"), &token, None).unwrap();
            (r, started.elapsed())
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    let vote = json!({"reason": "confirmed beacon"});
    let (status, v) =
        http(&nodes[0].1, "POST", &format!("/v1/approvals/{approval}/approve"), &ana, Some(&vote)).unwrap();
    assert_eq!(status, 200, "{v}");
    let (r, waited) = waiter.join().unwrap();
    assert!(waited < Duration::from_secs(10), "the wait on node 1 ended {waited:?} after it began: {r}");
    assert_ne!(r["state"], "pending_approval", "{r}");
}

fn bundle_of(addr: &str) -> String {
    http(addr, "GET", "/readyz", "-", None).unwrap().1["bundle_version"].as_str().unwrap().to_string()
}

/// Waits up to `within` for `f` to hold.
fn eventually(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let started = Instant::now();
    while started.elapsed() < within {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    f()
}

/// A bundle loaded on one node is in force on all (the store holds it); a node restarted with
/// a policy directory left behind at a replaced bundle runs the one in force and its watcher
/// does not put the old one back; an admin can, on purpose.
#[test]
fn the_bundle_in_force_is_the_stores_and_a_left_behind_node_does_not_roll_it_back() {
    let Some(c) = Cluster::new(2) else { return };
    let (_lab, lab, keys) = start_lab(0);
    let (dir_a, dir_b) = (crate::example_copy(), crate::example_copy());
    let poll = ["--policy-poll", "1"];
    let a = c.start(0, dir_a.path(), &lab, &keys, &poll);
    let mut b = c.start(1, dir_b.path(), &lab, &keys, &poll);
    let old = bundle_of(&a.1);
    assert_eq!(bundle_of(&b.1), old);
    // A deploy reaches node A's directory first: its watcher loads it, node B follows.
    crate::edit(dir_a.path(), "agents/edr-responder.toml", "max_per_hour = 10", "max_per_hour = 11");
    assert!(eventually(Duration::from_secs(10), || bundle_of(&a.1) != old), "node A did not load its new files");
    let new = bundle_of(&a.1);
    assert!(eventually(Duration::from_secs(5), || bundle_of(&b.1) == new), "node B did not follow node A's load");
    // Node B restarts with its directory still at the old bundle: it runs the new one, and
    // neither its start nor its watcher puts the old one back.
    drop(b);
    b = c.start(1, dir_b.path(), &lab, &keys, &poll);
    assert_eq!(bundle_of(&b.1), new, "a left-behind node rolled the policy back at its start");
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!((bundle_of(&a.1), bundle_of(&b.1)), (new.clone(), new.clone()), "a watcher rolled the policy back");
    // An admin may roll back on purpose: the reload on node B puts its directory in force.
    let (status, r) = http(&b.1, "POST", "/v1/policy/reload", &c.admin, None).unwrap();
    assert_eq!((status, r["changed"].clone()), (200, json!(true)), "{r}");
    assert!(eventually(Duration::from_secs(5), || bundle_of(&a.1) == old), "node A did not follow the rollback");
    drop((a, b));
}

/// One raw HTTP/1.1 exchange: (status, headers lowercased, body).
fn raw(addr: &str, method: &str, path: &str, cookie: Option<&str>, form: Option<&str>) -> (u16, String, String) {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    let body = form.unwrap_or("");
    let cookie = cookie.map(|c| format!("cookie: {c}\r\n")).unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\norigin: http://{addr}\r\n{cookie}content-type: application/x-www-form-urlencoded\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, head.to_lowercase(), body.to_string())
}

/// A console sign-in is good on every node; a sign-out on one ends it on all.
#[test]
fn a_console_session_is_every_nodes() {
    let Some(c) = Cluster::new(2) else { return };
    let (_lab, lab, keys) = start_lab(0);
    let nodes: Vec<(Running, String)> = (0..2).map(|i| c.start(i, &example_dir(), &lab, &keys, &[])).collect();
    let add = |name: &str| {
        let out = on_store(&c.url, &c.dir(0), &["user", "add", name, "--role", "soc-analyst", "--output", "json"]);
        serde_json::from_str::<Value>(&out).unwrap()["token"].as_str().unwrap().to_string()
    };
    let sign_in = |node: usize, token: &str| {
        let (status, head, _) = raw(&nodes[node].1, "POST", "/console/sign-in", None, Some(&format!("token={token}")));
        assert_eq!(status, 303, "{head}");
        let cookie = head.lines().find_map(|l| l.strip_prefix("set-cookie: ")).unwrap();
        cookie.split(';').next().unwrap().to_string()
    };
    let inbox = |node: usize, cookie: &str| raw(&nodes[node].1, "GET", "/console/inbox", Some(cookie), None);

    let ana = add("ana");
    let cookie = sign_in(0, &ana);
    let (status, _, page) = inbox(1, &cookie);
    assert_eq!(status, 200, "signed in on node 0, served by node 1");
    let csrf = page.split("name=\"csrf\" value=\"").nth(1).unwrap().split('"').next().unwrap().to_string();
    let (status, head, _) = raw(&nodes[1].1, "POST", "/console/sign-out", Some(&cookie), Some(&format!("csrf={csrf}")));
    assert_eq!(status, 303, "{head}");
    let (status, head, _) = inbox(0, &cookie);
    assert_eq!(status, 303, "signed out on node 1, still in on node 0: {head}");
    assert!(head.contains("location: /console/sign-in"), "{head}");

    // A user disabled beside the nodes (`warden user disable` on the store) is out of both.
    let ben = add("ben");
    let cookie = sign_in(0, &ben);
    assert_eq!(inbox(1, &cookie).0, 200);
    on_store(&c.url, &c.dir(0), &["user", "disable", "ben", "--reason", "left"]);
    for node in 0..2 {
        let (status, head, _) = inbox(node, &cookie);
        assert_ne!(status, 200, "ben disabled, still in on node {node}: {head}");
    }
}

/// Three nodes under mixed load, one of them (any: every node signs its own commits, one at a
/// time) killed with SIGKILL at 10 random moments and started again. The others carry on;
/// after each kill the log verifies, every answer any client received is in it, and no tool
/// call was made twice; at the end, the calls the killed nodes left are `unknown`, not
/// executing, and nothing was retried.
#[test]
fn ten_kills_of_random_nodes_under_load_lose_nothing_and_run_nothing_twice() {
    let Some(c) = Cluster::new(3) else { return };
    let mut next = crate::kill::seeded("nodes kill test");
    // Tool calls take 100 ms: kills land in the middle of some.
    let (_lab, lab, keys) = start_lab(100);
    let policy = crate::example_copy();
    crate::edit(policy.path(), "agents/edr-responder.toml", "max_per_hour = 10", "max_per_hour = 100000");
    crate::edit(policy.path(), "agents/enrichment-bot.toml", "max_per_hour = 5000", "max_per_hour = 100000");
    const ENRICH: &str = "spiffe://acme.example/soc/enrichment-bot";
    on_store(&c.url, &c.dir(0), &["agent", "add", ENRICH, "--owner", "team:soc-engineering"]);
    let enrich = on_store(&c.url, &c.dir(0), &["agent", "token", ENRICH, "--ttl", "1h"]).trim().to_string();
    let tokens = Arc::new((c.edr.clone(), enrich));
    let rate = ["--agent-rate", "100000", "--agent-burst", "100000"];
    let mut nodes: Vec<(Running, String)> = (0..3).map(|i| c.start(i, policy.path(), &lab, &keys, &rate)).collect();
    for (id, token) in [("INC-9", &tokens.0), ("INC-10", &tokens.1)] {
        let task = json!({"id": id, "title": "kill test", "trigger": {"source": "edr", "severity": "high"}});
        assert_eq!(http(&nodes[0].1, "POST", "/v1/tasks", token, Some(&task)).unwrap().0, 201);
    }
    let mut all: Vec<Ack> = Vec::new();
    for round in 0..10u32 {
        let victim = (next() % 3) as usize;
        let stop = Arc::new(AtomicBool::new(false));
        let acks = Arc::new(Mutex::new(Vec::new()));
        let clients: Vec<_> = (0..6)
            .map(|me| {
                let (addr, tokens, acks, stop) = (nodes[me % 3].1.clone(), tokens.clone(), acks.clone(), stop.clone());
                std::thread::spawn(move || client(&addr, &tokens, &format!("{round}-{me}"), &stop, &acks))
            })
            .collect();
        std::thread::sleep(Duration::from_millis(300 + next() % 900));
        let (dead, _) = std::mem::replace(&mut nodes[victim], c.start(victim, policy.path(), &lab, &keys, &rate));
        drop(dead); // SIGKILL (its replacement is already up: a node started beside it)
        std::thread::sleep(Duration::from_millis(200));
        stop.store(true, Ordering::Relaxed);
        for t in clients {
            t.join().expect("a client failed on an answer it received");
        }
        let acks = std::mem::take(&mut *acks.lock().unwrap());
        assert!(!acks.is_empty(), "round {round}: no answers");
        warden().args(["audit", "verify", "--data"]).arg(c.dir(0)).env("WARDEN_STORE", &c.url).assert().success();
        check_round(round, &logged(&c.dir(0), Some(&c.url)), acks, &mut all, &lab);
    }
    // The calls the killed nodes left become `unknown` once their heartbeats have aged; the
    // live nodes do it, and retry nothing.
    let calls = lab_state(&lab)["calls"]["total"].as_u64().unwrap();
    let settled = eventually(Duration::from_secs(30), || {
        http(&nodes[1].1, "GET", "/v1/actions?state=executing", &c.admin, None).unwrap().1 == json!([])
    });
    assert!(settled, "calls of killed nodes are still `executing`");
    assert_eq!(lab_state(&lab)["calls"]["total"].as_u64().unwrap(), calls, "nothing was retried");
    let unknown = http(&nodes[2].1, "GET", "/v1/actions?state=unknown", &c.admin, None).unwrap().1;
    drop(nodes);
    warden().args(["audit", "verify", "--data"]).arg(c.dir(0)).env("WARDEN_STORE", &c.url).assert().success();
    let count = |s: &str| all.iter().filter(|a| a.state == s).count();
    eprintln!(
        "nodes kill test: {} answers over 10 kills: {} advised, {} denied, {} pending approval, {} succeeded; \
         {} calls left by killed nodes now unknown",
        all.len(),
        count("advised"),
        count("denied"),
        count("pending_approval"),
        count("succeeded"),
        unknown.as_array().map_or(0, Vec::len),
    );
    for state in ["advised", "denied", "pending_approval", "succeeded"] {
        assert!(count(state) > 0, "the mix reached `{state}`");
    }
}

/// A node starting never touches another live node's tool call in progress (it used to mark
/// every `executing` call `unknown` at its start); a call left by a killed node becomes
/// `unknown` once its heartbeat has aged, on a live node, and is not retried.
#[test]
fn a_node_starting_leaves_live_calls_alone_and_a_killed_nodes_become_unknown() {
    let Some(c) = Cluster::new(2) else { return };
    const ENRICH: &str = "spiffe://acme.example/soc/enrichment-bot";
    on_store(&c.url, &c.dir(0), &["agent", "add", ENRICH, "--owner", "team:soc-engineering"]);
    let enrich = on_store(&c.url, &c.dir(0), &["agent", "token", ENRICH, "--ttl", "1h"]).trim().to_string();
    // Every tool call takes 3 s.
    let (_lab, lab, keys) = start_lab(3000);
    let a = c.start(0, &example_dir(), &lab, &keys, &[]);
    let task = json!({"id": "INC-3", "title": "nodes", "trigger": {"source": "siem", "severity": "high"}});
    assert_eq!(http(&a.1, "POST", "/v1/tasks", &enrich, Some(&task)).unwrap().0, 201);
    let ask = |alert: &str| {
        json!({"task": "INC-3", "action": "alert.enrich", "target": format!("alert:{alert}"), "confidence": 0.95,
               "params": {}, "rationale": "nodes", "evidence": [{"kind": "siem", "ref": "a:1"}]})
    };
    // A call under way on node A while node B starts: it finishes `succeeded`.
    let running = {
        let (addr, token, body) = (a.1.clone(), enrich.clone(), ask("live"));
        std::thread::spawn(move || http(&addr, "POST", "/v1/actions", &token, Some(&body)).unwrap().1)
    };
    std::thread::sleep(Duration::from_millis(800));
    let b = c.start(1, &example_dir(), &lab, &keys, &[]);
    let done = running.join().unwrap();
    assert_eq!(done["state"], "succeeded", "node B's start broke node A's call: {done}");

    // A call under way on node A when A is killed: node B marks it `unknown` once A's
    // heartbeat is 10 s old, and nobody calls the tool again.
    let left = {
        let (addr, token, body) = (a.1.clone(), enrich.clone(), ask("orphan"));
        std::thread::spawn(move || http(&addr, "POST", "/v1/actions", &token, Some(&body)))
    };
    std::thread::sleep(Duration::from_millis(800));
    let killed_at = Instant::now();
    drop(a);
    let _ = left.join();
    let (_, executing) = http(&b.1, "GET", "/v1/actions?state=executing", &c.admin, None).unwrap();
    assert_eq!(executing.as_array().map(Vec::len), Some(1), "the orphan is executing until A is known gone");
    let id = executing[0]["id"].as_str().unwrap().to_string();
    let became = eventually(Duration::from_secs(25), || {
        http(&b.1, "GET", &format!("/v1/actions/{id}"), &c.admin, None).unwrap().1["state"] == "unknown"
    });
    assert!(became, "node B did not reconcile the killed node's call");
    let after = killed_at.elapsed();
    assert!(after >= Duration::from_secs(8), "reconciled while A's heartbeat was fresh ({after:?})");
    std::thread::sleep(Duration::from_millis(3500));
    let calls: BTreeMap<String, u64> = serde_json::from_value(lab_state(&lab)["calls"]["by_path"].clone()).unwrap();
    assert_eq!(calls.get("POST /siem/api/alerts/orphan/enrich"), Some(&1), "{calls:?}");
    drop(b);
}

/// The database goes away under load: every node answers 503 `store_unavailable` (nothing is
/// reported done that is not recorded), and all carry on when it is back, without a restart.
#[test]
fn every_node_fails_closed_while_the_database_is_down_and_recovers() {
    let Some(_) = warden_testpg::shared() else { return };
    let pg = warden_testpg::Cluster::start().unwrap();
    let url = pg.fresh_database();
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let init = on_store(&url, dirs[0].path(), &["init", "--output", "json"]);
    let admin = serde_json::from_str::<Value>(&init).unwrap()["admin_token"].as_str().unwrap().to_string();
    for key in ["signing.key", "token.key"] {
        std::fs::copy(dirs[0].path().join(key), dirs[1].path().join(key)).unwrap();
    }
    on_store(&url, dirs[0].path(), &["agent", "add", EDR, "--owner", "team:endpoint-response"]);
    let edr = on_store(&url, dirs[0].path(), &["agent", "token", EDR, "--ttl", "1h"]).trim().to_string();
    let c = Cluster { url, dirs, admin, edr };
    let (_lab, lab, keys) = start_lab(0);
    let nodes: Vec<(Running, String)> = (0..2).map(|i| c.start(i, &example_dir(), &lab, &keys, &[])).collect();
    let task = json!({"id": "INC-4", "title": "nodes", "trigger": {"source": "edr", "severity": "high"}});
    assert_eq!(http(&nodes[0].1, "POST", "/v1/tasks", &c.edr, Some(&task)).unwrap().0, 201);
    // Advice: recorded, never executed; low confidence on a known host.
    let advise = json!({"task": "INC-4", "action": "host.isolate", "target": "host:web-01", "confidence": 0.3,
                        "params": {"reason": "beacon"}, "rationale": "db test", "evidence": [{"kind": "edr", "ref": "d:1"}]});
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Vec::<(u16, Value)>::new()));
    let load: Vec<_> = (0..4)
        .map(|i| {
            let (addr, token, body, stop, seen) =
                (nodes[i % 2].1.clone(), c.edr.clone(), advise.clone(), stop.clone(), seen.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(r) = http(&addr, "POST", "/v1/actions", &token, Some(&body)) {
                        seen.lock().unwrap().push(r);
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    pg.stop();
    let down_from = seen.lock().unwrap().len();
    std::thread::sleep(Duration::from_secs(2));
    let down_to = seen.lock().unwrap().len();
    pg.start_again().unwrap();
    let back = eventually(Duration::from_secs(20), || {
        (0..2).all(|i| http(&nodes[i].1, "POST", "/v1/actions", &c.edr, Some(&advise)).is_ok_and(|r| r.0 == 200))
    });
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.join().unwrap();
    }
    assert!(back, "the nodes did not recover when the database came back");
    let seen = seen.lock().unwrap();
    // While it was down (a request in flight at the stop may have been either): only 503s.
    let during = &seen[down_from + 4..down_to];
    assert!(!during.is_empty(), "no request was made while the database was down");
    for (status, body) in during {
        assert_eq!((*status, &body["error"]["code"]), (503, &json!("store_unavailable")), "{body}");
    }
    // Every request answered 200 is in the log.
    let log = logged(&c.dir(0), Some(&c.url));
    for (_, body) in seen.iter().filter(|(s, _)| *s == 200) {
        let id = body["id"].as_str().unwrap().to_string();
        assert!(log.contains(&(id, "decision.made".into())), "answered, not logged: {body}");
    }
    drop(nodes);
    warden().args(["audit", "verify", "--data"]).arg(c.dir(0)).env("WARDEN_STORE", &c.url).assert().success();
}

/// `warden store migrate`: a SQLite data directory moves into PostgreSQL with the same log
/// (same entries, same root; it verifies), its records and its keys' tokens still good; a
/// database that already holds a log is refused.
#[test]
fn a_sqlite_data_directory_moves_into_postgres_with_the_same_log() {
    let Some(pg) = warden_testpg::shared() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path();
    let admin = crate::serve::init_admin(data);
    crate::serve::stdout_of(data, &["agent", "add", EDR, "--owner", "team:endpoint-response"]);
    let edr = crate::serve::stdout_of(data, &["agent", "token", EDR, "--ttl", "1h"]).trim().to_string();
    let (_lab, lab, keys) = start_lab(0);
    let serve_sqlite = |data: &Path| {
        let mut cmd = Command::new(assert_cmd::cargo::cargo_bin("warden"));
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--data"]).arg(data).arg("--policy").arg(example_dir());
        for tool in ["edr", "idp", "firewall", "mail", "ticketing", "siem"] {
            cmd.arg("--tool-url").arg(format!("{tool}=http://{lab}"));
        }
        cmd.envs(keys.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        crate::procs::spawn_server(&mut cmd)
    };
    let (server, addr) = serve_sqlite(data);
    let task = json!({"id": "INC-5", "title": "move", "trigger": {"source": "edr", "severity": "high"}});
    assert_eq!(http(&addr, "POST", "/v1/tasks", &edr, Some(&task)).unwrap().0, 201);
    let (_, done) = http(&addr, "POST", "/v1/actions", &edr, Some(&isolate("INC-5", "web-01"))).unwrap();
    assert_eq!(done["state"], "succeeded", "{done}");
    let (_, waiting) = http(&addr, "POST", "/v1/actions", &edr, Some(&isolate("INC-5", "db-payments-01"))).unwrap();
    assert_eq!(waiting["state"], "pending_approval", "{waiting}");
    drop(server);
    let before = crate::serve::stdout_of(data, &["audit", "verify"]);

    let url = pg.fresh_database();
    let out = warden().args(["store", "migrate", "--output", "json", "--from"]).arg(data).args(["--to", &url]).assert();
    let moved: Value = serde_json::from_slice(&out.success().get_output().stdout).unwrap();
    assert!(moved["entries"].as_u64().unwrap() > 5, "{moved}");
    let after = on_store(&url, data, &["audit", "verify"]);
    assert_eq!(after, before, "the same log: entries, checkpoints, root");
    assert!(after.contains(moved["root"].as_str().unwrap()), "{after} vs {moved}");

    // Served from PostgreSQL: the old token, the task, the pending approval, all there.
    let c = Cluster { url: url.clone(), dirs: Vec::new(), admin: admin.clone(), edr: edr.clone() };
    let mut cmd = Command::new(assert_cmd::cargo::cargo_bin("warden"));
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--data"]).arg(data).arg("--policy").arg(example_dir());
    cmd.env("WARDEN_STORE", &c.url);
    let (node, addr) = crate::procs::spawn_server(&mut cmd);
    let id = waiting["id"].as_str().unwrap();
    let (status, again) = http(&addr, "GET", &format!("/v1/actions/{id}"), &edr, None).unwrap();
    assert_eq!((status, again["state"].clone()), (200, json!("pending_approval")), "{again}");
    let (status, more) = http(&addr, "POST", "/v1/actions", &edr, Some(&isolate("INC-5", "web-02"))).unwrap();
    assert_eq!(status, 200, "{more}");
    drop(node);
    on_store(&url, data, &["audit", "verify"]);

    // Into a database that holds a log: refused, and nothing changed there.
    let size = |url: &str| on_store(url, data, &["audit", "checkpoint"]);
    let kept = size(&url);
    let refused = warden().args(["store", "migrate", "--from"]).arg(data).args(["--to", &url]).assert().failure();
    let err = String::from_utf8_lossy(&refused.get_output().stderr).to_string();
    assert!(err.contains("already holds a Warden log"), "{err}");
    assert_eq!(size(&url), kept);
}

/// A node whose `connectors.toml` is not the bundle in force's (a deploy reached another node
/// first; the attack made an unbound path call a domain controller this way) calls no tool:
/// the request fails `connectors_stale`, audited, and the lab sees nothing; a node with the
/// bundle's files executes as ever.
#[test]
fn a_node_whose_connectors_are_not_the_bundles_calls_no_tool() {
    let Some(c) = Cluster::new(2) else { return };
    let (_lab, lab, keys) = start_lab(0);
    let (old, new) = (crate::example_copy(), crate::example_copy());
    // The old deploy's connectors.toml: the contain call elsewhere (a mapping since replaced).
    crate::edit(old.path(), "connectors.toml", "/contain", "/contain-v0");
    let p = c.start(0, old.path(), &lab, &keys, &[]);
    let q = c.start(1, new.path(), &lab, &keys, &[]);
    assert!(eventually(Duration::from_secs(5), || bundle_of(&p.1) == bundle_of(&q.1)), "node P follows Q's load");
    let task = json!({"id": "INC-6", "title": "nodes", "trigger": {"source": "edr", "severity": "high"}});
    assert_eq!(http(&p.1, "POST", "/v1/tasks", &c.edr, Some(&task)).unwrap().0, 201);
    let (status, a) = http(&p.1, "POST", "/v1/actions", &c.edr, Some(&isolate("INC-6", "web-01"))).unwrap();
    assert_ne!(a["state"], "succeeded", "{status} {a}");
    assert!(a.to_string().contains("connectors_stale"), "{status} {a}");
    assert_eq!(contained(&lab), 0, "no tool was called through the old mapping");
    let (_, b) = http(&q.1, "POST", "/v1/actions", &c.edr, Some(&isolate("INC-6", "web-02"))).unwrap();
    assert_eq!(b["state"], "succeeded", "{b}");
    assert_eq!(contained(&lab), 1);
}
