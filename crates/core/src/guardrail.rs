//! Guardrail files (`agents/*.toml`): one per agent, the seven parts of an agent policy.
//!
//! 1. purpose & scope (`[agent]`, `[scope]`)
//! 2. allowed data & tools (`[data]`)
//! 3. actions with an autonomy level each (`[[action]]`)
//! 4. confidence thresholds (`[confidence]`)
//! 5. escalation rules (`[escalation]`)
//! 6. audit requirements (`[audit]`)
//! 7. rollback & emergency-stop rules (`[rollback]`)

use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::catalog::{Catalog, is_ident};
use crate::duration::Duration;
use crate::inventory::{Criticality, Environment};
use crate::source::{Problem, SourceFile, toml_problem};

/// Whether an agent's decisions take effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    #[default]
    Enforce,
    /// Decide and record, never execute or queue for a human.
    Shadow,
}

/// Confidence thresholds: at or above `autonomous` may execute; below `escalate` is only advice.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Thresholds {
    pub autonomous: f64,
    pub escalate: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self { autonomous: 0.90, escalate: 0.60 }
    }
}

/// Where a grant applies. An absent condition does not restrict.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Conditions {
    /// Only targets in these environments.
    pub environments: Option<Vec<Environment>>,
    /// Only targets at most this critical: `tier2` covers tier2 and tier3.
    pub max_criticality: Option<Criticality>,
    /// `false`: the grant does not cover privileged targets at all.
    pub allow_privileged: Option<bool>,
}

/// One `[[action]]` entry: an autonomy level for an action class, under conditions.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Grant {
    pub action: String,
    pub level: u8,
    pub conditions: Conditions,
    pub thresholds: Thresholds,
    pub approver_roles: Vec<String>,
    pub quorum: u32,
    pub max_per_hour: Option<u32>,
    /// 1-based line of the entry in its file.
    pub line: usize,
}

/// Escalation rules: who approves, how many, how fast, who is told.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Escalation {
    pub approver_roles: Vec<String>,
    /// Roles that must approve identity/secrets actions and actions on privileged targets.
    pub step_up_roles: Vec<String>,
    pub quorum: u32,
    pub privileged_quorum: u32,
    pub approval_expiry: Duration,
    pub notify: Vec<String>,
    pub incident_commander: String,
    /// The agent's owner may not approve its requests.
    pub separation_of_duties: bool,
    /// Requests of this agent that may wait for a human at once; beyond, a request that needs
    /// one is refused (`approval_backlog`): human attention is a budget.
    pub max_pending: u32,
    /// The same, per action of this agent.
    pub max_pending_per_action: u32,
}

/// Default `[escalation] max_pending`: more than a shift can read, fewer than a flood.
pub const DEFAULT_MAX_PENDING: u32 = 50;
/// Default `[escalation] max_pending_per_action`.
pub const DEFAULT_MAX_PENDING_PER_ACTION: u32 = 20;

/// What the audit trail must hold for this agent's requests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditRules {
    pub require_rationale: bool,
    pub min_evidence: u32,
    /// Flag every autonomous execution for post-hoc review.
    pub review_autonomous: bool,
    pub retention: Duration,
}

/// Rollback and emergency-stop rules.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RollbackRules {
    /// Irreversible actions never execute autonomously, not even at level 4.
    pub require_reversible_for_autonomy: bool,
    /// Executions per hour per action before the breaker trips.
    pub max_per_hour: Option<u32>,
    /// Distinct targets per hour per action before the breaker trips.
    pub max_distinct_targets: Option<u32>,
}

/// A loaded, checked guardrail file.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Guardrail {
    /// The agent's SPIFFE ID.
    pub id: String,
    /// Short name, used in policy ids (defaults to the file stem).
    pub name: String,
    pub owner: String,
    pub purpose: String,
    pub mode: Mode,
    pub task_sources: Vec<String>,
    pub environments: Option<Vec<Environment>>,
    /// `[data] allowed`: the data classes the agent may read (an action reading any other is
    /// denied, `data_not_allowed`).
    pub allowed_data: Vec<String>,
    /// The line of `[data] allowed` (0: the file has none, so nothing is allowed).
    pub allowed_data_line: usize,
    pub after_untrusted: Option<AfterUntrusted>,
    pub tools: Vec<String>,
    pub grants: Vec<Grant>,
    pub thresholds: Thresholds,
    pub escalation: Escalation,
    pub audit: AuditRules,
    pub rollback: RollbackRules,
    /// Bundle-relative path of the file.
    pub file: String,
    /// Line of `[agent]` `id`, for duplicate reports.
    pub id_line: usize,
}

impl Guardrail {
    /// The level `[data] after_untrusted` caps `category` at, if it covers it.
    pub fn data_after_untrusted(&self, category: crate::catalog::Category) -> Option<u8> {
        self.after_untrusted
            .as_ref()
            .filter(|a| a.categories.is_empty() || a.categories.contains(&category))
            .map(|a| a.max_level)
    }

    /// The largest budgets any decision on `action` can apply: per-hour executions (the
    /// largest per-action override, or the rollback rule) and distinct targets. A store need
    /// count no further than these to decide; `None`: unlimited, nothing to count.
    pub fn budget_limits(&self, action: &str) -> (Option<u32>, Option<u32>) {
        let overrides = self.grants.iter().filter(|g| g.action == action).filter_map(|g| g.max_per_hour);
        let per_hour = overrides.chain(self.rollback.max_per_hour).max();
        (per_hour, self.rollback.max_distinct_targets)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    agent: RawAgent,
    #[serde(default)]
    scope: RawScope,
    /// Optional for an agent that only advises (levels 0 and 1 call no tool).
    #[serde(default)]
    data: RawData,
    #[serde(default, rename = "action")]
    actions: Vec<Spanned<RawGrant>>,
    #[serde(default)]
    confidence: RawThresholds,
    /// Optional for an agent that only advises (nothing of it ever goes to a human).
    #[serde(default)]
    escalation: RawEscalation,
    #[serde(default)]
    audit: RawAudit,
    #[serde(default)]
    rollback: RawRollback,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAgent {
    id: Spanned<String>,
    name: Option<Spanned<String>>,
    owner: Spanned<String>,
    #[serde(default)]
    mode: Mode,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawScope {
    #[serde(default)]
    purpose: String,
    #[serde(default)]
    task_sources: Vec<String>,
    environments: Option<Vec<Environment>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawData {
    allowed: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    tools: Vec<String>,
    after_untrusted: Option<Spanned<RawAfterUntrusted>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAfterUntrusted {
    max_level: u8,
    #[serde(default)]
    categories: Vec<crate::catalog::Category>,
}

/// `[data] after_untrusted`: once the task holds untrusted input, actions of these categories
/// (all, when none is named) are capped at `max_level` (`untrusted_input`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AfterUntrusted {
    pub max_level: u8,
    pub categories: Vec<crate::catalog::Category>,
    pub line: usize,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawThresholds {
    autonomous: Option<Spanned<f64>>,
    escalate: Option<Spanned<f64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGrant {
    action: Spanned<String>,
    level: Spanned<i64>,
    environments: Option<Vec<Environment>>,
    max_criticality: Option<Criticality>,
    allow_privileged: Option<bool>,
    autonomous: Option<Spanned<f64>>,
    escalate: Option<Spanned<f64>>,
    approver_roles: Option<Vec<Spanned<String>>>,
    quorum: Option<Spanned<i64>>,
    max_per_hour: Option<Spanned<i64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawEscalation {
    approver_roles: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    step_up_roles: Vec<Spanned<String>>,
    quorum: Option<Spanned<i64>>,
    privileged_quorum: Option<Spanned<i64>>,
    approval_expiry: Option<Duration>,
    #[serde(default)]
    notify: Vec<String>,
    incident_commander: Option<Spanned<String>>,
    separation_of_duties: Option<bool>,
    max_pending: Option<Spanned<i64>>,
    max_pending_per_action: Option<Spanned<i64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    require_rationale: Option<bool>,
    min_evidence: Option<Spanned<i64>>,
    review_autonomous: Option<bool>,
    retention: Option<Duration>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRollback {
    require_reversible_for_autonomy: Option<bool>,
    max_per_hour: Option<Spanned<i64>>,
    max_distinct_targets: Option<Spanned<i64>>,
}

pub const DEFAULT_APPROVAL_EXPIRY: Duration = Duration::from_secs(15 * 60);

/// Checks a SPIFFE ID: `spiffe://` + a trust domain of `[a-z0-9._-]` + a non-empty path of
/// segments of `[A-Za-z0-9._-]`, no `.`/`..` segments.
pub fn is_spiffe_id(s: &str) -> bool {
    let Some(rest) = s.strip_prefix("spiffe://") else { return false };
    let Some((domain, path)) = rest.split_once('/') else { return false };
    let domain_ok = !domain.is_empty()
        && domain.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_'));
    let path_ok = path.split('/').all(|seg| {
        !seg.is_empty()
            && seg != "."
            && seg != ".."
            && seg.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
    });
    domain_ok && path_ok && s.len() <= 2048
}

/// A role name: lowercase words joined by `-` or `_`.
pub fn is_role(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some('a'..='z'))
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

struct Checker<'a> {
    file: &'a SourceFile,
    problems: Vec<Problem>,
}

impl Checker<'_> {
    fn at<T>(&mut self, v: &Spanned<T>, message: String) {
        self.problems.push(self.file.problem_at(Some(v.span()), message));
    }

    fn threshold(&mut self, v: Option<&Spanned<f64>>, name: &str, default: f64) -> f64 {
        match v {
            None => default,
            Some(s) => {
                let x = *s.get_ref();
                if !(0.0..=1.0).contains(&x) {
                    self.at(s, format!("threshold `{name}` must be between 0 and 1, not {x}"));
                }
                x
            }
        }
    }

    fn count(&mut self, v: Option<Spanned<i64>>, name: &str, min: i64) -> Option<u32> {
        let s = v?;
        let x = *s.get_ref();
        match u32::try_from(x) {
            Ok(n) if x >= min => Some(n),
            _ => {
                self.at(&s, format!("`{name}` must be a whole number of at least {min}, not {x}"));
                None
            }
        }
    }

    fn roles(&mut self, roles: &[Spanned<String>]) -> Vec<String> {
        for r in roles {
            if !is_role(r.get_ref()) {
                self.at(r, format!("role `{}` must be lowercase words joined by `-`", r.get_ref()));
            } else if matches!(r.get_ref().as_str(), "tool" | "admin") {
                // Approvals, step-ups and undos are people's operational decisions: a tool's
                // credential never decides, and administering Warden (which can add users)
                // must not also be the power to approve.
                self.at(r, format!("role `{}` may not approve, step up or command an incident", r.get_ref()));
            }
        }
        roles.iter().map(|r| r.get_ref().clone()).collect()
    }

    fn thresholds(&mut self, raw: RawThresholds, base: Thresholds) -> Thresholds {
        let t = Thresholds {
            autonomous: self.threshold(raw.autonomous.as_ref(), "autonomous", base.autonomous),
            escalate: self.threshold(raw.escalate.as_ref(), "escalate", base.escalate),
        };
        if t.escalate > t.autonomous {
            let at = raw.escalate.as_ref().or(raw.autonomous.as_ref());
            let p = self.file.problem_at(
                at.map(|s| s.span()),
                format!("threshold `escalate` ({}) is above `autonomous` ({})", t.escalate, t.autonomous),
            );
            self.problems.push(p);
        }
        t
    }
}

impl Guardrail {
    /// Parses and checks one guardrail file against the catalog.
    pub fn parse(file: &SourceFile, catalog: &Catalog) -> Result<Self, Vec<Problem>> {
        let raw: Raw = toml::from_str(&file.text).map_err(|e| vec![toml_problem(file, &e)])?;
        let mut c = Checker { file, problems: Vec::new() };

        let id = raw.agent.id.get_ref().clone();
        if !is_spiffe_id(&id) {
            c.at(&raw.agent.id, format!("agent id `{id}` is not a SPIFFE ID like `spiffe://acme.example/soc/triage`"));
        }
        let stem = file.path.rsplit('/').next().unwrap_or(&file.path);
        let stem = stem.strip_suffix(".toml").unwrap_or(stem).to_string();
        let name = match &raw.agent.name {
            Some(n) => n.get_ref().clone(),
            None => stem,
        };
        if !name.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_') || name.is_empty() {
            let span = raw.agent.name.as_ref().map(|n| n.span());
            c.problems.push(file.problem_at(span, format!("agent name `{name}` must be letters, digits, `-` or `_`")));
        }
        if raw.agent.owner.get_ref().trim().is_empty() {
            c.at(&raw.agent.owner, "agent `owner` must not be empty".into());
        }

        let thresholds = c.thresholds(raw.confidence, Thresholds::default());
        let esc = raw.escalation;
        // Grants at level 2 and above may go to humans (level 3 and 4 fall back to 2): only
        // then are approvers needed.
        let may_escalate = raw.actions.iter().any(|g| *g.get_ref().level.get_ref() >= 2);
        let approver_roles = esc.approver_roles.as_ref().map(|r| c.roles(r.get_ref())).unwrap_or_default();
        match &esc.approver_roles {
            Some(r) if approver_roles.is_empty() => c.at(r, "`approver_roles` must name at least one role".into()),
            None if may_escalate => c.problems.push(Problem::in_file(
                &file.path,
                "`[escalation] approver_roles` is needed: grants at level 2 or above can go to a human",
            )),
            _ => {}
        }
        let quorum = c.count(esc.quorum, "quorum", 1).unwrap_or(1);
        let incident_commander = match &esc.incident_commander {
            Some(r) => c.roles(std::slice::from_ref(r)).remove(0),
            None => "incident-commander".to_string(),
        };
        let mut step_up_roles = c.roles(&esc.step_up_roles);
        if step_up_roles.is_empty() {
            step_up_roles.push(incident_commander.clone());
        }
        let escalation = Escalation {
            approver_roles: approver_roles.clone(),
            step_up_roles,
            quorum,
            privileged_quorum: c.count(esc.privileged_quorum, "privileged_quorum", 1).unwrap_or(quorum),
            approval_expiry: esc.approval_expiry.unwrap_or(DEFAULT_APPROVAL_EXPIRY),
            notify: esc.notify,
            incident_commander,
            separation_of_duties: esc.separation_of_duties.unwrap_or(true),
            max_pending: c.count(esc.max_pending, "max_pending", 1).unwrap_or(DEFAULT_MAX_PENDING),
            max_pending_per_action: c
                .count(esc.max_pending_per_action, "max_pending_per_action", 1)
                .unwrap_or(DEFAULT_MAX_PENDING_PER_ACTION),
        };
        let audit = AuditRules {
            require_rationale: raw.audit.require_rationale.unwrap_or(true),
            min_evidence: c.count(raw.audit.min_evidence, "min_evidence", 0).unwrap_or(0),
            review_autonomous: raw.audit.review_autonomous.unwrap_or(false),
            retention: raw.audit.retention.unwrap_or(Duration::from_secs(400 * 86_400)),
        };
        let rollback = RollbackRules {
            require_reversible_for_autonomy: raw.rollback.require_reversible_for_autonomy.unwrap_or(false),
            max_per_hour: c.count(raw.rollback.max_per_hour, "max_per_hour", 1),
            max_distinct_targets: c.count(raw.rollback.max_distinct_targets, "max_distinct_targets", 1),
        };

        let mut grants = Vec::new();
        for g in raw.actions {
            let line = file.line_at(g.span().start);
            let g = g.into_inner();
            let action_id = g.action.get_ref().clone();
            match catalog.get(&action_id) {
                None => c.at(&g.action, format!("unknown action `{action_id}` (not in actions.toml)")),
                // Levels 0 and 1 call no tool; from level 2 on the action may run.
                Some(class) if *g.level.get_ref() >= 2 && !raw.data.tools.contains(&class.tool) => c.at(
                    &g.action,
                    format!(
                        "action `{action_id}` runs through tool `{}`, which `[data] tools` does not allow",
                        class.tool
                    ),
                ),
                Some(_) => {}
            }
            let level = *g.level.get_ref();
            if !(0..=4).contains(&level) {
                c.at(&g.level, format!("autonomy level must be 0 to 4, not {level}"));
            }
            let t = c.thresholds(RawThresholds { autonomous: g.autonomous, escalate: g.escalate }, thresholds);
            let roles = match &g.approver_roles {
                Some(r) if r.is_empty() => {
                    c.problems.push(file.problem_at(Some(g.action.span()), "`approver_roles` must not be empty"));
                    approver_roles.clone()
                }
                Some(r) => c.roles(r),
                None => approver_roles.clone(),
            };
            grants.push(Grant {
                action: action_id,
                level: level.clamp(0, 4) as u8,
                conditions: Conditions {
                    environments: g.environments,
                    max_criticality: g.max_criticality,
                    allow_privileged: g.allow_privileged,
                },
                thresholds: t,
                approver_roles: roles,
                quorum: c.count(g.quorum, "quorum", 1).unwrap_or(quorum),
                max_per_hour: c.count(g.max_per_hour, "max_per_hour", 1),
                line,
            });
        }

        for source in &raw.scope.task_sources {
            if source.trim().is_empty() {
                c.problems.push(Problem::in_file(&file.path, "`task_sources` must not hold empty names"));
            }
        }
        if let Some(a) = &raw.data.after_untrusted
            && a.get_ref().max_level > 3
        {
            c.problems.push(file.problem_at(
                Some(a.span()),
                format!("`[data] after_untrusted` `max_level` must be 0 to 3, not {}", a.get_ref().max_level),
            ));
        }
        if let Some(allowed) = &raw.data.allowed {
            crate::catalog::check_data_classes(file, allowed.get_ref(), "`[data] allowed`", &mut c.problems);
        }
        for tool in &raw.data.tools {
            if !is_ident(tool) {
                c.problems.push(Problem::in_file(&file.path, format!("tool `{tool}` must be a lowercase word")));
            }
        }

        if !c.problems.is_empty() {
            return Err(c.problems);
        }
        Ok(Self {
            id_line: file.line_at(raw.agent.id.span().start),
            id,
            name,
            owner: raw.agent.owner.into_inner(),
            purpose: raw.scope.purpose,
            mode: raw.agent.mode,
            task_sources: raw.scope.task_sources,
            environments: raw.scope.environments,
            allowed_data_line: raw.data.allowed.as_ref().map_or(0, |a| file.line_at(a.span().start)),
            after_untrusted: raw.data.after_untrusted.map(|a| {
                let line = file.line_at(a.span().start);
                let a = a.into_inner();
                AfterUntrusted { max_level: a.max_level, categories: a.categories, line }
            }),
            allowed_data: raw
                .data
                .allowed
                .map(|a| a.into_inner().into_iter().map(Spanned::into_inner).collect())
                .unwrap_or_default(),
            tools: raw.data.tools,
            grants,
            thresholds,
            escalation,
            audit,
            rollback,
            file: file.path.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) const CATALOG: &str = r#"
[[action]]
id = "host.isolate"
category = "containment"
risk = "high"
reversible = true
compensation = "host.release"
target = "host"
tool = "edr"
owner = "team:endpoint"

[[action]]
id = "host.release"
category = "containment"
risk = "medium"
reversible = true
compensation = "host.isolate"
target = "host"
tool = "edr"
owner = "team:endpoint"
"#;

    const GUARDRAIL: &str = r#"[agent]
id = "spiffe://acme.example/soc/edr"
owner = "team:endpoint"

[data]
tools = ["edr"]

[escalation]
approver_roles = ["soc-analyst"]

[[action]]
action = "host.isolate"
level = 3
max_criticality = "tier2"
"#;

    fn parse(text: &str) -> Result<Guardrail, Vec<Problem>> {
        let catalog = Catalog::parse(&SourceFile::new("actions.toml", CATALOG)).unwrap();
        Guardrail::parse(&SourceFile::new("agents/edr.toml", text), &catalog)
    }

    #[test]
    fn an_advisory_agent_needs_no_escalation_or_tools() {
        let advisory = "[agent]\nid = \"spiffe://acme.example/soc/adv\"\nowner = \"team:x\"\n\n\
                        [[action]]\naction = \"host.isolate\"\nlevel = 1\n\n[[action]]\naction = \"host.release\"\nlevel = 0\n";
        let g = parse(advisory).unwrap();
        assert!(g.escalation.approver_roles.is_empty() && g.tools.is_empty());
        // From level 2 on, a human may be asked and the tool may be called: both are needed.
        let errs = parse(&advisory.replace("level = 1", "level = 2")).unwrap_err();
        let text: Vec<&str> = errs.iter().map(|p| p.message.as_str()).collect();
        assert!(text.iter().any(|m| m.contains("approver_roles` is needed")), "{text:?}");
        assert!(text.iter().any(|m| m.contains("`[data] tools` does not allow")), "{text:?}");
    }

    #[test]
    fn defaults_fill_the_unset_parts() {
        let g = parse(GUARDRAIL).unwrap();
        assert_eq!(g.name, "edr");
        assert_eq!(g.thresholds, Thresholds::default());
        assert_eq!(g.escalation.approval_expiry, DEFAULT_APPROVAL_EXPIRY);
        assert_eq!(g.escalation.step_up_roles, ["incident-commander"]);
        assert_eq!(g.grants[0].line, 11);
        assert_eq!(g.grants[0].conditions.max_criticality, Some(Criticality::Tier2));
    }

    #[test]
    fn budget_limits_are_the_largest_any_grant_can_apply() {
        assert_eq!(parse(GUARDRAIL).unwrap().budget_limits("host.isolate"), (None, None), "unlimited");
        let text = format!(
            "{GUARDRAIL}max_per_hour = 40\n\n[[action]]\naction = \"host.isolate\"\nlevel = 2\n\n[rollback]\nmax_per_hour = 10\nmax_distinct_targets = 5\n"
        );
        let g = parse(&text).unwrap();
        assert_eq!(g.budget_limits("host.isolate"), (Some(40), Some(5)), "the override is larger than the rule");
        assert_eq!(g.budget_limits("host.release"), (Some(10), Some(5)), "no grant: the rollback rule");
    }

    #[test]
    fn level_seven_is_located() {
        let errs = parse(&GUARDRAIL.replace("level = 3", "level = 7")).unwrap_err();
        assert_eq!(errs[0].to_string(), "agents/edr.toml:13: autonomy level must be 0 to 4, not 7");
    }

    #[test]
    fn unknown_actions_and_bad_thresholds_are_located() {
        let errs = parse(&GUARDRAIL.replace("\"host.isolate\"", "\"host.isolat\"")).unwrap_err();
        assert_eq!(errs[0].line, Some(12));
        assert!(errs[0].message.contains("unknown action `host.isolat`"));

        let errs = parse(&format!("{GUARDRAIL}autonomous = 1.5\n")).unwrap_err();
        assert!(errs[0].message.contains("between 0 and 1, not 1.5"), "{errs:?}");
        assert_eq!(errs[0].line, Some(15));
    }

    #[test]
    fn tools_must_cover_the_actions() {
        let errs = parse(&GUARDRAIL.replace("tools = [\"edr\"]", "tools = [\"mail\"]")).unwrap_err();
        assert!(errs[0].message.contains("tool `edr`"), "{errs:?}");
    }

    #[test]
    fn spiffe_ids_are_checked() {
        assert!(is_spiffe_id("spiffe://acme.example/soc/phish-triage"));
        assert!(!is_spiffe_id("spiffe://acme.example"));
        assert!(!is_spiffe_id("spiffe://ACME/x"));
        assert!(!is_spiffe_id("spiffe://acme/a/../b"));
        assert!(!is_spiffe_id("spiffe://acme/a\"b"));
        assert!(!is_spiffe_id("https://acme/a"));
        let errs = parse(&GUARDRAIL.replace("spiffe://acme.example/soc/edr", "edr-bot")).unwrap_err();
        assert_eq!(errs[0].line, Some(2));
    }

    #[test]
    fn unknown_fields_are_refused() {
        let errs = parse(&GUARDRAIL.replace("max_criticality", "max_critcality")).unwrap_err();
        assert!(errs[0].message.contains("max_critcality"), "{errs:?}");
        assert_eq!(errs[0].line, Some(14));
    }
}
