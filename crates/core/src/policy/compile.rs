//! Compiling policies: guardrails to Cedar, hand-written rules parsed and checked, the whole
//! set validated against the schema, and the per-agent slices and memo probes prepared.

use super::*;

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

pub(super) fn diagnostic_text(d: &dyn Diagnostic, display: String) -> String {
    match d.help() {
        Some(help) => format!("{display} ({help})"),
        None => display,
    }
}

pub(super) fn first_label_offset(d: &dyn Diagnostic) -> Option<usize> {
    d.labels().and_then(|mut l| l.next()).map(|l| l.offset())
}

/// Parses one hand-written file; each policy gets its `@id` (or `<file>#<n>`) as id.
pub(super) fn parse_handwritten(file: &SourceFile, problems: &mut Vec<Problem>) -> Vec<(Policy, PolicyMeta)> {
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
        let m = PolicyMeta {
            id,
            owner,
            file: file.path.clone(),
            line,
            level,
            forbid,
            grant: None,
            reads_context,
            actions: Vec::new(),
        };
        out.push((policy, m));
    }
    out
}

/// Whether a policy's scope could match requests by `agent` for `action` (on `resource`).
/// Conservative: when unsure, it could.
pub(super) fn scope_may_match(
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

/// The catalog actions a hand-written policy's action constraint may name: an action by its
/// id, or a category group (`Warden::Action::"containment"`) by its members. Conservative.
fn actions_named(p: &Policy, catalog: &Catalog) -> Vec<String> {
    let names = |a: &crate::catalog::ActionClass, u: &EntityUid| {
        let id = u.id().unescaped();
        id == a.id || id == a.category.as_str()
    };
    catalog
        .iter()
        .filter(|a| match p.action_constraint() {
            ActionConstraint::Any => true,
            ActionConstraint::Eq(uid) => names(a, &uid),
            ActionConstraint::In(uids) => uids.iter().any(|u| names(a, u)),
        })
        .map(|a| a.id.clone())
        .collect()
}

/// Whether a policy (JSON form) mentions `context` anywhere.
pub(super) fn json_reads_context(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::Object(m) => {
            m.get("Var").and_then(|v| v.as_str()) == Some("context") || m.values().any(json_reads_context)
        }
        serde_json::Value::Array(a) => a.iter().any(json_reads_context),
        _ => false,
    }
}

/// What a policy (JSON form) reads of `context.task.history`.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct HistoryUse {
    /// The classes it names by `has` or by access.
    pub named: Vec<String>,
    /// Whether it uses the record as a whole (compares it, puts it in a set…), which sees
    /// every class.
    pub whole: bool,
    /// Whether it uses `context` or `context.task` as a value (`if … then context.task else …`,
    /// `{"t": context}`): what is then read of it cannot be told, so the policy is refused.
    pub opaque: bool,
}

/// What a policy (JSON form) reads of `context.task.history`.
pub(super) fn history_use(v: &serde_json::Value) -> HistoryUse {
    fn access<'a>(e: &'a serde_json::Value, name: &str) -> Option<&'a serde_json::Value> {
        let a = e.get(".")?;
        (a.get("attr")?.as_str()? == name).then(|| a.get("left")).flatten()
    }
    let is_context = |e: &serde_json::Value| e.get("Var").and_then(|v| v.as_str()) == Some("context");
    let is_task = |e: &serde_json::Value| access(e, "task").is_some_and(is_context);
    let is_history = |e: &serde_json::Value| access(e, "history").is_some_and(is_task);
    fn walk(
        v: &serde_json::Value,
        left: bool,
        u: &mut HistoryUse,
        kinds: &dyn Fn(&serde_json::Value) -> (bool, bool, bool),
    ) {
        match v {
            serde_json::Value::Object(m) => {
                let (context, task, history) = kinds(v);
                if !left && (context || task) {
                    u.opaque = true;
                }
                if !left && history {
                    u.whole = true;
                }
                for (op, e) in m {
                    if op == "has" || op == "." {
                        if let Some(l) = e.get("left") {
                            if kinds(l).2
                                && let Some(a) = e.get("attr").and_then(|a| a.as_str())
                            {
                                u.named.push(a.to_string());
                            }
                            walk(l, true, u, kinds);
                        }
                        continue;
                    }
                    walk(e, false, u, kinds);
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| walk(v, false, u, kinds)),
            _ => {}
        }
    }
    let kinds = |e: &serde_json::Value| (is_context(e), is_task(e), is_history(e));
    let mut u = HistoryUse::default();
    walk(v, false, &mut u, &kinds);
    u.named.sort();
    u.named.dedup();
    u
}

/// What a policy (JSON form) reads of `context.params`: the params it names by `has`, by `.` or
/// by index (the JSON form holds them decoded, however the source spelt them: `["reas\u{6f}n"]`
/// is `reason`), and whether it uses the record as a whole (which reads every param).
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct ParamsUse {
    pub named: Vec<String>,
    pub whole: bool,
}

pub(super) fn params_use(v: &serde_json::Value) -> ParamsUse {
    fn is_params(e: &serde_json::Value) -> bool {
        e.get(".").is_some_and(|a| {
            a.get("attr").and_then(|x| x.as_str()) == Some("params")
                && a.get("left").and_then(|l| l.get("Var")).and_then(|x| x.as_str()) == Some("context")
        })
    }
    fn walk(v: &serde_json::Value, left: bool, u: &mut ParamsUse) {
        match v {
            serde_json::Value::Object(m) => {
                if !left && is_params(v) {
                    u.whole = true;
                }
                for (op, e) in m {
                    if op == "has" || op == "." {
                        if let Some(l) = e.get("left") {
                            if is_params(l)
                                && let Some(a) = e.get("attr").and_then(|a| a.as_str())
                            {
                                u.named.push(a.to_string());
                            }
                            walk(l, true, u);
                        }
                        continue;
                    }
                    walk(e, false, u);
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| walk(v, false, u)),
            _ => {}
        }
    }
    let mut u = ParamsUse::default();
    walk(v, false, &mut u);
    u.named.sort();
    u.named.dedup();
    u
}

/// Whether a policy's condition mentions `context` (conservatively yes if it cannot be told).
pub(super) fn reads_context(p: &Policy) -> bool {
    p.to_json().map_or(true, |v| v.get("conditions").is_none_or(json_reads_context))
}

/// For a policy whose first condition is `when { A && … }` with a context-free leftmost
/// operand `A`: a permit with the same id and scope and the condition `when { A }`.
///
/// Cedar evaluates the scope, then conditions left to right, short-circuiting `&&`; so if the
/// probe is neither satisfied nor in error for a target, the policy cannot be satisfied and
/// cannot raise an error for that target, whatever the context.
pub(super) fn probe(p: &Policy) -> Option<Policy> {
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
        // What the policies read of the task's history, per action they may decide (only
        // hand-written ones read it).
        let mut history_read: HashMap<String, std::collections::BTreeSet<String>> = HashMap::new();
        let mut params_read: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
        let mut params_whole = false;
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
                    actions: vec![grant.action.clone()],
                };
                add(p.new_id(PolicyId::new(id)), m, Some((&g.id, &grant.action)), &mut problems);
            }
        }
        for file in cedar_files {
            policy_text.push_str(&format!("// from {}\n{}\n", file.path, file.text));
            for (policy, mut m) in parse_handwritten(file, &mut problems) {
                m.actions = actions_named(&policy, catalog);
                // The schema's history record is closed, so Cedar types `has` of a class it
                // lacks as plain `false`: a misspelt class would silently never (or always)
                // match. Every class a policy names in the history must be in the catalog.
                let used =
                    policy.to_json().map_or(HistoryUse { opaque: true, ..HistoryUse::default() }, |j| history_use(&j));
                if used.opaque {
                    problems.push(Problem {
                        file: m.file.clone(),
                        line: Some(m.line),
                        message: format!(
                            "policy `{}` uses `context` or `context.task` as a value; read their attributes directly \
                             (`context.task.history has \"…\"`), so what it reads can be told",
                            m.id
                        ),
                    });
                }
                // The params it reads: each must be sent by the calls of the actions that have
                // it (binding), and a secret one makes its replay inexact (simulate).
                let params =
                    policy.to_json().map_or(ParamsUse { whole: true, ..ParamsUse::default() }, |j| params_use(&j));
                params_whole |= params.whole;
                params_read.extend(params.named);
                let HistoryUse { named, whole, .. } = used;
                for class in &named {
                    if catalog.get(class).is_none() {
                        problems.push(Problem {
                            file: m.file.clone(),
                            line: Some(m.line),
                            message: format!(
                                "policy `{}` reads `context.task.history` of `{class}`, which is not in the catalog",
                                m.id
                            ),
                        });
                    }
                }
                // What decisions of the actions its scope can match must be shown.
                if whole || !named.is_empty() {
                    for action in &m.actions {
                        let read = history_read.entry(action.clone()).or_default();
                        if whole {
                            read.extend(catalog.iter().map(|a| a.id.clone()));
                        } else {
                            read.extend(named.iter().cloned());
                        }
                    }
                }
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
            history_read,
            params_read,
            params_whole,
        })
    }
}
