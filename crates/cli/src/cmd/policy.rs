//! `warden policy validate|test|eval|show`.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::json;
use warden_core::policy_test::{self, Scenario};
use warden_core::{Bundle, Outcome, Problem, SourceFile};

use crate::{Failure, bundle_dir, render};

pub use crate::render::Output;

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Check a bundle: catalog, inventory, guardrails, Cedar rules against the generated schema.
    ///
    /// Exit 0 when valid; 3 with each problem as `file:line: message`.
    Validate(BundleArgs),
    /// Run the bundle's test cases (`tests/*.toml`).
    ///
    /// One line per case and a closing `N passed, N failed`; exit 2 if any case fails,
    /// 3 if the bundle or a test file is invalid.
    Test(TestArgs),
    /// Decide one request fixture (JSON or TOML) against a bundle.
    ///
    /// The fixture holds `agent`, `action`, `target`, `confidence`, `params`, `rationale`,
    /// `evidence` and optionally `task`, `now`, `halts`, `budget`, `agent_status`, `shadow`.
    /// Exit 0, or 2 when the outcome is `deny`.
    Eval(EvalArgs),
    /// Print the generated Cedar schema or the compiled policies of a bundle.
    Show(ShowArgs),
}

#[derive(Debug, Args)]
pub struct BundleArgs {
    /// The bundle directory.
    pub dir: PathBuf,
    #[arg(long, value_enum, default_value_t)]
    pub output: Output,
}

#[derive(Debug, Args)]
pub struct TestArgs {
    /// The bundle directory.
    pub dir: PathBuf,
    #[arg(long, value_enum, default_value_t)]
    pub output: Output,
    /// Only run cases whose name contains this text.
    #[arg(long)]
    pub filter: Option<String>,
}

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// The bundle directory.
    pub dir: PathBuf,
    /// The request fixture: `.json` or `.toml`; `-` reads JSON from standard input.
    #[arg(long)]
    pub request: PathBuf,
    #[arg(long, value_enum, default_value_t)]
    pub output: Output,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    /// The bundle directory.
    pub dir: PathBuf,
    /// Print the generated Cedar schema instead of the policies.
    #[arg(long)]
    pub schema: bool,
}

pub fn run(cmd: PolicyCommand) -> Result<(), Failure> {
    match cmd {
        PolicyCommand::Validate(a) => validate(&a),
        PolicyCommand::Test(a) => test(&a),
        PolicyCommand::Eval(a) => eval(&a),
        PolicyCommand::Show(a) => show(&a),
    }
}

fn problems_text(problems: &[Problem]) -> String {
    problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n")
}

/// Reads and loads a bundle; invalid bundles are exit 3 with every problem listed.
pub fn load(dir: &Path) -> Result<(Vec<SourceFile>, Bundle), Failure> {
    let files = bundle_dir::read(dir)?;
    match Bundle::load(&files) {
        Ok(b) => Ok((files, b)),
        Err(e) => Err(Failure::Invalid(problems_text(&e.problems))),
    }
}

fn validate(a: &BundleArgs) -> Result<(), Failure> {
    let files = bundle_dir::read(&a.dir)?;
    let result = Bundle::load(&files);
    match (a.output, result) {
        (Output::Text, Ok(b)) => {
            let mapped = match b.mcp().tools().len() {
                0 => String::new(),
                n => format!(", {n} upstream MCP tools mapped"),
            };
            outln!(
                "ok: {} — {} actions, {} assets, {} agents, {} Cedar policies{mapped}",
                b.version(),
                b.catalog().len(),
                b.inventory().len(),
                b.agents().count(),
                b.policy_count()
            );
            for w in b.warnings() {
                outln!("warning: {w}");
            }
            Ok(())
        }
        (Output::Text, Err(e)) => Err(Failure::Invalid(problems_text(&e.problems))),
        (Output::Json, Ok(b)) => {
            let out = json!({"valid": true, "bundle_version": b.version(), "actions": b.catalog().len(),
                "assets": b.inventory().len(), "agents": b.agents().count(), "policies": b.policy_count(),
                "mcp_tools": b.mcp().tools().len(), "warnings": b.warnings()});
            outln!("{}", serde_json::to_string_pretty(&out).map_err(anyhow::Error::from)?);
            Ok(())
        }
        (Output::Json, Err(e)) => {
            let out = json!({"valid": false, "problems": e.problems});
            outln!("{}", serde_json::to_string_pretty(&out).map_err(anyhow::Error::from)?);
            Err(Failure::Invalid(String::new()))
        }
    }
}

fn test(a: &TestArgs) -> Result<(), Failure> {
    let (files, bundle) = load(&a.dir)?;
    let mut cases = Vec::new();
    let mut problems = Vec::new();
    for f in files.iter().filter(|f| f.path.starts_with("tests/") && f.path.ends_with(".toml")) {
        match policy_test::parse_cases(f) {
            Ok(c) => cases.extend(c),
            Err(p) => problems.extend(p),
        }
    }
    if !problems.is_empty() {
        return Err(Failure::Invalid(problems_text(&problems)));
    }
    if let Some(filter) = &a.filter {
        cases.retain(|c| c.scenario.name.contains(filter.as_str()));
    }
    let results: Vec<_> = cases.iter().map(|c| policy_test::run_case(&bundle, c)).collect();
    let failed = results.iter().filter(|r| !r.passed()).count();
    let passed = results.len() - failed;
    match a.output {
        Output::Text => {
            for r in &results {
                let status = if r.passed() { "ok  " } else { "FAIL" };
                outln!("{status} {}:{} {}", r.case.file, r.case.line, r.case.scenario.name);
                for f in &r.failures {
                    outln!("       {f}");
                }
            }
            outln!("{passed} passed, {failed} failed");
        }
        Output::Json => {
            let cases: Vec<_> = results
                .iter()
                .map(|r| {
                    json!({"file": r.case.file, "line": r.case.line, "name": r.case.scenario.name,
                        "passed": r.passed(), "failures": r.failures, "decision": r.decision})
                })
                .collect();
            let out = json!({"bundle_version": bundle.version(), "passed": passed, "failed": failed, "cases": cases});
            outln!("{}", serde_json::to_string_pretty(&out).map_err(anyhow::Error::from)?);
        }
    }
    if failed > 0 { Err(Failure::Denied) } else { Ok(()) }
}

fn read_scenario(path: &Path) -> Result<Scenario, Failure> {
    let (text, name) = if path == Path::new("-") {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s).context("cannot read standard input")?;
        (s, "<stdin>".to_string())
    } else {
        let s = fs::read_to_string(path).with_context(|| format!("cannot read `{}`", path.display()))?;
        (s, path.display().to_string())
    };
    let is_toml = path.extension().is_some_and(|e| e == "toml");
    if is_toml {
        toml::from_str(&text).map_err(|e| {
            let file = SourceFile::new(name.clone(), text.clone());
            let line = e.span().map(|s| file.line_at(s.start)).map_or(String::new(), |l| format!(":{l}"));
            Failure::Invalid(format!("{name}{line}: {}", e.message().trim()))
        })
    } else {
        serde_json::from_str(&text).map_err(|e| Failure::Invalid(format!("{name}:{}: {e}", e.line())))
    }
}

fn eval(a: &EvalArgs) -> Result<(), Failure> {
    let scenario = read_scenario(&a.request)?;
    scenario.validate().map_err(|why| Failure::Invalid(format!("{}: {why}", a.request.display())))?;
    let (_, bundle) = load(&a.dir)?;
    let d = scenario.decide(&bundle);
    match a.output {
        Output::Text => out!("{}", render::decision(&d)),
        Output::Json => outln!("{}", serde_json::to_string_pretty(&d).map_err(anyhow::Error::from)?),
    }
    if d.outcome == Outcome::Deny { Err(Failure::Denied) } else { Ok(()) }
}

fn show(a: &ShowArgs) -> Result<(), Failure> {
    let (_, bundle) = load(&a.dir)?;
    if a.schema {
        out!("{}", bundle.cedar_schema());
    } else {
        out!("{}", bundle.cedar_policies());
    }
    Ok(())
}
