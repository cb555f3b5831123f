//! Attacks on issue 27's core pieces: `warden policy simulate` replays requests from the log.
//! `request_of` re-parses each logged target; the replay is exact only if parsing a target's
//! canonical form gives that form back.

use warden_core::inventory::TargetRef;

/// Every single character (and `x` + it, and it + a combining mark) as a host id: the target the
/// server decided on, written to the log and parsed again by the replay, must be the same target.
// FINDING (fixed): `canonical_id` (crates/core/src/inventory.rs) is NFKC then lower case, which is not
// idempotent: `host:Ϊ́` (U+03AA U+0301) is decided by the server as `host:ΐ` (U+03CA U+0301,
// not in NFC), and that is what the log records; `simulate`'s `request_of` parses it again and
// NFKC composes it into `host:ΐ` (U+0390) — another target, looked up in the inventory under
// another key. The replay then decides on a target the server never decided on (and a forbid or
// an asset keyed on one spelling misses the other).
#[test]
fn a_logged_target_parses_back_to_itself() {
    let mut broken = Vec::new();
    for kind in ["host", "account", "mailbox", "user", "ip", "alert"] {
        for cp in 0x20u32..0x2100 {
            let Some(c) = char::from_u32(cp) else { continue };
            for id in [format!("{c}"), format!("a{c}"), format!("{c}\u{301}"), format!("{c}."), format!("{c}{c}")] {
                let Ok(first) = format!("{kind}:{id}").parse::<TargetRef>() else { continue };
                if first.check().is_err() {
                    continue; // refused before any decision
                }
                match first.to_string().parse::<TargetRef>() {
                    Ok(again) if again == first => {}
                    other => broken.push(format!("{kind}:{:?} -> {:?} -> {:?}", id, first.id, other.map(|t| t.id))),
                }
            }
        }
    }
    assert!(
        broken.is_empty(),
        "{} targets change when parsed again: {:?}",
        broken.len(),
        &broken[..broken.len().min(20)]
    );
}

/// A secret param a hand-written rule names is replayed on its commitment (the log holds no
/// secret): such a request is listed as inexact, with the param named, and one whose secret no
/// rule reads is not.
#[test]
fn a_secret_a_rule_names_makes_its_replay_inexact() {
    use crate::attack27b::{replay_one, secret_bundle};
    let named = "\n@id(\"wipe-reason\")\n@owner(\"team:x\")\nforbid (principal, action, resource) when { context has params && context.params has reason && context.params.reason == \"wipe\" };\n";
    for (rule, inexact) in [(named, 1), ("", 0)] {
        let (_, s) = replay_one(&secret_bundle(rule));
        assert_eq!(s.replayed, 1);
        assert_eq!(s.inexact, inexact, "{:?}", s.inexact_listed);
        if inexact == 1 {
            assert!(s.inexact_listed[0].why.contains("secret param `reason`"), "{:?}", s.inexact_listed);
            // The rule read `wipe` and forbade it; the replay reads the commitment: not the same
            // decision, and the report says it cannot be.
            assert_eq!(s.same_bundle_differing, 1);
        }
    }
}
