//! The `warden` binary, end to end: arguments in, output and exit codes out.

#[path = "../support/procs.rs"]
pub mod procs;

mod audit;
mod demo;
mod disk;
mod kill;
mod nodes;
mod policy;
mod respond;
mod serve;
mod siem;
mod upstream;

use std::path::{Path, PathBuf};

use assert_cmd::Command;

pub fn warden() -> Command {
    Command::cargo_bin("warden").unwrap()
}

pub fn example_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/policy")
}

/// A copy of the example bundle in a temporary directory, to break on purpose.
pub fn example_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&example_dir(), dir.path());
    dir
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Replaces `from` with `to` in a bundle file (which must contain it).
pub fn edit(dir: &Path, file: &str, from: &str, to: &str) {
    let path = dir.join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(from), "{file} lacks `{from}`");
    std::fs::write(path, text.replacen(from, to, 1)).unwrap();
}
