//! Policy test cases (`tests/*.toml`) and request fixtures for `warden policy eval`.
//!
//! A case is a request fixture plus the facts around it and what the decision must be:
//!
//! ```toml
//! [[case]]
//! name = "phish-triage quarantines a user's mailbox on its own"
//! agent = "spiffe://acme.example/soc/phish-triage"
//! action = "email.quarantine"
//! target = "mailbox:jdoe@acme.example"
//! confidence = 0.95
//! params = { message_id = "<a1@mail>" }
//! expect = { outcome = "execute", effective_level = 3, caps = [] }
//! ```

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::macros::datetime;
use toml::Spanned;

use crate::bundle::Bundle;
use crate::decision::{Band, CapCode, Decision, Outcome, decide};
use crate::inventory::TargetRef;
use crate::request::{ActionRequest, AgentStatus, BudgetUsage, DecisionInput, Evidence, Halt, Input, TaskInfo};
use crate::source::{Problem, SourceFile, toml_problem};

/// When a fixture does not say: a Wednesday, 03:00 UTC (outside business hours).
pub const DEFAULT_NOW: OffsetDateTime = datetime!(2026-01-07 03:00:00 UTC);

/// A request and its circumstances: the input of one decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    #[serde(default)]
    pub name: String,
    pub agent: String,
    pub action: String,
    pub target: TargetRef,
    pub confidence: f64,
    #[serde(default)]
    pub params: serde_json::Map<String, serde_json::Value>,
    #[serde(default = "default_rationale")]
    pub rationale: String,
    #[serde(default)]
    pub evidence: Vec<Evidence>,
    /// Content the request declares it took in (`inputs`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inputs: Vec<Input>,
    /// The task; absent means an unknown trigger (severity and source `unknown`); its
    /// `taint` and `history` are what earlier requests left.
    #[serde(default)]
    pub task: Option<TaskInfo>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub now: Option<OffsetDateTime>,
    #[serde(default)]
    pub halts: Vec<Halt>,
    #[serde(default)]
    pub budget: BudgetUsage,
    #[serde(default)]
    pub agent_status: AgentStatus,
    #[serde(default)]
    pub shadow: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect: Option<Expectation>,
}

fn default_rationale() -> String {
    "policy test fixture".into()
}

/// What a case requires of its decision; absent fields are not checked. `caps` is compared
/// as a set of codes and must list every cap.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expectation {
    pub outcome: Option<Outcome>,
    pub granted_level: Option<u8>,
    pub effective_level: Option<u8>,
    pub band: Option<Band>,
    pub caps: Option<Vec<CapCode>>,
    pub review: Option<bool>,
    pub roles: Option<Vec<String>>,
    pub quorum: Option<u32>,
    pub policies: Option<Vec<String>>,
    /// In shadow mode, the outcome that would have applied.
    pub shadow_outcome: Option<Outcome>,
    /// The action digest (`sha256:…`) of the request (DESIGN §6).
    pub digest: Option<String>,
}

impl Scenario {
    pub fn request(&self) -> ActionRequest {
        ActionRequest {
            task: self.task.as_ref().map_or_else(|| "unknown".to_string(), |t| t.id.clone()),
            action: self.action.clone(),
            target: self.target.clone(),
            params: self.params.clone(),
            confidence: self.confidence,
            rationale: self.rationale.clone(),
            evidence: self.evidence.clone(),
            idempotency_key: None,
            inputs: self.inputs.clone(),
        }
    }

    /// What makes the fixture itself invalid input, whatever the bundle: a confidence that is
    /// not a finite number in [0, 1], a halt that names nothing.
    pub fn validate(&self) -> Result<(), String> {
        self.request().validate()?;
        for h in &self.halts {
            h.validate().map_err(|why| format!("halt: {why}"))?;
        }
        Ok(())
    }

    /// The request's action digest (DESIGN §6), as the gateway would compute it under `bundle`.
    pub fn digest(&self, bundle: &Bundle) -> Result<String, String> {
        let r = self.request();
        bundle
            .action_digest(&self.agent, &r.task, &r.action, &r.target.to_string(), &r.params)
            .map_err(|e| e.to_string())
    }

    /// Decides this scenario against `bundle`.
    pub fn decide(&self, bundle: &Bundle) -> Decision {
        let request = self.request();
        let input = DecisionInput {
            agent: &self.agent,
            agent_status: self.agent_status,
            request: &request,
            task: self.task.as_ref(),
            budget: self.budget,
            halts: &self.halts,
            now: self.now.unwrap_or(DEFAULT_NOW),
            shadow: self.shadow,
            via: None,
        };
        decide(bundle, &input)
    }
}

impl Expectation {
    /// Every way `d` differs from this expectation, as readable sentences.
    pub fn mismatches(&self, d: &Decision) -> Vec<String> {
        let mut out = Vec::new();
        let mut check = |what: &str, want: String, got: String| {
            if want != got {
                out.push(format!("{what}: expected {want}, got {got}"));
            }
        };
        if let Some(o) = self.outcome {
            check("outcome", o.to_string(), d.outcome.to_string());
        }
        if let Some(l) = self.granted_level {
            check("granted_level", l.to_string(), d.granted_level.to_string());
        }
        if let Some(l) = self.effective_level {
            check("effective_level", l.to_string(), d.effective_level.to_string());
        }
        if let Some(b) = self.band {
            check("band", b.as_str().into(), d.band.as_str().into());
        }
        if let Some(caps) = &self.caps {
            let mut want: Vec<&str> = caps.iter().map(|c| c.as_str()).collect();
            let mut got: Vec<&str> = d.caps.iter().map(|c| c.code.as_str()).collect();
            want.sort_unstable();
            want.dedup();
            got.sort_unstable();
            got.dedup();
            if want != got {
                // Each cap with its reason: why the ladder stopped where it did.
                let reasons: Vec<String> =
                    d.caps.iter().map(|c| format!("{}: {}", c.code.as_str(), c.reason)).collect();
                let why = if reasons.is_empty() { String::new() } else { format!(" ({})", reasons.join("; ")) };
                check("caps", format!("[{}]", want.join(", ")), format!("[{}]{why}", got.join(", ")));
            }
        }
        if let Some(r) = self.review {
            check("review", r.to_string(), d.review.to_string());
        }
        let approval = d.approval.as_ref();
        if let Some(roles) = &self.roles {
            let got = approval.map_or_else(|| "no approval".into(), |a| format!("[{}]", a.roles.join(", ")));
            check("roles", format!("[{}]", roles.join(", ")), got);
        }
        if let Some(q) = self.quorum {
            check("quorum", q.to_string(), approval.map_or_else(|| "no approval".into(), |a| a.quorum.to_string()));
        }
        if let Some(o) = self.shadow_outcome {
            check("shadow_outcome", o.to_string(), d.shadow_outcome.map_or_else(|| "none".into(), |s| s.to_string()));
        }
        if let Some(ids) = &self.policies {
            let got: Vec<&str> = d.policies.iter().map(|p| p.id.as_str()).collect();
            check("policies", format!("[{}]", ids.join(", ")), format!("[{}]", got.join(", ")));
        }
        out
    }
}

/// One case of a test file, with its location.
#[derive(Debug, Clone, PartialEq)]
pub struct Case {
    pub file: String,
    pub line: usize,
    pub scenario: Scenario,
}

/// The result of running one case.
#[derive(Debug, Clone, PartialEq)]
pub struct CaseResult {
    pub case: Case,
    pub decision: Decision,
    pub failures: Vec<String>,
}

impl CaseResult {
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCases {
    #[serde(default, rename = "case")]
    cases: Vec<Spanned<Scenario>>,
}

/// Parses a test file: `[[case]]` entries, each with a name and an `expect`.
pub fn parse_cases(file: &SourceFile) -> Result<Vec<Case>, Vec<Problem>> {
    let raw: RawCases = toml::from_str(&file.text).map_err(|e| vec![toml_problem(file, &e)])?;
    let mut problems = Vec::new();
    let mut cases = Vec::new();
    for c in raw.cases {
        let line = file.line_at(c.span().start);
        let scenario = c.into_inner();
        if scenario.name.trim().is_empty() {
            problems.push(Problem { file: file.path.clone(), line: Some(line), message: "case needs a `name`".into() });
        }
        if scenario.expect.as_ref().is_none_or(|e| *e == Expectation::default()) {
            let message = format!("case `{}` expects nothing; add `expect = {{ outcome = … }}`", scenario.name);
            problems.push(Problem { file: file.path.clone(), line: Some(line), message });
        }
        if let Err(why) = scenario.validate() {
            let message = format!("case `{}`: {why}", scenario.name);
            problems.push(Problem { file: file.path.clone(), line: Some(line), message });
        }
        cases.push(Case { file: file.path.clone(), line, scenario });
    }
    if problems.is_empty() { Ok(cases) } else { Err(problems) }
}

/// Runs one case.
pub fn run_case(bundle: &Bundle, case: &Case) -> CaseResult {
    let decision = case.scenario.decide(bundle);
    let mut failures = case.scenario.expect.as_ref().map(|e| e.mismatches(&decision)).unwrap_or_default();
    if let Some(want) = case.scenario.expect.as_ref().and_then(|e| e.digest.as_ref()) {
        match case.scenario.digest(bundle) {
            Ok(got) if &got == want => {}
            Ok(got) => failures.push(format!("digest: expected {want}, got {got}")),
            Err(e) => failures.push(format!("digest: cannot be computed: {e}")),
        }
    }
    CaseResult { case: case.clone(), decision, failures }
}
