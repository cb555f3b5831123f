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
    /// Replay the logged requests of a window through a proposed bundle, on the facts each was
    /// decided on (recorded in the log), and print what would change.
    ///
    /// Outcomes before → after, per agent × action, approval load per role, and every request
    /// that would newly execute on a tier0 or privileged target. Nothing is loaded or recorded.
    /// Exit 2 when a `--fail-on` guard fails.
    Simulate(SimulateArgs),
}

#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// The proposed bundle directory.
    pub dir: PathBuf,
    /// How far back (`7d`, `12h`); `all` for the whole log.
    #[arg(long, default_value = "7d")]
    pub since: String,
    /// Only this agent's requests (SPIFFE ID).
    #[arg(long)]
    pub agent: Option<String>,
    /// Only this action class.
    #[arg(long)]
    pub action: Option<String>,
    /// Exit 2 when the proposal would: `new-tier0-execute`, `new-privileged-execute`,
    /// `new-execute` (newly execute any request), `any-change`. Repeatable.
    #[arg(long, value_name = "GUARD")]
    pub fail_on: Vec<String>,
    /// The log to replay: `--data` (and `--store`), or a running server's (`--server`, a
    /// human's token).
    #[command(flatten)]
    pub target: crate::cmd::agent::Target,
    /// `html`: one self-contained page (inline SVG, no script, nothing fetched).
    #[arg(long, value_enum, default_value_t)]
    pub output: crate::cmd::report::ReportOutput,
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
        PolicyCommand::Simulate(a) => simulate(&a),
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

fn simulate(a: &SimulateArgs) -> Result<(), Failure> {
    use warden_core::simulate::Guard;
    let guards = a
        .fail_on
        .iter()
        .map(|name| {
            Guard::parse(name).ok_or_else(|| {
                let known: Vec<&str> = Guard::ALL.iter().map(|(n, _)| *n).collect();
                Failure::Invalid(format!("error: --fail-on `{name}`: not a guard (one of {})", known.join(", ")))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let window = crate::cmd::report::window(&a.since)?;
    let (_, proposed) = load(&a.dir)?;
    let filter = warden_core::report::Filter { agent: a.agent.clone(), action: a.action.clone(), ..Default::default() };
    let sim = crate::cmd::report::over_log(&a.target, |entries| {
        warden_core::simulate::simulate(entries, window, &filter, &proposed)
    })?;
    let broken: Vec<(Guard, u64)> = guards.iter().map(|g| (*g, g.broken(&sim))).filter(|(_, n)| *n > 0).collect();
    match a.output {
        crate::cmd::report::ReportOutput::Html => {
            let page = warden_server::reports::simulate_html(&sim, &a.since, &guards)
                .map_err(|e| anyhow::anyhow!("the report did not render: {e}"))?;
            outln!("{page}");
        }
        crate::cmd::report::ReportOutput::Text => outln!("{}", simulation_text(&sim, &a.since, &guards)),
        crate::cmd::report::ReportOutput::Json => {
            let mut v = serde_json::to_value(&sim).map_err(anyhow::Error::from)?;
            v["guards"] = guards
                .iter()
                .map(|g| json!({"guard": g.name(), "broken_by": g.broken(&sim)}))
                .collect::<Vec<_>>()
                .into();
            outln!("{}", serde_json::to_string_pretty(&v).map_err(anyhow::Error::from)?);
        }
    }
    if broken.is_empty() { Ok(()) } else { Err(Failure::Denied) }
}

fn change_line(c: &warden_core::simulate::Changed) -> String {
    let mut what = Vec::new();
    if c.tier0 {
        what.push("tier0");
    }
    if c.privileged {
        what.push("privileged");
    }
    let what = if what.is_empty() { String::new() } else { format!(" ({})", what.join(", ")) };
    let caps: Vec<&str> = c.caps.iter().map(|c| c.as_str()).collect();
    let caps = if caps.is_empty() { String::new() } else { format!(" · caps {}", caps.join(", ")) };
    let inexact = c.inexact.as_deref().map_or(String::new(), |w| format!(" · inexact: {w}"));
    format!(
        "  #{} {} {} {} {} {}{what}: {} → {}{caps}{inexact}",
        c.seq, c.time, c.request, c.agent, c.action, c.target, c.before, c.after
    )
}

/// A simulation as text: totals, rows, roles, the sensitive list, the changes, the guards.
pub fn simulation_text(
    s: &warden_core::simulate::Simulation,
    since: &str,
    guards: &[warden_core::simulate::Guard],
) -> String {
    let mut out = vec![format!(
        "policy simulate — {} over the log since {since}: {} decisions replayed ({} made under this bundle), {} change outcome",
        s.bundle_version, s.replayed, s.same_bundle, s.changed
    )];
    if s.unrecorded > 0 {
        out.push(format!(
            "  not replayed: {} decisions logged without their facts (before Warden recorded them)",
            s.unrecorded
        ));
    }
    if s.same_bundle_differing > 0 {
        out.push(format!(
            "  warning: {} decisions made under this very bundle are decided otherwise now: the log does not hold what they were decided on (run `warden audit verify`)",
            s.same_bundle_differing
        ));
    }
    out.push(format!("  outcomes   {}", warden_core::simulate::shift_text(&s.before, &s.after)));
    if !s.rows.is_empty() {
        out.push(String::new());
        out.push("per agent × action".into());
        for r in &s.rows {
            let changed = if r.changed > 0 { format!(" · {} change", r.changed) } else { String::new() };
            out.push(format!(
                "  {} × {}: {}{changed}",
                r.agent,
                r.action,
                warden_core::simulate::shift_text(&r.before, &r.after)
            ));
        }
    }
    if !s.roles.is_empty() {
        out.push(String::new());
        out.push("approval load per role (decisions asking it)".into());
        for r in &s.roles {
            out.push(format!("  {}  {} → {}", r.role, r.before, r.after));
        }
    }
    out.push(String::new());
    if s.newly_sensitive.is_empty() {
        out.push("newly executing on tier0 or privileged targets: none".into());
    } else {
        out.push(format!("newly executing on tier0 or privileged targets: {}", s.newly_sensitive.len()));
        out.extend(s.newly_sensitive.iter().map(change_line));
    }
    if !s.changes.is_empty() {
        out.push(String::new());
        let more = if (s.changes.len() as u64) < s.changed {
            format!(" (the first {})", s.changes.len())
        } else {
            String::new()
        };
        out.push(format!("changes{more}"));
        out.extend(s.changes.iter().map(change_line));
    }
    if s.inexact > 0 {
        out.push(String::new());
        out.push(format!("inexact: {} replays depend on what the log did not count", s.inexact));
        for i in s.inexact_listed.iter().take(10) {
            out.push(format!("  {}: {}", i.request, i.why));
        }
    }
    if !guards.is_empty() {
        out.push(String::new());
        for g in guards {
            let n = g.broken(s);
            out.push(if n == 0 {
                format!("guard {}: passed", g.name())
            } else {
                format!("guard {}: FAILED ({n} requests)", g.name())
            });
        }
    }
    out.join("\n")
}
