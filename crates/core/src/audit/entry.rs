//! The audit entry: one event, serialized as RFC 8785 canonical JSON — the exact bytes that are
//! hashed into the Merkle tree.
//!
//! ```json
//! {"action":"host.isolate","actor":{"id":"spiffe://acme.example/soc/edr","kind":"agent"},
//!  "data":{…},"request":"req_01","seq":41,"task":"INC-7","time":"2026-11-23T06:03:07.123Z",
//!  "type":"decision.made"}
//! ```
//!
//! `seq` is the entry's leaf index; `time` is the commit time (UTC, milliseconds); `task`,
//! `request` (the action request's id) and `action` (the action class) are the correlation
//! ids, present only when the event has them; `actor` is who caused the change.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use time::OffsetDateTime;

use super::canonical;

/// Every kind of event the log records. The strings are part of the audit format: stable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum EventType {
    #[serde(rename = "store.initialized")]
    StoreInitialized,
    #[serde(rename = "policy.loaded")]
    PolicyLoaded,
    #[serde(rename = "agent.added")]
    AgentAdded,
    #[serde(rename = "agent.changed")]
    AgentChanged,
    /// A JWT-SVID was minted by the local issuer (the token itself is never recorded).
    #[serde(rename = "agent.token_issued")]
    AgentTokenIssued,
    #[serde(rename = "user.added")]
    UserAdded,
    #[serde(rename = "user.changed")]
    UserChanged,
    #[serde(rename = "task.opened")]
    TaskOpened,
    #[serde(rename = "task.closed")]
    TaskClosed,
    /// Marks of taint added to a task outside a decision's or an execution's own commit (a
    /// repeated MCP call's declared inputs, a refused request's).
    #[serde(rename = "task.tainted")]
    TaskTainted,
    /// A human cleared marks of taint from a task, with a reason.
    #[serde(rename = "task.taint_cleared")]
    TaskTaintCleared,
    #[serde(rename = "action.requested")]
    ActionRequested,
    #[serde(rename = "decision.made")]
    DecisionMade,
    #[serde(rename = "approval.requested")]
    ApprovalRequested,
    #[serde(rename = "approval.granted")]
    ApprovalGranted,
    #[serde(rename = "approval.rejected")]
    ApprovalRejected,
    #[serde(rename = "approval.expired")]
    ApprovalExpired,
    #[serde(rename = "approval.cancelled")]
    ApprovalCancelled,
    /// A pending approval reached its escalation point; its escalation notice went out.
    #[serde(rename = "approval.escalated")]
    ApprovalEscalated,
    /// A request that needed a human was refused: its agent has as many waiting as policy allows.
    #[serde(rename = "approval.refused")]
    ApprovalRefused,
    #[serde(rename = "lease.issued")]
    LeaseIssued,
    #[serde(rename = "lease.revoked")]
    LeaseRevoked,
    #[serde(rename = "execution.started")]
    ExecutionStarted,
    #[serde(rename = "execution.succeeded")]
    ExecutionSucceeded,
    #[serde(rename = "execution.failed")]
    ExecutionFailed,
    #[serde(rename = "execution.unknown")]
    ExecutionUnknown,
    #[serde(rename = "rollback.started")]
    RollbackStarted,
    #[serde(rename = "rollback.succeeded")]
    RollbackSucceeded,
    #[serde(rename = "rollback.failed")]
    RollbackFailed,
    #[serde(rename = "breaker.tripped")]
    BreakerTripped,
    #[serde(rename = "breaker.reset")]
    BreakerReset,
    #[serde(rename = "halt.set")]
    HaltSet,
    #[serde(rename = "halt.lifted")]
    HaltLifted,
    #[serde(rename = "notification.failed")]
    NotificationFailed,
}

impl EventType {
    /// Every event type, in declaration order.
    pub const ALL: [EventType; 34] = [
        EventType::StoreInitialized,
        EventType::PolicyLoaded,
        EventType::AgentAdded,
        EventType::AgentChanged,
        EventType::AgentTokenIssued,
        EventType::UserAdded,
        EventType::UserChanged,
        EventType::TaskOpened,
        EventType::TaskClosed,
        EventType::TaskTainted,
        EventType::TaskTaintCleared,
        EventType::ActionRequested,
        EventType::DecisionMade,
        EventType::ApprovalRequested,
        EventType::ApprovalGranted,
        EventType::ApprovalRejected,
        EventType::ApprovalExpired,
        EventType::ApprovalCancelled,
        EventType::ApprovalEscalated,
        EventType::ApprovalRefused,
        EventType::LeaseIssued,
        EventType::LeaseRevoked,
        EventType::ExecutionStarted,
        EventType::ExecutionSucceeded,
        EventType::ExecutionFailed,
        EventType::ExecutionUnknown,
        EventType::RollbackStarted,
        EventType::RollbackSucceeded,
        EventType::RollbackFailed,
        EventType::BreakerTripped,
        EventType::BreakerReset,
        EventType::HaltSet,
        EventType::HaltLifted,
        EventType::NotificationFailed,
    ];

    /// The type's name as written in entries, e.g. `decision.made`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::StoreInitialized => "store.initialized",
            EventType::PolicyLoaded => "policy.loaded",
            EventType::AgentAdded => "agent.added",
            EventType::AgentChanged => "agent.changed",
            EventType::AgentTokenIssued => "agent.token_issued",
            EventType::UserAdded => "user.added",
            EventType::UserChanged => "user.changed",
            EventType::TaskOpened => "task.opened",
            EventType::TaskClosed => "task.closed",
            EventType::TaskTainted => "task.tainted",
            EventType::TaskTaintCleared => "task.taint_cleared",
            EventType::ActionRequested => "action.requested",
            EventType::DecisionMade => "decision.made",
            EventType::ApprovalRequested => "approval.requested",
            EventType::ApprovalGranted => "approval.granted",
            EventType::ApprovalRejected => "approval.rejected",
            EventType::ApprovalExpired => "approval.expired",
            EventType::ApprovalCancelled => "approval.cancelled",
            EventType::ApprovalEscalated => "approval.escalated",
            EventType::ApprovalRefused => "approval.refused",
            EventType::LeaseIssued => "lease.issued",
            EventType::LeaseRevoked => "lease.revoked",
            EventType::ExecutionStarted => "execution.started",
            EventType::ExecutionSucceeded => "execution.succeeded",
            EventType::ExecutionFailed => "execution.failed",
            EventType::ExecutionUnknown => "execution.unknown",
            EventType::RollbackStarted => "rollback.started",
            EventType::RollbackSucceeded => "rollback.succeeded",
            EventType::RollbackFailed => "rollback.failed",
            EventType::BreakerTripped => "breaker.tripped",
            EventType::BreakerReset => "breaker.reset",
            EventType::HaltSet => "halt.set",
            EventType::HaltLifted => "halt.lifted",
            EventType::NotificationFailed => "notification.failed",
        }
    }
}

impl std::fmt::Display for EventType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who caused a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActorKind {
    /// A workload, named by its SPIFFE ID.
    Agent,
    /// A human principal.
    User,
    /// Warden itself (expiry sweeps, restarts, the store's own bookkeeping).
    System,
}

/// The actor of an event.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Actor {
    pub kind: ActorKind,
    pub id: String,
}

impl Actor {
    pub fn agent(id: impl Into<String>) -> Self {
        Actor { kind: ActorKind::Agent, id: id.into() }
    }
    pub fn user(id: impl Into<String>) -> Self {
        Actor { kind: ActorKind::User, id: id.into() }
    }
    /// Warden itself; `id` names the component (`warden`, `expiry`, `recovery`…).
    pub fn system(id: impl Into<String>) -> Self {
        Actor { kind: ActorKind::System, id: id.into() }
    }
}

/// An event before it is committed: everything but its `seq` and `time`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    #[serde(rename = "type")]
    pub kind: EventType,
    pub actor: Actor,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// The event's own fields. Always an object; never holds a secret.
    #[serde(default = "empty_object")]
    pub data: Value,
}

fn empty_object() -> Value {
    Value::Object(Map::new())
}

impl Event {
    pub fn new(kind: EventType, actor: Actor) -> Self {
        Event { kind, actor, task: None, request: None, action: None, data: empty_object() }
    }
    pub fn task(mut self, id: impl Into<String>) -> Self {
        self.task = Some(id.into());
        self
    }
    pub fn request(mut self, id: impl Into<String>) -> Self {
        self.request = Some(id.into());
        self
    }
    pub fn action(mut self, id: impl Into<String>) -> Self {
        self.action = Some(id.into());
        self
    }
    /// Sets the event's data; anything but an object is wrapped as `{"value": …}`.
    pub fn data(mut self, data: Value) -> Self {
        self.data = match data {
            Value::Object(_) => data,
            other => Value::Object(Map::from_iter([("value".to_string(), other)])),
        };
        self
    }

    /// The committed entry's canonical bytes.
    pub fn to_entry_bytes(&self, seq: u64, time: OffsetDateTime) -> Result<Vec<u8>, EntryError> {
        self.template()?.render(seq, time)
    }

    /// The entry's canonical bytes but for `seq` and `time`: the costly part of encoding,
    /// which a committer can do before its turn at the single writer.
    pub fn template(&self) -> Result<EntryTemplate, EntryError> {
        let malformed = |e: &dyn std::fmt::Display| EntryError::Malformed(e.to_string());
        let Value::Object(map) = serde_json::to_value(self).map_err(|e| malformed(&e))? else {
            return Err(EntryError::Malformed("an event must serialize to an object".into()));
        };
        let mut members = map
            .iter()
            .map(|(name, value)| Ok((name.clone(), canonical::member(name, value).map_err(|e| malformed(&e))?)))
            .collect::<Result<Vec<_>, EntryError>>()?;
        members.sort_by(|a, b| canonical::member_order(&a.0, &b.0));
        Ok(EntryTemplate { members })
    }
}

/// An event's canonical members, waiting for the `seq` and `time` its commit gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryTemplate {
    /// `(name, "name":value)`, in canonical member order; never `seq` or `time`.
    members: Vec<(String, String)>,
}

impl EntryTemplate {
    /// The entry's canonical bytes: the members with `seq` and `time` merged in their place.
    pub fn render(&self, seq: u64, time: OffsetDateTime) -> Result<Vec<u8>, EntryError> {
        let malformed = |e: canonical::CanonicalError| EntryError::Malformed(e.to_string());
        let stamps = [
            ("seq", canonical::member("seq", &Value::from(seq)).map_err(malformed)?),
            ("time", canonical::member("time", &Value::String(format_time(time)?)).map_err(malformed)?),
        ];
        let len = self.members.iter().map(|m| m.1.len() + 1).sum::<usize>() + stamps[0].1.len() + stamps[1].1.len() + 3;
        let mut out = Vec::with_capacity(len);
        out.push(b'{');
        let mut stamps = stamps.iter().peekable();
        let mut members = self.members.iter().peekable();
        let mut first = true;
        loop {
            let next = match (members.peek(), stamps.peek()) {
                (Some(m), Some(s)) if m.0 == s.0 => {
                    return Err(EntryError::Malformed(format!("an event cannot carry `{}`", s.0)));
                }
                (Some(m), Some(s)) if canonical::member_order(&m.0, s.0).is_lt() => members.next().map(|m| &m.1),
                (_, Some(_)) => stamps.next().map(|s| &s.1),
                (Some(_), None) => members.next().map(|m| &m.1),
                (None, None) => break,
            };
            if !first {
                out.push(b',');
            }
            first = false;
            out.extend_from_slice(next.map_or(&b""[..], |n| n.as_bytes()));
        }
        out.push(b'}');
        Ok(out)
    }
}

/// A committed entry, as read back from its bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub seq: u64,
    /// RFC 3339, UTC, millisecond precision: `2026-11-23T06:03:07.123Z`.
    pub time: String,
    #[serde(flatten)]
    pub event: Event,
}

impl Entry {
    /// Parses an entry's bytes, checking that they are canonical (so two parsers can never
    /// disagree about what was hashed).
    pub fn parse(bytes: &[u8]) -> Result<Self, EntryError> {
        // The one-pass check (as `audit verify` reads): no second encoding to compare.
        canonical::check(bytes).map_err(|_| EntryError::NotCanonical)?;
        let value: Value = serde_json::from_slice(bytes).map_err(|e| EntryError::Malformed(e.to_string()))?;
        serde_json::from_value(value).map_err(|e| EntryError::Malformed(e.to_string()))
    }

    /// The entry's time, parsed.
    pub fn timestamp(&self) -> Result<OffsetDateTime, EntryError> {
        OffsetDateTime::parse(&self.time, &time::format_description::well_known::Rfc3339)
            .map_err(|e| EntryError::Malformed(format!("time `{}`: {e}", self.time)))
    }
}

/// Why an entry could not be written or read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    #[error("the audit entry is malformed: {0}")]
    Malformed(String),
    #[error("the audit entry's bytes are not RFC 8785 canonical JSON")]
    NotCanonical,
}

/// Formats a time as entries write it: UTC, milliseconds, `Z`.
pub fn format_time(t: OffsetDateTime) -> Result<String, EntryError> {
    let t = t.to_offset(time::UtcOffset::UTC);
    let fmt = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");
    t.format(&fmt).map_err(|e| EntryError::Malformed(format!("time: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use time::macros::datetime;

    /// The template path against the plain one: serialize the whole entry, then canonicalize.
    #[test]
    fn templates_render_exactly_the_canonical_entry() {
        let full = Event::new(EventType::DecisionMade, Actor::agent("spiffe://acme.example/soc/edr"))
            .task("INC-7")
            .request("req_1")
            .action("host.isolate")
            .data(json!({"seq": 1, "time": "x", "ſ": "\u{1F600}", "a\"b": [1.5, null, {"z": 1, "é": 2}]}));
        let bare = Event::new(EventType::StoreInitialized, Actor::system("warden"));
        let task_only = Event::new(EventType::TaskOpened, Actor::user("olga")).task("T");
        for (event, seq) in [(&full, 0), (&bare, 41), (&task_only, 9_007_199_254_740_993)] {
            for time in [datetime!(2026-11-23 06:03:07.123456 UTC), datetime!(1999-12-31 23:59:59.999 +05:00)] {
                let entry = Entry { seq, time: format_time(time).unwrap(), event: event.clone() };
                let plain = canonical::to_vec(&serde_json::to_value(&entry).unwrap()).unwrap();
                assert_eq!(event.to_entry_bytes(seq, time).unwrap(), plain, "{event:?}");
                assert_eq!(event.template().unwrap().render(seq, time).unwrap(), plain);
                assert!(Entry::parse(&plain).is_ok());
            }
        }
    }

    #[test]
    fn entry_bytes_are_canonical_with_sorted_members() {
        let e = Event::new(EventType::DecisionMade, Actor::agent("spiffe://acme.example/soc/edr"))
            .task("INC-7")
            .request("req_1")
            .action("host.isolate")
            .data(json!({"outcome": "execute", "effective_level": 3}));
        let bytes = e.to_entry_bytes(41, datetime!(2026-11-23 06:03:07.123456 UTC)).unwrap();
        assert_eq!(
            String::from_utf8(bytes.clone()).unwrap(),
            r#"{"action":"host.isolate","actor":{"id":"spiffe://acme.example/soc/edr","kind":"agent"},"data":{"effective_level":3,"outcome":"execute"},"request":"req_1","seq":41,"task":"INC-7","time":"2026-11-23T06:03:07.123Z","type":"decision.made"}"#
        );
        let back = Entry::parse(&bytes).unwrap();
        assert_eq!(back.seq, 41);
        assert_eq!(back.event, e);
        assert_eq!(back.timestamp().unwrap(), datetime!(2026-11-23 06:03:07.123 UTC));
    }

    #[test]
    fn absent_correlation_ids_are_left_out() {
        let e = Event::new(EventType::StoreInitialized, Actor::system("warden"));
        let bytes = e.to_entry_bytes(0, datetime!(2026-01-01 00:00 +02:00)).unwrap();
        assert_eq!(
            String::from_utf8(bytes).unwrap(),
            r#"{"actor":{"id":"warden","kind":"system"},"data":{},"seq":0,"time":"2025-12-31T22:00:00.000Z","type":"store.initialized"}"#
        );
    }

    #[test]
    fn non_canonical_bytes_are_refused() {
        let bytes = br#"{"seq":0,"actor":{"id":"warden","kind":"system"},"data":{},"time":"2025-12-31T22:00:00.000Z","type":"store.initialized"}"#;
        assert_eq!(Entry::parse(bytes), Err(EntryError::NotCanonical));
    }

    #[test]
    fn type_names_round_trip() {
        for t in EventType::ALL {
            let s = serde_json::to_value(t).unwrap();
            assert_eq!(s, Value::String(t.as_str().into()));
            assert_eq!(t.to_string(), t.as_str());
        }
    }
}
