//! One decision on a large bundle (50 agents × 12 actions + 100 hand-written Cedar rules),
//! beside raw `cedar_policy::Authorizer::is_authorized` on the same request in the same run.
//!
//! `cargo bench -p warden-core` — figures and ratios go to BENCHMARKS.md.

use std::fmt::Write as _;
use std::hint::black_box;
use std::str::FromStr;

use cedar_policy::{Authorizer, Context, Entities, EntityUid, PolicySet, Request, Schema};
use criterion::{Criterion, criterion_group, criterion_main};
use time::macros::datetime;
use warden_core::request::Evidence;
use warden_core::{ActionRequest, AgentStatus, BudgetUsage, Bundle, DecisionInput, Outcome, SourceFile, decide};

const ACTIONS: &str = include_str!("../../../examples/policy/actions.toml");
const ASSETS: &str = include_str!("../../../examples/policy/assets.toml");
const AGENTS: usize = 50;
const GRANTS: usize = 12;
const RULES: usize = 100;

fn agent_id(i: usize) -> String {
    format!("spiffe://bench.example/soc/agent-{i:02}")
}

/// The large bundle: the example catalog and inventory, 50 generated guardrails of 12
/// grants each (the last always `host.isolate` at level 3), and 100 hand-written rules.
fn large_bundle() -> Vec<SourceFile> {
    let catalog = warden_core::catalog::Catalog::parse(&SourceFile::new("actions.toml", ACTIONS)).unwrap();
    let ids: Vec<&str> = catalog.iter().map(|a| a.id.as_str()).filter(|a| *a != "host.isolate").collect();
    let mut files = vec![SourceFile::new("actions.toml", ACTIONS), SourceFile::new("assets.toml", ASSETS)];
    for i in 0..AGENTS {
        let mut g = format!(
            "[agent]\nid = \"{}\"\nowner = \"team:bench-{}\"\n\n[data]\ntools = [\"siem\", \"ticketing\", \"mail\", \"edr\", \"firewall\", \"idp\"]\n\n\
             [escalation]\napprover_roles = [\"soc-analyst\"]\n\n[rollback]\nmax_per_hour = 20\nmax_distinct_targets = 10\n",
            agent_id(i),
            i % 7
        );
        for k in 0..GRANTS - 1 {
            let _ = write!(g, "\n[[action]]\naction = \"{}\"\nlevel = {}\n", ids[(i + k) % ids.len()], (i + k) % 5);
            if k % 3 == 0 {
                g.push_str("max_criticality = \"tier2\"\n");
            }
            if k % 4 == 0 {
                g.push_str("environments = [\"prod\", \"staging\"]\n");
            }
        }
        g.push_str("\n[[action]]\naction = \"host.isolate\"\nlevel = 3\nmax_criticality = \"tier2\"\n");
        files.push(SourceFile::new(format!("agents/agent-{i:02}.toml"), g));
    }
    let categories = ["containment", "identity", "network", "ticketing", "secrets", "enrichment"];
    let mut rules = String::new();
    for j in 0..RULES {
        let _ = write!(rules, "@id(\"rule-{j:03}\")\n@owner(\"team:rules-{}\")\n", j % 5);
        let action = ids[j % ids.len()];
        match j % 4 {
            0 => writeln!(
                rules,
                "forbid (principal, action in Warden::Action::\"{}\", resource)\nwhen {{ resource.tags.contains(\"tag-{j}\") && context.hour >= 8 && context.hour < 18 }};",
                categories[j % categories.len()]
            ),
            1 => writeln!(
                rules,
                "forbid (principal == Warden::Agent::\"{}\", action == Warden::Action::\"{action}\", resource)\nwhen {{ resource.environment == \"sandbox\" && context.confidence.lessThan(decimal(\"0.5\")) }};",
                agent_id(j % AGENTS)
            ),
            2 => writeln!(
                rules,
                "@level(\"2\")\npermit (principal, action == Warden::Action::\"{action}\", resource)\nwhen {{ resource.tier == 3 && context.task.severity == \"low\" }};"
            ),
            _ => writeln!(rules, "forbid (principal, action, resource is Warden::Host)\nwhen {{ resource.tags.contains(\"frozen-{j}\") }};"),
        }
        .unwrap();
    }
    files.push(SourceFile::new("cedar/rules.cedar", rules));
    files
}

fn request(target: &str) -> ActionRequest {
    ActionRequest {
        task: "INC-1".into(),
        action: "host.isolate".into(),
        target: target.parse().unwrap(),
        params: serde_json::from_str(r#"{"reason": "beacon"}"#).unwrap(),
        confidence: 0.95,
        rationale: "C2 beacon".into(),
        evidence: vec![Evidence { kind: "edr".into(), reference: "det:1".into(), summary: None }],
        idempotency_key: None,
        inputs: Vec::new(),
    }
}

fn input<'a>(agent: &'a str, req: &'a ActionRequest) -> DecisionInput<'a> {
    DecisionInput {
        agent,
        agent_status: AgentStatus::Active,
        request: req,
        task: None,
        budget: BudgetUsage { executions: 3, distinct_targets: 2, target_seen: false, breaker_open: false },
        halts: &[],
        now: datetime!(2026-01-07 03:00:00 UTC),
        shadow: false,
        via: None,
    }
}

/// The same request for raw Cedar: policies, schema and entities from the bundle's own text.
struct Raw {
    all: PolicySet,
    slice: PolicySet,
    /// The part of `slice` whose conditions read `context`.
    dynamic: PolicySet,
    entities: Entities,
    request: Request,
}

fn raw(bundle: &Bundle, agent: &str) -> Raw {
    let all = PolicySet::from_str(bundle.cedar_policies()).unwrap();
    let (schema, _) = Schema::from_cedarschema_str(bundle.cedar_schema()).unwrap();
    // Exactly the policies Warden evaluates for (agent, host.isolate): scopes that can match.
    let mut slice = PolicySet::new();
    for p in all.policies() {
        use cedar_policy::{ActionConstraint as A, PrincipalConstraint as P, ResourceConstraint as R};
        let principal = !matches!(p.principal_constraint(), P::Eq(uid) if uid.id().unescaped() != agent);
        let action = match p.action_constraint() {
            A::Any => true,
            A::Eq(uid) => uid.id().unescaped() == "host.isolate",
            A::In(uids) => uids.iter().any(|u| matches!(u.id().unescaped(), "host.isolate" | "containment")),
        };
        let resource = match p.resource_constraint() {
            R::Is(t) | R::IsIn(t, _) => t.to_string() == "Warden::Host",
            _ => true,
        };
        if principal && action && resource {
            slice.add(p.clone()).unwrap();
        }
    }
    let mut dynamic = PolicySet::new();
    for p in slice.policies() {
        if p.to_json().unwrap().get("conditions").unwrap().to_string().contains(r#"{"Var":"context"}"#) {
            dynamic.add(p.clone()).unwrap();
        }
    }
    let entities = serde_json::json!([
        {"uid": {"type": "Warden::Agent", "id": agent}, "parents": [],
         "attrs": {"name": "agent-25", "owner": "team:bench-4", "purpose": "", "mode": "enforce"}},
        {"uid": {"type": "Warden::Host", "id": "web-42"}, "parents": [],
         "attrs": {"criticality": "tier2", "tier": 2, "environment": "prod", "owner": "team:web",
                   "privileged": false, "tags": ["internet-facing"], "known": true}}
    ]);
    let entities = Entities::from_json_value(entities, Some(&schema)).unwrap();
    let context = Context::from_json_value(
        serde_json::json!({"confidence": {"__extn": {"fn": "decimal", "arg": "0.9500"}}, "hour": 3, "weekday": 2,
            "task": {"severity": "unknown", "source": "unknown"}, "params": {"reason": "beacon"}}),
        None,
    )
    .unwrap();
    let request = Request::new(
        EntityUid::from_str(&format!("Warden::Agent::\"{agent}\"")).unwrap(),
        EntityUid::from_str("Warden::Action::\"host.isolate\"").unwrap(),
        EntityUid::from_str("Warden::Host::\"web-42\"").unwrap(),
        context,
        None,
    )
    .unwrap();
    Raw { all, slice, dynamic, entities, request }
}

fn benches(c: &mut Criterion) {
    let files = large_bundle();
    let bundle = Bundle::load(&files).unwrap();
    assert_eq!(bundle.policy_count(), AGENTS * GRANTS + RULES);
    let agent = agent_id(25);
    let known = request("host:web-42");
    let unknown = request("host:ghost-1");
    assert_eq!(decide(&bundle, &input(&agent, &known)).outcome, Outcome::Execute);
    assert_eq!(decide(&bundle, &input(&agent, &unknown)).outcome, Outcome::Deny);

    let raw = raw(&bundle, &agent);
    let authorizer = Authorizer::new();
    eprintln!(
        "policies: {} in the bundle, {} in the (agent, action) slice, {} of them read the context",
        raw.all.num_of_policies(),
        raw.slice.num_of_policies(),
        raw.dynamic.num_of_policies()
    );
    assert_eq!(
        authorizer.is_authorized(&raw.request, &raw.all, &raw.entities).decision(),
        cedar_policy::Decision::Allow
    );

    let mut g = c.benchmark_group("decision");
    g.bench_function("warden_decide", |b| b.iter(|| decide(black_box(&bundle), black_box(&input(&agent, &known)))));
    g.bench_function("warden_decide_first_on_target", |b| {
        b.iter_custom(|iters| {
            let mut total = std::time::Duration::ZERO;
            for _ in 0..iters {
                bundle.clear_memo();
                let start = std::time::Instant::now();
                black_box(decide(black_box(&bundle), black_box(&input(&agent, &known))));
                total += start.elapsed();
            }
            total
        })
    });
    g.bench_function("warden_decide_unknown_target", |b| {
        b.iter(|| decide(black_box(&bundle), black_box(&input(&agent, &unknown))))
    });
    g.bench_function("raw_cedar_full_set", |b| {
        b.iter(|| authorizer.is_authorized(black_box(&raw.request), black_box(&raw.all), black_box(&raw.entities)))
    });
    g.bench_function("raw_cedar_same_slice", |b| {
        b.iter(|| authorizer.is_authorized(black_box(&raw.request), black_box(&raw.slice), black_box(&raw.entities)))
    });
    g.bench_function("raw_cedar_context_part", |b| {
        b.iter(|| authorizer.is_authorized(black_box(&raw.request), black_box(&raw.dynamic), black_box(&raw.entities)))
    });
    g.finish();

    data_boundaries(c);

    let mut g = c.benchmark_group("bundle");
    g.sample_size(10);
    g.bench_function("load_50_agents", |b| b.iter(|| Bundle::load(black_box(&files)).unwrap()));
    g.finish();
}

/// The example bundle's files, as a front end would hand them over.
fn example_files() -> Vec<SourceFile> {
    fn walk(dir: &std::path::Path, prefix: &str, out: &mut Vec<SourceFile>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            let rel = format!("{prefix}{}", entry.file_name().to_string_lossy());
            if entry.file_type().unwrap().is_dir() {
                walk(&entry.path(), &format!("{rel}/"), out);
            } else if warden_core::bundle::is_policy_file(&rel) {
                out.push(SourceFile::new(rel, std::fs::read_to_string(entry.path()).unwrap()));
            }
        }
    }
    let mut out = Vec::new();
    walk(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/policy"), "", &mut out);
    out
}

/// DESIGN §14: a decision in a task that has done 1,000 actions (spread over every class of
/// the catalog) and carries 10 marks of taint, against the same request in a task that has
/// done one action and holds no taint (it executes), and one that holds one mark (it goes to a
/// human, as the heavy one does) — on the example bundle, where the request (phish-triage's
/// `account.disable`) is decided by a sequence rule over `context.task.history` and
/// `[data] after_untrusted`.
fn data_boundaries(c: &mut Criterion) {
    use warden_core::request::{TaintLabel, TaskInfo};
    let bundle = Bundle::load(&example_files()).unwrap();
    let agent = "spiffe://acme.example/soc/phish-triage";
    let req = ActionRequest {
        action: "account.disable".into(),
        target: "account:cfo".parse().unwrap(),
        evidence: vec![Evidence { kind: "email".into(), reference: "m-77".into(), summary: None }],
        ..request("host:web-42")
    };
    let task = |history: std::collections::BTreeMap<String, u32>, taint: Vec<warden_core::request::Taint>| TaskInfo {
        id: "INC-1".into(),
        state: Default::default(),
        severity: "high".into(),
        source: "email-gateway".into(),
        verified: true,
        agents: Vec::new(),
        taint,
        history,
    };
    let light = task([("alert.enrich".to_string(), 1)].into(), Vec::new());
    let classes: Vec<String> = bundle.catalog().iter().map(|a| a.id.clone()).collect();
    let mut history = std::collections::BTreeMap::new();
    for i in 0..1000 {
        *history.entry(classes[i % classes.len()].clone()).or_insert(0) += 1;
    }
    let marks = (0..10)
        .map(|i| warden_core::request::Taint {
            label: if i % 2 == 0 { TaintLabel::Untrusted } else { TaintLabel::Confidential },
            source: format!("the result of `email.fetch` on `mailbox:user-{i}@acme.example` (message_id=`m-{i}`)"),
            request: Some(format!("act_{i:028}")),
            by: "warden".into(),
        })
        .collect();
    let heavy = task(history, marks);
    assert_eq!(heavy.history.values().sum::<u32>(), 1000);
    let decide_in = |t: &TaskInfo| decide(&bundle, &DecisionInput { task: Some(t), ..input(agent, &req) });
    assert_eq!(decide_in(&light).outcome, Outcome::Execute);
    let tainted = decide_in(&heavy);
    assert_eq!(tainted.outcome, Outcome::RequireApproval, "{tainted:?}");

    // The same outcome (require_approval) with one mark and a one-action history: what the
    // size of the task's record costs, apart from what the taint decides.
    let one_mark = TaskInfo { taint: heavy.taint[..1].to_vec(), ..light.clone() };
    assert_eq!(decide_in(&one_mark).outcome, Outcome::RequireApproval);

    // The same size, labels that do not lower this action (confidential: it sends nothing
    // outside): it executes, as the clean one does — what the size alone costs.
    let same_size = TaskInfo {
        taint: heavy
            .taint
            .iter()
            .map(|t| warden_core::request::Taint { label: TaintLabel::Confidential, ..t.clone() })
            .collect(),
        ..heavy.clone()
    };
    assert_eq!(decide_in(&same_size).outcome, Outcome::Execute);

    let mut g = c.benchmark_group("data_boundaries");
    g.bench_function("decide_history_1_no_taint", |b| b.iter(|| decide_in(black_box(&light))));
    g.bench_function("decide_history_1_taint_1", |b| b.iter(|| decide_in(black_box(&one_mark))));
    g.bench_function("decide_history_1000_taint_10", |b| b.iter(|| decide_in(black_box(&heavy))));
    g.bench_function("decide_history_1000_confidential_10", |b| b.iter(|| decide_in(black_box(&same_size))));
    g.finish();
}

criterion_group!(decision, benches);
criterion_main!(decision);
