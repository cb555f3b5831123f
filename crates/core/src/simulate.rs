//! `warden policy simulate` (DESIGN §13): the logged requests of a window decided again under a
//! proposed bundle, on the facts they were decided on, so "what would this change have done last
//! week?" is answered from the audit log alone — before the bundle is loaded.
//!
//! Where the facts come from:
//! - the request is its `action.requested` entry (secret params as their commitments: the log
//!   holds no secret, so a rule comparing a secret's value sees its commitment);
//! - everything else the decision read is its `decision.made` entry's [`RecordedFacts`]: the
//!   agent's status, the task (trigger, agents, taint), budget usage, halts, the time, shadow
//!   mode and the upstream MCP tool;
//! - the task's history is counted again from the log (`execution.succeeded` entries before the
//!   decision), because a proposed rule may read classes the old ones did not; the classes the
//!   logged decision read are taken as it read them;
//! - the target's asset comes from the proposed inventory: an inventory change is part of the
//!   proposal.
//!
//! What the log cannot tell is named, never guessed ([`Inexact`]): the store counts budget
//! usage only as far as the bundle in force could need, so a proposal with a larger budget
//! cannot know whether a request that met the old one would meet the new one; and a secret
//! param is in the log only as its commitment (a string: the catalog refuses secrets of other
//! types), so a request carrying one that a hand-written rule reads is replayed as inexact.
//! Decisions logged before Warden recorded their facts are counted, not replayed.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;

use crate::audit::entry::{ActorKind, Entry, EventType};
use crate::bundle::Bundle;
use crate::decision::{CapCode, Decision, Outcome, decide};
use crate::inventory::{Criticality, TargetRef};
use crate::report::{Filter, Window};
use crate::request::{ActionRequest, AgentStatus, BudgetUsage, DecisionInput, Halt, TaskInfo};

/// How far the store counted a decision's budget usage (it stops at the largest budget the
/// bundle in force could apply; 0: not counted, no budget applied).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Counted {
    pub executions: u64,
    pub distinct_targets: u64,
}

/// What a decision read besides the request and the bundle, recorded with it in its
/// `decision.made` entry (`data.facts`) so it can be decided again from the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordedFacts {
    pub agent_status: AgentStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<TaskInfo>,
    pub budget: BudgetUsage,
    pub counted: Counted,
    #[serde(default)]
    pub halts: Vec<Halt>,
    /// The decision's clock (its `time` in the policy context), to the nanosecond.
    #[serde(with = "time::serde::rfc3339")]
    pub now: OffsetDateTime,
    #[serde(default)]
    pub shadow: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
    /// The history classes the decision read (those its policies name).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history_read: Vec<String>,
    /// The target as the decision saw it (the inventory in force then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asset: Option<AssetFacts>,
}

/// What the inventory in force said of a decision's target. An unknown target is decided as
/// tier0 and privileged, and recorded so.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssetFacts {
    pub known: bool,
    pub criticality: Criticality,
    pub privileged: bool,
}

impl AssetFacts {
    /// The target of `request` in `bundle`'s inventory.
    pub fn of(bundle: &Bundle, target: &TargetRef) -> AssetFacts {
        match bundle.inventory().get(target) {
            Some(a) => AssetFacts { known: true, criticality: a.criticality, privileged: a.privileged },
            None => AssetFacts { known: false, criticality: Criticality::Tier0, privileged: true },
        }
    }
}

/// Why a replayed decision may not be what the proposal would really have decided.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Inexact {
    pub request: String,
    pub why: String,
}

/// One request whose outcome the proposal changes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Changed {
    /// The `decision.made` entry that recorded the logged decision.
    pub seq: u64,
    pub request: String,
    pub time: String,
    pub agent: String,
    pub action: String,
    pub target: String,
    pub before: Outcome,
    pub after: Outcome,
    /// The proposal's caps on it (their codes).
    pub caps: Vec<CapCode>,
    /// The target is tier0 (in the proposed inventory, or in the one in force when it was
    /// decided, or its logged decision said so; an unknown target counts as tier0 and
    /// privileged, as the ladder treats it).
    pub tier0: bool,
    pub privileged: bool,
    /// Set when the replay cannot be exact for this request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inexact: Option<String>,
}

impl Changed {
    /// It would newly execute on a tier0 or privileged target.
    pub fn newly_sensitive(&self) -> bool {
        self.after == Outcome::Execute && self.before != Outcome::Execute && (self.tier0 || self.privileged)
    }
}

/// Per agent × action: outcomes as logged and as proposed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SimRow {
    pub agent: String,
    pub action: String,
    pub before: BTreeMap<Outcome, u64>,
    pub after: BTreeMap<Outcome, u64>,
    pub changed: u64,
}

/// Per approver role: decisions that would ask it, as logged and as proposed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RoleShift {
    pub role: String,
    pub before: u64,
    pub after: u64,
}

/// How many changed requests [`Simulation::changes`] lists (every count stays exact; the
/// newly sensitive executions are all listed).
pub const CHANGES_LISTED: usize = 1000;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Simulation {
    /// The proposed bundle's version.
    pub bundle_version: String,
    /// Entries read, and those in the window.
    pub entries: u64,
    pub in_window: u64,
    /// Decisions in the window decided again.
    pub replayed: u64,
    /// Decisions in the window logged without their facts (before Warden recorded them).
    pub unrecorded: u64,
    /// Replayed decisions that were made under the proposed bundle itself.
    pub same_bundle: u64,
    /// …and of those, how many the replay decided otherwise in any respect (outcome, levels,
    /// band, caps, policies, approval roles or quorum, shadow outcome, review): 0 unless the
    /// log is wrong.
    pub same_bundle_differing: u64,
    pub before: BTreeMap<Outcome, u64>,
    pub after: BTreeMap<Outcome, u64>,
    /// Requests whose outcome changes.
    pub changed: u64,
    pub rows: Vec<SimRow>,
    pub roles: Vec<RoleShift>,
    /// Every request that would newly execute on a tier0 or privileged target.
    pub newly_sensitive: Vec<Changed>,
    /// The first [`CHANGES_LISTED`] changed requests, in log order.
    pub changes: Vec<Changed>,
    /// Replays that cannot be exact, counted; the first [`CHANGES_LISTED`] listed.
    pub inexact: u64,
    pub inexact_listed: Vec<Inexact>,
}

/// A guard on a simulation (`--fail-on`): the proposal fails it when…
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guard {
    /// …any request would newly execute on a tier0 target.
    NewTier0Execute,
    /// …any request would newly execute on a privileged target.
    NewPrivilegedExecute,
    /// …any request would newly execute at all.
    NewExecute,
    /// …any outcome changes.
    AnyChange,
}

impl Guard {
    pub const ALL: [(&'static str, Guard); 4] = [
        ("new-tier0-execute", Guard::NewTier0Execute),
        ("new-privileged-execute", Guard::NewPrivilegedExecute),
        ("new-execute", Guard::NewExecute),
        ("any-change", Guard::AnyChange),
    ];

    pub fn parse(name: &str) -> Option<Guard> {
        Self::ALL.iter().find(|(n, _)| *n == name).map(|(_, g)| *g)
    }

    pub fn name(self) -> &'static str {
        Self::ALL.iter().find(|(_, g)| *g == self).map_or("", |(n, _)| n)
    }

    /// How many requests break this guard (`changes` holds only the first listed, so new
    /// executions are counted from the rows).
    pub fn broken(self, s: &Simulation) -> u64 {
        let new_execute = |c: &Changed| c.after == Outcome::Execute && c.before != Outcome::Execute;
        match self {
            Guard::NewTier0Execute => s.newly_sensitive.iter().filter(|c| c.tier0).count() as u64,
            Guard::NewPrivilegedExecute => s.newly_sensitive.iter().filter(|c| c.privileged).count() as u64,
            Guard::NewExecute => {
                if s.changes.len() as u64 == s.changed {
                    s.changes.iter().filter(|c| new_execute(c)).count() as u64
                } else {
                    // Not all listed: at least the rows' growth in executions.
                    let grown = |r: &SimRow| {
                        let get = |m: &BTreeMap<Outcome, u64>| m.get(&Outcome::Execute).copied().unwrap_or(0);
                        get(&r.after).saturating_sub(get(&r.before))
                    };
                    s.rows
                        .iter()
                        .map(grown)
                        .sum::<u64>()
                        .max(s.changes.iter().filter(|c| new_execute(c)).count() as u64)
                }
            }
            Guard::AnyChange => s.changed,
        }
    }
}

/// Decides the window's logged requests again under `proposed`. `entries` is the whole log in
/// order (the history before the window counts).
pub fn simulate(
    entries: impl IntoIterator<Item = Entry>,
    window: Window,
    filter: &Filter,
    proposed: &Bundle,
) -> Simulation {
    let mut sim = Simulation {
        bundle_version: proposed.version().to_string(),
        entries: 0,
        in_window: 0,
        replayed: 0,
        unrecorded: 0,
        same_bundle: 0,
        same_bundle_differing: 0,
        before: BTreeMap::new(),
        after: BTreeMap::new(),
        changed: 0,
        rows: Vec::new(),
        roles: Vec::new(),
        newly_sensitive: Vec::new(),
        changes: Vec::new(),
        inexact: 0,
        inexact_listed: Vec::new(),
    };
    // Requests logged and not yet decided (the decision follows in the same commit).
    let mut requested: HashMap<String, Value> = HashMap::new();
    // Per task, per action class: succeeded executions so far.
    let mut done: HashMap<String, BTreeMap<String, u32>> = HashMap::new();
    let mut rows: BTreeMap<(String, String), SimRow> = BTreeMap::new();
    let mut roles: BTreeMap<String, RoleShift> = BTreeMap::new();
    let keep = |agent: &str, action: &str| filter.keeps(agent, action);
    for e in entries {
        sim.entries += 1;
        let ev = &e.event;
        match ev.kind {
            EventType::ActionRequested if ev.actor.kind == ActorKind::Agent => {
                if let Some(r) = &ev.request {
                    requested.insert(r.clone(), ev.data.clone());
                }
                continue;
            }
            EventType::ExecutionSucceeded => {
                if let (Some(task), Some(action)) = (&ev.task, &ev.action) {
                    let n = done.entry(task.clone()).or_default().entry(action.clone()).or_default();
                    *n = n.saturating_add(1);
                }
                continue;
            }
            EventType::DecisionMade => {}
            _ => continue,
        }
        let Some(asked) = ev.request.as_ref().and_then(|r| requested.remove(r)) else { continue };
        let Ok(t) = e.timestamp() else { continue };
        if !window.holds(t) {
            continue;
        }
        sim.in_window += 1;
        let agent = ev.actor.id.as_str();
        let action = ev.action.as_deref().unwrap_or_default();
        if !keep(agent, action) {
            continue;
        }
        let logged = &ev.data["decision"];
        let Some(before) = logged.get("outcome").cloned().and_then(|o| serde_json::from_value::<Outcome>(o).ok())
        else {
            continue;
        };
        let (Some(facts), Some(request)) = (
            ev.data.get("facts").cloned().and_then(|f| serde_json::from_value::<RecordedFacts>(f).ok()),
            request_of(ev.task.as_deref(), action, &asked),
        ) else {
            sim.unrecorded += 1;
            continue;
        };
        let id = ev.request.clone().unwrap_or_default();
        let mut task = facts.task.clone();
        if let Some(t) = &mut task {
            // What the logged decision read, as it read it; the rest as the log counts it.
            let mut history = done.get(&t.id).cloned().unwrap_or_default();
            for class in &facts.history_read {
                match t.history.get(class) {
                    Some(n) => history.insert(class.clone(), *n),
                    None => history.remove(class),
                };
            }
            t.history = history;
        }
        let input = DecisionInput {
            agent,
            agent_status: facts.agent_status,
            request: &request,
            task: task.as_ref(),
            budget: facts.budget,
            halts: &facts.halts,
            now: facts.now,
            shadow: facts.shadow,
            via: facts.via.as_deref(),
        };
        let after = decide(proposed, &input);
        sim.replayed += 1;
        if logged.get("bundle_version").and_then(Value::as_str) == Some(proposed.version()) {
            sim.same_bundle += 1;
            if !differences(logged, &after).is_empty() {
                sim.same_bundle_differing += 1;
            }
        }
        let inexact = inexact(proposed, agent, action, &facts).or_else(|| secret_read(proposed, &request));
        if let Some(why) = &inexact {
            sim.inexact += 1;
            if sim.inexact_listed.len() < CHANGES_LISTED {
                sim.inexact_listed.push(Inexact { request: id.clone(), why: why.clone() });
            }
        }
        *sim.before.entry(before).or_default() += 1;
        *sim.after.entry(after.outcome).or_default() += 1;
        let row = rows.entry((agent.to_string(), action.to_string())).or_insert_with(|| SimRow {
            agent: agent.to_string(),
            action: action.to_string(),
            before: BTreeMap::new(),
            after: BTreeMap::new(),
            changed: 0,
        });
        *row.before.entry(before).or_default() += 1;
        *row.after.entry(after.outcome).or_default() += 1;
        let role_names = |d: &Value| -> Vec<String> {
            d["approval"]["roles"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        };
        if before == Outcome::RequireApproval {
            for role in role_names(logged) {
                roles.entry(role.clone()).or_insert_with(|| RoleShift { role, before: 0, after: 0 }).before += 1;
            }
        }
        if after.outcome == Outcome::RequireApproval
            && let Some(a) = &after.approval
        {
            for role in &a.roles {
                roles
                    .entry(role.clone())
                    .or_insert_with(|| RoleShift { role: role.clone(), before: 0, after: 0 })
                    .after += 1;
            }
        }
        if before == after.outcome {
            continue;
        }
        sim.changed += 1;
        row.changed += 1;
        let logged_cap = |code: &str| {
            logged["caps"].as_array().into_iter().flatten().any(|c| c.get("code").and_then(Value::as_str) == Some(code))
        };
        // Sensitive by the proposed inventory or by the one in force when it was decided: a
        // proposal that demotes an asset does not make its new executions less sensitive.
        let now = AssetFacts::of(proposed, &request.target);
        let then = facts.asset.unwrap_or(now);
        let tier0 = now.criticality == Criticality::Tier0 || then.criticality == Criticality::Tier0;
        let privileged = now.privileged || then.privileged;
        let changed = Changed {
            seq: e.seq,
            request: id,
            time: e.time.clone(),
            agent: agent.to_string(),
            action: action.to_string(),
            target: request.target.to_string(),
            before,
            after: after.outcome,
            caps: after.caps.iter().map(|c| c.code).collect(),
            tier0: tier0 || logged_cap("tier0_target"),
            privileged: privileged || logged_cap("privileged_target"),
            inexact,
        };
        if changed.newly_sensitive() {
            sim.newly_sensitive.push(changed.clone());
        }
        if sim.changes.len() < CHANGES_LISTED {
            sim.changes.push(changed);
        }
    }
    sim.rows = rows.into_values().collect();
    sim.roles = roles.into_values().collect();
    sim
}

/// The request an `action.requested` entry records.
fn request_of(task: Option<&str>, action: &str, data: &Value) -> Option<ActionRequest> {
    let mut body = serde_json::Map::new();
    body.insert("task".into(), Value::String(task?.to_string()));
    body.insert("action".into(), Value::String(action.to_string()));
    for field in ["target", "params", "confidence", "rationale", "evidence", "idempotency_key", "inputs"] {
        if let Some(v) = data.get(field).filter(|v| !v.is_null()) {
            body.insert(field.into(), v.clone());
        }
    }
    let target: TargetRef = body.get("target")?.as_str()?.parse().ok()?;
    body.insert("target".into(), Value::String(target.to_string()));
    serde_json::from_value(Value::Object(body)).ok()
}

/// Why the replay of this decision under `proposed` cannot be exact, if it cannot.
fn inexact(proposed: &Bundle, agent: &str, action: &str, facts: &RecordedFacts) -> Option<String> {
    let g = proposed.agent(agent)?;
    let (per_hour, targets) = g.budget_limits(action);
    let short =
        |limit: Option<u32>, used: u64, counted: u64| limit.is_some_and(|l| u64::from(l) > counted && used >= counted);
    if short(per_hour, u64::from(facts.budget.executions), facts.counted.executions) {
        return Some(format!(
            "the proposal allows {} executions an hour; the log counted this agent's only to {}",
            per_hour.unwrap_or_default(),
            facts.counted.executions
        ));
    }
    if short(targets, u64::from(facts.budget.distinct_targets), facts.counted.distinct_targets) {
        return Some(format!(
            "the proposal allows {} distinct targets an hour; the log counted this agent's only to {}",
            targets.unwrap_or_default(),
            facts.counted.distinct_targets
        ));
    }
    None
}

/// Why a request's replay may miss what a rule reads of a secret param: the log holds only its
/// commitment, and a hand-written rule reads the param (by `has`, `.` or index, however spelt —
/// the policy analysis sees the decoded name — or `context.params` whole).
fn secret_read(proposed: &Bundle, request: &ActionRequest) -> Option<String> {
    let class = proposed.catalog().get(&request.action)?;
    class
        .params
        .iter()
        .filter(|p| p.secret && request.params.contains_key(&p.name))
        .find(|p| proposed.reads_param(&p.name))
        .map(|p| format!("a rule reads secret param `{}`, which the log holds only as its commitment", p.name))
}

/// Where a logged decision and a new one differ, by field name.
pub fn differences(logged: &Value, new: &Decision) -> Vec<&'static str> {
    let new = serde_json::to_value(new).unwrap_or(Value::Null);
    let mut out = Vec::new();
    for field in ["outcome", "granted_level", "effective_level", "band", "review", "shadow_outcome"] {
        if logged.get(field) != new.get(field) {
            out.push(field);
        }
    }
    let codes =
        |d: &Value| -> Vec<Value> { d["caps"].as_array().into_iter().flatten().map(|c| c["code"].clone()).collect() };
    if codes(logged) != codes(&new) {
        out.push("caps");
    }
    let ids =
        |d: &Value| -> Vec<Value> { d["policies"].as_array().into_iter().flatten().map(|p| p["id"].clone()).collect() };
    if ids(logged) != ids(&new) {
        out.push("policies");
    }
    for field in ["roles", "quorum"] {
        if logged["approval"].get(field) != new["approval"].get(field) {
            out.push(if field == "roles" { "approval roles" } else { "approval quorum" });
        }
    }
    out
}

/// `execute 3 → 5, deny 2 → 0`: every outcome either side has, most permissive first.
pub fn shift_text(before: &BTreeMap<Outcome, u64>, after: &BTreeMap<Outcome, u64>) -> String {
    let mut outcomes: Vec<&Outcome> = before.keys().chain(after.keys()).collect();
    outcomes.sort_unstable();
    outcomes.dedup();
    let n = |m: &BTreeMap<Outcome, u64>, o: &Outcome| m.get(o).copied().unwrap_or(0);
    let parts: Vec<String> = outcomes.iter().rev().map(|o| format!("{o} {} → {}", n(before, o), n(after, o))).collect();
    if parts.is_empty() { "none".into() } else { parts.join(", ") }
}
