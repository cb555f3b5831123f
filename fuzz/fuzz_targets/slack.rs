//! Slack interaction callbacks: a body is taken only under the signing secret's HMAC of that
//! very body and timestamp, within five minutes; a signature the fuzzer writes is never taken
//! (unless it is the right one); any body either is refused as a press or names an approval.
#![no_main]

use hmac::{Hmac, KeyInit as _, Mac as _};
use libfuzzer_sys::fuzz_target;
use sha2::Sha256;
use warden_server::slack::{REPLAY_WINDOW_SECS, press, verify};

const SECRET: &[u8] = b"8f742231b10e8888abcd99yyyzzz85a5";
const NOW: i64 = 1_700_000_000;

fn sign(timestamp: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET).unwrap();
    mac.update(b"v0:");
    mac.update(timestamp.as_bytes());
    mac.update(b":");
    mac.update(body);
    let hex: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
    format!("v0={hex}")
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    // Byte 0: how far the timestamp is from now; byte 1: how the signature is made; then
    // the fuzzer's signature (up to 70 bytes) and the body.
    let skew = i64::from(data[0] as i8) * 5;
    let timestamp = (NOW + skew).to_string();
    let split = usize::from(data[1] % 71).min(data.len() - 2);
    let (written, body) = data[2..].split_at(split);
    let right = sign(&timestamp, body);
    let fresh = skew.abs() <= REPLAY_WINDOW_SECS;
    // The right signature: taken exactly when fresh.
    assert_eq!(verify(SECRET, Some(&timestamp), Some(&right), body, NOW).is_ok(), fresh);
    // Under another secret, never.
    assert!(verify(b"another secret", Some(&timestamp), Some(&right), body, NOW).is_err());
    // The fuzzer's own signature: never, unless it is the right one and fresh.
    let written = String::from_utf8_lossy(written);
    let taken = verify(SECRET, Some(&timestamp), Some(&written), body, NOW).is_ok();
    assert!(!taken || (fresh && written.trim().eq_ignore_ascii_case(&right)), "forged: {written}");
    // A signature over another body never covers this one.
    if !body.is_empty() {
        let other = sign(&timestamp, &body[1..]);
        assert!(verify(SECRET, Some(&timestamp), Some(&other), body, NOW).is_err() || body[1..] == *body);
    }
    if let Ok(p) = press(body) {
        assert!(p.approval.starts_with("apr_"), "{p:?}");
        assert!(!p.slack_user.is_empty());
    }
});
