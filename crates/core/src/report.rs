//! Reports computed from the audit log alone (DESIGN §13), so an auditor holding the log can
//! recompute every figure: pure functions of the entries, no store, no clock.
//!
//! [`autonomy`]: per agent × action, the track record — requests by outcome and band,
//! executions, rollbacks, breaker trips, approvals and how long humans took, how often humans
//! approved what the agent asked (agreement, with a 95 % Wilson interval), how well its claimed
//! confidence matched human verdicts and outcomes (a reliability table, expected calibration
//! error, Brier score) — and a recommendation (promote, hold, demote) from stated [`Rules`],
//! never applied by Warden. Beside it, the approvers' load and signs of fatigue.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;
use serde_json::Value;
use time::OffsetDateTime;

use crate::audit::entry::{ActorKind, Entry, EventType};

/// The rules a recommendation follows. Stated in every report, so a reader knows what "promote"
/// meant.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rules {
    /// Fewer decided approvals than this is not enough evidence either way (on agreement).
    pub min_decided: u64,
    /// Promote when agreement is at least this (and nothing went wrong).
    pub promote_agreement: f64,
    /// Demote when even the interval's upper bound is below this.
    pub demote_agreement: f64,
    /// A decision faster than this many seconds is counted as a quick one (fatigue).
    pub quick_decision_secs: f64,
}

impl Default for Rules {
    fn default() -> Self {
        Rules { min_decided: 20, promote_agreement: 0.98, demote_agreement: 0.80, quick_decision_secs: 5.0 }
    }
}

/// Which entries count: those whose time is in `[from, to)` (either bound open).
#[derive(Debug, Clone, Copy, Default)]
pub struct Window {
    pub from: Option<OffsetDateTime>,
    pub to: Option<OffsetDateTime>,
}

impl Window {
    pub(crate) fn holds(&self, t: OffsetDateTime) -> bool {
        self.from.is_none_or(|f| t >= f) && self.to.is_none_or(|to| t < to)
    }
}

/// Which rows the report keeps.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub agent: Option<String>,
    pub action: Option<String>,
    /// Only these agents (the console shows a person the agents they oversee).
    pub agents: Option<std::collections::BTreeSet<String>>,
}

impl Filter {
    pub fn keeps(&self, agent: &str, action: &str) -> bool {
        self.agent.as_deref().is_none_or(|a| a == agent)
            && self.action.as_deref().is_none_or(|a| a == action)
            && self.agents.as_ref().is_none_or(|set| set.contains(agent))
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Executions {
    pub succeeded: u64,
    pub failed: u64,
    pub unknown: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Approvals {
    pub approved: u64,
    pub rejected: u64,
    pub expired: u64,
    pub cancelled: u64,
    /// Seconds from the approval's request to its decision (approved or rejected).
    pub median_secs: Option<f64>,
    pub p90_secs: Option<f64>,
    /// Who decided, and how many.
    pub deciders: BTreeMap<String, u64>,
}

/// How often humans approved what the agent asked: `approved / (approved + rejected)`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Agreement {
    pub decided: u64,
    pub rate: f64,
    /// The 95 % Wilson score interval.
    pub low: f64,
    pub high: f64,
}

/// One bin of a reliability table: requests whose claimed confidence fell in `[from, to)`
/// (the last bin includes 1.0).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Bin {
    pub from: f64,
    pub to: f64,
    pub n: u64,
    pub mean_confidence: f64,
    /// The share that came out well (approved; executed and not rolled back).
    pub observed: f64,
}

/// Claimed confidence against what happened.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Calibration {
    pub samples: u64,
    pub bins: Vec<Bin>,
    /// Expected calibration error: Σ n_b / N · |observed_b − mean_confidence_b|.
    pub ece: Option<f64>,
    /// Mean of (confidence − outcome)², outcome 1 or 0.
    pub brier: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Recommendation {
    /// `promote`, `hold` or `demote`.
    pub verdict: &'static str,
    pub reasons: Vec<String>,
    /// The granted level most of the window's decisions had.
    pub level: Option<u8>,
    pub proposed_level: Option<u8>,
    /// The grant that decided it (`file:line`), when the log names one.
    pub grant: Option<String>,
    /// Audit entries (sequence numbers) that prove it: the decisive approvals, rollbacks,
    /// unknown executions and trips (at most 20).
    pub evidence: Vec<u64>,
}

/// One agent × action.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Row {
    pub agent: String,
    pub action: String,
    /// Requests by decision outcome (`execute`, `require_approval`, `advise`, `deny`).
    pub requests: BTreeMap<String, u64>,
    /// Requests by confidence band.
    pub bands: BTreeMap<String, u64>,
    /// Shadow-mode decisions by what they would have done.
    pub shadow: BTreeMap<String, u64>,
    /// The shadow decisions set against what humans then did: the next human verdict in the
    /// window on the same action on the same target (any agent's request).
    pub shadow_humans: ShadowHumans,
    pub executions: Executions,
    pub rollbacks: u64,
    pub breaker_trips: u64,
    pub approvals: Approvals,
    pub agreement: Option<Agreement>,
    /// Against human verdicts (approved 1, rejected 0).
    pub calibration_verdicts: Calibration,
    /// Against outcomes of what executed (succeeded and not rolled back 1; failed, unknown or
    /// rolled back 0).
    pub calibration_outcomes: Calibration,
    pub recommendation: Recommendation,
}

/// What humans did after a shadow decision (which would have executed or asked): the next
/// human verdict on the same action on the same target. `approved`: humans agreed it should be
/// done; `rejected`: they refused what the agent would have done or asked; `unseen`: no human
/// verdict on it in the window.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ShadowHumans {
    pub approved: u64,
    pub rejected: u64,
    pub unseen: u64,
}

/// One approver's load.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Load {
    pub approver: String,
    pub decisions: u64,
    pub approved: u64,
    pub per_hour: Option<f64>,
    pub median_secs: Option<f64>,
    /// Decisions faster than [`Rules::quick_decision_secs`].
    pub quick: u64,
    /// Signs of fatigue, in words.
    pub flags: Vec<String>,
}

/// One role's load: approvals that waited for it, votes cast in it, approvals that expired
/// waiting for it.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RoleLoad {
    pub role: String,
    pub asked: u64,
    pub votes: u64,
    pub expired: u64,
    pub votes_per_hour: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AutonomyReport {
    pub rules: Rules,
    /// The entries read, and how many fell in the window.
    pub entries: u64,
    pub in_window: u64,
    pub rows: Vec<Row>,
    pub approvers: Vec<Load>,
    /// Per role: what waited for it, what it decided, what expired.
    pub roles: Vec<RoleLoad>,
    /// The outcome mix over time: per UTC day of the window, the kept rows' decisions by
    /// outcome (days without a decision left out).
    pub days: Vec<DayMix>,
}

/// One day's decisions by outcome.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DayMix {
    /// `YYYY-MM-DD` (UTC).
    pub day: String,
    pub outcomes: BTreeMap<String, u64>,
}

/// What the report keeps of every request in the log (a million requests are a million of
/// these): names shared, not copied.
#[derive(Debug, Default)]
struct Request {
    agent: std::rc::Rc<str>,
    action: std::rc::Rc<str>,
    confidence: f64,
    /// Its decision was `execute`.
    executes: bool,
    executed: Option<bool>,
    rolled_back: bool,
}

/// One shared copy of each agent and action name.
fn intern(names: &mut HashMap<String, std::rc::Rc<str>>, name: &str) -> std::rc::Rc<str> {
    if let Some(n) = names.get(name) {
        return n.clone();
    }
    let n: std::rc::Rc<str> = name.into();
    names.insert(name.to_string(), n.clone());
    n
}

#[derive(Debug)]
struct Pending {
    request: String,
    asked: OffsetDateTime,
    roles: Vec<String>,
}

#[derive(Debug, Default)]
struct Acc {
    row: Option<Row>,
    decide_secs: Vec<f64>,
    verdicts: Vec<(f64, bool)>,
    levels: BTreeMap<u8, u64>,
    grants: BTreeMap<u8, String>,
}

fn row(agent: &str, action: &str) -> Row {
    Row {
        agent: agent.to_string(),
        action: action.to_string(),
        requests: BTreeMap::new(),
        bands: BTreeMap::new(),
        shadow: BTreeMap::new(),
        shadow_humans: ShadowHumans::default(),
        executions: Executions::default(),
        rollbacks: 0,
        breaker_trips: 0,
        approvals: Approvals::default(),
        agreement: None,
        calibration_verdicts: Calibration::default(),
        calibration_outcomes: Calibration::default(),
        recommendation: Recommendation {
            verdict: "hold",
            reasons: Vec::new(),
            level: None,
            proposed_level: None,
            grant: None,
            evidence: Vec::new(),
        },
    }
}

/// The 95 % Wilson score interval of `k` successes in `n` trials.
pub fn wilson(k: u64, n: u64) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let (n, p, z) = (n as f64, k as f64 / n as f64, 1.959_963_984_540_054_f64);
    let denom = 1.0 + z * z / n;
    let center = (p + z * z / (2.0 * n)) / denom;
    let half = z * (p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt() / denom;
    ((center - half).max(0.0), (center + half).min(1.0))
}

/// The value at quantile `q` (nearest rank) of `xs`.
fn quantile(xs: &mut [f64], q: f64) -> Option<f64> {
    if xs.is_empty() {
        return None;
    }
    xs.sort_by(f64::total_cmp);
    let rank = ((q * xs.len() as f64).ceil() as usize).clamp(1, xs.len());
    Some(xs[rank - 1])
}

/// A reliability table in ten bins of width 0.1, with its ECE and Brier score.
pub fn calibration(samples: &[(f64, bool)]) -> Calibration {
    if samples.is_empty() {
        return Calibration::default();
    }
    let n = samples.len() as f64;
    let mut bins = Vec::new();
    let mut ece = 0.0;
    for b in 0..10 {
        let (from, to) = (f64::from(b) / 10.0, f64::from(b + 1) / 10.0);
        let inside: Vec<&(f64, bool)> =
            samples.iter().filter(|(c, _)| *c >= from && (*c < to || (b == 9 && *c <= 1.0))).collect();
        if inside.is_empty() {
            continue;
        }
        let k = inside.len() as f64;
        let mean_confidence = inside.iter().map(|(c, _)| c).sum::<f64>() / k;
        let observed = inside.iter().filter(|(_, y)| *y).count() as f64 / k;
        ece += k / n * (observed - mean_confidence).abs();
        bins.push(Bin { from, to, n: inside.len() as u64, mean_confidence, observed });
    }
    let brier = samples.iter().map(|(c, y)| (c - if *y { 1.0 } else { 0.0 }).powi(2)).sum::<f64>() / n;
    Calibration { samples: samples.len() as u64, bins, ece: Some(ece), brier: Some(brier) }
}

fn text<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or_default()
}

/// The autonomy report of `entries` (in log order) within `window`, for the rows `filter`
/// keeps, under `rules`.
pub fn autonomy(
    entries: impl IntoIterator<Item = Entry>,
    window: Window,
    filter: &Filter,
    rules: &Rules,
) -> AutonomyReport {
    let mut requests: HashMap<String, Request> = HashMap::new();
    let mut names: HashMap<String, std::rc::Rc<str>> = HashMap::new();
    let mut pending: HashMap<String, Pending> = HashMap::new();
    let mut accs: BTreeMap<(String, String), Acc> = BTreeMap::new();
    // Per approver: (decision time, seconds taken, approved).
    let mut approvers: BTreeMap<String, Vec<(OffsetDateTime, f64, bool)>> = BTreeMap::new();
    let mut roles: BTreeMap<String, RoleLoad> = BTreeMap::new();
    let mut days: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    // Shadow decisions waiting for a human verdict on their action × target, by row; and what
    // each approval is about.
    let mut shadow_wait: HashMap<(String, String), Vec<(String, String)>> = HashMap::new();
    let mut about: HashMap<String, (String, String)> = HashMap::new();
    let (mut total, mut in_window) = (0, 0);
    let mut span: Option<(OffsetDateTime, OffsetDateTime)> = None;
    let keep = |agent: &str, action: &str| filter.keeps(agent, action);
    for e in entries {
        total += 1;
        let Ok(t) = e.timestamp() else { continue };
        let e = &e;
        let ev = &e.event;
        let data = &ev.data;
        let request = ev.request.clone().unwrap_or_default();
        // What every request is, whenever it was made: later events in the window refer to it.
        if ev.kind == EventType::ActionRequested && ev.actor.kind == ActorKind::Agent {
            let r = Request {
                agent: intern(&mut names, &ev.actor.id),
                action: intern(&mut names, ev.action.as_deref().unwrap_or_default()),
                confidence: data.get("confidence").and_then(Value::as_f64).unwrap_or(0.0),
                ..Request::default()
            };
            requests.insert(request.clone(), r);
        }
        if !window.holds(t) {
            continue;
        }
        in_window += 1;
        span = Some(span.map_or((t, t), |(a, b)| (a.min(t), b.max(t))));
        // Human verdicts, whichever agent asked: they answer the shadow decisions that wait on
        // the same action × target.
        match ev.kind {
            EventType::ApprovalRequested => {
                let target = text(data, "target").to_string();
                about.insert(text(data, "approval").to_string(), (ev.action.clone().unwrap_or_default(), target));
            }
            EventType::ApprovalGranted | EventType::ApprovalRejected
                if ev.actor.kind == ActorKind::User
                    && (ev.kind == EventType::ApprovalRejected || text(data, "state") == "approved") =>
            {
                if let Some(key) = about.get(text(data, "approval"))
                    && let Some(waiting) = shadow_wait.remove(key)
                {
                    for row_key in waiting {
                        if let Some(row) = accs.get_mut(&row_key).and_then(|a| a.row.as_mut()) {
                            if ev.kind == EventType::ApprovalGranted {
                                row.shadow_humans.approved += 1;
                            } else {
                                row.shadow_humans.rejected += 1;
                            }
                        }
                    }
                }
            }
            _ => {}
        }
        let Some(r) = requests.get_mut(&request) else {
            if ev.kind == EventType::ApprovalExpired
                && let Some(p) = pending.remove(text(data, "approval"))
            {
                for role in p.roles {
                    roles.entry(role).or_default().expired += 1;
                }
            }
            continue;
        };
        if !keep(&r.agent, &r.action) {
            continue;
        }
        let acc = accs.entry((r.agent.to_string(), r.action.to_string())).or_default();
        let row = acc.row.get_or_insert_with(|| self::row(&r.agent, &r.action));
        match ev.kind {
            EventType::DecisionMade => {
                let d = &data["decision"];
                let outcome = text(d, "outcome").to_string();
                *row.requests.entry(outcome.clone()).or_default() += 1;
                let day = e.time.get(..10).unwrap_or_default().to_string();
                *days.entry(day).or_default().entry(outcome.clone()).or_default() += 1;
                *row.bands.entry(text(d, "band").to_string()).or_default() += 1;
                if let Some(s) = d.get("shadow_outcome").and_then(Value::as_str) {
                    *row.shadow.entry(s.to_string()).or_default() += 1;
                    shadow_wait
                        .entry((r.action.to_string(), text(data, "target").to_string()))
                        .or_default()
                        .push((r.agent.to_string(), r.action.to_string()));
                }
                if let Some(level) = d.get("granted_level").and_then(Value::as_u64).and_then(|l| u8::try_from(l).ok()) {
                    *acc.levels.entry(level).or_default() += 1;
                    if let Some(p) = d["policies"].get(0) {
                        acc.grants.entry(level).or_insert_with(|| format!("{}:{}", text(p, "file"), p["line"]));
                    }
                }
                r.executes = outcome == "execute";
            }
            EventType::ApprovalRequested if data["folded"] != Value::Bool(true) => {
                let named: Vec<String> = data["roles"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect();
                for role in &named {
                    roles.entry(role.clone()).or_default().asked += 1;
                }
                pending.insert(
                    text(data, "approval").to_string(),
                    Pending { request: request.clone(), asked: t, roles: named },
                );
            }
            EventType::ApprovalGranted | EventType::ApprovalRejected => {
                // Each vote is an entry of its own (the approval's state `pending` until the
                // quorum is met): every voter decided, at the vote's time.
                let approved = ev.kind == EventType::ApprovalGranted;
                let approval = text(data, "approval");
                let Some(p) = pending.get(approval).filter(|p| p.request == request) else { continue };
                let secs = (t - p.asked).as_seconds_f64();
                *row.approvals.deciders.entry(ev.actor.id.clone()).or_default() += 1;
                if let Some(role) = data.get("role").and_then(Value::as_str) {
                    roles.entry(role.to_string()).or_default().votes += 1;
                }
                approvers.entry(ev.actor.id.clone()).or_default().push((t, secs, approved));
                if approved && text(data, "state") != "approved" {
                    continue; // a vote short of the quorum
                }
                pending.remove(approval);
                acc.decide_secs.push(secs);
                acc.verdicts.push((r.confidence, approved));
                if approved {
                    row.approvals.approved += 1;
                } else {
                    row.approvals.rejected += 1;
                }
                if row.recommendation.evidence.len() < 20 {
                    row.recommendation.evidence.push(e.seq);
                }
            }
            EventType::ApprovalExpired | EventType::ApprovalCancelled => {
                if let Some(p) = pending.remove(text(data, "approval")) {
                    if ev.kind == EventType::ApprovalExpired {
                        row.approvals.expired += 1;
                        for role in p.roles {
                            roles.entry(role).or_default().expired += 1;
                        }
                    } else {
                        row.approvals.cancelled += 1;
                    }
                }
            }
            EventType::ExecutionSucceeded => {
                row.executions.succeeded += 1;
                r.executed = Some(true);
            }
            EventType::ExecutionFailed | EventType::ExecutionUnknown => {
                if ev.kind == EventType::ExecutionFailed {
                    row.executions.failed += 1;
                } else {
                    row.executions.unknown += 1;
                    row.recommendation.evidence.push(e.seq);
                }
                r.executed = Some(false);
            }
            EventType::RollbackSucceeded => {
                row.rollbacks += 1;
                r.rolled_back = true;
                row.recommendation.evidence.push(e.seq);
            }
            EventType::BreakerTripped => {
                row.breaker_trips += 1;
                row.recommendation.evidence.push(e.seq);
            }
            _ => {}
        }
    }

    // Outcomes of what was decided to execute on its own, per row.
    let mut outcomes: BTreeMap<(String, String), Vec<(f64, bool)>> = BTreeMap::new();
    for r in requests.values() {
        if r.executes
            && let Some(ok) = r.executed
        {
            outcomes
                .entry((r.agent.to_string(), r.action.to_string()))
                .or_default()
                .push((r.confidence, ok && !r.rolled_back));
        }
    }
    for waiting in shadow_wait.into_values() {
        for row_key in waiting {
            if let Some(row) = accs.get_mut(&row_key).and_then(|a| a.row.as_mut()) {
                row.shadow_humans.unseen += 1;
            }
        }
    }
    let rows = accs
        .into_iter()
        .filter_map(|(key, mut acc)| {
            let mut row = acc.row.take()?;
            row.approvals.median_secs = quantile(&mut acc.decide_secs, 0.5);
            row.approvals.p90_secs = quantile(&mut acc.decide_secs, 0.9);
            let decided = row.approvals.approved + row.approvals.rejected;
            if decided > 0 {
                let (low, high) = wilson(row.approvals.approved, decided);
                row.agreement =
                    Some(Agreement { decided, rate: row.approvals.approved as f64 / decided as f64, low, high });
            }
            acc.verdicts.sort_by(|a, b| a.0.total_cmp(&b.0));
            row.calibration_verdicts = calibration(&acc.verdicts);
            row.calibration_outcomes = calibration(outcomes.get(&key).map_or(&[][..], Vec::as_slice));
            let level = acc.levels.iter().max_by_key(|(l, n)| (**n, **l)).map(|(l, _)| *l);
            row.recommendation.level = level;
            row.recommendation.grant = level.and_then(|l| acc.grants.get(&l).cloned());
            recommend(&mut row, rules);
            Some(row)
        })
        .collect();
    // Rates over the window when it is bounded, else over the entries it holds.
    let hours = match (window.from, window.to) {
        (Some(a), Some(b)) => Some((b - a).as_seconds_f64() / 3600.0),
        _ => span.map(|(a, b)| (b - a).as_seconds_f64() / 3600.0),
    }
    .filter(|h| *h > 0.0);
    let approvers = approvers
        .into_iter()
        .map(|(approver, ds)| {
            let decisions = ds.len() as u64;
            let approved = ds.iter().filter(|d| d.2).count() as u64;
            let mut secs: Vec<f64> = ds.iter().map(|d| d.1).collect();
            let quick = secs.iter().filter(|s| **s < rules.quick_decision_secs).count() as u64;
            let mut flags = Vec::new();
            if decisions >= 10 && quick * 10 >= decisions * 3 {
                flags.push(format!("{quick} of {decisions} decisions in under {} s", rules.quick_decision_secs));
            }
            if decisions >= rules.min_decided && approved * 100 >= decisions * 99 {
                flags
                    .push(format!("approves {approved} of {decisions}: a human who approves everything is no control"));
            }
            Load {
                approver,
                decisions,
                approved,
                per_hour: hours.map(|h| decisions as f64 / h),
                median_secs: quantile(&mut secs, 0.5),
                quick,
                flags,
            }
        })
        .collect();
    let roles = roles
        .into_iter()
        .map(|(role, load)| RoleLoad { votes_per_hour: hours.map(|h| load.votes as f64 / h), role, ..load })
        .collect();
    let days = days.into_iter().map(|(day, outcomes)| DayMix { day, outcomes }).collect();
    AutonomyReport { rules: rules.clone(), entries: total, in_window, rows, approvers, roles, days }
}

/// Each row's proposed change as a unified diff of its grant's `level`, from the bundle's
/// `files` (`None` where the grant is not a guardrail's, or nothing is proposed).
pub fn diffs(report: &AutonomyReport, files: &[crate::SourceFile]) -> Vec<Option<String>> {
    report
        .rows
        .iter()
        .map(|r| {
            let rec = &r.recommendation;
            let (from, to) = (rec.level?, rec.proposed_level?);
            let (path, line) = rec.grant.as_deref()?.rsplit_once(':')?;
            let file = files.iter().find(|f| f.path == path)?;
            level_diff(path, &file.text, line.parse().ok()?, from, to)
        })
        .collect()
}

/// Promote, hold or demote, from `rules` and the row's evidence.
fn recommend(row: &mut Row, rules: &Rules) {
    let rec = &mut row.recommendation;
    let harm = row.rollbacks + row.executions.unknown + row.breaker_trips;
    let mut trouble = Vec::new();
    if row.rollbacks > 0 {
        trouble.push(format!("{} rolled back", row.rollbacks));
    }
    if row.executions.unknown > 0 {
        trouble.push(format!("{} executions of unknown outcome", row.executions.unknown));
    }
    if row.breaker_trips > 0 {
        trouble.push(format!("{} breaker trips", row.breaker_trips));
    }
    let decided = row.agreement.as_ref().map_or(0, |a| a.decided);
    if harm > 0 {
        rec.verdict = "demote";
        rec.reasons.push(format!("in the window: {}", trouble.join(", ")));
    } else if let Some(a) = row.agreement.as_ref().filter(|a| a.decided >= rules.min_decided) {
        if a.high < rules.demote_agreement {
            rec.verdict = "demote";
            rec.reasons.push(format!(
                "humans approved {:.1} % of {} decided (95 % interval {:.1}–{:.1} %), below {:.0} %",
                a.rate * 100.0,
                a.decided,
                a.low * 100.0,
                a.high * 100.0,
                rules.demote_agreement * 100.0
            ));
        } else if a.rate >= rules.promote_agreement && rec.level.is_some_and(|l| l <= 2) {
            rec.verdict = "promote";
            rec.reasons.push(format!(
                "humans approved {} of {} decided ({:.1} %, 95 % interval {:.1}–{:.1} %), at least {:.0} %; \
                 nothing rolled back, unknown or tripped",
                row.approvals.approved,
                a.decided,
                a.rate * 100.0,
                a.low * 100.0,
                a.high * 100.0,
                rules.promote_agreement * 100.0
            ));
        } else {
            rec.reasons.push(format!(
                "humans approved {:.1} % of {} decided: neither {:.0} % to promote nor below {:.0} % to demote",
                a.rate * 100.0,
                a.decided,
                rules.promote_agreement * 100.0,
                rules.demote_agreement * 100.0
            ));
        }
    } else {
        rec.reasons
            .push(format!("not enough evidence: {decided} decided approvals, the rules need {}", rules.min_decided));
    }
    rec.proposed_level = match rec.verdict {
        "promote" => rec.level.map(|l| l + 1),
        "demote" => rec.level.filter(|l| *l > 0).map(|l| l - 1),
        _ => None,
    };
    rec.evidence.truncate(20);
}

/// The change a recommendation proposes to a guardrail file, as a unified diff: the `level`
/// of the `[[action]]` table at `line` (1-based) of `path`, `from` → `to`. `None` when the
/// table or its level cannot be found.
pub fn level_diff(path: &str, text: &str, line: usize, from: u8, to: u8) -> Option<String> {
    let lines: Vec<&str> = text.lines().collect();
    let start = line.checked_sub(1)?;
    if !lines.get(start)?.trim_start().starts_with("[[action]]") {
        return None;
    }
    let at = (start + 1..lines.len())
        .take_while(|i| !lines[*i].trim_start().starts_with('['))
        .find(|i| lines[*i].split('=').next().is_some_and(|k| k.trim() == "level"))?;
    let old = lines[at];
    if old.split('=').nth(1).map(str::trim) != Some(&from.to_string()) {
        return None;
    }
    let new = old.replacen(&from.to_string(), &to.to_string(), 1);
    let ctx_from = start;
    let ctx: Vec<String> =
        (ctx_from..=at).map(|i| if i == at { format!("-{old}\n+{new}") } else { format!(" {}", lines[i]) }).collect();
    Some(format!(
        "--- a/{path}\n+++ b/{path}\n@@ -{0},{1} +{0},{1} @@\n{2}\n",
        ctx_from + 1,
        at - ctx_from + 1,
        ctx.join("\n")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_outcome_mix_is_counted_per_utc_day_for_the_kept_rows() {
        use crate::audit::entry::{Actor, Event};
        let agent = "spiffe://acme.example/soc/edr";
        let mk = |seq: u64, time: &str, kind: EventType, request: &str, agent: &str, data: serde_json::Value| Entry {
            seq,
            time: time.into(),
            event: Event::new(kind, Actor::agent(agent)).request(request).action("host.isolate").data(data),
        };
        let decided = |outcome: &str| serde_json::json!({"decision": {"outcome": outcome, "band": "autonomous"}});
        let log = vec![
            mk(
                0,
                "2026-11-30T23:59:59.999Z",
                EventType::ActionRequested,
                "a",
                agent,
                serde_json::json!({"confidence": 0.9}),
            ),
            mk(1, "2026-11-30T23:59:59.999Z", EventType::DecisionMade, "a", agent, decided("execute")),
            mk(
                2,
                "2026-12-01T00:00:00.000Z",
                EventType::ActionRequested,
                "b",
                agent,
                serde_json::json!({"confidence": 0.9}),
            ),
            mk(3, "2026-12-01T00:00:00.000Z", EventType::DecisionMade, "b", agent, decided("deny")),
            mk(
                4,
                "2026-12-01T08:00:00.000Z",
                EventType::ActionRequested,
                "c",
                agent,
                serde_json::json!({"confidence": 0.9}),
            ),
            mk(5, "2026-12-01T08:00:00.000Z", EventType::DecisionMade, "c", agent, decided("deny")),
            mk(
                6,
                "2026-12-01T09:00:00.000Z",
                EventType::ActionRequested,
                "d",
                "spiffe://x/other",
                serde_json::json!({}),
            ),
            mk(7, "2026-12-01T09:00:00.000Z", EventType::DecisionMade, "d", "spiffe://x/other", decided("execute")),
        ];
        let only = Filter { agent: Some(agent.into()), action: None, ..Default::default() };
        let r = autonomy(log, Window::default(), &only, &Rules::default());
        let days: Vec<(String, Vec<(String, u64)>)> =
            r.days.iter().map(|d| (d.day.clone(), d.outcomes.clone().into_iter().collect())).collect();
        assert_eq!(
            days,
            vec![
                ("2026-11-30".to_string(), vec![("execute".to_string(), 1)]),
                ("2026-12-01".to_string(), vec![("deny".to_string(), 2)]),
            ],
            "the other agent's decision is filtered out"
        );
    }

    #[test]
    fn wilson_matches_the_textbook() {
        // 0 of 0: nothing known.
        assert_eq!(wilson(0, 0), (0.0, 1.0));
        // 20 of 20: the lower bound is well below 1 (Wilson: 0.839).
        let (low, high) = wilson(20, 20);
        assert!((low - 0.8389).abs() < 1e-3 && high == 1.0, "{low} {high}");
        // 8 of 10: 0.490–0.943.
        let (low, high) = wilson(8, 10);
        assert!((low - 0.4902).abs() < 1e-3 && (high - 0.9433).abs() < 1e-3, "{low} {high}");
    }

    #[test]
    fn calibration_bins_ece_and_brier() {
        let c = calibration(&[(0.95, true), (0.95, false), (0.15, false), (1.0, true)]);
        assert_eq!(c.samples, 4);
        assert_eq!(c.bins.len(), 2);
        assert_eq!((c.bins[0].n, c.bins[1].n), (1, 3));
        let high = &c.bins[1];
        assert!((high.mean_confidence - (0.95 + 0.95 + 1.0) / 3.0).abs() < 1e-12);
        assert!((high.observed - 2.0 / 3.0).abs() < 1e-12);
        let ece = 0.25 * (0.0 - 0.15f64).abs() + 0.75 * (2.0 / 3.0 - (2.9 / 3.0f64)).abs();
        assert!((c.ece.unwrap() - ece).abs() < 1e-12);
        let brier = (0.05f64.powi(2) + 0.95f64.powi(2) + 0.15f64.powi(2) + 0.0) / 4.0;
        assert!((c.brier.unwrap() - brier).abs() < 1e-12);
        assert_eq!(calibration(&[]), Calibration::default());
    }

    #[test]
    fn a_level_diff_changes_exactly_the_grants_level() {
        let text =
            "[agent]\nid = \"x\"\n\n[[action]]\naction = \"a\"\nlevel = 2\n\n[[action]]\naction = \"b\"\nlevel = 2\n";
        let d = level_diff("agents/x.toml", text, 8, 2, 3).unwrap();
        assert_eq!(
            d,
            "--- a/agents/x.toml\n+++ b/agents/x.toml\n@@ -8,3 +8,3 @@\n [[action]]\n action = \"b\"\n-level = 2\n+level = 3\n"
        );
        assert!(level_diff("agents/x.toml", text, 8, 3, 4).is_none(), "the level is not the one the log says");
        assert!(level_diff("agents/x.toml", text, 2, 2, 3).is_none(), "not an [[action]] table");
        assert!(level_diff("agents/x.toml", text, 99, 2, 3).is_none());
    }
}
