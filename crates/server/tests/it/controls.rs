//! `warden report controls` (DESIGN §13) over a log the server wrote: each feature's evidence
//! against an independent count of the same entries, gaps named, the example entries proved
//! against the log's own tree, and the HTML page showing every control once.

use std::collections::BTreeMap;

use warden_core::audit::entry::{Entry, EventType};
use warden_core::audit::merkle::{MemoryTree, leaf_hash};
use warden_core::controls::{Mapping, Status, controls};
use warden_core::report::Window;

use crate::simulate::{a_week_of_work, entries};

fn has_cap(e: &Entry, code: &str) -> bool {
    e.event.kind == EventType::DecisionMade
        && e.event.data["decision"]["caps"].as_array().is_some_and(|caps| caps.iter().any(|c| c["code"] == code))
}

#[tokio::test]
async fn each_control_shows_the_entries_that_evidence_it_and_names_its_gaps() {
    let (h, _lab, _keys) = crate::harness_lab();
    a_week_of_work(&h).await;
    let log = entries(&h);
    let mapping = Mapping::shipped();
    let r = controls(log.clone(), Window::default(), &mapping);
    assert_eq!((r.entries, r.in_window), (log.len() as u64, log.len() as u64));

    // Independently: the entries each of four features stands for.
    let count = |p: &dyn Fn(&Entry) -> bool| log.iter().filter(|e| p(e)).count() as u64;
    let is = |e: &Entry, kinds: &[EventType]| kinds.contains(&e.event.kind);
    let want: BTreeMap<&str, u64> = [
        ("emergency-stop", count(&|e| is(e, &[EventType::HaltSet, EventType::HaltLifted]) || has_cap(e, "halted"))),
        (
            "human-approval",
            count(&|e| {
                is(
                    e,
                    &[
                        EventType::ApprovalRequested,
                        EventType::ApprovalGranted,
                        EventType::ApprovalRejected,
                        EventType::ApprovalExpired,
                    ],
                )
            }),
        ),
        (
            "budgets-breakers",
            count(&|e| {
                is(e, &[EventType::BreakerTripped])
                    || ["budget_exceeded", "distinct_targets_exceeded", "breaker_open"].iter().any(|c| has_cap(e, c))
            }),
        ),
        (
            "taint",
            count(&|e| {
                is(e, &[EventType::TaskTainted, EventType::TaskTaintCleared])
                    || ["untrusted_input", "data_not_allowed", "confidential_egress"].iter().any(|c| has_cap(e, c))
            }),
        ),
        ("audit-log", log.len() as u64),
    ]
    .into();
    for (id, n) in &want {
        let f = r.features.iter().find(|f| f.id == *id).unwrap();
        assert_eq!(f.count, *n, "{id}");
        assert!(*n > 0, "the stretch of work shows `{id}`");
    }
    // ASI08 (breakers, stop, rollback): the distinct entries of its features, each counted once.
    let asi08 = r.controls.iter().find(|c| c.id == "ASI08").unwrap();
    let rollback = count(&|e| is(e, &[EventType::RollbackSucceeded, EventType::RollbackFailed]));
    let stop_or_budget = count(&|e| {
        is(e, &[EventType::HaltSet, EventType::HaltLifted, EventType::BreakerTripped])
            || ["halted", "budget_exceeded", "distinct_targets_exceeded", "breaker_open"].iter().any(|c| has_cap(e, c))
    });
    assert_eq!(asi08.evidence, stop_or_budget + rollback);
    assert_eq!(asi08.status, Status::Evidenced);
    assert_eq!(asi08.examples.len(), 3);
    assert_eq!(asi08.last.as_ref().map(|l| l.0), asi08.examples.last().copied());

    // Gaps: ASI05 has no feature, and says why.
    let asi05 = r.controls.iter().find(|c| c.id == "ASI05").unwrap();
    assert_eq!(asi05.status, Status::NoFeature);
    assert!(asi05.gap.is_some() && asi05.evidence == 0);
    let total: u64 = r.summary.values().sum();
    assert_eq!(total, mapping.controls.len() as u64);
    assert!(r.summary.get(&Status::NoFeature).copied().unwrap_or(0) >= 6);

    // Every example is proved against the log's latest checkpoint: its leaf is the entry's
    // bytes, and the path leads to the root of the tree recomputed here from the entries.
    let store = h.app.ledger().store();
    let stored = store.entries(0, log.len()).unwrap();
    let mut proofs = BTreeMap::new();
    for c in &r.controls {
        for &seq in &c.examples {
            let p = warden_store::proofs::inclusion(store.as_ref(), seq, None).unwrap();
            let mut tree = MemoryTree::new();
            for e in stored.iter().take(p.tree_size as usize) {
                tree.push_entry(&e.bytes);
            }
            assert_eq!(p.leaf_hash, leaf_hash(&stored[seq as usize].bytes));
            assert!(p.verify(&tree.root()), "entry {seq}");
            proofs.insert(seq, serde_json::to_value(&p).unwrap());
        }
    }
    assert!(!proofs.is_empty());

    // The page: every control once, its status as computed, each example with its proof.
    let page = warden_server::reports::controls_html(&r, &proofs, "all").unwrap();
    for c in &r.controls {
        assert_eq!(page.matches(&format!("<strong>{}</strong>", c.id)).count(), 1, "{}", c.id);
    }
    for (seq, p) in &proofs {
        assert!(page.contains(&format!("entry #{seq} — inclusion proof")), "{seq}");
        assert!(page.contains(p["leaf_hash"].as_str().unwrap()), "{seq}");
    }
    for fetches in ["<script", "<link", " src=", "href=", "url(", "@import"] {
        assert!(!page.contains(fetches), "self-contained: no `{fetches}`");
    }
    let evidenced = r.summary.get(&Status::Evidenced).copied().unwrap_or(0);
    assert!(page.contains(&format!("evidenced: {evidenced}")), "the summary bar's figure");
}
