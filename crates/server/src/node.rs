//! This node among others on one store. What another node commits reaches this one through
//! the store: [`tick`] runs a few times a second and brings the halt mirror up to date, wakes
//! long polls and live pages when the log grew, and — on a shared store — writes this node's
//! heartbeat and reconciles the tool calls of nodes whose heartbeat stopped.
//!
//! Nothing here is needed for safety: every execution's start commit checks the halts epoch,
//! the bundle version, the agent and the task in the database. It is what makes a node *see*
//! another's changes promptly instead of learning them from a conflict.

use time::OffsetDateTime;
use warden_store::{Batch, Change};

use crate::error::ApiError;
use crate::model::millis;
use crate::state::{AppState, NODE_HEARTBEAT_MS, node_key};

/// How often a node on a shared store looks for calls left behind by a gone node.
const REAP_EVERY_MS: i64 = 5_000;

/// What [`tick`] remembers between runs.
#[derive(Debug, Default)]
pub struct Watch {
    size: Option<u64>,
    beat_ms: i64,
    reap_ms: i64,
}

/// Writes this node's heartbeat (the time now).
pub fn beat(s: &AppState) -> Result<(), ApiError> {
    write_beat(s, millis(s.now()))
}

/// Says this node has stopped (a heartbeat of 0): the others need not wait for it to age.
pub fn goodbye(s: &AppState) -> Result<(), ApiError> {
    write_beat(s, 0)
}

fn write_beat(s: &AppState, ms: i64) -> Result<(), ApiError> {
    s.ledger().commit(Batch::new().change(Change::SetMeta { key: node_key(&s.node), value: ms.to_string() }))?;
    Ok(())
}

/// One round; see the module's documentation.
pub fn tick(s: &AppState, w: &mut Watch, now: OffsetDateTime) -> Result<(), ApiError> {
    crate::facts::sync(s)?;
    s.follow_bundle()?;
    let size = s.ledger().store().size()?;
    if w.size.is_some_and(|seen| seen != size) {
        s.changed();
    }
    w.size = Some(size);
    if s.shared_store {
        let now = millis(now);
        if now - w.beat_ms >= NODE_HEARTBEAT_MS {
            beat(s)?;
            w.beat_ms = now;
        }
        if now - w.reap_ms >= REAP_EVERY_MS {
            w.reap_ms = now;
            let unknown = crate::execution::reconcile(s, false)?;
            if !unknown.is_empty() {
                tracing::warn!(executions = ?unknown, "a node stopped during these tool calls; they are now `unknown`");
            }
        }
    }
    Ok(())
}
