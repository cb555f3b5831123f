//! Properties of the ladder and of whole decisions, over generated inputs.

use proptest::prelude::*;
use time::OffsetDateTime;
use warden_core::decision::{LadderFacts, climb};
use warden_core::guardrail::Thresholds;
use warden_core::inventory::TargetRef;
use warden_core::request::TaintLabel;
use warden_core::{
    ActionRequest, AgentStatus, BudgetUsage, Bundle, CapCode, DecisionInput, Halt, HaltScope, Outcome, SourceFile,
    decide,
};

use crate::{example_bundle, example_files};

fn thresholds() -> impl Strategy<Value = Thresholds> {
    (0.0f64..=1.0, 0.0f64..=1.0).prop_map(|(a, b)| Thresholds { autonomous: a.max(b), escalate: a.min(b) })
}

fn budget() -> impl Strategy<Value = BudgetUsage> {
    (0u32..30, 0u32..10, any::<bool>(), prop::bool::weighted(0.1)).prop_map(
        |(executions, distinct_targets, target_seen, breaker_open)| BudgetUsage {
            executions,
            distinct_targets,
            target_seen,
            breaker_open,
        },
    )
}

prop_compose! {
    fn facts()(
        granted in 0u8..=4, confidence in 0.0f64..=1.0, thresholds in thresholds(),
        flags in prop::collection::vec(any::<bool>(), 12), budget in budget(),
        max_per_hour in prop::option::of(1u32..25), max_distinct_targets in prop::option::of(1u32..8),
        untrusted_max in prop::option::of(0u8..=3),
    ) -> LadderFacts {
        LadderFacts {
            granted, confidence, thresholds, budget, max_per_hour, max_distinct_targets,
            read_only: flags[0], reversible: flags[1], high_impact: flags[2], step_up_category: flags[3],
            tier0: flags[4], privileged: flags[5], known_target: flags[6],
            require_reversible_for_autonomy: flags[7], review_autonomous: flags[8], shadow: flags[9],
            allow_privileged: flags[10], untrusted_max, confidential_egress: flags[11],
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn never_executes_below_the_autonomous_threshold(f in facts()) {
        let c = climb(&f);
        if !f.read_only && f.confidence < f.thresholds.autonomous {
            prop_assert!(c.effective < 3, "{f:?} → {c:?}");
        }
    }

    #[test]
    fn below_escalate_is_flagged_for_review_at_every_granted_level(f in facts()) {
        let c = climb(&f);
        if !f.read_only && f.granted >= 1 && f.confidence < f.thresholds.escalate {
            prop_assert!(c.review && c.effective <= 1, "{f:?} → {c:?}");
        }
    }

    #[test]
    fn raising_confidence_never_lowers_the_outcome(f in facts(), raise in 0.0f64..=1.0) {
        let higher = LadderFacts { confidence: (f.confidence + raise).min(1.0), ..f };
        prop_assert!(climb(&higher).effective >= climb(&f).effective);
    }

    #[test]
    fn taint_never_raises_the_outcome_and_without_it_nothing_changes(f in facts(), max in 0u8..=3) {
        let clean = LadderFacts { untrusted_max: None, confidential_egress: false, ..f };
        let untrusted = LadderFacts { untrusted_max: Some(max), ..clean };
        let egress = LadderFacts { confidential_egress: true, ..clean };
        let both = LadderFacts { untrusted_max: Some(max), confidential_egress: true, ..clean };
        let base = climb(&clean).effective;
        for t in [&untrusted, &egress, &both] {
            prop_assert!(climb(t).effective <= base, "{t:?}");
        }
        prop_assert!(climb(&untrusted).effective <= max, "{untrusted:?}");
        // More taint never raises it either.
        prop_assert!(climb(&both).effective <= climb(&untrusted).effective.min(climb(&egress).effective));
    }

    #[test]
    fn lowering_the_granted_level_never_raises_the_outcome(f in facts(), by in 1u8..=4) {
        let lower = LadderFacts { granted: f.granted.saturating_sub(by), ..f };
        prop_assert!(climb(&lower).effective <= climb(&f).effective);
    }

    #[test]
    fn the_effective_level_never_exceeds_the_granted_one(f in facts()) {
        let c = climb(&f);
        prop_assert!(c.effective <= f.granted);
        prop_assert_eq!(c.effective < f.granted, !c.caps.is_empty());
    }
}

/// A request drawn from the example bundle's agents, actions and assets (and some strangers).
#[derive(Debug, Clone)]
struct Drawn {
    agent: String,
    request: ActionRequest,
    halts: Vec<Halt>,
    budget: BudgetUsage,
    status: AgentStatus,
    shadow: bool,
    now: OffsetDateTime,
}

fn drawn(bundle: &'static Bundle) -> impl Strategy<Value = Drawn> {
    let mut agents: Vec<String> = bundle.agents().map(|g| g.id.clone()).collect();
    agents.push("spiffe://acme.example/soc/stranger".into());
    let actions: Vec<String> = bundle.catalog().iter().map(|a| a.id.clone()).collect();
    let assets: Vec<TargetRef> = bundle.inventory().iter().map(|a| a.target()).collect();
    let halt = (0u8..4, any::<bool>()).prop_map(|(scope, expired)| (scope, expired));
    (
        prop::sample::select(agents),
        prop::sample::select(actions),
        prop::option::weighted(0.8, prop::sample::select(assets)),
        0.0f64..=1.0,
        prop::collection::vec(halt, 0..2),
        budget(),
        prop::sample::select(vec![
            AgentStatus::Active,
            AgentStatus::Active,
            AgentStatus::Active,
            AgentStatus::Suspended,
        ]),
        prop::bool::weighted(0.1),
        0i64..(14 * 86_400),
    )
        .prop_map(move |(agent, action, asset, confidence, halts, budget, status, shadow, offset)| {
            let class = bundle.catalog().get(&action).unwrap();
            let target = asset
                .filter(|t| t.kind == class.target_kind)
                .unwrap_or_else(|| TargetRef::new(class.target_kind.clone(), "stranger-1"));
            let params = class
                .params
                .iter()
                .filter(|p| p.required)
                .map(|p| {
                    let v = match p.ty {
                        warden_core::catalog::ParamType::String => serde_json::json!("x"),
                        warden_core::catalog::ParamType::Integer => serde_json::json!(60),
                        warden_core::catalog::ParamType::Boolean => serde_json::json!(true),
                        warden_core::catalog::ParamType::StringList => serde_json::json!(["x"]),
                    };
                    (p.name.clone(), v)
                })
                .collect();
            let evidence = (0..2)
                .map(|i| warden_core::request::Evidence {
                    kind: "edr".into(),
                    reference: format!("det:{i}"),
                    summary: None,
                })
                .collect();
            let halts = halts
                .into_iter()
                .map(|(scope, expired)| Halt {
                    scope: [HaltScope::All, HaltScope::Agent, HaltScope::Action, HaltScope::Agent][scope as usize],
                    id: match scope {
                        1 => Some(agent.clone()),
                        2 => Some(action.clone()),
                        3 => Some("spiffe://acme.example/other/agent".into()),
                        _ => None,
                    },
                    reason: "test".into(),
                    expires_at: expired.then_some(OffsetDateTime::UNIX_EPOCH),
                })
                .collect();
            Drawn {
                request: ActionRequest {
                    task: "T-1".into(),
                    action,
                    target,
                    params,
                    confidence,
                    rationale: "why".into(),
                    evidence,
                    idempotency_key: None,
                    inputs: Vec::new(),
                },
                agent,
                halts,
                budget,
                status,
                shadow,
                now: OffsetDateTime::from_unix_timestamp(1_767_225_600 + offset).unwrap(),
            }
        })
}

fn run(bundle: &Bundle, d: &Drawn) -> warden_core::Decision {
    run_with(bundle, d, None)
}

fn run_with(bundle: &Bundle, d: &Drawn, task: Option<&warden_core::request::TaskInfo>) -> warden_core::Decision {
    decide(
        bundle,
        &DecisionInput {
            agent: &d.agent,
            agent_status: d.status,
            request: &d.request,
            task,
            budget: d.budget,
            halts: &d.halts,
            now: d.now,
            shadow: d.shadow,
            via: None,
        },
    )
}

/// [`run`] in a verified task from `source` with `history` and `taint`.
fn run_in(
    bundle: &Bundle,
    d: &Drawn,
    source: &str,
    history: &std::collections::BTreeMap<String, u32>,
    taint: &[warden_core::request::Taint],
) -> warden_core::Decision {
    let task = warden_core::request::TaskInfo {
        id: "T-1".into(),
        state: Default::default(),
        severity: "high".into(),
        source: source.into(),
        verified: true,
        agents: Vec::new(),
        taint: taint.to_vec(),
        history: history.clone(),
    };
    run_with(bundle, d, Some(&task))
}

fn history() -> impl Strategy<Value = std::collections::BTreeMap<String, u32>> {
    let classes: Vec<String> = example_bundle().catalog().iter().map(|a| a.id.clone()).collect();
    prop::collection::btree_map(prop::sample::select(classes), 1u32..50, 0..6)
}

/// The example bundle plus a blanket forbid on targets tagged `frozen`, and one rule that
/// fails to evaluate on tier2 targets.
fn hardened_bundle() -> &'static Bundle {
    static B: std::sync::OnceLock<Bundle> = std::sync::OnceLock::new();
    B.get_or_init(|| {
        let mut files = example_files();
        files.push(SourceFile::new(
            "cedar/zz-test.cedar",
            "@id(\"frozen\") @owner(\"test\") forbid (principal, action, resource) when { resource.tags.contains(\"frozen\") };\n\
             @id(\"overflow\") @owner(\"test\") forbid (principal, action, resource) when { resource.tier == 2 && resource.tier * 9223372036854775807 > 0 };\n",
        ));
        let assets = files.iter_mut().find(|f| f.path == "assets.csv").unwrap();
        assets.text.push_str("host,frozen-01,tier3,prod,team:legal,false,frozen\naccount,frozen-02,tier3,sandbox,team:legal,false,frozen;x\n");
        Bundle::load(&files).unwrap()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn never_executes_when_a_matching_halt_exists(d in drawn(example_bundle())) {
        let decision = run(example_bundle(), &d);
        if d.halts.iter().any(|h| h.matches(&d.agent, &d.request.action, d.now)) {
            prop_assert_eq!(decision.outcome, Outcome::Deny);
        }
    }

    #[test]
    fn whole_decisions_are_monotone_in_confidence(d in drawn(example_bundle()), raise in 0.0f64..=1.0) {
        let mut higher = d.clone();
        higher.request.confidence = (d.request.confidence + raise).min(1.0);
        prop_assert!(run(example_bundle(), &higher).outcome >= run(example_bundle(), &d).outcome);
    }

    #[test]
    fn a_matching_forbid_always_denies(d in drawn(hardened_bundle()), frozen in any::<bool>()) {
        let mut d = d;
        let kind = d.request.target.kind.clone();
        if frozen && (kind == "host" || kind == "account") {
            d.request.target = TargetRef::new(kind.clone(), if kind == "host" { "frozen-01" } else { "frozen-02" });
        }
        let decision = run(hardened_bundle(), &d);
        if decision.policies.iter().any(|p| p.id == "frozen") || decision.has_cap(CapCode::Forbidden) {
            prop_assert_eq!(decision.outcome, Outcome::Deny);
        }
        if frozen && d.request.target.id.starts_with("frozen") {
            prop_assert_eq!(decision.outcome, Outcome::Deny, "{:?}", decision);
        }
    }

    /// Whole decisions on the example bundle (DESIGN §14): a mark of taint never raises the
    /// outcome, whatever the task has done; and what the task has done of classes no policy
    /// names never changes the decision.
    #[test]
    fn taint_never_raises_a_whole_decision_and_unread_history_changes_nothing(
        d in drawn(example_bundle()),
        source in prop::sample::select(vec!["email-gateway", "siem", "phish-report"]),
        done in history(),
        label in prop::sample::select(vec![TaintLabel::Untrusted, TaintLabel::Confidential]),
        unread in 1u32..1000,
    ) {
        let b = example_bundle();
        let clean = run_in(b, &d, source, &done, &[]);
        let mark = warden_core::request::Taint { label, source: "m-1".into(), request: None, by: "warden".into() };
        let tainted = run_in(b, &d, source, &done, &[mark]);
        prop_assert!(tainted.outcome <= clean.outcome, "{:?} then {:?}", clean, tainted);
        prop_assert!(tainted.effective_level <= clean.effective_level);
        // `ticket.close` is named by no policy of the example bundle.
        let mut more = done.clone();
        *more.entry("ticket.close".into()).or_insert(0) += unread;
        prop_assert_eq!(run_in(b, &d, source, &more, &[]), clean);
    }

    #[test]
    fn an_evaluation_error_always_denies(d in drawn(hardened_bundle())) {
        let decision = run(hardened_bundle(), &d);
        if decision.has_cap(CapCode::EvaluationError) {
            prop_assert_eq!(decision.outcome, Outcome::Deny);
            prop_assert_eq!(decision.effective_level, 0);
        }
        let tier2 = hardened_bundle().inventory().get(&d.request.target).is_some_and(|a| a.criticality.tier() == 2);
        let reaches_cedar = !decision.has_cap(CapCode::UnknownAgent) && !decision.has_cap(CapCode::InvalidRequest) && !decision.has_cap(CapCode::UnknownAction);
        if tier2 && reaches_cedar {
            prop_assert!(decision.has_cap(CapCode::EvaluationError), "{:?}", decision);
        }
    }
}
