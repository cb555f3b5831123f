//! Reading a policy bundle directory into memory for the (I/O-free) core.

use std::fs;
use std::path::Path;

use anyhow::{Context, Result, bail};
use warden_core::SourceFile;

/// Largest file a bundle may hold; anything bigger is a mistake, not policy.
const MAX_FILE: u64 = 16 * 1024 * 1024;

/// Reads every regular file of `root` and its first-level subdirectories (hidden entries
/// skipped), with paths relative to `root` using `/`.
pub fn read(root: &Path) -> Result<Vec<SourceFile>> {
    if !root.is_dir() {
        bail!("policy bundle `{}` is not a directory", root.display());
    }
    let mut files = Vec::new();
    walk(root, "", 0, &mut files)?;
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(files)
}

fn walk(dir: &Path, prefix: &str, depth: usize, out: &mut Vec<SourceFile>) -> Result<()> {
    let entries = fs::read_dir(dir).with_context(|| format!("cannot read `{}`", dir.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot read `{}`", dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let path = entry.path();
        let rel = format!("{prefix}{name}");
        let meta = fs::metadata(&path).with_context(|| format!("cannot read `{}`", path.display()))?;
        if meta.is_dir() {
            if depth == 0 {
                walk(&path, &format!("{rel}/"), depth + 1, out)?;
            }
        } else if meta.is_file() {
            if meta.len() > MAX_FILE {
                bail!("`{}` is larger than {} MiB", path.display(), MAX_FILE >> 20);
            }
            let text =
                fs::read_to_string(&path).with_context(|| format!("cannot read `{}` as UTF-8 text", path.display()))?;
            out.push(SourceFile::new(rel, text));
        }
    }
    Ok(())
}
