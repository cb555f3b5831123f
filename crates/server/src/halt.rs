//! The emergency stop (DESIGN §3, §8): a halt of everything, one agent, or one action class.
//! From the moment `set` returns, no matching action starts: executions hold the in-memory
//! halt list for reading from their last check to the end of their tool call, and `set` takes
//! it for writing before it answers. In the same commit, the matching leases are revoked, the
//! matching pending approvals cancelled and a halted agent's status set to `halted`.
//!
//! With many nodes on one store the in-memory list is each node's mirror, and the store is the
//! truth: every execution's start commit (and every executable decision's) expects the halts
//! epoch it read, so a halt committed on another node makes it conflict, and the node reads
//! the halts again ([`sync`]) before it checks once more. So once a halt call on any node has
//! returned, no matching action starts on any node. A tool call already under way on another
//! node when the halt commits is not waited for there (its lease is revoked in the halt's
//! commit, so a tool that introspects it sees the stop).

use serde::Serialize;
use serde_json::json;
use utoipa::ToSchema;
use warden_core::audit::entry::{Actor, Event, EventType};
use warden_core::request::{AgentStatus, Halt, HaltScope};
use warden_store::{Batch, Change, Query, StoreError, Table};

use crate::approvals;
use crate::auth::Caller;
use crate::error::{ApiError, Code};
use crate::execution::{self, Lease, LeaseState};
use crate::model::{Agent, Model, rfc3339};
use crate::state::AppState;

pub use crate::model::HaltRecord;

pub use crate::state::{HALTS_EPOCH_KEY as EPOCH_KEY, HaltGate as Gate};

pub use crate::facts::{load_gate, sync};

/// A fresh epoch for a halt or resume's commit.
fn next_epoch() -> Result<(String, Change), ApiError> {
    let epoch = crate::model::new_id("epoch")?;
    Ok((epoch.clone(), Change::SetMeta { key: EPOCH_KEY.into(), value: epoch }))
}

pub use crate::model::{active_halts as active, halt_records as records};

/// What a halt did.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Halted {
    pub halt: HaltRecord,
    /// Leases revoked by this halt.
    pub revoked_leases: Vec<String>,
    /// Approvals cancelled by this halt.
    pub cancelled_approvals: Vec<String>,
    /// Executions rolled back (with `rollback`).
    pub rolled_back: Vec<String>,
    /// Rollbacks that failed, with why.
    pub rollback_failures: Vec<String>,
    /// Executions the halt's caller may not undo alone (a role they lack, separation of
    /// duties, or a quorum above one), left as they are, with why.
    pub rollback_left: Vec<Left>,
}

/// An execution a halt with `rollback` left alone, and why.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Left {
    pub execution: String,
    /// `missing_role`, `separation_of_duties`, `undo_needs_approval`, …
    pub code: String,
    pub reason: String,
}

fn lease_matches(h: &Halt, l: &Lease) -> bool {
    match h.scope {
        HaltScope::All => true,
        HaltScope::Agent => h.id.as_deref() == Some(l.agent.as_str()),
        HaltScope::Action => l.scope.split(' ').next() == h.id.as_deref(),
    }
}

fn check(h: &Halt, now: time::OffsetDateTime) -> Result<(), ApiError> {
    h.validate().map_err(|why| ApiError::new(Code::InvalidHalt, why))?;
    if let Some(at) = h.expires_at
        && at <= now
    {
        return Err(ApiError::new(
            Code::InvalidHalt,
            format!("`expires_at` {} is not in the future: such a halt would stop nothing", rfc3339(at)),
        ));
    }
    if crate::input::is_blank(&h.reason) {
        return Err(ApiError::new(Code::ReasonRequired, "a halt needs a `reason`"));
    }
    Ok(())
}

/// Sets a halt for `caller`, who must hold a halting role ([`crate::authority`]); see the
/// module's documentation for what it guarantees. With `rollback`, the matching executions
/// of open tasks (or tasks an agent closed) are undone — only those the caller may undo alone; the rest are reported in
/// `rollback_left`.
pub fn set(s: &AppState, halt: Halt, caller: &Caller, rollback: bool) -> Result<Halted, ApiError> {
    crate::authority::check(s, caller, crate::authority::Power::Halt)?;
    check(&halt, s.now())?;
    let actor = &caller.actor();
    let store = s.ledger().store();
    let mut gate =
        s.halts.write().map_err(|_| ApiError::new(Code::HaltUnavailable, "the halt state is unavailable"))?;
    let now = s.now();
    let record = HaltRecord {
        id: crate::model::new_id("halt")?,
        halt: halt.clone(),
        set_by: actor.id.clone(),
        set_at: rfc3339(now),
        active: true,
        lifted_by: None,
        lifted_at: None,
        lifted_reason: None,
    };
    // Re-read and retry on a conflict: an execution may finish (and revoke its lease) meanwhile.
    let mut outcome = None;
    let (_, epoch_change) = next_epoch()?;
    for _ in 0..16 {
        let mut batch = Batch::new().change(Change::Insert(record.record())).change(epoch_change.clone()).event(
            Event::new(EventType::HaltSet, actor.clone()).data(json!({
                "halt": record.id, "scope": halt.scope, "id": halt.id, "reason": halt.reason,
                "expires_at": halt.expires_at.map(rfc3339), "rollback": rollback,
            })),
        );
        let q = Query { state: Some("active".into()), ..Query::default() };
        let mut revoked = Vec::new();
        for r in store.find(Table::Leases, &q)? {
            let lease = Lease::from_record(&r)?;
            if lease.state == LeaseState::Active && lease_matches(&halt, &lease) {
                let b = execution::revoke_changes(&lease, r.version, actor, &format!("halt: {}", halt.reason), now);
                batch.changes.extend(b.changes);
                batch.events.extend(b.events);
                revoked.push(lease.id);
            }
        }
        let mut cancelled = Vec::new();
        for a in approvals::all_in(store.as_ref(), approvals::ApprovalState::Pending)? {
            // An undo approval is humans asking to lift a containment: a stop does not cancel it.
            if a.undo.is_some() || !halt.matches(&a.agent, &a.action, now) {
                continue;
            }
            if let Some(v) = approvals::load(store.as_ref(), &a.id)? {
                let (_, b) =
                    approvals::cancel_batch(store.as_ref(), &v, actor, &format!("halt: {}", halt.reason), now)?;
                batch.changes.extend(b.changes);
                batch.events.extend(b.events);
                cancelled.push(a.id);
            }
        }
        if halt.scope == HaltScope::Agent
            && let Some(id) = &halt.id
            && let Some(r) = store.get(Table::Agents, id)?
        {
            let mut agent = Agent::from_record(&r)?;
            if agent.status == AgentStatus::Active {
                agent.status = AgentStatus::Halted;
                let mut ar = agent.record();
                ar.version = r.version;
                batch = batch.change(Change::Update(ar)).event(
                    Event::new(EventType::AgentChanged, actor.clone())
                        .data(json!({"agent": id, "from": "active", "to": "halted", "reason": halt.reason})),
                );
            }
        }
        match s.ledger().commit(batch) {
            Ok(_) => {
                outcome = Some((revoked, cancelled));
                break;
            }
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    let (revoked_leases, mut cancelled_approvals) =
        outcome.ok_or_else(|| ApiError::new(Code::Conflict, "the estate kept changing; the halt was not set"))?;
    // Approvals opened by requests that committed between the read above and the halt's
    // commit; from the commit on, no executable decision can pass (it expects the old epoch).
    let commit = |b| s.ledger().commit(b).map(|_| ());
    let matching = |a: &approvals::Approval| a.undo.is_none() && halt.matches(&a.agent, &a.action, now);
    let reason = format!("halt: {}", halt.reason);
    cancelled_approvals.extend(approvals::cancel_where(store.as_ref(), &commit, &matching, actor, &reason, now)?);
    // The mirror becomes the store's list, not ours plus this one: a halt another node set
    // since we last read stays in it. Should the read fail, the mirror keeps this halt and
    // an epoch no commit can match, so every start conflicts and reads the halts again.
    match load_gate(store.as_ref()) {
        Ok(fresh) => *gate = fresh,
        Err(_) => {
            gate.list.push(halt.clone());
            gate.epoch = None;
        }
    }
    drop(gate);
    s.changed();
    let mut halted = Halted {
        halt: record,
        revoked_leases,
        cancelled_approvals,
        rolled_back: Vec::new(),
        rollback_failures: Vec::new(),
        rollback_left: Vec::new(),
    };
    if rollback && let Some(connector) = s.connector.as_deref() {
        // The matching executions of open tasks (and of tasks agents closed), one by one.
        let q = Query { state: Some("succeeded".into()), ..Query::default() };
        for r in store.find(Table::Executions, &q)? {
            let exec = execution::Execution::from_record(&r)?;
            if !halt.matches(&exec.agent, &exec.action, now) || exec.compensation.is_none() {
                continue;
            }
            // Open tasks — and tasks an agent closed itself: closing its own task does not
            // shield what an agent did from a halt with rollback.
            let in_scope = store
                .get(Table::Tasks, &exec.task)?
                .map(|t| crate::model::Task::from_record(&t))
                .transpose()?
                .is_some_and(|t| {
                    t.state == warden_core::request::TaskState::Open
                        || t.closed_by.as_deref().is_some_and(|by| by.starts_with("agent:"))
                });
            if !in_scope {
                continue;
            }
            match execution::rollback(s, connector, &exec.id, execution::RollbackBy::Halt(caller)) {
                Ok(_) => halted.rolled_back.push(exec.id),
                Err(e) if e.code.status().as_u16() == 403 || e.code == Code::UndoNeedsApproval => {
                    halted.rollback_left.push(Left {
                        execution: exec.id,
                        code: e.code.as_str().to_string(),
                        reason: e.message.to_string(),
                    });
                }
                Err(e) => halted.rollback_failures.push(format!("{}: {}", exec.id, e.message)),
            }
        }
    }
    Ok(halted)
}

/// Lifts the active halts with this scope and id; a halted agent becomes active again.
pub fn resume(
    s: &AppState,
    scope: HaltScope,
    id: Option<&str>,
    caller: &Caller,
    reason: &str,
) -> Result<Vec<HaltRecord>, ApiError> {
    crate::authority::check(s, caller, crate::authority::Power::Admin("lifting halts"))?;
    let actor = &caller.actor();
    if crate::input::is_blank(reason) {
        return Err(ApiError::new(Code::ReasonRequired, "a resume needs a `reason`"));
    }
    let store = s.ledger().store();
    let mut gate =
        s.halts.write().map_err(|_| ApiError::new(Code::HaltUnavailable, "the halt state is unavailable"))?;
    let now = s.now();
    // The halts as of an epoch, and that epoch expected unchanged: a halt set meanwhile (on
    // any node) makes this commit conflict rather than flip an agent it names back to active.
    let read_at = store.meta(EPOCH_KEY)?;
    let (_, epoch_change) = next_epoch()?;
    let mut batch =
        Batch::new().change(Change::ExpectMeta { key: EPOCH_KEY.into(), value: read_at }).change(epoch_change);
    let mut lifted = Vec::new();
    for (mut h, v) in records(store.as_ref(), true)? {
        if h.halt.scope != scope || h.halt.id.as_deref() != id {
            continue;
        }
        h.active = false;
        h.lifted_by = Some(actor.id.clone());
        h.lifted_at = Some(rfc3339(now));
        h.lifted_reason = Some(reason.to_string());
        let mut r = h.record();
        r.version = v;
        batch = batch.change(Change::Update(r)).event(
            Event::new(EventType::HaltLifted, actor.clone())
                .data(json!({"halt": h.id, "scope": h.halt.scope, "id": h.halt.id, "reason": reason})),
        );
        lifted.push(h);
    }
    if lifted.is_empty() {
        return Err(ApiError::new(Code::NoHalt, "no active halt has this scope and id"));
    }
    if scope == HaltScope::Agent
        && let Some(agent_id) = id
        && let Some(r) = store.get(Table::Agents, agent_id)?
    {
        let mut agent = Agent::from_record(&r)?;
        if agent.status == AgentStatus::Halted {
            agent.status = AgentStatus::Active;
            let mut ar = agent.record();
            ar.version = r.version;
            batch = batch.change(Change::Update(ar)).event(
                Event::new(EventType::AgentChanged, actor.clone())
                    .data(json!({"agent": agent_id, "from": "halted", "to": "active", "reason": reason})),
            );
        }
    }
    s.ledger().commit(batch).map_err(|e| match e {
        StoreError::Conflict { .. } => ApiError::new(Code::Conflict, "a halt changed meanwhile; try again"),
        other => other.into(),
    })?;
    *gate = load_gate(store.as_ref())?;
    Ok(lifted)
}

/// Lifts every halt whose `expires_at` has passed (actor `system`), and makes an agent its
/// halt had set `halted` active again — unless another halt in force still names it. The
/// server's sweeper calls it every second; a halt that expired already stops nothing (its
/// `matches` is false), this makes the record and the agent's status say so.
pub fn expire_due(s: &AppState) -> Result<Vec<HaltRecord>, ApiError> {
    let store = s.ledger().store();
    let now = s.now();
    let expired = |h: &Halt| h.expires_at.is_some_and(|e| e <= now);
    {
        let gate = s.halts.read().map_err(|_| ApiError::new(Code::HaltUnavailable, "the halt state is unavailable"))?;
        if !gate.list.iter().any(expired) {
            return Ok(Vec::new());
        }
    }
    let mut gate =
        s.halts.write().map_err(|_| ApiError::new(Code::HaltUnavailable, "the halt state is unavailable"))?;
    let read_at = store.meta(EPOCH_KEY)?;
    let all = records(store.as_ref(), true)?;
    let (_, epoch_change) = next_epoch()?;
    let mut batch =
        Batch::new().change(Change::ExpectMeta { key: EPOCH_KEY.into(), value: read_at }).change(epoch_change);
    let mut lifted = Vec::new();
    for (mut h, v) in all.iter().filter(|&(h, _)| expired(&h.halt)).cloned() {
        h.active = false;
        h.lifted_by = Some("system".into());
        h.lifted_at = Some(rfc3339(now));
        h.lifted_reason = Some("the halt expired".into());
        let mut r = h.record();
        r.version = v;
        batch = batch.change(Change::Update(r)).event(
            Event::new(EventType::HaltLifted, Actor::system("halts"))
                .data(json!({"halt": h.id, "scope": h.halt.scope, "id": h.halt.id, "reason": "the halt expired"})),
        );
        lifted.push(h);
    }
    for h in &lifted {
        let Some(agent_id) = h.halt.id.as_deref().filter(|_| h.halt.scope == HaltScope::Agent) else { continue };
        let still_halted = all.iter().any(|(o, _)| {
            o.id != h.id
                && !expired(&o.halt)
                && o.halt.scope == HaltScope::Agent
                && o.halt.id.as_deref() == Some(agent_id)
        });
        if still_halted {
            continue;
        }
        if let Some(r) = store.get(Table::Agents, agent_id)? {
            let mut agent = Agent::from_record(&r)?;
            if agent.status == AgentStatus::Halted
                && !batch
                    .changes
                    .iter()
                    .any(|c| matches!(c, Change::Update(u) if u.table == Table::Agents && u.id == agent_id))
            {
                agent.status = AgentStatus::Active;
                let mut ar = agent.record();
                ar.version = r.version;
                batch = batch.change(Change::Update(ar)).event(
                    Event::new(EventType::AgentChanged, Actor::system("halts")).data(
                        json!({"agent": agent_id, "from": "halted", "to": "active", "reason": "its halt expired"}),
                    ),
                );
            }
        }
    }
    match s.ledger().commit(batch) {
        Ok(_) => {}
        // Another node expired them first (or something else moved): read the halts as they
        // are now and let the next sweep look again.
        Err(StoreError::Conflict { .. }) => {
            *gate = load_gate(store.as_ref())?;
            return Ok(Vec::new());
        }
        Err(e) => return Err(e.into()),
    }
    *gate = load_gate(store.as_ref())?;
    drop(gate);
    s.changed();
    Ok(lifted)
}
