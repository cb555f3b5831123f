//! Human-readable rendering of decisions.

use std::fmt::Write as _;

use warden_core::Decision;

/// Output format for commands a person may read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    #[default]
    Text,
    Json,
}

/// A decision as a short block of text, one fact per line.
pub fn decision(d: &Decision) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{}  (granted level {} → effective {}, confidence band {})",
        d.outcome,
        d.granted_level,
        d.effective_level,
        d.band.as_str()
    );
    for p in &d.policies {
        let _ = writeln!(s, "  policy    {}  owner {}  {}:{}", p.id, p.owner, p.file, p.line);
    }
    for c in &d.caps {
        let _ = writeln!(s, "  cap       {}: {}", c.code, c.reason);
    }
    if let Some(a) = &d.approval {
        let sod = if a.separation_of_duties { ", owner may not approve" } else { "" };
        let _ = writeln!(
            s,
            "  approval  roles {} · quorum {} · expires {}{sod}",
            a.roles.join(", "),
            a.quorum,
            a.expires_at.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
        );
    }
    if let Some(o) = d.shadow_outcome {
        let _ = writeln!(s, "  shadow    would have been {o}");
    }
    if d.trip_breaker {
        let _ = writeln!(s, "  breaker   budget exceeded: the breaker trips for this agent and action");
    }
    if d.review {
        let _ = writeln!(s, "  review    flagged for post-hoc review");
    }
    let _ = writeln!(s, "  bundle    {}", d.bundle_version);
    s
}
