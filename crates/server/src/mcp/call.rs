//! `tools/call`: an action request through the pipeline, and its answer as a tool result.
//!
//! Nothing is decided here. The arguments become an [`ActionRequest`]; the pipeline decides,
//! records and executes exactly as for `POST /v1/actions`; this module only waits (for an
//! approval, or a slow execution) and words the outcome for a model:
//!
//! - executed → the result (`structuredContent`: the execution) with the decision in `_meta`;
//! - denied → `isError: true` naming every cap and its reason;
//! - advised → a result saying it was recorded as advice;
//! - waiting for a human → held, with `notifications/progress` when the client asked for them,
//!   up to the hold budget; then a result carrying the pending ids in `_meta` and telling the
//!   model to call again with the same arguments — which attaches to the same request (same
//!   action digest) instead of asking again, and once it is settled answers with the outcome.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use serde_json::{Map, Value, json};
use warden_core::request::ActionRequest;

use crate::auth::AgentToken;
use crate::error::{ApiError, Code};
use crate::limits::HoldOptions;
use crate::pipeline::{self, ActionAnswer, Admitted};
use crate::state::{App, AppState, blocking};
use warden_store::{Batch, Change, Query, Record, StoreError, Table};

/// The calls each agent has held right now, on this node (a held call is a connection this
/// node keeps open). The requests held calls left pending are in the store ([`left`]), so the
/// same call again attaches to its request on whichever node it lands.
#[derive(Debug, Default)]
pub struct Pending {
    held: Mutex<HashMap<String, usize>>,
}

/// How long a pending request is remembered for the agent to come back for.
const REMEMBER: time::Duration = time::Duration::days(1);

/// At most this many forgotten holds are removed per hold remembered.
const SWEEP: usize = 64;

/// The id of the hold of `agent` × action `digest` (a hash: ids cannot hold the NUL between).
fn hold_id(agent: &str, digest: &str) -> String {
    warden_store::data_dir::token_hash(&format!("{agent}\u{0}{digest}"))
}

/// The request a held call of `agent` left for action `digest`, if it is remembered.
pub fn left(s: &AppState, agent: &str, digest: &str) -> Result<Option<String>, ApiError> {
    let Some(r) = s.ledger().store().get(Table::Holds, &hold_id(agent, digest))? else { return Ok(None) };
    if r.at.is_some_and(|at| at < crate::model::millis(s.now() - REMEMBER)) {
        return Ok(None);
    }
    Ok(r.body["request"].as_str().map(str::to_string))
}

/// Remembers that `agent`'s call for action `digest` left `request` pending (and forgets
/// holds nobody came back for within a day).
pub fn leave(s: &AppState, agent: &str, digest: &str, request: &str) -> Result<(), ApiError> {
    let store = s.ledger().store();
    let id = hold_id(agent, digest);
    let now = crate::model::millis(s.now());
    let mut record = Record::new(Table::Holds, &id, json!({"request": request})).agent(agent).state("left").at(now);
    let change = match store.get(Table::Holds, &id)? {
        Some(found) if found.body["request"] == json!(request) => return Ok(()),
        Some(found) => {
            record.version = found.version;
            Change::Update(record)
        }
        None => Change::Insert(record),
    };
    let mut batch = Batch::new().change(change);
    let old = Query {
        state: Some("left".into()),
        at_to: Some(crate::model::millis(s.now() - REMEMBER)),
        limit: SWEEP,
        ..Query::default()
    };
    for r in store.find(Table::Holds, &old)? {
        batch = batch.change(Change::Delete { table: Table::Holds, id: r.id });
    }
    match s.ledger().commit(batch) {
        // The same call on another node remembered it first: one is enough.
        Ok(_) | Err(StoreError::Conflict { .. }) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Forgets the hold of `agent` × action `digest` (its outcome was collected).
pub fn forget(s: &AppState, agent: &str, digest: &str) -> Result<(), ApiError> {
    s.ledger().commit(Batch::new().change(Change::Delete { table: Table::Holds, id: hold_id(agent, digest) }))?;
    Ok(())
}

impl Pending {
    /// Counts a held call of `agent` if it has fewer than `max` held; the guard uncounts it.
    fn hold(self: &std::sync::Arc<Self>, agent: &str, max: usize) -> Option<HeldGuard> {
        let mut m = self.held.lock().ok()?;
        let n = m.entry(agent.to_string()).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(HeldGuard { pending: self.clone(), agent: agent.to_string() })
    }
}

/// One held call, uncounted when dropped.
struct HeldGuard {
    pending: std::sync::Arc<Pending>,
    agent: String,
}

impl Drop for HeldGuard {
    fn drop(&mut self) {
        if let Ok(mut m) = self.pending.held.lock()
            && let Some(n) = m.get_mut(&self.agent)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&self.agent);
            }
        }
    }
}

/// A boxed future (what a progress sink returns).
pub type BoxFuture<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>>;

/// A sink for progress: called with (elapsed seconds, budget seconds, message) while a call
/// is held.
pub type Progress<'a> = &'a (dyn Fn(f64, f64, String) -> BoxFuture<'static> + Send + Sync);

/// States in which a request may still change without anyone calling again.
pub fn unsettled(state: &str) -> bool {
    matches!(state, "pending_approval" | "approved" | "executing")
}

/// How a call that waits for a human is answered.
pub enum Mode<'a> {
    /// Held up to the hold budget (with progress when the client asked for it).
    Hold(Option<Progress<'a>>),
    /// Answered at once with an MCP task the client polls (`tasks/get`): the client declared
    /// the tasks extension.
    Task,
}

impl std::fmt::Debug for Mode<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Mode::Hold(p) => write!(f, "Hold(progress: {})", p.is_some()),
            Mode::Task => write!(f, "Task"),
        }
    }
}

/// What a tool call answers.
#[derive(Debug)]
pub enum Answered {
    /// A tool result (JSON): settled, or still pending after the hold budget.
    Result(Value),
    /// The request waits for a human, and the client takes a task: its id is the request's.
    Task(Box<ActionAnswer>),
}

/// One tool call: who asks, the request its arguments made against `bundle` (the bundle the
/// tool was resolved in decides it), and the upstream tool that performs it, if one does.
#[derive(Debug)]
pub struct ToolCall {
    pub token: AgentToken,
    pub bundle: std::sync::Arc<warden_core::Bundle>,
    pub req: ActionRequest,
    pub via: Option<String>,
}

/// Runs one tool call for its agent and answers the tool result (JSON), or a task.
pub async fn call(
    app: &App,
    hold: &HoldOptions,
    pending: &std::sync::Arc<Pending>,
    tool_call: ToolCall,
    mode: Mode<'_>,
) -> Result<Answered, ApiError> {
    let ToolCall { token, bundle, req, via } = tool_call;
    let request_digest = pipeline::request_digest(&req)?;
    let agent_id = token.subject().to_string();
    let digest = bundle
        .action_digest(&agent_id, &req.task, &req.action, &req.target.to_string(), &req.params)
        .map_err(|e| ApiError::new(Code::InvalidRequest, format!("the request cannot be digested: {e}")))?;

    // One trip to the store: admit the agent; then the same call again attaches to the
    // request a held call left, or to the pending approval of the same action (a restart,
    // another session) — never a second request; otherwise the pipeline decides it.
    let answer = {
        let (app2, agent_id, digest) = (app.clone(), agent_id.clone(), digest.clone());
        tokio::task::spawn_blocking(move || {
            let (agent, version) = token.admit_versioned(&app2)?;
            // Attaching, the call's declared inputs still taint the task (they reach no
            // decision of their own).
            let declare = |id: &str| match req.inputs.is_empty() {
                true => Ok(()),
                false => pipeline::declare_inputs(&app2, &agent_id, &req.task, &req.inputs, Some(id)),
            };
            if let Some(id) = left(&app2, &agent_id, &digest)? {
                declare(&id)?;
                return Ok((pipeline::answer_of(&app2, &id)?, true));
            }
            let waiting = crate::approvals::pending_for(app2.ledger().store().as_ref(), &digest)?;
            if let Some(id) = waiting.as_ref().and_then(|v| v.approval.requests.first()) {
                declare(id)?;
                return Ok((pipeline::answer_of(&app2, id)?, false));
            }
            let recorded = std::sync::OnceLock::new();
            let answer =
                pipeline::submit(&app2, &bundle, &Admitted { agent, version }, req, request_digest, via, &recorded)?;
            Ok::<_, ApiError>((answer, false))
        })
        .await
        .map_err(|_| ApiError::new(Code::Internal, "a worker failed; look up the request before retrying"))??
    };
    let (answer, remembered) = answer;
    let remember = |answer: &ActionAnswer| {
        let (agent, digest, id) = (agent_id.clone(), digest.clone(), answer.id.clone());
        blocking(app, move |s| leave(s, &agent, &digest, &id))
    };
    let answer = match mode {
        Mode::Task if unsettled(&answer.state) => {
            remember(&answer).await?;
            return Ok(Answered::Task(Box::new(answer)));
        }
        Mode::Task => answer,
        Mode::Hold(progress) => match (unsettled(&answer.state), pending.hold(&agent_id, hold.max_held_per_agent)) {
            (true, Some(_held)) => wait(app, hold, &answer.id, progress).await?,
            // Not held: settled already, or this agent has as many calls held as it may.
            _ => answer,
        },
    };
    if unsettled(&answer.state) {
        remember(&answer).await?;
        return Ok(Answered::Result(still_pending(&answer)));
    }
    if remembered {
        let (agent, digest2) = (agent_id.clone(), digest.clone());
        blocking(app, move |s| forget(s, &agent, &digest2)).await?;
    }
    outcome(app, &answer).await.map(Answered::Result)
}

/// The tool result of a settled request (who decided, and why, when a human did).
pub async fn outcome(app: &App, answer: &ActionAnswer) -> Result<Value, ApiError> {
    let approval = match answer.decision.approval.as_ref().and_then(|a| a.id.clone()) {
        Some(id) => blocking(app, move |s| crate::approvals::load(s.ledger().store().as_ref(), &id)).await?,
        None => None,
    };
    Ok(settled(answer, approval.map(|v| v.approval)))
}

/// Request `id` of `token`'s agent as it stands (another agent's is "not found"), and whether
/// it may still change without anyone calling again.
pub async fn look(app: &App, token: AgentToken, id: String) -> Result<(ActionAnswer, bool), ApiError> {
    let answer = blocking(app, move |s| {
        let agent = token.admit(s)?;
        pipeline::lookup(s, &id, &crate::auth::Caller::Agent(agent))
    })
    .await?;
    let open = unsettled(&answer.state);
    Ok((answer, open))
}

/// What a task's status message says while the request waits.
pub fn waiting_for(answer: &ActionAnswer) -> String {
    match answer.state.as_str() {
        "pending_approval" => {
            let approval = answer.decision.approval.as_ref();
            format!(
                "waiting for a human approval in Warden (approval {}, expires at {})",
                approval.and_then(|a| a.id.as_deref()).unwrap_or("-"),
                approval.map(|a| rfc3339(a.expires_at)).as_deref().unwrap_or("-")
            )
        }
        "approved" => "approved; waiting for the execution".to_string(),
        other => format!("{other}; waiting"),
    }
}

/// Waits until request `id` settles or the budget is spent, reporting progress.
async fn wait(
    app: &App,
    hold: &HoldOptions,
    id: &str,
    progress: Option<Progress<'_>>,
) -> Result<ActionAnswer, ApiError> {
    let started = tokio::time::Instant::now();
    let deadline = started + hold.budget;
    let mut changes = app.subscribe();
    let mut next_progress = started;
    loop {
        let id2 = id.to_string();
        let answer = blocking(app, move |s| pipeline::answer_of(s, &id2)).await?;
        let now = tokio::time::Instant::now();
        if !unsettled(&answer.state) || now >= deadline {
            return Ok(answer);
        }
        if let Some(p) = progress
            && now >= next_progress
        {
            let elapsed = (now - started).as_secs_f64();
            let message = match answer.state.as_str() {
                "pending_approval" => "waiting for a human approval in Warden".to_string(),
                "approved" => "approved; waiting for the execution".to_string(),
                other => format!("{other}; waiting"),
            };
            p(elapsed, hold.budget.as_secs_f64(), message).await;
            next_progress = now + hold.progress_every;
        }
        let wake = deadline.min(next_progress.max(now + Duration::from_millis(50)));
        // A change wakes us at once; otherwise look again when progress is due (executions
        // finishing do not bump the change counter).
        let _ = tokio::time::timeout_at(wake.min(now + Duration::from_secs(1)), changes.changed()).await;
    }
}

/// A time as the API writes it (RFC 3339).
fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_else(|_| t.to_string())
}

/// The decision as `_meta` carries it.
fn meta(answer: &ActionAnswer) -> Value {
    json!({
        "warden/request": answer.id,
        "warden/state": answer.state,
        "warden/digest": answer.digest,
        "warden/decision": answer.decision,
    })
}

fn text_result(text: String, is_error: bool, structured: Option<Value>, meta: Value) -> Value {
    let mut r = json!({"content": [{"type": "text", "text": text}], "isError": is_error, "_meta": meta});
    if let Some(s) = structured {
        r["structuredContent"] = s;
    }
    r
}

/// The answer while a human has not decided yet (the budget is spent).
fn still_pending(answer: &ActionAnswer) -> Value {
    let approval = answer.decision.approval.as_ref();
    let mut m = meta(answer);
    m["warden/approval"] = json!(approval.and_then(|a| a.id.clone()));
    let expires = approval.map(|a| rfc3339(a.expires_at));
    m["warden/expires_at"] = json!(expires);
    let text = format!(
        "`{}` on `{}` is waiting for a human approval in Warden (request {}, approval {}; it expires at {}). \
         Nothing has been executed yet. To learn the outcome, call this tool again later with exactly the \
         same arguments: that call attaches to this request — it does not ask again and cannot run the \
         action twice.",
        answer.action,
        answer.target,
        answer.id,
        approval.and_then(|a| a.id.as_deref()).unwrap_or("-"),
        expires.as_deref().unwrap_or("-"),
    );
    text_result(text, false, Some(json!({"state": answer.state, "request": answer.id})), m)
}

/// The answer once the request has settled.
fn settled(answer: &ActionAnswer, approval: Option<crate::model::Approval>) -> Value {
    let m = meta(answer);
    let who = |a: &Option<crate::model::Approval>| {
        a.as_ref()
            .map(|a| {
                format!(
                    " by {} ({})",
                    a.decided_by.as_deref().unwrap_or("system"),
                    a.reason.as_deref().unwrap_or("no reason given")
                )
            })
            .unwrap_or_default()
    };
    match answer.state.as_str() {
        "succeeded" => {
            let execution = answer.execution.as_ref().map(|e| serde_json::to_value(e).unwrap_or(Value::Null));
            let captured = answer.execution.as_ref().map(|e| json!(e.captured)).unwrap_or(json!({}));
            let mut text = format!("`{}` on `{}` executed: {captured}", answer.action, answer.target);
            // What the tool answered (redacted as recorded): a read's answer is its point.
            if let Some(said) = answer.execution.as_ref().and_then(|e| e.answer.as_ref())
                && !(said.is_null() || said.as_object().is_some_and(Map::is_empty))
            {
                text.push_str(&format!("; the tool answered: {said}"));
            }
            text_result(text, false, Some(json!({"state": "succeeded", "execution": execution})), m)
        }
        "denied" => {
            let reasons: Vec<String> =
                answer.decision.caps.iter().map(|c| format!("{}: {}", c.code.as_str(), c.reason)).collect();
            let text = format!(
                "Warden refused `{}` on `{}` (nothing was executed). {}",
                answer.action,
                answer.target,
                if reasons.is_empty() { "No reason was given.".to_string() } else { reasons.join("; ") }
            );
            text_result(text, true, None, m)
        }
        "advised" => {
            let text = format!(
                "`{}` on `{}` was recorded as advice for a human (request {}); nothing was executed.",
                answer.action, answer.target, answer.id
            );
            text_result(text, false, Some(json!({"state": "advised", "request": answer.id})), m)
        }
        "rejected" => text_result(
            format!(
                "a human rejected `{}` on `{}`{}; nothing was executed.",
                answer.action,
                answer.target,
                who(&approval)
            ),
            true,
            None,
            m,
        ),
        "expired" => text_result(
            format!(
                "nobody approved `{}` on `{}` in time; the approval expired and nothing was executed.",
                answer.action, answer.target
            ),
            true,
            None,
            m,
        ),
        "cancelled" => text_result(
            format!(
                "the approval of `{}` on `{}` was cancelled{} (a halt, a suspension or the task's close); nothing was executed.",
                answer.action,
                answer.target,
                who(&approval)
            ),
            true,
            None,
            m,
        ),
        other => {
            let error = answer.execution.as_ref().and_then(|e| e.error.clone()).unwrap_or_default();
            text_result(format!("`{}` on `{}` ended `{other}`. {error}", answer.action, answer.target), true, None, m)
        }
    }
}
