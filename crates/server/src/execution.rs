//! Executing an approved action through its connector, with a just-in-time lease, and undoing
//! it (DESIGN §3, §6).
//!
//! ```text
//! approved ─► executing (lease issued; recorded durably BEFORE the tool is called)
//!               ├─► succeeded (lease revoked) ─► rolled_back (compensation ran)
//!               ├─► failed    (lease revoked)
//!               └─► unknown   (the tool was lost mid-call, or the server stopped: the action
//!                              may or may not have happened; a human reconciles; never retried)
//! ```

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use time::OffsetDateTime;
use utoipa::ToSchema;
use warden_connectors::{Call, Connector, ConnectorError};
use warden_core::audit::entry::{Actor, Event, EventType};
use warden_core::guardrail::Mode;
use warden_core::request::{AgentStatus, TaskState};
use warden_store::{Batch, Change, Query, Record, Store, StoreError, Table};

use crate::auth::Caller;
use crate::error::{ApiError, Code};
use crate::model::new_id;
use crate::model::{ActionRecord, Approval, Model, millis, rfc3339};
use crate::state::AppState;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ExecutionState {
    Executing,
    Succeeded,
    Failed,
    Unknown,
    RolledBack,
}

impl ExecutionState {
    pub fn as_str(self) -> &'static str {
        match self {
            ExecutionState::Executing => "executing",
            ExecutionState::Succeeded => "succeeded",
            ExecutionState::Failed => "failed",
            ExecutionState::Unknown => "unknown",
            ExecutionState::RolledBack => "rolled_back",
        }
    }
}

/// What the compensation did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Rollback {
    pub action: String,
    pub by: String,
    pub at: String,
    pub succeeded: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub answer: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One execution of one request (its id is the request's).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Execution {
    pub id: String,
    pub state: ExecutionState,
    pub agent: String,
    pub task: String,
    pub action: String,
    pub target: String,
    pub lease: String,
    pub started_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// The tool's HTTP status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_status: Option<u16>,
    /// The tool's answer, secrets redacted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub answer: Option<Value>,
    /// Fields kept for the compensation.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub captured: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The action that undoes this one (none: irreversible).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compensation: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback: Option<Rollback>,
    /// Who started the compensation that is running now: set, version-checked, before the
    /// tool is called, so two humans pressing rollback together run it once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolling_back: Option<String>,
    /// Said when the tool acted but its answer could not be fully read (a capture failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
    /// The Warden node calling the tool now (the execution, or its compensation): when that
    /// node stops answering, another marks the call `unknown` (see [`reconcile`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

impl Model for Execution {
    const TABLE: Table = Table::Executions;
    fn id(&self) -> &str {
        &self.id
    }
    fn record(&self) -> Record {
        // Indexed as `rolling_back` while a compensation is under way, so a restart finds the
        // ones it interrupted without reading every execution.
        let indexed = if self.rolling_back.is_some() { "rolling_back" } else { self.state.as_str() };
        // Its action class as a column: a task's history is a grouped count of them.
        self.bare_record().agent(&self.agent).task(&self.task).state(indexed).kind(&self.action)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LeaseState {
    Active,
    Revoked,
}

/// A just-in-time credential for one execution (DESIGN §6).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Lease {
    /// `lease_…`; also the `jti` of its token.
    pub id: String,
    pub state: LeaseState,
    /// The agent it was issued for.
    pub agent: String,
    pub task: String,
    /// The request (and execution) it serves.
    pub request: String,
    /// `<action> <target>`: all it allows.
    pub scope: String,
    /// The action digest (DESIGN §6) of the one action it allows; its token carries it as
    /// `act_digest`.
    #[serde(default)]
    pub digest: String,
    pub max_uses: u32,
    pub uses: u32,
    pub issued_at: String,
    pub expires_at: String,
    pub expires_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_reason: Option<String>,
}

impl Lease {
    /// Active: not revoked and not past its expiry.
    pub fn active_at(&self, now: OffsetDateTime) -> bool {
        self.state == LeaseState::Active && millis(now) < self.expires_ms && self.uses <= self.max_uses
    }
}

impl Model for Lease {
    const TABLE: Table = Table::Leases;
    fn id(&self) -> &str {
        &self.id
    }
    fn record(&self) -> Record {
        let state = match self.state {
            LeaseState::Active => "active",
            LeaseState::Revoked => "revoked",
        };
        self.bare_record().agent(&self.agent).task(&self.task).state(state).key(&self.request).at(self.expires_ms)
    }
}

/// The batch that revokes `lease` (read at `version`).
pub fn revoke_changes(lease: &Lease, version: u64, actor: &Actor, reason: &str, now: OffsetDateTime) -> Batch {
    let mut l = lease.clone();
    l.state = LeaseState::Revoked;
    l.revoked_at = Some(rfc3339(now));
    l.revoked_reason = Some(reason.to_string());
    let mut r = l.record();
    r.version = version;
    let event = Event::new(EventType::LeaseRevoked, actor.clone())
        .task(&l.task)
        .request(&l.request)
        .data(json!({"lease": l.id, "scope": l.scope, "reason": reason}));
    Batch::new().change(Change::Update(r)).event(event)
}

fn merge(into: &mut Batch, other: Batch) {
    into.changes.extend(other.changes);
    into.events.extend(other.events);
}

use crate::model::versioned;

fn call_for(req: &ActionRecord, lease: &str, token: &str, captured: Map<String, Value>) -> Call {
    let (kind, id) = req.target.split_once(':').unwrap_or(("", &req.target));
    Call {
        via: None,
        action: req.action.clone(),
        target_kind: kind.to_string(),
        target_id: id.to_string(),
        params: req.params.clone(),
        captured,
        lease_id: lease.to_string(),
        lease_token: token.to_string(),
        task: req.task.clone(),
        agent: req.agent.clone(),
    }
}

/// The upstream MCP tool that performs `action` for `req`, when `req` came through a mapped
/// tool (`req.via`): its arguments rebuilt from the request's target and params (and, for a
/// compensation, what the action captured) under the bundle's mapping now. A request whose
/// tool the bundle no longer maps is not performed at all (fail closed), and neither is a
/// compensation the upstream has no tool for: what an upstream did is undone only through
/// that upstream, never by another tool's credentials.
fn route_for(
    s: &AppState,
    req: &ActionRecord,
    action: &str,
    captured: &Map<String, Value>,
) -> Result<Option<warden_connectors::mcp::Route>, ConnectorError> {
    let Some(via) = &req.via else { return Ok(None) };
    let (upstream, tool) = via.split_once('/').unwrap_or((via.as_str(), ""));
    let bundle = s.bundle().map_err(|e| ConnectorError::NotConfigured(e.message))?;
    let mapped = if action == req.action {
        bundle.mcp().route(upstream, tool).filter(|m| m.action == action)
    } else {
        bundle.mcp().for_action(upstream, action)
    };
    let Some(m) = mapped else {
        if action == req.action {
            return Err(ConnectorError::NotConfigured(format!(
                "`{action}` through upstream MCP tool `{via}`, which the bundle no longer maps"
            )));
        }
        return Err(ConnectorError::NotConfigured(format!(
            "`{action}` undoes what upstream `{upstream}` did, and runs only through it; mcp.toml maps no tool of \
             `{upstream}` to `{action}`"
        )));
    };
    let id = req.target.split_once(':').map_or(req.target.as_str(), |(_, id)| id);
    Ok(Some(warden_connectors::mcp::Route {
        upstream: upstream.to_string(),
        tool: m.tool.clone(),
        arguments: m.arguments(id, &req.params, captured),
        capture: m.capture.clone(),
    }))
}

/// The `execution.started` entry: what runs, under which lease, and through which upstream
/// MCP tool when one performs it.
fn started_data(req: &ActionRecord, lease: &Lease, digest: &str, category: Option<&str>) -> Value {
    let mut data = json!({"execution_id": req.id, "target": req.target, "lease": lease.id,
                          "digest": digest, "category": category});
    if let Some(via) = &req.via {
        data["via"] = json!(format!("mcp:{via}"));
    }
    data
}

/// What an execution leaves in the answer.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Executed {
    pub execution: Execution,
    pub lease: Lease,
}

/// The requests folded into `req`'s approval (they share its one execution), with their
/// versions, among those now in one of the states `from`.
fn folded(store: &dyn Store, req: &ActionRecord, from: &[&str]) -> Result<Vec<(ActionRecord, u64)>, ApiError> {
    let Some(approval) = req.approval.as_deref() else { return Ok(Vec::new()) };
    let Some((approval, _)) = versioned::<Approval>(store, approval)? else { return Ok(Vec::new()) };
    let mut out = Vec::new();
    for other in approval.requests.iter().filter(|r| **r != req.id) {
        if let Some((r, version)) = versioned::<ActionRecord>(store, other)?
            && r.folded_into.as_deref() == Some(req.id.as_str())
            && from.contains(&r.state.as_str())
        {
            out.push((r, version));
        }
    }
    Ok(out)
}

/// The changes that move the requests folded into `req` from one of `from` to `to`.
fn move_folded(store: &dyn Store, req: &ActionRecord, from: &[&str], to: &str) -> Result<Vec<Change>, ApiError> {
    Ok(folded(store, req, from)?
        .into_iter()
        .map(|(mut r, v)| {
            r.state = to.to_string();
            let mut rec = r.record();
            rec.version = v;
            Change::Update(rec)
        })
        .collect())
}

/// Why an approved request must not run now, if it must not — the agent no longer active,
/// the task closed, shadow mode (global or the agent's guardrail) — with the versions of the
/// agent and task records it was read from. Halts are checked against the caller's gate.
fn stopped(s: &AppState, req: &ActionRecord) -> Result<(Option<String>, u64, u64), ApiError> {
    let store = s.ledger().store();
    let (agent_version, agent_status) = match store.get(Table::Agents, &req.agent)? {
        Some(r) => (r.version, crate::model::Agent::from_record(&r)?.status),
        None => (0, AgentStatus::Suspended),
    };
    let (task_version, task_open) = match store.get(Table::Tasks, &req.task)? {
        Some(r) => (r.version, crate::model::Task::from_record(&r)?.state == TaskState::Open),
        None => (0, false),
    };
    let bundle = s.bundle()?;
    let shadow = s.shadow || bundle.agent(&req.agent).is_some_and(|g| g.mode == Mode::Shadow);
    let why = if agent_status != AgentStatus::Active {
        Some(format!("agent `{}` is {}", req.agent, format!("{agent_status:?}").to_lowercase()))
    } else if !task_open {
        Some(format!("task `{}` is closed", req.task))
    } else if shadow {
        Some("shadow mode: decided and recorded, never executed".to_string())
    } else {
        None
    };
    Ok((why, agent_version, task_version))
}

/// Records that approved request `req` (read at `version`) did not run and why: it moves to
/// `state` with the requests folded into it, audited as a failed execution that called
/// nothing.
fn refuse(s: &AppState, req: &ActionRecord, version: u64, state: &str, code: &str, why: &str) -> Result<(), ApiError> {
    let store = s.ledger().store();
    let mut r = req.clone();
    r.state = state.into();
    let mut rec = r.record();
    rec.version = version;
    let event = Event::new(EventType::ExecutionFailed, Actor::system("executor"))
        .task(&req.task)
        .request(&req.id)
        .action(&req.action)
        .data(json!({"execution_id": req.id, "target": req.target, "called": false, "refused": code,
                     "digest": req.digest, "error": why}));
    let mut batch = Batch::new().change(Change::Update(rec)).event(event);
    batch.changes.extend(move_folded(store.as_ref(), req, &["approved"], state)?);
    match s.ledger().commit(batch) {
        // Another commit moved it first (a concurrent execution or refusal): nothing ran here.
        Ok(_) | Err(StoreError::Conflict { .. }) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Tools are called through the connectors of the bundle in force only: a node whose
/// `connectors.toml` (read at its start, with its tool URLs and secrets) is not the bundle's —
/// another node loaded a bundle that changed it, or it was reloaded here — refuses until it is
/// restarted with the bundle's files. Nothing is called through an old mapping.
pub fn connectors_current(s: &AppState, bundle: &warden_core::Bundle) -> Result<(), ApiError> {
    let Some(source) = s.connectors_source.as_deref() else { return Ok(()) };
    let norm = |t: &str| t.replace("\r\n", "\n");
    let in_force = bundle.files().iter().find(|f| f.path == "connectors.toml").map(|f| norm(&f.text));
    if in_force.as_deref() == Some(norm(source).as_str()) {
        return Ok(());
    }
    tracing::error!(bundle = %bundle.version(), "this node's connectors.toml is not the bundle in force's: restart it");
    Err(ApiError::new(
        Code::ConnectorsStale,
        format!(
            "this node calls tools through a `connectors.toml` other than bundle {}'s; restart it with the bundle's \
             files; nothing was called",
            bundle.version()
        ),
    ))
}

/// How many times the start of an execution is checked again when something it relied on
/// changed before its commit (a suspend, a task close).
const START_ATTEMPTS: usize = 8;

/// What an execution that has started carries to its end.
struct Started {
    req: ActionRecord,
    exec: Execution,
    lease: Lease,
    ttl: i64,
    category: Option<String>,
    now: OffsetDateTime,
}

/// Executes request `id` (state `approved`): checks, in the same commit that records it
/// `executing` with its lease, that it is exactly what was decided and approved (its action
/// digest) and that nothing has stopped it since (halt, suspend, task close, shadow mode);
/// then calls the tool and records the result. Requests folded into its approval move with it.
pub fn execute(s: &AppState, connector: &dyn Connector, id: &str) -> Result<Executed, ApiError> {
    let store = s.ledger().store();
    // The halt gate: no matching action starts once a halt has returned (see `crate::halt`).
    // Held from the check to the end of the tool call; read afresh first, so a halt or resume
    // on another node is seen before this one is refused or started.
    crate::facts::sync(s)?;
    let read_gate =
        || s.halts.read().map_err(|_| ApiError::new(Code::HaltUnavailable, "the halt state is unavailable"));
    let mut gate = read_gate()?;
    let mut started = None;
    for _ in 0..START_ATTEMPTS {
        let (req, version) = versioned::<ActionRecord>(store.as_ref(), id)?
            .ok_or_else(|| ApiError::new(Code::UnknownAction, format!("no action request `{id}`")))?;
        if req.state != "approved" {
            return Err(ApiError::new(Code::NotApproved, format!("request `{id}` is {}, not approved", req.state)));
        }
        if let Some(primary) = &req.folded_into {
            return Err(ApiError::new(
                Code::Folded,
                format!("request `{id}` shares the one execution of `{primary}`; it never runs on its own"),
            ));
        }
        let now = s.now();
        let approval = match req.approval.as_deref() {
            Some(a) => versioned::<Approval>(store.as_ref(), a)?.map(|(a, _)| a),
            None => None,
        };
        // Exactly what was decided and approved, or nothing.
        let bundle = s.bundle()?;
        if let Err(e) = connectors_current(s, &bundle) {
            refuse(s, &req, version, "failed", "connectors_stale", &e.message)?;
            return Err(e);
        }
        let computed = req.computed_digest(&bundle)?;
        let approved_digest = approval.as_ref().map(|a| a.digest.as_str()).filter(|d| !d.is_empty());
        let recorded = Some(req.digest.as_str()).filter(|d| !d.is_empty());
        if let Some(bound) = [recorded, approved_digest].into_iter().flatten().find(|d| *d != computed) {
            let what = if approved_digest == Some(bound) { "approved" } else { "decided" };
            let why = format!(
                "the request no longer matches what was {what}: its digest is {computed}, the {what} one \
                 {bound}; nothing was called"
            );
            refuse(s, &req, version, "failed", "digest_mismatch", &why)?;
            return Err(ApiError::new(Code::DigestMismatch, why));
        }
        if let Some(h) = gate.matching(&req.agent, &req.action, now) {
            // Halted between the decision and the call: nothing starts; the request is cancelled.
            let why = format!("halted before the tool was called: {}", h.reason);
            refuse(s, &req, version, "cancelled", "halted", &why)?;
            return Err(ApiError::new(Code::Halted, why));
        }
        let (why, agent_version, task_version) = stopped(s, &req)?;
        if let Some(why) = why {
            let why = format!("stopped before the tool was called: {why}");
            refuse(s, &req, version, "cancelled", "stopped", &why)?;
            return Err(ApiError::new(Code::Stopped, why));
        }
        // Decided again under the bundle in force, on the facts now (DESIGN §6).
        let again = crate::facts::redecide(s, &bundle, &req, approval.as_ref(), &gate.list)?;
        if let Some(why) = again.refused {
            let why = format!("not started: {why}; nothing was called");
            refuse(s, &req, version, "failed", "policy_changed", &why)?;
            return Err(ApiError::new(Code::PolicyChanged, why));
        }
        let class = bundle.catalog().get(&req.action);
        let ttl = class.map_or(300, |c| c.lease_ttl.as_secs()) as i64;
        let ttl = match &approval {
            Some(a) => a.narrowed_lease_ttl_secs.map_or(ttl, |n| ttl.min(n as i64)),
            None => ttl,
        };
        let expires = now + time::Duration::seconds(ttl);
        let lease = Lease {
            id: new_id("lease")?,
            state: LeaseState::Active,
            agent: req.agent.clone(),
            task: req.task.clone(),
            request: req.id.clone(),
            scope: format!("{} {}", req.action, req.target),
            digest: computed.clone(),
            max_uses: 1,
            uses: 1,
            issued_at: rfc3339(now),
            expires_at: rfc3339(expires),
            expires_ms: millis(expires),
            revoked_at: None,
            revoked_reason: None,
        };
        let category = class.map(|c| format!("{:?}", c.category).to_lowercase());
        let compensation = class.filter(|c| c.reversible).and_then(|c| c.compensation.clone());
        let exec = Execution {
            id: req.id.clone(),
            state: ExecutionState::Executing,
            agent: req.agent.clone(),
            task: req.task.clone(),
            action: req.action.clone(),
            target: req.target.clone(),
            lease: lease.id.clone(),
            started_at: rfc3339(now),
            finished_at: None,
            tool_status: None,
            answer: None,
            captured: Map::new(),
            error: None,
            compensation,
            rollback: None,
            rolling_back: None,
            warning: None,
            node: Some(s.node.clone()),
        };
        let mut started_req = req.clone();
        started_req.state = "executing".into();
        let mut r = started_req.record();
        r.version = version;
        let system = Actor::system("executor");
        // The stops again, in the writer's transaction: nothing they were read from changed.
        let mut start = Batch::new()
            .change(Change::Expect { table: Table::Agents, id: req.agent.clone(), version: agent_version })
            .change(Change::Expect { table: Table::Tasks, id: req.task.clone(), version: task_version })
            .change(gate.unchanged())
            .changes(again.preconditions)
            .change(Change::Update(r))
            .change(Change::Insert(lease.record()))
            .change(Change::Insert(exec.record()));
        start.changes.extend(move_folded(store.as_ref(), &req, &["approved"], "executing")?);
        if req.approval.is_some() {
            // An approved request counts toward the budget when it runs (an `execute`
            // decision counted when it was decided): a budget counts every execution.
            start = start.change(Change::BudgetHit {
                agent: req.agent.clone(),
                action: req.action.clone(),
                target: req.target.clone(),
                at: millis(now),
            });
        }
        let start = start
            .event(
                Event::new(EventType::LeaseIssued, system.clone())
                    .task(&req.task)
                    .request(&req.id)
                    .action(&req.action)
                    .data(json!({"lease": lease.id, "agent": req.agent, "scope": lease.scope,
                                 "digest": lease.digest, "expires_at": lease.expires_at})),
            )
            .event(
                Event::new(EventType::ExecutionStarted, system.clone())
                    .task(&req.task)
                    .request(&req.id)
                    .action(&req.action)
                    .data(started_data(&req, &lease, &computed, category.as_deref())),
            );
        match s.ledger().commit(start) {
            Ok(_) => {
                started = Some(Started { req, exec, lease, ttl, category, now });
                break;
            }
            // Something changed since the checks (on this node or another): check again from
            // the start, with the halts as the store has them now.
            Err(StoreError::Conflict { .. }) => {
                drop(gate);
                crate::facts::sync(s)?;
                s.follow_bundle()?;
                gate = read_gate()?;
            }
            Err(other) => return Err(other.into()),
        }
    }
    let Some(Started { req, mut exec, lease, ttl, category, now }) = started else {
        return Err(ApiError::new(Code::Conflict, format!("request `{id}` kept changing; it was not executed")));
    };
    let result = match route_for(s, &req, &req.action, &Map::new()) {
        Err(e) => Err(e),
        Ok(via) if via.is_some() || connector.supports(&req.action) => {
            let token = s.tokens.local.mint_lease(&req.agent, &lease.id, &lease.scope, &lease.digest, now, ttl);
            connector.execute(&Call { via, ..call_for(&req, &lease.id, &token, Map::new()) })
        }
        Ok(_) => Err(ConnectorError::NotConfigured(req.action.clone())),
    };
    drop(gate);
    let done = rfc3339(s.now());
    exec.finished_at = Some(done);
    let (kind, final_state) = match result {
        Ok(answer) => {
            exec.state = ExecutionState::Succeeded;
            exec.tool_status = Some(answer.status);
            exec.answer = Some(answer.body);
            exec.captured = answer.captured;
            exec.warning = answer.warning;
            (EventType::ExecutionSucceeded, "succeeded")
        }
        // Timeout or connection lost after sending: the tool may have acted. Saying `failed`
        // would invite a retry that could run the action twice.
        Err(e @ ConnectorError::Unreachable(_)) => {
            exec.state = ExecutionState::Unknown;
            exec.error = Some(e.to_string());
            (EventType::ExecutionUnknown, "unknown")
        }
        Err(e) => {
            exec.state = ExecutionState::Failed;
            if let ConnectorError::Rejected { status, .. } = &e {
                exec.tool_status = Some(*status);
            }
            exec.error = Some(e.to_string());
            (EventType::ExecutionFailed, "failed")
        }
    };
    if let Err(e) = finish(s, &req, &exec, &lease, kind, final_state, category.as_deref()) {
        // The tool was called: never answer as if nothing was done.
        tracing::error!(request = %req.id, outcome = final_state, error = %e.message, "an execution's result was not recorded");
        return Err(ApiError::new(
            Code::ResultUnrecorded,
            format!(
                "the tool was called for `{}` ({final_state}) but its result could not be recorded: the \
                 execution stays `executing` and becomes `unknown` when the server next starts; do not retry",
                req.id
            ),
        ));
    }
    s.metrics.executed(final_state);
    Ok(Executed { execution: exec, lease: revoked(lease, "the execution finished", s.now()) })
}

fn revoked(mut lease: Lease, reason: &str, now: OffsetDateTime) -> Lease {
    lease.state = LeaseState::Revoked;
    lease.revoked_at = Some(rfc3339(now));
    lease.revoked_reason = Some(reason.into());
    lease
}

/// The taint a succeeded execution's result leaves on its task (DESIGN §14): its label — its
/// action class's, joined with the upstream tool's it came through — when untrusted or
/// confidential. Labels of the bundle in force (a result is handed back now).
fn result_taint(s: &AppState, req: &ActionRecord) -> Vec<warden_core::request::Taint> {
    use warden_core::catalog::{Confidentiality, Integrity};
    use warden_core::request::{Taint, TaintLabel, inert};
    // A label that cannot be read (no bundle, or a reload took the action away meanwhile) is
    // taken as untrusted: fail closed.
    let unknown = warden_core::catalog::Label { integrity: Integrity::Untrusted, ..Default::default() };
    let label = match s.bundle() {
        Err(_) => unknown,
        Ok(bundle) => match bundle.catalog().get(&req.action) {
            None => unknown,
            Some(class) => req
                .via
                .as_deref()
                .and_then(|v| v.split_once('/'))
                .and_then(|(upstream, tool)| bundle.mcp().route(upstream, tool).filter(|m| m.action == req.action))
                .map_or(class.result, |m| m.result),
        },
    };
    // What was read, as an approver needs it: the action, its target, its params as shown
    // (secrets replaced by their commitment), and the tool it came through.
    let shown = match s.bundle() {
        Ok(b) => b.shown_params(&req.action, &req.params),
        Err(_) => Map::new(),
    };
    let params: Vec<String> = shown
        .iter()
        .map(|(k, v)| {
            let v = v.as_str().map_or_else(|| v.to_string(), str::to_string);
            format!("{}=`{}`", inert(k, 32), inert(&v, 64))
        })
        .collect();
    let mut source = format!("the result of `{}` on `{}`", req.action, req.target);
    if !params.is_empty() {
        source.push_str(&format!(" ({})", params.join(", ")));
    }
    if let Some(v) = &req.via {
        source.push_str(&format!(" through `{v}`"));
    }
    let source = inert(&source, 400);
    let mark = |label| Taint { label, source: source.clone(), request: Some(req.id.clone()), by: "warden".into() };
    let mut marks = Vec::new();
    if label.integrity == Integrity::Untrusted {
        marks.push(mark(TaintLabel::Untrusted));
    }
    if label.confidentiality == Confidentiality::Confidential {
        marks.push(mark(TaintLabel::Confidential));
    }
    marks
}

/// Records an execution's result: the execution, its request, the lease revoked, and the
/// taint its result leaves on the task. Retried on a conflict (a halt revoking the lease
/// meanwhile, another result tainting the task), never dropped: the tool has acted.
fn finish(
    s: &AppState,
    req: &ActionRecord,
    exec: &Execution,
    lease: &Lease,
    kind: EventType,
    state: &str,
    category: Option<&str>,
) -> Result<(), ApiError> {
    let store = s.ledger().store();
    // Whatever the outcome: a failed or unknown call's record holds the tool's own words too
    // (its error answer), which the agent reads.
    let taint = result_taint(s, req);
    for _ in 0..32 {
        let now = s.now();
        let mut batch = Batch::new();
        if !taint.is_empty()
            && let Some((mut task, v)) = versioned::<crate::model::Task>(store.as_ref(), &req.task)?
            && task.taint_with(taint.iter().cloned())
        {
            let mut r = task.record();
            r.version = v;
            batch = batch.change(Change::Update(r));
        }
        let (_, ev) = versioned::<Execution>(store.as_ref(), &exec.id)?
            .ok_or_else(|| ApiError::new(Code::StoreUnavailable, format!("execution `{}` vanished", exec.id)))?;
        let mut r = exec.record();
        r.version = ev;
        batch = batch.change(Change::Update(r));
        if let Some((mut current, v)) = versioned::<ActionRecord>(store.as_ref(), &req.id)? {
            current.state = state.to_string();
            let mut r = current.record();
            r.version = v;
            batch = batch.change(Change::Update(r));
        }
        batch.changes.extend(move_folded(store.as_ref(), req, &["executing", "approved"], state)?);
        if let Some((current, v)) = versioned::<Lease>(store.as_ref(), &lease.id)?
            && current.state == LeaseState::Active
        {
            merge(&mut batch, revoke_changes(&current, v, &Actor::system("executor"), "the execution finished", now));
        }
        batch = batch.event(
            Event::new(kind, Actor::system("executor")).task(&req.task).request(&req.id).action(&req.action).data(
                json!({
                    "execution_id": exec.id, "target": req.target, "tool_status": exec.tool_status,
                    "answer": exec.answer, "error": exec.error, "warning": exec.warning, "category": category,
                }),
            ),
        );
        match s.ledger().commit(batch) {
            Ok(_) => return Ok(()),
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(ApiError::new(Code::StoreUnavailable, "the execution's result could not be recorded"))
}

/// On start: executions left `executing` by a stopped server become `unknown`, for a human to
/// reconcile. They are never retried. Requests left `approved` — decided or approved, but the
/// server stopped before their execution started, so no tool was called — become `cancelled`
/// (when this server has connectors; without them, approved requests rest by design): they
/// were decided on facts that may no longer hold, and the agent may ask again.
pub fn reconcile_after_restart(s: &AppState) -> Result<Vec<String>, ApiError> {
    reconcile(s, true)
}

/// Whether the node that stamped a call is gone: on a store of its own (SQLite), at a start
/// every other call was this server's before it stopped; on a shared one, a node is gone when
/// it said goodbye, or when its heartbeat has not changed for
/// [`crate::state::NODE_DEAD_AFTER_MS`] as this node's own clock counts — never by comparing
/// one node's clock with another's.
fn owner_gone(s: &AppState, startup: bool, node: Option<&str>) -> Result<bool, ApiError> {
    if node == Some(s.node.as_str()) {
        return Ok(false);
    }
    if !s.shared_store {
        return Ok(startup);
    }
    let Some(node) = node else { return Ok(true) };
    let beat = s.ledger().store().meta(&crate::state::node_key(node))?.unwrap_or_default();
    if beat == "0" {
        return Ok(true);
    }
    let now = std::time::Instant::now();
    let mut seen = s.beats.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    match seen.get(node) {
        Some((last, since)) if *last == beat => {
            let quiet = now.duration_since(*since).as_millis();
            Ok(quiet >= u128::try_from(crate::state::NODE_DEAD_AFTER_MS).unwrap_or(u128::MAX))
        }
        _ => {
            seen.insert(node.to_string(), (beat, now));
            Ok(false)
        }
    }
}

/// Commits `batch`, or lets it go when another node reconciled the same record first.
fn commit_unless_taken(s: &AppState, batch: Batch) -> Result<bool, ApiError> {
    match s.ledger().commit(batch) {
        Ok(_) => Ok(true),
        Err(StoreError::Conflict { .. }) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// How long after its approval an approved request may wait for its execution to start on a
/// shared store before it counts as left behind by a node that stopped (a live node starts it
/// within moments of the vote).
const ORPHAN_AFTER: time::Duration = time::Duration::seconds(60);

/// On a shared store: approved requests whose execution never started although their approval
/// was decided a minute ago — the node that took the vote stopped in between — are cancelled,
/// as a single server cancels them at its start; nothing was called. Should a live node start
/// one meanwhile, its start commit finds the request changed and runs nothing.
fn cancel_orphans(s: &AppState) -> Result<(), ApiError> {
    let store = s.ledger().store();
    let now = s.now();
    let q = Query { state: Some("approved".into()), ..Query::default() };
    for r in store.find(Table::Requests, &q)? {
        let req = ActionRecord::from_record(&r)?;
        if req.folded_into.is_some() || store.get(Table::Executions, &req.id)?.is_some() {
            continue;
        }
        let decided = match req.approval.as_deref() {
            Some(a) => versioned::<Approval>(store.as_ref(), a)?
                .and_then(|(a, _)| a.decided_at)
                .and_then(|t| OffsetDateTime::parse(&t, &time::format_description::well_known::Rfc3339).ok()),
            None => None,
        };
        if decided.is_some_and(|d| now - d > ORPHAN_AFTER) {
            let why = "the node that took the approval stopped before the execution started; nothing was called";
            refuse(s, &req, r.version, "cancelled", "interrupted", why)?;
            tracing::warn!(request = %req.id, "an approved request left behind by a stopped node is now cancelled");
        }
    }
    Ok(())
}

/// What a stopped node left behind: tool calls it had started become `unknown` (the tool may
/// or may not have acted; a human reconciles them), their leases revoked; rollbacks it was
/// running released, with the doubt recorded; at the start of a server on a store of its own,
/// approved requests it never started are cancelled. On a shared store only the calls of nodes
/// whose heartbeat stopped are touched, never a live node's; every node runs this
/// periodically, and the first to commit each change wins. The executions marked `unknown`.
pub fn reconcile(s: &AppState, startup: bool) -> Result<Vec<String>, ApiError> {
    let store = s.ledger().store();
    if startup && !s.shared_store && s.connector.is_some() {
        let q = Query { state: Some("approved".into()), ..Query::default() };
        for r in store.find(Table::Requests, &q)? {
            let req = ActionRecord::from_record(&r)?;
            if req.folded_into.is_some() {
                continue; // moves with the request it is folded into
            }
            let why = "the server stopped after the decision and before the execution started; nothing was called";
            refuse(s, &req, r.version, "cancelled", "interrupted", why)?;
            tracing::warn!(request = %req.id, "an approved request interrupted before its execution is now cancelled");
        }
    }
    if s.shared_store && s.connector.is_some() {
        cancel_orphans(s)?;
    }
    let q = Query { state: Some("executing".into()), ..Query::default() };
    // Rollbacks a stop interrupted: the compensation may or may not have run. The claim is
    // released (a human may press rollback again, or reconcile) and the doubt recorded.
    let q_rb = Query { state: Some("rolling_back".into()), ..Query::default() };
    for r in store.find(Table::Executions, &q_rb)? {
        let mut exec = Execution::from_record(&r)?;
        if !owner_gone(s, startup, exec.node.as_deref())? {
            continue;
        }
        let by = exec.rolling_back.take().unwrap_or_default();
        exec.node = None;
        let mut er = exec.record();
        er.version = r.version;
        let why = "the server stopped during the compensation; it may or may not have run";
        let event = Event::new(EventType::RollbackFailed, Actor::system("executor"))
            .task(&exec.task)
            .request(&exec.id)
            .action(&exec.action)
            .data(json!({"execution_id": exec.id, "target": exec.target, "started_by": by, "error": why}));
        if commit_unless_taken(s, Batch::new().change(Change::Update(er)).event(event))? {
            tracing::warn!(execution = %exec.id, "a rollback interrupted by a stop: check the tool before pressing it again");
        }
    }
    let mut marked = Vec::new();
    for r in store.find(Table::Executions, &q)? {
        let mut exec = Execution::from_record(&r)?;
        if !owner_gone(s, startup, exec.node.as_deref())? {
            continue;
        }
        exec.state = ExecutionState::Unknown;
        exec.error = Some("the server stopped during the call; the tool may or may not have acted".into());
        let mut er = exec.record();
        er.version = r.version;
        let mut batch = Batch::new().change(Change::Update(er));
        if let Some((mut req, v)) = versioned::<ActionRecord>(store.as_ref(), &exec.id)? {
            batch.changes.extend(move_folded(store.as_ref(), &req, &["executing", "approved"], "unknown")?);
            req.state = "unknown".into();
            let mut rr = req.record();
            rr.version = v;
            batch = batch.change(Change::Update(rr));
        }
        if let Some((lease, v)) = versioned::<Lease>(store.as_ref(), &exec.lease)?
            && lease.state == LeaseState::Active
        {
            merge(&mut batch, revoke_changes(&lease, v, &Actor::system("executor"), "the server restarted", s.now()));
        }
        batch = batch.event(
            Event::new(EventType::ExecutionUnknown, Actor::system("executor"))
                .task(&exec.task)
                .request(&exec.id)
                .action(&exec.action)
                .data(json!({"execution_id": exec.id, "target": exec.target, "reason": exec.error,
                             "node": exec.node})),
        );
        if commit_unless_taken(s, batch)? {
            marked.push(exec.id);
        }
    }
    Ok(marked)
}

/// What undoing `exec` needs under the bundle in force (DESIGN §6: a rollback is an action):
/// the roles, quorum and separation of duties of its compensation on its target.
pub fn undo_requirement(s: &AppState, exec: &Execution) -> Result<warden_core::authority::UndoRequirement, ApiError> {
    let bundle = s.bundle()?;
    let compensation = exec.compensation.as_deref().unwrap_or(&exec.action);
    let target = exec.target.parse().map_err(|e: String| ApiError::new(Code::InvalidRequest, e))?;
    Ok(bundle.undo_requirement(&exec.agent, compensation, &target))
}

/// Who asks for a rollback.
#[derive(Debug, Clone, Copy)]
pub enum RollbackBy<'a> {
    /// A human (the API, the console, the CLI): needs the compensation's authority
    /// ([`crate::authority::Power::Undo`]); when that needs more than one person, the request
    /// opens an approval of its own with this vote on it, and nothing runs yet.
    Human(&'a Caller),
    /// A halt with `rollback`: only what its caller may undo alone; the rest is refused
    /// (`undo_needs_approval` or the missing role) and the halt reports it as left.
    Halt(&'a Caller),
    /// An approved undo approval: its voters held the authority; it is checked again against
    /// the bundle in force and bound to the approval's digest.
    Approved(&'a Approval),
}

/// What a rollback request did: the compensation ran (or had run), it waits for votes, or it
/// needs more than the asker's one vote and an undo approval must be opened
/// ([`crate::approvals::request_undo`] does).
#[derive(Debug, Clone)]
pub enum Undone {
    Done(Execution),
    Pending(Approval),
    NeedsVotes { exec: Box<Execution>, compensation: String, granted: crate::authority::Granted },
}

/// The digest an undo approval is bound to: the compensation, on the execution's target, of
/// that execution (its id is the one parameter).
pub fn undo_digest(exec: &Execution, compensation: &str) -> Result<String, ApiError> {
    let mut params = Map::new();
    params.insert("undo".into(), Value::String(exec.id.clone()));
    warden_core::request::action_digest(&exec.agent, &exec.task, compensation, &exec.target, &params)
        .map_err(|e| ApiError::new(Code::InvalidRequest, format!("the undo cannot be digested: {e}")))
}

/// Whether approved undo approval `a` still authorizes undoing `exec` under the bundle in
/// force: bound to its digest, and its votes meet what the compensation needs now.
fn undo_still_authorized(s: &AppState, a: &Approval, exec: &Execution, compensation: &str) -> Result<(), ApiError> {
    if a.undo.as_deref() != Some(exec.id.as_str()) || a.digest != undo_digest(exec, compensation)? {
        return Err(ApiError::new(
            Code::DigestMismatch,
            format!("approval `{}` does not cover undoing `{}`", a.id, exec.id),
        ));
    }
    if a.state != crate::model::ApprovalState::Approved {
        return Err(ApiError::new(Code::NotApproved, format!("approval `{}` is {}", a.id, a.state.as_str())));
    }
    let need = undo_requirement(s, exec)?;
    let voters_hold =
        crate::authority::votes_that_count(s, &exec.agent, &a.votes, &need.roles, need.separation_of_duties);
    if voters_hold < need.quorum.max(1) {
        return Err(ApiError::new(
            Code::PolicyChanged,
            format!(
                "undoing `{}` now needs {} of {}; approval `{}` has {voters_hold} such vote(s)",
                exec.id,
                need.quorum,
                need.roles.join(", "),
                a.id
            ),
        ));
    }
    Ok(())
}

/// Runs the compensation of request `id`'s execution, once, with the authority the
/// compensation needs (see [`RollbackBy`]): the execution is marked as being rolled back
/// (version-checked) before the tool is called, so two humans pressing rollback together
/// call it once; the second is told it is under way. Idempotent: an execution already rolled
/// back is answered as it is.
pub fn rollback(s: &AppState, connector: &dyn Connector, id: &str, by: RollbackBy<'_>) -> Result<Undone, ApiError> {
    connectors_current(s, s.bundle()?.as_ref())?;
    let store = s.ledger().store();
    let (exec, version) = versioned::<Execution>(store.as_ref(), id)?
        .ok_or_else(|| ApiError::new(Code::NoExecution, format!("request `{id}` was not executed")))?;
    let compensation_name = exec.compensation.clone().unwrap_or_else(|| exec.action.clone());
    let actor = match by {
        RollbackBy::Human(caller) | RollbackBy::Halt(caller) => {
            let granted = crate::authority::check(
                s,
                caller,
                crate::authority::Power::Undo {
                    agent: &exec.agent,
                    compensation: &compensation_name,
                    target: &exec.target,
                },
            )?;
            if granted.quorum > 1 && exec.state == ExecutionState::Succeeded && exec.rolling_back.is_none() {
                // (The authority check above has refused agents already.)
                if matches!(by, RollbackBy::Halt(_)) {
                    return Err(ApiError::new(
                        Code::UndoNeedsApproval,
                        format!(
                            "undoing `{id}` needs {} people of {}: ask with POST /v1/actions/{id}/rollback",
                            granted.quorum,
                            granted.roles.join(", ")
                        ),
                    ));
                }
                if exec.compensation.is_some() {
                    return Ok(Undone::NeedsVotes { exec: Box::new(exec), compensation: compensation_name, granted });
                }
            }
            caller.actor()
        }
        RollbackBy::Approved(a) => {
            if let Err(e) = undo_still_authorized(s, a, &exec, &compensation_name) {
                let event = Event::new(EventType::RollbackFailed, Actor::system("executor"))
                    .task(&exec.task)
                    .request(id)
                    .action(&exec.action)
                    .data(json!({"execution_id": id, "compensation": compensation_name, "target": exec.target,
                                 "approval": a.id, "called": false, "refused": e.code.as_str(), "error": e.message}));
                s.ledger().commit(Batch::new().event(event))?;
                return Err(e);
            }
            Actor::user(a.votes.last().map_or("system", |v| v.user.as_str()))
        }
    };
    let actor = &actor;
    if let Some(who) = &exec.rolling_back {
        return Err(ApiError::new(
            Code::RollbackInProgress,
            format!("the rollback of `{id}` that `{who}` started is under way"),
        ));
    }
    match exec.state {
        ExecutionState::RolledBack => return Ok(Undone::Done(exec)),
        ExecutionState::Succeeded => {}
        other => {
            return Err(ApiError::new(
                Code::NotRollbackable,
                format!("execution `{id}` is {}; only a succeeded execution can be rolled back", other.as_str()),
            ));
        }
    }
    let Some(compensation) = exec.compensation.clone() else {
        return Err(ApiError::new(
            Code::Irreversible,
            format!("`{}` is irreversible: the catalog names no compensation for it", exec.action),
        ));
    };
    let (req, _) = versioned::<ActionRecord>(store.as_ref(), id)?
        .ok_or_else(|| ApiError::new(Code::UnknownAction, format!("no action request `{id}`")))?;
    let now = s.now();
    // Claim the rollback before calling the tool: of two concurrent rollbacks, one commits
    // this claim and calls the tool; the other conflicts and is told so.
    let mut claimed = exec.clone();
    claimed.rolling_back = Some(actor.id.clone());
    claimed.node = Some(s.node.clone());
    let mut claim = claimed.record();
    claim.version = version;
    let started = Batch::new().change(Change::Update(claim)).event(
        Event::new(EventType::RollbackStarted, actor.clone())
            .task(&exec.task)
            .request(id)
            .action(&exec.action)
            .data(json!({"execution_id": id, "compensation": compensation, "target": exec.target})),
    );
    match s.ledger().commit(started) {
        Ok(_) => {}
        Err(StoreError::Conflict { .. }) => {
            let now_is = versioned::<Execution>(store.as_ref(), id)?.map(|(e, _)| e);
            return match now_is {
                Some(e) if e.state == ExecutionState::RolledBack => Ok(Undone::Done(e)),
                _ => Err(ApiError::new(
                    Code::RollbackInProgress,
                    format!("another rollback of `{id}` started at the same moment"),
                )),
            };
        }
        Err(e) => return Err(e.into()),
    }
    let version = version + 1;
    let result = route_for(s, &req, &compensation, &exec.captured).and_then(|via| {
        connector.compensate(&compensation, &Call { via, ..call_for(&req, &exec.lease, "", exec.captured.clone()) })
    });
    let mut next = exec.clone();
    next.rolling_back = None;
    let (kind, ok) = match &result {
        Ok(answer) => {
            next.state = ExecutionState::RolledBack;
            next.rollback = Some(Rollback {
                action: compensation.clone(),
                by: actor.id.clone(),
                at: rfc3339(now),
                succeeded: true,
                answer: Some(answer.body.clone()),
                error: None,
            });
            (EventType::RollbackSucceeded, true)
        }
        Err(e) => {
            next.rollback = Some(Rollback {
                action: compensation.clone(),
                by: actor.id.clone(),
                at: rfc3339(now),
                succeeded: false,
                answer: None,
                error: Some(e.to_string()),
            });
            (EventType::RollbackFailed, false)
        }
    };
    let mut r = next.record();
    r.version = version;
    let mut batch = Batch::new().change(Change::Update(r)).event(
        Event::new(kind, actor.clone()).task(&exec.task).request(id).action(&exec.action).data(json!({
            "execution_id": id, "compensation": compensation, "target": exec.target,
            "error": next.rollback.as_ref().and_then(|r| r.error.clone()),
        })),
    );
    if ok && let Some((mut req, v)) = versioned::<ActionRecord>(store.as_ref(), id)? {
        batch.changes.extend(move_folded(store.as_ref(), &req, &["succeeded"], "rolled_back")?);
        req.state = "rolled_back".into();
        let mut rr = req.record();
        rr.version = v;
        batch = batch.change(Change::Update(rr));
    }
    s.ledger().commit(batch).map_err(|e| match e {
        // The tool was called: say so, lest a retry call it again.
        StoreError::Conflict { .. } => ApiError::new(
            Code::Conflict,
            format!(
                "the compensation of `{id}` was called ({}), but the execution changed meanwhile (another node \
                 reconciled it) and the result was not recorded: look at the tool before pressing rollback again",
                if ok { "the tool answered success" } else { "the tool answered an error" }
            ),
        ),
        other => other.into(),
    })?;
    match result {
        Ok(_) => Ok(Undone::Done(next)),
        Err(e) => Err(ApiError::new(Code::RollbackFailed, e.to_string())),
    }
}

/// [`rollback`] through this server's connectors (422 `no_connector` without them).
pub fn rollback_request(s: &AppState, id: &str, by: RollbackBy<'_>) -> Result<Undone, ApiError> {
    let connector = s
        .connector
        .as_deref()
        .ok_or_else(|| ApiError::new(Code::NoConnector, "this server has no connectors configured"))?;
    rollback(s, connector, id, by)
}

/// The lease of id `id`, if any.
pub fn lease(store: &dyn Store, id: &str) -> Result<Option<(Lease, u64)>, ApiError> {
    versioned::<Lease>(store, id)
}
