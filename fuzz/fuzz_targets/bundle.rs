//! Policy bundle loading: arbitrary text in each of a bundle's files never panics; it loads or
//! names its problems.
#![no_main]

use libfuzzer_sys::fuzz_target;
use warden_core::{Bundle, SourceFile};

const PATHS: [&str; 5] = ["actions.toml", "assets.toml", "assets.csv", "agents/a.toml", "cedar/a.cedar"];

fuzz_target!(|data: &[u8]| {
    // The input is split into up to five files by 0xFF bytes.
    let files: Vec<SourceFile> = data
        .split(|b| *b == 0xFF)
        .zip(PATHS)
        .map(|(bytes, path)| SourceFile::new(path, String::from_utf8_lossy(bytes).into_owned()))
        .collect();
    let _ = Bundle::load(&files);
});
