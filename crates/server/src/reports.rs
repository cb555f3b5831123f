//! Reports as people would rather read them (DESIGN §13): one self-contained HTML file per
//! report — inline SVG charts, inline style, no script, nothing fetched — rendered by askama,
//! which escapes every value (an agent id or a reason is text, never markup). The figures are
//! the core's ([`warden_core::report`]); this module only draws them.

use askama::Template;
use warden_core::report::{AutonomyReport, Calibration};

/// A point of a reliability diagram, in the chart's coordinates.
#[derive(Debug)]
pub struct Dot {
    pub x: f64,
    pub y: f64,
    pub r: f64,
    pub label: String,
}

/// A reliability diagram: the diagonal is perfect calibration; each bin a dot at (mean
/// confidence, observed), its area by its count.
#[derive(Debug)]
pub struct Curve {
    pub title: String,
    pub dots: Vec<Dot>,
    pub summary: String,
}

/// One segment of an outcome bar.
#[derive(Debug)]
pub struct Segment {
    pub x: f64,
    pub width: f64,
    pub colour: &'static str,
    pub label: String,
}

#[derive(Debug)]
pub struct RowView {
    pub title: String,
    pub facts: Vec<(String, String)>,
    pub outcomes: Vec<Segment>,
    pub curves: Vec<Curve>,
    pub verdict: String,
    pub reasons: String,
    pub evidence: String,
    pub diff: Option<String>,
}

#[derive(Debug)]
pub struct Bar {
    pub label: String,
    pub y: f64,
    pub width: f64,
    pub text: String,
}

/// One day's column of the outcome mix over time.
#[derive(Debug)]
pub struct Column {
    pub x: f64,
    pub day: String,
    pub segments: Vec<Stack>,
}

/// One outcome's share of a column.
#[derive(Debug)]
pub struct Stack {
    pub y: f64,
    pub height: f64,
    pub colour: &'static str,
    pub label: String,
}

/// The autonomy report's figures, ready to draw: the standalone page and the console's
/// Reports page include the same markup (`reports/autonomy_body.html`).
#[derive(Debug)]
pub struct AutonomyView {
    pub heading: String,
    pub rows: Vec<RowView>,
    pub approvers: Vec<(String, String, Vec<String>)>,
    pub load: Vec<Bar>,
    pub load_height: f64,
    pub roles: Vec<(String, String)>,
    pub timeline: Vec<Column>,
    pub timeline_width: f64,
}

#[derive(Debug, Template)]
#[template(path = "reports/autonomy.html")]
pub struct AutonomyPage {
    pub autonomy: AutonomyView,
}

const WIDTH: f64 = 360.0;

/// A coordinate to a tenth: short, stable markup.
fn px(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}
const PLOT: f64 = 200.0;

fn curve(title: &str, c: &Calibration, min: u64) -> Curve {
    let total = c.samples.max(1) as f64;
    let dots = c
        .bins
        .iter()
        .map(|b| Dot {
            x: px(30.0 + b.mean_confidence * PLOT),
            y: px(10.0 + (1.0 - b.observed) * PLOT),
            r: px(3.0 + 9.0 * (b.n as f64 / total).sqrt()),
            label: format!(
                "{:.1}–{:.1}: {} samples, mean confidence {:.3}, observed {:.3}",
                b.from, b.to, b.n, b.mean_confidence, b.observed
            ),
        })
        .collect();
    let summary = match (c.ece, c.brier) {
        (Some(e), Some(b)) if c.samples >= min => format!("{} samples · ECE {e:.3} · Brier {b:.3}", c.samples),
        (Some(e), Some(b)) => format!("{} samples — not enough evidence · ECE {e:.3} · Brier {b:.3}", c.samples),
        _ => "no samples".into(),
    };
    Curve { title: title.into(), dots, summary }
}

/// The colour of an outcome in every chart.
fn colour(outcome: &str) -> &'static str {
    match outcome {
        "execute" => "#2b7a3d",
        "require_approval" => "#b7791f",
        "advise" => "#4a6fa5",
        _ => "#a23b3b",
    }
}

const TIMELINE_HEIGHT: f64 = 120.0;

/// The outcome mix over time: a stacked column per day, its height by the day's decisions.
fn timeline(r: &AutonomyReport) -> Vec<Column> {
    let most = r.days.iter().map(|d| d.outcomes.values().sum::<u64>()).max().unwrap_or(1).max(1) as f64;
    r.days
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let mut y = 10.0 + TIMELINE_HEIGHT;
            let segments = d
                .outcomes
                .iter()
                .map(|(o, n)| {
                    let height = *n as f64 / most * TIMELINE_HEIGHT;
                    y -= height;
                    Stack { y: px(y), height: px(height), colour: colour(o), label: format!("{}: {o} {n}", d.day) }
                })
                .collect();
            Column { x: px(40.0 + 28.0 * i as f64), day: d.day.get(5..).unwrap_or(&d.day).to_string(), segments }
        })
        .collect()
}

/// The autonomy report as one self-contained HTML page; `diffs` are the rows' proposed changes.
pub fn autonomy_html(r: &AutonomyReport, diffs: &[Option<String>], since: &str) -> Result<String, askama::Error> {
    AutonomyPage { autonomy: autonomy_view(r, diffs, since) }.render()
}

/// The autonomy report's figures, for either page.
pub fn autonomy_view(r: &AutonomyReport, diffs: &[Option<String>], since: &str) -> AutonomyView {
    let rows = r
        .rows
        .iter()
        .zip(diffs.iter().chain(std::iter::repeat(&None)))
        .map(|(row, diff)| {
            let total = row.requests.values().sum::<u64>().max(1) as f64;
            let mut x = 0.0;
            let outcomes = row
                .requests
                .iter()
                .map(|(o, n)| {
                    let width = *n as f64 / total * WIDTH;
                    let s = Segment { x: px(x), width: px(width), colour: colour(o), label: format!("{o}: {n}") };
                    x += width;
                    s
                })
                .collect();
            let ap = &row.approvals;
            let x = &row.executions;
            let mut facts = vec![
                (
                    "requests".to_string(),
                    row.requests.iter().map(|(k, n)| format!("{k} {n}")).collect::<Vec<_>>().join(", "),
                ),
                (
                    "executions".into(),
                    format!(
                        "succeeded {}, failed {}, unknown {} · rolled back {} · breaker trips {}",
                        x.succeeded, x.failed, x.unknown, row.rollbacks, row.breaker_trips
                    ),
                ),
                (
                    "approvals".into(),
                    format!(
                        "approved {}, rejected {}, expired {}, cancelled {}",
                        ap.approved, ap.rejected, ap.expired, ap.cancelled
                    ),
                ),
            ];
            if !row.shadow.is_empty() {
                let h = &row.shadow_humans;
                facts.push((
                    "shadow".into(),
                    format!(
                        "would have: {} · then humans, on the same action and target: approved {}, rejected {}, no verdict {}",
                        row.shadow.iter().map(|(k, n)| format!("{k} {n}")).collect::<Vec<_>>().join(", "),
                        h.approved,
                        h.rejected,
                        h.unseen
                    ),
                ));
            }
            facts.push((
                "agreement".into(),
                match &row.agreement {
                    Some(g) => format!(
                        "{:.1} % of {} decided (95 % interval {:.1}–{:.1} %){}",
                        g.rate * 100.0,
                        g.decided,
                        g.low * 100.0,
                        g.high * 100.0,
                        if g.decided < r.rules.min_decided { " — not enough evidence" } else { "" }
                    ),
                    None => "no decided approvals".into(),
                },
            ));
            let rec = &row.recommendation;
            let verdict = match (rec.level, rec.proposed_level) {
                (Some(l), Some(p)) => format!("{} (level {l} → {p})", rec.verdict),
                (Some(l), None) => format!("{} (level {l})", rec.verdict),
                _ => rec.verdict.to_string(),
            };
            RowView {
                title: format!("{} × {}", row.agent, row.action),
                facts,
                outcomes,
                curves: vec![
                    curve("against human verdicts", &row.calibration_verdicts, r.rules.min_decided),
                    curve("against outcomes", &row.calibration_outcomes, r.rules.min_decided),
                ],
                verdict,
                reasons: rec.reasons.join("; "),
                evidence: rec.evidence.iter().map(u64::to_string).collect::<Vec<_>>().join(", "),
                diff: diff.clone(),
            }
        })
        .collect();
    let most = r.approvers.iter().map(|l| l.decisions).max().unwrap_or(1).max(1) as f64;
    let load = r
        .approvers
        .iter()
        .enumerate()
        .map(|(i, l)| Bar {
            label: l.approver.clone(),
            y: 10.0 + 24.0 * i as f64,
            width: px(l.decisions as f64 / most * 240.0),
            text: format!("{} ({} approved, {} quick)", l.decisions, l.approved, l.quick),
        })
        .collect();
    let approvers = r
        .approvers
        .iter()
        .map(|l| {
            let rate = l.per_hour.map_or_else(|| "—".into(), |h| format!("{h:.1}/h"));
            let median = l.median_secs.map_or_else(|| "—".into(), |s| format!("{s:.1} s"));
            (l.approver.clone(), format!("{} decisions, {rate}, median {median}", l.decisions), l.flags.clone())
        })
        .collect();
    let roles = r
        .roles
        .iter()
        .map(|l| (l.role.clone(), format!("asked {} · votes {} · expired {}", l.asked, l.votes, l.expired)))
        .collect();
    let timeline = timeline(r);
    AutonomyView {
        timeline_width: 60.0 + 28.0 * timeline.len() as f64,
        timeline,
        heading: format!(
            "since {since}: {} of {} log entries; promote at ≥ {:.0} % agreement with {} decided, demote below {:.0} %",
            r.in_window,
            r.entries,
            r.rules.promote_agreement * 100.0,
            r.rules.min_decided,
            r.rules.demote_agreement * 100.0
        ),
        rows,
        approvers,
        load_height: 20.0 + 24.0 * r.approvers.len() as f64,
        load,
        roles,
    }
}

#[cfg(test)]
mod tests {
    use warden_core::report::{Bin, Calibration, Executions, Recommendation, Row, Rules, autonomy};

    use super::*;

    /// The page is self-contained (no script, nothing fetched) and escapes what the log holds:
    /// a row named with markup, and a diff holding markup, render as text.
    #[test]
    fn the_html_report_is_inert_and_self_contained() {
        let mut report = autonomy(Vec::new(), Default::default(), &Default::default(), &Rules::default());
        report.rows.push(Row {
            agent: "<script>alert(1)</script>".into(),
            action: "host.isolate\"><img src=x>".into(),
            requests: [("execute".to_string(), 3), ("deny".to_string(), 1)].into(),
            bands: Default::default(),
            shadow: Default::default(),
            shadow_humans: Default::default(),
            executions: Executions { succeeded: 3, failed: 0, unknown: 0 },
            rollbacks: 0,
            breaker_trips: 0,
            approvals: Default::default(),
            agreement: None,
            calibration_verdicts: Calibration::default(),
            calibration_outcomes: Calibration {
                samples: 3,
                bins: vec![Bin { from: 0.9, to: 1.0, n: 3, mean_confidence: 0.95, observed: 1.0 }],
                ece: Some(0.05),
                brier: Some(0.0025),
            },
            recommendation: Recommendation {
                verdict: "hold",
                reasons: vec!["not enough evidence".into()],
                level: Some(3),
                proposed_level: None,
                grant: None,
                evidence: Vec::new(),
            },
        });
        let page = autonomy_html(&report, &[Some("-level = 3\n+level = <b>4</b>".into())], "all").unwrap();
        assert!(!page.contains("<script") && !page.contains("<img") && !page.contains("<b>"), "{page}");
        assert!(page.contains("&#60;script&#62;alert(1)&#60;/script&#62;"), "{page}");
        assert!(page.contains("3 samples — not enough evidence · ECE 0.050 · Brier 0.003"), "{page}");
        assert!(page.contains("<circle cx=\"220\""), "the bin drawn at its mean confidence: {page}");
        let fetched: Vec<&str> = page.match_indices("http").map(|(i, _)| &page[i..i + 26]).collect();
        assert!(fetched.iter().all(|u| *u == "http://www.w3.org/2000/svg"), "{fetched:?}");
    }
}

/// One control as the controls page shows it.
#[derive(Debug)]
pub struct ControlView {
    pub id: String,
    pub title: String,
    pub status: &'static str,
    pub class: &'static str,
    pub features: String,
    pub evidence: String,
    /// Each example entry with its inclusion proof (pretty JSON), when there is one.
    pub examples: Vec<(u64, String)>,
    pub gap: Option<String>,
    pub note: Option<String>,
}

/// The controls report's figures, for the standalone page and the console's Reports page
/// (`reports/controls_body.html`).
#[derive(Debug)]
pub struct ControlsView {
    pub heading: String,
    pub summary: Vec<Segment>,
    pub frameworks: Vec<(String, Vec<ControlView>)>,
}

#[derive(Debug, Template)]
#[template(path = "reports/controls.html")]
pub struct ControlsPage {
    pub controls: ControlsView,
}

/// The controls report as one self-contained HTML page, with each example's inclusion proof.
pub fn controls_html(
    r: &warden_core::controls::ControlsReport,
    proofs: &std::collections::BTreeMap<u64, serde_json::Value>,
    since: &str,
) -> Result<String, askama::Error> {
    ControlsPage { controls: controls_view(r, proofs, since) }.render()
}

/// The controls report's figures, for either page.
pub fn controls_view(
    r: &warden_core::controls::ControlsReport,
    proofs: &std::collections::BTreeMap<u64, serde_json::Value>,
    since: &str,
) -> ControlsView {
    use warden_core::controls::Status;
    let look = |s: Status| match s {
        Status::Evidenced => ("evidenced", "#2b7a3d"),
        Status::NotInLog => ("not-in-log", "#4a6fa5"),
        Status::NoEvidence => ("no-evidence", "#b7791f"),
        Status::NoFeature => ("no-feature", "#a23b3b"),
    };
    let total = r.summary.values().sum::<u64>().max(1) as f64;
    let mut x = 0.0;
    let summary = r
        .summary
        .iter()
        .map(|(s, n)| {
            let width = *n as f64 / total * WIDTH;
            let seg = Segment { x: px(x), width: px(width), colour: look(*s).1, label: format!("{}: {n}", s.as_str()) };
            x += width;
            seg
        })
        .collect();
    let mut frameworks: Vec<(String, Vec<ControlView>)> = Vec::new();
    for c in &r.controls {
        if frameworks.last().is_none_or(|(f, _)| *f != c.framework) {
            frameworks.push((c.framework.clone(), Vec::new()));
        }
        let evidence = match &c.last {
            Some((seq, t)) => format!("{} entries, last #{seq} at {t}", c.evidence),
            None => "none in the window".into(),
        };
        let examples = c
            .examples
            .iter()
            .map(|s| (*s, proofs.get(s).and_then(|p| serde_json::to_string_pretty(p).ok()).unwrap_or_default()))
            .collect();
        let view = ControlView {
            id: c.id.clone(),
            title: c.title.clone(),
            status: c.status.as_str(),
            class: look(c.status).0,
            features: c.features.join(", "),
            evidence,
            examples,
            gap: c.gap.clone(),
            note: c.note.clone(),
        };
        if let Some((_, rows)) = frameworks.last_mut() {
            rows.push(view);
        }
    }
    let heading = format!("since {since}: {} of {} log entries", r.in_window, r.entries);
    ControlsView { heading, summary, frameworks }
}

/// A before → after pair of outcome bars.
#[derive(Debug)]
pub struct ShiftView {
    pub title: String,
    pub before: Vec<Segment>,
    pub after: Vec<Segment>,
    pub text: String,
}

/// One changed request, as the simulation page lists it.
#[derive(Debug)]
pub struct ChangeView {
    pub seq: u64,
    pub time: String,
    pub request: String,
    pub agent: String,
    pub action: String,
    pub target: String,
    pub shift: String,
    pub flags: String,
    pub caps: String,
}

#[derive(Debug, Template)]
#[template(path = "reports/simulate.html")]
pub struct SimulatePage {
    pub heading: String,
    pub notes: Vec<String>,
    pub total: ShiftView,
    pub rows: Vec<ShiftView>,
    pub roles: Vec<Bar>,
    pub roles_height: f64,
    pub sensitive: Vec<ChangeView>,
    pub changes: Vec<ChangeView>,
    pub more: u64,
    pub guards: Vec<(String, bool, u64)>,
}

fn outcome_bar(counts: &std::collections::BTreeMap<warden_core::Outcome, u64>, scale: f64) -> Vec<Segment> {
    let mut x = 0.0;
    counts
        .iter()
        .rev()
        .map(|(o, n)| {
            let width = *n as f64 / scale * WIDTH;
            let s = Segment { x: px(x), width: px(width), colour: colour(o.as_str()), label: format!("{o}: {n}") };
            x += width;
            s
        })
        .collect()
}

fn shift_view(
    title: String,
    before: &std::collections::BTreeMap<warden_core::Outcome, u64>,
    after: &std::collections::BTreeMap<warden_core::Outcome, u64>,
) -> ShiftView {
    let scale = before.values().sum::<u64>().max(after.values().sum::<u64>()).max(1) as f64;
    let text = warden_core::simulate::shift_text(before, after);
    ShiftView { title, before: outcome_bar(before, scale), after: outcome_bar(after, scale), text }
}

fn change_view(c: &warden_core::simulate::Changed) -> ChangeView {
    let mut flags = Vec::new();
    if c.tier0 {
        flags.push("tier0".to_string());
    }
    if c.privileged {
        flags.push("privileged".to_string());
    }
    if let Some(w) = &c.inexact {
        flags.push(format!("inexact: {w}"));
    }
    ChangeView {
        seq: c.seq,
        time: c.time.clone(),
        request: c.request.clone(),
        agent: c.agent.clone(),
        action: c.action.clone(),
        target: c.target.clone(),
        shift: format!("{} → {}", c.before, c.after),
        flags: flags.join(", "),
        caps: c.caps.iter().map(|c| c.as_str()).collect::<Vec<_>>().join(", "),
    }
}

/// A simulation as one self-contained HTML page: outcomes before → after (in total and per
/// agent × action), the approval load per role, every new execution on a tier0 or privileged
/// target, the changes and the guards.
pub fn simulate_html(
    s: &warden_core::simulate::Simulation,
    since: &str,
    guards: &[warden_core::simulate::Guard],
) -> Result<String, askama::Error> {
    let mut notes = Vec::new();
    if s.unrecorded > 0 {
        notes.push(format!(
            "{} decisions were logged without their facts (before Warden recorded them): not replayed",
            s.unrecorded
        ));
    }
    if s.same_bundle_differing > 0 {
        notes.push(format!(
            "{} decisions made under this very bundle are decided otherwise now: the log does not hold what they were decided on",
            s.same_bundle_differing
        ));
    }
    if s.inexact > 0 {
        notes.push(format!("{} replays depend on what the log did not count (listed as inexact)", s.inexact));
    }
    let most = s.roles.iter().map(|r| r.before.max(r.after)).max().unwrap_or(1).max(1) as f64;
    let roles = s
        .roles
        .iter()
        .enumerate()
        .map(|(i, r)| Bar {
            label: r.role.clone(),
            y: 10.0 + 24.0 * i as f64,
            width: px(r.after as f64 / most * 240.0),
            text: format!("{} → {}", r.before, r.after),
        })
        .collect();
    SimulatePage {
        heading: format!(
            "{} over the log since {since}: {} decisions replayed ({} made under this bundle), {} change outcome",
            s.bundle_version, s.replayed, s.same_bundle, s.changed
        ),
        notes,
        total: shift_view("every request".into(), &s.before, &s.after),
        rows: s.rows.iter().map(|r| shift_view(format!("{} × {}", r.agent, r.action), &r.before, &r.after)).collect(),
        roles_height: 20.0 + 24.0 * s.roles.len() as f64,
        roles,
        sensitive: s.newly_sensitive.iter().map(change_view).collect(),
        changes: s.changes.iter().map(change_view).collect(),
        more: s.changed.saturating_sub(s.changes.len() as u64),
        guards: guards.iter().map(|g| (g.name().to_string(), g.broken(s) == 0, g.broken(s))).collect(),
    }
    .render()
}
