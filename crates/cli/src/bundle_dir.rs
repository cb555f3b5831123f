//! Reading a policy bundle directory (the server crate owns the reader; hot reload uses it).

use std::path::Path;

use anyhow::Result;
use warden_core::SourceFile;

/// Every file of the bundle at `root`, sorted by path.
pub fn read(root: &Path) -> Result<Vec<SourceFile>> {
    Ok(warden_server::policy_dir::read(root)?)
}

/// The example bundle (`examples/policy`), built in so the demo runs anywhere.
pub const EXAMPLE_BUNDLE: &[(&str, &str)] = &[
    ("actions.toml", include_str!("../../../examples/policy/actions.toml")),
    ("assets.toml", include_str!("../../../examples/policy/assets.toml")),
    ("assets.csv", include_str!("../../../examples/policy/assets.csv")),
    ("agents/phish-triage.toml", include_str!("../../../examples/policy/agents/phish-triage.toml")),
    ("agents/edr-responder.toml", include_str!("../../../examples/policy/agents/edr-responder.toml")),
    ("agents/identity-responder.toml", include_str!("../../../examples/policy/agents/identity-responder.toml")),
    ("agents/enrichment-bot.toml", include_str!("../../../examples/policy/agents/enrichment-bot.toml")),
    ("agents/network-guard.toml", include_str!("../../../examples/policy/agents/network-guard.toml")),
    ("cedar/containment.cedar", include_str!("../../../examples/policy/cedar/containment.cedar")),
    ("cedar/network.cedar", include_str!("../../../examples/policy/cedar/network.cedar")),
    ("mcp.toml", include_str!("../../../examples/policy/mcp.toml")),
    ("authority.toml", include_str!("../../../examples/policy/authority.toml")),
    // Not a policy file (not in the version), but checked with the bundle: every call bound.
    ("connectors.toml", include_str!("../../../examples/policy/connectors.toml")),
];

/// The built-in example bundle, as source files.
pub fn example() -> Vec<warden_core::SourceFile> {
    EXAMPLE_BUNDLE.iter().map(|(p, t)| warden_core::SourceFile::new(*p, *t)).collect()
}
