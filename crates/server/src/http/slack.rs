//! `POST /v1/integrations/slack/interactions`: Slack's callback when an Approve or Reject
//! button of a notice is pressed. Verified with the Slack app's signing secret (no bearer
//! token: Slack signs instead), then handed to [`crate::slack`]. Slack is answered at once;
//! the vote and the message update follow.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use serde::Serialize;
use serde_json::{Value, json};
use utoipa::ToSchema;

use crate::error::{ApiError, ApiResult, Code, ErrorBody};
use crate::slack;
use crate::state::{App, blocking};

/// Slack's interaction form.
#[derive(Debug, Serialize, ToSchema)]
pub struct SlackForm {
    /// The interaction (`block_actions`) as JSON: who pressed which button of which notice,
    /// and the `response_url` to update the message through.
    pub payload: String,
}

/// Slack's interaction callback (a notice's Approve / Reject button). The request must carry
/// Slack's v0 signature of its raw body, made with the configured signing secret less than 5
/// minutes ago; the Slack user must map to an active Warden user. The vote follows the same
/// rules as everywhere (roles, separation of duties, quorum, expiry); the message is then
/// updated through the interaction's `response_url`.
#[utoipa::path(post, path = "/v1/integrations/slack/interactions", tag = "integrations",
    request_body(content = SlackForm, content_type = "application/x-www-form-urlencoded"),
    params(
        ("X-Slack-Request-Timestamp" = Option<String>, Header, description = "Unix time the request was signed at"),
        ("X-Slack-Signature" = Option<String>, Header, description = "`v0=` and the hex HMAC-SHA256 of `v0:TIMESTAMP:BODY`"),
    ),
    responses(
        (status = 200, description = "taken: the vote is cast, then the message is updated through the interaction's response URL", body = Object),
        (status = 401, description = "`bad_slack_signature`", body = ErrorBody),
        (status = 403, description = "`unknown_slack_user`, `user_disabled`", body = ErrorBody),
        (status = 404, description = "`slack_not_configured`", body = ErrorBody),
        (status = 422, description = "`invalid_request`: not a Warden button press", body = ErrorBody),
        (status = 503, description = "`overloaded`: too many presses being acted on at once; retry", body = ErrorBody),
    ))]
pub async fn interactions(State(app): State<App>, headers: HeaderMap, body: Bytes) -> ApiResult<Json<Value>> {
    let Some(cfg) = app.slack.clone() else {
        return Err(ApiError::new(Code::SlackNotConfigured, "no Slack app is configured on this server"));
    };
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    slack::verify(
        cfg.signing_secret.as_bytes(),
        header("x-slack-request-timestamp"),
        header("x-slack-signature"),
        &body,
        app.now().unix_timestamp(),
    )
    .map_err(|e| ApiError::new(Code::BadSlackSignature, e.to_string()))?;
    let press = slack::press(&body)?;
    // Each press is a vote and an outbound message update: a bounded number at once.
    let Ok(job) = app.slack_jobs.clone().try_acquire_owned() else {
        app.metrics.refused("slack_in_flight");
        return Err(ApiError::new(Code::Overloaded, "too many Slack button presses are being acted on; retry shortly"));
    };
    let who = press.slack_user.clone();
    let user = blocking(&app, move |s| slack::user_of(s, &cfg, &who)).await;
    let user = match user {
        Ok(u) => u,
        Err(e) => {
            if let Some(url) = press.response_url.clone() {
                let (app, message) = (app.clone(), slack::refusal(&e));
                tokio::spawn(async move {
                    slack::respond(&app, url, message).await;
                    drop(job);
                });
            }
            return Err(e);
        }
    };
    tracing::info!(approval = %press.approval, user = %user.id, approve = press.approve, "a Slack button was pressed");
    let approval = press.approval.clone();
    tokio::spawn(async move {
        slack::act(app, press, user).await;
        drop(job);
    });
    Ok(Json(json!({"taken": approval})))
}
