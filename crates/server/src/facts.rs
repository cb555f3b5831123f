//! The facts a decision reads besides the bundle — the task, the halts, the budget and the
//! breaker — read once for the pipeline's decision and again for the executor's re-decision at
//! the start of an execution (DESIGN §6: an approved request runs only if the bundle in force
//! when it starts still allows it).

use time::{Duration, OffsetDateTime};
use warden_core::decision::Decision;
use warden_core::request::{ActionRequest, AgentStatus, BudgetUsage, DecisionInput, TaskInfo};
use warden_core::{Bundle, decide};
use warden_store::{Table, UsageLimits};

use crate::breaker::breaker;
use crate::error::{ApiError, Code};
use crate::model::{Model, Task, millis};
use crate::state::AppState;

/// The budget window.
pub const BUDGET_WINDOW: Duration = Duration::hours(1);

/// The halts in force (the in-memory mirror every halt updates before it returns).
pub fn active_halts(s: &AppState) -> Result<crate::state::HaltGate, ApiError> {
    s.halts.read().map(|h| h.clone()).map_err(|_| ApiError::new(Code::HaltUnavailable, "the halt state is unavailable"))
}

/// The halts in force, read from the store, with their epoch.
pub fn load_gate(store: &dyn warden_store::Store) -> Result<crate::state::HaltGate, ApiError> {
    Ok(crate::state::HaltGate {
        epoch: store.meta(crate::state::HALTS_EPOCH_KEY)?,
        list: crate::model::active_halts(store)?,
    })
}

/// Brings this node's mirror of the halts up to date when the store's epoch has moved (a
/// halt, resume or expiry committed elsewhere): one read of the epoch, the list only when it
/// moved. Whether it changed.
pub fn sync(s: &AppState) -> Result<bool, ApiError> {
    let store = s.ledger().store();
    let epoch = store.meta(crate::state::HALTS_EPOCH_KEY)?;
    let unavailable = || ApiError::new(Code::HaltUnavailable, "the halt state is unavailable");
    if s.halts.read().map_err(|_| unavailable())?.epoch == epoch {
        return Ok(false);
    }
    let mut gate = s.halts.write().map_err(|_| unavailable())?;
    *gate = load_gate(store.as_ref())?;
    Ok(true)
}

/// Everything a decision reads besides the bundle, with what a commit that relies on it
/// must find unchanged.
#[derive(Debug)]
pub struct Facts {
    pub task: Option<TaskInfo>,
    /// The task record's version (0: no such task).
    pub task_version: u64,
    pub halts: crate::state::HaltGate,
    pub budget: BudgetUsage,
    /// Where the budget window starts (an hour ago, or the breaker's reset if later).
    pub budget_since_ms: i64,
    /// The breaker's setting as read with the budget: a trip expects it unchanged, so two
    /// requests (on two nodes) tripping together make one trip.
    pub breaker_seen: Option<String>,
    /// Preconditions that the task's history the decision read still holds (empty when no
    /// policy that may decide the action reads the history).
    pub history_unchanged: Vec<warden_store::Change>,
    /// How far the budget usage was counted (the largest budgets the bundle can apply).
    pub counted: warden_core::simulate::Counted,
    /// When they were read: the decision's clock.
    pub now: OffsetDateTime,
}

/// The execution states in which an action counts as done in its task's history (DESIGN
/// §14): succeeded, and rolled back (or being rolled back) since — it was done. Failed and
/// `unknown` executions, and requests that never ran, do not count.
pub const DONE: [&str; 3] = ["succeeded", "rolled_back", "rolling_back"];

/// What task `task` has done: succeeded executions per action class, counted from the store —
/// only of `classes` when given, with the preconditions that keep a commit to exactly those
/// counts (it conflicts if any grew since they were read).
pub fn task_history(
    store: &dyn warden_store::Store,
    task: &str,
    classes: Option<&[&str]>,
) -> Result<(std::collections::BTreeMap<String, u32>, Vec<warden_store::Change>), ApiError> {
    let mut history = std::collections::BTreeMap::new();
    let mut unchanged = Vec::new();
    for state in DONE {
        let q = warden_store::Query { task: Some(task.into()), state: Some(state.into()), ..Default::default() };
        let counts = store.count_by_kind(Table::Executions, &q)?;
        let wanted = |class: &str| classes.is_none_or(|c| c.contains(&class));
        for (class, n) in counts.iter().filter(|(c, _)| wanted(c)) {
            let total: &mut u32 = history.entry(class.clone()).or_default();
            *total = total.saturating_add(u32::try_from(*n).unwrap_or(u32::MAX));
        }
        for class in classes.into_iter().flatten() {
            let seen = counts.iter().find(|(c, _)| c == class).map_or(0, |(_, n)| *n);
            unchanged.push(warden_store::Change::ExpectFewer {
                table: Table::Executions,
                query: warden_store::Query { kind: Some((*class).to_string()), ..q.clone() },
                max: seen + 1,
            });
        }
    }
    Ok((history, unchanged))
}

/// The task's history a decision of `action` reads, and its preconditions: nothing (and no
/// query) when no policy that may decide `action` reads it.
fn history_for(
    store: &dyn warden_store::Store,
    bundle: &Bundle,
    task: &mut Option<TaskInfo>,
    action: &str,
) -> Result<Vec<warden_store::Change>, ApiError> {
    let classes: Vec<&str> = bundle.history_read(action).collect();
    let Some(t) = task.as_mut().filter(|_| !classes.is_empty()) else { return Ok(Vec::new()) };
    let (history, unchanged) = task_history(store, &t.id, Some(&classes))?;
    t.history = history;
    Ok(unchanged)
}

pub fn facts(
    s: &AppState,
    bundle: &Bundle,
    agent: &str,
    req: &ActionRequest,
    require_task: bool,
) -> Result<Facts, ApiError> {
    let store = s.ledger().store();
    let (mut task, task_version) = match store.get(Table::Tasks, &req.task)? {
        Some(r) => (Some(task_info(Task::from_record(&r)?)), r.version),
        None if require_task => {
            return Err(ApiError::new(
                Code::UnknownTask,
                format!("no task `{}`: open it first (POST /v1/tasks)", req.task),
            ));
        }
        None => (None, 0),
    };
    let b = breaker(store.as_ref(), agent, &req.action)?;
    let since = millis(s.now() - BUDGET_WINDOW).max(b.reset_ms.unwrap_or(i64::MIN));
    // Count no further than the budgets this request can meet: bounded work per request,
    // however busy the window.
    let (per_hour, targets) = bundle.agent(agent).map_or((None, None), |g| g.budget_limits(&req.action));
    let up_to = UsageLimits { hits: per_hour.map_or(0, u64::from), distinct_targets: targets.map_or(0, u64::from) };
    let usage = store.budget_usage(agent, &req.action, since, &req.target.to_string(), up_to)?;
    let budget = BudgetUsage {
        executions: u32::try_from(usage.hits).unwrap_or(u32::MAX),
        distinct_targets: u32::try_from(usage.distinct_targets).unwrap_or(u32::MAX),
        target_seen: usage.target_seen,
        breaker_open: b.open,
    };
    let history_unchanged = history_for(store.as_ref(), bundle, &mut task, &req.action)?;
    Ok(Facts {
        task,
        task_version,
        halts: active_halts(s)?,
        budget,
        budget_since_ms: since,
        breaker_seen: b.seen,
        history_unchanged,
        counted: warden_core::simulate::Counted { executions: up_to.hits, distinct_targets: up_to.distinct_targets },
        now: s.now(),
    })
}

pub fn decide_with(
    s: &AppState,
    bundle: &Bundle,
    agent: &str,
    status: AgentStatus,
    req: &ActionRequest,
    via: Option<&str>,
    f: &Facts,
) -> Decision {
    let input = DecisionInput {
        agent,
        agent_status: status,
        request: req,
        task: f.task.as_ref(),
        budget: f.budget,
        halts: &f.halts.list,
        now: f.now,
        shadow: s.shadow,
        via,
    };
    decide(bundle, &input)
}

/// What a decision read besides the request and the bundle, as its `decision.made` entry
/// records it (`data.facts`): `warden policy simulate` decides it again from the log.
pub fn recorded(
    s: &AppState,
    bundle: &Bundle,
    status: AgentStatus,
    req: &ActionRequest,
    via: Option<&str>,
    f: &Facts,
) -> warden_core::simulate::RecordedFacts {
    warden_core::simulate::RecordedFacts {
        agent_status: status,
        task: f.task.clone(),
        budget: f.budget,
        counted: f.counted,
        halts: f.halts.list.clone(),
        now: f.now,
        shadow: s.shadow,
        via: via.map(str::to_string),
        history_read: bundle.history_read(&req.action).map(str::to_string).collect(),
        asset: Some(warden_core::simulate::AssetFacts::of(bundle, &req.target)),
    }
}

/// What a decision reads of a task.
fn task_info(t: Task) -> TaskInfo {
    TaskInfo {
        id: t.id,
        state: t.state,
        severity: t.trigger.severity,
        source: t.trigger.source,
        verified: t.verified,
        agents: t.agents,
        taint: t.taint,
        history: t.history,
    }
}

/// What the re-decision at the start of an execution concluded.
#[derive(Debug)]
pub struct Redecided {
    /// Why the request must not start, if it must not (`policy_changed`).
    pub refused: Option<String>,
    /// Preconditions for the start commit: the bundle version it was decided under, and the
    /// task's history it read, unchanged.
    pub preconditions: Vec<warden_store::Change>,
}

/// Decides stored request `r` again under `bundle` and the facts now (DESIGN §6: an approved
/// request runs only if the bundle in force when it starts still allows it — grant, forbids,
/// time windows, inventory, step-up). Budgets are not counted again: an autonomous request's
/// hit was counted and checked in its decision's commit (a breaker that later requests trip
/// does not take back an execution decided within the budget), and an approved request is not
/// held back by budgets (a human approved it). Allowed: `execute`, or `require_approval` whose
/// requirement the approval's votes meet (as many votes as the quorum, in roles it names now).
pub fn redecide(
    s: &AppState,
    bundle: &Bundle,
    r: &crate::model::ActionRecord,
    approval: Option<&crate::model::Approval>,
    halts: &[warden_core::request::Halt],
) -> Result<Redecided, ApiError> {
    let target = r.target.parse().map_err(|e: String| ApiError::new(Code::InvalidRequest, e))?;
    let req = ActionRequest {
        task: r.task.clone(),
        action: r.action.clone(),
        target,
        params: r.params.clone(),
        confidence: r.confidence,
        rationale: r.rationale.clone(),
        evidence: r.evidence.clone(),
        idempotency_key: None,
        // What it declared is on the task now, and the task is read below.
        inputs: Vec::new(),
    };
    let store = s.ledger().store();
    let mut task = store.get(Table::Tasks, &r.task)?.map(|rec| Task::from_record(&rec).map(task_info)).transpose()?;
    let history_unchanged = history_for(store.as_ref(), bundle, &mut task, &r.action)?;
    let budget = BudgetUsage::default();
    let input = DecisionInput {
        agent: &r.agent,
        agent_status: AgentStatus::Active,
        request: &req,
        task: task.as_ref(),
        budget,
        halts,
        now: s.now(),
        shadow: false,
        via: r.via.as_deref(),
    };
    let d = decide(bundle, &input);
    let refused = match (d.outcome, approval, &d.approval) {
        (warden_core::Outcome::Execute, _, _) => None,
        (warden_core::Outcome::RequireApproval, Some(a), Some(need)) => {
            let held =
                crate::authority::votes_that_count(s, &r.agent, &a.votes, &need.roles, need.separation_of_duties);
            (held < need.quorum.max(1)).then(|| {
                format!(
                    "the bundle in force ({}) now needs {} approval(s) from {}; {} of the votes given hold such a role",
                    bundle.version(),
                    need.quorum,
                    need.roles.join(", "),
                    held
                )
            })
        }
        (outcome, _, _) => {
            let caps: Vec<String> = d.caps.iter().map(|c| c.reason.clone()).collect();
            Some(format!(
                "decided again on the facts now (the task's taint and history among them), the bundle in force ({}) \
                 decides `{outcome}`: {}",
                bundle.version(),
                caps.join("; ")
            ))
        }
    };
    let mut preconditions = vec![warden_store::Change::ExpectMeta {
        key: crate::state::BUNDLE_VERSION_KEY.into(),
        value: Some(bundle.version().to_string()),
    }];
    preconditions.extend(history_unchanged);
    Ok(Redecided { refused, preconditions })
}

/// What the inventory says of `target`, as an approver is shown it.
pub fn target_facts(bundle: &Bundle, target: &warden_core::inventory::TargetRef) -> serde_json::Value {
    match bundle.inventory().get(target) {
        Some(a) => serde_json::json!({"known": true, "criticality": a.criticality, "environment": a.environment,
                          "owner": a.owner, "privileged": a.privileged, "tags": a.tags}),
        None => {
            let a = warden_core::inventory::Asset::unknown(target);
            serde_json::json!({"known": false, "criticality": a.criticality, "environment": a.environment,
                   "owner": a.owner, "privileged": a.privileged, "tags": a.tags})
        }
    }
}
