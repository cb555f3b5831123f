//! Tasks (DESIGN §2): the incidents agents work within. Opening one records who asserted its
//! trigger: verified only when the opener holds a role the bundle maps to the trigger's source
//! (`authority.toml [sources]`; the record names the role), otherwise the opener's claim.
//! Closing one — by its opener or a human with a close role ([`crate::authority`]) — cancels
//! its pending approvals and revokes its active leases in the same commit; an agent cannot
//! close a task in which others are waiting or working.

use serde_json::json;
use warden_core::audit::entry::{Event, EventType};
use warden_core::request::TaskState;
use warden_store::{Batch, Change, Record, StoreError};

use crate::auth::Caller;
use crate::error::{ApiError, Code};
use crate::input::is_blank;
use crate::model::{Model, Task, Trigger, new_id, rfc3339};
use crate::state::AppState;

fn check_task_id(id: &str) -> Result<(), ApiError> {
    let ok = !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ApiError::new(Code::InvalidTaskId, format!("task id `{id}` must be 1–128 of A–Z a–z 0–9 - _ . :")))
    }
}

/// Opens a task for `caller` (id given, or a fresh one).
pub fn open(
    s: &AppState,
    caller: &Caller,
    id: Option<String>,
    title: String,
    trigger: Trigger,
    agents: Vec<String>,
) -> Result<Task, ApiError> {
    // An agent's own task is its alone; a person names the agents that may act in theirs.
    for a in &agents {
        crate::admin::check_spiffe_id(a)?;
    }
    let agents = match caller {
        Caller::Agent(a) => vec![a.id.clone()],
        Caller::Human(_) => agents,
    };
    let id = match id {
        Some(id) => {
            check_task_id(&id)?;
            id
        }
        None => new_id("task")?,
    };
    if is_blank(&title) || is_blank(&trigger.source) {
        return Err(ApiError::new(Code::InvalidRequest, "a task needs a `title` and a `trigger.source`"));
    }
    let vouched_by = crate::authority::vouch(s, caller, &trigger.source)?;
    let task = Task {
        id: id.clone(),
        title,
        trigger,
        state: TaskState::Open,
        opened_by: caller.label(),
        // Only the word of a role the bundle maps to the source is verified (DESIGN §5); an
        // agent's, a tool's or a role-less person's is a claim.
        verified: vouched_by.is_some(),
        vouched_by: vouched_by.clone(),
        agents: agents.clone(),
        opened_at: rfc3339(s.now()),
        closed_at: None,
        closed_by: None,
        taint: Vec::new(),
        history: std::collections::BTreeMap::new(),
    };
    let event = Event::new(EventType::TaskOpened, caller.actor())
        .task(&id)
        .data(json!({"title": task.title, "trigger": task.trigger, "verified": task.verified,
                     "vouched_by": task.vouched_by, "agents": task.agents}));
    s.ledger().commit(Batch::new().change(Change::Insert(task.record())).event(event)).map_err(|e| match e {
        StoreError::Conflict { .. } => ApiError::new(Code::TaskExists, format!("task `{id}` already exists")),
        other => other.into(),
    })?;
    Ok(task)
}

/// The stored record of task `id`, or 404 `unknown_task`.
fn stored(s: &AppState, id: &str) -> Result<Record, ApiError> {
    s.ledger().store().get(Task::TABLE, id)?.ok_or_else(|| ApiError::new(Code::UnknownTask, format!("no task `{id}`")))
}

/// Tasks, newest id first (`task_…` ids begin with their time; ids a trigger gave, such as
/// `INC-2041`, sort as written): a page of at most `limit` (1–1000) after `after` (the last id
/// of the previous page), only those in `state` when given. Without their history (one task
/// at a time: [`get`]).
pub fn list(
    s: &AppState,
    state: Option<TaskState>,
    after: Option<String>,
    limit: usize,
) -> Result<crate::model::Page<Task>, ApiError> {
    list_in(s.ledger().store().as_ref(), state, after, limit)
}

/// [`list`] on a store (what `warden task list --data` reads).
pub fn list_in(
    store: &dyn warden_store::Store,
    state: Option<TaskState>,
    after: Option<String>,
    limit: usize,
) -> Result<crate::model::Page<Task>, ApiError> {
    if let Some(a) = &after {
        check_task_id(a)
            .map_err(|_| ApiError::new(Code::InvalidCursor, format!("`{a}` is not a cursor of this list")))?;
    }
    let limit = limit.clamp(1, 1000);
    let query = warden_store::Query {
        state: state.map(|st| if st == TaskState::Open { "open".to_string() } else { "closed".to_string() }),
        order: warden_store::Order::Id,
        descending: true,
        after: after.map(|id| warden_store::Cursor { at: None, id }),
        limit,
        ..Default::default()
    };
    let records = store.find(Task::TABLE, &query)?;
    let next = if records.len() == limit { records.last().map(warden_store::Cursor::after) } else { None };
    let items = records.iter().map(Task::from_record).collect::<Result<Vec<_>, _>>()?;
    Ok(crate::model::Page { items, next })
}

/// Task `id`.
pub fn get(s: &AppState, id: &str) -> Result<Task, ApiError> {
    get_in(s.ledger().store().as_ref(), id)
}

/// [`get`] on a store (what `warden task show --data` reads): the task, with its history.
pub fn get_in(store: &dyn warden_store::Store, id: &str) -> Result<Task, ApiError> {
    let record =
        store.get(Task::TABLE, id)?.ok_or_else(|| ApiError::new(Code::UnknownTask, format!("no task `{id}`")))?;
    let mut task = Task::from_record(&record)?;
    task.history = crate::facts::task_history(store, id, None)?.0;
    Ok(task)
}

/// Separation of duties for a clear: a person who owns an agent that may act in the task —
/// those it names, or every agent of the bundle when it names none — under a guardrail that
/// keeps owners from approving its actions, may not clear the task's taint either: that would
/// lift what sends their agent's actions to a human.
fn owns_no_agent_in(s: &AppState, caller: &Caller, task: &Task) -> Result<(), ApiError> {
    let Caller::Human(user) = caller else { return Ok(()) };
    let bundle = s.bundle()?;
    let may_act: Vec<String> =
        if task.agents.is_empty() { bundle.agents().map(|g| g.id.clone()).collect() } else { task.agents.clone() };
    for agent in may_act {
        let Some(g) = bundle.agent(&agent) else { continue };
        if g.escalation.separation_of_duties && crate::authority::owns_agent(s, user, &agent, &g.owner) {
            return Err(ApiError::new(
                Code::SeparationOfDuties,
                format!(
                    "`{}` owns agent `{agent}`, which may act in task `{}`: clearing its taint is not theirs to decide",
                    user.id, task.id
                ),
            ));
        }
    }
    Ok(())
}

/// Clears from task `id` exactly the marks named (label, source, who said so: what the human
/// reviewed), with `reason`: a human's word, audited (`task.taint_cleared`, naming every mark
/// cleared). A mark added since the human read the task is never swept with them, even when
/// the clear retries on a concurrent change. Agents never clear; a closed task is left as it
/// closed. The task and the marks cleared.
pub fn clear_taint(
    s: &AppState,
    caller: &Caller,
    id: &str,
    marks: &[(warden_core::request::TaintLabel, String, String, Option<String>)],
    reason: &str,
) -> Result<(Task, Vec<warden_core::request::Taint>), ApiError> {
    crate::authority::check(s, caller, crate::authority::Power::ClearTaint)?;
    if is_blank(reason) {
        return Err(ApiError::new(Code::InvalidRequest, "clearing taint needs a `reason`"));
    }
    if marks.is_empty() {
        return Err(ApiError::new(Code::InvalidRequest, "name the `marks` to clear, as read from the task"));
    }
    for _ in 0..16 {
        let r = stored(s, id)?;
        let mut task = Task::from_record(&r)?;
        if task.state == TaskState::Closed {
            return Err(ApiError::new(Code::TaskClosed, format!("task `{id}` is closed; its taint stays as it was")));
        }
        owns_no_agent_in(s, caller, &task)?;
        let named = |m: &warden_core::request::Taint| {
            marks.iter().any(|(label, source, by, request)| {
                m.label == *label
                    && &m.source == source
                    && &m.by == by
                    && request.as_ref().is_none_or(|r| m.request.as_ref() == Some(r))
            })
        };
        // A mark named without its request that matches several of Warden's (two results alike
        // in words) is ambiguous: one of them may have been added after the human's review.
        for (label, source, by, _) in marks.iter().filter(|m| m.3.is_none()) {
            let alike = task.taint.iter().filter(|m| m.label == *label && &m.source == source && &m.by == by).count();
            if alike > 1 {
                return Err(ApiError::new(
                    Code::InvalidRequest,
                    format!(
                        "{alike} marks read `{source}` (by `{by}`): name the `request` of each one reviewed; nothing \
                         was cleared"
                    ),
                ));
            }
        }
        let (cleared, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut task.taint).into_iter().partition(named);
        task.taint = kept;
        if cleared.is_empty() {
            return Ok((task, cleared));
        }
        let mut updated = task.record();
        updated.version = r.version;
        let event = Event::new(EventType::TaskTaintCleared, caller.actor())
            .task(id)
            .data(json!({"cleared": cleared, "reason": reason}));
        match s.ledger().commit(Batch::new().change(Change::Update(updated)).event(event)) {
            Ok(_) => return Ok((task, cleared)),
            Err(warden_store::StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(ApiError::new(Code::Conflict, format!("task `{id}` kept changing; try again")))
}

/// Closes task `id`: its pending approvals are cancelled and its active leases revoked in the
/// same commit — and approvals opened by requests that committed between this read and that
/// commit are cancelled right after it (none can be opened later: their commit expects the
/// task's old version).
pub fn close(s: &AppState, caller: &Caller, id: &str) -> Result<Task, ApiError> {
    let r = stored(s, id)?;
    let mut task = Task::from_record(&r)?;
    let granted =
        crate::authority::check(s, caller, crate::authority::Power::CloseTask { opened_by: &task.opened_by })?;
    if task.state == TaskState::Closed {
        return Err(ApiError::new(Code::TaskClosed, format!("task `{id}` is already closed")));
    }
    let now = s.now();
    task.state = TaskState::Closed;
    task.closed_at = Some(rfc3339(now));
    task.closed_by = Some(caller.label());
    let mut updated = task.record();
    updated.version = r.version;
    let actor = caller.actor();
    let why = "the task was closed";
    let event = Event::new(EventType::TaskClosed, actor.clone()).task(id);
    let mut batch = Batch::new().change(Change::Update(updated)).event(event);
    let store = s.ledger().store();
    let pending = crate::approvals::pending_of_task(store.as_ref(), id)?;
    // Closing by right of having opened it (no close role) stops only the closer's own work:
    // another agent's approval, approved or running request or lease, or a human's undo
    // request, needs a human with a close role.
    if granted.role == crate::authority::OPENER {
        let me = match caller {
            Caller::Agent(a) => a.id.clone(),
            Caller::Human(_) => String::new(),
        };
        let in_task = |table, state: &str| {
            let q = warden_store::Query { task: Some(id.to_string()), state: Some(state.into()), ..Default::default() };
            store.find(table, &q)
        };
        let mut others = pending.iter().any(|v| v.approval.agent != me || v.approval.undo.is_some());
        for r in in_task(warden_store::Table::Leases, "active")? {
            others |= crate::execution::Lease::from_record(&r)?.agent != me;
        }
        for state in ["approved", "executing"] {
            for r in in_task(warden_store::Table::Requests, state)? {
                others |= r.agent.as_deref() != Some(me.as_str());
            }
        }
        if others {
            return Err(ApiError::new(
                Code::TaskShared,
                format!(
                    "task `{id}` has others' pending approvals or work under way; a human with a close role must close it"
                ),
            ));
        }
    }
    let q = warden_store::Query { task: Some(id.to_string()), state: Some("active".into()), ..Default::default() };
    for r in store.find(warden_store::Table::Leases, &q)? {
        let lease = crate::execution::Lease::from_record(&r)?;
        let revoke = crate::execution::revoke_changes(&lease, r.version, &actor, why, now);
        batch.changes.extend(revoke.changes);
        batch.events.extend(revoke.events);
    }
    s.ledger().commit(batch).map_err(|e| match e {
        StoreError::Conflict { .. } => {
            ApiError::new(Code::Conflict, format!("task `{id}` changed meanwhile; try again"))
        }
        other => other.into(),
    })?;
    let commit = |b| s.ledger().commit(b).map(|_| ());
    let of_task = |a: &crate::approvals::Approval| a.task == id;
    let late = crate::approvals::cancel_where(store.as_ref(), &commit, &of_task, &actor, why, now)?;
    if !pending.is_empty() || !late.is_empty() {
        s.changed();
    }
    Ok(task)
}
