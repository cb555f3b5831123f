//! The request pipeline (DESIGN §1), the one way every front door — the `/v1` API today, MCP
//! and the console next — turns an agent's request into a recorded decision:
//!
//! ```text
//! submit ─► replay (idempotency key) ─► facts (task, halts, budget, breaker)
//!        ─► decide (the pure core) ─► approval (open, or fold by action digest)
//!        ─► one durable commit: request, decision, approval, budget hit, audit entries — only
//!           if the agent, the task and the halts are as read and the budget still holds
//!        ─► notices ─► execute (an `execute` decision, through its connector)
//! ```
//!
//! A commit that meets a concurrent change is decided again on fresh facts. No HTTP here:
//! front doors extract, call these functions, and map the answer.

use serde::Serialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use time::Duration;
use utoipa::ToSchema;
use warden_core::Bundle;
use warden_core::audit::canonical;
use warden_core::audit::entry::{Actor, Event, EventType};
use warden_core::decision::CapCode;
use warden_core::decision::{Decision, Outcome};
use warden_core::request::{ActionRequest, AgentStatus};
use warden_store::{Batch, Change, Query, Store, StoreError, Table};

use crate::approvals::{self, Approval, ApprovalState};
use crate::auth::Caller;
use crate::breaker::breaker_key;
use crate::error::{ApiError, Code};
use crate::execution::{self, Execution, LeaseState};
use crate::facts::{decide_with, facts};
use crate::model::{ActionRecord, Agent, DecisionRecord, Model, from_millis, millis, new_id, rfc3339};
use crate::state::AppState;

pub use crate::facts::BUDGET_WINDOW;

/// Where a request rests after its decision (DESIGN §8). `execute` rests in `approved` until
/// the executor takes it.
fn state_of(d: &Decision) -> &'static str {
    match d.outcome {
        Outcome::Deny => "denied",
        Outcome::Advise => "advised",
        Outcome::RequireApproval => "pending_approval",
        Outcome::Execute => "approved",
    }
}

/// SHA-256 of the canonical request body: what idempotency compares (the same key with
/// another body is a conflict).
pub fn request_digest(req: &ActionRequest) -> Result<String, ApiError> {
    let value = serde_json::to_value(req).map_err(|e| ApiError::new(Code::MalformedRequest, e.to_string()))?;
    let bytes = canonical::to_vec(&value).map_err(|e| ApiError::new(Code::MalformedRequest, e.to_string()))?;
    Ok(format!("sha256:{}", Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect::<String>()))
}

/// The answer about a recorded request (DESIGN §8).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ActionAnswer {
    /// The request's id (`act_…`).
    pub id: String,
    /// denied | advised | pending_approval | approved | rejected | expired | cancelled |
    /// executing | succeeded | failed | unknown | rolled_back
    #[schema(example = "advised")]
    pub state: String,
    /// The agent's SPIFFE ID.
    pub agent: String,
    pub task: String,
    pub action: String,
    /// `KIND:ID`
    pub target: String,
    /// The action digest (DESIGN §6): `sha256:` of the canonical `{agent, task, action,
    /// target, params}` — what an approval and a lease are bound to.
    #[schema(example = "sha256:b0e4de73ff9d5bf80ce7d4f5d5c0099fb241b132ac144ac01055061b160efe42")]
    pub digest: String,
    /// For a request folded into an approval another request opened: that request, whose
    /// one execution this request shares.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub folded_into: Option<String>,
    /// When an upstream MCP tool performs it (a mapped tool was called): `UPSTREAM/TOOL`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
    pub created_at: String,
    pub decision: Decision,
    /// The execution, once the action ran (or was attempted).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub execution: Option<Execution>,
    /// The lease the execution ran under.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease: Option<LeaseRef>,
}

/// The lease of an execution, as the answer shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct LeaseRef {
    pub id: String,
    pub expires_at: String,
    pub state: LeaseState,
}

/// The answer of a dry run: the decision, not recorded.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DryRunAnswer {
    pub agent: String,
    pub decision: Decision,
    /// Always `false`: nothing was recorded.
    pub recorded: bool,
}

fn answer(a: &ActionRecord, d: &DecisionRecord) -> ActionAnswer {
    ActionAnswer {
        id: a.id.clone(),
        state: a.state.clone(),
        agent: a.agent.clone(),
        task: a.task.clone(),
        action: a.action.clone(),
        target: a.target.clone(),
        digest: a.digest.clone(),
        folded_into: a.folded_into.clone(),
        via: a.via.clone(),
        created_at: a.created_at.clone(),
        decision: d.decision.clone(),
        execution: None,
        lease: None,
    }
}

/// The answer with the execution and its lease, when there is one.
pub fn full_answer(store: &dyn Store, a: &ActionRecord, d: &DecisionRecord) -> Result<ActionAnswer, ApiError> {
    let mut out = answer(a, d);
    // A folded request shares the execution of the request that opened its approval.
    let executed_as = a.folded_into.as_deref().unwrap_or(&a.id);
    if let Some(r) = store.get(Table::Executions, executed_as)? {
        let exec = Execution::from_record(&r)?;
        if let Some((l, _)) = execution::lease(store, &exec.lease)? {
            out.lease = Some(LeaseRef { id: l.id, expires_at: l.expires_at, state: l.state });
        }
        out.execution = Some(exec);
    }
    Ok(out)
}

pub fn load_pair(store: &dyn Store, id: &str) -> Result<Option<(ActionRecord, DecisionRecord)>, ApiError> {
    let Some(a) = store.get(Table::Requests, id)? else { return Ok(None) };
    let d = store
        .get(Table::Decisions, id)?
        .ok_or_else(|| ApiError::new(Code::StoreUnavailable, format!("request `{id}` has no decision")))?;
    Ok(Some((ActionRecord::from_record(&a)?, DecisionRecord::from_record(&d)?)))
}

/// A request already recorded under this agent's idempotency key: the same answer again, or
/// 409 when the body differs.
fn replay(store: &dyn Store, agent: &str, key: &str, digest: &str) -> Result<Option<ActionAnswer>, ApiError> {
    let query = Query { key: Some(ActionRecord::idempotency_index(agent, key)), limit: 1, ..Query::default() };
    let Some(found) = store.find(Table::Requests, &query)?.into_iter().next() else { return Ok(None) };
    let (a, d) = load_pair(store, &found.id)?
        .ok_or_else(|| ApiError::new(Code::StoreUnavailable, "a recorded request vanished"))?;
    if a.request_digest != digest {
        return Err(ApiError::new(
            Code::IdempotencyConflict,
            format!("idempotency key `{key}` was used for a different request ({})", a.id),
        ));
    }
    Ok(Some(full_answer(store, &a, &d)?))
}

/// How many times a request is decided again after its commit met a concurrent change (a
/// budget used up, an approval folded into, a halt, a suspend). Each retry reads the facts
/// anew; every conflict means another commit made progress.
const ATTEMPTS: usize = 64;

/// The agent as admitted, with the version its record was read at.
#[derive(Debug, Clone)]
pub struct Admitted {
    pub agent: Agent,
    pub version: u64,
}

/// Submits an action request for an admitted agent: replay by idempotency key, facts,
/// decision, approval (open or fold), one durable commit with its preconditions, notices,
/// and, for `execute`, the execution. `recorded` is set to the request's id once the decision
/// is committed (before any tool call), so a front door that must answer early can say where
/// the request stands.
pub fn submit(
    s: &AppState,
    bundle: &Bundle,
    admitted: &Admitted,
    req: ActionRequest,
    request_digest: String,
    via: Option<String>,
    recorded: &std::sync::OnceLock<String>,
) -> Result<ActionAnswer, ApiError> {
    // Decided on the params the log will hold (`4242.0` is `4242` there).
    let req = req.with_canonical_params();
    let agent = &admitted.agent;
    let target = req.target.to_string();
    let digest = bundle
        .action_digest(&agent.id, &req.task, &req.action, &target, &req.params)
        .map_err(|e| ApiError::new(Code::InvalidRequest, format!("the request cannot be digested: {e}")))?;
    let digests = Digests { request: request_digest, action: digest, via };
    for _ in 0..ATTEMPTS {
        if let Some(answer) = attempt(s, bundle, admitted, &req, &digests, recorded)? {
            return Ok(answer);
        }
        // A conflict: perhaps a halt or resume on another node moved the epoch it expected,
        // or a bundle was loaded (here or on another node) since this one was read.
        crate::facts::sync(s)?;
        s.follow_bundle()?;
        if s.bundle()?.version() != bundle.version() {
            return Err(ApiError::new(
                Code::PolicyChanged,
                "the policy bundle in force changed while this request was decided; nothing was recorded: \
                 send it again",
            ));
        }
    }
    Err(ApiError::new(Code::Conflict, "the request kept conflicting with concurrent ones; try again"))
}

/// A request's two digests: of its whole body (idempotency), and of the action (DESIGN §6);
/// and the upstream MCP tool that performs it, when a mapped tool was called (`UPSTREAM/TOOL`).
struct Digests {
    request: String,
    action: String,
    via: Option<String>,
}

/// How a `require_approval` request joins the approval workflow.
enum Joins {
    Opens(Approval),
    Folds(Approval, u64),
}

#[allow(clippy::too_many_arguments)]
fn approval_for(
    s: &AppState,
    bundle: &Bundle,
    agent: &Agent,
    req: &ActionRequest,
    digest: &str,
    id: &str,
    decision: &Decision,
    now: time::OffsetDateTime,
) -> Result<(Option<Joins>, Batch), ApiError> {
    let mut batch = Batch::new();
    let Some(need) = decision.approval.as_ref().filter(|_| decision.outcome == Outcome::RequireApproval) else {
        return Ok((None, batch));
    };
    let store = s.ledger().store().as_ref();
    let target = req.target.to_string();
    // Only a request with the same action digest — the very same action — may share an
    // approval: approving authorizes exactly what the approver was shown.
    if let Some(v) = approvals::pending_for(store, digest)? {
        if millis(now) >= v.approval.expires_ms {
            // Past its expiry but not yet swept: expire it in this commit, then open a new one.
            let (_, expired) = approvals::expire_batch(store, &v, now)?;
            batch.changes.extend(expired.changes);
            batch.events.extend(expired.events);
        } else if approvals::covers(&v.approval, need) {
            let (a, version) = approvals::fold(v, id)?;
            return Ok((Some(Joins::Folds(a, version)), batch));
        } else {
            // The policy now asks more of humans than the pending approval does: a request
            // never folds into a weaker approval. The old one is cancelled in this commit and
            // this request opens one with the requirement in force.
            let why = "superseded: the policy in force needs more approvers than this approval asked";
            let (_, cancelled) = approvals::cancel_batch(store, &v, &Actor::system("approvals"), why, now)?;
            batch.changes.extend(cancelled.changes);
            batch.events.extend(cancelled.events);
        }
    }
    let class = bundle.catalog().get(&req.action);
    let lease_ttl_secs = class.map_or(300, |c| c.lease_ttl.as_secs());
    let params = class.map_or_else(|| req.params.clone(), |c| c.redacted(&req.params));
    let opens = Joins::Opens(Approval {
        id: new_id("apr")?,
        state: ApprovalState::Pending,
        agent: agent.id.clone(),
        owner: agent.owner.clone(),
        task: req.task.clone(),
        action: req.action.clone(),
        target,
        digest: digest.to_string(),
        params,
        target_facts: Some(crate::facts::target_facts(bundle, &req.target)),
        requests: vec![id.to_string()],
        confidence: req.confidence,
        rationale: req.rationale.clone(),
        evidence: req.evidence.clone(),
        roles: need.roles.clone(),
        quorum: need.quorum.max(1),
        separation_of_duties: need.separation_of_duties,
        notify: need.notify.clone(),
        caps: decision.caps.clone(),
        policies: decision.policies.clone(),
        bundle_version: decision.bundle_version.clone(),
        lease_ttl_secs,
        narrowed_lease_ttl_secs: None,
        created_at: rfc3339(now),
        created_ms: millis(now),
        // Kept to the millisecond, as the store keeps it.
        expires_at: rfc3339(from_millis(millis(need.expires_at))),
        expires_ms: millis(need.expires_at),
        votes: Vec::new(),
        escalated: false,
        decided_at: None,
        decided_by: None,
        reason: None,
        undo: None,
    });
    Ok((Some(opens), batch))
}

/// Which cap of `[escalation]` a new approval would pass, and how many already wait.
#[derive(Debug)]
struct Backlog {
    /// `max_pending` or `max_pending_per_action`.
    cap: &'static str,
    max: u32,
    pending: u64,
}

/// The pending-approval caps of the agent of `a`, as store preconditions.
fn over_caps(bundle: &Bundle, a: &Approval) -> Vec<Change> {
    let (all, per_action) = pending_caps(bundle, &a.agent);
    let (agent, action) = pending_queries(a);
    vec![
        Change::ExpectFewer { table: Table::Approvals, query: agent, max: u64::from(all) },
        Change::ExpectFewer { table: Table::Approvals, query: action, max: u64::from(per_action) },
    ]
}

fn pending_caps(bundle: &Bundle, agent: &str) -> (u32, u32) {
    use warden_core::guardrail::{DEFAULT_MAX_PENDING, DEFAULT_MAX_PENDING_PER_ACTION};
    bundle.agent(agent).map_or((DEFAULT_MAX_PENDING, DEFAULT_MAX_PENDING_PER_ACTION), |g| {
        (g.escalation.max_pending, g.escalation.max_pending_per_action)
    })
}

/// The agent's pending approvals, and those of the same action.
fn pending_queries(a: &Approval) -> (Query, Query) {
    let agent = Query { agent: Some(a.agent.clone()), state: Some("pending".into()), ..Query::default() };
    let action = Query { kind: Some(a.action.clone()), ..agent.clone() };
    (agent, action)
}

/// The cap the new approval `a` would pass, if any.
fn backlog(store: &dyn Store, bundle: &Bundle, a: &Approval) -> Result<Option<Backlog>, ApiError> {
    let (all, per_action) = pending_caps(bundle, &a.agent);
    let (agent, action) = pending_queries(a);
    let on_action = store.count(Table::Approvals, &action)?;
    if on_action >= u64::from(per_action) {
        return Ok(Some(Backlog { cap: "max_pending_per_action", max: per_action, pending: on_action }));
    }
    let on_agent = store.count(Table::Approvals, &agent)?;
    if on_agent >= u64::from(all) {
        return Ok(Some(Backlog { cap: "max_pending", max: all, pending: on_agent }));
    }
    Ok(None)
}

/// How often, at most, refusals of one agent × action are written to the log.
const REFUSALS_LOGGED_EVERY_MS: i64 = 60_000;

/// Refuses a request that would open one approval too many: recorded (`approval.refused`,
/// coalesced: see above),
/// counted, and — the first time since the breaker was last reset — the agent × action
/// breaker trips (its autonomy drops to level 2) and the owners hear of it once. Nothing is
/// queued, so a flood never reaches the inbox.
/// Adds what an agent declares it took in to a task, in a commit of its own (`task.tainted`):
/// for declarations that reach no decision's commit — a call that attached to a request it
/// made before (MCP), a request refused before it was recorded. Retried on a concurrent change;
/// nothing when the task is unknown or every mark is on it already.
pub fn declare_inputs(
    s: &AppState,
    agent: &str,
    task: &str,
    inputs: &[warden_core::request::Input],
    request: Option<&str>,
) -> Result<(), ApiError> {
    let store = s.ledger().store();
    for _ in 0..16 {
        let Some((mut t, version)) = crate::model::versioned::<crate::model::Task>(store.as_ref(), task)? else {
            return Ok(());
        };
        if !t.taint_with(inputs.iter().map(|i| i.mark(request))) {
            return Ok(());
        }
        let mut r = t.record();
        r.version = version;
        let event = Event::new(EventType::TaskTainted, Actor::agent(agent))
            .task(task)
            .data(json!({"inputs": inputs, "request": request}));
        match s.ledger().commit(Batch::new().change(Change::Update(r)).event(event)) {
            Ok(_) => return Ok(()),
            Err(warden_store::StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(ApiError::new(Code::Conflict, format!("task `{task}` kept changing; declare the inputs again")))
}

fn refuse_backlog(
    s: &AppState,
    f: &crate::facts::Facts,
    a: &Approval,
    over: &Backlog,
    now: time::OffsetDateTime,
) -> ApiError {
    s.metrics.refused("approval_backlog");
    let reason = format!(
        "agent `{}` has {} requests waiting for a human{} (`[escalation] {}` = {})",
        a.agent,
        over.pending,
        if over.cap == "max_pending" { String::new() } else { format!(" on `{}`", a.action) },
        over.cap,
        over.max
    );
    // A flood's refusals are recorded, but not one entry each: the first, then at most one a
    // minute per agent × action standing for all refused since (`count`), so refusing costs
    // the log nothing a flood can grow.
    let now_ms = millis(now);
    let count = {
        let Ok(mut log) = s.refusals_logged.lock() else {
            return ApiError::new(Code::Internal, "the refusal record is unavailable");
        };
        let entry = log.entry((a.agent.clone(), a.action.clone())).or_insert((i64::MIN, 0));
        entry.1 += 1;
        if !f.budget.breaker_open || now_ms.saturating_sub(entry.0) >= REFUSALS_LOGGED_EVERY_MS {
            let count = entry.1;
            *entry = (now_ms, 0);
            Some(count)
        } else {
            None
        }
    };
    let refused = Event::new(EventType::ApprovalRefused, Actor::agent(&a.agent))
        .task(&a.task)
        .action(&a.action)
        .data(json!({"agent": a.agent, "target": a.target, "digest": a.digest, "cap": over.cap,
                     "max": over.max, "pending": over.pending, "count": count.unwrap_or(1)}));
    let key = breaker_key(&a.agent, &a.action);
    let mut tripped = false;
    if !f.budget.breaker_open {
        // Trips only if the breaker is still as read with the facts (a trip or a reset since
        // then, on any node, wins).
        let batch = Batch::new()
            .change(Change::ExpectMeta { key: key.clone(), value: f.breaker_seen.clone() })
            .change(Change::SetMeta { key, value: format!("open {}", rfc3339(now)) })
            .event(refused.clone())
            .event(
                Event::new(EventType::BreakerTripped, Actor::system("approvals"))
                    .task(&a.task)
                    .action(&a.action)
                    .data(json!({"agent": a.agent, "caps": [{"code": "approval_backlog", "reason": reason}]})),
            );
        match s.ledger().commit(batch) {
            Ok(_) => tripped = true,
            Err(StoreError::Conflict { .. }) => {}
            Err(e) => return e.into(),
        }
    }
    if tripped {
        s.metrics.breaker_trips.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        s.notifier.breaker(crate::notify::BreakerTrip {
            agent: a.agent.clone(),
            action: a.action.clone(),
            task: a.task.clone(),
            request: String::new(),
            caps: json!([{"code": "approval_backlog", "reason": reason}]),
        });
    } else if count.is_some()
        && let Err(e) = s.ledger().commit(Batch::new().event(refused))
    {
        // Not recorded: still refused (nothing was queued); the store's failure says why.
        return e.into();
    }
    ApiError::new(Code::ApprovalBacklog, format!("{reason}; nothing was queued — wait for humans to answer"))
        .details(json!({"cap": over.cap, "max": over.max, "pending": over.pending}))
}

/// One try at deciding and recording; `None` when its commit met a concurrent change and the
/// request must be decided again on fresh facts.
fn attempt(
    s: &AppState,
    bundle: &Bundle,
    admitted: &Admitted,
    req: &ActionRequest,
    digests: &Digests,
    recorded: &std::sync::OnceLock<String>,
) -> Result<Option<ActionAnswer>, ApiError> {
    let agent = &admitted.agent;
    let store = s.ledger().store().as_ref();
    if let Some(key) = &req.idempotency_key
        && let Some(previous) = replay(store, &agent.id, key, &digests.request)?
    {
        return Ok(Some(previous));
    }
    let f = facts(s, bundle, &agent.id, req, true)?;
    let now = f.now;
    let started = std::time::Instant::now();
    let mut decision = decide_with(s, bundle, &agent.id, agent.status, req, digests.via.as_deref(), &f);
    s.metrics.decision_latency.observe(started.elapsed());
    let id = new_id("act")?;
    let target = req.target.to_string();
    let (joins, mut batch) = approval_for(s, bundle, agent, req, &digests.action, &id, &decision, now)?;
    if let Some(Joins::Opens(a)) = &joins {
        // Human attention is a budget: a new approval opens only below the agent's caps, and
        // the caps are checked again in the commit, so racing requests cannot pass together.
        match backlog(store, bundle, a)? {
            Some(over) => {
                // Refused, but what the agent declares it read still taints the task.
                if !req.inputs.is_empty() {
                    declare_inputs(s, &agent.id, &req.task, &req.inputs, None)?;
                }
                return Err(refuse_backlog(s, &f, a, &over, now));
            }
            None => batch.changes.extend(over_caps(bundle, a)),
        }
    }
    let approval = match &joins {
        Some(Joins::Opens(a) | Joins::Folds(a, _)) => Some(a.clone()),
        None => None,
    };
    if let (Some(a), Some(need)) = (&approval, decision.approval.as_mut()) {
        need.id = Some(a.id.clone());
        need.expires_at = from_millis(a.expires_ms);
    }
    let folded_into = match &joins {
        Some(Joins::Folds(a, _)) => a.requests.first().cloned(),
        _ => None,
    };
    let record = ActionRecord {
        id: id.clone(),
        agent: agent.id.clone(),
        task: req.task.clone(),
        action: req.action.clone(),
        target: target.clone(),
        params: req.params.clone(),
        confidence: req.confidence,
        rationale: req.rationale.clone(),
        evidence: req.evidence.clone(),
        idempotency_key: req.idempotency_key.clone(),
        request_digest: digests.request.clone(),
        digest: digests.action.clone(),
        folded_into,
        state: state_of(&decision).to_string(),
        created_at: rfc3339(now),
        created_ms: millis(now),
        approval: approval.as_ref().map(|a| a.id.clone()),
        via: digests.via.clone(),
    };
    let drec = DecisionRecord {
        id: id.clone(),
        agent: agent.id.clone(),
        task: req.task.clone(),
        decision,
        decided_at: rfc3339(now),
        decided_ms: millis(now),
    };
    let actor = Actor::agent(&agent.id);
    let requested =
        Event::new(EventType::ActionRequested, actor.clone()).task(&req.task).request(&id).action(&req.action).data(
            json!({
                "target": target,
                "params": bundle.shown_params(&req.action, &req.params),
                "confidence": req.confidence,
                "rationale": req.rationale,
                "evidence": req.evidence,
                "inputs": req.inputs,
                "idempotency_key": req.idempotency_key,
                "request_digest": digests.request,
                "digest": digests.action,
            }),
        );
    let decided =
        Event::new(EventType::DecisionMade, actor.clone()).task(&req.task).request(&id).action(&req.action).data(
            json!({"target": target, "confidence": req.confidence, "state": record.state,
                   "digest": digests.action, "decision": drec.decision,
                   "facts": crate::facts::recorded(s, bundle, agent.status, req, digests.via.as_deref(), &f)}),
        );
    // What may lead to a tool call is recorded only if what it was decided on still holds in
    // the writer's transaction: the agent still active (no suspend or halt of it), the task
    // still open, no halt set or lifted since the halts were read.
    let outcome = drec.decision.outcome;
    if matches!(outcome, Outcome::Execute | Outcome::RequireApproval) {
        // …and the bundle it was decided under still the one in force: a load on any node
        // between this decision and its commit makes it decide again under the new one.
        batch = batch
            .change(Change::Expect { table: Table::Agents, id: agent.id.clone(), version: admitted.version })
            .change(Change::Expect { table: Table::Tasks, id: req.task.clone(), version: f.task_version })
            .changes(f.history_unchanged.iter().cloned())
            .change(f.halts.unchanged())
            .change(Change::ExpectMeta {
                key: crate::state::BUNDLE_VERSION_KEY.into(),
                value: Some(bundle.version().to_string()),
            });
    }
    batch = batch
        .change(Change::Insert(record.record()))
        .change(Change::Insert(drec.record()))
        .event(requested)
        .event(decided);
    // What the agent declares it took in taints the task, whatever the outcome — unless the
    // agent may not act in the task at all (after the task's precondition: the update moves
    // its version).
    let outsider = drec.decision.caps.iter().any(|c| {
        matches!(
            c.code,
            CapCode::OutOfScope
                | CapCode::TaskClosed
                | CapCode::AgentInactive
                | CapCode::UnknownAgent
                | CapCode::UnknownAction
                | CapCode::InvalidRequest
        )
    });
    if !req.inputs.is_empty()
        && !outsider
        && let Some((mut task, version)) = crate::model::versioned::<crate::model::Task>(store, &req.task)?
    {
        if version != f.task_version {
            return Ok(None);
        }
        if task.taint_with(req.inputs.iter().map(|i| i.mark(Some(&id)))) {
            let mut r = task.record();
            r.version = version;
            batch = batch.change(Change::Update(r));
        }
    }
    match &joins {
        Some(Joins::Opens(a)) => {
            batch = batch.change(Change::Insert(a.record())).event(
                Event::new(EventType::ApprovalRequested, actor).task(&req.task).request(&id).action(&req.action).data(
                    json!({"approval": a.id, "target": a.target, "digest": a.digest, "roles": a.roles,
                           "quorum": a.quorum, "expires_at": a.expires_at,
                           "separation_of_duties": a.separation_of_duties, "folded": false}),
                ),
            );
        }
        Some(Joins::Folds(a, version)) => {
            let mut r = a.record();
            r.version = *version;
            batch = batch.change(Change::Update(r)).event(
                Event::new(EventType::ApprovalRequested, actor)
                    .task(&req.task)
                    .request(&id)
                    .action(&req.action)
                    .data(json!({"approval": a.id, "target": a.target, "digest": a.digest, "folded": true,
                           "requests": a.requests.len()})),
            );
        }
        None => {}
    }
    if drec.decision.trip_breaker && !f.budget.breaker_open {
        // Trips only if the breaker is still as read: two requests (on two nodes) tripping it
        // together make one trip and one notice; a reset since is a human's word.
        let key = breaker_key(&agent.id, &req.action);
        batch = batch
            .change(Change::ExpectMeta { key: key.clone(), value: f.breaker_seen.clone() })
            .change(Change::SetMeta { key, value: format!("open {}", rfc3339(now)) });
        batch = batch.event(
            Event::new(EventType::BreakerTripped, Actor::system("budget"))
                .task(&req.task)
                .request(&id)
                .action(&req.action)
                .data(json!({"agent": agent.id, "caps": drec.decision.caps})),
        );
    }
    if outcome == Outcome::Execute {
        // The budget's check and its hit in one step: requests racing for the last of a
        // budget cannot all pass a check made on the same earlier count.
        let (max_per_hour, max_distinct_targets) = drec.decision.budget_limits;
        if max_per_hour.is_some() || max_distinct_targets.is_some() {
            batch = batch.change(Change::BudgetCheck {
                agent: agent.id.clone(),
                action: req.action.clone(),
                target: target.clone(),
                since_ms: f.budget_since_ms,
                max_hits: max_per_hour.map(u64::from),
                max_distinct_targets: max_distinct_targets.map(u64::from),
            });
        }
        batch = batch.change(Change::BudgetHit {
            agent: agent.id.clone(),
            action: req.action.clone(),
            target,
            at: millis(now),
        });
    }
    let started = std::time::Instant::now();
    let committed = s.ledger().commit(batch);
    s.metrics.audit_append_latency.observe(started.elapsed());
    match committed {
        Ok(_) => {
            let _ = recorded.set(id.clone());
            s.metrics.decided(&drec.decision.outcome.to_string(), &record.action);
            if drec.decision.trip_breaker && !f.budget.breaker_open {
                s.metrics.breaker_trips.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                s.notifier.breaker(crate::notify::BreakerTrip {
                    agent: agent.id.clone(),
                    action: req.action.clone(),
                    task: req.task.clone(),
                    request: id.clone(),
                    caps: serde_json::to_value(&drec.decision.caps).unwrap_or_default(),
                });
            }
            if let Some(Joins::Opens(a)) = &joins {
                s.changed();
                s.notifier.send(crate::notify::Kind::Created, a);
            }
            if drec.decision.outcome == Outcome::Execute
                && let Some(connector) = s.connector.as_deref()
            {
                // Recorded as decided; now run it (its own durable records before and after).
                return match execution::execute(s, connector, &id) {
                    Ok(_) | Err(ApiError { code: Code::Halted | Code::Stopped | Code::DigestMismatch, .. }) => {
                        let (a, d) = load_pair(store, &id)?
                            .ok_or_else(|| ApiError::new(Code::StoreUnavailable, "a recorded request vanished"))?;
                        Ok(Some(full_answer(store, &a, &d)?))
                    }
                    Err(e) => Err(e),
                };
            }
            Ok(Some(answer(&record, &drec)))
        }
        // Met a concurrent change. With an idempotency key, the change may be the same
        // request, sent again, that won: answer it. Otherwise decide again on fresh facts.
        Err(StoreError::Conflict { .. }) => match &req.idempotency_key {
            Some(key) => Ok(replay(store, &agent.id, key, &digests.request)?),
            None => Ok(None),
        },
        Err(e) => Err(e.into()),
    }
}

/// The answer about request `id` as it stands now.
pub fn answer_of(s: &AppState, id: &str) -> Result<ActionAnswer, ApiError> {
    let store = s.ledger().store();
    let (a, d) = load_pair(store.as_ref(), id)?
        .ok_or_else(|| ApiError::new(Code::StoreUnavailable, "a recorded request vanished"))?;
    full_answer(store.as_ref(), &a, &d)
}

/// Request `id` for `caller`: agents see only their own (another's is "not found").
pub fn lookup(s: &AppState, id: &str, caller: &Caller) -> Result<ActionAnswer, ApiError> {
    let missing = || ApiError::new(Code::UnknownAction, format!("no action request `{id}`"));
    let store = s.ledger().store();
    let (a, d) = load_pair(store.as_ref(), id)?.ok_or_else(missing)?;
    if let Caller::Agent(agent) = caller
        && agent.id != a.agent
    {
        return Err(missing());
    }
    full_answer(store.as_ref(), &a, &d)
}

/// Which recorded requests [`recent`] lists.
#[derive(Debug, Clone, Default)]
pub struct Recent {
    pub task: Option<String>,
    pub agent: Option<String>,
    /// The action class (`host.isolate`).
    pub action: Option<String>,
    pub state: Option<String>,
    /// Only requests of the last this many seconds.
    pub since_secs: Option<u64>,
    /// Only requests older than this one (the previous page's last).
    pub after: Option<warden_store::Cursor>,
    /// At most this many (clamped to 1–1000).
    pub limit: usize,
}

/// Recorded requests, newest first, one page at a time: each filter has an index ending in
/// (time, id), so a page is one index range however deep it is.
pub fn recent(s: &AppState, f: Recent) -> Result<crate::model::Page<ActionAnswer>, ApiError> {
    let store = s.ledger().store();
    let at_from =
        f.since_secs.map(|secs| millis(s.now() - Duration::seconds(i64::try_from(secs).unwrap_or(i64::MAX / 2))));
    let limit = f.limit.clamp(1, 1000);
    let query = Query {
        task: f.task,
        agent: f.agent,
        kind: f.action,
        state: f.state,
        at_from,
        descending: true,
        after: f.after,
        limit,
        ..Query::default()
    };
    let records = store.find(Table::Requests, &query)?;
    let next = if records.len() == limit { records.last().map(warden_store::Cursor::after) } else { None };
    let mut items = Vec::with_capacity(records.len());
    for r in &records {
        let a = ActionRecord::from_record(r)?;
        if let Some(d) = store.get(Table::Decisions, &a.id)? {
            items.push(full_answer(store.as_ref(), &a, &DecisionRecord::from_record(&d)?)?);
        }
    }
    Ok(crate::model::Page { items, next })
}

/// The decision `agent` would get for `req` now, recorded nowhere (a dry run). An agent not
/// registered is decided as active (the decision then says what its guardrail allows).
pub fn dry_run(s: &AppState, bundle: &Bundle, agent: &str, req: &ActionRequest) -> Result<DryRunAnswer, ApiError> {
    req.validate().map_err(|why| ApiError::new(Code::InvalidRequest, why))?;
    let canonical = req.clone().with_canonical_params();
    let req = &canonical;
    let status = s
        .ledger()
        .store()
        .get(Table::Agents, agent)?
        .map(|r| Agent::from_record(&r).map(|a| a.status))
        .transpose()?
        .unwrap_or(AgentStatus::Active);
    let f = facts(s, bundle, agent, req, false)?;
    let decision = decide_with(s, bundle, agent, status, req, None, &f);
    Ok(DryRunAnswer { agent: agent.to_string(), decision, recorded: false })
}
