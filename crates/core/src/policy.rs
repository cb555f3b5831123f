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

fn cedar_type(t: ParamType) -> &'static str {
    match t {
        ParamType::String => "String",
        ParamType::Integer => "Long",
        ParamType::Boolean => "Bool",
        ParamType::StringList => "Set<String>",
    }
}

/// The Cedar schema for a catalog and inventory.
pub(crate) fn generate_schema(catalog: &Catalog, inventory: &Inventory) -> String {
    let mut kinds: Vec<&str> = catalog.iter().map(|a| a.target_kind.as_str()).collect();
    kinds.extend(inventory.iter().map(|a| a.kind.as_str()));
    kinds.sort_unstable();
    kinds.dedup();
    let mut s = String::new();
    let _ = writeln!(s, "// Generated by Warden from actions.toml and the asset inventory. Do not edit.");
    let _ = writeln!(s, "namespace {NS} {{");
    let _ = writeln!(
        s,
        "  entity Agent = {{ \"name\": String, \"owner\": String, \"purpose\": String, \"mode\": String }};"
    );
    for kind in &kinds {
        let _ = writeln!(
            s,
            "  entity {} = {{ \"criticality\": String, \"tier\": Long, \"environment\": String, \"owner\": String, \
             \"privileged\": Bool, \"tags\": Set<String>, \"known\": Bool }};",
            entity_type_name(kind)
        );
    }
    let mut categories: Vec<_> = catalog.iter().map(|a| a.category).collect();
    categories.sort_unstable();
    categories.dedup();
    for c in categories {
        let _ = writeln!(s, "  action {};", lit(c.as_str()));
    }
    for a in catalog.iter() {
        let mut params = String::new();
        for (i, p) in a.params.iter().enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            let opt = if p.required { "" } else { "?" };
            let _ = write!(params, "{sep}{}{opt}: {}", lit(&p.name), cedar_type(p.ty));
        }
        let _ = writeln!(
            s,
            "  action {} in [{}] appliesTo {{ principal: [Agent], resource: [{}], context: {{ \
             \"confidence\": __cedar::decimal, \"hour\": Long, \"weekday\": Long, \
             \"task\": {{ \"severity\": String, \"source\": String, \"verified\": Bool }}, \"params\": {{ {params} }} }} }};",
            lit(&a.id),
            lit(a.category.as_str()),
            entity_type_name(&a.target_kind)
        );
    }
    s.push_str("}\n");
    s
}

/// One guardrail's policies, as Cedar source.
pub(crate) fn compile_guardrail(g: &Guardrail) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "// {} ({}), from {}", g.name, g.id, g.file);
    for (i, grant) in g.grants.iter().enumerate() {
        let effect = if grant.level == 0 { "forbid" } else { "permit" };
        let _ = writeln!(s, "@id({})", lit(&format!("agent/{}/{}#{i}", g.name, grant.action)));
        let _ = writeln!(s, "@level(\"{}\")", grant.level);
        let _ = writeln!(s, "@owner({})", lit(&g.owner));
        let _ = writeln!(s, "@file({})", lit(&g.file));
        let _ = writeln!(s, "@line(\"{}\")", grant.line);
        let _ = write!(
            s,
            "{effect} (principal == {NS}::Agent::{}, action == {NS}::Action::{}, resource)",
            lit(&g.id),
            lit(&grant.action)
        );
        let mut conds = Vec::new();
        if let Some(envs) = &grant.conditions.environments {
            let list: Vec<String> = envs.iter().map(|e| lit(e.as_str())).collect();
            conds.push(format!("[{}].contains(resource.environment)", list.join(", ")));
        }
        if let Some(max) = grant.conditions.max_criticality {
            conds.push(format!("resource.tier >= {}", max.tier()));
        }
        if grant.conditions.allow_privileged == Some(false) {
            conds.push("!resource.privileged".to_string());
        }
        if conds.is_empty() {
            s.push_str(";\n\n");
        } else {
            let _ = writeln!(s, "\nwhen {{ {} }};\n", conds.join(" && "));
        }
    }
    s
}

fn diagnostic_text(d: &dyn Diagnostic, display: String) -> String {
    match d.help() {
        Some(help) => format!("{display} ({help})"),
        None => display,
    }
}

fn first_label_offset(d: &dyn Diagnostic) -> Option<usize> {
    d.labels().and_then(|mut l| l.next()).map(|l| l.offset())
}

/// Parses one hand-written file; each policy gets its `@id` (or `<file>#<n>`) as id.
fn parse_handwritten(file: &SourceFile, problems: &mut Vec<Problem>) -> Vec<(Policy, PolicyMeta)> {
    let set = match PolicySet::from_str(&file.text) {
        Ok(set) => set,
        Err(errs) => {
            for e in errs.iter() {
                let offset = first_label_offset(e);
                problems.push(Problem {
                    file: file.path.clone(),
                    line: offset.map(|o| file.line_at(o)),
                    message: diagnostic_text(e, e.to_string()),
                });
            }
            return Vec::new();
        }
    };
    if set.templates().next().is_some() {
        problems.push(Problem::in_file(&file.path, "templates are not supported; write static policies"));
    }
    // The parser numbers policies `policy0`, `policy1`, … in source order.
    let mut policies: Vec<&Policy> = set.policies().collect();
    policies.sort_by_key(|p| p.id().to_string().trim_start_matches("policy").parse::<usize>().unwrap_or(usize::MAX));
    let mut out = Vec::new();
    let mut cursor = 0;
    for (n, p) in policies.into_iter().enumerate() {
        let text = p.to_string();
        let start = file.text[cursor..].find(text.as_str()).map(|i| cursor + i);
        if let Some(s) = start {
            cursor = s + text.len();
        }
        let line = start.map_or(1, |s| file.line_at(s));
        let mut report = |message: String| {
            problems.push(Problem { file: file.path.clone(), line: Some(line), message });
        };
        let id = p.annotation("id").map_or_else(|| format!("{}#{n}", file.path), str::to_string);
        let owner = match p.annotation("owner") {
            Some(o) if !o.trim().is_empty() => o.to_string(),
            _ => {
                report(format!("policy `{id}` needs an `@owner(\"…\")` annotation: who answers for it"));
                String::new()
            }
        };
        let forbid = p.effect() == Effect::Forbid;
        let level = match (forbid, p.annotation("level")) {
            (true, None) => None,
            (true, Some(_)) => {
                report(format!("policy `{id}` is a forbid; `@level` applies to permits only"));
                None
            }
            (false, Some(l)) => match l.parse::<u8>() {
                Ok(l @ 1..=4) => Some(l),
                _ => {
                    report(format!("policy `{id}` has `@level(\"{l}\")`; a permit's level must be 1 to 4"));
                    None
                }
            },
            (false, None) => {
                report(format!("permit `{id}` needs a `@level(\"1\"…\"4\")` annotation: the autonomy it grants"));
                None
            }
        };
        let policy = p.new_id(PolicyId::new(id.clone()));
        let reads_context = reads_context(&policy);
        let m = PolicyMeta { id, owner, file: file.path.clone(), line, level, forbid, grant: None, reads_context };
        out.push((policy, m));
    }
    out
}

fn asset_entity(type_name: &EntityTypeName, asset: &Asset, known: bool) -> Result<Entity, String> {
    let uid = EntityUid::from_type_name_and_id(type_name.clone(), EntityId::new(&asset.id));
    let attrs = HashMap::from([
        ("criticality".to_string(), RestrictedExpression::new_string(asset.criticality.as_str().into())),
        ("tier".to_string(), RestrictedExpression::new_long(i64::from(asset.criticality.tier()))),
        ("environment".to_string(), RestrictedExpression::new_string(asset.environment.as_str().into())),
        ("owner".to_string(), RestrictedExpression::new_string(asset.owner.clone())),
        ("privileged".to_string(), RestrictedExpression::new_bool(asset.privileged)),
        (
            "tags".to_string(),
            RestrictedExpression::new_set(asset.tags.iter().map(|t| RestrictedExpression::new_string(t.clone()))),
        ),
        ("known".to_string(), RestrictedExpression::new_bool(known)),
    ]);
    Entity::new(uid, attrs, HashSet::new()).map_err(|e| e.to_string())
}

fn agent_uid(id: &str) -> Result<EntityUid, String> {
    Ok(EntityUid::from_type_name_and_id(type_name("Agent")?, EntityId::new(id)))
}

fn agent_entity(g: &Guardrail) -> Result<Entity, String> {
    let mode = match g.mode {
        crate::guardrail::Mode::Enforce => "enforce",
        crate::guardrail::Mode::Shadow => "shadow",
    };
    let attrs = HashMap::from([
        ("name".to_string(), RestrictedExpression::new_string(g.name.clone())),
        ("owner".to_string(), RestrictedExpression::new_string(g.owner.clone())),
        ("purpose".to_string(), RestrictedExpression::new_string(g.purpose.clone())),
        ("mode".to_string(), RestrictedExpression::new_string(mode.into())),
    ]);
    Entity::new(agent_uid(&g.id)?, attrs, HashSet::new()).map_err(|e| e.to_string())
}

fn param_expr(ty: ParamType, v: &serde_json::Value) -> Option<RestrictedExpression> {
    Some(match ty {
        ParamType::String => RestrictedExpression::new_string(v.as_str()?.to_string()),
        ParamType::Integer => RestrictedExpression::new_long(v.as_i64()?),
        ParamType::Boolean => RestrictedExpression::new_bool(v.as_bool()?),
        ParamType::StringList => RestrictedExpression::new_set(
            v.as_array()?
                .iter()
                .map(|s| s.as_str().map(|s| RestrictedExpression::new_string(s.to_string())))
                .collect::<Option<Vec<_>>>()?,
        ),
    })
}

/// Cedar decimals carry four places; truncate so a rule never sees more confidence than sent.
fn decimal_text(x: f64) -> String {
    let n = (x.clamp(0.0, 1.0) * 10_000.0).floor() as u32;
    format!("{}.{:04}", n / 10_000, n % 10_000)
}

/// Whether a policy's scope could match requests by `agent` for `action` (on `resource`).
/// Conservative: when unsure, it could.
fn scope_may_match(
    p: &Policy,
    agent: &EntityUid,
    action: &EntityUid,
    group: &EntityUid,
    resource: &EntityTypeName,
) -> bool {
    let agent_type = agent.type_name();
    let principal = match p.principal_constraint() {
        PrincipalConstraint::Any | PrincipalConstraint::In(_) => true,
        PrincipalConstraint::Eq(uid) => &uid == agent,
        PrincipalConstraint::Is(t) | PrincipalConstraint::IsIn(t, _) => &t == agent_type,
    };
    let action_ok = match p.action_constraint() {
        ActionConstraint::Any => true,
        ActionConstraint::Eq(uid) => &uid == action,
        ActionConstraint::In(uids) => uids.iter().any(|u| u == action || u == group),
    };
    let resource_ok = match p.resource_constraint() {
        ResourceConstraint::Any | ResourceConstraint::In(_) => true,
        ResourceConstraint::Eq(uid) => uid.type_name() == resource,
        ResourceConstraint::Is(t) | ResourceConstraint::IsIn(t, _) => &t == resource,
    };
    principal && action_ok && resource_ok
}

/// Whether a policy (JSON form) mentions `context` anywhere.
fn json_reads_context(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::Object(m) => {
            m.get("Var").and_then(|v| v.as_str()) == Some("context") || m.values().any(json_reads_context)
        }
        serde_json::Value::Array(a) => a.iter().any(json_reads_context),
        _ => false,
    }
}

/// Whether a policy's condition mentions `context` (conservatively yes if it cannot be told).
fn reads_context(p: &Policy) -> bool {
    p.to_json().map_or(true, |v| v.get("conditions").is_none_or(json_reads_context))
}

/// For a policy whose first condition is `when { A && … }` with a context-free leftmost
/// operand `A`: a permit with the same id and scope and the condition `when { A }`.
///
/// Cedar evaluates the scope, then conditions left to right, short-circuiting `&&`; so if the
/// probe is neither satisfied nor in error for a target, the policy cannot be satisfied and
/// cannot raise an error for that target, whatever the context.
fn probe(p: &Policy) -> Option<Policy> {
    let mut est = p.to_json().ok()?;
    let first = est.get("conditions")?.as_array()?.first()?;
    if first.get("kind")?.as_str()? != "when" {
        return None;
    }
    let mut leaf = first.get("body")?;
    while let Some(and) = leaf.get("&&") {
        leaf = and.get("left")?;
    }
    if json_reads_context(leaf) {
        return None;
    }
    let condition = serde_json::json!([{"kind": "when", "body": leaf.clone()}]);
    let obj = est.as_object_mut()?;
    obj.insert("effect".into(), "permit".into());
    obj.insert("annotations".into(), serde_json::json!({}));
    obj.insert("conditions".into(), condition);
    Policy::from_json(Some(p.id().clone()), est).ok()
}

/// The satisfied permits and forbids and the errors of one Cedar response, in policy order.
fn verdict_of(response: &cedar_policy::Response, meta: &[PolicyMeta], by_id: &HashMap<String, usize>) -> Verdict {
    let mut verdict =
        Verdict { errors: response.diagnostics().errors().map(|e| e.to_string()).collect(), ..Verdict::default() };
    for id in response.diagnostics().reason() {
        let Some(&i) = by_id.get(id.as_ref() as &str) else {
            verdict.errors.push(format!("policy `{id}` has no metadata"));
            continue;
        };
        if meta[i].forbid {
            verdict.forbids.push(i);
        } else {
            verdict.permits.push(i);
        }
    }
    debug_assert_eq!(
        response.decision() == CedarDecision::Deny,
        !verdict.forbids.is_empty() || verdict.permits.is_empty()
    );
    verdict.permits.sort_unstable();
    verdict.forbids.sort_unstable();
    verdict.errors.sort();
    verdict
}

impl Verdict {
    /// Combines the verdicts of two disjoint parts of a policy set as Cedar would for the
    /// whole: a satisfied forbid hides the satisfied permits.
    fn merge(mut self, other: Verdict) -> Verdict {
        self.forbids.extend(other.forbids);
        self.permits.extend(other.permits);
        self.errors.extend(other.errors);
        if !self.forbids.is_empty() {
            self.permits.clear();
        }
        self.forbids.sort_unstable();
        self.permits.sort_unstable();
        self.errors.sort();
        self
    }
}

fn type_name(name: &str) -> Result<EntityTypeName, String> {
    EntityTypeName::from_str(&format!("{NS}::{name}")).map_err(|e| e.to_string())
}

/// The request context Cedar rules see (see the module docs).
fn context_of(f: &RequestFacts<'_>) -> Result<Context, String> {
    let mut params = Vec::with_capacity(f.params.len());
    for spec in &f.action.params {
        if let Some(v) = f.params.get(&spec.name) {
            let e = param_expr(spec.ty, v).ok_or_else(|| format!("parameter `{}` has the wrong type", spec.name))?;
            params.push((spec.name.clone(), e));
        }
    }
    let task = RestrictedExpression::new_record([
        ("severity".to_string(), RestrictedExpression::new_string(f.severity.to_string())),
        ("source".to_string(), RestrictedExpression::new_string(f.source.to_string())),
        ("verified".to_string(), RestrictedExpression::new_bool(f.task_verified)),
    ])
    .map_err(|e| e.to_string())?;
    let context = Context::from_pairs([
        ("confidence".to_string(), RestrictedExpression::new_decimal(decimal_text(f.confidence))),
        ("hour".to_string(), RestrictedExpression::new_long(i64::from(f.hour))),
        ("weekday".to_string(), RestrictedExpression::new_long(i64::from(f.weekday))),
        ("task".to_string(), task),
        ("params".to_string(), RestrictedExpression::new_record(params).map_err(|e| e.to_string())?),
    ])
    .map_err(|e| e.to_string())?;
    Ok(context)
}

impl CompiledPolicy {
    /// Compiles guardrails and hand-written files, validates the whole set against the
    /// generated schema, and prepares per-agent slices and entities.
    pub(crate) fn build(
        catalog: &Catalog,
        inventory: &Inventory,
        guardrails: &[Guardrail],
        cedar_files: &[SourceFile],
    ) -> Result<Self, Vec<Problem>> {
        let mut problems = Vec::new();
        for kind in catalog.iter().map(|a| &a.target_kind).chain(inventory.iter().map(|a| &a.kind)) {
            if matches!(entity_type_name(kind).as_str(), "Agent" | "Action") {
                problems.push(Problem::in_file("actions.toml", format!("asset kind `{kind}` is reserved")));
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        let schema_text = generate_schema(catalog, inventory);
        let (schema, _warnings) = Schema::from_cedarschema_str(&schema_text)
            .map_err(|e| vec![Problem::in_file("actions.toml", format!("generated Cedar schema is invalid: {e}"))])?;

        let mut meta: Vec<PolicyMeta> = Vec::new();
        let mut full = PolicySet::new();
        // Guardrail policies per (agent, action); hand-written ones apply to everyone.
        let mut own: HashMap<(String, String), Vec<Policy>> = HashMap::new();
        let mut handwritten: Vec<Policy> = Vec::new();
        let mut policy_text = String::new();
        let mut add = |policy: Policy, m: PolicyMeta, owner: Option<(&str, &str)>, problems: &mut Vec<Problem>| {
            match owner {
                Some((agent, action)) => {
                    own.entry((agent.to_string(), action.to_string())).or_default().push(policy.clone())
                }
                None => handwritten.push(policy.clone()),
            }
            if let Err(e) = full.add(policy) {
                let message = format!("policy id `{}` is used twice ({e})", m.id);
                problems.push(Problem { file: m.file.clone(), line: Some(m.line), message });
                return;
            }
            meta.push(m);
        };

        for g in guardrails {
            let text = compile_guardrail(g);
            policy_text.push_str(&text);
            let set = match PolicySet::from_str(&text) {
                Ok(set) => set,
                Err(e) => {
                    let p = Problem {
                        file: g.file.clone(),
                        line: None,
                        message: format!("compiles to invalid Cedar: {e}"),
                    };
                    problems.push(p);
                    continue;
                }
            };
            let mut policies: Vec<&Policy> = set.policies().collect();
            policies.sort_by_key(|p| p.annotation("line").and_then(|l| l.parse::<usize>().ok()));
            for p in policies {
                let id = p.annotation("id").unwrap_or_default().to_string();
                let index = id.rsplit('#').next().and_then(|i| i.parse::<usize>().ok());
                let grant = index.and_then(|i| g.grants.get(i).map(|gr| (i, gr)));
                let Some((index, grant)) = grant else { continue };
                let m = PolicyMeta {
                    id: id.clone(),
                    owner: g.owner.clone(),
                    file: g.file.clone(),
                    line: grant.line,
                    level: (grant.level > 0).then_some(grant.level),
                    forbid: grant.level == 0,
                    grant: Some(index),
                    reads_context: reads_context(p),
                };
                add(p.new_id(PolicyId::new(id)), m, Some((&g.id, &grant.action)), &mut problems);
            }
        }
        for file in cedar_files {
            policy_text.push_str(&format!("// from {}\n{}\n", file.path, file.text));
            for (policy, m) in parse_handwritten(file, &mut problems) {
                add(policy, m, None, &mut problems);
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }

        let meta_by_id: HashMap<String, usize> = meta.iter().enumerate().map(|(i, m)| (m.id.clone(), i)).collect();
        let validation = Validator::new(schema.clone()).validate(&full, ValidationMode::Strict);
        for e in validation.validation_errors() {
            let m = meta_by_id.get(&e.policy_id().to_string()).map(|i| &meta[*i]);
            let message = diagnostic_text(e, e.to_string());
            problems.push(match m {
                Some(m) => Problem { file: m.file.clone(), line: Some(m.line), message },
                None => Problem::in_file("cedar", message),
            });
        }
        if !problems.is_empty() {
            problems.sort();
            problems.dedup();
            return Err(problems);
        }

        let internal = |e: String| vec![Problem::in_file("actions.toml", format!("cannot prepare policies: {e}"))];
        let mut types = HashMap::new();
        for kind in catalog.iter().map(|a| &a.target_kind).chain(inventory.iter().map(|a| &a.kind)) {
            types.insert(kind.clone(), type_name(&entity_type_name(kind)).map_err(internal)?);
        }
        let action_uid = |id: &str| {
            EntityUid::from_str(&format!("{NS}::Action::{}", lit(id))).map_err(|e| e.to_string()).map_err(internal)
        };
        let mut action_uids = HashMap::new();
        for a in catalog.iter() {
            action_uids.insert(a.id.clone(), action_uid(&a.id)?);
        }

        let mut entities = Vec::new();
        let mut agent_entities = Vec::new();
        for g in guardrails {
            let entity = agent_entity(g).map_err(|e| vec![Problem::in_file(&g.file, e)])?;
            entities.push(entity.clone());
            agent_entities.push((g, entity));
        }
        for a in inventory.iter() {
            let e = asset_entity(&types[&a.kind], a, true)
                .map_err(|e| vec![Problem::in_file("assets.toml", format!("asset `{}`: {e}", a.target()))])?;
            entities.push(e);
        }
        let entities = Entities::from_entities(entities, Some(&schema))
            .map_err(|e| vec![Problem::in_file("assets.toml", format!("entities do not fit the schema: {e}"))])?;

        let authorizer = Authorizer::new();
        let probes: HashMap<PolicyId, Option<Policy>> =
            handwritten.iter().filter(|p| reads_context(p)).map(|p| (p.id().clone(), probe(p))).collect();
        let mut agents = HashMap::new();
        for (g, entity) in agent_entities {
            let uid = entity.uid();
            let mut by_action = HashMap::new();
            for a in catalog.iter() {
                let group = action_uid(a.category.as_str())?;
                let resource = &types[&a.target_kind];
                let mut slice = ActionSlice {
                    all: PolicySet::new(),
                    dynamic: PolicySet::new(),
                    fixed_set: PolicySet::new(),
                    probes: PolicySet::new(),
                    known: RwLock::default(),
                };
                let mine = own.get(&(g.id.clone(), a.id.clone())).into_iter().flatten();
                let shared =
                    handwritten.iter().filter(|p| scope_may_match(p, &uid, &action_uids[&a.id], &group, resource));
                for p in mine.chain(shared) {
                    let add = |set: &mut PolicySet, p: Policy| set.add(p).map_err(|e| internal(e.to_string()));
                    add(&mut slice.all, p.clone())?;
                    if meta_by_id.get(p.id().as_ref() as &str).is_none_or(|&i| meta[i].reads_context) {
                        add(&mut slice.dynamic, p.clone())?;
                        if let Some(probe) = probes.get(p.id()).cloned().flatten() {
                            add(&mut slice.probes, probe)?;
                        }
                    } else {
                        add(&mut slice.fixed_set, p.clone())?;
                    }
                }
                by_action.insert(a.id.clone(), slice);
            }
            agents.insert(g.id.clone(), AgentSlices { uid, entity, by_action });
        }

        Ok(Self {
            schema_text,
            policy_text,
            schema,
            agents,
            action_uids,
            types,
            #[cfg(test)]
            full,
            meta,
            meta_by_id,
            entities,
            authorizer,
        })
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

    /// Evaluates the agent's slice for one request. Errors inside Cedar are reported in the
    /// verdict; errors building the request are returned as `Err`.
    pub(crate) fn evaluate(&self, f: &RequestFacts<'_>) -> Result<Verdict, String> {
        let agent = self.agents.get(f.agent).ok_or_else(|| format!("agent `{}` has no policies", f.agent))?;
        let action =
            self.action_uids.get(&f.action.id).ok_or_else(|| format!("action `{}` has no entity", f.action.id))?;
        let resource_type = self
            .types
            .get(&f.target.kind)
            .map_or_else(|| type_name(&entity_type_name(&f.target.kind)), |t| Ok(t.clone()))?;
        let resource = EntityUid::from_type_name_and_id(resource_type.clone(), EntityId::new(&f.target.id));
        let slice =
            agent.by_action.get(&f.action.id).ok_or_else(|| format!("action `{}` has no slice", f.action.id))?;
        // Known target: the context-free part depends on the bundle alone.
        let known = if f.known_target { Some(self.known_target(slice, &agent.uid, action, &resource)) } else { None };
        let set = known.as_ref().map_or(&slice.all, |k| &k.dynamic);
        if let Some(k) = &known
            && set.is_empty()
        {
            return Ok(k.fixed.clone());
        }

        let context = context_of(f)?;
        let request =
            Request::new(agent.uid.clone(), action.clone(), resource, context, None).map_err(|e| e.to_string())?;

        let response = if known.is_some() {
            self.authorizer.is_authorized(&request, set, &self.entities)
        } else {
            let target = asset_entity(&resource_type, f.target, false)?;
            let entities = Entities::from_entities([agent.entity.clone(), target], Some(&self.schema))
                .map_err(|e| e.to_string())?;
            self.authorizer.is_authorized(&request, set, &entities)
        };
        let verdict = verdict_of(&response, &self.meta, &self.meta_by_id);
        Ok(match known {
            Some(k) => k.fixed.clone().merge(verdict),
            None => verdict,
        })
    }

    /// Forgets every remembered known-target result; they are worked out again on demand.
    pub(crate) fn clear_memo(&self) {
        for agent in self.agents.values() {
            for slice in agent.by_action.values() {
                if let Ok(mut m) = slice.known.write() {
                    m.clear();
                }
            }
        }
    }

    /// What the slice leaves to evaluate for a known target, worked out on first use.
    /// A poisoned cache is bypassed, never trusted.
    fn known_target(
        &self,
        slice: &ActionSlice,
        agent: &EntityUid,
        action: &EntityUid,
        target: &EntityUid,
    ) -> Arc<KnownTarget> {
        let id = target.id().unescaped();
        if let Ok(cache) = slice.known.read()
            && let Some(k) = cache.get(id)
        {
            return Arc::clone(k);
        }
        let known =
            Arc::new(match Request::new(agent.clone(), action.clone(), target.clone(), Context::empty(), None) {
                Ok(request) => {
                    let response = self.authorizer.is_authorized(&request, &slice.fixed_set, &self.entities);
                    let fixed = verdict_of(&response, &self.meta, &self.meta_by_id);
                    // Probes satisfied or in error keep their policy; policies without a probe stay.
                    let probed = self.authorizer.is_authorized(&request, &slice.probes, &self.entities);
                    let d = probed.diagnostics();
                    let keep: HashSet<&PolicyId> = d
                        .reason()
                        .chain(
                            d.errors().map(|cedar_policy::AuthorizationError::PolicyEvaluationError(e)| e.policy_id()),
                        )
                        .collect();
                    let mut dynamic = PolicySet::new();
                    for p in slice.dynamic.policies() {
                        if (slice.probes.policy(p.id()).is_none() || keep.contains(p.id()))
                            && dynamic.add(p.clone()).is_err()
                        {
                            return Arc::new(KnownTarget { fixed, dynamic: slice.dynamic.clone() });
                        }
                    }
                    KnownTarget { fixed, dynamic }
                }
                // Without a request nothing can be precomputed: evaluate everything per request.
                Err(_) => KnownTarget { fixed: Verdict::default(), dynamic: slice.all.clone() },
            });
        if let Ok(mut cache) = slice.known.write() {
            cache.insert(id.to_string(), Arc::clone(&known));
        }
        known
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::Bundle;
    use crate::policy_test::parse_cases;

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
