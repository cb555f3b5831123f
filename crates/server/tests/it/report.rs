//! `warden report autonomy`'s figures (DESIGN §13), from a log the server wrote, against an
//! independent computation of the same figures from what the test did.

use axum::http::StatusCode;
use serde_json::json;
use warden_core::audit::entry::Entry;
use warden_core::report::{Filter, Rules, Window, autonomy, level_diff};

use crate::{EDR, harness};

/// The log's entries, parsed.
fn entries(h: &crate::Harness) -> Vec<Entry> {
    let store = h.app.ledger().store();
    let n = store.size().unwrap();
    store.entries(0, n as usize).unwrap().iter().map(|e| Entry::parse(&e.bytes).unwrap()).collect()
}

/// 25 host isolations that need an analyst, at known confidences; the analyst approves all but
/// three. The report's agreement, its Wilson interval, the reliability table, ECE and Brier are
/// what the test computes from its own record; the recommendation follows the stated rules
/// (hold at 88 %; promote, with a diff of the grant's level, once the rule asks 85 %).
#[tokio::test]
async fn the_autonomy_report_counts_what_happened() {
    let h = harness();
    let ana = h.user("ana", &["soc-analyst"]);
    let task = json!({"id": "INC-R", "title": "t", "trigger": {"source": "siem", "severity": "high"}});
    assert_eq!(h.call("POST", "/v1/tasks", Some(&ana), Some(task)).await.0, StatusCode::CREATED);
    let edr = h.svid(EDR);
    let mut record: Vec<(f64, bool)> = Vec::new();
    for i in 0..25 {
        let confidence = 0.90 + f64::from(i % 10) / 100.0;
        let body = json!({"task": "INC-R", "action": "host.isolate", "target": "host:db-payments-01",
            "confidence": confidence, "params": {"reason": format!("beacon {i}")}, "rationale": "C2",
            "evidence": [{"kind": "edr", "ref": format!("d:{i}")}]});
        let (_, a) = h.call("POST", "/v1/actions", Some(&edr), Some(body)).await;
        assert_eq!(a["state"], "pending_approval", "{a}");
        let approval = a["decision"]["approval"]["id"].as_str().unwrap().to_string();
        let approve = i % 9 != 4; // rejects 4, 13 and 22
        let verb = if approve { "approve" } else { "reject" };
        let (status, _) =
            h.call("POST", &format!("/v1/approvals/{approval}/{verb}"), Some(&ana), Some(json!({"reason": "r"}))).await;
        assert_eq!(status, StatusCode::OK);
        record.push((confidence, approve));
    }
    let log = entries(&h);
    let only_edr = Filter { agent: Some(EDR.into()), action: Some("host.isolate".into()), ..Default::default() };
    let report = autonomy(log.clone(), Window::default(), &only_edr, &Rules::default());
    assert_eq!(report.rows.len(), 1);
    let row = &report.rows[0];
    assert_eq!(row.requests["require_approval"], 25);
    assert_eq!((row.approvals.approved, row.approvals.rejected), (22, 3));
    assert_eq!(row.approvals.deciders["ana"], 25);
    // The load: one approver, 25 quick decisions (a sign of fatigue), 22 approved (not the
    // approve-everything sign); the roles asked and the votes cast in each.
    let ana_load = report.approvers.iter().find(|l| l.approver == "ana").unwrap();
    assert_eq!((ana_load.decisions, ana_load.approved, ana_load.quick), (25, 22, 25));
    assert_eq!(ana_load.flags.len(), 1, "{ana_load:?}");
    assert!(ana_load.flags[0].contains("25 of 25 decisions in under 5 s"), "{ana_load:?}");
    let role = |name: &str| report.roles.iter().find(|r| r.role == name).cloned().unwrap_or_default();
    assert_eq!((role("soc-analyst").asked, role("soc-analyst").votes), (25, 25));
    assert_eq!((role("incident-commander").asked, role("incident-commander").votes), (25, 0));

    // Independently: agreement and its 95 % Wilson interval.
    let (k, n) = (22.0f64, 25.0f64);
    let z = 1.959_963_984_540_054f64;
    let p = k / n;
    let center = (p + z * z / (2.0 * n)) / (1.0 + z * z / n);
    let half = z * (p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt() / (1.0 + z * z / n);
    let g = row.agreement.as_ref().unwrap();
    assert!(
        (g.rate - 0.88).abs() < 1e-12
            && (g.low - (center - half)).abs() < 1e-9
            && (g.high - (center + half)).abs() < 1e-9,
        "{g:?}"
    );

    // Independently: the reliability table, ECE and Brier of the verdicts.
    let c = &row.calibration_verdicts;
    assert_eq!(c.samples, 25);
    let brier = record.iter().map(|(conf, y)| (conf - f64::from(u8::from(*y))).powi(2)).sum::<f64>() / 25.0;
    assert!((c.brier.unwrap() - brier).abs() < 1e-9);
    let mut ece = 0.0;
    for bin in &c.bins {
        let inside: Vec<&(f64, bool)> =
            record.iter().filter(|(conf, _)| *conf >= bin.from && (*conf < bin.to || bin.to >= 1.0)).collect();
        assert_eq!(bin.n as usize, inside.len());
        let mean = inside.iter().map(|x| x.0).sum::<f64>() / inside.len() as f64;
        let observed = inside.iter().filter(|x| x.1).count() as f64 / inside.len() as f64;
        ece += inside.len() as f64 / 25.0 * (observed - mean).abs();
    }
    assert_eq!(c.bins.iter().map(|b| b.n).sum::<u64>(), 25);
    assert!((c.ece.unwrap() - ece).abs() < 1e-9);

    // The same figures on the HTML page (one self-contained file).
    let page = warden_server::reports::autonomy_html(&report, &[None], "all").unwrap();
    let shown = format!("88.0 % of 25 decided (95 % interval {:.1}–{:.1} %)", g.low * 100.0, g.high * 100.0);
    assert!(page.contains(&shown), "{shown}");
    assert!(page.contains(&format!("25 samples · ECE {:.3} · Brier {:.3}", ece, brier)));
    assert!(page.contains("25 decisions") && !page.contains("<script"));
    // The outcome mix over time: the day's column (two, if the test ran across midnight UTC)
    // holds the 25 decisions, all `require_approval`, each labelled on the page.
    let per_day: Vec<u64> =
        report.days.iter().map(|d| d.outcomes.get("require_approval").copied().unwrap_or(0)).collect();
    assert_eq!(per_day.iter().sum::<u64>(), 25, "{:?}", report.days);
    for (d, n) in report.days.iter().zip(&per_day) {
        assert!(page.contains(&format!("<title>{}: require_approval {n}</title>", d.day)), "the column's label");
    }

    // The rules: 88 % neither promotes (98 %) nor demotes (80 %).
    let rec = &row.recommendation;
    assert_eq!((rec.verdict, rec.level, rec.proposed_level), ("hold", Some(2), None), "{rec:?}");
    // A rule that asks 85 %: promote 2 → 3, the evidence the decisive approval entries, and a
    // diff of exactly the grant's level in its guardrail file.
    let lenient = Rules { promote_agreement: 0.85, ..Rules::default() };
    let report = autonomy(log.clone(), Window::default(), &only_edr, &lenient);
    let rec = &report.rows[0].recommendation;
    assert_eq!((rec.verdict, rec.proposed_level), ("promote", Some(3)), "{rec:?}");
    assert_eq!(rec.evidence.len(), 20);
    for seq in &rec.evidence {
        let kind = log[*seq as usize].event.kind.as_str();
        assert!(kind == "approval.granted" || kind == "approval.rejected", "{kind}");
    }
    let (path, line) = rec.grant.as_deref().unwrap().rsplit_once(':').unwrap();
    let bundle = h.app.bundle().unwrap();
    let file = bundle.files().iter().find(|f| f.path == path).unwrap();
    let diff = level_diff(path, &file.text, line.parse().unwrap(), 2, 3).unwrap();
    assert!(diff.contains("-level = 2\n+level = 3"), "{diff}");
    // Fewer than 20 decided: not enough evidence, whatever the rate.
    let strict = Rules { min_decided: 26, promote_agreement: 0.5, ..Rules::default() };
    let rec = autonomy(log.clone(), Window::default(), &only_edr, &strict).rows[0].recommendation.clone();
    assert_eq!(rec.verdict, "hold");
    assert!(rec.reasons[0].contains("not enough evidence: 25 decided approvals, the rules need 26"), "{rec:?}");
    // The window: nothing after now.
    let later = Window { from: Some(time::OffsetDateTime::now_utc() + time::Duration::hours(1)), to: None };
    assert!(autonomy(log, later, &Filter::default(), &Rules::default()).rows.is_empty());
}

/// An agent in shadow mode: what its decisions would have done, set against what humans then
/// did on the same action and target — here, another agent's isolations of the same hosts,
/// one approved, one rejected, one never asked.
#[tokio::test]
async fn shadow_decisions_are_set_against_what_humans_then_did() {
    let dir = tempfile::tempdir().unwrap();
    for f in crate::read_bundle(&crate::example_dir()) {
        let path = dir.path().join(&f.path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let text = if f.path == "agents/edr-responder.toml" {
            f.text.replacen(
                "owner = \"team:endpoint-response\"",
                "owner = \"team:endpoint-response\"\nmode = \"shadow\"",
                1,
            )
        } else {
            f.text.clone()
        };
        std::fs::write(path, text).unwrap();
    }
    let h = crate::harness_from(Some(dir.path()));
    let ana = h.user("ana", &["soc-analyst"]);
    let task = json!({"id": "INC-S", "title": "t", "trigger": {"source": "siem", "severity": "high"}});
    assert_eq!(h.call("POST", "/v1/tasks", Some(&ana), Some(task)).await.0, StatusCode::CREATED);
    let ask = |host: &str| {
        json!({"task": "INC-S", "action": "host.isolate", "target": format!("host:{host}"), "confidence": 0.95,
            "params": {"reason": "beacon"}, "rationale": "C2", "evidence": [{"kind": "edr", "ref": "d:1"}]})
    };
    for host in ["web-01", "web-02", "web-42"] {
        let (_, a) = h.call("POST", "/v1/actions", Some(&h.svid(EDR)), Some(ask(host))).await;
        assert_eq!(a["decision"]["shadow_outcome"], "execute", "{a}");
    }
    // The triage agent asks for two of the same isolations; the analyst approves one, rejects
    // the other.
    for (host, verb) in [("web-01", "approve"), ("web-02", "reject")] {
        let (_, a) = h.call("POST", "/v1/actions", Some(&h.svid(crate::PHISH)), Some(ask(host))).await;
        assert_eq!(a["state"], "pending_approval", "{a}");
        let approval = a["decision"]["approval"]["id"].as_str().unwrap();
        let (status, _) =
            h.call("POST", &format!("/v1/approvals/{approval}/{verb}"), Some(&ana), Some(json!({"reason": "r"}))).await;
        assert_eq!(status, StatusCode::OK);
    }
    let only_edr = Filter { agent: Some(EDR.into()), ..Default::default() };
    let report = autonomy(entries(&h), Window::default(), &only_edr, &Rules::default());
    let row = &report.rows[0];
    assert_eq!(row.shadow.get("execute"), Some(&3));
    let s = &row.shadow_humans;
    assert_eq!((s.approved, s.rejected, s.unseen), (1, 1, 1), "{s:?}");
    let page = warden_server::reports::autonomy_html(&report, &[None], "all").unwrap();
    assert!(page.contains("approved 1, rejected 1, no verdict 1"), "the page says so");
}
