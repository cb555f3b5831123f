//! The one authority check (DESIGN §5, §6): may this principal make this change? Every
//! service that changes the world asks [`check`] before it does — whichever front door (the
//! API, the console, Slack, MCP, the CLI through the API) brought the request — so a new path
//! to a change cannot skip the rule that guards it. The rules:
//!
//! | power | who |
//! |---|---|
//! | halt | a human holding a halting role of the bundle (`authority.toml`; default: every approver, step-up and incident-commander role), or `admin` |
//! | resume, suspend/resume agents, reset breakers, reload policy, add agents and users, mint tokens | `admin` |
//! | undo (roll back) | a human holding a role the compensation needs on that target (its approvers, or step-up on privileged/tier0 targets), not the agent's owner under separation of duties; a quorum above one makes it an approval |
//! | close a task | the agent that opened it; a human who opened it; a human with a close role |
//! | vote on an approval | a human holding one of its roles, not the agent's owner (from the bundle) under separation of duties, once |
//! | revoke a lease | a human with a halting role |
//! | vouch for a trigger | a human or integration principal holding a role the bundle maps to the source |
//!
//! `tool` never holds a power here; agents hold none but closing their own tasks.

use serde_json::json;
use warden_core::inventory::TargetRef;

use crate::auth::Caller;
use crate::error::{ApiError, Code};
use crate::model::{Approval, Model, User};
use crate::state::AppState;

/// The "role" a task's opener closes it in: by right of opening, not by a power — so it may
/// stop no one else's work ([`crate::tasks::close`]).
pub const OPENER: &str = "opener";

/// A change someone asks for.
#[derive(Debug, Clone, Copy)]
pub enum Power<'a> {
    /// Set an emergency stop.
    Halt,
    /// Revoke a lease by hand (a stop of one execution).
    RevokeLease,
    /// Run `compensation` to undo `agent`'s action on `target`.
    Undo { agent: &'a str, compensation: &'a str, target: &'a str },
    /// Close a task `opened_by` (`agent:<id>` or `user:<id>`) opened.
    CloseTask { opened_by: &'a str },
    /// Clear a task's taint (it raises its agents' autonomy again): a human holding a role
    /// that may close others' tasks; never an agent.
    ClearTaint,
    /// Approve or reject an approval.
    Vote { approval: &'a Approval },
    /// Lift halts, suspend or resume agents, reset breakers, reload policy, manage agents and
    /// users, mint tokens: what it is, for the refusal.
    Admin(&'static str),
}

/// What a granted power carries: the role it was granted in, and for an undo the number of
/// distinct people it needs (above one, it becomes an approval).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Granted {
    pub role: String,
    pub quorum: u32,
    /// The roles any voter on it must hold (an undo's; otherwise just `role`).
    pub roles: Vec<String>,
    pub separation_of_duties: bool,
    /// The agent's accountable owner from the bundle, when the power concerns an agent's act.
    pub owner: Option<String>,
}

impl Granted {
    fn one(role: impl Into<String>) -> Self {
        let role = role.into();
        Self { roles: vec![role.clone()], role, quorum: 1, separation_of_duties: false, owner: None }
    }
}

fn missing(what: &str, roles: &[String]) -> ApiError {
    ApiError::new(Code::MissingRole, format!("{what} needs one of the roles: {}", roles.join(", ")))
        .details(json!({"required": roles}))
}

fn human<'a>(caller: &'a Caller, what: &str) -> Result<&'a User, ApiError> {
    match caller {
        Caller::Human(u) => Ok(u),
        Caller::Agent(a) => Err(ApiError::new(Code::AgentsNotAllowed, format!("agent `{}` may not {what}", a.id))),
    }
}

/// Whether `user` counts as `owner`: their id, `user:<id>`, or one of their roles (a team
/// such as `team:endpoint-response`) names it.
pub fn is_owner(user: &User, owner: &str) -> bool {
    !owner.is_empty()
        && (user.id == owner || owner.strip_prefix("user:") == Some(user.id.as_str()) || user.has_role(owner))
}

/// The accountable owner of `agent` in the bundle in force (its guardrail's `[agent] owner`).
pub fn owner_in_bundle(s: &AppState, agent: &str) -> Option<String> {
    s.bundle().ok().and_then(|b| b.agent(agent).map(|g| g.owner.clone()))
}

/// Whether `user` owns `agent`: as the bundle names its owner (`owner`), or as it was
/// registered.
pub fn owns_agent(s: &AppState, user: &User, agent: &str, owner: &str) -> bool {
    is_owner(user, owner) || is_owner(user, &registered_owner(s, agent))
}

/// The owner `agent` was registered with (empty when it is not registered).
fn registered_owner(s: &AppState, agent: &str) -> String {
    s.ledger()
        .store()
        .get(<crate::model::Agent as Model>::TABLE, agent)
        .ok()
        .flatten()
        .and_then(|r| crate::model::Agent::from_record(&r).ok())
        .map(|a| a.owner)
        .unwrap_or_default()
}

/// How many of `votes` still count toward what the bundle in force asks: cast in a role it
/// names (`roles`), by a voter who is not — under separation of duties — the agent's owner as
/// the bundle names it now. Used when an approved action or undo starts, so neither a reload
/// nor an ownership change lets an old vote carry more than it may.
pub fn votes_that_count(
    s: &AppState,
    agent: &str,
    votes: &[crate::model::Vote],
    roles: &[String],
    separation_of_duties: bool,
) -> u32 {
    votes.iter().filter(|v| roles.contains(&v.role) && (!separation_of_duties || vote_counts(s, agent, v))).count()
        as u32
}

/// Whether `vote` still counts under separation of duties: its voter is not the agent's
/// owner as the bundle in force names it (a reload may have made them the owner since).
/// Voters are read again from the store; an OIDC voter not stored is known by id alone.
fn vote_counts(s: &AppState, agent: &str, vote: &crate::model::Vote) -> bool {
    let Some(owner) = owner_in_bundle(s, agent) else { return true };
    let user = s
        .ledger()
        .store()
        .get(User::TABLE, &vote.user)
        .ok()
        .flatten()
        .and_then(|r| User::from_record(&r).ok())
        .unwrap_or_else(|| User {
            id: vote.user.clone(),
            roles: Vec::new(),
            token_hash: String::new(),
            status: "active".into(),
            oidc: Vec::new(),
        });
    !is_owner(&user, &owner)
}

/// May `caller` make this change? The one place the rules above are written.
pub fn check(s: &AppState, caller: &Caller, power: Power<'_>) -> Result<Granted, ApiError> {
    match power {
        Power::Halt | Power::RevokeLease => {
            let what = if matches!(power, Power::Halt) { "halting" } else { "revoking a lease" };
            let user = human(caller, what)?;
            let bundle = s.bundle()?;
            let authority = bundle.authority();
            authority.may_halt(&user.roles).map(Granted::one).ok_or_else(|| missing(what, &authority.halt))
        }
        Power::Admin(what) => {
            let user = human(caller, what)?;
            if user.has_role(warden_core::authority::ADMIN) {
                Ok(Granted::one(warden_core::authority::ADMIN))
            } else {
                Err(missing(what, &[warden_core::authority::ADMIN.to_string()]))
            }
        }
        Power::Undo { agent, compensation, target } => {
            let user = human(caller, "roll back")?;
            let bundle = s.bundle()?;
            let target: TargetRef = target.parse().map_err(|e: String| ApiError::new(Code::InvalidRequest, e))?;
            let need = bundle.undo_requirement(agent, compensation, &target);
            let what = format!("rolling back with `{compensation}` on `{target}`");
            let role =
                need.roles.iter().find(|r| user.has_role(r)).cloned().ok_or_else(|| missing(&what, &need.roles))?;
            // The owner the bundle names, and the one the agent was registered with.
            let registered = registered_owner(s, agent);
            if need.separation_of_duties && (is_owner(user, &need.owner) || is_owner(user, &registered)) {
                return Err(ApiError::new(
                    Code::SeparationOfDuties,
                    format!("`{}` owns agent `{agent}` and may not undo its actions", user.id),
                ));
            }
            Ok(Granted {
                role,
                quorum: need.quorum.max(1),
                roles: need.roles,
                separation_of_duties: need.separation_of_duties,
                owner: Some(need.owner),
            })
        }
        Power::ClearTaint => {
            let u = human(caller, "clear a task's taint")?;
            let bundle = s.bundle()?;
            let authority = bundle.authority();
            match authority.may_close_others(&u.roles) {
                Some(role) => Ok(Granted::one(role)),
                None => Err(missing("clearing a task's taint", &authority.close_tasks)),
            }
        }
        Power::CloseTask { opened_by } => match caller {
            Caller::Agent(a) => {
                if opened_by == format!("agent:{}", a.id) {
                    Ok(Granted::one(OPENER))
                } else {
                    Err(ApiError::new(
                        Code::NotYourTask,
                        format!(
                            "agent `{}` may close only a task it opened; this one was opened by `{opened_by}`",
                            a.id
                        ),
                    ))
                }
            }
            Caller::Human(u) => {
                let bundle = s.bundle()?;
                let authority = bundle.authority();
                if let Some(role) = authority.may_close_others(&u.roles) {
                    return Ok(Granted::one(role));
                }
                // By right of having opened it: the service then refuses to stop anyone
                // else's work with it (`task_shared`).
                if opened_by == format!("user:{}", u.id) {
                    return Ok(Granted::one(OPENER));
                }
                Err(missing("closing a task someone else opened", &authority.close_tasks))
            }
        },
        Power::Vote { approval } => {
            let user = human(caller, "vote")?;
            let Some(role) = approval.roles.iter().find(|r| user.has_role(r)) else {
                return Err(missing("approving", &approval.roles));
            };
            if approval.separation_of_duties {
                // The owner the bundle names now, and the one recorded when it opened: either
                // one may not decide.
                let owners = [owner_in_bundle(s, &approval.agent), Some(approval.owner.clone())];
                if owners.iter().flatten().any(|o| is_owner(user, o)) {
                    return Err(ApiError::new(
                        Code::SeparationOfDuties,
                        format!("`{}` owns agent `{}` and may not decide its requests", user.id, approval.agent),
                    ));
                }
            }
            Ok(Granted {
                role: role.clone(),
                quorum: approval.quorum,
                roles: approval.roles.clone(),
                separation_of_duties: approval.separation_of_duties,
                owner: Some(approval.owner.clone()),
            })
        }
    }
}

/// [`check`] for a human.
pub fn check_human(s: &AppState, user: &User, power: Power<'_>) -> Result<Granted, ApiError> {
    check(s, &Caller::Human(user.clone()), power)
}

/// The role in which `caller` vouches for a trigger from `source`, if any: only then is the
/// task's trigger *verified*. Agents never vouch; `tool` never does.
pub fn vouch(s: &AppState, caller: &Caller, source: &str) -> Result<Option<String>, ApiError> {
    match caller {
        Caller::Agent(_) => Ok(None),
        Caller::Human(u) => Ok(s.bundle()?.authority().vouching_role(source, &u.roles)),
    }
}
