//! Reading a policy bundle directory (the server crate owns the reader; hot reload uses it).

use std::path::Path;

use anyhow::Result;
use warden_core::SourceFile;

/// Every file of the bundle at `root`, sorted by path.
pub fn read(root: &Path) -> Result<Vec<SourceFile>> {
    Ok(warden_server::policy_dir::read(root)?)
}
