//! Budget breakers (DESIGN §3): a budget exceeded trips the breaker of its agent × action,
//! which holds every request of the pair at human approval until a human resets it; budgets
//! then count afresh from the reset. The state lives in the store's settings.

use serde_json::json;
use warden_core::audit::entry::{Actor, Event, EventType};
use warden_store::{Batch, Change, Store};

use crate::error::{ApiError, Code};
use crate::model::millis;
use crate::state::AppState;

/// Where a tripped breaker is kept: the store's settings, one key per agent × action.
pub fn breaker_key(agent: &str, action: &str) -> String {
    format!("breaker:{agent}:{action}")
}

/// A breaker's state: `open <time>` from its trip until `warden breaker reset` writes
/// `closed <ms>`; budgets then count only what happened after the reset.
#[derive(Debug, Clone)]
pub struct Breaker {
    pub open: bool,
    pub reset_ms: Option<i64>,
    /// The setting as read: what a trip expects unchanged.
    pub seen: Option<String>,
}

pub fn breaker(store: &dyn Store, agent: &str, action: &str) -> Result<Breaker, ApiError> {
    let v = store.meta(&breaker_key(agent, action))?;
    let open = v.as_deref().is_some_and(|v| v.starts_with("open"));
    let reset_ms = v.as_deref().and_then(|v| v.strip_prefix("closed ")).and_then(|ms| ms.parse().ok());
    Ok(Breaker { open, reset_ms, seen: v })
}

/// Closes the tripped breaker of `agent` × `action` (audited with `by` and `reason`); refused
/// (409 `breaker_closed`) when it is not tripped. The time of the reset.
pub fn reset(
    s: &AppState,
    agent: &str,
    action: &str,
    by: &Actor,
    reason: &str,
) -> Result<time::OffsetDateTime, ApiError> {
    if crate::input::is_blank(reason) {
        return Err(ApiError::new(Code::ReasonRequired, "a reset needs a `reason`"));
    }
    let key = breaker_key(agent, action);
    let seen = s.ledger().store().meta(&key)?;
    if !seen.as_deref().is_some_and(|v| v.starts_with("open")) {
        return Err(ApiError::new(
            Code::BreakerClosed,
            format!("the breaker of `{agent}` × `{action}` is not tripped"),
        ));
    }
    let now = s.now();
    // The trip it closes, and no other: a trip or reset since (on any node) makes this conflict.
    let batch = Batch::new()
        .change(Change::ExpectMeta { key: key.clone(), value: seen })
        .change(Change::SetMeta { key, value: format!("closed {}", millis(now)) })
        .event(
            Event::new(EventType::BreakerReset, by.clone())
                .action(action)
                .data(json!({"agent": agent, "reason": reason})),
        );
    s.ledger().commit(batch)?;
    Ok(now)
}
