//! Who may stop, close and vouch (DESIGN §5), and what undoing an action needs (DESIGN §6).
//!
//! A power belongs to a role, never to a kind of principal. The bundle's optional
//! `authority.toml` names the roles; without it every approver, step-up and incident-commander
//! role of the guardrails may halt, close another's task and vouch for any trigger source.
//! `tool` is never one of them, and `integration` principals get a power only where the file
//! names their role.
//!
//! ```toml
//! [powers]
//! halt = ["soc-analyst", "incident-commander"]   # set an emergency stop
//! close_tasks = ["incident-commander"]           # close a task someone else opened
//!
//! [sources]                                      # whose word makes a trigger verified
//! email-gateway = ["integration-email-gateway"]
//! "*" = ["soc-analyst", "incident-commander"]    # any source
//! ```

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::catalog::Catalog;
use crate::guardrail::{Grant, Guardrail, is_role};
use crate::inventory::{Asset, Inventory, TargetRef};
use crate::source::{Problem, SourceFile, toml_problem};

/// The role that holds every power (not votes: an approval names its roles).
pub const ADMIN: &str = "admin";

/// Roles that may never hold a power here, whatever a bundle says: a tool's credential exists
/// to introspect leases.
pub const NEVER: &[&str] = &["tool"];

/// The powers a bundle hands out, resolved with their defaults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Authority {
    /// Roles that may set a halt.
    pub halt: Vec<String>,
    /// Roles that may close a task another principal opened.
    pub close_tasks: Vec<String>,
    /// Trigger source → roles whose word makes it verified; `*` is any source.
    pub sources: BTreeMap<String, Vec<String>>,
    /// Whether the bundle has an `authority.toml` (otherwise these are the defaults).
    pub explicit: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuthority {
    #[serde(default)]
    powers: RawPowers,
    #[serde(default)]
    sources: BTreeMap<String, Vec<Spanned<String>>>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPowers {
    halt: Option<Vec<Spanned<String>>>,
    close_tasks: Option<Vec<Spanned<String>>>,
}

impl Authority {
    /// The defaults: every role that can approve or step up for any agent, and each agent's
    /// incident commander, may halt, close others' tasks and vouch for any source.
    pub fn defaults(agents: &[&Guardrail]) -> Self {
        let mut roles = BTreeSet::new();
        for g in agents {
            roles.extend(g.escalation.approver_roles.iter().cloned());
            roles.extend(g.escalation.step_up_roles.iter().cloned());
            roles.insert(g.escalation.incident_commander.clone());
            for gr in &g.grants {
                roles.extend(gr.approver_roles.iter().cloned());
            }
        }
        for never in NEVER {
            roles.remove(*never);
        }
        let roles: Vec<String> = roles.into_iter().collect();
        let mut vouch = roles.clone();
        vouch.push(ADMIN.to_string());
        Self {
            halt: roles.clone(),
            close_tasks: roles,
            sources: BTreeMap::from([("*".to_string(), vouch)]),
            explicit: false,
        }
    }

    /// Parses `authority.toml` over the defaults: a list given replaces its default.
    pub fn parse(file: &SourceFile, agents: &[&Guardrail]) -> Result<Self, Vec<Problem>> {
        let raw: RawAuthority = toml::from_str(&file.text).map_err(|e| vec![toml_problem(file, &e)])?;
        let mut problems = Vec::new();
        let mut roles = |list: &[Spanned<String>], what: &str| -> Vec<String> {
            for r in list {
                let name = r.get_ref();
                if !is_role(name) {
                    problems.push(
                        file.problem_at(Some(r.span()), format!("role `{name}` must be lowercase words joined by `-`")),
                    );
                } else if NEVER.contains(&name.as_str()) {
                    problems.push(file.problem_at(
                        Some(r.span()),
                        format!("role `{name}` may not {what}: a tool's credential only introspects leases"),
                    ));
                }
            }
            list.iter().map(|r| r.get_ref().clone()).collect()
        };
        let mut out = Self::defaults(agents);
        out.explicit = true;
        if let Some(list) = &raw.powers.halt {
            out.halt = roles(list, "halt");
        }
        if let Some(list) = &raw.powers.close_tasks {
            out.close_tasks = roles(list, "close others' tasks");
        }
        if !raw.sources.is_empty() {
            out.sources.clear();
            let mut blank = false;
            for (source, list) in &raw.sources {
                let vouch = roles(list, "vouch for a trigger");
                blank |= source.trim().is_empty();
                out.sources.insert(source.clone(), vouch);
            }
            if blank {
                problems.push(Problem::in_file(&file.path, "a trigger source must not be blank"));
            }
        }
        if problems.is_empty() { Ok(out) } else { Err(problems) }
    }

    /// Whether `roles` include one that may halt.
    pub fn may_halt(&self, roles: &[String]) -> Option<String> {
        pick(&self.halt, roles)
    }

    /// Whether `roles` include one that may close a task another principal opened.
    pub fn may_close_others(&self, roles: &[String]) -> Option<String> {
        pick(&self.close_tasks, roles)
    }

    /// The role, among `roles`, whose word makes a trigger from `source` verified, if any:
    /// only a role the bundle maps to the source (or to `*`) — `admin` too only where listed
    /// (the defaults list it for `*`).
    pub fn vouching_role(&self, source: &str, roles: &[String]) -> Option<String> {
        let listed = self.sources.get(source).into_iter().chain(self.sources.get("*"));
        listed
            .into_iter()
            .find_map(|list| roles.iter().find(|r| list.contains(r) && !NEVER.contains(&r.as_str())).cloned())
    }
}

/// The first of `roles` that `allowed` names; `admin` holds every power.
fn pick(allowed: &[String], roles: &[String]) -> Option<String> {
    roles.iter().find(|r| r.as_str() == ADMIN || allowed.contains(r)).filter(|r| !NEVER.contains(&r.as_str())).cloned()
}

/// What undoing an execution needs from humans: the compensation action on that target,
/// under the agent's guardrail (DESIGN §6 "a rollback is an action").
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UndoRequirement {
    /// Any one of these roles may vote.
    pub roles: Vec<String>,
    /// Distinct people needed.
    pub quorum: u32,
    /// The agent's owner (from the bundle) may not vote.
    pub separation_of_duties: bool,
    /// The agent's accountable owner, from its guardrail.
    pub owner: String,
    /// Why these roles: `step_up` (identity/secrets category, privileged or tier0 target) or
    /// `approvers`.
    pub basis: &'static str,
}

/// Whether `grant`'s conditions cover `asset`.
fn covers(grant: &Grant, asset: &Asset) -> bool {
    let c = &grant.conditions;
    c.environments.as_ref().is_none_or(|envs| envs.contains(&asset.environment))
        && c.max_criticality.is_none_or(|max| asset.criticality.tier() >= max.tier())
        && !(asset.privileged && c.allow_privileged == Some(false))
}

/// What undoing `agent`'s action needs: `compensation` on `target`. The roles are the
/// guardrail's step-up roles when the compensation is an identity or secrets action or the
/// target is privileged or tier0 (an unknown target is both), else the approver roles of the
/// most specific grant covering the target (or the guardrail's) and the incident commander;
/// the quorum rises to `privileged_quorum` on such targets. An agent the bundle no longer
/// has: its incident commander is unknown, so `incident-commander`, with separation of duties.
pub fn undo_requirement(
    catalog: &Catalog,
    inventory: &Inventory,
    guardrail: Option<&Guardrail>,
    compensation: &str,
    target: &TargetRef,
) -> UndoRequirement {
    let asset = inventory.get(target).cloned().unwrap_or_else(|| Asset::unknown(target));
    let step_up_category = catalog.get(compensation).is_none_or(|a| a.category.needs_step_up());
    let sensitive = asset.privileged || asset.criticality.tier() == 0;
    let Some(g) = guardrail else {
        // The bundle no longer has the agent: its roles are unknown, so the incident commander
        // decides — two of them where the action was sensitive (retiring an agent never makes
        // undoing its two-person action a one-person act). The owner comes from the agent's
        // registration (the server checks it).
        return UndoRequirement {
            roles: vec!["incident-commander".into()],
            quorum: if sensitive || step_up_category { 2 } else { 1 },
            separation_of_duties: true,
            owner: String::new(),
            basis: "step_up",
        };
    };
    let e = &g.escalation;
    let grant = g.grants.iter().filter(|gr| gr.action == compensation && covers(gr, &asset)).max_by_key(|gr| {
        (gr.conditions.environments.is_some() as u8 + gr.conditions.max_criticality.is_some() as u8, gr.level)
    });
    let (mut roles, basis) = if step_up_category || sensitive {
        (e.step_up_roles.clone(), "step_up")
    } else {
        let mut r = grant.map_or_else(|| e.approver_roles.clone(), |gr| gr.approver_roles.clone());
        r.push(e.incident_commander.clone());
        (r, "approvers")
    };
    if roles.is_empty() {
        roles.push(e.incident_commander.clone());
    }
    roles.retain(|r| !NEVER.contains(&r.as_str()));
    roles.sort();
    roles.dedup();
    let mut quorum = grant.map_or(e.quorum, |gr| gr.quorum).max(1);
    if sensitive {
        quorum = quorum.max(e.privileged_quorum);
    }
    UndoRequirement { roles, quorum, separation_of_duties: e.separation_of_duties, owner: g.owner.clone(), basis }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strs(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn admin_holds_every_power_and_tool_none() {
        let a = Authority {
            halt: strs(&["soc-analyst"]),
            close_tasks: strs(&["incident-commander"]),
            sources: BTreeMap::from([("siem".into(), strs(&["integration-siem"]))]),
            explicit: true,
        };
        assert_eq!(a.may_halt(&strs(&["soc-analyst"])).as_deref(), Some("soc-analyst"));
        assert_eq!(a.may_halt(&strs(&["admin"])).as_deref(), Some("admin"));
        assert_eq!(a.may_halt(&strs(&["tool"])), None);
        assert_eq!(a.may_halt(&strs(&[])), None);
        assert_eq!(a.may_close_others(&strs(&["soc-analyst"])), None);
        assert_eq!(a.vouching_role("siem", &strs(&["integration-siem"])).as_deref(), Some("integration-siem"));
        assert_eq!(a.vouching_role("email-gateway", &strs(&["integration-siem"])), None);
        // Vouching is a statement about a source: admin only where a list names it.
        assert_eq!(a.vouching_role("siem", &strs(&["admin"])), None);
        assert_eq!(a.vouching_role("siem", &strs(&["tool"])), None);
        let d = Authority::defaults(&[]);
        assert_eq!(d.vouching_role("anything", &strs(&["admin"])).as_deref(), Some("admin"), "the defaults list it");
    }

    #[test]
    fn tool_cannot_be_given_a_power() {
        let f = SourceFile::new("authority.toml", "[powers]\nhalt = [\"tool\"]\n[sources]\nsiem = [\"tool\"]\n");
        let problems = Authority::parse(&f, &[]).unwrap_err();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems.iter().all(|p| p.line.is_some() && p.message.contains("`tool`")), "{problems:?}");
    }
}
