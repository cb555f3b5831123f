//! The shipped controls mapping names only what exists: every feature's code and docs are in
//! the repository (and its docs page is not empty).

use std::path::Path;

use warden_core::controls::Mapping;

#[test]
fn every_feature_the_mapping_names_exists_in_the_repository() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let m = Mapping::shipped();
    assert!(m.features.len() >= 20);
    for f in &m.features {
        for path in [&f.code, &f.docs] {
            let text = std::fs::read_to_string(root.join(path))
                .unwrap_or_else(|e| panic!("feature `{}` names `{path}`: {e}", f.id));
            assert!(!text.trim().is_empty(), "`{path}` is empty");
        }
        assert!(f.code.starts_with("crates/") && f.code.ends_with(".rs"), "{}", f.code);
        assert!(f.docs.starts_with("docs/") && f.docs.ends_with(".md"), "{}", f.docs);
    }
}
