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
use warden_store::{Batch, Change, Query, Record, Store, StoreError, Table};

use crate::error::ApiError;
use crate::model::{ActionRecord, Model, millis, rfc3339};
use crate::routes::new_id;
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
}

impl Model for Execution {
    const TABLE: Table = Table::Executions;
    fn id(&self) -> &str {
        &self.id
    }
    fn record(&self) -> Record {
        Record::new(Table::Executions, &self.id, serde_json::to_value(self).unwrap_or_default())
            .agent(&self.agent)
            .task(&self.task)
            .state(self.state.as_str())
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
        Record::new(Table::Leases, &self.id, serde_json::to_value(self).unwrap_or_default())
            .agent(&self.agent)
            .task(&self.task)
            .state(state)
            .key(&self.request)
            .at(self.expires_ms)
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

fn versioned<T: Model>(store: &dyn Store, id: &str) -> Result<Option<(T, u64)>, ApiError> {
    store.get(T::TABLE, id)?.map(|r| Ok((T::from_record(&r)?, r.version))).transpose()
}

fn call_for(req: &ActionRecord, lease: &str, token: &str, captured: Map<String, Value>) -> Call {
    let (kind, id) = req.target.split_once(':').unwrap_or(("", &req.target));
    Call {
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

/// What an execution leaves in the answer.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Executed {
    pub execution: Execution,
    pub lease: Lease,
}

/// Executes request `id` (state `approved`): issues its lease and records `executing`
/// durably, calls the tool, then records the result and revokes the lease.
pub fn execute(s: &AppState, connector: &dyn Connector, id: &str) -> Result<Executed, ApiError> {
    let store = s.ledger().store();
    let (req, version) = versioned::<ActionRecord>(store.as_ref(), id)?
        .ok_or_else(|| ApiError::not_found("unknown_action", format!("no action request `{id}`")))?;
    if req.state != "approved" {
        return Err(ApiError::conflict("not_approved", format!("request `{id}` is {}, not approved", req.state)));
    }
    let bundle = s.bundle()?;
    let class = bundle.catalog().get(&req.action);
    let now = s.now();
    let ttl = class.map_or(300, |c| c.lease_ttl.as_secs()) as i64;
    let ttl = match req.approval.as_deref().map(|a| crate::approvals::load(store.as_ref(), a)).transpose()? {
        Some(Some(v)) => v.approval.narrowed_lease_ttl_secs.map_or(ttl, |n| ttl.min(n as i64)),
        _ => ttl,
    };
    let expires = now + time::Duration::seconds(ttl);
    let lease = Lease {
        id: new_id("lease")?,
        state: LeaseState::Active,
        agent: req.agent.clone(),
        task: req.task.clone(),
        request: req.id.clone(),
        scope: format!("{} {}", req.action, req.target),
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
    let mut exec = Execution {
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
    };
    let mut started_req = req.clone();
    started_req.state = "executing".into();
    let mut r = started_req.record();
    r.version = version;
    let system = Actor::system("executor");
    let start = Batch::new()
        .change(Change::Update(r))
        .change(Change::Insert(lease.record()))
        .change(Change::Insert(exec.record()))
        .event(
            Event::new(EventType::LeaseIssued, system.clone())
                .task(&req.task)
                .request(&req.id)
                .action(&req.action)
                .data(json!({"lease": lease.id, "agent": req.agent, "scope": lease.scope, "expires_at": lease.expires_at})),
        )
        .event(
            Event::new(EventType::ExecutionStarted, system.clone())
                .task(&req.task)
                .request(&req.id)
                .action(&req.action)
                .data(json!({"execution_id": req.id, "target": req.target, "lease": lease.id, "category": category})),
        );
    // The halt gate: no matching action starts once a halt has returned (see `crate::halt`).
    let gate =
        s.halts.read().map_err(|_| ApiError::unavailable("halt_unavailable", "the halt state is unavailable"))?;
    if let Some(h) = gate.iter().find(|h| h.matches(&req.agent, &req.action, now)) {
        // Halted between the decision and the call: nothing starts; the request is cancelled.
        let reason = format!("halted before the tool was called: {}", h.reason);
        let mut cancelled = req.clone();
        cancelled.state = "cancelled".into();
        let mut r = cancelled.record();
        r.version = version;
        let event = Event::new(EventType::ExecutionFailed, system.clone())
            .task(&req.task)
            .request(&req.id)
            .action(&req.action)
            .data(json!({"execution_id": req.id, "target": req.target, "called": false, "error": reason}));
        s.ledger().commit(Batch::new().change(Change::Update(r)).event(event))?;
        return Err(ApiError::conflict("halted", reason));
    }
    s.ledger().commit(start).map_err(|e| match e {
        StoreError::Conflict { .. } => ApiError::conflict("conflict", format!("request `{id}` changed meanwhile")),
        other => other.into(),
    })?;
    let result = if connector.supports(&req.action) {
        let token = s.tokens.local.mint_lease(&req.agent, &lease.id, &lease.scope, now, ttl);
        connector.execute(&call_for(&req, &lease.id, &token, Map::new()))
    } else {
        Err(ConnectorError::NotConfigured(req.action.clone()))
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
    finish(s, &req, &exec, &lease, kind, final_state, category.as_deref())?;
    s.metrics.executed(final_state);
    Ok(Executed { execution: exec, lease: revoked(lease, "the execution finished", s.now()) })
}

fn revoked(mut lease: Lease, reason: &str, now: OffsetDateTime) -> Lease {
    lease.state = LeaseState::Revoked;
    lease.revoked_at = Some(rfc3339(now));
    lease.revoked_reason = Some(reason.into());
    lease
}

/// Records an execution's result: the execution, its request, the lease revoked. Retried on a
/// conflict (a halt revoking the lease meanwhile), never dropped: the tool has acted.
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
    for _ in 0..8 {
        let now = s.now();
        let mut batch = Batch::new();
        let (_, ev) = versioned::<Execution>(store.as_ref(), &exec.id)?
            .ok_or_else(|| ApiError::unavailable("store_unavailable", format!("execution `{}` vanished", exec.id)))?;
        let mut r = exec.record();
        r.version = ev;
        batch = batch.change(Change::Update(r));
        if let Some((mut current, v)) = versioned::<ActionRecord>(store.as_ref(), &req.id)? {
            current.state = state.to_string();
            let mut r = current.record();
            r.version = v;
            batch = batch.change(Change::Update(r));
        }
        if let Some((current, v)) = versioned::<Lease>(store.as_ref(), &lease.id)?
            && current.state == LeaseState::Active
        {
            merge(&mut batch, revoke_changes(&current, v, &Actor::system("executor"), "the execution finished", now));
        }
        batch = batch.event(
            Event::new(kind, Actor::system("executor")).task(&req.task).request(&req.id).action(&req.action).data(
                json!({
                    "execution_id": exec.id, "target": req.target, "tool_status": exec.tool_status,
                    "answer": exec.answer, "error": exec.error, "category": category,
                }),
            ),
        );
        match s.ledger().commit(batch) {
            Ok(_) => return Ok(()),
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(ApiError::unavailable("store_unavailable", "the execution's result could not be recorded"))
}

/// On start: executions left `executing` by a stopped server become `unknown`, for a human to
/// reconcile. They are never retried.
pub fn reconcile_after_restart(s: &AppState) -> Result<Vec<String>, ApiError> {
    let store = s.ledger().store();
    let q = Query { state: Some("executing".into()), ..Query::default() };
    let mut marked = Vec::new();
    for r in store.find(Table::Executions, &q)? {
        let mut exec = Execution::from_record(&r)?;
        exec.state = ExecutionState::Unknown;
        exec.error = Some("the server stopped during the call; the tool may or may not have acted".into());
        let mut er = exec.record();
        er.version = r.version;
        let mut batch = Batch::new().change(Change::Update(er));
        if let Some((mut req, v)) = versioned::<ActionRecord>(store.as_ref(), &exec.id)? {
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
                .data(json!({"execution_id": exec.id, "target": exec.target, "reason": exec.error})),
        );
        s.ledger().commit(batch)?;
        marked.push(exec.id);
    }
    Ok(marked)
}

/// Runs the compensation of request `id`'s execution. Idempotent: an execution already rolled
/// back is answered as it is.
pub fn rollback(s: &AppState, connector: &dyn Connector, id: &str, actor: &Actor) -> Result<Execution, ApiError> {
    let store = s.ledger().store();
    let (exec, version) = versioned::<Execution>(store.as_ref(), id)?
        .ok_or_else(|| ApiError::not_found("no_execution", format!("request `{id}` was not executed")))?;
    match exec.state {
        ExecutionState::RolledBack => return Ok(exec),
        ExecutionState::Succeeded => {}
        other => {
            return Err(ApiError::conflict(
                "not_rollbackable",
                format!("execution `{id}` is {}; only a succeeded execution can be rolled back", other.as_str()),
            ));
        }
    }
    let Some(compensation) = exec.compensation.clone() else {
        return Err(ApiError::invalid(
            "irreversible",
            format!("`{}` is irreversible: the catalog names no compensation for it", exec.action),
        ));
    };
    let (req, _) = versioned::<ActionRecord>(store.as_ref(), id)?
        .ok_or_else(|| ApiError::not_found("unknown_action", format!("no action request `{id}`")))?;
    let now = s.now();
    s.ledger().commit(
        Batch::new().event(
            Event::new(EventType::RollbackStarted, actor.clone())
                .task(&exec.task)
                .request(id)
                .action(&exec.action)
                .data(json!({"execution_id": id, "compensation": compensation, "target": exec.target})),
        ),
    )?;
    let result = connector.compensate(&compensation, &call_for(&req, &exec.lease, "", exec.captured.clone()));
    let mut next = exec.clone();
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
        req.state = "rolled_back".into();
        let mut rr = req.record();
        rr.version = v;
        batch = batch.change(Change::Update(rr));
    }
    s.ledger().commit(batch).map_err(|e| match e {
        StoreError::Conflict { .. } => ApiError::conflict("conflict", format!("execution `{id}` changed meanwhile")),
        other => other.into(),
    })?;
    match result {
        Ok(_) => Ok(next),
        Err(e) => Err(ApiError::new(axum::http::StatusCode::BAD_GATEWAY, "rollback_failed", e.to_string())),
    }
}

/// The lease of id `id`, if any.
pub fn lease(store: &dyn Store, id: &str) -> Result<Option<(Lease, u64)>, ApiError> {
    versioned::<Lease>(store, id)
}
