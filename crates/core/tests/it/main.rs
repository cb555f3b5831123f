//! Integration tests of the decision core against real bundles.

mod attack26b;
mod attack26c;
mod attack27;
mod attack27b;
mod bad_bundles;
mod canonical;
mod controls;
mod example;
mod merkle;
mod ocsf;
mod properties;

use std::path::Path;
use std::sync::OnceLock;

use warden_core::{Bundle, SourceFile};

/// The files of a bundle directory, as a front end would hand them over.
pub fn read_bundle(root: &Path) -> Vec<SourceFile> {
    fn walk(dir: &Path, prefix: &str, out: &mut Vec<SourceFile>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            let name = entry.file_name().to_string_lossy().into_owned();
            let rel = format!("{prefix}{name}");
            if entry.file_type().unwrap().is_dir() {
                walk(&entry.path(), &format!("{rel}/"), out);
            } else {
                out.push(SourceFile::new(rel, std::fs::read_to_string(entry.path()).unwrap()));
            }
        }
    }
    let mut out = Vec::new();
    walk(root, "", &mut out);
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

pub fn example_files() -> Vec<SourceFile> {
    read_bundle(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/policy"))
}

pub fn example_bundle() -> &'static Bundle {
    static BUNDLE: OnceLock<Bundle> = OnceLock::new();
    BUNDLE.get_or_init(|| Bundle::load(&example_files()).expect("the example bundle is valid"))
}
