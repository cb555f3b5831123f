//! Signed-note and checkpoint parsing: arbitrary notes never panic, and nothing opens with a
//! key that did not sign it.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use warden_core::audit::note::{Checkpoint, NoteSigner, NoteVerifier};

fn verifier() -> &'static NoteVerifier {
    static V: OnceLock<NoteVerifier> = OnceLock::new();
    V.get_or_init(|| {
        let signer = NoteSigner::new("fuzz.local/audit", &[9; 32]).expect("signer");
        NoteVerifier::parse(&signer.verifier_key()).expect("verifier")
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = Checkpoint::parse(text);
    let _ = NoteVerifier::parse(text);
    if Checkpoint::open(text, verifier()).is_ok() {
        panic!("a note opened without the signer's key");
    }
});
