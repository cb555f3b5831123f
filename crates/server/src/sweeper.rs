//! The sweeper: what the server does every second without being asked — lift halts past their
//! expiry, expire and escalate approvals that are due, and tell the webhooks and long polls.

use crate::approvals::{self, Swept};
use crate::error::ApiError;
use crate::state::AppState;

/// Lifts expired halts, expires and escalates the approvals that are due, and tells the
/// webhooks and the long polls. The server runs it every second; tests call it with a clock
/// of their own.
pub fn sweep_due(s: &AppState) -> Result<Swept, ApiError> {
    // Halts past their expiry are lifted first: an agent they halted is usable again.
    for h in crate::halt::expire_due(s)? {
        tracing::info!(halt = %h.id, "halt expired");
    }
    let store = s.ledger().store();
    let commit = |b| s.ledger().commit(b).map(|_| ());
    let swept = approvals::sweep(store.as_ref(), &commit, s.now())?;
    for a in &swept.expired {
        s.notifier.send(crate::notify::Kind::Expired, a);
    }
    for a in &swept.escalated {
        s.notifier.send(crate::notify::Kind::Escalated, a);
    }
    if !swept.expired.is_empty() {
        s.changed();
    }
    Ok(swept)
}
