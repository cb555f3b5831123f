//! Administration that works the same on a data directory (the CLI, no server) and behind
//! the HTTP API: agents and users. Every change is audited like any other.

use serde_json::json;
use time::OffsetDateTime;
use warden_core::audit::entry::{Actor, ActorKind, Event, EventType};
use warden_core::request::AgentStatus;
use warden_store::data_dir::{new_token, token_hash};
use warden_store::{Batch, Change, Ledger, Query, StoreError, Table, USER_DISABLED};

use crate::error::{ApiError, Code};
use crate::model::{Agent, Model, User, rfc3339};

/// Checks `spiffe://<trust domain>/<path>` (SPIFFE ID spec: lowercase trust domain of
/// letters, digits, `.`, `-`, `_`; non-empty path segments of letters, digits, `.`, `-`, `_`).
pub fn check_spiffe_id(id: &str) -> Result<(), ApiError> {
    let bad = |why: &str| ApiError::new(Code::InvalidSpiffeId, format!("`{id}` is not a SPIFFE ID: {why}"));
    let rest = id.strip_prefix("spiffe://").ok_or_else(|| bad("it must start with `spiffe://`"))?;
    let (domain, path) = rest.split_once('/').ok_or_else(|| bad("it needs a path after the trust domain"))?;
    if domain.is_empty() || !domain.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b))
    {
        return Err(bad("the trust domain may hold only lowercase letters, digits, `.`, `-` and `_`"));
    }
    for seg in path.split('/') {
        if seg.is_empty() || seg == "." || seg == ".." {
            return Err(bad("path segments must be non-empty and not `.` or `..`"));
        }
        if !seg.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b)) {
            return Err(bad("path segments may hold only letters, digits, `.`, `-` and `_`"));
        }
    }
    Ok(())
}

fn check_name(what: &'static str, name: &str) -> Result<(), ApiError> {
    // Roles may name a team (`team:endpoint-response`), matched against agents' owners.
    let extra: &[u8] = if what == "role" { b"-_.@:" } else { b"-_.@" };
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || extra.contains(&b));
    if ok {
        Ok(())
    } else {
        let allowed = if what == "role" { "`-`, `_`, `.`, `@` or `:`" } else { "`-`, `_`, `.` or `@`" };
        Err(ApiError::new(
            Code::InvalidName,
            format!("{what} `{name}` must be 1–64 lowercase letters, digits, {allowed}"),
        ))
    }
}

fn conflict_or(e: StoreError, code: Code, message: String) -> ApiError {
    match e {
        StoreError::Conflict { .. } => ApiError::new(code, message),
        other => other.into(),
    }
}

/// Registers an agent.
pub fn add_agent(
    ledger: &Ledger,
    actor: &Actor,
    id: &str,
    owner: &str,
    purpose: &str,
    now: OffsetDateTime,
) -> Result<Agent, ApiError> {
    check_spiffe_id(id)?;
    if crate::input::is_blank(owner) {
        return Err(ApiError::new(Code::InvalidRequest, "an agent needs an owner (`--owner`)"));
    }
    let agent = Agent {
        id: id.to_string(),
        owner: owner.to_string(),
        purpose: purpose.to_string(),
        status: AgentStatus::Active,
        created_at: rfc3339(now),
    };
    let event = Event::new(EventType::AgentAdded, actor.clone())
        .data(json!({"agent": id, "owner": owner, "purpose": purpose, "status": "active"}));
    ledger
        .commit(Batch::new().change(Change::Insert(agent.record())).event(event))
        .map_err(|e| conflict_or(e, Code::AgentExists, format!("agent `{id}` is already registered")))?;
    Ok(agent)
}

/// Every registered agent, by id.
pub fn list_agents(ledger: &Ledger) -> Result<Vec<Agent>, ApiError> {
    let mut agents = ledger
        .store()
        .find(Agent::TABLE, &Query::default())?
        .iter()
        .map(Agent::from_record)
        .collect::<Result<Vec<_>, _>>()?;
    agents.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(agents)
}

/// One agent.
pub fn get_agent(ledger: &Ledger, id: &str) -> Result<Option<Agent>, ApiError> {
    ledger.store().get(Agent::TABLE, id)?.as_ref().map(Agent::from_record).transpose()
}

/// Suspends (or reactivates) an agent; `reason` goes to the log.
pub fn set_agent_status(
    ledger: &Ledger,
    actor: &Actor,
    id: &str,
    status: AgentStatus,
    reason: &str,
) -> Result<Agent, ApiError> {
    // Stopping an agent stops its work in the same commit, as a halt does: its pending
    // approvals are cancelled and its active leases revoked. Retried when one of them changes
    // meanwhile (an approval decided, an execution finishing).
    let store = ledger.store();
    let now = ledger.now();
    for _ in 0..16 {
        let record = store
            .get(Agent::TABLE, id)?
            .ok_or_else(|| ApiError::new(Code::UnknownAgent, format!("no agent `{id}` is registered")))?;
        let mut agent = Agent::from_record(&record)?;
        let from = agent.status;
        agent.status = status;
        let mut updated = agent.record();
        updated.version = record.version;
        let event = Event::new(EventType::AgentChanged, actor.clone())
            .data(json!({"agent": id, "from": from, "to": status, "reason": reason}));
        let mut batch = Batch::new().change(Change::Update(updated)).event(event);
        if status != AgentStatus::Active {
            let why =
                format!("agent {}: {reason}", if status == AgentStatus::Suspended { "suspended" } else { "halted" });
            let q = Query { agent: Some(id.to_string()), state: Some("pending".into()), ..Query::default() };
            for r in store.find(Table::Approvals, &q)? {
                let v = crate::approvals::Versioned {
                    approval: crate::approvals::Approval::from_record(&r)?,
                    version: r.version,
                };
                // An undo approval is humans asking to lift what the agent did: a stop of the
                // agent does not cancel it (as a halt does not).
                if v.approval.undo.is_some() {
                    continue;
                }
                let (_, b) = crate::approvals::cancel_batch(store.as_ref(), &v, actor, &why, now)?;
                batch.changes.extend(b.changes);
                batch.events.extend(b.events);
            }
            let q = Query { agent: Some(id.to_string()), state: Some("active".into()), ..Query::default() };
            for r in store.find(Table::Leases, &q)? {
                let lease = crate::execution::Lease::from_record(&r)?;
                let b = crate::execution::revoke_changes(&lease, r.version, actor, &why, now);
                batch.changes.extend(b.changes);
                batch.events.extend(b.events);
            }
        }
        match ledger.commit(batch) {
            Ok(_) if status != AgentStatus::Active => {
                // Approvals opened by requests that committed between the read above and this
                // commit; none can be opened after it (they expect the agent's old version).
                let commit = |b| ledger.commit(b).map(|_| ());
                let why = format!(
                    "agent {}: {reason}",
                    if status == AgentStatus::Suspended { "suspended" } else { "halted" }
                );
                let of_agent = |a: &crate::approvals::Approval| a.agent == id && a.undo.is_none();
                crate::approvals::cancel_where(store.as_ref(), &commit, &of_agent, actor, &why, now)?;
                return Ok(agent);
            }
            Ok(_) => return Ok(agent),
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(ApiError::new(Code::Conflict, format!("agent `{id}` kept changing; try again")))
}

/// Records that a JWT-SVID was minted for `id` (who asked, audience, lifetime; never the token).
pub fn record_token_minted(
    ledger: &Ledger,
    actor: &Actor,
    id: &str,
    audience: &str,
    ttl_secs: u64,
) -> Result<(), ApiError> {
    let event = Event::new(EventType::AgentTokenIssued, actor.clone())
        .data(json!({"agent": id, "audience": audience, "ttl_secs": ttl_secs}));
    ledger.commit(Batch::new().event(event))?;
    Ok(())
}

/// Adds a human principal; returns the user and their API token (shown once).
pub fn add_user(
    ledger: &Ledger,
    actor: &Actor,
    id: &str,
    roles: &[String],
    oidc: &[String],
) -> Result<(User, String), ApiError> {
    check_name("user", id)?;
    if roles.is_empty() {
        return Err(ApiError::new(Code::InvalidRequest, "a user needs at least one role (`--role`)"));
    }
    for r in roles {
        check_name("role", r)?;
    }
    // One person, one voter: an OIDC identity signs in as exactly one user.
    let taken: Vec<String> = list_users(ledger)?.into_iter().flat_map(|u| u.oidc).collect();
    for o in oidc {
        if !crate::input::is_oidc_identity(o) {
            return Err(ApiError::new(
                Code::InvalidRequest,
                format!("OIDC identity `{o}` must be `ISSUER#SUB`, e.g. `https://idp.acme.example#00u1ana`"),
            ));
        }
        if taken.contains(o) {
            return Err(ApiError::new(
                Code::UserExists,
                format!("OIDC identity `{o}` already signs in as another user"),
            ));
        }
    }
    let token = new_token().map_err(|e| ApiError::new(Code::RandomUnavailable, e.to_string()))?;
    let user = User {
        id: id.to_string(),
        roles: roles.to_vec(),
        token_hash: token_hash(&token),
        status: "active".into(),
        oidc: oidc.to_vec(),
    };
    let event = Event::new(EventType::UserAdded, actor.clone()).data(json!({"id": id, "roles": roles, "oidc": oidc}));
    ledger
        .commit(Batch::new().change(Change::Insert(user.record())).event(event))
        .map_err(|e| conflict_or(e, Code::UserExists, format!("user `{id}` already exists")))?;
    Ok((user, token))
}

/// Disables (or reactivates) a user; `reason` goes to the log. Every way in is refused from
/// the commit on, on every node (API token, OIDC sign-in, console sessions: the user is read
/// on each request); votes the user already cast stay as cast. A user cannot disable
/// themselves (an admin locking out the last admin by accident).
pub fn set_user_status(ledger: &Ledger, actor: &Actor, id: &str, active: bool, reason: &str) -> Result<User, ApiError> {
    if !active && actor.kind == ActorKind::User && actor.id == id {
        return Err(ApiError::new(Code::SelfDisable, format!("user `{id}` cannot disable themselves")));
    }
    let store = ledger.store();
    for _ in 0..16 {
        let record =
            store.get(User::TABLE, id)?.ok_or_else(|| ApiError::new(Code::UnknownUser, format!("no user `{id}`")))?;
        let mut user = User::from_record(&record)?;
        let from = std::mem::replace(&mut user.status, if active { "active" } else { USER_DISABLED }.into());
        let mut updated = user.record();
        updated.version = record.version;
        let event = Event::new(EventType::UserChanged, actor.clone())
            .data(json!({"id": id, "from": from, "to": user.status, "reason": reason}));
        let mut batch = Batch::new().change(Change::Update(updated)).event(event);
        if !active {
            // Their sessions end with the disable: enabling them again brings none back.
            let q = Query { agent: Some(id.to_string()), ..Query::default() };
            for s in store.find(Table::Sessions, &q)? {
                batch.changes.push(Change::Delete { table: Table::Sessions, id: s.id });
            }
        }
        match ledger.commit(batch) {
            Ok(_) => return Ok(user),
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(ApiError::new(Code::Conflict, format!("user `{id}` kept changing; try again")))
}

/// Every user, by id (token hashes included: callers must not print them).
pub fn list_users(ledger: &Ledger) -> Result<Vec<User>, ApiError> {
    let mut users = ledger
        .store()
        .find(User::TABLE, &Query::default())?
        .iter()
        .map(User::from_record)
        .collect::<Result<Vec<_>, _>>()?;
    users.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(users)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spiffe_ids_are_checked() {
        assert!(check_spiffe_id("spiffe://acme.example/soc/phish-triage").is_ok());
        for bad in [
            "http://x/y",
            "spiffe://acme.example",
            "spiffe://ACME/x",
            "spiffe://a/b//c",
            "spiffe://a/../b",
            "spiffe://a/b c",
        ] {
            assert_eq!(check_spiffe_id(bad).unwrap_err().code.as_str(), "invalid_spiffe_id", "{bad}");
        }
        // The OpenAPI pattern (`input::SPIFFE_ID`) answers the same list the same way.
        for (id, ok) in crate::input::SPIFFE_CASES {
            assert_eq!(check_spiffe_id(id).is_ok(), *ok, "{id}");
        }
    }
}
