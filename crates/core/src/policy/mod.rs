//! Cedar: the schema generated from the catalog and inventory, guardrails compiled to
//! policies, hand-written rules, and evaluation. The only module that imports `cedar_policy`.
//!
//! Entity model (namespace `Warden`):
//! - principal `Warden::Agent::"<SPIFFE ID>"` with `name`, `owner`, `purpose`, `mode`;
//! - resource `Warden::<Kind>::"<id>"` (kind `host` → `Host`) with `criticality` (`"tier0"`…),
//!   `tier` (0…3), `environment`, `owner`, `privileged`, `tags`, `known`;
//! - action `Warden::Action::"<action id>"`, member of the group named by its category
//!   (`Warden::Action::"containment"`);
//! - context `confidence` (decimal), `hour` and `weekday` (UTC, Monday = 0),
//!   `task` (`severity`, `source`, and `verified`: whether a trusted party, not the agent,
//!   asserted them), `params` (typed from the catalog).
//!
//! Guardrail entries become `permit` policies (`forbid` for level 0) annotated with `@level`,
//! `@owner`, `@file` and `@line`; hand-written permits must carry `@level` and `@owner`,
//! forbids `@owner`. The granted level is the highest `@level` among satisfied permits.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::str::FromStr;
use std::sync::{Arc, RwLock};

use cedar_policy::{
    ActionConstraint, Authorizer, Context, Decision as CedarDecision, Effect, Entities, Entity, EntityId,
    EntityTypeName, EntityUid, Policy, PolicyId, PolicySet, PrincipalConstraint, Request, ResourceConstraint,
    RestrictedExpression, Schema, ValidationMode, Validator,
};
use miette::Diagnostic;

use crate::catalog::{ActionClass, Catalog, ParamType};
use crate::guardrail::Guardrail;
use crate::inventory::{Asset, Inventory};
use crate::source::{Problem, SourceFile};

mod compile;
mod eval;
mod schema;

use eval::*;
pub(crate) use schema::*;

/// Where a policy came from and who answers for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PolicyMeta {
    pub id: String,
    pub owner: String,
    pub file: String,
    pub line: usize,
    /// Granted level of a permit.
    pub level: Option<u8>,
    pub forbid: bool,
    /// For guardrail policies, the index of the grant in its guardrail.
    pub grant: Option<usize>,
    /// Whether the condition reads `context` (else its verdict depends on the bundle alone).
    pub reads_context: bool,
    /// The catalog actions its scope can match (a guardrail grant's one action; for a
    /// hand-written policy, conservatively every action its action constraint may name).
    pub actions: Vec<String>,
}

/// The outcome of evaluating the policy set for one request.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Verdict {
    /// Indexes into [`CompiledPolicy::meta`] of the satisfied forbids.
    pub forbids: Vec<usize>,
    /// Indexes of the satisfied permits.
    pub permits: Vec<usize>,
    /// Errors raised while evaluating; any error means the decision fails closed.
    pub errors: Vec<String>,
}

/// Facts about one request that the policies can see.
pub(crate) struct RequestFacts<'a> {
    pub agent: &'a str,
    pub action: &'a ActionClass,
    pub target: &'a Asset,
    pub known_target: bool,
    pub confidence: f64,
    pub params: &'a serde_json::Map<String, serde_json::Value>,
    pub severity: &'a str,
    pub source: &'a str,
    pub task_verified: bool,
    /// The task's taint labels (`untrusted`, `confidential`), each once.
    pub taint: &'a [&'a str],
    /// The task's history: action class → executions that succeeded in it (classes of the
    /// catalog only, each once).
    pub history: &'a [(&'a str, u32)],
    pub hour: u8,
    pub weekday: u8,
}

/// One agent's view of the policy set.
#[derive(Debug)]
struct AgentSlices {
    uid: EntityUid,
    entity: Entity,
    by_action: HashMap<String, ActionSlice>,
}

/// The policies that can apply to one (agent, action). Policies whose scope cannot match never
/// apply, so evaluating `all` equals evaluating the whole set.
///
/// For a known target, what does not depend on the request's `context` depends on the bundle
/// alone and is worked out once, on first use ([`KnownTarget`]): the verdict of the policies
/// that never read `context`, and which context-reading policies cannot hold for this target
/// because the first thing their condition tests is a context-free fact that is false for it.
#[derive(Debug)]
struct ActionSlice {
    all: PolicySet,
    /// Policies that read `context`.
    dynamic: PolicySet,
    /// Policies that do not.
    fixed_set: PolicySet,
    /// For dynamic policies whose first `when` tests a context-free fact first: a permit with
    /// the same scope and id whose condition is just that fact (see [`probe`]).
    probes: PolicySet,
    /// Per known target id. Bounded by the inventory; dropped with the bundle.
    known: RwLock<HashMap<String, Arc<KnownTarget>>>,
}

/// What a known target's (agent, action) slice leaves to evaluate per request.
#[derive(Debug)]
struct KnownTarget {
    /// The verdict of `fixed_set`.
    fixed: Verdict,
    /// The dynamic policies that may still hold.
    dynamic: PolicySet,
}

/// A validated policy set ready to evaluate.
#[derive(Debug)]
pub(crate) struct CompiledPolicy {
    schema_text: String,
    policy_text: String,
    schema: Schema,
    agents: HashMap<String, AgentSlices>,
    action_uids: HashMap<String, EntityUid>,
    /// Entity type per asset kind.
    types: HashMap<String, EntityTypeName>,
    /// Every policy, as validated; tests check the slices against it.
    #[cfg(test)]
    full: PolicySet,
    meta: Vec<PolicyMeta>,
    meta_by_id: HashMap<String, usize>,
    entities: Entities,
    authorizer: Authorizer,
    /// Per action, the classes of `context.task.history` some policy that may decide it reads
    /// (every class, when one uses the record whole). No policy can tell the others apart from
    /// absent, so decisions show Cedar only these, and the server counts only these.
    history_read: HashMap<String, std::collections::BTreeSet<String>>,
    /// The params hand-written rules read (by `has`, `.` or index), and whether one uses
    /// `context.params` as a whole.
    params_read: std::collections::BTreeSet<String>,
    params_whole: bool,
}

const NS: &str = "Warden";

/// `host` → `Host`, `ip_address` → `IpAddress`.
pub(crate) fn entity_type_name(kind: &str) -> String {
    kind.split('_')
        .map(|w| {
            let mut c = w.chars();
            match c.next() {
                Some(f) => f.to_ascii_uppercase().to_string() + c.as_str(),
                None => String::new(),
            }
        })
        .collect()
}

/// A Cedar string literal.
fn lit(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\0' => out.push_str("\\0"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn type_name(name: &str) -> Result<EntityTypeName, String> {
    EntityTypeName::from_str(&format!("{NS}::{name}")).map_err(|e| e.to_string())
}

impl CompiledPolicy {
    /// The classes of `context.task.history` a decision of `action` may read (none: no policy
    /// that may decide it reads the history). Every one is in the catalog (checked at load).
    /// Whether a hand-written rule reads param `name` (or every param, using the record whole).
    pub(crate) fn reads_param(&self, name: &str) -> bool {
        self.params_whole || self.params_read.contains(name)
    }

    /// The params hand-written rules name, and whether one reads them all.
    pub(crate) fn params_read(&self) -> (&std::collections::BTreeSet<String>, bool) {
        (&self.params_read, self.params_whole)
    }

    pub(crate) fn history_read(&self, action: &str) -> impl Iterator<Item = &str> {
        self.history_read.get(action).into_iter().flatten().map(String::as_str)
    }

    /// What of a task's `history` Cedar is shown for a decision of `action`: the classes
    /// [`Self::history_read`] names.
    pub(crate) fn history_shown<'h>(
        &self,
        action: &str,
        history: &'h std::collections::BTreeMap<String, u32>,
    ) -> Vec<(&'h str, u32)> {
        self.history_read(action)
            .filter_map(|class| history.get_key_value(class).map(|(c, n)| (c.as_str(), *n)))
            .collect()
    }

    pub(crate) fn schema_text(&self) -> &str {
        &self.schema_text
    }

    pub(crate) fn policy_text(&self) -> &str {
        &self.policy_text
    }

    pub(crate) fn meta(&self, index: usize) -> &PolicyMeta {
        &self.meta[index]
    }

    pub(crate) fn policy_count(&self) -> usize {
        self.meta.len()
    }

    /// The permits that may grant `action` above `level`: (id, file, line, level).
    pub(crate) fn permits_above(&self, action: &str, level: u8) -> Vec<(String, String, usize, u8)> {
        self.meta
            .iter()
            .filter(|m| m.level.is_some_and(|l| l > level) && m.actions.iter().any(|a| a == action))
            .map(|m| (m.id.clone(), m.file.clone(), m.line, m.level.unwrap_or(0)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::compile::*;
    use super::*;
    use crate::bundle::Bundle;
    use crate::policy_test::parse_cases;

    /// What a policy reads of the history: classes by `has` and access, through any nesting;
    /// the record used any other way counts as whole; `history` elsewhere (a param) is not it.
    #[test]
    fn history_use_finds_named_classes_and_whole_uses() {
        let read = |cond: &str| {
            let p = Policy::from_str(&format!("permit (principal, action, resource) when {{ {cond} }};")).unwrap();
            history_use(&p.to_json().unwrap())
        };
        let u = |named: &[&str], whole, opaque| HistoryUse {
            named: named.iter().map(|s| s.to_string()).collect(),
            whole,
            opaque,
        };
        assert_eq!(read("context.task.history has \"a.b\""), u(&["a.b"], false, false));
        assert_eq!(
            read("if context.task.history has c then context.task.history[\"d.e\"] > 1 else false"),
            u(&["c", "d.e"], false, false)
        );
        assert_eq!(read("context.task.history == context.task.history"), u(&[], true, false));
        assert_eq!(read("[context.task.history].isEmpty() || context.task.history has x"), u(&["x"], true, false));
        assert_eq!(read("context.params.history has \"a.b\" && context.history has y"), u(&[], false, false));
        // `context` or `context.task` as a value: what is read of it cannot be told.
        assert!(read("(if true then context.task else context.task).history has \"a.b\"").opaque);
        assert!(read("{\"t\": context}.t.task.history has \"a.b\"").opaque);
        assert!(read("context.task == context.task").opaque);
        assert!(!read("context has task && context.task has history").opaque);
    }

    fn example_files() -> Vec<SourceFile> {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/policy");
        let mut files = Vec::new();
        for dir in ["", "agents/", "cedar/", "tests/"] {
            for entry in std::fs::read_dir(root.join(dir)).unwrap() {
                let entry = entry.unwrap();
                if entry.file_type().unwrap().is_file() {
                    let path = format!("{dir}{}", entry.file_name().to_string_lossy());
                    files.push(SourceFile::new(path, std::fs::read_to_string(entry.path()).unwrap()));
                }
            }
        }
        files
    }

    /// Precomputed context-free verdicts merged with per-request evaluation give exactly what
    /// Cedar gives on the whole policy set, for every example case at several hours and
    /// confidences, on known and unknown targets.
    #[test]
    fn evaluate_matches_the_whole_policy_set() {
        let mut files = example_files();
        // Rules that stress the context-free shortcuts: a context-free first operand that
        // errors on some targets, a context-first condition, an `unless` first, a probe that
        // holds for some targets only.
        files.push(SourceFile::new(
            "cedar/zz-tricky.cedar",
            "@id(\"t1\") @owner(\"t\") forbid (principal, action, resource) when { resource.tier * 9223372036854775807 > 1 && context.hour > 3 };\n\
             @id(\"t2\") @owner(\"t\") forbid (principal, action, resource) when { context.hour > 9 && resource.privileged };\n\
             @id(\"t3\") @owner(\"t\") forbid (principal, action in Warden::Action::\"identity\", resource) unless { resource.tier < 3 } when { context.hour == 10 };\n\
             @id(\"t4\") @owner(\"t\") @level(\"4\") permit (principal, action, resource) when { resource.environment == \"sandbox\" && context.confidence.greaterThan(decimal(\"0.5\")) };\n",
        ));
        let bundle = Bundle::load(&files).unwrap();
        let p = &bundle.policy;
        let mut compared = 0;
        for f in files.iter().filter(|f| f.path.starts_with("tests/")) {
            for case in parse_cases(f).unwrap() {
                let s = &case.scenario;
                let Some(action) = bundle.catalog().get(&s.action) else { continue };
                if bundle.agent(&s.agent).is_none() || action.target_kind != s.target.kind {
                    continue;
                }
                let known = bundle.inventory().get(&s.target).cloned();
                let asset = known.clone().unwrap_or_else(|| crate::inventory::Asset::unknown(&s.target));
                for (hour, confidence) in [(3, s.confidence), (10, 0.3), (10, 0.99)] {
                    let facts = RequestFacts {
                        agent: &s.agent,
                        action,
                        target: &asset,
                        known_target: known.is_some(),
                        confidence,
                        params: &s.params,
                        severity: "critical",
                        source: "edr",
                        task_verified: true,
                        taint: &[],
                        history: &[],
                        hour,
                        weekday: 2,
                    };
                    let Ok(got) = p.evaluate(&facts) else { continue };
                    let ctx = context_of(&facts).unwrap();
                    let agent = &p.agents[&s.agent];
                    let resource_type = &p.types[&asset.kind];
                    let req = Request::new(
                        agent.uid.clone(),
                        p.action_uids[&action.id].clone(),
                        EntityUid::from_type_name_and_id(resource_type.clone(), EntityId::new(&asset.id)),
                        ctx,
                        None,
                    )
                    .unwrap();
                    let entities = if known.is_some() {
                        p.entities.clone()
                    } else {
                        let target = asset_entity(resource_type, &asset, false).unwrap();
                        Entities::from_entities([agent.entity.clone(), target], Some(&p.schema)).unwrap()
                    };
                    let want =
                        verdict_of(&Authorizer::new().is_authorized(&req, &p.full, &entities), &p.meta, &p.meta_by_id);
                    assert_eq!(got, want, "{} at {hour}h, confidence {confidence}", s.name);
                    compared += 1;
                }
            }
        }
        assert!(compared > 100, "only {compared} comparisons");
    }

    #[test]
    fn probes_take_the_leftmost_context_free_test_of_the_first_when() {
        let p = |text: &str| Policy::from_str(text).unwrap();
        let probe_text = |text: &str| probe(&p(text)).map(|q| q.to_string());
        let got = probe_text(
            "forbid(principal, action, resource) when { resource.tier > 1 && context.hour > 3 && resource.privileged };",
        );
        let got = got.expect("a probe");
        assert!(got.starts_with("permit") && got.contains("resource.tier") && !got.contains("context"), "{got}");
        assert!(!got.contains("privileged"), "only the leftmost operand: {got}");
        assert_eq!(
            probe_text("forbid(principal, action, resource) when { context.hour > 3 && resource.tier > 1 };"),
            None
        );
        assert_eq!(
            probe_text("forbid(principal, action, resource) unless { resource.tier > 1 } when { context.hour > 3 };"),
            None
        );
        let nested = probe_text(
            "forbid(principal, action, resource) when { (resource.tier > 1 && resource.privileged) && context.hour > 3 };",
        );
        assert!(nested.is_some_and(|t| !t.contains("privileged")));
    }

    #[test]
    fn context_reads_are_detected() {
        let p = |text: &str| Policy::from_str(text).unwrap();
        assert!(reads_context(&p("permit(principal, action, resource) when { context.hour > 3 };")));
        assert!(reads_context(&p("forbid(principal, action, resource) unless { context has params };")));
        assert!(!reads_context(&p("forbid(principal, action, resource) when { resource.tier > 1 };")));
        assert!(!reads_context(&p("permit(principal, action, resource);")));
    }

    #[test]
    fn cedar_literals_escape_quotes_and_controls() {
        assert_eq!(lit(r#"a"b\c"#), r#""a\"b\\c""#);
        assert_eq!(lit("x\ny\u{1}"), "\"x\\ny\\u{1}\"");
        assert_eq!(entity_type_name("ip_address"), "IpAddress");
        assert_eq!(decimal_text(0.99999), "0.9999");
        assert_eq!(decimal_text(1.0), "1.0000");
    }
}
