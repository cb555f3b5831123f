//! `warden report controls` (DESIGN §13): each control the governance frameworks name (OWASP
//! ASI and NHI, NIST AI RMF, CSA MAESTRO, MITRE ATLAS), the Warden features that address it,
//! and live evidence from the audit log — counts, the last occurrence, example entries. Where
//! Warden has no feature, or its features left no evidence, the report says so: a gap, never a
//! pass.
//!
//! The mapping is data: `controls.toml` beside this file, embedded in the binary and checked
//! by [`Mapping::problems`] (every control once, every feature defined, every event type and cap
//! code real) and by the tests (every feature's code and docs exist).

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::audit::entry::{Entry, EventType};
use crate::decision::CapCode;
use crate::report::Window;

/// The mapping shipped with Warden.
pub const MAPPING: &str = include_str!("controls.toml");

/// Which entries show a feature at work.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// An event type (`halt.set`), or `*` for every entry.
    pub event: String,
    /// Only decisions carrying this cap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cap: Option<String>,
    /// Only entries whose data holds this field (a dotted path), not null.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub has: Option<String>,
}

impl Rule {
    fn matches(&self, e: &Entry) -> bool {
        let ev = &e.event;
        if self.event != "*" && ev.kind.as_str() != self.event {
            return false;
        }
        if let Some(cap) = &self.cap {
            let caps = ev.data["decision"]["caps"].as_array();
            if !caps.into_iter().flatten().any(|c| c.get("code").and_then(Value::as_str) == Some(cap.as_str())) {
                return false;
            }
        }
        if let Some(path) = &self.has {
            let found = path.split('.').try_fold(&ev.data, |v, k| v.get(k));
            if found.is_none_or(Value::is_null) {
                return false;
            }
        }
        true
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Feature {
    pub id: String,
    pub name: String,
    /// Where it is built (a path in the repository).
    pub code: String,
    /// Where it is documented.
    pub docs: String,
    /// Empty: the log cannot show it (a command, or something never written).
    pub evidence: Vec<Rule>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Control {
    pub id: String,
    pub framework: String,
    pub title: String,
    pub features: Vec<String>,
    /// What the features leave to others.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Why no feature addresses it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gap: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mapping {
    #[serde(rename = "feature")]
    pub features: Vec<Feature>,
    #[serde(rename = "control")]
    pub controls: Vec<Control>,
}

impl Mapping {
    /// Parses a mapping and checks it; every problem is listed.
    pub fn parse(text: &str) -> Result<Mapping, Vec<String>> {
        let m: Mapping = toml::from_str(text).map_err(|e| vec![e.message().trim().to_string()])?;
        let problems = m.problems();
        if problems.is_empty() { Ok(m) } else { Err(problems) }
    }

    /// The mapping shipped with Warden.
    pub fn shipped() -> Mapping {
        // Checked by the tests: a broken shipped mapping fails the build's tests, not a user.
        Mapping::parse(MAPPING).unwrap_or_else(|p| panic!("the shipped controls mapping is invalid: {p:?}"))
    }

    /// What is wrong with the mapping: duplicate ids, features named but not defined, rules
    /// naming no real event type or cap code, controls with both features and a gap or neither.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut seen = HashMap::new();
        for f in &self.features {
            if seen.insert(f.id.as_str(), ()).is_some() {
                out.push(format!("feature `{}` is defined twice", f.id));
            }
            for r in &f.evidence {
                if r.event != "*" && !EventType::ALL.iter().any(|t| t.as_str() == r.event) {
                    out.push(format!("feature `{}`: `{}` is not an event type", f.id, r.event));
                }
                if let Some(cap) = &r.cap {
                    if serde_json::from_value::<CapCode>(Value::String(cap.clone())).is_err() {
                        out.push(format!("feature `{}`: `{cap}` is not a cap code", f.id));
                    }
                    if r.event != "decision.made" {
                        out.push(format!("feature `{}`: a cap narrows `decision.made` only", f.id));
                    }
                }
            }
        }
        let mut ids = HashMap::new();
        for c in &self.controls {
            if ids.insert(c.id.as_str(), ()).is_some() {
                out.push(format!("control `{}` appears twice", c.id));
            }
            for f in &c.features {
                if !seen.contains_key(f.as_str()) {
                    out.push(format!("control `{}` names feature `{f}`, which is not defined", c.id));
                }
            }
            match (c.features.is_empty(), &c.gap) {
                (true, None) => out.push(format!("control `{}` has no feature and no `gap` saying why", c.id)),
                (false, Some(_)) => out.push(format!("control `{}` has features and a `gap`", c.id)),
                _ => {}
            }
        }
        out
    }
}

/// Where a control stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// A feature addresses it and the log shows it at work in the window.
    Evidenced,
    /// Its features are built, but leave no entry the log could show (a command, a property of
    /// what is never written): check them another way.
    NotInLog,
    /// Its features left no evidence in the window: a gap.
    NoEvidence,
    /// No Warden feature addresses it: a gap.
    NoFeature,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Evidenced => "evidenced",
            Status::NotInLog => "not in the log",
            Status::NoEvidence => "gap: no evidence",
            Status::NoFeature => "gap: no feature",
        }
    }
}

/// How many example entries a feature keeps (its latest).
pub const EXAMPLES: usize = 3;

/// A feature's evidence in the window.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FeatureEvidence {
    pub id: String,
    pub name: String,
    pub code: String,
    pub docs: String,
    /// Whether the log can show it at all.
    pub observable: bool,
    pub count: u64,
    /// The last matching entry: its sequence number and time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last: Option<(u64, String)>,
    /// The latest matching entries (at most [`EXAMPLES`]), oldest first.
    pub examples: Vec<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ControlRow {
    pub id: String,
    pub framework: String,
    pub title: String,
    pub status: Status,
    pub features: Vec<String>,
    /// Entries showing any of its features.
    pub evidence: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last: Option<(u64, String)>,
    /// The latest example entries across its features (at most [`EXAMPLES`]).
    pub examples: Vec<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gap: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ControlsReport {
    pub entries: u64,
    pub in_window: u64,
    pub features: Vec<FeatureEvidence>,
    pub controls: Vec<ControlRow>,
    /// Controls per status.
    pub summary: BTreeMap<Status, u64>,
}

#[derive(Debug, Clone, Default)]
struct Tally {
    count: u64,
    last: Option<(u64, String)>,
    examples: Vec<u64>,
}

/// Keeps the latest [`EXAMPLES`] sequence numbers, oldest first.
fn keep_example(examples: &mut Vec<u64>, seq: u64) {
    if examples.len() == EXAMPLES {
        examples.remove(0);
    }
    examples.push(seq);
}

/// The controls report of `entries` in `window` under `mapping`.
pub fn controls(entries: impl IntoIterator<Item = Entry>, window: Window, mapping: &Mapping) -> ControlsReport {
    let mut features: Vec<FeatureEvidence> = mapping
        .features
        .iter()
        .map(|f| FeatureEvidence {
            id: f.id.clone(),
            name: f.name.clone(),
            code: f.code.clone(),
            docs: f.docs.clone(),
            observable: !f.evidence.is_empty(),
            count: 0,
            last: None,
            examples: Vec::new(),
        })
        .collect();
    // Per control: the indices of its features, and its own tally (an entry showing two of its
    // features counts once).
    let index: HashMap<&str, usize> = mapping.features.iter().enumerate().map(|(i, f)| (f.id.as_str(), i)).collect();
    let of_control: Vec<Vec<usize>> = mapping
        .controls
        .iter()
        .map(|c| c.features.iter().filter_map(|f| index.get(f.as_str()).copied()).collect())
        .collect();
    let mut tally: Vec<Tally> = vec![Tally::default(); mapping.controls.len()];
    let (mut total, mut in_window) = (0, 0);
    let mut matched = vec![false; mapping.features.len()];
    for e in entries {
        total += 1;
        if !e.timestamp().is_ok_and(|t| window.holds(t)) {
            continue;
        }
        in_window += 1;
        for ((f, got), hit) in mapping.features.iter().zip(features.iter_mut()).zip(matched.iter_mut()) {
            *hit = f.evidence.iter().any(|r| r.matches(&e));
            if *hit {
                got.count += 1;
                got.last = Some((e.seq, e.time.clone()));
                keep_example(&mut got.examples, e.seq);
            }
        }
        for (mine, t) in of_control.iter().zip(tally.iter_mut()) {
            if mine.iter().any(|&i| matched[i]) {
                t.count += 1;
                t.last = Some((e.seq, e.time.clone()));
                keep_example(&mut t.examples, e.seq);
            }
        }
    }
    let mut summary = BTreeMap::new();
    let controls: Vec<ControlRow> = mapping
        .controls
        .iter()
        .zip(of_control.iter().zip(tally))
        .map(|(c, (mine, t))| {
            let status = if mine.is_empty() {
                Status::NoFeature
            } else if t.count > 0 {
                Status::Evidenced
            } else if mine.iter().all(|&i| !features[i].observable) {
                Status::NotInLog
            } else {
                Status::NoEvidence
            };
            *summary.entry(status).or_default() += 1;
            let gap = match status {
                Status::NoFeature => c.gap.clone(),
                Status::NoEvidence => Some("its features left no evidence in the window".into()),
                _ => None,
            };
            ControlRow {
                id: c.id.clone(),
                framework: c.framework.clone(),
                title: c.title.clone(),
                status,
                features: c.features.clone(),
                evidence: t.count,
                last: t.last,
                examples: t.examples,
                note: c.note.clone(),
                gap,
            }
        })
        .collect();
    ControlsReport { entries: total, in_window, features, controls, summary }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::entry::{Actor, Event};

    fn entry(seq: u64, kind: EventType, data: Value) -> Entry {
        Entry {
            seq,
            time: format!("2026-12-01T10:00:{:02}.000Z", seq % 60),
            event: Event::new(kind, Actor::system("test")).data(data),
        }
    }

    #[test]
    fn the_shipped_mapping_is_valid_and_names_every_control_once() {
        let m = Mapping::shipped();
        let mut ids: Vec<&str> = m.controls.iter().map(|c| c.id.as_str()).collect();
        let n = ids.len();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), n);
        // Every control the issue and DESIGN §13 name, and no other.
        let mut want: Vec<String> = (1..=10).map(|i| format!("ASI{i:02}")).collect();
        want.extend((1..=10).map(|i| format!("NHI{i}")));
        want.extend(
            [
                "GOVERN 1.4",
                "GOVERN 1.5",
                "GOVERN 1.6",
                "GOVERN 2.1",
                "GOVERN 3.2",
                "MAP 3.5",
                "MEASURE 2.4",
                "MEASURE 2.8",
                "MANAGE 2.4",
                "MANAGE 4.1",
                "MANAGE 4.3",
            ]
            .map(String::from),
        );
        want.extend((1..=7).map(|i| format!("MAESTRO L{i}")));
        want.extend(["AML.M0024", "AML.M0026", "AML.M0027", "AML.M0028", "AML.M0029", "AML.M0030"].map(String::from));
        want.sort_unstable();
        assert_eq!(ids, want.iter().map(String::as_str).collect::<Vec<_>>());
        // Every feature serves some control.
        for f in &m.features {
            assert!(m.controls.iter().any(|c| c.features.contains(&f.id)), "feature `{}` maps to no control", f.id);
        }
    }

    #[test]
    fn a_broken_mapping_names_each_problem() {
        let text = r#"
[[feature]]
id = "a"
name = "A"
code = "x"
docs = "y"
evidence = [{ event = "halt.sett" }, { event = "halt.set", cap = "halted" }, { event = "decision.made", cap = "haltedd" }]

[[feature]]
id = "a"
name = "A again"
code = "x"
docs = "y"
evidence = []

[[control]]
id = "C1"
framework = "F"
title = "T"
features = ["a", "b"]

[[control]]
id = "C1"
framework = "F"
title = "T"
features = []
"#;
        let problems = Mapping::parse(text).unwrap_err();
        for want in [
            "`halt.sett` is not an event type",
            "a cap narrows `decision.made` only",
            "`haltedd` is not a cap code",
            "feature `a` is defined twice",
            "control `C1` appears twice",
            "names feature `b`, which is not defined",
            "control `C1` has no feature and no `gap`",
        ] {
            assert!(problems.iter().any(|p| p.contains(want)), "{want}: {problems:?}");
        }
    }

    #[test]
    fn evidence_is_counted_per_feature_and_a_silent_feature_is_a_gap() {
        let m = Mapping::shipped();
        let log = vec![
            entry(0, EventType::StoreInitialized, serde_json::json!({})),
            entry(1, EventType::HaltSet, serde_json::json!({"scope": "all"})),
            entry(
                2,
                EventType::DecisionMade,
                serde_json::json!({"decision": {"caps": [{"code": "untrusted_input", "reason": "r"}]}}),
            ),
            entry(3, EventType::DecisionMade, serde_json::json!({"decision": {"caps": []}, "facts": {"via": null}})),
            entry(4, EventType::HaltLifted, serde_json::json!({})),
        ];
        let r = controls(log, Window::default(), &m);
        let f = |id: &str| r.features.iter().find(|f| f.id == id).unwrap().clone();
        assert_eq!((f("emergency-stop").count, f("emergency-stop").examples.clone()), (2, vec![1, 4]));
        assert_eq!(f("taint").count, 1);
        assert_eq!(f("mcp-front-door").count, 0, "a null `via` is no MCP call");
        assert_eq!(f("audit-log").count, 5);
        // An entry showing two features of a control counts once for it: ASI10 (stop,
        // lifecycle, breakers, log) saw five entries, not five plus the two halts.
        assert_eq!(r.controls.iter().find(|c| c.id == "ASI10").unwrap().evidence, 5);
        let c = |id: &str| r.controls.iter().find(|c| c.id == id).unwrap().clone();
        assert_eq!(c("AML.M0030").status, Status::Evidenced);
        assert_eq!(c("AML.M0030").last, Some((2, "2026-12-01T10:00:02.000Z".into())));
        assert_eq!(c("AML.M0029").status, Status::NoEvidence, "no approval in this log");
        assert!(c("AML.M0029").gap.is_some());
        assert_eq!(c("ASI05").status, Status::NoFeature);
        assert!(c("ASI05").gap.as_deref().unwrap().contains("sandbox"));
        let total: u64 = r.summary.values().sum();
        assert_eq!(total, m.controls.len() as u64);
        // Out of the window, nothing is evidence.
        let later = time::OffsetDateTime::now_utc();
        let none = controls(
            vec![entry(1, EventType::HaltSet, serde_json::json!({}))],
            Window { from: Some(later), to: None },
            &m,
        );
        assert_eq!(none.in_window, 0);
        assert!(none.controls.iter().all(|c| c.status != Status::Evidenced));
    }
}
