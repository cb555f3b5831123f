//! `warden demo`: by default the whole job end to end (`incident`: the lab estate, a server,
//! scripted agents and humans over HTTP); with `--decisions` the example bundle's decisions,
//! scenario by scenario, without a server (`decisions.toml`).

mod incident;
mod mcp;
mod poison;
mod stage;

use clap::Args;
use warden_core::policy_test::parse_cases;
use warden_core::{Bundle, SourceFile};

use crate::{Failure, render};

/// The phishing incident end to end: the lab estate and a Warden server on free loopback
/// ports, scripted agents and humans over HTTP, every step narrated and checked (exit 0 only
/// if each behaved as narrated). `--decisions` walks the bundle's decisions instead.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// The data directory the demo creates (a directory a previous demo made is started
    /// afresh; any other existing one is refused).
    #[arg(long, default_value = "./warden-demo")]
    pub data: std::path::PathBuf,
    /// Leave the server and the lab running afterwards, to explore over HTTP.
    #[arg(long)]
    pub keep_running: bool,
    /// Only walk the example decisions, scenario by scenario (no server, nothing stored).
    #[arg(long)]
    pub decisions: bool,
    /// With --decisions: use this bundle directory instead of the built-in example.
    #[arg(long, requires = "decisions")]
    pub policy: Option<std::path::PathBuf>,
}

const SCRIPT: &str = include_str!("decisions.toml");

pub fn run(a: DemoArgs) -> Result<(), Failure> {
    if !a.decisions {
        return incident::run(a.data, a.keep_running);
    }
    let bundle = match &a.policy {
        Some(dir) => crate::cmd::policy::load(dir)?.1,
        None => {
            let files: Vec<SourceFile> = crate::bundle_dir::example();
            Bundle::load(&files).map_err(|e| anyhow::anyhow!("the built-in example bundle is invalid: {e}"))?
        }
    };
    let script = SourceFile::new("decisions.toml", SCRIPT);
    let cases = parse_cases(&script).map_err(|p| anyhow::anyhow!("the demo script is invalid: {}", p[0]))?;
    outln!("Warden demo — policy bundle {}", bundle.version());
    outln!(
        "{} agents, {} action classes, {} assets, {} Cedar policies\n",
        bundle.agents().count(),
        bundle.catalog().len(),
        bundle.inventory().len(),
        bundle.policy_count()
    );
    let mut surprises = 0;
    for (i, case) in cases.iter().enumerate() {
        let s = &case.scenario;
        let agent = bundle.agent(&s.agent).map_or(s.agent.as_str(), |g| g.name.as_str());
        outln!("{}. {}", i + 1, s.name);
        outln!("   {agent} asks for {} on {} (confidence {})", s.action, s.target, s.confidence);
        let d = s.decide(&bundle);
        for line in render::decision(&d).lines() {
            outln!("   {line}");
        }
        let mismatches = s.expect.as_ref().map(|e| e.mismatches(&d)).unwrap_or_default();
        for m in &mismatches {
            outln!("   !! {m}");
        }
        surprises += usize::from(!mismatches.is_empty());
        outln!("");
    }
    if surprises > 0 {
        return Err(Failure::Other(anyhow::anyhow!("{surprises} scenario(s) did not decide as scripted")));
    }
    outln!("{} scenarios decided as scripted.", cases.len());
    Ok(())
}

#[cfg(test)]
mod tests {

    /// The built-in copy must list every policy file of `examples/policy`, and its connectors.
    #[test]
    fn the_built_in_bundle_lists_every_example_policy_file() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/policy");
        let files = crate::bundle_dir::read(&root).unwrap();
        let mut on_disk: Vec<&str> = files
            .iter()
            .map(|f| f.path.as_str())
            .filter(|p| warden_core::bundle::is_policy_file(p) || *p == "connectors.toml")
            .collect();
        let mut built_in: Vec<&str> = crate::bundle_dir::EXAMPLE_BUNDLE.iter().map(|(p, _)| *p).collect();
        on_disk.sort_unstable();
        built_in.sort_unstable();
        assert_eq!(on_disk, built_in);
    }
}
