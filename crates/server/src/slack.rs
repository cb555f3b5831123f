//! Approving from Slack: an approval notice carries Approve / Reject buttons, and Slack calls
//! back (`POST /v1/integrations/slack/interactions`) when one is pressed.
//!
//! 1. **Is it Slack?** Slack signs each request with the app's signing secret — `v0=` and the
//!    hex of HMAC-SHA256 over `v0:{X-Slack-Request-Timestamp}:{raw body}`; a timestamp more
//!    than five minutes from now is refused, so a captured request cannot be replayed later.
//! 2. **Who pressed it?** The Slack user is mapped to a Warden user (`[slack.users]`); an
//!    unmapped Slack user decides nothing. The Warden user is read from the store: a disabled
//!    one decides nothing either.
//! 3. **The same rules**: the vote is [`crate::approvals::decide`] — roles, separation of
//!    duties, one vote per person, quorum, expiry — exactly as from the console or the API.
//!    A button cannot carry a typed reason: a rejection from Slack records the reason
//!    "rejected in Slack by USER".
//! 4. **The message is updated** through the interaction's `response_url` (only to the
//!    configured Slack hosts): decided → the outcome replaces the buttons; one vote of a larger
//!    quorum → the notice again with the votes so far; refused → a message only the presser
//!    sees, naming the refusal's code.
//!
//! Nothing here reads HTTP types: the front door hands over the two header values and the raw
//! body, exactly as received (the body must not be re-encoded before it is checked).

use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::approvals::{self, ApprovalState, Verdict};
use crate::error::{ApiError, Code};
use crate::model::{Model, User};
use crate::notify::SlackApp;
use crate::state::{App, AppState};

/// What a button press asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Press {
    /// The Slack user who pressed it (`U0123ABCD`).
    pub slack_user: String,
    pub approve: bool,
    /// The approval the button names.
    pub approval: String,
    pub response_url: Option<String>,
}

use crate::notify::{SLACK_APPROVE as APPROVE, SLACK_REJECT as REJECT};

/// Reads the form body's `payload` (a `block_actions` interaction) as a button press.
pub fn press(form_body: &[u8]) -> Result<Press, ApiError> {
    let invalid = |why: &str| ApiError::new(Code::InvalidRequest, format!("not a Warden button press: {why}"));
    let fields: Vec<(String, String)> =
        serde_urlencoded::from_bytes(form_body).map_err(|_| invalid("the body is not a form"))?;
    let payload = fields.iter().find(|(k, _)| k == "payload").ok_or_else(|| invalid("no `payload` field"))?;
    let v: Value = serde_json::from_str(&payload.1).map_err(|_| invalid("`payload` is not JSON"))?;
    if v["type"] != "block_actions" {
        return Err(invalid("only `block_actions` interactions are taken"));
    }
    let slack_user = v["user"]["id"].as_str().ok_or_else(|| invalid("no `user.id`"))?.to_string();
    let action = &v["actions"][0];
    let approve = match action["action_id"].as_str() {
        Some(APPROVE) => true,
        Some(REJECT) => false,
        _ => return Err(invalid("the button is not Approve or Reject")),
    };
    let approval =
        action["value"].as_str().filter(|a| a.starts_with("apr_")).ok_or_else(|| invalid("no approval id"))?;
    Ok(Press {
        slack_user,
        approve,
        approval: approval.to_string(),
        response_url: v["response_url"].as_str().map(str::to_string),
    })
}

/// The Warden user a Slack user is: mapped in `[slack.users]`, existing and active.
pub fn user_of(s: &AppState, cfg: &SlackApp, slack_user: &str) -> Result<User, ApiError> {
    let unmapped =
        || ApiError::new(Code::UnknownSlackUser, format!("Slack user `{slack_user}` is not mapped to a Warden user"));
    let id = cfg.users.get(slack_user).ok_or_else(unmapped)?;
    let user =
        s.ledger().store().get(User::TABLE, id)?.map(|r| User::from_record(&r)).transpose()?.ok_or_else(unmapped)?;
    if user.status != "active" {
        return Err(ApiError::new(Code::UserDisabled, format!("user `{}` is disabled", user.id)));
    }
    Ok(user)
}

/// Casts the press's vote under every rule, then updates the message. Runs after Slack has had
/// its answer (Slack waits three seconds at most; an execution may take longer).
pub async fn act(app: App, press: Press, user: User) {
    let verdict = if press.approve {
        Verdict::Approve { reason: format!("approved in Slack by {}", user.id), lease_ttl_secs: None }
    } else {
        Verdict::Reject { reason: format!("rejected in Slack by {}", user.id) }
    };
    let within = app.limits.timeout.mul_f64(0.8);
    let voted = approvals::decide(&app, user.clone(), press.approval.clone(), verdict, within).await;
    let message = match voted {
        Err(e) => {
            tracing::info!(approval = %press.approval, user = %user.id, code = e.code.as_str(), "a Slack vote was refused");
            refusal(&e)
        }
        Ok(v) => {
            let a = v.approval;
            let public_url = app.notifier.public_url().to_string();
            match a.state {
                ApprovalState::Pending => {
                    let mut m = crate::notify::slack_payload(crate::notify::Kind::Created, &a, &public_url, true);
                    m["replace_original"] = json!(true);
                    m
                }
                _ => {
                    // Read off the async workers, as every store read is.
                    let first = a.requests.first().cloned();
                    let state = match first {
                        Some(r) => crate::state::blocking(&app, move |s| crate::pipeline::answer_of(s, &r)).await.ok(),
                        None => None,
                    }
                    .map(|x| x.state)
                    .unwrap_or_else(|| a.state.as_str().to_string());
                    decided(&a, &user.id, &state)
                }
            }
        }
    };
    if let Some(url) = press.response_url {
        respond(&app, url, message).await;
    }
}

/// The message that replaces a decided notice (no buttons left to press).
pub fn decided(a: &approvals::Approval, by: &str, state: &str) -> Value {
    let verb = if a.state == ApprovalState::Approved { "Approved" } else { "Rejected" };
    let e = crate::notify::slack_escape;
    let text = format!("{verb} by {}: {} on {} by {} — {}", e(by), e(&a.action), e(&a.target), e(&a.agent), e(state));
    json!({
        "replace_original": true,
        "text": text,
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": text}},
            {"type": "context", "elements": [{"type": "mrkdwn", "text": format!("approval {} · digest {}", e(&a.id), e(&a.digest))}]},
        ],
    })
}

/// What only the presser sees when their vote is refused.
pub fn refusal(e: &ApiError) -> Value {
    json!({
        "replace_original": false,
        "response_type": "ephemeral",
        "text": format!("Warden refused your vote: `{}` — {}", e.code.as_str(), crate::notify::slack_escape(&e.message)),
    })
}

/// Posts `message` to the interaction's `response_url`, if it is one of the configured Slack
/// hosts'. A failure is logged: the vote stands whatever happens to the message.
pub async fn respond(app: &App, url: String, message: Value) {
    let Some(cfg) = app.slack.as_ref() else { return };
    if !cfg.response_url_prefixes.iter().any(|p| url.starts_with(p.as_str())) {
        tracing::warn!("a Slack response_url outside the configured hosts was not called");
        return;
    }
    let timeout = app.limits.timeout;
    let sent = tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            // A redirect is not delivery, and is never followed.
            .max_redirects(0)
            .max_redirects_will_error(false)
            .timeout_global(Some(timeout))
            .user_agent(concat!("warden/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        agent.post(&url).send_json(&message).map(|r| r.status().as_u16())
    })
    .await;
    match sent {
        Ok(Ok(status)) if (200..300).contains(&status) => {}
        Ok(Ok(status)) => tracing::warn!(status, "Slack refused the message update"),
        _ => tracing::warn!("the Slack message update failed"),
    }
}

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
