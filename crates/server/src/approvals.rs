//! The approval workflow (DESIGN §3 `require_approval`): an approval is opened by a decision,
//! gathers votes from humans with a required role until its quorum, or is rejected, expires or
//! is cancelled. Every transition moves the approval and the requests it covers together, in
//! one commit with its audit entries; concurrent votes are serialised by the records'
//! versions, so exactly one transition wins.
//!
//! ```text
//! pending ──quorum of distinct approvers──► approved
//!    │ ──one reject (with a reason)───────► rejected
//!    │ ──expires_at passes (sweeper/vote)─► expired
//!    └ ──task closed / halt───────────────► cancelled
//! ```

use serde::{Deserialize, Serialize};
use serde_json::json;
use time::OffsetDateTime;
use utoipa::ToSchema;
use warden_core::audit::entry::{Actor, Event, EventType};

use warden_store::{Batch, Change, Query, Store, StoreError, Table};

use crate::error::{ApiError, Code};
use crate::model::{ActionRecord, Model, User, millis, rfc3339};
pub use crate::model::{Approval, ApprovalState, Vote, fold_key};

/// How many times a vote is re-applied when another commit changed the approval meanwhile.
const RETRIES: usize = 16;

/// The window of an agent's track record.
pub const TRACK_RECORD_DAYS: i64 = 30;

/// The most requests one approval covers. An agent that keeps repeating a request while it
/// waits is refused beyond it (409 `approval_pending`) rather than growing the approval (and
/// the work of every later fold and of its decision) without bound.
pub const FOLD_MAX: usize = 100;

/// An approval with the version it was read at.
#[derive(Debug, Clone)]
pub struct Versioned {
    pub approval: Approval,
    pub version: u64,
}

pub fn load(store: &dyn Store, id: &str) -> Result<Option<Versioned>, ApiError> {
    store
        .get(Table::Approvals, id)?
        .map(|r| Ok(Versioned { approval: Approval::from_record(&r)?, version: r.version }))
        .transpose()
}

/// Whether pending approval `a` asks at least what `need` asks of humans: no fewer votes, no
/// role `need` does not name, separation of duties if `need` has it. Only then may a request
/// with that requirement fold into it.
pub fn covers(a: &Approval, need: &warden_core::decision::ApprovalRequirement) -> bool {
    a.quorum >= need.quorum.max(1)
        && a.roles.iter().all(|r| need.roles.contains(r))
        && (a.separation_of_duties || !need.separation_of_duties)
}

/// `v` with request `id` folded into it, and the version to update it at; refused (409
/// `approval_pending`) once it covers [`FOLD_MAX`] requests.
pub fn fold(v: Versioned, id: &str) -> Result<(Approval, u64), ApiError> {
    let Versioned { approval: mut a, version } = v;
    if a.requests.len() >= FOLD_MAX {
        return Err(ApiError::new(
            Code::ApprovalPending,
            format!(
                "approval `{}` already covers {} identical requests; wait for one of them \
                 (`GET /v1/actions/{{id}}?wait=30s`) instead of asking again",
                a.id,
                a.requests.len()
            ),
        )
        .details(serde_json::json!({"approval": a.id})));
    }
    a.requests.push(id.to_string());
    Ok((a, version))
}

/// The pending approval for this action digest, if any.
pub fn pending_for(store: &dyn Store, digest: &str) -> Result<Option<Versioned>, ApiError> {
    let q = Query { key: Some(fold_key(digest)), limit: 1, ..Query::default() };
    match store.find(Table::Approvals, &q)?.into_iter().next() {
        Some(r) => Ok(Some(Versioned { approval: Approval::from_record(&r)?, version: r.version })),
        None => Ok(None),
    }
}

/// Every approval in `state`, unpaged (a halt must cancel all it covers), soonest expiry first.
pub fn all_in(store: &dyn Store, state: ApprovalState) -> Result<Vec<Approval>, ApiError> {
    let q = Query { state: Some(state.as_str().into()), ..Query::default() };
    let mut all = store.find(Table::Approvals, &q)?.iter().map(Approval::from_record).collect::<Result<Vec<_>, _>>()?;
    all.sort_by(|a, b| a.expires_ms.cmp(&b.expires_ms).then_with(|| a.id.cmp(&b.id)));
    Ok(all)
}

/// Which approvals [`page`] lists.
#[derive(Debug, Clone)]
pub struct Filter {
    pub state: ApprovalState,
    pub agent: Option<String>,
    pub action: Option<String>,
    /// Only those this person holds one of the roles of (an inbox).
    pub for_user: Option<User>,
    /// Only those after this one (the previous page's last).
    pub after: Option<warden_store::Cursor>,
    /// At most this many (1–1000).
    pub limit: usize,
}

/// The most approvals one [`page`] call reads looking for a person's: past it, the page ends
/// early with a cursor, so a page costs the same however few are theirs.
const SCAN_MAX: usize = 5_000;

/// Approvals in a state, oldest first (ids begin with their creation time), one page at a
/// time. The store's (state, id) index serves every page as one range, however deep.
pub fn page(store: &dyn Store, f: &Filter) -> Result<crate::model::Page<Approval>, ApiError> {
    let limit = f.limit.clamp(1, 1000);
    let chunk = if f.for_user.is_some() { (limit * 4).max(200) } else { limit };
    let mut q = Query {
        state: Some(f.state.as_str().into()),
        agent: f.agent.clone(),
        kind: f.action.clone(),
        order: warden_store::Order::Id,
        after: f.after.clone(),
        limit: chunk,
        ..Query::default()
    };
    let mut items = Vec::new();
    let mut scanned = 0;
    loop {
        let records = store.find(Table::Approvals, &q)?;
        let exhausted = records.len() < chunk;
        for r in &records {
            scanned += 1;
            let a = Approval::from_record(r)?;
            if f.for_user.as_ref().is_none_or(|u| a.roles.iter().any(|role| u.has_role(role))) {
                items.push(a);
                if items.len() == limit {
                    let next = warden_store::Cursor::after(r);
                    return Ok(crate::model::Page { items, next: Some(next) });
                }
            }
            q.after = Some(warden_store::Cursor::after(r));
        }
        if exhausted {
            return Ok(crate::model::Page { items, next: None });
        }
        if scanned >= SCAN_MAX {
            return Ok(crate::model::Page { items, next: q.after });
        }
    }
}

/// One agent's pending approvals for one action: how an inbox shows a backlog, so one
/// request cannot hide among hundreds of another agent's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backlog {
    pub agent: String,
    pub action: String,
    pub pending: usize,
    /// The distinct targets, oldest request's first (at most [`BACKLOG_TARGETS`]).
    pub targets: Vec<String>,
    /// How many distinct targets in all.
    pub distinct_targets: usize,
    /// The agent's pending approvals over every action.
    pub agent_pending: usize,
}

/// Targets a [`Backlog`] names before it says "and N more".
pub const BACKLOG_TARGETS: usize = 3;

/// The pending approvals as backlogs by agent × action (those `for_user` holds a role of, or
/// all), largest first. Bounded: every agent's pending approvals are capped by policy.
pub fn backlogs(store: &dyn Store, for_user: Option<&User>) -> Result<Vec<Backlog>, ApiError> {
    let mut groups: std::collections::BTreeMap<(String, String), (usize, Vec<String>)> = Default::default();
    let mut per_agent: std::collections::HashMap<String, usize> = Default::default();
    let mut all = all_in(store, ApprovalState::Pending)?;
    all.sort_by(|a, b| a.created_ms.cmp(&b.created_ms).then_with(|| a.id.cmp(&b.id)));
    for a in all {
        *per_agent.entry(a.agent.clone()).or_default() += 1;
        if for_user.is_some_and(|u| !a.roles.iter().any(|role| u.has_role(role))) {
            continue;
        }
        let g = groups.entry((a.agent, a.action)).or_default();
        g.0 += 1;
        if !g.1.contains(&a.target) {
            g.1.push(a.target);
        }
    }
    let mut out: Vec<Backlog> = groups
        .into_iter()
        .map(|((agent, action), (pending, mut targets))| {
            let distinct_targets = targets.len();
            targets.truncate(BACKLOG_TARGETS);
            Backlog {
                agent_pending: per_agent.get(&agent).copied().unwrap_or(0),
                agent,
                action,
                pending,
                targets,
                distinct_targets,
            }
        })
        .collect();
    out.sort_by(|a, b| b.pending.cmp(&a.pending).then_with(|| (&a.agent, &a.action).cmp(&(&b.agent, &b.action))));
    Ok(out)
}

/// The changes that end `v` in `to`: the approval itself (version-checked) and each request it
/// covers; the caller adds them, with an event, to one batch.
pub fn end(
    store: &dyn Store,
    v: &Versioned,
    to: ApprovalState,
    by: &str,
    reason: Option<&str>,
    now: OffsetDateTime,
) -> Result<(Approval, Vec<Change>), ApiError> {
    let mut a = v.approval.clone();
    a.state = to;
    a.decided_at = Some(rfc3339(now));
    a.decided_by = Some(by.to_string());
    a.reason = reason.map(str::to_string);
    let mut record = a.record();
    record.version = v.version;
    let mut changes = vec![Change::Update(record)];
    for id in &a.requests {
        let Some(r) = store.get(Table::Requests, id)? else { continue };
        let mut req = ActionRecord::from_record(&r)?;
        if req.state != ApprovalState::Pending.request_state() {
            continue;
        }
        req.state = to.request_state().to_string();
        let mut updated = req.record();
        updated.version = r.version;
        changes.push(Change::Update(updated));
    }
    Ok((a, changes))
}

fn event_for(a: &Approval, kind: EventType, actor: Actor, data: serde_json::Value) -> Event {
    let mut e = Event::new(kind, actor).task(&a.task).action(&a.action);
    // An undo approval's entries name the request whose execution it undoes.
    if let Some(first) = a.requests.first().or(a.undo.as_ref()) {
        e = e.request(first);
    }
    let mut body = json!({"approval": a.id, "state": a.state, "agent": a.agent, "target": a.target,
                          "digest": a.digest, "requests": a.requests});
    if let (Some(o), Some(extra)) = (body.as_object_mut(), data.as_object()) {
        o.extend(extra.clone());
    }
    e.data(body)
}

/// The batch that expires `v` (actor `system`), audited as `approval.expired`.
pub fn expire_batch(store: &dyn Store, v: &Versioned, now: OffsetDateTime) -> Result<(Approval, Batch), ApiError> {
    let (a, changes) = end(store, v, ApprovalState::Expired, "system", Some("no decision before it expired"), now)?;
    let event =
        event_for(&a, EventType::ApprovalExpired, Actor::system("approvals"), json!({"expires_at": a.expires_at}));
    Ok((a, Batch::of(changes, vec![event])))
}

/// The batch that cancels `v`, audited as `approval.cancelled` by `actor`.
pub fn cancel_batch(
    store: &dyn Store,
    v: &Versioned,
    actor: &Actor,
    reason: &str,
    now: OffsetDateTime,
) -> Result<(Approval, Batch), ApiError> {
    let (a, changes) = end(store, v, ApprovalState::Cancelled, &actor.id, Some(reason), now)?;
    let event = event_for(&a, EventType::ApprovalCancelled, actor.clone(), json!({"reason": reason}));
    Ok((a, Batch::of(changes, vec![event])))
}

/// Cancels every pending approval `matches` accepts, each in its own commit (re-read and
/// retried when a vote lands meanwhile; one decided meanwhile is left as decided). A stop
/// runs it once more after its own commit, for approvals opened by a request that committed
/// between the stop's read and its commit; none can be opened after it. The ids cancelled.
pub fn cancel_where(
    store: &dyn Store,
    commit: &dyn Fn(Batch) -> Result<(), StoreError>,
    matches: &dyn Fn(&Approval) -> bool,
    actor: &Actor,
    reason: &str,
    now: OffsetDateTime,
) -> Result<Vec<String>, ApiError> {
    let mut cancelled = Vec::new();
    for a in all_in(store, ApprovalState::Pending)? {
        if !matches(&a) {
            continue;
        }
        for _ in 0..RETRIES {
            let Some(v) = load(store, &a.id)? else { break };
            if v.approval.state != ApprovalState::Pending {
                break;
            }
            let (_, batch) = cancel_batch(store, &v, actor, reason, now)?;
            match commit(batch) {
                Ok(()) => {
                    cancelled.push(a.id.clone());
                    break;
                }
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(cancelled)
}

/// The pending approvals of a task, each to be cancelled with the task's close.
pub fn pending_of_task(store: &dyn Store, task: &str) -> Result<Vec<Versioned>, ApiError> {
    let q = Query { task: Some(task.into()), state: Some("pending".into()), ..Query::default() };
    store
        .find(Table::Approvals, &q)?
        .iter()
        .map(|r| Ok(Versioned { approval: Approval::from_record(r)?, version: r.version }))
        .collect()
}

/// What a human asks for.
#[derive(Debug, Clone)]
pub enum Verdict {
    Approve { reason: String, lease_ttl_secs: Option<u64> },
    Reject { reason: String },
}

/// What a vote did.
#[derive(Debug, Clone)]
pub struct Voted {
    pub approval: Approval,
    /// Whether this vote moved the approval out of `pending`.
    pub transitioned: bool,
}

fn closed(a: &Approval) -> ApiError {
    let code = match a.state {
        ApprovalState::Expired => Code::ApprovalExpired,
        ApprovalState::Cancelled => Code::ApprovalCancelled,
        _ => Code::ApprovalDecided,
    };
    ApiError::new(code, format!("approval `{}` is {}; it can no longer be decided", a.id, a.state.as_str()))
}

/// Whether `user` may decide (approve or reject) pending approval `a` — the role it would
/// decide in — under the roles and separation of duties: [`crate::authority::check`] with
/// `Power::Vote`. [`vote`] applies exactly this; a front door asks it only to leave out a
/// button the server would refuse.
pub fn may_decide(s: &crate::state::AppState, a: &Approval, user: &User) -> Result<String, ApiError> {
    let caller = crate::auth::Caller::Human(user.clone());
    crate::authority::check(s, &caller, crate::authority::Power::Vote { approval: a }).map(|g| g.role)
}

/// Whether `user` may approve `a` besides [`may_decide`]: a person counts once toward the quorum.
pub fn may_approve(a: &Approval, user: &User) -> Result<(), ApiError> {
    if a.votes.iter().any(|x| x.user == user.id) {
        return Err(ApiError::new(
            Code::AlreadyVoted,
            format!("`{}` already approved `{}`; a person counts once toward the quorum", user.id, a.id),
        ));
    }
    Ok(())
}

/// Applies one human's verdict to approval `id`, under every rule; re-applied on a version
/// conflict until it either commits or a rule refuses it.
pub fn vote(
    s: &crate::state::AppState,
    id: &str,
    user: &User,
    verdict: &Verdict,
    now: OffsetDateTime,
) -> Result<Voted, ApiError> {
    if let Verdict::Reject { reason } = verdict
        && crate::input::is_blank(reason)
    {
        return Err(ApiError::new(Code::ReasonRequired, "a rejection needs a `reason`"));
    }
    let store = s.ledger().store();
    let store = store.as_ref();
    let commit = |b| s.ledger().commit(b).map(|_| ());
    for _ in 0..RETRIES {
        let v = load(store, id)?.ok_or_else(|| ApiError::new(Code::UnknownApproval, format!("no approval `{id}`")))?;
        let a = &v.approval;
        if a.state != ApprovalState::Pending {
            return Err(closed(a));
        }
        if millis(now) >= a.expires_ms {
            // Too late: record the expiry (unless someone else just did), then refuse.
            let (expired, batch) = expire_batch(store, &v, now)?;
            match commit(batch) {
                Ok(()) | Err(StoreError::Conflict { .. }) => {}
                Err(e) => return Err(e.into()),
            }
            return Err(closed(&expired));
        }
        let role = may_decide(s, a, user)?;
        let actor = Actor::user(&user.id);
        let (approval, batch, transitioned) = match verdict {
            Verdict::Reject { reason } => {
                let (ended, changes) = end(store, &v, ApprovalState::Rejected, &user.id, Some(reason), now)?;
                let event =
                    event_for(&ended, EventType::ApprovalRejected, actor, json!({"role": role, "reason": reason}));
                (ended, Batch::of(changes, vec![event]), true)
            }
            Verdict::Approve { reason, lease_ttl_secs } => {
                may_approve(a, user)?;
                let widest = a.narrowed_lease_ttl_secs.unwrap_or(a.lease_ttl_secs);
                if let Some(ttl) = lease_ttl_secs
                    && (*ttl == 0 || *ttl > widest)
                {
                    return Err(ApiError::new(
                        Code::WideningNotAllowed,
                        format!("an approval may shorten the lease to at most {widest}s, not set {ttl}s"),
                    ));
                }
                let mut next = v.clone();
                next.approval.votes.push(Vote {
                    user: user.id.clone(),
                    role: role.clone(),
                    at: rfc3339(now),
                    reason: reason.clone(),
                });
                if let Some(ttl) = lease_ttl_secs {
                    next.approval.narrowed_lease_ttl_secs = Some(*ttl);
                }
                let count = next.approval.votes.len() as u32;
                let (updated, changes, done) = if count >= a.quorum {
                    let (ended, changes) = end(store, &next, ApprovalState::Approved, &user.id, Some(reason), now)?;
                    (ended, changes, true)
                } else {
                    let mut record = next.approval.record();
                    record.version = v.version;
                    (next.approval.clone(), vec![Change::Update(record)], false)
                };
                let event = event_for(
                    &updated,
                    EventType::ApprovalGranted,
                    actor,
                    json!({"role": role, "reason": reason, "votes": count, "quorum": a.quorum,
                           "lease_ttl_secs": lease_ttl_secs}),
                );
                (updated, Batch::of(changes, vec![event]), done)
            }
        };
        match commit(batch) {
            Ok(()) => return Ok(Voted { approval, transitioned }),
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(ApiError::new(Code::Conflict, format!("approval `{id}` keeps changing; try again")))
}

/// An agent's record for one action over the last [`TRACK_RECORD_DAYS`] days.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TrackRecord {
    pub days: i64,
    pub approved: u64,
    pub rejected: u64,
    pub expired: u64,
    pub rolled_back: u64,
    /// Approvals the agent itself cancelled (it closed its task while they waited).
    #[serde(default)]
    pub withdrawn: u64,
}

pub fn track_record(
    store: &dyn Store,
    agent: &str,
    action: &str,
    now: OffsetDateTime,
) -> Result<TrackRecord, ApiError> {
    let since = millis(now - time::Duration::days(TRACK_RECORD_DAYS));
    // Counted in the store, one index range each: nothing is read but the count.
    let count = |table, state: &str| {
        let q = Query {
            agent: Some(agent.into()),
            kind: Some(action.into()),
            state: Some(state.into()),
            at_from: Some(since),
            ..Query::default()
        };
        store.count(table, &q)
    };
    Ok(TrackRecord {
        days: TRACK_RECORD_DAYS,
        approved: count(Table::Approvals, ApprovalState::Approved.as_str())?,
        rejected: count(Table::Approvals, ApprovalState::Rejected.as_str())?,
        expired: count(Table::Approvals, ApprovalState::Expired.as_str())?,
        rolled_back: count(Table::Requests, "rolled_back")?,
        withdrawn: {
            // Cancelled approvals are few; only those the agent's own act cancelled count.
            let q = Query {
                agent: Some(agent.into()),
                kind: Some(action.into()),
                state: Some(ApprovalState::Cancelled.as_str().into()),
                at_from: Some(since),
                limit: 10_000,
                ..Query::default()
            };
            store.find(Table::Approvals, &q)?.iter().filter(|r| r.body["decided_by"] == agent).count() as u64
        },
    })
}

/// What a sweep found: approvals it expired, and ones due for their escalation notice (now
/// marked as escalated).
#[derive(Debug, Default)]
pub struct Swept {
    pub expired: Vec<Approval>,
    pub escalated: Vec<Approval>,
}

/// Expires every pending approval past its expiry, and marks for escalation those two thirds
/// through their time. Each in its own commit; a conflict means a human got there first.
pub fn sweep(
    store: &dyn Store,
    commit: &dyn Fn(Batch) -> Result<(), StoreError>,
    now: OffsetDateTime,
) -> Result<Swept, ApiError> {
    let mut swept = Swept::default();
    let now_ms = millis(now);
    let q = Query { state: Some("pending".into()), at_to: Some(now_ms + 1), ..Query::default() };
    for r in store.find(Table::Approvals, &q)? {
        let v = Versioned { approval: Approval::from_record(&r)?, version: r.version };
        let a = &v.approval;
        if now_ms >= a.expires_ms {
            let (expired, batch) = expire_batch(store, &v, now)?;
            match commit(batch) {
                Ok(()) => swept.expired.push(expired),
                Err(StoreError::Conflict { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        } else if !a.escalated && now_ms >= a.due_ms() {
            let mut next = a.clone();
            next.escalated = true;
            let mut record = next.record();
            record.version = v.version;
            let event = event_for(
                &next,
                EventType::ApprovalEscalated,
                Actor::system("approvals"),
                json!({"notify": next.notify}),
            );
            match commit(Batch::new().change(Change::Update(record)).event(event)) {
                Ok(()) => swept.escalated.push(next),
                Err(StoreError::Conflict { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(swept)
}

/// A human's verdict on approval `id`, as every front door casts it (the API, the console,
/// Slack): the vote under every rule; when it approves, the action runs now, once — as the
/// request that opened the approval (the identical requests folded into it share that one
/// execution). A tool call that outlasts `answer_within` goes on; the answer is the approval
/// as it then stands.
pub async fn decide(
    app: &crate::state::App,
    user: User,
    id: String,
    verdict: Verdict,
    answer_within: std::time::Duration,
) -> Result<Voted, ApiError> {
    let voted = crate::state::blocking(app, move |s| {
        let voted = vote(s, &id, &user, &verdict, s.now());
        // A vote that found the approval expired recorded the expiry: waiters must look again.
        s.changed();
        let voted = voted?;
        if voted.transitioned {
            tracing::info!(approval = %id, state = voted.approval.state.as_str(), by = %user.id, "approval decided");
        }
        Ok(voted)
    })
    .await?;
    if voted.transitioned && voted.approval.state == ApprovalState::Approved && app.connector.is_some() {
        let approval = voted.approval.clone();
        let running = {
            let app = app.clone();
            tokio::task::spawn_blocking(move || match &approval.undo {
                Some(_) => run_undo(&app, &approval),
                None => {
                    if let Some(request) = approval.requests.first() {
                        run_approved(&app, request)
                    }
                }
            })
        };
        let _ = tokio::time::timeout(answer_within, running).await;
    }
    Ok(voted)
}

/// Runs the compensation an approved undo approval authorizes, once; a refusal (the bundle
/// now needs more, a digest that does not match) or the tool's failure is recorded by the
/// executor and logged here.
pub fn run_undo(s: &crate::state::AppState, approval: &Approval) {
    let Some(exec) = approval.undo.as_deref() else { return };
    let by = crate::execution::RollbackBy::Approved(approval);
    if let Err(e) = crate::execution::rollback_request(s, exec, by) {
        tracing::warn!(approval = %approval.id, execution = %exec, code = %e.code, error = %e.message, "approved undo not performed");
    }
    s.changed();
}

/// Runs an approved action once, as `request` (the one that opened the approval; the folded
/// ones share its execution), and tells the long polls. A refusal (a stop since the approval,
/// a digest that no longer matches) is recorded by the executor; here it is only logged.
pub fn run_approved(s: &crate::state::AppState, request: &str) {
    let Some(connector) = s.connector.as_deref() else { return };
    if let Err(e) = crate::execution::execute(s, connector, request) {
        tracing::warn!(request = %request, code = %e.code, error = %e.message, "approved request not executed");
    }
    s.changed();
}

/// A human asks to roll back request `id`'s execution (the API, the console, the CLI): with
/// the compensation's authority it runs now ([`crate::execution::rollback`]); when it needs
/// more than one person, an undo approval opens (or the asker's vote joins the open one).
pub fn request_undo(
    s: &crate::state::AppState,
    id: &str,
    caller: &crate::auth::Caller,
) -> Result<crate::execution::Undone, ApiError> {
    use crate::execution::{RollbackBy, Undone, rollback_request};
    match rollback_request(s, id, RollbackBy::Human(caller))? {
        Undone::NeedsVotes { exec, compensation, granted } => {
            let crate::auth::Caller::Human(user) = caller else {
                return Err(ApiError::new(Code::AgentsNotAllowed, "agents may not roll back"));
            };
            open_undo_approval(s, &exec, &compensation, user, &granted).map(Undone::Pending)
        }
        other => Ok(other),
    }
}

/// Opens (or joins) the undo approval of `exec`, with `user`'s vote in `role` on it.
fn open_undo_approval(
    s: &crate::state::AppState,
    exec: &crate::execution::Execution,
    compensation: &str,
    user: &crate::model::User,
    granted: &crate::authority::Granted,
) -> Result<Approval, ApiError> {
    let store = s.ledger().store();
    let digest = crate::execution::undo_digest(exec, compensation)?;
    if let Some(v) = pending_for(store.as_ref(), &digest)? {
        // Already asked: the asker's vote goes through the one voting rule.
        let verdict = Verdict::Approve { reason: "asked for the rollback".into(), lease_ttl_secs: None };
        return match vote(s, &v.approval.id, user, &verdict, s.now()) {
            Ok(voted) => Ok(voted.approval),
            Err(e) if e.code == Code::AlreadyVoted => Ok(v.approval),
            Err(e) => Err(e),
        };
    }
    let now = s.now();
    let bundle = s.bundle()?;
    let expiry = bundle.agent(&exec.agent).map_or(600, |g| g.escalation.approval_expiry.as_secs() as i64);
    let expires = now + time::Duration::seconds(expiry);
    let facts = exec.target.parse().ok().map(|t| crate::facts::target_facts(&bundle, &t));
    let a = Approval {
        id: crate::model::new_id("apr")?,
        state: crate::model::ApprovalState::Pending,
        agent: exec.agent.clone(),
        owner: granted.owner.clone().unwrap_or_default(),
        task: exec.task.clone(),
        action: compensation.to_string(),
        target: exec.target.clone(),
        digest,
        params: serde_json::Map::from_iter([("undo".to_string(), serde_json::Value::String(exec.id.clone()))]),
        target_facts: facts,
        requests: Vec::new(),
        confidence: 1.0,
        rationale: format!("`{}` asks to undo `{}` ({}) on `{}`", user.id, exec.id, exec.action, exec.target),
        evidence: Vec::new(),
        roles: granted.roles.clone(),
        quorum: granted.quorum,
        separation_of_duties: granted.separation_of_duties,
        notify: bundle.agent(&exec.agent).map(|g| g.escalation.notify.clone()).unwrap_or_default(),
        caps: Vec::new(),
        policies: Vec::new(),
        bundle_version: bundle.version().to_string(),
        lease_ttl_secs: 0,
        narrowed_lease_ttl_secs: None,
        created_at: rfc3339(now),
        created_ms: millis(now),
        expires_at: rfc3339(crate::model::from_millis(millis(expires))),
        expires_ms: millis(expires),
        votes: vec![crate::model::Vote {
            user: user.id.clone(),
            role: granted.role.clone(),
            at: rfc3339(now),
            reason: "asked for the rollback".into(),
        }],
        escalated: false,
        decided_at: None,
        decided_by: None,
        reason: None,
        undo: Some(exec.id.clone()),
    };
    let event = Event::new(EventType::ApprovalRequested, Actor::user(&user.id))
        .task(&exec.task)
        .request(&exec.id)
        .action(compensation)
        .data(json!({"approval": a.id, "undo": exec.id, "agent": a.agent, "target": a.target, "digest": a.digest,
                     "roles": a.roles, "quorum": a.quorum, "votes": 1, "expires_at": a.expires_at}));
    match s.ledger().commit(Batch::new().change(Change::Insert(a.record())).event(event)) {
        Ok(_) => {}
        // Someone opened it at the same moment: join theirs.
        Err(StoreError::Conflict { .. }) => return open_undo_approval(s, exec, compensation, user, granted),
        Err(e) => return Err(e.into()),
    }
    // The approvers hear of it as of any approval (webhooks, Slack with its buttons).
    s.notifier.send(crate::notify::Kind::Created, &a);
    s.changed();
    Ok(a)
}
