//! The decision ladder (DESIGN.md §3): from a granted autonomy level to an outcome.
//!
//! [`decide`] resolves the request against the bundle (agent, action, target, Cedar) and then
//! climbs the ladder in [`climb`], a pure function of plain facts that the property tests
//! drive directly.

use std::borrow::Cow;
use std::fmt;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::bundle::Bundle;
use crate::guardrail::{Grant, Guardrail, Mode, Thresholds};
use crate::inventory::Asset;
use crate::policy::RequestFacts;
use crate::request::{AgentStatus, BudgetUsage, DecisionInput, HaltScope, Taint, TaintLabel, TaskState};

/// What Warden does with a request. Ordered from least to most permissive.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Deny,
    Advise,
    RequireApproval,
    Execute,
}

impl Outcome {
    /// The outcome an effective autonomy level leads to.
    pub fn for_level(level: u8) -> Self {
        match level {
            0 => Outcome::Deny,
            1 => Outcome::Advise,
            2 => Outcome::RequireApproval,
            _ => Outcome::Execute,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Deny => "deny",
            Outcome::Advise => "advise",
            Outcome::RequireApproval => "require_approval",
            Outcome::Execute => "execute",
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where the agent's confidence falls against its thresholds.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Band {
    Low,
    Escalate,
    Autonomous,
}

impl Band {
    pub fn of(confidence: f64, t: Thresholds) -> Self {
        if confidence >= t.autonomous {
            Band::Autonomous
        } else if confidence >= t.escalate {
            Band::Escalate
        } else {
            Band::Low
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Band::Low => "low",
            Band::Escalate => "escalate",
            Band::Autonomous => "autonomous",
        }
    }
}

/// Stable codes for everything that lowers a level. Clients match on these.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CapCode {
    UnknownAgent,
    UnknownAction,
    InvalidRequest,
    AgentInactive,
    Halted,
    TaskClosed,
    OutOfScope,
    DataNotAllowed,
    EvaluationError,
    Forbidden,
    NoGrant,
    ConfidenceBelowEscalate,
    ConfidenceBelowAutonomous,
    Irreversible,
    Tier0Target,
    PrivilegedTarget,
    StepUp,
    BreakerOpen,
    BudgetExceeded,
    DistinctTargetsExceeded,
    UntrustedInput,
    ConfidentialEgress,
    ShadowMode,
}

impl CapCode {
    pub fn as_str(self) -> &'static str {
        match self {
            CapCode::UnknownAgent => "unknown_agent",
            CapCode::UnknownAction => "unknown_action",
            CapCode::InvalidRequest => "invalid_request",
            CapCode::AgentInactive => "agent_inactive",
            CapCode::Halted => "halted",
            CapCode::TaskClosed => "task_closed",
            CapCode::OutOfScope => "out_of_scope",
            CapCode::DataNotAllowed => "data_not_allowed",
            CapCode::EvaluationError => "evaluation_error",
            CapCode::Forbidden => "forbidden",
            CapCode::NoGrant => "no_grant",
            CapCode::ConfidenceBelowEscalate => "confidence_below_escalate",
            CapCode::ConfidenceBelowAutonomous => "confidence_below_autonomous",
            CapCode::Irreversible => "irreversible",
            CapCode::Tier0Target => "tier0_target",
            CapCode::PrivilegedTarget => "privileged_target",
            CapCode::StepUp => "step_up",
            CapCode::BreakerOpen => "breaker_open",
            CapCode::BudgetExceeded => "budget_exceeded",
            CapCode::DistinctTargetsExceeded => "distinct_targets_exceeded",
            CapCode::UntrustedInput => "untrusted_input",
            CapCode::ConfidentialEgress => "confidential_egress",
            CapCode::ShadowMode => "shadow_mode",
        }
    }
}

impl fmt::Display for CapCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One reason the effective level is below the granted one.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cap {
    pub code: CapCode,
    pub reason: String,
}

/// A policy that determined the decision, and who answers for it.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyRef {
    pub id: String,
    pub owner: String,
    pub file: String,
    pub line: usize,
}

/// What a `require_approval` decision needs from humans.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalRequirement {
    /// The approval opened for it (set by the gateway; the core decides without ids).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Any one of these roles may approve.
    pub roles: Vec<String>,
    /// Distinct approvers needed.
    pub quorum: u32,
    #[serde(with = "time::serde::rfc3339")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub expires_at: OffsetDateTime,
    /// The agent's owner may not approve.
    pub separation_of_duties: bool,
    /// Whom to tell.
    pub notify: Vec<String>,
}

/// The decision contract (DESIGN.md §3).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub outcome: Outcome,
    pub granted_level: u8,
    pub effective_level: u8,
    pub band: Band,
    pub caps: Vec<Cap>,
    pub policies: Vec<PolicyRef>,
    pub bundle_version: String,
    /// Flagged for post-hoc review (level 4 high-impact executions, low confidence, …).
    pub review: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<ApprovalRequirement>,
    /// A budget was exceeded: the store must open the breaker for this agent × action.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub trip_breaker: bool,
    /// In shadow mode, the outcome that would have applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow_outcome: Option<Outcome>,
    /// The budgets the ladder checked (executions per hour, distinct targets): the store
    /// checks them again in the commit that counts an execution, so concurrent requests
    /// cannot all fit under the same remaining budget. Not part of the wire contract.
    #[serde(skip)]
    #[cfg_attr(feature = "openapi", schema(ignore))]
    pub budget_limits: (Option<u32>, Option<u32>),
}

impl Decision {
    pub fn has_cap(&self, code: CapCode) -> bool {
        self.caps.iter().any(|c| c.code == code)
    }
}

/// Plain facts the ladder climbs on, already resolved from bundle and request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LadderFacts {
    /// Highest level granted by a satisfied permit (1–4).
    pub granted: u8,
    pub confidence: f64,
    pub thresholds: Thresholds,
    /// Enrichment: no side effects, not held back by confidence bands.
    pub read_only: bool,
    pub reversible: bool,
    /// Risk `high` or `critical`.
    pub high_impact: bool,
    /// Category `identity` or `secrets`.
    pub step_up_category: bool,
    pub tier0: bool,
    pub privileged: bool,
    /// The grant says explicitly (`allow_privileged = true`) that level 3 covers privileged
    /// targets.
    pub allow_privileged: bool,
    pub known_target: bool,
    pub require_reversible_for_autonomy: bool,
    pub review_autonomous: bool,
    pub budget: BudgetUsage,
    pub max_per_hour: Option<u32>,
    pub max_distinct_targets: Option<u32>,
    pub shadow: bool,
    /// The task holds untrusted input and `[data] after_untrusted` covers this action: at
    /// most this level (DESIGN §14).
    pub untrusted_max: Option<u8>,
    /// The task holds confidential data and this action sends data outside (`egress`).
    pub confidential_egress: bool,
}

/// Where the ladder ends.
#[derive(Debug, Clone, PartialEq)]
pub struct Climb {
    pub effective: u8,
    pub band: Band,
    pub caps: Vec<Cap>,
    pub review: bool,
    pub trip_breaker: bool,
    pub shadow_outcome: Option<Outcome>,
}

/// The ladder proper: caps applied to a granted level, in DESIGN.md §3 order.
pub fn climb(f: &LadderFacts) -> Climb {
    let band = Band::of(f.confidence, f.thresholds);
    let mut c = Climb {
        effective: f.granted,
        band,
        caps: Vec::new(),
        review: false,
        trip_breaker: false,
        shadow_outcome: None,
    };
    let cap = |c: &mut Climb, to: u8, code: CapCode, reason: String| {
        c.effective = c.effective.min(to);
        c.caps.push(Cap { code, reason });
    };
    if f.granted == 0 {
        return c;
    }
    let unknown = if f.known_target { "" } else { " (unknown target, treated as tier0, privileged, prod)" };

    // Confidence bands; read-only actions are not held back by them.
    if !f.read_only {
        if band == Band::Low && f.granted >= 2 {
            let reason = format!(
                "confidence {} is below the escalate threshold {}: recorded as advice, flagged for tuning",
                f.confidence, f.thresholds.escalate
            );
            cap(&mut c, 1, CapCode::ConfidenceBelowEscalate, reason);
            c.review = true;
        } else if band == Band::Low {
            // Already advice at level 1: nothing to lower, but still flagged for tuning.
            c.review = true;
        } else if band == Band::Escalate && f.granted >= 3 {
            let reason =
                format!("confidence {} is below the autonomous threshold {}", f.confidence, f.thresholds.autonomous);
            cap(&mut c, 2, CapCode::ConfidenceBelowAutonomous, reason);
        }
    }

    // Conditions of autonomy (levels 3 and 4).
    let side_effects = !f.read_only;
    if f.granted == 3 {
        if side_effects && !f.reversible {
            cap(&mut c, 2, CapCode::Irreversible, "level 3 autonomy needs a reversible action".into());
        }
        if f.tier0 {
            cap(&mut c, 2, CapCode::Tier0Target, format!("level 3 autonomy excludes tier0 targets{unknown}"));
        }
        if f.privileged && !f.allow_privileged {
            let reason =
                format!("level 3 autonomy excludes privileged targets; a step-up approver must decide{unknown}");
            cap(&mut c, 2, CapCode::PrivilegedTarget, reason);
        }
        if f.step_up_category {
            let reason = "identity and secrets actions need a step-up approver below level 4".into();
            cap(&mut c, 2, CapCode::StepUp, reason);
        }
    }
    if f.granted == 4 && f.require_reversible_for_autonomy && side_effects && !f.reversible {
        let reason = "the agent's rollback rules allow autonomy only for reversible actions".into();
        cap(&mut c, 2, CapCode::Irreversible, reason);
    }

    // What the task took in (DESIGN §14): it only ever lowers the level. Before the budgets, so
    // a request that goes to a human because of it does not count against them.
    if let Some(max) = f.untrusted_max
        && f.granted > max
    {
        let reason = format!("the task holds untrusted input: at most level {max} (`[data] after_untrusted`)");
        cap(&mut c, max, CapCode::UntrustedInput, reason);
    }
    // Read-only or not: a lookup that sends data outside is egress too.
    if f.confidential_egress && f.granted > 2 {
        let reason = "the task holds confidential data and this action sends data outside: a human decides".into();
        cap(&mut c, 2, CapCode::ConfidentialEgress, reason);
    }

    // Budgets and the breaker matter only if the request would otherwise execute.
    if c.effective >= 3 {
        if f.budget.breaker_open {
            let reason = "the breaker for this agent and action is open until a human resets it".into();
            cap(&mut c, 2, CapCode::BreakerOpen, reason);
        } else {
            if let Some(max) = f.max_per_hour.filter(|m| f.budget.executions >= *m) {
                let reason = format!("{} executions in the last hour reach the budget of {max}", f.budget.executions);
                cap(&mut c, 2, CapCode::BudgetExceeded, reason);
                c.trip_breaker = true;
            }
            let new_target = !f.budget.target_seen;
            if let Some(max) = f.max_distinct_targets.filter(|m| new_target && f.budget.distinct_targets >= *m) {
                let reason = format!(
                    "{} distinct targets in the last hour reach the budget of {max}",
                    f.budget.distinct_targets
                );
                cap(&mut c, 2, CapCode::DistinctTargetsExceeded, reason);
                c.trip_breaker = true;
            }
        }
    }

    if c.effective >= 3 {
        let lifted = f.granted == 4
            && side_effects
            && (!f.reversible || f.high_impact || f.step_up_category || f.tier0 || f.privileged);
        c.review |= lifted || f.review_autonomous;
    }

    if f.shadow && c.effective >= 2 {
        c.shadow_outcome = Some(Outcome::for_level(c.effective));
        cap(&mut c, 1, CapCode::ShadowMode, "shadow mode: decided and recorded, never executed or queued".into());
    }
    c
}

/// Decides one request. Pure: the same bundle and input always give the same decision.
/// Anything that cannot be evaluated is a `deny` (fail closed).
pub fn decide(bundle: &Bundle, input: &DecisionInput<'_>) -> Decision {
    let req = input.request;
    let guardrail = bundle.agent(input.agent);
    let thresholds = guardrail.map(|g| g.thresholds).unwrap_or_default();
    let mut d = Decision {
        outcome: Outcome::Deny,
        granted_level: 0,
        effective_level: 0,
        band: Band::of(req.confidence, thresholds),
        caps: Vec::new(),
        policies: Vec::new(),
        bundle_version: bundle.version().to_string(),
        review: false,
        approval: None,
        trip_breaker: false,
        shadow_outcome: None,
        budget_limits: (None, None),
    };
    let deny = |mut d: Decision, code: CapCode, reason: String| {
        d.caps.push(Cap { code, reason });
        d.effective_level = 0;
        d.outcome = Outcome::Deny;
        d
    };

    let Some(g) = guardrail else {
        return deny(d, CapCode::UnknownAgent, format!("agent `{}` has no guardrail in this bundle", input.agent));
    };
    let Some(action) = bundle.catalog().get(&req.action) else {
        return deny(d, CapCode::UnknownAction, format!("action `{}` is not in the catalog", req.action));
    };
    if let Err(reason) = check_request(g, action, input) {
        return deny(d, CapCode::InvalidRequest, reason);
    }

    let (asset, known) = match bundle.inventory().get(&req.target) {
        Some(a) => (Cow::Borrowed(a), true),
        None => (Cow::Owned(Asset::unknown(&req.target)), false),
    };
    let (severity, source) = input.task.map_or(("unknown", "unknown"), |t| (t.severity.as_str(), t.source.as_str()));
    let task_verified = input.task.is_some_and(|t| t.verified);
    // The task's marks and what this request declares it took in: both count for it.
    let declared: Vec<Taint> = req.inputs.iter().map(|i| i.mark(None)).collect();
    let taint: Vec<&Taint> = input.task.map_or(&[][..], |t| &t.taint[..]).iter().chain(&declared).collect();
    let mut labels: Vec<&str> = taint.iter().map(|t| t.label.as_str()).collect();
    labels.sort_unstable();
    labels.dedup();
    let history: Vec<(&str, u32)> =
        input.task.map(|t| bundle.policy.history_shown(&req.action, &t.history)).unwrap_or_default();
    let (hour, weekday) = (input.now.hour(), input.now.weekday().number_days_from_monday());
    let facts = RequestFacts {
        agent: &g.id,
        action,
        target: &asset,
        known_target: known,
        confidence: req.confidence,
        params: &req.params,
        severity,
        source,
        task_verified,
        taint: &labels,
        history: &history,
        hour,
        weekday,
    };
    let verdict = match bundle.policy.evaluate(&facts) {
        Ok(v) if v.errors.is_empty() => v,
        Ok(v) => {
            return deny(d, CapCode::EvaluationError, format!("policy evaluation failed: {}", v.errors.join("; ")));
        }
        Err(e) => return deny(d, CapCode::EvaluationError, format!("policy evaluation failed: {e}")),
    };

    let policy_ref = |i: usize| {
        let m = bundle.policy.meta(i);
        PolicyRef { id: m.id.clone(), owner: m.owner.clone(), file: m.file.clone(), line: m.line }
    };
    let granted = verdict.permits.iter().filter_map(|&i| bundle.policy.meta(i).level).max().unwrap_or(0);
    let determining: Vec<usize> =
        verdict.permits.iter().copied().filter(|&i| bundle.policy.meta(i).level == Some(granted)).collect();
    d.granted_level = granted;
    d.policies = determining.iter().map(|&i| policy_ref(i)).collect();
    let grant: Option<&Grant> =
        determining.iter().find_map(|&i| bundle.policy.meta(i).grant.and_then(|gi| g.grants.get(gi)));
    let thresholds = grant.map_or(g.thresholds, |gr| gr.thresholds);
    d.band = Band::of(req.confidence, thresholds);

    // Hard stops: any of them denies, whatever was granted.
    let mut stops = Vec::new();
    if !verdict.forbids.is_empty() {
        let ids: Vec<String> = verdict.forbids.iter().map(|&i| format!("`{}`", bundle.policy.meta(i).id)).collect();
        stops.push(Cap { code: CapCode::Forbidden, reason: format!("forbidden by {}", ids.join(", ")) });
        d.policies = verdict.forbids.iter().map(|&i| policy_ref(i)).collect();
    }
    if let Some(h) = input.halts.iter().find(|h| h.matches(&g.id, &action.id, input.now)) {
        let scope = match (h.scope, &h.id) {
            (HaltScope::Agent, Some(id)) => format!("agent `{id}`"),
            (HaltScope::Action, Some(id)) => format!("action `{id}`"),
            _ => "everything".to_string(),
        };
        let why = if h.reason.is_empty() { String::new() } else { format!(": {}", h.reason) };
        stops.push(Cap { code: CapCode::Halted, reason: format!("emergency stop on {scope}{why}") });
    }
    if input.agent_status != AgentStatus::Active {
        let status = format!("{:?}", input.agent_status).to_lowercase();
        stops.push(Cap { code: CapCode::AgentInactive, reason: format!("agent is {status}") });
    }
    if input.task.is_some_and(|t| t.state == TaskState::Closed) {
        stops.push(Cap { code: CapCode::TaskClosed, reason: format!("task `{}` is closed", req.task) });
    }
    if let Some(t) = input.task
        && !t.agents.is_empty()
        && !t.agents.iter().any(|a| a == input.agent)
    {
        let reason = format!("task `{}` is assigned to other agents: this one may not act in it", req.task);
        stops.push(Cap { code: CapCode::OutOfScope, reason });
    }
    if let Some(envs) = &g.environments
        && !envs.contains(&asset.environment)
    {
        let reason = format!("the agent's scope excludes the `{}` environment", asset.environment.as_str());
        stops.push(Cap { code: CapCode::OutOfScope, reason });
    }
    if !g.task_sources.is_empty() && !g.task_sources.iter().any(|s| s == source) {
        let reason = format!("the agent's scope excludes tasks from source `{source}`");
        stops.push(Cap { code: CapCode::OutOfScope, reason });
    } else if !g.task_sources.is_empty() && !task_verified {
        // A source the agent asserted itself cannot bring a task into its scope.
        let reason = format!(
            "the agent's scope admits tasks from `{source}` only when a trusted party asserted the source; \
             task `{}` was opened by an agent",
            req.task
        );
        stops.push(Cap { code: CapCode::OutOfScope, reason });
    }
    // Data boundaries (DESIGN §14): an action reading a data class the agent's `[data]
    // allowed` does not list is denied (after a grant: without one, `no_grant` says more).
    let reads = match input.via.and_then(|v| v.split_once('/')) {
        Some((upstream, tool)) => {
            bundle.mcp().route(upstream, tool).filter(|m| m.action == action.id).map_or(&action.reads, |m| &m.reads)
        }
        None => &action.reads,
    };
    let refused: Vec<String> = reads.iter().filter(|c| !g.allowed_data.contains(c)).map(|c| format!("`{c}`")).collect();
    if granted > 0 && !refused.is_empty() {
        let whose = if g.allowed_data_line == 0 {
            format!("{}, which has no `[data] allowed`", g.file)
        } else {
            format!("`[data] allowed` at {}:{}", g.file, g.allowed_data_line)
        };
        let via = input.via.map(|v| format!(" through `{v}`")).unwrap_or_default();
        let reason = format!("`{}`{via} reads {}, which the agent may not: {whose}", action.id, refused.join(", "));
        stops.push(Cap { code: CapCode::DataNotAllowed, reason });
    }
    if granted == 0 && stops.is_empty() {
        let reason = format!("no policy grants `{}` on `{}` to this agent", action.id, req.target);
        stops.push(Cap { code: CapCode::NoGrant, reason });
    }
    if !stops.is_empty() {
        d.caps = stops;
        return d;
    }

    let facts = LadderFacts {
        granted,
        confidence: req.confidence,
        thresholds,
        read_only: action.read_only(),
        reversible: action.reversible,
        high_impact: action.risk >= crate::catalog::Risk::High,
        step_up_category: action.category.needs_step_up(),
        tier0: asset.criticality.tier() == 0,
        privileged: asset.privileged,
        allow_privileged: grant.is_some_and(|gr| gr.conditions.allow_privileged == Some(true)),
        known_target: known,
        require_reversible_for_autonomy: g.rollback.require_reversible_for_autonomy,
        review_autonomous: g.audit.review_autonomous,
        budget: input.budget,
        max_per_hour: grant.and_then(|gr| gr.max_per_hour).or(g.rollback.max_per_hour),
        max_distinct_targets: g.rollback.max_distinct_targets,
        shadow: input.shadow || g.mode == Mode::Shadow,
        untrusted_max: g
            .data_after_untrusted(action.category)
            .filter(|_| taint.iter().any(|t| t.label == TaintLabel::Untrusted)),
        confidential_egress: action.egress && taint.iter().any(|t| t.label == TaintLabel::Confidential),
    };
    let mut c = climb(&facts);
    // The approval card says which input lowered the level, and where it came from.
    for cap in c.caps.iter_mut() {
        let label = match cap.code {
            CapCode::UntrustedInput => TaintLabel::Untrusted,
            CapCode::ConfidentialEgress => TaintLabel::Confidential,
            _ => continue,
        };
        // The first few, and how many more: a reason stays short however much was taken in.
        // What Warden itself handed back first, then what agents declared, each in the order
        // taken in: neither declarations an agent piles up nor reads a steered agent makes
        // afterwards push the result that steered it off the card.
        let mut of_label: Vec<&Taint> = taint.iter().copied().filter(|t| t.label == label).collect();
        of_label.sort_by_key(|t| t.by != "warden");
        let mut sources: Vec<String> = of_label
            .iter()
            .take(SOURCES_SHOWN)
            .map(|t| match &t.request {
                Some(r) => format!("{} ({}, {r})", t.source, t.by),
                None => format!("{} ({})", t.source, t.by),
            })
            .collect();
        if of_label.len() > SOURCES_SHOWN {
            sources.push(format!("and {} more", of_label.len() - SOURCES_SHOWN));
        }
        cap.reason = format!("{}; taken in: {}", cap.reason, sources.join("; "));
    }
    d.budget_limits = (facts.max_per_hour, facts.max_distinct_targets);
    d.effective_level = c.effective;
    d.outcome = Outcome::for_level(c.effective);
    d.band = c.band;
    d.caps = c.caps;
    d.review = c.review;
    d.trip_breaker = c.trip_breaker;
    d.shadow_outcome = c.shadow_outcome;
    if d.outcome == Outcome::RequireApproval {
        d.approval = Some(approval(g, grant, &asset, action.category.needs_step_up(), input.now));
    }
    d
}

pub use crate::request::MAX_INPUTS;

/// How many sources of taint a cap's reason names (then how many more).
const SOURCES_SHOWN: usize = 5;

fn check_request(g: &Guardrail, action: &crate::catalog::ActionClass, input: &DecisionInput<'_>) -> Result<(), String> {
    let req = input.request;
    if req.target.kind != action.target_kind {
        return Err(format!("action `{}` targets `{}`, not `{}`", action.id, action.target_kind, req.target.kind));
    }
    if !(action.target_ranges && crate::inventory::is_cidr(&req.target.id)) {
        crate::inventory::check_ip(&req.target.kind, &req.target.id)?;
    }
    if !(0.0..=1.0).contains(&req.confidence) {
        return Err(format!("confidence must be between 0 and 1, not {}", req.confidence));
    }
    action.check_params(&req.params)?;
    if g.audit.require_rationale && req.rationale.trim().is_empty() {
        return Err("the agent's audit rules require a rationale".into());
    }
    req.check_inputs()?;
    if (req.evidence.len() as u64) < u64::from(g.audit.min_evidence) {
        return Err(format!("the agent's audit rules require at least {} evidence items", g.audit.min_evidence));
    }
    Ok(())
}

fn approval(
    g: &Guardrail,
    grant: Option<&Grant>,
    asset: &Asset,
    step_up_category: bool,
    now: OffsetDateTime,
) -> ApprovalRequirement {
    let e = &g.escalation;
    let roles = if step_up_category || asset.privileged {
        e.step_up_roles.clone()
    } else {
        grant.map_or_else(|| e.approver_roles.clone(), |gr| gr.approver_roles.clone())
    };
    let mut quorum = grant.map_or(e.quorum, |gr| gr.quorum);
    if asset.privileged {
        quorum = quorum.max(e.privileged_quorum);
    }
    let expiry = i64::try_from(e.approval_expiry.as_secs()).unwrap_or(i64::MAX);
    ApprovalRequirement {
        id: None,
        roles,
        quorum,
        expires_at: now.saturating_add(time::Duration::seconds(expiry)),
        separation_of_duties: e.separation_of_duties,
        notify: e.notify.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A level 3 grant on a reversible, low-impact action against a tier2, non-privileged,
    /// known target at autonomous confidence, within budget: it executes.
    fn base() -> LadderFacts {
        LadderFacts {
            granted: 3,
            confidence: 0.95,
            thresholds: Thresholds::default(),
            read_only: false,
            reversible: true,
            high_impact: false,
            step_up_category: false,
            tier0: false,
            privileged: false,
            allow_privileged: false,
            known_target: true,
            require_reversible_for_autonomy: false,
            review_autonomous: false,
            budget: BudgetUsage::default(),
            max_per_hour: Some(10),
            max_distinct_targets: Some(5),
            shadow: false,
            untrusted_max: None,
            confidential_egress: false,
        }
    }

    #[test]
    fn taint_caps_the_level_before_budgets_and_only_lowers_it() {
        let tainted = LadderFacts { untrusted_max: Some(2), ..base() };
        let c = climb(&tainted);
        assert_eq!((c.effective, codes(&c)), (2, vec![CapCode::UntrustedInput]));
        // A budget already met does not trip the breaker for a request a human will decide.
        let spent = LadderFacts { budget: BudgetUsage { executions: 10, ..BudgetUsage::default() }, ..tainted };
        assert!(!climb(&spent).trip_breaker);
        // A grant at or under the cap is untouched.
        let low = LadderFacts { granted: 2, ..tainted };
        assert_eq!(climb(&low).caps, vec![]);
        let egress = LadderFacts { confidential_egress: true, ..base() };
        let c = climb(&egress);
        assert_eq!((c.effective, codes(&c)), (2, vec![CapCode::ConfidentialEgress]));
        let denied = LadderFacts { untrusted_max: Some(0), ..base() };
        assert_eq!(climb(&denied).effective, 0);
    }

    fn codes(c: &Climb) -> Vec<CapCode> {
        c.caps.iter().map(|c| c.code).collect()
    }

    #[test]
    fn each_level_maps_to_its_outcome() {
        for (level, outcome) in [
            (0, Outcome::Deny),
            (1, Outcome::Advise),
            (2, Outcome::RequireApproval),
            (3, Outcome::Execute),
            (4, Outcome::Execute),
        ] {
            let c = climb(&LadderFacts { granted: level, ..base() });
            assert_eq!(Outcome::for_level(c.effective), outcome, "level {level}");
            assert!(c.caps.is_empty());
        }
    }

    #[test]
    fn bands_use_inclusive_lower_bounds() {
        let t = Thresholds::default();
        assert_eq!(Band::of(0.90, t), Band::Autonomous);
        assert_eq!(Band::of(0.8999, t), Band::Escalate);
        assert_eq!(Band::of(0.60, t), Band::Escalate);
        assert_eq!(Band::of(0.5999, t), Band::Low);
    }

    #[test]
    fn escalate_band_sends_autonomy_to_a_human() {
        let c = climb(&LadderFacts { confidence: 0.75, ..base() });
        assert_eq!((c.effective, codes(&c)), (2, vec![CapCode::ConfidenceBelowAutonomous]));
        let c = climb(&LadderFacts { granted: 4, confidence: 0.75, ..base() });
        assert_eq!(c.effective, 2);
        // At level 2 the escalate band changes nothing.
        let c = climb(&LadderFacts { granted: 2, confidence: 0.75, ..base() });
        assert_eq!((c.effective, c.caps.len()), (2, 0));
    }

    #[test]
    fn low_band_is_advice_and_flagged_for_review() {
        for granted in 2..=4 {
            let c = climb(&LadderFacts { granted, confidence: 0.2, ..base() });
            assert_eq!(c.effective, 1, "granted {granted}");
            assert_eq!(codes(&c)[0], CapCode::ConfidenceBelowEscalate);
            assert!(c.review);
        }
        // At level 1 nothing is lowered, but the request is flagged all the same.
        let c = climb(&LadderFacts { granted: 1, confidence: 0.2, ..base() });
        assert_eq!((c.effective, c.caps.len(), c.review), (1, 0, true));
        let c = climb(&LadderFacts { granted: 1, confidence: 0.7, ..base() });
        assert!(!c.review, "the escalate band at level 1 is not flagged");
    }

    #[test]
    fn read_only_actions_ignore_confidence_bands() {
        let c = climb(&LadderFacts { granted: 4, confidence: 0.1, read_only: true, reversible: false, ..base() });
        assert_eq!((c.effective, c.caps.len(), c.review), (4, 0, false));
    }

    #[test]
    fn level_three_needs_reversible_non_tier0_non_privileged_targets() {
        let c = climb(&LadderFacts { reversible: false, ..base() });
        assert_eq!((c.effective, codes(&c)), (2, vec![CapCode::Irreversible]));
        let c = climb(&LadderFacts { tier0: true, ..base() });
        assert_eq!((c.effective, codes(&c)), (2, vec![CapCode::Tier0Target]));
        let c = climb(&LadderFacts { privileged: true, ..base() });
        assert_eq!((c.effective, codes(&c)), (2, vec![CapCode::PrivilegedTarget]));
        let c = climb(&LadderFacts { tier0: true, privileged: true, known_target: false, ..base() });
        assert_eq!(codes(&c), vec![CapCode::Tier0Target, CapCode::PrivilegedTarget]);
        assert!(c.caps[0].reason.contains("unknown target"));
    }

    #[test]
    fn allow_privileged_lets_level_three_act_on_privileged_targets() {
        let c = climb(&LadderFacts { privileged: true, allow_privileged: true, ..base() });
        assert_eq!((c.effective, c.caps.len()), (3, 0));
        let c = climb(&LadderFacts { privileged: true, allow_privileged: false, ..base() });
        assert_eq!((c.effective, codes(&c)), (2, vec![CapCode::PrivilegedTarget]));
        // It lifts the privileged condition only: tier0 (and so an unknown target) still caps.
        let c = climb(&LadderFacts { tier0: true, privileged: true, allow_privileged: true, ..base() });
        assert_eq!((c.effective, codes(&c)), (2, vec![CapCode::Tier0Target]));
    }

    #[test]
    fn level_four_lifts_the_level_three_conditions_and_flags_review() {
        let c = climb(&LadderFacts {
            granted: 4,
            reversible: false,
            tier0: true,
            privileged: true,
            step_up_category: true,
            ..base()
        });
        assert_eq!((c.effective, c.caps.len(), c.review), (4, 0, true));
        let c = climb(&LadderFacts { granted: 4, high_impact: true, ..base() });
        assert!(c.review);
        let c = climb(&LadderFacts { granted: 4, ..base() });
        assert!(!c.review, "a reversible low-impact level 4 execution needs no review");
    }

    #[test]
    fn step_up_categories_need_a_human_below_level_four() {
        let c = climb(&LadderFacts { step_up_category: true, ..base() });
        assert_eq!((c.effective, codes(&c)), (2, vec![CapCode::StepUp]));
    }

    #[test]
    fn guardrails_may_require_reversibility_even_at_level_four() {
        let f = LadderFacts { granted: 4, reversible: false, require_reversible_for_autonomy: true, ..base() };
        let c = climb(&f);
        assert_eq!((c.effective, codes(&c)), (2, vec![CapCode::Irreversible]));
        let c = climb(&LadderFacts { read_only: true, ..f });
        assert_eq!(c.effective, 4, "read-only actions have nothing to reverse");
    }

    #[test]
    fn budgets_trip_the_breaker_only_for_would_be_executions() {
        let over = BudgetUsage { executions: 10, ..BudgetUsage::default() };
        let c = climb(&LadderFacts { budget: over, ..base() });
        assert_eq!((c.effective, codes(&c), c.trip_breaker), (2, vec![CapCode::BudgetExceeded], true));
        let c = climb(&LadderFacts { budget: BudgetUsage { executions: 9, ..over }, ..base() });
        assert_eq!((c.effective, c.trip_breaker), (3, false));
        // Already going to a human: the budget is not the reason, nothing trips.
        let c = climb(&LadderFacts { budget: over, tier0: true, ..base() });
        assert_eq!((codes(&c), c.trip_breaker), (vec![CapCode::Tier0Target], false));
        let c = climb(&LadderFacts { granted: 2, budget: over, ..base() });
        assert!(!c.trip_breaker);
    }

    #[test]
    fn distinct_targets_count_only_new_targets() {
        let full = BudgetUsage { distinct_targets: 5, ..BudgetUsage::default() };
        let c = climb(&LadderFacts { budget: full, ..base() });
        assert_eq!((codes(&c), c.trip_breaker), (vec![CapCode::DistinctTargetsExceeded], true));
        let c = climb(&LadderFacts { budget: BudgetUsage { target_seen: true, ..full }, ..base() });
        assert_eq!(c.effective, 3);
    }

    #[test]
    fn an_open_breaker_holds_at_level_two_without_tripping_again() {
        let b = BudgetUsage { breaker_open: true, executions: 99, ..BudgetUsage::default() };
        let c = climb(&LadderFacts { granted: 4, budget: b, ..base() });
        assert_eq!((c.effective, codes(&c), c.trip_breaker), (2, vec![CapCode::BreakerOpen], false));
    }

    #[test]
    fn shadow_mode_caps_to_advice_and_remembers_the_outcome() {
        let c = climb(&LadderFacts { shadow: true, ..base() });
        assert_eq!((c.effective, c.shadow_outcome), (1, Some(Outcome::Execute)));
        let c = climb(&LadderFacts { shadow: true, granted: 2, ..base() });
        assert_eq!(c.shadow_outcome, Some(Outcome::RequireApproval));
        let c = climb(&LadderFacts { shadow: true, granted: 1, ..base() });
        assert_eq!((c.effective, c.shadow_outcome), (1, None));
    }

    #[test]
    fn review_autonomous_flags_every_execution() {
        let c = climb(&LadderFacts { review_autonomous: true, ..base() });
        assert!(c.review);
        let c = climb(&LadderFacts { review_autonomous: true, confidence: 0.7, ..base() });
        assert!(!c.review, "nothing executed, nothing to review");
    }

    #[test]
    fn decisions_serialise_with_the_contract_field_names() {
        let d = Decision {
            outcome: Outcome::RequireApproval,
            granted_level: 3,
            effective_level: 2,
            band: Band::Escalate,
            caps: vec![Cap { code: CapCode::ConfidenceBelowAutonomous, reason: "r".into() }],
            policies: vec![],
            bundle_version: "sha256:00".into(),
            review: false,
            approval: None,
            trip_breaker: false,
            shadow_outcome: None,
            budget_limits: (Some(10), None),
        };
        let v = serde_json::to_value(&d).unwrap();
        assert!(v.get("budget_limits").is_none(), "not part of the wire contract");
        assert_eq!(v["outcome"], "require_approval");
        assert_eq!(v["band"], "escalate");
        assert_eq!(v["caps"][0]["code"], "confidence_below_autonomous");
        assert!(v.get("trip_breaker").is_none() && v.get("approval").is_none());
        for code in [CapCode::Tier0Target, CapCode::DistinctTargetsExceeded, CapCode::EvaluationError] {
            assert_eq!(serde_json::to_value(code).unwrap(), code.as_str());
        }
    }
}
