//! What runs is what was decided (DESIGN §6): the bundle's `connectors.toml`, read for what
//! its calls carry. Every call of an action must carry the decided target — `{target}` or
//! `{target.id}` in its path or body — unless the action declares why it cannot
//! (`target_bound = false` with a `target_bound_reason`); such an action may then be granted
//! at most level 2, so a human sees every call. A param a hand-written Cedar rule reads must
//! be sent by the call of every action that declares it: policy decided on it.
//!
//! The connectors crate reads the same file for the calls themselves; this module only reads
//! what the bundle's checks need, and reports problems at `connectors.toml:LINE`.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;
use toml::Spanned;

use crate::catalog::Catalog;
use crate::source::{Problem, SourceFile, toml_problem};

/// The highest level an action whose calls do not carry the target may be granted.
pub const UNBOUND_MAX_LEVEL: u8 = 2;

#[derive(Deserialize)]
struct RawFile {
    #[serde(default)]
    actions: BTreeMap<String, Spanned<RawAction>>,
}

#[derive(Deserialize)]
struct RawAction {
    #[serde(default)]
    path: String,
    #[serde(default)]
    body: Option<toml::Value>,
    #[serde(default)]
    target_bound: Option<bool>,
    #[serde(default)]
    target_bound_reason: Option<String>,
}

/// What `connectors.toml` says of each action's calls.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bindings {
    /// Actions whose calls do not carry the target, with the reason declared and the line.
    pub unbound: BTreeMap<String, (String, usize)>,
    /// Each action's line, for problems.
    pub lines: BTreeMap<String, usize>,
}

fn strings(v: &toml::Value, out: &mut Vec<String>) {
    match v {
        toml::Value::String(s) => out.push(s.clone()),
        toml::Value::Array(a) => a.iter().for_each(|x| strings(x, out)),
        toml::Value::Table(t) => t.values().for_each(|x| strings(x, out)),
        _ => {}
    }
}

/// Every `{…}` placeholder in `texts`, as its list of alternatives (`{a|b}` gives `[a, b]`).
fn placeholders(texts: &[String]) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for t in texts {
        let mut rest = t.as_str();
        while let Some(open) = rest.find('{') {
            let Some(close) = rest[open..].find('}') else { break };
            out.push(rest[open + 1..open + close].split('|').map(|a| a.trim().to_string()).collect());
            rest = &rest[open + close + 1..];
        }
    }
    out
}

/// Whether a placeholder carries the decided target: it names `target` or `target.id`, and
/// nothing the agent chose (a `params.*` alternative would stand in for the target whenever
/// the agent sends it).
fn binds_target(alternatives: &[String]) -> bool {
    alternatives.iter().any(|a| a == "target" || a == "target.id")
        && !alternatives.iter().any(|a| a.starts_with("params."))
}

/// Reads `connectors.toml` and checks that every call carries the decided target (or says why
/// it cannot) and sends the params policy reads.
pub fn check(
    file: &SourceFile,
    catalog: &Catalog,
    read_by_policy: &BTreeSet<String>,
) -> Result<Bindings, Vec<Problem>> {
    let raw: RawFile = toml::from_str(&file.text).map_err(|e| vec![toml_problem(file, &e)])?;
    let mut problems = Vec::new();
    let mut out = Bindings::default();
    for (action, spanned) in &raw.actions {
        let line = file.line_at(spanned.span().start);
        out.lines.insert(action.clone(), line);
        let a = spanned.get_ref();
        let mut texts = vec![a.path.clone()];
        if let Some(b) = &a.body {
            strings(b, &mut texts);
        }
        let found = placeholders(&texts);
        let used: BTreeSet<String> = found.iter().flatten().cloned().collect();
        let bound = found.iter().any(|p| binds_target(p));
        match (a.target_bound, bound) {
            (Some(false), _) => {
                let reason = a.target_bound_reason.clone().unwrap_or_default();
                if reason.trim().is_empty() {
                    problems.push(Problem {
                        file: file.path.clone(),
                        line: Some(line),
                        message: format!(
                            "action `{action}` says `target_bound = false`: give `target_bound_reason`, why its \
                             call cannot carry the target"
                        ),
                    });
                }
                out.unbound.insert(action.clone(), (reason, line));
            }
            (_, false) => problems.push(Problem {
                file: file.path.clone(),
                line: Some(line),
                message: format!(
                    "action `{action}`'s call does not carry the decided target: put `{{target.id}}` in its path \
                     or body, or declare `target_bound = false` with a `target_bound_reason` (then it may be \
                     granted at most level {UNBOUND_MAX_LEVEL})"
                ),
            }),
            _ => {}
        }
        if let Some(class) = catalog.get(action) {
            for p in class.params.iter().filter(|p| read_by_policy.contains(&p.name)) {
                if !used.contains(&format!("params.{}", p.name)) {
                    problems.push(Problem {
                        file: file.path.clone(),
                        line: Some(line),
                        message: format!(
                            "policy reads param `{}` (cedar/), but action `{action}`'s call does not send it: \
                             what runs must be what was decided on",
                            p.name
                        ),
                    });
                }
            }
        }
    }
    if problems.is_empty() { Ok(out) } else { Err(problems) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog() -> Catalog {
        let text = r#"
[[action]]
id = "host.isolate"
description = "d"
category = "containment"
risk = "high"
reversible = false
target = "host"
tool = "edr"
owner = "team:x"
params = [{ name = "reason", type = "string" }, { name = "minutes", type = "integer" }]
"#;
        Catalog::parse(&SourceFile::new("actions.toml", text)).unwrap()
    }

    #[test]
    fn a_call_without_the_target_is_refused_at_its_line() {
        let f = SourceFile::new(
            "connectors.toml",
            "[tools.edr]\nurl = \"http://x\"\n\n[actions.\"host.isolate\"]\ntool = \"edr\"\nmethod = \"POST\"\npath = \"/hosts/{params.reason}/contain\"\n",
        );
        let problems = check(&f, &catalog(), &BTreeSet::new()).unwrap_err();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].line, Some(4));
        assert!(problems[0].message.contains("does not carry the decided target"), "{problems:?}");
    }

    #[test]
    fn the_target_in_the_path_body_or_a_fallback_binds() {
        for text in [
            "[actions.\"host.isolate\"]\npath = \"/hosts/{target.id}/contain\"\n",
            "[actions.\"host.isolate\"]\npath = \"/contain\"\nbody = { host = \"{target}\" }\n",
            "[actions.\"host.isolate\"]\npath = \"/t/{captured.id|target.id}\"\n",
        ] {
            let f = SourceFile::new("connectors.toml", text);
            assert!(check(&f, &catalog(), &BTreeSet::new()).is_ok(), "{text}");
        }
        // A param the agent sends would stand in for the target: not bound.
        let f =
            SourceFile::new("connectors.toml", "[actions.\"host.isolate\"]\npath = \"/t/{params.reason|target.id}\"\n");
        assert!(check(&f, &catalog(), &BTreeSet::new()).is_err());
    }

    #[test]
    fn declaring_unbound_needs_a_reason() {
        let base = "[actions.\"host.isolate\"]\npath = \"/bulk\"\ntarget_bound = false\n";
        let f = SourceFile::new("connectors.toml", base);
        assert!(check(&f, &catalog(), &BTreeSet::new()).is_err());
        let f =
            SourceFile::new("connectors.toml", format!("{base}target_bound_reason = \"the API takes a batch id\"\n"));
        let b = check(&f, &catalog(), &BTreeSet::new()).unwrap();
        assert_eq!(b.unbound.keys().collect::<Vec<_>>(), ["host.isolate"]);
    }

    #[test]
    fn params_policy_reads_must_be_sent() {
        // What the policy analysis finds a rule reading (`context.params.minutes`).
        let read: BTreeSet<String> = ["minutes".to_string()].into();
        let f = SourceFile::new("connectors.toml", "[actions.\"host.isolate\"]\npath = \"/h/{target.id}\"\n");
        let problems = check(&f, &catalog(), &read).unwrap_err();
        assert!(problems[0].message.contains("param `minutes`"), "{problems:?}");
        let f = SourceFile::new(
            "connectors.toml",
            "[actions.\"host.isolate\"]\npath = \"/h/{target.id}\"\nbody = { m = \"{params.minutes}\" }\n",
        );
        assert!(check(&f, &catalog(), &read).is_ok());
    }
}
