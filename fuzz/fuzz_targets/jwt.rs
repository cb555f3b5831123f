//! JWT parsing and verification: arbitrary tokens are refused with a stable code, never
//! accepted, never a panic.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use warden_server::identity::{LocalIssuer, TokenVerifier};

fn verifier() -> &'static TokenVerifier {
    static V: OnceLock<TokenVerifier> = OnceLock::new();
    V.get_or_init(|| {
        let local = LocalIssuer::new("warden-local", &[7; 32]).expect("issuer");
        TokenVerifier::new("warden".into(), local, Vec::new())
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else { return };
    let now = time::OffsetDateTime::UNIX_EPOCH + time::Duration::days(20_000);
    if let Ok(subject) = verifier().subject(token, now) {
        // Only a token signed with the issuer's key could get here, which the fuzzer cannot forge.
        panic!("an unsigned token was accepted: {subject:?}");
    }
    let _ = verifier().lease_claims(token);
});
