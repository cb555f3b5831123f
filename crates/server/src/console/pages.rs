//! The console's pages (GET): each reads through the services and renders; nothing changes.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::Value;
use warden_core::audit::entry::Entry;
use warden_store::{Order, Table};

use super::views::{self, Chrome, html, pair};
use super::{Analyst, Failure, PageResult};
use crate::approvals::{self, Approval, ApprovalState};
use crate::error::ApiError;
use crate::model::{Model, Task};
use crate::state::{App, AppState, blocking};

/// The chrome of a page for `who`: the halts in force come from the store, so the banner is
/// on every page while a halt stands.
pub(super) fn chrome(s: &AppState, who: &Analyst, nav: &'static str, notice: Option<&str>) -> Result<Chrome, ApiError> {
    let halts = crate::halt::records(s.ledger().store().as_ref(), true)?
        .into_iter()
        .map(|(r, _)| views::HaltLine {
            scope: match &r.halt.id {
                Some(id) => format!("{} {id}", scope_name(&r.halt)),
                None => "everything".into(),
            },
            reason: r.halt.reason.clone(),
            by: r.set_by.clone(),
            at: r.set_at.clone(),
        })
        .collect();
    let user = who.user();
    Ok(Chrome {
        user: user.id.clone(),
        roles: user.roles.join(", "),
        csrf: who.csrf.clone(),
        halts,
        nav,
        notice: notice.and_then(notice_text).map(str::to_string),
        admin: user.has_role("admin"),
        // Offered exactly when the one authority check would let this person halt.
        halter: crate::authority::check_human(s, user, crate::authority::Power::Halt).is_ok(),
    })
}

fn scope_name(h: &warden_core::request::Halt) -> String {
    serde_json::to_value(h.scope).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
}

/// The fixed notices a form's redirect may ask for (never text from the address).
fn notice_text(code: &str) -> Option<&'static str> {
    Some(match code {
        "approved" => "Your approval is recorded.",
        "executed" => "Approved: the action ran.",
        "rejected" => "Rejected.",
        "rolled_back" => "Rolled back.",
        "undo_pending" => "Undoing it needs more than one person: your vote is on its approval in the inbox.",
        "halted" => "Halt in force.",
        "resumed" => "Halts lifted.",
        "status" => "Agent status changed.",
        "reset" => "Breaker reset.",
        _ => return None,
    })
}

/// The sign-in form (a refused sign-in is answered by [`super::forms::sign_in`] with the reason).
pub async fn sign_in() -> Response {
    html(&views::SignInPage { problem: None }).into_response()
}

#[derive(Debug, Default, Deserialize)]
pub struct InboxQuery {
    after: Option<String>,
    all: Option<String>,
    done: Option<String>,
    /// Only this agent's approvals for `action` (a backlog line's link).
    agent: Option<String>,
    action: Option<String>,
}

/// When an agent × action's pending approvals say the agent may be flooding the inbox: half
/// its `[escalation] max_pending_per_action` (or of `max_pending` over every action), and
/// never fewer than 3.
fn flooding(bundle: &warden_core::Bundle, b: &approvals::Backlog) -> bool {
    use warden_core::guardrail::{DEFAULT_MAX_PENDING, DEFAULT_MAX_PENDING_PER_ACTION};
    let (all, per_action) = bundle.agent(&b.agent).map_or((DEFAULT_MAX_PENDING, DEFAULT_MAX_PENDING_PER_ACTION), |g| {
        (g.escalation.max_pending, g.escalation.max_pending_per_action)
    });
    let half = |n: u32| usize::try_from(n / 2).unwrap_or(usize::MAX).max(3);
    b.pending >= half(per_action) || b.agent_pending >= half(all)
}

fn backlog_line(bundle: &warden_core::Bundle, b: &approvals::Backlog, all: bool) -> views::BacklogLine {
    let mut targets = b.targets.join(", ");
    if b.distinct_targets > b.targets.len() {
        targets.push_str(&format!(" and {} more", b.distinct_targets - b.targets.len()));
    }
    let query = serde_urlencoded::to_string([("agent", &b.agent), ("action", &b.action)]).unwrap_or_default();
    views::BacklogLine {
        agent: b.agent.clone(),
        action: b.action.clone(),
        pending: b.pending,
        targets,
        link: format!("/console/inbox?{query}{}", if all { "&all=1" } else { "" }),
        flooding: flooding(bundle, b),
    }
}

/// How long until `ms`, as `4m 10s left` (the page's script keeps it counting).
fn left(now_ms: i64, ms: i64) -> String {
    let secs = (ms - now_ms).max(0) / 1000;
    if secs == 0 { "expired".into() } else { format!("{}m {:02}s left", secs / 60, secs % 60) }
}

/// Track records already counted for this page, by agent and action.
type Tracks = std::collections::HashMap<(String, String), approvals::TrackRecord>;

fn card(s: &AppState, user: &crate::model::User, a: Approval, tracks: &mut Tracks) -> Result<views::Card, ApiError> {
    let store = s.ledger().store();
    let task = store.get(Table::Tasks, &a.task)?.map(|r| Task::from_record(&r)).transpose()?;
    let key = (a.agent.clone(), a.action.clone());
    let track = match tracks.get(&key) {
        Some(t) => t.clone(),
        None => {
            let t = approvals::track_record(store.as_ref(), &a.agent, &a.action, s.now())?;
            tracks.insert(key, t.clone());
            t
        }
    };
    let now_ms = crate::model::millis(s.now());
    let no_reject = approvals::may_decide(s, &a, user).err().map(|e| e.message.to_string());
    let no_approve =
        no_reject.clone().or_else(|| approvals::may_approve(&a, user).err().map(|e| e.message.to_string()));
    Ok(views::Card {
        flooding: None,
        id: a.id.clone(),
        agent: a.agent.clone(),
        action: a.action.clone(),
        target: a.target.clone(),
        facts: a.target_facts.as_ref().map(views::pairs).unwrap_or_default(),
        params: a.params.iter().map(|(k, v)| pair(k, views::text(v))).collect(),
        digest: a.digest.clone(),
        task: a.task.clone(),
        task_title: task.as_ref().map(|t| t.title.clone()).unwrap_or_default(),
        trigger: task
            .as_ref()
            .map(|t| views::pairs(&serde_json::to_value(&t.trigger).unwrap_or(Value::Null)))
            .unwrap_or_default(),
        verified: task.as_ref().is_some_and(|t| t.verified),
        confidence: format!("{:.2}", a.confidence),
        rationale: a.rationale.clone(),
        evidence: a
            .evidence
            .iter()
            .map(|e| pair(format!("{}:{}", e.kind, e.reference), e.summary.clone().unwrap_or_default()))
            .collect(),
        caps: a.caps.iter().map(|c| pair(c.code.to_string(), c.reason.clone())).collect(),
        policies: a
            .policies
            .iter()
            .map(|p| pair(&p.id, format!("owner {} · {}:{}", p.owner, p.file, p.line)))
            .collect(),
        track: format!(
            "last {} days on {}: {} approved, {} rejected, {} expired, {} rolled back",
            track.days, a.action, track.approved, track.rejected, track.expired, track.rolled_back
        ),
        votes: a
            .votes
            .iter()
            .map(|v| pair(&v.user, format!("approved as {} at {} — {}", v.role, v.at, v.reason)))
            .collect(),
        quorum: format!("{} of {} approvals", a.votes.len(), a.quorum),
        roles: a.roles.join(", "),
        created_at: a.created_at.clone(),
        expires_at: a.expires_at.clone(),
        left: left(now_ms, a.expires_ms),
        request: a.requests.first().cloned().unwrap_or_default(),
        no_approve,
        no_reject,
    })
}

/// The inbox: pending approvals for my roles (or all), oldest first, a page at a time.
pub async fn inbox(State(app): State<App>, who: Analyst, Query(q): Query<InboxQuery>) -> PageResult {
    let after = q.after.as_deref().map(|a| crate::input::cursor(a, Order::Id)).transpose()?;
    let all = q.all.is_some();
    let only = q.agent.clone().zip(q.action.clone()).filter(|(a, b)| !a.is_empty() && !b.is_empty());
    let page = blocking(&app, move |s| {
        let store = s.ledger().store();
        let filter = approvals::Filter {
            state: ApprovalState::Pending,
            agent: only.as_ref().map(|o| o.0.clone()),
            action: only.as_ref().map(|o| o.1.clone()),
            for_user: (!all).then(|| who.user().clone()),
            after,
            limit: 25,
        };
        let page = approvals::page(store.as_ref(), &filter)?;
        let bundle = s.bundle()?;
        let backlogs = approvals::backlogs(store.as_ref(), filter.for_user.as_ref())?;
        let mut tracks = Tracks::new();
        let mut cards =
            page.items.into_iter().map(|a| card(s, who.user(), a, &mut tracks)).collect::<Result<Vec<_>, _>>()?;
        for c in &mut cards {
            if let Some(b) = backlogs.iter().find(|b| b.agent == c.agent && b.action == c.action)
                && flooding(&bundle, b)
            {
                c.flooding = Some(format!(
                    "{} has {} requests waiting for a human ({} of them `{}`): it may be flooding the inbox. \
                     Read this one against its backlog above before you approve.",
                    b.agent, b.agent_pending, b.pending, b.action
                ));
            }
        }
        let next = page.next.map(|c| crate::input::cursor_text(&c, Order::Id));
        let backlog = backlogs.iter().map(|b| backlog_line(&bundle, b, all)).collect();
        let only_query = only
            .as_ref()
            .map(|(agent, action)| {
                format!("&{}", serde_urlencoded::to_string([("agent", agent), ("action", action)]).unwrap_or_default())
            })
            .unwrap_or_default();
        Ok(views::InboxPage {
            chrome: chrome(s, &who, "inbox", q.done.as_deref())?,
            cards,
            next,
            all,
            backlog,
            only,
            only_query,
        })
    })
    .await?;
    Ok(html(&page).into_response())
}

#[derive(Debug, Default, Deserialize)]
pub struct ActivityQuery {
    #[serde(default)]
    agent: String,
    #[serde(default)]
    action: String,
    #[serde(default)]
    outcome: String,
    after: Option<String>,
}

/// The request states the activity page filters by.
const STATES: &[&str] = &[
    "denied",
    "advised",
    "pending_approval",
    "approved",
    "executing",
    "succeeded",
    "failed",
    "unknown",
    "rejected",
    "expired",
    "cancelled",
    "rolled_back",
];

fn some(s: &str) -> Option<String> {
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_string())
}

/// Decisions and executions, newest first, filtered; the page refreshes itself as they happen.
pub async fn activity(State(app): State<App>, who: Analyst, Query(q): Query<ActivityQuery>) -> PageResult {
    let after = q.after.as_deref().filter(|a| !a.is_empty()).map(|a| crate::input::cursor(a, Order::At)).transpose()?;
    let page = blocking(&app, move |s| {
        let filter = crate::pipeline::Recent {
            agent: some(&q.agent),
            action: some(&q.action),
            state: some(&q.outcome),
            after,
            limit: 50,
            ..Default::default()
        };
        let page = crate::pipeline::recent(s, filter)?;
        let rows = page
            .items
            .into_iter()
            .map(|a| views::Row {
                id: a.id,
                at: a.created_at,
                agent: a.agent,
                action: a.action,
                target: a.target,
                outcome: a.decision.outcome.to_string(),
                state: a.state,
            })
            .collect();
        Ok(views::ActivityPage {
            chrome: chrome(s, &who, "activity", None)?,
            rows,
            agent: q.agent,
            action: q.action,
            outcomes: STATES.iter().map(|o| (*o, q.outcome == *o)).collect(),
            outcome: q.outcome,
            next: page.next.map(|c| crate::input::cursor_text(&c, Order::At)),
        })
    })
    .await?;
    Ok(html(&page).into_response())
}

#[derive(Debug, Default, Deserialize)]
pub struct DoneQuery {
    done: Option<String>,
}

/// One action: its `explain` chain, each audit entry's proof status, the rollback button.
pub async fn action(
    State(app): State<App>,
    who: Analyst,
    Path(id): Path<String>,
    Query(q): Query<DoneQuery>,
) -> PageResult {
    let page = blocking(&app, move |s| {
        let x = crate::explain::explain(s, &id)?;
        let mut sections = vec![
            views::Section { title: "Trigger", lines: views::pairs(&x.trigger) },
            views::Section { title: "Agent", lines: views::pairs(&x.agent) },
            views::Section { title: "Request", lines: views::pairs(&x.request) },
            views::Section { title: "Decision", lines: views::pairs(&x.decision) },
        ];
        for (title, v) in
            [("Approval", &x.approval), ("Lease", &x.lease), ("Execution", &x.execution), ("Rollback", &x.rollback)]
        {
            if let Some(v) = v {
                sections.push(views::Section { title, lines: views::pairs(v) });
            }
        }
        sections.push(views::Section { title: "Escalation path", lines: views::pairs(&x.escalation) });
        let state = views::text(&x.action["state"]);
        let store = s.ledger().store();
        let exec =
            store.get(Table::Executions, &id)?.map(|r| crate::execution::Execution::from_record(&r)).transpose()?;
        let (rollback, roles) = match &exec {
            Some(e) if e.state == crate::execution::ExecutionState::Succeeded => {
                // Offered exactly when the one authority check would let this person ask.
                let need = crate::execution::undo_requirement(s, e)?;
                let compensation = e.compensation.as_deref().unwrap_or(&e.action);
                let caller = crate::auth::Caller::Human(who.user().clone());
                let power = crate::authority::Power::Undo { agent: &e.agent, compensation, target: &e.target };
                let allowed = e.compensation.is_some() && crate::authority::check(s, &caller, power).is_ok();
                let roles = if need.quorum > 1 {
                    format!("{} ({} people)", need.roles.join(", "), need.quorum)
                } else {
                    need.roles.join(", ")
                };
                (allowed, roles)
            }
            _ => (false, String::new()),
        };
        let entries = x
            .entries
            .iter()
            .map(|c| views::Cited {
                seq: c.seq,
                kind: c.kind.clone(),
                time: c.time.clone(),
                actor: c.actor.clone(),
                verified: c.verified,
            })
            .collect();
        Ok(views::ActionPage {
            chrome: chrome(s, &who, "activity", q.done.as_deref())?,
            id,
            state,
            sections,
            entries,
            checkpoint: format!("size {}", views::text(&x.checkpoint["size"])),
            rollback,
            rollback_roles: roles,
        })
    })
    .await?;
    Ok(html(&page).into_response())
}

/// One grant as the agents and policy pages show it; `live` adds the budget used in the last
/// hour against the guardrail's limit for the action, and the breaker.
fn grant_line(
    s: &AppState,
    guardrail: &warden_core::guardrail::Guardrail,
    g: &warden_core::guardrail::Grant,
    live: bool,
) -> views::GrantLine {
    let agent = guardrail.id.as_str();
    let store = s.ledger().store();
    let (mut budget, mut breaker_open) = (String::from("—"), false);
    if live {
        let since = crate::model::millis(s.now() - time::Duration::hours(1));
        if let Ok(u) = store.budget_usage(agent, &g.action, since, "", warden_store::UsageLimits::ALL) {
            budget = match guardrail.budget_limits(&g.action).0 {
                Some(max) => format!("{} of {max}", u.hits),
                None => format!("{} (no cap)", u.hits),
            };
        }
        breaker_open = crate::breaker::breaker(store.as_ref(), agent, &g.action).is_ok_and(|b| b.open);
    }
    let c = serde_json::to_value(&g.conditions).unwrap_or(Value::Null);
    let conditions = views::pairs(&c)
        .into_iter()
        .filter(|p| p.value != "—")
        .map(|p| format!("{}: {}", p.key, p.value))
        .collect::<Vec<_>>()
        .join("; ");
    views::GrantLine {
        action: g.action.clone(),
        level: g.level,
        conditions: if conditions.is_empty() { "any".into() } else { conditions },
        thresholds: format!("autonomous ≥ {:.2}, escalate ≥ {:.2}", g.thresholds.autonomous, g.thresholds.escalate),
        approvers: if g.approver_roles.is_empty() {
            "—".into()
        } else {
            format!("{} (quorum {})", g.approver_roles.join(", "), g.quorum)
        },
        budget,
        breaker_open,
    }
}

/// Agents: status, owner, purpose, levels per action, budgets used, breakers; the buttons.
pub async fn agents(State(app): State<App>, who: Analyst, Query(q): Query<DoneQuery>) -> PageResult {
    let page = blocking(&app, move |s| {
        let bundle = s.bundle()?;
        let agents = crate::admin::list_agents(s.ledger())?
            .into_iter()
            .map(|a| {
                let grants = bundle
                    .agent(&a.id)
                    .map(|g| g.grants.iter().map(|gr| grant_line(s, g, gr, true)).collect())
                    .unwrap_or_default();
                views::AgentView {
                    status: serde_json::to_value(a.status)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_default(),
                    id: a.id,
                    owner: a.owner,
                    purpose: a.purpose,
                    grants,
                }
            })
            .collect();
        Ok(views::AgentsPage { chrome: chrome(s, &who, "agents", q.done.as_deref())?, agents })
    })
    .await?;
    Ok(html(&page).into_response())
}

#[derive(Deserialize)]
pub struct ReportsQuery {
    since: Option<String>,
}

/// The windows the Reports page offers.
const WINDOWS: [&str; 4] = ["24h", "7d", "30d", "all"];
/// Reports computed at once, per person and in all: each reads the whole log.
const REPORTS_PER_USER: usize = 1;
const REPORTS: usize = 2;

/// The track record of the agents this person oversees and the controls' evidence, over a
/// window of the log (DESIGN §13): the figures of `warden report autonomy|controls --output
/// html`, drawn in the console.
pub async fn reports(State(app): State<App>, who: Analyst, Query(q): Query<ReportsQuery>) -> PageResult {
    let since = q.since.unwrap_or_else(|| "30d".into());
    if !WINDOWS.contains(&since.as_str()) {
        return Err(Failure(ApiError::new(
            crate::error::Code::InvalidRequest,
            format!("`since` must be one of {}", WINDOWS.join(", ")),
        )));
    }
    let keys = [(format!("report:{}", who.user().id), REPORTS_PER_USER), ("report:all".to_string(), REPORTS)];
    let Some(slot) = app.held.take(&keys) else {
        app.metrics.refused("reports");
        return Err(Failure(ApiError::new(
            crate::error::Code::TooManyStreams,
            format!(
                "as many reports are being computed as allowed ({REPORTS_PER_USER} per person, {REPORTS} in all); try again in a moment"
            ),
        )));
    };
    let page = blocking(&app, move |s| {
        let _slot = slot;
        let now = s.now();
        let window = match since.as_str() {
            "all" => warden_core::report::Window::default(),
            text => {
                let d = warden_core::duration::Duration::parse(text)
                    .map_err(|e| ApiError::new(crate::error::Code::InvalidRequest, e.to_string()))?;
                let secs = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
                warden_core::report::Window { from: Some(now - time::Duration::seconds(secs)), to: Some(now) }
            }
        };
        let agents = crate::reporting::overseen(s, who.user())?;
        let scope = match &agents {
            None => "every agent".to_string(),
            Some(set) if set.is_empty() => "none: no agent names your roles as its approvers".to_string(),
            Some(set) => set.iter().cloned().collect::<Vec<_>>().join(", "),
        };
        let (autonomy, diffs) = crate::reporting::autonomy(s, window, agents)?;
        let (controls, proofs) = crate::reporting::controls(s, window)?;
        Ok(views::ReportsPage {
            chrome: chrome(s, &who, "reports", None)?,
            windows: WINDOWS.to_vec(),
            autonomy: crate::reports::autonomy_view(&autonomy, &diffs, &since),
            controls: crate::reports::controls_view(&controls, &proofs, &since),
            since,
            scope,
        })
    })
    .await?;
    Ok(html(&page).into_response())
}

fn entry_line(e: &warden_store::StoredEntry) -> views::EntryLine {
    let v: Value = serde_json::from_slice(&e.bytes).unwrap_or(Value::Null);
    let actor = match (&v["actor"]["kind"], &v["actor"]["id"]) {
        (Value::String(k), Value::String(id)) => format!("{k}:{id}"),
        _ => views::text(&v["actor"]),
    };
    let subject = [&v["request"], &v["approval"], &v["task"]]
        .into_iter()
        .find_map(|x| x.as_str().map(str::to_string))
        .unwrap_or_default();
    views::EntryLine { seq: e.seq, time: views::text(&v["time"]), kind: views::text(&v["type"]), actor, subject }
}

/// The audit page: size, latest checkpoint, recent entries; `verdict` after a verify.
pub(super) fn audit_page(
    s: &AppState,
    who: &Analyst,
    verdict: Option<(bool, String)>,
) -> Result<views::AuditPage, ApiError> {
    let store = s.ledger().store();
    let size = store.size()?;
    let cp = store.latest_checkpoint()?;
    let entries = store.entries(size.saturating_sub(30), 30)?.iter().rev().map(entry_line).collect();
    Ok(views::AuditPage {
        chrome: chrome(s, who, "audit", None)?,
        size,
        checkpoint_size: cp.as_ref().map(|c| c.0).unwrap_or(0),
        checkpoint: cp.map(|c| c.1),
        entries,
        verdict,
    })
}

pub async fn audit(State(app): State<App>, who: Analyst) -> PageResult {
    let page = blocking(&app, move |s| audit_page(s, &who, None)).await?;
    Ok(html(&page).into_response())
}

/// The whole log as OCSF 1.8 events, one per line (entries OCSF has no class for are left
/// out), streamed a thousand entries at a time: a log of millions is never held in memory.
pub async fn ocsf(State(app): State<App>, who: Analyst) -> PageResult {
    // Each download holds a connection for as long as the browser reads: a few per person,
    // a few more in all.
    let keys = [(format!("export:{}", who.user().id), EXPORTS_PER_USER), ("export:all".to_string(), EXPORTS)];
    let Some(slot) = app.held.take(&keys) else {
        app.metrics.refused("exports");
        return Err(Failure(ApiError::new(
            crate::error::Code::TooManyStreams,
            format!(
                "as many downloads are running as allowed ({EXPORTS_PER_USER} per person, {EXPORTS} in all); wait for one to finish"
            ),
        )));
    };
    // A chunk is read and rendered on the blocking pool only when the browser asks for it: an
    // unread download holds no worker thread (and ends at the connection's write timeout).
    let product = warden_core::audit::ocsf::Product { version: env!("CARGO_PKG_VERSION").to_string() };
    let state = Some((app, 0u64, product, slot));
    let stream = futures_util::stream::unfold(state, |state| async move {
        let (app, from, product, slot) = state?;
        let render = product.clone();
        let page = blocking(&app, move |s| {
            let page = s.ledger().store().entries(from, 1000)?;
            let mut chunk = String::new();
            for e in &page {
                if let Ok(entry) = serde_json::from_slice::<Entry>(&e.bytes)
                    && let Some(ev) = warden_core::audit::ocsf::event(&entry, &render)
                {
                    chunk.push_str(&ev.to_string());
                    chunk.push('\n');
                }
            }
            let next = page.last().filter(|_| page.len() == 1000).map(|last| last.seq + 1);
            Ok((chunk, next))
        })
        .await;
        match page {
            Ok((chunk, Some(next))) => Some((Ok(chunk), Some((app, next, product, slot)))),
            Ok((chunk, None)) => Some((Ok(chunk), None)),
            // The download ends short, visibly: the body is cut with an error.
            Err(e) => Some((Err(std::io::Error::other(e.message.to_string())), None)),
        }
    });
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-ndjson"),
            (header::CONTENT_DISPOSITION, "attachment; filename=\"warden-audit.ocsf.jsonl\""),
        ],
        axum::body::Body::from_stream(stream),
    )
        .into_response())
}

/// How far back the policy page looks for loads.
const LOAD_SEARCH: u64 = 20_000;

/// The bundle in force, its load history, and every grant.
pub async fn policy(State(app): State<App>, who: Analyst) -> PageResult {
    let page = blocking(&app, move |s| {
        let bundle = s.bundle()?;
        let store = s.ledger().store();
        let size = store.size()?;
        let from = size.saturating_sub(LOAD_SEARCH);
        let mut loads = Vec::new();
        let mut at = from;
        while at < size {
            let page = store.entries(at, 1000)?;
            let Some(last) = page.last() else { break };
            at = last.seq + 1;
            for e in &page {
                let v: Value = serde_json::from_slice(&e.bytes).unwrap_or(Value::Null);
                if v["type"] == "policy.loaded" {
                    let l = entry_line(e);
                    loads.push(views::LoadLine {
                        seq: e.seq,
                        time: l.time,
                        version: views::text(&v["data"]["bundle_version"]),
                        actor: l.actor,
                        source: views::text(&v["data"]["source"]),
                    });
                }
            }
        }
        loads.reverse();
        let grants = bundle
            .agents()
            .flat_map(|g| {
                g.grants.iter().map(|gr| views::PolicyGrant {
                    agent: g.id.clone(),
                    file: format!("{}:{}", g.file, gr.line),
                    grant: grant_line(s, g, gr, false),
                })
            })
            .collect();
        Ok(views::PolicyPage {
            chrome: chrome(s, &who, "policy", None)?,
            version: bundle.version().to_string(),
            loads,
            searched: size - from,
            grants,
        })
    })
    .await?;
    Ok(html(&page).into_response())
}

/// Audit downloads one person may have running at once, and all people together.
const EXPORTS_PER_USER: usize = 2;
const EXPORTS: usize = 8;

/// One open event stream: its slot under the bounds, and the gauge, until it ends.
struct Open {
    app: App,
    _slot: crate::limits::Slot,
}

impl Drop for Open {
    fn drop(&mut self) {
        self.app.metrics.session("console_events", -1);
    }
}

/// Server-sent events: `change` whenever something was recorded (the audit log grew) or an
/// approval moved; the page's script refreshes its live regions. A comment every 15 s keeps
/// proxies from closing the stream.
pub async fn events(
    State(app): State<App>,
    who: Analyst,
) -> Result<Sse<impl futures_util::Stream<Item = Result<Event, Infallible>>>, Failure> {
    let bounds = app.limits.console;
    let keys = [
        (format!("session:{}", who.csrf), bounds.streams_per_session),
        (format!("user:{}", who.user().id), bounds.streams_per_user),
    ];
    let Some(slot) = app.held.take(&keys) else {
        app.metrics.refused("console_streams");
        return Err(Failure(ApiError::new(
            crate::error::Code::TooManyStreams,
            format!(
                "`{}` has as many live streams open as allowed ({} per sign-in, {} per person); close a tab",
                who.user().id,
                bounds.streams_per_session,
                bounds.streams_per_user
            ),
        )));
    };
    let size = blocking(&app, |s| Ok(s.ledger().store().size()?)).await?;
    let changes = app.subscribe();
    let stopping = app.stopping.subscribe();
    app.metrics.session("console_events", 1);
    let open = Open { app: app.clone(), _slot: slot };
    let secret = std::sync::Arc::new(who.secret.clone());
    let state = (app, changes, stopping, size, open, secret);
    let stream =
        futures_util::stream::unfold(state, |(app, mut changes, mut stopping, last, open, secret)| async move {
            loop {
                if *stopping.borrow() {
                    return None;
                }
                // Wake on an approval change at once, else look at the log every half second; end
                // when the server stops.
                let woke = tokio::select! {
                    r = tokio::time::timeout(Duration::from_millis(500), changes.changed()) => matches!(r, Ok(Ok(()))),
                    _ = stopping.changed() => return None,
                };
                let now = match blocking(&app, |s| Ok(s.ledger().store().size()?)).await {
                    Ok(n) => n,
                    Err(_) => return None,
                };
                if now != last || woke {
                    // The session is checked again before anything is sent: a user disabled (or
                    // signed out) meanwhile gets nothing more, and the stream ends.
                    let s = secret.clone();
                    if blocking(&app, move |st| crate::auth::console_session(st, &s)).await.is_err() {
                        return None;
                    }
                    let ev = Event::default().event("change").data(now.to_string());
                    return Some((Ok(ev), (app, changes, stopping, now, open, secret)));
                }
            }
        });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}
