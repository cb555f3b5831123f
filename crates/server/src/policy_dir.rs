//! Reading a policy bundle directory into memory for the (I/O-free) core, and reloading it:
//! a new bundle replaces the one in force only when it is valid, and each load is audited
//! with its version.

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::json;
use warden_core::audit::entry::{Actor, ActorKind, Event, EventType};
use warden_core::{Bundle, SourceFile};
use warden_store::Batch;

use crate::error::{ApiError, Code};
use crate::state::AppState;

/// Largest file a bundle may hold; anything bigger is a mistake, not policy.
const MAX_FILE: u64 = 16 * 1024 * 1024;

/// Why a bundle directory could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("policy bundle `{0}` is not a directory")]
    NotADirectory(PathBuf),
    #[error("cannot read `{path}`: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("`{0}` is larger than 16 MiB")]
    TooLarge(PathBuf),
}

/// Reads every regular file of `root` and its first-level subdirectories (hidden entries
/// skipped), with paths relative to `root` using `/`, sorted.
pub fn read(root: &Path) -> Result<Vec<SourceFile>, ReadError> {
    if !root.is_dir() {
        return Err(ReadError::NotADirectory(root.to_path_buf()));
    }
    let mut files = Vec::new();
    walk(root, "", 0, &mut files)?;
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(files)
}

fn walk(dir: &Path, prefix: &str, depth: usize, out: &mut Vec<SourceFile>) -> Result<(), ReadError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ReadError::Io { path, source }
    };
    for entry in fs::read_dir(dir).map_err(io(dir))? {
        let entry = entry.map_err(io(dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let path = entry.path();
        let rel = format!("{prefix}{name}");
        let meta = fs::metadata(&path).map_err(io(&path))?;
        if meta.is_dir() {
            if depth == 0 {
                walk(&path, &format!("{rel}/"), depth + 1, out)?;
            }
        } else if meta.is_file() {
            if meta.len() > MAX_FILE {
                return Err(ReadError::TooLarge(path));
            }
            let text = fs::read_to_string(&path).map_err(io(&path))?;
            out.push(SourceFile::new(rel, text));
        }
    }
    Ok(())
}

/// The `policy.loaded` entry for `bundle`.
pub fn loaded_event(bundle: &Bundle, actor: Actor, source: &str) -> Event {
    Event::new(EventType::PolicyLoaded, actor).data(json!({
        "bundle_version": bundle.version(),
        "source": source,
        "agents": bundle.agents().count(),
        "actions": bundle.catalog().len(),
        "assets": bundle.inventory().len(),
        "policies": bundle.policy_count(),
    }))
}

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reload {
    /// The files are the bundle in force.
    Unchanged(String),
    /// A new bundle is in force (and audited).
    Loaded(String),
    /// The files hold a bundle that was in force before and was replaced: not loaded again
    /// without a person asking.
    Replaced(String),
}

/// Reads the policy directory again; a valid, different bundle replaces the one in force and
/// is audited. An invalid one changes nothing and is reported with every problem.
pub fn reload(state: &AppState, actor: Actor) -> Result<Reload, ApiError> {
    let dir = state
        .policy_dir
        .as_ref()
        .ok_or_else(|| ApiError::new(Code::NoPolicyDir, "this server was not started with a policy directory"))?;
    let files = read(dir).map_err(|e| ApiError::new(Code::PolicyUnreadable, e.to_string()))?;
    let version = warden_core::bundle::bundle_version(&files);
    if version == state.bundle()?.version() {
        return Ok(Reload::Unchanged(version));
    }
    // On a shared store, a bundle once in force and since replaced (on this node or another)
    // comes back only when a person asks: the watcher of a node whose directory was left
    // behind must not roll the policy back for every node.
    if state.shared_store
        && actor.kind == ActorKind::System
        && state.ledger().store().meta(&crate::state::bundle_seen_key(&version))?.is_some()
    {
        return Ok(Reload::Replaced(version));
    }
    let bundle = Bundle::load(&files).map_err(|e| {
        let problems: Vec<String> = e.problems.iter().map(ToString::to_string).collect();
        ApiError::new(
            Code::InvalidPolicy,
            format!("the bundle in `{}` is invalid; the one in force stays", dir.display()),
        )
        .details(json!({ "problems": problems }))
    })?;
    let event = loaded_event(&bundle, actor, &dir.display().to_string());
    state.set_bundle_with(bundle, Batch::new().event(event))?;
    Ok(Reload::Loaded(version))
}
