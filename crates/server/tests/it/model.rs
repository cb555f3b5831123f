//! A model-based test of the whole authority state machine: random interleavings of requests
//! (identical ones that fold, others that must not), approvals, rejections, suspends, halts,
//! resumes, task closes, policy reloads into and out of shadow mode, rollbacks and restarts,
//! run against the real server and the lab estate. After every step the audit log and the
//! lab's counters must show that:
//!
//! - every tool call is audited once (the lab's calls equal the log's starts);
//! - every execution has an `execute` decision, or an approval, of the same action digest;
//! - nothing ran after a stop that preceded it (halt, suspend, task close, shadow mode);
//! - nothing ran while the bundle in force revoked its grant (a reload between approval and
//!   start: the approved request is decided again when it starts);
//! - no autonomous execution went past a budget (every execution counted, approved ones too);
//! - every halt, rollback and task close was made by a principal with the authority for it:
//!   a `tool` credential, an admin rolling back or an agent closing a human's task never are
//!   (issue 23: several principals try every change, through the API and halts with rollback).
//!
//! `WARDEN_MODEL_CASES=N` runs N random histories (default 24); `WARDEN_MODEL_STATS=1` prints
//! what each one did (executions, refusals, approvals, rollbacks, halts).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::http::StatusCode;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{Value, json};
use warden_core::audit::entry::Actor;
use warden_core::{Bundle, SourceFile};
use warden_server::state::ServerOptions;
use warden_server::{AppState, admin, router};
use warden_store::{DataDir, LedgerOptions, SystemClock};

use crate::{EDR, Harness, connector, example_dir, read_bundle};

#[derive(Debug, Clone)]
enum Op {
    /// `process.kill` on web-42 (level 2): the same pid is the same digest and folds.
    Kill {
        pid: u8,
    },
    /// `host.isolate`: tier2 hosts execute on their own within budget; db-payments-01 (tier1)
    /// goes to a human.
    Isolate {
        host: u8,
    },
    Approve {
        pick: u8,
    },
    Reject {
        pick: u8,
    },
    Suspend,
    Unsuspend,
    HaltAgent,
    HaltAction,
    ResumeHalts,
    CloseTask,
    OpenTask,
    Shadow(bool),
    Rollback {
        pick: u8,
    },
    /// A rollback asked by someone else: the analyst (may), the tool credential or the admin
    /// (may not: admin alone is not host.release's approver).
    RollbackAs {
        pick: u8,
        who: u8,
    },
    /// A halt of the action with `rollback: true`, by the commander or by the tool credential.
    HaltRollback {
        tool: bool,
    },
    /// The agent closes the task (a human opened it: refused).
    AgentCloseTask,
    /// A reload that drops (true) or restores (false) the agent's host.isolate grants.
    Revoke(bool),
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (0u8..3).prop_map(|pid| Op::Kill { pid }),
        14 => (0u8..8).prop_map(|host| Op::Isolate { host }),
        5 => any::<u8>().prop_map(|pick| Op::Approve { pick }),
        1 => any::<u8>().prop_map(|pick| Op::Reject { pick }),
        1 => Just(Op::Suspend),
        1 => Just(Op::Unsuspend),
        1 => Just(Op::HaltAgent),
        1 => Just(Op::HaltAction),
        1 => Just(Op::ResumeHalts),
        1 => Just(Op::CloseTask),
        1 => Just(Op::OpenTask),
        1 => any::<bool>().prop_map(Op::Shadow),
        2 => any::<u8>().prop_map(|pick| Op::Rollback { pick }),
        2 => (any::<u8>(), 0u8..3).prop_map(|(pick, who)| Op::RollbackAs { pick, who }),
        1 => any::<bool>().prop_map(|tool| Op::HaltRollback { tool }),
        1 => Just(Op::AgentCloseTask),
        1 => any::<bool>().prop_map(Op::Revoke),
        1 => Just(Op::Restart),
    ]
}

const HOSTS: [&str; 8] =
    ["web-01", "web-02", "web-42", "build-07", "lt-jdoe", "lt-asmith", "lt-helpdesk-01", "db-payments-01"];

/// The server under test, over one data directory that survives restarts.
struct World {
    _dir: tempfile::TempDir,
    data: PathBuf,
    policy: PathBuf,
    lab: String,
    keys: warden_lab::Keys,
    h: Option<Harness>,
    admin: String,
    ana: String,
    olga: String,
    /// A tool's credential (role `tool`): it may introspect leases, nothing here.
    tool: String,
    task: u32,
}

fn copy_bundle(to: &Path) {
    for f in read_bundle(&example_dir()) {
        let path = to.join(&f.path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, f.text).unwrap();
    }
}

impl World {
    fn new() -> World {
        let dir = tempfile::tempdir().unwrap();
        let (data, policy) = (dir.path().join("data"), dir.path().join("policy"));
        copy_bundle(&policy);
        let (d, admin) = DataDir::init(&data, "warden.test/audit", Arc::new(SystemClock)).unwrap();
        let bundle = Bundle::load(&read_bundle(&policy)).unwrap();
        for g in bundle.agents() {
            admin::add_agent(d.ledger(), &Actor::user("admin"), &g.id, &g.owner, &g.purpose, d.ledger().now()).unwrap();
        }
        let ana = admin::add_user(d.ledger(), &Actor::user("admin"), "ana", &["soc-analyst".into()], &[]).unwrap().1;
        let olga =
            admin::add_user(d.ledger(), &Actor::user("admin"), "olga", &["incident-commander".into()], &[]).unwrap().1;
        let tool = admin::add_user(d.ledger(), &Actor::user("admin"), "edr-tool", &["tool".into()], &[]).unwrap().1;
        drop(d);
        let (lab, keys) = crate::lab();
        let mut w = World { _dir: dir, data, policy, lab, keys, h: None, admin, ana, olga, tool, task: 0 };
        w.start();
        w
    }

    fn start(&mut self) {
        let data = DataDir::open(&self.data, Arc::new(SystemClock), LedgerOptions::default()).unwrap();
        let files: Vec<SourceFile> = read_bundle(&self.policy);
        let bundle = Bundle::load(&files).unwrap();
        let options = ServerOptions {
            policy_dir: Some(self.policy.clone()),
            connector: Some(connector(&self.lab, &self.keys)),
            ..Default::default()
        };
        let app = AppState::with_options(data, bundle, Arc::new(SystemClock), options).unwrap();
        let placeholder = tempfile::tempdir().unwrap();
        self.h = Some(Harness {
            _dir: placeholder,
            at: warden_store::StoreAt::File,
            router: router(app.clone()),
            app,
            admin: self.admin.clone(),
        });
    }

    fn h(&self) -> &Harness {
        self.h.as_ref().unwrap()
    }

    fn agent(&self) -> String {
        self.h().svid(EDR)
    }

    fn task_id(&self) -> String {
        format!("T{}", self.task)
    }

    async fn open_task(&mut self) {
        self.task += 1;
        let body = json!({"id": self.task_id(), "title": "t", "trigger": {"source": "edr", "severity": "high"}});
        let (status, t) = self.h().call("POST", "/v1/tasks", Some(&self.olga), Some(body)).await;
        assert_eq!(status, StatusCode::CREATED, "{t}");
    }

    async fn pending(&self) -> Vec<String> {
        let (_, list) = self.h().call("GET", "/v1/approvals", Some(&self.ana), None).await;
        list.as_array().unwrap().iter().map(|a| a["id"].as_str().unwrap().to_string()).collect()
    }

    async fn apply(&mut self, op: &Op) {
        let h = self.h();
        let agent_path = format!("/v1/agents/{}", EDR.replace('/', "%2F").replace(':', "%3A"));
        match op {
            Op::Kill { pid } => {
                let body = json!({"task": self.task_id(), "action": "process.kill", "target": "host:web-42",
                    "params": {"pid": 100 + u32::from(*pid)}, "confidence": 0.95, "rationale": "r",
                    "evidence": [{"kind": "edr", "ref": "d"}]});
                let (status, a) = h.call("POST", "/v1/actions", Some(&self.agent()), Some(body)).await;
                assert!(status.is_success() || status.is_client_error(), "{status} {a}");
            }
            Op::Isolate { host } => {
                let body = json!({"task": self.task_id(), "action": "host.isolate",
                    "target": format!("host:{}", HOSTS[usize::from(*host) % HOSTS.len()]),
                    "params": {"reason": "beacon"}, "confidence": 0.95, "rationale": "r",
                    "evidence": [{"kind": "edr", "ref": "d"}]});
                let (status, a) = h.call("POST", "/v1/actions", Some(&self.agent()), Some(body)).await;
                assert!(status.is_success() || status.is_client_error(), "{status} {a}");
            }
            Op::Approve { pick } | Op::Reject { pick } => {
                let pending = self.pending().await;
                if pending.is_empty() {
                    return;
                }
                let id = &pending[usize::from(*pick) % pending.len()];
                if matches!(op, Op::Reject { .. }) {
                    let body = json!({"reason": "no"});
                    h.call("POST", &format!("/v1/approvals/{id}/reject"), Some(&self.ana), Some(body)).await;
                } else {
                    // Two approvers, for the approvals that need a quorum of two.
                    for who in [&self.ana, &self.olga] {
                        let body = json!({"reason": "ok"});
                        h.call("POST", &format!("/v1/approvals/{id}/approve"), Some(who), Some(body)).await;
                    }
                }
            }
            Op::Suspend => {
                let body = json!({"reason": "model"});
                h.call("POST", &format!("{agent_path}/suspend"), Some(&self.admin), Some(body)).await;
            }
            Op::Unsuspend => {
                let body = json!({"reason": "model"});
                h.call("POST", &format!("{agent_path}/resume"), Some(&self.admin), Some(body)).await;
            }
            Op::HaltAgent => {
                let body = json!({"scope": "agent", "id": EDR, "reason": "model"});
                h.call("POST", "/v1/halt", Some(&self.olga), Some(body)).await;
            }
            Op::HaltAction => {
                let body = json!({"scope": "action", "id": "host.isolate", "reason": "model"});
                h.call("POST", "/v1/halt", Some(&self.olga), Some(body)).await;
            }
            Op::ResumeHalts => {
                for body in [
                    json!({"scope": "agent", "id": EDR, "reason": "model"}),
                    json!({"scope": "action", "id": "host.isolate", "reason": "model"}),
                ] {
                    h.call("POST", "/v1/resume", Some(&self.admin), Some(body)).await;
                }
            }
            Op::CloseTask => {
                h.call("POST", &format!("/v1/tasks/{}/close", self.task_id()), Some(&self.olga), None).await;
            }
            Op::OpenTask => self.open_task().await,
            Op::Shadow(on) => {
                let path = self.policy.join("agents/edr-responder.toml");
                let text = std::fs::read_to_string(&path).unwrap().replace("\nmode = \"shadow\"", "");
                let owner = "owner = \"team:endpoint-response\"";
                let text = if *on { text.replace(owner, &format!("{owner}\nmode = \"shadow\"")) } else { text };
                std::fs::write(&path, text).unwrap();
                let (status, body) = h.call("POST", "/v1/policy/reload", Some(&self.admin), None).await;
                assert_eq!(status, StatusCode::OK, "{body}");
            }
            Op::Rollback { pick } | Op::RollbackAs { pick, .. } => {
                let who = match op {
                    Op::RollbackAs { who: 0, .. } => &self.ana,
                    Op::RollbackAs { who: 1, .. } => &self.tool,
                    Op::RollbackAs { .. } => &self.admin,
                    _ => &self.olga,
                };
                let q = "/v1/actions?state=succeeded&limit=1000";
                let (_, list) = h.call("GET", q, Some(&self.olga), None).await;
                let ids: Vec<String> = list
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|a| a["action"] == "host.isolate" && a["folded_into"].is_null())
                    .map(|a| a["id"].as_str().unwrap().to_string())
                    .collect();
                if let Some(id) = ids.get(usize::from(*pick) % ids.len().max(1)) {
                    h.call("POST", &format!("/v1/actions/{id}/rollback"), Some(who), None).await;
                }
            }
            Op::HaltRollback { tool } => {
                let who = if *tool { &self.tool } else { &self.olga };
                let body = json!({"scope": "action", "id": "host.isolate", "reason": "model", "rollback": true});
                h.call("POST", "/v1/halt", Some(who), Some(body)).await;
            }
            Op::AgentCloseTask => {
                h.call("POST", &format!("/v1/tasks/{}/close", self.task_id()), Some(&self.agent()), None).await;
            }
            Op::Revoke(on) => {
                let path = self.policy.join("agents/edr-responder.toml");
                let text = std::fs::read_to_string(&path).unwrap();
                let (granted, revoked) =
                    ("action = \"host.isolate\"\nlevel =", "action = \"host.isolate\"\nlevel = 0\n# was: level =");
                let text = if *on { text.replace(granted, revoked) } else { text.replace(revoked, granted) };
                std::fs::write(&path, text).unwrap();
                let (status, body) = h.call("POST", "/v1/policy/reload", Some(&self.admin), None).await;
                assert_eq!(status, StatusCode::OK, "{body}");
            }
            Op::Restart => {
                self.h = None;
                self.start();
            }
        }
    }

    fn log(&self) -> Vec<Value> {
        let store = self.h().app.ledger().store();
        store.entries(0, 1_000_000).unwrap().iter().map(|e| serde_json::from_slice(&e.bytes).unwrap()).collect()
    }

    fn lab_calls(&self) -> BTreeMap<String, u64> {
        let mut res = ureq::get(format!("{}/state", self.lab)).call().unwrap();
        let state: Value = res.body_mut().read_json().unwrap();
        serde_json::from_value(state["calls"]["by_endpoint"].clone()).unwrap_or_default()
    }

    /// Every invariant, over the whole log so far; `shadow_since` lists the log sizes at
    /// which the EDR agent's guardrail went into (true) or out of (false) shadow mode.
    fn check(&self, shadow_at: &[(u64, bool)], revoked_at: &[(u64, bool)], history: &[Op]) {
        let log = self.log();
        let calls = self.lab_calls();
        let count = |t: &str| log.iter().filter(|e| e["type"] == t).count() as u64;
        let lab = |e: &str| calls.get(e).copied().unwrap_or(0);
        // Every tool call is audited once.
        assert_eq!(lab("edr contain") + lab("edr kill_process"), count("execution.started"), "{history:?}");
        assert_eq!(lab("edr lift_containment"), count("rollback.started"), "{history:?}");
        // Walk the log in order.
        let mut agent_of: BTreeMap<String, String> = BTreeMap::new();
        let mut decided: BTreeMap<String, (String, String)> = BTreeMap::new(); // request → (outcome, digest)
        let mut approved: BTreeSet<(String, String)> = BTreeSet::new(); // (first request, digest)
        let mut halts: BTreeSet<(String, String)> = BTreeSet::new();
        let mut status = "active".to_string();
        let mut closed: BTreeSet<String> = BTreeSet::new();
        let mut hits: Vec<String> = Vec::new(); // targets of EDR × host.isolate executions
        for e in &log {
            let seq = e["seq"].as_u64().unwrap();
            let request = e["request"].as_str().unwrap_or("").to_string();
            let data = &e["data"];
            match e["type"].as_str().unwrap() {
                "action.requested" => {
                    agent_of.insert(request, e["actor"]["id"].as_str().unwrap_or("").to_string());
                }
                "decision.made" => {
                    let outcome = data["decision"]["outcome"].as_str().unwrap().to_string();
                    if outcome == "execute" && e["action"] == "host.isolate" {
                        let target = data["target"].as_str().unwrap().to_string();
                        assert!(
                            hits.len() < 10,
                            "an autonomous execution past the hourly budget at {seq}: {history:?}"
                        );
                        if !hits.contains(&target) {
                            let distinct: BTreeSet<&String> = hits.iter().collect();
                            assert!(distinct.len() < 5, "past the distinct-targets budget at {seq}: {history:?}");
                        }
                        hits.push(target);
                    }
                    decided.insert(request, (outcome, data["digest"].as_str().unwrap_or("").to_string()));
                }
                "approval.granted" if data["state"] == "approved" => {
                    let first = data["requests"][0].as_str().unwrap().to_string();
                    approved.insert((first, data["digest"].as_str().unwrap().to_string()));
                }
                "halt.lifted" => {
                    halts.remove(&(data["scope"].as_str().unwrap().into(), data["id"].as_str().unwrap_or("").into()));
                }
                "agent.changed" if data["agent"] == EDR => status = data["to"].as_str().unwrap().to_string(),
                "task.closed" => {
                    // Opened by olga: only she, the analyst (close role) or the admin close it.
                    let by = e["actor"]["id"].as_str().unwrap();
                    assert!(["olga", "ana", "admin"].contains(&by), "task closed by `{by}` at {seq}: {history:?}");
                    closed.insert(e["task"].as_str().unwrap().to_string());
                }
                "halt.set" | "rollback.started" => {
                    let by = e["actor"]["id"].as_str().unwrap();
                    let may: &[&str] =
                        if e["type"] == "halt.set" { &["olga", "ana", "admin"] } else { &["olga", "ana"] };
                    assert!(may.contains(&by), "{} by `{by}` at {seq}: {history:?}", e["type"]);
                    if e["type"] == "halt.set" {
                        halts
                            .insert((data["scope"].as_str().unwrap().into(), data["id"].as_str().unwrap_or("").into()));
                    }
                }
                "execution.started" => {
                    let digest = data["digest"].as_str().unwrap().to_string();
                    let (outcome, decided_digest) = decided.get(&request).cloned().unwrap_or_default();
                    let by_decision = outcome == "execute" && decided_digest == digest;
                    let by_approval = approved.contains(&(request.clone(), digest.clone()));
                    assert!(
                        by_decision || by_approval,
                        "execution {request} at {seq} has no grant of {digest}: {history:?}"
                    );
                    if by_approval && e["action"] == "host.isolate" {
                        hits.push(data["target"].as_str().unwrap().to_string());
                    }
                    let action = e["action"].as_str().unwrap();
                    let agent = agent_of.get(&request).cloned().unwrap_or_default();
                    let halted = halts.iter().any(|(scope, id)| {
                        scope == "all" || (scope == "agent" && *id == agent) || (scope == "action" && id == action)
                    });
                    assert!(!halted, "execution {request} at {seq} ran under a halt: {history:?}");
                    assert_eq!(status, "active", "execution {request} at {seq} ran for a {status} agent: {history:?}");
                    let task = e["task"].as_str().unwrap();
                    assert!(
                        !closed.contains(task),
                        "execution {request} at {seq} ran in closed task {task}: {history:?}"
                    );
                    let shadow = shadow_at.iter().rev().find(|(at, _)| *at <= seq).is_some_and(|(_, on)| *on);
                    assert!(!shadow, "execution {request} at {seq} ran in shadow mode: {history:?}");
                    let revoked = revoked_at.iter().rev().find(|(at, _)| *at <= seq).is_some_and(|(_, on)| *on);
                    assert!(
                        !(revoked && action == "host.isolate"),
                        "execution {request} at {seq} ran with its grant revoked: {history:?}"
                    );
                }
                _ => {}
            }
        }
    }
}

#[test]
fn no_interleaving_escapes_the_authority_state_machine() {
    let cases = std::env::var("WARDEN_MODEL_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(24);
    let mut runner = TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() });
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runner
        .run(&prop::collection::vec(op(), 1..80), |ops| {
            rt.block_on(async {
                let mut w = World::new();
                w.open_task().await;
                let mut shadow_at = Vec::new();
                let mut revoked_at = Vec::new();
                for (i, op) in ops.iter().enumerate() {
                    w.apply(op).await;
                    if let Op::Shadow(on) = op {
                        // The reload's own entry is the last one: from here on the mode holds.
                        shadow_at.push((w.h().app.ledger().store().size().unwrap(), *on));
                    }
                    if let Op::Revoke(on) = op {
                        revoked_at.push((w.h().app.ledger().store().size().unwrap(), *on));
                    }
                    w.check(&shadow_at, &revoked_at, &ops[..=i]);
                }
                if std::env::var("WARDEN_MODEL_STATS").is_ok() {
                    let log = w.log();
                    let n = |t: &str| log.iter().filter(|e| e["type"] == t).count();
                    eprintln!(
                        "ops {} started {} refused {} approvals {} granted {} cancelled {} rollbacks {} halts {}",
                        ops.len(),
                        n("execution.started"),
                        n("execution.failed"),
                        n("approval.requested"),
                        n("approval.granted"),
                        n("approval.cancelled"),
                        n("rollback.started"),
                        n("halt.set")
                    );
                }
            });
            Ok(())
        })
        .unwrap();
}
