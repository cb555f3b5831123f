//! The reports of the log this server writes (DESIGN §13), for the console's Reports page: the
//! core's pure reports ([`warden_core::report`], [`warden_core::controls`]) over the store's
//! entries, read a page at a time, with what the figures need from the bundle in force (the
//! guardrail diffs) and the store (the examples' inclusion proofs).

use std::collections::{BTreeMap, BTreeSet};

use warden_core::audit::entry::Entry;
use warden_core::controls::{ControlsReport, Mapping};
use warden_core::report::{AutonomyReport, Filter, Rules, Window};

use crate::error::{ApiError, Code};
use crate::model::User;
use crate::state::AppState;

/// Roles that see every agent's track record.
const SEE_ALL: [&str; 2] = ["admin", "auditor"];

/// The agents `user` oversees: those whose guardrail names one of the user's roles as an
/// approver (of any grant, or for escalation or step-up). `None`: every agent (an admin or an
/// auditor).
pub fn overseen(s: &AppState, user: &User) -> Result<Option<BTreeSet<String>>, ApiError> {
    if SEE_ALL.iter().any(|r| user.has_role(r)) {
        return Ok(None);
    }
    let bundle = s.bundle()?;
    let mine = |roles: &[String]| roles.iter().any(|r| user.has_role(r));
    Ok(Some(
        bundle
            .agents()
            .filter(|g| {
                mine(&g.escalation.approver_roles)
                    || mine(&g.escalation.step_up_roles)
                    || g.grants.iter().any(|gr| mine(&gr.approver_roles))
            })
            .map(|g| g.id.clone())
            .collect(),
    ))
}

/// The store's entries from the start, a page at a time; the first unreadable page or entry
/// ends them and is kept in `error`.
struct Entries<'a> {
    store: &'a dyn warden_store::Store,
    next: u64,
    page: std::vec::IntoIter<Entry>,
    error: Option<ApiError>,
}

impl Iterator for Entries<'_> {
    type Item = Entry;
    fn next(&mut self) -> Option<Entry> {
        if self.error.is_some() {
            return None;
        }
        if self.page.len() == 0 {
            let page = match self.store.entries(self.next, 4096) {
                Ok(p) => p,
                Err(e) => {
                    self.error = Some(e.into());
                    return None;
                }
            };
            let mut parsed = Vec::with_capacity(page.len());
            for e in &page {
                match Entry::parse(&e.bytes) {
                    Ok(entry) => parsed.push(entry),
                    Err(err) => {
                        self.error = Some(ApiError::new(
                            Code::StoreUnavailable,
                            format!("audit entry {} cannot be read: {err} (run `warden audit verify`)", e.seq),
                        ));
                        return None;
                    }
                }
            }
            self.page = parsed.into_iter();
        }
        let e = self.page.next()?;
        self.next = e.seq + 1;
        Some(e)
    }
}

fn over_log<T>(s: &AppState, f: impl FnOnce(&mut dyn Iterator<Item = Entry>) -> T) -> Result<T, ApiError> {
    let store = s.ledger().store();
    let mut entries = Entries { store: store.as_ref(), next: 0, page: Vec::new().into_iter(), error: None };
    let out = f(&mut entries);
    entries.error.map_or(Ok(out), Err)
}

/// The autonomy report of `agents` (all: `None`) over `window`, with each row's guardrail diff
/// against the bundle in force.
pub fn autonomy(
    s: &AppState,
    window: Window,
    agents: Option<BTreeSet<String>>,
) -> Result<(AutonomyReport, Vec<Option<String>>), ApiError> {
    let filter = Filter { agents, ..Filter::default() };
    let report = over_log(s, |e| warden_core::report::autonomy(e, window, &filter, &Rules::default()))?;
    let diffs = warden_core::report::diffs(&report, s.bundle()?.files());
    Ok((report, diffs))
}

/// The controls report over `window`, with the inclusion proof of each example entry against
/// the latest checkpoint.
pub fn controls(s: &AppState, window: Window) -> Result<(ControlsReport, BTreeMap<u64, serde_json::Value>), ApiError> {
    let report = over_log(s, |e| warden_core::controls::controls(e, window, &Mapping::shipped()))?;
    let store = s.ledger().store();
    let mut proofs = BTreeMap::new();
    for seq in report.controls.iter().flat_map(|c| c.examples.iter().copied()).collect::<BTreeSet<u64>>() {
        // An entry newer than the latest checkpoint has no proof yet: shown without one.
        if let Ok(p) = warden_store::proofs::inclusion(store.as_ref(), seq, None) {
            proofs.insert(seq, serde_json::to_value(p).map_err(|e| ApiError::new(Code::Internal, e.to_string()))?);
        }
    }
    Ok((report, proofs))
}
