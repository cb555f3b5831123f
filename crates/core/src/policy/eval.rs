//! Evaluating one request: its entities and context, the slice of policies that can match,
//! the memo of what does not depend on the context, and the verdict.

use super::*;

pub(super) fn asset_entity(type_name: &EntityTypeName, asset: &Asset, known: bool) -> Result<Entity, String> {
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

pub(super) fn agent_uid(id: &str) -> Result<EntityUid, String> {
    Ok(EntityUid::from_type_name_and_id(type_name("Agent")?, EntityId::new(id)))
}

pub(super) fn agent_entity(g: &Guardrail) -> Result<Entity, String> {
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

pub(super) fn param_expr(ty: ParamType, v: &serde_json::Value) -> Option<RestrictedExpression> {
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
pub(super) fn decimal_text(x: f64) -> String {
    let n = (x.clamp(0.0, 1.0) * 10_000.0).floor() as u32;
    format!("{}.{:04}", n / 10_000, n % 10_000)
}

/// The satisfied permits and forbids and the errors of one Cedar response, in policy order.
pub(super) fn verdict_of(
    response: &cedar_policy::Response,
    meta: &[PolicyMeta],
    by_id: &HashMap<String, usize>,
) -> Verdict {
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

/// The request context Cedar rules see (see the module docs).
pub(super) fn context_of(f: &RequestFacts<'_>) -> Result<Context, String> {
    let mut params = Vec::with_capacity(f.params.len());
    for spec in &f.action.params {
        if let Some(v) = f.params.get(&spec.name) {
            let e = param_expr(spec.ty, v).ok_or_else(|| format!("parameter `{}` has the wrong type", spec.name))?;
            params.push((spec.name.clone(), e));
        }
    }
    let taint = RestrictedExpression::new_set(f.taint.iter().map(|l| RestrictedExpression::new_string(l.to_string())));
    let history = RestrictedExpression::new_record(
        f.history.iter().map(|(class, n)| ((*class).to_string(), RestrictedExpression::new_long(i64::from(*n)))),
    )
    .map_err(|e| e.to_string())?;
    let task = RestrictedExpression::new_record([
        ("severity".to_string(), RestrictedExpression::new_string(f.severity.to_string())),
        ("source".to_string(), RestrictedExpression::new_string(f.source.to_string())),
        ("verified".to_string(), RestrictedExpression::new_bool(f.task_verified)),
        ("taint".to_string(), taint),
        ("history".to_string(), history),
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
