//! Audit entries as OCSF 1.8.0 events, for SIEMs.
//!
//! - `action.requested` and `decision.made` → API Activity (class 6003, activity Create) with
//!   the `security_control` profile: `action_id`, `disposition_id` and `policy` say what Warden
//!   decided about the agent's call.
//! - `execution.succeeded|failed|unknown` and `rollback.succeeded|failed` → Remediation
//!   Activity (class 7001): Isolate, Evict, Harden, Detect or Other by the action's category,
//!   Restore for a rollback; `command_uid` is the execution's id; the `host` profile carries
//!   the `actor` who ran it.
//!
//! Other entries (agents, users, approvals, leases…) have no OCSF class that fits them without
//! inventing meaning, so they are not exported in this format; `raw` and `jsonl` carry
//! everything.

use serde_json::{Map, Value, json};

use super::entry::{ActorKind, Entry, EventType};

/// The OCSF version the events claim.
pub const OCSF_VERSION: &str = "1.8.0";

const API_ACTIVITY: u64 = 6003;
const REMEDIATION_ACTIVITY: u64 = 7001;

/// The product block of every event's metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Product {
    pub version: String,
}

/// The OCSF event for one entry, or `None` when the entry's type is not exported.
pub fn event(entry: &Entry, product: &Product) -> Option<Value> {
    let time_ms = entry.timestamp().ok().map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)?;
    let data = &entry.event.data;
    let kind = entry.event.kind;
    let mut ev = Map::new();
    let (class_uid, activity_id, severity_id, profiles) = match kind {
        EventType::ActionRequested => (API_ACTIVITY, 1, 1, vec!["security_control"]),
        EventType::DecisionMade => {
            let outcome = str_at(data, &["decision", "outcome"]).unwrap_or("");
            let (action_id, action, disposition_id, severity) = match outcome {
                "execute" => (1, "Allowed", 1, 1),
                "deny" => (2, "Denied", 2, 3),
                "advise" => (3, "Observed", 17, 1),
                "require_approval" => (99, "Require approval", 14, 2),
                _ => (0, "Unknown", 0, 0),
            };
            ev.insert("action_id".into(), json!(action_id));
            ev.insert("action".into(), json!(action));
            ev.insert("disposition_id".into(), json!(disposition_id));
            ev.insert("policy".into(), policy(data));
            (API_ACTIVITY, 1, severity, vec!["security_control"])
        }
        EventType::ExecutionSucceeded | EventType::ExecutionFailed | EventType::ExecutionUnknown => {
            let activity = match str_at(data, &["category"]) {
                Some("containment" | "network") => 1,
                Some("identity" | "secrets") => 2,
                Some("enrichment") => 5,
                _ => 99,
            };
            let severity = if kind == EventType::ExecutionSucceeded { 1 } else { 3 };
            (REMEDIATION_ACTIVITY, activity, severity, vec!["host"])
        }
        EventType::RollbackSucceeded | EventType::RollbackFailed => {
            let severity = if kind == EventType::RollbackSucceeded { 1 } else { 3 };
            (REMEDIATION_ACTIVITY, 3, severity, vec!["host"])
        }
        _ => return None,
    };
    ev.insert("class_uid".into(), json!(class_uid));
    ev.insert("category_uid".into(), json!(class_uid / 1000));
    ev.insert("activity_id".into(), json!(activity_id));
    ev.insert("type_uid".into(), json!(class_uid * 100 + activity_id));
    ev.insert("time".into(), json!(time_ms));
    ev.insert("severity_id".into(), json!(severity_id));
    ev.insert("metadata".into(), metadata(entry, product, &profiles));
    ev.insert("message".into(), json!(message(entry)));
    if class_uid == API_ACTIVITY {
        ev.insert("actor".into(), actor(entry));
        ev.insert("api".into(), api(entry));
        ev.insert("src_endpoint".into(), src_endpoint(entry));
        let status = if kind == EventType::DecisionMade { 1 } else { 0 };
        ev.insert("status_id".into(), json!(status));
        if let Some(c) = data.get("confidence").and_then(Value::as_f64) {
            ev.insert("confidence_score".into(), json!((c * 100.0).round() as i64));
        }
    } else {
        let command = str_at(data, &["execution_id"]).or(entry.event.request.as_deref()).unwrap_or("unknown");
        ev.insert("command_uid".into(), json!(command));
        let status = match kind {
            EventType::ExecutionSucceeded | EventType::RollbackSucceeded => 1,
            EventType::ExecutionFailed | EventType::RollbackFailed => 2,
            _ => 0,
        };
        ev.insert("status_id".into(), json!(status));
        ev.insert("actor".into(), actor(entry));
    }
    ev.insert("unmapped".into(), unmapped(entry));
    Some(Value::Object(ev))
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter().try_fold(v, |v, k| v.get(k))?.as_str()
}

fn metadata(entry: &Entry, product: &Product, profiles: &[&str]) -> Value {
    let mut m = json!({
        "version": OCSF_VERSION,
        "product": {"name": "Warden", "vendor_name": "Warden", "version": product.version},
        "uid": format!("warden-audit-{}", entry.seq),
        "sequence": entry.seq,
        "event_code": entry.event.kind.as_str(),
        "log_name": "warden.audit",
        "profiles": profiles,
    });
    let correlation = entry.event.request.as_deref().or(entry.event.task.as_deref());
    if let (Some(id), Value::Object(map)) = (correlation, &mut m) {
        map.insert("correlation_uid".into(), json!(id));
    }
    m
}

fn actor(entry: &Entry) -> Value {
    let a = &entry.event.actor;
    let type_id = match a.kind {
        ActorKind::Agent => 4,
        ActorKind::User => 1,
        ActorKind::System => 3,
    };
    let name = a.id.rsplit('/').next().unwrap_or(&a.id);
    json!({"user": {"uid": a.id, "name": name, "type_id": type_id}, "app_name": "warden"})
}

fn api(entry: &Entry) -> Value {
    let operation = entry.event.action.as_deref().unwrap_or("unknown");
    let request = entry.event.request.as_deref().unwrap_or("unknown");
    json!({"operation": operation, "service": {"name": "warden"}, "request": {"uid": request}})
}

fn src_endpoint(entry: &Entry) -> Value {
    match str_at(&entry.event.data, &["source_ip"]) {
        Some(ip) => json!({"ip": ip, "uid": entry.event.actor.id}),
        None => json!({"uid": entry.event.actor.id}),
    }
}

fn policy(data: &Value) -> Value {
    let d = data.get("decision").unwrap_or(&Value::Null);
    let version = str_at(d, &["bundle_version"]).unwrap_or("unknown");
    let first = d.get("policies").and_then(Value::as_array).and_then(|p| p.first());
    match first {
        Some(p) => {
            let id = str_at(p, &["id"]).unwrap_or("unknown");
            let owner = str_at(p, &["owner"]).unwrap_or("unknown");
            json!({"uid": id, "name": id, "version": version, "is_applied": true, "desc": format!("owner: {owner}")})
        }
        None => {
            json!({"uid": "warden-default", "name": "no determining policy", "version": version, "is_applied": true})
        }
    }
}

fn message(entry: &Entry) -> String {
    let e = &entry.event;
    let action = e.action.as_deref().unwrap_or("action");
    let target = str_at(&e.data, &["target"]).unwrap_or("");
    let on = if target.is_empty() { String::new() } else { format!(" on {target}") };
    match e.kind {
        EventType::ActionRequested => format!("{} requested {action}{on}", e.actor.id),
        EventType::DecisionMade => {
            let outcome = str_at(&e.data, &["decision", "outcome"]).unwrap_or("unknown");
            format!("{action}{on}: {outcome}")
        }
        other => format!("{action}{on}: {other}"),
    }
}

fn unmapped(entry: &Entry) -> Value {
    let e = &entry.event;
    let mut m = Map::new();
    m.insert("type".into(), json!(e.kind.as_str()));
    for (k, v) in [("task", &e.task), ("request", &e.request), ("action", &e.action)] {
        if let Some(v) = v {
            m.insert(k.into(), json!(v));
        }
    }
    m.insert("data".into(), e.data.clone());
    json!({"warden": m})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::entry::{Actor, Event};
    use time::macros::datetime;

    fn entry(ev: Event) -> Entry {
        Entry::parse(&ev.to_entry_bytes(7, datetime!(2026-11-23 06:00 UTC)).unwrap()).unwrap()
    }

    #[test]
    fn decisions_carry_the_security_control_fields() {
        let ev = Event::new(EventType::DecisionMade, Actor::agent("spiffe://acme.example/soc/edr"))
            .request("req_1")
            .action("host.isolate")
            .data(json!({"target": "host:web-42", "confidence": 0.93, "decision": {
                "outcome": "deny", "bundle_version": "abc",
                "policies": [{"id": "edr.host.isolate", "owner": "soc-leads", "file": "agents/edr.toml"}]}}));
        let out = event(&entry(ev), &Product { version: "0.1.0".into() }).unwrap();
        assert_eq!(out["type_uid"], 600301);
        assert_eq!(out["action_id"], 2);
        assert_eq!(out["disposition_id"], 2);
        assert_eq!(out["policy"]["uid"], "edr.host.isolate");
        assert_eq!(out["confidence_score"], 93);
        assert_eq!(out["time"], 1_795_413_600_000i64);
        assert_eq!(out["metadata"]["sequence"], 7);
    }

    #[test]
    fn executions_are_remediations_and_rollbacks_restore() {
        let ev = Event::new(EventType::ExecutionSucceeded, Actor::agent("a"))
            .data(json!({"category": "identity", "execution_id": "exe_1"}));
        let out = event(&entry(ev), &Product { version: "0".into() }).unwrap();
        assert_eq!((out["type_uid"].clone(), out["command_uid"].clone()), (json!(700102), json!("exe_1")));
        let ev = Event::new(EventType::RollbackSucceeded, Actor::user("alice")).request("req_9");
        let out = event(&entry(ev), &Product { version: "0".into() }).unwrap();
        assert_eq!((out["activity_id"].clone(), out["command_uid"].clone()), (json!(3), json!("req_9")));
    }

    #[test]
    fn bookkeeping_entries_are_not_exported() {
        let ev = Event::new(EventType::UserAdded, Actor::system("warden"));
        assert_eq!(event(&entry(ev), &Product { version: "0".into() }), None);
    }
}
