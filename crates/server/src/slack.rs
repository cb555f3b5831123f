//! Slack interactivity (issue 17, in progress): whether an interaction callback really comes
//! from Slack. Slack signs each request with the app's signing secret — `v0=` and the hex of
//! HMAC-SHA256 over `v0:{X-Slack-Request-Timestamp}:{raw body}` — and a timestamp more than
//! five minutes from now is refused, so a captured request cannot be replayed later.
//!
//! Nothing here reads HTTP types: the front door hands over the two header values and the raw
//! body, exactly as received (the body must not be re-encoded before it is checked).

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// How far a request's timestamp may be from now, either way (Slack's recommendation).
pub const REPLAY_WINDOW_SECS: i64 = 300;

/// Why a request is not taken as Slack's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the request carries no `X-Slack-Request-Timestamp` and `X-Slack-Signature`")]
    Missing,
    #[error("`X-Slack-Request-Timestamp` is not a Unix time")]
    BadTimestamp,
    #[error("the request was signed {0} s from now; more than 5 minutes away is refused as a replay")]
    Stale(i64),
    #[error("`X-Slack-Signature` is not a v0 signature (`v0=` and 64 hex digits)")]
    BadFormat,
    #[error("the signature does not match the request")]
    Mismatch,
}

/// Checks a request's signature with `secret` at `now_unix` (seconds).
pub fn verify(
    secret: &[u8],
    timestamp: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
    now_unix: i64,
) -> Result<(), SignatureError> {
    let (Some(timestamp), Some(signature)) = (timestamp, signature) else { return Err(SignatureError::Missing) };
    let at: i64 = timestamp.trim().parse().map_err(|_| SignatureError::BadTimestamp)?;
    let skew = now_unix.saturating_sub(at);
    if skew.abs() > REPLAY_WINDOW_SECS {
        return Err(SignatureError::Stale(skew));
    }
    let expected = decode_v0(signature).ok_or(SignatureError::BadFormat)?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).map_err(|_| SignatureError::Mismatch)?;
    mac.update(b"v0:");
    mac.update(timestamp.trim().as_bytes());
    mac.update(b":");
    mac.update(body);
    // Compared in constant time.
    mac.verify_slice(&expected).map_err(|_| SignatureError::Mismatch)
}

/// The 32 bytes of `v0=<64 hex digits>`.
fn decode_v0(signature: &str) -> Option<[u8; 32]> {
    let hex = signature.trim().strip_prefix("v0=")?;
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in hex.as_bytes().chunks(2).enumerate() {
        let digit = |c: u8| (c as char).to_digit(16);
        out[i] = u8::try_from(digit(pair[0])? * 16 + digit(pair[1])?).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of Slack's "Verifying requests from Slack" (its signing secret, timestamp,
    /// body and signature), checked independently with Python's `hmac`.
    const SECRET: &[u8] = b"8f742231b10e8888abcd99yyyzzz85a5";
    const AT: i64 = 1_531_420_618;
    const BODY: &str = "token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
    const SIGNATURE: &str = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503";

    fn check(secret: &[u8], at: &str, sig: &str, body: &str, now: i64) -> Result<(), SignatureError> {
        verify(secret, Some(at), Some(sig), body.as_bytes(), now)
    }

    #[test]
    fn slacks_own_example_verifies() {
        assert_eq!(check(SECRET, "1531420618", SIGNATURE, BODY, AT), Ok(()));
        assert_eq!(check(SECRET, "1531420618", SIGNATURE, BODY, AT + REPLAY_WINDOW_SECS), Ok(()));
        assert_eq!(check(SECRET, "1531420618", &SIGNATURE.to_uppercase().replace("V0=", "v0="), BODY, AT), Ok(()));
    }

    #[test]
    fn anything_else_is_refused() {
        // One byte of the body changed (the action approved becomes another): refused.
        let tampered = BODY.replace("user_id=U2CERLKJA", "user_id=U2CERLKJB");
        assert_eq!(check(SECRET, "1531420618", SIGNATURE, &tampered, AT), Err(SignatureError::Mismatch));
        // The right signature under another timestamp (a replay dressed as fresh): refused.
        assert_eq!(check(SECRET, "1531420619", SIGNATURE, BODY, AT + 1), Err(SignatureError::Mismatch));
        // Another app's secret.
        assert_eq!(check(b"another-secret", "1531420618", SIGNATURE, BODY, AT), Err(SignatureError::Mismatch));
        // Captured and sent again six minutes later, or dated in the future.
        assert_eq!(check(SECRET, "1531420618", SIGNATURE, BODY, AT + 301), Err(SignatureError::Stale(301)));
        assert_eq!(check(SECRET, "1531420618", SIGNATURE, BODY, AT - 301), Err(SignatureError::Stale(-301)));
        // Malformed headers, and none.
        for bad in ["a2114d57", "v1=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503", "v0=zz", ""] {
            assert_eq!(check(SECRET, "1531420618", bad, BODY, AT), Err(SignatureError::BadFormat), "{bad}");
        }
        assert_eq!(check(SECRET, "yesterday", SIGNATURE, BODY, AT), Err(SignatureError::BadTimestamp));
        assert_eq!(verify(SECRET, None, Some(SIGNATURE), BODY.as_bytes(), AT), Err(SignatureError::Missing));
        assert_eq!(verify(SECRET, Some("1531420618"), None, BODY.as_bytes(), AT), Err(SignatureError::Missing));
        // A timestamp far off never overflows.
        assert!(matches!(check(SECRET, &i64::MIN.to_string(), SIGNATURE, BODY, AT), Err(SignatureError::Stale(_))));
    }

    proptest::proptest! {
        /// Whatever a body is, only its own signature verifies it.
        #[test]
        fn only_the_bodys_own_signature_verifies(body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256), flip in 0usize..256) {
            let mut mac = Hmac::<Sha256>::new_from_slice(SECRET).unwrap();
            mac.update(format!("v0:{AT}:").as_bytes());
            mac.update(&body);
            let sig: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
            let sig = format!("v0={sig}");
            proptest::prop_assert_eq!(verify(SECRET, Some("1531420618"), Some(&sig), &body, AT), Ok(()));
            if !body.is_empty() {
                let mut other = body.clone();
                let i = flip % other.len();
                other[i] ^= 1;
                proptest::prop_assert_eq!(verify(SECRET, Some("1531420618"), Some(&sig), &other, AT), Err(SignatureError::Mismatch));
            }
        }
    }
}
